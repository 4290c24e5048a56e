//! Newtypes for the address spaces a monitor juggles. Mixing a guest-linear with a
//! guest-physical address is the classic monitor bug; these types make it a compile error.
//! They are the `shadow-paging` crate's, so the page walk and the monitor speak the same
//! types.

pub use shadow_paging::{GuestLinear, GuestPhys, GuestPhys64, PAGE_SIZE};
