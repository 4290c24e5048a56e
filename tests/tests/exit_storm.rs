//! A guest that exits millions of times in a tight loop (kernels/exitstorm.c: port
//! accesses, each an exit, with COM1 polled between them) keeps its console served, and a
//! stop request through the control socket (`vmm stop`) still ends it at once: the run
//! returns "stopped by request" with exit status 8. The control socket serves a run
//! without a kernel policy too, whose policy operations then say why they cannot work.

mod console_support;

use std::time::{Duration, Instant};

use console_support::Console;

/// Seconds a storm may run before `timeout` ends it: it never ends by itself.
const RUN_LIMIT_S: u32 = 180;
/// How long the storm may take to report its exits (a debug build on a busy machine
/// makes a few hundred thousand a second).
const STORM_WAIT: Duration = Duration::from_secs(120);
/// How long one console line may take to come back.
const STEP: Duration = Duration::from_secs(20);
/// The stop's bound: an exit comes every few microseconds, so the run ends within
/// milliseconds; the machine is shared, hence the margin.
const STOP_LIMIT: Duration = Duration::from_secs(5);
/// The documented exit status of a run a stop request ended.
const STOPPED_STATUS: i32 = 8;

fn storm_kernel() -> &'static str {
    support::guest_kernel("exitstorm")
}

/// The exits the guest counted, from one of its progress lines
/// ("storm: N million exits, M lines echoed").
fn reported_exits(line: &str) -> Option<u64> {
    let millions: u64 = line
        .strip_prefix("storm: ")?
        .split_once(" million exits")?
        .0
        .parse()
        .ok()?;
    Some(millions * 1_000_000)
}

/// Waits until the guest has counted more than a million exits; returns its count.
fn storm_past_a_million(vm: &mut Console) -> u64 {
    vm.wait_for_line("storm: started", STEP);
    let line = vm.wait_for("reporting more than 1000000 exits", STORM_WAIT, |l| {
        reported_exits(l).is_some_and(|n| n > 1_000_000)
    });
    reported_exits(&line).unwrap_or_default()
}

/// `vmm stop --api-sock SOCK`: its status and output.
fn vmm_stop(sock: &str) -> support::Run {
    support::run(&mut support::vmm(30, &["stop", "--api-sock", sock]))
}

#[test]
fn a_stop_request_ends_an_exit_storm_that_keeps_its_console_served() {
    let dir = tempfile::tempdir().expect("scratch directory");
    let sock = dir.path().join("vm.sock");
    let sock = sock.to_str().expect("UTF-8 path");
    let mut vm = Console::spawn(
        RUN_LIMIT_S,
        &[
            "run",
            "--kernel",
            storm_kernel(),
            "--api-sock",
            sock,
            "--stats",
        ],
    );
    let counted = storm_past_a_million(&mut vm);

    // Typed while it storms, echoed by the guest's polling between exits.
    vm.send("typed during the storm\n");
    vm.wait_for_line("typed during the storm", STEP);

    // The socket serves a VM without a kernel policy: the policy operations say why not.
    let show = support::run(&mut support::vmm(
        30,
        &["policy", "show", "--api-sock", sock],
    ));
    assert_eq!(show.status, Some(1), "{}", show.stderr);
    assert!(
        show.stderr
            .contains("without a kernel policy (no --policy)"),
        "{}",
        show.stderr
    );

    let asked = Instant::now();
    let stop = vmm_stop(sock);
    let answered = asked.elapsed();
    let ended = vm.finish();
    let latency = ended.at.duration_since(asked);
    println!(
        "stop latency: {:.1} ms from `vmm stop` starting to `vmm run` exiting \
         ({:.1} ms until it was answered); the guest had counted {counted} exits",
        latency.as_secs_f64() * 1e3,
        answered.as_secs_f64() * 1e3
    );
    assert!(stop.success(), "vmm stop: {}", stop.stderr);
    assert_eq!(stop.stdout, "stop requested\n");
    assert_eq!(
        ended.status,
        Some(STOPPED_STATUS),
        "stdout:\n{}\nstderr:\n{}",
        ended.stdout,
        ended.stderr
    );
    assert!(
        ended.stderr.contains("vmm: stopped by request"),
        "{}",
        ended.stderr
    );
    // The monitor counted the storm's exits too: port accesses, more than the guest saw.
    let port_io = support::stats_counter(&ended.stderr, "port_io");
    assert!(
        port_io > counted,
        "{port_io} port exits, guest counted {counted}"
    );
    assert!(
        latency < STOP_LIMIT,
        "the storm ran on for {latency:?} after the stop request"
    );
}

#[test]
fn the_storm_ends_with_its_checks_when_told_on_the_console() {
    let mut vm = Console::spawn(RUN_LIMIT_S, &["run", "--kernel", storm_kernel()]);
    storm_past_a_million(&mut vm);
    vm.send("first line\n");
    vm.wait_for_line("first line", STEP);
    vm.send("exit\n");
    let ended = vm.finish();
    assert_eq!(
        ended.status,
        Some(1),
        "debug-exit status 1: every check passed\nstdout:\n{}\nstderr:\n{}",
        ended.stdout,
        ended.stderr
    );
    assert!(
        ended
            .stdout
            .contains("PASS: 2 console lines were echoed during the storm")
            && ended.stdout.contains("\n3 passed, 0 failed"),
        "{}",
        ended.stdout
    );
}

#[test]
fn a_stop_request_ends_a_halted_guest() {
    // The echo kernel halts with interrupts enabled until a byte arrives: the stop must
    // end the monitor's wait, not only a running guest.
    let dir = tempfile::tempdir().expect("scratch directory");
    let sock = dir.path().join("vm.sock");
    let sock = sock.to_str().expect("UTF-8 path");
    let mut vm = Console::spawn(
        60,
        &[
            "run",
            "--kernel",
            support::guest_kernel("echo"),
            "--api-sock",
            sock,
        ],
    );
    vm.wait_for_line("echo: ready", STEP);
    let asked = Instant::now();
    let stop = vmm_stop(sock);
    let ended = vm.finish();
    let latency = ended.at.duration_since(asked);
    println!(
        "stop latency of a halted guest: {:.1} ms",
        latency.as_secs_f64() * 1e3
    );
    assert!(stop.success(), "vmm stop: {}", stop.stderr);
    assert_eq!(ended.status, Some(STOPPED_STATUS), "{}", ended.stderr);
    assert!(
        ended.stderr.contains("vmm: stopped by request"),
        "{}",
        ended.stderr
    );
    assert!(latency < STOP_LIMIT, "stopped after {latency:?}");
}

#[test]
fn vmm_stop_without_a_vm_names_the_socket() {
    let dir = tempfile::tempdir().expect("scratch directory");
    let sock = dir.path().join("nobody.sock");
    let sock = sock.to_str().expect("UTF-8 path");
    let out = vmm_stop(sock);
    assert_eq!(out.status, Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .starts_with(&format!("vmm: error: control socket {sock}: ")),
        "{}",
        out.stderr
    );
}
