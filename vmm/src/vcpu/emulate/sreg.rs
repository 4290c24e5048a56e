//! Segment-register moves: MOV r/m←Sreg, MOV Sreg←r/m, PUSH Sreg, POP Sreg and
//! LDS/LES/LFS/LGS/LSS. The guest-visible selector (with its RPL) comes from the vCPU,
//! never from the host mirror.

use super::operands::{read_mem, read_rm, rm_operand, write_gpr, write_mem, Rm};
use super::{peek, push, release, Ctx, Outcome, Res};
use crate::vcpu::segments::load_segment;
use crate::vcpu::state::{SegReg, VcpuState};
use crate::vcpu::{Effects, Fault, GuestBus};
use iced_x86::{Code, Instruction, Mnemonic, OpKind};

/// MOV with a segment register operand.
pub(crate) fn is_sreg_mov(i: &Instruction) -> bool {
    matches!(
        i.code(),
        Code::Mov_rm16_Sreg | Code::Mov_r32m16_Sreg | Code::Mov_Sreg_rm16 | Code::Mov_Sreg_r32m16
    )
}

/// PUSH/POP of a segment register.
pub(crate) fn is_sreg_push_pop(i: &Instruction) -> bool {
    i.op_count() == 1 && i.op_kind(0) == OpKind::Register && i.op_register(0).is_segment_register()
}

fn sreg_of(i: &Instruction, op: u32) -> Result<SegReg, Fault> {
    SegReg::from_iced(i.op_register(op)).ok_or(Fault::ud())
}

/// MOV r/m, Sreg stores the selector: zero-extended into a 32-bit register (P6 and
/// later), 16 bits into memory. MOV Sreg, r/m loads it with all checks; MOV to CS is #UD
/// and MOV SS inhibits interrupts for one instruction.
pub(crate) fn mov(s: &mut VcpuState, bus: &mut impl GuestBus, cx: &Ctx<'_>) -> Res {
    let i = cx.instr;
    match i.code() {
        Code::Mov_rm16_Sreg | Code::Mov_r32m16_Sreg => {
            let sel = s.sreg(sreg_of(i, 1)?).selector;
            match rm_operand(s, i, 0).ok_or(Fault::ud())? {
                Rm::Reg(r) => write_gpr(s, r, u32::from(sel)),
                Rm::Mem(seg, off) => write_mem(s, bus, seg, off, 2, u32::from(sel))?,
            }
            Ok(Outcome::Next(Effects::NONE))
        }
        _ => {
            let reg = sreg_of(i, 0)?;
            if reg == SegReg::Cs {
                return Err(Fault::ud().into());
            }
            let rm = rm_operand(s, i, 1).ok_or(Fault::ud())?;
            let sel = read_rm(s, bus, rm, 2)? as u16;
            let e = load_segment(s, bus, reg, sel)?;
            if reg == SegReg::Ss {
                s.interrupt_shadow = true;
            }
            Ok(Outcome::Next(e))
        }
    }
}

fn op32_push_pop(code: Code) -> bool {
    matches!(
        code,
        Code::Pushd_ES
            | Code::Pushd_CS
            | Code::Pushd_SS
            | Code::Pushd_DS
            | Code::Pushd_FS
            | Code::Pushd_GS
            | Code::Popd_ES
            | Code::Popd_SS
            | Code::Popd_DS
            | Code::Popd_FS
            | Code::Popd_GS
    )
}

/// PUSH Sreg pushes the selector; with a 32-bit operand size a zero-extended 32-bit
/// value is written (recent Intel processors write only the low 16 bits of the slot;
/// zero-extension is QEMU's choice and makes the whole slot defined). POP Sreg loads the
/// popped selector with all checks, then moves ESP; POP SS inhibits interrupts.
pub(crate) fn push_pop(s: &mut VcpuState, bus: &mut impl GuestBus, cx: &Ctx<'_>) -> Res {
    let i = cx.instr;
    let reg = sreg_of(i, 0)?;
    let size = if op32_push_pop(i.code()) { 4 } else { 2 };
    if i.mnemonic() == Mnemonic::Push {
        let sel = u32::from(s.sreg(reg).selector);
        push(s, bus, &[sel], size)?;
        return Ok(Outcome::Next(Effects::NONE));
    }
    if reg == SegReg::Cs {
        return Err(Fault::ud().into());
    }
    let sel = peek(s, bus, 0, 1, size)?[0] as u16;
    let e = load_segment(s, bus, reg, sel)?;
    release(s, size);
    if reg == SegReg::Ss {
        s.interrupt_shadow = true;
    }
    Ok(Outcome::Next(e))
}

/// LDS/LES/LFS/LGS/LSS r, m16:16 / m16:32: loads the segment (with all checks) and the
/// register from a far pointer in memory; a register source is #UD.
pub(crate) fn load_far_pointer(s: &mut VcpuState, bus: &mut impl GuestBus, cx: &Ctx<'_>) -> Res {
    let i = cx.instr;
    let Some(Rm::Mem(seg, off)) = rm_operand(s, i, 1) else {
        return Err(Fault::ud().into());
    };
    let dst = i.op_register(0);
    let size = dst.size() as u32;
    let offset = read_mem(s, bus, seg, off, size)?;
    let sel = read_mem(s, bus, seg, off.wrapping_add(size), 2)? as u16;
    let reg = match i.mnemonic() {
        Mnemonic::Lds => SegReg::Ds,
        Mnemonic::Les => SegReg::Es,
        Mnemonic::Lfs => SegReg::Fs,
        Mnemonic::Lgs => SegReg::Gs,
        _ => SegReg::Ss,
    };
    let e = load_segment(s, bus, reg, sel)?;
    write_gpr(s, dst, offset);
    Ok(Outcome::Next(e))
}

#[cfg(test)]
mod tests {
    use crate::vcpu::emulate::emulate;
    use crate::vcpu::emulate::test_util::{decode_at, exec};
    use crate::vcpu::state::gpr;
    use crate::vcpu::testbus::TestBus;
    use crate::vcpu::{Effects, Emulated, Fault, SegReg};

    #[test]
    fn mov_from_sreg_register_and_memory() {
        let mut bus = TestBus::new();
        let mut s = bus.protected_state();
        s.gpr[gpr::EAX] = 0xdead_beef;
        // mov eax, ds  (8C D8) zero-extends; mov ax, cs (66 8C C8) keeps the high half.
        exec(&mut s, &mut bus, &[0x8c, 0xd8]).unwrap();
        assert_eq!(s.gpr[gpr::EAX], 0x10);
        s.gpr[gpr::EAX] = 0xdead_beef;
        exec(&mut s, &mut bus, &[0x66, 0x8c, 0xc8]).unwrap();
        assert_eq!(s.gpr[gpr::EAX], 0xdead_0008);
        // mov [0x500], ss writes 16 bits only.
        bus.write_u32(0x500, 0xffff_ffff);
        exec(&mut s, &mut bus, &[0x8c, 0x15, 0x00, 0x05, 0x00, 0x00]).unwrap();
        assert_eq!(bus.read_u32(0x500), 0xffff_0010);
    }

    #[test]
    fn mov_to_sreg_checks_and_shadow() {
        let mut bus = TestBus::new();
        let mut s = bus.protected_state();
        s.gpr[gpr::EAX] = 0x40;
        // mov es, ax with a not-present descriptor: #NP(0x40), EIP unchanged.
        let eip = s.eip;
        assert_eq!(
            emulate(&mut s, &mut bus, &decode_at(&[0x8e, 0xc0], eip)),
            Err(Fault::np(0x40))
        );
        assert_eq!(s.eip, eip);
        s.gpr[gpr::EAX] = 0x10;
        let r = emulate(&mut s, &mut bus, &decode_at(&[0x8e, 0xd0], eip)).unwrap();
        assert_eq!(r, Emulated::Done(Effects::segment(SegReg::Ss)));
        assert!(s.interrupt_shadow);
        // mov cs, ax is #UD (8E C8).
        assert_eq!(exec(&mut s, &mut bus, &[0x8e, 0xc8]), Err(Fault::ud()));
    }

    #[test]
    fn push_pop_sreg() {
        let mut bus = TestBus::new();
        let mut s = bus.protected_state();
        let esp = s.gpr[gpr::ESP];
        bus.write_u32(esp - 4, 0xffff_ffff);
        exec(&mut s, &mut bus, &[0x1e]).unwrap(); // push ds
        assert_eq!(s.gpr[gpr::ESP], esp - 4);
        assert_eq!(bus.read_u32(esp - 4), 0x10);
        exec(&mut s, &mut bus, &[0x66, 0x06]).unwrap(); // push es (16)
        assert_eq!(s.gpr[gpr::ESP], esp - 6);
        bus.write_u16(esp - 6, 0x23);
        // pop fs (0F A1) with 16-bit operand: user data DPL 3 at CPL 0 is fine.
        exec(&mut s, &mut bus, &[0x66, 0x0f, 0xa1]).unwrap();
        assert_eq!(s.sreg(SegReg::Fs).selector, 0x23);
        assert_eq!(s.gpr[gpr::ESP], esp - 4);
        // pop ss with a DPL-3 selector at CPL 0: #GP(0x20), ESP unchanged.
        bus.write_u32(esp - 4, 0x23);
        assert_eq!(exec(&mut s, &mut bus, &[0x17]), Err(Fault::gp(0x20)));
        assert_eq!(s.gpr[gpr::ESP], esp - 4);
    }

    #[test]
    fn lss_loads_pointer_and_lds_faults_precisely() {
        let mut bus = TestBus::new();
        let mut s = bus.protected_state();
        bus.write_u32(0x600, 0x1234_5678);
        bus.write_u16(0x604, 0x10);
        // lss esp, [0x600]
        exec(
            &mut s,
            &mut bus,
            &[0x0f, 0xb2, 0x25, 0x00, 0x06, 0x00, 0x00],
        )
        .unwrap();
        assert_eq!(s.gpr[gpr::ESP], 0x1234_5678);
        assert!(!s.interrupt_shadow);
        // lds eax, [0x600] with a bad selector: nothing changes.
        bus.write_u16(0x604, 0x38);
        let before = s.clone();
        assert_eq!(
            exec(&mut s, &mut bus, &[0xc5, 0x05, 0x00, 0x06, 0x00, 0x00]),
            Err(Fault::gp(0x38))
        );
        assert_eq!(s, before);
    }
}
