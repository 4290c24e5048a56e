//! Locking shared service state.

use std::sync::{Mutex, MutexGuard};

/// A poisoned lock only means another thread panicked mid-update; service state (byte
/// queues, disks, counters) stays usable, so take the data rather than spread the panic.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
