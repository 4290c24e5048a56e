//! Guest data breakpoints: DR0–DR3 with R/W = 01 (writes) or 11 (reads and writes)
//! enabled in DR7 (SDM Vol. 3B §17.2), and the access check the debugger's watchpoints
//! share.
//!
//! The guest's debug registers are virtual and the host's are not the monitor's to set.
//! While a data breakpoint is enabled the guest runs one instruction at a time (one
//! instruction per block in translate mode, the monitor's TF in patch mode): before each
//! instruction the monitor records the linear ranges it will access (its memory operands,
//! implicit stack accesses included, with the registers it starts with), and when it has
//! completed, a range that overlaps an enabled breakpoint of a matching kind raises the
//! #DB trap hardware raises, with DR6.Bn set and EIP after the instruction. Breakpoint
//! lengths follow DR7's LEN field (1, 2, 4 or 8 bytes, the address aligned down to the
//! length). Accesses the monitor performs while emulating an instruction (a sensitive
//! instruction, a delivery) are not watched.

use super::cpu::Stepping;
use super::Vm;
use crate::addr::GuestLinear;
use crate::vcpu::emulate::operands::{read_gpr, string_registers};
use crate::x86::eflags;

/// One enabled data breakpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataBreakpoint {
    /// DR0–DR3.
    pub slot: usize,
    /// First watched byte (DRn aligned down to the length).
    pub start: u32,
    /// Watched bytes.
    pub len: u32,
    /// R/W = 11: reads fire too.
    pub reads: bool,
}

/// A memory access an instruction is about to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// Linear address.
    pub lin: GuestLinear,
    /// Bytes.
    pub size: u32,
    /// The instruction reads them.
    pub read: bool,
    /// The instruction writes them.
    pub write: bool,
}

/// Whether DR7 enables any data breakpoint: what every entry asks, without building
/// the list [`enabled`] gives.
pub fn any_enabled(dr: &[u32; 8]) -> bool {
    let dr7 = dr[7];
    (0..4).any(|slot| slot_watches_data(dr7, slot))
}

/// Slot `slot` is enabled (L or G) with R/W = 01 (writes) or 11 (reads and writes).
fn slot_watches_data(dr7: u32, slot: usize) -> bool {
    let on = dr7 & (0b11 << (2 * slot)) != 0;
    let rw = (dr7 >> (16 + 4 * slot)) & 0b11;
    on && (rw == 0b01 || rw == 0b11)
}

/// The data breakpoints DR7 enables over addresses `dr[0..4]`.
pub fn enabled(dr: &[u32; 8]) -> Vec<DataBreakpoint> {
    let dr7 = dr[7];
    (0..4)
        .filter_map(|slot| {
            let rw = (dr7 >> (16 + 4 * slot)) & 0b11;
            let len = match (dr7 >> (18 + 4 * slot)) & 0b11 {
                0b00 => 1,
                0b01 => 2,
                0b10 => 8,
                _ => 4,
            };
            slot_watches_data(dr7, slot).then(|| DataBreakpoint {
                slot,
                start: dr.get(slot).copied().unwrap_or(0) & !(len - 1),
                len,
                reads: rw == 0b11,
            })
        })
        .collect()
}

/// Whether one of `accesses` touches `len` bytes at `start` as a write (`writes`) or a
/// read (`reads`).
pub fn touched(start: u32, len: u32, reads: bool, writes: bool, accesses: &[Access]) -> bool {
    let (b0, b1) = (u64::from(start), u64::from(start) + u64::from(len));
    accesses.iter().any(|a| {
        let (a0, a1) = (
            u64::from(a.lin.raw()),
            u64::from(a.lin.raw()) + u64::from(a.size),
        );
        ((a.write && writes) || (a.read && reads)) && a0 < b1 && b0 < a1
    })
}

/// The DR6 B0–B3 bits the accesses fire.
pub fn hits(breakpoints: &[DataBreakpoint], accesses: &[Access]) -> u32 {
    breakpoints
        .iter()
        .filter(|bp| touched(bp.start, bp.len, bp.reads, true, accesses))
        .fold(0, |dr6, bp| dr6 | 1 << bp.slot)
}

/// How many elements a REP MOVS, STOS, LODS, INS or OUTS at the CPU's state will move
/// (ECX or CX by its address size, 0 included; 1 for anything else). REPE/REPNE CMPS and SCAS stop
/// early on a comparison, so only their first element is known beforehand.
fn rep_elements(instr: &iced_x86::Instruction, state: &crate::vcpu::VcpuState) -> u32 {
    use iced_x86::Mnemonic as M;
    let repeated = instr.has_rep_prefix() || instr.has_repne_prefix();
    let counted = matches!(
        instr.mnemonic(),
        M::Movsb
            | M::Movsw
            | M::Movsd
            | M::Stosb
            | M::Stosw
            | M::Stosd
            | M::Lodsb
            | M::Lodsw
            | M::Lodsd
            | M::Insb
            | M::Insw
            | M::Insd
            | M::Outsb
            | M::Outsw
            | M::Outsd
    );
    if !repeated || !counted {
        return 1;
    }
    let (_, _, count) = string_registers(instr);
    read_gpr(state, count)
}

/// The guest's enabled data breakpoints and the accesses of the instruction about to run,
/// checked once it has completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    /// The breakpoints DR7 enabled when the instruction was entered.
    pub breakpoints: Vec<DataBreakpoint>,
    /// What the instruction accesses.
    pub accesses: Vec<Access>,
}

impl Watched {
    /// The DR6 bits the instruction fired.
    pub fn hits(&self) -> u32 {
        hits(&self.breakpoints, &self.accesses)
    }
}

impl Vm {
    /// Patch mode, before an entry: with the guest's data breakpoints enabled, the
    /// instruction runs alone under the monitor's TF (unless a step is armed already) and
    /// its accesses are recorded for [`super::handle`]'s check once it ran.
    pub(super) fn patch_data_breakpoints(&mut self) {
        self.cpu.watched = self.guest_watch();
        if self.cpu.watched.is_some() && self.cpu.step.is_none() {
            self.cpu.start_step(Stepping::DataBreakpoints);
        }
    }

    /// The memory the instruction at EIP will access, computed from its operands and the
    /// registers it starts with (empty when it cannot be decoded: it faults instead). LEA
    /// and the hint instructions address memory they neither read nor write.
    ///
    /// With `whole_rep`, a REP MOVS, STOS, LODS, INS or OUTS covers every element its
    /// count gives, in the direction DF gives (translate mode runs it whole); without,
    /// its first element (under TF the CPU traps after each iteration).
    pub(super) fn instruction_accesses(&self, whole_rep: bool) -> Vec<Access> {
        let Some(instr) = self.fetch().decode_at(self.cpu.state.eip) else {
            return Vec::new();
        };
        let state = &self.cpu.state;
        let elements = if whole_rep {
            rep_elements(&instr, state)
        } else {
            1
        };
        if elements == 0 {
            return Vec::new();
        }
        let down = state.eflags & eflags::DF != 0;
        self.memory_operands(&instr)
            .into_iter()
            .map(|(seg, off, size, access)| {
                use iced_x86::OpAccess as A;
                let first = GuestLinear(state.sreg(seg).base).wrapping_add(off);
                let span = size.saturating_mul(elements);
                let lin = if down {
                    GuestLinear(first.raw().wrapping_sub(span - size))
                } else {
                    first
                };
                Access {
                    lin,
                    size: span,
                    read: matches!(
                        access,
                        A::Read | A::CondRead | A::ReadWrite | A::ReadCondWrite
                    ),
                    write: matches!(
                        access,
                        A::Write | A::CondWrite | A::ReadWrite | A::ReadCondWrite
                    ),
                }
            })
            .collect()
    }

    /// With the guest's data breakpoints enabled: them and the accesses of the
    /// instruction at EIP.
    pub(super) fn guest_watch(&self) -> Option<Watched> {
        any_enabled(&self.cpu.state.dr).then(|| Watched {
            breakpoints: enabled(&self.cpu.state.dr),
            accesses: self.instruction_accesses(self.translating()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dr(addr: u32, dr7: u32) -> [u32; 8] {
        [addr, 0, 0, 0, 0, 0, 0, dr7]
    }

    fn access(lin: u32, size: u32, write: bool) -> Access {
        Access {
            lin: GuestLinear(lin),
            size,
            read: !write,
            write,
        }
    }

    #[test]
    fn dr7_fields_decide_kind_and_length() {
        // L0, R/W0 = 01 (write), LEN0 = 11 (4 bytes).
        let bps = enabled(&dr(0x1002, 0b11_01 << 16 | 1));
        assert_eq!(
            bps,
            [DataBreakpoint {
                slot: 0,
                start: 0x1000,
                len: 4,
                reads: false
            }]
        );
        // R/W = 00 is an instruction breakpoint, 10 an I/O one: not data breakpoints.
        assert!(enabled(&dr(0x1000, 1)).is_empty());
        assert!(enabled(&dr(0x1000, 0b10 << 16 | 1)).is_empty());
        // Disabled.
        assert!(enabled(&dr(0x1000, 0b11_01 << 16)).is_empty());
    }

    #[test]
    fn writes_fire_write_breakpoints_reads_only_read_write_ones() {
        let write_only = enabled(&dr(0x2000, 0b11_01 << 16 | 2));
        assert_eq!(hits(&write_only, &[access(0x2003, 1, true)]), 1);
        assert_eq!(hits(&write_only, &[access(0x2000, 4, false)]), 0);
        assert_eq!(hits(&write_only, &[access(0x2004, 4, true)]), 0);
        assert_eq!(hits(&write_only, &[access(0x1ffe, 4, true)]), 1, "overlap");
        let read_write = enabled(&dr(0x2000, 0b00_11 << 16 | 1));
        assert_eq!(hits(&read_write, &[access(0x2000, 1, false)]), 1);
        assert_eq!(hits(&read_write, &[access(0x2001, 1, false)]), 0, "1 byte");
    }
}
