//! What each exit means and what the monitor does about it (ARCHITECTURE.md §3):
//! classify the host exit (vector, error code, faulting EIP, patch table), then emulate
//! the instruction, reflect an exception into the guest through its IDT, fill a page, or
//! stop the VM with a diagnostic.

use iced_x86::{Decoder, DecoderOptions, Instruction};
use rewriter::{classify, Action, Class};

use super::guest_bus::MachineBus;
use super::stats::ExitReason;
use super::{dump, RunOutcome, Vm, VmError};
use crate::hostcpu::{Exit, ExitKind};
use crate::vcpu::exit::{self as vexit, Action as VAction, Exit as VExit};
use crate::vcpu::state::{cr0, eflags};
use crate::vcpu::{Effects, Exception, Fault, SegReg};

/// Host page-fault error code bits (SDM Vol. 3A §4.7).
mod pf {
    /// The access was a write.
    pub const WRITE: u32 = 1 << 1;
    /// The access was an instruction fetch.
    pub const FETCH: u32 = 1 << 4;
}

/// Opcode bytes the exit classification looks for.
const OP_INT3: u8 = 0xcc;
const OP_INT_IMM8: u8 = 0xcd;
const OP_INTO: u8 = 0xce;
const OP_INT1: u8 = 0xf1;
const SYSCALL_VECTOR: u8 = 0x80;
/// SIGTRAP si_code of a breakpoint (as opposed to TRAP_TRACE, a single step).
const TRAP_BRKPT: i32 = 1;
/// DR6.BS: the #DB was a single-step trap (SDM Vol. 3B §17.2.3).
const DR6_BS: u32 = 1 << 14;

/// Error-code bit IDT: a #GP error code naming an IDT entry comes from INT n through a
/// host gate of DPL 0.
const ERROR_CODE_IDT: u32 = 1 << 1;

/// A single step of one guest instruction with the monitor's TF: an instruction that
/// writes to its own code page, or one under an instruction breakpoint's trap.
#[derive(Debug, Clone, Copy)]
pub(super) struct SingleStep {
    /// The page opened for the step, closed after it.
    page: Option<u32>,
    /// The breakpoint trap lifted for the step, put back after it.
    repin: Option<u32>,
    /// The patch trap lifted for the step (a conditional site that does not fault now),
    /// put back after it.
    relatch: Option<u32>,
    /// The guest's own TF, restored after the step.
    guest_tf: u32,
}

impl SingleStep {
    /// A step over the instruction under the breakpoint trap at guest-physical `phys`.
    pub(super) fn repin(phys: u32, guest_tf: u32) -> Self {
        Self {
            page: None,
            repin: Some(phys),
            relatch: None,
            guest_tf,
        }
    }

    /// A step over the patched instruction at guest-physical `phys`, its trap lifted.
    fn relatch(phys: u32, guest_tf: u32) -> Self {
        Self {
            page: None,
            repin: None,
            relatch: Some(phys),
            guest_tf,
        }
    }
}

/// The registers an emulated instruction may change that a refused PDPTE load must put
/// back (the instruction then faults with #GP(0) instead of completing).
#[derive(Debug, Clone, Copy)]
pub(super) struct Before {
    pub eip: u32,
    pub cr0: u32,
    pub cr3: u32,
    pub cr4: u32,
}

/// What handling one exit decided: keep running, stop with an outcome, or fail.
pub(super) type Step = Result<Option<RunOutcome>, VmError>;

/// The machine as the emulator sees it, borrowed field by field so the vCPU state stays
/// free for the emulator.
macro_rules! machine_bus {
    ($vm:expr) => {
        MachineBus {
            ram: &$vm.ram,
            space: &mut $vm.space,
            code: &mut $vm.code,
            paging: &mut $vm.paging,
            ports: &mut $vm.platform.ports,
            exit_request: None,
            failure: None,
        }
    };
}
pub(super) use machine_bus;

impl Vm {
    /// The guest linear address of `offset` in CS.
    pub(super) fn code_linear(&self, offset: u32) -> u32 {
        self.state.sreg(SegReg::Cs).base.wrapping_add(offset)
    }

    /// Decodes the original guest instruction at CS:`offset`.
    pub(super) fn decode_at(&self, offset: u32) -> Option<Instruction> {
        let lin = self.code_linear(offset);
        let (bytes, n) = self.read_code(lin);
        let bitness = if self.state.code_32() { 32 } else { 16 };
        let mut decoder = Decoder::with_ip(
            bitness,
            &bytes[..n],
            u64::from(offset),
            DecoderOptions::NONE,
        );
        let instr = decoder.decode();
        (!instr.is_invalid()).then_some(instr)
    }

    pub(super) fn failure(&self, reason: String) -> Step {
        Ok(Some(RunOutcome::GuestFailure {
            reason,
            dump: dump(&self.state),
        }))
    }

    pub(super) fn handle_exit(&mut self, exit: Exit) -> Step {
        if self.trace {
            eprintln!(
                "vmm: exit at {:#010x}: {:?} (signal {} code {})",
                self.state.eip, exit.kind, exit.signo, exit.si_code
            );
        }
        if let Some(step) = self.step.take() {
            if let Some(page) = step.page {
                self.code.close_after_step(&mut self.space, page)?;
            }
            if let Some(phys) = step.repin {
                self.repin_breakpoint(phys);
            }
            if let Some(phys) = step.relatch {
                self.code.relatch(&self.ram, phys);
            }
            self.state.eflags = (self.state.eflags & !eflags::TF) | step.guest_tf;
            let stepped = matches!(
                exit.kind,
                ExitKind::Fault {
                    vector: Exception::DB,
                    ..
                }
            );
            if stepped && step.guest_tf == 0 {
                return Ok(None);
            }
        }
        match exit.kind {
            ExitKind::Fault { vector, error_code } => self.on_fault(vector, error_code, exit.si_code),
            ExitKind::PageFault { addr, error_code } => self.on_page_fault(addr.raw(), error_code),
            ExitKind::Syscall { .. } => self.on_syscall_trap(),
            ExitKind::Async { .. } => {
                self.stats.exit(ExitReason::Async);
                Ok(None)
            }
            ExitKind::Escape { rip } => self.failure(format!(
                "guest code ran in the host's 64-bit code segment at {rip:#x}: escape attempt stopped"
            )),
            ExitKind::BadEntry(bad) => {
                self.failure(format!("the guest state cannot be entered: {bad:?}"))
            }
            ExitKind::Signal => self.failure(format!(
                "an unexpected host signal {} interrupted the guest",
                exit.signo
            )),
        }
    }

    fn on_fault(&mut self, vector: u8, error_code: u32, si_code: i32) -> Step {
        let eip = self.state.eip;
        match vector {
            Exception::BP => {
                let site = self.code_linear(eip.wrapping_sub(1));
                if let Some(step) = self.breakpoint_trap(site) {
                    return step;
                }
                if let Some(step) = self.hooked_entry(site) {
                    return step;
                }
                let patch = self.code_phys(site).and_then(|phys| {
                    self.code
                        .patches
                        .lookup(phys)
                        .map(|p| (phys, p.instruction, p.class))
                });
                if let Some((phys, original, class)) = patch {
                    self.stats.exit(ExitReason::RewriteTrap);
                    self.stats.site(site, class.name());
                    self.state.eip = eip.wrapping_sub(1);
                    if class == Class::Fpu {
                        return self.fpu_site(phys, &original);
                    }
                    // The patch table keeps the instruction decoded at its physical
                    // address; with paging on, decode it again where the guest runs it.
                    let original = if self.paging.enabled() {
                        match self.decode_at(self.state.eip) {
                            Some(i) => i,
                            None => original,
                        }
                    } else {
                        original
                    };
                    return self.handle(VExit::Patched { original });
                }
                self.stats.exit(ExitReason::GuestException);
                self.software_trap(Exception::BP, OP_INT3)
            }
            Exception::OF => {
                self.stats.exit(ExitReason::GuestException);
                self.software_trap(Exception::OF, OP_INTO)
            }
            Exception::DB => {
                self.stats.exit(ExitReason::GuestException);
                // INT1 (ICEBP) reaches the process as a breakpoint SIGTRAP with EIP still
                // at the instruction; a single step comes as TRAP_TRACE past it.
                let (at, n) = self.read_code(self.code_linear(eip));
                if si_code == TRAP_BRKPT && n > 0 && at[0] == OP_INT1 {
                    self.state.eip = eip.wrapping_add(1);
                    return self.handle(VExit::SoftwareInterrupt {
                        vector: Exception::DB,
                        len: 1,
                    });
                }
                // The guest's debug registers are virtual and never loaded on the host, so a
                // native #DB is a single-step trap (TF): EIP is already past the
                // instruction, and DR6 reports BS.
                self.state.dr[6] |= DR6_BS;
                self.handle(VExit::Exception(Fault::new(Exception::DB)))
            }
            Exception::GP => self.on_gp(error_code),
            _ => {
                self.stats.exit(ExitReason::GuestException);
                let fault = if Exception::has_error_code(vector) {
                    Fault::with_code(vector, error_code)
                } else {
                    Fault::new(vector)
                };
                self.handle(VExit::Exception(fault))
            }
        }
    }

    /// The trap of an FPU instruction patched while the guest's CR0.TS or CR0.EM is set
    /// (EIP at the instruction): raise what the guest's CR0 says, or, when the
    /// instruction executes after all (WAIT without MP, for one), step it natively with
    /// the trap lifted.
    fn fpu_site(&mut self, phys: u32, original: &Instruction) -> Step {
        let fault = rewriter::fpu_kind(original.code())
            .and_then(|kind| crate::vcpu::fpu::device_fault(self.state.cr0, kind));
        if let Some(fault) = fault {
            return self.handle(VExit::Exception(fault));
        }
        if self.code.lift(&self.ram, phys) {
            self.step = Some(SingleStep::relatch(phys, self.state.eflags & eflags::TF));
            self.state.eflags |= eflags::TF;
        }
        Ok(None)
    }

    /// A trap at `site` that is an entry point the hook serves: it serves the call and the
    /// guest continues at its caller. `None` when `site` is not bound.
    fn hooked_entry(&mut self, site: u32) -> Option<Step> {
        let hook = self.entry_hook.as_mut()?;
        hook.sync(&mut self.code.patches, &self.ram);
        let ram_size = self.ram.size();
        let mut bus = machine_bus!(self);
        let served = hook.on_trap(site, &mut self.state, &mut bus, ram_size)?;
        Some(match served {
            Ok(()) => Ok(None),
            Err(fault) => self.handle(VExit::Exception(fault)),
        })
    }

    /// A trap-class software interrupt the host delivered natively (its host IDT gate
    /// has DPL 3): the one-byte form `one_byte` or `INT imm8`, EIP after it.
    fn software_trap(&mut self, vector: u8, one_byte: u8) -> Step {
        let eip = self.state.eip;
        let one = self.read_code(self.code_linear(eip.wrapping_sub(1)));
        let two = self.read_code(self.code_linear(eip.wrapping_sub(2)));
        let len = if one.1 > 0 && one.0[0] == one_byte {
            1
        } else if two.1 > 1 && two.0[0] == OP_INT_IMM8 && two.0[1] == vector {
            2
        } else {
            return self.failure(format!(
                "vector {vector} trap at {eip:#010x} without an instruction that raises it"
            ));
        };
        self.handle(VExit::SoftwareInterrupt { vector, len })
    }

    fn on_gp(&mut self, error_code: u32) -> Step {
        let instr = self.decode_at(self.state.eip);
        if let Some(fault) = instr
            .as_ref()
            .filter(|_| error_code == 0)
            .and_then(|i| self.clamp_violation(i))
        {
            self.stats.exit(ExitReason::GuestPageFault);
            self.paging.stats.true_faults += 1;
            return self.handle(VExit::Exception(fault));
        }
        let reason = match instr.as_ref().map(classify) {
            _ if error_code & ERROR_CODE_IDT != 0 => ExitReason::SoftwareInterrupt,
            Some(Class::Cpuid) => ExitReason::Cpuid,
            Some(Class::In | Class::Out | Class::Ins | Class::Outs) => ExitReason::PortIo,
            Some(class) if class.action() != Action::None => ExitReason::Privileged,
            _ => ExitReason::GuestException,
        };
        self.stats.exit(reason);
        if let (Some(i), ExitReason::Privileged | ExitReason::PortIo | ExitReason::Cpuid) =
            (&instr, reason)
        {
            self.stats
                .site(self.code_linear(self.state.eip), classify(i).name());
        }
        self.handle(VExit::GeneralProtection { error_code, instr })
    }

    fn on_syscall_trap(&mut self) -> Step {
        // INT 0x80 reaches the host kernel as a system call; seccomp turned it into
        // SIGSYS with EIP after the instruction. SYSENTER and SYSCALL are rewritten and
        // never get here; anything else is code the rewriter did not see.
        let eip = self.state.eip;
        let start = eip.wrapping_sub(2);
        let (bytes, n) = self.read_code(self.code_linear(start));
        if n >= 2 && bytes[0] == OP_INT_IMM8 && bytes[1] == SYSCALL_VECTOR {
            self.stats.exit(ExitReason::SyscallTrap);
            return self.handle(VExit::SoftwareInterrupt {
                vector: SYSCALL_VECTOR,
                len: 2,
            });
        }
        self.failure(format!(
            "a host system call was attempted at {eip:#010x} by an instruction the rewriter did not see"
        ))
    }

    fn on_page_fault(&mut self, lin: u32, error_code: u32) -> Step {
        if self.paging.enabled() {
            return self.on_paged_fault(lin, error_code);
        }
        let in_ram = u64::from(lin) < self.ram.size() && lin >= crate::addr::PAGE_SIZE;
        if error_code & pf::FETCH != 0 {
            if !in_ram {
                return self.failure(format!(
                    "instruction fetch from {lin:#010x}, where the guest has no RAM"
                ));
            }
            self.stats.exit(ExitReason::CodeFetch);
            // An instruction that straddles into the page faults at the page's first
            // byte, which is not an instruction start; the page's code starts where the
            // straddling instruction ends.
            let page = lin & !(crate::addr::PAGE_SIZE - 1);
            let start = self.code_linear(self.state.eip);
            let entry = if start & !(crate::addr::PAGE_SIZE - 1) == page {
                Some(start)
            } else {
                self.decode_at(self.state.eip)
                    .map(|i| start.wrapping_add(i.len() as u32))
                    .filter(|end| end & !(crate::addr::PAGE_SIZE - 1) == page)
            };
            self.code
                .on_fetch(&self.ram, &mut self.space, page, entry)?;
            return Ok(None);
        }
        if error_code & pf::WRITE != 0 && in_ram && self.code.is_armed(lin) {
            self.stats.exit(ExitReason::CodeWrite);
            self.code.on_write(&mut self.space, lin)?;
            // An instruction writing to its own page cannot run there once the page is
            // parked: let it run once more with the page open, and stop right after it.
            let start = self.code_linear(self.state.eip);
            let len = self.decode_at(self.state.eip).map_or(1, |i| i.len() as u32);
            let last = start.wrapping_add(len - 1);
            let page = lin & !(crate::addr::PAGE_SIZE - 1);
            if [start, last]
                .iter()
                .any(|a| a & !(crate::addr::PAGE_SIZE - 1) == page)
            {
                self.code.open_for_step(&mut self.space, page)?;
                self.step = Some(SingleStep {
                    page: Some(page),
                    repin: None,
                    relatch: None,
                    guest_tf: self.state.eflags & eflags::TF,
                });
                self.state.eflags |= eflags::TF;
            }
            return Ok(None);
        }
        // Page 0 and addresses without RAM are never mapped: emulate the access.
        self.stats.exit(ExitReason::EmulatedAccess);
        let Some(instr) = self.decode_at(self.state.eip) else {
            return self.failure(format!("undecodable instruction accessing {lin:#010x}"));
        };
        self.emulate_access(&instr, lin)
    }

    /// Hands a classified exit to the vCPU (emulation or delivery through the guest
    /// IDT) and applies the outcome on the host.
    pub(super) fn handle(&mut self, exit: VExit) -> Step {
        let before = Before {
            eip: self.state.eip,
            cr0: self.state.cr0,
            cr3: self.state.cr3,
            cr4: self.state.cr4,
        };
        let mut bus = machine_bus!(self);
        let action = vexit::handle(&mut self.state, &mut bus, &exit);
        let (exit_request, failure) = (bus.exit_request, bus.failure.take());
        if let Some(req) = exit_request {
            return Ok(Some(RunOutcome::DebugExit { status: req.status }));
        }
        if let Some(f) = failure {
            return self.failure(format!("monitor failure during emulation: {f:?}"));
        }
        match action {
            VAction::Resume(effects) | VAction::Halt(effects) => self.apply(effects, before),
            VAction::InterruptBlocked => Ok(None),
            VAction::Stop(reason) => self.failure(reason.to_string()),
        }
    }

    /// Applies an emulated instruction's side effects on the host.
    fn apply(&mut self, effects: Effects, before: Before) -> Step {
        // The FPU traps while the guest's CR0.TS or CR0.EM is set.
        let fpu_traps = self.state.cr0 & (cr0::TS | cr0::EM) != 0;
        if fpu_traps != self.code.is_in_force(Class::Fpu) {
            self.code
                .set_conditional(&self.ram, Class::Fpu, fpu_traps)?;
        }
        if let Some(stop) = self.apply_paging(&effects, before)? {
            return Ok(Some(stop));
        }
        let dirty = if effects.cpl_changed {
            0x3f
        } else {
            effects.segments_dirty
        };
        if dirty != 0 {
            let clamp = self.paging.user_clamp;
            self.mirrors
                .sync(&self.state, dirty, clamp, &mut self.ctx)?;
        }
        Ok(None)
    }
}
