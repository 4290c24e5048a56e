//! Indirect branches: the inline lookup of a guest EIP in the guest-EIP→TC table.
//!
//! RET, RET imm16, JMP r/m and CALL r/m (16- and 32-bit operand size) become
//!
//! ```text
//!         mov   [seg:SLOT_ECX], ecx        ; spill to the vCPU page, never below ESP
//!         mov   [seg:SLOT_EDX], edx
//!         mov   edx, <target>              ; guest r/m or [esp]; may fault
//!         mov   [seg:SLOT_TARGET], edx
//!         <commit>                         ; CALL: push guest return address
//!                                          ; RET:  lea esp, [esp + size + imm]
//!         movzx ecx, dx                    ; index = target & 0xFFFF
//!         mov   ecx, cs:[table + ecx*8]    ; entry's guest EIP
//!         not   edx
//!         lea   ecx, [ecx + edx + 1]       ; entry EIP - target, without touching flags
//!         jecxz hit
//!         mov   ecx, [seg:SLOT_ECX]        ; miss: restore, exit with the target slot
//!         mov   edx, [seg:SLOT_EDX]
//!         <exit IndirectMiss>
//! hit:    not   edx
//!         movzx ecx, dx
//!         jmp   cs:[table + ecx*8 + 4]     ; the target block's lookup entry
//! ```
//!
//! No instruction in the sequence writes the guest's flags, and the guest's memory sees
//! only what the guest instruction itself reads and writes: the return address pushed
//! is the guest's. The table is read through CS (the TC's code segment, which reaches
//! the monitor window) and the scratch slots through the reserved segment; the target
//! block's lookup entry reloads ECX and EDX from their slots (see [`prologue`]).
//!
//! Precise state: up to the commit, a fault or interrupt leaves the guest at the branch
//! instruction (ECX and EDX restored from their slots once both are saved); after it,
//! at the target held in the target slot. The commit is one instruction.

use iced_x86::{Code, Instruction, MemoryOperand, OpKind, Register};

use super::decode::BranchForm;
use super::emit::{build, Emitter, Meta};
use super::side::{ExitKind, GuestEip, Origin};
use super::{stub, Refusal, StackSize, SLOT_ECX, SLOT_EDX, SLOT_TARGET};

/// log2 of the number of entries in the lookup table.
pub const LOOKUP_BITS: u32 = 16;
/// Number of entries in the lookup table.
pub const LOOKUP_ENTRIES: usize = 1 << LOOKUP_BITS;
/// Size of one entry: the guest EIP, then the TC address of its block's lookup entry
/// (both little-endian `u32`).
pub const LOOKUP_ENTRY_SIZE: usize = 8;
const _: () = assert!(LOOKUP_ENTRY_SIZE == 2 * 4);
/// Size of the whole table in bytes.
pub const LOOKUP_TABLE_SIZE: usize = LOOKUP_ENTRIES * LOOKUP_ENTRY_SIZE;

/// The table index of guest EIP `eip`: its low 16 bits (`movzx` computes it without
/// touching the flags).
pub fn lookup_index(eip: u32) -> usize {
    usize::from(eip.to_le_bytes()[0]) | (usize::from(eip.to_le_bytes()[1]) << 8)
}

/// The guest-EIP→TC table that translated code reads inline, as plain bytes (the
/// engine maps it into the monitor window at the table address it gives the
/// translator). An empty entry holds a guest EIP whose index is not its own, so no
/// target ever matches it.
#[derive(Clone, PartialEq, Eq)]
pub struct LookupTable {
    bytes: Vec<u8>,
}

impl std::fmt::Debug for LookupTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LookupTable")
            .field("entries", &self.len())
            .finish_non_exhaustive()
    }
}

impl Default for LookupTable {
    fn default() -> Self {
        Self::new()
    }
}

impl LookupTable {
    /// A table with every entry empty.
    pub fn new() -> Self {
        let mut table = Self {
            bytes: vec![0; LOOKUP_TABLE_SIZE],
        };
        for index in 0..LOOKUP_ENTRIES {
            table.clear_index(index);
        }
        table
    }

    /// The table's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Makes `eip` jump to the TC address `lookup_entry` (a block's lookup entry),
    /// replacing whatever shared its index.
    pub fn insert(&mut self, eip: u32, lookup_entry: u32) {
        self.set_entry(lookup_index(eip), eip, lookup_entry);
    }

    /// Drops `eip`'s entry, if it holds `eip`.
    pub fn remove(&mut self, eip: u32) {
        if self.get(eip).is_some() {
            self.clear_index(lookup_index(eip));
        }
    }

    /// The TC address `eip` jumps to, if it is in the table.
    pub fn get(&self, eip: u32) -> Option<u32> {
        let (held, target) = self.entry(lookup_index(eip))?;
        (held == eip).then_some(target)
    }

    /// Number of entries that hold a guest EIP.
    pub fn len(&self) -> usize {
        (0..LOOKUP_ENTRIES)
            .filter(|&i| self.entry(i).is_some_and(|(eip, _)| lookup_index(eip) == i))
            .count()
    }

    /// Entry `index`: the guest EIP it holds and its TC address (every `lookup_index`
    /// names one).
    fn entry(&self, index: usize) -> Option<(u32, u32)> {
        let at = index * LOOKUP_ENTRY_SIZE;
        let entry = self.bytes.get(at..at + LOOKUP_ENTRY_SIZE)?;
        let [a, b, c, d, e, f, g, h] = <[u8; 8]>::try_from(entry).ok()?;
        Some((
            u32::from_le_bytes([a, b, c, d]),
            u32::from_le_bytes([e, f, g, h]),
        ))
    }

    fn set_entry(&mut self, index: usize, eip: u32, target: u32) {
        let at = index * LOOKUP_ENTRY_SIZE;
        if let Some(entry) = self.bytes.get_mut(at..at + LOOKUP_ENTRY_SIZE) {
            let fields = eip.to_le_bytes().into_iter().chain(target.to_le_bytes());
            for (byte, field) in entry.iter_mut().zip(fields) {
                *byte = field;
            }
        }
    }

    /// Whether no entry holds a guest EIP.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn clear_index(&mut self, index: usize) {
        // Index with its lowest bit flipped: never equal to a target with this index.
        let empty = u32::try_from(index ^ 1).unwrap_or(1);
        self.set_entry(index, empty, 0);
    }
}

/// The block's lookup entry: reload the scratch registers a lookup spilled, then fall
/// into the block's direct entry.
pub(crate) fn prologue(em: &mut Emitter, entry_eip: u32) -> Result<(), Refusal> {
    let meta = Meta {
        guest: GuestEip::At(entry_eip),
        restore_scratch: true,
        restore_eax: false,
        can_fault: false,
        origin: Origin::Prologue,
    };
    restore(em, meta)
}

fn restore(em: &mut Emitter, meta: Meta) -> Result<(), Refusal> {
    let ecx = em.slot(SLOT_ECX);
    let edx = em.slot(SLOT_EDX);
    em.emit(
        &build!(with2, Code::Mov_r32_rm32, Register::ECX, ecx)?,
        meta,
    )?;
    em.emit(
        &build!(with2, Code::Mov_r32_rm32, Register::EDX, edx)?,
        meta,
    )
}

/// Emits the lookup sequence for the indirect branch `guest` of shape `form`.
pub(crate) fn indirect(
    em: &mut Emitter,
    guest: &Instruction,
    form: BranchForm,
) -> Result<(), Refusal> {
    let at = GuestEip::At(u32::try_from(guest.ip()).unwrap_or(0));
    let before_save = Meta::expansion(at, false, false);
    let saved = Meta::expansion(at, true, false);
    let saved_faulting = Meta::expansion(at, true, true);
    let committed = Meta::expansion(GuestEip::TargetSlot, true, false);

    let slot_ecx = em.slot(SLOT_ECX);
    let slot_edx = em.slot(SLOT_EDX);
    let slot_target = em.slot(SLOT_TARGET);
    em.emit(
        &build!(with2, Code::Mov_rm32_r32, slot_ecx, Register::ECX)?,
        before_save,
    )?;
    em.emit(
        &build!(with2, Code::Mov_rm32_r32, slot_edx, Register::EDX)?,
        before_save,
    )?;

    // The target into EDX, then into the target slot; then the one commit.
    let commit = match form {
        BranchForm::JumpIndirect { op16 } => {
            em.emit(&load_target(guest, op16)?, saved_faulting)?;
            None
        }
        BranchForm::CallIndirect { ret, op16 } => {
            em.emit(&load_target(guest, op16)?, saved_faulting)?;
            Some(push_return(ret, op16)?)
        }
        BranchForm::Return { pop, op16 } => {
            let size: u32 = if op16 { 2 } else { 4 };
            let adjust = i64::from(size) + i64::from(pop);
            let load = if op16 {
                Code::Movzx_r32_rm16
            } else {
                Code::Mov_r32_rm32
            };
            match em.cfg.stack_size {
                StackSize::Bits32 => {
                    let top = MemoryOperand::with_base(Register::ESP);
                    em.emit(&build!(with2, load, Register::EDX, top)?, saved_faulting)?;
                    Some(build!(
                        with2,
                        Code::Lea_r32_m,
                        Register::ESP,
                        MemoryOperand::with_base_displ(Register::ESP, adjust),
                    )?)
                }
                StackSize::Bits16 => {
                    // SS:SP: the offset is SP zero-extended, and only SP moves.
                    em.emit(
                        &build!(with2, Code::Movzx_r32_rm16, Register::ECX, Register::SP)?,
                        saved,
                    )?;
                    let top = MemoryOperand::new(
                        Register::ECX,
                        Register::None,
                        1,
                        0,
                        0,
                        false,
                        Register::SS,
                    );
                    em.emit(&build!(with2, load, Register::EDX, top)?, saved_faulting)?;
                    Some(build!(
                        with2,
                        Code::Lea_r16_m,
                        Register::SP,
                        MemoryOperand::with_base_displ(Register::ECX, adjust),
                    )?)
                }
            }
        }
        _ => {
            return Err(Refusal::Encode {
                what: format!("{:?}", guest.code()),
                reason: "not an indirect branch".to_string(),
            })
        }
    };
    em.emit(
        &build!(with2, Code::Mov_rm32_r32, slot_target, Register::EDX)?,
        saved,
    )?;
    if let Some(commit) = commit {
        let can_fault = commit.code() != Code::Lea_r32_m && commit.code() != Code::Lea_r16_m;
        em.emit(&commit, Meta::expansion(at, true, can_fault))?;
    }

    // The lookup proper: from here on the guest is at its target.
    let table = em.cfg.lookup_table;
    em.emit(
        &build!(with2, Code::Movzx_r32_rm16, Register::ECX, Register::DX)?,
        committed,
    )?;
    em.emit(
        &build!(
            with2,
            Code::Mov_r32_rm32,
            Register::ECX,
            table_operand(table, 0)
        )?,
        committed,
    )?;
    em.emit(&build!(with1, Code::Not_rm32, Register::EDX)?, committed)?;
    em.emit(
        &build!(
            with2,
            Code::Lea_r32_m,
            Register::ECX,
            MemoryOperand::new(Register::ECX, Register::EDX, 1, 1, 1, false, Register::None),
        )?,
        committed,
    )?;
    let hit = em.branch_forward(Code::Jecxz_rel8_32, committed)?;
    restore(em, committed)?;
    stub::exit(em, ExitKind::IndirectMiss, GuestEip::TargetSlot)?;
    em.bind(hit)?;
    em.emit(&build!(with1, Code::Not_rm32, Register::EDX)?, committed)?;
    em.emit(
        &build!(with2, Code::Movzx_r32_rm16, Register::ECX, Register::DX)?,
        committed,
    )?;
    em.emit(
        &build!(with1, Code::Jmp_rm32, table_operand(table, 4))?,
        committed,
    )
}

/// `cs:[table + ecx*8 + field]`.
pub(crate) fn table_operand(table: u32, field: u32) -> MemoryOperand {
    MemoryOperand::new(
        Register::None,
        Register::ECX,
        8,
        i64::from(table.wrapping_add(field)),
        4,
        false,
        Register::CS,
    )
}

/// `mov edx, r/m32` or `movzx edx, r/m16` with the guest branch's own operand (its
/// register, or its memory operand with base, index, displacement, address size and
/// segment override).
fn load_target(guest: &Instruction, op16: bool) -> Result<Instruction, Refusal> {
    let mut load = *guest;
    load.set_code(if op16 {
        Code::Movzx_r32_rm16
    } else {
        Code::Mov_r32_rm32
    });
    match guest.op0_kind() {
        OpKind::Register => {
            load.set_op1_kind(OpKind::Register);
            load.set_op1_register(guest.op0_register());
        }
        OpKind::Memory => load.set_op1_kind(OpKind::Memory),
        other => {
            return Err(Refusal::Encode {
                what: format!("{:?}", guest.code()),
                reason: format!("unexpected operand {other:?}"),
            })
        }
    }
    load.set_op0_kind(OpKind::Register);
    load.set_op0_register(Register::EDX);
    // BND and NOTRACK-style prefixes mean nothing on a MOV (and F2/F3 change 0F opcodes).
    load.set_has_repe_prefix(false);
    load.set_has_repne_prefix(false);
    load.set_has_lock_prefix(false);
    Ok(load)
}

/// `push imm32`, or `push imm16` for a 16-bit CALL: the guest's return address.
fn push_return(ret: u32, op16: bool) -> Result<Instruction, Refusal> {
    if op16 {
        build!(with1, Code::Push_imm16, ret & 0xFFFF)
    } else {
        build!(with1, Code::Pushd_imm32, ret)
    }
}

/// The push of a direct CALL's return address.
pub(crate) fn call_push(em: &mut Emitter, eip: u32, ret: u32, op16: bool) -> Result<(), Refusal> {
    em.emit(
        &push_return(ret, op16)?,
        Meta::expansion(GuestEip::At(eip), false, true),
    )
}

/// A direct CALL of a PIC thunk at `eip` (`mov reg, [esp]; ret`, [`super::decode`]),
/// done in one step: the return address `ret` written where the CALL pushes it (below
/// ESP, where the thunk's RET leaves it) and loaded into `reg`. No lookup: the thunk's
/// RET is a single indirect branch for every caller, the one the CPU predicts worst.
/// A fault on the store is the CALL's push faulting; an interrupt between the two
/// restarts the CALL, whose push writes the same value again.
pub(crate) fn thunk_call(
    em: &mut Emitter,
    eip: u32,
    reg: Register,
    ret: u32,
) -> Result<(), Refusal> {
    let below = MemoryOperand::with_base_displ(Register::ESP, -4);
    em.emit(
        &build!(with2, Code::Mov_rm32_imm32, below, ret)?,
        Meta::expansion(GuestEip::At(eip), false, true),
    )?;
    em.emit(
        &build!(with2, Code::Mov_r32_imm32, reg, ret)?,
        Meta::expansion(GuestEip::At(eip), false, false),
    )
}

#[cfg(test)]
mod tests {
    use iced_x86::{Formatter, IntelFormatter};

    use super::*;
    use crate::translate::testing::{disasm, translate, translate_with, EIP};
    use crate::translate::{Block, SideEntry, TranslateConfig};

    /// The block's instructions after the lookup entry, as Intel-syntax text.
    fn listing(block: &Block) -> Vec<String> {
        let mut formatter = IntelFormatter::new();
        disasm(block)
            .iter()
            .skip(2)
            .map(|i| {
                let mut s = String::new();
                formatter.format(i, &mut s);
                s
            })
            .collect()
    }

    fn entry_of<'b>(block: &'b Block, text: &str) -> &'b SideEntry {
        let list = listing(block);
        let n = list
            .iter()
            .position(|s| s == text)
            .unwrap_or_else(|| panic!("{text} in {list:#?}"));
        &block.side.entries[n + 2]
    }

    /// The part of the listing that depends on the branch: from after the two spills to
    /// the table lookup.
    fn target_part(block: &Block) -> Vec<String> {
        let list = listing(block);
        let from = 2;
        let to = list
            .iter()
            .position(|s| s.starts_with("movzx ecx,dx"))
            .unwrap();
        list[from..to].to_vec()
    }

    #[test]
    fn each_indirect_branch_loads_its_target_and_commits_once() {
        let stack16 = TranslateConfig {
            stack_size: StackSize::Bits16,
            ..TranslateConfig::default()
        };
        let cases: &[(u32, &[u8], &TranslateConfig, &[&str])] = &[
            (
                32,
                &[0xC3],
                &TranslateConfig::default(),
                &[
                    "mov edx,[esp]",
                    "mov gs:[0FFFFE008h],edx",
                    "lea esp,[esp+4]",
                ],
            ),
            (
                32,
                &[0xC2, 0x08, 0x00],
                &TranslateConfig::default(),
                &[
                    "mov edx,[esp]",
                    "mov gs:[0FFFFE008h],edx",
                    "lea esp,[esp+0Ch]",
                ],
            ),
            (
                32,
                &[0x66, 0xC3],
                &TranslateConfig::default(),
                &[
                    "movzx edx,word ptr [esp]",
                    "mov gs:[0FFFFE008h],edx",
                    "lea esp,[esp+2]",
                ],
            ),
            (
                16,
                &[0xC2, 0x04, 0x00],
                &stack16,
                &[
                    "movzx ecx,sp",
                    "movzx edx,word ptr ss:[ecx]",
                    "mov gs:[0FFFFE008h],edx",
                    "lea sp,[ecx+6]",
                ],
            ),
            (
                16,
                &[0x66, 0xC3],
                &stack16,
                &[
                    "movzx ecx,sp",
                    "mov edx,ss:[ecx]",
                    "mov gs:[0FFFFE008h],edx",
                    "lea sp,[ecx+4]",
                ],
            ),
            (
                32,
                &[0xFF, 0xE1],
                &TranslateConfig::default(),
                &["mov edx,ecx", "mov gs:[0FFFFE008h],edx"],
            ),
            (
                32,
                &[0xFF, 0x24, 0x95, 0x00, 0x20, 0x00, 0x00],
                &TranslateConfig::default(),
                &["mov edx,[edx*4+2000h]", "mov gs:[0FFFFE008h],edx"],
            ),
            (
                32,
                &[0x66, 0xFF, 0xE0],
                &TranslateConfig::default(),
                &["movzx edx,ax", "mov gs:[0FFFFE008h],edx"],
            ),
            (
                32,
                &[0xFF, 0x54, 0x24, 0x04],
                &TranslateConfig::default(),
                &["mov edx,[esp+4]", "mov gs:[0FFFFE008h],edx", "push 1004h"],
            ),
            (
                16,
                &[0xFF, 0x17],
                &TranslateConfig::default(),
                &[
                    "movzx edx,word ptr [bx]",
                    "mov gs:[0FFFFE008h],edx",
                    "data16 push 1002h",
                ],
            ),
            (
                16,
                &[0x66, 0xFF, 0xD3],
                &TranslateConfig::default(),
                &["mov edx,ebx", "mov gs:[0FFFFE008h],edx", "push 1003h"],
            ),
            (
                16,
                &[0x26, 0xFF, 0x67, 0x02],
                &TranslateConfig::default(),
                &["movzx edx,word ptr es:[bx+2]", "mov gs:[0FFFFE008h],edx"],
            ),
        ];
        for (bitness, bytes, cfg, expected) in cases {
            let block = translate_with(*bitness, bytes, cfg);
            assert_eq!(target_part(&block), *expected, "{bytes:02x?} ({bitness})");
        }
    }

    #[test]
    fn the_lookup_reads_the_table_and_exits_on_a_miss() {
        let cfg = TranslateConfig::default();
        let block = translate(32, &[0xC3]);
        let list = listing(&block);
        let from = list.iter().position(|s| s == "movzx ecx,dx").unwrap();
        assert_eq!(
            list[from..],
            [
                "movzx ecx,dx",
                "mov ecx,cs:[ecx*8-1000000h]",
                "not edx",
                "lea ecx,[ecx+edx+1]",
                "jecxz 0F000005Dh",
                "mov ecx,gs:[0FFFFE000h]",
                "mov edx,gs:[0FFFFE004h]",
                "mov dword ptr gs:[0FFFFE00Ch],0F000004Bh",
                "jmp far fword ptr cs:[0FFFFF000h]",
                "not edx",
                "movzx ecx,dx",
                "jmp dword ptr cs:[ecx*8-0FFFFFCh]",
            ]
        );
        assert_eq!(cfg.lookup_table, 0xFF00_0000);
        let [miss] = block.side.exits[..] else {
            panic!("one exit")
        };
        assert_eq!(miss.kind, ExitKind::IndirectMiss);
        assert_eq!(miss.guest, GuestEip::TargetSlot);
        assert_eq!(miss.chain_slot, None);
    }

    #[test]
    fn state_before_the_commit_is_the_branch_and_after_it_the_target() {
        let block = translate(32, &[0x90, 0xFF, 0xD0]); // nop; call eax
        let at = GuestEip::At(EIP + 1);
        let save = entry_of(&block, "mov gs:[0FFFFE000h],ecx");
        assert_eq!((save.guest, save.restore_scratch), (at, false));
        let load = entry_of(&block, "mov edx,eax");
        assert_eq!((load.guest, load.restore_scratch), (at, true));
        let push = entry_of(&block, "push 1003h");
        assert_eq!(
            (push.guest, push.restore_scratch, push.can_fault),
            (at, true, true)
        );
        let hash = entry_of(&block, "movzx ecx,dx");
        assert_eq!(
            (hash.guest, hash.restore_scratch, hash.can_fault),
            (GuestEip::TargetSlot, true, false)
        );
        let jump = entry_of(&block, "jmp dword ptr cs:[ecx*8-0FFFFFCh]");
        assert_eq!(jump.guest, GuestEip::TargetSlot);
        // The lookup entry reloads the scratch registers: a stop there restores them.
        let prologue = &block.side.entries[0];
        assert_eq!(prologue.origin, Origin::Prologue);
        assert!(prologue.restore_scratch);
        assert_eq!(block.entry_offset, 14);
    }

    #[test]
    fn no_instruction_of_the_sequence_writes_the_flags() {
        use iced_x86::RflagsBits;
        let block = translate(32, &[0xFF, 0x25, 0, 0x20, 0, 0]);
        for instr in disasm(&block) {
            assert_eq!(
                instr.rflags_modified(),
                RflagsBits::NONE,
                "{:?}",
                instr.code()
            );
        }
    }

    #[test]
    fn the_table_maps_guest_eips_and_empty_entries_match_nothing() {
        let mut table = LookupTable::new();
        assert!(table.is_empty());
        assert_eq!(table.as_bytes().len(), LOOKUP_TABLE_SIZE);
        for eip in [0, 1, 0xFFFF, 0x1_0000, 0xC010_2030, u32::MAX] {
            assert_eq!(table.get(eip), None, "{eip:#x}");
        }
        table.insert(0xC010_2030, 0xF000_1000);
        assert_eq!(table.get(0xC010_2030), Some(0xF000_1000));
        assert_eq!(table.len(), 1);
        // Same index, other EIP: replaces.
        table.insert(0xD010_2030, 0xF000_2000);
        assert_eq!(table.get(0xC010_2030), None);
        assert_eq!(table.get(0xD010_2030), Some(0xF000_2000));
        // Removing an EIP that is not there leaves the entry.
        table.remove(0xC010_2030);
        assert_eq!(table.len(), 1);
        table.remove(0xD010_2030);
        assert!(table.is_empty());
        assert_eq!(lookup_index(0xC010_2030), 0x2030);
        let at = 0x2030 * LOOKUP_ENTRY_SIZE;
        assert_eq!(table.as_bytes()[at..at + 4], 0x2031u32.to_le_bytes());
    }
}
