//! The tools around the engine that the `vmm` command offers: the sensitive-instruction
//! census of guest images (`scan`, with the image readers of `image`), the
//! nanobenchmarks (`bench`), the suite's coverage tables (`coverage`), the SVG pictures
//! of the bench table and of a run's exits (`plot`), the gdb remote stub (`gdb`, feature
//! `gdb`) and the kernel proxy's commands (`kproxy`, feature `kproxy`). The engine itself is the `vmm` crate.

pub mod bench;
pub mod coverage;
#[cfg(feature = "gdb")]
pub mod gdb;
pub mod image;
#[cfg(feature = "kproxy")]
pub mod kproxy;
pub mod plot;
pub mod scan;

/// Exit status for a file that could not be scanned.
pub const EXIT_INPUT_ERROR: u8 = 1;
/// Exit status for a command line that cannot work, the same clap uses; also for a
/// kernel or memory size `vmm run` cannot use (odd statuses belong to the guest's
/// debug-exit port).
pub const EXIT_USAGE_ERROR: u8 = 2;
/// Exit status when the monitor itself could not run the guest on this host.
pub const EXIT_MONITOR_ERROR: u8 = 3;
