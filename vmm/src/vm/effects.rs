//! Applying on the host what an emulated instruction or an event delivery changed
//! ([`Effects`]): the FPU's conditional traps follow CR0.TS/EM; CR0, CR3, CR4 and EFER
//! writes, INVLPG and privilege changes keep shadow paging in step (the 1:1 RAM mapping
//! goes or comes back when paging is switched); changed segments get new mirrors.

use rewriter::Class;

use super::cpu::ALL_SEGMENTS;
use super::handle::Step;
use super::{Vm, VmError};
use crate::addr::GuestLinear;
use crate::vcpu::exit::GuestExit;
use crate::vcpu::{Effects, Fault, VcpuState};
use crate::x86::{cr0, cr4};
use shadow_paging::PdpteFault;

/// The CR0 and CR4 bits that change how linear addresses translate (the paging mode,
/// write protection, large and global pages): translations made under other values are
/// dropped. The others (TS and EM are in a block's key; TSD, PCE, OSFXSR... do not
/// change a translation) leave them, so a vCPU switch or a task switch that toggles one
/// does not retranslate the guest.
const TRANSLATION_CR0: u32 = cr0::PE | cr0::PG | cr0::WP;
const TRANSLATION_CR4: u32 = cr4::PSE | cr4::PAE | cr4::PGE;

/// The registers an emulated instruction may change that a refused PDPTE load must put
/// back (the instruction then faults with #GP(0) instead of completing).
#[derive(Debug, Clone, Copy)]
pub(super) struct Before {
    eip: u32,
    cr0: u32,
    cr3: u32,
    cr4: u32,
}

impl Before {
    /// The registers of `s` now.
    pub(super) fn of(s: &VcpuState) -> Self {
        Self {
            eip: s.eip,
            cr0: s.cr0,
            cr3: s.cr3,
            cr4: s.cr4,
        }
    }
}

impl Vm {
    /// Applies an emulated instruction's side effects on the host.
    pub(super) fn apply(&mut self, effects: &Effects, before: Before) -> Step {
        // The FPU traps while the guest's CR0.TS or CR0.EM is set.
        let fpu_traps = self.cpu.state.cr0 & (cr0::TS | cr0::EM) != 0;
        if fpu_traps != self.code.pages.is_in_force(Class::Fpu) {
            self.code
                .pages
                .set_conditional(&self.mem.ram, Class::Fpu, fpu_traps)?;
        }
        if let Some(stop) = self.apply_paging(effects, before)? {
            return Ok(Some(stop));
        }
        let dirty = if effects.cpl_changed {
            ALL_SEGMENTS
        } else {
            effects.segments_dirty
        };
        if dirty != 0 {
            let clamp = self.mem.paging.user_clamp;
            self.cpu.sync_mirrors(dirty, clamp)?;
        }
        // Scanned code runs only with the code size it was scanned for.
        self.follow_code_segment()?;
        Ok(None)
    }

    /// Brings the shadow state in step with what an emulated instruction changed:
    /// CR0/CR3/CR4/EFER, INVLPG, and the privilege level (user mappings and segment
    /// clamps). Returns a stop when the guest state cannot continue.
    fn apply_paging(&mut self, effects: &Effects, before: Before) -> Step {
        let ctx = *self.mem.paging.shadow.context();
        let was_on = self.mem.paging.enabled();
        let s = &self.cpu.state;
        let (cr0, cr3, cr4, efer) = (s.cr0, s.cr3, s.cr4, s.msr.efer);
        let mut result: Result<(), PdpteFault> = Ok(());
        if efer != ctx.efer {
            self.mem
                .with_host(|shadow, host, _| shadow.write_efer(host, efer))?;
        }
        if cr0 != ctx.cr0 || cr4 != ctx.cr4 || effects.paging_mode_changed {
            result = self.mem.with_host(|shadow, host, mem| {
                shadow
                    .write_cr4(mem, host, cr4)
                    .and_then(|()| shadow.write_cr0(mem, host, cr0))
            })?;
        }
        if result.is_ok() && (effects.cr3_written || cr3 != self.mem.paging.shadow.context().cr3) {
            result = self
                .mem
                .with_host(|shadow, host, mem| shadow.write_cr3(mem, host, cr3))?;
        }
        if let Err(e) = result {
            return self.refuse_pdptes(&e, before);
        }
        let now_on = self.mem.paging.enabled();
        let new_ctx = *self.mem.paging.shadow.context();
        let pge_only = now_on
            && was_on
            && (new_ctx.cr0 ^ ctx.cr0) & TRANSLATION_CR0 == 0
            && (new_ctx.cr4 ^ ctx.cr4) & TRANSLATION_CR4 == cr4::PGE
            && new_ctx.efer == ctx.efer;
        if pge_only {
            // The whole TLB goes, global entries too; the translations stay right.
            self.tc_global_pages_changed()?;
        } else if now_on != was_on
            || (new_ctx.cr0 ^ ctx.cr0) & TRANSLATION_CR0 != 0
            || (new_ctx.cr4 ^ ctx.cr4) & TRANSLATION_CR4 != 0
            || new_ctx.efer != ctx.efer
        {
            // Translations were made for the old paging mode.
            self.tc_address_space_changed(true, None)?;
        } else if now_on
            && (new_ctx.cr3 != ctx.cr3 || effects.cr3_written || effects.invlpg.is_some())
        {
            self.tc_address_space_changed(false, effects.invlpg)?;
        }
        if now_on && !was_on {
            self.enter_paging()?;
        } else if was_on && !now_on {
            self.leave_paging()?;
        }
        if let (Some(lin), true) = (effects.invlpg, now_on) {
            self.mem
                .with_host(|shadow, host, _| shadow.invlpg(host, lin))?;
        }
        if effects.cpl_changed || now_on != was_on {
            self.privilege_changed()?;
        }
        Ok(None)
    }

    /// A PDPTE with reserved bits: the MOV to CR0/CR3/CR4 faults with #GP(0) and changes
    /// nothing (SDM Vol. 3A §4.4.1).
    fn refuse_pdptes(&mut self, e: &PdpteFault, before: Before) -> Step {
        if self.trace {
            eprintln!(
                "vmm: PDPTE {} = {:#x} at {} has reserved bits: #GP(0)",
                e.index, e.value, e.gpa
            );
        }
        let s = &mut self.cpu.state;
        s.eip = before.eip;
        s.cr0 = before.cr0;
        s.cr3 = before.cr3;
        s.cr4 = before.cr4;
        let restored = self.mem.with_host(|shadow, host, mem| {
            shadow
                .write_cr4(mem, host, before.cr4)
                .and_then(|()| shadow.write_cr0(mem, host, before.cr0))
                .and_then(|()| shadow.write_cr3(mem, host, before.cr3))
        })?;
        if restored.is_err() {
            return self.failure(
                "the guest's previous PAE roots no longer load after a refused PDPTE load"
                    .to_string(),
            );
        }
        self.hand_to_vcpu(GuestExit::Exception(Fault::gp0()))
    }

    /// The virtual CPL (or the paging mode) changed: user mode sees only user rights,
    /// and its segments are clamped below the kernel's part of the address space.
    fn privilege_changed(&mut self) -> Result<(), VmError> {
        let user = self.cpu.user() && self.mem.paging.enabled();
        let clamp = if user {
            let limit = self.mem.paging.user_limit(&self.mem.ram);
            let lin = limit.unwrap_or(GuestLinear(u32::MAX));
            self.mem
                .with_host(|shadow, host, _| shadow.enter_user_mode(host, lin))?;
            limit
        } else {
            self.mem.paging.shadow.leave_user_mode();
            None
        };
        if clamp != self.mem.paging.user_clamp {
            self.mem.paging.user_clamp = clamp;
            self.cpu.sync_mirrors(ALL_SEGMENTS, clamp)?;
        }
        Ok(())
    }

    /// CR0.PG went on: the 1:1 RAM mapping goes, shadow mappings fill in on demand;
    /// pages scanned so far keep their patches as scanned guest-physical pages.
    fn enter_paging(&mut self) -> Result<(), VmError> {
        self.mem.unmap_identity()?;
        let pages = &mut self.code.pages;
        let scanned = pages.enter_paging(&self.mem.ram);
        let exec_only = self.mem.paging.exec_only;
        let marked: Vec<_> = scanned
            .into_iter()
            .map(|p| (p, exec_only && pages.patches.is_patched(p.raw())))
            .collect();
        self.mem.with_host(|shadow, host, _| {
            for (page, eo) in marked {
                shadow.mark_code(host, page, eo);
            }
        })?;
        Ok(())
    }

    /// CR0.PG went off: back to RAM mapped 1:1, writable, not executable, nothing
    /// scanned.
    fn leave_paging(&mut self) -> Result<(), VmError> {
        self.mem
            .with_host(|shadow, host, _| shadow.flush_all(host))?;
        self.code.pages.leave_paging(&self.mem.ram);
        self.mem.map_identity()?;
        Ok(())
    }
}
