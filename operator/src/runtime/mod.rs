//! The runtime every controller shares, apart from what they decide: the one watch per
//! kind and the indexes beside its store, the context handed to every reconcile, the
//! bus, leader election, per-object error backoff, metrics and the gauges read at scrape
//! time, and the HTTP endpoints.

pub mod backoff;
pub mod bus;
pub mod context;
pub mod grouped;
pub mod handover;
pub mod http;
pub mod index;
pub mod leader;
pub mod metrics;
pub mod notify;
pub mod observe;
pub mod urgent;
pub mod watches;

/// Locks `mutex`, taking over the data of a holder that panicked (the indexes stay
/// usable: each change to them is whole before the lock is let go).
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
