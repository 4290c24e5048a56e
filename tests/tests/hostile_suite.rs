//! The hostile suite: the `escape_*` guest kernels try to leave the guest — far transfers to
//! the host's code selectors hidden inside other instructions, in skipped bytes and in
//! 16-bit code, hidden segment reads and system calls, the monitor window, self-modifying
//! code through an alias — under both execution engines.
//!
//! `--exec translate` must give what bare metal (and QEMU) gives for every check: each
//! kernel runs whole and every check passes. `--exec patch` is not isolating: each check
//! runs alone (`only=NAME`, so an escape the monitor stops does not hide the rest) and its
//! outcome must be the one documented in guests/README.md, "Hostile suite: what each mode
//! does". [`ATTACKS`] is that table; a check a kernel reports that the table does not list
//! fails the suite, so the two stay in step.

use std::collections::BTreeSet;

use guests::{parse_report, Outcome, Report};
use support::Run;

/// What one check does under one engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// The check passes, as on bare metal.
    Pass,
    /// The check fails (the guest saw a host value or the wrong exception) and the guest
    /// runs on to its closing line.
    Wrong,
    /// The VM stops cleanly (status 4) with a diagnostic containing this text.
    Stopped(&'static str),
    /// The host CPU decides (AMD and Intel differ): only "no crash, no hang" is asserted.
    HostDependent,
}

/// The diagnostic of a guest caught running in the host's 64-bit code segment.
const ESCAPE_STOPPED: &str = "guest code ran in the host's 64-bit code segment at";

/// One row of the table: a check of a kernel and what each engine does with it.
struct Attack {
    kernel: &'static str,
    /// The check's name, the word after `only=`.
    check: &'static str,
    /// Runs only when named (`only=NAME`), never in a whole-kernel run.
    opt_in: bool,
    translate: Expect,
    patch: Expect,
}

const fn row(kernel: &'static str, check: &'static str, patch: Expect) -> Attack {
    Attack {
        kernel,
        check,
        opt_in: false,
        translate: Expect::Pass,
        patch,
    }
}

use Expect::{HostDependent, Pass, Stopped, Wrong};

const H: &str = "escape_hidden";
const C16: &str = "escape_code16";
const W: &str = "escape_window";
const A: &str = "escape_alias";

/// Every check of the escape kernels, and its outcome under each engine
/// (guests/README.md, "Hostile suite: what each mode does").
const ATTACKS: &[Attack] = &[
    // Far transfers to the host's selectors hidden in a TEST's displacement and immediate.
    row(H, "ljmp-33", Stopped(ESCAPE_STOPPED)),
    row(H, "ljmp-23", Wrong),
    row(H, "lcall-33", Stopped(ESCAPE_STOPPED)),
    row(H, "lcall-23", Wrong),
    row(H, "lret-33", Stopped(ESCAPE_STOPPED)),
    row(H, "lret-23", Wrong),
    row(H, "iret-33", Stopped(ESCAPE_STOPPED)),
    row(H, "iret-23", Wrong),
    row(H, "ljmp-33-cpl3", Stopped(ESCAPE_STOPPED)),
    row(H, "lret-33-cpl3", Stopped(ESCAPE_STOPPED)),
    row(H, "ljmp-33-guest-code", Stopped(ESCAPE_STOPPED)),
    // Hidden segment reads and descriptor probes: the host's tables answer.
    row(H, "mov-cs", Wrong),
    row(H, "mov-ds", Wrong),
    row(H, "mov-ss", Wrong),
    row(H, "push-cs", Wrong),
    row(H, "lar-08", Wrong),
    row(H, "lar-33", Wrong),
    row(H, "lsl-10", Wrong),
    row(H, "lsl-33", Wrong),
    row(H, "verr-08", Wrong),
    row(H, "verr-33", Wrong),
    // Hidden system calls: INT 0x80 meets the seccomp backstop; SYSENTER and SYSCALL in
    // compat mode behave differently on AMD and Intel hosts.
    row(H, "int80", Pass),
    row(H, "sysenter", HostDependent),
    row(H, "syscall", HostDependent),
    row(H, "mov-cs-cpl3", Wrong),
    row(H, "lar-33-cpl3", Wrong),
    row(H, "int80-cpl3", Pass),
    // Code written over bytes that never decoded.
    row(H, "gap-ff", Pass),
    row(H, "gap-mov-cs", Wrong),
    row(H, "gap-ljmp-33", Stopped(ESCAPE_STOPPED)),
    row(H, "gap-mov-cs-cpl3", Wrong),
    // A 16-bit code segment whose bytes decode differently as 32-bit code: patch mode
    // scans a page with the size of the code segment that enters it.
    row(C16, "code16-mov-cs", Pass),
    row(C16, "code16-ljmp-33", Pass),
    // The monitor window.
    row(W, "store-ds", Pass),
    row(W, "store-es", Pass),
    row(W, "store-fs", Pass),
    row(W, "store-gs", Pass),
    row(W, "store-ss", Pass),
    row(W, "store-stos", Pass),
    row(W, "store-movs", Pass),
    row(W, "store-segment-base", Pass),
    row(W, "store-rom", Pass),
    row(W, "scan", Pass),
    row(W, "paging-rw", Pass),
    row(W, "paging-rw-top", Pass),
    row(W, "paging-exec", Pass),
    row(W, "paging-exec-top", Pass),
    row(W, "paging-absent", Pass),
    row(W, "paging-push", Pass),
    // PUSH with ESP in memory without RAM is not emulated (a monitor gap, both engines).
    Attack {
        kernel: W,
        check: "store-push",
        opt_in: true,
        translate: Stopped(PUSH_NOT_EMULATED),
        patch: Stopped(PUSH_NOT_EMULATED),
    },
    // Executing memory without RAM has no reference (QEMU reads zeros there and runs
    // `add %al, (%eax)` through the hole): the monitor stops the VM.
    Attack {
        kernel: W,
        check: "exec-noram",
        opt_in: true,
        translate: Stopped(FETCH_NO_RAM),
        patch: Stopped(FETCH_NO_RAM),
    },
    // Self-modifying code through an alias.
    row(A, "alias-4k", Pass),
    row(A, "alias-4m", Pass),
    row(A, "alias-movs", Pass),
    row(A, "alias-identity", Pass),
    row(A, "alias-ljmp-33", Pass),
    row(A, "alias-mov-cs", Pass),
];

/// The PUSH itself (at the window's first byte), not a fault delivered later on the same
/// stack, is what the monitor must stop at.
const PUSH_NOT_EMULATED: &str = "access to 0xfc000000 (page 0, no RAM, or patched code) by `push";
const FETCH_NO_RAM: &str = "instruction fetch from 0xfc000000, where the guest has no RAM";

/// The escape kernels, in table order.
fn kernels() -> Vec<&'static str> {
    let mut v: Vec<&str> = Vec::new();
    for a in ATTACKS {
        if !v.contains(&a.kernel) {
            v.push(a.kernel);
        }
    }
    v
}

/// `vmm run --exec MODE --kernel KERNEL --append APPEND`.
fn run(mode: &str, kernel: &str, append: &str) -> Run {
    support::run_vmm(
        60,
        &[
            "run",
            "--exec",
            mode,
            "--kernel",
            support::guest_kernel(kernel),
            "--append",
            append,
        ],
    )
}

/// The check's name without its prefixes: the field after the first `: `.
fn check_name(full: &str) -> &str {
    full.split(": ").nth(1).unwrap_or(full)
}

/// Whether `out`, the run of check `check` alone, shows `expect`; `Err` says what it shows.
fn judge(check: &str, expect: Expect, out: &Run) -> Result<(), String> {
    let report: Report = parse_report(&out.stdout);
    let seen: Vec<Outcome> = report
        .checks
        .iter()
        .filter(|(n, _)| check_name(n) == check)
        .map(|(_, o)| *o)
        .collect();
    if out.signal.is_some() || out.timed_out() {
        return Err(format!(
            "the monitor crashed or hung: status {:?}, signal {:?}",
            out.status, out.signal
        ));
    }
    let ok = match expect {
        Pass => out.status == Some(1) && seen == [Outcome::Pass] && report.all_passed(),
        Wrong => out.status == Some(3) && seen == [Outcome::Fail] && report.closing == Some((0, 1)),
        Stopped(diag) => {
            out.status == Some(4)
                && out
                    .stderr
                    .lines()
                    .any(|l| l.starts_with("vmm: guest stopped: ") && l.contains(diag))
        }
        // Any orderly end: the guest's own exit (1 or 3) or a clean stop (4).
        HostDependent => matches!(out.status, Some(1 | 3 | 4)),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "expected {expect:?}; status {:?}, check outcomes {seen:?}",
            out.status
        ))
    }
}

/// Runs every row alone under `mode` and collects the rows whose outcome differs.
fn each_check_alone(mode: &str, expect: impl Fn(&Attack) -> Expect) -> Vec<String> {
    let mut wrong = Vec::new();
    for a in ATTACKS {
        let out = run(mode, a.kernel, &format!("only={}", a.check));
        if let Err(e) = judge(a.check, expect(a), &out) {
            wrong.push(format!(
                "{} only={}: {e}\n{}",
                a.kernel,
                a.check,
                out.all_output()
            ));
        }
    }
    wrong
}

#[test]
fn translate_runs_every_escape_kernel_as_bare_metal_does() {
    let mut wrong = Vec::new();
    for kernel in kernels() {
        let out = run("translate", kernel, "");
        let report = parse_report(&out.stdout);
        let seen: BTreeSet<&str> = report.checks.iter().map(|(n, _)| check_name(n)).collect();
        let listed: BTreeSet<&str> = ATTACKS
            .iter()
            .filter(|a| a.kernel == kernel && !a.opt_in)
            .map(|a| a.check)
            .collect();
        let problem = if out.signal.is_some() || out.timed_out() {
            Some(format!("crashed or hung (signal {:?})", out.signal))
        } else if out.status != Some(1) || !report.all_passed() {
            Some(format!("status {:?}, a check failed", out.status))
        } else if seen != listed {
            Some(format!(
                "reports the checks {seen:?}, the table lists {listed:?}"
            ))
        } else {
            None
        };
        if let Some(p) = problem {
            wrong.push(format!("{kernel}: {p}\n{}", out.all_output()));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}

#[test]
fn translate_gives_each_check_alone_its_documented_outcome() {
    let wrong = each_check_alone("translate", |a| a.translate);
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}

#[test]
fn patch_gives_each_check_alone_its_documented_outcome() {
    let wrong = each_check_alone("patch", |a| a.patch);
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}

/// The whole-kernel runs under patch mode end in order, whatever they meet first: no host
/// signal kills the monitor and no guest hangs it.
#[test]
fn patch_whole_kernels_end_without_a_crash() {
    for kernel in kernels() {
        let out = run("patch", kernel, "");
        assert!(
            out.signal.is_none() && matches!(out.status, Some(1 | 3 | 4)),
            "{kernel}: status {:?}, signal {:?}\n{}",
            out.status,
            out.signal,
            out.all_output()
        );
    }
}
