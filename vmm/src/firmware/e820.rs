//! The PC's physical memory map (the BIOS's INT 15h E820 answer): what the Multiboot
//! loader copies into the boot information's `mmap`, and what fw_cfg serves as
//! `etc/e820` in QEMU's layout.

use crate::devices::pc;

/// An E820 range type (ACPI §15: address range types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum E820Type {
    /// RAM the OS may use (AddressRangeMemory, 1).
    Ram,
    /// In use or reserved by the platform (AddressRangeReserved, 2).
    Reserved,
}

impl E820Type {
    /// The type's number, as E820 and the Multiboot memory map give it.
    pub const fn code(self) -> u32 {
        match self {
            E820Type::Ram => 1,
            E820Type::Reserved => 2,
        }
    }
}

/// One range of the memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// First guest-physical address.
    pub base: u64,
    /// Length in bytes (never zero).
    pub len: u64,
    /// What the range is.
    pub kind: E820Type,
}

impl E820Entry {
    /// One past the last address.
    pub const fn end(&self) -> u64 {
        self.base + self.len
    }

    /// Whether `[base, base + len)` and this range share an address.
    pub const fn overlaps(&self, base: u64, len: u64) -> bool {
        base < self.end() && self.base < base.saturating_add(len)
    }
}

/// The bytes of one entry in QEMU's `etc/e820` file: address, length (u64 each) and type
/// (u32), little-endian and packed.
pub const FW_CFG_ENTRY_LEN: usize = 20;

/// The memory map of a PC with `ram_size` bytes of RAM: conventional memory below the EBDA,
/// the EBDA and the BIOS area (0xE0000–0xFFFFF, where the firmware tables are) reserved,
/// extended memory from 1 MiB to the end of RAM, and the IOAPIC and local APIC pages in the
/// hole below 4 GiB reserved, as a PC BIOS reports them. RAM ranges are cut to the RAM
/// there is.
pub fn pc_e820(ram_size: u64) -> Vec<E820Entry> {
    let ebda = u64::from(pc::EBDA_BASE.raw());
    let ebda_end = ebda + u64::from(pc::EBDA_LEN);
    let bios = u64::from(pc::BIOS_AREA.raw());
    let high = u64::from(pc::HIGH_MEMORY.raw());
    let ram_ranges = [
        (0, ebda, E820Type::Ram),
        (ebda, ebda_end, E820Type::Reserved),
        (bios, high, E820Type::Reserved),
        (high, ram_size, E820Type::Ram),
    ];
    let mmio_page = |base: crate::addr::GuestPhys| {
        let base = u64::from(base.raw());
        (
            base,
            base + u64::from(crate::addr::PAGE_SIZE),
            E820Type::Reserved,
        )
    };
    let cut = ram_ranges
        .into_iter()
        .map(|(start, end, kind)| (start, end.min(ram_size), kind));
    cut.chain([mmio_page(pc::IOAPIC_BASE), mmio_page(pc::LAPIC_BASE)])
        .filter(|&(start, end, _)| end > start)
        .map(|(base, end, kind)| E820Entry {
            base,
            len: end - base,
            kind,
        })
        .collect()
}

/// `map` as QEMU's fw_cfg file `etc/e820` holds it.
pub fn fw_cfg_bytes(map: &[E820Entry]) -> Vec<u8> {
    let mut b = Vec::with_capacity(map.len() * FW_CFG_ENTRY_LEN);
    for e in map {
        b.extend_from_slice(&e.base.to_le_bytes());
        b.extend_from_slice(&e.len.to_le_bytes());
        b.extend_from_slice(&e.kind.code().to_le_bytes());
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAM: u64 = 128 << 20;

    #[test]
    fn a_pc_map_with_128_mib() {
        let kinds: Vec<(u64, u64, u32)> = pc_e820(RAM)
            .iter()
            .map(|e| (e.base, e.len, e.kind.code()))
            .collect();
        assert_eq!(
            kinds,
            [
                (0, 0x9_fc00, 1),
                (0x9_fc00, 0x400, 2),
                (0xe_0000, 0x2_0000, 2),
                (0x10_0000, RAM - 0x10_0000, 1),
                (0xfec0_0000, 0x1000, 2),
                (0xfee0_0000, 0x1000, 2),
            ]
        );
    }

    #[test]
    fn ranges_are_sorted_disjoint_and_cut_to_ram() {
        for (ram, top) in [
            (512 << 10, 512 << 10),
            (1 << 20, 0x9_fc00),
            (2 << 20, 2 << 20),
            (3 << 30, 3 << 30),
        ] {
            let map = pc_e820(ram);
            for w in map.windows(2) {
                assert!(w[0].end() <= w[1].base, "{ram:#x}: {w:?}");
            }
            let ram_top = map
                .iter()
                .filter(|e| e.kind == E820Type::Ram)
                .map(E820Entry::end)
                .max();
            assert_eq!(ram_top, Some(top));
            assert!(map
                .iter()
                .all(|e| e.kind == E820Type::Reserved || e.end() <= ram));
        }
        // 512 KiB: only part of conventional memory exists; the MMIO pages still do.
        assert_eq!(pc_e820(512 << 10)[0].len, 512 << 10);
        assert_eq!(pc_e820(512 << 10).len(), 3);
    }

    #[test]
    fn fw_cfg_layout_is_qemus() {
        let map = pc_e820(RAM);
        let b = fw_cfg_bytes(&map);
        assert_eq!(b.len(), map.len() * FW_CFG_ENTRY_LEN);
        let e = &b[3 * FW_CFG_ENTRY_LEN..4 * FW_CFG_ENTRY_LEN];
        assert_eq!(u64::from_le_bytes(e[0..8].try_into().unwrap()), 0x10_0000);
        assert_eq!(
            u64::from_le_bytes(e[8..16].try_into().unwrap()),
            RAM - 0x10_0000
        );
        assert_eq!(u32::from_le_bytes(e[16..20].try_into().unwrap()), 1);
    }
}
