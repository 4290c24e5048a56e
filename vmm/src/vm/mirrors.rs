//! Host LDT mirrors of the guest's segment registers (ARCHITECTURE.md §4).
//!
//! Each guest segment register has its own host LDT slot. The slot holds the mirror of the
//! descriptor the register's cache was loaded from (DPL forced to 3 by the host), and the
//! host selector of that slot is what the CPU runs with. `modify_ldt` is a syscall, so a
//! slot is rewritten only when the mirror changed. Mirrors clamped for user mode under
//! paging live in a second bank of slots, so going between user and kernel mode switches
//! selectors instead of rewriting descriptors.

use crate::addr::GuestLinear;
use crate::hostcpu::ldt::{self, LdtDescriptor, LdtError, SegmentKind};
use crate::hostcpu::GuestContext;
#[cfg(test)]
use crate::vcpu::mirror_of;
use crate::vcpu::{mirror_below, MirrorDescriptor, VcpuState};
use crate::x86::SegReg;

/// Host LDT slot of the first mirror; slot 0 stays empty so that no guest state can ever
/// be confused with a null selector.
const FIRST_SLOT: u16 = 1;

/// Slots per bank: one per segment register.
const BANK: u16 = 6;

/// Banks: unclamped, clamped below the kernel's part (user mode under paging), clamped
/// below the monitor window only (kernel mode in translate mode).
const BANKS: u16 = 3;

/// The LDT slot of the translation cache's code segment (translate mode).
const TC_CODE_SLOT: u16 = FIRST_SLOT + BANKS * BANK;
/// The LDT slot of the segment that addresses the vCPU page (translate mode).
const SCRATCH_SLOT: u16 = TC_CODE_SLOT + 1;

/// The LDT slot of the segment one instruction's window access runs through.
const BOUNCE_SLOT: u16 = SCRATCH_SLOT + 1;

/// The host selector of the translation cache's code segment.
pub const TC_CODE_SELECTOR: u16 = ldt::ldt_selector(TC_CODE_SLOT);
/// The host selector of the vCPU-page segment.
pub const SCRATCH_SELECTOR: u16 = ldt::ldt_selector(SCRATCH_SLOT);
/// The host selector of the bounce segment ([`Mirrors::set_bounce`]).
pub const BOUNCE_SELECTOR: u16 = ldt::ldt_selector(BOUNCE_SLOT);

/// The host selector that loads the mirror slot of `reg` (unclamped bank).
pub const fn mirror_selector(reg: SegReg) -> u16 {
    ldt::ldt_selector(slot_of(reg, 0))
}

/// The LDT slot of `reg`'s mirror in `bank`.
const fn slot_of(reg: SegReg, bank: u16) -> u16 {
    FIRST_SLOT + reg as u16 + bank * BANK
}

/// What is installed in each mirror slot, so unchanged mirrors cost no syscall.
#[derive(Debug, Default)]
pub struct Mirrors {
    installed: [Option<LdtDescriptor>; (BANKS * BANK) as usize],
    /// Translate mode: every data mirror stops below the monitor window at this address.
    pub window: Option<u32>,
    /// The host selector each register runs with.
    selectors: [u16; 6],
    /// modify_ldt calls made (for --stats).
    pub writes: u64,
}

/// The host descriptor for a mirror. Conforming code becomes non-conforming: the host
/// refuses conforming LDT code segments, and at a single host privilege level the two
/// behave alike.
pub fn host_descriptor(m: &MirrorDescriptor) -> LdtDescriptor {
    let (limit, limit_in_pages) = m.encoded_limit();
    let kind = if m.code {
        SegmentKind::Code {
            readable: m.readable,
        }
    } else {
        SegmentKind::Data {
            writable: m.writable,
            expand_down: m.expand_down_or_conforming,
        }
    };
    LdtDescriptor {
        base: m.base,
        limit,
        limit_in_pages,
        seg_32bit: m.db,
        kind,
        present: m.present,
        useable: false,
    }
}

impl Mirrors {
    /// Installs the mirrors of the registers in `dirty` (bit `SegReg as u8`) for the
    /// guest's current CPL and stores the host selectors in `ctx`. A data register whose
    /// mirror is not present runs with the null selector, so any access through it faults
    /// natively (#GP), as it would for the guest.
    ///
    /// # Errors
    /// The host refused an LDT write.
    pub fn sync(
        &mut self,
        state: &VcpuState,
        dirty: u8,
        user_clamp: Option<GuestLinear>,
        ctx: &mut GuestContext,
    ) -> Result<(), LdtError> {
        let (clamp, bank) = self.bank(state.cpl(), user_clamp);
        // `selectors` is in SegReg's encoding order, as ALL is.
        for (reg, host_selector) in SegReg::ALL.into_iter().zip(&mut self.selectors) {
            if dirty & (1 << reg as u8) == 0 {
                continue;
            }
            let m = mirror_below(state.sreg(reg), clamp);
            let selector = if m.present || matches!(reg, SegReg::Cs | SegReg::Ss) {
                let desc = host_descriptor(&m);
                let n = slot_of(reg, bank);
                // Every slot_of is one of the installed ones; one that were not would be
                // written each time.
                let installed = self.installed.get_mut(usize::from(n - FIRST_SLOT));
                if installed.as_deref() != Some(&Some(desc)) {
                    ldt::set_ldt_entry(n, &desc)?;
                    if let Some(slot) = installed {
                        *slot = Some(desc);
                    }
                    self.writes += 1;
                }
                ldt::ldt_selector(n)
            } else {
                0
            };
            *host_selector = selector;
        }
        self.apply(ctx);
        Ok(())
    }

    /// The clamp the mirrors of a guest at `cpl` get and the bank of slots they live in.
    fn bank(&self, cpl: u8, user_clamp: Option<GuestLinear>) -> (Option<u32>, u16) {
        let user_clamp = user_clamp.map(GuestLinear::raw).filter(|_| cpl == 3);
        match (user_clamp, self.window) {
            (None, None) => (None, 0),
            (None, Some(w)) => (Some(w), 2),
            (Some(u), w) => (Some(w.map_or(u, |w| w.min(u))), 1),
        }
    }

    /// The host selector that gives data register `reg` the segment `seg` for a guest at
    /// `cpl`, when the mirror [`Self::sync`] would install for it is the one installed in
    /// `reg`'s slot now (loading that selector then needs no LDT write).
    pub fn installed_selector(
        &self,
        reg: SegReg,
        seg: &crate::vcpu::Segment,
        cpl: u8,
        user_clamp: Option<GuestLinear>,
    ) -> Option<u16> {
        let (clamp, bank) = self.bank(cpl, user_clamp);
        let m = mirror_below(seg, clamp);
        if !m.present {
            return None;
        }
        let n = slot_of(reg, bank);
        let installed = self.installed.get(usize::from(n - FIRST_SLOT))?;
        (*installed == Some(host_descriptor(&m))).then(|| ldt::ldt_selector(n))
    }

    /// Installs the translate-mode segments: the TC's flat 32-bit code segment (the
    /// whole linear space: translated code reads its lookup table through CS) and the
    /// data segment of the vCPU page at `vcpu_page` (`len` bytes).
    ///
    /// # Errors
    /// The host refused an LDT write.
    pub fn install_translation(&mut self, vcpu_page: u32, len: u32) -> Result<(), LdtError> {
        ldt::set_ldt_entry(TC_CODE_SLOT, &LdtDescriptor::flat_code32())?;
        let page = LdtDescriptor {
            base: vcpu_page,
            limit: len - 1,
            limit_in_pages: false,
            ..LdtDescriptor::flat_data32()
        };
        ldt::set_ldt_entry(SCRATCH_SLOT, &page)?;
        self.writes += 2;
        Ok(())
    }

    /// Points the bounce segment at `base` (4 GiB, writable when `writable`): an
    /// instruction whose access reaches the monitor window runs once through it, its
    /// offset landing in the bounce pages where the guest's page is mapped for it.
    ///
    /// # Errors
    /// The host refused the LDT write.
    pub fn set_bounce(&mut self, base: u32, writable: bool) -> Result<(), LdtError> {
        let desc = LdtDescriptor {
            base,
            kind: SegmentKind::Data {
                writable,
                expand_down: false,
            },
            ..LdtDescriptor::flat_data32()
        };
        ldt::set_ldt_entry(BOUNCE_SLOT, &desc)?;
        self.writes += 1;
        Ok(())
    }

    /// Stores the host selectors of all six registers in `ctx`. Done before every entry:
    /// a segment load the rewriter missed must not outlive the exit that follows it.
    pub fn apply(&self, ctx: &mut GuestContext) {
        [ctx.es, ctx.cs, ctx.ss, ctx.ds, ctx.fs, ctx.gs] = self.selectors;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_segments_mirror_to_flat_host_descriptors() {
        let state = VcpuState::multiboot_entry(0x10_0000, 0, 0);
        let code = host_descriptor(&mirror_of(state.sreg(SegReg::Cs), 0, None));
        assert_eq!(code, LdtDescriptor::flat_code32());
        let data = host_descriptor(&mirror_of(state.sreg(SegReg::Ds), 0, None));
        assert_eq!(data, LdtDescriptor::flat_data32());
    }

    #[test]
    fn user_clamp_cuts_the_limit_below_the_kernel() {
        let mut state = VcpuState::multiboot_entry(0x10_0000, 0, 0);
        state.sreg_mut(SegReg::Cs).selector = 0x1b;
        let m = mirror_of(state.sreg(SegReg::Ds), 3, Some(0xc000_0000));
        let d = host_descriptor(&m);
        assert!(d.limit_in_pages);
        assert_eq!(d.limit, 0xbffff);
    }

    #[test]
    fn selectors_are_distinct_ldt_rpl3() {
        let sels: Vec<u16> = [0u16, 1, 2]
            .iter()
            .flat_map(|&c| {
                SegReg::ALL
                    .iter()
                    .map(move |r| ldt::ldt_selector(slot_of(*r, c)))
                    .chain(
                        [TC_CODE_SELECTOR, SCRATCH_SELECTOR]
                            .into_iter()
                            .filter(move |_| c == 0),
                    )
            })
            .collect();
        for (i, s) in sels.iter().enumerate() {
            assert_eq!(s & 7, 7, "LDT, RPL 3");
            assert!(!sels[..i].contains(s));
        }
    }
}
