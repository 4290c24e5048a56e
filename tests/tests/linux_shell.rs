//! Debian's unmodified i386 kernels boot under `vmm run` with `console=ttyS0` and nothing
//! else on their command line, to the busybox shell of the initramfs that
//! `scripts/setup.sh run` builds (`target/debian/initramfs.cpio`, /init in
//! `scripts/initramfs/init`). The test types commands into the guest's console (the
//! monitor's standard input is COM1's receive side), checks what the shell answers, and
//! powers the machine off, which ends the run with status 0.
//!
//! Without the Debian files the test is skipped with a message, except in CI (CI=true),
//! where a missing file is a failure.

mod console_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use console_support::Console;

/// The line /init prints before it starts the shell.
const READY: &str = "vmm-initramfs: shell ready";
/// Longest the boot to the readiness line may take (a debug monitor boots slowest: the
/// 686-pae kernel took 200–250 s in debug builds on the 2-core test host, measured).
const BOOT: Duration = Duration::from_secs(480);
/// Longest one command's answer may take.
const STEP: Duration = Duration::from_secs(60);
/// The whole run's limit, enforced by `timeout` around the monitor.
const RUN_SECONDS: u32 = 900;
/// Held by the test that is booting a kernel.
static ONE_BOOT: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The Debian file `name` under target/debian/, or `None` (the test is skipped) when it
/// is missing outside CI.
///
/// # Panics
/// When it is missing in CI.
fn debian_file(name: &str) -> Option<PathBuf> {
    let path = support::workspace_root().join("target/debian").join(name);
    if path.is_file() {
        return Some(path);
    }
    let msg = format!(
        "{} is missing: `scripts/setup.sh run` fetches Debian's kernels and builds the \
         initramfs",
        path.display()
    );
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
    eprintln!("SKIP: {msg}");
    None
}

/// The monitor to boot with: the optimised build when it is there and no older than the
/// one of this test's profile (a Linux boot under the debug build is several times
/// slower), else the one `cargo test` built.
fn monitor() -> PathBuf {
    let own = support::vmm_binary();
    let release = support::workspace_root().join("target/release/vmm");
    let modified = |p: &Path| p.metadata().and_then(|m| m.modified()).ok();
    match (modified(&release), modified(own)) {
        (Some(r), Some(o)) if r >= o => release,
        _ => own.to_path_buf(),
    }
}

/// The kernel release a bzImage announces (`uname -r`): the first word of the string
/// its setup header's `kernel_version` field points at (boot protocol 2.00 and later).
fn kernel_release(bzimage: &Path) -> String {
    let image = std::fs::read(bzimage).expect("read the kernel");
    let field = u16::from_le_bytes([image[0x20e], image[0x20f]]);
    let start = usize::from(field) + 0x200;
    let text = &image[start..start + 64];
    let end = text.iter().position(|&b| b == b' ' || b == 0).unwrap();
    String::from_utf8(text[..end].to_vec()).expect("ASCII version string")
}

/// A booted guest: the monitor's console, driven as a user drives it.
struct Guest {
    console: Console,
}

impl Guest {
    fn boot(kernel: &Path, initrd: &Path, cpus: u8, exec: &str) -> Self {
        let mut cmd = std::process::Command::new("timeout");
        cmd.args(["--kill-after=5", &RUN_SECONDS.to_string()])
            .arg(monitor())
            .args(["run", "--kernel"])
            .arg(kernel)
            .arg("--initrd")
            .arg(initrd)
            .args(["--append", "console=ttyS0", "--smp", &cpus.to_string()])
            .args(["--exec", exec]);
        Self {
            console: Console::spawn_command(&mut cmd),
        }
    }

    /// Waits up to `limit` for a console line that `want` accepts, and returns it.
    fn wait_for(&mut self, what: &str, limit: Duration, want: impl Fn(&str) -> bool) -> String {
        self.console.wait_for(what, limit, want)
    }

    /// Types `command` and a newline at the shell.
    fn type_line(&mut self, command: &str) {
        self.console.send(&format!("{command}\n"));
    }

    /// Types `command` and waits for an output line equal to `answer`.
    fn expect(&mut self, command: &str, answer: &str) {
        self.type_line(command);
        self.wait_for(&format!("{answer:?} after `{command}`"), STEP, |l| {
            l == answer
        });
    }

    /// The clocksource the kernel settles on. It starts on `tsc-early` and replaces it
    /// once its refined TSC calibration is done, about a second after boot (or sooner
    /// with another source, if its watchdog found the TSC unstable); a shell that comes
    /// up first is asked again until the early one is gone.
    fn final_clocksource(&mut self) -> String {
        const CURRENT: &str =
            "cat /sys/devices/system/clocksource/clocksource0/current_clocksource";
        for _ in 0..20 {
            self.type_line(CURRENT);
            let source = self.wait_for(&format!("a clocksource after `{CURRENT}`"), STEP, |l| {
                !l.is_empty()
                    && l.chars()
                        .all(|c| c.is_ascii_lowercase() || c == '_' || c == '-')
            });
            if source != "tsc-early" {
                return source;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!("the kernel kept tsc-early for 10 s");
    }

    /// Types `poweroff -f` and returns the monitor's exit status, its standard error
    /// and the whole console.
    fn power_off(mut self) -> (Option<i32>, String, String) {
        self.type_line("poweroff -f");
        let ended = self.console.finish();
        assert_ne!(
            ended.status,
            Some(support::TIMED_OUT),
            "the guest did not power off; console:\n{}\nstderr:\n{}",
            ended.stdout,
            ended.stderr
        );
        (ended.status, ended.stderr, ended.stdout)
    }
}

/// Boots `kernel` with the initramfs on `cpus` processors, in execution mode `exec`, to
/// its shell, runs commands, powers off.
fn boots_to_a_shell(kernel: &str, cpus: u8, exec: &str) {
    let (Some(kernel), Some(initrd)) = (debian_file(kernel), debian_file("initramfs.cpio")) else {
        return;
    };
    // One boot at a time: on a small host, boots sharing its cores lose timer ticks, and
    // a kernel whose watchdog then finds the TSC unstable is not what this test is about.
    let _one_at_a_time = ONE_BOOT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let release = kernel_release(&kernel);
    let mut guest = Guest::boot(&kernel, &initrd, cpus, exec);
    let ready = guest.wait_for(READY, BOOT, |l| l.contains(READY));
    assert!(ready.ends_with(&release), "{ready:?} names {release}");
    // The shell's arithmetic, the kernel's /proc, its uname, and the controlling
    // terminal setsid+cttyhack gave the shell.
    guest.expect("echo $((6*7))", "42");
    guest.expect("grep -c ^processor /proc/cpuinfo", &cpus.to_string());
    guest.expect("nproc", &cpus.to_string());
    guest.expect("uname -r", &release);
    // The kernel still trusts the TSC: its watchdog compares it with the jiffies the
    // timer ticks count, and ticks lost while a vCPU waits for the thread (or the host
    // does not run the monitor) would have made it mark the TSC unstable.
    assert_eq!(guest.final_clocksource(), "tsc");
    guest.expect("tty", "/dev/ttyS0");
    guest.expect(
        "case $- in *m*) echo job control on;; esac",
        "job control on",
    );
    guest.type_line("sleep 2 & jobs");
    guest.wait_for("a running background job", STEP, |l| {
        l.starts_with("[1]+") && l.ends_with("Running                    sleep 2")
    });
    guest.expect("wait %1; echo waited $?", "waited 0");
    let (status, stderr, console) = guest.power_off();
    assert!(
        !console.contains("job control turned off"),
        "the shell has no controlling terminal:\n{console}"
    );
    assert_eq!(
        status,
        Some(0),
        "poweroff -f ends the run with status 0; console:\n{console}\nstderr:\n{stderr}"
    );
}

#[test]
fn debian_686_boots_to_a_shell_and_powers_off() {
    boots_to_a_shell("vmlinuz", 1, "translate");
}

/// The in-place engine (`--exec patch`), whose patches live in the guest's pages: the
/// vDSO's symbol tables, which the C library reads, share a page with its code.
#[test]
fn debian_686_boots_in_patch_mode() {
    boots_to_a_shell("vmlinuz", 1, "patch");
}

#[test]
fn debian_686_boots_with_two_processors() {
    boots_to_a_shell("vmlinuz", 2, "translate");
}

#[test]
fn debian_686_boots_with_four_processors() {
    boots_to_a_shell("vmlinuz", 4, "translate");
}

#[test]
fn debian_686_pae_boots_to_a_shell_and_powers_off() {
    boots_to_a_shell("vmlinuz-pae", 1, "translate");
}
