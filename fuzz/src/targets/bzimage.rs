//! The Linux i386 boot protocol loader (bzImage setup header, boot_params, command line,
//! initrd).
//!
//! Input layout: a RAM-size byte (2 to 9 MiB), a flags byte (bit 0: an initrd), the
//! command line's length (u16) and bytes, the initrd's length (u32, below 256 KiB), then
//! the image.
//!
//! Promises checked: no panic; a refused image leaves RAM untouched ("nothing is
//! written unless everything fits"); a loaded kernel, its initrd and boot_params lie in
//! RAM, and the initrd does not overlap the kernel.

use crate::input::Input;
use vmm::loader::linux::{is_bzimage, load_linux, read_header, BOOT_PARAMS_BASE};

/// Runs one case.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let mib = usize::from(input.u8() % 8) + 2;
    let flags = input.u8();
    let cmdline_len = usize::from(input.u16() % 2048);
    let cmdline = String::from_utf8_lossy(input.bytes(cmdline_len)).into_owned();
    let initrd_len = usize::try_from(input.u32() % (256 << 10)).unwrap_or(0);
    let image = input.rest();
    let _ = is_bzimage(image);
    if let Ok(h) = read_header(image) {
        let _ = h.protocol_string();
        let _ = h.pm_len();
    }
    let initrd = vec![0x5a; initrd_len];
    let mut ram = vec![0u8; mib << 20];
    match load_linux(
        &mut ram,
        image,
        &cmdline,
        (flags & 1 != 0).then_some(&initrd[..]),
    ) {
        Err(_) => assert!(ram.iter().all(|&b| b == 0), "a refused image wrote to RAM"),
        Ok(boot) => {
            let size = ram.len() as u64;
            let (ks, ke) = boot.kernel_range;
            assert!(ks <= ke && ks < size, "kernel {ks:#x}..{ke:#x} outside RAM");
            assert!(u64::from(boot.boot_params) == u64::from(BOOT_PARAMS_BASE));
            if let Some((is, ie)) = boot.initrd_range {
                assert!(
                    is <= ie && ie <= size,
                    "initrd {is:#x}..{ie:#x} outside RAM"
                );
                assert!(ie <= ks || ke <= is, "initrd overlaps the kernel");
            }
        }
    }
}
