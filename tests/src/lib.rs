//! What the workspace integration tests share: finding the `vmm` binary, running it under
//! a time limit, collecting what it printed, and the built guest kernels.
//!
//! The tests run the monitor as a user does, as a separate process: a VM takes over the
//! process it runs in (seccomp, signal handlers), so it cannot run inside the test
//! harness.

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

/// What a finished process left: its exit status (`None` when a signal ended it) and
/// its output as text.
#[derive(Debug, Clone)]
pub struct Run {
    /// The exit status.
    pub status: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    /// Standard output and standard error, one after the other.
    pub fn all_output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl From<Output> for Run {
    fn from(out: Output) -> Self {
        Self {
            status: out.status.code(),
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

/// The path of the built guest kernel `name`.
///
/// # Panics
/// When no such kernel was built.
pub fn guest_kernel(name: &str) -> &'static str {
    guests::find(name)
        .unwrap_or_else(|| panic!("guest kernel {name} was not built"))
        .path
}
