//! The guest's console as a user sees it: text typed into `vmm run`'s standard input
//! reaches the guest through COM1's receive interrupt, routed by the IOAPIC (the echo
//! kernel masks both 8259s and LINT0, so no other path exists), and comes back echoed on
//! standard output; `--stats` counts the accesses to each interrupt controller. From a
//! pipe the bytes pass as they are; on a terminal (a pseudo-terminal made by `script`)
//! QEMU's escape keys work (Ctrl-A x quits, Ctrl-A h helps, Ctrl-A Ctrl-A is one Ctrl-A)
//! and the terminal's settings come back however the monitor ends.

mod console_support;

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use console_support::Console;

/// How long any one step may take before the test gives up.
const STEP: Duration = Duration::from_secs(20);

#[test]
fn typed_line_is_echoed_through_the_ioapic_routed_uart() {
    let mut vm = Console::spawn(
        60,
        &["run", "--kernel", support::guest_kernel("echo"), "--stats"],
    );
    vm.wait_for_line("echo: ready", STEP);
    vm.send("hello from the host\n");
    vm.wait_for_line("hello from the host", STEP);
    vm.send("exit\n");
    vm.wait_for_line("exit", STEP);
    let ended = vm.finish();
    let stats = ended.stderr;
    assert_eq!(
        ended.status,
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

/// `vmm run` with a pseudo-terminal for its standard input and output, as a person at a
/// terminal runs it: `script` makes the terminal and runs `shell` (an `sh` script) on it.
/// Bytes written go to the terminal as typed keys; what the terminal shows is collected.
struct Terminal {
    child: std::process::Child,
    keys: std::process::ChildStdin,
    screen: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Terminal {
    fn start(shell: &str) -> Self {
        let mut child = std::process::Command::new("timeout")
            .args([
                "--kill-after=5",
                "90",
                "script",
                "-qefc",
                shell,
                "/dev/null",
            ])
            .env("SHELL", "/bin/sh")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("script(1) from util-linux starts");
        let keys = child.stdin.take().expect("piped stdin");
        let mut out = child.stdout.take().expect("piped stdout");
        let screen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let shown = std::sync::Arc::clone(&screen);
        std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            while let Ok(n) = std::io::Read::read(&mut out, &mut buf) {
                if n == 0 {
                    return;
                }
                let text = String::from_utf8_lossy(&buf[..n]).replace('\r', "");
                shown.lock().expect("screen").push_str(&text);
            }
        });
        Self {
            child,
            keys,
            screen,
        }
    }

    fn screen(&self) -> String {
        self.screen.lock().expect("screen").clone()
    }

    /// Waits until the terminal shows `text`; returns everything shown so far.
    fn wait_for(&self, text: &str) -> String {
        let start = std::time::Instant::now();
        loop {
            let screen = self.screen();
            if screen.contains(text) {
                return screen;
            }
            assert!(
                start.elapsed() < STEP,
                "the terminal never showed {text:?}; it shows:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn type_keys(&mut self, keys: &[u8]) {
        self.keys.write_all(keys).expect("type into the terminal");
        self.keys.flush().expect("flush");
    }

    /// Waits for the end of the script; returns everything shown.
    fn finish(mut self) -> String {
        let status = self.child.wait().expect("script ends");
        let screen = self.wait_for("after=");
        assert!(status.success(), "script failed ({status}):\n{screen}");
        screen
    }
}

/// A value the script printed as `name=value` on a line of its own.
fn shown_value<'a>(screen: &'a str, name: &str) -> &'a str {
    screen
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {name}= line:\n{screen}"))
}

/// The shell lines around the monitor: the terminal's settings before and after it
/// (`stty -g`), and its exit status.
fn around_vmm(vmm_command: &str) -> String {
    format!(
        "printf 'before=%s\\n' \"$(stty -g)\"; {vmm_command}; echo \"status=$?\"; \
         printf 'after=%s\\n' \"$(stty -g)\""
    )
}

fn echo_command() -> String {
    format!(
        "'{}' run --kernel '{}'",
        support::vmm_binary().display(),
        support::guest_kernel("echo")
    )
}

fn assert_terminal_restored(screen: &str) {
    let before = shown_value(screen, "before");
    assert!(!before.is_empty(), "{screen}");
    assert_eq!(
        before,
        shown_value(screen, "after"),
        "the terminal's settings did not come back:\n{screen}"
    );
}

#[test]
fn ctrl_a_x_quits_the_vm_and_gives_the_terminal_back() {
    let mut term = Terminal::start(&around_vmm(&echo_command()));
    term.wait_for("echo: ready");
    // No newline: only a terminal in raw mode hands the keys over at once.
    term.type_keys(b"\x01x");
    let screen = term.finish();
    assert_eq!(shown_value(&screen, "status"), "0", "{screen}");
    let ready = screen.find("echo: ready").expect("ready") + "echo: ready".len();
    let quit = screen
        .find("vmm: terminated by Ctrl-A x")
        .unwrap_or_else(|| panic!("no quit message:\n{screen}"));
    assert!(
        screen[ready..quit].trim().is_empty(),
        "the escape keys reached the guest:\n{screen}"
    );
    assert_terminal_restored(&screen);
}

#[test]
fn ctrl_a_h_prints_the_escape_keys_and_the_guest_runs_on() {
    let mut term = Terminal::start(&around_vmm(&echo_command()));
    term.wait_for("echo: ready");
    term.type_keys(b"\x01h");
    term.wait_for("Ctrl-A x          quit the VM");
    term.wait_for("Ctrl-A Ctrl-A     send Ctrl-A to the guest");
    // Ctrl-A Ctrl-A is one Ctrl-A for the guest, which echoes it.
    term.type_keys(b"hello\x01\x01\n");
    term.wait_for("hello\x01\n");
    term.type_keys(b"exit\n");
    let screen = term.finish();
    assert_eq!(
        shown_value(&screen, "status"),
        "1",
        "debug-exit 0:\n{screen}"
    );
    assert_terminal_restored(&screen);
}

#[test]
fn sigterm_to_the_monitor_gives_the_terminal_back() {
    // A background command of a non-interactive shell reads /dev/null unless told
    // otherwise; this one keeps the terminal, in the foreground process group.
    let shell = around_vmm(&format!(
        "{} </dev/tty & echo \"pid=$!\"; wait $!",
        echo_command()
    ));
    let term = Terminal::start(&shell);
    let screen = term.wait_for("echo: ready");
    let pid: i32 = shown_value(&screen, "pid").parse().expect("a pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("signal the monitor");
    let screen = term.finish();
    assert!(screen.contains("vmm: terminating on signal 15"), "{screen}");
    // The shell's status of a command killed by SIGTERM.
    assert_eq!(shown_value(&screen, "status"), "143", "{screen}");
    assert_terminal_restored(&screen);
}
