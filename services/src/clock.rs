//! Time services: what the guest is told the time is.

use parking_lot::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::{Service, ServiceError};

/// A source of wall and monotonic time, in nanoseconds.
pub trait Clock: Service {
    /// Nanoseconds since the Unix epoch.
    ///
    /// # Errors
    /// When the time cannot be obtained.
    fn wall_ns(&self) -> Result<u64, ServiceError>;

    /// Nanoseconds since an arbitrary fixed start; never decreases.
    ///
    /// # Errors
    /// When the time cannot be obtained.
    fn monotonic_ns(&self) -> Result<u64, ServiceError>;
}

/// The host's clocks.
#[derive(Debug)]
pub struct HostClock {
    start: Instant,
}

impl HostClock {
    /// Host time; the monotonic clock counts from now.
    pub fn new() -> Self {
        HostClock {
            start: Instant::now(),
        }
    }
}

impl Default for HostClock {
    fn default() -> Self {
        HostClock::new()
    }
}

impl Service for HostClock {
    fn id(&self) -> &str {
        "host"
    }
}

impl Clock for HostClock {
    fn wall_ns(&self) -> Result<u64, ServiceError> {
        let since = SystemTime::now().duration_since(UNIX_EPOCH).map_err(|e| {
            ServiceError::Unavailable {
                service: "host".into(),
                reason: format!("host clock is before 1970: {e}"),
            }
        })?;
        Ok(u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
    }

    fn monotonic_ns(&self) -> Result<u64, ServiceError> {
        Ok(u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }
}

#[derive(Debug, Clone, Copy)]
struct VirtualState {
    /// Wall time at monotonic zero.
    epoch_ns: u64,
    now_ns: u64,
    step_ns: u64,
}

/// Deterministic virtual time: every read advances it by a fixed step, and the host can
/// set or advance it. Two runs that make the same reads see the same times.
#[derive(Debug)]
pub struct VirtualClock {
    state: Mutex<VirtualState>,
}

impl VirtualClock {
    /// A clock at monotonic `start_ns`, wall `epoch_ns + start_ns`, advancing `step_ns`
    /// per read.
    pub fn new(epoch_ns: u64, start_ns: u64, step_ns: u64) -> Self {
        VirtualClock {
            state: Mutex::new(VirtualState {
                epoch_ns,
                now_ns: start_ns,
                step_ns,
            }),
        }
    }

    /// Sets the monotonic time; ignored when it would go backwards, since monotonic time
    /// never decreases.
    pub fn set_ns(&self, ns: u64) {
        let mut s = self.state.lock();
        s.now_ns = s.now_ns.max(ns);
    }

    /// Moves time forward by `ns` (saturating).
    pub fn advance_ns(&self, ns: u64) {
        let mut s = self.state.lock();
        s.now_ns = s.now_ns.saturating_add(ns);
    }

    /// Changes the step added per read.
    pub fn set_step_ns(&self, step_ns: u64) {
        self.state.lock().step_ns = step_ns;
    }

    /// The current monotonic time, without advancing it.
    pub fn peek_ns(&self) -> u64 {
        self.state.lock().now_ns
    }

    fn tick(&self) -> VirtualState {
        let mut s = self.state.lock();
        let seen = *s;
        s.now_ns = s.now_ns.saturating_add(s.step_ns);
        seen
    }
}

impl Service for VirtualClock {
    fn id(&self) -> &str {
        "virtual"
    }
}

impl Clock for VirtualClock {
    fn wall_ns(&self) -> Result<u64, ServiceError> {
        let s = self.tick();
        Ok(s.epoch_ns.saturating_add(s.now_ns))
    }

    fn monotonic_ns(&self) -> Result<u64, ServiceError> {
        Ok(self.tick().now_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_clock_is_deterministic() {
        let reads = || {
            let c = VirtualClock::new(1_000_000, 0, 250);
            [
                c.monotonic_ns().unwrap(),
                c.monotonic_ns().unwrap(),
                c.wall_ns().unwrap(),
                c.monotonic_ns().unwrap(),
            ]
        };
        assert_eq!(reads(), [0, 250, 1_000_500, 750]);
        assert_eq!(reads(), reads());
    }

    #[test]
    fn virtual_clock_set_and_advance_never_go_back() {
        let c = VirtualClock::new(0, 100, 0);
        c.set_ns(50);
        assert_eq!(c.monotonic_ns().unwrap(), 100);
        c.set_ns(5_000);
        c.advance_ns(10);
        assert_eq!(c.monotonic_ns().unwrap(), 5_010);
        c.advance_ns(u64::MAX);
        assert_eq!(c.peek_ns(), u64::MAX);
    }

    #[test]
    fn host_clock_is_monotonic_and_after_2020() {
        let c = HostClock::new();
        let a = c.monotonic_ns().unwrap();
        let b = c.monotonic_ns().unwrap();
        assert!(b >= a);
        // 2020-01-01 in ns since the epoch.
        assert!(c.wall_ns().unwrap() > 1_577_836_800_000_000_000);
    }
}
