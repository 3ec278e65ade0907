//! Leader election on a `coordination.k8s.io` Lease, so that of several operator
//! replicas exactly one dispatches. A replica leads while it renews the Lease; one that
//! cannot renew within the lease duration stops leading (and the process exits), and a
//! standby takes over once the Lease has expired.
//!
//! Expiry is judged as client-go judges it: from when this replica last saw the Lease's
//! record change, on its own monotonic clock. The holder's `renewTime` is another
//! machine's wall clock; compared with ours it would let a standby whose clock runs ahead
//! take a Lease its holder still renews.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use jiff::Timestamp;
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
};
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
};
use tokio_util::sync::CancellationToken;

/// Leader election settings.
#[derive(Debug, Clone)]
pub struct ElectionConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a Lease is valid without renewal.
    pub lease_duration: Duration,
    /// How often the leader renews, and standbys retry.
    pub retry_period: Duration,
}

/// Whether this replica currently leads: it renewed the Lease recently enough.
#[derive(Debug, Clone)]
pub struct Leadership {
    renewed: Arc<Mutex<Option<Instant>>>,
    valid_for: Duration,
}

impl Leadership {
    /// A leadership that is never current, for tests of code that checks it.
    pub fn none(valid_for: Duration) -> Self {
        Self {
            renewed: Arc::new(Mutex::new(None)),
            valid_for,
        }
    }

    /// True while the last renewal is younger than two thirds of the lease duration,
    /// leaving a margin before another replica may take over.
    pub fn is_current(&self) -> bool {
        let renewed = *self
            .renewed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        renewed.is_some_and(|at| at.elapsed() < self.valid_for * 2 / 3)
    }

    /// Records a renewal; `at` is taken before the request, so validity is never
    /// counted from later than the Lease's own renew time.
    fn mark(&self, at: Instant) {
        *self
            .renewed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(at);
    }

    fn clear(&self) {
        *self
            .renewed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }
}

/// Why leading ended.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// Another replica holds the Lease now.
    #[error("lost the lease {0} to another replica")]
    Lost(String),
    /// The Lease could not be renewed in time.
    #[error("could not renew the lease {name} in time")]
    RenewFailed {
        /// The Lease.
        name: String,
        /// The last API error.
        #[source]
        source: kube::Error,
    },
    /// Shutdown began before leadership was acquired.
    #[error("shutting down")]
    ShuttingDown,
}

/// What identifies one renewal of a Lease: any change to it is a sign of life.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    transitions: Option<i32>,
}

impl Record {
    fn of(spec: &LeaseSpec) -> Self {
        Self {
            holder: spec.holder_identity.clone().filter(|h| !h.is_empty()),
            renew_time: spec.renew_time.clone(),
            transitions: spec.lease_transitions,
        }
    }
}

/// A Lease record and when this replica first saw it, on its monotonic clock.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Observed {
    record: Record,
    at: Instant,
}

/// What this replica knows of `record` at `now`, given what it saw before: the same
/// record keeps the time it was first seen; a changed one is seen now.
fn observe(before: Option<Observed>, record: Record, now: Instant) -> Observed {
    match before {
        Some(before) if before.record == record => before,
        _ => Observed { record, at: now },
    }
}

/// Whether a Lease held by someone else has expired: its record has not changed for
/// its whole duration, as this replica has watched it. A replica that has just started
/// (or just seen a renewal) waits a full duration, whatever the clocks say.
fn expired(observed: &Observed, duration: Duration, now: Instant) -> bool {
    now.saturating_duration_since(observed.at) >= duration
}

/// Runs an election.
#[derive(Debug, Clone)]
pub struct Elector {
    api: Api<Lease>,
    config: ElectionConfig,
    leadership: Leadership,
    observed: Arc<Mutex<Option<Observed>>>,
}

impl Elector {
    /// An elector for `config`.
    pub fn new(client: kube::Client, config: ElectionConfig) -> Self {
        let api = Api::namespaced(client, &config.namespace);
        let leadership = Leadership {
            renewed: Arc::new(Mutex::new(None)),
            valid_for: config.lease_duration,
        };
        Self {
            api,
            config,
            leadership,
            observed: Arc::new(Mutex::new(None)),
        }
    }

    /// The leadership handle, shared with the code that must only act while leading.
    pub fn leadership(&self) -> Leadership {
        self.leadership.clone()
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquire(&self, shutdown: &CancellationToken) -> Result<(), LeaderError> {
        loop {
            let asked = Instant::now();
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    self.leadership.mark(asked);
                    tracing::info!(lease = %self.config.name, identity = %self.config.identity, "leading");
                    return Ok(());
                }
                Ok(false) => {}
                Err(err) => tracing::warn!(error = %err, "lease acquisition failed"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return Err(LeaderError::ShuttingDown),
                () = tokio::time::sleep(self.config.retry_period) => {}
            }
        }
    }

    /// Renews the Lease until shutdown (then releases it) or until leadership is lost.
    pub async fn keep(&self, shutdown: &CancellationToken) -> Result<(), LeaderError> {
        let mut last_ok = Instant::now();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => {
                    // Stop acting as leader before a standby can take the Lease.
                    self.leadership.clear();
                    self.release().await;
                    return Ok(());
                }
                () = tokio::time::sleep(self.config.retry_period) => {}
            }
            let asked = Instant::now();
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    self.leadership.mark(asked);
                    last_ok = asked;
                }
                Ok(false) => return Err(LeaderError::Lost(self.config.name.clone())),
                Err(source) if last_ok.elapsed() >= self.config.lease_duration * 2 / 3 => {
                    return Err(LeaderError::RenewFailed {
                        name: self.config.name.clone(),
                        source,
                    });
                }
                Err(err) => tracing::warn!(error = %err, "lease renewal failed; retrying"),
            }
        }
    }

    /// Takes or renews the Lease if it is free, expired or ours. Writes carry the
    /// resourceVersion read, so two replicas cannot both win.
    async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let me = &self.config.identity;
        let seconds = i32::try_from(self.config.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                Err(err) => Err(err),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let duration = Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(seconds).max(1)).unwrap_or(1),
        );
        let expired = {
            let mut observed = self
                .observed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let seen = observe(observed.take(), Record::of(spec), Instant::now());
            let expired = expired(&seen, duration, Instant::now());
            *observed = Some(seen);
            expired
        };
        let mine = holder.as_deref() == Some(me.as_str());
        if !(mine || holder.is_none() || expired) {
            return Ok(false);
        }
        if !mine {
            spec.holder_identity = Some(me.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.lease_duration_seconds = Some(seconds);
        spec.renew_time = Some(MicroTime(now));
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Gives the Lease up so a standby takes over without waiting for it to expire.
    async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        if let Err(err) = self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            tracing::warn!(error = %err, "releasing the lease failed; it will expire instead");
        }
    }
}

/// Labels this replica's pod [`LEADER`](aios_crds::names::labels::LEADER) once it
/// leads, so the chart's credential Service reaches the leader only (standbys have no
/// caches to answer from). A replica that is not a pod (a local process) has nothing to
/// label: that, and any other failure, is logged and changes nothing else. The label
/// goes with the pod: a leader that loses the Lease exits.
pub async fn label_leader_pod(client: &kube::Client, namespace: &str, pod: &str) {
    let patch = serde_json::json!({
        "metadata": {"labels": {aios_crds::names::labels::LEADER: "true"}}
    });
    let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), namespace);
    match api
        .patch(
            pod,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => tracing::info!(%pod, "labelled this pod as the leader"),
        Err(err) => {
            tracing::info!(%pod, error = %err, "could not label this replica's pod as the leader (not a pod?)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(holder: &str, renewed: &str) -> Record {
        Record {
            holder: Some(holder.to_owned()),
            renew_time: Some(MicroTime(renewed.parse().unwrap())),
            transitions: Some(0),
        }
    }

    #[test]
    fn a_lease_renewed_as_we_watch_never_expires_whatever_its_clock_says() {
        let start = Instant::now();
        let duration = Duration::from_secs(15);
        // The holder's clock is a day behind ours: its renewTime looks long past.
        let mut seen = observe(None, record("op-a", "2026-12-04T00:00:00Z"), start);
        for second in 1..=60 {
            let now = start + Duration::from_secs(second);
            let renewed = format!("2026-12-04T00:00:{:02}Z", second % 60);
            seen = observe(Some(seen), record("op-a", &renewed), now);
            assert!(!expired(&seen, duration, now), "at {second}s");
        }
    }

    #[test]
    fn a_lease_that_stops_changing_expires_one_duration_after_we_first_saw_it() {
        let start = Instant::now();
        let duration = Duration::from_secs(15);
        // Its renewTime is in our future (the holder's clock runs ahead): irrelevant.
        let still = record("op-a", "2099-01-01T00:00:00Z");
        let mut seen = observe(None, still.clone(), start);
        for second in [1, 7, 14] {
            let now = start + Duration::from_secs(second);
            seen = observe(Some(seen), still.clone(), now);
            assert!(!expired(&seen, duration, now), "at {second}s");
        }
        let now = start + Duration::from_secs(15);
        seen = observe(Some(seen), still, now);
        assert!(expired(&seen, duration, now));
        // A renewal seen later starts the count again.
        let later = start + Duration::from_secs(16);
        seen = observe(Some(seen), record("op-a", "2099-01-01T00:00:02Z"), later);
        assert!(!expired(&seen, duration, later + Duration::from_secs(14)));
        assert!(expired(&seen, duration, later + Duration::from_secs(15)));
    }

    #[test]
    fn a_replica_that_just_started_waits_a_full_duration_even_for_an_old_lease() {
        let start = Instant::now();
        let seen = observe(None, record("gone", "2000-01-01T00:00:00Z"), start);
        assert!(!expired(
            &seen,
            Duration::from_secs(15),
            start + Duration::from_secs(14)
        ));
        assert!(expired(
            &seen,
            Duration::from_secs(15),
            start + Duration::from_secs(15)
        ));
    }
}
