//! Far CALL/JMP/RET, SYSENTER and SYSEXIT: control transfers that load CS, and the
//! checks on a returned-to CS and SS that RET far and IRET share.

use super::operands::{read_mem, rm_operand, Rm};
use super::{peek, peek_into, push, release, Ctx, Outcome, Res, Stop};
use crate::bits::low16;
use crate::vcpu::descriptor::{selector, system_type, Gate, TYPE_ACCESSED};
use crate::vcpu::segments::{fetch_descriptor, set_accessed, DescriptorRef};
use crate::vcpu::stack::{adjust_sp, push_frame, tss_stack};
use crate::vcpu::state::{gpr, Segment, VcpuState};
use crate::vcpu::task::{switch_task, TaskError, TaskReason};
use crate::vcpu::{Effects, Fault, GuestBus};
use crate::x86::{eflags, SegReg};
use iced_x86::{Code, Instruction, Mnemonic};

/// Far JMP/CALL forms (direct pointer or memory far pointer).
pub(crate) fn is_far(i: &Instruction) -> bool {
    matches!(
        i.code(),
        Code::Jmp_ptr1616
            | Code::Jmp_ptr1632
            | Code::Jmp_m1616
            | Code::Jmp_m1632
            | Code::Call_ptr1616
            | Code::Call_ptr1632
            | Code::Call_m1616
            | Code::Call_m1632
    )
}

/// What a far JMP/CALL selector leads to.
enum FarTarget {
    /// A code segment at the current privilege (conforming or not).
    Direct(Segment),
    /// A call gate: handled by [`through_gate`].
    Gate(Gate),
    /// A TSS, directly or through a task gate: a task switch to this TSS selector.
    Task(u16),
}

/// Resolves the target of a far JMP/CALL (SDM Vol. 2A JMP/CALL): a code segment, checked
/// for "far jump/call to a conforming or non-conforming code segment", or a call gate.
/// A TSS descriptor or a task gate leads to a task switch (SDM Vol. 3A §7.3: DPL of
/// the TSS or gate ≥ CPL and ≥ RPL, else #GP(selector); a gate not present is #NP).
fn far_target(
    s: &VcpuState,
    bus: &mut impl GuestBus,
    sel: u16,
    eip: u32,
) -> Result<FarTarget, Stop> {
    if !s.protected() || s.v86() {
        let mut cs = *s.sreg(SegReg::Cs);
        cs.selector = sel;
        cs.base = u32::from(sel) << 4;
        if eip > cs.limit {
            return Err(Fault::gp0().into());
        }
        return Ok(FarTarget::Direct(cs));
    }
    if selector::is_null(sel) {
        return Err(Fault::gp0().into());
    }
    let code = selector::error_code(sel);
    let r = fetch_descriptor(s, bus, sel)?.ok_or(Fault::gp(code))?;
    let d = r.desc;
    let cpl = s.cpl();
    if !d.s {
        return match d.typ {
            system_type::CALL_GATE16 | system_type::CALL_GATE32 => {
                let gate = Gate::decode(d.encode());
                if gate.dpl < cpl || gate.dpl < selector::rpl(sel) {
                    return Err(Fault::gp(code).into());
                }
                if !gate.present {
                    return Err(Fault::np(code).into());
                }
                Ok(FarTarget::Gate(gate))
            }
            system_type::TASK_GATE => {
                let gate = Gate::decode(d.encode());
                if gate.dpl < cpl || gate.dpl < selector::rpl(sel) {
                    return Err(Fault::gp(code).into());
                }
                if !gate.present {
                    return Err(Fault::np(code).into());
                }
                Ok(FarTarget::Task(gate.selector))
            }
            system_type::TSS16_AVAILABLE | system_type::TSS32_AVAILABLE => {
                // TSS descriptors live in the GDT only.
                if selector::ti(sel) || d.dpl < cpl || d.dpl < selector::rpl(sel) {
                    return Err(Fault::gp(code).into());
                }
                Ok(FarTarget::Task(sel))
            }
            _ => Err(Fault::gp(code).into()),
        };
    }
    if !d.is_code() {
        return Err(Fault::gp(code).into());
    }
    if d.is_conforming_code() {
        if d.dpl > cpl {
            return Err(Fault::gp(code).into());
        }
    } else if selector::rpl(sel) > cpl || d.dpl != cpl {
        return Err(Fault::gp(code).into());
    }
    if !d.present {
        return Err(Fault::np(code).into());
    }
    let mut d = d;
    d.typ |= TYPE_ACCESSED;
    // CS.RPL becomes the CPL: conforming code does not change privilege.
    let cs = Segment::from_descriptor((sel & 0xfffc) | u16::from(cpl), &d);
    if eip > cs.limit {
        return Err(Fault::gp0().into());
    }
    set_accessed(bus, &r)?;
    Ok(FarTarget::Direct(cs))
}

/// JMP/CALL far, direct (ptr16:16/ptr16:32) or indirect (m16:16/m16:32). CALL pushes
/// CS (zero-extended to 32 bits with a 32-bit operand size) and the return EIP; the
/// stack is checked before the target is committed.
pub(crate) fn jmp_call(s: &mut VcpuState, bus: &mut impl GuestBus, cx: &Ctx<'_>) -> Res {
    let i = cx.instr;
    let op32 = matches!(
        i.code(),
        Code::Jmp_ptr1632 | Code::Jmp_m1632 | Code::Call_ptr1632 | Code::Call_m1632
    );
    let size = if op32 { 4 } else { 2 };
    let (sel, mut eip) = match rm_operand(s, i, 0) {
        Some(Rm::Mem(seg, off)) => {
            let eip = read_mem(s, bus, seg, off, size)?;
            let sel = low16(read_mem(s, bus, seg, off.wrapping_add(size), 2)?);
            (sel, eip)
        }
        Some(Rm::Reg(_)) => return Err(Fault::ud().into()),
        None => (
            i.far_branch_selector(),
            if op32 {
                i.far_branch32()
            } else {
                u32::from(i.far_branch16())
            },
        ),
    };
    if !op32 {
        eip &= 0xffff;
    }
    let call = i.mnemonic() == Mnemonic::Call;
    let cs = match far_target(s, bus, sel, eip)? {
        FarTarget::Direct(cs) => cs,
        FarTarget::Gate(gate) => return through_gate(s, bus, cx, gate, call),
        FarTarget::Task(tss) => {
            let reason = if call {
                TaskReason::Call
            } else {
                TaskReason::Jmp
            };
            return task_switch(s, bus, tss, reason, cx.next_eip);
        }
    };
    if call {
        let old_cs = u32::from(s.sreg(SegReg::Cs).selector);
        push(s, bus, &[old_cs, cx.next_eip], size)?;
    }
    *s.sreg_mut(SegReg::Cs) = cs;
    s.eip = eip;
    s.eflags &= !eflags::RF;
    Ok(Outcome::Jumped(Effects::segment(SegReg::Cs)))
}

/// A task switch for an instruction (far JMP/CALL, IRET): a fault after the commit
/// point is raised with the new task's state committed.
pub(crate) fn task_switch(
    s: &mut VcpuState,
    bus: &mut impl GuestBus,
    tss: u16,
    reason: TaskReason,
    next_eip: u32,
) -> Res {
    match switch_task(s, bus, tss, reason, next_eip) {
        Ok(mut e) => {
            s.eflags &= !eflags::RF;
            e.halted = false;
            Ok(Outcome::Jumped(e))
        }
        Err(TaskError::Fault(f)) => Err(f.into()),
        Err(TaskError::Committed(_, f)) => Err(Stop::FaultCommit(f)),
        Err(TaskError::Unsupported(u)) => Err(Stop::Unsupported(u)),
    }
}

/// JMP or CALL through a call gate (SDM Vol. 2A CALL, "CALL-GATE"): the gate's code
/// segment may be more privileged; a CALL to a more privileged non-conforming segment
/// switches to the TSS stack of that level and copies `param_count` parameters from the
/// caller's stack. The gate's size decides the size of everything pushed.
fn through_gate(
    s: &mut VcpuState,
    bus: &mut impl GuestBus,
    cx: &Ctx<'_>,
    gate: Gate,
    call: bool,
) -> Res {
    let cpl = s.cpl();
    let sel = gate.selector;
    if selector::is_null(sel) {
        return Err(Fault::gp0().into());
    }
    let code = selector::error_code(sel);
    let r = fetch_descriptor(s, bus, sel)?.ok_or(Fault::gp(code))?;
    let d = r.desc;
    if !d.is_code() || d.dpl > cpl {
        return Err(Fault::gp(code).into());
    }
    if !call && !d.is_conforming_code() && d.dpl != cpl {
        return Err(Fault::gp(code).into());
    }
    if !d.present {
        return Err(Fault::np(code).into());
    }
    let size = if gate.is_32() { 4 } else { 2 };
    let eip = if gate.is_32() {
        gate.offset
    } else {
        gate.offset & 0xffff
    };
    let inner = call && !d.is_conforming_code() && d.dpl < cpl;
    let new_cpl = if inner { d.dpl } else { cpl };
    let mut dd = d;
    dd.typ |= TYPE_ACCESSED;
    let cs = Segment::from_descriptor((sel & 0xfffc) | u16::from(new_cpl), &dd);
    if eip > cs.limit {
        return Err(Fault::gp0().into());
    }
    let old_cs = u32::from(s.sreg(SegReg::Cs).selector);
    let mut effects = Effects::segment(SegReg::Cs);
    if inner {
        let (ss_sel, esp) = tss_stack(s, bus, new_cpl, 0)?;
        if selector::is_null(ss_sel) {
            return Err(Fault::ts(0).into());
        }
        let ss_code = selector::error_code(ss_sel);
        let ss_ref = fetch_descriptor(s, bus, ss_sel)?.ok_or(Fault::ts(ss_code))?;
        let ssd = ss_ref.desc;
        if selector::rpl(ss_sel) != new_cpl || ssd.dpl != new_cpl || !ssd.is_writable_data() {
            return Err(Fault::ts(ss_code).into());
        }
        if !ssd.present {
            return Err(Fault::ss(ss_code).into());
        }
        let mut ssd = ssd;
        ssd.typ |= TYPE_ACCESSED;
        let new_ss = Segment::from_descriptor(ss_sel, &ssd);
        let mut params = vec![0; usize::from(gate.param_count)];
        peek_into(s, bus, 0, &mut params, size)?;
        let mut frame = vec![u32::from(s.sreg(SegReg::Ss).selector), s.gpr[gpr::ESP]];
        frame.extend(params.iter().rev());
        frame.push(old_cs);
        frame.push(cx.next_eip);
        let new_esp = push_frame(
            bus,
            &new_ss,
            esp,
            &frame,
            size,
            new_cpl == 3,
            Fault::ss(ss_code),
        )?;
        set_accessed(bus, &ss_ref)?;
        *s.sreg_mut(SegReg::Ss) = new_ss;
        s.gpr[gpr::ESP] = new_esp;
        effects = effects.merge(Effects::segment(SegReg::Ss));
        effects.cpl_changed = true;
    } else if call {
        push(s, bus, &[old_cs, cx.next_eip], size)?;
    }
    set_accessed(bus, &r)?;
    *s.sreg_mut(SegReg::Cs) = cs;
    s.eip = eip;
    s.eflags &= !eflags::RF;
    Ok(Outcome::Jumped(effects))
}

/// RET far [imm16] (SDM Vol. 2B RET): same privilege, or to an outer level popping
/// ESP and SS too; `imm16` bytes of parameters are released on each stack. Returning
/// outward nulls data segment registers the new CPL may not use.
pub(crate) fn retf(s: &mut VcpuState, bus: &mut impl GuestBus, cx: &Ctx<'_>) -> Res {
    let i = cx.instr;
    let op32 = matches!(i.code(), Code::Retfd | Code::Retfd_imm16);
    let size = if op32 { 4 } else { 2 };
    let imm = if matches!(i.code(), Code::Retfd_imm16 | Code::Retfw_imm16) {
        u32::from(i.immediate16())
    } else {
        0
    };
    let [eip, sel] = peek(s, bus, 0, size)?;
    let eip = if op32 { eip } else { eip & 0xffff };
    let sel = low16(sel);
    if !s.protected() || s.v86() {
        let FarTarget::Direct(cs) = far_target(s, bus, sel, eip)? else {
            return Err(Fault::gp0().into());
        };
        *s.sreg_mut(SegReg::Cs) = cs;
        s.eip = eip;
        release(s, 2 * size + imm);
        return Ok(Outcome::Jumped(Effects::segment(SegReg::Cs)));
    }
    let cpl = s.cpl();
    let (cs, cs_ref) = check_return_cs(s, bus, sel)?;
    let rpl = selector::rpl(sel);
    let mut effects = Effects::segment(SegReg::Cs);
    if rpl > cpl {
        let [esp, ss_sel] = peek(s, bus, 2 * size + imm, size)?;
        let (ss, ss_ref) = check_return_ss(s, bus, low16(ss_sel), rpl)?;
        if eip > cs.limit {
            return Err(Fault::gp0().into());
        }
        set_accessed(bus, &cs_ref)?;
        set_accessed(bus, &ss_ref)?;
        *s.sreg_mut(SegReg::Cs) = cs;
        *s.sreg_mut(SegReg::Ss) = ss;
        let esp = if op32 { esp } else { esp & 0xffff };
        s.gpr[gpr::ESP] = adjust_sp(
            if ss.db {
                esp
            } else {
                (s.gpr[gpr::ESP] & 0xffff_0000) | esp
            },
            imm,
            ss.db,
        );
        effects = effects.merge(Effects::segment(SegReg::Ss));
        effects.cpl_changed = true;
        effects = effects.merge(null_inaccessible_data_segments(s, rpl));
    } else {
        if eip > cs.limit {
            return Err(Fault::gp0().into());
        }
        set_accessed(bus, &cs_ref)?;
        *s.sreg_mut(SegReg::Cs) = cs;
        release(s, 2 * size + imm);
    }
    s.eip = eip;
    Ok(Outcome::Jumped(effects))
}

/// SYSENTER (SDM Vol. 2B): #GP(0) in real mode or when IA32_SYSENTER_CS is null; enters
/// CPL 0 with flat CS = SYSENTER_CS and SS = SYSENTER_CS + 8, ESP/EIP from the MSRs, and
/// clears VM, IF and RF.
pub(crate) fn sysenter(s: &mut VcpuState) -> Res {
    let cs = low16(s.msr.sysenter_cs) & 0xfffc;
    if !s.protected() || cs == 0 {
        return Err(Fault::gp0().into());
    }
    let was = s.cpl();
    *s.sreg_mut(SegReg::Cs) = Segment::flat(cs, 0xb, 0);
    *s.sreg_mut(SegReg::Ss) = Segment::flat(cs.wrapping_add(8), 0x3, 0);
    s.gpr[gpr::ESP] = s.msr.sysenter_esp;
    s.eip = s.msr.sysenter_eip;
    s.eflags &= !(eflags::VM | eflags::IF | eflags::RF);
    let mut e = Effects::segment(SegReg::Cs).merge(Effects::segment(SegReg::Ss));
    e.cpl_changed = was != 0;
    Ok(Outcome::Jumped(e))
}

/// SYSEXIT (SDM Vol. 2B): CPL 0 in protected mode and a non-null IA32_SYSENTER_CS, else
/// #GP(0); returns to CPL 3 with flat CS = SYSENTER_CS + 16 and SS = SYSENTER_CS + 24
/// (RPL 3), EIP = EDX, ESP = ECX.
pub(crate) fn sysexit(s: &mut VcpuState) -> Res {
    let cs = low16(s.msr.sysenter_cs) & 0xfffc;
    if !s.protected() || s.cpl() != 0 || cs == 0 {
        return Err(Fault::gp0().into());
    }
    *s.sreg_mut(SegReg::Cs) = Segment::flat(cs.wrapping_add(16) | 3, 0xb, 3);
    *s.sreg_mut(SegReg::Ss) = Segment::flat(cs.wrapping_add(24) | 3, 0x3, 3);
    s.gpr[gpr::ESP] = s.gpr[gpr::ECX];
    s.eip = s.gpr[gpr::EDX];
    let mut e = Effects::segment(SegReg::Cs).merge(Effects::segment(SegReg::Ss));
    e.cpl_changed = true;
    Ok(Outcome::Jumped(e))
}

/// The checks on a CS popped by IRET or RET far (SDM Vol. 2A IRET, RET): returns the new
/// cache (RPL becomes the CPL) and the descriptor to mark accessed.
pub(crate) fn check_return_cs(
    state: &VcpuState,
    bus: &mut impl GuestBus,
    sel: u16,
) -> Result<(Segment, DescriptorRef), Fault> {
    if selector::is_null(sel) {
        return Err(Fault::gp0());
    }
    let code = selector::error_code(sel);
    let r = fetch_descriptor(state, bus, sel)?.ok_or(Fault::gp(code))?;
    let d = r.desc;
    let rpl = selector::rpl(sel);
    if !d.is_code() || rpl < state.cpl() {
        return Err(Fault::gp(code));
    }
    if d.is_conforming_code() {
        if d.dpl > rpl {
            return Err(Fault::gp(code));
        }
    } else if d.dpl != rpl {
        return Err(Fault::gp(code));
    }
    if !d.present {
        return Err(Fault::np(code));
    }
    let mut d = d;
    d.typ |= TYPE_ACCESSED;
    Ok((Segment::from_descriptor(sel, &d), r))
}

/// The checks on an SS popped by IRET or RET far to an outer level `rpl`.
pub(crate) fn check_return_ss(
    state: &VcpuState,
    bus: &mut impl GuestBus,
    sel: u16,
    rpl: u8,
) -> Result<(Segment, DescriptorRef), Fault> {
    if selector::is_null(sel) {
        return Err(Fault::gp0());
    }
    let code = selector::error_code(sel);
    let r = fetch_descriptor(state, bus, sel)?.ok_or(Fault::gp(code))?;
    let d = r.desc;
    if selector::rpl(sel) != rpl || !d.is_writable_data() || d.dpl != rpl {
        return Err(Fault::gp(code));
    }
    if !d.present {
        return Err(Fault::ss(code));
    }
    let mut d = d;
    d.typ |= TYPE_ACCESSED;
    Ok((Segment::from_descriptor(sel, &d), r))
}

/// After a return to an outer level: DS, ES, FS, GS that the new CPL may not use (data or
/// non-conforming code with DPL < CPL) are loaded with a null selector.
pub(crate) fn null_inaccessible_data_segments(state: &mut VcpuState, new_cpl: u8) -> Effects {
    let mut e = Effects::NONE;
    for r in [SegReg::Es, SegReg::Ds, SegReg::Fs, SegReg::Gs] {
        let s = state.sreg(r);
        let restricted = s.s && (!s.is_code() || !s.is_conforming());
        if s.present && restricted && s.dpl < new_cpl {
            *state.sreg_mut(r) = Segment::null(0);
            e = e.merge(Effects::segment(r));
        }
    }
    e
}
