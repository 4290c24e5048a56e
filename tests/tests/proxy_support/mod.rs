//! What the kernel-proxy tests share: the `vmm` binary run under coreutils `timeout`,
//! the proxy guest kernel, its bindings, and the byte patterns it writes to its disk.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

/// Seconds any one `vmm` process may run.
pub const RUN_LIMIT_S: u32 = 60;
/// Sectors of the disk images the tests give the guest (the guest's own disk size).
pub const DISK_SECTORS: usize = 128;
pub const SECTOR: usize = 512;
/// What sector 0 of a test image starts with.
pub const IMAGE_MAGIC: &[u8] = b"IMAGE-SECTOR-ZERO";
/// What the guest writes through `os_console_write` first.
pub const HELLO: &str = "proxy guest: hello through os_console_write";

/// The bindings of the proxy guest's four OS-service functions.
pub const BINDINGS: &str = r#"
[[bindings]]
symbol = "os_console_write"
op = "tty.write"
convention = "cdecl"
args = 2
buffer = { ptr = 0, len = 1, max = 4096 }
returns = "count"
error_return = -1

[[bindings]]
symbol = "os_disk_read"
op = "block.read"
convention = "cdecl"
args = 3
sector_arg = 0
buffer = { ptr = 1, len = 2, max = 65536, unit = "sectors" }
returns = "status"
error_return = -5

[[bindings]]
symbol = "os_disk_write"
op = "block.write"
convention = "cdecl"
args = 3
sector_arg = 0
buffer = { ptr = 1, len = 2, max = 65536, unit = "sectors" }
returns = "status"
error_return = -5

[[bindings]]
symbol = "os_clock_monotonic"
op = "clock.monotonic"
returns = "value64"
"#;

pub fn kernel() -> &'static str {
    support::guest_kernel("proxy")
}

/// `vmm run` of the proxy guest with `args`, under `timeout`.
pub fn run_command(args: &[&str]) -> Command {
    let mut c = support::vmm(RUN_LIMIT_S, &["run", "--kernel", kernel()]);
    c.args(args);
    c
}

pub fn run(args: &[&str]) -> support::Run {
    support::run(&mut run_command(args))
}

/// Asserts the guest's own checks all passed (debug-exit status 1) and returns stdout.
pub fn assert_guest_passed(out: &support::Run) -> String {
    let stdout = out.stdout.clone();
    let stderr = &out.stderr;
    assert_eq!(
        out.status,
        Some(1),
        "guest checks failed or the monitor stopped\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains(", 0 unexpected failures,") && !stdout.contains("FAIL:"),
        "{stdout}"
    );
    stdout
}

/// A disk image of [`DISK_SECTORS`] sectors starting with [`IMAGE_MAGIC`].
pub fn make_image(path: &Path) -> Vec<u8> {
    let mut image = vec![0u8; DISK_SECTORS * SECTOR];
    image[..IMAGE_MAGIC.len()].copy_from_slice(IMAGE_MAGIC);
    std::fs::write(path, &image).unwrap();
    image
}

/// The guest's `fill(p, len, seed)`.
pub fn fill(seed: u32, len: usize) -> Vec<u8> {
    (0..u32::try_from(len).unwrap())
        .map(|i| (seed.wrapping_mul(31) + i * 7 + (i >> 8)).to_le_bytes()[0])
        .collect()
}

/// The sector the guest's soak round `r` writes (sector 16 + r).
pub fn soak_sector(r: u32) -> Vec<u8> {
    let mut s = fill(r, SECTOR);
    s[..4].copy_from_slice(b"SOAK");
    s[4] = r.to_le_bytes()[0];
    s
}

/// Checks the sectors the guest's disk checks write: sector 1's signature, 4–7's
/// pattern.
pub fn assert_disk_checks_written(image: &[u8]) {
    assert_eq!(&image[SECTOR..SECTOR + 20], b"PROXY-GUEST-SECTOR-1");
    assert_eq!(&image[4 * SECTOR..8 * SECTOR], &fill(0x5a, 4 * SECTOR)[..]);
}

/// A `vmm` process whose stdout lines arrive on a channel as they are printed.
pub struct Running {
    pub child: Child,
    pub lines: Receiver<String>,
    pub seen: Vec<String>,
}

impl Running {
    pub fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (bounded) for a stdout line containing `needle`.
    pub fn wait_for(&mut self, needle: &str) {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(30)) {
                Ok(line) => {
                    let hit = line.contains(needle);
                    self.seen.push(line);
                    if hit {
                        return;
                    }
                }
                Err(_) => panic!("no line with {needle:?}; saw:\n{}", self.seen.join("\n")),
            }
        }
    }

    /// Waits for the process to end; returns its status and the rest of stdout and
    /// stderr.
    pub fn finish(mut self) -> (Option<i32>, String, String) {
        use std::io::Read;
        let mut stderr = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        let status = self.child.wait().expect("wait");
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        (status.code(), self.seen.join("\n"), stderr)
    }
}
