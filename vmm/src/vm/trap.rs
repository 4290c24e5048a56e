//! Trap bytes: a one-byte trap fired, and its owner handles it. Owners are asked in
//! order: a debugger breakpoint, an instruction breakpoint armed there, an entry point the hook serves, a site
//! the rewriter patched (its original instruction is emulated, or an FPU site steps
//! natively), and otherwise it was the guest's own INT3.

use iced_x86::Instruction;
use rewriter::Class;

use super::breakpoints::BreakpointHit;
use super::classify::OP_INT3;
use super::cpu::Stepping;
use super::guest_bus::MachineBus;
use super::handle::Step;
use super::stats::ExitReason;
use super::Vm;
use crate::addr::{GuestLinear, GuestPhys};
use crate::vcpu::exit::GuestExit;
use crate::vcpu::Fault;
use crate::x86::Exception;

impl Vm {
    /// A trap byte fired at linear `site`; EIP is after it.
    pub(super) fn on_trap_byte(&mut self, site: GuestLinear) -> Step {
        if self.debug_breakpoint_trap(site) {
            return Ok(None);
        }
        let phys = self.mem.code_phys(site, self.cpu.user());
        if let Some(step) = phys.and_then(|p| self.breakpoint_trap(site, p)) {
            return step;
        }
        if let Some(step) = self.hooked_entry(site) {
            return step;
        }
        let patch = phys.and_then(|phys| {
            self.code
                .pages
                .patches
                .lookup(phys.raw())
                .map(|p| (phys, p.instruction, p.class))
        });
        let Some((phys, original, class)) = patch else {
            let class = self.software_trap(Exception::BP, OP_INT3);
            return self.handle_class(class);
        };
        self.stats.exit(ExitReason::RewriteTrap);
        self.stats.site(site, class.name());
        let s = &mut self.cpu.state;
        s.eip = s.eip.wrapping_sub(1);
        // The patch table keeps the instruction as the scan decoded it, at its physical
        // address (16-bit code: its offset in the segment it was scanned for). Decode it
        // again where the guest runs it, with the code segment's size and offset: that is
        // the instruction the CPU would execute.
        let original = self
            .fetch()
            .decode_at(self.cpu.state.eip)
            .unwrap_or(original);
        if class == Class::Fpu {
            return self.fpu_site(phys, &original);
        }
        if class == Class::Pause {
            // Patched while several vCPUs share the thread: past it, another runs.
            self.pause_yield(original.len());
            return Ok(None);
        }
        self.hand_to_vcpu(GuestExit::Patched { original })
    }

    /// A trap at `site` (guest-physical `phys`) that may be an armed breakpoint: the
    /// guest's #DB, or a step over the instruction with the trap lifted. `None`: not a
    /// breakpoint's.
    fn breakpoint_trap(&mut self, site: GuestLinear, phys: GuestPhys) -> Option<Step> {
        let resumed_with_rf = self.cpu.entry_rf_at == Some(site);
        let hit = self.cpu.breakpoints.hit(site, phys, resumed_with_rf)?;
        let s = &mut self.cpu.state;
        s.eip = s.eip.wrapping_sub(1);
        Some(match hit {
            BreakpointHit::Fire { dr6 } => {
                s.dr[6] |= dr6;
                self.hand_to_vcpu(GuestExit::Exception(Fault::new(Exception::DB)))
            }
            BreakpointHit::StepOver => {
                // Run the guest's own instruction once with the trap lifted, then re-arm.
                self.cpu
                    .breakpoints
                    .lift(phys, &self.mem.ram, &mut self.code.pages.patches);
                self.cpu.start_step(Stepping::Breakpoint(phys));
                Ok(None)
            }
        })
    }

    /// A trap at `site` that is an entry point the hook serves: it serves the call and the
    /// guest continues at its caller. `None` when `site` is not bound.
    fn hooked_entry(&mut self, site: GuestLinear) -> Option<Step> {
        let hook = self.code.hook.as_mut()?;
        hook.sync(&mut self.code.pages.patches, &self.mem.ram);
        let ram_size = self.mem.ram.size();
        let mut bus = MachineBus::new(
            &mut self.mem,
            &mut self.code.pages,
            &mut self.platform.ports,
            &mut self.platform.mmio,
        );
        let served = hook.on_trap(site, &mut self.cpu.state, &mut bus, ram_size)?;
        Some(match served {
            Ok(()) => Ok(None),
            Err(fault) => self.hand_to_vcpu(GuestExit::Exception(fault)),
        })
    }

    /// The trap of an FPU instruction patched while the guest's CR0.TS or CR0.EM is set
    /// (EIP at the instruction): raise what the guest's CR0 says, or, when the
    /// instruction executes after all (WAIT without MP, for one), step it natively with
    /// the trap lifted.
    fn fpu_site(&mut self, phys: GuestPhys, original: &Instruction) -> Step {
        let fault = rewriter::fpu_kind(original.code())
            .and_then(|kind| crate::vcpu::fpu::device_fault(self.cpu.state.cr0, kind));
        if let Some(fault) = fault {
            return self.hand_to_vcpu(GuestExit::Exception(fault));
        }
        if self.code.pages.lift(&self.mem.ram, phys) {
            self.cpu.start_step(Stepping::PatchSite(phys));
        }
        Ok(None)
    }
}
