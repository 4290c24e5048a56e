//! Control and debug registers and cache/TLB control: MOV CRn/DRn, CLTS, INVLPG,
//! WBINVD/INVD, HLT.

use super::operands::{read_gpr, rm_operand, write_gpr, Rm};
use super::{require_cpl0, Ctx, Outcome, Res, Stop};
use crate::addr::GuestLinear;
use crate::vcpu::state::{VcpuState, DR6_INIT, DR7_INIT};
use crate::vcpu::{Effects, Fault};
use crate::x86::{cr0, cr4, Exception};
use iced_x86::{Code, Instruction, Register};

/// MOV to or from a control or debug register.
pub(crate) fn is_cr_dr_mov(i: &Instruction) -> bool {
    matches!(
        i.code(),
        Code::Mov_r32_cr | Code::Mov_cr_r32 | Code::Mov_r32_dr | Code::Mov_dr_r32
    )
}

/// CR0 bits whose change alters how guest linear addresses translate.
const CR0_PAGING: u32 = cr0::PG | cr0::WP | cr0::PE;
/// CR4 bits whose change alters how guest linear addresses translate.
const CR4_PAGING: u32 = cr4::PSE | cr4::PAE | cr4::PGE;
/// DR6 bits a write can change on P6 (B0-B3, BD, BS, BT); the others read as 1.
const DR6_WRITABLE: u32 = 0xe00f;
/// DR7.GD: general detect enable.
const DR7_GD: u32 = 1 << 13;
/// DR6.BD: the #DB came from general detect.
const DR6_BD: u32 = 1 << 13;
/// DR7 bits a write can change (bits 11, 12, 14, 15 read as 0, bit 10 as 1).
const DR7_WRITABLE: u32 = 0xffff_23ff;

/// MOV CRn/DRn (SDM Vol. 2B "MOV—Move to/from Control Registers", "Debug Registers"):
/// CPL 0. CR0: the reserved bits of CR0[31:0] are ignored as the SDM says (§2.5), ET is
/// hard-wired to 1; PG without PE, or NW without CD, is #GP(0). CR4: any bit the CPU
/// model does not offer is #GP(0). CR1, CR5–CR7: #UD. DR4/DR5 alias DR6/DR7 unless
/// CR4.DE, which makes them #UD. With DR7.GD set any MOV DRn is a #DB fault.
pub(crate) fn mov(s: &mut VcpuState, cx: &Ctx<'_>) -> Res {
    let i = cx.instr;
    let to_reg = matches!(i.code(), Code::Mov_r32_cr | Code::Mov_r32_dr);
    let (gpr, special) = if to_reg {
        (i.op_register(0), i.op_register(1))
    } else {
        (i.op_register(1), i.op_register(0))
    };
    require_cpl0(s)?;
    let mut e = Effects::NONE;
    if special.is_cr() {
        let n = special as usize - Register::CR0 as usize;
        if to_reg {
            let v = match n {
                0 => s.cr0,
                2 => s.cr2,
                3 => s.cr3,
                4 => s.cr4,
                _ => return Err(Fault::ud().into()),
            };
            write_gpr(s, gpr, v);
        } else {
            let v = read_gpr(s, gpr);
            match n {
                0 => {
                    let new = (v & cr0::DEFINED) | cr0::ET;
                    if (new & cr0::PG != 0 && new & cr0::PE == 0)
                        || (new & cr0::NW != 0 && new & cr0::CD == 0)
                    {
                        return Err(Fault::gp0().into());
                    }
                    e.paging_mode_changed = (new ^ s.cr0) & CR0_PAGING != 0;
                    s.cr0 = new;
                }
                2 => s.cr2 = v,
                3 => {
                    s.cr3 = v;
                    e.cr3_written = true;
                }
                4 => {
                    if v & !cr4::SUPPORTED != 0 {
                        return Err(Fault::gp0().into());
                    }
                    e.paging_mode_changed = (v ^ s.cr4) & CR4_PAGING != 0;
                    // Toggling PGE flushes global translations too (SDM Vol. 3A §4.10.4.1).
                    e.cr3_written = (v ^ s.cr4) & cr4::PGE != 0;
                    s.cr4 = v;
                }
                _ => return Err(Fault::ud().into()),
            }
        }
        return Ok(Outcome::Next(e));
    }
    if s.dr[7] & DR7_GD != 0 {
        // General detect (SDM Vol. 3B §17.2.4): a fault-class #DB before the access, with
        // DR6.BD set and GD cleared so the handler can use the debug registers itself.
        s.dr[6] |= DR6_BD;
        s.dr[7] &= !DR7_GD;
        return Err(Stop::FaultCommit(Fault::new(Exception::DB)));
    }
    let mut n = special as usize - Register::DR0 as usize;
    if n == 4 || n == 5 {
        if s.cr4 & cr4::DE != 0 {
            return Err(Fault::ud().into());
        }
        n += 2;
    }
    // There is no DR8 or above.
    let v = read_gpr(s, gpr);
    let Some(dr) = s.dr.get_mut(n) else {
        return Err(Fault::ud().into());
    };
    if to_reg {
        let dr = *dr;
        write_gpr(s, gpr, dr);
    } else {
        *dr = match n {
            6 => (v & DR6_WRITABLE) | (DR6_INIT & !DR6_WRITABLE),
            7 => (v & DR7_WRITABLE) | DR7_INIT,
            _ => v,
        };
    }
    Ok(Outcome::Next(e))
}

/// HLT: CPL 0; the vCPU waits for the next interrupt (EIP already past HLT).
pub(crate) fn hlt(s: &mut VcpuState) -> Res {
    require_cpl0(s)?;
    s.halted = true;
    Ok(Outcome::Next(Effects {
        halted: true,
        ..Effects::NONE
    }))
}

/// CLTS: CPL 0; clears CR0.TS.
pub(crate) fn clts(s: &mut VcpuState) -> Res {
    require_cpl0(s)?;
    s.cr0 &= !cr0::TS;
    Ok(Outcome::Next(Effects::NONE))
}

/// INVD/WBINVD: CPL 0; host memory is coherent, the flush is reported for tracing.
pub(crate) fn cache(s: &mut VcpuState) -> Res {
    require_cpl0(s)?;
    Ok(Outcome::Next(Effects {
        cache_flush: true,
        ..Effects::NONE
    }))
}

/// INVLPG m: CPL 0; invalidates the translation of the operand's linear address
/// (segment base + offset; no limit check, INVLPG does not access memory).
pub(crate) fn invlpg(s: &mut VcpuState, cx: &Ctx<'_>) -> Res {
    let Some(Rm::Mem(seg, off)) = rm_operand(s, cx.instr, 0) else {
        return Err(Fault::ud().into());
    };
    require_cpl0(s)?;
    let addr = GuestLinear(s.sreg(seg).base.wrapping_add(off));
    Ok(Outcome::Next(Effects {
        invlpg: Some(addr),
        ..Effects::NONE
    }))
}
