//! How optional parts take over guest entry points: the engine pins a trap on each entry
//! point a hook serves and consults the hook when such a trap fires, before the
//! rewriter's patch table (the kernel proxy, ARCHITECTURE.md §8, is the hook; guest
//! instruction breakpoints share the trap mechanism).

use rewriter::PatchTable;

use crate::addr::GuestLinear;
use crate::memory::GuestRam;
use crate::vcpu::{Fault, GuestBus, VcpuState};

/// Why a hook could not pin its entry points.
pub type HookError = Box<dyn std::error::Error + Send + Sync>;

/// An optional part serving guest entry points in place of the guest's own code.
pub trait EntryHook: Send {
    /// Pins the trap on every entry point the hook serves; called once, when the hook
    /// is attached, before the guest runs.
    ///
    /// # Errors
    /// When an entry point has no guest RAM behind it.
    fn pin(&mut self, patches: &mut PatchTable, ram: &GuestRam) -> Result<(), HookError>;

    /// Brings the pinned traps in line with what the hook serves now (its configuration
    /// may change while the VM runs); called on every trap before [`Self::on_trap`].
    fn sync(&mut self, patches: &mut PatchTable, ram: &GuestRam);

    /// A trap fired at guest linear `site`. Serves the call and sets the guest's
    /// registers as the function's return leaves them, or answers `None` when `site` is
    /// not an entry point the hook serves.
    ///
    /// # Errors
    /// The fault the guest meets instead (the engine delivers it through the guest IDT).
    fn on_trap(
        &mut self,
        site: GuestLinear,
        state: &mut VcpuState,
        bus: &mut dyn GuestBus,
        ram_size: u64,
    ) -> Option<Result<(), Fault>>;
}
