//! What a waiting Task says (Pending, and what it waits for), written beside the pass
//! rather than in it. A pass over a Project of thousands of new Tasks has thousands of
//! these to write; made in the pass they held it, and with it the dispatch of every
//! Task that became ready meanwhile, for as long as the writes took (a minute at 10,000
//! Tasks). The pass hands them here and goes on; they are written a few at a time, each
//! in its Task's lane and from the newest copy of the Task, and only if the Task still
//! waits when its turn comes (one dispatched meanwhile is left alone). They give way to
//! the agents' reports, which the next dispatches wait for: each waits, half a second at
//! most, until no report is being written ([`crate::runtime::urgent`]).
//!
//! Nothing is lost if a write fails or the process stops: the next pass hands the Task
//! over again while its status does not say it waits.

use std::{sync::Arc, time::Duration};

use aios_crds::{Task, TaskPhase, TaskStatus};
use kube::ResourceExt;
use tokio_util::sync::CancellationToken;

use crate::{
    runtime::{context::Context, handover::Handover},
    task::lifecycle::{name_of, phase},
};

/// How many waiting statuses are written at once, over all Projects: a small share of
/// the API server beside the event consumer's 32 outcome writes, which are what the
/// next dispatches wait for.
const AT_ONCE: usize = 4;

/// How long a waiting status waits for the agents' reports in hand to be written
/// before it is written anyway ([`crate::runtime::urgent`]): while reports keep coming,
/// [`AT_ONCE`] waiting statuses are written every this long.
const YIELD_AT_MOST: Duration = Duration::from_millis(500);

/// A waiting status handed over: which Task, and what it waits for. A few hundred
/// bytes; the write itself (several KiB of future) is made only when its turn comes.
#[derive(Debug)]
struct Handed {
    namespace: String,
    name: String,
    uid: String,
    message: String,
}

/// The waiting statuses handed over and not yet written, in the order handed over.
/// Which Tasks have one on its way is filed in the Task index ([`TaskIndex::hand`]),
/// where a pass finds the Tasks that have not.
///
/// [`TaskIndex::hand`]: crate::runtime::index::TaskIndex::hand
#[derive(Debug, Default)]
pub struct WaitingWrites {
    queue: Handover<Handed>,
}

/// The status that says `task` waits, with `message`: `None` once it does not wait
/// (dispatched, finished, being deleted) or says so already.
pub fn waiting_status(task: &Task, message: &str) -> Option<TaskStatus> {
    if task.metadata.deletion_timestamp.is_some() || phase(task) != TaskPhase::Pending {
        return None;
    }
    let mut status = task.status.clone().unwrap_or_default();
    if status.phase.is_some() && status.message.as_deref() == Some(message) {
        return None;
    }
    status.phase = Some(TaskPhase::Pending);
    status.message = Some(message.to_owned());
    Some(status)
}

/// Whether `newer`, a later copy of `task`, differs from it in its status by no more
/// than what a waiting Task says: still Pending, at the same attempt, with the same
/// backoff, and no more than the phase and the message (and the conditions and
/// generation written with them) changed.
pub fn only_waiting_since(task: &Task, newer: &Task) -> bool {
    let comparable = |t: &Task| {
        let mut status = t.status.clone().unwrap_or_default();
        status.phase = None;
        status.message = None;
        status.conditions = Vec::new();
        status.observed_generation = None;
        status
    };
    phase(newer) == TaskPhase::Pending
        && newer.metadata.deletion_timestamp == task.metadata.deletion_timestamp
        && comparable(newer) == comparable(task)
}

/// Whether what `task` waits for is handed over to be written and not written yet.
pub fn handed(ctx: &Context, task: &Task) -> bool {
    task.metadata.uid.as_deref().is_some_and(|uid| {
        ctx.task_index
            .holds(&task.namespace().unwrap_or_default(), name_of(task), uid)
    })
}

/// Has `task`'s status say it waits, with `message` (made only if it is not on its way
/// yet), soon; nothing if that is already on its way.
pub fn write_soon(ctx: &Context, task: &Task, message: impl FnOnce() -> String) {
    let Some(uid) = task.metadata.uid.as_deref() else {
        return;
    };
    let namespace = task.namespace().unwrap_or_default();
    if !ctx.task_index.hand(&namespace, name_of(task), uid) {
        return;
    }
    let handed = Handed {
        namespace,
        name: task.name_any(),
        uid: uid.to_owned(),
        message: message(),
    };
    if let Err(handed) = ctx.waiting.queue.send(handed) {
        // Shutting down: the next operator's pass hands it over again.
        ctx.task_index
            .said(&handed.namespace, &handed.name, &handed.uid);
    }
}

/// Writes the waiting statuses handed over, [`AT_ONCE`] at a time, until `shutdown`.
pub async fn keep_writing(ctx: Arc<Context>, shutdown: CancellationToken) {
    ctx.waiting
        .queue
        .drain(AT_ONCE, shutdown, |handed| {
            let ctx = ctx.clone();
            async move {
                ctx.urgent.quiet(YIELD_AT_MOST).await;
                let outcome = write(&ctx, &handed).await;
                ctx.task_index
                    .said(&handed.namespace, &handed.name, &handed.uid);
                ctx.metrics
                    .waiting_writes
                    .with_label_values(&[outcome])
                    .inc();
            }
        })
        .await;
}

/// Writes the waiting status `handed` over if its Task still waits: how that went, for
/// the metric.
async fn write(ctx: &Context, handed: &Handed) -> &'static str {
    let Handed {
        namespace,
        name,
        uid,
        message,
    } = handed;
    let place = ctx.lanes.enter(uid);
    let _turn = place.turn().await;
    // Handed over by a pass of this replica while it led; the next leader's passes hand
    // over what is still unsaid.
    if !ctx.leadership.is_current() {
        return "skipped";
    }
    // As a pass would see it now: a Task dispatched meanwhile is seen Queued.
    let Some(task) = ctx.task_index.seen(namespace, name, uid) else {
        return "skipped";
    };
    let Some(status) = waiting_status(&task, message) else {
        return "skipped";
    };
    match ctx.write_task(&task, &status).await {
        Ok(_) => "written",
        // The Task changed since the copy: the next pass looks at it again.
        Err(kube::Error::Api(s)) if s.code == 409 => "conflict",
        // It is gone: nothing waits.
        Err(kube::Error::Api(s)) if s.code == 404 => "skipped",
        Err(err) => {
            tracing::warn!(task = %name, %namespace, error = %err, "writing what a task waits for failed; the next pass hands it over again");
            "failed"
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    use super::*;
    use crate::testing::{task, with_phase};

    #[test]
    fn a_task_without_status_is_written_pending_with_what_it_waits_for() {
        let t = task("b", &["a"]);
        let status = waiting_status(&t, "waiting for a").unwrap();
        assert_eq!(status.phase, Some(TaskPhase::Pending));
        assert_eq!(status.message.as_deref(), Some("waiting for a"));
    }

    #[test]
    fn only_a_waiting_status_since_the_copy_is_no_news() {
        let bare = task("b", &["a"]);
        let mut waiting = bare.clone();
        waiting.status = waiting_status(&bare, "waiting for a");
        waiting.status.as_mut().unwrap().conditions = vec![Condition {
            type_: "Ready".into(),
            status: "False".into(),
            reason: "Pending".into(),
            message: "waiting for a".into(),
            last_transition_time: Time(jiff::Timestamp::UNIX_EPOCH),
            observed_generation: Some(1),
        }];
        assert!(only_waiting_since(&bare, &waiting));
        assert!(only_waiting_since(&bare, &bare));

        // An outcome, or a later attempt that failed back to Pending, is news.
        let mut finished = with_phase(bare.clone(), TaskPhase::Succeeded);
        finished.status.as_mut().unwrap().completion_time = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        assert!(!only_waiting_since(&bare, &finished));
        let mut retried = waiting.clone();
        retried.status.as_mut().unwrap().attempt = 1;
        assert!(!only_waiting_since(&bare, &retried));
    }

    #[test]
    fn a_task_that_says_so_already_or_no_longer_waits_is_left_alone() {
        let mut said = task("b", &["a"]);
        said.status = waiting_status(&said, "waiting for a");
        assert_eq!(waiting_status(&said, "waiting for a"), None);
        assert!(
            waiting_status(&said, "waiting for an Agent").is_some(),
            "a new reason is news"
        );
        for moved_on in [TaskPhase::Queued, TaskPhase::Running, TaskPhase::Succeeded] {
            assert_eq!(
                waiting_status(&with_phase(task("b", &["a"]), moved_on), "waiting for a"),
                None,
                "{moved_on:?}"
            );
        }
        let mut going = task("b", &["a"]);
        going.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH),
        );
        assert_eq!(waiting_status(&going, "waiting for a"), None);
    }
}
