//! The monitor's engine: guest memory, host CPU entry and exit, the virtual CPU and its
//! emulation, segments, shadow paging, devices, loaders and the run loop. The `vmm`
//! binary (`cli/`) and its tools build on it; optional parts such as the kernel proxy
//! plug in through [`vm::EntryHook`].

pub mod addr;
pub mod bits;
pub mod devices;
pub mod firmware;
pub mod hostcpu;
pub mod loader;
pub mod memory;
pub mod vcpu;
pub mod vm;
pub mod x86;
