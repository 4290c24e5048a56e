//! Newtypes for the address spaces a monitor juggles. Mixing a guest-linear with a
//! guest-physical address is the classic monitor bug; these types make it a compile error.

use std::fmt;

macro_rules! guest_addr {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub u32);

        impl $name {
            /// The raw 32-bit value.
            pub const fn raw(self) -> u32 {
                self.0
            }
            /// `self + off`, or `None` when it would leave the 32-bit space.
            pub fn checked_add(self, off: u32) -> Option<Self> {
                self.0.checked_add(off).map(Self)
            }
            /// `self + off` modulo 2^32, as address arithmetic wraps on IA-32.
            pub const fn wrapping_add(self, off: u32) -> Self {
                Self(self.0.wrapping_add(off))
            }
            /// The start of the 4 KiB page holding this address.
            pub const fn page(self) -> Self {
                Self(self.0 & !0xfff)
            }
            /// The offset within the 4 KiB page.
            pub const fn page_offset(self) -> u32 {
                self.0 & 0xfff
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:#010x})"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#010x}", self.0)
            }
        }
    };
}

guest_addr!(
    /// A guest linear address (after segmentation, before paging).
    GuestLinear
);
guest_addr!(
    /// A guest physical address (an offset into guest RAM, or a device range).
    GuestPhys
);

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
    }
}
