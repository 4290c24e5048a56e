//! Administration of a running VM's kernel policy through its control socket: the tty
//! service is switched while the guest keeps writing, and its output moves from one
//! log file to the other.

mod proxy_support;

use proxy_support::*;

fn policy(log: &std::path::Path) -> String {
    format!(
        "[services.tty]\nid = \"logfile\"\nparams = {{ path = \"{}\" }}\n\
         [services.block]\nid = \"memory\"\nparams = {{ sectors = 128 }}\n{BINDINGS}",
        log.display()
    )
}

fn vmm_policy(args: &[&str]) -> support::Run {
    support::run(support::vmm(30, &["policy"]).args(args))
}

#[test]
fn switching_the_tty_service_of_a_running_vm_moves_its_output() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (log_a, log_b) = (d.join("a.log"), d.join("b.log"));
    let first = d.join("first.toml");
    std::fs::write(&first, policy(&log_a)).unwrap();
    let second = d.join("second.toml");
    std::fs::write(&second, policy(&log_b)).unwrap();
    let broken = d.join("broken.toml");
    std::fs::write(
        &broken,
        "[services.tty]\nid = \"logfile\"\nparams = { path = 3 }\n",
    )
    .unwrap();
    let sock = d.join("api.sock");
    let sock_s = sock.to_str().unwrap();

    let mut cmd = run_command(&[
        "--policy",
        first.to_str().unwrap(),
        "--api-sock",
        sock_s,
        "--append",
        "soak=40",
    ]);
    cmd.current_dir(d);
    let mut vm = Running::spawn(cmd);
    vm.wait_for("soak: round 5 done");

    let shown = vmm_policy(&["show", "--api-sock", sock_s]);
    assert!(shown.success(), "{}", shown.stderr);
    assert_eq!(shown.stdout, policy(&log_a));

    // An invalid policy is refused with its line and field; the one in force stays.
    let refused = vmm_policy(&["set", "--api-sock", sock_s, broken.to_str().unwrap()]);
    assert_eq!(refused.status, Some(1));
    assert!(
        refused.stderr.contains("broken.toml:")
            && refused.stderr.contains("field `services.tty.params.path`"),
        "{}",
        refused.stderr
    );

    let set = vmm_policy(&["set", "--api-sock", sock_s, second.to_str().unwrap()]);
    assert!(set.success(), "{}", set.stderr);
    assert!(set.stdout.starts_with("policy generation "));
    let shown = vmm_policy(&["show", "--api-sock", sock_s]);
    assert_eq!(shown.stdout, policy(&log_b));

    let (status, stdout, stderr) = vm.finish();
    assert_eq!(status, Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("PASS: soak: 40 rounds of calls succeeded"),
        "{stdout}"
    );

    let a = std::fs::read_to_string(&log_a).unwrap();
    let b = std::fs::read_to_string(&log_b).unwrap();
    let rounds = |log: &str| -> Vec<u32> {
        log.lines()
            .filter_map(|l| l.strip_prefix("console: soak round "))
            .map(|n| n.parse().unwrap())
            .collect()
    };
    let (ra, rb) = (rounds(&a), rounds(&b));
    assert!(ra.contains(&0) && ra.contains(&5), "{a}");
    assert!(rb.contains(&39), "{b}");
    assert!(!ra.contains(&39) && !rb.contains(&0), "a:\n{a}\nb:\n{b}");
    // Every round's line is in exactly one of the logs, in order: nothing lost.
    let all: Vec<u32> = ra.iter().chain(&rb).copied().collect();
    assert_eq!(all, (0..40).collect::<Vec<_>>());
}

#[test]
fn control_socket_answers_bad_requests_with_errors() {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixStream;

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = d.join("p.toml");
    std::fs::write(&p, policy(&d.join("c.log"))).unwrap();
    let sock = d.join("api.sock");
    let mut vm = Running::spawn(run_command(&[
        "--policy",
        p.to_str().unwrap(),
        "--api-sock",
        sock.to_str().unwrap(),
        "--append",
        "soak=30",
    ]));
    vm.wait_for("soak: round 2 done");
    let stream = UnixStream::connect(&sock).unwrap();
    let mut out = stream.try_clone().unwrap();
    let mut lines = BufReader::new(stream).lines();
    for (request, expect) in [
        ("{\"op\":\"reboot\"}", "bad request"),
        ("not json", "bad request"),
        ("{\"op\":\"set\",\"policy\":\"[[bindings]]\\nsymbol = \\\"nope\\\"\\nop = \\\"clock.wall\\\"\\n\"}", "no symbol `nope`"),
        ("{\"op\":\"stats\"}", "\"calls\""),
    ] {
        writeln!(out, "{request}").unwrap();
        let reply = lines.next().unwrap().unwrap();
        assert!(reply.contains(expect), "{request} -> {reply}");
    }
    drop(out);
    let (status, stdout, stderr) = vm.finish();
    assert_eq!(status, Some(1), "{stdout}\n{stderr}");
}
