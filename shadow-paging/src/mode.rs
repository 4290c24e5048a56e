//! The paging mode and its roots, as the control registers select them (SDM §4.1).

use crate::addr::GuestPhys;
use crate::bits::{
    entry, linear, CR0_CD, CR0_NW, CR0_PG, CR0_WP, CR4_PAE, CR4_PGE, CR4_PSE, EFER_NXE,
};
use crate::memory::GuestPhysMemory;
use thiserror::Error;

/// Which translation the guest's control registers select.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PagingMode {
    /// CR0.PG = 0: linear addresses are physical addresses.
    Off,
    /// 32-bit paging: page directory and page tables of 1024 dword entries.
    TwoLevel {
        /// CR4.PSE: PDEs with PS = 1 map 4 MiB pages.
        pse: bool,
    },
    /// PAE paging: four PDPTEs, then tables of 512 qword entries.
    Pae {
        /// EFER.NXE: the XD bit is honoured (and not reserved).
        nxe: bool,
    },
}

impl PagingMode {
    /// The mode selected by CR0.PG, CR4.PAE, CR4.PSE and EFER.NXE.
    pub fn from_control(cr0: u32, cr4: u32, efer: u64) -> Self {
        if cr0 & CR0_PG == 0 {
            Self::Off
        } else if cr4 & CR4_PAE != 0 {
            Self::Pae {
                nxe: efer & EFER_NXE != 0,
            }
        } else {
            Self::TwoLevel {
                pse: cr4 & CR4_PSE != 0,
            }
        }
    }

    /// Bytes covered by one page-directory entry: the size of a large page.
    pub fn pde_span(self) -> u32 {
        match self {
            Self::Pae { .. } => 2 << 20,
            Self::Off | Self::TwoLevel { .. } => 4 << 20,
        }
    }

    /// Bytes of one paging-structure entry.
    pub fn entry_size(self) -> u32 {
        match self {
            Self::Pae { .. } => linear::PAE_ENTRY_BYTES,
            Self::Off | Self::TwoLevel { .. } => linear::LEGACY_ENTRY_BYTES,
        }
    }
}

/// The four PDPTEs the CPU caches when CR3 is loaded under PAE paging (SDM §4.4.1).
/// Later guest writes to the PDPT are not seen until the next load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PaeRoots(pub [u64; 4]);

/// A PAE CR3 load found a present PDPTE with a reserved bit set: the `MOV` raises #GP(0)
/// and changes nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("PDPTE {index} ({value:#018x}) at {gpa} has reserved bits set: #GP(0)")]
pub struct PdpteFault {
    /// Which of the four PDPTEs.
    pub index: usize,
    /// Its value.
    pub value: u64,
    /// Where it was read.
    pub gpa: GuestPhys,
}

impl PaeRoots {
    /// Loads the PDPTEs from the 32-byte-aligned table CR3 bits 31:5 name.
    ///
    /// A PDPTE outside RAM reads as not present: unbacked physical memory gives the guest
    /// no translation, and the resulting #PF leaves its own fault handler in charge.
    ///
    /// # Errors
    /// [`PdpteFault`] when a present PDPTE has reserved bits set.
    pub fn load<M: GuestPhysMemory + ?Sized>(mem: &M, cr3: u32) -> Result<Self, PdpteFault> {
        let base = pae_pdpt_base(cr3);
        let mut roots = [0u64; 4];
        for ((index, slot), offset) in roots.iter_mut().enumerate().zip((0u32..).step_by(8)) {
            // base <= 0xffff_ffe0, so base + 24 cannot overflow.
            let gpa = GuestPhys(base + offset);
            let value = mem.read_u64(gpa).unwrap_or(0);
            if value & entry::P != 0 && entry::pdpte_reserved(value) {
                return Err(PdpteFault { index, value, gpa });
            }
            *slot = value;
        }
        Ok(Self(roots))
    }
}

/// CR3 bits 31:12 under 32-bit paging: the page directory.
pub const fn legacy_directory_base(cr3: u32) -> u32 {
    cr3 & 0xffff_f000
}

/// CR3 bits 31:5 under PAE paging: the PDPT.
pub const fn pae_pdpt_base(cr3: u32) -> u32 {
    cr3 & 0xffff_ffe0
}

/// The paging-relevant control registers and what they select: everything a walk needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PagingContext {
    /// CR0 as the guest last wrote it.
    pub cr0: u32,
    /// CR3 as the guest last wrote it.
    pub cr3: u32,
    /// CR4 as the guest last wrote it.
    pub cr4: u32,
    /// IA32_EFER as the guest last wrote it.
    pub efer: u64,
    /// The mode CR0/CR4/EFER select.
    pub mode: PagingMode,
    /// The PDPTEs loaded at the last PAE root load (all zero outside PAE paging).
    pub roots: PaeRoots,
}

impl PagingContext {
    /// Builds the context for these registers, loading the PDPTEs if PAE paging is on.
    ///
    /// # Errors
    /// [`PdpteFault`] when PAE paging is on and a PDPTE has reserved bits set.
    pub fn new<M: GuestPhysMemory + ?Sized>(
        mem: &M,
        cr0: u32,
        cr3: u32,
        cr4: u32,
        efer: u64,
    ) -> Result<Self, PdpteFault> {
        let mode = PagingMode::from_control(cr0, cr4, efer);
        let roots = match mode {
            PagingMode::Pae { .. } => PaeRoots::load(mem, cr3)?,
            _ => PaeRoots::default(),
        };
        Ok(Self {
            cr0,
            cr3,
            cr4,
            efer,
            mode,
            roots,
        })
    }

    /// The context at reset: paging off.
    pub fn reset() -> Self {
        Self {
            cr0: 0,
            cr3: 0,
            cr4: 0,
            efer: 0,
            mode: PagingMode::Off,
            roots: PaeRoots::default(),
        }
    }

    /// CR0.WP: supervisor writes honour read-only pages.
    pub fn wp(&self) -> bool {
        self.cr0 & CR0_WP != 0
    }

    /// CR4.PGE: global translations survive CR3 writes.
    pub fn pge(&self) -> bool {
        self.cr4 & CR4_PGE != 0
    }

    /// Whether a CR0/CR4 change from `old` to `self` makes the CPU reload the PDPTEs
    /// (SDM §4.4.1: PAE paging in use after a MOV that changes CR0.CD/NW/PG or
    /// CR4.PAE/PGE/PSE).
    pub fn reloads_pdptes_from(&self, old_cr0: u32, old_cr4: u32) -> bool {
        matches!(self.mode, PagingMode::Pae { .. })
            && ((self.cr0 ^ old_cr0) & (CR0_CD | CR0_NW | CR0_PG) != 0
                || (self.cr4 ^ old_cr4) & (CR4_PAE | CR4_PGE | CR4_PSE) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_from_control_registers() {
        assert_eq!(
            PagingMode::from_control(CR0_WP, CR4_PAE, EFER_NXE),
            PagingMode::Off
        );
        assert_eq!(
            PagingMode::from_control(CR0_PG, CR4_PSE, EFER_NXE),
            PagingMode::TwoLevel { pse: true }
        );
        assert_eq!(
            PagingMode::from_control(CR0_PG, 0, 0),
            PagingMode::TwoLevel { pse: false }
        );
        assert_eq!(
            PagingMode::from_control(CR0_PG, CR4_PAE | CR4_PSE, EFER_NXE),
            PagingMode::Pae { nxe: true }
        );
        assert_eq!(
            PagingMode::from_control(CR0_PG, CR4_PAE, 0),
            PagingMode::Pae { nxe: false }
        );
    }
}
