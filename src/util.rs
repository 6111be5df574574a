//! Small utilities every folder uses, so that none borrows them from
//! another: [`BoxFuture`] (re-exported where public traits name it:
//! `mesh::discovery::BoxFuture`, `mesh::transport::BoxFuture`),
//! [`backoff`] and [`lock`].

use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// A boxed, sendable future, as the boundary traits' methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The delay before try `failures + 1`: the interval, doubled per failure
/// in a row, at most `max` (and never less than the interval).
pub(crate) fn backoff(interval: Duration, failures: u32, max: Duration) -> Duration {
    if failures == 0 {
        return interval;
    }
    interval
        .saturating_mul(1u32 << failures.min(16))
        .min(max)
        .max(interval)
}

/// Locks `m`, going on with the data of a holder that panicked: mesh's
/// mutexes guard plain bookkeeping that stays consistent between
/// statements, never a half-done update.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let i = Duration::from_secs(1);
        let cap = Duration::from_secs(3);
        let got: Vec<u64> = (0..5).map(|f| backoff(i, f, cap).as_secs()).collect();
        assert_eq!(got, [1, 2, 3, 3, 3]);
        // A cap under the interval never makes the worker beat faster.
        assert_eq!(backoff(i, 3, Duration::from_millis(10)), i);
        assert_eq!(backoff(i, 1000, Duration::MAX), i * 65536);
    }

    #[test]
    fn lock_survives_a_poisoned_mutex() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("poison");
        })
        .join();
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 2);
    }
}
