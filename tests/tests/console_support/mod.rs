//! A `vmm run` whose console a test drives as a user does: lines typed on its standard
//! input, its standard output read line by line as the guest prints it, its end timed.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A running `vmm`, under coreutils `timeout`.
pub struct Console {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Option<JoinHandle<String>>,
    /// Every stdout line read so far.
    pub seen: Vec<String>,
    ended: bool,
}

/// How a run ended.
pub struct Ended {
    /// Exit status (`None` when a signal ended it).
    pub status: Option<i32>,
    /// When the process was seen to end.
    pub at: Instant,
    /// All of standard output.
    pub stdout: String,
    /// All of standard error.
    pub stderr: String,
}

impl Console {
    /// Starts `vmm ARGS…`, killed after `seconds`.
    pub fn spawn(seconds: u32, args: &[&str]) -> Self {
        Self::spawn_command(&mut support::vmm(seconds, args))
    }

    /// Starts `cmd` (a `vmm` run under `timeout`) with its standard streams piped.
    pub fn spawn_command(cmd: &mut std::process::Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("vmm starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            // The guest ends its lines with "\r\n", as a serial console does, and not all
            // of what a kernel prints is UTF-8.
            for line in BufReader::new(stdout).split(b'\n') {
                let Ok(line) = line else { return };
                let line = String::from_utf8_lossy(&line).trim_end().to_owned();
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        Self {
            stdin: child.stdin.take(),
            child,
            lines,
            stderr: Some(stderr),
            seen: Vec::new(),
            ended: false,
        }
    }

    /// Waits up to `limit` for a stdout line that `want` accepts and returns it.
    ///
    /// # Panics
    /// When none comes, with what the guest printed.
    pub fn wait_for(
        &mut self,
        what: &str,
        limit: Duration,
        mut want: impl FnMut(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if want(&line) {
                        return line;
                    }
                }
                Err(e) => {
                    let why = match e {
                        RecvTimeoutError::Timeout => format!("not within {limit:?}"),
                        RecvTimeoutError::Disconnected => "the output ended".to_owned(),
                    };
                    panic!(
                        "no line {what} ({why}); output so far:\n{}",
                        self.seen.join("\n")
                    );
                }
            }
        }
    }

    /// Waits up to `limit` for the stdout line `line`.
    pub fn wait_for_line(&mut self, line: &str, limit: Duration) {
        self.wait_for(&format!("{line:?}"), limit, |l| l == line);
    }

    /// Types `text` on the console.
    pub fn send(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin.write_all(text.as_bytes()).expect("write to vmm");
        stdin.flush().expect("flush");
    }

    /// Waits for the process to end (bounded by its `timeout`), then collects the rest of
    /// its output.
    pub fn finish(mut self) -> Ended {
        let status = self.child.wait().expect("vmm ends");
        self.ended = true;
        let at = Instant::now();
        drop(self.stdin.take());
        // The process is gone: both pipes end.
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().expect("stderr reader"))
            .unwrap_or_default();
        while let Ok(line) = self.lines.recv() {
            self.seen.push(line);
        }
        Ended {
            status: status.code(),
            at,
            stdout: self.seen.join("\n"),
            stderr,
        }
    }
}

impl Drop for Console {
    /// A test that gives up ends the monitor too: SIGTERM to `timeout`, which passes it
    /// on (a SIGKILL would leave the monitor running on its own).
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = self.child.wait();
    }
}
