//! The Task controller's part of the lifecycle outside the Project pass: the cancel
//! finalizer. A Task gets the finalizer when it is first dispatched; when it is deleted
//! with an attempt in flight, the agents are told to drop the attempt before the Task
//! goes; once the Task has finished, the finalizer is removed.

pub mod cancels;
pub mod events;
pub mod lanes;
pub mod lifecycle;
pub mod tokens;

use std::{sync::Arc, time::Duration};

use aios_crds::{Task, names::finalizers};
use kube::{ResourceExt, runtime::controller::Action};

use crate::{
    Error,
    project::cancel,
    runtime::context::{Context, set_task_finalizer},
    task::lifecycle::phase,
};

/// Reconciles one Task's finalizer.
#[tracing::instrument(skip_all, fields(task = %task.name_any(), project = %task.spec.project))]
pub async fn reconcile(task: Arc<Task>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciles.with_label_values(&["task"]).inc();
    if !task
        .finalizers()
        .iter()
        .any(|f| f == finalizers::TASK_CANCEL)
    {
        return Ok(Action::await_change());
    }
    let deleting = task.metadata.deletion_timestamp.is_some();
    let current = phase(&task);
    if !deleting && !current.is_terminal() {
        return Ok(Action::await_change());
    }
    if !ctx.leadership.is_current() {
        return Err(Error::NotLeader);
    }
    if deleting && current.is_in_flight() {
        // The finalizer stays until the cancel is durable: a Task deleted while its
        // dispatch waits is never worked on, whether or not an agent listens now.
        cancel(&ctx, &task, "the Task was deleted").await?;
    }
    let api = ctx.task_api(&task.namespace().unwrap_or_default());
    match set_task_finalizer(&api, &task.name_any(), false).await {
        Ok(_) => Ok(Action::await_change()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Action::await_change()),
        Err(err) => Err(err.into()),
    }
}

/// Retries a failed finalizer update after a short wait.
#[allow(clippy::needless_pass_by_value)] // the signature kube's controller takes
pub fn error_policy(task: Arc<Task>, error: &Error, ctx: Arc<Context>) -> Action {
    Action::requeue(ctx.retry_after(
        "task",
        &crate::runtime::backoff::key(task.as_ref()),
        error,
        Duration::from_secs(2),
    ))
}
