//! Runs every kernel in tests.cfg under QEMU, the reference the monitor is compared with:
//! the exit status must be the expected one and the guest's closing line must agree with
//! its PASS lines.

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use guests::{parse_config, parse_report, tests_cfg, Report, TestEntry};

const QEMU: &str = "qemu-system-i386";
/// An IA-32 model: no long mode and no SYSCALL in CPUID 0x80000001, but SEP and PSE.
const QEMU_CPU: &str = "qemu32";
/// Command-line words that skip checks QEMU 7.2 TCG gets wrong (see the kernels that
/// define them); the monitor runs the kernels without them.
const QEMU_QUIRKS: &[&str] = &[
    "quirk-cr4-reserved-hangs",
    "quirk-unknown-msr-ignored",
    "quirk-rdpmc-ud",
    "quirk-no-segment-limit-checks",
];

struct Run {
    status: Option<ExitStatus>,
    output: String,
}

/// None when QEMU is absent and that is acceptable here (not CI).
fn qemu_available() -> bool {
    let found = Command::new(QEMU)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{QEMU} is required in CI (CI=true) but cannot be run"
        );
        eprintln!("note: {QEMU} not found; QEMU guest tests not run");
    }
    found
}

fn run_qemu(kernel: &str, append: &str, extra: &str, timeout: Duration) -> Run {
    let mut cmd = Command::new(QEMU);
    cmd.args([
        "-accel", "tcg", "-cpu", QEMU_CPU, "-m", "128", "-kernel", kernel,
    ])
    .args(["-append", append])
    .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
    .args([
        "-serial",
        "stdio",
        "-display",
        "none",
        "-no-reboot",
        "-nodefaults",
    ])
    .args(extra.split_whitespace())
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {QEMU}: {e}"));
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = thread::spawn(move || {
        let mut buf = Vec::new();
        // A read error only truncates the output, which the checks then report.
        let _ = stdout.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait().expect("wait for qemu") {
            Some(s) => break Some(s),
            None if Instant::now() >= deadline => {
                // Best effort: the process may have exited between the two calls.
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => thread::sleep(Duration::from_millis(20)),
        }
    };
    let output = reader.join().expect("reader thread");
    Run { status, output }
}

fn kernel_path(entry: &TestEntry) -> &'static str {
    let name = entry.file.strip_suffix(".elf").unwrap_or(&entry.file);
    guests::find(name)
        .unwrap_or_else(|| panic!("[{}]: no built guest for file {}", entry.name, entry.file))
        .path
}

fn with_quirks(append: &str) -> String {
    let mut words: Vec<&str> = append.split_whitespace().collect();
    words.extend_from_slice(QEMU_QUIRKS);
    words.join(" ")
}

/// Why a run did not pass, or None.
fn verdict(entry: &TestEntry, run: &Run, report: &Report) -> Option<String> {
    let Some(status) = run.status else {
        return Some(format!("TIMEOUT after {} s", entry.timeout));
    };
    if status.code() != Some(entry.expect_exit) {
        return Some(format!(
            "exit status {status}, expected {}",
            entry.expect_exit
        ));
    }
    if report.passed == 0 {
        return Some("no PASS lines".into());
    }
    if !report.all_passed() {
        return Some(format!(
            "{} passed, {} failed, closing line {:?}",
            report.passed, report.failed, report.closing
        ));
    }
    None
}

#[test]
fn every_test_kernel_passes_under_qemu() {
    if !qemu_available() {
        return;
    }
    let entries = parse_config(tests_cfg()).expect("tests.cfg parses");
    let handles: Vec<_> = entries
        .into_iter()
        .map(|entry| {
            thread::spawn(move || {
                let run = run_qemu(
                    kernel_path(&entry),
                    &with_quirks(&entry.append),
                    &entry.extra_params,
                    Duration::from_secs(entry.timeout.into()),
                );
                let report = parse_report(&run.output);
                let why = verdict(&entry, &run, &report);
                (entry, run, report, why)
            })
        })
        .collect();
    let mut failures = Vec::new();
    for h in handles {
        let (entry, run, report, why) = h.join().expect("runner thread");
        match why {
            None => println!(
                "PASS {} ({} checks, {} skipped)",
                entry.name, report.passed, report.skipped
            ),
            Some(why) => {
                println!("FAIL {}: {why}\n{}", entry.name, run.output);
                failures.push(format!("{}: {why}", entry.name));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "guests failed under QEMU: {failures:?}"
    );
}

/// The quirk words exist because QEMU deviates from the architecture; if a QEMU upgrade
/// fixes a deviation this test fails, and the quirk word should go.
#[test]
fn qemu_still_deviates_where_the_quirks_say() {
    if !qemu_available() {
        return;
    }
    let timeout = Duration::from_secs(60);
    let run = run_qemu(
        guests::find("sensitive").expect("sensitive guest").path,
        "quirk-cr4-reserved-hangs",
        "",
        timeout,
    );
    let report = parse_report(&run.output);
    let failed: Vec<&str> = report
        .checks
        .iter()
        .filter(|(_, o)| *o == guests::Outcome::Fail)
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(run.status.and_then(|s| s.code()), Some(3), "{}", run.output);
    assert_eq!(
        failed,
        [
            "misc: RDMSR of an unknown MSR raises #GP(0)",
            "misc: WRMSR of an unknown MSR raises #GP(0)",
            "misc: RDPMC with CR4.PCE clear does not fault at CPL 0 (got #UD)",
        ],
        "{}",
        run.output
    );

    let run = run_qemu(
        guests::find("hostile").expect("hostile guest").path,
        "",
        "",
        timeout,
    );
    let report = parse_report(&run.output);
    assert_eq!(run.status.and_then(|s| s.code()), Some(3), "{}", run.output);
    assert_eq!(report.failed, 2, "{}", run.output);
    assert!(
        report
            .checks
            .iter()
            .all(|(n, o)| *o != guests::Outcome::Fail || n.starts_with("wrap: ")),
        "{}",
        run.output
    );
}

#[test]
fn every_built_kernel_is_listed_in_tests_cfg() {
    let entries = parse_config(tests_cfg()).expect("tests.cfg parses");
    for g in guests::all() {
        assert!(
            entries.iter().any(|e| e.file == format!("{}.elf", g.name)),
            "kernel {} has no tests.cfg entry",
            g.name
        );
    }
}
