//! A service node in a process of its own on loopback: it performs the disk (perform
//! mode) and ships the console code (ship mode). Killing it mid-run makes the proxy fall
//! back to the default disk with no guest-visible failure and no acknowledged write
//! lost: node and default serve the same image file, so every write the node
//! acknowledged is in the file the default then serves from.

mod proxy_support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};

use proxy_support::*;

/// A `vmm service-node` process under `timeout`, stopped when dropped.
struct Node(Child, bool);

impl Node {
    /// Stops the node: `timeout` passes SIGTERM on to it and exits when it has. Once
    /// only: after the wait its pid is no longer ours to signal.
    fn stop(&mut self) {
        if std::mem::replace(&mut self.1, true) {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.0.id()).unwrap());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

fn start_node(services: &str) -> (Node, String) {
    let mut child = support::vmm(120, &["service-node"])
        .args(["--listen", "127.0.0.1:0", "--services", services])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("node said {line:?}"))
        .to_owned();
    (Node(child, false), addr)
}

#[test]
fn killing_the_node_mid_run_falls_back_without_losing_writes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let image = d.join("disk.img");
    make_image(&image);
    let node_log = d.join("node-console.log");
    let (mut node, addr) = start_node(&format!(
        "block:disk0=file,path={};tty:console=logfile,path={}",
        image.display(),
        node_log.display()
    ));

    let policy = d.join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[services.block]\nid = \"disk0\"\nnode = \"{addr}\"\ntimeout_ms = 500\n\
             [services.tty]\nid = \"console\"\nnode = \"{addr}\"\nmode = \"ship\"\n{BINDINGS}"
        ),
    )
    .unwrap();
    // The default disk is the node's image file.
    let defaults = d.join("defaults.toml");
    std::fs::write(
        &defaults,
        format!(
            "[services.block]\nid = \"file\"\nparams = {{ path = \"{}\" }}\n",
            image.display()
        ),
    )
    .unwrap();

    let mut vm = Running::spawn(run_command(&[
        "--policy",
        policy.to_str().unwrap(),
        "--defaults",
        defaults.to_str().unwrap(),
        "--append",
        "soak=40 nohostile",
        "--stats",
    ]));
    vm.wait_for("soak: round 10 done");
    node.stop();
    let (status, stdout, stderr) = vm.finish();

    assert_eq!(status, Some(1), "guest checks failed\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("PASS: soak: 40 rounds of calls succeeded"),
        "{stdout}"
    );
    assert!(
        stdout.contains("PASS: soak: every soak sector reads back (0 bad)"),
        "{stdout}"
    );
    assert!(!stdout.contains("FAIL:"), "{stdout}");

    // Every write, acknowledged by the node or by the default, is in the image.
    let bytes = std::fs::read(&image).unwrap();
    assert_disk_checks_written(&bytes);
    for r in 0..40u32 {
        let at = (16 + r as usize) * SECTOR;
        assert_eq!(
            &bytes[at..at + SECTOR],
            &soak_sector(r)[..],
            "soak sector {r}"
        );
    }
    assert!(
        stdout.contains("sector 0 begins \"IMAGE-SECTOR-ZER\""),
        "{stdout}"
    );

    // The node performed disk calls, the default the rest.
    let count = |service: &str| -> u64 {
        stderr
            .lines()
            .find(|l| l.trim_end().ends_with(service))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    assert!(count("block:disk0 (policy)") >= 10, "{stderr}");
    assert!(count("block:file (default)") >= 1, "{stderr}");

    // Ship mode: the guest ran the node's console code itself, straight to the UART
    // (no \r, which the guest's own console adds), with no call to the proxy or node.
    assert!(stdout.contains(&format!("{HELLO}\nPASS")), "{stdout}");
    assert!(stdout.contains("console: soak round 39\n"), "{stdout}");
    assert_eq!(count("tty:console (policy)"), 0, "{stderr}");
    assert_eq!(std::fs::read(&node_log).unwrap_or_default(), b"");
}

#[test]
fn node_entries_are_checked() {
    let out = support::run(
        support::vmm(10, &["service-node", "--listen", "127.0.0.1:0"])
            .args(["--services", "block:disk0=floppy"]),
    );
    assert_eq!(out.status, Some(2));
    assert!(out.stderr.contains("floppy"), "{}", out.stderr);
    let out = support::run(
        support::vmm(10, &["service-node", "--listen", "0.0.0.0:0"])
            .args(["--services", "tty:c=buffer"]),
    );
    assert_eq!(out.status, Some(2));
    assert!(out.stderr.contains("loopback"), "{}", out.stderr);
}
