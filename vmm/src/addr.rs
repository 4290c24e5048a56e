//! Newtypes for the address spaces a monitor juggles. Mixing a guest-linear with a
//! guest-physical address is the classic monitor bug; these types make it a compile error.
//! The guest ones are the `shadow-paging` crate's, so the page walk and the monitor speak
//! the same types; [`HostAddr`] is the monitor process's own.

use std::fmt;

pub use shadow_paging::{GuestLinear, GuestPhys, GuestPhys64, PAGE_SIZE};

/// An address in the monitor process (a host virtual address): where the monitor's view
/// of guest RAM lies, or where a signal says the CPU was. Guest code can only ever address
/// the low 4 GiB of it, through the guest linear space.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HostAddr(pub u64);

impl HostAddr {
    /// The raw value.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// `self + off`, or `None` when it would leave the 64-bit space.
    pub fn checked_add(self, off: u64) -> Option<Self> {
        self.0.checked_add(off).map(Self)
    }

    /// The address of a host pointer.
    pub fn of<T>(p: *const T) -> Self {
        Self(p as usize as u64)
    }

    /// The guest linear address this host address is, when it lies in the low 4 GiB the
    /// guest linear space occupies.
    pub fn guest_linear(self) -> Option<GuestLinear> {
        u32::try_from(self.0).ok().map(GuestLinear)
    }
}

impl fmt::Debug for HostAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostAddr({:#x})", self.0)
    }
}

impl fmt::Display for HostAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl fmt::LowerHex for HostAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_addresses_in_the_low_4g_are_guest_linear() {
        assert_eq!(HostAddr(0x1000).guest_linear(), Some(GuestLinear(0x1000)));
        assert_eq!(HostAddr(1 << 32).guest_linear(), None);
        assert_eq!(HostAddr(u64::MAX).checked_add(1), None);
        assert_eq!(format!("{:#x}", HostAddr(0xabc)), "0xabc");
    }
}
