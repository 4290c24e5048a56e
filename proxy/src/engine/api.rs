//! The control socket of a running VM: one JSON request per line on a Unix socket, one
//! JSON response per line back (as Firecracker's API socket, without HTTP).
//!
//! ```text
//! {"op":"stop"}                      -> {"ok":true}, then the run ends
//! {"op":"show"}                      -> {"ok":true,"generation":1,"policy":"<toml>"}
//! {"op":"set","policy":"<toml>"}     -> {"ok":true,"generation":2}
//!   (optional "origin":"<file name>" names the text in error messages)
//! {"op":"stats"}                     -> {"ok":true,"calls":12,"failed":0,"served":{...}}
//! anything wrong                     -> {"ok":false,"error":"<what was wrong>"}
//! ```
//!
//! Every VM with a control socket takes `stop`: the answer is written first, then the
//! run ends at its next exit (`vmm run` exits with [`vmm::vm::STOPPED_EXIT_STATUS`]). The
//! policy operations need the kernel proxy (`--policy`); without it they answer an error
//! saying so.
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
use vmm::vm::StopControl;

use super::SharedPolicy;

/// The longest request line accepted: a policy is a few KiB; anything near this is not
/// one.
pub const MAX_REQUEST_BYTES: u64 = 1 << 20;
/// How long a client may take to send its request.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// One request. The variants without fields are empty structs: serde refuses unknown
/// fields only in those (`{"op":"stop","now":true}` is a bad request, not a stop).
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    /// End the run.
    Stop {},
    /// The policy in force.
    Show {},
    /// Replace the policy with this TOML text.
    Set {
        /// The policy text.
        policy: String,
        /// What to call the text in error messages (the client's file name).
        #[serde(default)]
        origin: Option<String>,
    },
    /// How calls were served so far.
    Stats {},
}

/// What the control socket acts on.
#[derive(Debug, Clone)]
pub struct Control {
    /// The kernel policy in force, when the run has the kernel proxy (`--policy`).
    pub policy: Option<Arc<SharedPolicy>>,
    /// Ends the run.
    pub stop: StopControl,
}

/// What the policy operations answer in a VM without the kernel proxy.
const NO_POLICY: &str = "this VM runs without a kernel policy (no --policy): show, set and \
                         stats need one; stop works";

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
    control: Control,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("vmm-api".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(stream) => {
                        if let Err(e) = serve_client(stream, &control) {
                            eprintln!("vmm: control socket {}: {e}", path.display());
                        }
                    }
                    Err(e) => eprintln!("vmm: control socket {}: {e}", path.display()),
                }
            }
        })
}

/// Answers every request line of one client until it closes the connection. A stop is
/// carried out once its answer is written: the process may end right after.
fn serve_client(stream: UnixStream, control: &Control) -> io::Result<()> {
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
        let (reply, stop) = if n as u64 > MAX_REQUEST_BYTES {
            let e = error(format!(
                "request longer than {MAX_REQUEST_BYTES} bytes; one JSON object per line"
            ));
            (e, false)
        } else {
            answer(&line, control)
        };
        let written = out.write_all(format!("{reply}\n").as_bytes());
        if stop {
            // Also when the client has gone: the request was made.
            control.stop.request();
        }
        written?;
        if n as u64 > MAX_REQUEST_BYTES {
            return Ok(());
        }
    }
}

fn error(message: String) -> Value {
    json!({ "ok": false, "error": message })
}

/// The response to one request line, and whether it asks the run to stop (carried out by
/// the caller once the response is written).
pub fn answer(line: &[u8], control: &Control) -> (Value, bool) {
    let request: Request = match serde_json::from_slice(line) {
        Ok(r) => r,
        Err(e) => {
            let e = error(format!(
                "bad request: {e}; expected {{\"op\":\"stop\"}}, {{\"op\":\"show\"}}, {{\"op\":\"set\",\"policy\":\"<toml>\"}} or {{\"op\":\"stats\"}}"
            ));
            return (e, false);
        }
    };
    let reply = match (request, &control.policy) {
        (Request::Stop {}, _) => return (json!({ "ok": true }), true),
        (_, None) => error(NO_POLICY.to_owned()),
        (Request::Show {}, Some(shared)) => json!({
            "ok": true,
            "generation": shared.proxy.policy().generation(),
            "policy": shared.text(),
        }),
        (Request::Set { policy, origin }, Some(shared)) => {
            let origin = origin
                .as_deref()
                .unwrap_or("policy from the control socket");
            match shared.replace(&policy, origin) {
                Ok(generation) => json!({ "ok": true, "generation": generation }),
                Err(e) => error(e.to_string()),
            }
        }
        (Request::Stats {}, Some(shared)) => {
            let c = shared.counters();
            json!({ "ok": true, "calls": c.calls, "failed": c.failed, "served": c.served })
        }
    };
    (reply, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn without_policy() -> Control {
        Control {
            policy: None,
            stop: StopControl::default(),
        }
    }

    #[test]
    fn stop_is_answered_before_it_is_carried_out() {
        let control = without_policy();
        let (reply, stop) = answer(br#"{"op":"stop"}"#, &control);
        assert_eq!(reply, json!({ "ok": true }));
        assert!(stop);
        // The caller requests it once the answer is out.
        assert!(!control.stop.requested());
    }

    #[test]
    fn policy_operations_without_a_policy_say_why_they_fail() {
        let control = without_policy();
        for request in [
            r#"{"op":"show"}"#,
            r#"{"op":"stats"}"#,
            r#"{"op":"set","policy":""}"#,
        ] {
            let (reply, stop) = answer(request.as_bytes(), &control);
            assert!(!stop);
            assert_eq!(reply["ok"], json!(false), "{request}");
            let message = reply["error"].as_str().unwrap_or_default();
            assert!(message.contains("--policy"), "{request} -> {message}");
        }
    }

    #[test]
    fn unknown_operations_and_extra_fields_are_bad_requests() {
        let control = without_policy();
        for request in [
            r#"{"op":"reboot"}"#,
            r#"{"op":"stop","now":true}"#,
            r#"{"op":"show","policy":"x"}"#,
            "stop",
        ] {
            let (reply, stop) = answer(request.as_bytes(), &control);
            assert!(!stop, "{request}");
            let message = reply["error"].as_str().unwrap_or_default();
            assert!(
                message.starts_with("bad request") && message.contains(r#"{"op":"stop"}"#),
                "{request} -> {message}"
            );
        }
    }
}
