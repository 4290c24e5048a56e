//! Descriptor-table registers and segment inspection: SGDT/SIDT, SLDT/STR, SMSW,
//! LGDT/LIDT, LLDT, LTR, LMSW, LAR/LSL, VERR/VERW.

use super::operands::{read_mem, read_rm, rm_operand, write_gpr, write_mem, Rm};
use super::{require_cpl0, require_protected, Ctx, Outcome, Res};
use crate::bits::low16;
use crate::vcpu::descriptor::system_type::{
    CALL_GATE16, CALL_GATE32, LDT, TASK_GATE, TSS16_AVAILABLE, TSS16_BUSY, TSS32_AVAILABLE,
    TSS32_BUSY,
};
use crate::vcpu::descriptor::{selector, system_type, TYPE_TSS_BUSY};
use crate::vcpu::segments::fetch_descriptor;
use crate::vcpu::state::{Segment, TableReg, VcpuState};
use crate::vcpu::{Effects, Fault, GuestBus};
use crate::x86::{cr0, SegReg};
use iced_x86::{Code, Mnemonic};

fn mem_operand(s: &VcpuState, cx: &Ctx<'_>) -> Result<(SegReg, u32), Fault> {
    match rm_operand(s, cx.instr, 0) {
        Some(Rm::Mem(seg, off)) => Ok((seg, off)),
        _ => Err(Fault::ud()),
    }
}

/// SGDT/SIDT m: stores the 16-bit limit and the 32-bit base. With a 16-bit operand size
/// the SDM's pseudo-code stores 24 bits of base and a zero high byte; that is what is
/// done here. Not privileged (the CPU model has no UMIP).
pub(crate) fn store_table(s: &mut VcpuState, bus: &mut impl GuestBus, cx: &Ctx<'_>) -> Res {
    let (seg, off) = mem_operand(s, cx)?;
    let t = if cx.instr.mnemonic() == Mnemonic::Sgdt {
        s.gdtr
    } else {
        s.idtr
    };
    let op16 = matches!(cx.instr.code(), Code::Sgdt_m1632_16 | Code::Sidt_m1632_16);
    let base = if op16 { t.base & 0x00ff_ffff } else { t.base };
    // Check both parts before writing either, so a fault leaves memory untouched.
    super::operands::linear(s, seg, off, 2, true)?;
    super::operands::linear(s, seg, off.wrapping_add(2), 4, true)?;
    write_mem(s, bus, seg, off, 2, u32::from(t.limit))?;
    write_mem(s, bus, seg, off.wrapping_add(2), 4, base)?;
    Ok(Outcome::Next(Effects::NONE))
}

/// Writes a 16-bit value to an r/m destination: a 32-bit register destination receives
/// it zero-extended (P6 and later), a 16-bit register only its low half, memory 16 bits.
fn store16(s: &mut VcpuState, bus: &mut impl GuestBus, rm: Rm, v: u16) -> Result<(), Fault> {
    match rm {
        Rm::Reg(r) => {
            write_gpr(s, r, u32::from(v));
            Ok(())
        }
        Rm::Mem(seg, off) => write_mem(s, bus, seg, off, 2, u32::from(v)),
    }
}

/// SLDT/STR r/m: the LDTR or TR selector. Only in protected mode.
pub(crate) fn store_selector(s: &mut VcpuState, bus: &mut impl GuestBus, cx: &Ctx<'_>) -> Res {
    require_protected(s)?;
    let v = if cx.instr.mnemonic() == Mnemonic::Sldt {
        s.ldtr.selector
    } else {
        s.tr.selector
    };
    let rm = rm_operand(s, cx.instr, 0).ok_or(Fault::ud())?;
    store16(s, bus, rm, v)?;
    Ok(Outcome::Next(Effects::NONE))
}

/// SMSW r/m: memory receives CR0[15:0]. A 32-bit register destination receives all of
/// CR0 (the SDM leaves bits 31:16 undefined on P6; all of CR0 is what QEMU returns).
pub(crate) fn smsw(s: &mut VcpuState, bus: &mut impl GuestBus, cx: &Ctx<'_>) -> Res {
    let rm = rm_operand(s, cx.instr, 0).ok_or(Fault::ud())?;
    match rm {
        Rm::Reg(r) if r.size() == 4 => write_gpr(s, r, s.cr0),
        _ => store16(s, bus, rm, low16(s.cr0))?,
    }
    Ok(Outcome::Next(Effects::NONE))
}

/// LGDT/LIDT m16&32: CPL 0. A 16-bit operand size keeps only 24 bits of the base.
pub(crate) fn load_table(s: &mut VcpuState, bus: &mut impl GuestBus, cx: &Ctx<'_>) -> Res {
    let (seg, off) = mem_operand(s, cx)?;
    require_cpl0(s)?;
    let limit = low16(read_mem(s, bus, seg, off, 2)?);
    let mut base = read_mem(s, bus, seg, off.wrapping_add(2), 4)?;
    if matches!(cx.instr.code(), Code::Lgdt_m1632_16 | Code::Lidt_m1632_16) {
        base &= 0x00ff_ffff;
    }
    let t = TableReg { base, limit };
    if cx.instr.mnemonic() == Mnemonic::Lgdt {
        s.gdtr = t;
    } else {
        s.idtr = t;
    }
    Ok(Outcome::Next(Effects {
        descriptor_tables_changed: true,
        ..Effects::NONE
    }))
}

fn read_selector_operand(
    s: &VcpuState,
    bus: &mut impl GuestBus,
    cx: &Ctx<'_>,
) -> Result<u16, Fault> {
    let rm =
        rm_operand(s, cx.instr, if cx.instr.op_count() == 2 { 1 } else { 0 }).ok_or(Fault::ud())?;
    Ok(low16(read_rm(s, bus, rm, 2)?))
}

/// LLDT r/m16 (SDM Vol. 2A LLDT): CPL 0; a null selector leaves LDTR unusable; the
/// selector must name an LDT descriptor (type 2) in the GDT, present.
pub(crate) fn lldt(s: &mut VcpuState, bus: &mut impl GuestBus, cx: &Ctx<'_>) -> Res {
    require_protected(s)?;
    require_cpl0(s)?;
    let sel = read_selector_operand(s, bus, cx)?;
    let effects = Effects {
        descriptor_tables_changed: true,
        ..Effects::NONE
    };
    if selector::is_null(sel) {
        s.ldtr = Segment::null(sel);
        return Ok(Outcome::Next(effects));
    }
    let code = selector::error_code(sel);
    if selector::ti(sel) {
        return Err(Fault::gp(code).into());
    }
    let d = fetch_descriptor(s, bus, sel)?.ok_or(Fault::gp(code))?.desc;
    if d.s || d.typ != system_type::LDT {
        return Err(Fault::gp(code).into());
    }
    if !d.present {
        return Err(Fault::np(code).into());
    }
    s.ldtr = Segment::from_descriptor(sel, &d);
    Ok(Outcome::Next(effects))
}

/// LTR r/m16 (SDM Vol. 2A LTR): CPL 0; the selector must name an available TSS in the
/// GDT; the descriptor is marked busy in memory.
pub(crate) fn ltr(s: &mut VcpuState, bus: &mut impl GuestBus, cx: &Ctx<'_>) -> Res {
    require_protected(s)?;
    require_cpl0(s)?;
    let sel = read_selector_operand(s, bus, cx)?;
    if selector::is_null(sel) {
        return Err(Fault::gp0().into());
    }
    let code = selector::error_code(sel);
    if selector::ti(sel) {
        return Err(Fault::gp(code).into());
    }
    let r = fetch_descriptor(s, bus, sel)?.ok_or(Fault::gp(code))?;
    let mut d = r.desc;
    if d.s
        || !matches!(
            d.typ,
            system_type::TSS16_AVAILABLE | system_type::TSS32_AVAILABLE
        )
    {
        return Err(Fault::gp(code).into());
    }
    if !d.present {
        return Err(Fault::np(code).into());
    }
    d.typ |= TYPE_TSS_BUSY;
    let mut byte = [0u8];
    bus.read_linear(r.addr.wrapping_add(5), &mut byte, false)?;
    bus.write_linear(r.addr.wrapping_add(5), &[byte[0] | TYPE_TSS_BUSY], false)?;
    s.tr = Segment::from_descriptor(sel, &d);
    Ok(Outcome::Next(Effects {
        descriptor_tables_changed: true,
        ..Effects::NONE
    }))
}

/// LMSW r/m16: CPL 0; loads CR0[3:0] (PE, MP, EM, TS) but can set PE, never clear it.
pub(crate) fn lmsw(s: &mut VcpuState, bus: &mut impl GuestBus, cx: &Ctx<'_>) -> Res {
    require_cpl0(s)?;
    let v = read_selector_operand(s, bus, cx)?;
    let old = s.cr0;
    s.cr0 = (old & !0xf) | u32::from(v & 0xf) | (old & cr0::PE);
    let e = Effects {
        paging_mode_changed: (old ^ s.cr0) & cr0::PE != 0,
        ..Effects::NONE
    };
    Ok(Outcome::Next(e))
}

/// The descriptor `sel` names if LAR/LSL/VERR/VERW may see it: not null, inside its
/// table, and (unless conforming code) DPL ≥ CPL and DPL ≥ RPL.
fn visible(
    s: &VcpuState,
    bus: &mut impl GuestBus,
    sel: u16,
) -> Result<Option<crate::vcpu::descriptor::Descriptor>, Fault> {
    if selector::is_null(sel) {
        return Ok(None);
    }
    let Some(r) = fetch_descriptor(s, bus, sel)? else {
        return Ok(None);
    };
    let d = r.desc;
    if !d.is_conforming_code() && (d.dpl < s.cpl() || d.dpl < selector::rpl(sel)) {
        return Ok(None);
    }
    Ok(Some(d))
}

/// LAR/LSL r, r/m16 (SDM Vol. 2A): ZF = 1 and the access rights / expanded limit in the
/// destination when the descriptor is visible and of a type the instruction accepts;
/// otherwise ZF = 0 and the destination is unchanged. LAR's 32-bit result is the second
/// descriptor dword masked with 0x00F0FF00 (the SDM's 0x00FxFF00 with the undefined
/// nibble read as 0, as QEMU does).
pub(crate) fn lar_lsl(s: &mut VcpuState, bus: &mut impl GuestBus, cx: &Ctx<'_>) -> Res {
    require_protected(s)?;
    let sel = read_selector_operand(s, bus, cx)?;
    let lar = cx.instr.mnemonic() == Mnemonic::Lar;
    let d = visible(s, bus, sel)?;
    let ok = d.filter(|d| {
        // SDM Vol. 2A, LAR and LSL: the system types each may name.
        let segment_like = matches!(
            d.typ,
            TSS16_AVAILABLE | LDT | TSS16_BUSY | TSS32_AVAILABLE | TSS32_BUSY
        );
        d.s || segment_like || (lar && matches!(d.typ, CALL_GATE16 | TASK_GATE | CALL_GATE32))
    });
    s.set_zf(ok.is_some());
    if let Some(d) = ok {
        let dst = cx.instr.op_register(0);
        let v = if lar {
            ((d.encode() >> 32) as u32) & 0x00f0_ff00
        } else {
            d.byte_limit()
        };
        write_gpr(s, dst, v);
    }
    Ok(Outcome::Next(Effects::NONE))
}

/// VERR/VERW r/m16: ZF = 1 when the segment is readable (VERR: data or readable code) or
/// writable (VERW: writable data) at the current privilege.
pub(crate) fn verr_verw(s: &mut VcpuState, bus: &mut impl GuestBus, cx: &Ctx<'_>) -> Res {
    require_protected(s)?;
    let sel = read_selector_operand(s, bus, cx)?;
    let d = visible(s, bus, sel)?;
    let ok = match d {
        Some(d) if cx.instr.mnemonic() == Mnemonic::Verr => d.is_data() || d.is_readable_code(),
        Some(d) => d.is_writable_data(),
        None => false,
    };
    s.set_zf(ok);
    Ok(Outcome::Next(Effects::NONE))
}
