//! String stores: STOS and MOVS, with or without REP, 8/16/32 bits, DF, the address size
//! of the string operands (SI/DI/CX or ESI/EDI/ECX) and the source segment override
//! (SDM Vol. 2B). Kernels clear and copy page tables with them, so write mediation runs
//! them. Port string I/O (INS/OUTS) is in `io`.

use super::operands::{read_gpr, read_mem, write_gpr, write_mem};
use super::{Ctx, Outcome, Res, Stop, Unsupported};
use crate::vcpu::{Effects, GuestBus, VcpuState};
use crate::x86::{eflags, SegReg};
use iced_x86::{Code, OpKind, Register};

/// STOS/MOVS. Each element is a separate access and ECX, ESI and EDI advance element by
/// element, so a fault midway keeps the completed elements (as the processor does) and
/// the instruction restarts from there. A REP runs to completion in one emulation.
pub(crate) fn store(s: &mut VcpuState, bus: &mut impl GuestBus, cx: &Ctx<'_>) -> Res {
    let i = cx.instr;
    let (size, movs): (u32, bool) = match i.code() {
        Code::Stosb_m8_AL => (1, false),
        Code::Stosw_m16_AX => (2, false),
        Code::Stosd_m32_EAX => (4, false),
        Code::Movsb_m8_m8 => (1, true),
        Code::Movsw_m16_m16 => (2, true),
        // Not the SSE2 MOVSD, which shares the mnemonic.
        Code::Movsd_m32_m32 => (4, true),
        _ => return Err(Stop::Unsupported(Unsupported::Instruction(i.mnemonic()))),
    };
    let (di, si, cx_reg) = match i.op0_kind() {
        OpKind::MemoryESDI => (Register::DI, Register::SI, Register::CX),
        _ => (Register::EDI, Register::ESI, Register::ECX),
    };
    let rep = i.has_rep_prefix() || i.has_repe_prefix() || i.has_repne_prefix();
    let step = if s.eflags & eflags::DF != 0 {
        size.wrapping_neg()
    } else {
        size
    };
    let src_seg = SegReg::from_iced(i.memory_segment()).unwrap_or(SegReg::Ds);
    let mut done = false;
    let mut count = if rep { read_gpr(s, cx_reg) } else { 1 };
    while count > 0 {
        let r = if movs {
            read_mem(s, bus, src_seg, read_gpr(s, si), size)
        } else {
            Ok(read_gpr(s, Register::EAX))
        }
        .and_then(|v| write_mem(s, bus, SegReg::Es, read_gpr(s, di), size, v));
        if let Err(f) = r {
            return Err(if done {
                Stop::FaultCommit(f)
            } else {
                Stop::Fault(f)
            });
        }
        done = true;
        write_gpr(s, di, read_gpr(s, di).wrapping_add(step));
        if movs {
            write_gpr(s, si, read_gpr(s, si).wrapping_add(step));
        }
        count -= 1;
        if rep {
            write_gpr(s, cx_reg, count);
        }
    }
    Ok(Outcome::Next(Effects::NONE))
}
