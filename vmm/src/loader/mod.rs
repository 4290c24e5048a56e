//! Kernel loaders: put a kernel image into guest RAM and describe the CPU state it must
//! be entered with; [`elf`] is the ELF reader they (and the image tools and the kernel
//! proxy) share.
//!
//! Guest RAM is passed as one byte slice whose index is the guest-physical address.
//! This module holds what every boot protocol shares: the PC's physical memory layout
//! and bounds-checked access to RAM.

pub mod elf;
pub mod multiboot;

/// End of conventional memory available to the OS: 639 KiB, the last KiB being the
/// extended BIOS data area on a PC.
pub const LOW_MEMORY_END: u32 = 0x9_fc00;
/// End of the EBDA; the VGA window and option ROMs follow.
pub const EBDA_END: u32 = 0xa_0000;
/// The system BIOS ROM area, reserved up to 1 MiB.
pub const BIOS_ROM_START: u32 = 0xf_0000;
/// Start of extended memory.
pub const HIGH_MEMORY_START: u32 = 0x10_0000;

/// What a physical memory range is for, as firmware memory maps (e820, Multiboot) say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionKind {
    /// RAM the OS may use.
    Available,
    /// Firmware areas the OS must leave alone.
    Reserved,
}

/// One range of the guest's physical memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryRegion {
    /// First guest-physical address.
    pub base: u64,
    /// Length in bytes (never zero).
    pub len: u64,
    /// What the range is for.
    pub kind: RegionKind,
}

/// The memory map of a PC with `ram_size` bytes of RAM: conventional memory below the
/// EBDA, the EBDA and BIOS ROM reserved, extended memory from 1 MiB to the end of RAM.
/// Ranges that RAM does not reach are left out.
pub fn pc_memory_map(ram_size: u64) -> Vec<MemoryRegion> {
    let layout = [
        (0, u64::from(LOW_MEMORY_END), RegionKind::Available),
        (
            u64::from(LOW_MEMORY_END),
            u64::from(EBDA_END),
            RegionKind::Reserved,
        ),
        (
            u64::from(BIOS_ROM_START),
            u64::from(HIGH_MEMORY_START),
            RegionKind::Reserved,
        ),
        (
            u64::from(HIGH_MEMORY_START),
            ram_size,
            RegionKind::Available,
        ),
    ];
    layout
        .into_iter()
        .filter_map(|(start, end, kind)| {
            let end = end.min(ram_size);
            (end > start).then(|| MemoryRegion {
                base: start,
                len: end - start,
                kind,
            })
        })
        .collect()
}

/// The part of `ram` at guest-physical `addr..addr + len`, or `None` if it is not all RAM.
pub(crate) fn ram_range_mut(ram: &mut [u8], addr: u64, len: u64) -> Option<&mut [u8]> {
    let start = usize::try_from(addr).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    ram.get_mut(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_map_follows_ram_size() {
        let map = pc_memory_map(64 << 20);
        assert_eq!(map.len(), 4);
        assert_eq!(
            map[3],
            MemoryRegion {
                base: 0x10_0000,
                len: 63 << 20,
                kind: RegionKind::Available
            }
        );
        // 512 KiB of RAM: only part of conventional memory exists.
        assert_eq!(
            pc_memory_map(512 << 10),
            vec![MemoryRegion {
                base: 0,
                len: 512 << 10,
                kind: RegionKind::Available
            }]
        );
    }

    #[test]
    fn ram_ranges_are_bounds_checked() {
        let mut ram = vec![0u8; 16];
        assert_eq!(ram_range_mut(&mut ram, 8, 8).map(|r| r.len()), Some(8));
        assert!(ram_range_mut(&mut ram, 8, 9).is_none());
        assert!(ram_range_mut(&mut ram, u64::MAX, 2).is_none());
    }
}
