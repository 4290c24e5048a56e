//! Newtypes for the address spaces the walk juggles. They have the same shape as the
//! monitor's own `GuestLinear`/`GuestPhys`, so the monitor can re-export these.

use std::fmt;

macro_rules! guest_addr {
    ($(#[$doc:meta])* $name:ident, $raw:ty, $width:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub $raw);

        impl $name {
            /// The raw value.
            pub const fn raw(self) -> $raw {
                self.0
            }
            /// `self + off`, or `None` when it would leave the address space.
            pub fn checked_add(self, off: $raw) -> Option<Self> {
                self.0.checked_add(off).map(Self)
            }
            /// `self + off` modulo the width of the address space.
            pub const fn wrapping_add(self, off: $raw) -> Self {
                Self(self.0.wrapping_add(off))
            }
            /// The start of the 4 KiB page holding this address.
            pub const fn page(self) -> Self {
                Self(self.0 & !0xfff)
            }
            /// The offset within the 4 KiB page.
            pub const fn page_offset(self) -> u32 {
                (self.0 & 0xfff) as u32
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:#0", $width, "x})"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!("{:#0", $width, "x}"), self.0)
            }
        }
    };
}

guest_addr!(
    /// A guest linear address (after segmentation, before paging).
    GuestLinear,
    u32,
    "10"
);
guest_addr!(
    /// A guest physical address below 4 GiB (an offset into guest RAM, or a device range).
    GuestPhys,
    u32,
    "10"
);
guest_addr!(
    /// A guest physical address as PAE entries can name it (up to 36 bits here). Anything
    /// above 4 GiB is never RAM: the monitor's guest RAM lies below 4 GiB.
    GuestPhys64,
    u64,
    "12"
);

impl GuestPhys64 {
    /// The address as a [`GuestPhys`], or `None` when it lies at or above 4 GiB.
    pub fn below_4g(self) -> Option<GuestPhys> {
        u32::try_from(self.0).ok().map(GuestPhys)
    }
}

impl From<GuestPhys> for GuestPhys64 {
    fn from(p: GuestPhys) -> Self {
        Self(u64::from(p.0))
    }
}

/// Size of a small page on IA-32.
pub const PAGE_SIZE: u32 = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_arithmetic() {
        let a = GuestPhys(0x1234_5678);
        assert_eq!(a.page(), GuestPhys(0x1234_5000));
        assert_eq!(a.page_offset(), 0x678);
        assert_eq!(GuestLinear(u32::MAX).checked_add(1), None);
        assert_eq!(GuestLinear(u32::MAX).wrapping_add(2), GuestLinear(1));
        assert_eq!(GuestPhys64(0x1_0000_0000).below_4g(), None);
        assert_eq!(
            GuestPhys64(0xffff_f000).below_4g(),
            Some(GuestPhys(0xffff_f000))
        );
        assert_eq!(
            format!("{:?}", GuestPhys64(0x1000)),
            "GuestPhys64(0x0000001000)"
        );
    }
}
