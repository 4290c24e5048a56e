//! Guest instruction breakpoints: DR0–DR3 with R/W = 00 enabled in DR7.
//!
//! The guest's debug registers are virtual; the host's are not ours to set. An enabled
//! instruction breakpoint is armed by pinning a trap byte at its guest-physical address
//! (the same mechanism as kernel-proxy entry points). When the trap fires at the
//! breakpoint's linear address the guest gets the #DB fault hardware would raise, with
//! DR6.Bn set and EIP at the instruction. When the guest resumes there with EFLAGS.RF set
//! (its #DB handler returned), or reaches the page through another linear alias, the
//! original instruction is single-stepped with the trap lifted and the trap is put back.

use rewriter::PatchTable;

use super::code::RamCode;
use super::guest_memory::GuestMemory;
use crate::addr::{GuestLinear, GuestPhys};
use crate::memory::GuestRam;

/// DR7 L0/G0 enable bits of breakpoint `n` (SDM Vol. 3B §17.2.4).
const fn dr7_enabled(dr7: u32, n: usize) -> bool {
    dr7 & (0b11 << (2 * n)) != 0
}

/// DR7 R/W field of breakpoint `n`: 00 is an instruction breakpoint.
const fn dr7_rw(dr7: u32, n: usize) -> u32 {
    (dr7 >> (16 + 4 * n)) & 0b11
}

/// One armed instruction breakpoint.
#[derive(Debug, Clone, Copy)]
struct Armed {
    /// DR0–DR3.
    slot: usize,
    /// The linear address in DRn.
    lin: GuestLinear,
    /// Where the trap byte is.
    phys: GuestPhys,
    /// The trap was pinned for the breakpoint (not already pinned by the kernel proxy).
    owned: bool,
}

/// The armed breakpoints and the debug registers they were armed from.
#[derive(Debug, Default)]
pub struct Breakpoints {
    applied: ([u32; 4], u32),
    armed: Vec<Armed>,
}

/// What a trap byte at an armed breakpoint's physical address means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakpointHit {
    /// The breakpoints in this DR6 mask fire: the guest gets #DB with EIP at the
    /// instruction.
    Fire {
        /// DR6.B0–B3.
        dr6: u32,
    },
    /// The guest's own instruction runs once with the trap lifted (resumed with RF, or
    /// reached through another linear alias); the trap goes back after it.
    StepOver,
}

impl Breakpoints {
    /// Re-arms the instruction breakpoints when DR0–DR3 or DR7 changed; `user` is the
    /// privilege level the addresses are translated at.
    pub fn sync(&mut self, dr: &[u32; 8], mem: &GuestMemory, user: bool, patches: &mut PatchTable) {
        let want = ([dr[0], dr[1], dr[2], dr[3]], dr[7]);
        if want == self.applied {
            return;
        }
        let mut ram = RamCode(&mem.ram);
        for a in std::mem::take(&mut self.armed) {
            if a.owned {
                patches.unpin_entry(&mut ram, a.phys.raw());
            }
        }
        let (addrs, dr7) = want;
        for (slot, &lin) in addrs.iter().enumerate() {
            if !dr7_enabled(dr7, slot) || dr7_rw(dr7, slot) != 0 {
                continue;
            }
            let lin = GuestLinear(lin);
            // A breakpoint on an address with no translation yet cannot fire yet.
            let Some(phys) = mem.code_phys(lin, user) else {
                continue;
            };
            let owned = !patches.is_entry(phys.raw());
            if owned && patches.pin_entry(&mut ram, phys.raw()).is_err() {
                continue;
            }
            self.armed.push(Armed {
                slot,
                lin,
                phys,
                owned,
            });
        }
        self.applied = want;
    }

    /// A trap at linear `site` (guest-physical `phys`) that may be an armed breakpoint;
    /// `resumed_with_rf` when the guest was entered right there with EFLAGS.RF set.
    /// `None`: not a breakpoint's trap.
    pub fn hit(
        &self,
        site: GuestLinear,
        phys: GuestPhys,
        resumed_with_rf: bool,
    ) -> Option<BreakpointHit> {
        let mut at_phys = self.armed.iter().filter(|a| a.phys == phys).peekable();
        let first = **at_phys.peek()?;
        let dr6 = at_phys
            .filter(|a| a.lin == site)
            .fold(0, |m, a| m | (1 << a.slot));
        if dr6 != 0 && !resumed_with_rf {
            // An instruction breakpoint is a fault: EIP stays at the instruction.
            return Some(BreakpointHit::Fire { dr6 });
        }
        first.owned.then_some(BreakpointHit::StepOver)
    }

    /// Lifts the trap at `phys` for a step over the instruction under it.
    pub fn lift(&self, phys: GuestPhys, ram: &GuestRam, patches: &mut PatchTable) {
        patches.unpin_entry(&mut RamCode(ram), phys.raw());
    }

    /// Puts a breakpoint's trap back after its instruction was stepped over.
    pub fn repin(&mut self, phys: GuestPhys, ram: &GuestRam, patches: &mut PatchTable) {
        if patches.pin_entry(&mut RamCode(ram), phys.raw()).is_err() {
            // The page is gone from RAM's reach; drop the breakpoint rather than stop.
            self.armed.retain(|a| a.phys != phys);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dr7_fields() {
        // L0 set, R/W0 = 00 (execute); G1 set, R/W1 = 01 (write).
        let dr7 = 0b01 | (0b10 << 2) | (0b01 << 20);
        assert!(dr7_enabled(dr7, 0) && dr7_rw(dr7, 0) == 0);
        assert!(dr7_enabled(dr7, 1) && dr7_rw(dr7, 1) == 1);
        assert!(!dr7_enabled(dr7, 2));
    }
}
