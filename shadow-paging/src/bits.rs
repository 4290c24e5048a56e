//! Bit layouts from the Intel SDM, Vol. 3A: control registers (§2.5), EFER (§2.2.1),
//! paging-structure entries (§4.3, §4.4) and the page-fault error code (§4.7).
//! Each item names the SDM field it decodes; nothing else in the crate spells a bit.

/// CR0.PE (bit 0): protection enable.
pub const CR0_PE: u32 = 1 << 0;
/// CR0.WP (bit 16): supervisor writes honour read-only pages.
pub const CR0_WP: u32 = 1 << 16;
/// CR0.NW (bit 29): not write-through; a change reloads the PAE PDPTEs.
pub const CR0_NW: u32 = 1 << 29;
/// CR0.CD (bit 30): cache disable; a change reloads the PAE PDPTEs.
pub const CR0_CD: u32 = 1 << 30;
/// CR0.PG (bit 31): paging enable.
pub const CR0_PG: u32 = 1 << 31;

/// CR4.PSE (bit 4): 4 MiB pages in 32-bit paging.
pub const CR4_PSE: u32 = 1 << 4;
/// CR4.PAE (bit 5): physical address extension.
pub const CR4_PAE: u32 = 1 << 5;
/// CR4.PGE (bit 7): global pages survive CR3 writes.
pub const CR4_PGE: u32 = 1 << 7;

/// IA32_EFER.NXE (bit 11): the XD bit of PAE entries is honoured.
pub const EFER_NXE: u64 = 1 << 11;

/// The MAXPHYADDR the monitor's CPU model reports (CPUID 80000008H, EAX bits 7:0); it sets
/// which PAE and PSE-36 address bits are reserved.
pub const MAX_PHYS_ADDR_BITS: u32 = 36;

/// Fields shared by every paging-structure entry format (SDM Tables 4-4..4-11).
pub mod entry {
    use super::MAX_PHYS_ADDR_BITS;

    /// P (bit 0): present.
    pub const P: u64 = 1 << 0;
    /// R/W (bit 1): writes allowed.
    pub const RW: u64 = 1 << 1;
    /// U/S (bit 2): user-mode accesses allowed.
    pub const US: u64 = 1 << 2;
    /// A (bit 5): accessed.
    pub const A: u64 = 1 << 5;
    /// D (bit 6): dirty (entries that map a page).
    pub const D: u64 = 1 << 6;
    /// PS (bit 7): page size (PDEs): the entry maps a large page.
    pub const PS: u64 = 1 << 7;
    /// G (bit 8): global (entries that map a page).
    pub const G: u64 = 1 << 8;
    /// XD (bit 63): execute disable (PAE entries, when EFER.NXE = 1).
    pub const XD: u64 = 1 << 63;

    /// The low dword of an entry: all of a legacy (non-PAE) entry, and the dword that
    /// holds the flags (A and D among them) in both formats.
    #[allow(clippy::cast_possible_truncation)] // Taking the low dword is the point.
    pub const fn low_dword(e: u64) -> u32 {
        e as u32
    }

    /// Mask of physical-address bits 35:12 (M = [`MAX_PHYS_ADDR_BITS`]) of a PAE entry.
    pub const fn pae_addr_4k(e: u64) -> u64 {
        e & phys_mask() & !0xfff
    }

    /// Physical-address bits 35:21 of a PAE PDE that maps a 2 MiB page.
    pub const fn pae_addr_2m(e: u64) -> u64 {
        e & phys_mask() & !0x1f_ffff
    }

    /// Bits 31:12 of a 32-bit PDE or PTE: the frame of the next table or the page.
    pub const fn legacy_addr_4k(e: u32) -> u32 {
        e & 0xffff_f000
    }

    /// Physical address of a 32-bit PSE PDE that maps a 4 MiB page: bits 31:22 give
    /// address bits 31:22, and (PSE-36) bits 16:13 give address bits 35:32.
    pub const fn legacy_addr_4m(e: u32) -> u64 {
        let high = ((e >> 13) as u64) & ((1 << (MAX_PHYS_ADDR_BITS - 32)) - 1);
        (high << 32) | (e & 0xffc0_0000) as u64
    }

    /// Reserved bits of a 32-bit PSE PDE mapping 4 MiB: bits 21:(M-19) (SDM Table 4-4).
    pub const fn legacy_4m_reserved(e: u32) -> bool {
        let lo = MAX_PHYS_ADDR_BITS - 19;
        e & (((1u32 << 22) - 1) & !((1u32 << lo) - 1)) != 0
    }

    /// Bits M..63 of a PAE entry: physical-address bits beyond MAXPHYADDR.
    const fn phys_mask() -> u64 {
        (1u64 << MAX_PHYS_ADDR_BITS) - 1
    }

    /// Reserved bits of a PAE PDPTE (SDM Table 4-8): 2:1, 8:5 and 63:M. A PDPTE with any
    /// of them set makes the CR3 load fail with #GP.
    pub const fn pdpte_reserved(e: u64) -> bool {
        e & (0b1_1110_0110 | !phys_mask()) != 0
    }

    /// Reserved bits of a PAE PDE or PTE (SDM Tables 4-9..4-11): 62:M always, 63 (XD)
    /// when EFER.NXE = 0, and bits 20:13 of a PDE mapping 2 MiB.
    pub const fn pae_reserved(e: u64, nxe: bool, maps_2m: bool) -> bool {
        let mut mask = !phys_mask() & !XD;
        if !nxe {
            mask |= XD;
        }
        if maps_2m {
            mask |= 0x1f_e000;
        }
        e & mask != 0
    }
}

/// How paging splits a linear address into table indices and a page offset
/// (SDM Figures 4-2..4-3 for 32-bit paging, 4-5..4-6 for PAE paging).
pub mod linear {
    /// 32-bit paging: bits 31:22 select the PDE.
    pub const fn legacy_pde_index(lin: u32) -> u32 {
        lin >> 22
    }
    /// 32-bit paging: bits 21:12 select the PTE.
    pub const fn legacy_pte_index(lin: u32) -> u32 {
        (lin >> 12) & 0x3ff
    }
    /// 32-bit paging: bits 21:0 are the offset within a 4 MiB page.
    pub const fn offset_4m(lin: u32) -> u32 {
        lin & 0x3f_ffff
    }
    /// PAE paging: bits 31:30 select the PDPTE.
    pub const fn pdpte_index(lin: u32) -> usize {
        (lin >> 30) as usize
    }
    /// PAE paging: bits 29:21 select the PDE.
    pub const fn pae_pde_index(lin: u32) -> u32 {
        (lin >> 21) & 0x1ff
    }
    /// PAE paging: bits 20:12 select the PTE.
    pub const fn pae_pte_index(lin: u32) -> u32 {
        (lin >> 12) & 0x1ff
    }
    /// PAE paging: bits 20:0 are the offset within a 2 MiB page.
    pub const fn offset_2m(lin: u32) -> u32 {
        lin & 0x1f_ffff
    }
    /// Bits 11:0 are the offset within a 4 KiB page.
    pub const fn offset_4k(lin: u32) -> u32 {
        lin & 0xfff
    }
    /// Bytes of a 32-bit paging entry.
    pub const LEGACY_ENTRY_BYTES: u32 = 4;
    /// Bytes of a PAE paging entry.
    pub const PAE_ENTRY_BYTES: u32 = 8;
}

/// The page-fault error code pushed with #PF (SDM §4.7, Figure 4-12).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ErrorCode(pub u32);

impl ErrorCode {
    /// P (bit 0): 0 = not-present page, 1 = protection or reserved-bit violation.
    pub const P: u32 = 1 << 0;
    /// W/R (bit 1): the access was a write.
    pub const W: u32 = 1 << 1;
    /// U/S (bit 2): the access was made in user mode (CPL 3).
    pub const U: u32 = 1 << 2;
    /// RSVD (bit 3): a reserved bit was set in a paging-structure entry.
    pub const RSVD: u32 = 1 << 3;
    /// I/D (bit 4): the access was an instruction fetch (reported only when NX is in
    /// effect, see [`mod@crate::walk`]).
    pub const ID: u32 = 1 << 4;

    /// Whether the page was present (protection or reserved-bit violation).
    pub const fn present(self) -> bool {
        self.0 & Self::P != 0
    }
    /// Whether the access was a write.
    pub const fn write(self) -> bool {
        self.0 & Self::W != 0
    }
    /// Whether the access was made in user mode.
    pub const fn user(self) -> bool {
        self.0 & Self::U != 0
    }
    /// Whether a reserved bit caused the fault.
    pub const fn reserved(self) -> bool {
        self.0 & Self::RSVD != 0
    }
    /// Whether the access was a reported instruction fetch.
    pub const fn fetch(self) -> bool {
        self.0 & Self::ID != 0
    }
}

impl std::fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let flag = |on: bool, s: &'static str| if on { s } else { "-" };
        write!(
            f,
            "ErrorCode({:#x}: {}{}{}{}{})",
            self.0,
            flag(self.fetch(), "I"),
            flag(self.reserved(), "R"),
            flag(self.user(), "U"),
            flag(self.write(), "W"),
            flag(self.present(), "P"),
        )
    }
}

/// The host's page-fault error code (`REG_ERR` of a SIGSEGV with trapno 14) uses the same
/// layout; only its W/R and I/D bits say anything about the guest's access (its P bit
/// reflects the host's lazily filled tables, ARCHITECTURE §2).
pub mod host_error {
    /// W/R (bit 1) of the host error code.
    pub const W: u64 = 1 << 1;
    /// I/D (bit 4) of the host error code.
    pub const ID: u64 = 1 << 4;
}

#[cfg(test)]
mod tests {
    use super::entry::*;
    use super::*;

    #[test]
    fn reserved_masks_follow_maxphyaddr_36() {
        assert!(!pdpte_reserved(0xf_ffff_f001 | 0x18));
        assert!(pdpte_reserved(1 << 36));
        assert!(pdpte_reserved(P | RW));
        assert!(pdpte_reserved(P | XD));
        assert!(!pae_reserved(XD | 0xf_ffff_f1ff, true, false));
        assert!(pae_reserved(XD, false, false));
        assert!(pae_reserved(1 << 62, true, false));
        assert!(pae_reserved(1 << 13, true, true));
        assert!(!pae_reserved(1 << 13, true, false));
        assert!(!legacy_4m_reserved(0xffc1_e1ff));
        assert!(legacy_4m_reserved(1 << 17));
        assert!(legacy_4m_reserved(1 << 21));
    }

    #[test]
    fn pse36_address_bits() {
        assert_eq!(legacy_addr_4m(0x0040_0083), 0x0040_0000);
        assert_eq!(legacy_addr_4m(0x0040_2083), 0x1_0040_0000);
        assert_eq!(legacy_addr_4m(0xffc1_e083), 0xf_ffc0_0000);
    }

    #[test]
    fn error_code_debug_names_bits() {
        let e = ErrorCode(ErrorCode::P | ErrorCode::W | ErrorCode::ID);
        assert_eq!(format!("{e:?}"), "ErrorCode(0x13: I--WP)");
    }
}
