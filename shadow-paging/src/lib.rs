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
//! * [`mod@walk`]: [`walk()`], [`peek`], [`resolve`], [`Translation`], [`PageFault`].
//! * [`decision`]: [`Decision`], [`MapDecision`], [`Prot`], [`PageUse`], [`grant`].
//! * [`state`]: [`ShadowState`], [`HostMapper`].
//!
//! # How the monitor drives it
//!
//! One [`ShadowState`] per guest holds the paging context (CR0/CR3/CR4/EFER and the
//! PAE roots) and every shadow mapping with the guest entries it came from.
//!
//! * **Host page fault** (SIGSEGV, trapno 14, `si_addr` below 4 GiB, guest CS):
//!   `on_host_fault(mem, mapper, lin, HostAccess::from_host_error_code(err), cpl == 3)`,
//!   then by [`Decision`]: `HiddenFault` — re-enter (already mapped); `TrueFault` —
//!   inject #PF with `cr2` and `error_code`; `Mediate` — decode the instruction, check
//!   and perform the write on guest RAM, then `table_written(mapper, gpa, len)` for each
//!   page it touched, advance EIP; `CodeWrite` — revert the page's patches,
//!   `unmark_code`, retry; `ScanFirst` — scan and patch the page, `mark_code`, retry;
//!   `Emulate` — decode and emulate (device bus for `NotRam`, original bytes for
//!   `ReadPatchedCode`).
//! * **Any other write to guest RAM the monitor makes on the guest's behalf** (emulated
//!   instructions, DMA, exception frames): if [`ShadowState::is_page_table`] says so,
//!   `table_written` too.
//! * **MOV CR0 / CR3 / CR4, LMSW, CLTS, WRMSR EFER**: `write_cr0` / `write_cr3` /
//!   `write_cr4` / `write_efer` with the new value after the engine's own validity
//!   checks; a [`PdpteFault`] means inject #GP(0) and leave the register unchanged.
//! * **INVLPG**: `invlpg(mapper, lin)`.
//! * **Virtual CPL changes**: `enter_user_mode(mapper, user_segment_limit)` on the way
//!   to CPL 3, `leave_user_mode()` on the way to CPL 0.

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
pub use walk::{
    peek, resolve, walk, Access, PageFault, PageSize, Perms, TableEntries, Translation,
};

#[cfg(test)]
mod testutil;

#[cfg(test)]
mod reference;

#[cfg(test)]
mod proptests;
