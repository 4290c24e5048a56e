//! Model-specific registers and counters: RDMSR, WRMSR, RDPMC, RDTSC.

use super::{require_cpl0, Outcome, Res};
use crate::bits::{high32, low32};
use crate::vcpu::state::{gpr, VcpuState};
use crate::vcpu::{Effects, Fault, GuestBus};
use crate::x86::cr4;

/// MSR numbers the CPU model implements (SDM Vol. 4).
pub mod index {
    /// IA32_TIME_STAMP_COUNTER.
    pub const TSC: u32 = 0x10;
    /// IA32_PLATFORM_ID.
    pub const PLATFORM_ID: u32 = 0x17;
    /// IA32_APIC_BASE.
    pub const APIC_BASE: u32 = 0x1b;
    /// IA32_FEATURE_CONTROL.
    pub const FEATURE_CONTROL: u32 = 0x3a;
    /// IA32_BIOS_SIGN_ID (microcode revision).
    pub const BIOS_SIGN_ID: u32 = 0x8b;
    /// IA32_PMC0, IA32_PMC1.
    pub const PMC0: u32 = 0xc1;
    /// IA32_MTRRCAP.
    pub const MTRRCAP: u32 = 0xfe;
    /// IA32_SYSENTER_CS.
    pub const SYSENTER_CS: u32 = 0x174;
    /// IA32_SYSENTER_ESP.
    pub const SYSENTER_ESP: u32 = 0x175;
    /// IA32_SYSENTER_EIP.
    pub const SYSENTER_EIP: u32 = 0x176;
    /// IA32_MCG_CAP.
    pub const MCG_CAP: u32 = 0x179;
    /// IA32_MCG_STATUS.
    pub const MCG_STATUS: u32 = 0x17a;
    /// IA32_PERFEVTSEL0, IA32_PERFEVTSEL1.
    pub const PERFEVTSEL0: u32 = 0x186;
    /// IA32_MISC_ENABLE.
    pub const MISC_ENABLE: u32 = 0x1a0;
    /// IA32_MTRR_PHYSBASE0 (the variable MTRRs run to 0x20F).
    pub const MTRR_PHYSBASE0: u32 = 0x200;
    /// IA32_MTRR_FIX64K_00000.
    pub const MTRR_FIX64K: u32 = 0x250;
    /// IA32_MTRR_FIX16K_80000, _A0000.
    pub const MTRR_FIX16K: u32 = 0x258;
    /// IA32_MTRR_FIX4K_C0000 .. _F8000.
    pub const MTRR_FIX4K: u32 = 0x268;
    /// IA32_PAT.
    pub const PAT: u32 = 0x277;
    /// IA32_MTRR_DEF_TYPE.
    pub const MTRR_DEF_TYPE: u32 = 0x2ff;
    /// IA32_EFER.
    pub const EFER: u32 = 0xc000_0080;
}

/// IA32_MTRRCAP: 8 variable ranges, fixed ranges, write-combining (SDM Vol. 3A §11.11.1).
const MTRRCAP_VALUE: u64 = 8 | (1 << 8) | (1 << 10);
/// IA32_FEATURE_CONTROL: locked with VMX disabled, as firmware leaves a CPU without VMX.
const FEATURE_CONTROL_VALUE: u64 = 1;

fn fixed_mtrr_slot(msr: u32) -> Option<usize> {
    match msr {
        index::MTRR_FIX64K => Some(0),
        0x258 | 0x259 => Some(1 + (msr - index::MTRR_FIX16K) as usize),
        0x268..=0x26f => Some(3 + (msr - index::MTRR_FIX4K) as usize),
        _ => None,
    }
}

/// The slot of MSR `msr` in a bank of consecutive MSRs from `first` (looked up with
/// `get`: a slot past the bank is an MSR the model does not have).
fn slot(msr: u32, first: u32) -> usize {
    usize::try_from(msr.wrapping_sub(first)).unwrap_or(usize::MAX)
}

/// Memory types valid in PAT entries and MTRRs (UC, WC, WT, WP, WB; PAT also UC-).
fn valid_mem_type(t: u64, pat: bool) -> bool {
    matches!(t, 0 | 1 | 4 | 5 | 6) || (pat && t == 7)
}

/// The value of MSR `msr`, or `None` when the model has no such MSR.
pub fn read(s: &VcpuState, host_tsc: u64, msr: u32) -> Option<u64> {
    let m = &s.msr;
    Some(match msr {
        index::TSC => host_tsc.wrapping_add(m.tsc_offset),
        index::PLATFORM_ID | index::BIOS_SIGN_ID | index::MCG_CAP => 0,
        index::APIC_BASE => m.apic_base,
        index::FEATURE_CONTROL => FEATURE_CONTROL_VALUE,
        0xc1 | 0xc2 => *m.perf_ctr.get(slot(msr, index::PMC0))?,
        index::MTRRCAP => MTRRCAP_VALUE,
        index::SYSENTER_CS => u64::from(m.sysenter_cs),
        index::SYSENTER_ESP => u64::from(m.sysenter_esp),
        index::SYSENTER_EIP => u64::from(m.sysenter_eip),
        index::MCG_STATUS => m.mcg_status,
        0x186 | 0x187 => *m.perf_evtsel.get(slot(msr, index::PERFEVTSEL0))?,
        index::MISC_ENABLE => m.misc_enable,
        0x200..=0x20f => *m.mtrr_var.get(slot(msr, index::MTRR_PHYSBASE0))?,
        index::PAT => m.pat,
        index::MTRR_DEF_TYPE => m.mtrr_def_type,
        index::EFER => m.efer,
        _ => *m.mtrr_fixed.get(fixed_mtrr_slot(msr)?)?,
    })
}

/// Writes MSR `msr`; `Err` (#GP(0)) for an unknown or read-only MSR or a value with
/// reserved bits set. Returns the effects (a TSC write).
///
/// # Errors
/// #GP(0) as above.
pub fn write(s: &mut VcpuState, host_tsc: u64, msr: u32, v: u64) -> Result<Effects, Fault> {
    let m = &mut s.msr;
    let gp = Err(Fault::gp0());
    match msr {
        index::TSC => {
            m.tsc_offset = v.wrapping_sub(host_tsc);
            return Ok(Effects {
                tsc_written: true,
                ..Effects::NONE
            });
        }
        // Writing the microcode signature MSR is how software asks for it; it reads 0.
        index::BIOS_SIGN_ID => {}
        index::APIC_BASE => {
            // Base (bits 12..35), EN (11), BSP (8, read-only). The register page stays at
            // its reset address: relocating it is refused as unsupported. Once EN is
            // cleared the APIC is gone until reset (P6 family), so EN cannot come back.
            if v & !0xf_ffff_f900 != 0 || v & APIC_BASE_ADDRESS != m.apic_base & APIC_BASE_ADDRESS {
                return gp;
            }
            let en = v & m.apic_base & APIC_BASE_EN;
            m.apic_base = (m.apic_base & !APIC_BASE_EN) | en;
        }
        0xc1 | 0xc2 => {
            *m.perf_ctr
                .get_mut(slot(msr, index::PMC0))
                .ok_or(Fault::gp0())? = v & 0xff_ffff_ffff;
        }
        index::SYSENTER_CS => m.sysenter_cs = low32(v),
        index::SYSENTER_ESP => m.sysenter_esp = low32(v),
        index::SYSENTER_EIP => m.sysenter_eip = low32(v),
        index::MCG_STATUS => {
            if v != 0 {
                return gp;
            }
            m.mcg_status = 0;
        }
        0x186 | 0x187 => {
            if v >> 32 != 0 {
                return gp;
            }
            *m.perf_evtsel
                .get_mut(slot(msr, index::PERFEVTSEL0))
                .ok_or(Fault::gp0())? = v;
        }
        index::MISC_ENABLE => m.misc_enable = v,
        0x200..=0x20f => {
            let i = slot(msr, index::MTRR_PHYSBASE0);
            // PHYSBASE: type in bits 0..7, base 12..35; PHYSMASK: valid bit 11, mask 12..35.
            let bad = if i.is_multiple_of(2) {
                v & !0xf_ffff_f0ff != 0 || !valid_mem_type(v & 0xff, false)
            } else {
                v & !0xf_ffff_f800 != 0
            };
            if bad {
                return gp;
            }
            *m.mtrr_var.get_mut(i).ok_or(Fault::gp0())? = v;
        }
        index::PAT => {
            if (0..8).any(|k| !valid_mem_type((v >> (8 * k)) & 0xff, true)) {
                return gp;
            }
            m.pat = v;
        }
        index::MTRR_DEF_TYPE => {
            if v & !0xcff != 0 || !valid_mem_type(v & 0xff, false) {
                return gp;
            }
            m.mtrr_def_type = v;
        }
        index::EFER => {
            // Only NXE: the model has no long mode and no SYSCALL.
            if v & !EFER_NXE != 0 {
                return gp;
            }
            m.efer = v;
        }
        _ => match fixed_mtrr_slot(msr).and_then(|i| m.mtrr_fixed.get_mut(i)) {
            Some(r) if (0..8).all(|k| valid_mem_type((v >> (8 * k)) & 0xff, false)) => *r = v,
            _ => return gp,
        },
    }
    Ok(Effects::NONE)
}

/// IA32_APIC_BASE.EN (bit 11): the local APIC is globally enabled.
pub const APIC_BASE_EN: u64 = 1 << 11;
/// IA32_APIC_BASE bits 35:12: the register page's address.
const APIC_BASE_ADDRESS: u64 = 0xf_ffff_f000;

/// IA32_EFER.NXE (bit 11): the XD bit of PAE entries is honoured.
pub const EFER_NXE: u64 = 1 << 11;

/// RDMSR: CPL 0; EDX:EAX = MSR[ECX]; #GP(0) for an MSR the model does not have.
pub(crate) fn rdmsr(s: &mut VcpuState, bus: &mut impl GuestBus) -> Res {
    require_cpl0(s)?;
    let v = read(s, bus.host_tsc(), s.gpr[gpr::ECX]).ok_or(Fault::gp0())?;
    s.gpr[gpr::EAX] = low32(v);
    s.gpr[gpr::EDX] = high32(v);
    Ok(Outcome::Next(Effects::NONE))
}

/// WRMSR: CPL 0; MSR[ECX] = EDX:EAX with the checks of [`write`].
pub(crate) fn wrmsr(s: &mut VcpuState, bus: &mut impl GuestBus) -> Res {
    require_cpl0(s)?;
    let v = u64::from(s.gpr[gpr::EDX]) << 32 | u64::from(s.gpr[gpr::EAX]);
    let e = write(s, bus.host_tsc(), s.gpr[gpr::ECX], v)?;
    Ok(Outcome::Next(e))
}

/// RDPMC: allowed at CPL 0 or with CR4.PCE; counters 0 and 1 exist (P6 has two), any
/// other ECX is #GP(0). The counters do not count events (see [`crate::vcpu::state::Msrs`]).
pub(crate) fn rdpmc(s: &mut VcpuState) -> Res {
    if s.protected() && s.cpl() != 0 && s.cr4 & cr4::PCE == 0 {
        return Err(Fault::gp0().into());
    }
    // Counters 0 and 1; any other ECX is #GP(0).
    let n = s.gpr[gpr::ECX];
    let Some(&v) = s.msr.perf_ctr.get(slot(n, 0)) else {
        return Err(Fault::gp0().into());
    };
    s.gpr[gpr::EAX] = low32(v);
    s.gpr[gpr::EDX] = high32(v) & 0xff;
    Ok(Outcome::Next(Effects::NONE))
}

/// RDTSC (it reaches the emulator only when the run loop traps it): #GP(0) at CPL > 0
/// with CR4.TSD; EDX:EAX = host TSC + the guest's offset.
pub(crate) fn rdtsc(s: &mut VcpuState, bus: &mut impl GuestBus) -> Res {
    if s.protected() && s.cpl() != 0 && s.cr4 & cr4::TSD != 0 {
        return Err(Fault::gp0().into());
    }
    let v = bus.host_tsc().wrapping_add(s.msr.tsc_offset);
    s.gpr[gpr::EAX] = low32(v);
    s.gpr[gpr::EDX] = high32(v);
    Ok(Outcome::Next(Effects::NONE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apic_base_refuses_relocation_and_keeps_a_global_disable() {
        let mut s = VcpuState::reset();
        let reset = s.msr.apic_base;
        assert_eq!(reset, 0xfee0_0900);
        assert!(write(&mut s, 0, index::APIC_BASE, 0xfed0_0900).is_err());
        assert!(write(&mut s, 0, index::APIC_BASE, reset | (1 << 10)).is_err());
        // BSP is read-only.
        write(&mut s, 0, index::APIC_BASE, 0xfee0_0800).unwrap();
        assert_eq!(read(&s, 0, index::APIC_BASE), Some(reset));
        write(&mut s, 0, index::APIC_BASE, 0xfee0_0100).unwrap();
        assert_eq!(read(&s, 0, index::APIC_BASE), Some(0xfee0_0100));
        write(&mut s, 0, index::APIC_BASE, reset).unwrap();
        assert_eq!(read(&s, 0, index::APIC_BASE), Some(0xfee0_0100));
    }
}
