//! One module per fuzz target; each has `run(data: &[u8])`.

pub mod bzimage;
pub mod elf;
pub mod emulate;
pub mod multiboot;
pub mod policy;
pub mod scan;
pub mod service_node;
pub mod translate;
