//! The consuming side: one role queue, manual acks, prefetch equal to the concurrency,
//! a semaphore whose permit moves into each task, cancels from the control exchange,
//! heartbeats that renew the claim, and a shutdown that stops taking messages, lets
//! tasks in flight finish within the grace period and requeues the rest.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use aios_bus::Bus;
use aios_crds::{
    bus::{
        MemoryNote, Message, SCHEMA_VERSION, TaskCancel, TaskDispatch, TaskEvent, TaskEventKind,
    },
    names::bus as names,
};
use futures::StreamExt;
use lapin::{
    message::Delivery,
    options::{BasicAckOptions, BasicNackOptions},
};
use tokio::{
    sync::{OwnedSemaphorePermit, RwLock, Semaphore},
    task::JoinSet,
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    claims::{Claim, Claims, Renewal},
    metrics::Metrics,
    work::{Failure, Success, Worker},
};

/// The longest wait between tries of a Redis or bus operation that must succeed.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The bus connection in use, replaced when it is lost.
#[derive(Debug, Default)]
pub struct BusSlot(RwLock<Option<Arc<Bus>>>);

impl BusSlot {
    /// The connection, if there is one.
    pub async fn get(&self) -> Option<Arc<Bus>> {
        self.0.read().await.clone()
    }

    async fn set(&self, bus: Option<Arc<Bus>>) {
        *self.0.write().await = bus;
    }
}

/// How often [`Health::watch_redis`] checks that Redis answers.
pub const REDIS_CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// How long one Redis check may take; a slower answer counts as none.
pub const REDIS_CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// How long after Redis last answered the agent stays ready: a Redis that stops
/// answering, or a checker that stopped checking, makes the agent unready within it.
pub const REDIS_FRESHNESS: Duration = Duration::from_secs(2);

/// What the probes read.
#[derive(Debug, Default)]
pub struct Health {
    /// The bus connection.
    pub bus: BusSlot,
    /// When Redis last answered a check; `None` before the first answer and after a
    /// failed check or command.
    redis_answered: Mutex<Option<Instant>>,
}

/// Whether Redis, last answering at `answered`, counts as up at `now`.
fn redis_fresh(answered: Option<Instant>, now: Instant) -> bool {
    answered.is_some_and(|at| now.saturating_duration_since(at) <= REDIS_FRESHNESS)
}

impl Health {
    /// Ready: connected to the bus, and Redis answered within [`REDIS_FRESHNESS`].
    pub async fn is_ready(&self) -> bool {
        self.redis_ready() && self.bus.get().await.is_some_and(|b| b.is_connected())
    }

    /// Whether Redis answered within [`REDIS_FRESHNESS`] and no check or command has
    /// failed since.
    pub fn redis_ready(&self) -> bool {
        redis_fresh(*self.redis_answered(), Instant::now())
    }

    /// Records whether Redis just answered.
    pub fn record_redis(&self, answered: bool) {
        *self.redis_answered() = answered.then(Instant::now);
    }

    fn redis_answered(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.redis_answered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps the Redis half of readiness current until `shutdown`: `ping` every
    /// [`REDIS_CHECK_INTERVAL`], each bounded by [`REDIS_CHECK_TIMEOUT`], so a Redis
    /// that hangs fails readiness as promptly as one that refuses connections.
    pub async fn watch_redis<F, Fut>(&self, ping: F, shutdown: &CancellationToken)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = bool>,
    {
        let mut ticks = tokio::time::interval(REDIS_CHECK_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let answered = tokio::time::timeout(REDIS_CHECK_TIMEOUT, ping())
                .await
                .unwrap_or(false);
            if !answered && self.redis_ready() {
                tracing::warn!(timeout = ?REDIS_CHECK_TIMEOUT, "Redis does not answer; not ready");
            }
            self.record_redis(answered);
        }
    }
}

/// The shared state of the consuming side.
pub struct Runtime {
    /// Does attempts.
    pub worker: Arc<Worker>,
    /// Claims in Redis.
    pub claims: Claims,
    /// Metrics.
    pub metrics: Metrics,
    /// Probes' view; holds the bus connection.
    pub health: Arc<Health>,
    /// The agent's name in events.
    pub agent: String,
    /// The namespace whose work the agent does (its pod's): it consumes that
    /// namespace's queues only, and refuses a dispatch for any other.
    pub namespace: String,
    /// Tasks at once.
    pub concurrency: u16,
    /// How long tasks in flight may run after shutdown begins.
    pub grace: Duration,
    /// The claim lease (heartbeats come at least three times per lease).
    pub lease: Duration,
    /// Attempts in flight here, by `<task uid>-<attempt>`, with the token that stops them.
    inflight: Mutex<HashMap<String, CancellationToken>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("agent", &self.agent)
            .field("worker", &self.worker)
            .finish_non_exhaustive()
    }
}

/// How an attempt ended, for the metrics.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Succeeded,
    Failed,
    Cancelled,
    Requeued,
    Duplicate,
    Malformed,
    Foreign,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Requeued => "requeued",
            Self::Duplicate => "duplicate",
            Self::Malformed => "malformed",
            Self::Foreign => "foreign",
        }
    }
}

/// How the work on a claimed attempt ended.
enum Ending {
    Done(Box<Result<Success, Failure>>),
    Cancelled,
    ClaimLost,
    HardStop,
}

/// Waits with exponential backoff: 100 ms doubling up to [`MAX_BACKOFF`].
fn backoff(try_number: u32) -> Duration {
    Duration::from_millis(100)
        .saturating_mul(2_u32.saturating_pow(try_number.min(10)))
        .min(MAX_BACKOFF)
}

impl Runtime {
    /// A runtime over a worker and claims.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        worker: Arc<Worker>,
        claims: Claims,
        metrics: Metrics,
        health: Arc<Health>,
        agent: String,
        namespace: String,
        concurrency: u16,
        grace: Duration,
        lease: Duration,
    ) -> Self {
        Self {
            worker,
            claims,
            metrics,
            health,
            agent,
            namespace,
            concurrency: concurrency.max(1),
            grace,
            lease,
            inflight: Mutex::new(HashMap::new()),
        }
    }

    fn inflight(&self) -> std::sync::MutexGuard<'_, HashMap<String, CancellationToken>> {
        self.inflight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Consumes until `shutdown`, reconnecting to the bus when the connection is lost;
    /// returns when every task has finished or been requeued.
    pub async fn run(
        self: Arc<Self>,
        amqp_url: &str,
        ca: Option<&aios_bus::CaBundle>,
        shutdown: CancellationToken,
    ) {
        let hard_stop = CancellationToken::new();
        let semaphore = Arc::new(Semaphore::new(usize::from(self.concurrency)));
        let mut tasks = JoinSet::new();
        while !shutdown.is_cancelled() {
            let Ok(bus) = Bus::connect(amqp_url, ca, &shutdown).await else {
                break;
            };
            let bus = Arc::new(bus);
            self.health.bus.set(Some(bus.clone())).await;
            tracing::info!(role = %self.worker.role, "connected to RabbitMQ");
            if let Err(err) = self
                .consume(&bus, &semaphore, &mut tasks, &shutdown, &hard_stop)
                .await
            {
                tracing::warn!(error = %err, "consuming stopped; reconnecting");
            }
            if !shutdown.is_cancelled() {
                self.health.bus.set(None).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        tracing::info!(in_flight = tasks.len(), grace = ?self.grace, "shutting down: no new messages; waiting for tasks in flight");
        let grace = tokio::time::sleep(self.grace);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                joined = tasks.join_next() => if joined.is_none() { break },
                () = &mut grace, if !hard_stop.is_cancelled() => {
                    tracing::warn!(in_flight = tasks.len(), "the grace period is over: requeueing what is left");
                    hard_stop.cancel();
                }
            }
        }
        if let Some(bus) = self.health.bus.get().await {
            bus.close().await;
        }
    }

    /// One connection's consuming loop.
    async fn consume(
        self: &Arc<Self>,
        bus: &Arc<Bus>,
        semaphore: &Arc<Semaphore>,
        tasks: &mut JoinSet<()>,
        shutdown: &CancellationToken,
        hard_stop: &CancellationToken,
    ) -> Result<(), String> {
        let role = &self.worker.role;
        let namespace = &self.namespace;
        bus.ensure_role_queue(namespace, role)
            .await
            .map_err(|e| e.to_string())?;
        let queue = names::role_queue(namespace, role);
        let mut dispatches = bus
            .consume(&queue, &format!("{}-{role}", self.agent), self.concurrency)
            .await
            .map_err(|e| e.to_string())?;
        let mut control = bus
            .consume_control(&format!("{}-control", self.agent))
            .await
            .map_err(|e| e.to_string())?;
        bus.ensure_memory_queue(namespace, role)
            .await
            .map_err(|e| e.to_string())?;
        // One note at a time: storing one embeds it, which may wait on a model server.
        let mut notes = bus
            .consume(
                &names::memory_queue(namespace, role),
                &format!("{}-memory", self.agent),
                1,
            )
            .await
            .map_err(|e| e.to_string())?;
        loop {
            // The permit is taken before the message, so a message is only taken when
            // there is room to work on it.
            let permit = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                permit = semaphore.clone().acquire_owned() => permit.map_err(|_| "the semaphore closed".to_owned())?,
                Some(message) = control.next() => {
                    self.on_control(message).await;
                    continue;
                }
                Some(note) = notes.next() => {
                    self.spawn_note(note, tasks, hard_stop);
                    continue;
                }
                Some(finished) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(err) = finished {
                        tracing::error!(error = %err, "a task panicked");
                    }
                    continue;
                }
            };
            let delivery = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                Some(message) = control.next() => {
                    drop(permit);
                    self.on_control(message).await;
                    continue;
                }
                Some(note) = notes.next() => {
                    drop(permit);
                    self.spawn_note(note, tasks, hard_stop);
                    continue;
                }
                delivery = dispatches.next() => delivery,
            };
            match delivery {
                Some(Ok(delivery)) => {
                    let runtime = self.clone();
                    let hard_stop = hard_stop.clone();
                    tasks.spawn(async move { runtime.handle(delivery, permit, hard_stop).await });
                }
                Some(Err(err)) => return Err(format!("consuming dispatches: {err}")),
                None => return Err("the dispatch consumer was closed".to_owned()),
            }
        }
    }

    async fn on_control(&self, message: Result<Delivery, lapin::Error>) {
        let Ok(delivery) = message else { return };
        match TaskCancel::decode(&delivery.data) {
            Ok(cancel) => {
                let id = cancel.attempt_id().message_id();
                tracing::info!(attempt = %id, reason = %cancel.reason, "attempt cancelled");
                if let Err(err) = self.claims.cancel(&id).await {
                    tracing::warn!(error = %err, "recording a cancel in Redis failed");
                }
                if let Some(token) = self.inflight().get(&id) {
                    token.cancel();
                }
            }
            Err(err) => tracing::warn!(error = %err, "ignoring a malformed control message"),
        }
        let _ = delivery.ack(BasicAckOptions::default()).await;
    }

    /// Stores a memory note apart from the consuming loop (embedding it may wait on a
    /// model server): acknowledged once stored or unusable; requeued when storing failed,
    /// until the queue's delivery limit drops it.
    fn spawn_note(
        self: &Arc<Self>,
        message: Result<Delivery, lapin::Error>,
        tasks: &mut JoinSet<()>,
        hard_stop: &CancellationToken,
    ) {
        let Ok(delivery) = message else { return };
        let runtime = self.clone();
        let hard_stop = hard_stop.clone();
        tasks.spawn(async move {
            // Past the shutdown grace the note goes back to its queue, unstored.
            let store = runtime.store_note(&delivery);
            let outcome = tokio::select! {
                outcome = store => outcome,
                () = hard_stop.cancelled() => "failed",
            };
            runtime.metrics.notes.with_label_values(&[outcome]).inc();
            if outcome == "failed" {
                requeue(&delivery).await;
            } else {
                let _ = delivery.ack(BasicAckOptions::default()).await;
            }
        });
    }

    /// Stores the note `delivery` carries; the outcome for the metric: `stored`,
    /// `ignored` (malformed, or of a kind this build does not know) or `failed`.
    async fn store_note(&self, delivery: &Delivery) -> &'static str {
        match MemoryNote::decode(&delivery.data) {
            Ok(note) => match self.worker.remember_note(&note).await {
                Ok(true) => {
                    tracing::info!(project = %note.project.name, task = ?note.task, kind = %note.kind, "remembered a note");
                    "stored"
                }
                Ok(false) => {
                    tracing::warn!(kind = %note.kind, "ignoring a memory note of a kind this build does not know");
                    "ignored"
                }
                Err(err) => {
                    tracing::warn!(error = %err, "storing a memory note failed; it is delivered again");
                    "failed"
                }
            },
            Err(err) => {
                tracing::warn!(error = %err, "ignoring a malformed memory note");
                "ignored"
            }
        }
    }

    /// One delivery, start to acknowledgement.
    async fn handle(
        self: Arc<Self>,
        delivery: Delivery,
        permit: OwnedSemaphorePermit,
        hard_stop: CancellationToken,
    ) {
        let started = Instant::now();
        let dispatch = match TaskDispatch::decode(&delivery.data) {
            Ok(dispatch) => dispatch,
            Err(err) => {
                // Dead-lettered: the operator fails the Task with the reason.
                tracing::error!(error = %err, "a dispatch could not be decoded; dead-lettering it");
                let _ = delivery
                    .nack(BasicNackOptions {
                        requeue: false,
                        ..BasicNackOptions::default()
                    })
                    .await;
                self.count(Outcome::Malformed, started);
                return;
            }
        };
        if dispatch.task.namespace != self.namespace {
            // Only a forgery reaches this queue with another namespace's Task: the
            // operator routes by namespace. Dead-lettered, where the operator rejects
            // it for want of its attempt's token.
            tracing::error!(
                task = %format!("{}/{}", dispatch.task.namespace, dispatch.task.name),
                namespace = %self.namespace,
                "refusing a dispatch for another namespace's Task; dead-lettering it"
            );
            let _ = delivery
                .nack(BasicNackOptions {
                    requeue: false,
                    ..BasicNackOptions::default()
                })
                .await;
            self.count(Outcome::Foreign, started);
            return;
        }
        let span = tracing::info_span!(
            "task",
            project = %format!("{}/{}", dispatch.project.namespace, dispatch.project.name),
            task = %dispatch.task.name,
            attempt = dispatch.attempt,
        );
        let outcome = self
            .attempt(&dispatch, &delivery, &hard_stop)
            .instrument(span)
            .await;
        self.count(outcome, started);
        drop(permit);
    }

    fn count(&self, outcome: Outcome, started: Instant) {
        let labels = [self.worker.role.as_str(), outcome.label()];
        self.metrics.tasks.with_label_values(&labels).inc();
        self.metrics
            .task_duration
            .with_label_values(&labels)
            .observe(started.elapsed().as_secs_f64());
    }

    /// Waits for the claim: claimed here, or done/cancelled elsewhere (`None`).
    /// `Err` when the hard stop came first.
    async fn wait_for_claim(
        &self,
        id: &str,
        hard_stop: &CancellationToken,
    ) -> Result<Option<Claim>, ()> {
        let mut tries = 0;
        loop {
            let wait = match self.claims.claim(id).await {
                Ok(Claim::Claimed) => return Ok(None),
                Ok(found @ (Claim::Done | Claim::Cancelled)) => return Ok(Some(found)),
                Ok(Claim::Held { by, ttl }) => {
                    // A live holder renews its lease and finishes (then the attempt is
                    // done); a dead one's lease lapses and this worker takes over.
                    tracing::info!(holder = %by, lease_left = ?ttl, "another worker holds the attempt; waiting");
                    ttl.clamp(Duration::from_millis(100), Duration::from_secs(1))
                }
                Err(err) => {
                    self.health.record_redis(false);
                    tries += 1;
                    tracing::warn!(error = %err, "claiming in Redis failed; retrying");
                    backoff(tries)
                }
            };
            tokio::select! {
                () = hard_stop.cancelled() => return Err(()),
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn attempt(
        &self,
        dispatch: &TaskDispatch,
        delivery: &Delivery,
        hard_stop: &CancellationToken,
    ) -> Outcome {
        let id = dispatch.attempt_id().message_id();
        // One run of an attempt per process: a second delivery of it (a republish, or a
        // redelivery after a lost connection) would find the claim this process's own,
        // so it waits here for the first run to end, then finds the attempt done.
        let stop = CancellationToken::new();
        loop {
            {
                let mut inflight = self.inflight();
                if !inflight.contains_key(&id) {
                    inflight.insert(id.clone(), stop.clone());
                    break;
                }
            }
            tokio::select! {
                () = hard_stop.cancelled() => {
                    requeue(delivery).await;
                    return Outcome::Requeued;
                }
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
        let outcome = match self.wait_for_claim(&id, hard_stop).await {
            Err(()) => {
                requeue(delivery).await;
                Outcome::Requeued
            }
            Ok(Some(found)) => {
                tracing::info!(
                    ?found,
                    "the attempt was handled already; acknowledging without work"
                );
                let _ = delivery.ack(BasicAckOptions::default()).await;
                if found == Claim::Cancelled {
                    Outcome::Cancelled
                } else {
                    Outcome::Duplicate
                }
            }
            Ok(None) => {
                self.claimed(dispatch, delivery, hard_stop, &stop, &id)
                    .await
            }
        };
        self.inflight().remove(&id);
        outcome
    }

    async fn claimed(
        &self,
        dispatch: &TaskDispatch,
        delivery: &Delivery,
        hard_stop: &CancellationToken,
        stop: &CancellationToken,
        id: &str,
    ) -> Outcome {
        if !self
            .publish(dispatch, TaskEventKind::Started, hard_stop)
            .await
        {
            let _ = self.claims.release(id).await;
            requeue(delivery).await;
            return Outcome::Requeued;
        }
        let heartbeat = self.heartbeat(dispatch, stop.clone());
        let deadline = deadline_sleep(dispatch);
        tokio::pin!(heartbeat, deadline);
        let result = tokio::select! {
            biased;
            () = hard_stop.cancelled() => Ending::HardStop,
            result = self.worker.perform(dispatch) => Ending::Done(Box::new(result)),
            () = stop.cancelled() => Ending::Cancelled,
            () = &mut heartbeat => Ending::ClaimLost,
            () = &mut deadline => Ending::Done(Box::new(Err(Failure {
                reason: "DeadlineExceeded".to_owned(),
                message: "the attempt ran past its deadline".to_owned(),
                retryable: true,
                usage: aios_crds::Usage::default(),
            }))),
        };
        let done = match result {
            Ending::Done(done) => *done,
            Ending::HardStop => {
                tracing::warn!("the grace period ended mid-task: requeueing it");
                let _ = self.claims.release(id).await;
                requeue(delivery).await;
                return Outcome::Requeued;
            }
            Ending::Cancelled => {
                // Cancelled by the operator: nothing more is delivered or reported.
                let _ = self.claims.finish(id).await;
                let _ = delivery.ack(BasicAckOptions::default()).await;
                return Outcome::Cancelled;
            }
            Ending::ClaimLost => {
                tracing::warn!(
                    "the claim was taken over by another worker; leaving the attempt to it"
                );
                let _ = delivery.ack(BasicAckOptions::default()).await;
                return Outcome::Duplicate;
            }
        };
        let (kind, outcome) = match done {
            Ok(Success { output, usage }) => {
                tracing::info!(commit = ?output.result.commit, files = output.result.files.len(), "attempt succeeded");
                (
                    TaskEventKind::Succeeded { output, usage },
                    Outcome::Succeeded,
                )
            }
            Err(failure) => {
                tracing::warn!(reason = %failure.reason, message = %failure.message, retryable = failure.retryable, "attempt failed");
                (
                    TaskEventKind::Failed {
                        reason: failure.reason,
                        message: failure.message,
                        retryable: failure.retryable,
                        usage: failure.usage,
                    },
                    Outcome::Failed,
                )
            }
        };
        // The ack comes only after the broker confirmed the event, and the done mark
        // before the ack, so a redelivery after any crash finds one or the other.
        if !self.publish(dispatch, kind, hard_stop).await {
            let _ = self.claims.release(id).await;
            requeue(delivery).await;
            return Outcome::Requeued;
        }
        if let Err(err) = self.claims.finish(id).await {
            tracing::warn!(error = %err, "marking the attempt done failed; a redelivery would report it again");
        }
        if let Err(err) = delivery.ack(BasicAckOptions::default()).await {
            tracing::warn!(error = %err, "acknowledging failed; the redelivery will find the attempt done");
        }
        outcome
    }

    /// Renews the claim and reports a heartbeat at least three times per lease (and at
    /// the dispatch's interval); returns if the claim is lost or `stop` is cancelled.
    async fn heartbeat(&self, dispatch: &TaskDispatch, stop: CancellationToken) {
        let id = dispatch.attempt_id().message_id();
        let asked = Duration::from_secs(u64::from(dispatch.heartbeat_interval_seconds.max(1)));
        let every = asked.min(self.lease / 3);
        let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            match self.claims.renew(&id).await {
                Ok(Renewal::Held) => {}
                Ok(Renewal::Recovered) => {
                    tracing::warn!(attempt = %id, "the claim was gone (Redis restarted?); holding it again");
                }
                Ok(Renewal::Lost) => return,
                Ok(Renewal::Cancelled) => {
                    // A cancel this agent did not hear (its marks outlive the fanout):
                    // cancelling `stop` ends the attempt as cancelled, so this does not
                    // return (a returned heartbeat means a lost claim).
                    tracing::info!(attempt = %id, "the attempt was cancelled meanwhile");
                    stop.cancel();
                    std::future::pending::<()>().await;
                }
                Err(err) => tracing::warn!(error = %err, "renewing the claim failed"),
            }
            if let Some(bus) = self.health.bus.get().await
                && let Err(err) = bus
                    .publish_event(&self.event(dispatch, TaskEventKind::Heartbeat))
                    .await
            {
                tracing::warn!(error = %err, "publishing a heartbeat failed");
            }
        }
    }

    fn event(&self, dispatch: &TaskDispatch, kind: TaskEventKind) -> TaskEvent {
        TaskEvent {
            schema_version: SCHEMA_VERSION,
            project: dispatch.project.clone(),
            task: dispatch.task.clone(),
            attempt: dispatch.attempt,
            agent: self.agent.clone(),
            token: dispatch.token.clone(),
            at: jiff::Timestamp::now(),
            kind,
        }
    }

    /// Publishes an event until the broker confirms it; false if the hard stop came first.
    async fn publish(
        &self,
        dispatch: &TaskDispatch,
        kind: TaskEventKind,
        hard_stop: &CancellationToken,
    ) -> bool {
        let event = self.event(dispatch, kind);
        let mut tries = 0;
        loop {
            let result = match self.health.bus.get().await {
                Some(bus) => bus.publish_event(&event).await.map_err(|e| e.to_string()),
                None => Err("not connected to RabbitMQ".to_owned()),
            };
            match result {
                Ok(()) => return true,
                Err(err) => {
                    tries += 1;
                    tracing::warn!(error = %err, event = event.routing_key(), "publishing an event failed; retrying");
                }
            }
            tokio::select! {
                () = hard_stop.cancelled() => return false,
                () = tokio::time::sleep(backoff(tries)) => {}
            }
        }
    }
}

/// Sleeps until the dispatch's deadline, or forever without one.
async fn deadline_sleep(dispatch: &TaskDispatch) {
    match dispatch.deadline {
        Some(at) => {
            let left = Duration::try_from(at.duration_since(jiff::Timestamp::now()))
                .unwrap_or(Duration::ZERO);
            tokio::time::sleep(left).await;
        }
        None => std::future::pending().await,
    }
}

async fn requeue(delivery: &Delivery) {
    let options = BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    };
    if let Err(err) = delivery.nack(options).await {
        tracing::warn!(error = %err, "requeueing failed; the broker requeues it when the channel closes");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[test]
    fn redis_counts_as_up_for_two_seconds_after_it_last_answered() {
        let at = Instant::now();
        assert!(!redis_fresh(None, at), "never answered");
        assert!(redis_fresh(Some(at), at + Duration::from_millis(1999)));
        assert!(redis_fresh(Some(at), at + REDIS_FRESHNESS));
        assert!(!redis_fresh(Some(at), at + Duration::from_millis(2001)));
    }

    #[test]
    fn a_failed_redis_command_fails_readiness_at_once() {
        let health = Health::default();
        assert!(!health.redis_ready(), "not ready before Redis answered");
        health.record_redis(true);
        assert!(health.redis_ready());
        health.record_redis(false);
        assert!(!health.redis_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn a_redis_that_hangs_fails_readiness_within_two_seconds_and_recovers() {
        let health = Arc::new(Health::default());
        let hung = Arc::new(AtomicBool::new(false));
        let shutdown = CancellationToken::new();
        let watcher = tokio::spawn({
            let (health, hung, shutdown) = (health.clone(), hung.clone(), shutdown.clone());
            async move {
                let ping = || {
                    let hung = hung.load(Ordering::Relaxed);
                    async move {
                        if hung {
                            std::future::pending::<()>().await;
                        }
                        true
                    }
                };
                health.watch_redis(ping, &shutdown).await;
            }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(health.redis_ready(), "the first check comes at once");
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(health.redis_ready(), "stays ready while Redis answers");

        hung.store(true, Ordering::Relaxed);
        let hung_at = Instant::now();
        while health.redis_ready() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            hung_at.elapsed() <= REDIS_FRESHNESS,
            "unready {:?} after Redis stopped answering",
            hung_at.elapsed()
        );

        hung.store(false, Ordering::Relaxed);
        tokio::time::sleep(REDIS_CHECK_INTERVAL + REDIS_CHECK_TIMEOUT).await;
        assert!(health.redis_ready(), "ready again once Redis answers");
        shutdown.cancel();
        watcher.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_lapses_when_nothing_checks_redis_any_more() {
        let health = Health::default();
        health.record_redis(true);
        tokio::time::sleep(REDIS_FRESHNESS + Duration::from_millis(1)).await;
        assert!(
            !health.redis_ready(),
            "a dead checker cannot keep the agent ready"
        );
    }
}
