//! The kernel proxy serving the proxy guest's console, disk and clock calls: three
//! policies, three different sets of services for the same guest calls, the guest's
//! own checks passing each time; hostile arguments; unusable policies.

mod proxy_support;

use proxy_support::*;

fn write_policy(dir: &std::path::Path, name: &str, services: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("{services}\n{BINDINGS}")).unwrap();
    path.display().to_string()
}

/// The service counter line of `--stats` for `service`, e.g. "tty:logfile (policy)".
fn served(stderr: &str, service: &str) -> u64 {
    stderr
        .lines()
        .find(|l| l.trim_end().ends_with(service))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn three_policies_serve_the_same_calls_with_three_services() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // 1: console to a log file, disk on a file image, virtual clock (1000 ns a read).
    let image = d.join("disk.img");
    make_image(&image);
    let log = d.join("console.log");
    let p1 = write_policy(
        d,
        "file.toml",
        &format!(
            "[services.tty]\nid = \"logfile\"\nparams = {{ path = \"{}\" }}\n\
             [services.block]\nid = \"file\"\nparams = {{ path = \"{}\" }}\n\
             [services.clock]\nid = \"virtual\"\nparams = {{ step_ns = 1000 }}\n",
            log.display(),
            image.display()
        ),
    );
    let out = run(&["--policy", &p1, "--stats"]);
    let stdout = assert_guest_passed(&out);
    let stderr = &out.stderr;
    assert!(
        !stdout.contains(HELLO),
        "the console write went to the log file"
    );
    // The second write follows the guest's rewrite of code in the function's page:
    // the page was rescanned and the entry point stayed bound.
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        format!("{HELLO}\nproxy guest: the same call after its code page changed\n")
    );
    // (Patch mode rescans the page; translate mode drops the page's blocks.)
    let counter = |name: &str| -> u64 {
        stderr
            .lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    assert!(
        counter("rescans") + counter("tc_invalidations") >= 1,
        "{stderr}"
    );
    assert!(
        stdout.contains("sector 0 begins \"IMAGE-SECTOR-ZER\""),
        "{stdout}"
    );
    assert!(stdout.contains("clock: delta 1000\r"), "{stdout}");
    let bytes = std::fs::read(&image).unwrap();
    assert_disk_checks_written(&bytes);
    assert_eq!(&bytes[..IMAGE_MAGIC.len()], IMAGE_MAGIC);
    assert_eq!(served(stderr, "tty:logfile (policy)"), 3, "{stderr}");
    assert!(served(stderr, "block:file (policy)") >= 5, "{stderr}");
    assert_eq!(served(stderr, "clock:virtual (policy)"), 3, "{stderr}");

    // 2: console to the terminal, copy-on-write disk over a base image that must stay
    // untouched, virtual clock of another step.
    let base = d.join("base.img");
    let original = make_image(&base);
    let p2 = write_policy(
        d,
        "cow.toml",
        &format!(
            "[services.tty]\nid = \"terminal\"\n\
             [services.block]\nid = \"cow\"\nparams = {{ base = \"{}\" }}\n\
             [services.clock]\nid = \"virtual\"\nparams = {{ step_ns = 7 }}\n",
            base.display()
        ),
    );
    let out = run(&["--policy", &p2, "--stats"]);
    let stdout = assert_guest_passed(&out);
    let stderr = &out.stderr;
    // The terminal service writes the guest's bytes as they are: no UART \r.
    assert!(stdout.contains(&format!("{HELLO}\nPASS")), "{stdout}");
    assert!(
        stdout.contains("sector 0 begins \"IMAGE-SECTOR-ZER\""),
        "{stdout}"
    );
    assert!(stdout.contains("clock: delta 7\r"), "{stdout}");
    assert_eq!(
        std::fs::read(&base).unwrap(),
        original,
        "the base image is untouched"
    );
    assert!(served(stderr, "block:cow (policy)") >= 5, "{stderr}");

    // 3: console discarded, a blank memory disk, the host clock.
    let p3 = write_policy(
        d,
        "memory.toml",
        "[services.tty]\nid = \"discard\"\n\
         [services.block]\nid = \"memory\"\nparams = { sectors = 128 }\n\
         [services.clock]\nid = \"host\"\n",
    );
    let out = run(&["--policy", &p3, "--stats"]);
    let stdout = assert_guest_passed(&out);
    let stderr = &out.stderr;
    assert!(!stdout.contains(HELLO), "{stdout}");
    assert!(
        stdout.contains("sector 0 begins \"................\""),
        "{stdout}"
    );
    assert!(served(stderr, "tty:discard (policy)") >= 2, "{stderr}");
    assert!(served(stderr, "block:memory (policy)") >= 5, "{stderr}");
    assert_eq!(served(stderr, "clock:host (policy)"), 3, "{stderr}");
}

#[test]
fn without_a_policy_the_guest_runs_its_own_code() {
    let out = run(&["--stats"]);
    let stdout = assert_guest_passed(&out);
    // The guest's own console goes through the UART, which turns \n into \r\n.
    assert!(stdout.contains(&format!("{HELLO}\r\n")), "{stdout}");
    assert!(
        stdout.contains("sector 0 begins \"................\""),
        "{stdout}"
    );
    assert!(!out.stderr.contains("kernel proxy"));
}

#[test]
fn hostile_arguments_get_the_bindings_error_return() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_policy(
        dir.path(),
        "p.toml",
        "[services.tty]\nid = \"buffer\"\n[services.block]\nid = \"memory\"\nparams = { sectors = 128 }\n",
    );
    let out = run(&["--policy", &p, "--stats"]);
    let stdout = assert_guest_passed(&out);
    let stderr = &out.stderr;
    for check in [
        "console buffer outside RAM",
        "console length 2 GiB",
        "console buffer wraps 4 GiB",
        "disk sector number past the disk",
        "disk count of a million sectors",
        "disk read into memory outside RAM",
        "disk write from a buffer wrapping 4 GiB",
        "disk intact after refused calls",
    ] {
        assert!(
            stdout.contains(&format!("PASS: hostile: {check}")),
            "{check}\n{stdout}"
        );
    }
    // Every hostile call reached the proxy and was refused there: 5 bad arguments, 3
    // requests the disk service refused (sectors past its end).
    let summary = stderr
        .lines()
        .find(|l| l.starts_with("kernel proxy:"))
        .unwrap_or_default();
    assert!(summary.ends_with(" 8 failed"), "{stderr}");
}

#[test]
fn a_binding_that_refuses_the_guests_call_fails_the_guests_check() {
    // The proxy, not the guest's own code, answers: a console binding that takes at
    // most 16 bytes refuses the guest's 44-byte write with its error return.
    let dir = tempfile::tempdir().unwrap();
    let bindings = BINDINGS.replace("max = 4096", "max = 16");
    let p = dir.path().join("p.toml");
    std::fs::write(&p, format!("[services.tty]\nid = \"discard\"\n{bindings}")).unwrap();
    let out = run(&["--policy", p.to_str().unwrap()]);
    let stdout = &out.stdout;
    assert_eq!(
        out.status,
        Some(3),
        "debug-exit 1: a check failed\n{stdout}"
    );
    assert!(
        stdout.contains("FAIL: console: write returns the length (-1)"),
        "{stdout}"
    );
}

#[test]
fn unusable_policies_are_refused_before_the_guest_runs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases = [
        (
            "[services.tty]\nid = \"logfile\"\n",
            "services.tty",
        ),
        (
            "[services.block]\nid = \"memory\"\nparams = { sectors = \"many\" }\n",
            "services.block.params.sectors",
        ),
        (
            "[[bindings]]\nsymbol = \"os_console_write\"\nop = \"tty.scribble\"\n",
            "bindings[0].op",
        ),
        (
            "[[bindings]]\nsymbol = \"no_such_function\"\nop = \"clock.monotonic\"\nreturns = \"value64\"\n",
            "no_such_function",
        ),
    ];
    for (i, (src, expected)) in cases.iter().enumerate() {
        let p = d.join(format!("bad{i}.toml"));
        std::fs::write(&p, src).unwrap();
        let out = run(&["--policy", p.to_str().unwrap()]);
        let stderr = &out.stderr;
        assert_eq!(out.status, Some(2), "{src}\n{stderr}");
        assert!(
            stderr.contains(expected),
            "{src}: expected {expected:?} in\n{stderr}"
        );
        assert!(
            stderr.contains(&format!("bad{i}.toml")) || stderr.contains("policy line"),
            "{stderr}"
        );
        assert!(out.stdout.is_empty(), "the guest did not run");
    }
    let out = run(&["--policy", d.join("missing.toml").to_str().unwrap()]);
    assert_eq!(out.status, Some(2));
    assert!(out.stderr.contains("missing.toml"));
}
