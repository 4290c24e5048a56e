//! Time sources for the timer and RTC devices, abstract so tests can drive time by hand.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// A monotonic clock in nanoseconds since an arbitrary origin.
pub trait Clock {
    /// Nanoseconds since the clock's origin; never decreases.
    fn now_ns(&self) -> u64;
}

/// Wall-clock time, for the RTC.
pub trait WallClock {
    /// Seconds since the Unix epoch (UTC).
    fn unix_seconds(&self) -> i64;
}

/// The host's monotonic clock, with its origin at construction.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    origin: Instant,
}

impl MonotonicClock {
    /// A clock reading zero now.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now_ns(&self) -> u64 {
        // u64 nanoseconds last 584 years; saturate rather than wrap beyond that.
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// The host's real-time clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemWallClock;

impl WallClock for SystemWallClock {
    fn unix_seconds(&self) -> i64 {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
        }
    }
}

#[cfg(test)]
pub(crate) mod fake {
    use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
    use std::sync::Arc;

    use super::{Clock, WallClock};

    /// A clock tests advance by hand; clones share the time.
    #[derive(Debug, Clone, Default)]
    pub struct FakeClock(Arc<AtomicU64>);

    impl FakeClock {
        pub fn set(&self, ns: u64) {
            self.0.store(ns, Ordering::SeqCst);
        }
        pub fn advance(&self, ns: u64) {
            self.0.fetch_add(ns, Ordering::SeqCst);
        }
    }

    impl Clock for FakeClock {
        fn now_ns(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    /// A wall clock tests set by hand.
    #[derive(Debug, Clone, Default)]
    pub struct FakeWallClock(pub Arc<AtomicI64>);

    impl WallClock for FakeWallClock {
        fn unix_seconds(&self) -> i64 {
            self.0.load(Ordering::SeqCst)
        }
    }
}
