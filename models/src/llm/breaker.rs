//! A circuit breaker per provider: after a run of failures the provider is skipped for
//! a cool-down; then one trial call decides whether it is back.

use std::time::Duration;

use tokio::time::Instant;

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Calls go through.
    Closed,
    /// Calls are skipped until the instant.
    Open(Instant),
    /// One trial call is in flight; others are skipped until it ends.
    HalfOpen,
}

/// One provider's breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    state: State,
    failures: u32,
    threshold: u32,
    cool_down: Duration,
}

impl Breaker {
    /// Opens after `threshold` failures in a row, for `cool_down`.
    pub fn new(threshold: u32, cool_down: Duration) -> Self {
        Self {
            state: State::Closed,
            failures: 0,
            threshold: threshold.max(1),
            cool_down,
        }
    }

    /// The breaker's state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether a call may go through now; an open breaker whose cool-down has passed
    /// lets exactly one trial call through.
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.state {
            State::Closed => true,
            State::Open(until) if now >= until => {
                self.state = State::HalfOpen;
                true
            }
            State::Open(_) | State::HalfOpen => false,
        }
    }

    /// A call succeeded: the breaker closes.
    pub fn succeeded(&mut self) {
        self.state = State::Closed;
        self.failures = 0;
    }

    /// A call failed: a failed trial, or the threshold reached, opens the breaker.
    pub fn failed(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        if self.state == State::HalfOpen || self.failures >= self.threshold {
            self.state = State::Open(now + self.cool_down);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_lets_one_trial_through_and_closes_on_success() {
        let start = Instant::now();
        let mut breaker = Breaker::new(2, Duration::from_secs(30));
        assert!(breaker.allow(start));
        breaker.failed(start);
        assert_eq!(breaker.state(), State::Closed);
        breaker.failed(start);
        assert!(
            !breaker.allow(start + Duration::from_secs(29)),
            "open during the cool-down"
        );
        let later = start + Duration::from_secs(30);
        assert!(breaker.allow(later), "one trial after the cool-down");
        assert!(!breaker.allow(later), "only one");
        breaker.failed(later);
        assert!(
            !breaker.allow(later + Duration::from_secs(1)),
            "a failed trial reopens"
        );
        let again = later + Duration::from_secs(31);
        assert!(breaker.allow(again));
        breaker.succeeded();
        assert_eq!(breaker.state(), State::Closed);
        breaker.failed(again);
        assert_eq!(breaker.state(), State::Closed, "the count starts again");
    }
}
