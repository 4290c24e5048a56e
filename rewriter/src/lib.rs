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
//! * [`translate`]: the block translator for the translation cache
//!   ([`translate::translate_block`]) and the validator of its output
//!   ([`translate::validate()`]).
//!
//! ```
//! use rewriter::{scan_page, Action, BufferMemory, Class, CodeMemory, PatchTable, TRAP_BYTE};
//!
//! // pushf; cli; popf; ret
//! let code = [0x9C, 0xFA, 0x9D, 0xC3];
//! let mut mem = BufferMemory::new(0x1000, code.to_vec());
//! let scan = scan_page(&mem, 0x1000, &[0x1000]);
//! assert_eq!(scan.starts, [0x1000, 0x1001, 0x1002, 0x1003]);
//! // CLI traps by itself; PUSHF and POPF are patched.
//! assert_eq!(scan.sites[1].class.action(), Action::Trap);
//!
//! let mut table = PatchTable::new();
//! assert_eq!(table.patch(&mut mem, &scan)?, 2);
//! assert_eq!(mem.bytes, [TRAP_BYTE, 0xFA, TRAP_BYTE, 0xC3]);
//! assert_eq!(table.lookup(0x1002).map(|p| p.class), Some(Class::Popf));
//!
//! // The guest reading its own code sees the originals.
//! let mut seen = [0u8; 4];
//! table.unpatched(&mem).read(0x1000, &mut seen);
//! assert_eq!(seen, code);
//!
//! // A write to the page reverts it exactly.
//! assert_eq!(table.revert_page(&mut mem, 0x1000), 2);
//! assert_eq!(mem.bytes, code);
//! # Ok::<(), rewriter::PatchError>(())
//! ```

pub mod class;
pub mod patch;
pub mod scan;
pub mod translate;

pub use class::{
    classify, flow, fpu_kind, Action, Class, ClassInfo, Flow, FpuKind, CLASS_TABLE, TRAP_BYTE,
};
pub use patch::{CodeMemoryMut, Patch, PatchError, PatchTable, Unpatched};
pub use scan::{
    scan_page, scan_page_after, scan_region, BufferMemory, Census, CodeMemory, CodeSize, PageScan,
    RegionScan, Site, MAX_INSTRUCTION_LEN,
};
