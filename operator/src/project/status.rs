//! The Project status, written beside the pass rather than in it. A status write waits
//! in the API server's queue behind the event consumer's outcome writes (50 to 200 ms
//! under load): awaited in the pass, it held every pass that long, and with it the next
//! pass, the one that dispatches the Tasks that just became ready. The pass hands its
//! status here and ends; the writer keeps one write in flight per Project, writes only
//! the newest status handed (the ones handed meanwhile are superseded, never written),
//! and no more often than every [`MIN_INTERVAL`] unless the phase changes.
//!
//! Until the cache shows what this replica wrote, a pass starts from the newest status
//! this replica decided ([`StatusWrites::current`]), not from the cache's older copy:
//! conditions keep their transition times and a verification its round. Only the
//! leader writes a Project's status, and a replica that loses its lease stops, so what
//! it decided is never older than what the API server holds.
//!
//! Nothing is lost if a write fails or the process stops: a failed write is tried again
//! with the Project's own backoff, and the next leader's first pass computes the status
//! again from the Tasks.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use aios_crds::{Project, ProjectStatus, conditions::reasons, names::field_managers};
use kube::{ResourceExt, runtime::events::EventType};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{
    Error,
    project::{publish_event, publish_phase_event, rollup::differs, rollup::refused_plan},
    runtime::{context::Context, handover::Handover},
};

/// The least time between two writes of one Project's status, unless its phase
/// changes: its progress shows once a second, not once per pass. Every 250 ms, twenty
/// busy Projects wrote 80 statuses a second, a share of the API server large enough to
/// hold up the outcome writes the next dispatches wait for (2.5 writes a task and twice
/// the time in the 20 x 500 benchmark, against 1.1).
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// How many Projects' statuses are written at once: a small share of the API server
/// beside the event consumer's 32 outcome writes.
const AT_ONCE: usize = 4;

/// What this replica decided about one Project's status.
#[derive(Debug, Clone, Default)]
struct Entry {
    /// The newest copy of the Project a pass handed a status for.
    project: Option<Arc<Project>>,
    /// The status the cache held when the first status was handed.
    base: Option<ProjectStatus>,
    /// Handed over and not yet written.
    desired: Option<ProjectStatus>,
    /// The last status this replica wrote.
    written: Option<ProjectStatus>,
    /// When it was written.
    written_at: Option<Instant>,
    /// A writer has it: it is queued, parked (waiting for its interval or its backoff),
    /// or being written.
    queued: bool,
    /// Parked until a timer queues it again: which timer, and whether it waits out the
    /// interval (a phase change handed meanwhile queues it at once) or a backoff.
    parked: Option<Parked>,
    /// The last timer's number.
    timers: u64,
}

/// A parked entry's timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Parked {
    timer: u64,
    interval: bool,
}

impl Entry {
    /// What the API server holds, as far as this replica knows.
    fn stored(&self) -> Option<&ProjectStatus> {
        self.written.as_ref().or(self.base.as_ref())
    }
}

/// What the writer does next for one Project.
#[derive(Debug, Clone, PartialEq)]
enum Next {
    /// Nothing new to write.
    Settled,
    /// Write again after this long (the interval since the last write).
    WaitFor(Duration),
    /// Write this status now.
    Write(Box<ProjectStatus>),
}

/// The writer's decision for `entry` at `now`: pure, for the tests.
fn next(entry: &Entry, now: Instant) -> Next {
    let Some(desired) = &entry.desired else {
        return Next::Settled;
    };
    let stored = entry.stored();
    if stored.is_some_and(|s| !differs(s, desired)) {
        return Next::Settled;
    }
    let phase_changes = stored.and_then(|s| s.phase) != desired.phase;
    if let Some(at) = entry.written_at
        && !phase_changes
    {
        let due = at + MIN_INTERVAL;
        if due > now {
            return Next::WaitFor(due - now);
        }
    }
    Next::Write(Box::new(desired.clone()))
}

/// The statuses passes handed over, by Project uid.
#[derive(Debug, Default)]
pub struct StatusWrites {
    entries: Mutex<HashMap<String, Entry>>,
    queue: Handover<String>,
}

impl StatusWrites {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The status a pass over `project` (the cache's copy) starts from: the newest this
    /// replica decided, while the cache does not show it yet; `None` to use the cache's.
    /// An entry the cache has caught up with, with nothing pending, is forgotten here.
    pub fn current(&self, project: &Project) -> Option<ProjectStatus> {
        let uid = project.metadata.uid.as_deref()?;
        let mut entries = self.entries();
        let entry = entries.get(uid)?;
        if let Some(desired) = &entry.desired {
            return Some(desired.clone());
        }
        let written = entry.written.as_ref()?;
        let caught_up = project
            .status
            .as_ref()
            .is_some_and(|cached| !differs(cached, written));
        if caught_up && !entry.queued {
            entries.remove(uid);
            return None;
        }
        Some(written.clone())
    }

    /// Hands over `status` for `project` (the cache's copy) to be written soon; nothing
    /// is written if it says what is stored already.
    pub fn hand(&self, project: &Project, status: ProjectStatus) {
        let Some(uid) = project.metadata.uid.clone() else {
            return;
        };
        let mut entries = self.entries();
        let entry = entries.entry(uid.clone()).or_insert_with(|| Entry {
            base: project.status.clone(),
            ..Entry::default()
        });
        if entry.stored().is_some_and(|s| !differs(s, &status)) {
            entry.desired = None;
            return;
        }
        let phase_changes = entry.stored().and_then(|s| s.phase) != status.phase;
        entry.project = Some(Arc::new(project.clone()));
        entry.desired = Some(status);
        // Queued if no writer has it; a phase change is written without waiting out the
        // interval (its timer, when it fires, finds it no longer parked).
        let wake = entry.parked.is_some_and(|p| p.interval) && phase_changes;
        if !entry.queued || wake {
            entry.queued = true;
            entry.parked = None;
            if self.queue.send(uid.clone()).is_err() {
                // Shutting down: the next operator's pass computes it again.
                entries.remove(&uid);
            }
        }
    }

    /// Parks Project `uid` for the timer it is given (see [`later`]).
    fn park(&self, uid: &str, interval: bool) -> Option<u64> {
        let mut entries = self.entries();
        let entry = entries.get_mut(uid)?;
        entry.timers += 1;
        entry.parked = Some(Parked {
            timer: entry.timers,
            interval,
        });
        Some(entry.timers)
    }

    /// Whether timer `timer` of Project `uid` still holds it parked (then it no longer
    /// does): `false` once a phase change queued it, or it was forgotten.
    fn unpark(&self, uid: &str, timer: u64) -> bool {
        let mut entries = self.entries();
        match entries.get_mut(uid) {
            Some(entry) if entry.parked.is_some_and(|p| p.timer == timer) => {
                entry.parked = None;
                true
            }
            _ => false,
        }
    }

    /// Forgets a Project that is going away.
    pub fn forget(&self, uid: &str) {
        self.entries().remove(uid);
    }
}

/// Writes the statuses handed over, [`AT_ONCE`] Projects at a time, until `shutdown`.
pub async fn keep_writing(ctx: Arc<Context>, shutdown: CancellationToken) {
    ctx.project_statuses
        .queue
        .drain(AT_ONCE, shutdown, |uid| {
            let ctx = ctx.clone();
            async move { settle(&ctx, &uid).await }
        })
        .await;
}

/// Writes Project `uid`'s newest status, and goes on while news that may be written at
/// once (a phase change) was handed over meanwhile; queues it again for later when it
/// must wait.
async fn settle(ctx: &Context, uid: &str) {
    loop {
        let decision = {
            let mut entries = ctx.project_statuses.entries();
            let Some(entry) = entries.get_mut(uid) else {
                return;
            };
            match next(entry, Instant::now()) {
                Next::Settled => {
                    entry.desired = None;
                    entry.queued = false;
                    return;
                }
                Next::WaitFor(wait) => Err(wait),
                Next::Write(status) => {
                    let Some(project) = entry.project.clone() else {
                        entries.remove(uid);
                        return;
                    };
                    Ok((
                        project,
                        *status,
                        entry.stored().cloned().unwrap_or_default(),
                    ))
                }
            }
        };
        let (project, status, previous) = match decision {
            Ok(write) => write,
            Err(wait) => {
                later(ctx, uid, wait, true);
                return;
            }
        };
        // Handed over while this replica led; the next leader computes it again.
        if !ctx.leadership.is_current() {
            ctx.project_statuses.forget(uid);
            return;
        }
        let key = crate::runtime::backoff::key(project.as_ref());
        match write(ctx, &project, &status).await {
            Ok(()) => {
                ctx.reconciled("project-status", &key);
                if let Some(entry) = ctx.project_statuses.entries().get_mut(uid) {
                    entry.written = Some(status.clone());
                    entry.written_at = Some(Instant::now());
                    if entry.desired.as_ref().is_some_and(|d| !differs(d, &status)) {
                        entry.desired = None;
                    }
                }
                announce(ctx, &project, &previous, &status).await;
            }
            // Gone: nothing to say about it.
            Err(Error::Kube(kube::Error::Api(s))) if s.code == 404 => {
                ctx.project_statuses.forget(uid);
                return;
            }
            Err(err) => {
                let delay = ctx.retry_after("project-status", &key, &err, Duration::ZERO);
                later(ctx, uid, delay, false);
                return;
            }
        }
    }
}

/// Queues Project `uid` again after `wait` (it stays marked queued meanwhile, parked),
/// leaving the writer free for the other Projects: a Project that always has news,
/// waiting for its `interval` or its backoff, never keeps the others' statuses from
/// being written. A phase change handed while it waits out its interval queues it at
/// once; this timer then does nothing.
fn later(ctx: &Context, uid: &str, wait: Duration, interval: bool) {
    let writes = ctx.project_statuses.clone();
    let Some(timer) = writes.park(uid, interval) else {
        return;
    };
    let uid = uid.to_owned();
    tokio::spawn(async move {
        tokio::time::sleep(wait).await;
        if !writes.unpark(&uid, timer) {
            return;
        }
        if let Err(uid) = writes.queue.send(uid) {
            // Shutting down: the next operator's pass computes it again.
            writes.forget(&uid);
        }
    });
}

/// Writes `status` on `project` by server-side apply.
async fn write(ctx: &Context, project: &Project, status: &ProjectStatus) -> Result<(), Error> {
    crate::runtime::context::apply_status(
        &ctx.project_api(&project.namespace().unwrap_or_default()),
        &project.name_any(),
        None,
        status,
        field_managers::PROJECT,
    )
    .await?;
    Ok(())
}

/// The Events and metrics a written status calls for, against the one stored before.
async fn announce(
    ctx: &Context,
    project: &Project,
    previous: &ProjectStatus,
    status: &ProjectStatus,
) {
    // One Warning per refused plan, whoever refused it (Hera's verdict, or a plan too
    // large to keep).
    if let Some(problems) = refused_plan(previous, status) {
        ctx.metrics
            .plan_rejections
            .with_label_values(&[&project.namespace().unwrap_or_default()])
            .inc();
        publish_event(
            ctx,
            project,
            EventType::Warning,
            reasons::PLAN_INVALID,
            problems,
        )
        .await;
    }
    if previous.phase != status.phase {
        publish_phase_event(ctx, project, status).await;
    }
}

#[cfg(test)]
mod tests {
    use aios_crds::ProjectPhase;

    use super::*;

    fn status(phase: ProjectPhase, progress: &str) -> ProjectStatus {
        ProjectStatus {
            phase: Some(phase),
            progress: Some(progress.to_owned()),
            ..ProjectStatus::default()
        }
    }

    #[test]
    fn only_news_is_written_and_progress_no_more_often_than_the_interval() {
        let t0 = Instant::now();
        let mut entry = Entry {
            base: Some(status(ProjectPhase::Running, "1/10")),
            desired: Some(status(ProjectPhase::Running, "1/10")),
            ..Entry::default()
        };
        assert_eq!(next(&entry, t0), Next::Settled, "what is stored already");

        entry.desired = Some(status(ProjectPhase::Running, "2/10"));
        assert_eq!(
            next(&entry, t0),
            Next::Write(Box::new(status(ProjectPhase::Running, "2/10"))),
            "nothing written yet: at once"
        );

        entry.written = entry.desired.take();
        entry.written_at = Some(t0);
        entry.desired = Some(status(ProjectPhase::Running, "3/10"));
        assert_eq!(
            next(&entry, t0 + Duration::from_millis(100)),
            Next::WaitFor(Duration::from_millis(900))
        );
        assert_eq!(
            next(&entry, t0 + MIN_INTERVAL),
            Next::Write(Box::new(status(ProjectPhase::Running, "3/10")))
        );

        entry.desired = Some(status(ProjectPhase::Succeeded, "10/10"));
        assert_eq!(
            next(&entry, t0 + Duration::from_millis(1)),
            Next::Write(Box::new(status(ProjectPhase::Succeeded, "10/10"))),
            "a phase change is written at once"
        );
    }

    fn project(uid: &str, cached: Option<ProjectStatus>) -> Project {
        let mut p = crate::testing::project("shop");
        p.metadata.uid = Some(uid.to_owned());
        p.status = cached;
        p
    }

    #[test]
    fn a_pass_starts_from_what_was_decided_until_the_cache_shows_it() {
        let writes = StatusWrites::default();
        let old = project("u1", Some(status(ProjectPhase::Running, "1/10")));
        assert_eq!(writes.current(&old), None, "nothing decided: the cache's");

        writes.hand(&old, status(ProjectPhase::Running, "2/10"));
        assert_eq!(
            writes.current(&old),
            Some(status(ProjectPhase::Running, "2/10")),
            "handed, not yet written"
        );

        // Written; the cache still shows the older copy.
        {
            let mut entries = writes.entries();
            let entry = entries.get_mut("u1").unwrap();
            entry.written = entry.desired.take();
            entry.queued = false;
        }
        assert_eq!(
            writes.current(&old),
            Some(status(ProjectPhase::Running, "2/10"))
        );
        // The cache caught up: the entry is forgotten.
        let fresh = project("u1", Some(status(ProjectPhase::Running, "2/10")));
        assert_eq!(writes.current(&fresh), None);
        assert!(writes.entries().is_empty());
    }

    #[test]
    fn a_phase_change_is_not_held_by_the_interval_but_is_by_a_backoff() {
        let writes = StatusWrites::default();
        let p = project("u1", Some(status(ProjectPhase::Pending, "0/10")));
        let mut queue = writes.queue.take().unwrap();
        writes.hand(&p, status(ProjectPhase::Pending, "1/10"));
        assert_eq!(queue.try_recv().ok().as_deref(), Some("u1"));
        // Written, then parked to wait out the interval with more progress handed.
        {
            let mut entries = writes.entries();
            let entry = entries.get_mut("u1").unwrap();
            entry.written = entry.desired.take();
            entry.written_at = Some(Instant::now());
        }
        let timer = writes.park("u1", true).unwrap();
        writes.hand(&p, status(ProjectPhase::Pending, "2/10"));
        assert!(queue.try_recv().is_err(), "progress waits for its timer");

        writes.hand(&p, status(ProjectPhase::Running, "2/10"));
        assert_eq!(
            queue.try_recv().ok().as_deref(),
            Some("u1"),
            "the phase change is queued at once"
        );
        assert!(!writes.unpark("u1", timer), "the timer then queues nothing");
        assert!(queue.try_recv().is_err());

        // Parked for a backoff after a failed write: the phase change waits for it.
        let timer = writes.park("u1", false).unwrap();
        writes.hand(&p, status(ProjectPhase::Succeeded, "10/10"));
        assert!(
            queue.try_recv().is_err(),
            "a failing write is not tried sooner"
        );
        assert!(writes.unpark("u1", timer), "the backoff's timer queues it");
    }

    #[test]
    fn handing_over_what_is_stored_queues_nothing() {
        let writes = StatusWrites::default();
        let p = project("u1", Some(status(ProjectPhase::Running, "1/10")));
        writes.hand(&p, status(ProjectPhase::Running, "1/10"));
        let mut queue = writes.queue.take().unwrap();
        assert!(queue.try_recv().is_err(), "nothing to write");

        writes.hand(&p, status(ProjectPhase::Running, "2/10"));
        writes.hand(&p, status(ProjectPhase::Running, "3/10"));
        assert_eq!(queue.try_recv().ok().as_deref(), Some("u1"));
        assert!(queue.try_recv().is_err(), "queued once while it waits");
        assert_eq!(
            writes.current(&p),
            Some(status(ProjectPhase::Running, "3/10")),
            "the newest handed is the one written"
        );
    }
}
