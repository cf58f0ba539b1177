//! A mutex's guard even when a thread panicked holding it: the data behind
//! our mutexes (counters, queues of events) stays consistent between
//! statements, so a panic elsewhere must not take every reader down too.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, poisoned or not.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
