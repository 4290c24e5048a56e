//! Exception and interrupt delivery through the guest IDT (SDM Vol. 3A, §6.12, and the
//! INT n/INTO/INT3 pseudo-code in Vol. 2A) and the double-fault rules (§6.15, Table 6-5).
//! The return, IRET, is an instruction and lives in the emulator (`emulate::iret`).

use super::descriptor::{selector, system_type, Gate, TYPE_ACCESSED};
use super::segments::{fetch_descriptor, read_u64, set_accessed};
use super::stack::{push_frame, tss_stack};
use super::state::{gpr, Segment, VcpuState};
use super::task::{switch_task, TaskError, TaskReason};
use super::{Effects, Fault, GuestBus};
use crate::addr::GuestLinear;
use crate::x86::{eflags, Exception, SegReg};

/// Which instruction raised a software interrupt; it decides the privilege check and
/// what counts as the return address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SoftwareKind {
    /// INT n (CD ib): gate DPL must be ≥ CPL.
    IntN,
    /// INT3 (CC): like INT n with vector 3.
    Int3,
    /// INTO (CE) with OF = 1: like INT n with vector 4.
    Into,
    /// INT1/ICEBP (F1): delivered like a hardware #DB, without the DPL check.
    Int1,
}

/// An event to deliver to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// An exception raised by the instruction at `state.eip` (faults) — the pushed return
    /// address is `state.eip`, so for trap-class exceptions the caller advances EIP first.
    Exception(Fault),
    /// A maskable hardware interrupt (EXT = 1 in delivery error codes). The caller checks
    /// the virtual IF and the interrupt shadow before delivering it.
    External(u8),
    /// A non-maskable interrupt (vector 2, EXT = 1).
    Nmi,
    /// A software interrupt from the instruction at `state.eip`; `next_eip` is the address
    /// of the following instruction, which is what the frame holds.
    Software {
        /// The vector.
        vector: u8,
        /// The instruction form.
        kind: SoftwareKind,
        /// Return address pushed in the frame.
        next_eip: u32,
    },
}

impl Event {
    /// The vector delivered.
    pub const fn vector(&self) -> u8 {
        match self {
            Event::Exception(f) => f.vector,
            Event::External(v) => *v,
            Event::Nmi => Exception::NMI,
            Event::Software { vector, .. } => *vector,
        }
    }

    /// EXT: the event is external to the program (hardware interrupt, NMI, exception, or
    /// INT1), SDM Vol. 3A §6.13.
    const fn ext(&self) -> u32 {
        match self {
            Event::Software {
                kind: SoftwareKind::Int1,
                ..
            } => 1,
            Event::Software { .. } => 0,
            _ => 1,
        }
    }

    fn class(&self) -> Class {
        match self {
            Event::Exception(f) => match f.vector {
                Exception::PF => Class::PageFault,
                Exception::DF => Class::DoubleFault,
                0 | 10..=13 => Class::Contributory,
                _ => Class::Benign,
            },
            _ => Class::Benign,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Benign,
    Contributory,
    PageFault,
    DoubleFault,
}

/// Why an event could not be delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// A fault while delivering #DF: the processor shuts down.
    #[error("triple fault: {description}")]
    TripleFault {
        /// Which events led to the shutdown, for the register dump.
        description: String,
    },
    /// The IDT entry is a task gate to a 16-bit TSS or to a virtual-8086 task, which
    /// the task switch does not emulate.
    #[error(
        "vector {vector:#x} goes through a task gate to a 16-bit TSS or a virtual-8086 task, which is not supported"
    )]
    TaskGate {
        /// The vector.
        vector: u8,
    },
    /// Delivery from or to virtual-8086 mode is not emulated.
    #[error("interrupt delivery in virtual-8086 mode is not supported (vector {vector:#x})")]
    Virtual8086 {
        /// The vector.
        vector: u8,
    },
}

enum Fail {
    Fault(Fault),
    /// A fault after a task switch's commit point: the state is the new task's, whose
    /// effects must reach the run loop with those of the fault's delivery.
    Committed(Effects, Fault),
    Error(DeliveryError),
}

impl From<Fault> for Fail {
    fn from(f: Fault) -> Self {
        Fail::Fault(f)
    }
}

/// Delivers `event` to the guest: on success the state is at the first instruction of
/// the handler with the frame pushed, the halted flag and the interrupt shadow cleared.
///
/// A fault during delivery is itself delivered, escalating to #DF(0) per SDM Vol. 3A
/// Table 6-5 (contributory after contributory, contributory or #PF after #PF); a fault
/// while delivering #DF is a triple fault.
///
/// # Errors
/// [`DeliveryError::TripleFault`], or an unsupported gate/mode; the state then still
/// holds the registers of the failed attempt's starting point, for the dump.
pub fn deliver(
    state: &mut VcpuState,
    bus: &mut impl GuestBus,
    event: Event,
) -> Result<Effects, DeliveryError> {
    let mut current = event;
    // The events tried, described only if they end in a triple fault: a delivery is
    // on every interrupt's and exception's path, so nothing is allocated.
    let mut history = [event; MAX_TRIED + 1];
    let mut tried = 0;
    let mut switched = Effects::NONE;
    loop {
        if let Some(h) = history.get_mut(tried) {
            *h = current;
        }
        tried += 1;
        let f = match deliver_once(state, bus, &current) {
            Ok(e) => return Ok(switched.merge(e)),
            Err(Fail::Error(e)) => return Err(e),
            Err(Fail::Fault(f)) => f,
            Err(Fail::Committed(e, f)) => {
                switched = switched.merge(e);
                f
            }
        };
        let first = current.class();
        let second = Event::Exception(f).class();
        let escalate = matches!(
            (first, second),
            (Class::Contributory, Class::Contributory)
                | (Class::PageFault, Class::Contributory | Class::PageFault)
        );
        if first == Class::DoubleFault || tried >= MAX_TRIED {
            if let Some(h) = history.get_mut(tried) {
                *h = Event::Exception(f);
            }
            let tried = history.get(..=tried).unwrap_or(&history);
            let described: Vec<String> = tried.iter().map(describe).collect();
            return Err(DeliveryError::TripleFault {
                description: described.join(" -> "),
            });
        }
        current = if escalate {
            Event::Exception(Fault::with_code(Exception::DF, 0))
        } else {
            Event::Exception(f)
        };
    }
}

/// Events one delivery tries before it gives up as a triple fault: past the double
/// fault's escalation, only a guest whose handlers keep faulting benignly gets here.
const MAX_TRIED: usize = 9;

fn describe(e: &Event) -> String {
    match e {
        Event::Exception(f) => match f.error_code {
            Some(c) => format!("exception {:#x} (error {:#x})", f.vector, c),
            None => format!("exception {:#x}", f.vector),
        },
        Event::External(v) => format!("interrupt {v:#x}"),
        Event::Nmi => "NMI".to_string(),
        Event::Software { vector, .. } => format!("INT {vector:#x}"),
    }
}

fn deliver_once(
    state: &mut VcpuState,
    bus: &mut impl GuestBus,
    ev: &Event,
) -> Result<Effects, Fail> {
    let vector = ev.vector();
    if let Event::Exception(Fault { cr2: Some(a), .. }) = ev {
        state.cr2 = a.raw();
    }
    let (return_eip, error_code) = match ev {
        Event::Software { next_eip, .. } => (*next_eip, None),
        Event::Exception(f) if Exception::has_error_code(f.vector) => (state.eip, f.error_code),
        _ => (state.eip, None),
    };
    if !state.protected() {
        return deliver_real(state, bus, vector, return_eip).map_err(Fail::Fault);
    }
    if state.v86() {
        return Err(Fail::Error(DeliveryError::Virtual8086 { vector }));
    }
    let ext = ev.ext();
    let idt_code = u32::from(vector) * 8 + 2 + ext;
    if u32::from(vector) * 8 + 7 > u32::from(state.idtr.limit) {
        return Err(Fault::gp(idt_code).into());
    }
    let gate = Gate::decode(read_u64(
        bus,
        GuestLinear(state.idtr.base.wrapping_add(u32::from(vector) * 8)),
    )?);
    let is_int_gate = match gate.typ {
        system_type::INT_GATE16 | system_type::INT_GATE32 => true,
        system_type::TRAP_GATE16 | system_type::TRAP_GATE32 => false,
        system_type::TASK_GATE => false,
        _ => return Err(Fault::gp(idt_code).into()),
    };
    if gate.s {
        return Err(Fault::gp(idt_code).into());
    }
    let cpl = state.cpl();
    if let Event::Software {
        kind: SoftwareKind::IntN | SoftwareKind::Int3 | SoftwareKind::Into,
        ..
    } = ev
    {
        if gate.dpl < cpl {
            return Err(Fault::gp(u32::from(vector) * 8 + 2).into());
        }
    }
    if !gate.present {
        return Err(Fault::np(idt_code).into());
    }
    if gate.typ == system_type::TASK_GATE {
        let reason = TaskReason::Gate {
            vector,
            error_code,
            ext,
        };
        return match switch_task(state, bus, gate.selector, reason, return_eip) {
            Ok(e) => Ok(e),
            Err(TaskError::Fault(f)) => Err(Fail::Fault(f)),
            Err(TaskError::Committed(e, f)) => Err(Fail::Committed(e, f)),
            Err(TaskError::Unsupported(_)) => Err(Fail::Error(DeliveryError::TaskGate { vector })),
        };
    }
    let sel = gate.selector;
    if selector::is_null(sel) {
        return Err(Fault::gp(ext).into());
    }
    let cs_code = selector::error_code(sel) + ext;
    let cs_ref = fetch_descriptor(state, bus, sel)?.ok_or(Fault::gp(cs_code))?;
    let csd = cs_ref.desc;
    if !csd.is_code() || csd.dpl > cpl {
        return Err(Fault::gp(cs_code).into());
    }
    if !csd.present {
        return Err(Fault::np(cs_code).into());
    }
    let size = if gate.is_32() { 4 } else { 2 };
    let target = if gate.is_32() {
        gate.offset
    } else {
        gate.offset & 0xffff
    };
    let inner = !csd.is_conforming_code() && csd.dpl < cpl;
    let new_cpl = if inner { csd.dpl } else { cpl };
    let mut new_cs = Segment::from_descriptor((sel & 0xfffc) | u16::from(new_cpl), &csd);
    new_cs.typ |= TYPE_ACCESSED;
    if target > new_cs.limit {
        return Err(Fault::gp(ext).into());
    }
    // SS, ESP, EFLAGS, CS, EIP and an error code at most.
    let mut frame = [0u32; 6];
    let mut len = 0;
    let mut push = |v: u32| {
        if let Some(slot) = frame.get_mut(len) {
            *slot = v;
            len += 1;
        }
    };
    let old_ss = *state.sreg(SegReg::Ss);
    let old_esp = state.gpr[gpr::ESP];
    let user = new_cpl == 3;
    let mut effects = Effects::segment(SegReg::Cs);
    let (ss_cache, ss_ref, esp) = if inner {
        let (ss_sel, esp) = tss_stack(state, bus, new_cpl, ext)?;
        let ss_code = selector::error_code(ss_sel) + ext;
        if selector::is_null(ss_sel) {
            return Err(Fault::ts(ext).into());
        }
        let ss_ref = fetch_descriptor(state, bus, ss_sel)?.ok_or(Fault::ts(ss_code))?;
        let ssd = ss_ref.desc;
        if selector::rpl(ss_sel) != new_cpl || ssd.dpl != new_cpl || !ssd.is_writable_data() {
            return Err(Fault::ts(ss_code).into());
        }
        if !ssd.present {
            return Err(Fault::ss(ss_code).into());
        }
        let mut cache = Segment::from_descriptor(ss_sel, &ssd);
        cache.typ |= TYPE_ACCESSED;
        push(u32::from(old_ss.selector));
        push(old_esp);
        effects = effects.merge(Effects::segment(SegReg::Ss));
        effects.cpl_changed = true;
        (cache, Some((ss_ref, ss_code)), esp)
    } else {
        (old_ss, None, old_esp)
    };
    push(state.eflags);
    push(u32::from(state.sreg(SegReg::Cs).selector));
    push(return_eip);
    if let Some(code) = error_code {
        push(code);
    }
    let frame = frame.get_mut(..len).unwrap_or_default();
    let stack_fault = match ss_ref {
        Some((_, code)) => Fault::ss(code),
        None => Fault::ss(ext),
    };
    if size == 2 {
        for v in frame.iter_mut() {
            *v &= 0xffff;
        }
    }
    let new_esp = push_frame(bus, &ss_cache, esp, frame, size, user, stack_fault)?;
    set_accessed(bus, &cs_ref)?;
    if let Some((r, _)) = ss_ref {
        set_accessed(bus, &r)?;
    }
    *state.sreg_mut(SegReg::Ss) = ss_cache;
    *state.sreg_mut(SegReg::Cs) = new_cs;
    state.gpr[gpr::ESP] = new_esp;
    state.eip = target;
    state.eflags &= !(eflags::TF | eflags::NT | eflags::RF | eflags::VM);
    if is_int_gate {
        state.eflags &= !eflags::IF;
    }
    state.halted = false;
    state.interrupt_shadow = false;
    Ok(effects)
}

/// Real-address-mode delivery through the IVT (SDM Vol. 3A §20.1.4).
fn deliver_real(
    state: &mut VcpuState,
    bus: &mut impl GuestBus,
    vector: u8,
    ret: u32,
) -> Result<Effects, Fault> {
    let off = u32::from(vector) * 4;
    if off + 3 > u32::from(state.idtr.limit) {
        return Err(Fault::gp0());
    }
    let mut b = [0u8; 4];
    bus.read_linear(
        GuestLinear(state.idtr.base.wrapping_add(off)),
        &mut b,
        false,
    )?;
    let ip = u32::from(u16::from_le_bytes([b[0], b[1]]));
    let cs = u16::from_le_bytes([b[2], b[3]]);
    let ss = *state.sreg(SegReg::Ss);
    let frame = [
        state.eflags & 0xffff,
        u32::from(state.sreg(SegReg::Cs).selector),
        ret & 0xffff,
    ];
    let esp = push_frame(
        bus,
        &ss,
        state.gpr[gpr::ESP],
        &frame,
        2,
        false,
        Fault::ss(0),
    )?;
    state.gpr[gpr::ESP] = esp;
    let c = state.sreg_mut(SegReg::Cs);
    c.selector = cs;
    c.base = u32::from(cs) << 4;
    state.eip = ip;
    state.eflags &= !(eflags::IF | eflags::TF | eflags::AC | eflags::RF);
    state.halted = false;
    state.interrupt_shadow = false;
    Ok(Effects::segment(SegReg::Cs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vcpu::emulate::test_util::exec;
    use crate::vcpu::emulate::Emulated;
    use crate::vcpu::testbus::{int_gate, TestBus, KSTACK, USTACK};

    const HANDLER: u32 = 0x5_0000;

    fn setup() -> (VcpuState, TestBus) {
        TestBus::with_interrupt_handlers(HANDLER)
    }

    #[test]
    fn kernel_to_kernel_interrupt_gate() {
        let (mut s, mut bus) = setup();
        s.eflags |= eflags::IF | eflags::TF;
        s.gpr[gpr::ESP] = 0x8800;
        let e = deliver(&mut s, &mut bus, Event::External(0x20)).unwrap();
        assert_eq!(s.eip, HANDLER + 0x20);
        assert_eq!(s.gpr[gpr::ESP], 0x8800 - 12);
        assert_eq!(
            bus.read_u32(0x8800 - 4),
            eflags::FIXED1 | eflags::IF | eflags::TF
        );
        assert_eq!(bus.read_u32(0x8800 - 8), 0x08);
        assert_eq!(bus.read_u32(0x8800 - 12), 0x7000);
        assert_eq!(s.eflags & (eflags::IF | eflags::TF), 0);
        assert!(!e.cpl_changed);
    }

    #[test]
    fn user_to_kernel_switches_to_tss_stack_with_error_code() {
        let (mut s, mut bus) = setup();
        bus.enter_user(&mut s);
        s.eflags |= eflags::IF;
        let e = deliver(&mut s, &mut bus, Event::Exception(Fault::gp(0x1234))).unwrap();
        assert!(e.cpl_changed && e.segment_dirty(SegReg::Ss));
        assert_eq!(s.cpl(), 0);
        assert_eq!(s.sreg(SegReg::Ss).selector, 0x10);
        assert_eq!(s.gpr[gpr::ESP], KSTACK - 24);
        let f: Vec<u32> = (1..=6).map(|i| bus.read_u32(KSTACK - 4 * i)).collect();
        assert_eq!(
            f,
            vec![
                0x23,
                USTACK,
                eflags::FIXED1 | eflags::IF,
                0x1b,
                0x7000,
                0x1234
            ]
        );
        // And IRET (after discarding the error code) returns to user mode.
        s.gpr[gpr::ESP] += 4;
        let e = match exec(&mut s, &mut bus, &[0xcf]).unwrap() {
            Emulated::Done(e) => e,
            other => panic!("{other:?}"),
        };
        assert!(e.cpl_changed);
        assert_eq!(s.cpl(), 3);
        assert_eq!(s.gpr[gpr::ESP], USTACK);
        assert_eq!(s.eip, 0x7000);
        assert_ne!(s.eflags & eflags::IF, 0);
    }

    #[test]
    fn page_fault_sets_cr2_and_pushes_code() {
        let (mut s, mut bus) = setup();
        deliver(
            &mut s,
            &mut bus,
            Event::Exception(Fault::page_fault(GuestLinear(0xdead_b000), 6)),
        )
        .unwrap();
        assert_eq!(s.cr2, 0xdead_b000);
        assert_eq!(bus.read_u32(KSTACK - 16), 6);
    }

    #[test]
    fn software_int_from_user_checks_gate_dpl() {
        let (mut s, mut bus) = setup();
        bus.enter_user(&mut s);
        s.eip = 0x7000;
        // DPL-3 trap gate at 0x80 works and keeps IF.
        s.eflags |= eflags::IF;
        let mut t = s.clone();
        deliver(
            &mut t,
            &mut bus,
            Event::Software {
                vector: 0x80,
                kind: SoftwareKind::IntN,
                next_eip: 0x7002,
            },
        )
        .unwrap();
        assert_eq!(t.eip, HANDLER + 0x80);
        assert_ne!(t.eflags & eflags::IF, 0);
        assert_eq!(bus.read_u32(KSTACK - 20), 0x7002);
        // DPL-0 gate: #GP(vector*8+2), delivered through vector 13 with the INT's EIP.
        deliver(
            &mut s,
            &mut bus,
            Event::Software {
                vector: 0x30,
                kind: SoftwareKind::IntN,
                next_eip: 0x7002,
            },
        )
        .unwrap();
        assert_eq!(s.eip, HANDLER + 13);
        assert_eq!(bus.read_u32(KSTACK - 24), 0x30 * 8 + 2);
        assert_eq!(bus.read_u32(KSTACK - 20), 0x7000);
    }

    #[test]
    fn not_present_gate_gives_np_with_ext() {
        let (mut s, mut bus) = setup();
        let mut g = int_gate(0x08, HANDLER, system_type::INT_GATE32, 0);
        g.present = false;
        bus.set_gate(0x21, g);
        deliver(&mut s, &mut bus, Event::External(0x21)).unwrap();
        assert_eq!(s.eip, HANDLER + 11);
        assert_eq!(bus.read_u32(KSTACK - 16), 0x21 * 8 + 2 + 1);
    }

    #[test]
    fn contributory_during_contributory_is_double_fault_then_triple() {
        let (mut s, mut bus) = setup();
        // #GP's gate points at a null selector: #GP during #GP delivery → #DF(0).
        bus.set_gate(13, int_gate(0, HANDLER, system_type::INT_GATE32, 0));
        let mut t = s.clone();
        deliver(&mut t, &mut bus, Event::Exception(Fault::gp0())).unwrap();
        assert_eq!(t.eip, HANDLER + 8);
        assert_eq!(bus.read_u32(KSTACK - 16), 0);
        // And with #DF broken too: triple fault.
        bus.set_gate(8, int_gate(0x40, HANDLER, system_type::INT_GATE32, 0));
        match deliver(&mut s, &mut bus, Event::Exception(Fault::gp0())) {
            Err(DeliveryError::TripleFault { description }) => {
                assert!(description.contains("exception 0x8"), "{description}");
            }
            other => panic!("expected triple fault, got {other:?}"),
        }
    }

    #[test]
    fn idt_limit_and_benign_chain() {
        let (mut s, mut bus) = setup();
        s.idtr.limit = 0x7f; // vectors 0..15 only
                             // External 0x20 beyond limit: #GP(0x20*8+2+1), benign first → plain #GP.
        deliver(&mut s, &mut bus, Event::External(0x20)).unwrap();
        assert_eq!(s.eip, HANDLER + 13);
        assert_eq!(bus.read_u32(KSTACK - 16), 0x103);
    }

    #[test]
    fn sixteen_bit_gate_pushes_words_and_iretw_returns() {
        let (mut s, mut bus) = setup();
        bus.set_gate(0x40, int_gate(0x50, 0x1234, system_type::TRAP_GATE16, 0));
        s.gpr[gpr::ESP] = 0x8800;
        s.eip = 0x0001_7000;
        deliver(&mut s, &mut bus, Event::External(0x40)).unwrap();
        assert_eq!((s.sreg(SegReg::Cs).selector, s.eip), (0x50, 0x1234));
        assert_eq!(s.gpr[gpr::ESP], 0x8800 - 6);
        assert_eq!(bus.read_u16(0x8800 - 2), crate::bits::low16(eflags::FIXED1));
        assert_eq!(bus.read_u16(0x8800 - 4), 0x08);
        assert_eq!(bus.read_u16(0x8800 - 6), 0x7000, "IP truncated to 16 bits");
        // IRET with a 16-bit operand size pops the three words back.
        bus.write_u16(0x8800 - 6, 0x2000);
        exec(&mut s, &mut bus, &[0x66, 0xcf]).unwrap();
        assert_eq!(
            (s.sreg(SegReg::Cs).selector, s.eip, s.gpr[gpr::ESP]),
            (0x08, 0x2000, 0x8800)
        );
    }

    #[test]
    fn inner_delivery_checks_the_tss_stack() {
        let (mut s, mut bus) = setup();
        bus.enter_user(&mut s);
        // SS0 names a DPL-3 segment: #TS(SS0), which itself needs the same stack: the
        // contributory pair escalates to #DF, whose delivery fails again: triple fault.
        bus.write_u32(crate::vcpu::testbus::TSS + 8, 0x20);
        let r = deliver(&mut s, &mut bus, Event::External(0x20));
        assert!(matches!(r, Err(DeliveryError::TripleFault { .. })), "{r:?}");
        // A TSS too short for SS0:ESP0: #TS(TR).
        let (mut s, mut bus) = setup();
        bus.enter_user(&mut s);
        s.tr.limit = 8;
        let r = deliver(&mut s, &mut bus, Event::External(0x20));
        match r {
            Err(DeliveryError::TripleFault { description }) => {
                assert!(
                    description.contains("exception 0xa (error 0x29)"),
                    "{description}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn task_gate_to_a_busy_tss_is_a_general_protection_fault() {
        let (mut s, mut bus) = setup();
        // Vector 0x21 names the current (busy) TSS: #GP(0x28 + EXT) through vector 13.
        bus.set_gate(0x21, int_gate(0x28, 0, system_type::TASK_GATE, 0));
        deliver(&mut s, &mut bus, Event::External(0x21)).unwrap();
        assert_eq!(s.eip, HANDLER + 13);
        assert_eq!(bus.read_u32(KSTACK - 16), 0x29);
        // A 16-bit TSS stops the VM with a diagnostic.
        let (mut s, mut bus) = setup();
        bus.set_gdt(
            0x58,
            crate::vcpu::testbus::system(0x4000, 0x67, system_type::TSS16_AVAILABLE),
        );
        bus.set_gate(8, int_gate(0x58, 0, system_type::TASK_GATE, 0));
        assert_eq!(
            deliver(&mut s, &mut bus, Event::Exception(Fault::with_code(8, 0))),
            Err(DeliveryError::TaskGate { vector: 8 })
        );
    }

    proptest::proptest! {
        /// Arbitrary gate and code-segment descriptor bits never panic the monitor: the
        /// result is a delivered event or a clean error.
        #[test]
        fn delivery_is_total(gate in proptest::prelude::any::<u64>(),
                             code in proptest::prelude::any::<u64>(),
                             vector in proptest::prelude::any::<u8>(),
                             user in proptest::prelude::any::<bool>(),
                             soft in proptest::prelude::any::<bool>()) {
            let (mut s, mut bus) = setup();
            if user {
                bus.enter_user(&mut s);
            }
            bus.write_u64(crate::vcpu::testbus::IDT + u32::from(vector) * 8, gate);
            bus.write_u64(crate::vcpu::testbus::GDT + 0x58, code);
            let ev = if soft {
                Event::Software { vector, kind: SoftwareKind::IntN, next_eip: 0x7002 }
            } else {
                Event::External(vector)
            };
            if deliver(&mut s, &mut bus, ev).is_ok() {
                proptest::prop_assert!(s.sreg(SegReg::Cs).is_code());
            }
        }
    }

    #[test]
    fn real_mode_ivt_delivery() {
        let mut s = VcpuState::reset();
        let mut bus = TestBus::new();
        s.idtr.base = 0;
        bus.write_u16(0x21 * 4, 0x1234);
        bus.write_u16(0x21 * 4 + 2, 0x2000);
        s.gpr[gpr::ESP] = 0x1000;
        s.eflags |= eflags::IF;
        deliver(
            &mut s,
            &mut bus,
            Event::Software {
                vector: 0x21,
                kind: SoftwareKind::IntN,
                next_eip: 0xfff2,
            },
        )
        .unwrap();
        assert_eq!(s.sreg(SegReg::Cs).base, 0x20000);
        assert_eq!(s.eip, 0x1234);
        assert_eq!(bus.read_u16(0xffa), 0xfff2);
        assert_eq!(s.eflags & eflags::IF, 0);
    }
}
