//! IRET/IRETD (SDM Vol. 2A IRET): return from an interrupt or exception handler in real
//! mode, to the same privilege level, or to an outer one with every check on the popped
//! CS and SS, and task returns (EFLAGS.NT = 1) to the task the back link names.

use super::far::{check_return_cs, check_return_ss, null_inaccessible_data_segments, task_switch};
use super::flags::merge_eflags;
use super::{Ctx, Outcome, Res, Stop, Unsupported};
use crate::addr::GuestLinear;
use crate::bits::low16;
use crate::vcpu::descriptor::selector;
use crate::vcpu::segments::set_accessed;
use crate::vcpu::stack::{adjust_sp, peek_frame};
use crate::vcpu::state::{gpr, VcpuState};
use crate::vcpu::task::TaskReason;
use crate::vcpu::{Effects, Fault, GuestBus};
use crate::x86::{eflags, SegReg};
use iced_x86::Mnemonic;

/// IRET/IRETD (`op32`): return from an interrupt at the same or an outer privilege level,
/// with every check on the popped CS and SS. DS/ES/FS/GS whose DPL is below the new CPL
/// are nulled (SDM Vol. 2A IRET, RETURN-TO-OUTER-PRIVILEGE-LEVEL).
///
/// With EFLAGS.NT = 1 IRET is a task return: a task switch to the TSS the current TSS's
/// back link selects, which must be a busy TSS in the GDT (else #TS(link)). A return to
/// virtual-8086 mode is reported as [`Unsupported::Virtual8086`].
///
/// # Errors
/// The faults the SDM lists: #SS(0) when the frame is outside SS, #GP(0) for a null CS
/// or SS or an EIP beyond the limit, #GP(selector) for a bad CS/SS descriptor, #NP(CS),
/// #SS(SS) for not-present segments, #PF from the bus.
pub(crate) fn iret(s: &mut VcpuState, bus: &mut impl GuestBus, cx: &Ctx<'_>) -> Res {
    let op32 = cx.instr.mnemonic() == Mnemonic::Iretd;
    // Any IRET ends NMI blocking (SDM Vol. 3A §6.7.1), even one that faults, as the
    // SDM's VMX chapter spells out.
    s.nmi_blocked = false;
    if s.protected() && !s.v86() && s.eflags & eflags::NT != 0 {
        return task_return(s, bus, cx.next_eip);
    }
    let e = iret_frame(s, bus, op32)?;
    Ok(Outcome::Jumped(e))
}

/// An IRET task return (SDM Vol. 2A IRET, TASK-RETURN): the back link in the current
/// TSS names the task to resume; [`switch_task`] checks it (#TS(link) for an LDT
/// selector or anything but a busy TSS) and switches, saving EIP past the IRET.
fn task_return(s: &mut VcpuState, bus: &mut impl GuestBus, next_eip: u32) -> Res {
    let mut raw = [0u8; 2];
    bus.read_linear(GuestLinear(s.tr.base), &mut raw, false)?;
    let link = u16::from_le_bytes(raw);
    task_switch(s, bus, link, TaskReason::Iret, next_eip)
}

fn iret_frame(state: &mut VcpuState, bus: &mut impl GuestBus, op32: bool) -> Result<Effects, Stop> {
    let size = if op32 { 4 } else { 2 };
    let cpl = state.cpl();
    let user = cpl == 3;
    let ss = *state.sreg(SegReg::Ss);
    let esp = state.gpr[gpr::ESP];
    if !state.protected() {
        let [eip, cs, flags] = peek_frame(bus, &ss, esp, size, false, Fault::ss(0))?;
        let cs = low16(cs);
        let eip = if op32 { eip } else { eip & 0xffff };
        if eip > state.sreg(SegReg::Cs).limit {
            return Err(Fault::gp0().into());
        }
        state.eip = eip;
        let c = state.sreg_mut(SegReg::Cs);
        c.selector = cs;
        c.base = u32::from(cs) << 4;
        let mask = if op32 {
            eflags::IMPLEMENTED & !(eflags::VM | eflags::VIF | eflags::VIP)
        } else {
            0xffff
        };
        state.eflags =
            ((state.eflags & !mask) | (flags & mask)) & eflags::IMPLEMENTED | eflags::FIXED1;
        state.gpr[gpr::ESP] = adjust_sp(esp, 3 * size, ss.db);
        return Ok(Effects::segment(SegReg::Cs));
    }
    if state.v86() {
        return Err(Stop::Unsupported(Unsupported::Virtual8086));
    }
    let [new_eip, cs_sel, flags] = peek_frame(bus, &ss, esp, size, user, Fault::ss(0))?;
    let cs_sel = low16(cs_sel);
    let popped_flags = if op32 {
        flags
    } else {
        (state.eflags & 0xffff_0000) | flags
    };
    if op32 && cpl == 0 && popped_flags & eflags::VM != 0 {
        return Err(Stop::Unsupported(Unsupported::Virtual8086));
    }
    let (new_cs, cs_ref) = check_return_cs(state, bus, cs_sel)?;
    let rpl = selector::rpl(cs_sel);
    let mut effects = Effects::segment(SegReg::Cs);
    let mut outer = None;
    if rpl > cpl {
        let outer_sp = adjust_sp(esp, 3 * size, ss.db);
        let [new_esp, ss_sel] = peek_frame(bus, &ss, outer_sp, size, user, Fault::ss(0))?;
        let new_ss = check_return_ss(state, bus, low16(ss_sel), rpl)?;
        outer = Some((new_ss, new_esp));
    }
    if new_eip > new_cs.limit {
        return Err(Fault::gp0().into());
    }
    set_accessed(bus, &cs_ref)?;
    if let Some(((_, r), _)) = outer {
        set_accessed(bus, &r)?;
    }
    state.eflags = merge_eflags(state.eflags, popped_flags, cpl, state.iopl(), op32, true);
    *state.sreg_mut(SegReg::Cs) = new_cs;
    state.eip = new_eip;
    match outer {
        Some(((ss_cache, _), new_esp)) => {
            *state.sreg_mut(SegReg::Ss) = ss_cache;
            state.gpr[gpr::ESP] = if op32 || ss_cache.db {
                new_esp
            } else {
                (esp & 0xffff_0000) | (new_esp & 0xffff)
            };
            effects = effects.merge(Effects::segment(SegReg::Ss));
            effects.cpl_changed = true;
            effects = effects.merge(null_inaccessible_data_segments(state, rpl));
        }
        None => state.gpr[gpr::ESP] = adjust_sp(esp, 3 * size, ss.db),
    }
    Ok(effects)
}
