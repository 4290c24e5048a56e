//! The instruction-coverage suite, side by side with QEMU: every tests.cfg kernel runs under
//! `vmm run` and, when qemu-system-i386 is installed, under QEMU TCG (guests::qemu), and
//! the two are compared check by check. A check counts as passed when both report it with
//! the same outcome and that outcome is not FAIL. A difference is a failure unless the
//! check is a known QEMU deviation from the architecture (guests::qemu::DEVIATIONS; QEMU
//! gets the quirk words that skip them, the monitor runs without) or a known monitor gap
//! ([`MONITOR_GAPS`]). A listed entry that no longer differs fails too, so the lists stay
//! true. In CI (CI=true) a missing QEMU is a failure.
//!
//! Prints a table (test, checks, vmm result, QEMU result, agreement) and the closing line
//! `N passed, N failed`; writes every vmm serial output to
//! `$CARGO_TARGET_TMPDIR/suite-vmm-results.txt` and checks that `vmm coverage --results`
//! reads it into a coverage table (printed before the comparison table).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::thread;
use std::time::Duration;

use guests::qemu;
use guests::{pair_checks, parse_config, parse_report, tests_cfg, Outcome, Pair, Report};

/// A check the monitor is known to get wrong, until the engine is fixed.
struct Gap {
    /// The execution mode (`vmm run --exec`, `VMM_EXEC`) that gets it wrong.
    mode: &'static str,
    test: &'static str,
    /// The start of the check's name.
    check: &'static str,
    /// What the monitor does instead, and why.
    reason: &'static str,
}

/// Known monitor gaps: the suite's expected failures under vmm.
const MONITOR_GAPS: &[Gap] = &[Gap {
    mode: "patch",
    test: "forms",
    check: "code: a data read of executed code sees its own bytes",
    reason: "a data read of a patched far JMP reads the INT3 trap byte (cc), not the \
                 original ea: serving reads of scanned code from the originals needs \
                 execute-only pages (protection keys), which this host does not have",
}];

/// The execution mode the suite runs the monitor in: `VMM_EXEC`, else the default.
fn exec_mode() -> String {
    std::env::var("VMM_EXEC").unwrap_or_else(|_| "translate".into())
}

fn gap(test: &str, check: &str) -> Option<&'static Gap> {
    let mode = exec_mode();
    MONITOR_GAPS
        .iter()
        .find(|g| g.mode == mode && g.test == test && check.starts_with(g.check))
}

/// How one kernel ended under one runner.
struct Run {
    /// Exit status; None when killed at the timeout.
    status: Option<i32>,
    output: String,
    report: Report,
}

impl Run {
    fn result(&self, expect: i32) -> String {
        match self.status {
            None => "TIMEOUT".into(),
            Some(s) if s == expect && self.report.all_passed() => "PASS".into(),
            Some(s) => format!(
                "FAIL {}/{} exit {s}",
                self.report.failed,
                self.report.checks.len()
            ),
        }
    }
}

fn run_vmm(kernel: &str, append: &str, timeout: u32, disks: &[PathBuf], smp: u8) -> Run {
    let smp = smp.to_string();
    let mut args = vec!["run", "--kernel", kernel, "--append", append, "--smp", &smp];
    for d in disks {
        args.extend(["--disk", d.to_str().expect("scratch paths are UTF-8")]);
    }
    let out = support::run_vmm(timeout, &args);
    Run {
        status: out.status.filter(|_| !out.timed_out()),
        report: parse_report(&out.stdout),
        output: out.all_output(),
    }
}

fn run_qemu(
    kernel: &str,
    append: &str,
    extra: &str,
    timeout: u32,
    disks: &[PathBuf],
    smp: u8,
) -> Run {
    let mut cmd = qemu::command(kernel, &qemu::with_quirks(append), extra);
    cmd.args(qemu::drive_args(disks));
    cmd.args(["-smp", &smp.to_string()]);
    let run = qemu::run(cmd, Duration::from_secs(timeout.into()))
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", qemu::QEMU));
    Run {
        status: run.status.and_then(|s| s.code()),
        report: parse_report(&run.output),
        output: run.output,
    }
}

/// `vmm coverage --results` on the file this runner wrote: it must succeed, give every
/// patched and trapping class of the rewriter's table a row with its action, and show as
/// covered each class some passing check names. Returns the table, or what is wrong.
fn coverage_of(
    results: &std::path::Path,
    vmm_checks: &[(String, Outcome)],
) -> Result<String, String> {
    let out = support::vmm(60, &["coverage", "--results"])
        .arg(results)
        .output()
        .map_err(|e| format!("vmm coverage does not start: {e}"))?;
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.code() != Some(0) {
        return Err(format!(
            "vmm coverage --results exited {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let row = |subject: &str| -> Option<Vec<&str>> {
        table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(subject))
            .map(|l| l.split_whitespace().collect())
    };
    for c in rewriter::CLASS_TABLE
        .iter()
        .filter(|c| c.action != rewriter::Action::None)
    {
        let Some(r) = row(c.name) else {
            return Err(format!("vmm coverage has no row for class {}", c.name));
        };
        if r[1] != c.action.name() {
            return Err(format!("vmm coverage gives {} the action {}", c.name, r[1]));
        }
        let passing = vmm_checks
            .iter()
            .any(|(n, o)| *o == Outcome::Pass && n.split(": ").next() == Some(c.name));
        if passing != (r[2] == "full" || r[2] == "partial") {
            return Err(format!(
                "vmm coverage says {} for {}, passing checks: {passing}",
                r[2], c.name
            ));
        }
    }
    // An unreadable results file is an error naming the file.
    let missing = results.with_extension("missing");
    let bad = Command::new(support::vmm_binary())
        .args(["coverage", "--results"])
        .arg(&missing)
        .output()
        .map_err(|e| format!("vmm coverage does not start: {e}"))?;
    if bad.status.code() != Some(1)
        || !String::from_utf8_lossy(&bad.stderr).contains(&*missing.to_string_lossy())
    {
        return Err(format!(
            "vmm coverage --results {}: status {:?}, stderr {}",
            missing.display(),
            bad.status.code(),
            String::from_utf8_lossy(&bad.stderr)
        ));
    }
    Ok(table)
}

/// Fresh disk images for one run of `test` under `runner` (tests.cfg `disks`), in the
/// suite's scratch directory.
fn disk_images(test: &str, runner: &str, sizes: &[u64]) -> Vec<PathBuf> {
    let dir = support::scratch_dir("suite");
    (0u8..)
        .zip(sizes)
        .map(|(disk, &size)| {
            let path = dir.join(format!("{test}-{runner}-hd{disk}.img"));
            guests::disk_image::create(&path, disk, size)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
            path
        })
        .collect()
}

/// The verdict on one paired check.
enum Verdict {
    Agree,
    Known(String),
    Differ(String),
}

fn outcome(o: Option<Outcome>) -> &'static str {
    match o {
        Some(Outcome::Pass) => "PASS",
        Some(Outcome::Fail) => "FAIL",
        Some(Outcome::Skip) => "SKIP",
        None => "missing",
    }
}

/// Judges one check. `qemu_ran` false: only the monitor's outcome is judged.
fn judge(test: &str, p: &Pair, qemu_ran: bool) -> Option<Verdict> {
    let vmm = p.first;
    let ref_ = if qemu_ran { p.second } else { vmm };
    // A check the quirk words made QEMU skip has its deviation on the monitor's side.
    if vmm.is_none()
        && p.second
            .is_some_and(|o| guests::report::skipped_by_quirk(&p.name, o))
    {
        return None;
    }
    if vmm.is_some() && vmm == ref_ && vmm != Some(Outcome::Fail) {
        return Some(Verdict::Agree);
    }
    let mut reasons = Vec::new();
    if qemu_ran {
        if let Some(d) = qemu::deviation(test, &p.name) {
            reasons.push(format!("QEMU deviation: {}", d.reason));
        }
    }
    if let Some(g) = gap(test, &p.name) {
        reasons.push(format!("monitor gap: {}", g.reason));
    }
    let what = format!(
        "{test}: {}: vmm {}, qemu {}",
        p.name,
        outcome(vmm),
        if qemu_ran {
            outcome(p.second)
        } else {
            "not run"
        }
    );
    Some(if reasons.is_empty() {
        Verdict::Differ(what)
    } else {
        Verdict::Known(format!("{what} — {}", reasons.join("; ")))
    })
}

fn main() -> ExitCode {
    // `cargo test -- --list` and filters come from the test harness protocol: this runner
    // has one test, the suite.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        println!("suite: test");
        return ExitCode::SUCCESS;
    }
    if let Some(filter) = args.iter().find(|a| !a.starts_with('-')) {
        if !"suite".contains(filter.as_str()) {
            return ExitCode::SUCCESS;
        }
    }

    let qemu_ran = qemu::available();
    let ci = std::env::var("CI").as_deref() == Ok("true");
    let mut failures: Vec<String> = Vec::new();
    let (mut passed, mut failed, mut known) = (0usize, 0usize, 0usize);
    if !qemu_ran {
        let msg = format!("{} cannot be run: checks are not compared", qemu::QEMU);
        if ci {
            failures.push(format!("{msg} (required in CI)"));
            failed += 1;
        } else {
            println!("note: {msg}");
        }
    }

    let entries = parse_config(tests_cfg()).expect("tests.cfg parses");
    let mut table = String::new();
    let _ = writeln!(
        table,
        "{:<11} {:>6}  {:<20} {:<20} {:>6} {:>6} {:>6}",
        "test", "checks", "vmm", "qemu", "agree", "known", "differ"
    );
    let mut known_lines = Vec::new();
    let mut used_gaps = vec![false; MONITOR_GAPS.len()];
    let mut used_devs = vec![false; qemu::DEVIATIONS.len()];
    let mut results = String::new();
    let mut vmm_checks: Vec<(String, Outcome)> = Vec::new();

    for entry in &entries {
        let name = entry.file.trim_end_matches(".elf");
        if exec_mode() == "patch" && name.starts_with("escape_") {
            // Patch mode is not isolating: what the escape kernels do there (escapes
            // stopped, host selectors seen) is asserted by tests/tests/hostile_suite.rs.
            println!("{name}: not run in patch mode (see hostile_suite.rs)");
            continue;
        }
        let kernel = guests::find(name)
            .unwrap_or_else(|| panic!("tests.cfg names unbuilt kernel {name}"))
            .path;
        let vmm_disks = disk_images(name, "vmm", &entry.disks);
        let qemu_disks = disk_images(name, "qemu", &entry.disks);
        // The two runs of one kernel go side by side; kernels one after another (two cores).
        let (vmm, qemu) = thread::scope(|s| {
            let q = qemu_ran.then(|| {
                s.spawn(|| {
                    run_qemu(
                        kernel,
                        &entry.append,
                        &entry.extra_params,
                        entry.timeout,
                        &qemu_disks,
                        entry.smp,
                    )
                })
            });
            let v = run_vmm(kernel, &entry.append, entry.timeout, &vmm_disks, entry.smp);
            (v, q.map(|h| h.join().expect("QEMU runner thread")))
        });
        for image in vmm_disks.iter().chain(&qemu_disks) {
            let _ = std::fs::remove_file(image);
        }
        let _ = writeln!(results, "== {name}\n{}", vmm.output);
        vmm_checks.extend(vmm.report.checks.iter().cloned());

        let empty = Report::default();
        let pairs = pair_checks(&vmm.report, qemu.as_ref().map_or(&empty, |q| &q.report));
        let (mut agree, mut kn, mut differ) = (0, 0, 0);
        for p in &pairs {
            match judge(name, p, qemu_ran) {
                None => {}
                Some(Verdict::Agree) => agree += 1,
                Some(Verdict::Known(line)) => {
                    kn += 1;
                    known_lines.push(line);
                    if let Some(i) = MONITOR_GAPS.iter().position(|g| {
                        g.mode == exec_mode() && g.test == name && p.name.starts_with(g.check)
                    }) {
                        used_gaps[i] = true;
                    }
                    if let Some(i) = qemu::DEVIATIONS
                        .iter()
                        .position(|d| d.test == name && p.name.starts_with(d.check))
                    {
                        used_devs[i] = true;
                    }
                }
                Some(Verdict::Differ(line)) => {
                    differ += 1;
                    failures.push(line);
                }
            }
        }
        if vmm.status.is_none() {
            differ += 1;
            failures.push(format!(
                "{name}: vmm TIMEOUT after {} s\n{}",
                entry.timeout, vmm.output
            ));
        }
        if vmm.report.closing.is_none() {
            differ += 1;
            failures.push(format!(
                "{name}: the guest never printed its closing line under vmm\n{}",
                vmm.output
            ));
        }
        if let Some(q) = &qemu {
            if q.report.closing.is_none() {
                differ += 1;
                failures.push(format!(
                    "{name}: the guest never printed its closing line under QEMU\n{}",
                    q.output
                ));
            }
        }
        passed += agree;
        failed += differ;
        known += kn;
        let _ = writeln!(
            table,
            "{:<11} {:>6}  {:<20} {:<20} {:>6} {:>6} {:>6}",
            name,
            pairs.len(),
            vmm.result(entry.expect_exit),
            qemu.as_ref()
                .map_or("not run".into(), |q| q.result(entry.expect_exit)),
            agree,
            kn,
            differ
        );
    }

    for (g, used) in MONITOR_GAPS.iter().zip(&used_gaps) {
        if !used && g.mode == exec_mode() {
            failed += 1;
            failures.push(format!(
                "{}: {}: listed as a monitor gap but no longer differs; remove it",
                g.test, g.check
            ));
        }
    }
    if qemu_ran {
        for (d, used) in qemu::DEVIATIONS.iter().zip(&used_devs) {
            if !used {
                failed += 1;
                failures.push(format!(
                    "{}: {}: listed as a QEMU deviation but no longer differs; remove it",
                    d.test, d.check
                ));
            }
        }
    }

    let results_path =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("suite-vmm-results.txt");
    if let Err(e) = std::fs::write(&results_path, &results) {
        failed += 1;
        failures.push(format!("cannot write {}: {e}", results_path.display()));
    }

    match coverage_of(&results_path, &vmm_checks) {
        Ok(coverage) => println!("{coverage}"),
        Err(e) => {
            failed += 1;
            failures.push(e);
        }
    }

    print!("{table}");
    if !known_lines.is_empty() {
        println!("\nknown differences ({known}):");
        for l in &known_lines {
            println!("  {l}");
        }
    }
    if !failures.is_empty() {
        println!("\nfailures:");
        for f in &failures {
            println!("  {f}");
        }
    }
    println!("\nvmm results: {}", results_path.display());
    println!("{passed} passed, {failed} failed");
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
