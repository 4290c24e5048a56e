//! PUSHF/POPF (16- and 32-bit) and CLI/STI, against the virtual EFLAGS, and the rule
//! for which EFLAGS bits a POPF or IRET may change.

use super::{peek, push, release, Ctx, Outcome, Res};
use crate::vcpu::state::{eflags, VcpuState};
use crate::vcpu::{Effects, Fault, GuestBus};
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
    let v = peek(s, bus, 0, 1, size)?[0];
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

#[cfg(test)]
mod tests {
    use crate::vcpu::emulate::test_util::exec;
    use crate::vcpu::emulate::Emulated;
    use crate::vcpu::state::{eflags, gpr};
    use crate::vcpu::testbus::TestBus;
    use crate::vcpu::Fault;

    const PUSHFD: [u8; 1] = [0x9c];
    const PUSHFW: [u8; 2] = [0x66, 0x9c];
    const POPFD: [u8; 1] = [0x9d];
    const POPFW: [u8; 2] = [0x66, 0x9d];

    #[test]
    fn pushf_shows_virtual_flags_without_vm_rf() {
        let mut bus = TestBus::new();
        let mut s = bus.protected_state();
        s.eflags =
            eflags::FIXED1 | eflags::IF | eflags::IOPL | eflags::RF | eflags::AC | eflags::CF;
        exec(&mut s, &mut bus, &PUSHFD).unwrap();
        let esp = s.gpr[gpr::ESP];
        assert_eq!(
            bus.read_u32(esp),
            eflags::FIXED1 | eflags::IF | eflags::IOPL | eflags::AC | eflags::CF
        );
        assert_eq!(s.eip, 0x7001);
        exec(&mut s, &mut bus, &PUSHFW).unwrap();
        assert_eq!(s.gpr[gpr::ESP], esp - 2);
        assert_eq!(
            bus.read_u16(esp - 2),
            (eflags::FIXED1 | eflags::IF | eflags::IOPL | eflags::CF) as u16
        );
    }

    fn popf_at(cpl3: bool, iopl: u32, image: u32, code: &[u8]) -> u32 {
        let mut bus = TestBus::new();
        let mut s = bus.protected_state();
        if cpl3 {
            bus.enter_user(&mut s);
        }
        s.eflags = eflags::FIXED1 | (iopl << 12);
        let esp = s.gpr[gpr::ESP] - 4;
        s.gpr[gpr::ESP] = esp;
        bus.write_u32(esp, image);
        let r = exec(&mut s, &mut bus, code).unwrap();
        assert!(matches!(r, Emulated::Done(_)));
        let size = if code.len() == 2 { 2 } else { 4 };
        assert_eq!(s.gpr[gpr::ESP], esp + size);
        s.eflags
    }

    #[test]
    fn popf_privilege_rules() {
        let all = eflags::IF
            | eflags::IOPL
            | eflags::ZF
            | eflags::VM
            | eflags::RF
            | eflags::VIF
            | 0x8000_0000;
        // CPL 0: IF and IOPL change, VM/RF/VIF and reserved bits do not.
        assert_eq!(
            popf_at(false, 0, all, &POPFD),
            eflags::FIXED1 | eflags::IF | eflags::IOPL | eflags::ZF
        );
        // CPL 3, IOPL 3: IF changes, IOPL does not.
        assert_eq!(
            popf_at(true, 3, eflags::IF | eflags::ZF, &POPFD),
            eflags::FIXED1 | eflags::IOPL | eflags::IF | eflags::ZF
        );
        assert_eq!(popf_at(true, 3, 0, &POPFD), eflags::FIXED1 | eflags::IOPL);
        // CPL 3, IOPL 0: neither, silently.
        assert_eq!(
            popf_at(true, 0, eflags::IF | eflags::IOPL | eflags::CF, &POPFD),
            eflags::FIXED1 | eflags::CF
        );
        // 16-bit POPF leaves the high half alone.
        assert_eq!(
            popf_at(false, 0, 0xffff_0000 | eflags::DF, &POPFW),
            eflags::FIXED1 | eflags::DF
        );
    }

    #[test]
    fn popf_stack_fault_is_precise() {
        let mut bus = TestBus::new();
        let mut s = bus.protected_state();
        s.sreg_mut(crate::vcpu::SegReg::Ss).limit = s.gpr[gpr::ESP] + 2;
        let before = s.clone();
        assert_eq!(exec(&mut s, &mut bus, &POPFD), Err(Fault::ss(0)));
        assert_eq!(s, before);
    }

    #[test]
    fn cli_sti_follow_iopl() {
        let mut bus = TestBus::new();
        let mut s = bus.protected_state();
        bus.enter_user(&mut s);
        assert_eq!(exec(&mut s, &mut bus, &[0xfa]), Err(Fault::gp0()));
        s.eflags |= eflags::IOPL;
        exec(&mut s, &mut bus, &[0xfb]).unwrap();
        assert!(s.interrupt_shadow && s.eflags & eflags::IF != 0);
        exec(&mut s, &mut bus, &[0xfa]).unwrap();
        assert!(!s.interrupt_shadow && s.eflags & eflags::IF == 0);
    }
}
