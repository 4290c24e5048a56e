//! Descriptor-table registers and segment inspection: SGDT/SIDT, SLDT/STR, SMSW,
//! LGDT/LIDT, LLDT, LTR, LMSW, LAR/LSL, VERR/VERW.

use super::operands::{read_mem, read_rm, rm_operand, write_gpr, write_mem, Rm};
use super::{require_cpl0, require_protected, Ctx, Outcome, Res};
use crate::vcpu::descriptor::{selector, system_type, TYPE_TSS_BUSY};
use crate::vcpu::segments::fetch_descriptor;
use crate::vcpu::state::{cr0, Segment, TableReg, VcpuState};
use crate::vcpu::{Effects, Fault, GuestBus};
use iced_x86::{Code, Mnemonic};

fn mem_operand(s: &VcpuState, cx: &Ctx<'_>) -> Result<(crate::vcpu::SegReg, u32), Fault> {
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
        _ => store16(s, bus, rm, s.cr0 as u16)?,
    }
    Ok(Outcome::Next(Effects::NONE))
}

/// LGDT/LIDT m16&32: CPL 0. A 16-bit operand size keeps only 24 bits of the base.
pub(crate) fn load_table(s: &mut VcpuState, bus: &mut impl GuestBus, cx: &Ctx<'_>) -> Res {
    let (seg, off) = mem_operand(s, cx)?;
    require_cpl0(s)?;
    let limit = read_mem(s, bus, seg, off, 2)? as u16;
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
    Ok(read_rm(s, bus, rm, 2)? as u16)
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
        d.s || if lar {
            matches!(d.typ, 1 | 2 | 3 | 4 | 5 | 9 | 11 | 12)
        } else {
            matches!(d.typ, 1 | 2 | 3 | 9 | 11)
        }
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

#[cfg(test)]
mod tests {
    use crate::vcpu::descriptor::{Descriptor, TYPE_TSS_BUSY};
    use crate::vcpu::emulate::test_util::exec;
    use crate::vcpu::emulate::Emulated;
    use crate::vcpu::state::{cr0, eflags, gpr};
    use crate::vcpu::testbus::{flat, system, TestBus, GDT, LDT};
    use crate::vcpu::{Fault, VcpuState};

    fn kernel() -> (VcpuState, TestBus) {
        let bus = TestBus::new();
        let s = bus.protected_state();
        (s, bus)
    }

    #[test]
    fn sgdt_sidt_store_six_bytes() {
        let (mut s, mut bus) = kernel();
        s.gdtr.base = 0xc123_4567;
        bus.enter_user(&mut s);
        // sgdt [0x500] works from CPL 3 (no UMIP in the model).
        exec(
            &mut s,
            &mut bus,
            &[0x0f, 0x01, 0x05, 0x00, 0x05, 0x00, 0x00],
        )
        .unwrap();
        assert_eq!(bus.read_u16(0x500), 0xff);
        assert_eq!(bus.read_u32(0x502), 0xc123_4567);
        // o16 sidt [0x510]: 24-bit base, high byte 0.
        s.idtr.base = 0xc0ab_cdef;
        exec(
            &mut s,
            &mut bus,
            &[0x66, 0x0f, 0x01, 0x0d, 0x10, 0x05, 0x00, 0x00],
        )
        .unwrap();
        assert_eq!(bus.read_u32(0x512), 0x00ab_cdef);
        // A write past the DS limit: #GP(0), nothing written.
        s.sreg_mut(crate::vcpu::SegReg::Ds).limit = 0x503;
        bus.write_u32(0x500, 0);
        let r = exec(
            &mut s,
            &mut bus,
            &[0x0f, 0x01, 0x05, 0x00, 0x05, 0x00, 0x00],
        );
        assert_eq!(r, Err(Fault::gp0()));
        assert_eq!(bus.read_u32(0x500), 0);
    }

    #[test]
    fn sldt_str_smsw_forms() {
        let (mut s, mut bus) = kernel();
        s.gpr[gpr::EAX] = 0xffff_ffff;
        exec(&mut s, &mut bus, &[0x0f, 0x00, 0xc8]).unwrap(); // str eax
        assert_eq!(s.gpr[gpr::EAX], 0x28);
        s.gpr[gpr::EAX] = 0xffff_ffff;
        exec(&mut s, &mut bus, &[0x66, 0x0f, 0x00, 0xc0]).unwrap(); // sldt ax
        assert_eq!(s.gpr[gpr::EAX], 0xffff_0000);
        s.cr0 |= cr0::PG;
        exec(&mut s, &mut bus, &[0x0f, 0x01, 0xe0]).unwrap(); // smsw eax
        assert_eq!(s.gpr[gpr::EAX], s.cr0);
        bus.write_u32(0x500, 0xffff_ffff);
        exec(
            &mut s,
            &mut bus,
            &[0x0f, 0x01, 0x25, 0x00, 0x05, 0x00, 0x00],
        )
        .unwrap(); // smsw [0x500]
        assert_eq!(bus.read_u32(0x500), 0xffff_0011);
        // SLDT in real mode: #UD.
        let mut r = VcpuState::reset();
        r.eip = 0x7000;
        assert_eq!(
            exec(&mut r, &mut bus, &[0x0f, 0x00, 0xc0]),
            Err(Fault::ud())
        );
    }

    #[test]
    fn lgdt_lidt_need_cpl0() {
        let (mut s, mut bus) = kernel();
        bus.write_u16(0x500, 0x3ff);
        bus.write_u32(0x502, 0xc100_0000);
        let lgdt = [0x0f, 0x01, 0x15, 0x00, 0x05, 0x00, 0x00];
        let r = exec(&mut s, &mut bus, &lgdt).unwrap();
        assert!(matches!(r, Emulated::Done(e) if e.descriptor_tables_changed));
        assert_eq!((s.gdtr.base, s.gdtr.limit), (0xc100_0000, 0x3ff));
        // o16 lidt: 24-bit base.
        exec(
            &mut s,
            &mut bus,
            &[0x66, 0x0f, 0x01, 0x1d, 0x00, 0x05, 0x00, 0x00],
        )
        .unwrap();
        assert_eq!(s.idtr.base, 0x0000_0000);
        bus.enter_user(&mut s);
        assert_eq!(exec(&mut s, &mut bus, &lgdt), Err(Fault::gp0()));
    }

    #[test]
    fn lldt_and_ltr_checks() {
        let (mut s, mut bus) = kernel();
        let lldt_ax = [0x0f, 0x00, 0xd0];
        let ltr_ax = [0x0f, 0x00, 0xd8];
        s.gpr[gpr::EAX] = 0x30;
        exec(&mut s, &mut bus, &lldt_ax).unwrap();
        assert_eq!((s.ldtr.base, s.ldtr.limit), (LDT, 0x17));
        // Now an LDT selector works for data loads.
        bus.write_u64(LDT + 8, flat(0x3, 0).encode());
        s.gpr[gpr::ECX] = 0x0c;
        exec(&mut s, &mut bus, &[0x8e, 0xd9]).unwrap(); // mov ds, cx
        assert_eq!(s.sreg(crate::vcpu::SegReg::Ds).selector, 0x0c);
        // LLDT of a data segment: #GP(sel); of a TI=1 selector: #GP(sel).
        s.gpr[gpr::EAX] = 0x10;
        assert_eq!(exec(&mut s, &mut bus, &lldt_ax), Err(Fault::gp(0x10)));
        s.gpr[gpr::EAX] = 0x34;
        assert_eq!(exec(&mut s, &mut bus, &lldt_ax), Err(Fault::gp(0x34)));
        // LTR of the busy TSS already in TR: #GP(sel). An available one gets busy.
        s.gpr[gpr::EAX] = 0x28;
        assert_eq!(exec(&mut s, &mut bus, &ltr_ax), Err(Fault::gp(0x28)));
        bus.set_gdt(0x58, system(0x4000, 0x67, 9));
        s.gpr[gpr::EAX] = 0x58;
        exec(&mut s, &mut bus, &ltr_ax).unwrap();
        assert_eq!(s.tr.base, 0x4000);
        let d = Descriptor::decode(bus.read_u64(GDT + 0x58));
        assert_eq!(d.typ, 9 | TYPE_TSS_BUSY);
        s.gpr[gpr::EAX] = 0;
        assert_eq!(exec(&mut s, &mut bus, &ltr_ax), Err(Fault::gp0()));
    }

    #[test]
    fn lmsw_cannot_clear_pe() {
        let (mut s, mut bus) = kernel();
        s.cr0 |= cr0::TS;
        s.gpr[gpr::EAX] = 0xfff0 | cr0::MP;
        exec(&mut s, &mut bus, &[0x0f, 0x01, 0xf0]).unwrap(); // lmsw ax
        assert_eq!(s.cr0, cr0::PE | cr0::ET | cr0::MP);
        // From real mode LMSW can enter protected mode.
        let mut r = VcpuState::reset();
        r.eip = 0x7000;
        r.gpr[gpr::EAX] = 1;
        let e = exec(&mut r, &mut bus, &[0x0f, 0x01, 0xf0]).unwrap();
        assert!(matches!(e, Emulated::Done(e) if e.paging_mode_changed));
        assert!(r.protected());
        bus.enter_user(&mut s);
        assert_eq!(
            exec(&mut s, &mut bus, &[0x0f, 0x01, 0xf0]),
            Err(Fault::gp0())
        );
    }

    #[test]
    fn lar_lsl_results_and_privilege() {
        let (mut s, mut bus) = kernel();
        bus.enter_user(&mut s);
        s.gpr[gpr::ECX] = 0x23;
        exec(&mut s, &mut bus, &[0x0f, 0x02, 0xc1]).unwrap(); // lar eax, ecx
        assert_ne!(s.eflags & eflags::ZF, 0);
        // 0x00CFF300 masked with 0x00F0FF00.
        assert_eq!(s.gpr[gpr::EAX], 0x00c0_f300);
        exec(&mut s, &mut bus, &[0x0f, 0x03, 0xc1]).unwrap(); // lsl eax, ecx
        assert_eq!(s.gpr[gpr::EAX], u32::MAX);
        // Kernel data from CPL 3: ZF = 0, destination unchanged.
        s.gpr[gpr::ECX] = 0x10;
        exec(&mut s, &mut bus, &[0x0f, 0x02, 0xc1]).unwrap();
        assert_eq!(s.eflags & eflags::ZF, 0);
        assert_eq!(s.gpr[gpr::EAX], u32::MAX);
        // Conforming code is visible at any privilege; a call gate is visible to LAR only.
        let (mut k, mut bus) = kernel();
        k.gpr[gpr::ECX] = 0x48;
        exec(&mut k, &mut bus, &[0x0f, 0x03, 0xc1]).unwrap();
        assert_ne!(k.eflags & eflags::ZF, 0);
        bus.set_gdt(
            0x58,
            Descriptor {
                typ: 12,
                present: true,
                ..Descriptor::default()
            },
        );
        k.gpr[gpr::ECX] = 0x58;
        exec(&mut k, &mut bus, &[0x0f, 0x03, 0xc1]).unwrap();
        assert_eq!(k.eflags & eflags::ZF, 0);
        exec(&mut k, &mut bus, &[0x0f, 0x02, 0xc1]).unwrap();
        assert_ne!(k.eflags & eflags::ZF, 0);
        assert_eq!(k.gpr[gpr::EAX], 0x8c00);
    }

    #[test]
    fn verr_verw() {
        let (mut s, mut bus) = kernel();
        s.gpr[gpr::EAX] = 0x38; // execute-only code
        exec(&mut s, &mut bus, &[0x0f, 0x00, 0xe0]).unwrap(); // verr ax
        assert_eq!(s.eflags & eflags::ZF, 0);
        s.gpr[gpr::EAX] = 0x08;
        exec(&mut s, &mut bus, &[0x0f, 0x00, 0xe0]).unwrap();
        assert_ne!(s.eflags & eflags::ZF, 0);
        exec(&mut s, &mut bus, &[0x0f, 0x00, 0xe8]).unwrap(); // verw ax
        assert_eq!(s.eflags & eflags::ZF, 0);
        s.gpr[gpr::EAX] = 0x10;
        exec(&mut s, &mut bus, &[0x0f, 0x00, 0xe8]).unwrap();
        assert_ne!(s.eflags & eflags::ZF, 0);
        // A selector beyond the GDT: ZF = 0, no fault.
        s.gpr[gpr::EAX] = 0x800;
        exec(&mut s, &mut bus, &[0x0f, 0x00, 0xe8]).unwrap();
        assert_eq!(s.eflags & eflags::ZF, 0);
        // Not available in real mode.
        let mut r = VcpuState::reset();
        r.eip = 0x7000;
        assert_eq!(
            exec(&mut r, &mut bus, &[0x0f, 0x00, 0xe0]),
            Err(Fault::ud())
        );
    }
}
