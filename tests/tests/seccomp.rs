//! The seccomp wall: what `vmm run --print-syscalls` lists for each configuration, a
//! monitor syscall off the list refused and named (on a vCPU thread, where the call fails
//! and the run loop can stop the VM, and on any other thread, where the process exits
//! with status 10), the wall up on every thread while a real guest runs, and the guard
//! pages around the monitor's views of guest RAM and of its window.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use vmm::hostcpu::seccomp::{refused_syscall, SYSCALL_REFUSED_EXIT_STATUS};
use vmm::hostcpu::HostCpu;
use vmm::vm::{MonitorAllowlist, SyscallNeeds};

/// The syscall names `vmm run --print-syscalls ARGS` lists (the second column below the
/// two heading lines).
fn listing(args: &[&str]) -> Vec<String> {
    let mut all = vec!["run", "--print-syscalls"];
    all.extend_from_slice(args);
    let out = support::run_vmm(30, &all);
    assert!(out.success(), "vmm {all:?} failed:\n{}", out.all_output());
    let mut lines = out.stdout.lines();
    let heading = lines.next().unwrap_or_default();
    assert!(
        heading.starts_with("once the guest runs, every monitor thread is held to these"),
        "{}",
        out.stdout
    );
    assert!(lines.next().is_some_and(|l| l.contains("needed by")));
    let names: Vec<String> = lines
        .map(|l| l.split_whitespace().nth(1).unwrap_or_default().to_string())
        .collect();
    assert!(
        heading.contains(&format!(" {} syscalls", names.len())),
        "{heading}"
    );
    names
}

/// What `list` has beyond `base`, sorted.
fn extra(list: &[String], base: &[String]) -> Vec<String> {
    let mut extra: Vec<String> = list.iter().filter(|n| !base.contains(n)).cloned().collect();
    extra.sort();
    extra
}

/// The listing line of syscall `name` for `vmm run --print-syscalls ARGS`.
fn line_of(args: &[&str], name: &str) -> String {
    let mut all = vec!["run", "--print-syscalls"];
    all.extend_from_slice(args);
    let out = support::run_vmm(30, &all);
    out.stdout
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(name))
        .unwrap_or_else(|| panic!("no {name} in:\n{}", out.stdout))
        .to_string()
}

#[test]
fn the_listing_follows_the_configuration() {
    let plain = listing(&[]);
    for needed in [
        "read",
        "write",
        "mmap",
        "mprotect",
        "modify_ldt",
        "rt_sigreturn",
        "timer_settime",
        "futex",
        "tgkill",
        "exit_group",
    ] {
        assert!(plain.iter().any(|n| n == needed), "{needed}: {plain:?}");
    }
    // A plain run opens nothing, talks to nobody and starts nothing once the guest runs.
    for never in [
        "open", "openat", "socket", "connect", "accept4", "ioctl", "pread64", "pwrite64", "execve",
        "clone", "clone3", "fork", "ptrace", "kill", "mount", "setuid",
    ] {
        assert!(!plain.iter().any(|n| n == never), "{never} on {plain:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    std::fs::write(&image, vec![0u8; 64 * 512]).unwrap();
    let image = image.to_str().unwrap();
    assert_eq!(
        extra(&listing(&["--disk", image]), &plain),
        ["fdatasync", "pread64", "pwrite64"]
    );
    let read_only = format!("{image},ro");
    assert_eq!(
        extra(&listing(&["--disk", &read_only]), &plain),
        ["pread64"]
    );

    // The kernel proxy opens its services' files at their first call; its control socket
    // accepts clients, and a policy set through it may name a service node.
    let proxy = support::guest_kernel("proxy");
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "").unwrap();
    let policy = policy.to_str().unwrap();
    let proxied = extra(&listing(&["--kernel", proxy, "--policy", policy]), &plain);
    assert!(proxied.iter().any(|n| n == "openat"), "{proxied:?}");
    for no in ["accept4", "socket", "connect"] {
        assert!(!proxied.iter().any(|n| n == no), "{no} in {proxied:?}");
    }
    let sock = dir.path().join("api.sock");
    let sock = sock.to_str().unwrap();
    let api = extra(
        &listing(&["--kernel", proxy, "--policy", policy, "--api-sock", sock]),
        &plain,
    );
    for yes in [
        "accept4", "recvfrom", "sendto", "openat", "socket", "connect",
    ] {
        assert!(api.iter().any(|n| n == yes), "{yes} missing from {api:?}");
    }
    assert!(
        !std::path::Path::new(sock).exists(),
        "listing serves no control socket"
    );

    // gdb's stub accepts its connection and switches it to non-blocking: ioctl for that
    // request only.
    let gdb = extra(&listing(&["--gdb", "tcp:127.0.0.1:0"]), &plain);
    assert!(gdb.iter().any(|n| n == "accept4"), "{gdb:?}");
    let ioctl = line_of(&["--gdb", "tcp:127.0.0.1:0"], "ioctl");
    assert!(
        ioctl.contains("request FIONBIO") && ioctl.ends_with("gdb stub"),
        "{ioctl}"
    );

    // The inputs are checked as for a run.
    let out = support::run_vmm(
        30,
        &["run", "--print-syscalls", "--disk", "/nonexistent.img"],
    );
    assert_eq!(out.status, Some(2), "{}", out.all_output());
    assert!(
        out.stderr
            .contains("cannot open disk image /nonexistent.img"),
        "{}",
        out.stderr
    );
}

/// What a forked child wrote to its stderr, and its exit status.
struct ChildReport {
    stderr: String,
    status: i32,
}

/// Runs `body` in a forked child whose stderr is a pipe, and collects what it wrote and
/// its exit status. `body` must end the child itself (`_exit`, or the wall's exit).
fn in_child(body: fn() -> !) -> ChildReport {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a live array of two descriptors for pipe to fill.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: fork in a test thread; the child only redirects its stderr, runs `body` and
    // exits (glibc keeps malloc usable in the child of a multithreaded parent).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: plain descriptor calls on the pipe made above.
        unsafe {
            libc::dup2(fds[1], 2);
            libc::close(fds[0]);
        }
        body();
    }
    // SAFETY: the parent owns the read end; the write end is the child's.
    let mut read = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fds[0]) });
    // SAFETY: closing the parent's copy of the write end.
    unsafe { libc::close(fds[1]) };
    let mut stderr = String::new();
    read.read_to_string(&mut stderr).unwrap();
    let mut status = 0;
    // SAFETY: waiting for the child forked above into a live local.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status),
        "the child died of signal {}; stderr:\n{stderr}",
        libc::WTERMSIG(status)
    );
    ChildReport {
        stderr,
        status: libc::WEXITSTATUS(status),
    }
}

/// Writes `msg` to stderr without std's locks (the child of a fork).
fn say(msg: &str) {
    // SAFETY: writing a live buffer to fd 2.
    unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
}

fn exit(code: i32) -> ! {
    // SAFETY: ends the child at once; exit_group is on every allowlist.
    unsafe { libc::_exit(code) }
}

/// The address the wall's line gives for syscall `nr` (`name`), checked to lie in monitor
/// code above 4 GiB.
fn refused_at(stderr: &str, nr: u32, name: &str) -> u64 {
    let prefix = format!("vmm: seccomp wall: refused monitor syscall {nr} ({name}) at 0x");
    let line = stderr
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no line {prefix:?} in:\n{stderr}"));
    let rip = u64::from_str_radix(&line[prefix.len()..], 16).unwrap();
    assert!(rip >= 1 << 32, "{line}");
    rip
}

/// A thread with no vCPU (a device thread, the main thread after the run): an allowed
/// syscall runs, a forbidden one is named on stderr and ends the process with status 10.
#[test]
fn a_forbidden_syscall_outside_the_vcpu_ends_the_process_naming_it() {
    let child = in_child(|| {
        let list = MonitorAllowlist::for_needs(SyscallNeeds::default());
        if let Err(e) = list.install() {
            say(&format!("install failed: {e}\n"));
            exit(90);
        }
        // SAFETY: getpid has no arguments.
        let pid = unsafe { libc::syscall(libc::SYS_getpid) };
        // SAFETY: as above, through libc.
        if pid != i64::from(unsafe { libc::getpid() }) {
            exit(91);
        }
        say("getpid allowed\n");
        // SAFETY: socket takes three integers; the wall refuses it before it runs.
        let fd = unsafe { libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0) };
        say(&format!("socket returned {fd}\n"));
        exit(92);
    });
    assert_eq!(
        child.status, SYSCALL_REFUSED_EXIT_STATUS,
        "{}",
        child.stderr
    );
    assert!(
        child.stderr.starts_with("getpid allowed\n"),
        "{}",
        child.stderr
    );
    refused_at(&child.stderr, 41, "socket");
    assert!(
        !child.stderr.contains("socket returned"),
        "{}",
        child.stderr
    );
    assert_eq!(child.stderr.lines().count(), 2, "{}", child.stderr);
}

/// The vCPU thread: the refused syscall does not run and fails with EPERM, the line names
/// it, and the refusal is recorded for the run loop, which ends the run with status 10.
/// An argument value off the list is refused like a syscall off it.
#[test]
fn a_forbidden_syscall_on_the_vcpu_thread_fails_and_is_recorded() {
    let child = in_child(|| {
        let _cpu = match HostCpu::new() {
            Ok(cpu) => cpu,
            Err(e) => {
                say(&format!("no HostCpu: {e}\n"));
                exit(90);
            }
        };
        if let Err(e) = MonitorAllowlist::for_needs(SyscallNeeds::default()).install() {
            say(&format!("install failed: {e}\n"));
            exit(91);
        }
        let name = c"wall-test";
        // SAFETY: PR_SET_NAME reads the NUL-terminated name.
        if unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) } != 0 {
            exit(92);
        }
        say("prctl(PR_SET_NAME) allowed\n");
        let path = c"/etc/hostname";
        // SAFETY: openat with a NUL-terminated path; the wall refuses it before it runs.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat,
                libc::AT_FDCWD,
                path.as_ptr(),
                libc::O_RDONLY,
            )
        };
        let errno = std::io::Error::last_os_error().raw_os_error();
        match refused_syscall() {
            Some(r) if fd == -1 && errno == Some(libc::EPERM) && r.nr == 257 => {
                say(&format!("openat failed with EPERM; recorded {r}\n"));
            }
            other => {
                say(&format!(
                    "openat gave {fd}, errno {errno:?}, recorded {other:?}\n"
                ));
                exit(93);
            }
        }
        // SAFETY: PR_SET_DUMPABLE takes an integer; the wall refuses this option.
        let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1) };
        let errno = std::io::Error::last_os_error().raw_os_error();
        if rc != -1 || errno != Some(libc::EPERM) {
            exit(94);
        }
        // The first refusal stays the one recorded.
        if refused_syscall().map(|r| r.nr) != Some(257) {
            exit(95);
        }
        say("prctl(PR_SET_DUMPABLE) failed with EPERM\n");
        exit(0);
    });
    assert_eq!(child.status, 0, "{}", child.stderr);
    let rip = refused_at(&child.stderr, 257, "openat");
    assert!(
        child.stderr.contains(&format!(
            "openat failed with EPERM; recorded seccomp wall: refused monitor syscall 257 \
             (openat) at 0x{rip:016x}"
        )),
        "the recorded refusal reads as the line: {}",
        child.stderr
    );
    refused_at(&child.stderr, 157, "prctl");
    assert!(
        child.stderr.starts_with("prctl(PR_SET_NAME) allowed\n")
            && child
                .stderr
                .ends_with("prctl(PR_SET_DUMPABLE) failed with EPERM\n"),
        "{}",
        child.stderr
    );
}

/// A `vmm` process killed when the test ends, however it ends.
struct Vmm(Child);

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `(start, end, permissions, path)` of every mapping in a maps file.
fn maps(text: &str) -> Vec<(u64, u64, String, String)> {
    text.lines()
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let (a, b) = w[0].split_once('-').unwrap();
            (
                u64::from_str_radix(a, 16).unwrap(),
                u64::from_str_radix(b, 16).unwrap(),
                w[1].to_string(),
                w.get(5).map_or(String::new(), |p| (*p).to_string()),
            )
        })
        .collect()
}

/// The monitor's view of memfd `name` (the mapping above 4 GiB) has a PROT_NONE mapping
/// right below and right above it.
fn assert_view_guarded(maps: &[(u64, u64, String, String)], name: &str) {
    let i = maps
        .iter()
        .position(|(start, _, _, path)| *start >= 1 << 32 && path.contains(name))
        .unwrap_or_else(|| panic!("no view of {name} above 4 GiB: {maps:#?}"));
    let (start, end, perms, _) = &maps[i];
    assert_eq!(perms, "rw-s", "{name}");
    let below = &maps[i - 1];
    let above = &maps[i + 1];
    assert!(
        below.1 == *start && below.2 == "---p",
        "below {name}: {below:?}"
    );
    assert!(
        above.0 == *end && above.2 == "---p",
        "above {name}: {above:?}"
    );
}

#[test]
fn the_wall_is_up_on_every_thread_while_a_guest_runs() {
    let mut vmm = Vmm(Command::new(support::vmm_binary())
        .args(["run", "--kernel", support::guest_kernel("echo")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vmm starts"));
    let pid = vmm.0.id();
    let stdout = vmm.0.stdout.take().unwrap();
    let mut stderr = vmm.0.stderr.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let stderr_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let wait_for = |want: &str| loop {
        match lines.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line.trim_end() == want => return,
            Ok(_) => {}
            Err(e) => panic!("no line {want:?}: {e}"),
        }
    };
    wait_for("echo: ready");

    // The guest waits for input: the wall is up. Every thread (the vCPU, the serial
    // reader) runs in filter mode under both filters: the guest trap filter and the
    // monitor allowlist.
    let tasks: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|t| t.unwrap().path())
        .collect();
    assert!(
        tasks.len() >= 2,
        "the vCPU and the serial reader: {tasks:?}"
    );
    for task in &tasks {
        let status = std::fs::read_to_string(task.join("status")).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
                .unwrap_or_else(|| panic!("no {name} in {}", task.display()))
                .to_string()
        };
        assert_eq!(field("Seccomp:"), "2", "{}: filter mode", task.display());
        assert_eq!(field("Seccomp_filters:"), "2", "{}", task.display());
        assert_eq!(field("NoNewPrivs:"), "1", "{}", task.display());
    }

    let maps = maps(&std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap());
    assert_view_guarded(&maps, "memfd:vmm-guest-ram");
    assert_view_guarded(&maps, "memfd:vmm-monitor-window");

    let mut stdin = vmm.0.stdin.take().unwrap();
    stdin.write_all(b"exit\n").unwrap();
    stdin.flush().unwrap();
    wait_for("exit");
    drop(stdin);
    let status = vmm.0.wait().unwrap();
    let stderr = stderr_reader.join().unwrap();
    assert_eq!(
        status.code(),
        Some(1),
        "debug-exit status 1; stderr:\n{stderr}"
    );
    assert!(!stderr.contains("seccomp wall"), "{stderr}");
}
