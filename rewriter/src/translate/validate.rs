//! The translator output validator (ARCHITECTURE §5): re-decodes a block as the CPU
//! will run it and checks the rules the isolation argument rests on.
//!
//! * Every byte belongs to an instruction that decodes, in 32-bit mode, from the
//!   block's first byte on: there is no other way into the block's bytes (every branch
//!   is checked to land on one of these starts or on another block's entry).
//! * No instruction of the rewriter's class table (privileged, mode-switching,
//!   far transfer, segment load, INT n, SYSENTER/SYSCALL…), except the one far jump
//!   into the gate through the gate pointer. Without another far transfer, nothing can
//!   reach the host's 64-bit code selector.
//! * No CALL or RET: they would put a TC address on the guest's stack or jump to one
//!   the guest chose.
//! * Relative branches go to an instruction of this block, to the gate, or to a block
//!   entry the caller lists (chained exits). The only indirect branch is the lookup
//!   table's `jmp cs:[table + reg*8 + 4]`.
//! * CS-relative memory accesses read only the lookup table and the gate pointer;
//!   accesses through the reserved scratch segment touch only the scratch slots.
//! * The last instruction never falls through into whatever follows the block.
//!
//! Debug builds and the fuzz-style tests run it on every block.

use std::ops::Range;

use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, Instruction, Mnemonic, OpKind, Register,
};
use thiserror::Error;

use super::decode::reads_through;
use super::{Gate, Scratch, TranslateConfig, SCRATCH_LEN};
use crate::class::{classify, Class};

/// What the validator checks a block against.
#[derive(Clone, Debug)]
pub struct Rules<'a> {
    /// The translation cache's address range (a `u64` end so it may reach 4 GiB).
    pub tc: Range<u64>,
    /// The gate every exit jumps into.
    pub gate: Gate,
    /// The scratch slots.
    pub scratch: Scratch,
    /// Address of the guest-EIP→TC lookup table.
    pub lookup_table: u32,
    /// TC addresses of block entries, sorted: the targets chained exits may jump to.
    pub entries: &'a [u32],
}

impl Rules<'static> {
    /// The rules for blocks translated with `cfg` into a TC at `tc`, with no chained
    /// exits.
    pub fn new(cfg: &TranslateConfig, tc: Range<u64>) -> Self {
        Rules {
            tc,
            gate: cfg.gate,
            scratch: cfg.scratch,
            lookup_table: cfg.lookup_table,
            entries: &[],
        }
    }
}

impl<'a> Rules<'a> {
    /// The same rules with `entries` (sorted) as valid chaining targets.
    pub fn with_entries<'b>(&self, entries: &'b [u32]) -> Rules<'b> {
        Rules {
            tc: self.tc.clone(),
            gate: self.gate,
            scratch: self.scratch,
            lookup_table: self.lookup_table,
            entries,
        }
    }
}

/// A rule a block breaks.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
#[error("block offset {offset:#x}: {kind}")]
pub struct Violation {
    /// Offset in the block of the offending instruction.
    pub offset: u32,
    /// Which rule.
    pub kind: ViolationKind,
}

/// Which rule a block breaks.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum ViolationKind {
    /// The block does not lie inside the TC.
    #[error("the block lies outside the translation cache")]
    OutsideTc,
    /// Bytes that do not decode (or an instruction cut off by the block's end).
    #[error("bytes that do not decode")]
    Undecodable,
    /// An instruction of the rewriter's class table.
    #[error("a {} instruction", .0.name())]
    Sensitive(Class),
    /// A near CALL (pushes a TC address on the guest stack).
    #[error("a near call")]
    Call,
    /// A near RET (jumps to an address from the guest stack).
    #[error("a near return")]
    Return,
    /// An indirect jump other than the lookup table's.
    #[error("an indirect jump other than the lookup table's")]
    IndirectBranch,
    /// A relative branch to an address that is no instruction of the block, no listed
    /// block entry and not the gate.
    #[error("a branch to {target:#x}")]
    BranchTarget {
        /// Where it goes.
        target: u32,
    },
    /// A CS-relative memory access other than the lookup table or the gate pointer.
    #[error("a CS-relative access outside the lookup table and the gate pointer")]
    CodeSegmentAccess,
    /// An access through the scratch segment outside the scratch slots.
    #[error("a scratch-segment access outside the scratch slots")]
    ScratchAccess,
    /// A transactional-memory instruction (its abort path is a hidden branch).
    #[error("a transactional-memory instruction")]
    Transactional,
    /// The last instruction does not end in an unconditional jump.
    #[error("the block falls through its end")]
    FallsOffEnd,
}

/// Checks the block `bytes`, placed at TC address `address`, against `rules`.
///
/// # Errors
///
/// The first [`Violation`] found, in address order.
pub fn validate(bytes: &[u8], address: u32, rules: &Rules) -> Result<(), Violation> {
    let start = u64::from(address);
    let end = start + bytes.len() as u64;
    if start < rules.tc.start || end > rules.tc.end {
        return Err(Violation {
            offset: 0,
            kind: ViolationKind::OutsideTc,
        });
    }
    let mut decoder = Decoder::with_ip(32, bytes, start, DecoderOptions::NONE);
    let mut instrs = Vec::new();
    while decoder.can_decode() {
        let offset = offset_in(&decoder, start);
        let instr = decoder.decode();
        if instr.is_invalid() {
            return Err(Violation {
                offset,
                kind: ViolationKind::Undecodable,
            });
        }
        instrs.push(instr);
    }
    let starts: Vec<u32> = instrs
        .iter()
        .map(|i| u32::try_from(i.ip()).unwrap_or(0))
        .collect();
    for instr in &instrs {
        let offset = u32::try_from(instr.ip() - start).unwrap_or(0);
        check(instr, address, bytes.len(), &starts, rules)
            .map_err(|kind| Violation { offset, kind })?;
    }
    match instrs.last() {
        Some(last)
            if matches!(
                last.flow_control(),
                FlowControl::UnconditionalBranch | FlowControl::IndirectBranch
            ) =>
        {
            Ok(())
        }
        last => Err(Violation {
            offset: last.map_or(0, |i| u32::try_from(i.ip() - start).unwrap_or(0)),
            kind: ViolationKind::FallsOffEnd,
        }),
    }
}

fn offset_in(decoder: &Decoder, start: u64) -> u32 {
    u32::try_from(decoder.ip() - start).unwrap_or(u32::MAX)
}

fn check(
    instr: &Instruction,
    address: u32,
    len: usize,
    starts: &[u32],
    rules: &Rules,
) -> Result<(), ViolationKind> {
    if is_gate_jump(instr, rules.gate) {
        return Ok(());
    }
    let class = classify(instr);
    // PUSHFD is the one sensitive instruction the translator itself emits (inline
    // PUSHF): it only reads the host's flags, whose IF and IOPL the translation replaces
    // before the guest sees the image.
    let own_pushfd = class == Class::Pushf && instr.code() == iced_x86::Code::Pushfd;
    // FPU instructions and PAUSE are conditional: natively they give the guest's result,
    // and they leave for the monitor only while its state asks (CR0.TS/EM, several
    // vCPUs on one thread).
    let conditional = matches!(class, Class::Fpu | Class::Pause);
    if class != Class::Innocuous
        && !conditional
        && !own_pushfd
        && !is_own_segment_load(instr, rules)
    {
        return Err(ViolationKind::Sensitive(class));
    }
    check_memory(instr, rules)?;
    match instr.flow_control() {
        FlowControl::Next => Ok(()),
        FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch => {
            let target = u32::try_from(instr.near_branch_target()).unwrap_or(0);
            let in_block =
                u64::from(target.wrapping_sub(address)) < len as u64 && target >= address;
            let ok = if in_block {
                starts.binary_search(&target).is_ok()
            } else {
                let unconditional = instr.flow_control() == FlowControl::UnconditionalBranch;
                (unconditional && rules.gate == Gate::Near(target))
                    || (rules.tc.contains(&u64::from(target))
                        && rules.entries.binary_search(&target).is_ok())
            };
            if ok {
                Ok(())
            } else {
                Err(ViolationKind::BranchTarget { target })
            }
        }
        FlowControl::IndirectBranch if is_table_jump(instr, rules.lookup_table) => Ok(()),
        FlowControl::IndirectBranch => Err(ViolationKind::IndirectBranch),
        FlowControl::Call | FlowControl::IndirectCall => Err(ViolationKind::Call),
        FlowControl::Return => Err(ViolationKind::Return),
        FlowControl::XbeginXabortXend => Err(ViolationKind::Transactional),
        FlowControl::Interrupt | FlowControl::Exception => Err(ViolationKind::Sensitive(class)),
    }
}

/// Segment rules, with the translator's own reading of which instructions access
/// memory through which segment ([`reads_through`]).
fn check_memory(instr: &Instruction, rules: &Rules) -> Result<(), ViolationKind> {
    if reads_through(instr, Register::CS) {
        let table = rules.lookup_table;
        let reads_table = instr.code() == Code::Mov_r32_rm32
            && is_table_operand(instr, table)
            && instr.memory_displacement32() == table;
        if reads_table || is_table_jump(instr, table) {
            return Ok(());
        }
        return Err(ViolationKind::CodeSegmentAccess);
    }
    let scratch = rules.scratch.segment.register();
    if reads_through(instr, scratch) {
        let first = rules.scratch.base;
        let displ = instr.memory_displacement32();
        let absolute =
            instr.memory_base() == Register::None && instr.memory_index() == Register::None;
        let size = u32::try_from(instr.memory_size().size()).unwrap_or(u32::MAX);
        let inside = displ.wrapping_sub(first) <= SCRATCH_LEN.saturating_sub(size);
        if !(absolute && inside) {
            return Err(ViolationKind::ScratchAccess);
        }
    }
    Ok(())
}

/// The segment loads of inline MOV and POP to a segment register: DS, ES, FS or GS
/// (never the scratch segment itself) from the null-selector slot or a reload record's
/// host selector, which only the monitor writes (guest instructions never reach the
/// scratch segment), and only with the null selector or a mirror it installed.
fn is_own_segment_load(instr: &Instruction, rules: &Rules) -> bool {
    use super::{SLOT_NULL_SELECTOR, SLOT_RELOADS};
    let scratch = rules.scratch.segment.register();
    let target = instr.op0_register();
    let data = matches!(
        target,
        Register::DS | Register::ES | Register::FS | Register::GS
    );
    let offset = instr
        .memory_displacement32()
        .wrapping_sub(rules.scratch.base);
    let host_slots = [0u32, 3, 4, 5].map(|k| SLOT_RELOADS + 8 * k + 4);
    matches!(instr.code(), Code::Mov_Sreg_rm16 | Code::Mov_Sreg_r32m16)
        && instr.op1_kind() == OpKind::Memory
        && data
        && target != scratch
        && instr.memory_segment() == scratch
        && instr.memory_base() == Register::None
        && instr.memory_index() == Register::None
        && (offset == SLOT_NULL_SELECTOR || host_slots.contains(&offset))
}

/// `cs:[disp32 + reg*8]` with a 32-bit index register and no base.
fn is_table_operand(instr: &Instruction, table: u32) -> bool {
    let displ = instr.memory_displacement32();
    instr.memory_segment() == Register::CS
        && instr.memory_base() == Register::None
        && instr.memory_index().is_gpr32()
        && instr.memory_index_scale() == 8
        && (displ == table || displ == table.wrapping_add(4))
}

/// `jmp dword cs:[table + reg*8 + 4]`.
fn is_table_jump(instr: &Instruction, table: u32) -> bool {
    instr.code() == Code::Jmp_rm32
        && instr.op0_kind() == OpKind::Memory
        && is_table_operand(instr, table)
        && instr.memory_displacement32() == table.wrapping_add(4)
}

/// `jmp far dword cs:[pointer]` for a far-pointer gate.
fn is_gate_jump(instr: &Instruction, gate: Gate) -> bool {
    let Gate::FarPointer(pointer) = gate else {
        return false;
    };
    instr.code() == Code::Jmp_m1632
        && instr.memory_segment() == Register::CS
        && instr.memory_base() == Register::None
        && instr.memory_index() == Register::None
        && instr.memory_displacement32() == pointer
        && instr.mnemonic() == Mnemonic::Jmp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::testing::{translate, TC};

    fn rules(cfg: &TranslateConfig) -> Rules<'static> {
        Rules::new(cfg, u64::from(TC)..u64::from(TC) + 0x10_0000)
    }

    /// `bytes` followed by a gate exit, checked at [`TC`].
    fn check_bytes(bytes: &[u8]) -> Result<(), Violation> {
        let cfg = TranslateConfig::default();
        // jmp far cs:[gate pointer]
        let Gate::FarPointer(p) = cfg.gate else {
            unreachable!()
        };
        let mut all = bytes.to_vec();
        all.extend_from_slice(&[0x2E, 0xFF, 0x2D]);
        all.extend_from_slice(&p.to_le_bytes());
        validate(&all, TC, &rules(&cfg))
    }

    fn kind(bytes: &[u8]) -> ViolationKind {
        check_bytes(bytes).expect_err("a violation").kind
    }

    #[test]
    fn translator_output_passes() {
        let cfg = TranslateConfig::default();
        for bytes in [
            &[0x90, 0xC3][..],
            &[0x74, 0x00],
            &[0xE8, 0, 0, 0, 0],
            &[0xFF, 0x24, 0x85, 0, 0x20, 0, 0],
            &[0xFA],
        ] {
            let block = translate(32, bytes);
            validate(&block.bytes, block.tc_address, &rules(&cfg)).unwrap();
        }
        check_bytes(&[0x89, 0xC8]).unwrap();
    }

    #[test]
    fn far_transfers_and_privileged_instructions_are_rejected() {
        let cases: &[(&[u8], Class)] = &[
            (&[0xEA, 0, 0, 0, 0, 0x33, 0], Class::FarJmp),
            (&[0x9A, 0, 0, 0, 0, 0x33, 0], Class::FarCall),
            // A far jump through a pointer that is not the gate's.
            (&[0x2E, 0xFF, 0x2D, 0, 0x10, 0, 0], Class::FarJmp),
            (&[0xFF, 0x28], Class::FarJmp),
            (&[0xCB], Class::FarRet),
            (&[0xCF], Class::Iret),
            (&[0x0F, 0x05], Class::Syscall),
            (&[0x0F, 0x34], Class::Sysenter),
            (&[0xCD, 0x80], Class::Int),
            (&[0xCC], Class::Int3),
            (&[0x8E, 0xD8], Class::MovToSreg),
            (&[0x0F, 0x22, 0xC0], Class::MovCr),
            (&[0xFA], Class::Cli),
            (&[0x9D], Class::Popf),
            (&[0x0F, 0x0B], Class::Ud),
        ];
        for (bytes, class) in cases {
            assert_eq!(
                kind(bytes),
                ViolationKind::Sensitive(*class),
                "{bytes:02x?}"
            );
        }
    }

    #[test]
    fn segment_loads_come_only_from_the_monitor_slots() {
        let with = |modrm: u8, offset: u32| {
            let mut b = vec![0x65, 0x8E, modrm];
            b.extend_from_slice(&0xFFFF_E000u32.wrapping_add(offset).to_le_bytes());
            b
        };
        let ds_host = super::super::SLOT_RELOADS + 8 * 3 + 4;
        let null = super::super::SLOT_NULL_SELECTOR;
        // mov ds, gs:[DS's host selector]; mov es, gs:[the null selector]
        check_bytes(&with(0x1D, ds_host)).unwrap();
        check_bytes(&with(0x05, null)).unwrap();
        // The scratch segment itself, SS, or another slot.
        let cases = [
            with(0x2D, ds_host),
            with(0x15, ds_host),
            with(0x1D, super::super::SLOT_EXIT),
            with(0x1D, ds_host + 2),
            // mov ds, ax
            vec![0x8E, 0xD8],
        ];
        for bytes in cases {
            assert_eq!(
                kind(&bytes),
                ViolationKind::Sensitive(Class::MovToSreg),
                "{bytes:02x?}"
            );
        }
    }

    #[test]
    fn calls_returns_and_foreign_indirect_jumps_are_rejected() {
        assert_eq!(kind(&[0xC3]), ViolationKind::Return);
        assert_eq!(kind(&[0xC2, 4, 0]), ViolationKind::Return);
        assert_eq!(kind(&[0xE8, 0, 0, 0, 0]), ViolationKind::Call);
        assert_eq!(kind(&[0xFF, 0xD0]), ViolationKind::Call);
        assert_eq!(kind(&[0xFF, 0xE0]), ViolationKind::IndirectBranch);
        // jmp [table + ecx*8 + 4] without the cs: override reads guest memory.
        assert_eq!(
            kind(&[0xFF, 0x24, 0xCD, 0x04, 0, 0, 0xFF]),
            ViolationKind::IndirectBranch
        );
        // The table's first field holds a guest EIP, not a TC address.
        assert_eq!(
            kind(&[0x2E, 0xFF, 0x24, 0xCD, 0x00, 0, 0, 0xFF]),
            ViolationKind::CodeSegmentAccess
        );
        assert_eq!(
            kind(&[0xC7, 0xF8, 0, 0, 0, 0]),
            ViolationKind::Transactional
        );
    }

    #[test]
    fn branches_must_land_on_this_block_an_entry_or_the_gate() {
        // Out of the block.
        assert_eq!(
            kind(&[0xE9, 0x00, 0x10, 0, 0]),
            ViolationKind::BranchTarget {
                target: TC + 0x1005
            }
        );
        // Into the middle of an instruction of the block (the jump's own rel32).
        assert_eq!(
            kind(&[0x74, 0x01, 0xB8, 0x90, 0x90, 0x90, 0x90]),
            ViolationKind::BranchTarget { target: TC + 3 }
        );
        // Onto an instruction start: fine.
        check_bytes(&[0x74, 0x01, 0x90, 0x90]).unwrap();
        // A 16-bit branch truncates the TC address.
        assert!(matches!(
            kind(&[0x66, 0xE9, 0x00, 0x00]),
            ViolationKind::BranchTarget { .. }
        ));
        // The near gate is a valid target only for a near gate.
        let near = TranslateConfig {
            gate: Gate::Near(0xFFFF_8000),
            ..TranslateConfig::default()
        };
        let jmp_gate = {
            let rel = 0xFFFF_8000u32.wrapping_sub(TC + 5);
            let mut b = vec![0xE9];
            b.extend_from_slice(&rel.to_le_bytes());
            b
        };
        validate(&jmp_gate, TC, &rules(&near)).unwrap();
        assert!(validate(&jmp_gate, TC, &rules(&TranslateConfig::default())).is_err());
    }

    #[test]
    fn segment_accesses_are_confined_to_the_table_and_the_slots() {
        assert_eq!(kind(&[0x2E, 0x8B, 0x00]), ViolationKind::CodeSegmentAccess);
        // mov eax, gs:[scratch base + offset]
        let load = |offset: u32| {
            let mut bytes = vec![0x65, 0xA1];
            bytes.extend_from_slice(&0xFFFF_E000u32.wrapping_add(offset).to_le_bytes());
            bytes
        };
        // Past the slots.
        assert_eq!(kind(&load(SCRATCH_LEN)), ViolationKind::ScratchAccess);
        // Straddling the end.
        assert_eq!(kind(&load(SCRATCH_LEN - 2)), ViolationKind::ScratchAccess);
        // The last dword of the slots.
        check_bytes(&load(SCRATCH_LEN - 4)).unwrap();
        // mov eax, gs:[eax]
        assert_eq!(kind(&[0x65, 0x8B, 0x00]), ViolationKind::ScratchAccess);
        // mov eax, gs:[scratch base + 12]: the exit slot.
        check_bytes(&[0x65, 0xA1, 0x0C, 0xE0, 0xFF, 0xFF]).unwrap();
    }

    #[test]
    fn structure_is_checked() {
        let cfg = TranslateConfig::default();
        assert_eq!(
            validate(&[0x90], TC, &rules(&cfg)).unwrap_err().kind,
            ViolationKind::FallsOffEnd
        );
        assert_eq!(
            validate(&[], TC, &rules(&cfg)).unwrap_err().kind,
            ViolationKind::FallsOffEnd
        );
        assert_eq!(kind(&[0xFF, 0xFF]), ViolationKind::Undecodable);
        // A cut-off instruction at the end.
        assert_eq!(
            validate(&[0x90, 0xB8, 0x01], TC, &rules(&cfg))
                .unwrap_err()
                .kind,
            ViolationKind::Undecodable
        );
        assert_eq!(
            validate(&[0xEB, 0xFE], 0x1000, &rules(&cfg))
                .unwrap_err()
                .kind,
            ViolationKind::OutsideTc
        );
    }
}
