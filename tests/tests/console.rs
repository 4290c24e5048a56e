//! The guest's console as a user sees it: text typed into `vmm run`'s standard input
//! reaches the guest through COM1's receive interrupt, routed by the IOAPIC (the echo
//! kernel masks both 8259s and LINT0, so no other path exists), and comes back echoed on
//! standard output; `--stats` counts the accesses to each interrupt controller.

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

/// How long any one step may take before the test gives up.
const STEP: Duration = Duration::from_secs(20);

#[test]
fn typed_line_is_echoed_through_the_ioapic_routed_uart() {
    let mut child = support::vmm(
        60,
        &["run", "--kernel", support::guest_kernel("echo"), "--stats"],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("vmm starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let stderr_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let mut seen = Vec::new();
    let mut wait_for = |want: &str| loop {
        match lines.recv_timeout(STEP) {
            Ok(line) => {
                let hit = line.trim_end() == want;
                seen.push(line);
                if hit {
                    return;
                }
            }
            Err(e) => panic!("no line {want:?} ({e}); output so far: {seen:#?}"),
        }
    };
    wait_for("echo: ready");
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(b"hello from the host\n")
        .expect("write to vmm");
    stdin.flush().expect("flush");
    wait_for("hello from the host");
    stdin.write_all(b"exit\n").expect("write to vmm");
    wait_for("exit");
    drop(stdin);
    let status = child.wait().expect("vmm ends");
    let stats = stderr_reader.join().expect("stderr reader");
    assert_eq!(
        status.code(),
        Some(1),
        "debug-exit status 1; stderr:\n{stats}"
    );
    // The guest programs the IOAPIC entry and ends every interrupt at the local APIC.
    assert!(
        support::stats_counter(&stats, "mmio_ioapic_accesses") >= 2,
        "{stats}"
    );
    assert!(
        support::stats_counter(&stats, "mmio_lapic_accesses") >= 2,
        "{stats}"
    );
    assert_eq!(
        support::stats_counter(&stats, "unknown_mmio_accesses"),
        0,
        "{stats}"
    );
}
