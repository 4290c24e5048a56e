//! Arithmetic and logic on an r/m destination: ADD, SUB, AND, OR, XOR, INC, DEC, BTS and
//! BTR, 8/16/32 bits, with the status flags they set (SDM Vol. 1 §3.4.3.1, Vol. 2 for
//! each instruction). Kernels update page tables and code with these, so write
//! mediation runs them; LOCK changes nothing with one vCPU.

use super::operands::{addr16, operand_size, read_rm, rm_operand, value_operand, write_rm, Rm};
use super::{Ctx, Outcome, Res, Stop, Unsupported};
use crate::bits::{low8, sign_extend16, signed, unsigned};
use crate::vcpu::{Effects, GuestBus, VcpuState};
use crate::x86::eflags;
use iced_x86::{Mnemonic, OpKind};

/// All ones in the low `bits` bits.
const fn width_mask(bits: u32) -> u32 {
    if bits == 32 {
        u32::MAX
    } else {
        (1 << bits) - 1
    }
}

/// ZF, SF and PF of a `bits`-wide result; PF counts the low byte only.
pub(crate) fn result_flags(res: u32, bits: u32) -> u32 {
    let r = res & width_mask(bits);
    let mut f = 0;
    if r == 0 {
        f |= eflags::ZF;
    }
    if r >> (bits - 1) & 1 != 0 {
        f |= eflags::SF;
    }
    if low8(r).count_ones().is_multiple_of(2) {
        f |= eflags::PF;
    }
    f
}

/// `a + b` (or `a - b` when `sub`) at `bits` width: the result and the six status flags
/// as ADD, SUB and CMP set them.
pub(crate) fn add_sub(a: u32, b: u32, bits: u32, sub: bool) -> (u32, u32) {
    let mask = width_mask(bits);
    let (a, b) = (a & mask, b & mask);
    let (res, carry) = if sub {
        (a.wrapping_sub(b) & mask, a < b)
    } else {
        let wide = u64::from(a) + u64::from(b);
        (crate::bits::low32(wide) & mask, wide >> bits & 1 != 0)
    };
    let mut f = result_flags(res, bits);
    if carry {
        f |= eflags::CF;
    }
    if (a ^ b ^ res) & 0x10 != 0 {
        f |= eflags::AF;
    }
    let sign = 1 << (bits - 1);
    let overflow = if sub {
        (a ^ b) & (a ^ res) & sign
    } else {
        !(a ^ b) & (a ^ res) & sign
    };
    if overflow != 0 {
        f |= eflags::OF;
    }
    (res, f)
}

/// Replaces the flags in `which` with those of `flags`.
pub(crate) fn set_status(s: &mut VcpuState, flags: u32, which: u32) {
    s.eflags = (s.eflags & !which) | (flags & which);
}

fn unsupported(cx: &Ctx<'_>) -> Stop {
    Stop::Unsupported(Unsupported::Instruction(cx.instr.mnemonic()))
}

/// ADD/SUB/AND/OR/XOR r/m, r/imm and INC/DEC r/m. Logic operations clear CF and OF and
/// leave AF clear (it is undefined); INC and DEC keep CF.
pub(crate) fn arith(s: &mut VcpuState, bus: &mut impl GuestBus, cx: &Ctx<'_>) -> Res {
    let i = cx.instr;
    let (Some(dst), Some(size)) = (rm_operand(s, i, 0), operand_size(i, 0)) else {
        return Err(unsupported(cx));
    };
    let bits = size * 8;
    let a = read_rm(s, bus, dst, size)?;
    let (res, f, which) = match i.mnemonic() {
        Mnemonic::Inc | Mnemonic::Dec => {
            let (r, f) = add_sub(a, 1, bits, i.mnemonic() == Mnemonic::Dec);
            (Some(r), f, eflags::STATUS & !eflags::CF)
        }
        m => {
            // The source: an immediate, a register, or memory (`sub eax, [m]`).
            let b = match rm_operand(s, i, 1) {
                Some(src) => read_rm(s, bus, src, size)?,
                None => value_operand(s, i, 1).ok_or_else(|| unsupported(cx))?,
            };
            let (r, f) = match m {
                Mnemonic::Add => add_sub(a, b, bits, false),
                Mnemonic::Sub | Mnemonic::Cmp => add_sub(a, b, bits, true),
                Mnemonic::And | Mnemonic::Test => logic(a & b, bits),
                Mnemonic::Or => logic(a | b, bits),
                _ => logic(a ^ b, bits),
            };
            // CMP and TEST only set the flags.
            let keep = !matches!(m, Mnemonic::Cmp | Mnemonic::Test);
            (keep.then_some(r), f, eflags::STATUS)
        }
    };
    if let Some(res) = res {
        write_rm(s, bus, dst, size, res)?;
    }
    set_status(s, f, which);
    Ok(Outcome::Next(Effects::NONE))
}

fn logic(res: u32, bits: u32) -> (u32, u32) {
    let r = res & width_mask(bits);
    (r, result_flags(r, bits))
}

/// BTS/BTR r/m, r/imm8: CF receives the bit's old value. A register bit offset into
/// memory is signed and may address beyond the operand (SDM Vol. 2A BT, "bit base");
/// an immediate offset, or any offset into a register, is taken modulo the width.
pub(crate) fn bit_set_reset(s: &mut VcpuState, bus: &mut impl GuestBus, cx: &Ctx<'_>) -> Res {
    let i = cx.instr;
    let (Some(dst), Some(size), Some(offset)) = (
        rm_operand(s, i, 0),
        operand_size(i, 0),
        value_operand(s, i, 1),
    ) else {
        return Err(unsupported(cx));
    };
    let bits = size * 8;
    let (dst, bit) = match dst {
        Rm::Mem(seg, off) if i.op1_kind() == OpKind::Register => {
            let offset = signed(if bits == 16 {
                sign_extend16(offset)
            } else {
                offset
            });
            // |offset / bits| < 2^28, so the byte displacement fits in an i32.
            let unit = offset.div_euclid(signed(bits)) * signed(size);
            let bit = unsigned(offset.rem_euclid(signed(bits)));
            let mut off = off.wrapping_add(unsigned(unit));
            if addr16(i) {
                off &= 0xffff;
            }
            (Rm::Mem(seg, off), bit)
        }
        _ => (dst, offset % bits),
    };
    let a = read_rm(s, bus, dst, size)?;
    let was = a >> bit & 1;
    let res = if i.mnemonic() == Mnemonic::Bts {
        a | 1 << bit
    } else {
        a & !(1 << bit)
    };
    write_rm(s, bus, dst, size, res)?;
    set_status(s, was * eflags::CF, eflags::CF);
    Ok(Outcome::Next(Effects::NONE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_sub_flags_at_every_width() {
        assert_eq!(
            add_sub(0xff, 1, 8, false),
            (0, eflags::CF | eflags::ZF | eflags::AF | eflags::PF)
        );
        assert_eq!(add_sub(0x7fff, 1, 16, false).1 & eflags::OF, eflags::OF);
        assert_eq!(
            add_sub(0, 1, 32, true),
            (u32::MAX, eflags::CF | eflags::SF | eflags::AF | eflags::PF)
        );
        assert_eq!(add_sub(0x8000_0000, 1, 32, true).1 & eflags::OF, eflags::OF);
    }
}
