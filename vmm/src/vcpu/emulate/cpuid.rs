//! The CPU model the guest sees through CPUID: a P6-family 32-bit Intel processor
//! (family 6, model 13, stepping 8 — the Pentium M generation: PAE with NX, SSE2, no
//! long mode). Only features the monitor really provides are reported:
//!
//! - EDX: FPU, DE, PSE, TSC, MSR, PAE, CX8, SEP, MTRR, PGE, CMOV, PAT, CLFSH, MMX, FXSR,
//!   SSE, SSE2. Not: VME (no virtual-8086 mode), MCE/MCA (no machine-check
//!   architecture), PSE-36, ACPI/TM, HTT. APIC while IA32_APIC_BASE.EN is set (SDM:
//!   the flag follows the global enable).
//! - ECX: only the user-level instruction-set extensions the host itself has and that
//!   need no OS or monitor support (SSE3, PCLMULQDQ, SSSE3, CX16, SSE4.1, SSE4.2,
//!   MOVBE, POPCNT, AES), added with [`CpuModel::with_host_ecx`]. Never MONITOR, VMX,
//!   PCID, x2APIC, XSAVE/OSXSAVE/AVX (no XCR0 is emulated).
//! - 0x8000_0001: EDX.NX only (EFER.NXE is honoured by shadow paging) — no long mode,
//!   no SYSCALL (Intel in 32-bit mode).

use super::{Outcome, Res};
use crate::vcpu::state::{gpr, VcpuState};
use crate::vcpu::Effects;

/// CPUID.1:EDX bits of the model.
pub const LEAF1_EDX: u32 = (1 << 0) // FPU
    | (1 << 2) // DE
    | (1 << 3) // PSE
    | (1 << 4) // TSC
    | (1 << 5) // MSR
    | (1 << 6) // PAE
    | (1 << 8) // CX8
    | LEAF1_EDX_APIC
    | (1 << 11) // SEP
    | (1 << 12) // MTRR
    | (1 << 13) // PGE
    | (1 << 15) // CMOV
    | (1 << 16) // PAT
    | (1 << 19) // CLFSH
    | (1 << 23) // MMX
    | (1 << 24) // FXSR
    | (1 << 25) // SSE
    | (1 << 26); // SSE2

/// CPUID.1:EDX.APIC: an on-chip local APIC (cleared while IA32_APIC_BASE.EN is clear).
pub const LEAF1_EDX_APIC: u32 = 1 << 9;

/// CPUID.1:ECX bits that may be passed through from the host.
pub const LEAF1_ECX_PASSTHROUGH: u32 = (1 << 0) // SSE3
    | (1 << 1) // PCLMULQDQ
    | (1 << 9) // SSSE3
    | (1 << 13) // CX16
    | (1 << 19) // SSE4.1
    | (1 << 20) // SSE4.2
    | (1 << 22) // MOVBE
    | (1 << 23) // POPCNT
    | (1 << 25); // AES

/// CPUID.8000_0001:EDX.NX: execute-disable pages under PAE (EFER.NXE).
pub const EXT_EDX_NX: u32 = 1 << 20;

/// Highest basic leaf.
pub const MAX_BASIC_LEAF: u32 = 1;
/// Highest extended leaf (the brand string ends at 0x8000_0004).
pub const MAX_EXTENDED_LEAF: u32 = 0x8000_0004;
/// Family 6, model 13, stepping 8.
pub const SIGNATURE: u32 = (6 << 8) | (13 << 4) | 8;

const BRAND: &[u8; 48] = b"Virtual IA-32 P6 processor\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";

/// The features CPUID reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuModel {
    /// CPUID.1:ECX.
    pub leaf1_ecx: u32,
    /// CPUID.1:EDX.
    pub leaf1_edx: u32,
    /// The initial APIC ID, CPUID.1:EBX[31:24].
    pub apic_id: u8,
}

impl Default for CpuModel {
    fn default() -> Self {
        Self {
            leaf1_ecx: 0,
            leaf1_edx: LEAF1_EDX,
            apic_id: 0,
        }
    }
}

impl CpuModel {
    /// The model plus the pass-through extensions the host reports in its own CPUID.1:ECX.
    pub fn with_host_ecx(host_ecx: u32) -> Self {
        Self {
            leaf1_ecx: host_ecx & LEAF1_ECX_PASSTHROUGH,
            ..Self::default()
        }
    }

    /// EAX, EBX, ECX, EDX for `leaf` (the model has no sub-leaves). Leaves beyond the
    /// highest basic leaf answer like the highest basic leaf, as Intel processors do.
    pub fn query(&self, leaf: u32) -> [u32; 4] {
        match leaf {
            // "GenuineIntel" in EBX, EDX, ECX.
            0 => [MAX_BASIC_LEAF, 0x756e_6547, 0x6c65_746e, 0x4965_6e69],
            // CLFLUSH line size 8 × 8 bytes in EBX[15:8], the initial APIC ID in EBX[31:24].
            1 => [
                SIGNATURE,
                (u32::from(self.apic_id) << 24) | (8 << 8),
                self.leaf1_ecx,
                self.leaf1_edx,
            ],
            0x8000_0000 => [MAX_EXTENDED_LEAF, 0, 0, 0],
            0x8000_0001 => [0, 0, 0, EXT_EDX_NX],
            0x8000_0002..=0x8000_0004 => {
                // Sixteen bytes of the brand string per leaf, four per register.
                let part = BRAND.chunks_exact(16).nth((leaf - 0x8000_0002) as usize);
                let mut regs = [0; 4];
                for (r, w) in regs
                    .iter_mut()
                    .zip(part.into_iter().flat_map(|p| p.chunks_exact(4)))
                {
                    *r = w.iter().rev().fold(0, |v, &b| (v << 8) | u32::from(b));
                }
                regs
            }
            _ => self.query(MAX_BASIC_LEAF),
        }
    }
}

/// CPUID: EAX, EBX, ECX, EDX = the model's answer for leaf EAX. Not privileged.
pub(crate) fn emulate(s: &mut VcpuState) -> Res {
    let leaf = s.gpr[gpr::EAX];
    let mut r = s.cpu_model.query(leaf);
    // Leaf 1, and the leaves above the highest basic one that answer as it does.
    let as_leaf1 = leaf == 1 || (MAX_BASIC_LEAF < leaf && leaf < 0x8000_0000);
    if as_leaf1 && s.msr.apic_base & super::msr::APIC_BASE_EN == 0 {
        r[3] &= !LEAF1_EDX_APIC;
    }
    s.gpr[gpr::EAX] = r[0];
    s.gpr[gpr::EBX] = r[1];
    s.gpr[gpr::ECX] = r[2];
    s.gpr[gpr::EDX] = r[3];
    Ok(Outcome::Next(Effects::NONE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x86::cr4;

    #[test]
    fn vendor_and_features() {
        let m = CpuModel::default();
        let [_, b, c, d] = m.query(0);
        let v: Vec<u8> = [b, d, c].iter().flat_map(|r| r.to_le_bytes()).collect();
        assert_eq!(&v, b"GenuineIntel");
        let [a, _, c, d] = m.query(1);
        assert_eq!((a >> 8) & 0xf, 6);
        assert_eq!(c, 0);
        assert_ne!(d & (1 << 6), 0, "PAE");
        assert_ne!(d & LEAF1_EDX_APIC, 0, "APIC");
        assert_eq!(m.query(0x8000_0001)[3] & (1 << 29), 0, "no long mode");
        assert_ne!(
            m.query(0x8000_0001)[3] & EXT_EDX_NX,
            0,
            "NX, which EFER.NXE enables"
        );
        // Every CR4 feature the model accepts is backed by a CPUID bit.
        assert_ne!(d & (1 << 3), 0);
        assert_ne!(cr4::SUPPORTED & cr4::PSE, 0);
    }

    #[test]
    fn apic_flag_follows_the_global_enable() {
        let mut s = VcpuState::reset();
        for (enabled, leaf) in [(true, 1), (false, 1), (false, 5)] {
            if !enabled {
                s.msr.apic_base &= !super::super::msr::APIC_BASE_EN;
            }
            s.gpr[gpr::EAX] = leaf;
            assert!(emulate(&mut s).is_ok());
            assert_eq!(
                s.gpr[gpr::EDX] & LEAF1_EDX_APIC != 0,
                enabled,
                "leaf {leaf}"
            );
        }
    }

    #[test]
    fn host_passthrough_is_filtered() {
        // Host claims VMX (5), MONITOR (3), AVX (28) and SSE4.2 (20).
        let m = CpuModel::with_host_ecx((1 << 5) | (1 << 3) | (1 << 28) | (1 << 20));
        assert_eq!(m.query(1)[2], 1 << 20);
    }

    #[test]
    fn brand_string_and_out_of_range_leaves() {
        let m = CpuModel::default();
        let mut b = Vec::new();
        for l in 0x8000_0002..=0x8000_0004u32 {
            for r in m.query(l) {
                b.extend_from_slice(&r.to_le_bytes());
            }
        }
        assert!(b.starts_with(b"Virtual IA-32 P6 processor\0"));
        assert_eq!(m.query(7), m.query(MAX_BASIC_LEAF));
    }
}
