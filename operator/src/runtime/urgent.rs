//! Which writes go first. The API server takes a few hundred writes a second, and the
//! operator's writes are not all alike: an agent's report (a Task's outcome) is what
//! the next dispatches wait for, while what a waiting Task says is for people to read.
//! A writer of the second kind asks [`Urgent::quiet`] before each write and waits, a
//! bounded time, until no report is being handled; so the reports of a busy Project
//! are not queued behind thousands of waiting statuses, and the waiting statuses are
//! still written, at full speed once the reports stop and slowly while they do not.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use tokio::sync::Notify;

/// The writes in hand that come first.
#[derive(Debug, Default)]
pub struct Urgent {
    pending: AtomicUsize,
    quiet: Notify,
}

/// One urgent write in hand; dropping it says it is done.
#[derive(Debug)]
pub struct Held<'a>(&'a Urgent);

impl Urgent {
    /// Says that an urgent write is in hand until the guard is dropped.
    pub fn hold(&self) -> Held<'_> {
        self.pending.fetch_add(1, Ordering::AcqRel);
        Held(self)
    }

    /// How many urgent writes are in hand.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// Waits until no urgent write is in hand, or for `at_most`: whether it was quiet.
    pub async fn quiet(&self, at_most: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + at_most;
        crate::runtime::notify::holds_by(&self.quiet, deadline, || self.pending() == 0).await
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if self.0.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.quiet.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_writer_waits_for_the_urgent_writes_but_no_longer_than_its_bound() {
        let urgent = Urgent::default();
        assert!(
            urgent.quiet(Duration::from_secs(1)).await,
            "nothing in hand"
        );

        let first = urgent.hold();
        let second = urgent.hold();
        assert_eq!(urgent.pending(), 2);
        let started = tokio::time::Instant::now();
        assert!(
            !urgent.quiet(Duration::from_millis(500)).await,
            "still busy after the bound"
        );
        assert_eq!(started.elapsed(), Duration::from_millis(500));

        // Quiet once the last urgent write is done, not the first.
        let waiting = urgent.quiet(Duration::from_secs(60));
        tokio::pin!(waiting);
        drop(first);
        assert!(
            futures::poll!(waiting.as_mut()).is_pending(),
            "one is still in hand"
        );
        drop(second);
        assert!(waiting.await);
        assert_eq!(urgent.pending(), 0);
    }
}
