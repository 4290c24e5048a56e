//! The vCPU's part of handling an exit: the run loop classifies the host's exit (vector,
//! error code, patch table; `vm/classify.rs`), hands what the guest must see to
//! [`handle`] as a [`GuestExit`], and [`handle`] turns it into emulation or delivery
//! against the vCPU state. This is the pure half of exit handling: a function from
//! (exit, state) to (action, state), tested without running a guest.

use super::emulate::{emulate, Emulated, Unsupported};
use super::interrupts::{deliver, DeliveryError, Event, SoftwareKind};
use super::state::VcpuState;
use super::{Effects, Exception, Fault, GuestBus};
use crate::x86::{eflags, SegReg};
use iced_x86::Instruction;

/// DR6.BS: the #DB was a single-step trap (SDM Vol. 3B §17.2.3).
pub const DR6_BS: u32 = 1 << 14;
/// Error-code bit IDT (SDM Vol. 3A §6.13): the selector index refers to an IDT gate; a
/// host #GP with it comes from INT n through a host gate of DPL 0.
pub const ERROR_CODE_IDT: u32 = 1 << 1;

/// An exit the vCPU handles, as the run loop classified it. In every case the run loop
/// has already copied the guest registers into the state; `state.eip` is where the host
/// reported the exit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestExit {
    /// The one-byte trap of a patched site fired at `state.eip`; `original` is the
    /// instruction the patch replaced, decoded from its original bytes.
    Patched {
        /// The original instruction.
        original: Instruction,
    },
    /// The host raised #GP at `state.eip`: a privileged or IOPL-sensitive instruction, an
    /// INT n whose host gate has DPL 0 (the error code then names the IDT entry), or a
    /// protection violation of the mirrors. `instr` is the instruction decoded from guest
    /// memory at `state.eip`, if the run loop could read it. An instruction the emulator
    /// does not handle (or no instruction) means a genuine protection violation: the guest
    /// gets #GP(0). A run loop that wants a clamped-mirror violation seen as the #PF a
    /// supervisor page would give passes [`GuestExit::Exception`] instead.
    GeneralProtection {
        /// The host error code.
        error_code: u32,
        /// The instruction at `state.eip`.
        instr: Option<Instruction>,
    },
    /// A software interrupt that the host already executed (INT3 and INTO give a host
    /// trap, INT 0x80 a seccomp SIGSYS): `state.eip` is past the `len`-byte instruction.
    SoftwareInterrupt {
        /// The vector.
        vector: u8,
        /// Length of the instruction that raised it.
        len: u8,
    },
    /// An exception the guest raised that it must see as is (#DE, #UD, #NM, #MF, #XM,
    /// #AC, a true #PF with CR2 and the guest error code...), at `state.eip`.
    Exception(Fault),
    /// A non-maskable interrupt (an NMI IPI): delivered through vector 2 whatever IF says.
    /// NMI blocking until the next IRET is not modelled.
    Nmi,
    /// A virtual hardware interrupt is pending.
    Interrupt {
        /// The vector.
        vector: u8,
    },
}

/// Why the VM must stop.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StopReason {
    /// An event could not be delivered (triple fault, task gate...).
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
    /// The guest used a feature that is not emulated.
    #[error(transparent)]
    Unsupported(#[from] Unsupported),
}

/// What the run loop does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitAction {
    /// Apply the effects and re-enter the guest.
    Resume(Effects),
    /// Apply the effects, then block until an interrupt is pending (the guest executed
    /// HLT; deliver the interrupt with [`GuestExit::Interrupt`] and resume).
    Halt(Effects),
    /// The interrupt cannot be taken now (virtual IF = 0 or the interrupt shadow); keep it
    /// pending and re-enter the guest.
    InterruptBlocked,
    /// Stop the VM with this diagnostic.
    Stop(StopReason),
}

/// Handles one exit against the state. Guest faults become guest exceptions; only what
/// the monitor cannot represent stops the VM.
pub fn handle(state: &mut VcpuState, bus: &mut impl GuestBus, exit: &GuestExit) -> ExitAction {
    match exit {
        GuestExit::Patched { original } => run_instruction(state, bus, original),
        GuestExit::GeneralProtection { error_code, instr } => {
            if error_code & ERROR_CODE_IDT != 0 {
                // INT n through a host gate of DPL 0: the instruction did not execute.
                // The selector index of an IDT entry is its vector.
                let vector = ((error_code >> 3) & 0xff) as u8;
                // An instruction is at most 15 bytes.
                let len = instr
                    .as_ref()
                    .map_or(2, |i| u32::try_from(i.len()).unwrap_or(2));
                let next_eip = state.eip.wrapping_add(len);
                return deliver_event(
                    state,
                    bus,
                    Event::Software {
                        vector,
                        kind: SoftwareKind::IntN,
                        next_eip,
                    },
                    Effects::NONE,
                );
            }
            match instr {
                Some(i) => match run_instruction(state, bus, i) {
                    // An ordinary instruction faulted natively (e.g. past a clamped mirror
                    // limit): nothing to emulate, the host's #GP stands for the guest.
                    ExitAction::Stop(StopReason::Unsupported(Unsupported::Instruction(_))) => {
                        deliver_event(state, bus, Event::Exception(Fault::gp0()), Effects::NONE)
                    }
                    a => a,
                },
                // Nothing to emulate: a protection violation the guest sees as #GP(0).
                None => deliver_event(state, bus, Event::Exception(Fault::gp0()), Effects::NONE),
            }
        }
        GuestExit::SoftwareInterrupt { vector, len } => {
            let next_eip = state.eip;
            state.eip = next_eip.wrapping_sub(u32::from(*len));
            let kind = match (*vector, *len) {
                (Exception::BP, 1) => SoftwareKind::Int3,
                (Exception::OF, 1) => SoftwareKind::Into,
                (Exception::DB, 1) => SoftwareKind::Int1,
                _ => SoftwareKind::IntN,
            };
            deliver_event(
                state,
                bus,
                Event::Software {
                    vector: *vector,
                    kind,
                    next_eip,
                },
                Effects::NONE,
            )
        }
        GuestExit::Exception(f) => deliver_event(state, bus, Event::Exception(*f), Effects::NONE),
        GuestExit::Nmi => {
            // NMIs are blocked from the start of the delivery until the next IRET.
            state.nmi_blocked = true;
            deliver_event(state, bus, Event::Nmi, Effects::NONE)
        }
        GuestExit::Interrupt { vector } => {
            if state.eflags & eflags::IF == 0 || state.interrupt_shadow {
                return ExitAction::InterruptBlocked;
            }
            deliver_event(state, bus, Event::External(*vector), Effects::NONE)
        }
    }
}

/// Emulates `instr`, then delivers what it raised; a single-step #DB follows an
/// instruction that started with TF = 1 (SDM Vol. 3B §17.3.1.4).
fn run_instruction(
    state: &mut VcpuState,
    bus: &mut impl GuestBus,
    instr: &Instruction,
) -> ExitAction {
    let single_step = state.eflags & eflags::TF != 0;
    let task = (state.tr, state.ldtr, state.seg);
    match emulate(state, bus, instr) {
        Ok(Emulated::Done(e)) => {
            // MOV SS / POP SS hold off debug traps too, for one instruction (SDM Vol. 3A
            // §6.8.3); the shadow of STI does not hold off single-step traps.
            let held_off = state.interrupt_shadow && e.segment_dirty(SegReg::Ss);
            if single_step && !held_off {
                state.dr[6] |= DR6_BS;
                return deliver_event(state, bus, Event::Exception(Fault::new(Exception::DB)), e);
            }
            if e.halted {
                ExitAction::Halt(e)
            } else {
                ExitAction::Resume(e)
            }
        }
        Ok(Emulated::Deliver(ev)) => deliver_event(state, bus, ev, Effects::NONE),
        Ok(Emulated::Unsupported(u)) => ExitAction::Stop(u.into()),
        Err(f) => {
            // A task switch that faulted after its commit point left the new task's
            // registers: every segment mirror and the privilege view must follow.
            let before = if (state.tr, state.ldtr, state.seg) == task {
                Effects::NONE
            } else {
                task_switched()
            };
            deliver_event(state, bus, Event::Exception(f), before)
        }
    }
}

/// The effects of a task switch that ended in a fault: all segments, the privilege
/// level, the descriptor tables and CR3 may have changed.
fn task_switched() -> Effects {
    let mut e = Effects::NONE;
    e.segments_dirty = 0x3f;
    e.cpl_changed = true;
    e.descriptor_tables_changed = true;
    e.cr3_written = true;
    e
}

fn deliver_event(
    state: &mut VcpuState,
    bus: &mut impl GuestBus,
    ev: Event,
    before: Effects,
) -> ExitAction {
    match deliver(state, bus, ev) {
        Ok(e) => {
            let mut e = before.merge(e);
            e.halted = false;
            ExitAction::Resume(e)
        }
        Err(d) => ExitAction::Stop(d.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vcpu::descriptor::system_type;
    use crate::vcpu::emulate::test_util::decode_at;
    use crate::vcpu::state::gpr;
    use crate::vcpu::testbus::{int_gate, TestBus, KSTACK};

    const HANDLER: u32 = 0x5_0000;

    fn patch(s: &mut VcpuState, bus: &mut TestBus, bytes: &[u8]) -> ExitAction {
        let original = decode_at(bytes, s.eip);
        handle(s, bus, &GuestExit::Patched { original })
    }

    fn trap(s: &mut VcpuState, bus: &mut TestBus, bytes: &[u8]) -> ExitAction {
        let instr = Some(decode_at(bytes, s.eip));
        handle(
            s,
            bus,
            &GuestExit::GeneralProtection {
                error_code: 0,
                instr,
            },
        )
    }

    fn setup() -> (VcpuState, TestBus) {
        let (s, mut bus) = TestBus::with_interrupt_handlers(HANDLER);
        bus.set_gate(3, int_gate(0x08, HANDLER + 3, system_type::TRAP_GATE32, 3));
        (s, bus)
    }

    #[test]
    fn patched_popf_is_emulated_and_resumes() {
        let (mut s, mut bus) = setup();
        let esp = s.gpr[gpr::ESP] - 4;
        s.gpr[gpr::ESP] = esp;
        bus.write_u32(esp, eflags::FIXED1 | eflags::IF);
        let a = patch(&mut s, &mut bus, &[0x9d]);
        assert_eq!(a, ExitAction::Resume(Effects::NONE));
        assert_ne!(s.eflags & eflags::IF, 0);
        assert_eq!(s.eip, 0x7001);
    }

    #[test]
    fn privileged_instruction_from_user_becomes_guest_gp() {
        let (mut s, mut bus) = setup();
        bus.enter_user(&mut s);
        let exit = GuestExit::GeneralProtection {
            error_code: 0,
            instr: Some(decode_at(&[0xf4], s.eip)),
        };
        let a = handle(&mut s, &mut bus, &exit);
        assert!(matches!(a, ExitAction::Resume(e) if e.cpl_changed));
        assert_eq!(s.eip, HANDLER + 13);
        assert_eq!(bus.read_u32(KSTACK - 20), 0x7000, "faulting EIP pushed");
        assert_eq!(bus.read_u32(KSTACK - 24), 0, "error code 0");
    }

    #[test]
    fn native_gp_on_ordinary_instruction_is_reflected() {
        let (mut s, mut bus) = setup();
        bus.enter_user(&mut s);
        // mov eax, [0xc0000000] faulting on a clamped mirror.
        let a = trap(&mut s, &mut bus, &[0xa1, 0x00, 0x00, 0x00, 0xc0]);
        assert!(matches!(a, ExitAction::Resume(_)));
        assert_eq!(s.eip, HANDLER + 13);
        // The same instruction at a patched site is a monitor inconsistency: stop.
        let (mut s, mut bus) = setup();
        let a = patch(&mut s, &mut bus, &[0xa1, 0x00, 0x00, 0x00, 0xc0]);
        assert!(matches!(a, ExitAction::Stop(StopReason::Unsupported(_))));
    }

    #[test]
    fn hlt_in_kernel_halts_then_interrupt_wakes() {
        let (mut s, mut bus) = setup();
        s.eflags |= eflags::IF;
        let a = trap(&mut s, &mut bus, &[0xf4]);
        assert!(matches!(a, ExitAction::Halt(e) if e.halted));
        assert!(s.halted);
        let a = handle(&mut s, &mut bus, &GuestExit::Interrupt { vector: 0x20 });
        assert!(matches!(a, ExitAction::Resume(_)));
        assert!(!s.halted);
        assert_eq!(s.eip, HANDLER + 0x20);
        assert_eq!(bus.read_u32(KSTACK - 12), 0x7001, "returns after HLT");
    }

    #[test]
    fn interrupt_blocked_by_if_and_shadow() {
        let (mut s, mut bus) = setup();
        assert_eq!(
            handle(&mut s, &mut bus, &GuestExit::Interrupt { vector: 0x20 }),
            ExitAction::InterruptBlocked
        );
        // STI sets the shadow: still blocked right after it.
        trap(&mut s, &mut bus, &[0xfb]);
        assert_eq!(
            handle(&mut s, &mut bus, &GuestExit::Interrupt { vector: 0x20 }),
            ExitAction::InterruptBlocked
        );
        s.interrupt_shadow = false;
        assert!(matches!(
            handle(&mut s, &mut bus, &GuestExit::Interrupt { vector: 0x20 }),
            ExitAction::Resume(_)
        ));
    }

    #[test]
    fn int_n_from_gp_error_code_and_from_sigsys() {
        let (mut s, mut bus) = setup();
        bus.enter_user(&mut s);
        let mut t = s.clone();
        // INT 0x80 as a host #GP naming IDT entry 0x80.
        let exit = GuestExit::GeneralProtection {
            error_code: (0x80 << 3) | 2,
            instr: None,
        };
        assert!(matches!(
            handle(&mut t, &mut bus, &exit),
            ExitAction::Resume(_)
        ));
        assert_eq!(t.eip, HANDLER + 0x80);
        assert_eq!(bus.read_u32(KSTACK - 20), 0x7002);
        // The same INT 0x80 after a SIGSYS: EIP already past it.
        s.eip = 0x7002;
        handle(
            &mut s,
            &mut bus,
            &GuestExit::SoftwareInterrupt {
                vector: 0x80,
                len: 2,
            },
        );
        assert_eq!(s, t);
        // INT 0x30 from user mode hits a DPL-0 gate: #GP(0x30*8+2) with the INT's EIP.
        let mut u = bus.protected_state();
        bus.enter_user(&mut u);
        u.eip = 0x7002;
        handle(
            &mut u,
            &mut bus,
            &GuestExit::SoftwareInterrupt {
                vector: 0x30,
                len: 2,
            },
        );
        assert_eq!(u.eip, HANDLER + 13);
        assert_eq!(bus.read_u32(KSTACK - 24), 0x182);
        assert_eq!(bus.read_u32(KSTACK - 20), 0x7000);
    }

    #[test]
    fn guest_exceptions_are_reflected() {
        let (mut s, mut bus) = setup();
        let a = handle(
            &mut s,
            &mut bus,
            &GuestExit::Exception(Fault::new(Exception::DE)),
        );
        assert!(matches!(a, ExitAction::Resume(e) if e.segment_dirty(SegReg::Cs)));
        assert_eq!(s.eip, HANDLER);
        assert_eq!(bus.read_u32(KSTACK - 12), 0x7000);
    }

    #[test]
    fn single_step_after_emulated_instruction() {
        let (mut s, mut bus) = setup();
        s.eflags |= eflags::TF;
        patch(&mut s, &mut bus, &[0xfa]);
        assert_eq!(s.eip, HANDLER + 1);
        assert_ne!(s.dr[6] & DR6_BS, 0);
        assert_eq!(bus.read_u32(KSTACK - 12), 0x7001);
    }

    #[test]
    fn unsupported_and_triple_fault_stop() {
        let (mut s, mut bus) = setup();
        s.eflags |= eflags::NT;
        // IRET with NT=1 back to a busy 16-bit TSS: 16-bit task switches are not emulated.
        bus.set_gdt(
            0x58,
            crate::vcpu::testbus::system(
                0x4000,
                0x67,
                crate::vcpu::descriptor::system_type::TSS16_BUSY,
            ),
        );
        bus.write_u16(s.tr.base, 0x58);
        let a = patch(&mut s, &mut bus, &[0xcf]);
        assert_eq!(
            a,
            ExitAction::Stop(StopReason::Unsupported(Unsupported::TaskSwitch))
        );
        s.idtr.limit = 0;
        let a = handle(&mut s, &mut bus, &GuestExit::Exception(Fault::ud()));
        assert!(matches!(
            a,
            ExitAction::Stop(StopReason::Delivery(DeliveryError::TripleFault { .. }))
        ));
    }
}
