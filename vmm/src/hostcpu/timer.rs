//! Asynchronous exits: a host timer for the virtual PIT and a kick from other threads, both
//! real-time signals aimed at the vCPU thread.
//!
//! If the signal lands in guest code the run returns [`HostExitKind::Async`](super::HostExitKind);
//! if it lands in monitor code the handler only marks work pending, and the next
//! [`HostCpu::run`](super::HostCpu::run) returns `Async` without entering the guest.

use std::io;
use std::time::Duration;

/// The signal the vCPU timer raises.
pub fn timer_signal() -> libc::c_int {
    libc::SIGRTMIN() + 1
}

/// The signal [`Kicker::kick`] sends.
pub fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 2
}

/// What went wrong with a timer or a kick.
#[derive(Debug, thiserror::Error)]
pub enum TimerError {
    /// timer_create failed.
    #[error("cannot create the vCPU timer")]
    Create(#[source] io::Error),
    /// timer_settime failed.
    #[error("cannot arm the vCPU timer")]
    Arm(#[source] io::Error),
    /// tgkill failed (the vCPU thread is gone).
    #[error("cannot kick vCPU thread {tid}")]
    Kick {
        /// The target thread.
        tid: libc::pid_t,
        /// The host error.
        #[source]
        source: io::Error,
    },
}

/// Identifies a vCPU thread to signal; cheap to copy to other threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kicker {
    pid: libc::pid_t,
    tid: libc::pid_t,
}

impl Kicker {
    /// A kicker aimed at the calling thread.
    pub fn for_current_thread() -> Self {
        // SAFETY: getpid/gettid have no preconditions.
        let (pid, tid) = unsafe { (libc::getpid(), libc::gettid()) };
        Self { pid, tid }
    }

    /// The target thread id.
    pub fn tid(&self) -> libc::pid_t {
        self.tid
    }

    /// Interrupts the vCPU thread with [`kick_signal`].
    ///
    /// # Errors
    /// [`TimerError::Kick`] if the thread no longer exists.
    pub fn kick(&self) -> Result<(), TimerError> {
        // SAFETY: tgkill takes plain integers; pid/tid pin the signal to the vCPU thread of
        // this process even if the tid were reused elsewhere.
        let rc = unsafe { libc::tgkill(self.pid, self.tid, kick_signal()) };
        if rc != 0 {
            return Err(TimerError::Kick {
                tid: self.tid,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

/// A POSIX timer on CLOCK_MONOTONIC that delivers [`timer_signal`] to one thread.
#[derive(Debug)]
pub struct VcpuTimer {
    id: libc::timer_t,
}

// SAFETY: a timer id is a process-wide kernel handle; arming it from another thread is fine.
unsafe impl Send for VcpuTimer {}

impl VcpuTimer {
    /// Creates a disarmed timer aimed at the thread `target` names.
    ///
    /// # Errors
    /// [`TimerError::Create`] if the host refuses.
    pub fn new(target: &Kicker) -> Result<Self, TimerError> {
        // SAFETY: sigevent is plain data; all-zero is a valid starting value.
        let mut sev: libc::sigevent = unsafe { std::mem::zeroed() };
        sev.sigev_notify = libc::SIGEV_THREAD_ID;
        sev.sigev_signo = timer_signal();
        sev.sigev_notify_thread_id = target.tid;
        let mut id: libc::timer_t = std::ptr::null_mut();
        // SAFETY: both pointers refer to live locals for the duration of the call.
        let rc = unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut sev, &mut id) };
        if rc != 0 {
            return Err(TimerError::Create(io::Error::last_os_error()));
        }
        Ok(Self { id })
    }

    /// Fires after `first`, then every `period` (zero: once). A zero `first` disarms.
    ///
    /// # Errors
    /// [`TimerError::Arm`] if the host refuses.
    pub fn arm(&self, first: Duration, period: Duration) -> Result<(), TimerError> {
        let ts = |d: Duration| libc::timespec {
            tv_sec: libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX),
            // Below 10^9: always fits.
            tv_nsec: libc::c_long::from(d.subsec_nanos()),
        };
        let spec = libc::itimerspec {
            it_interval: ts(period),
            it_value: ts(first),
        };
        // SAFETY: `id` is a live timer owned by self; `spec` is a valid local.
        let rc = unsafe { libc::timer_settime(self.id, 0, &spec, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(TimerError::Arm(io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Stops the timer.
    ///
    /// # Errors
    /// [`TimerError::Arm`] if the host refuses.
    pub fn disarm(&self) -> Result<(), TimerError> {
        self.arm(Duration::ZERO, Duration::ZERO)
    }
}

impl Drop for VcpuTimer {
    fn drop(&mut self) {
        // SAFETY: `id` is owned by self and deleted exactly once.
        unsafe { libc::timer_delete(self.id) };
    }
}
