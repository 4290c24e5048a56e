//! Guest instruction breakpoints: DR0–DR3 with R/W = 00 enabled in DR7.
//!
//! The guest's debug registers are virtual; the host's are not ours to set. An enabled
//! instruction breakpoint is armed by pinning a trap byte at its guest-physical address
//! (the same mechanism as kernel-proxy entry points). When the trap fires at the
//! breakpoint's linear address the guest gets the #DB fault hardware would raise, with
//! DR6.Bn set and EIP at the instruction. When the guest resumes there with EFLAGS.RF set
//! (its #DB handler returned), or reaches the page through another linear alias, the
//! original instruction is single-stepped with the trap lifted and the trap is put back.

use super::code::RamCode;
use super::exits::{SingleStep, Step};
use super::Vm;
use crate::vcpu::exit::Exit as VExit;
use crate::vcpu::state::eflags;
use crate::vcpu::{Exception, Fault};

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
    lin: u32,
    /// Where the trap byte is.
    phys: u32,
    /// The trap was pinned for the breakpoint (not already pinned by the kernel proxy).
    owned: bool,
}

/// The armed breakpoints and the debug registers they were armed from.
#[derive(Debug, Default)]
pub(super) struct Breakpoints {
    applied: ([u32; 4], u32),
    armed: Vec<Armed>,
}

impl Vm {
    /// Re-arms the instruction breakpoints when DR0–DR3 or DR7 changed.
    pub(super) fn sync_breakpoints(&mut self) {
        let dr = &self.state.dr;
        let want = ([dr[0], dr[1], dr[2], dr[3]], dr[7]);
        if want == self.breakpoints.applied {
            return;
        }
        for a in std::mem::take(&mut self.breakpoints.armed) {
            if a.owned {
                self.code
                    .patches
                    .unpin_entry(&mut RamCode(&self.ram), a.phys);
            }
        }
        let (addrs, dr7) = want;
        for (slot, &lin) in addrs.iter().enumerate() {
            if !dr7_enabled(dr7, slot) || dr7_rw(dr7, slot) != 0 {
                continue;
            }
            // A breakpoint on an address with no translation yet cannot fire yet.
            let Some(phys) = self.code_phys(lin) else {
                continue;
            };
            let owned = !self.code.patches.is_entry(phys);
            if owned
                && self
                    .code
                    .patches
                    .pin_entry(&mut RamCode(&self.ram), phys)
                    .is_err()
            {
                continue;
            }
            self.breakpoints.armed.push(Armed {
                slot,
                lin,
                phys,
                owned,
            });
        }
        self.breakpoints.applied = want;
    }

    /// A trap at linear `site` that may be an armed breakpoint. `None`: not ours.
    pub(super) fn breakpoint_trap(&mut self, site: u32) -> Option<Step> {
        let phys = self.code_phys(site)?;
        let hits: Vec<Armed> = self
            .breakpoints
            .armed
            .iter()
            .copied()
            .filter(|a| a.phys == phys)
            .collect();
        let first = *hits.first()?;
        let resumed_with_rf = self.entry_rf_at == Some(site);
        let matched: Vec<&Armed> = hits.iter().filter(|a| a.lin == site).collect();
        let eip = self.state.eip.wrapping_sub(1);
        if !matched.is_empty() && !resumed_with_rf {
            // An instruction breakpoint is a fault: EIP stays at the instruction.
            self.state.eip = eip;
            for a in matched {
                self.state.dr[6] |= 1 << a.slot;
            }
            return Some(self.handle(VExit::Exception(Fault::new(Exception::DB))));
        }
        if !first.owned {
            return None;
        }
        // Run the guest's own instruction once with the trap lifted, then re-arm.
        self.state.eip = eip;
        self.code.patches.unpin_entry(&mut RamCode(&self.ram), phys);
        self.step = Some(SingleStep::repin(phys, self.state.eflags & eflags::TF));
        self.state.eflags |= eflags::TF;
        Some(Ok(None))
    }

    /// Puts a breakpoint's trap back after its instruction was stepped over.
    pub(super) fn repin_breakpoint(&mut self, phys: u32) {
        if self
            .code
            .patches
            .pin_entry(&mut RamCode(&self.ram), phys)
            .is_err()
        {
            // The page is gone from RAM's reach; drop the breakpoint rather than stop.
            self.breakpoints.armed.retain(|a| a.phys != phys);
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
