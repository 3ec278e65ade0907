//! One lane per Task for the writes its attempts cause: a dispatch's Queued and the
//! events agents report about it are written one after another, so they never race
//! each other into a conflict (each would otherwise cost a failed write, a read and
//! another write). A Started event whose attempt's outcome arrives within
//! [`FOLD_WINDOW`] is folded into that outcome: the outcome is written once, with the
//! start time, and Running never is (the attempt is already over).
//!
//! A lane also remembers, while anyone is in it, which attempts an agent has reported
//! on: a dispatch's Queued is not written once the agent's own report is in (Running or
//! the outcome says more).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use jiff::Timestamp;
use tokio::sync::{Mutex as AsyncMutex, Notify, OwnedMutexGuard};

use crate::runtime::notify::holds_by;

/// How long a Started event waits for its attempt's outcome before it is written.
pub const FOLD_WINDOW: Duration = Duration::from_millis(50);

/// The lanes, by Task uid; a lane lives while someone is in it.
#[derive(Debug, Default)]
pub struct Lanes(Mutex<HashMap<String, Arc<Lane>>>);

/// One Task's lane.
#[derive(Debug, Default)]
pub struct Lane {
    turn: Arc<AsyncMutex<()>>,
    /// The attempts whose outcome has arrived while the lane was open.
    outcomes: Mutex<HashSet<u32>>,
    /// When a Started event waiting to fold said each attempt started.
    started: Mutex<HashMap<u32, Timestamp>>,
    announced: Notify,
    /// The attempts an agent has reported on.
    reported: Mutex<HashSet<u32>>,
}

/// A place in a Task's lane; the lane is dropped with its last place.
#[derive(Debug)]
pub struct Place<'a> {
    lanes: &'a Lanes,
    uid: String,
    lane: Arc<Lane>,
}

/// A turn in a lane: the holder writes, the others wait.
pub type Turn = OwnedMutexGuard<()>;

impl Lanes {
    /// A place in the lane of the Task with uid `uid`.
    pub fn enter(&self, uid: &str) -> Place<'_> {
        let lane = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(uid.to_owned())
            .or_default()
            .clone();
        Place {
            lanes: self,
            uid: uid.to_owned(),
            lane,
        }
    }

    /// How many lanes are open.
    pub fn open(&self) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

impl Place<'_> {
    /// Waits for this place's turn.
    pub async fn turn(&self) -> Turn {
        self.lane.turn.clone().lock_owned().await
    }

    /// Says that an agent has reported on `attempt`, before waiting for its turn.
    pub fn announce_report(&self, attempt: u32) {
        self.lane
            .reported
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(attempt);
        self.lane.announced.notify_waiters();
    }

    /// Whether an agent reports on `attempt` (or has) by `deadline`.
    pub async fn reported_by(&self, attempt: u32, deadline: tokio::time::Instant) -> bool {
        self.announced_by(deadline, || self.reported(attempt)).await
    }

    /// Whether `said` holds by `deadline`, looked at again on each announcement.
    async fn announced_by(&self, deadline: tokio::time::Instant, said: impl Fn() -> bool) -> bool {
        holds_by(&self.lane.announced, deadline, said).await
    }

    /// Whether an agent has reported on `attempt` while this lane was open.
    pub fn reported(&self, attempt: u32) -> bool {
        self.lane
            .reported
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&attempt)
    }

    /// Says that the outcome of `attempt` has arrived, before waiting for its turn.
    pub fn announce_outcome(&self, attempt: u32) {
        self.lane.lock_outcomes().insert(attempt);
        self.lane.announced.notify_waiters();
    }

    /// Whether the outcome of `attempt` arrives within [`FOLD_WINDOW`] (or already
    /// has); if so, the Started event need not be written, and `started_at` is left for
    /// the outcome to take when it is written ([`Place::take_outcome`]). The start time
    /// is offered before waiting, so an outcome that takes its turn at once, before this
    /// event wakes, still takes it.
    pub async fn folds_into_outcome(&self, attempt: u32, started_at: Timestamp) -> bool {
        self.lock_started().insert(attempt, started_at);
        let deadline = tokio::time::Instant::now() + FOLD_WINDOW;
        let arrived = || self.lane.lock_outcomes().contains(&attempt);
        if self.announced_by(deadline, arrived).await {
            return true;
        }
        // No outcome in time: the Started event is written after all, unless an outcome
        // took the start time meanwhile.
        self.lock_started().remove(&attempt).is_none()
    }

    /// The outcome of `attempt` is being written: when a folded Started event said it
    /// started, if one did.
    pub fn take_outcome(&self, attempt: u32) -> Option<Timestamp> {
        self.lock_started().remove(&attempt)
    }

    fn lock_started(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Timestamp>> {
        self.lane
            .started
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Lane {
    fn lock_outcomes(&self) -> std::sync::MutexGuard<'_, HashSet<u32>> {
        self.outcomes.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut lanes = self.lanes.0.lock().unwrap_or_else(PoisonError::into_inner);
        // This place and the map hold the lane: nobody else is in it.
        if Arc::strong_count(&self.lane) == 2 {
            lanes.remove(&self.uid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_started_event_folds_into_an_outcome_that_follows_it() {
        let lanes = Lanes::default();
        let started = lanes.enter("uid-a");
        let outcome = lanes.enter("uid-a");
        let at = Timestamp::from_second(1_800_000_000).unwrap();
        let (folded, ()) = tokio::join!(started.folds_into_outcome(1, at), async {
            // After the Started event has begun waiting.
            tokio::task::yield_now().await;
            outcome.announce_outcome(1);
        });
        assert!(folded);
        assert_eq!(outcome.take_outcome(1), Some(at));
        // Another attempt's outcome folds nothing.
        outcome.announce_outcome(2);
        assert!(!started.folds_into_outcome(3, at).await);
        assert_eq!(outcome.take_outcome(2), None);
    }

    #[tokio::test]
    async fn an_outcome_written_before_the_started_event_wakes_still_takes_its_start_time() {
        let lanes = Lanes::default();
        let started = lanes.enter("uid-a");
        let outcome = lanes.enter("uid-a");
        let at = Timestamp::from_second(1_800_000_000).unwrap();
        let (folded, taken) = tokio::join!(started.folds_into_outcome(1, at), async {
            tokio::task::yield_now().await;
            // The outcome arrives, takes its turn at once and is written, all before
            // the Started event's task runs again.
            outcome.announce_outcome(1);
            let _turn = outcome.turn().await;
            outcome.take_outcome(1)
        });
        assert!(folded);
        assert_eq!(taken, Some(at));
    }

    #[tokio::test]
    async fn a_report_is_waited_for_until_a_deadline() {
        let lanes = Lanes::default();
        let dispatch = lanes.enter("uid-a");
        let report = lanes.enter("uid-a");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let (reported, ()) = tokio::join!(dispatch.reported_by(1, deadline), async {
            tokio::task::yield_now().await;
            report.announce_report(1);
        });
        assert!(reported, "the report came before the deadline");
        // Already in: no wait. Another attempt's report is not it.
        assert!(dispatch.reported_by(1, tokio::time::Instant::now()).await);
        let soon = tokio::time::Instant::now() + Duration::from_millis(20);
        assert!(!dispatch.reported_by(2, soon).await);
        assert!(
            tokio::time::Instant::now() >= soon,
            "waited until the deadline"
        );
    }

    #[tokio::test]
    async fn writes_to_one_task_take_turns_and_the_lane_goes_with_its_last_place() {
        let lanes = Lanes::default();
        let first = lanes.enter("uid-a");
        let second = lanes.enter("uid-a");
        let other = lanes.enter("uid-b");
        let turn = first.turn().await;
        // The same Task waits; another Task does not.
        assert!(
            tokio::time::timeout(Duration::from_millis(20), second.turn())
                .await
                .is_err()
        );
        let _other_turn = other.turn().await;
        drop(turn);
        let _second_turn = second.turn().await;
        assert_eq!(lanes.open(), 2);
        drop((first, other));
        assert_eq!(lanes.open(), 1);
        drop(second);
        assert_eq!(lanes.open(), 0);
    }
}
