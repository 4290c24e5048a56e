//! What each exit means and what the monitor does about it (ARCHITECTURE.md §3):
//! classify the host exit (vector, error code, faulting EIP, patch table), then emulate
//! the instruction, reflect an exception into the guest through its IDT, fill a page, or
//! stop the VM with a diagnostic.

use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic};
use rewriter::{classify, Action, Class};

use super::guest_bus::{fetch_code, MachineBus};
use super::stats::ExitReason;
use super::{dump, RunOutcome, Vm, VmError};
use crate::hostcpu::{Exit, ExitKind};
use crate::vcpu::emulate::Emulated;
use crate::vcpu::interrupts::{Event, SoftwareKind};
use crate::vcpu::state::{cr0, eflags};
use crate::vcpu::{emulate, Effects, Exception, Fault, SegReg};

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
/// DR6.BS: the #DB was a single-step trap (SDM Vol. 3B §17.2.3).
const DR6_BS: u32 = 1 << 14;

/// A selector error code that names the host LDT (TI set) refers to a mirror, not to
/// anything the guest knows; the guest sees the fault with error code 0.
const ERROR_CODE_TI: u32 = 1 << 2;

/// A single step of an instruction that writes to its own code page.
#[derive(Debug, Clone, Copy)]
pub(super) struct SingleStep {
    /// The page opened for the step.
    page: u32,
    /// The guest's own TF, restored after the step.
    guest_tf: u32,
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
            ports: &mut $vm.platform.ports,
            exit_request: None,
            failure: None,
        }
    };
}
pub(super) use machine_bus;

impl Vm {
    /// The guest linear address of `offset` in CS.
    fn code_linear(&self, offset: u32) -> u32 {
        self.state.sreg(SegReg::Cs).base.wrapping_add(offset)
    }

    /// Decodes the original guest instruction at CS:`offset`.
    fn decode_at(&self, offset: u32) -> Option<Instruction> {
        let lin = self.code_linear(offset);
        let (bytes, n) = fetch_code(&self.ram, &self.code, lin);
        let bitness = if self.state.code_32() { 32 } else { 16 };
        let mut decoder =
            Decoder::with_ip(bitness, &bytes[..n], u64::from(offset), DecoderOptions::NONE);
        let instr = decoder.decode();
        (!instr.is_invalid()).then_some(instr)
    }

    fn failure(&self, reason: String) -> Step {
        Ok(Some(RunOutcome::GuestFailure { reason, dump: dump(&self.state) }))
    }

    pub(super) fn handle_exit(&mut self, exit: Exit) -> Step {
        if self.trace {
            eprintln!("vmm: exit at {:#010x}: {:?}", self.state.eip, exit.kind);
        }
        if let Some(step) = self.step.take() {
            self.code.close_after_step(&mut self.space, step.page)?;
            self.state.eflags = (self.state.eflags & !eflags::TF) | step.guest_tf;
            let stepped = matches!(exit.kind, ExitKind::Fault { vector: Exception::DB, .. });
            if stepped && step.guest_tf == 0 {
                return Ok(None);
            }
        }
        match exit.kind {
            ExitKind::Fault { vector, error_code } => self.on_fault(vector, error_code),
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

    fn on_fault(&mut self, vector: u8, error_code: u32) -> Step {
        let eip = self.state.eip;
        match vector {
            Exception::BP => {
                let site = self.code_linear(eip.wrapping_sub(1));
                if let Some(patch) = self.code.patches.lookup(site) {
                    let (instr, class) = (patch.instruction, patch.class);
                    self.stats.exit(ExitReason::RewriteTrap);
                    self.stats.site(site, class.name());
                    self.state.eip = eip.wrapping_sub(1);
                    return self.emulate(&instr);
                }
                self.stats.exit(ExitReason::GuestException);
                self.software_trap(Exception::BP, OP_INT3, SoftwareKind::Int3)
            }
            Exception::OF => {
                self.stats.exit(ExitReason::GuestException);
                self.software_trap(Exception::OF, OP_INTO, SoftwareKind::Into)
            }
            Exception::DB => {
                self.stats.exit(ExitReason::GuestException);
                let prev = fetch_code(&self.ram, &self.code, self.code_linear(eip.wrapping_sub(1)));
                if prev.1 > 0 && prev.0[0] == OP_INT1 {
                    return self.deliver_step(Event::Software {
                        vector: Exception::DB,
                        kind: SoftwareKind::Int1,
                        next_eip: eip,
                    }, eip.wrapping_sub(1));
                }
                // The guest's debug registers are virtual and never loaded on the host, so a
                // native #DB is a single-step trap (TF): EIP is already past the
                // instruction, and DR6 reports BS.
                self.state.dr[6] |= DR6_BS;
                Ok(self.deliver(Event::Exception(Fault::new(Exception::DB))))
            }
            Exception::GP => self.on_gp(error_code),
            _ => {
                self.stats.exit(ExitReason::GuestException);
                let fault = if Exception::has_error_code(vector) {
                    Fault::with_code(vector, error_code)
                } else {
                    Fault::new(vector)
                };
                Ok(self.deliver(Event::Exception(fault)))
            }
        }
    }

    /// A trap-class software interrupt the host delivered natively (its host IDT gate
    /// has DPL 3): the one-byte form `one_byte` or `INT imm8`, EIP after it.
    fn software_trap(&mut self, vector: u8, one_byte: u8, kind: SoftwareKind) -> Step {
        let eip = self.state.eip;
        let one = fetch_code(&self.ram, &self.code, self.code_linear(eip.wrapping_sub(1)));
        let two = fetch_code(&self.ram, &self.code, self.code_linear(eip.wrapping_sub(2)));
        let (start, kind) = if one.1 > 0 && one.0[0] == one_byte {
            (eip.wrapping_sub(1), kind)
        } else if two.1 > 1 && two.0[0] == OP_INT_IMM8 && two.0[1] == vector {
            (eip.wrapping_sub(2), SoftwareKind::IntN)
        } else {
            return self.failure(format!(
                "vector {vector} trap at {eip:#010x} without an instruction that raises it"
            ));
        };
        self.deliver_step(Event::Software { vector, kind, next_eip: eip }, start)
    }

    /// Delivers a software interrupt raised by the instruction at `start`.
    fn deliver_step(&mut self, event: Event, start: u32) -> Step {
        self.state.eip = start;
        Ok(self.deliver(event))
    }

    fn on_gp(&mut self, error_code: u32) -> Step {
        let Some(instr) = self.decode_at(self.state.eip) else {
            self.stats.exit(ExitReason::GuestException);
            return Ok(self.deliver(Event::Exception(Fault::gp(sanitize(error_code)))));
        };
        if instr.mnemonic() == Mnemonic::Int {
            self.stats.exit(ExitReason::SoftwareInterrupt);
            let event = Event::Software {
                vector: instr.immediate8(),
                kind: SoftwareKind::IntN,
                next_eip: instr.next_ip32(),
            };
            return Ok(self.deliver(event));
        }
        let class = classify(&instr);
        if class == Class::Innocuous || class.action() == Action::None {
            // A genuine protection fault of an ordinary instruction (segment limit, ...).
            self.stats.exit(ExitReason::GuestException);
            return Ok(self.deliver(Event::Exception(Fault::gp(sanitize(error_code)))));
        }
        let reason = match class {
            Class::Cpuid => ExitReason::Cpuid,
            Class::In | Class::Out | Class::Ins | Class::Outs => ExitReason::PortIo,
            _ => ExitReason::Privileged,
        };
        self.stats.exit(reason);
        self.stats.site(self.code_linear(self.state.eip), class.name());
        self.emulate(&instr)
    }

    fn on_syscall_trap(&mut self) -> Step {
        // INT 0x80 reaches the host kernel as a system call; seccomp turned it into
        // SIGSYS with EIP after the instruction. SYSENTER and SYSCALL are rewritten and
        // never get here; anything else is code the rewriter did not see.
        let eip = self.state.eip;
        let start = eip.wrapping_sub(2);
        let (bytes, n) = fetch_code(&self.ram, &self.code, self.code_linear(start));
        if n >= 2 && bytes[0] == OP_INT_IMM8 && bytes[1] == SYSCALL_VECTOR {
            self.stats.exit(ExitReason::SyscallTrap);
            let event =
                Event::Software { vector: SYSCALL_VECTOR, kind: SoftwareKind::IntN, next_eip: eip };
            return self.deliver_step(event, start);
        }
        self.failure(format!(
            "a host system call was attempted at {eip:#010x} by an instruction the rewriter did not see"
        ))
    }

    fn on_page_fault(&mut self, lin: u32, error_code: u32) -> Step {
        let in_ram = u64::from(lin) < self.ram.size() && lin >= crate::addr::PAGE_SIZE;
        if error_code & pf::FETCH != 0 {
            if !in_ram {
                return self.failure(format!(
                    "instruction fetch from {lin:#010x}, where the guest has no RAM"
                ));
            }
            self.stats.exit(ExitReason::CodeFetch);
            self.code.on_fetch(&self.ram, &mut self.space, lin)?;
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
            if [start, last].iter().any(|a| a & !(crate::addr::PAGE_SIZE - 1) == page) {
                self.code.open_for_step(&mut self.space, page)?;
                self.step = Some(SingleStep { page, guest_tf: self.state.eflags & eflags::TF });
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

    /// Runs one instruction through the vCPU emulator and applies what it did.
    fn emulate(&mut self, instr: &Instruction) -> Step {
        let mut bus = machine_bus!(self);
        let result = emulate(&mut self.state, &mut bus, instr);
        let exit_request = bus.exit_request;
        let failure = bus.failure.take();
        if let Some(req) = exit_request {
            return Ok(Some(RunOutcome::DebugExit { status: req.status }));
        }
        if let Some(f) = failure {
            return self.failure(format!("monitor failure during emulation: {f:?}"));
        }
        match result {
            Ok(Emulated::Done(effects)) => self.apply(effects),
            Ok(Emulated::Deliver(event)) => Ok(self.deliver(event)),
            Ok(Emulated::Unsupported(what)) => self.failure(format!(
                "{what} (instruction {} at {:#010x})",
                instr_text(instr),
                self.state.eip
            )),
            Err(fault) => Ok(self.deliver(Event::Exception(fault))),
        }
    }

    /// Delivers an event through the guest IDT; `Some` when the VM must stop.
    pub(super) fn deliver(&mut self, event: Event) -> Option<RunOutcome> {
        let mut bus = machine_bus!(self);
        let result = crate::vcpu::deliver(&mut self.state, &mut bus, event);
        match result {
            Ok(effects) => match self.apply(effects) {
                Ok(None) => None,
                Ok(Some(outcome)) => Some(outcome),
                Err(e) => Some(RunOutcome::GuestFailure {
                    reason: format!("after delivering {event:?}: {e}"),
                    dump: dump(&self.state),
                }),
            },
            Err(e) => Some(RunOutcome::GuestFailure { reason: e.to_string(), dump: dump(&self.state) }),
        }
    }

    /// Applies an emulated instruction's side effects on the host.
    fn apply(&mut self, effects: Effects) -> Step {
        let dirty = if effects.cpl_changed { 0x3f } else { effects.segments_dirty };
        if dirty != 0 {
            self.mirrors.sync(&self.state, dirty, None, &mut self.ctx)?;
        }
        if effects.paging_mode_changed && self.state.cr0 & cr0::PG != 0 {
            return self.failure(
                "the guest enabled paging (CR0.PG); this monitor runs guests with paging off only"
                    .to_string(),
            );
        }
        Ok(None)
    }
}

/// The guest-visible error code of a native #GP: selectors of host mirrors mean nothing
/// to the guest.
fn sanitize(error_code: u32) -> u32 {
    if error_code & ERROR_CODE_TI != 0 {
        0
    } else {
        error_code
    }
}

fn instr_text(instr: &Instruction) -> String {
    if instr.code() == Code::INVALID {
        "(invalid)".to_string()
    } else {
        format!("{instr}")
    }
}
