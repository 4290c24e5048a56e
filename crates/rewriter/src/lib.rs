//! Finds, classifies and patches the sensitive IA-32 instructions of guest code.
//!
//! Pure: no OS calls. Guest memory is reached through [`CodeMemory`] and
//! [`CodeMemoryMut`], so the same code serves the engine (guest-physical pages), the
//! `vmm scan` command (ELF sections) and the tests.
//!
//! * [`class`]: what each instruction means at host CPL 3 ([`Class`], [`Action`],
//!   [`classify`], [`flow`]).
//! * [`scan`]: instruction boundaries of a page or region ([`scan_page`],
//!   [`scan_region`], [`Census`]).
//! * [`patch`]: in-place rewriting into [`TRAP_BYTE`] and its undoing ([`PatchTable`]).

pub mod class;
pub mod patch;
pub mod scan;

pub use class::{classify, flow, Action, Class, ClassInfo, Flow, CLASS_TABLE, TRAP_BYTE};
pub use patch::{CodeMemoryMut, Patch, PatchError, PatchTable, Unpatched};
pub use scan::{
    scan_page, scan_region, BufferMemory, Census, CodeMemory, PageScan, RegionScan, Site,
    MAX_INSTRUCTION_LEN, PAGE_SIZE,
};
