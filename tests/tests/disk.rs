//! Disk images as a user attaches them to `vmm run`: the IDE test kernel's writes reach
//! the image file, a read-only image stays as it was while the guest sees its writes
//! fail, and images that cannot be used are refused before the guest runs, naming the
//! file.

use std::path::{Path, PathBuf};

use guests::disk_image::{self, SECTOR};
use guests::{parse_report, Outcome};

/// The IDE kernel's master-only configuration: a 1 MiB image.
const MASTER_SECTORS: u64 = 2048;
/// `vmm run` exits 2 for input it cannot use.
const EXIT_USAGE_ERROR: i32 = 2;

fn scratch(name: &str) -> PathBuf {
    support::scratch_dir("disk").join(name)
}

/// A fresh patterned 1 MiB image (the suite's `disks = 1M`).
fn fresh_image(name: &str) -> PathBuf {
    let path = scratch(name);
    disk_image::create(&path, 0, MASTER_SECTORS * SECTOR).unwrap();
    path
}

/// Runs the IDE test kernel with `disk_args`; returns the run and its checks.
fn run_ide(disk_args: &[&str]) -> (support::Run, Vec<(String, Outcome)>) {
    let append = format!("hda-sectors={MASTER_SECTORS}");
    let mut args = vec![
        "run",
        "--kernel",
        support::guest_kernel("ide"),
        "--append",
        &append,
        "--stats",
    ];
    args.extend_from_slice(disk_args);
    let run = support::run_vmm(60, &args);
    assert!(!run.timed_out(), "vmm timed out: {}", run.all_output());
    let checks = parse_report(&run.stdout).checks;
    (run, checks)
}

fn outcome(checks: &[(String, Outcome)], name: &str) -> Option<Outcome> {
    checks.iter().find(|(n, _)| n.contains(name)).map(|c| c.1)
}

/// Sectors `first..first + count` of the image at `path`.
fn sectors(path: &Path, first: u64, count: u64) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    let at = usize::try_from(first * SECTOR).unwrap();
    bytes[at..at + usize::try_from(count * SECTOR).unwrap()].to_vec()
}

/// What `kernels/ide.c` writes: byte `i` of a run is `i * 13 + seed`.
fn written(seed: u8, bytes: usize) -> Vec<u8> {
    (0..bytes)
        .map(|i| (i.to_le_bytes()[0].wrapping_mul(13)).wrapping_add(seed))
        .collect()
}

#[test]
fn the_guests_writes_reach_the_image() {
    let image = fresh_image("written.img");
    let before = std::fs::read(&image).unwrap();
    let (run, checks) = run_ide(&["--disk", image.to_str().unwrap()]);
    assert_eq!(run.status, Some(1), "all checks pass: {}", run.all_output());
    assert!(!checks.is_empty());
    // WRITE SECTORS of 100-101 (seed 1), WRITE MULTIPLE of 300-311 (seed 2).
    assert_eq!(sectors(&image, 100, 2), written(1, 1024));
    assert_eq!(sectors(&image, 300, 12), written(2, 12 * 512));
    // Nothing else changed.
    let after = std::fs::read(&image).unwrap();
    let changed: Vec<u64> = (0..MASTER_SECTORS)
        .filter(|&s| {
            let r =
                usize::try_from(s * SECTOR).unwrap()..usize::try_from((s + 1) * SECTOR).unwrap();
            before[r.clone()] != after[r]
        })
        .collect();
    assert_eq!(
        changed,
        [100, 101].into_iter().chain(300..312).collect::<Vec<_>>()
    );
    let sectors_written = run
        .stderr
        .lines()
        .find(|l| l.contains("ide_sectors_written"))
        .unwrap_or_else(|| panic!("no ide_sectors_written in --stats: {}", run.stderr));
    assert!(sectors_written.contains("14"), "{sectors_written}");
}

#[test]
fn qemu_spellings_attach_the_master() {
    let image = fresh_image("hda.img");
    let (run, _) = run_ide(&["-hda", image.to_str().unwrap()]);
    assert_eq!(run.status, Some(1), "{}", run.all_output());
    assert_eq!(sectors(&image, 100, 2), written(1, 1024));
}

#[test]
fn a_read_only_image_is_honoured() {
    let image = fresh_image("read-only.img");
    let before = std::fs::read(&image).unwrap();
    let ro = format!("{},ro", image.display());
    let (run, checks) = run_ide(&["--disk", &ro]);
    assert_ne!(run.status, Some(1), "the guest must see its writes fail");
    assert_eq!(
        outcome(&checks, "WRITE SECTORS: one interrupt per written sector"),
        Some(Outcome::Fail),
        "{}",
        run.stdout
    );
    assert_eq!(
        outcome(&checks, "WRITE MULTIPLE, read back"),
        Some(Outcome::Fail)
    );
    assert_eq!(
        outcome(&checks, "[lba28 poll] sector 5 by READ SECTORS"),
        Some(Outcome::Pass),
        "reads still work"
    );
    assert_eq!(
        std::fs::read(&image).unwrap(),
        before,
        "the file is unchanged"
    );
}

/// `vmm run` with `args` must refuse to start, naming `file` on stderr.
fn refused(args: &[&str], file: &str, what: &str) {
    let run = support::run_vmm(30, &[&["run"], args].concat());
    assert_eq!(
        run.status,
        Some(EXIT_USAGE_ERROR),
        "{what}: {}",
        run.all_output()
    );
    assert!(
        run.stderr.contains(file) && run.stderr.contains(what),
        "{what}: stderr should name {file}: {}",
        run.stderr
    );
    assert!(run.stdout.is_empty(), "no guest ran: {}", run.stdout);
}

#[test]
fn unusable_images_are_refused_naming_the_file() {
    let missing = scratch("missing.img");
    let _ = std::fs::remove_file(&missing);
    let missing = missing.to_str().unwrap();
    refused(&["--disk", missing], missing, "cannot open disk image");

    let empty = scratch("empty.img");
    std::fs::write(&empty, b"").unwrap();
    let empty = empty.to_str().unwrap();
    refused(&["--disk", empty], empty, "is empty");

    let odd = scratch("odd.img");
    std::fs::write(&odd, vec![0u8; 1000]).unwrap();
    let odd = odd.to_str().unwrap();
    refused(&["-hdb", odd], odd, "not a multiple of 512");

    let fine = fresh_image("third.img");
    let fine = fine.to_str().unwrap();
    refused(
        &["--disk", fine, "--disk", fine, "--disk", odd],
        odd,
        "too many disks",
    );
}
