//! `vmm policy show|set` and `vmm stop`: the client of a running VM's control socket.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

/// How long the client waits for the monitor's answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an administration request failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The socket could not be reached or the exchange broke off.
    #[error("control socket {path}: {source}")]
    Io {
        /// The socket.
        path: String,
        /// What the host said.
        #[source]
        source: io::Error,
    },
    /// The monitor answered something that is not a response.
    #[error("control socket {path}: unreadable answer {answer:?}")]
    BadAnswer {
        /// The socket.
        path: String,
        /// What came back.
        answer: String,
    },
    /// The monitor refused the request.
    #[error("{0}")]
    Refused(String),
}

/// Sends one request to the control socket at `path` and returns the successful
/// response.
///
/// # Errors
/// [`AdminError`]: the socket, the answer, or the monitor's refusal (its message).
pub fn request(path: &Path, request: &Value) -> Result<Value, AdminError> {
    let io_err = |source| AdminError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut stream = UnixStream::connect(path).map_err(io_err)?;
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .map_err(io_err)?;
    stream
        .write_all(format!("{request}\n").as_bytes())
        .map_err(io_err)?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(io_err)?;
    let answer: Value = serde_json::from_str(&line).map_err(|_| AdminError::BadAnswer {
        path: path.display().to_string(),
        answer: line.clone(),
    })?;
    if answer["ok"] == json!(true) {
        Ok(answer)
    } else {
        Err(AdminError::Refused(
            answer["error"].as_str().unwrap_or("refused").to_owned(),
        ))
    }
}

/// The policy text in force in the VM behind `path`.
///
/// # Errors
/// As for [`request`].
pub fn show(path: &Path) -> Result<String, AdminError> {
    let answer = request(path, &json!({ "op": "show" }))?;
    Ok(answer["policy"].as_str().unwrap_or_default().to_owned())
}

/// Puts the policy `text` (from `origin`, named in errors) in force in the VM behind
/// `path`; returns its generation.
///
/// # Errors
/// As for [`request`]; an invalid policy is refused with the line and field at fault.
pub fn set(path: &Path, text: &str, origin: &str) -> Result<u64, AdminError> {
    let answer = request(
        path,
        &json!({ "op": "set", "policy": text, "origin": origin }),
    )?;
    Ok(answer["generation"].as_u64().unwrap_or_default())
}

/// Asks the VM behind `path` to stop: it answers, then its run ends at the next exit.
///
/// # Errors
/// As for [`request`].
pub fn stop(path: &Path) -> Result<(), AdminError> {
    request(path, &json!({ "op": "stop" })).map(|_| ())
}
