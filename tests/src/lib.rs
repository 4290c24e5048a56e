//! What the workspace integration tests share: finding the `vmm` binary, running it (or
//! a build tool) under a time limit, collecting what it printed, scratch directories,
//! and the built guest kernels.
//!
//! The tests run the monitor as a user does, as a separate process: a VM takes over the
//! process it runs in (seccomp, signal handlers), so it cannot run inside the test
//! harness.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The workspace root.
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests package lies one level below the workspace root")
}

/// The `vmm` binary of the profile these tests were built with (`target/debug/vmm` or
/// `target/release/vmm`): `cargo test --workspace` builds it beside the test executables.
///
/// # Panics
/// When it has not been built, with the command that builds it.
pub fn vmm_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test executable's path");
        // target/<profile>/deps/<test>-<hash>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test executables live in target/<profile>/deps");
        let vmm = profile_dir.join("vmm");
        assert!(
            vmm.is_file(),
            "{} is missing: build it with `cargo build --bin vmm` (add --release for the \
             release tests); `cargo test --workspace` builds it",
            vmm.display()
        );
        vmm
    })
}

/// Exit status of coreutils `timeout` when it had to stop the command.
pub const TIMED_OUT: i32 = 124;

/// `vmm ARGS…` under `timeout`: killed after `seconds` (and SIGKILLed 5 s later), so a
/// hung guest fails its test instead of hanging the run.
pub fn vmm(seconds: u32, args: &[&str]) -> Command {
    let mut cmd = Command::new("timeout");
    cmd.args(["--kill-after=5", &seconds.to_string()])
        .arg(vmm_binary())
        .args(args)
        .stdin(Stdio::null());
    cmd
}

/// `vmm ARGS…` under `timeout`, run to its end.
///
/// # Panics
/// When `timeout` cannot be started.
pub fn run_vmm(seconds: u32, args: &[&str]) -> Run {
    run(&mut vmm(seconds, args))
}

/// What a finished process left: its exit status (`None` when a signal ended it) and
/// its output as text.
#[derive(Debug, Clone)]
pub struct Run {
    /// The exit status.
    pub status: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    /// Whether it exited with status 0.
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    /// Whether `timeout` had to stop it.
    pub fn timed_out(&self) -> bool {
        self.status == Some(TIMED_OUT)
    }

    /// Standard output and standard error, one after the other.
    pub fn all_output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl From<Output> for Run {
    fn from(out: Output) -> Self {
        Self {
            status: out.status.code(),
            signal: out.status.signal(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Runs `cmd` to its end and collects its output.
///
/// # Panics
/// When the command cannot be started.
pub fn run(cmd: &mut Command) -> Run {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"))
        .into()
}

/// Runs a build tool (`gcc`, `ld`, ...) and checks that it succeeded.
///
/// # Panics
/// When it cannot be started or fails, with what it printed.
pub fn run_tool(cmd: &mut Command) {
    let out = run(cmd);
    assert!(out.success(), "{cmd:?} failed: {}", out.stderr);
}

/// A scratch directory for test binary `name` under the target directory
/// (`target/tmp/NAME`), created if needed. It outlives the run, so what a failed test
/// left can be looked at.
///
/// # Panics
/// When it cannot be created.
pub fn scratch_dir(name: &str) -> PathBuf {
    // target/<profile>/vmm -> target/tmp/<name>, where cargo puts CARGO_TARGET_TMPDIR.
    let target = vmm_binary()
        .parent()
        .and_then(Path::parent)
        .expect("the vmm binary lives in target/<profile>");
    let dir = target.join("tmp").join(name);
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// The path of the built guest kernel `name`.
///
/// # Panics
/// When no such kernel was built.
pub fn guest_kernel(name: &str) -> &'static str {
    guests::find(name)
        .unwrap_or_else(|| panic!("guest kernel {name} was not built"))
        .path
}

/// The value of counter `name` in `vmm run --stats` output (a `name   value` line).
///
/// # Panics
/// When the output has no such counter.
pub fn stats_counter(output: &str, name: &str) -> u64 {
    output
        .lines()
        .find_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some(name)).then(|| words.next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no counter {name} in:\n{output}"))
}
