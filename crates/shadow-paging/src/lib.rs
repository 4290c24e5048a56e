//! Shadow paging for the monitor: the guest page walk, what to map on a host page fault,
//! and what to drop when the guest changes its page tables or control registers
//! (ARCHITECTURE §6).
//!
//! Pure: no OS calls. Guest RAM is reached through [`GuestPhysMemory`]; the host address
//! space through [`HostMapper`] (mmap/munmap/mprotect in the engine, a fake in tests).
//!
//! * [`addr`]: [`GuestLinear`], [`GuestPhys`], [`GuestPhys64`].
//! * [`bits`]: SDM bit layouts (control registers, entries, [`ErrorCode`]).
//! * [`mode`]: [`PagingMode`], [`PaeRoots`], [`PagingContext`].
//! * [`walk`]: [`walk()`], [`peek`], [`Translation`], [`PageFault`].
//! * [`decision`]: [`Decision`], [`MapDecision`], [`Prot`], [`PageUse`], [`grant`].
//! * [`state`]: [`ShadowState`], [`HostMapper`].

pub mod addr;
pub mod bits;
pub mod decision;
pub mod memory;
pub mod mode;
pub mod state;
pub mod walk;

pub use addr::{GuestLinear, GuestPhys, GuestPhys64, PAGE_SIZE};
pub use bits::ErrorCode;
pub use decision::{grant, Decision, EmulateReason, HostAccess, MapDecision, PageUse, Prot};
pub use memory::GuestPhysMemory;
pub use mode::{PaeRoots, PagingContext, PagingMode, PdpteFault};
pub use state::{HostMapper, ShadowConfig, ShadowPage, ShadowState};
pub use walk::{peek, walk, Access, PageFault, PageSize, Perms, TableEntries, Translation};

#[cfg(test)]
mod testutil;

#[cfg(test)]
mod reference;

#[cfg(test)]
mod proptests;
