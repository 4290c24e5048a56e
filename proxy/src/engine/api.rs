//! The control socket of a running VM: one JSON request per line on a Unix socket, one
//! JSON response per line back (as Firecracker's API socket, without HTTP).
//!
//! ```text
//! {"op":"show"}                      -> {"ok":true,"generation":1,"policy":"<toml>"}
//! {"op":"set","policy":"<toml>"}     -> {"ok":true,"generation":2}
//!   (optional "origin":"<file name>" names the text in error messages)
//! {"op":"stats"}                     -> {"ok":true,"calls":12,"failed":0,"served":{...}}
//! anything wrong                     -> {"ok":false,"error":"<what was wrong>"}
//! ```
//!
//! A new policy is validated in full (syntax, fields, services, bindings against the
//! guest kernel's symbols) before it replaces the one in force; it serves from the next
//! proxied call on.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use super::SharedPolicy;

/// The longest request line accepted: a policy is a few KiB; anything near this is not
/// one.
pub const MAX_REQUEST_BYTES: u64 = 1 << 20;
/// How long a client may take to send its request.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// One request.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    /// The policy in force.
    Show,
    /// Replace the policy with this TOML text.
    Set {
        /// The policy text.
        policy: String,
        /// What to call the text in error messages (the client's file name).
        #[serde(default)]
        origin: Option<String>,
    },
    /// How calls were served so far.
    Stats,
}

/// Binds the control socket at `path`. A stale socket left by an earlier run is
/// replaced; any other file there is not touched.
///
/// # Errors
/// When the path holds something else or the socket cannot be bound.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    UnixListener::bind(path)
}

/// Serves `listener` on a thread of its own until the process ends. Start it before the
/// guest runs: the monitor's syscall allowlist admits what it needs from then on, not
/// the creation of threads.
///
/// # Errors
/// When the thread cannot be started.
pub fn spawn(
    listener: UnixListener,
    path: PathBuf,
    shared: Arc<SharedPolicy>,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("vmm-api".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(stream) => {
                        if let Err(e) = serve_client(stream, &shared) {
                            eprintln!("vmm: control socket {}: {e}", path.display());
                        }
                    }
                    Err(e) => eprintln!("vmm: control socket {}: {e}", path.display()),
                }
            }
        })
}

/// Answers every request line of one client until it closes the connection.
fn serve_client(stream: UnixStream, shared: &SharedPolicy) -> io::Result<()> {
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = Vec::new();
        let n = (&mut reader)
            .take(MAX_REQUEST_BYTES + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(());
        }
        let reply = if n as u64 > MAX_REQUEST_BYTES {
            error(format!(
                "request longer than {MAX_REQUEST_BYTES} bytes; one JSON object per line"
            ))
        } else {
            answer(&line, shared)
        };
        out.write_all(format!("{reply}\n").as_bytes())?;
        if n as u64 > MAX_REQUEST_BYTES {
            return Ok(());
        }
    }
}

fn error(message: String) -> Value {
    json!({ "ok": false, "error": message })
}

/// The response to one request line.
pub fn answer(line: &[u8], shared: &SharedPolicy) -> Value {
    let request: Request = match serde_json::from_slice(line) {
        Ok(r) => r,
        Err(e) => {
            return error(format!(
                "bad request: {e}; expected {{\"op\":\"show\"}}, {{\"op\":\"set\",\"policy\":\"<toml>\"}} or {{\"op\":\"stats\"}}"
            ))
        }
    };
    match request {
        Request::Show => json!({
            "ok": true,
            "generation": shared.proxy.policy().generation(),
            "policy": shared.text(),
        }),
        Request::Set { policy, origin } => {
            let origin = origin
                .as_deref()
                .unwrap_or("policy from the control socket");
            match shared.replace(&policy, origin) {
                Ok(generation) => json!({ "ok": true, "generation": generation }),
                Err(e) => error(e.to_string()),
            }
        }
        Request::Stats => {
            let c = shared.counters();
            json!({ "ok": true, "calls": c.calls, "failed": c.failed, "served": c.served })
        }
    }
}
