//! Control and debug registers and cache/TLB control: MOV CRn/DRn, CLTS, INVLPG,
//! WBINVD/INVD, HLT.

use super::operands::{read_gpr, rm_operand, write_gpr, Rm};
use super::{require_cpl0, Ctx, Outcome, Res, Stop};
use crate::addr::GuestLinear;
use crate::vcpu::state::{cr0, cr4, VcpuState, DR6_INIT, DR7_INIT};
use crate::vcpu::{Effects, Exception, Fault};
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
    if n > 7 {
        return Err(Fault::ud().into());
    }
    if to_reg {
        write_gpr(s, gpr, s.dr[n]);
    } else {
        let v = read_gpr(s, gpr);
        s.dr[n] = match n {
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

#[cfg(test)]
mod tests {
    use crate::addr::GuestLinear;
    use crate::vcpu::emulate::test_util::{decode_at, exec};
    use crate::vcpu::emulate::{emulate, Emulated};
    use crate::vcpu::state::{cr0, cr4, gpr};
    use crate::vcpu::testbus::TestBus;
    use crate::vcpu::{Effects, Fault};

    #[test]
    fn cr0_rules() {
        let mut bus = TestBus::new();
        let mut s = bus.protected_state();
        // mov cr0, eax (0F 22 C0)
        let i = decode_at(&[0x0f, 0x22, 0xc0], s.eip);
        s.gpr[gpr::EAX] = cr0::PG | cr0::PE | 0x100; // reserved bit 8 is ignored
        let r = emulate(&mut s, &mut bus, &i).unwrap();
        assert!(matches!(r, Emulated::Done(e) if e.paging_mode_changed));
        assert_eq!(s.cr0, cr0::PG | cr0::PE | cr0::ET);
        s.gpr[gpr::EAX] = cr0::PG;
        assert_eq!(emulate(&mut s, &mut bus, &i), Err(Fault::gp0()));
        s.gpr[gpr::EAX] = cr0::PE | cr0::NW;
        assert_eq!(emulate(&mut s, &mut bus, &i), Err(Fault::gp0()));
        // mov eax, cr0 (0F 20 C0) from CPL 3: #GP(0).
        bus.enter_user(&mut s);
        assert_eq!(
            exec(&mut s, &mut bus, &[0x0f, 0x20, 0xc0]),
            Err(Fault::gp0())
        );
    }

    #[test]
    fn cr3_cr4_and_invlpg_effects() {
        let mut bus = TestBus::new();
        let mut s = bus.protected_state();
        s.gpr[gpr::EBX] = 0x0010_0000;
        let r = exec(&mut s, &mut bus, &[0x0f, 0x22, 0xdb]).unwrap(); // mov cr3, ebx
        assert!(matches!(r, Emulated::Done(e) if e.cr3_written));
        assert_eq!(s.cr3, 0x0010_0000);
        s.gpr[gpr::EAX] = cr4::PSE | cr4::PGE;
        let i = decode_at(&[0x0f, 0x22, 0xe0], s.eip); // mov cr4, eax
        let r = emulate(&mut s, &mut bus, &i).unwrap();
        assert!(matches!(r, Emulated::Done(e) if e.paging_mode_changed));
        s.gpr[gpr::EAX] = 1 << 13; // VMXE: not offered
        assert_eq!(emulate(&mut s, &mut bus, &i), Err(Fault::gp0()));
        s.gpr[gpr::EAX] = 0x1000;
        let r = exec(&mut s, &mut bus, &[0x0f, 0x01, 0x38]).unwrap(); // invlpg [eax]
        assert_eq!(
            r,
            Emulated::Done(Effects {
                invlpg: Some(GuestLinear(0x1000)),
                ..Effects::NONE
            })
        );
        bus.enter_user(&mut s);
        assert_eq!(
            exec(&mut s, &mut bus, &[0x0f, 0x01, 0x38]),
            Err(Fault::gp0())
        );
    }

    #[test]
    fn debug_registers_alias_and_fixed_bits() {
        let mut bus = TestBus::new();
        let mut s = bus.protected_state();
        s.gpr[gpr::EAX] = 0;
        // mov dr7, eax ; mov ecx, dr5 (aliases DR7 without CR4.DE)
        exec(&mut s, &mut bus, &[0x0f, 0x23, 0xf8]).unwrap();
        exec(&mut s, &mut bus, &[0x0f, 0x21, 0xe9]).unwrap();
        assert_eq!(s.gpr[gpr::ECX], 0x400);
        // mov dr6, eax keeps the reserved ones.
        exec(&mut s, &mut bus, &[0x0f, 0x23, 0xf0]).unwrap();
        assert_eq!(s.dr[6], 0xffff_0ff0);
        // General detect: the next MOV DRn faults with #DB, DR6.BD set and GD cleared.
        s.gpr[gpr::EAX] = 1 << 13;
        exec(&mut s, &mut bus, &[0x0f, 0x23, 0xf8]).unwrap(); // mov dr7, eax
        let eip = s.eip;
        let r = exec(&mut s, &mut bus, &[0x0f, 0x21, 0xc1]); // mov ecx, dr0
        assert_eq!(r, Err(Fault::new(crate::vcpu::Exception::DB)));
        assert_eq!(
            (s.eip, s.dr[7] & (1 << 13), s.dr[6] & (1 << 13)),
            (eip, 0, 1 << 13)
        );
        s.cr4 |= cr4::DE;
        assert_eq!(
            exec(&mut s, &mut bus, &[0x0f, 0x21, 0xe9]),
            Err(Fault::ud())
        );
    }

    #[test]
    fn hlt_clts_wbinvd() {
        let mut bus = TestBus::new();
        let mut s = bus.protected_state();
        s.cr0 |= cr0::TS;
        exec(&mut s, &mut bus, &[0x0f, 0x06]).unwrap();
        assert_eq!(s.cr0 & cr0::TS, 0);
        let r = exec(&mut s, &mut bus, &[0x0f, 0x09]).unwrap();
        assert!(matches!(r, Emulated::Done(e) if e.cache_flush));
        let eip = s.eip;
        let r = emulate(&mut s, &mut bus, &decode_at(&[0xf4], eip)).unwrap();
        assert!(matches!(r, Emulated::Done(e) if e.halted));
        assert!(s.halted);
        assert_eq!(s.eip, eip + 1);
        bus.enter_user(&mut s);
        assert_eq!(exec(&mut s, &mut bus, &[0xf4]), Err(Fault::gp0()));
        assert_eq!(exec(&mut s, &mut bus, &[0x0f, 0x06]), Err(Fault::gp0()));
    }
}
