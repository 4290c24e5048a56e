//! Ending a run from another thread (the control socket's `stop`): a flag the run loop
//! reads at every exit and after every wait of a halted guest, and a kick of the vCPU
//! thread, so that an exit comes soon even while the guest runs without one.
//!
//! The run checks the flag before every entry into the guest; an exit storm returns to the
//! loop at every exit, a REP string instruction after each bounded batch, a guest that
//! runs without exits after the kick's signal, and a halted guest's wait ends on the kick.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::hostcpu::timer::Kicker;

/// The host exit status of a run a stop request ended: even, so never a debug-exit status
/// (`(value << 1) | 1`), and distinct from the other statuses `vmm run` gives.
pub const STOPPED_EXIT_STATUS: i32 = 8;

/// Asks a VM's run to end, from any thread; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct StopControl {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    requested: AtomicBool,
    /// The thread running the guest, while a run is in progress.
    vcpu: Mutex<Option<Kicker>>,
}

impl StopControl {
    /// Ends the run at its next exit (the vCPU is kicked so that one comes), or before it
    /// starts. Idempotent; a request after the run ended changes nothing.
    pub fn request(&self) {
        self.inner.requested.store(true, Ordering::SeqCst);
        let vcpu = *self
            .inner
            .vcpu
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(kicker) = vcpu {
            // The thread is gone only when the run already ended.
            let _ = kicker.kick();
        }
    }

    /// Whether a stop was requested.
    pub fn requested(&self) -> bool {
        self.inner.requested.load(Ordering::SeqCst)
    }

    /// Aims the kick at the vCPU thread for as long as the guard lives (the run).
    pub(super) fn aim(&self, kicker: Kicker) -> Aimed {
        *self
            .inner
            .vcpu
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(kicker);
        Aimed(self.clone())
    }
}

/// While it lives, a stop request kicks the vCPU thread; dropped when the run returns, so
/// a late request never signals a thread id the host may have reused.
#[derive(Debug)]
pub(super) struct Aimed(StopControl);

impl Drop for Aimed {
    fn drop(&mut self) {
        *self
            .0
            .inner
            .vcpu
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_seen_by_every_clone_and_stays() {
        let stop = StopControl::default();
        let other = stop.clone();
        assert!(!stop.requested());
        other.request();
        assert!(stop.requested());
        other.request();
        assert!(stop.requested());
    }

    #[test]
    fn the_kick_is_aimed_only_while_the_guard_lives() {
        let stop = StopControl::default();
        {
            let _aimed = stop.aim(Kicker::for_current_thread());
            assert!(stop.inner.vcpu.lock().unwrap().is_some());
        }
        assert!(stop.inner.vcpu.lock().unwrap().is_none());
        // No thread to kick: the request only sets the flag.
        stop.request();
        assert!(stop.requested());
    }
}
