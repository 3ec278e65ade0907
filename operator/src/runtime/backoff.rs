//! Per-object error backoff: an object whose reconcile keeps failing (a refused
//! permission, an immutable field, an admission webhook saying no) is retried after a
//! delay that doubles from [`FIRST`] to [`MAX`], so it costs almost nothing; its first
//! success resets it. Conflicts (the cache lagging our own writes) and a standby's
//! passes are not the object's failures: they are retried on their usual short delays
//! and leave the count alone.

use std::{collections::HashMap, sync::Mutex, time::Duration};

/// The delay after an object's first failure.
pub const FIRST: Duration = Duration::from_millis(200);
/// The longest delay.
pub const MAX: Duration = Duration::from_secs(300);

/// The key of `object`: `namespace/name`.
pub fn key(object: &impl kube::ResourceExt) -> String {
    format!(
        "{}/{}",
        object.namespace().unwrap_or_default(),
        object.name_any()
    )
}

/// Runs `reconcile` on `object` and forgets the object's failures when it succeeds.
pub async fn resetting<K, A, Fut>(
    controller: &'static str,
    object: std::sync::Arc<K>,
    ctx: std::sync::Arc<crate::runtime::context::Context>,
    reconcile: impl FnOnce(std::sync::Arc<K>, std::sync::Arc<crate::runtime::context::Context>) -> Fut,
) -> Result<A, crate::Error>
where
    K: kube::ResourceExt,
    Fut: std::future::Future<Output = Result<A, crate::Error>>,
{
    let key = key(object.as_ref());
    let result = reconcile(object, ctx.clone()).await;
    if result.is_ok() {
        ctx.reconciled(controller, &key);
    }
    result
}

/// The delay after `failures` failures in a row (at least one).
pub fn delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    FIRST
        .checked_mul(1 << doublings)
        .map_or(MAX, |d| d.min(MAX))
}

/// One failing object (its errors are in the log, each as it happens).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failing {
    /// Failures in a row.
    pub count: u32,
}

/// The objects whose last reconcile failed, by controller and `namespace/name`.
#[derive(Debug, Default)]
pub struct Backoffs {
    failing: Mutex<HashMap<(&'static str, String), Failing>>,
}

impl Backoffs {
    fn failing(&self) -> std::sync::MutexGuard<'_, HashMap<(&'static str, String), Failing>> {
        self.failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts a failure of `object`; how long to wait before its next reconcile, and how
    /// many failures in a row it has now.
    pub fn failed(&self, controller: &'static str, object: &str) -> (Duration, u32) {
        let mut failing = self.failing();
        let entry = failing
            .entry((controller, object.to_owned()))
            .or_insert(Failing { count: 0 });
        entry.count = entry.count.saturating_add(1);
        (delay(entry.count), entry.count)
    }

    /// Forgets `object`'s failures after a success; whether it was failing.
    pub fn succeeded(&self, controller: &'static str, object: &str) -> bool {
        self.failing()
            .remove(&(controller, object.to_owned()))
            .is_some()
    }

    /// Whether any object of `controller` is failing.
    pub fn any(&self, controller: &'static str) -> bool {
        self.failing().keys().any(|(c, _)| *c == controller)
    }

    /// Every failing object: controller, `namespace/name` and its failures.
    pub fn snapshot(&self) -> Vec<(&'static str, String, Failing)> {
        let mut all: Vec<_> = self
            .failing()
            .iter()
            .map(|((controller, object), f)| (*controller, object.clone(), f.clone()))
            .collect();
        all.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_doubles_from_200_ms_to_five_minutes() {
        assert_eq!(delay(1), Duration::from_millis(200));
        assert_eq!(delay(2), Duration::from_millis(400));
        assert_eq!(delay(3), Duration::from_millis(800));
        assert_eq!(delay(11), Duration::from_millis(204_800));
        assert_eq!(delay(12), MAX);
        assert_eq!(delay(u32::MAX), MAX);
        assert_eq!(delay(0), FIRST, "never shorter than the first");
    }

    #[test]
    fn failures_count_per_object_and_a_success_resets_them() {
        let b = Backoffs::default();
        assert_eq!(b.failed("agent", "team-a/apollo"), (FIRST, 1));
        assert_eq!(b.failed("agent", "team-a/apollo").1, 2);
        assert_eq!(b.failed("agent", "team-a/athena").1, 1, "another object");
        assert_eq!(
            b.failed("project", "team-a/apollo").1,
            1,
            "another controller"
        );
        assert_eq!(b.snapshot().len(), 3);
        assert!(b.any("project") && !b.any("task-events"));
        assert!(b.succeeded("agent", "team-a/apollo"));
        assert!(!b.succeeded("agent", "team-a/apollo"));
        assert_eq!(b.failed("agent", "team-a/apollo"), (FIRST, 1));
    }
}
