//! The guest's serial console on the host terminal, as QEMU's `-nographic` gives it.
//!
//! When standard input is a terminal it is put in raw mode: every key, Ctrl-C included,
//! goes to the guest, except QEMU's escape keys: Ctrl-A x quits the VM, Ctrl-A h prints
//! them, Ctrl-A Ctrl-A sends one Ctrl-A. The terminal's settings come back on every way
//! out the monitor has: a normal end, a guest failure, a monitor error (the [`Console`]
//! is dropped), Ctrl-A x, a panic (a panic hook), and SIGINT, SIGTERM, SIGHUP or SIGQUIT
//! sent to the monitor (blocked in every thread and read from a signalfd by a thread of
//! their own, which restores the terminal and then dies of the signal as it would have).
//! Only SIGKILL, and the seccomp wall refusing a syscall outside the vCPU thread (the
//! process exits at once), leave it raw.
//!
//! When standard input is no terminal (a pipe, a file) nothing changes: bytes pass to the
//! guest as they are, and signals act as they always do.
//!
//! After start-up the monitor holds every thread to a seccomp allowlist
//! (`vmm::vm::confine`). Restoring needs `ioctl` (TCGETS and TCSETS, on the list when the
//! terminal is raw: [`Console::is_raw`]), `write` for the message and `rt_sigaction`,
//! `rt_sigprocmask`, `getpid`/`gettid` and `tgkill` to die of the signal, or `exit_group`:
//! all are on the list. The signalfd is made before the list applies.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Mutex;

use vmm::hostcpu::timer::Kicker;
use vmm::vm::platform::{spawn_serial_reader, spawn_stdin_reader, SerialInput};

/// QEMU's escape key, Ctrl-A.
pub const ESCAPE: u8 = 0x01;

/// What the keys after Ctrl-A do, as Ctrl-A h prints it.
pub const HELP: &str = "\
vmm console escape keys:
  Ctrl-A h          print this help
  Ctrl-A x          quit the VM
  Ctrl-A Ctrl-A     send Ctrl-A to the guest
";

/// The message Ctrl-A x leaves on the terminal.
pub const QUIT_MESSAGE: &str = "vmm: terminated by Ctrl-A x";

/// The signals that end the monitor with the terminal restored.
const SIGNALS: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// What one typed byte means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// A byte for the guest.
    Guest(u8),
    /// Ctrl-A h: print the escape keys.
    Help,
    /// Ctrl-A x: quit the VM.
    Quit,
    /// Nothing (Ctrl-A itself, or an unknown key after it, which QEMU drops too).
    Nothing,
}

/// The escape-key state machine: QEMU's, for the keys the monitor has.
#[derive(Debug, Clone, Copy, Default)]
pub struct Escape {
    pending: bool,
}

impl Escape {
    /// What `byte`, typed now, means.
    pub fn feed(&mut self, byte: u8) -> Key {
        if !self.pending {
            if byte == ESCAPE {
                self.pending = true;
                return Key::Nothing;
            }
            return Key::Guest(byte);
        }
        self.pending = false;
        match byte {
            ESCAPE => Key::Guest(ESCAPE),
            b'h' | b'?' => Key::Help,
            b'x' => Key::Quit,
            _ => Key::Nothing,
        }
    }
}

/// The terminal's settings before raw mode, for whichever exit path restores them.
static SAVED: Mutex<Option<libc::termios>> = Mutex::new(None);

/// Puts the saved settings back (once; later calls do nothing).
fn restore() {
    let saved = match SAVED.lock() {
        Ok(mut s) => s.take(),
        // A panic while holding the lock cannot leave a half-written value.
        Err(poisoned) => poisoned.into_inner().take(),
    };
    if let Some(saved) = saved {
        let _ = nix::sys::termios::tcsetattr(
            io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            &saved.into(),
        );
    }
}

/// The terminal as the guest's console for the life of the value; see the module.
#[derive(Debug)]
pub struct Console {
    raw: bool,
}

impl Console {
    /// Puts a terminal on standard input in raw mode and arranges for its restoration
    /// on every exit path. Call it before the monitor starts other threads: the signals
    /// it handles must be blocked in all of them. Without a terminal it changes nothing.
    pub fn attach() -> Self {
        use nix::sys::termios::{
            tcgetattr, tcsetattr, ControlFlags, InputFlags, LocalFlags, OutputFlags, SetArg,
            SpecialCharacterIndices,
        };
        let stdin = io::stdin();
        let Ok(saved) = tcgetattr(&stdin) else {
            return Self { raw: false };
        };
        // QEMU's raw mode for a stdio console: no line editing, echo or signal keys,
        // 8-bit input; output processing stays, so "\n" still starts a new line.
        let mut raw = saved.clone();
        raw.input_flags.remove(
            InputFlags::IGNBRK
                | InputFlags::BRKINT
                | InputFlags::PARMRK
                | InputFlags::ISTRIP
                | InputFlags::INLCR
                | InputFlags::IGNCR
                | InputFlags::ICRNL
                | InputFlags::IXON,
        );
        raw.output_flags.insert(OutputFlags::OPOST);
        raw.local_flags.remove(
            LocalFlags::ECHO
                | LocalFlags::ECHONL
                | LocalFlags::ICANON
                | LocalFlags::ISIG
                | LocalFlags::IEXTEN,
        );
        raw.control_flags
            .remove(ControlFlags::CSIZE | ControlFlags::PARENB);
        raw.control_flags.insert(ControlFlags::CS8);
        raw.control_chars[SpecialCharacterIndices::VMIN as usize] = 1;
        raw.control_chars[SpecialCharacterIndices::VTIME as usize] = 0;
        if let Err(e) = watch_signals() {
            eprintln!("vmm: warning: console left in line mode: {e}");
            return Self { raw: false };
        }
        *SAVED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(saved.into());
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
        if tcsetattr(&stdin, SetArg::TCSANOW, &raw).is_err() {
            restore();
            return Self { raw: false };
        }
        Self { raw: true }
    }

    /// Whether standard input is a terminal in raw mode (whose settings come back at the
    /// end).
    pub fn is_raw(&self) -> bool {
        self.raw
    }

    /// Feeds standard input to the guest's COM1: through the escape keys when the
    /// terminal is raw, byte for byte otherwise.
    ///
    /// # Errors
    /// The reader thread cannot be started.
    pub fn spawn_reader(&self, input: SerialInput, vcpu: Kicker) -> io::Result<()> {
        if self.raw {
            spawn_serial_reader(input, vcpu, EscapedInput::new(io::stdin()))
        } else {
            spawn_stdin_reader(input, vcpu)
        }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        restore();
    }
}

/// Bytes typed on the terminal with the escape keys acted on and taken out.
#[derive(Debug)]
pub struct EscapedInput<R> {
    inner: R,
    escape: Escape,
}

impl<R: Read> EscapedInput<R> {
    /// Reads keys from `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            escape: Escape::default(),
        }
    }
}

impl<R: Read> Read for EscapedInput<R> {
    /// The guest's bytes of the next keys typed; 0 only at the end of input.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = self.inner.read(buf)?;
            if n == 0 {
                return Ok(0);
            }
            let mut kept = 0;
            for i in 0..n {
                match self.escape.feed(buf[i]) {
                    Key::Guest(b) => {
                        buf[kept] = b;
                        kept += 1;
                    }
                    Key::Help => {
                        let mut err = io::stderr().lock();
                        let _ = err.write_all(HELP.as_bytes());
                        let _ = err.flush();
                    }
                    Key::Quit => quit(),
                    Key::Nothing => {}
                }
            }
            if kept > 0 {
                return Ok(kept);
            }
        }
    }
}

/// Ctrl-A x: the terminal back, a line saying why, and the process ends with status 0,
/// as QEMU's does.
fn quit() -> ! {
    let _ = io::stdout().flush();
    restore();
    eprintln!("\n{QUIT_MESSAGE}");
    std::process::exit(0)
}

/// Blocks [`SIGNALS`] in the calling thread (and so in every thread it starts later) and
/// starts a thread that reads them from a signalfd, restores the terminal and dies of
/// the signal.
fn watch_signals() -> io::Result<()> {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before any other use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live local; the signal numbers are valid.
    unsafe {
        libc::sigemptyset(&mut set);
        for sig in SIGNALS {
            libc::sigaddset(&mut set, sig);
        }
    }
    // SAFETY: `set` is initialised; the old mask is not needed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    // SAFETY: -1 asks for a new descriptor for the initialised `set`.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        unblock(&set);
        return Err(e);
    }
    // SAFETY: signalfd returned a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let spawned = std::thread::Builder::new()
        .name("console-signals".into())
        .spawn(move || {
            let mut file = File::from(fd);
            // struct signalfd_siginfo: ssi_signo is its first field.
            let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
            if file.read_exact(&mut info).is_err() {
                return;
            }
            let signo = u32::from_ne_bytes([info[0], info[1], info[2], info[3]]);
            let signo = libc::c_int::try_from(signo).unwrap_or(libc::SIGTERM);
            let _ = io::stdout().flush();
            restore();
            eprintln!("\nvmm: terminating on signal {signo}");
            die_of(signo);
        });
    if let Err(e) = spawned {
        unblock(&set);
        return Err(e);
    }
    Ok(())
}

fn unblock(set: &libc::sigset_t) {
    // SAFETY: `set` is an initialised signal set; the old mask is not needed.
    unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, set, std::ptr::null_mut()) };
}

/// Ends the process the way `signo`'s default action does, so the parent sees the
/// signal in the exit status.
fn die_of(signo: libc::c_int) -> ! {
    // SAFETY: SIG_DFL is always a valid disposition for these catchable signals.
    unsafe { libc::signal(signo, libc::SIG_DFL) };
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live local and `signo` a valid signal.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signo);
    }
    unblock(&set);
    // SAFETY: raise sends the signal to this thread, where it is now unblocked.
    unsafe { libc::raise(signo) };
    // Only reached if the default action did not end the process.
    std::process::exit(128 + signo)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(bytes: &[u8]) -> Vec<Key> {
        let mut e = Escape::default();
        bytes.iter().map(|&b| e.feed(b)).collect()
    }

    #[test]
    fn escape_keys() {
        assert_eq!(keys(b"ab"), [Key::Guest(b'a'), Key::Guest(b'b')]);
        assert_eq!(keys(b"\x01x"), [Key::Nothing, Key::Quit]);
        assert_eq!(keys(b"\x01h"), [Key::Nothing, Key::Help]);
        assert_eq!(keys(b"\x01\x01"), [Key::Nothing, Key::Guest(ESCAPE)]);
        // After Ctrl-A Ctrl-A the next key is a plain key again.
        assert_eq!(
            keys(b"\x01\x01x"),
            [Key::Nothing, Key::Guest(ESCAPE), Key::Guest(b'x')]
        );
        // An unknown key after Ctrl-A is dropped; Ctrl-C is the guest's.
        assert_eq!(
            keys(b"\x01q\x03"),
            [Key::Nothing, Key::Nothing, Key::Guest(0x03)]
        );
    }

    #[test]
    fn escaped_input_passes_the_guests_bytes() {
        let mut input = EscapedInput::new(&b"ls\x01\x01\r\x01zok"[..]);
        let mut out = Vec::new();
        input.read_to_end(&mut out).expect("reads");
        assert_eq!(out, b"ls\x01\rok");
    }

    #[test]
    fn a_read_of_only_escape_keys_waits_for_more() {
        // Two reads: the first holds nothing for the guest, the second its byte.
        let chunks: Vec<&[u8]> = vec![b"\x01", b"z", b"a"];
        let mut input = EscapedInput::new(Chunks(chunks.into_iter()));
        let mut buf = [0u8; 8];
        assert_eq!(input.read(&mut buf).expect("reads"), 1);
        assert_eq!(buf[0], b'a');
        assert_eq!(input.read(&mut buf).expect("reads"), 0);
    }

    /// A reader that returns one chunk per read.
    struct Chunks<I>(I);

    impl<'a, I: Iterator<Item = &'a [u8]>> Read for Chunks<I> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let Some(chunk) = self.0.next() else {
                return Ok(0);
            };
            buf[..chunk.len()].copy_from_slice(chunk);
            Ok(chunk.len())
        }
    }
}
