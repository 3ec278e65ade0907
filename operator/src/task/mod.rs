//! The Task's part of the lifecycle outside the Project pass: cancelling the attempt in
//! flight of a Task that is deleted.
//!
//! A deletion the Task watch sees is cancelled at once ([`cancel_deleted`]). One that no
//! operator saw — it was down, or its watch was re-listing — is found by the sweep
//! ([`sweep`]): every dispatch records its attempt in Redis before it is published (see
//! [`cancels`]), and the sweep cancels the recorded attempts whose Task is gone, when
//! this replica starts leading and every [`SWEEP_INTERVAL`] after; it also forgets the
//! records of attempts that are over.
//!
//! Tasks dispatched by earlier versions carry the cancel finalizer instead; the Task
//! controller ([`reconcile`]) still honours it, and removes it once it has done its work.

pub mod cancels;
pub mod events;
pub mod lanes;
pub mod lifecycle;
pub mod tokens;

use std::{sync::Arc, time::Duration};

use aios_crds::{
    Task, TaskPhase,
    bus::{ObjectRef, SCHEMA_VERSION, TaskCancel},
    names::finalizers,
};
use kube::{ResourceExt, runtime::controller::Action};

use crate::{
    Error,
    runtime::context::{Context, remove_task_finalizer},
    task::{cancels::Recorded, lifecycle::phase},
};

/// How often the sweep looks for attempts whose Task is gone.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Reconciles the cancel finalizer of a Task an earlier version dispatched.
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
    match remove_task_finalizer(&api, &task.name_any()).await {
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

/// Cancels the in-flight attempt of `task`: marks it cancelled in the agents' Redis
/// (every worker checks the mark before it starts an attempt and while it works on one),
/// then tells the connected agents at once on the bus. A mark that cannot be written is
/// an error, for the caller to retry; a failed publish is only logged (the mark stands).
pub async fn cancel(ctx: &Context, task: &Task, reason: &str) -> Result<(), Error> {
    let attempt = task.status.as_ref().map_or(0, |s| s.attempt);
    let object = ObjectRef {
        namespace: task.namespace().unwrap_or_default(),
        name: task.name_any(),
        uid: task.metadata.uid.clone().unwrap_or_default(),
    };
    cancel_attempt(ctx, object, attempt, reason).await
}

/// Cancels attempt `attempt` of the Task `task` names (see [`cancel`]).
pub async fn cancel_attempt(
    ctx: &Context,
    task: ObjectRef,
    attempt: i32,
    reason: &str,
) -> Result<(), Error> {
    let message = TaskCancel {
        schema_version: SCHEMA_VERSION,
        task,
        attempt: u32::try_from(attempt).unwrap_or(0),
        reason: reason.to_owned(),
    };
    if let Some(marks) = &ctx.cancel_marks {
        marks.mark(&message.attempt_id().message_id()).await?;
    }
    if let Err(err) = ctx.bus.publish_cancel(&message).await {
        ctx.metrics
            .publish_failures
            .with_label_values(&["TaskCancel", err.category()])
            .inc();
        tracing::warn!(error = %err, task = %message.task.name, "publishing a cancel failed");
    }
    Ok(())
}

/// The attempt of `task`, as the watch last saw it before its deletion, that is still
/// to be cancelled: its attempt in flight (one dispatched or running), unless the Task
/// carries the finalizer, whose controller cancels it.
pub fn deleted_in_flight(task: &Task) -> Option<Recorded> {
    if task
        .finalizers()
        .iter()
        .any(|f| f == finalizers::TASK_CANCEL)
    {
        return None;
    }
    let status = task.status.as_ref()?;
    status.phase.filter(|p| p.is_in_flight())?;
    Some(Recorded {
        namespace: task.namespace()?,
        name: task.name_any(),
        uid: task.metadata.uid.clone()?,
        attempt: status.attempt,
    })
}

/// Cancels the attempt of a Task the watch saw deleted (see [`deleted_in_flight`]) and
/// forgets its record; only the leader does. A failure is logged: the record stays,
/// and the sweep cancels it.
pub async fn cancel_deleted(ctx: &Context, attempt: Recorded) {
    if !ctx.leadership.is_current() {
        return;
    }
    let object = ObjectRef {
        namespace: attempt.namespace.clone(),
        name: attempt.name.clone(),
        uid: attempt.uid.clone(),
    };
    let done = match cancel_attempt(ctx, object, attempt.attempt, "the Task was deleted").await {
        Ok(()) => match &ctx.cancel_marks {
            Some(marks) => marks
                .forget(std::slice::from_ref(&attempt))
                .await
                .map_err(Error::from),
            None => Ok(()),
        },
        Err(err) => Err(err),
    };
    if let Err(err) = done {
        tracing::warn!(error = %err, task = %attempt.name, attempt = attempt.attempt,
            "cancelling a deleted Task's attempt failed; the sweep will");
    }
}

/// What becomes of an attempt recorded in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// It is in flight: dispatched (its Queued status may not be written yet) or running.
    Live,
    /// It is over: its record can go.
    Over,
    /// Its Task is gone, or going: cancel it, then its record can go.
    Orphaned,
}

/// The fate of `recorded`, given the Task the cache holds under its name, if any.
pub fn fate(recorded: &Recorded, task: Option<&Task>) -> Fate {
    let Some(task) = task.filter(|t| t.metadata.uid.as_deref() == Some(recorded.uid.as_str()))
    else {
        return Fate::Orphaned;
    };
    let status = task.status.clone().unwrap_or_default();
    let phase = status.phase.unwrap_or_default();
    let live = (recorded.attempt == status.attempt && phase.is_in_flight())
        || (recorded.attempt == status.attempt + 1 && phase == TaskPhase::Pending);
    match (live, task.metadata.deletion_timestamp.is_some()) {
        (true, true) => Fate::Orphaned,
        (true, false) => Fate::Live,
        (false, _) => Fate::Over,
    }
}

/// One sweep of the attempts recorded in flight in the watched namespace (or every
/// namespace): cancels those whose Task is gone and forgets those that are over.
/// Returns how many it cancelled. Nothing to do without Redis.
pub async fn sweep(ctx: &Context, namespace: Option<&str>) -> Result<usize, Error> {
    let Some(marks) = &ctx.cancel_marks else {
        return Ok(0);
    };
    let mut done = Vec::new();
    let mut cancelled = 0;
    for recorded in marks.recorded(namespace).await? {
        let cached = ctx.tasks.get(
            &kube::runtime::reflector::ObjectRef::new(&recorded.name).within(&recorded.namespace),
        );
        match fate(&recorded, cached.as_deref()) {
            Fate::Live => continue,
            Fate::Over => {}
            Fate::Orphaned => {
                let object = ObjectRef {
                    namespace: recorded.namespace.clone(),
                    name: recorded.name.clone(),
                    uid: recorded.uid.clone(),
                };
                cancel_attempt(ctx, object, recorded.attempt, "the Task was deleted").await?;
                tracing::info!(task = %recorded.name, namespace = %recorded.namespace,
                    attempt = recorded.attempt, "cancelled the attempt of a Task deleted while no operator watched");
                cancelled += 1;
            }
        }
        done.push(recorded);
    }
    marks.forget(&done).await?;
    Ok(cancelled)
}

/// Sweeps while this replica leads: at once when it starts leading, then every
/// [`SWEEP_INTERVAL`], until `shutdown`.
pub async fn keep_sweeping(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        // Checked every second while standing by, so a replica that starts leading
        // sweeps at once.
        let wait = if ctx.leadership.is_current() {
            if let Err(err) = sweep(&ctx, namespace.as_deref()).await {
                tracing::warn!(error = %err, "sweeping the attempts in flight failed");
            }
            SWEEP_INTERVAL
        } else {
            Duration::from_secs(1)
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use aios_crds::TaskPhase::{Failed, Pending, Queued, Running, Succeeded};

    use super::*;
    use crate::testing::{task, with_phase};

    fn recorded(attempt: i32) -> Recorded {
        Recorded {
            namespace: "team-a".into(),
            name: "api".into(),
            uid: "uid-api".into(),
            attempt,
        }
    }

    fn at(phase: TaskPhase, attempt: i32) -> Task {
        let mut t = with_phase(task("api", &[]), phase);
        t.status.as_mut().unwrap().attempt = attempt;
        t
    }

    #[test]
    fn a_recorded_attempt_lives_while_its_task_runs_it_and_is_orphaned_when_the_task_goes() {
        assert_eq!(fate(&recorded(1), None), Fate::Orphaned);
        // Another Task of the same name (deleted and created again) is not its Task.
        let mut other = at(Running, 1);
        other.metadata.uid = Some("uid-new".into());
        assert_eq!(fate(&recorded(1), Some(&other)), Fate::Orphaned);
        // Published, Queued not yet written; then Queued; then Running.
        assert_eq!(fate(&recorded(1), Some(&at(Pending, 0))), Fate::Live);
        assert_eq!(fate(&recorded(1), Some(&at(Queued, 1))), Fate::Live);
        assert_eq!(fate(&recorded(1), Some(&at(Running, 1))), Fate::Live);
        // Over: finished, failed, or retried as a later attempt.
        assert_eq!(fate(&recorded(1), Some(&at(Succeeded, 1))), Fate::Over);
        assert_eq!(fate(&recorded(1), Some(&at(Failed, 1))), Fate::Over);
        assert_eq!(fate(&recorded(1), Some(&at(Running, 2))), Fate::Over);
        // Being deleted (another finalizer holds it) with the attempt in flight.
        let mut going = at(Running, 1);
        going.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH),
        );
        assert_eq!(fate(&recorded(1), Some(&going)), Fate::Orphaned);
    }

    #[test]
    fn a_deleted_task_has_its_attempt_cancelled_only_if_one_was_in_flight() {
        assert_eq!(deleted_in_flight(&at(Running, 1)), Some(recorded(1)));
        assert_eq!(deleted_in_flight(&at(Queued, 1)), Some(recorded(1)));
        assert_eq!(deleted_in_flight(&at(Succeeded, 1)), None);
        assert_eq!(deleted_in_flight(&task("api", &[])), None);
        // The finalizer's controller cancels those that carry it.
        let mut legacy = at(Running, 1);
        legacy.metadata.finalizers = Some(vec![finalizers::TASK_CANCEL.into()]);
        assert_eq!(deleted_in_flight(&legacy), None);
    }

    #[test]
    fn a_record_reads_back_from_its_field() {
        let r = recorded(3);
        assert_eq!(Recorded::parse("team-a", &r.id(), "api"), Some(r));
        assert_eq!(Recorded::parse("team-a", "no-number-x", "api"), None);
    }
}
