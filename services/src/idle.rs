//! Idle services: what the host CPU does while the guest has nothing to run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::{Service, ServiceError, VirtualClock};

/// Why an idle period ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleWake {
    /// [`Idle::wake`] was called (an interrupt became pending).
    Event,
    /// The deadline passed.
    Deadline,
}

/// Waiting for the next event.
pub trait Idle: Service {
    /// Idles until [`Idle::wake`] is called or `timeout` passes (`None`: no deadline).
    /// A wake that came before the call ends the next idle at once.
    ///
    /// # Errors
    /// When the service cannot idle.
    fn idle(&self, timeout: Option<Duration>) -> Result<IdleWake, ServiceError>;

    /// Ends the current (or next) idle period; called from other threads, e.g. a timer
    /// or device thread raising an interrupt.
    fn wake(&self);
}

/// Blocks the thread until an event or the deadline: costs no CPU.
#[derive(Debug, Default)]
pub struct SleepIdle {
    pending: Mutex<bool>,
    cond: Condvar,
}

impl SleepIdle {
    /// A sleeping idle service.
    pub fn new() -> Self {
        SleepIdle::default()
    }
}

impl Service for SleepIdle {
    fn id(&self) -> &str {
        "sleep"
    }
}

impl Idle for SleepIdle {
    fn idle(&self, timeout: Option<Duration>) -> Result<IdleWake, ServiceError> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut pending = self.pending.lock();
        loop {
            if std::mem::take(&mut *pending) {
                return Ok(IdleWake::Event);
            }
            match deadline {
                None => self.cond.wait(&mut pending),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(IdleWake::Deadline);
                    }
                    // A timeout shows on the next turn, as the deadline check above.
                    let _ = self.cond.wait_for(&mut pending, left);
                }
            }
        }
    }

    fn wake(&self) {
        *self.pending.lock() = true;
        self.cond.notify_all();
    }
}

/// Spins, yielding the CPU between checks: lowest wake-up latency, burns a core.
#[derive(Debug, Default)]
pub struct SpinIdle {
    pending: AtomicBool,
}

impl SpinIdle {
    /// A spinning idle service.
    pub fn new() -> Self {
        SpinIdle::default()
    }
}

impl Service for SpinIdle {
    fn id(&self) -> &str {
        "spin"
    }
}

impl Idle for SpinIdle {
    fn idle(&self, timeout: Option<Duration>) -> Result<IdleWake, ServiceError> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            if self.pending.swap(false, Ordering::AcqRel) {
                return Ok(IdleWake::Event);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(IdleWake::Deadline);
            }
            std::thread::yield_now();
        }
    }

    fn wake(&self) {
        self.pending.store(true, Ordering::Release);
    }
}

/// Skips idle time: moves a virtual clock straight to the deadline and returns at once,
/// so a guest that waits on timers runs as fast as the host allows.
#[derive(Debug)]
pub struct FastForwardIdle {
    clock: Arc<VirtualClock>,
    pending: AtomicBool,
}

impl FastForwardIdle {
    /// Fast-forwards `clock`.
    pub fn new(clock: Arc<VirtualClock>) -> Self {
        FastForwardIdle {
            clock,
            pending: AtomicBool::new(false),
        }
    }
}

impl Service for FastForwardIdle {
    fn id(&self) -> &str {
        "fast-forward"
    }
}

impl Idle for FastForwardIdle {
    fn idle(&self, timeout: Option<Duration>) -> Result<IdleWake, ServiceError> {
        if self.pending.swap(false, Ordering::AcqRel) {
            return Ok(IdleWake::Event);
        }
        match timeout {
            Some(t) => {
                self.clock
                    .advance_ns(u64::try_from(t.as_nanos()).unwrap_or(u64::MAX));
                Ok(IdleWake::Deadline)
            }
            // With no deadline and no event nothing in virtual time can ever happen.
            None => Err(ServiceError::Unavailable {
                service: self.id().to_owned(),
                reason: "idle with no deadline and no pending event would never end".into(),
            }),
        }
    }

    fn wake(&self) {
        self.pending.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wakes_from_other_thread(idle: Arc<dyn Idle>) {
        let waker = Arc::clone(&idle);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            waker.wake();
        });
        assert_eq!(
            idle.idle(Some(Duration::from_secs(30))).unwrap(),
            IdleWake::Event
        );
        t.join().unwrap();
    }

    #[test]
    fn sleep_ends_on_wake_and_on_deadline() {
        let idle = Arc::new(SleepIdle::new());
        wakes_from_other_thread(idle.clone());
        assert_eq!(
            idle.idle(Some(Duration::from_millis(5))).unwrap(),
            IdleWake::Deadline
        );
        idle.wake();
        assert_eq!(idle.idle(None).unwrap(), IdleWake::Event);
    }

    #[test]
    fn spin_ends_on_wake_and_on_deadline() {
        let idle = Arc::new(SpinIdle::new());
        wakes_from_other_thread(idle.clone());
        assert_eq!(
            idle.idle(Some(Duration::from_millis(5))).unwrap(),
            IdleWake::Deadline
        );
    }

    #[test]
    fn fast_forward_advances_virtual_time_without_waiting() {
        let clock = Arc::new(VirtualClock::new(0, 0, 0));
        let idle = FastForwardIdle::new(clock.clone());
        let started = Instant::now();
        assert_eq!(
            idle.idle(Some(Duration::from_secs(3600))).unwrap(),
            IdleWake::Deadline
        );
        assert!(started.elapsed() < Duration::from_secs(60));
        assert_eq!(clock.peek_ns(), 3_600_000_000_000);
        assert!(idle.idle(None).is_err());
        idle.wake();
        assert_eq!(idle.idle(None).unwrap(), IdleWake::Event);
    }
}
