//! The Multiboot v1 loader (ELF kernels and the a.out kludge).
//!
//! Input layout: a RAM-size byte, a command-line length byte, the command line, then
//! the kernel image.
//!
//! Promises checked: no panic, whatever the image and the RAM size; a loaded kernel
//! and its boot information lie in RAM and do not overlap.

use crate::input::Input;
use vmm::loader::multiboot::load_multiboot;

/// Runs one case.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let mib = usize::from(input.u8() % 16) + 1;
    let cmdline_len = usize::from(input.u8());
    let cmdline = String::from_utf8_lossy(input.bytes(cmdline_len)).into_owned();
    let image = input.rest();
    let mut ram = vec![0u8; mib << 20];
    let Ok(boot) = load_multiboot(&mut ram, image, &cmdline) else {
        return;
    };
    let size = ram.len() as u64;
    let (ks, ke) = boot.kernel_range;
    let (bs, be) = boot.boot_info_range;
    assert!(
        ks <= ke && u64::from(ke) <= size,
        "kernel {ks:#x}..{ke:#x} outside RAM"
    );
    assert!(
        bs <= be && u64::from(be) <= size,
        "boot info {bs:#x}..{be:#x} outside RAM"
    );
    assert!(
        be <= ks || ke <= bs,
        "boot info {bs:#x}..{be:#x} overlaps the kernel {ks:#x}..{ke:#x}"
    );
    assert!(u64::from(boot.ebx) >= u64::from(bs) && boot.ebx < be.max(bs + 1));
}
