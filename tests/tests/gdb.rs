//! The gdb stub as a user drives it: real gdb in batch mode (`gdb -batch -ex 'target
//! remote :PORT' …`) against the `gdbtarget` guest kernel, by its symbols. Skipped with a
//! message when gdb is not installed, except in CI (`scripts/setup.sh test` installs it).

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest a gdb session or a debugged run may take.
const DEADLINE: Duration = Duration::from_secs(60);

fn gdb_installed() -> bool {
    let found = Command::new("gdb")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "gdb is missing in CI: scripts/setup.sh test installs it"
        );
        eprintln!("note: gdb is not installed (scripts/setup.sh test installs it); skipping");
    }
    found
}

/// Collects a child's stream on a thread.
fn collect(mut stream: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&text);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .expect("collector")
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}

/// A `vmm run --gdb` of the gdbtarget kernel waiting for gdb before its first
/// instruction, on a free port.
struct Debuggee {
    child: Child,
    port: u16,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Debuggee {
    fn start() -> Self {
        let mut child = Command::new(support::vmm_binary())
            .args(["run", "--kernel", support::guest_kernel("gdbtarget")])
            .args(["--gdb", "tcp:127.0.0.1:0", "-S"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("vmm starts");
        let stdout = collect(child.stdout.take().expect("stdout"));
        let mut lines = BufReader::new(child.stderr.take().expect("stderr"));
        let mut first = String::new();
        lines.read_line(&mut first).expect("vmm's first line");
        let port = first
            .split("127.0.0.1:")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no listening address in {first:?}"));
        let stderr = collect(lines);
        stderr.lock().expect("collector").push_str(&first);
        Self {
            child,
            port,
            stdout,
            stderr,
        }
    }

    /// Waits for the run to end: (exit status, stdout, stderr).
    fn finish(mut self) -> (Option<i32>, String, String) {
        let status = wait(&mut self.child);
        // The collectors see end of file once the process is gone.
        std::thread::sleep(Duration::from_millis(100));
        let out = self.stdout.lock().expect("collector").clone();
        let err = self.stderr.lock().expect("collector").clone();
        (status, out, err)
    }
}

/// Waits for `child` up to the deadline (then kills it and fails).
fn wait(child: &mut Child) -> Option<i32> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status.code();
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("a process did not end within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `gdb -batch` connected to `port` with the kernel's symbols, then `commands`.
fn gdb(port: u16, commands: &[&str]) -> Command {
    let mut cmd = Command::new("gdb");
    cmd.args(["-batch", "-nx", "-ex", "set confirm off"])
        .arg("-ex")
        .arg(format!("file {}", support::guest_kernel("gdbtarget")))
        .arg("-ex")
        .arg(format!("target remote 127.0.0.1:{port}"));
    for c in commands {
        cmd.args(["-ex", c]);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs a gdb session to its end; its output, stdout then stderr.
fn session(port: u16, commands: &[&str]) -> String {
    let mut child = gdb(port, commands).spawn().expect("gdb starts");
    let out = collect(child.stdout.take().expect("stdout"));
    let err = collect(child.stderr.take().expect("stderr"));
    wait(&mut child);
    std::thread::sleep(Duration::from_millis(100));
    let text = format!(
        "{}{}",
        out.lock().expect("collector"),
        err.lock().expect("collector")
    );
    text
}

fn assert_has(text: &str, what: &str) {
    assert!(text.contains(what), "no {what:?} in:\n{text}");
}

#[test]
fn break_read_step_watch_write_and_kill() {
    if !gdb_installed() {
        return;
    }
    let vm = Debuggee::start();
    let out = session(
        vm.port,
        &[
            "info registers eip eflags cs",
            "break tick",
            "continue",
            "print (int)ticks",
            "stepi",
            "print $pc",
            "delete",
            "watch *(int *)&ticks",
            "continue",
            "print (int)ticks",
            "delete",
            "set var *(int *)&gate = 42",
            "break gate_opened",
            "continue",
            "monitor cr",
            "x/4xb 0xfffff000",
            "kill",
        ],
    );
    let (status, stdout, stderr) = vm.finish();
    // Stopped before the first instruction, at the Multiboot entry point.
    assert_has(&out, "<_start>");
    assert_has(&out, "cs             0x8");
    assert_has(&out, "Breakpoint 1, 0x00100010 in tick ()");
    assert_has(&out, "$1 = 0");
    // One instruction later, still in tick.
    assert_has(&out, "<tick+");
    assert_has(&out, "Hardware watchpoint 2: *(int *)&ticks");
    assert_has(&out, "Old value = 0\nNew value = 1");
    assert_has(&out, "$3 = 1");
    // The written gate changed the guest's path: gate_opened is reached.
    assert_has(&out, "in gate_opened ()");
    assert_has(&out, "cr0 0x00000011");
    // A bad address is an error reply; the monitor goes on.
    assert_has(&out, "Cannot access memory at address 0xfffff000");
    assert_has(&stdout, "gdbtarget: ticks 3, gate 42");
    assert_has(&stderr, "the debugger killed the guest");
    assert!(
        !stdout.contains("the gate was opened"),
        "killed at gate_opened's first instruction:\n{stdout}"
    );
    assert_eq!(status, Some(0), "{stderr}");
}

#[test]
fn access_and_read_watchpoints_and_control_registers() {
    if !gdb_installed() {
        return;
    }
    let vm = Debuggee::start();
    let out = session(
        vm.port,
        &[
            "awatch *(int *)&level",
            "continue",
            "print $pc",
            "delete",
            "rwatch *(int *)&gate",
            "continue",
            "print $pc",
            "delete",
            "print/x $cr0",
            "info registers cr0 cr4",
            "print $cr2 == 0",
            "kill",
        ],
    );
    let (status, _stdout, stderr) = vm.finish();
    // `level = 5` writes the value already there: the access watchpoint stops after it.
    assert_has(
        &out,
        "Hardware access (read/write) watchpoint 1: *(int *)&level",
    );
    assert_has(&out, "Value = 5");
    // The loop's test of gate reads it.
    assert_has(&out, "Hardware read watchpoint 2: *(int *)&gate");
    assert_has(&out, "Value = 1");
    assert_eq!(
        out.matches("<main+").count(),
        2,
        "both stops in main:\n{out}"
    );
    // Control registers through the target description: protected mode, no paging.
    assert_has(&out, "= 0x11");
    assert_has(&out, "[ PE ET ]");
    assert_has(&out, "$4 = 1");
    assert_has(&stderr, "the debugger killed the guest");
    assert_eq!(status, Some(0), "{stderr}");
}

#[test]
fn ctrl_c_stops_a_spinning_guest_and_detach_lets_it_finish() {
    if !gdb_installed() {
        return;
    }
    let vm = Debuggee::start();
    // gate 7: the guest spins without exits until the debugger sets it back.
    let mut child = gdb(
        vm.port,
        &[
            "set var *(int *)&gate = 7",
            "continue",
            "print (int)spins != 0",
            "print $pc",
            "set var *(int *)&gate = 1",
            "detach",
        ],
    )
    .spawn()
    .expect("gdb starts");
    let out = collect(child.stdout.take().expect("stdout"));
    let _err = collect(child.stderr.take().expect("stderr"));
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("a pid"));
    // Ctrl-C as a terminal sends it, until gdb reports the stop.
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(500));
        if out.lock().expect("collector").contains("SIGINT") {
            break;
        }
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
    }
    wait(&mut child);
    std::thread::sleep(Duration::from_millis(100));
    let out = out.lock().expect("collector").clone();
    let (status, stdout, stderr) = vm.finish();
    assert_has(&out, "Program received signal SIGINT, Interrupt.");
    assert_has(&out, "$1 = 1");
    assert_has(&out, "<main+");
    assert_has(&out, "detached");
    assert_has(&stdout, "gdbtarget: ticks 3, gate 1");
    // exit(20) through the debug-exit port: (20 << 1) | 1.
    assert_eq!(status, Some(41), "{stderr}");
}

#[test]
fn gdb_hears_the_guest_exit() {
    if !gdb_installed() {
        return;
    }
    let vm = Debuggee::start();
    let out = session(vm.port, &["continue"]);
    let (status, stdout, stderr) = vm.finish();
    // The run's status, as gdb prints it (octal).
    assert_has(&out, "exited with code 051");
    assert_has(&stdout, "gdbtarget: ticks 3, gate 1");
    assert_eq!(status, Some(41), "{stderr}");
}
