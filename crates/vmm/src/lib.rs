//! The monitor: guest memory, host CPU entry/exit, the virtual CPU and its emulation,
//! devices, loaders, the `scan` census, the `bench` nanobenchmarks and the suite's
//! `coverage`.

pub mod addr;
pub mod bench;
pub mod coverage;
pub mod devices;
pub mod hostcpu;
pub mod image;
pub mod kproxy;
pub mod loader;
pub mod memory;
pub mod scan;
pub mod vcpu;
pub mod vm;
