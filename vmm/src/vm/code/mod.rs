//! The code part of a VM: what the guest executes and who may take it over.
//!
//! - [`scan`]: scan-before-execute over guest RAM, the patch table and its counters;
//! - [`fetch`]: guest code read as the CPU fetches it (through the guest's translation,
//!   original bytes) and decoded;
//! - [`EntryHook`]: optional parts (the kernel proxy) serving guest entry points.

mod entry_hook;
pub mod fetch;
pub mod scan;

pub use entry_hook::{EntryHook, HookError};
pub use scan::{CodeError, CodePages, CodeStats, PagedFetch, PhysicalScan, RamCode};

/// Guest code: its scan state and patches, and the hook serving bound entry points.
#[derive(Default)]
pub struct Code {
    /// Scan state of guest code and the patch table.
    pub pages: CodePages,
    /// The part serving bound guest entry points (the kernel proxy), when one is attached.
    pub hook: Option<Box<dyn EntryHook>>,
}

impl std::fmt::Debug for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Code")
            .field("pages", &self.pages)
            .field("hook", &self.hook.is_some())
            .finish()
    }
}
