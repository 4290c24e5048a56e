//! CMPXCHG r/m, r and CMPXCHG8B m64 (SDM Vol. 2A). Kernels swap page-table entries with
//! them, so write mediation runs them; with one vCPU the read-modify-write is atomic as
//! performed, LOCK or not.

use super::alu::{add_sub, set_status};
use super::operands::{operand_size, read_gpr, read_rm, rm_operand, write_gpr, write_rm, Rm};
use super::{Ctx, Outcome, Res, Stop, Unsupported};
use crate::vcpu::{Effects, GuestBus, VcpuState};
use crate::x86::eflags;
use iced_x86::Register;

fn unsupported(cx: &Ctx<'_>) -> Stop {
    Stop::Unsupported(Unsupported::Instruction(cx.instr.mnemonic()))
}

/// CMPXCHG: compares the accumulator with the destination (flags as CMP); equal: the
/// destination gets the source, else the accumulator gets the destination. The
/// destination is written either way (unchanged on failure), as the processor does.
pub(crate) fn cmpxchg(s: &mut VcpuState, bus: &mut impl GuestBus, cx: &Ctx<'_>) -> Res {
    let i = cx.instr;
    let (Some(dst), Some(size)) = (rm_operand(s, i, 0), operand_size(i, 0)) else {
        return Err(unsupported(cx));
    };
    let acc = match size {
        1 => Register::AL,
        2 => Register::AX,
        _ => Register::EAX,
    };
    let old = read_rm(s, bus, dst, size)?;
    let (_, f) = add_sub(read_gpr(s, acc), old, size * 8, true);
    if f & eflags::ZF != 0 {
        let v = read_gpr(s, i.op1_register());
        write_rm(s, bus, dst, size, v)?;
    } else {
        write_rm(s, bus, dst, size, old)?;
        write_gpr(s, acc, old);
    }
    set_status(s, f, eflags::STATUS);
    Ok(Outcome::Next(Effects::NONE))
}

/// CMPXCHG8B m64: EDX:EAX against the quadword; equal: it gets ECX:EBX and ZF = 1, else
/// EDX:EAX gets it and ZF = 0. Only ZF changes.
pub(crate) fn cmpxchg8b(s: &mut VcpuState, bus: &mut impl GuestBus, cx: &Ctx<'_>) -> Res {
    let Some(Rm::Mem(seg, off)) = rm_operand(s, cx.instr, 0) else {
        return Err(unsupported(cx));
    };
    let lo = Rm::Mem(seg, off);
    let hi = Rm::Mem(seg, off.wrapping_add(4));
    let old = (read_rm(s, bus, lo, 4)?, read_rm(s, bus, hi, 4)?);
    let (eax, edx) = (read_gpr(s, Register::EAX), read_gpr(s, Register::EDX));
    let equal = old == (eax, edx);
    let new = if equal {
        (read_gpr(s, Register::EBX), read_gpr(s, Register::ECX))
    } else {
        old
    };
    write_rm(s, bus, lo, 4, new.0)?;
    write_rm(s, bus, hi, 4, new.1)?;
    if !equal {
        write_gpr(s, Register::EAX, old.0);
        write_gpr(s, Register::EDX, old.1);
    }
    s.set_zf(equal);
    Ok(Outcome::Next(Effects::NONE))
}
