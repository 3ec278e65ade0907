//! Consuming what agents report: task events become Task status, and dead-lettered
//! dispatches fail their attempt with reason `PoisonMessage`. Delivery is at least
//! once; every handler is idempotent, and a message is acknowledged only once its
//! effect is written (or it is known to have none).

use std::{sync::Arc, time::Duration};

use aios_crds::{
    Task,
    bus::{DecodeError, Message, TaskDispatch, TaskEvent, TaskEventKind},
    names::bus as names,
    project::TaskDefaults,
};
use futures::StreamExt;
use jiff::Timestamp;
use kube::{Api, ResourceExt};
use lapin::{
    message::Delivery,
    options::{BasicAckOptions, BasicNackOptions},
};
use tokio_util::sync::CancellationToken;

use crate::{
    bus::BusError,
    context::{Context, write_task_status},
    lifecycle::{self, apply_event, task_policy},
};

/// How many messages are handled at once.
const CONCURRENCY: usize = 32;
/// How many times a handler retries a status write that lost a race.
const WRITE_ATTEMPTS: usize = 8;

/// What handling one message came to.
#[derive(Debug)]
enum Outcome {
    Applied,
    Ignored,
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
        |ctx, body| async move { handle_event(&ctx, &body).await },
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
        |ctx, body| async move { handle_dead_letter(&ctx, &body).await },
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
    F: Fn(Arc<Context>, Vec<u8>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Outcome, HandleError>> + Send,
{
    let consumer = ctx
        .bus
        .consume(queue, tag, u16::try_from(CONCURRENCY * 2).unwrap_or(64))
        .await?;
    let consumption = consumer
        .take_until(shutdown.cancelled_owned())
        .for_each_concurrent(CONCURRENCY, |delivery| {
            let ctx = ctx.clone();
            let handler = handler.clone();
            async move {
                let delivery = match delivery {
                    Ok(d) => d,
                    Err(err) => {
                        tracing::warn!(error = %err, "consumer error");
                        return;
                    }
                };
                settle(ctx, delivery, handler).await;
            }
        });
    consumption.await;
    Ok(())
}

async fn settle<F, Fut>(ctx: Arc<Context>, delivery: Delivery, handler: F)
where
    F: Fn(Arc<Context>, Vec<u8>) -> Fut,
    Fut: Future<Output = Result<Outcome, HandleError>>,
{
    match handler(ctx.clone(), delivery.data.clone()).await {
        Ok(outcome) => {
            tracing::debug!(?outcome, "message handled");
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
            tracing::warn!(error = %err, "handling a message failed; it will be redelivered");
            tokio::time::sleep(Duration::from_millis(500)).await;
            let _ = delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await;
        }
    }
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

/// The retry rules of `task`, from its Project (defaults if the Project is gone).
async fn policy_for(ctx: &Context, task: &Task) -> Result<lifecycle::TaskPolicy, kube::Error> {
    let namespace = task.namespace().unwrap_or_default();
    let defaults = match ctx
        .project_api(&namespace)
        .get_opt(&task.spec.project)
        .await?
    {
        Some(project) => project.spec.policy.task_defaults,
        None => TaskDefaults::default(),
    };
    Ok(task_policy(task, &defaults))
}

async fn handle_event(ctx: &Context, body: &[u8]) -> Result<Outcome, HandleError> {
    let event = TaskEvent::decode(body)?;
    let kind = event_type(&event.kind);
    let api: Api<Task> = ctx.task_api(&event.task.namespace);
    for _ in 0..WRITE_ATTEMPTS {
        let Some(task) = api.get_opt(&event.task.name).await? else {
            ctx.metrics
                .events
                .with_label_values(&[kind, "ignored"])
                .inc();
            return Ok(Outcome::Ignored);
        };
        let policy = policy_for(ctx, &task).await?;
        let Some(status) = apply_event(&task, &policy, &event, Timestamp::now()) else {
            ctx.metrics
                .events
                .with_label_values(&[kind, "ignored"])
                .inc();
            return Ok(Outcome::Ignored);
        };
        match write_task_status(&api, &task, &status).await {
            Ok(_) => {
                ctx.metrics
                    .events
                    .with_label_values(&[kind, "applied"])
                    .inc();
                return Ok(Outcome::Applied);
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(err) => return Err(err.into()),
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

async fn handle_dead_letter(ctx: &Context, body: &[u8]) -> Result<Outcome, HandleError> {
    let dispatch = TaskDispatch::decode(body)?;
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
