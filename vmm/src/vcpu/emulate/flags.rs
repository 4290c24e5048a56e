//! PUSHF/POPF (16- and 32-bit) and CLI/STI, against the virtual EFLAGS, and the rule
//! for which EFLAGS bits a POPF or IRET may change.

use super::{peek, push, release, Ctx, Outcome, Res};
use crate::vcpu::state::VcpuState;
use crate::vcpu::{Effects, Fault, GuestBus};
use crate::x86::eflags;
use iced_x86::Mnemonic;

/// PUSHF/PUSHFD: pushes the virtual EFLAGS (so the guest sees its own IF and IOPL) with
/// VM and RF cleared in the image (SDM Vol. 2B PUSHF); PUSHF pushes the low 16 bits.
/// Virtual-8086 mode never reaches here (it is not supported), so no IOPL check applies.
pub(crate) fn pushf(s: &mut VcpuState, bus: &mut impl GuestBus, cx: &Ctx<'_>) -> Res {
    let (size, image) = if cx.instr.mnemonic() == Mnemonic::Pushfd {
        (4, s.eflags & !(eflags::VM | eflags::RF))
    } else {
        (2, s.eflags & 0xffff)
    };
    push(s, bus, &[image], size)?;
    Ok(Outcome::Next(Effects::NONE))
}

/// POPF/POPFD (SDM Vol. 2B POPF): at CPL 0 every flag but VM, RF, VIP and VIF may
/// change; at 0 < CPL ≤ IOPL IF may change but not IOPL; at CPL > IOPL neither, silently.
/// POPF (16-bit) only touches the low 16 bits. Bit 1 stays 1, reserved bits stay 0.
pub(crate) fn popf(s: &mut VcpuState, bus: &mut impl GuestBus, cx: &Ctx<'_>) -> Res {
    let op32 = cx.instr.mnemonic() == Mnemonic::Popfd;
    let size = if op32 { 4 } else { 2 };
    let [v] = peek(s, bus, 0, size)?;
    // `allow_rf = false`: POPF changes neither RF nor, even at CPL 0, VIF/VIP.
    s.eflags = merge_eflags(s.eflags, v, s.cpl(), s.iopl(), op32, false);
    release(s, size);
    Ok(Outcome::Next(Effects::NONE))
}

/// CLI: clears the virtual IF; #GP(0) in protected mode when CPL > IOPL (PVI is not
/// offered by the CPU model).
pub(crate) fn cli(s: &mut VcpuState) -> Res {
    if s.protected() && s.cpl() > s.iopl() {
        return Err(Fault::gp0().into());
    }
    s.eflags &= !eflags::IF;
    Ok(Outcome::Next(Effects::NONE))
}

/// STI: sets the virtual IF with the same privilege rule as CLI; when IF was 0,
/// interrupts stay inhibited until after the next instruction.
pub(crate) fn sti(s: &mut VcpuState) -> Res {
    if s.protected() && s.cpl() > s.iopl() {
        return Err(Fault::gp0().into());
    }
    if s.eflags & eflags::IF == 0 {
        s.interrupt_shadow = true;
    }
    s.eflags |= eflags::IF;
    Ok(Outcome::Next(Effects::NONE))
}

/// The EFLAGS IRET/POPF may change, given the old CPL and IOPL and the operand size
/// (SDM Vol. 2A IRET, Vol. 2B POPF): status flags, TF, DF, NT, AC, ID and RF always (RF
/// not for POPF); IF only when CPL ≤ IOPL; IOPL only at CPL 0; VIF/VIP at CPL 0 with
/// 32-bit operands; VM never here (a return to virtual-8086 mode is handled apart).
pub(crate) fn merge_eflags(
    old: u32,
    popped: u32,
    cpl: u8,
    iopl: u8,
    op32: bool,
    allow_rf: bool,
) -> u32 {
    let mut mask = eflags::STATUS | eflags::TF | eflags::DF | eflags::NT | eflags::AC | eflags::ID;
    if allow_rf {
        mask |= eflags::RF;
    }
    if cpl <= iopl {
        mask |= eflags::IF;
    }
    if cpl == 0 {
        mask |= eflags::IOPL;
        if allow_rf {
            mask |= eflags::VIF | eflags::VIP;
        }
    }
    if !op32 {
        mask &= 0xffff;
    }
    ((old & !mask) | (popped & mask)) & eflags::IMPLEMENTED | eflags::FIXED1
}
