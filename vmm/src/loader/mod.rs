//! Kernel loaders: put a kernel image into guest RAM and describe the CPU state it must
//! be entered with ([`multiboot`], and [`linux`] for bzImages); [`elf`] is the ELF reader they (and the image tools and the kernel
//! proxy) share.
//!
//! Guest RAM is passed as one byte slice whose index is the guest-physical address.
//! This module holds what every boot protocol shares: bounds-checked access to RAM. The
//! PC's physical memory map is the firmware's ([`crate::firmware::e820`]).

pub mod elf;
pub mod linux;
pub mod multiboot;

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
    fn ram_ranges_are_bounds_checked() {
        let mut ram = vec![0u8; 16];
        assert_eq!(ram_range_mut(&mut ram, 8, 8).map(|r| r.len()), Some(8));
        assert!(ram_range_mut(&mut ram, 8, 9).is_none());
        assert!(ram_range_mut(&mut ram, u64::MAX, 2).is_none());
    }
}
