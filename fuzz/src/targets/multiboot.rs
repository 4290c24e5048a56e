//! The Multiboot v1 loader (ELF kernels and the a.out kludge).
//!
//! Input layout: a RAM-size byte, a command-line length byte, the command line, then
//! the kernel image.
//!
//! Promises checked: no panic, whatever the image and the RAM size; a loaded kernel
//! and its boot information lie in RAM; the boot information reads back as written (the
//! command line and the boot loader's name it points at), so no segment was loaded over
//! it. (The boot information may lie in a gap between two segments: the kernel's range
//! is only their hull.)

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
    assert!(bs <= boot.ebx && boot.ebx < be);
    let at = usize::try_from(boot.ebx).expect("RAM is below 4 GiB");
    let word = |off: usize| {
        let b = &ram[at + off..at + off + 4];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    };
    let string = |addr: u32| {
        let start = usize::try_from(addr).expect("RAM is below 4 GiB");
        let len = ram[start..]
            .iter()
            .position(|&b| b == 0)
            .expect("a NUL-terminated string");
        ram[start..start + len].to_vec()
    };
    // MBI flags: memory, command line, memory map, boot loader name.
    assert_eq!(word(0), 1 | (1 << 2) | (1 << 6) | (1 << 9));
    assert_eq!(
        string(word(16)),
        cmdline.as_bytes(),
        "the command line reads back"
    );
    assert_eq!(
        string(word(64)),
        b"vmm",
        "the boot loader's name reads back"
    );
    let (mmap, mmap_len) = (word(48), word(44));
    assert!(
        bs <= mmap && mmap + mmap_len <= be,
        "the memory map lies in the boot information"
    );
}
