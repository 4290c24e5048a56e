//! `vmm run` with a Linux bzImage: a well-formed image is entered by the 32-bit boot
//! protocol (ESI at boot_params, CS = `__BOOT_CS`), and every input the loader refuses
//! — a truncated image, an initrd too large for the RAM, a command line over the
//! kernel's `cmdline_size`, an initrd for a Multiboot kernel — is a clear message naming
//! the file, with status 2.

use std::path::PathBuf;

/// The documented status for a kernel or memory size that cannot be used.
const INPUT_STATUS: i32 = 2;

/// Protected-mode code checking the protocol's entry state: ESI = 0x7000 (boot_params)
/// and CS = 0x10, then debug exit 0x10 (status 33); 1 (status 3) otherwise.
const ENTRY_CHECK: [u8; 27] = [
    0x81, 0xfe, 0x00, 0x70, 0x00, 0x00, // cmp esi, 0x7000
    0x75, 0x0e, // jne fail
    0x66, 0x8c, 0xc8, // mov ax, cs
    0x66, 0x83, 0xf8, 0x10, // cmp ax, 0x10
    0x75, 0x05, // jne fail
    0xb0, 0x10, // mov al, 0x10
    0xe6, 0xf4, // out 0xf4, al
    0xf4, // hlt
    0xb0, 0x01, // fail: mov al, 1
    0xe6, 0xf4, // out 0xf4, al
    0xf4, // hlt
];
const ENTRY_OK_STATUS: i32 = (0x10 << 1) | 1;

/// A bzImage (protocol 2.15, one setup sector, LOADED_HIGH, cmdline_size 64) whose
/// protected-mode code is [`ENTRY_CHECK`] padded to 4 KiB.
fn bzimage() -> Vec<u8> {
    let mut b = vec![0u8; 1024];
    b[0x1f1] = 1; // setup_sects
    b[0x1f4..0x1f8].copy_from_slice(&(4096u32 / 16).to_le_bytes()); // syssize
    b[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    b[0x201] = 0x66; // header end: 0x268
    b[0x202..0x206].copy_from_slice(b"HdrS");
    b[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    b[0x211] = 1; // loadflags: LOADED_HIGH
    b[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
    b[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
    b[0x238..0x23c].copy_from_slice(&64u32.to_le_bytes()); // cmdline_size
    b[0x260..0x264].copy_from_slice(&0x10_0000u32.to_le_bytes()); // init_size
    let mut code = ENTRY_CHECK.to_vec();
    code.resize(4096, 0xf4);
    b.extend(code);
    b
}

fn write(name: &str, bytes: &[u8]) -> PathBuf {
    let path = support::scratch_dir("linux_boot").join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn vmm_run(args: &[&str]) -> support::Run {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    let run = support::run_vmm(60, &all);
    assert!(!run.timed_out(), "vmm timed out:\n{}", run.all_output());
    run
}

fn assert_refused(run: &support::Run, words: &[&str]) {
    let err = &run.stderr;
    assert_eq!(run.status, Some(INPUT_STATUS), "{}", run.all_output());
    for w in words {
        assert!(err.contains(w), "missing {w:?} in:\n{err}");
    }
}

#[test]
fn a_bzimage_is_entered_by_the_32_bit_boot_protocol() {
    let kernel = write("entry.bzimage", &bzimage());
    let kernel = kernel.to_str().unwrap();
    let run = vmm_run(&["--kernel", kernel, "--append", "console=ttyS0"]);
    assert_eq!(run.status, Some(ENTRY_OK_STATUS), "{}", run.all_output());
    // The same through QEMU's spellings, with an initrd.
    let initrd = write("small.initrd", &[0x5a; 10_000]);
    let run = vmm_run(&[
        "-kernel",
        kernel,
        "-initrd",
        initrd.to_str().unwrap(),
        "-append",
        "-x",
        "-m",
        "16",
        "-nographic",
    ]);
    assert_eq!(run.status, Some(ENTRY_OK_STATUS), "{}", run.all_output());
}

#[test]
fn a_truncated_bzimage_is_refused() {
    let image = bzimage();
    let kernel = write("truncated.bzimage", &image[..image.len() - 100]);
    let run = vmm_run(&["--kernel", kernel.to_str().unwrap()]);
    assert_refused(
        &run,
        &["truncated.bzimage", "truncated image", "syssize", "0x1400"],
    );
}

#[test]
fn an_initrd_too_large_for_the_ram_is_refused() {
    let kernel = write("initrd-host.bzimage", &bzimage());
    let initrd = write("large.initrd", &vec![0u8; 15 << 20]);
    let run = vmm_run(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--mem",
        "16M",
    ]);
    assert_refused(
        &run,
        &["cannot load initrd", "large.initrd", "does not fit"],
    );
}

#[test]
fn a_command_line_over_cmdline_size_is_refused() {
    let kernel = write("cmdline.bzimage", &bzimage());
    let append = "x".repeat(65);
    // Patch mode passes the command line as given; translate mode adds
    // " reservetop=64M" (15 bytes), which counts against the same limit.
    let k = kernel.to_str().unwrap();
    let run = vmm_run(&["--exec", "patch", "--kernel", k, "--append", &append]);
    assert_refused(&run, &["cmdline.bzimage", "65 bytes", "cmdline_size of 64"]);
    let run = vmm_run(&["--kernel", k, "--append", &"x".repeat(50)]);
    assert_refused(&run, &["cmdline.bzimage", "65 bytes", "cmdline_size of 64"]);
}

#[test]
fn an_initrd_needs_a_linux_kernel() {
    let initrd = write("orphan.initrd", &[0; 16]);
    let kernel = support::guest_kernel("legacy");
    let run = vmm_run(&["--kernel", kernel, "--initrd", initrd.to_str().unwrap()]);
    assert_refused(&run, &["orphan.initrd", "only a Linux bzImage"]);
}
