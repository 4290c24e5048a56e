//! Hardware task switching between 32-bit TSSs (SDM Vol. 3A §7.3, "Task Switching", and
//! the TASK-SWITCH parts of JMP, CALL, INT n and IRET in Vol. 2): the state of the current
//! task is saved in its TSS and the new task's registers, CR3, LDTR and segments are
//! loaded from its TSS, with the busy bits and the back link kept as the reason requires.
//!
//! The checks before the commit point (the new TSS descriptor, both TSS limits, reading
//! the new TSS, saving into the old one) leave the registers as they were. Once the new
//! task's state is committed, a fault in loading its LDTR or segment registers (or its
//! EIP beyond CS) is raised in the new task's context, as the SDM's Table 7-1 says:
//! [`TaskError::Committed`].
//!
//! 16-bit TSSs and tasks that would start in virtual-8086 mode are refused as
//! [`Unsupported`] before anything changes.

use super::descriptor::{selector, system_type, Descriptor, TYPE_ACCESSED, TYPE_TSS_BUSY};
use super::emulate::Unsupported;
use super::segments::{fetch_descriptor, read_u64, set_accessed};
use super::stack::push_frame;
use super::state::{gpr, Segment, VcpuState};
use super::{Effects, Fault, GuestBus};
use crate::addr::GuestLinear;
use crate::bits::low16;
use crate::x86::{cr0, eflags, SegReg};

/// The smallest limit of a 32-bit TSS: its 104 bytes of static fields.
pub const TSS32_MIN_LIMIT: u32 = 0x67;

/// Offsets of the 32-bit TSS fields (SDM Vol. 3A, Figure 7-2).
mod off {
    pub const LINK: u32 = 0x00;
    pub const CR3: u32 = 0x1c;
    pub const EIP: u32 = 0x20;
    pub const EFLAGS: u32 = 0x24;
    /// EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI.
    pub const GPRS: u32 = 0x28;
    /// ES, CS, SS, DS, FS, GS, 4 bytes apart.
    pub const SEGS: u32 = 0x48;
    pub const LDT: u32 = 0x60;
}

/// What causes the task switch; it decides the busy bits, the back link and NT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskReason {
    /// JMP far to a TSS or task gate: the old task is no longer busy, no link.
    Jmp,
    /// CALL far to a TSS or task gate: the new task is nested (NT = 1, back link).
    Call,
    /// IRET with NT = 1: return to the task named by the back link, which is busy.
    Iret,
    /// An exception or interrupt through a task gate in the IDT: nested like a CALL; an
    /// exception's error code is pushed on the new task's stack.
    Gate {
        /// The vector delivered.
        vector: u8,
        /// The error code to push, for exceptions that have one.
        error_code: Option<u32>,
        /// EXT of the error codes of faults the switch raises (1 for events external
        /// to the program).
        ext: u32,
    },
}

impl TaskReason {
    const fn ext(self) -> u32 {
        match self {
            TaskReason::Gate { ext, .. } => ext,
            _ => 0,
        }
    }
    const fn nests(self) -> bool {
        matches!(self, TaskReason::Call | TaskReason::Gate { .. })
    }
}

/// Why a task switch did not complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskError {
    /// A fault before the commit point: the registers are unchanged.
    Fault(Fault),
    /// A fault after the commit point: the state is the new task's, with the effects of
    /// the switch so far; the fault is delivered in the new task.
    Committed(Effects, Fault),
    /// A 16-bit TSS or a virtual-8086 task; nothing was changed.
    Unsupported(Unsupported),
}

impl From<Fault> for TaskError {
    fn from(f: Fault) -> Self {
        TaskError::Fault(f)
    }
}

/// Everything the new TSS holds that the switch loads.
struct NewTask {
    cr3: u32,
    eip: u32,
    eflags: u32,
    gprs: [u32; 8],
    segs: [u16; 6],
    ldt: u16,
}

impl NewTask {
    /// The selector the TSS holds for `reg`.
    fn sel(&self, reg: SegReg) -> u16 {
        self.segs.get(reg as usize).copied().unwrap_or_default()
    }
}

fn read_u32(bus: &mut impl GuestBus, addr: u32) -> Result<u32, Fault> {
    let mut b = [0u8; 4];
    bus.read_linear(GuestLinear(addr), &mut b, false)?;
    Ok(u32::from_le_bytes(b))
}

fn write_u32(bus: &mut impl GuestBus, addr: u32, v: u32) -> Result<(), Fault> {
    bus.write_linear(GuestLinear(addr), &v.to_le_bytes(), false)
}

/// Selector fields (segment registers, the back link) are 16 bits; the upper half of
/// their TSS dword is reserved and left as it is.
fn write_u16(bus: &mut impl GuestBus, addr: u32, v: u16) -> Result<(), Fault> {
    bus.write_linear(GuestLinear(addr), &v.to_le_bytes(), false)
}

/// Rewrites the type byte of the TSS descriptor at `addr` with the busy bit `busy`.
fn set_busy(bus: &mut impl GuestBus, addr: GuestLinear, busy: bool) -> Result<(), Fault> {
    let mut d = Descriptor::decode(read_u64(bus, addr)?);
    if busy {
        d.typ |= TYPE_TSS_BUSY;
    } else {
        d.typ &= !TYPE_TSS_BUSY;
    }
    let byte = (u8::from(d.present) << 7) | ((d.dpl & 3) << 5) | (u8::from(d.s) << 4) | d.typ;
    bus.write_linear(addr.wrapping_add(5), &[byte], false)
}

/// Switches to the task whose TSS `new_tss` selects, for `reason`. `return_eip` is what
/// the old task resumes at: the next instruction for JMP, CALL, IRET and software
/// interrupts, the faulting instruction for faults. Privilege checks on the selector or
/// gate that led here are the caller's (they differ by instruction).
///
/// # Errors
/// Before the commit point ([`TaskError::Fault`], nothing changed): #TS(new) for an LDT
/// selector or a limit below 0x67, #GP(new) for a selector outside the GDT or not naming
/// an available TSS (a busy one for IRET: #TS), #NP(new) when not present, #TS(TR) when
/// the current TSS is too short, #PF from the TSS accesses. After it
/// ([`TaskError::Committed`]): #TS/#NP for a bad LDT, #TS/#NP/#SS for bad segments, #GP(0)
/// for EIP beyond CS, #SS(0)/#PF pushing the error code.
pub fn switch_task(
    state: &mut VcpuState,
    bus: &mut impl GuestBus,
    new_tss: u16,
    reason: TaskReason,
    return_eip: u32,
) -> Result<Effects, TaskError> {
    let ext = reason.ext();
    let code = selector::error_code(new_tss) + ext;
    let iret = reason == TaskReason::Iret;
    if selector::ti(new_tss) {
        return Err(Fault::ts(code).into());
    }
    let bad_type = if iret {
        Fault::ts(code)
    } else {
        Fault::gp(code)
    };
    let new_ref = fetch_descriptor(state, bus, new_tss)?.ok_or(bad_type)?;
    let nd = new_ref.desc;
    let (want32, want16) = if iret {
        (system_type::TSS32_BUSY, system_type::TSS16_BUSY)
    } else {
        (system_type::TSS32_AVAILABLE, system_type::TSS16_AVAILABLE)
    };
    if nd.s || (nd.typ != want32 && nd.typ != want16) {
        return Err(bad_type.into());
    }
    if !nd.present {
        return Err(Fault::np(code).into());
    }
    if nd.typ == want16 {
        return Err(TaskError::Unsupported(Unsupported::TaskSwitch));
    }
    if nd.byte_limit() < TSS32_MIN_LIMIT {
        return Err(Fault::ts(code).into());
    }
    let old_tr = state.tr;
    if !matches!(
        old_tr.typ,
        system_type::TSS32_AVAILABLE | system_type::TSS32_BUSY
    ) {
        return Err(TaskError::Unsupported(Unsupported::TaskSwitch));
    }
    if old_tr.limit < TSS32_MIN_LIMIT {
        return Err(Fault::ts(selector::error_code(old_tr.selector) + ext).into());
    }
    let base = nd.base;
    let mut gprs = [0; 8];
    for (i, r) in (0u32..).zip(gprs.iter_mut()) {
        *r = read_u32(bus, base.wrapping_add(off::GPRS + 4 * i))?;
    }
    let mut segs = [0u16; 6];
    for (i, s) in (0u32..).zip(segs.iter_mut()) {
        *s = low16(read_u32(bus, base.wrapping_add(off::SEGS + 4 * i))?);
    }
    let new = NewTask {
        cr3: read_u32(bus, base.wrapping_add(off::CR3))?,
        eip: read_u32(bus, base.wrapping_add(off::EIP))?,
        eflags: read_u32(bus, base.wrapping_add(off::EFLAGS))?,
        gprs,
        segs,
        ldt: low16(read_u32(bus, base.wrapping_add(off::LDT))?),
    };
    if new.eflags & eflags::VM != 0 {
        return Err(TaskError::Unsupported(Unsupported::TaskSwitch));
    }

    // Save the current task (its dynamic fields) into the old TSS.
    let old = old_tr.base;
    let mut old_flags = state.eflags;
    if iret {
        old_flags &= !eflags::NT;
    }
    write_u32(bus, old.wrapping_add(off::EIP), return_eip)?;
    write_u32(bus, old.wrapping_add(off::EFLAGS), old_flags)?;
    for (i, r) in (0u32..).zip(state.gpr.iter()) {
        write_u32(bus, old.wrapping_add(off::GPRS + 4 * i), *r)?;
    }
    for (i, reg) in (0u32..).zip(SegReg::ALL.iter()) {
        let sel = state.sreg(*reg).selector;
        write_u16(bus, old.wrapping_add(off::SEGS + 4 * i), sel)?;
    }
    // Busy bits and the back link.
    if matches!(reason, TaskReason::Jmp | TaskReason::Iret) {
        if let Some(r) = fetch_descriptor(state, bus, old_tr.selector & !4)? {
            set_busy(bus, r.addr, false)?;
        }
    }
    let mut new_flags = new.eflags;
    if reason.nests() {
        write_u16(bus, base.wrapping_add(off::LINK), old_tr.selector)?;
        new_flags |= eflags::NT;
    }
    if !iret {
        set_busy(bus, new_ref.addr, true)?;
    }

    // Commit point: from here on faults belong to the new task.
    let mut effects = Effects::NONE;
    effects.segments_dirty = 0x3f;
    effects.cpl_changed = true;
    effects.descriptor_tables_changed = true;
    state.cr0 |= cr0::TS;
    let mut tr = nd;
    tr.typ = system_type::TSS32_BUSY;
    state.tr = Segment::from_descriptor(new_tss, &tr);
    if state.cr0 & cr0::PG != 0 {
        state.cr3 = new.cr3;
        effects.cr3_written = true;
    }
    state.eflags = (new_flags & eflags::IMPLEMENTED) | eflags::FIXED1;
    state.eip = new.eip;
    state.gpr = new.gprs;
    let cpl = selector::rpl(new.sel(SegReg::Cs));
    for reg in SegReg::ALL {
        let mut cache = Segment::null(new.sel(reg));
        cache.dpl = cpl;
        *state.sreg_mut(reg) = cache;
    }
    state.ldtr = Segment::null(new.ldt);
    state.halted = false;
    state.interrupt_shadow = false;
    load_new_task(state, bus, &new, ext, reason).map_err(|f| TaskError::Committed(effects, f))?;
    Ok(effects)
}

/// The loads after the commit point: LDTR, then CS, SS, ES, DS, FS, GS with the checks
/// of SDM Vol. 3A Table 7-1, EIP against CS, and the error code.
fn load_new_task(
    state: &mut VcpuState,
    bus: &mut impl GuestBus,
    new: &NewTask,
    ext: u32,
    reason: TaskReason,
) -> Result<(), Fault> {
    let ldt = new.ldt;
    let ldt_code = selector::error_code(ldt) + ext;
    if selector::ti(ldt) {
        return Err(Fault::ts(ldt_code));
    }
    if !selector::is_null(ldt) {
        let r = fetch_descriptor(state, bus, ldt)?.ok_or(Fault::ts(ldt_code))?;
        if r.desc.s || r.desc.typ != system_type::LDT {
            return Err(Fault::ts(ldt_code));
        }
        if !r.desc.present {
            return Err(Fault::np(ldt_code));
        }
        state.ldtr = Segment::from_descriptor(ldt, &r.desc);
    }
    let cs_sel = new.sel(SegReg::Cs);
    let cpl = selector::rpl(cs_sel);
    for reg in [
        SegReg::Cs,
        SegReg::Ss,
        SegReg::Es,
        SegReg::Ds,
        SegReg::Fs,
        SegReg::Gs,
    ] {
        let sel = new.sel(reg);
        let code = selector::error_code(sel) + ext;
        if selector::is_null(sel) {
            if matches!(reg, SegReg::Cs | SegReg::Ss) {
                return Err(Fault::ts(code));
            }
            *state.sreg_mut(reg) = Segment::null(sel);
            continue;
        }
        let r = fetch_descriptor(state, bus, sel)?.ok_or(Fault::ts(code))?;
        let d = r.desc;
        let rpl = selector::rpl(sel);
        let ok = match reg {
            SegReg::Cs => {
                d.is_code()
                    && if d.is_conforming_code() {
                        d.dpl <= rpl
                    } else {
                        d.dpl == rpl
                    }
            }
            SegReg::Ss => d.is_writable_data() && d.dpl == cpl && rpl == cpl,
            _ => {
                (d.is_data() || d.is_readable_code())
                    && (d.is_conforming_code() || (d.dpl >= cpl && d.dpl >= rpl))
            }
        };
        if !ok {
            return Err(Fault::ts(code));
        }
        if !d.present {
            return Err(if reg == SegReg::Ss {
                Fault::ss(code)
            } else {
                Fault::np(code)
            });
        }
        set_accessed(bus, &r)?;
        let mut d = d;
        d.typ |= TYPE_ACCESSED;
        *state.sreg_mut(reg) = Segment::from_descriptor(sel, &d);
    }
    if state.eip > state.sreg(SegReg::Cs).limit {
        return Err(Fault::gp(ext));
    }
    if let TaskReason::Gate {
        error_code: Some(c),
        ..
    } = reason
    {
        let ss = *state.sreg(SegReg::Ss);
        state.gpr[gpr::ESP] = push_frame(
            bus,
            &ss,
            state.gpr[gpr::ESP],
            &[c],
            4,
            cpl == 3,
            Fault::ss(ext),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vcpu::emulate::test_util::exec;
    use crate::vcpu::interrupts::{deliver, Event};
    use crate::vcpu::testbus::{int_gate, system, TestBus, GDT, TSS};
    use crate::vcpu::Emulated;
    use crate::x86::Exception;

    /// The second task's TSS and its selector.
    const TSS2: u32 = 0x6800;
    const SEL2: u16 = 0x58;
    const ENTRY2: u32 = 0x5000;
    const STACK2: u32 = 0xa000;

    /// Flat CPL 0 with TR = 0x28 (busy) and a second, available 32-bit TSS at 0x58 whose
    /// task starts at ENTRY2 with ESP = STACK2 and EBX = 0xb0b.
    fn setup() -> (VcpuState, TestBus) {
        let (mut s, mut bus) = TestBus::with_interrupt_handlers(0x5_8000);
        bus.set_gdt(SEL2, system(TSS2, 0x67, system_type::TSS32_AVAILABLE));
        bus.write_u32(TSS2 + off::CR3, 0x0012_3000);
        bus.write_u32(TSS2 + off::EIP, ENTRY2);
        bus.write_u32(TSS2 + off::EFLAGS, eflags::FIXED1 | eflags::CF);
        bus.write_u32(TSS2 + off::GPRS + 12, 0xb0b); // EBX
        bus.write_u32(TSS2 + off::GPRS + 16, STACK2); // ESP
        for (i, sel) in (0u32..).zip([0x10u32, 0x08, 0x10, 0x10, 0, 0]) {
            bus.write_u32(TSS2 + off::SEGS + 4 * i, sel);
        }
        s.gpr[gpr::EAX] = 0xaaaa;
        s.eflags |= eflags::IF;
        (s, bus)
    }

    fn typ(bus: &TestBus, sel: u16) -> u8 {
        Descriptor::decode(bus.read_u64(GDT + u32::from(sel))).typ
    }

    fn done(r: Result<Emulated, Fault>) -> Effects {
        match r {
            Ok(Emulated::Done(e)) => e,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn jmp_to_a_tss_saves_the_old_task_and_loads_the_new() {
        let (mut s, mut bus) = setup();
        s.cr0 |= cr0::PG;
        // JMP 0x58:0 (7 bytes at 0x7000).
        let e = done(exec(&mut s, &mut bus, &[0xea, 0, 0, 0, 0, 0x58, 0]));
        assert!(e.cr3_written && e.cpl_changed && e.segments_dirty == 0x3f);
        assert_eq!((s.eip, s.tr.selector, s.cr3), (ENTRY2, SEL2, 0x0012_3000));
        assert_eq!((s.gpr[gpr::EBX], s.gpr[gpr::ESP]), (0xb0b, STACK2));
        assert_eq!(s.eflags, eflags::FIXED1 | eflags::CF, "no NT for JMP");
        assert_ne!(s.cr0 & cr0::TS, 0);
        assert_eq!(s.sreg(SegReg::Cs).selector, 0x08);
        assert!(s.sreg(SegReg::Cs).is_code() && !s.sreg(SegReg::Fs).present);
        // Busy bits: the old task is available again, the new one busy; no back link.
        assert_eq!(typ(&bus, 0x28), system_type::TSS32_AVAILABLE);
        assert_eq!(typ(&bus, SEL2), system_type::TSS32_BUSY);
        assert_eq!(bus.read_u16(TSS2), 0);
        // The old TSS holds the state after the JMP.
        assert_eq!(bus.read_u32(TSS + off::EIP), 0x7007);
        assert_eq!(bus.read_u32(TSS + off::GPRS), 0xaaaa);
        assert_ne!(bus.read_u32(TSS + off::EFLAGS) & eflags::IF, 0);
        assert_eq!(bus.read_u32(TSS + off::SEGS + 4), 0x08);
    }

    #[test]
    fn call_nests_and_iret_returns_through_the_back_link() {
        let (mut s, mut bus) = setup();
        let before = s.clone();
        done(exec(&mut s, &mut bus, &[0x9a, 0, 0, 0, 0, 0x58, 0]));
        assert_eq!((s.eip, s.tr.selector), (ENTRY2, SEL2));
        assert_ne!(s.eflags & eflags::NT, 0);
        assert_eq!(bus.read_u16(TSS2), 0x28, "back link");
        assert_eq!(typ(&bus, 0x28), system_type::TSS32_BUSY);
        assert_eq!(typ(&bus, SEL2), system_type::TSS32_BUSY);
        // A busy TSS cannot be called again (no recursion).
        let mut t = s.clone();
        assert_eq!(
            exec(&mut t, &mut bus, &[0x9a, 0, 0, 0, 0, 0x58, 0]),
            Err(Fault::gp(0x58))
        );
        // IRET with NT = 1 resumes the caller after its CALL.
        s.gpr[gpr::EAX] = 0x1234;
        done(exec(&mut s, &mut bus, &[0xcf]));
        assert_eq!((s.eip, s.tr.selector), (0x7007, 0x28));
        assert_eq!(s.gpr, before.gpr);
        assert_eq!(s.eflags, before.eflags);
        assert_eq!(typ(&bus, SEL2), system_type::TSS32_AVAILABLE);
        assert_eq!(typ(&bus, 0x28), system_type::TSS32_BUSY);
        // The returning task's state, NT cleared, was saved after its IRET.
        assert_eq!(bus.read_u32(TSS2 + off::EIP), ENTRY2 + 1);
        assert_eq!(bus.read_u32(TSS2 + off::GPRS), 0x1234);
        assert_eq!(bus.read_u32(TSS2 + off::EFLAGS) & eflags::NT, 0);
    }

    #[test]
    fn double_fault_through_a_task_gate_pushes_its_error_code() {
        let (mut s, mut bus) = setup();
        bus.set_gate(8, int_gate(SEL2, 0, system_type::TASK_GATE, 0));
        // #GP's gate names a null selector: #GP while delivering #GP is a double fault.
        bus.set_gate(13, int_gate(0, 0x5_8000, system_type::INT_GATE32, 0));
        let e = deliver(&mut s, &mut bus, Event::Exception(Fault::gp0())).unwrap();
        assert!(e.cpl_changed);
        assert_eq!((s.eip, s.tr.selector), (ENTRY2, SEL2));
        assert_eq!(s.gpr[gpr::ESP], STACK2 - 4);
        assert_eq!(bus.read_u32(STACK2 - 4), 0, "#DF's error code");
        assert_ne!(s.eflags & eflags::NT, 0);
        assert_eq!(bus.read_u16(TSS2), 0x28);
        assert_eq!(bus.read_u32(TSS + off::EIP), 0x7000, "the faulting EIP");
        // A software INT n through a task gate saves the next EIP and pushes nothing.
        let (mut s, mut bus) = setup();
        bus.set_gate(0x40, int_gate(SEL2, 0, system_type::TASK_GATE, 0));
        deliver(
            &mut s,
            &mut bus,
            Event::Software {
                vector: 0x40,
                kind: crate::vcpu::interrupts::SoftwareKind::IntN,
                next_eip: 0x7002,
            },
        )
        .unwrap();
        assert_eq!((s.eip, s.gpr[gpr::ESP]), (ENTRY2, STACK2));
        assert_eq!(bus.read_u32(TSS + off::EIP), 0x7002);
    }

    /// Spoils the set-up of a case.
    type Prepare = dyn Fn(&mut VcpuState, &mut TestBus);

    #[test]
    fn checks_before_the_commit_point_change_nothing() {
        let jmp = [0xea, 0, 0, 0, 0, 0x58, 0];
        let cases: [(&Prepare, Fault); 6] = [
            (
                &|_, b| b.set_gdt(SEL2, system(TSS2, 0x67, system_type::TSS32_BUSY)),
                Fault::gp(0x58),
            ),
            (
                &|_, b| {
                    let mut d = system(TSS2, 0x67, system_type::TSS32_AVAILABLE);
                    d.present = false;
                    b.set_gdt(SEL2, d);
                },
                Fault::np(0x58),
            ),
            (
                &|_, b| b.set_gdt(SEL2, system(TSS2, 0x66, system_type::TSS32_AVAILABLE)),
                Fault::ts(0x58),
            ),
            (&|s, _| s.tr.limit = 0x50, Fault::ts(0x28)),
            (&|s, b| b.enter_user(s), Fault::gp(0x58)),
            (
                // A task gate in the GDT that is not present.
                &|_, b| {
                    let mut g = int_gate(SEL2, 0, system_type::TASK_GATE, 0);
                    g.present = false;
                    b.write_u64(GDT + 0x58, g.encode());
                },
                Fault::np(0x58),
            ),
        ];
        for (i, (prepare, fault)) in cases.iter().enumerate() {
            let (mut s, mut bus) = setup();
            prepare(&mut s, &mut bus);
            let before = s.clone();
            assert_eq!(exec(&mut s, &mut bus, &jmp), Err(*fault), "case {i}");
            assert_eq!(s, before, "case {i}");
        }
    }

    #[test]
    fn faults_after_the_commit_point_belong_to_the_new_task() {
        // A null CS in the new TSS: #TS(0) with the new task's state.
        let (mut s, mut bus) = setup();
        bus.write_u32(TSS2 + off::SEGS + 4, 0);
        assert_eq!(
            exec(&mut s, &mut bus, &[0xea, 0, 0, 0, 0, 0x58, 0]),
            Err(Fault::ts(0))
        );
        assert_eq!((s.tr.selector, s.eip), (SEL2, ENTRY2));
        assert_eq!(typ(&bus, SEL2), system_type::TSS32_BUSY);
        // A not-present SS: #SS(SS); a bad LDT: #TS(LDT).
        let (mut s, mut bus) = setup();
        bus.write_u32(TSS2 + off::SEGS + 8, 0x40);
        assert_eq!(
            switch_task(&mut s, &mut bus, SEL2, TaskReason::Jmp, 0x7007),
            Err(TaskError::Committed(
                Effects {
                    segments_dirty: 0x3f,
                    cpl_changed: true,
                    descriptor_tables_changed: true,
                    ..Effects::NONE
                },
                Fault::ss(0x40)
            ))
        );
        let (mut s, mut bus) = setup();
        bus.write_u32(TSS2 + off::LDT, 0x10);
        assert!(matches!(
            switch_task(&mut s, &mut bus, SEL2, TaskReason::Jmp, 0x7007),
            Err(TaskError::Committed(_, f)) if f == Fault::ts(0x10)
        ));
        // With an LDT that is one, the switch loads it.
        let (mut s, mut bus) = setup();
        bus.write_u32(TSS2 + off::LDT, 0x30);
        switch_task(&mut s, &mut bus, SEL2, TaskReason::Jmp, 0x7007).unwrap();
        assert_eq!((s.ldtr.selector, s.ldtr.base), (0x30, 0x6000));
        // Through an IDT task gate the fault carries EXT and is delivered in the new task
        // (CS and SS are loaded before DS, which is not present here).
        let (mut s, mut bus) = setup();
        bus.write_u32(TSS2 + off::SEGS + 12, 0x40);
        bus.set_gate(0x21, int_gate(SEL2, 0, system_type::TASK_GATE, 0));
        let e = deliver(&mut s, &mut bus, Event::External(0x21)).unwrap();
        assert!(e.cpl_changed && e.segments_dirty == 0x3f);
        assert_eq!(s.eip, 0x5_8000 + u32::from(Exception::NP));
        assert_eq!(
            bus.read_u32(STACK2 - 4),
            eflags::FIXED1 | eflags::CF | eflags::NT
        );
        assert_eq!(bus.read_u32(STACK2 - 12), ENTRY2, "the new task's EIP");
        assert_eq!(bus.read_u32(STACK2 - 16), 0x41, "#NP(0x40 + EXT)");
    }

    #[test]
    fn iret_task_return_needs_a_busy_tss() {
        let (mut s, mut bus) = setup();
        s.eflags |= eflags::NT;
        // The back link names the available TSS at 0x58: #TS(0x58).
        bus.write_u16(TSS, SEL2);
        assert_eq!(exec(&mut s, &mut bus, &[0xcf]), Err(Fault::ts(0x58)));
        // A 16-bit TSS is refused cleanly.
        bus.set_gdt(SEL2, system(TSS2, 0x67, system_type::TSS16_BUSY));
        assert_eq!(
            exec(&mut s, &mut bus, &[0xcf]),
            Ok(Emulated::Unsupported(Unsupported::TaskSwitch))
        );
    }
}
