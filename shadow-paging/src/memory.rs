//! How the walk reaches guest-physical memory.

use crate::addr::GuestPhys;

/// Guest-physical memory as the walk sees it: the monitor's view of guest RAM.
///
/// Reads outside RAM return `None` and writes outside RAM return `false`; the walk turns
/// both into guest-visible outcomes, never into a monitor error.
pub trait GuestPhysMemory {
    /// The little-endian dword at `gpa`, or `None` if any of its bytes lies outside RAM.
    fn read_u32(&self, gpa: GuestPhys) -> Option<u32>;
    /// The little-endian qword at `gpa`, or `None` if any of its bytes lies outside RAM.
    fn read_u64(&self, gpa: GuestPhys) -> Option<u64>;
    /// Stores a dword (the walk uses it to set accessed and dirty bits). Returns whether
    /// the whole dword lay in RAM.
    fn write_u32(&mut self, gpa: GuestPhys, value: u32) -> bool;
    /// Stores a qword. Returns whether the whole qword lay in RAM.
    fn write_u64(&mut self, gpa: GuestPhys, value: u64) -> bool;
    /// Bytes of RAM, starting at guest-physical 0.
    fn ram_size(&self) -> u64;
}
