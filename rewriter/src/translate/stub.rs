//! Exit stubs and chaining.
//!
//! An exit leaves the guest's stack and registers alone: it stores its own TC address
//! in the exit slot of the scratch area and jumps to the gate,
//!
//! ```text
//!         mov  dword [seg:scratch + SLOT_EXIT], <TC address of the stub>
//!         jmp  gate                       ; jmp rel32, or jmp far [cs:pointer]
//! ```
//!
//! so the monitor finds the block, and the stub's [`ExitStub`] in its side table (kind
//! and guest EIP), from the value in the slot. A call would push a TC address below
//! the guest's ESP, where the guest could read it and where the push can fault when the
//! guest's own code would not (ARCHITECTURE §5b).
//!
//! A *chainable* stub (direct branch targets and fall-throughs) starts with a 5-byte
//! `jmp rel32` slot whose displacement is 0 while unchained, so it falls into its own
//! exit; chaining points it at the target block's entry. The displacement is 4-byte
//! aligned (NOP padding in front of the stub), so a patch is one aligned 32-bit store
//! and another thread of execution sees either the old or the new target. The taken
//! exit of a conditional branch has no slot of its own: the branch is a `jcc rel32`
//! with an aligned displacement that enters the stub while unchained and goes straight
//! to the target block once chained (one taken jump instead of two).

use iced_x86::{Code, Instruction, MemoryOperand, Register};
use thiserror::Error;

use super::emit::{absolute, encode_error, Emitter, Meta};
use super::side::{ChainSlot, ExitKind, ExitStub, GuestEip, Origin};
use super::{Gate, Refusal, SLOT_EXIT};

/// Length of a chaining slot: `E9` and a rel32.
pub const CHAIN_SLOT_LEN: u32 = 5;

/// The opcode of a chaining slot (`jmp rel32`).
const JMP_REL32: u8 = 0xE9;

/// Emits an exit stub of `kind` for a guest at `guest` and records it.
pub(crate) fn exit(em: &mut Emitter, kind: ExitKind, guest: GuestEip) -> Result<(), Refusal> {
    let meta = stub_meta(guest);
    let chainable = kind.chainable();
    if chainable {
        em.align(1, meta)?;
    }
    let offset = em.offset();
    if chainable {
        let next = em.here().wrapping_add(CHAIN_SLOT_LEN);
        let slot = Instruction::with_branch(Code::Jmp_rel32_32, u64::from(next))
            .map_err(|e| encode_error(Code::Jmp_rel32_32, &e))?;
        em.emit(&slot, meta)?;
    }
    let slot = chainable.then_some(ChainSlot {
        jump: offset,
        rel32: offset + 1,
        unchained: 0,
    });
    exit_body(em, offset, slot, kind, guest, None)
}

/// Emits the exit stub of `kind` for the guest instruction `instruction` (the guest at
/// `guest`), which the stub's record keeps for the monitor. Not chainable.
pub(crate) fn exit_at(
    em: &mut Emitter,
    kind: ExitKind,
    guest: GuestEip,
    instruction: &Instruction,
) -> Result<(), Refusal> {
    if kind.chainable() {
        return exit(em, kind, guest);
    }
    let offset = em.offset();
    exit_body(em, offset, None, kind, guest, Some(*instruction))
}

/// Emits the stub of a conditional branch's taken exit (`kind`, chainable): the
/// `jcc rel32` at block offset `jcc` ([`Emitter::aligned_jcc`]) is its chaining slot, and
/// enters the stub while unchained.
pub(crate) fn taken_exit(
    em: &mut Emitter,
    jcc: u32,
    kind: ExitKind,
    guest: GuestEip,
) -> Result<(), Refusal> {
    let offset = em.offset();
    let rel32 = jcc + 2;
    let unchained = offset.wrapping_sub(rel32 + 4);
    let field = usize::try_from(rel32)
        .ok()
        .and_then(|at| em.bytes.get_mut(at..at + 4))
        .ok_or_else(|| Refusal::Encode {
            what: "taken exit".to_string(),
            reason: format!("no jcc rel32 at block offset {rel32}"),
        })?;
    field.copy_from_slice(&unchained.to_le_bytes());
    let slot = ChainSlot {
        jump: jcc,
        rel32,
        unchained,
    };
    exit_body(em, offset, Some(slot), kind, guest, None)
}

fn stub_meta(guest: GuestEip) -> Meta {
    Meta {
        guest,
        restore_scratch: false,
        restore_eax: false,
        can_fault: false,
        origin: Origin::Exit,
    }
}

/// The store of the stub's name (its TC address, `offset` in the block) into the exit
/// slot, the gate jump, and the stub's record.
fn exit_body(
    em: &mut Emitter,
    offset: u32,
    chain_slot: Option<ChainSlot>,
    kind: ExitKind,
    guest: GuestEip,
    instruction: Option<Instruction>,
) -> Result<(), Refusal> {
    let meta = stub_meta(guest);
    let record = em.base.wrapping_add(offset);
    let store = Instruction::with2(Code::Mov_rm32_imm32, em.slot(SLOT_EXIT), record)
        .map_err(|e| encode_error(Code::Mov_rm32_imm32, &e))?;
    em.emit(&store, meta)?;
    let gate = gate_jump(em.cfg.gate)?;
    em.emit(&gate, meta)?;
    let instruction = match instruction {
        Some(i) => {
            em.side.instructions.push(i);
            u16::try_from(em.side.instructions.len() - 1).ok()
        }
        None => None,
    };
    em.side.exits.push(ExitStub {
        offset,
        chain_slot,
        kind,
        guest,
        instruction,
    });
    Ok(())
}

/// The jump into the gate.
fn gate_jump(gate: Gate) -> Result<Instruction, Refusal> {
    match gate {
        Gate::Near(address) => Instruction::with_branch(Code::Jmp_rel32_32, u64::from(address))
            .map_err(|e| encode_error(Code::Jmp_rel32_32, &e)),
        Gate::FarPointer(pointer) => {
            Instruction::with1(Code::Jmp_m1632, gate_pointer_operand(pointer))
                .map_err(|e| encode_error(Code::Jmp_m1632, &e))
        }
    }
}

/// `cs:[pointer]`: the far pointer is read through the TC's code segment, which the
/// guest's data segments cannot reach.
fn gate_pointer_operand(pointer: u32) -> MemoryOperand {
    absolute(Register::CS, pointer)
}

/// Why a chaining patch cannot be made.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum ChainError {
    /// The block has no exit with that index.
    #[error("the block has no exit {index}")]
    NoSuchExit {
        /// The index asked for.
        index: usize,
    },
    /// The exit has no chaining slot (it is not a direct branch or fall-through).
    #[error("exit at block offset {offset:#x} is not chainable")]
    NotChainable {
        /// The stub's offset.
        offset: u32,
    },
    /// The bytes at the slot are not a `jmp rel32` (wrong block, or already freed).
    #[error("no chaining slot at block offset {offset:#x}")]
    NotASlot {
        /// The slot's offset.
        offset: u32,
    },
}

/// A chaining patch: the new rel32 of one slot. Applying it is one aligned 4-byte
/// store at `offset` in the block's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainPatch {
    /// Offset of the rel32 in the block (the slot's offset plus one).
    pub offset: u32,
    /// The new displacement, little-endian.
    pub rel32: [u8; 4],
}

impl ChainPatch {
    /// The patch that makes `stub` of the block at `block_address` jump to the TC
    /// address `target` (a block's direct entry).
    ///
    /// # Errors
    ///
    /// [`ChainError::NotChainable`] when the stub has no slot.
    pub fn chain(block_address: u32, stub: &ExitStub, target: u32) -> Result<Self, ChainError> {
        let slot = stub.chain_slot.ok_or(ChainError::NotChainable {
            offset: stub.offset,
        })?;
        let next = block_address.wrapping_add(slot.rel32).wrapping_add(4);
        Ok(Self {
            offset: slot.rel32,
            rel32: target.wrapping_sub(next).to_le_bytes(),
        })
    }

    /// The patch that returns `stub` to its unchained state (jumping into its exit).
    ///
    /// # Errors
    ///
    /// [`ChainError::NotChainable`] when the stub has no slot.
    pub fn unchain(stub: &ExitStub) -> Result<Self, ChainError> {
        let slot = stub.chain_slot.ok_or(ChainError::NotChainable {
            offset: stub.offset,
        })?;
        Ok(Self {
            offset: slot.rel32,
            rel32: slot.unchained.to_le_bytes(),
        })
    }

    /// Applies the patch to a block's bytes.
    ///
    /// # Errors
    ///
    /// [`ChainError::NotASlot`] when the bytes there are not the rel32 of a `jmp rel32`
    /// or a `jcc rel32`.
    pub fn apply(&self, block: &mut [u8]) -> Result<(), ChainError> {
        let at = usize::try_from(self.offset).unwrap_or(usize::MAX);
        let opcode = |back: usize| at.checked_sub(back).and_then(|i| block.get(i).copied());
        let jmp = opcode(1) == Some(JMP_REL32);
        let jcc = opcode(2) == Some(0x0F) && opcode(1).is_some_and(|b| b & 0xF0 == 0x80);
        let not_a_slot = ChainError::NotASlot {
            offset: self.offset.wrapping_sub(1),
        };
        if !jmp && !jcc {
            return Err(not_a_slot);
        }
        let field = block.get_mut(at..at + 4).ok_or(not_a_slot)?;
        field.copy_from_slice(&self.rel32);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use iced_x86::Instruction;

    use super::*;
    use crate::translate::testing::{disasm, translate, translate_with, TC};
    use crate::translate::{validate, Block, Rules, TranslateConfig, SLOT_EXIT};

    fn at(block: &Block, offset: u32) -> Instruction {
        let address = u64::from(block.tc_address + offset);
        disasm(block)
            .into_iter()
            .find(|i| i.ip() == address)
            .expect("an instruction starts there")
    }

    /// The exit slot store and gate jump that follow a stub's (optional) chaining slot.
    fn tail(block: &Block, stub: &ExitStub) -> (Instruction, Instruction) {
        let own_slot = stub.chain_slot.is_some_and(|s| s.jump == stub.offset);
        let start = stub.offset + if own_slot { 5 } else { 0 };
        let store = at(block, start);
        let jump = at(block, start + u32::try_from(store.len()).unwrap());
        (store, jump)
    }

    #[test]
    fn an_exit_names_itself_in_the_exit_slot_and_jumps_to_the_gate() {
        let cfg = TranslateConfig::default();
        // cli: a sensitive exit, not chainable.
        let block = translate(32, &[0xFA]);
        let [stub] = block.side.exits[..] else {
            panic!("one exit")
        };
        assert_eq!(stub.chain_slot, None);
        let (store, jump) = tail(&block, &stub);
        assert_eq!(store.code(), Code::Mov_rm32_imm32);
        assert_eq!(store.memory_segment(), Register::GS);
        assert_eq!(store.memory_displacement32(), cfg.scratch.base + SLOT_EXIT);
        assert_eq!(store.immediate32(), TC + stub.offset);
        assert_eq!(block.exit_for(store.immediate32()), Some(&stub));
        let Gate::FarPointer(pointer) = cfg.gate else {
            panic!("far gate")
        };
        assert_eq!(jump.code(), Code::Jmp_m1632);
        assert_eq!(jump.memory_segment(), Register::CS);
        assert_eq!(jump.memory_displacement32(), pointer);
        assert_eq!(jump.memory_base(), Register::None);
        assert_eq!(
            u64::from(TC) + block.bytes.len() as u64,
            jump.next_ip(),
            "the gate jump ends the block"
        );
    }

    #[test]
    fn a_near_gate_is_a_jmp_rel32() {
        let cfg = TranslateConfig {
            gate: Gate::Near(0xFFFF_8000),
            ..TranslateConfig::default()
        };
        let block = translate_with(32, &[0xF4], &cfg);
        let (_, jump) = tail(&block, &block.side.exits[0]);
        assert_eq!(jump.code(), Code::Jmp_rel32_32);
        assert_eq!(jump.near_branch_target(), 0xFFFF_8000);
    }

    #[test]
    fn chainable_slots_are_aligned_jumps_to_their_own_exit() {
        // A conditional branch: the fall-through stub has its own slot, the taken stub
        // is entered by the branch itself.
        let block = translate(32, &[0x40, 0x75, 0xFD]);
        assert_eq!(block.side.exits.len(), 2);
        for stub in &block.side.exits {
            let slot = stub.chain_slot.expect("chainable");
            assert_eq!((TC + slot.rel32) % 4, 0, "rel32 aligned");
            let jump = at(&block, slot.jump);
            assert_eq!(
                jump.next_ip(),
                u64::from(TC + slot.rel32 + 4),
                "rel32 ends it"
            );
            if slot.jump == stub.offset {
                assert_eq!(jump.code(), Code::Jmp_rel32_32);
                assert_eq!(jump.near_branch_target(), jump.next_ip(), "unchained");
                assert_eq!(block.bytes[usize::try_from(slot.jump).unwrap()], JMP_REL32);
            } else {
                assert_eq!(jump.code(), Code::Jne_rel32_32);
                assert_eq!(jump.near_branch_target(), u64::from(TC + stub.offset));
                assert!(slot.jump < stub.offset);
            }
        }
    }

    #[test]
    fn a_chained_conditional_branch_jumps_straight_to_its_target() {
        let mut block = translate(32, &[0x40, 0x75, 0xFD]);
        let original = block.bytes.clone();
        let taken = block.side.exits[1];
        let slot = taken.chain_slot.unwrap();
        let target = 0xF000_4000;
        block
            .chain(1, target)
            .unwrap()
            .apply(&mut block.bytes)
            .unwrap();
        let jump = at(&block, slot.jump);
        assert_eq!(jump.code(), Code::Jne_rel32_32);
        assert_eq!(jump.near_branch_target(), u64::from(target));
        let changed: Vec<usize> = (0..original.len())
            .filter(|&i| original[i] != block.bytes[i])
            .collect();
        let field = slot.rel32 as usize..slot.rel32 as usize + 4;
        assert!(changed.iter().all(|i| field.contains(i)));
        block.unchain(1).unwrap().apply(&mut block.bytes).unwrap();
        assert_eq!(block.bytes, original);
    }

    #[test]
    fn chaining_patches_the_slot_and_unchaining_restores_it() {
        let mut block = translate(32, &[0x90, 0xEB, 0x10]);
        let original = block.bytes.clone();
        let target = 0xF000_4000;
        let patch = block.chain(0, target).unwrap();
        patch.apply(&mut block.bytes).unwrap();
        let slot = block.side.exits[0].chain_slot.unwrap();
        let jump = at(&block, slot.jump);
        assert_eq!(jump.code(), Code::Jmp_rel32_32);
        assert_eq!(jump.near_branch_target(), u64::from(target));
        // Only the four displacement bytes changed.
        let changed: Vec<usize> = (0..original.len())
            .filter(|&i| original[i] != block.bytes[i])
            .collect();
        assert!(changed
            .iter()
            .all(|&i| (slot.rel32 as usize..slot.rel32 as usize + 4).contains(&i)));

        // The validator accepts the chained block only when the target is an entry.
        let cfg = TranslateConfig::default();
        let rules = Rules::new(&cfg, u64::from(TC)..u64::from(TC) + 0x10_0000);
        let err = validate(&block.bytes, TC, &rules).unwrap_err();
        assert_eq!(err.offset, slot.jump);
        let entries = [target];
        validate(&block.bytes, TC, &rules.with_entries(&entries)).unwrap();

        block.unchain(0).unwrap().apply(&mut block.bytes).unwrap();
        assert_eq!(block.bytes, original);
    }

    #[test]
    fn chaining_is_refused_where_there_is_no_slot() {
        let mut block = translate(32, &[0xFA]);
        assert_eq!(
            block.chain(0, TC),
            Err(ChainError::NotChainable {
                offset: block.side.exits[0].offset
            })
        );
        assert_eq!(block.chain(5, TC), Err(ChainError::NoSuchExit { index: 5 }));
        let stray = ChainPatch {
            offset: 1,
            rel32: [0; 4],
        };
        assert_eq!(
            stray.apply(&mut block.bytes),
            Err(ChainError::NotASlot { offset: 0 })
        );
        let past_end = ChainPatch {
            offset: u32::try_from(block.bytes.len()).unwrap(),
            rel32: [0; 4],
        };
        assert!(past_end.apply(&mut block.bytes).is_err());
    }
}
