//! The project's own 32-bit test and demo guest kernels.
//!
//! The kernels (C and assembly in `kernels/` and `lib/`) are built by `build.rs` with the
//! host gcc in 32-bit freestanding mode. They are Multiboot v1 ELF kernels that report
//! kvm-unit-tests style lines on the serial port and end through the debug-exit port 0xF4,
//! so QEMU and the monitor run them the same way. [`report`] parses their output and
//! [`config`] reads `tests.cfg`, which lists how each test kernel is run; [`qemu`] runs
//! a kernel under QEMU, the reference the monitor is compared with.
//!
//! The benchmark kernels (`bench/`, listed by [`benches`]) time one operation each and
//! print `BENCH` lines; [`bench_native`] is the same measuring code as a static i386
//! Linux program, the native baseline. They are no tests and are not in `tests.cfg`.

pub mod config;
pub mod disk_image;
pub mod qemu;
pub mod report;

pub use config::{parse_config, ConfigError, TestEntry};
pub use report::{check_key, pair_checks, parse_report, Outcome, Pair, Report};

/// One built guest kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guest {
    /// Name, the kernel's source file stem (`kernels/<name>.c`).
    pub name: &'static str,
    /// Absolute path of the built ELF kernel.
    pub path: &'static str,
    /// What the kernel exercises.
    pub description: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/guests.rs"));
include!(concat!(env!("OUT_DIR"), "/benches.rs"));

/// Every built guest kernel, sorted by name.
pub fn all() -> &'static [Guest] {
    GUESTS
}

/// Kernels another program drives (input on their console, a debugger), so neither
/// tests.cfg nor QEMU runs them unattended: an integration test drives each one (`echo`:
/// tests/tests/console.rs; `exitstorm`, which never ends by itself: tests/tests/exit_storm.rs;
/// `gdbtarget`: tests/tests/gdb.rs).
pub const INTERACTIVE: &[&str] = &["echo", "exitstorm", "gdbtarget"];

/// The guest kernel called `name`.
pub fn find(name: &str) -> Option<&'static Guest> {
    GUESTS.iter().find(|g| g.name == name)
}

/// Every built benchmark kernel, sorted by name. Not part of [`all`].
pub fn benches() -> &'static [Guest] {
    BENCHES
}

/// The benchmark kernel called `name`.
pub fn find_bench(name: &str) -> Option<&'static Guest> {
    BENCHES.iter().find(|g| g.name == name)
}

/// Absolute path of the native benchmark program: a static i386 Linux executable that
/// runs the operations a process can run with the kernels' measuring code and prints the
/// same `BENCH` lines.
pub fn bench_native() -> &'static str {
    BENCH_NATIVE
}

/// The ELF image of the demo kernel, the guest the monitor boots when given none.
pub fn demo_kernel() -> &'static [u8] {
    include_bytes!(concat!(env!("OUT_DIR"), "/demo.elf"))
}

/// The `tests.cfg` shipped with this crate (kvm-unit-tests `unittests.cfg` format).
pub fn tests_cfg() -> &'static str {
    include_str!("../tests.cfg")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_kernel_is_a_32_bit_elf_with_a_multiboot_header() {
        let elf = demo_kernel();
        assert_eq!(&elf[..4], b"\x7fELF");
        assert_eq!(elf[4], 1, "ELFCLASS32");
        assert_eq!(u16::from_le_bytes([elf[18], elf[19]]), 3, "EM_386");
        // Multiboot v1: magic, flags, checksum summing to zero, 4-aligned in the first 8 KiB.
        let window = &elf[..elf.len().min(8192)];
        let found = (0..window.len().saturating_sub(12)).step_by(4).any(|i| {
            let word = |o: usize| u32::from_le_bytes(window[i + o..i + o + 4].try_into().unwrap());
            word(0) == 0x1bad_b002
                && word(0).wrapping_add(word(4)).wrapping_add(word(8)) == 0
                && word(4) & 1 << 2 == 0
        });
        assert!(found, "no Multiboot header without a video-mode request");
    }

    #[test]
    fn every_guest_is_built_and_findable() {
        assert!(!all().is_empty());
        for g in all() {
            assert!(std::path::Path::new(g.path).is_absolute(), "{}", g.path);
            assert!(std::fs::metadata(g.path).is_ok(), "{} not built", g.path);
            assert!(!g.description.is_empty());
            assert_eq!(find(g.name), Some(g));
        }
        assert_eq!(find("no-such-guest"), None);
    }

    #[test]
    fn benches_are_built_apart_from_the_test_kernels() {
        assert!(!benches().is_empty());
        for b in benches() {
            assert!(std::fs::metadata(b.path).is_ok(), "{} not built", b.path);
            assert!(!b.description.is_empty());
            assert_eq!(find_bench(b.name), Some(b));
            assert!(
                all().iter().all(|g| g.path != b.path),
                "{} is a test kernel",
                b.name
            );
        }
        assert!(std::fs::metadata(bench_native()).is_ok());
    }

    #[test]
    fn tests_cfg_names_only_built_guests() {
        let entries = parse_config(tests_cfg()).expect("tests.cfg parses");
        assert!(!entries.is_empty());
        for e in &entries {
            let stem = e.file.trim_end_matches(".elf");
            assert!(
                find(stem).is_some(),
                "[{}] names unbuilt kernel {}",
                e.name,
                e.file
            );
        }
    }
}
