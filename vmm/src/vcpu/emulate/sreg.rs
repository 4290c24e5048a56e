//! Segment-register moves: MOV r/m←Sreg, MOV Sreg←r/m, PUSH Sreg, POP Sreg and
//! LDS/LES/LFS/LGS/LSS. The guest-visible selector (with its RPL) comes from the vCPU,
//! never from the host mirror.

use super::operands::{operand_size, read_mem, read_rm, rm_operand, write_gpr, write_mem, Rm};
use super::{peek, push, release, Ctx, Outcome, Res};
use crate::bits::low16;
use crate::vcpu::segments::load_segment;
use crate::vcpu::state::VcpuState;
use crate::vcpu::{Effects, Fault, GuestBus};
use crate::x86::SegReg;
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
            let sel = low16(read_rm(s, bus, rm, 2)?);
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
    let [sel] = peek(s, bus, 0, size)?;
    let sel = low16(sel);
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
    let size = operand_size(i, 0).ok_or(Fault::ud())?;
    let offset = read_mem(s, bus, seg, off, size)?;
    let sel = low16(read_mem(s, bus, seg, off.wrapping_add(size), 2)?);
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
