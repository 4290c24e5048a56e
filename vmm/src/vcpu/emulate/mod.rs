//! Emulation of one guest instruction against the vCPU state, one file per instruction
//! group. [`emulate`] is precise: when the instruction faults, the state is left exactly
//! as it was (registers are computed on a copy and committed on success), except for
//! REP string I/O, which faults with the completed iterations committed as hardware does,
//! and a task switch that faults after its commit point, which leaves the new task's
//! state for the fault to be delivered in (SDM Vol. 3A §7.3).
//! A REP string instruction does at most [`REP_BATCH`] elements per emulation and then
//! stops with EIP still on it and its counter and pointers advanced, as the processor
//! leaves an interrupted REP: the run loop serves timers and input between batches and
//! the guest re-executes the instruction for the rest.

pub mod alu;
pub mod cmpxchg;
pub mod cpuid;
pub mod ctrl;
pub mod data;
pub mod far;
pub mod flags;
pub mod io;
pub mod iret;
pub mod mediated;
pub mod msr;
pub mod operands;
pub mod sreg;
pub mod string;
pub mod string_read;
pub mod tables;

#[cfg(test)]
mod vectors;

pub use mediated::{data_access, mediate, Mediated};

use super::interrupts::{Event, SoftwareKind};
use super::stack::{adjust_sp, peek_frame_into, push_frame};
use super::state::{gpr, VcpuState};
use super::{Effects, Fault, GuestBus};
use crate::x86::{eflags, Exception, SegReg};
use iced_x86::{Instruction, Mnemonic};

/// Elements a REP string instruction moves per emulation (one exit): bounds the time
/// the monitor spends in one exit whatever ECX the guest chose.
pub const REP_BATCH: u32 = 4096;

/// Operations the emulator recognises but does not implement; the run loop stops the
/// VM with a diagnostic rather than let the guest continue with wrong state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unsupported {
    /// A hardware task switch to or from a 16-bit TSS, or into a virtual-8086 task
    /// (32-bit task switches are emulated, see [`crate::vcpu::task`]).
    #[error("task switches involving a 16-bit TSS or a virtual-8086 task are not supported")]
    TaskSwitch,
    /// Entering or running virtual-8086 mode.
    #[error("virtual-8086 mode is not supported")]
    Virtual8086,
    /// An instruction the emulator does not handle (it is neither rewritten nor
    /// privileged, so it should never reach the emulator).
    #[error("instruction {0:?} is not emulated")]
    Instruction(Mnemonic),
}

/// The result of [`emulate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emulated {
    /// The instruction completed; EIP points past it (or at the branch target).
    Done(Effects),
    /// The instruction raises a software interrupt (INT n, INT3, INTO with OF = 1,
    /// INT1): pass `event` to [`crate::vcpu::deliver`]. EIP still points at the
    /// instruction; the event holds the return address.
    Deliver(Event),
    /// The instruction needs a feature that is not emulated; nothing was changed.
    Unsupported(Unsupported),
}

/// How a handler ended, before the common EIP/RF/shadow bookkeeping.
pub(crate) enum Outcome {
    /// Advance EIP past the instruction.
    Next(Effects),
    /// The handler set EIP itself (far branches, IRET, SYSENTER, an unfinished REP).
    Jumped(Effects),
    /// Raise a software interrupt.
    Deliver(Event),
}

/// Why a handler stopped early.
pub(crate) enum Stop {
    /// A fault; nothing is committed.
    Fault(Fault),
    /// A fault after partial progress that must be committed (REP string I/O).
    FaultCommit(Fault),
    /// Not emulated.
    Unsupported(Unsupported),
}

impl From<Fault> for Stop {
    fn from(f: Fault) -> Self {
        Stop::Fault(f)
    }
}

pub(crate) type Res = Result<Outcome, Stop>;

/// What handlers need to know about the instruction besides its operands.
pub(crate) struct Ctx<'a> {
    /// The decoded instruction.
    pub instr: &'a Instruction,
    /// EIP of the next instruction (wrapped to 16 bits in a 16-bit code segment).
    pub next_eip: u32,
}

/// Executes the one instruction at `state.eip`, decoded from the guest's original bytes,
/// with the architectural result a bare-metal CPU at the guest's virtual CPL produces.
///
/// # Errors
/// The fault the instruction raises; the run loop delivers it with
/// [`crate::vcpu::deliver`]`(Event::Exception(fault))`. EIP still points at the
/// instruction.
pub fn emulate(
    state: &mut VcpuState,
    bus: &mut impl GuestBus,
    instr: &Instruction,
) -> Result<Emulated, Fault> {
    execute(state, bus, instr, dispatch)
}

/// Runs `handler` for `instr` on a copy of the state and commits it as [`emulate`]
/// documents; the entry points differ only in the instructions their handler accepts.
pub(crate) fn execute<B: GuestBus>(
    state: &mut VcpuState,
    bus: &mut B,
    instr: &Instruction,
    handler: impl FnOnce(&mut VcpuState, &mut B, &Ctx<'_>) -> Res,
) -> Result<Emulated, Fault> {
    let mut s = state.clone();
    // A decoded instruction is at most 15 bytes long.
    let len = u32::try_from(instr.len()).unwrap_or_default();
    let mut next_eip = s.eip.wrapping_add(len);
    if !s.code_32() {
        next_eip &= 0xffff;
    }
    // The shadow covers exactly one instruction; handlers that create one set it again.
    s.interrupt_shadow = false;
    let cx = Ctx { instr, next_eip };
    match handler(&mut s, bus, &cx) {
        Ok(Outcome::Next(e)) => {
            s.eip = next_eip;
            s.eflags &= !eflags::RF;
            *state = s;
            Ok(Emulated::Done(e))
        }
        Ok(Outcome::Jumped(e)) => {
            *state = s;
            Ok(Emulated::Done(e))
        }
        Ok(Outcome::Deliver(ev)) => Ok(Emulated::Deliver(ev)),
        Err(Stop::Fault(f)) => Err(f),
        Err(Stop::FaultCommit(f)) => {
            *state = s;
            Err(f)
        }
        Err(Stop::Unsupported(u)) => Ok(Emulated::Unsupported(u)),
    }
}

fn dispatch(s: &mut VcpuState, bus: &mut impl GuestBus, cx: &Ctx<'_>) -> Res {
    use Mnemonic as M;
    let i = cx.instr;
    match i.mnemonic() {
        M::Pushf | M::Pushfd => flags::pushf(s, bus, cx),
        M::Popf | M::Popfd => flags::popf(s, bus, cx),
        M::Cli => flags::cli(s),
        M::Sti => flags::sti(s),
        M::Sgdt | M::Sidt => tables::store_table(s, bus, cx),
        M::Sldt | M::Str => tables::store_selector(s, bus, cx),
        M::Smsw => tables::smsw(s, bus, cx),
        M::Lgdt | M::Lidt => tables::load_table(s, bus, cx),
        M::Lldt => tables::lldt(s, bus, cx),
        M::Ltr => tables::ltr(s, bus, cx),
        M::Lmsw => tables::lmsw(s, bus, cx),
        M::Lar | M::Lsl => tables::lar_lsl(s, bus, cx),
        M::Verr | M::Verw => tables::verr_verw(s, bus, cx),
        M::Mov if sreg::is_sreg_mov(i) => sreg::mov(s, bus, cx),
        M::Mov if ctrl::is_cr_dr_mov(i) => ctrl::mov(s, cx),
        M::Push | M::Pop if sreg::is_sreg_push_pop(i) => sreg::push_pop(s, bus, cx),
        M::Lds | M::Les | M::Lfs | M::Lgs | M::Lss => sreg::load_far_pointer(s, bus, cx),
        M::Jmp | M::Call if far::is_far(i) => far::jmp_call(s, bus, cx),
        M::Retf => far::retf(s, bus, cx),
        M::Iret | M::Iretd => iret::iret(s, bus, cx),
        M::Sysenter => far::sysenter(s),
        M::Sysexit => far::sysexit(s),
        M::Syscall | M::Sysret => Err(Fault::ud().into()),
        // The VM's CPU model (cpuid.rs) has no XSAVE (so CR4.OSXSAVE stays 0), INVPCID,
        // MONITOR/MWAIT or SMAP: for the guest these are undefined opcodes, whatever fault
        // the host raised for them at CPL 3.
        M::Xsetbv
        | M::Xsaves
        | M::Xrstors
        | M::Invpcid
        | M::Monitor
        | M::Mwait
        | M::Clac
        | M::Stac => Err(Fault::ud().into()),
        M::Hlt => ctrl::hlt(s),
        M::Clts => ctrl::clts(s),
        M::Invd | M::Wbinvd => ctrl::cache(s),
        M::Invlpg => ctrl::invlpg(s, cx),
        M::In | M::Out | M::Insb | M::Insw | M::Insd | M::Outsb | M::Outsw | M::Outsd => {
            io::emulate(s, bus, cx)
        }
        M::Rdmsr => msr::rdmsr(s, bus),
        M::Wrmsr => msr::wrmsr(s, bus),
        M::Rdpmc => msr::rdpmc(s),
        M::Rdtsc => msr::rdtsc(s, bus),
        M::Cpuid => cpuid::emulate(s),
        M::Int => Ok(software(i.immediate8(), SoftwareKind::IntN, cx)),
        M::Int3 => Ok(software(Exception::BP, SoftwareKind::Int3, cx)),
        M::Int1 => Ok(software(Exception::DB, SoftwareKind::Int1, cx)),
        M::Into => {
            if s.eflags & eflags::OF != 0 {
                Ok(software(Exception::OF, SoftwareKind::Into, cx))
            } else {
                Ok(Outcome::Next(Effects::NONE))
            }
        }
        // Undefined encodings (MOV CS, LOCK on the wrong instruction...) decode as INVALID.
        M::Ud0 | M::Ud1 | M::Ud2 | M::INVALID => Err(Fault::ud().into()),
        m => Err(Stop::Unsupported(Unsupported::Instruction(m))),
    }
}

fn software(vector: u8, kind: SoftwareKind, cx: &Ctx<'_>) -> Outcome {
    Outcome::Deliver(Event::Software {
        vector,
        kind,
        next_eip: cx.next_eip,
    })
}

/// Privileged instructions: #GP(0) unless CPL 0 (SDM Vol. 3A §5.9).
pub(crate) fn require_cpl0(s: &VcpuState) -> Result<(), Stop> {
    if s.cpl() != 0 {
        return Err(Fault::gp0().into());
    }
    Ok(())
}

/// Instructions that exist only in protected mode (#UD in real mode, SDM Vol. 2).
pub(crate) fn require_protected(s: &VcpuState) -> Result<(), Stop> {
    if !s.protected() || s.v86() {
        return Err(Fault::ud().into());
    }
    Ok(())
}

/// Pushes `values` of `size` bytes on the current stack; #SS(0) on a limit violation.
pub(crate) fn push(
    s: &mut VcpuState,
    bus: &mut impl GuestBus,
    values: &[u32],
    size: u32,
) -> Result<(), Fault> {
    let ss = *s.sreg(SegReg::Ss);
    let user = s.cpl() == 3;
    s.gpr[gpr::ESP] = push_frame(bus, &ss, s.gpr[gpr::ESP], values, size, user, Fault::ss(0))?;
    Ok(())
}

/// Reads `N` values of `size` bytes from the top of the stack, `skip` bytes in, without
/// popping them.
pub(crate) fn peek<const N: usize>(
    s: &VcpuState,
    bus: &mut impl GuestBus,
    skip: u32,
    size: u32,
) -> Result<[u32; N], Fault> {
    let mut out = [0; N];
    peek_into(s, bus, skip, &mut out, size)?;
    Ok(out)
}

/// [`peek`] for a count known only at run time: fills `out`.
pub(crate) fn peek_into(
    s: &VcpuState,
    bus: &mut impl GuestBus,
    skip: u32,
    out: &mut [u32],
    size: u32,
) -> Result<(), Fault> {
    let ss = *s.sreg(SegReg::Ss);
    let esp = adjust_sp(s.gpr[gpr::ESP], skip, ss.db);
    peek_frame_into(bus, &ss, esp, out, size, s.cpl() == 3, Fault::ss(0))
}

/// Moves ESP (SP on a 16-bit stack) up by `bytes`.
pub(crate) fn release(s: &mut VcpuState, bytes: u32) {
    let big = s.stack_32();
    s.gpr[gpr::ESP] = adjust_sp(s.gpr[gpr::ESP], bytes, big);
}

#[cfg(test)]
pub(crate) mod test_util {
    use crate::vcpu::testbus::TestBus;
    use crate::vcpu::{Emulated, Fault, VcpuState};
    use iced_x86::{Decoder, DecoderOptions, Instruction};

    /// Decodes `bytes` at the state's EIP and emulates the instruction.
    pub fn exec(s: &mut VcpuState, bus: &mut TestBus, bytes: &[u8]) -> Result<Emulated, Fault> {
        let i = decode_at(bytes, s.eip);
        super::emulate(s, bus, &i)
    }

    /// Decodes one instruction of 32-bit code at `ip`.
    pub fn decode_at(bytes: &[u8], ip: u32) -> Instruction {
        Decoder::with_ip(32, bytes, u64::from(ip), DecoderOptions::NONE).decode()
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::decode_at;
    use super::*;
    use crate::vcpu::testbus::TestBus;

    /// A far JMP/CALL or IRET that left CR0.TS set and TR on a busy 32-bit TSS, as a
    /// task switch that faulted after its commit point does.
    fn committed_task_switch(i: &Instruction, s: &VcpuState) -> bool {
        may_switch_task(i)
            && s.cr0 & crate::x86::cr0::TS != 0
            && s.tr.typ == crate::vcpu::descriptor::system_type::TSS32_BUSY
    }

    /// Far JMP/CALL and IRET: the instructions that may switch tasks.
    fn may_switch_task(i: &Instruction) -> bool {
        i.is_jmp_far()
            || i.is_jmp_far_indirect()
            || i.is_call_far()
            || i.is_call_far_indirect()
            || matches!(i.mnemonic(), Mnemonic::Iret | Mnemonic::Iretd)
    }

    /// Opcode starts of every emulated class, so random tails land on them often.
    const OPENERS: &[&[u8]] = &[
        &[0x0f, 0x00],
        &[0x0f, 0x01],
        &[0x0f, 0x02],
        &[0x0f, 0x03],
        &[0x8c],
        &[0x8e],
        &[0x9c],
        &[0x9d],
        &[0x66, 0x9d],
        &[0xcf],
        &[0x66, 0xcf],
        &[0xca],
        &[0xcb],
        &[0xea],
        &[0x9a],
        &[0xff],
        &[0xc4],
        &[0xc5],
        &[0x0f, 0xb2],
        &[0x0f, 0xb4],
        &[0xe4],
        &[0xe5],
        &[0xe6],
        &[0xe7],
        &[0xec],
        &[0xed],
        &[0xee],
        &[0xef],
        &[0xf3, 0x6c],
        &[0xf3, 0x6d],
        &[0xf3, 0x6e],
        &[0x67, 0xf3, 0x6f],
        &[0x0f, 0x20],
        &[0x0f, 0x21],
        &[0x0f, 0x22],
        &[0x0f, 0x23],
        &[0x0f, 0x30],
        &[0x0f, 0x32],
        &[0x0f, 0x33],
        &[0x0f, 0x34],
        &[0x0f, 0x35],
        &[0x0f, 0xa2],
        &[0xcd],
        &[0xf4],
        &[0xfa],
        &[0xfb],
        &[0x07],
        &[0x17],
        &[0x1f],
        &[0x0f, 0xa1],
        &[0x0f, 0xa9],
        &[0x06],
        &[0x0e],
        &[0x16],
        &[0x1e],
        &[0x0f, 0xa0],
        &[0x0f, 0xa8],
    ];

    proptest::proptest! {
        /// Whatever the instruction, registers and tables, emulation never panics, and a
        /// fault leaves the state unchanged.
        #[test]
        fn emulation_is_total_and_faults_are_precise(
            opener in 0..OPENERS.len(),
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 14),
            regs in proptest::array::uniform8(proptest::prelude::any::<u32>()),
            user in proptest::prelude::any::<bool>(),
            flags in proptest::prelude::any::<u32>(),
            raw in proptest::prelude::any::<u64>(),
        ) {
            let mut bus = TestBus::new();
            let mut s = bus.protected_state();
            if user {
                bus.enter_user(&mut s);
            }
            s.gpr = regs;
            s.eflags = (flags & eflags::IMPLEMENTED & !eflags::VM) | eflags::FIXED1;
            bus.write_u64(crate::vcpu::testbus::GDT + 0x58, raw);
            let mut bytes = OPENERS[opener].to_vec();
            bytes.extend_from_slice(&tail);
            let i = decode_at(&bytes, s.eip);
            let before = s.clone();
            match emulate(&mut s, &mut bus, &i) {
                // A task switch that faults after its commit point leaves the new task's
                // state, with TR on the new (busy, 32-bit) TSS.
                Err(_) if !(i.has_rep_prefix() || committed_task_switch(&i, &s)) => {
                    proptest::prop_assert_eq!(&s, &before)
                }
                Ok(Emulated::Deliver(_)) | Ok(Emulated::Unsupported(_)) => {
                    proptest::prop_assert_eq!(&s, &before)
                }
                _ => {}
            }
        }
    }
}
