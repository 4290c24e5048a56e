//! The BIOS data area (segment 0x40) and the extended BIOS data area: the fields kernels
//! read before they trust anything else — where the EBDA is, how much base memory there
//! is, where COM1 is.

use crate::addr::GuestPhys;
use crate::devices::{pc, COM1_BASE};

/// BDA: I/O base of COM1 (a word; up to four serial ports follow).
pub const BDA_COM1_BASE: u32 = 0x400;
/// The EBDA's size in KiB, its first byte as the BIOS keeps it.
const EBDA_SIZE_KIB: u8 = 1;
const KIB: u32 = 1024;

/// The BDA and EBDA bytes to write, with their guest-physical addresses: COM1's base, the
/// EBDA segment and the base memory size (everything below the EBDA), and the EBDA's own
/// size byte.
pub fn build() -> Vec<(GuestPhys, Vec<u8>)> {
    let ebda = pc::EBDA_BASE.raw();
    // The EBDA lies below 640 KiB: its segment and KiB count fit 16 bits.
    let segment = u16::try_from(ebda >> 4).unwrap_or(u16::MAX);
    let base_kib = u16::try_from(ebda / KIB).unwrap_or(u16::MAX);
    vec![
        (GuestPhys(BDA_COM1_BASE), COM1_BASE.to_le_bytes().to_vec()),
        (
            GuestPhys(pc::BDA_EBDA_SEGMENT),
            segment.to_le_bytes().to_vec(),
        ),
        (
            GuestPhys(pc::BDA_BASE_MEMORY_KIB),
            base_kib.to_le_bytes().to_vec(),
        ),
        (pc::EBDA_BASE, vec![EBDA_SIZE_KIB]),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ebda_and_base_memory_agree() {
        let fields = build();
        let word = |addr: u32| {
            let (_, b) = fields.iter().find(|(a, _)| a.raw() == addr).unwrap();
            u32::from(u16::from_le_bytes([b[0], b[1]]))
        };
        assert_eq!(word(pc::BDA_EBDA_SEGMENT) << 4, pc::EBDA_BASE.raw());
        assert_eq!(word(pc::BDA_BASE_MEMORY_KIB), 639);
        assert_eq!(word(BDA_COM1_BASE), 0x3f8);
        let ebda_size = fields.iter().find(|(a, _)| *a == pc::EBDA_BASE).unwrap().1[0];
        assert_eq!(u32::from(ebda_size) * KIB, pc::EBDA_LEN);
    }
}
