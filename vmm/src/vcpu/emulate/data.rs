//! Data moves between general-purpose registers, memory and immediates: MOV, MOVZX,
//! MOVSX, XCHG and PUSH of memory (SDM Vol. 2). The monitor performs them itself for accesses the host
//! mapping cannot serve (linear page 0, physical addresses without RAM) and for writes
//! to mediated pages; flags are never touched.

use super::operands::{operand_size, read_rm, rm_operand, value_operand, write_gpr, write_rm};
use super::{Ctx, Outcome, Res, Stop, Unsupported};
use crate::bits::{sign_extend16, sign_extend8};
use crate::vcpu::{Effects, GuestBus, VcpuState};
use iced_x86::{Mnemonic, OpKind};

fn unsupported(cx: &Ctx<'_>) -> Stop {
    Stop::Unsupported(Unsupported::Instruction(cx.instr.mnemonic()))
}

/// MOV r/m, r/imm and MOV r, r/m (the segment- and control-register forms are in
/// `sreg` and `ctrl`).
pub(crate) fn mov(s: &mut VcpuState, bus: &mut impl GuestBus, cx: &Ctx<'_>) -> Res {
    let i = cx.instr;
    let (Some(dst), Some(size)) = (rm_operand(s, i, 0), operand_size(i, 0)) else {
        return Err(unsupported(cx));
    };
    let value = match rm_operand(s, i, 1) {
        Some(src) if i.op1_kind() == OpKind::Memory => read_rm(s, bus, src, size)?,
        _ => value_operand(s, i, 1).ok_or_else(|| unsupported(cx))?,
    };
    write_rm(s, bus, dst, size, value)?;
    Ok(Outcome::Next(Effects::NONE))
}

/// MOVZX/MOVSX r, r/m8 or r/m16: the source zero- or sign-extended to the register.
pub(crate) fn mov_extend(s: &mut VcpuState, bus: &mut impl GuestBus, cx: &Ctx<'_>) -> Res {
    let i = cx.instr;
    let (Some(src), Some(size)) = (rm_operand(s, i, 1), operand_size(i, 1)) else {
        return Err(unsupported(cx));
    };
    let v = read_rm(s, bus, src, size)?;
    let v = match (i.mnemonic(), size) {
        (Mnemonic::Movsx, 1) => sign_extend8(v),
        (Mnemonic::Movsx, _) => sign_extend16(v),
        _ => v,
    };
    write_gpr(s, i.op0_register(), v);
    Ok(Outcome::Next(Effects::NONE))
}

/// PUSH m16/m32: the operand is read (its address formed with ESP as it was before the
/// push, SDM Vol. 2 PUSH), then pushed; a fault on either leaves everything as it was.
pub(crate) fn push_memory(s: &mut VcpuState, bus: &mut impl GuestBus, cx: &Ctx<'_>) -> Res {
    let i = cx.instr;
    let (Some(src), Some(size)) = (rm_operand(s, i, 0), operand_size(i, 0)) else {
        return Err(unsupported(cx));
    };
    let value = read_rm(s, bus, src, size)?;
    super::push(s, bus, &[value], size)?;
    Ok(Outcome::Next(Effects::NONE))
}

/// XCHG r/m, r: memory is read, then written with the register, then the register gets
/// the old value (a fault on the write leaves the register as it was).
pub(crate) fn xchg(s: &mut VcpuState, bus: &mut impl GuestBus, cx: &Ctx<'_>) -> Res {
    let i = cx.instr;
    let (Some(a), Some(b), Some(size)) =
        (rm_operand(s, i, 0), rm_operand(s, i, 1), operand_size(i, 0))
    else {
        return Err(unsupported(cx));
    };
    // The register operand is the one written last.
    let (mem, reg) = if i.op0_kind() == OpKind::Register {
        (b, a)
    } else {
        (a, b)
    };
    let old = read_rm(s, bus, mem, size)?;
    let v = read_rm(s, bus, reg, size)?;
    write_rm(s, bus, mem, size, v)?;
    write_rm(s, bus, reg, size, old)?;
    Ok(Outcome::Next(Effects::NONE))
}
