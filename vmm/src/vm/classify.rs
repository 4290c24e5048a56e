//! Exit classification: what a host exit means, decided in one place from the host's raw
//! exit (signal, vector, error code), the guest's code bytes and the vCPU state, without
//! changing anything. [`super::handle`] acts on the answer.

use iced_x86::Instruction;
use rewriter::{Action, Class};

use super::code::fetch::Fetch;
use super::stats::ExitReason;
use super::Vm;
use crate::addr::GuestLinear;
use crate::hostcpu::{HostExit, HostExitKind};
use crate::vcpu::exit::ERROR_CODE_IDT;
use crate::vcpu::Fault;
use crate::x86::{Exception, SegReg};

/// Opcode bytes classification looks for.
pub const OP_INT3: u8 = 0xcc;
const OP_INT_IMM8: u8 = 0xcd;
const OP_INTO: u8 = 0xce;
const OP_INT1: u8 = 0xf1;
/// The vector of Linux's i386 system call gate, the one INT n the seccomp backstop sees.
const SYSCALL_VECTOR: u8 = 0x80;
/// SIGTRAP si_code of a breakpoint (as opposed to TRAP_TRACE, a single step).
const TRAP_BRKPT: i32 = 1;

/// What a host exit means.
#[derive(Debug, Clone)]
pub enum ExitClass {
    /// A one-byte trap fired at `site` (EIP is after it). Its owner is an instruction
    /// breakpoint, an entry point the hook serves, a patched site, or else the guest's
    /// own INT3: [`super::trap`] asks them in that order.
    TrapByte {
        /// The trap byte's linear address.
        site: GuestLinear,
    },
    /// A software interrupt the host executed natively: INT3, INTO or INT imm8 whose host
    /// gate has DPL 3, INT 0x80 caught by seccomp, or INT1 (`eip_advance` 1: the host
    /// reported EIP at it). EIP is past the `len`-byte instruction once advanced.
    SoftwareInterrupt {
        /// The vector.
        vector: u8,
        /// The instruction's length.
        len: u8,
        /// How far EIP must still move to be past the instruction.
        eip_advance: u32,
        /// How the exit is counted.
        reason: ExitReason,
    },
    /// A #DB single-step trap (TF): EIP is past the instruction.
    SingleStep,
    /// A #GP from a privileged or IOPL-sensitive instruction, an INT n through a host
    /// gate of DPL 0, or a protection violation the guest sees as #GP.
    GeneralProtection {
        /// The host error code.
        error_code: u32,
        /// The instruction at EIP, if it decodes.
        instr: Option<Instruction>,
        /// How the exit is counted.
        reason: ExitReason,
    },
    /// A #GP at CPL 3 that the clamp of the user segment mirrors raised, within the
    /// guest's own segment limit: the guest gets the #PF its page tables give.
    ClampedAccess(Fault),
    /// A #GP at CPL 3 from an access whose offset wraps past 4 GiB to a user address
    /// below the clamp (`mov %gs:-0x54(...)` into i386 TLS): legal in the guest's 4 GiB
    /// segment, beyond the clamped mirror's limit. The monitor performs it.
    WrappedAccess {
        /// The instruction at EIP.
        instr: Instruction,
        /// The linear address it reaches.
        lin: GuestLinear,
    },
    /// Translate mode: a #GP(0) from an access the guest's own segment allows that
    /// reaches the monitor window, where the mirrors stop: the monitor performs it.
    WindowAccess {
        /// The instruction at EIP.
        instr: Instruction,
        /// Its access there.
        access: super::translate::WindowAccess,
    },
    /// Any other exception, which the guest sees as is.
    Exception(Fault),
    /// A host page fault in the guest's linear space: see [`super::page_fault`].
    PageFault {
        /// The faulting linear address.
        lin: GuestLinear,
        /// The host error code (W, U, I, PK bits; P is the host's).
        error_code: u32,
    },
    /// The vCPU timer or a kick.
    Async,
    /// The VM must stop: an escape attempt, a guest that cannot be entered, a host
    /// syscall from code the rewriter did not see, an unexplained trap or signal.
    Stop(String),
}

impl Vm {
    /// A read-only view of guest code as the vCPU fetches it now.
    pub(super) fn fetch(&self) -> Fetch<'_> {
        Fetch {
            mem: &self.mem,
            pages: &self.code.pages,
            state: &self.cpu.state,
        }
    }

    /// Classifies a host exit.
    pub(super) fn classify(&self, exit: &HostExit) -> ExitClass {
        match exit.kind {
            HostExitKind::Fault { vector, error_code } => {
                self.classify_fault(vector, error_code, exit.si_code)
            }
            HostExitKind::PageFault { addr, error_code } => ExitClass::PageFault {
                lin: addr,
                error_code,
            },
            HostExitKind::Syscall { .. } => self.classify_syscall(),
            HostExitKind::Async { .. } => ExitClass::Async,
            HostExitKind::Escape { rip } => ExitClass::Stop(format!(
                "guest code ran in the host's 64-bit code segment at {rip:#x}: escape attempt stopped"
            )),
            HostExitKind::BadEntry(bad) => {
                ExitClass::Stop(format!("the guest state cannot be entered: {bad:?}"))
            }
            HostExitKind::Gate => {
                ExitClass::Stop("a gate exit outside translate mode".to_string())
            }
            HostExitKind::Signal => ExitClass::Stop(format!(
                "an unexpected host signal {} interrupted the guest",
                exit.signo
            )),
        }
    }

    fn classify_fault(&self, vector: u8, error_code: u32, si_code: i32) -> ExitClass {
        let eip = self.cpu.state.eip;
        let fetch = self.fetch();
        match vector {
            Exception::BP => ExitClass::TrapByte {
                site: fetch.linear(eip.wrapping_sub(1)),
            },
            Exception::OF => self.software_trap(Exception::OF, OP_INTO),
            Exception::DB => {
                // INT1 (ICEBP) reaches the process as a breakpoint SIGTRAP with EIP still
                // at the instruction; a single step comes as TRAP_TRACE past it.
                let (at, n) = fetch.read(fetch.linear(eip));
                if si_code == TRAP_BRKPT && n > 0 && at[0] == OP_INT1 {
                    return ExitClass::SoftwareInterrupt {
                        vector: Exception::DB,
                        len: 1,
                        eip_advance: 1,
                        reason: ExitReason::GuestException,
                    };
                }
                // The guest's debug registers are virtual and never loaded on the host, so
                // a native #DB is a single-step trap (TF).
                ExitClass::SingleStep
            }
            Exception::GP => self.classify_gp(error_code),
            // Translate mode: the SS mirror stops below the monitor window too; a stack
            // access there (PUSH, an SS override, EBP/ESP addressing) the guest's own
            // segment allows is performed by the monitor.
            Exception::SS if error_code == 0 && self.translating() => {
                match self
                    .fetch()
                    .decode_at(self.cpu.state.eip)
                    .and_then(|i| self.window_access(&i).map(|a| (i, a)))
                {
                    Some((instr, access)) => ExitClass::WindowAccess { instr, access },
                    None => ExitClass::Exception(Fault::with_code(vector, error_code)),
                }
            }
            _ => ExitClass::Exception(if Exception::has_error_code(vector) {
                Fault::with_code(vector, error_code)
            } else {
                Fault::new(vector)
            }),
        }
    }

    /// A trap-class software interrupt the host delivered natively (its host IDT gate
    /// has DPL 3): the one-byte form `one_byte` or `INT imm8`, EIP after it.
    pub(super) fn software_trap(&self, vector: u8, one_byte: u8) -> ExitClass {
        let eip = self.cpu.state.eip;
        let fetch = self.fetch();
        let one = fetch.read(fetch.linear(eip.wrapping_sub(1)));
        let two = fetch.read(fetch.linear(eip.wrapping_sub(2)));
        let len = if one.1 > 0 && one.0[0] == one_byte {
            1
        } else if two.1 > 1 && two.0[0] == OP_INT_IMM8 && two.0[1] == vector {
            2
        } else {
            return ExitClass::Stop(format!(
                "vector {vector} trap at {eip:#010x} without an instruction that raises it"
            ));
        };
        ExitClass::SoftwareInterrupt {
            vector,
            len,
            eip_advance: 0,
            reason: ExitReason::GuestException,
        }
    }

    fn classify_gp(&self, error_code: u32) -> ExitClass {
        let instr = self.fetch().decode_at(self.cpu.state.eip);
        if let Some(fault) = instr
            .as_ref()
            .filter(|_| error_code == 0)
            .and_then(|i| self.clamp_violation(i))
        {
            return ExitClass::ClampedAccess(fault);
        }
        // Translate mode: past the window clamp or wrapped past 4 GiB, performed
        // through the bounce pages.
        if let Some((instr, access)) = instr
            .as_ref()
            .filter(|_| error_code == 0)
            .and_then(|i| self.window_access(i).map(|a| (*i, a)))
        {
            return ExitClass::WindowAccess { instr, access };
        }
        if let Some((instr, lin)) = instr
            .as_ref()
            .filter(|_| error_code == 0)
            .and_then(|i| self.wrapped_access(i).map(|lin| (*i, lin)))
        {
            return ExitClass::WrappedAccess { instr, lin };
        }
        let reason = match instr.as_ref().map(rewriter::classify) {
            _ if error_code & ERROR_CODE_IDT != 0 => ExitReason::SoftwareInterrupt,
            Some(Class::Cpuid) => ExitReason::Cpuid,
            Some(Class::In | Class::Out | Class::Ins | Class::Outs) => ExitReason::PortIo,
            Some(class) if class.action() != Action::None => ExitReason::Privileged,
            _ => ExitReason::GuestException,
        };
        ExitClass::GeneralProtection {
            error_code,
            instr,
            reason,
        }
    }

    fn classify_syscall(&self) -> ExitClass {
        // INT 0x80 reaches the host kernel as a system call; seccomp turned it into
        // SIGSYS with EIP after the instruction. SYSENTER and SYSCALL are rewritten and
        // never get here; anything else is code the rewriter did not see.
        let eip = self.cpu.state.eip;
        let fetch = self.fetch();
        let (bytes, n) = fetch.read(fetch.linear(eip.wrapping_sub(2)));
        if n >= 2 && bytes[0] == OP_INT_IMM8 && bytes[1] == SYSCALL_VECTOR {
            return ExitClass::SoftwareInterrupt {
                vector: SYSCALL_VECTOR,
                len: 2,
                eip_advance: 0,
                reason: ExitReason::SyscallTrap,
            };
        }
        ExitClass::Stop(format!(
            "a host system call was attempted at {eip:#010x} by an instruction the rewriter did not see"
        ))
    }

    /// The memory operands of `instr`: segment register, offset (wrapped at 4 GiB as the
    /// CPU's 32-bit addressing does) and size.
    pub(super) fn memory_operands(
        &self,
        instr: &Instruction,
    ) -> Vec<(SegReg, u32, u32, iced_x86::OpAccess)> {
        let state = &self.cpu.state;
        let info = iced_x86::InstructionInfoFactory::new()
            .info(instr)
            .used_memory()
            .to_vec();
        info.into_iter()
            .filter_map(|m| {
                let seg = SegReg::from_iced(m.segment())?;
                let off = m.virtual_address(0, |reg, _, _| {
                    if reg.is_segment_register() {
                        Some(0)
                    } else {
                        Some(u64::from(crate::vcpu::emulate::operands::read_gpr(
                            state, reg,
                        )))
                    }
                })?;
                let off = u32::try_from(off & u64::from(u32::MAX)).ok()?;
                let size = u32::try_from(m.memory_size().size().max(1)).ok()?;
                Some((seg, off, size, m.access()))
            })
            .collect()
    }

    /// A #GP at CPL 3 with paging on from an access the guest's segment allows whose
    /// linear address wraps past 4 GiB to below the clamp of the user mirrors: the mirror's
    /// limit (cut at the clamp) refused the offset. Returns the linear address reached.
    fn wrapped_access(&self, instr: &Instruction) -> Option<GuestLinear> {
        let limit = self.mem.paging.user_clamp?;
        let state = &self.cpu.state;
        if !self.mem.paging.enabled() || state.cpl() != 3 {
            return None;
        }
        self.memory_operands(instr)
            .into_iter()
            .find_map(|(seg, off, size, _)| {
                let cache = state.sreg(seg);
                let wraps = u64::from(cache.base) + u64::from(off) > u64::from(u32::MAX);
                let lin = GuestLinear(cache.base).wrapping_add(off);
                let last = lin.wrapping_add(size - 1);
                (wraps && cache.contains(off, size) && lin < limit && last < limit && lin <= last)
                    .then_some(lin)
            })
    }

    /// A #GP at CPL 3 with paging on may be the clamp of the user segment mirrors, not the
    /// guest's own segment limit: the access reaches above the highest user directory
    /// entry. The guest then gets the #PF its page tables give a user access there.
    fn clamp_violation(&self, instr: &Instruction) -> Option<Fault> {
        let limit = self.mem.paging.user_clamp?;
        let state = &self.cpu.state;
        if !self.mem.paging.enabled() || state.cpl() != 3 {
            return None;
        }
        for (seg, off, size, op_access) in self.memory_operands(instr) {
            let cache = state.sreg(seg);
            let lin = GuestLinear(cache.base).wrapping_add(off);
            let last = lin.wrapping_add(size - 1);
            // Within the guest's own segment, beyond the clamp: the mirror refused it.
            if !cache.contains(off, size) || (lin < limit && last < limit) {
                continue;
            }
            let write = matches!(
                op_access,
                iced_x86::OpAccess::Write
                    | iced_x86::OpAccess::ReadWrite
                    | iced_x86::OpAccess::CondWrite
                    | iced_x86::OpAccess::ReadCondWrite
            );
            let at = lin.max(limit);
            let access = if write {
                shadow_paging::Access::write(true)
            } else {
                shadow_paging::Access::read(true)
            };
            let ctx = *self.mem.paging.shadow.context();
            let mut ram = super::shadow_backend::RamPhys(&self.mem.ram);
            if let Err(pf) = shadow_paging::walk(&mut ram, &ctx, at, access) {
                return Some(Fault::page_fault(pf.cr2, pf.error_code.0));
            }
        }
        None
    }
}
