//! Bad user input and what it gets: one test per row of the README's table ("Bad input
//! and what it gets"). Every refusal comes before the guest runs, with exit status 2 and a
//! message naming the input and what was wrong; nothing here may hang, panic or start a
//! guest that then fails.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

/// A file with `bytes` in this test's scratch directory.
fn file(test: &str, name: &str, bytes: &[u8]) -> PathBuf {
    let dir = support::scratch_dir(&format!("bad_input-{test}"));
    let path = dir.join(name);
    fs::write(&path, bytes).unwrap();
    path
}

/// A sparse file of `len` bytes (no disk space used).
fn sparse(test: &str, name: &str, len: u64) -> PathBuf {
    let path = file(test, name, b"");
    File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len)
        .unwrap();
    path
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A kernel that boots and powers off at once.
fn kernel() -> &'static str {
    support::guest_kernel("poweroff")
}

/// `vmm ARGS` must stop with status 2 before a guest runs, saying each of `words`.
fn refused(args: &[&str], words: &[&str]) {
    let run = support::run_vmm(30, args);
    let out = run.all_output();
    assert_eq!(run.status, Some(2), "{args:?}: {out}");
    assert!(run.stdout.is_empty(), "{args:?}: a guest ran: {out}");
    assert!(run.stderr.contains("error"), "{args:?}: {out}");
    for w in words {
        assert!(out.contains(w), "{args:?} should say {w:?}: {out}");
    }
}

/// A Multiboot header with `flags` (checksum made good unless `checksum` is given),
/// then `rest`.
fn multiboot(flags: u32, checksum: Option<u32>, rest: &[u8]) -> Vec<u8> {
    const MAGIC: u32 = 0x1bad_b002;
    let sum = checksum.unwrap_or(0u32.wrapping_sub(MAGIC.wrapping_add(flags)));
    let mut image = Vec::new();
    for w in [MAGIC, flags, sum] {
        image.extend_from_slice(&w.to_le_bytes());
    }
    image.extend_from_slice(rest);
    image
}

/// An a.out-kludge Multiboot kernel loaded at `base` and entered there.
fn aout_at(base: u32) -> Vec<u8> {
    let mut fields = Vec::new();
    // header_addr, load_addr, load_end_addr (whole file), bss_end_addr (none), entry
    for w in [base, base, 0, 0, base + 0x20] {
        fields.extend_from_slice(&w.to_le_bytes());
    }
    fields.extend_from_slice(&[0xf4; 16]);
    multiboot(1 << 16, None, &fields)
}

/// A bzImage header (one setup sector) with protocol `version`, `init_size`, and 256
/// bytes of code.
fn bzimage(version: u16, init_size: u32) -> Vec<u8> {
    let mut b = vec![0u8; 1024];
    let put = |b: &mut Vec<u8>, at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
    b[0x1f1] = 1;
    put(&mut b, 0x1f4, &16u32.to_le_bytes());
    put(&mut b, 0x202, b"HdrS");
    put(&mut b, 0x206, &version.to_le_bytes());
    b[0x211] = 1;
    put(&mut b, 0x214, &0x10_0000u32.to_le_bytes());
    put(&mut b, 0x22c, &0x7fff_ffffu32.to_le_bytes());
    put(&mut b, 0x238, &2047u32.to_le_bytes());
    put(&mut b, 0x260, &init_size.to_le_bytes());
    b.extend(std::iter::repeat_n(0xf4, 256));
    b
}

// ---- kernels

#[test]
fn missing_kernel() {
    refused(
        &["run", "--kernel", "/nonexistent/k.elf"],
        &["cannot read kernel /nonexistent/k.elf", "No such file"],
    );
}

#[test]
fn kernel_that_is_a_directory() {
    let dir = support::scratch_dir("bad_input-kernel-dir");
    refused(
        &["run", "--kernel", s(&dir)],
        &["cannot read kernel", "Is a directory"],
    );
}

#[test]
fn empty_kernel() {
    let k = file("empty-kernel", "empty.elf", b"");
    refused(
        &["run", "--kernel", s(&k)],
        &["kernel", "empty.elf is empty"],
    );
}

#[test]
fn truncated_elf_kernel() {
    let whole = fs::read(kernel()).unwrap();
    // The Multiboot header survives, the first segment's bytes do not.
    let k = file("truncated-elf", "cut.elf", &whole[..0x1100]);
    refused(
        &["run", "--kernel", s(&k)],
        &["cut.elf", "run past the end of the image"],
    );
}

#[test]
fn kernel_that_is_not_a_kernel() {
    let noise: Vec<u8> = (0..20_000u32)
        .map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()[3])
        .collect();
    let k = file("not-a-kernel", "noise.bin", &noise);
    refused(
        &["run", "--kernel", s(&k)],
        &["noise.bin", "no Multiboot header"],
    );
}

#[test]
fn elf_kernel_of_the_wrong_class() {
    let mut elf = fs::read(kernel()).unwrap();
    elf[4] = 2; // ELFCLASS64
    let k = file("elf64", "k64.elf", &elf);
    refused(
        &["run", "--kernel", s(&k)],
        &["k64.elf", "EI_CLASS", "ELFCLASS32"],
    );
}

#[test]
fn elf_kernel_with_corrupt_program_headers() {
    let mut elf = fs::read(kernel()).unwrap();
    elf[0x1c..0x20].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // e_phoff
    let k = file("elf-phoff", "phoff.elf", &elf);
    refused(
        &["run", "--kernel", s(&k)],
        &["phoff.elf", "program headers", "past the end"],
    );
}

#[test]
fn multiboot_header_with_a_bad_checksum() {
    let k = file(
        "mb-checksum",
        "sum.bin",
        &multiboot(0, Some(1), &[0xf4; 16]),
    );
    refused(&["run", "--kernel", s(&k)], &["sum.bin", "checksum"]);
}

#[test]
fn multiboot_kernel_that_requires_a_video_mode() {
    let k = file(
        "mb-video",
        "video.bin",
        &multiboot(1 << 2, None, &[0xf4; 16]),
    );
    refused(&["run", "--kernel", s(&k)], &["video.bin", "video mode"]);
}

#[test]
fn multiboot_kernel_loaded_outside_ram() {
    let k = file("mb-high", "high.bin", &aout_at(0x8000_0000));
    refused(
        &["run", "--kernel", s(&k)],
        &["high.bin", "outside guest RAM"],
    );
}

#[test]
fn oversized_kernel() {
    // Refused from its size, without reading 2 GiB.
    let k = sparse("big-kernel", "huge.elf", 2 << 30);
    refused(
        &["run", "--kernel", s(&k)],
        &["kernel", "huge.elf is larger than", "cannot be loaded"],
    );
}

#[test]
fn bzimage_of_a_too_old_protocol() {
    let k = file("bz-old", "old.bzImage", &bzimage(0x0201, 0x1000));
    refused(
        &["run", "--kernel", s(&k)],
        &["old.bzImage", "2.01 is too old"],
    );
}

#[test]
fn truncated_bzimage() {
    let k = file("bz-cut", "cut.bzImage", &bzimage(0x020f, 0x1000)[..0x300]);
    refused(
        &["run", "--kernel", s(&k)],
        &["cut.bzImage", "truncated image"],
    );
}

#[test]
fn bzimage_that_needs_more_memory_than_ram() {
    let k = file("bz-init-size", "fat.bzImage", &bzimage(0x020f, 0x4000_0000));
    refused(
        &["run", "--kernel", s(&k), "--mem", "64M"],
        &["fat.bzImage", "init_size", "RAM ends"],
    );
}

// ---- initrds

#[test]
fn missing_initrd() {
    let k = file("rd-missing", "k.bzImage", &bzimage(0x020f, 0x1000));
    refused(
        &["run", "--kernel", s(&k), "--initrd", "/nonexistent/rd"],
        &["cannot read initrd /nonexistent/rd"],
    );
}

#[test]
fn empty_initrd() {
    let k = file("rd-empty", "k.bzImage", &bzimage(0x020f, 0x1000));
    let rd = file("rd-empty", "empty.rd", b"");
    refused(
        &["run", "--kernel", s(&k), "--initrd", s(&rd)],
        &["initrd", "empty.rd is empty"],
    );
}

#[test]
fn initrd_for_a_multiboot_kernel() {
    let rd = file("rd-multiboot", "x.rd", b"initrd");
    refused(
        &["run", "--kernel", kernel(), "--initrd", s(&rd)],
        &["x.rd", "only a Linux bzImage kernel takes an initrd"],
    );
}

#[test]
fn initrd_larger_than_ram() {
    let k = file("rd-huge", "k.bzImage", &bzimage(0x020f, 0x1000));
    let rd = sparse("rd-huge", "huge.rd", 5 << 30);
    refused(
        &["run", "--kernel", s(&k), "--initrd", s(&rd)],
        &["initrd", "huge.rd is larger than the guest's RAM"],
    );
}

#[test]
fn initrd_that_does_not_fit_beside_the_kernel() {
    let k = file("rd-fit", "k.bzImage", &bzimage(0x020f, 0x10_0000));
    let rd = file("rd-fit", "3m.rd", &vec![0x5a; 3 << 20]);
    refused(
        &["run", "--kernel", s(&k), "--initrd", s(&rd), "--mem", "4M"],
        &["cannot load initrd", "3m.rd", "does not fit"],
    );
}

// ---- disk images

#[test]
fn missing_disk_image() {
    refused(
        &["run", "--kernel", kernel(), "--disk", "/nonexistent/d.img"],
        &["cannot open disk image /nonexistent/d.img"],
    );
}

#[test]
fn empty_disk_image() {
    let d = file("disk-empty", "empty.img", b"");
    refused(
        &["run", "--kernel", kernel(), "--disk", s(&d)],
        &["empty.img is empty", "512-byte sector"],
    );
}

#[test]
fn disk_image_of_partial_sectors() {
    let d = file("disk-odd", "odd.img", &[0; 1000]);
    refused(
        &["run", "--kernel", kernel(), "-hda", s(&d)],
        &["odd.img", "not a multiple of 512"],
    );
}

#[test]
fn disk_image_that_is_a_directory() {
    let dir = support::scratch_dir("bad_input-disk-dir");
    refused(
        &["run", "--kernel", kernel(), "--disk", s(&dir)],
        &["cannot open disk image", "Is a directory"],
    );
}

#[test]
fn disk_option_that_is_not_ro() {
    // Only ",ro" is an option: anything else is part of the file name.
    let d = file("disk-rw", "d.img", &[0; 512]);
    let arg = format!("{},rw", s(&d));
    refused(
        &["run", "--kernel", kernel(), "--disk", &arg],
        &["cannot open disk image", "d.img,rw"],
    );
}

// ---- kernel policies

#[test]
fn missing_policy() {
    refused(
        &[
            "run",
            "--kernel",
            kernel(),
            "--policy",
            "/nonexistent/p.toml",
        ],
        &["kernel policy", "cannot read /nonexistent/p.toml"],
    );
}

#[test]
fn policy_with_a_syntax_error() {
    let p = file("policy-syntax", "p.toml", b"[services.tty\nid = \"x\"\n");
    refused(
        &["run", "--kernel", kernel(), "--policy", s(&p)],
        &["p.toml:1:", "expected `]`"],
    );
}

#[test]
fn policy_naming_an_unknown_service() {
    let p = file(
        "policy-service",
        "p.toml",
        b"[services.tty]\nid = \"nosuch\"\n",
    );
    refused(
        &["run", "--kernel", kernel(), "--policy", s(&p)],
        &[
            "p.toml:2",
            "unknown tty service `nosuch`",
            "expected one of",
        ],
    );
}

#[test]
fn policy_binding_a_symbol_the_kernel_lacks() {
    let p = file(
        "policy-symbol",
        "p.toml",
        b"[[bindings]]\nsymbol = \"no_such_symbol\"\nop = \"tty.write\"\nconvention = \"cdecl\"\n\
          args = 2\nbuffer = { ptr = 0, len = 1, max = 4096 }\nreturns = \"count\"\n\
          error_return = -1\n",
    );
    refused(
        &["run", "--kernel", kernel(), "--policy", s(&p)],
        &["no symbol `no_such_symbol`"],
    );
}

#[test]
fn policy_that_is_not_text() {
    refused(
        &["run", "--kernel", kernel(), "--policy", kernel()],
        &["kernel policy", "valid UTF-8"],
    );
}

#[test]
fn empty_policy_binds_nothing_and_the_guest_runs() {
    let p = file("policy-empty", "empty.toml", b"");
    let run = support::run_vmm(30, &["run", "--kernel", kernel(), "--policy", s(&p)]);
    assert_eq!(run.status, Some(0), "{}", run.all_output());
    assert!(
        run.stdout.contains("1 passed, 0 failed"),
        "{}",
        run.all_output()
    );
}

#[test]
fn defaults_without_a_policy() {
    let p = file("policy-defaults", "d.toml", b"");
    refused(
        &["run", "--kernel", kernel(), "--defaults", s(&p)],
        &["required arguments were not provided", "--policy"],
    );
}

// ---- memory sizes

#[test]
fn memory_too_small() {
    refused(
        &["run", "--kernel", kernel(), "--mem", "1M"],
        &["too small", "at least 2M"],
    );
}

#[test]
fn memory_past_the_mmio_hole() {
    refused(
        &["run", "--kernel", kernel(), "--mem", "4G"],
        &["too large", "at most 3G"],
    );
}

#[test]
fn memory_not_in_whole_pages() {
    refused(
        &["run", "--kernel", kernel(), "--mem", "3000000"],
        &["multiple of 4 KiB"],
    );
}

#[test]
fn memory_size_that_is_not_a_size() {
    for bad in [
        "lots",
        "1T",
        "12.5M",
        "0x1000000",
        "99999999999999999999",
        "",
    ] {
        refused(
            &["run", "--kernel", kernel(), "--mem", bad],
            &["expected a size such as 128M"],
        );
    }
}

#[test]
fn negative_memory_size() {
    refused(
        &["run", "--kernel", kernel(), "--mem", "-1"],
        &["unexpected argument '-1'"],
    );
}

#[test]
fn qemu_memory_size_of_zero() {
    refused(&["run", "-m", "0", "-kernel", kernel()], &["too small"]);
}

// ---- flags

#[test]
fn unknown_flag() {
    refused(
        &["run", "--bogus"],
        &["unexpected argument '--bogus'", "Usage"],
    );
}

#[test]
fn flag_without_its_value() {
    refused(
        &["run", "--kernel"],
        &["a value is required for '--kernel <FILE>'"],
    );
}

#[test]
fn unknown_command() {
    refused(&["frobnicate"], &["unrecognized subcommand 'frobnicate'"]);
}

#[test]
fn gdb_port_out_of_range() {
    refused(
        &["run", "--kernel", kernel(), "--gdb", "tcp::99999"],
        &["\"99999\" is not a TCP port"],
    );
}

#[test]
fn wait_for_gdb_without_gdb() {
    refused(&["run", "--kernel", kernel(), "-S"], &["-S waits for gdb"]);
}

#[test]
fn statistics_file_that_cannot_be_written() {
    refused(
        &[
            "run",
            "--kernel",
            kernel(),
            "--stats-json",
            "/nonexistent/dir/s.json",
        ],
        &["cannot write /nonexistent/dir/s.json"],
    );
}

#[test]
fn control_socket_in_a_missing_directory() {
    let p = file("api-sock", "empty.toml", b"");
    refused(
        &[
            "run",
            "--kernel",
            kernel(),
            "--policy",
            s(&p),
            "--api-sock",
            "/nonexistent/dir/s",
        ],
        &["control socket /nonexistent/dir/s"],
    );
}
