//! Fuzz targets for the doors hostile input comes through (issue 15): each target is a
//! plain function from bytes to nothing that panics when the code under test breaks one
//! of its promises (a panic, a translation the validator rejects, a fault that is not
//! precise, unbounded work in one exit...).
//!
//! The same functions run three ways: under AFL (`src/bin`, `scripts/fuzz.sh`), as a
//! replay of each committed corpus (`cargo test -p fuzz`), and by hand through
//! [`run_target`].

pub mod input;
pub mod targets;

use std::path::{Path, PathBuf};

/// A fuzz target: its name (the corpus directory and the binary's suffix) and its function.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, by name.
pub const TARGETS: &[Target] = &[
    ("emulate", targets::emulate::run),
    ("translate", targets::translate::run),
    ("scan", targets::scan::run),
    ("multiboot", targets::multiboot::run),
    ("elf", targets::elf::run),
    ("bzimage", targets::bzimage::run),
    ("policy", targets::policy::run),
    ("service_node", targets::service_node::run),
];

/// The target called `name`.
pub fn target(name: &str) -> Option<fn(&[u8])> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// Runs the target called `name` on `data`; `false` if there is no such target.
pub fn run_target(name: &str, data: &[u8]) -> bool {
    target(name).map(|f| f(data)).is_some()
}

/// The committed seed corpus of target `name`: `fuzz/corpus/<name>/`.
pub fn corpus_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(name)
}
