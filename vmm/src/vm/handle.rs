//! Exit handling: the run loop's answer to a classified exit. A single step the monitor
//! started is finished first; then each [`ExitClass`] is counted and acted on: trap bytes
//! go to their owner ([`super::trap`]), host page faults to [`super::page_fault`], and what
//! the guest must see to the vCPU ([`crate::vcpu::exit::handle`]), whose effects are then
//! applied on the host ([`super::effects`]).

use super::classify::ExitClass;
use super::cpu::Stepping;
use super::effects::Before;
use super::guest_bus::MachineBus;
use super::stats::ExitReason;
use super::{RunOutcome, Vm, VmError};
use crate::devices::PortAction;
use crate::hostcpu::{HostExit, HostExitKind};
use crate::vcpu::exit::{self as vcpu_exit, ExitAction, GuestExit, DR6_BS};
use crate::vcpu::Fault;
use crate::x86::{eflags, Exception};

/// What handling one exit decided: keep running, stop with an outcome, or fail.
pub(super) type Step = Result<Option<RunOutcome>, VmError>;

impl Vm {
    /// Stops the VM with a diagnostic and the register dump.
    pub(super) fn failure(&self, reason: String) -> Step {
        Ok(Some(RunOutcome::GuestFailure {
            reason,
            dump: self.cpu.dump(),
        }))
    }

    /// Handles one host exit: classifies it, then acts on what it means.
    pub(super) fn handle(&mut self, exit: &HostExit) -> Step {
        if self.trace {
            eprintln!(
                "vmm: exit at {:#010x}: {:?} (signal {} code {})",
                self.cpu.state.eip, exit.kind, exit.signo, exit.si_code
            );
        }
        let stepped = matches!(
            exit.kind,
            HostExitKind::Fault {
                vector: Exception::DB,
                ..
            }
        );
        let finished = self.finish_step(stepped)?;
        let data_break = std::mem::take(&mut self.cpu.data_break);
        if finished {
            // A data breakpoint the stepped instruction hit: the guest's #DB trap (with the
            // guest's own TF, the step's #DB below carries it with BS).
            if data_break {
                self.stats.exit(ExitReason::GuestException);
                return self.hand_to_vcpu(GuestExit::Exception(Fault::new(Exception::DB)));
            }
            return Ok(None);
        }
        let class = self.classify(exit);
        self.handle_class(class)
    }

    /// Ends a single step the monitor started, if one is in progress. `true` when the
    /// exit was only the step's own trap (the guest did not ask for one).
    pub(super) fn finish_step(&mut self, stepped: bool) -> Result<bool, VmError> {
        let Some(step) = self.cpu.step.take() else {
            return Ok(false);
        };
        let patches = &mut self.code.pages;
        match step.what {
            Stepping::OpenPage(page) => patches.close_after_step(&mut self.mem.space, page)?,
            Stepping::Breakpoint(phys) => {
                self.cpu
                    .breakpoints
                    .repin(phys, &self.mem.ram, &mut patches.patches);
            }
            Stepping::PatchSite(phys) => patches.relatch(&self.mem.ram, phys),
            Stepping::Shadow | Stepping::Debugger(_) | Stepping::DataBreakpoints => {}
        }
        // The guest's data breakpoints the instruction hit, once it ran.
        if let Some(watched) = self.cpu.watched.take().filter(|_| stepped) {
            let dr6 = watched.hits();
            self.cpu.state.dr[6] |= dr6;
            self.cpu.data_break = dr6 != 0;
        }
        self.debug_step_watches(stepped);
        let s = &mut self.cpu.state;
        s.eflags = (s.eflags & !eflags::TF) | step.guest_tf;
        if let Stepping::Debugger(phys) = step.what {
            self.debug_step_done(stepped, phys);
        }
        Ok(stepped && step.guest_tf == 0)
    }

    /// Acts on a classified exit.
    pub(super) fn handle_class(&mut self, class: ExitClass) -> Step {
        match class {
            ExitClass::TrapByte { site } => self.on_trap_byte(site),
            ExitClass::SoftwareInterrupt {
                vector,
                len,
                eip_advance,
                reason,
            } => {
                self.stats.exit(reason);
                let s = &mut self.cpu.state;
                s.eip = s.eip.wrapping_add(eip_advance);
                self.hand_to_vcpu(GuestExit::SoftwareInterrupt { vector, len })
            }
            ExitClass::SingleStep => {
                self.stats.exit(ExitReason::GuestException);
                // EIP is already past the instruction; DR6 reports BS.
                self.cpu.state.dr[6] |= DR6_BS;
                self.hand_to_vcpu(GuestExit::Exception(Fault::new(Exception::DB)))
            }
            ExitClass::GeneralProtection {
                error_code,
                instr,
                reason,
            } => {
                self.stats.exit(reason);
                if let (Some(i), ExitReason::Privileged | ExitReason::PortIo | ExitReason::Cpuid) =
                    (&instr, reason)
                {
                    let site = self.cpu.code_linear(self.cpu.state.eip);
                    self.stats.site(site, rewriter::classify(i).name());
                }
                self.hand_to_vcpu(GuestExit::GeneralProtection { error_code, instr })
            }
            ExitClass::ClampedAccess(fault) => {
                self.stats.exit(ExitReason::GuestPageFault);
                self.mem.paging.stats.true_faults += 1;
                self.hand_to_vcpu(GuestExit::Exception(fault))
            }
            ExitClass::WindowAccess { instr, access } => {
                self.stats.exit(ExitReason::EmulatedAccess);
                self.tc_window_access(&instr, access)
            }
            ExitClass::WrappedAccess { instr, lin } => {
                self.stats.exit(ExitReason::EmulatedAccess);
                self.emulate_access(&instr, lin)
            }
            ExitClass::Exception(fault) => {
                self.stats.exit(ExitReason::GuestException);
                self.hand_to_vcpu(GuestExit::Exception(fault))
            }
            ExitClass::PageFault { lin, error_code } => self.on_page_fault(lin, error_code),
            ExitClass::Async => {
                self.stats.exit(ExitReason::Async);
                Ok(None)
            }
            ExitClass::Stop(reason) => self.failure(reason),
        }
    }

    /// Hands an exit the guest must see to the vCPU (emulation or delivery through the
    /// guest IDT) and applies the outcome on the host.
    pub(super) fn hand_to_vcpu(&mut self, exit: GuestExit) -> Step {
        let before = Before::of(&self.cpu.state);
        let mut bus = MachineBus::new(
            &mut self.mem,
            &mut self.code.pages,
            &mut self.platform.ports,
            &mut self.platform.mmio,
        );
        let action = vcpu_exit::handle(&mut self.cpu.state, &mut bus, &exit);
        let (exit_request, failure) = (bus.exit_request, bus.failure.take());
        match exit_request {
            Some(PortAction::Exit(req)) => {
                return Ok(Some(RunOutcome::DebugExit { status: req.status }))
            }
            Some(PortAction::PowerOff) => {
                return Ok(Some(RunOutcome::Shutdown {
                    reason: "the guest powered the machine off (ACPI S5)".into(),
                }))
            }
            Some(PortAction::Reset) => return Ok(Some(RunOutcome::Reset)),
            Some(PortAction::Continue) | None => {}
        }
        if let Some(f) = failure {
            return self.failure(format!("monitor failure during emulation: {f:?}"));
        }
        match action {
            ExitAction::Resume(effects) | ExitAction::Halt(effects) => self.apply(&effects, before),
            ExitAction::InterruptBlocked => Ok(None),
            ExitAction::Stop(reason) => self.failure(reason.to_string()),
        }
    }
}
