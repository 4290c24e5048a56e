//! Console services: where the guest's console bytes go and where its input comes from.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

use parking_lot::Mutex;

use crate::{Service, ServiceError};

/// A console.
pub trait Tty: Service {
    /// Writes guest bytes; returns how many were taken.
    ///
    /// # Errors
    /// When the output cannot be written.
    fn write(&self, bytes: &[u8]) -> Result<usize, ServiceError>;

    /// Reads pending input into `buf` without blocking; returns how many bytes were read
    /// (0 when nothing is pending).
    ///
    /// # Errors
    /// When the input cannot be read.
    fn read(&self, buf: &mut [u8]) -> Result<usize, ServiceError>;
}

fn drain_into(queue: &mut VecDeque<u8>, buf: &mut [u8]) -> usize {
    let n = buf.len().min(queue.len());
    for (dst, src) in buf.iter_mut().zip(queue.drain(..n)) {
        *dst = src;
    }
    n
}

/// The host terminal: output to stdout, input from stdin.
#[derive(Debug)]
pub struct TerminalTty {
    input: Arc<Mutex<VecDeque<u8>>>,
    reader: Once,
}

impl TerminalTty {
    /// A terminal console.
    pub fn new() -> Self {
        TerminalTty {
            input: Arc::default(),
            reader: Once::new(),
        }
    }
}

impl Default for TerminalTty {
    fn default() -> Self {
        TerminalTty::new()
    }
}

impl Service for TerminalTty {
    fn id(&self) -> &str {
        "terminal"
    }
}

impl Tty for TerminalTty {
    fn write(&self, bytes: &[u8]) -> Result<usize, ServiceError> {
        let mut out = io::stdout().lock();
        out.write_all(bytes)
            .and_then(|()| out.flush())
            .map_err(|e| ServiceError::io("write", "stdout", e))?;
        Ok(bytes.len())
    }

    fn read(&self, buf: &mut [u8]) -> Result<usize, ServiceError> {
        // Reads must not block the vCPU, so stdin is drained by a thread started on the
        // first read into a queue the guest polls.
        self.reader.call_once(|| {
            let queue = Arc::clone(&self.input);
            std::thread::spawn(move || {
                let mut chunk = [0u8; 256];
                let stdin = io::stdin();
                loop {
                    match stdin.lock().read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => queue.lock().extend(&chunk[..n]),
                    }
                }
            });
        });
        Ok(drain_into(&mut self.input.lock(), buf))
    }
}

/// Appends console output to a file; has no input.
#[derive(Debug)]
pub struct LogFileTty {
    path: PathBuf,
    file: Mutex<File>,
}

impl LogFileTty {
    /// Opens (creating if needed) `path` for appending.
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub fn open(path: &Path) -> Result<Self, ServiceError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| ServiceError::io("open", path.display().to_string(), e))?;
        Ok(LogFileTty {
            path: path.to_owned(),
            file: Mutex::new(file),
        })
    }
}

impl Service for LogFileTty {
    fn id(&self) -> &str {
        "logfile"
    }

    fn probe(&self) -> Result<(), ServiceError> {
        self.file
            .lock()
            .metadata()
            .map(|_| ())
            .map_err(|e| ServiceError::io("stat", self.path.display().to_string(), e))
    }
}

impl Tty for LogFileTty {
    fn write(&self, bytes: &[u8]) -> Result<usize, ServiceError> {
        self.file
            .lock()
            .write_all(bytes)
            .map_err(|e| ServiceError::io("append", self.path.display().to_string(), e))?;
        Ok(bytes.len())
    }

    fn read(&self, _buf: &mut [u8]) -> Result<usize, ServiceError> {
        Ok(0)
    }
}

/// Takes all output and drops it; has no input.
#[derive(Debug, Default, Clone, Copy)]
pub struct DiscardTty;

impl Service for DiscardTty {
    fn id(&self) -> &str {
        "discard"
    }
}

impl Tty for DiscardTty {
    fn write(&self, bytes: &[u8]) -> Result<usize, ServiceError> {
        Ok(bytes.len())
    }

    fn read(&self, _buf: &mut [u8]) -> Result<usize, ServiceError> {
        Ok(0)
    }
}

/// An in-memory console: output is kept to be read back, input is queued by the host.
/// Used for capturing a guest's console and for tests.
#[derive(Debug, Default)]
pub struct BufferTty {
    output: Mutex<Vec<u8>>,
    input: Mutex<VecDeque<u8>>,
}

impl BufferTty {
    /// An empty buffer console.
    pub fn new() -> Self {
        BufferTty::default()
    }

    /// Everything written so far.
    pub fn output(&self) -> Vec<u8> {
        self.output.lock().clone()
    }

    /// Takes everything written so far, leaving the buffer empty.
    pub fn take_output(&self) -> Vec<u8> {
        std::mem::take(&mut *self.output.lock())
    }

    /// Queues bytes for the guest to read.
    pub fn push_input(&self, bytes: &[u8]) {
        self.input.lock().extend(bytes);
    }
}

impl Service for BufferTty {
    fn id(&self) -> &str {
        "buffer"
    }
}

impl Tty for BufferTty {
    fn write(&self, bytes: &[u8]) -> Result<usize, ServiceError> {
        self.output.lock().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn read(&self, buf: &mut [u8]) -> Result<usize, ServiceError> {
        Ok(drain_into(&mut self.input.lock(), buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_keeps_output_and_serves_input_in_order() {
        let t = BufferTty::new();
        assert_eq!(t.write(b"hello ").unwrap(), 6);
        assert_eq!(t.write(b"world").unwrap(), 5);
        assert_eq!(t.output(), b"hello world");
        t.push_input(b"abc");
        let mut buf = [0u8; 2];
        assert_eq!(t.read(&mut buf).unwrap(), 2);
        assert_eq!(&buf, b"ab");
        assert_eq!(t.read(&mut buf).unwrap(), 1);
        assert_eq!(buf[0], b'c');
        assert_eq!(t.read(&mut buf).unwrap(), 0);
        assert_eq!(t.take_output(), b"hello world");
        assert!(t.output().is_empty());
    }

    #[test]
    fn logfile_appends_across_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        LogFileTty::open(&path).unwrap().write(b"one\n").unwrap();
        let t = LogFileTty::open(&path).unwrap();
        t.probe().unwrap();
        t.write(b"two\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"one\ntwo\n");
        assert_eq!(t.read(&mut [0u8; 4]).unwrap(), 0);
    }

    #[test]
    fn logfile_in_missing_directory_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = LogFileTty::open(&dir.path().join("no/such/dir/log")).unwrap_err();
        assert!(matches!(err, ServiceError::Io { op: "open", .. }), "{err}");
    }

    #[test]
    fn discard_takes_everything_and_gives_nothing() {
        assert_eq!(DiscardTty.write(&[1; 100]).unwrap(), 100);
        assert_eq!(DiscardTty.read(&mut [0; 8]).unwrap(), 0);
    }
}
