//! Consuming what agents report: task events become Task status (a planning task's
//! plan is kept in ConfigMaps first), and dead-lettered dispatches fail their attempt
//! with reason `PoisonMessage`. Delivery is at least once; every handler is idempotent,
//! and a message is acknowledged only once its effect is written (or it is known to have
//! none). What the API server refuses as invalid is not retried by redelivery, which
//! would be refused the same way forever: the attempt fails with the API server's
//! message (reason `ResultRefused`), and the task's retry policy takes it from there.
//! Any other failure (the API server unreachable, a refusal not recognised) returns the
//! message to the queue after a delay that doubles per Task from 200 ms to
//! [`RETRY_MAX`], so a message that keeps failing costs little; the Task is counted in
//! `aios_reconcile_failing_objects{controller="task-events"}` until one of its messages
//! is handled.
//!
//! Nothing is believed without the attempt's token (see [`crate::task::tokens`]): an event
//! or a dead letter whose token is missing or is not its attempt's changes nothing, is
//! counted in `aios_rejected_messages_total` and logged with what it claimed to be.

use std::{sync::Arc, time::Duration};

use aios_crds::{
    Task, TaskStatus,
    bus::{DecodeError, Message, ObjectRef, TaskDispatch, TaskEvent, TaskEventKind, TaskOutput},
    conditions::reasons,
    names::bus as names,
    project::TaskDefaults,
};
use futures::StreamExt;
use jiff::Timestamp;
use kube::{Api, Resource, ResourceExt, runtime::events::EventType};
use lapin::{
    message::Delivery,
    options::{BasicAckOptions, BasicNackOptions},
};
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_util::sync::CancellationToken;

use crate::{
    project::plan::stored_plan,
    runtime::bus::BusError,
    runtime::context::{Context, write_task_status},
    task::lanes::{Place, Turn},
    task::lifecycle::{self, apply_event, refuse_outcome, task_policy},
    task::tokens::{Attempt, Verdict},
};

/// How many messages are in hand at once, many more than [`WRITERS`]: also the
/// consumer's prefetch, so every message the broker has handed over is being handled
/// and none waits unannounced in the client's buffer. A Started event waiting for its
/// attempt's outcome (see [`crate::task::lanes`]) holds one without writing, and the
/// outcome it waits for must be able to arrive. And the operator learns that an agent
/// reported when the message is in hand, not when it is written: with thousands of
/// tasks running at once, a wide window lets a pass leave out the Queued writes and a
/// Started event fold into its outcome even while the writes queue up (the README's
/// "Scale" has the figures).
const IN_HAND: usize = 4096;
/// How many messages write to the API server at once.
const WRITERS: usize = 32;
/// How many times a handler retries a status write that lost a race.
const WRITE_ATTEMPTS: usize = 8;
/// Whose failures these are, in the per-object backoff (see [`crate::runtime::backoff`]).
const CONSUMER: &str = "task-events";
/// The longest a failing message waits before it goes back to the queue: well inside a
/// heartbeat timeout, so an outcome held back while the API server was away is written
/// soon after it is back.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// What handling one message came to.
#[derive(Debug)]
enum Outcome {
    /// Its effect is written.
    Applied,
    /// It changes nothing.
    Ignored,
    /// The API server refused its effect and then the failure recorded in its place:
    /// nothing more can be done with it (logged).
    Refused,
    /// It is not its attempt's: its token is missing or wrong (counted and logged).
    Rejected,
}

/// Why a message could not be handled.
#[derive(Debug, thiserror::Error)]
enum HandleError {
    /// The message is not a message of ours: it will never be handled.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The API failed; the message is retried.
    #[error("kubernetes api")]
    Kube(#[from] kube::Error),
}

/// Consumes the operator's events queue until shutdown.
pub async fn consume_events(
    ctx: Arc<Context>,
    shutdown: CancellationToken,
) -> Result<(), BusError> {
    consume(
        ctx,
        shutdown,
        names::OPERATOR_EVENTS_QUEUE,
        "aios-operator-events",
        |ctx, delivery, writers| async move { handle_event(&ctx, &delivery, &writers).await },
    )
    .await
}

/// Consumes the dead-letter queue until shutdown.
pub async fn consume_dead_letters(
    ctx: Arc<Context>,
    shutdown: CancellationToken,
) -> Result<(), BusError> {
    consume(
        ctx,
        shutdown,
        names::DEAD_LETTER_QUEUE,
        "aios-operator-dead-letters",
        |ctx, delivery, writers| async move { handle_dead_letter(&ctx, &delivery, &writers).await },
    )
    .await
}

async fn consume<F, Fut>(
    ctx: Arc<Context>,
    shutdown: CancellationToken,
    queue: &str,
    tag: &str,
    handler: F,
) -> Result<(), BusError>
where
    F: Fn(Arc<Context>, Arc<Delivery>, Arc<Semaphore>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Outcome, HandleError>> + Send,
{
    let consumer = ctx
        .bus
        .consume(queue, tag, u16::try_from(IN_HAND).unwrap_or(u16::MAX))
        .await?;
    let writers = Arc::new(Semaphore::new(WRITERS));
    let consumption = consumer
        .take_until(shutdown.cancelled_owned())
        .for_each_concurrent(IN_HAND, |delivery| {
            let ctx = ctx.clone();
            let handler = handler.clone();
            let writers = writers.clone();
            async move {
                let delivery = match delivery {
                    Ok(d) => d,
                    Err(err) => {
                        tracing::warn!(error = %err, "consumer error");
                        return;
                    }
                };
                settle(ctx, delivery, |ctx, delivery| {
                    handler(ctx, delivery, writers.clone())
                })
                .await;
            }
        });
    consumption.await;
    Ok(())
}

async fn settle<F, Fut>(ctx: Arc<Context>, delivery: Delivery, handler: F)
where
    F: Fn(Arc<Context>, Arc<Delivery>) -> Fut,
    Fut: Future<Output = Result<Outcome, HandleError>>,
{
    let delivery = Arc::new(delivery);
    match handler(ctx.clone(), delivery.clone()).await {
        Ok(outcome) => {
            tracing::debug!(?outcome, "message handled");
            if ctx.backoffs.any(CONSUMER) {
                ctx.reconciled(CONSUMER, &about(&delivery.data));
            }
            let _ = delivery.ack(BasicAckOptions::default()).await;
        }
        Err(HandleError::Decode(err)) => {
            ctx.metrics
                .events
                .with_label_values(&["unknown", err.category()])
                .inc();
            tracing::warn!(error = %err, "dropping a message that cannot be decoded");
            let _ = delivery.ack(BasicAckOptions::default()).await;
        }
        Err(HandleError::Kube(err)) => {
            // Counted, logged and backed off per Task as a failed reconcile is; the
            // message goes back to the queue after the delay.
            let task = about(&delivery.data);
            let delay = ctx
                .retry_after(CONSUMER, &task, &err.into(), RETRY_MAX)
                .min(RETRY_MAX);
            tokio::time::sleep(delay).await;
            let _ = delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await;
        }
    }
}

/// The Task a message is about, `namespace/name` (events and dispatches both name it),
/// or an empty string for a body that names none.
fn about(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct About {
        task: ObjectRef,
    }
    serde_json::from_slice::<About>(body)
        .map(|m| format!("{}/{}", m.task.namespace, m.task.name))
        .unwrap_or_default()
}

fn event_type(kind: &TaskEventKind) -> &'static str {
    match kind {
        TaskEventKind::Started => "started",
        TaskEventKind::Heartbeat => "heartbeat",
        TaskEventKind::Succeeded { .. } => "succeeded",
        TaskEventKind::Failed { .. } => "failed",
        TaskEventKind::Unknown => "unknown",
    }
}

/// `task`'s Project from the cache, once there is one.
fn cached_project(ctx: &Context, task: &Task) -> Option<Arc<aios_crds::Project>> {
    let namespace = task.namespace()?;
    ctx.projects
        .get()?
        .get(&kube::runtime::reflector::ObjectRef::new(&task.spec.project).within(&namespace))
}

/// The retry rules of `task`, from its Project (the cache's; read from the API server
/// before the cache exists; defaults if the Project is gone).
async fn policy_for(ctx: &Context, task: &Task) -> Result<lifecycle::TaskPolicy, kube::Error> {
    let namespace = task.namespace().unwrap_or_default();
    let project = match cached_project(ctx, task) {
        Some(project) => Some(project.as_ref().clone()),
        None => {
            ctx.project_api(&namespace)
                .get_opt(&task.spec.project)
                .await?
        }
    };
    let defaults = project.as_ref().map_or_else(TaskDefaults::default, |p| {
        p.spec.policy.task_defaults.clone()
    });
    let mut policy = task_policy(task, &defaults);
    if let Some(project) = &project
        && let Some(verify) = &project.spec.verify
        && crate::verify::required(Some(project), task, true)
    {
        policy.verify = Some(crate::verify::command(verify, Some(&task.spec)));
    }
    Ok(policy)
}

/// The API server's message when it refused a write for what it holds — invalid (422,
/// 400), larger than a request may be (413), or larger than etcd takes (a 500 whose
/// message says so: the API server has no code of its own for that) — so the same write
/// would be refused again and retrying it cannot help. `None` for anything else.
fn refusal(err: &kube::Error) -> Option<String> {
    const TOO_LARGE_FOR_ETCD: [&str; 2] = ["request is too large", "larger than max"];
    match err {
        kube::Error::Api(s) if matches!(s.code, 400 | 413 | 422) => Some(s.message.clone()),
        kube::Error::Api(s)
            if s.code == 500 && TOO_LARGE_FOR_ETCD.iter().any(|m| s.message.contains(m)) =>
        {
            Some(s.message.clone())
        }
        _ => None,
    }
}

/// The status `event` gives `task`: a reported plan is kept first (a plan too large to
/// keep fails the attempt as `PlanInvalid`, for Hera to ask for another); `refused` is
/// the API server's message when recording the outcome was refused before.
async fn event_status(
    ctx: &Context,
    task: &Task,
    policy: &lifecycle::TaskPolicy,
    event: &TaskEvent,
    refused: Option<&str>,
) -> Result<Option<TaskStatus>, kube::Error> {
    let now = Timestamp::now();
    if let Some(message) = refused {
        let message = format!("the API server refused to record the result: {message}");
        return Ok(refuse_outcome(
            task,
            policy,
            event,
            reasons::RESULT_REFUSED,
            &message,
            now,
        ));
    }
    let Some(mut status) = apply_event(task, policy, event, now) else {
        return Ok(None);
    };
    if let TaskEventKind::Succeeded {
        output: TaskOutput {
            plan: Some(plan), ..
        },
        ..
    } = &event.kind
    {
        match stored_plan(task, plan) {
            Ok(stored) => {
                ctx.store_plan(&stored.config_maps).await?;
                if let Some(result) = status.result.as_mut() {
                    result.plan_ref = Some(stored.plan_ref);
                }
            }
            Err(problem) => {
                return Ok(refuse_outcome(
                    task,
                    policy,
                    event,
                    reasons::PLAN_INVALID,
                    &problem.to_string(),
                    now,
                ));
            }
        }
    }
    Ok(Some(status))
}

/// The Task `task` names, from the cache, when it is the same object (uid). The cache
/// holds every Task of the watched namespaces that was ever dispatched, so a message
/// about any other (another namespace's, a deleted one's) has nothing to change, and
/// costs no API call.
pub(crate) fn cached_task(ctx: &Context, task: &ObjectRef) -> Option<Arc<Task>> {
    ctx.tasks
        .get(&kube::runtime::reflector::ObjectRef::new(&task.name).within(&task.namespace))
        .filter(|t| t.metadata.uid.as_deref() == Some(task.uid.as_str()))
}

/// Whether `token` is attempt `attempt` of `task`'s; when it is not, the message is
/// counted and logged with what it claimed and where it came from.
fn authentic(
    ctx: &Context,
    message: &'static str,
    task: &Task,
    attempt: u32,
    token: &str,
    claimed_sender: &str,
    delivery: &Delivery,
) -> bool {
    let verdict = ctx.attempt_key.verify(&Attempt::of(task, attempt), token);
    if verdict == Verdict::Valid {
        return true;
    }
    ctx.metrics
        .rejected_messages
        .with_label_values(&[message, verdict.label()])
        .inc();
    let properties = &delivery.properties;
    tracing::warn!(
        message,
        reason = verdict.label(),
        namespace = %task.namespace().unwrap_or_default(),
        task = %task.name_any(),
        attempt,
        claimed_sender,
        routing_key = %delivery.routing_key,
        message_id = ?properties.message_id().as_ref().map(ToString::to_string),
        app_id = ?properties.app_id().as_ref().map(ToString::to_string),
        user_id = ?properties.user_id().as_ref().map(ToString::to_string),
        "rejected a message without its attempt's token: it changes nothing"
    );
    false
}

/// An event worth handling, or what became of it: undecodable (an error), for no Task
/// the cache knows, forged, or a heartbeat the cache shows to be needless (no API call
/// at all).
async fn admit(
    ctx: &Context,
    delivery: &Delivery,
) -> Result<Result<TaskEvent, Outcome>, HandleError> {
    let event = TaskEvent::decode(&delivery.data)?;
    let kind = event_type(&event.kind);
    let count = |outcome: &str| ctx.metrics.events.with_label_values(&[kind, outcome]).inc();
    let Some(cached) = cached_task(ctx, &event.task) else {
        count("ignored");
        return Ok(Err(Outcome::Ignored));
    };
    if !authentic(
        ctx,
        TaskEvent::KIND,
        &cached,
        event.attempt,
        &event.token,
        &event.agent,
        delivery,
    ) {
        count("rejected");
        return Ok(Err(Outcome::Rejected));
    }
    if matches!(event.kind, TaskEventKind::Heartbeat)
        && lifecycle::heartbeat_needless(&cached, &policy_for(ctx, &cached).await?, &event)
    {
        count("coalesced");
        return Ok(Err(Outcome::Ignored));
    }
    Ok(Ok(event))
}

/// Waits for `event`'s turn in its Task's lane (one write at a time per Task, see
/// [`crate::task::lanes`]): the place and the turn, to hold while writing, and for an outcome,
/// when a Started event folded into it said the attempt started. `None` when `event` is
/// a Started event whose outcome followed at once: it is written with the outcome.
async fn take_turn<'a>(
    ctx: &'a Context,
    event: &TaskEvent,
) -> Option<(Place<'a>, Turn, Option<Timestamp>)> {
    let place = ctx.lanes.enter(&event.task.uid);
    place.announce_report(event.attempt);
    let outcome = matches!(
        event.kind,
        TaskEventKind::Succeeded { .. } | TaskEventKind::Failed { .. }
    );
    if outcome {
        place.announce_outcome(event.attempt);
    }
    if matches!(event.kind, TaskEventKind::Started)
        && place.folds_into_outcome(event.attempt, event.at).await
    {
        return None;
    }
    let turn = place.turn().await;
    let started_at = outcome.then(|| place.take_outcome(event.attempt)).flatten();
    Some((place, turn, started_at))
}

/// The Task a write starts from: `known` if there is one, else the Task as the API
/// server has it (`None` when it is gone), and whether it was read from the API server.
async fn current(
    api: &Api<Task>,
    known: Option<Task>,
    name: &str,
) -> Result<Option<(Task, bool)>, kube::Error> {
    if let Some(task) = known {
        return Ok(Some((task, false)));
    }
    Ok(api.get_opt(name).await?.map(|task| (task, true)))
}

/// Waits for a place among the [`WRITERS`] (`None` only if the semaphore were closed,
/// which it never is).
async fn write_permit(writers: &Semaphore) -> Option<SemaphorePermit<'_>> {
    writers.acquire().await.ok()
}

async fn handle_event(
    ctx: &Context,
    delivery: &Delivery,
    writers: &Semaphore,
) -> Result<Outcome, HandleError> {
    let event = match admit(ctx, delivery).await? {
        Ok(event) => event,
        Err(outcome) => return Ok(outcome),
    };
    // What dispatches wait for: writes for people to read let it go first.
    let _urgent = ctx.urgent.hold();
    let kind = event_type(&event.kind);
    let Some((_place, _turn, started_at)) = take_turn(ctx, &event).await else {
        ctx.metrics
            .events
            .with_label_values(&[kind, "folded"])
            .inc();
        return Ok(Outcome::Ignored);
    };
    let _permit = write_permit(writers).await;
    let api: Api<Task> = ctx.task_api(&event.task.namespace);
    let mut refused: Option<String> = None;
    // The first try starts from the newest copy the operator has (its own last write the
    // watch does not show yet, or the cache's); one that is out of date costs a
    // conflict, then the Task is read.
    let mut known = ctx
        .task_index
        .newest(&event.task.namespace, &event.task.name, &event.task.uid)
        .map(|t| Task::clone(&t));
    for _ in 0..WRITE_ATTEMPTS {
        let Some((task, read)) = current(&api, known.take(), &event.task.name).await? else {
            ctx.metrics
                .events
                .with_label_values(&[kind, "ignored"])
                .inc();
            return Ok(Outcome::Ignored);
        };
        let policy = policy_for(ctx, &task).await?;
        let status = match event_status(ctx, &task, &policy, &event, refused.as_deref()).await {
            Ok(status) => status,
            Err(err) => match refusal(&err) {
                // Keeping the plan was refused: record that instead.
                Some(message) if refused.is_none() => {
                    refused = Some(message);
                    continue;
                }
                _ => return Err(err.into()),
            },
        };
        let Some(mut status) = status else {
            if !read
                && !lifecycle::attempt_over(&task, i32::try_from(event.attempt).unwrap_or(i32::MAX))
            {
                // A copy that may be out of date says the event changes nothing, but not
                // that its attempt is over: ask the API server.
                continue;
            }
            ctx.metrics
                .events
                .with_label_values(&[kind, "ignored"])
                .inc();
            return Ok(Outcome::Ignored);
        };
        if let Some(at) = started_at {
            lifecycle::started_at(&mut status, event.attempt, at);
        }
        match ctx.write_task(&task, &status).await {
            Ok(_) => {
                let outcome = if refused.is_some() {
                    "refused"
                } else {
                    "applied"
                };
                ctx.metrics.events.with_label_values(&[kind, outcome]).inc();
                return Ok(Outcome::Applied);
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(err) => match (refusal(&err), &refused) {
                (Some(message), None) => {
                    tracing::warn!(task = %task.name_any(), attempt = event.attempt, error = %message,
                        "the API server refused the reported outcome; failing the attempt with its message");
                    ctx.publish_event(
                        &task.object_ref(&()),
                        EventType::Warning,
                        reasons::RESULT_REFUSED,
                        &message,
                    )
                    .await;
                    refused = Some(message);
                }
                (Some(message), Some(_)) => {
                    tracing::error!(task = %task.name_any(), attempt = event.attempt, error = %message,
                        "the API server refused the failed attempt too; dropping the event");
                    ctx.metrics
                        .events
                        .with_label_values(&[kind, "dropped"])
                        .inc();
                    return Ok(Outcome::Refused);
                }
                (None, _) => return Err(err.into()),
            },
        }
    }
    Err(HandleError::Kube(kube::Error::Service(
        format!(
            "task {} kept changing under {WRITE_ATTEMPTS} writes",
            event.task.name
        )
        .into(),
    )))
}

async fn handle_dead_letter(
    ctx: &Context,
    delivery: &Delivery,
    writers: &Semaphore,
) -> Result<Outcome, HandleError> {
    let _permit = write_permit(writers).await;
    let dispatch = TaskDispatch::decode(&delivery.data)?;
    let Some(cached) = cached_task(ctx, &dispatch.task) else {
        return Ok(Outcome::Ignored);
    };
    if !authentic(
        ctx,
        TaskDispatch::KIND,
        &cached,
        dispatch.attempt,
        &dispatch.token,
        "",
        delivery,
    ) {
        return Ok(Outcome::Rejected);
    }
    ctx.metrics
        .dead_letters
        .with_label_values(&[cached.spec.role.as_str()])
        .inc();
    let api: Api<Task> = ctx.task_api(&dispatch.task.namespace);
    for _ in 0..WRITE_ATTEMPTS {
        let Some(task) = api.get_opt(&dispatch.task.name).await? else {
            return Ok(Outcome::Ignored);
        };
        let policy = policy_for(ctx, &task).await?;
        let attempt = i32::try_from(dispatch.attempt).unwrap_or(i32::MAX);
        let Some(new) = lifecycle::apply_poison(
            &task,
            &policy,
            &dispatch.task.uid,
            attempt,
            Timestamp::now(),
        ) else {
            return Ok(Outcome::Ignored);
        };
        match write_task_status(&api, &task, &new).await {
            Ok(_) => return Ok(Outcome::Applied),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(err) => return Err(err.into()),
        }
    }
    Err(HandleError::Kube(kube::Error::Service(
        format!(
            "task {} kept changing under {WRITE_ATTEMPTS} writes",
            dispatch.task.name
        )
        .into(),
    )))
}

#[cfg(test)]
mod tests {
    use kube::core::Status;

    use super::*;

    fn api_error(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(Box::new(Status::failure(message, "").with_code(code)))
    }

    #[test]
    fn a_failing_message_is_backed_off_under_the_task_it_names() {
        let event = br#"{"schemaVersion":1,"project":"shop","task":{"namespace":"team-a","name":"shop-api","uid":"u1"},"attempt":2,"kind":{"type":"started"}}"#;
        assert_eq!(about(event), "team-a/shop-api");
        assert_eq!(about(b"not json"), "", "a body naming no Task");
        assert_eq!(about(br#"{"task":"shop-api"}"#), "");
    }

    #[test]
    fn what_the_api_server_will_refuse_again_is_told_from_what_may_pass_later() {
        let invalid = "Task.aios.dev \"shop-plan\" is invalid: status.result.plan[200].dependsOn: Too many: 200: must have at most 20 items";
        assert_eq!(refusal(&api_error(422, invalid)).as_deref(), Some(invalid));
        assert!(
            refusal(&api_error(
                413,
                "Request entity too large: limit is 3145728"
            ))
            .is_some()
        );
        assert!(refusal(&api_error(500, "etcdserver: request is too large")).is_some());
        assert!(
            refusal(&api_error(
                500,
                "rpc error: code = ResourceExhausted desc = trying to send message larger than max (2097933 vs. 2097152)"
            ))
            .is_some()
        );
        assert_eq!(
            refusal(&api_error(409, "the object has been modified")),
            None
        );
        assert_eq!(refusal(&api_error(500, "etcdserver: leader changed")), None);
        assert_eq!(refusal(&api_error(503, "unavailable")), None);
    }
}
