//! Hera, the Project controller: has a Project planned (or takes its explicit plan),
//! creates its Tasks, dispatches the ready ones, handles timeouts, retries, skips and
//! failFast, and rolls the Tasks up into the Project's status.
//!
//! fetch (caches) → plan (pure validation) → run plan (pure scheduling) → apply (bus and
//! Task writes) → Project status (pure roll-up, one server-side apply when it changed).

pub mod dispatch;
pub mod plan;
pub mod rollup;
pub mod schedule;
pub mod soon;
pub mod status;
pub mod waiting;

use std::{sync::Arc, time::Duration};

use aios_crds::{
    Project, ProjectPhase, Task, TaskPhase,
    bus::TaskDispatch,
    conditions::reasons,
    names::field_managers,
    project::{TaskCounts, TaskDefaults},
};
use futures::{StreamExt, stream};
use jiff::Timestamp;
use kube::{
    Resource, ResourceExt,
    runtime::{controller::Action as ControllerAction, events::EventType},
};

use crate::{
    Error,
    project::dispatch::{
        DependencyResults, FEEDBACK_SEPARATOR, dispatch_message, planning_task, planning_task_name,
    },
    project::plan::{
        PlanError, ValidatedPlan, dropped_dependencies, judge_plan, missing_tasks, plan_tasks,
    },
    project::rollup::{PlanState, budget_exceeded, project_status_counted, total_usage},
    project::schedule::{Action, Hold, RunPlan, Tasks, plan_run_gated, waiting_for},
    runtime::{context::Context, index::ProjectTasks},
    task::{
        cancel,
        cancels::Recorded,
        lanes::Place,
        lifecycle::{self, ByName, phase, task_policy},
        tokens::Attempt,
    },
    verify,
};

/// How often a pass looks at a verification run in progress.
const VERIFY_POLL: Duration = Duration::from_secs(2);

/// Which Project a Task belongs to, for triggering Hera on Task changes (owned or not).
#[allow(clippy::needless_pass_by_value)] // the signature kube's `watches` mapper takes
pub fn project_of(task: &Task) -> Option<kube::runtime::reflector::ObjectRef<Project>> {
    Some(kube::runtime::reflector::ObjectRef::new(&task.spec.project).within(&task.namespace()?))
}

/// How many Task status writes (and other actions but dispatches) one pass runs at once.
const ACTION_CONCURRENCY: usize = 16;

/// How many dispatches are published at once, over all passes (each waits for a
/// broker confirm, whose fsyncs the broker shares among the messages waiting for one:
/// more at once sends a layer of a hundred out faster). Over all passes, not per pass:
/// 64 a pass let twenty Projects starting together put 1,280 on the broker at once, and
/// the agents' reports then came too late to leave Queued out or to fold Started (2.6
/// writes a task and 100 s, against 1.1 and 47 s).
pub const DISPATCH_CONCURRENCY: usize = 64;

/// How many dispatches a pass makes and records in flight (one Redis write) before it
/// publishes them: a layer of a hundred ready Tasks goes out after one round trip to
/// Redis, not a hundred queued behind the agents' reports.
const DISPATCH_BATCH: usize = 256;

/// How long a pass waits, once, after its last dispatch for the agents to report on its
/// dispatches before it records the others Queued: a dispatch an agent takes at once is
/// then never recorded Queued (its Running, or its outcome, says more). Without it, a
/// layer published fast was recorded Queued before its agents could report (128 at once
/// made twenty Projects starting together write 2.5 times a task rather than 1.0).
const REPORT_WINDOW: Duration = Duration::from_millis(50);

/// How long to wait before looking again at a Project nothing is happening to.
const RESYNC: Duration = Duration::from_secs(300);

/// Reconciles one Project.
#[tracing::instrument(skip_all, fields(project = %project.name_any(), namespace = project.namespace().unwrap_or_default()))]
pub async fn reconcile(
    project: Arc<Project>,
    ctx: Arc<Context>,
) -> Result<ControllerAction, Error> {
    let result = ctx
        .metrics
        // Boxed: a pass's future is large (its lookups and sums live across its writes).
        .time_reconcile("project", Box::pin(reconcile_inner(&project, &ctx)))
        .await;
    if let Err(err) = &result
        && let Some(message) = actionable(err)
    {
        // Backoff keeps retrying; the Project says why, for a person to act.
        let decided = decided(&ctx, &project);
        let status = stalled_status(&decided, &message, Timestamp::now());
        ctx.project_statuses.hand(&project, status);
    }
    result
}

/// The API server's message for `error` when a person must act for the pass to succeed:
/// a permission refused (403: RBAC, a quota), an object the API server or an admission
/// webhook will not take (400, 422). `None` for what passes by itself (conflicts, a
/// standby, the network, a server error).
pub fn actionable(error: &Error) -> Option<String> {
    match error {
        Error::Kube(kube::Error::Api(status)) if matches!(status.code, 400 | 403 | 422) => {
            Some(format!(
                "the API server refused a write ({}): {}",
                status.code, status.message
            ))
        }
        _ => None,
    }
}

/// `project`'s status with its health saying that its passes keep failing with
/// `message`: Stalled, reason `ReconcileFailed`. The next pass that succeeds writes the
/// health its phase calls for.
pub fn stalled_status(
    project: &Project,
    message: &str,
    now: Timestamp,
) -> aios_crds::ProjectStatus {
    let mut status = project.status.clone().unwrap_or_default();
    crate::kstatus::set_health(
        &mut status.conditions,
        &crate::kstatus::Health::Stalled {
            reason: reasons::RECONCILE_FAILED.to_owned(),
            message: message.to_owned(),
        },
        project.metadata.generation,
        now,
    );
    status
}

/// `project` as this replica's passes see it: with the newest status it decided, until
/// the cache shows it (see [`status`]).
fn decided<'a>(ctx: &Context, project: &'a Project) -> std::borrow::Cow<'a, Project> {
    match ctx.project_statuses.current(project) {
        Some(status) => std::borrow::Cow::Owned(Project {
            status: Some(status),
            ..project.clone()
        }),
        None => std::borrow::Cow::Borrowed(project),
    }
}

async fn reconcile_inner(cached: &Project, ctx: &Context) -> Result<ControllerAction, Error> {
    if !ctx.leadership.is_current() {
        return Err(Error::NotLeader);
    }
    if cached.meta().deletion_timestamp.is_some() {
        // Tasks are owned: the garbage collector deletes them, and the Task
        // controller cancels what they have in flight.
        let uid = cached.uid().unwrap_or_default();
        ctx.plans.forget(&uid);
        ctx.project_statuses.forget(&uid);
        return Ok(ControllerAction::await_change());
    }
    let decided = decided(ctx, cached);
    let project = decided.as_ref();
    let namespace = project.namespace().unwrap_or_default();
    let name = project.name_any();
    let now = Timestamp::now();
    let tasks = ctx.project_tasks(&namespace, &name);
    let all: Vec<&Task> = tasks.tasks.iter().map(AsRef::as_ref).collect();

    // Plan.
    let (plan_state, work) = match &project.spec.tasks {
        // An empty list: no planning, and the Tasks that name this Project (created by
        // a tool or through GitOps) are the work.
        Some(explicit) if explicit.is_empty() => (PlanState::Explicit, Work::Tasks),
        Some(explicit) => match ctx.plans.explicit(project, explicit).as_ref() {
            Ok(plan) => {
                create_missing(ctx, project, &all, plan, None, &[]).await?;
                (PlanState::Explicit, Work::Tasks)
            }
            Err(errors) => (
                PlanState::Invalid {
                    message: join(errors),
                },
                Work::Nothing,
            ),
        },
        None => plan_with_hera(project, ctx, &tasks, &all, now).await?,
    };
    // The Pending tasks to look at, as the index keeps them, when the work is every
    // task but the planning ones.
    let pending: Option<Vec<&Task>> =
        matches!(work, Work::Tasks).then(|| tasks.pending.iter().map(AsRef::as_ref).collect());
    let (work, work_counts) = work.select(&tasks);

    // Run.
    let usage = total_usage(all.iter().copied());
    let by_name = ByName::sorted(all.iter().copied());
    let run = if matches!(plan_state, PlanState::Invalid { .. }) {
        RunPlan::default()
    } else {
        let work = Tasks {
            work: &work,
            counts: &work_counts,
            by_name: &by_name,
            handed: &|task| waiting::handed(ctx, task),
            pending: pending.as_deref(),
        };
        run_plan(project, ctx, work, &usage, now)
    };
    let mut first_error = run_actions(project, ctx, &run.actions, &by_name, now).await;

    // Verify: the delivered work of each Verifying task, then the branch head.
    let (final_check, verifying, verify_error) =
        verify_pass(project, ctx, &plan_state, &work, &by_name, now).await;
    first_error = first_error.or(verify_error);

    // Status.
    let mut status = project_status_counted(
        project,
        &work_counts,
        &work,
        usage,
        &plan_state,
        final_check.as_ref(),
        now,
    );
    if let Some(planner) = tasks.planning.first() {
        status.plan_attempts = planner.status.as_ref().map_or(0, |s| s.attempt);
    }
    // Written beside the pass: the next pass, which may have Tasks to dispatch, does not
    // wait for it.
    ctx.project_statuses.hand(cached, status);
    if let Some(err) = first_error {
        return Err(err);
    }
    let wake = match run.wake_at {
        Some(at) => Duration::try_from(at.duration_since(now))
            .unwrap_or_default()
            .max(Duration::from_millis(100)),
        None => RESYNC,
    };
    Ok(ControllerAction::requeue(if verifying {
        wake.min(VERIFY_POLL)
    } else {
        wake
    }))
}

/// Carries out a pass's `actions`, several at once (each touches a different Task):
/// the first error, if any. What waiting Tasks say is handed over to be written beside
/// the pass; dispatches go first, many at once; then the dispatches are recorded Queued
/// and the other actions (status writes) are carried out, a few at a time. Each
/// action's future (about 6 KiB) is made only when its turn comes: made all at once,
/// the first pass over 10,000 waiting Tasks held 60 MiB of them.
async fn run_actions(
    project: &Project,
    ctx: &Context,
    actions: &[Action],
    by_name: &ByName<'_>,
    now: Timestamp,
) -> Option<Error> {
    let mut first_error: Option<Error> = None;
    let mut published = Vec::new();
    // What waiting Tasks say is written beside the pass (see `waiting`).
    for action in actions {
        match action {
            Action::Wait { task, message } => {
                if let Some(task) = by_name.get(task.as_str()) {
                    waiting::write_soon(ctx, task, || message.clone());
                }
            }
            Action::AwaitDependencies { task } => {
                if let Some(task) = by_name.get(task.as_str()) {
                    waiting::write_soon(ctx, task, || waiting_for(&task.spec.depends_on));
                }
            }
            _ => {}
        }
    }
    let (dispatches, writes): (Vec<usize>, Vec<usize>) = (0..actions.len())
        .filter(|&i| {
            !matches!(
                actions[i],
                Action::Wait { .. } | Action::AwaitDependencies { .. }
            )
        })
        .partition(|&i| matches!(actions[i], Action::Dispatch { .. }));
    let dispatches: Vec<(&Task, i32)> = dispatches
        .into_iter()
        .filter_map(|i| match &actions[i] {
            Action::Dispatch { task, attempt } => Some((by_name.get(task.as_str())?, *attempt)),
            _ => None,
        })
        .collect();
    for batch in dispatches.chunks(DISPATCH_BATCH) {
        let (sent, error) = dispatch_batch(project, ctx, batch, by_name, now).await;
        published.extend(sent);
        if let Some(err) = error {
            first_error.get_or_insert(err);
        }
    }
    // Every dispatch of the pass is on the bus before the first is recorded Queued, and
    // before any other status write: the last of a hundred ready Tasks waits for none.
    // The agents that take theirs at once have reported by the time the records start.
    let deadline = tokio::time::Instant::now() + REPORT_WINDOW;
    futures::future::join_all(published.iter().map(|p| {
        p.place
            .reported_by(u32::try_from(p.attempt).unwrap_or_default(), deadline)
    }))
    .await;
    let after = (0..published.len())
        .map(After::Record)
        .chain(writes.into_iter().map(After::Act));
    let mut results = stream::iter(after.enumerate().map(|(i, next)| {
        let action = follow_up(project, ctx, actions, &published, next, by_name, now);
        async move { (i, action.await) }
    }))
    .buffer_unordered(ACTION_CONCURRENCY);
    // The error of the first action in the pass's order, not of the first to fail: what
    // the Project's status says of a refusal then stays the same from pass to pass (a
    // message that changed would be written, and the write wakes the Project at once,
    // ahead of its backoff).
    let mut failed: Option<(usize, Error)> = None;
    while let Some((i, result)) = results.next().await {
        if let Err(err) = result {
            tracing::warn!(error = %err, "a task action failed");
            if failed.as_ref().is_none_or(|(first, _)| i < *first) {
                failed = Some((i, err));
            }
        }
    }
    first_error.or(failed.map(|(_, err)| err))
}

/// Advances the verifications: the Project's final one to record, whether a run is in
/// progress, and the first error.
async fn verify_pass(
    project: &Project,
    ctx: &Context,
    plan_state: &PlanState,
    work: &[&Task],
    by_name: &ByName<'_>,
    now: Timestamp,
) -> (Option<aios_crds::VerificationStatus>, bool, Option<Error>) {
    let mut first_error = None;
    let mut verifying = false;
    match verify::reconcile::advance_tasks(project, ctx, work, by_name, now).await {
        Ok(waiting) => verifying |= waiting,
        Err(err) => {
            tracing::warn!(error = %err, "advancing a verification failed");
            first_error = Some(err);
        }
    }
    let previous = project.status.as_ref().and_then(|s| s.verification.clone());
    // The branch head is verified once the plan's work is done: never while planning
    // (the work is then the planning task, whose commit holds no code yet).
    if !matches!(plan_state, PlanState::Explicit | PlanState::Planned { .. }) {
        return (previous, verifying, first_error);
    }
    match verify::reconcile::advance_final(project, ctx, work, by_name, now).await {
        Ok((check, waiting)) => (check, verifying || waiting, first_error),
        Err(err) => {
            tracing::warn!(error = %err, "advancing the final verification failed");
            (previous, verifying, first_error.or(Some(err)))
        }
    }
}

fn join(errors: &[impl ToString]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(FEEDBACK_SEPARATOR)
}

/// What to do with `work` now: held while suspended or over budget, and only for Tasks
/// a ready model provider of the namespace can take.
fn run_plan(
    project: &Project,
    ctx: &Context,
    work: Tasks<'_>,
    usage: &aios_crds::Usage,
    now: Timestamp,
) -> RunPlan {
    let namespace = project.namespace().unwrap_or_default();
    let hold = if project.spec.suspend {
        Some(Hold::Suspended)
    } else if budget_exceeded(project, usage) {
        Some(Hold::BudgetExceeded)
    } else {
        None
    };
    let providers = ctx.providers_of(&namespace);
    let roles = ctx.served_roles(&namespace);
    let gate = |task: &Task| {
        if !roles.contains(task.spec.role.as_str()) {
            return Some(waiting_for_role(task.spec.role.as_str()));
        }
        let complexity = task.spec.complexity;
        (!crate::provider::objects::can_take(providers.iter().map(AsRef::as_ref), complexity))
            .then(|| format!("{WAITING_FOR_PROVIDER} that can take a {complexity:?} task"))
    };
    plan_run_gated(project, work, hold, &gate, now)
}

/// How a ready Task waiting for an Agent of its role says so.
pub fn waiting_for_role(role: &str) -> String {
    format!("waiting for an Agent that serves role {role}")
}

/// How a ready Task waiting for a model provider begins to say so.
pub const WAITING_FOR_PROVIDER: &str = "waiting for a ready model provider";

/// What appeared or changed that a Project's Tasks may wait for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Wake {
    /// An Agent serving `role` in `namespace`.
    Role {
        /// The Agent's namespace.
        namespace: String,
        /// The role it serves.
        role: String,
    },
    /// A ModelProvider in `namespace`.
    Provider {
        /// The provider's namespace.
        namespace: String,
    },
}

impl Wake {
    /// What `task` waits for, as its status message says: a Pending Task waiting for an
    /// Agent of its role, or for a model provider of its namespace. `None` for any other.
    pub fn awaited_by(task: &Task) -> Option<Self> {
        let status = task.status.as_ref()?;
        if status.phase.is_some_and(|p| p != TaskPhase::Pending) {
            return None;
        }
        let message = status.message.as_deref()?;
        let namespace = task.namespace().unwrap_or_default();
        let role = task.spec.role.as_str();
        if message == waiting_for_role(role) {
            Some(Self::Role {
                namespace,
                role: role.to_owned(),
            })
        } else if message.starts_with(WAITING_FOR_PROVIDER) {
            Some(Self::Provider { namespace })
        } else {
            None
        }
    }
}

/// The Tasks a pass works on.
enum Work {
    Nothing,
    /// Every Task of the Project but the planning one.
    Tasks,
    /// Only the planning Task of this name.
    Planner(String),
}

impl Work {
    /// The work among the Project's `tasks`, and its counts by phase.
    fn select<'a>(&self, tasks: &'a ProjectTasks) -> (Vec<&'a Task>, TaskCounts) {
        match self {
            Work::Nothing => (Vec::new(), TaskCounts::default()),
            Work::Tasks => (tasks.work().collect(), tasks.work_counts.clone()),
            Work::Planner(name) => {
                let planner: Vec<&Task> = tasks
                    .planning
                    .iter()
                    .map(AsRef::as_ref)
                    .filter(|t| t.metadata.name.as_ref() == Some(name))
                    .collect();
                let counts = rollup::count(&planner);
                (planner, counts)
            }
        }
    }
}

/// Creates the Tasks of `plan` that do not exist yet, several at once (a plan may have
/// a thousand). Once they all exist, as on every pass after the first, nothing is built.
async fn create_missing(
    ctx: &Context,
    project: &Project,
    existing: &[&Task],
    plan: &ValidatedPlan,
    plan_attempt: Option<i32>,
    dropped: &[PlanError],
) -> Result<(), Error> {
    let missing = missing_tasks(&project.name_any(), plan, existing.iter().copied());
    if missing.is_empty() {
        return Ok(());
    }
    let desired = plan_tasks(project, plan, plan_attempt, dropped)
        .into_iter()
        .filter(|task| missing.contains(lifecycle::name_of(task)));
    create_tasks(ctx, desired).await
}

/// Creates `tasks`, several at once: the first error in their order, not the first to
/// come (a refusal's message in the Project's status stays the same from pass to pass).
async fn create_tasks(ctx: &Context, tasks: impl IntoIterator<Item = Task>) -> Result<(), Error> {
    let results: Vec<Result<(), Error>> = stream::iter(tasks)
        .map(|task| async move { apply_task(ctx, &task).await })
        .buffered(ACTION_CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Creates (or updates) `task`, a Task Hera makes, by server-side apply: idempotent.
pub async fn apply_task(ctx: &Context, task: &Task) -> Result<(), Error> {
    let api = ctx.task_api(&task.namespace().unwrap_or_default());
    crate::runtime::context::server_side_apply(&api, task, field_managers::PROJECT).await?;
    Ok(())
}

/// The plan of a Project without `spec.tasks`: its planning task's, once valid.
async fn plan_with_hera(
    project: &Project,
    ctx: &Context,
    tasks: &ProjectTasks,
    all: &[&Task],
    now: Timestamp,
) -> Result<(PlanState, Work), Error> {
    let name = project.name_any();
    let namespace = project.namespace().unwrap_or_default();
    let planner_name = planning_task_name(&name);
    // Labelled as the planning task, as Hera creates it: found without a sweep.
    let labelled = tasks.planning.iter().map(AsRef::as_ref);
    let Some(planner) =
        (labelled.chain(all.iter().copied())).find(|t| lifecycle::name_of(t) == planner_name)
    else {
        create_tasks(ctx, [planning_task(project)]).await?;
        return Ok((PlanState::Planning, Work::Nothing));
    };
    let planner_status = planner.status.clone().unwrap_or_default();
    let plan_ref = planner_status
        .result
        .as_ref()
        .and_then(|r| r.plan_ref.as_ref());
    let accepted: Vec<&Task> = tasks.work().collect();
    if !accepted.is_empty() {
        // Tasks from an accepted plan exist: finish creating them if a crash left some
        // out, and never re-plan (Agents may have changed since).
        if let Some(plan_ref) = plan_ref
            && accepted.len() < usize::try_from(plan_ref.tasks).unwrap_or(0)
            && let Ok(plan) = ctx.load_plan(&namespace, plan_ref).await?
            && let Ok(accepted) = judge_plan(&name, &plan, None)
        {
            create_missing(
                ctx,
                project,
                all,
                &accepted.plan,
                Some(planner_status.attempt),
                &accepted.dropped,
            )
            .await?;
        }
        let dropped = dropped_dependencies(accepted.iter().copied());
        let dropped = (!dropped.is_empty()).then(|| join(&dropped));
        return Ok((PlanState::Planned { dropped }, Work::Tasks));
    }
    let planner_only = Work::Planner(planner_name);
    let refused =
        lifecycle::condition(&planner_status.conditions, aios_crds::conditions::SUCCEEDED)
            .filter(|c| c.reason == reasons::PLAN_INVALID)
            .map(|c| c.message.clone());
    match phase(planner) {
        TaskPhase::Succeeded => {
            let state = plan_verdict(project, ctx, all, planner, now).await?;
            Ok((state, planner_only))
        }
        TaskPhase::Failed => Ok((
            match refused {
                Some(message) => PlanState::Invalid { message },
                // Failed for another reason (the model's answer was unusable, its result
                // could not be recorded): no plan to judge, and the Project fails with
                // the task.
                None => PlanState::PlanningFailed {
                    message: planner_status.message.unwrap_or_default(),
                },
            },
            planner_only,
        )),
        _ => Ok((
            match refused {
                Some(message) => PlanState::Replanning { message },
                None => PlanState::Planning,
            },
            planner_only,
        )),
    }
}

/// Hera's verdict on the plan of `planner`, a planning task that succeeded (see
/// [`judge_plan`]): an accepted plan becomes Tasks, and dependencies dropped from it are
/// named in a Warning Event and on the Tasks (whence the `Planned` condition); a refused
/// one fails the planning
/// attempt with reason `PlanInvalid` and every problem, so the next attempt's dispatch
/// carries them (`planFeedback`), until retries run out.
async fn plan_verdict(
    project: &Project,
    ctx: &Context,
    all: &[&Task],
    planner: &Task,
    now: Timestamp,
) -> Result<PlanState, Error> {
    let name = project.name_any();
    let namespace = project.namespace().unwrap_or_default();
    let planner_status = planner.status.clone().unwrap_or_default();
    let plan_ref = planner_status
        .result
        .as_ref()
        .and_then(|r| r.plan_ref.as_ref());
    let served = ctx.served_roles(&namespace);
    let checked = match plan_ref {
        Some(plan_ref) => match ctx.load_plan(&namespace, plan_ref).await? {
            Ok(plan) => judge_plan(&name, &plan, Some(&served)).map_err(|e| join(&e)),
            Err(unreadable) => Err(unreadable.to_string()),
        },
        None => Err("the planning task succeeded without a plan".to_owned()),
    };
    let message = match checked {
        Ok(accepted) => {
            create_missing(
                ctx,
                project,
                all,
                &accepted.plan,
                Some(planner_status.attempt),
                &accepted.dropped,
            )
            .await?;
            if !accepted.dropped.is_empty() {
                publish_event(
                    ctx,
                    project,
                    EventType::Warning,
                    reasons::DEPENDENCIES_DROPPED,
                    &join(&accepted.dropped),
                )
                .await;
            }
            // The new Tasks show up in the cache and trigger the next pass.
            return Ok(PlanState::Planning);
        }
        Err(message) => message,
    };
    // Ask for a new plan (a new attempt of the planning task, carrying the problems)
    // while retries remain; then the Project fails.
    let policy = task_policy(planner, &project.spec.policy.task_defaults);
    let mut status =
        lifecycle::fail_attempt(planner, &policy, reasons::PLAN_INVALID, &message, true, now);
    let final_ = status.phase == Some(TaskPhase::Failed);
    status.result = None;
    ctx.write_task(planner, &status).await?;
    Ok(if final_ {
        PlanState::Invalid { message }
    } else {
        PlanState::Replanning { message }
    })
}

/// Carries out `action`, a status write (dispatches are published by
/// [`dispatch_batch`]).
async fn execute(
    project: &Project,
    ctx: &Context,
    action: &Action,
    by_name: &ByName<'_>,
    now: Timestamp,
) -> Result<(), Error> {
    let defaults = &project.spec.policy.task_defaults;
    match action {
        Action::Expire {
            task,
            reason,
            message,
        } => {
            let Some(task) = by_name.get(task.as_str()) else {
                return Ok(());
            };
            let policy = task_policy(task, defaults);
            let status = lifecycle::fail_attempt(task, &policy, reason, message, true, now);
            // The attempt may still be running or waiting somewhere: tell the agents to
            // drop it, durably, before the status moves on (a failed mark is retried by
            // the next pass, which finds the attempt expired again).
            cancel(ctx, task, message).await?;
            ctx.write_task(task, &status).await?;
        }
        Action::Skip { task, dependency } => {
            let Some(task) = by_name.get(task.as_str()) else {
                return Ok(());
            };
            ctx.write_task(task, &lifecycle::skipped(task, dependency, now))
                .await?;
        }
        // Handed to the waiting-status writer, or published in batches, by
        // `run_actions`; never carried out here.
        Action::Wait { .. } | Action::AwaitDependencies { .. } | Action::Dispatch { .. } => {}
        Action::Cancel { task, message } => {
            let Some(task) = by_name.get(task.as_str()) else {
                return Ok(());
            };
            ctx.write_task(task, &lifecycle::cancelled(task, message, now))
                .await?;
        }
    }
    Ok(())
}

/// What a pass does once its dispatches are published, by index.
#[derive(Clone, Copy)]
enum After {
    /// Record the published dispatch `published[i]` Queued.
    Record(usize),
    /// Carry out `actions[i]`, not a dispatch.
    Act(usize),
}

/// Does `next`, one of the things a pass does after publishing.
async fn follow_up(
    project: &Project,
    ctx: &Context,
    actions: &[Action],
    published: &[Published<'_>],
    next: After,
    by_name: &ByName<'_>,
    now: Timestamp,
) -> Result<(), Error> {
    match next {
        After::Record(i) => match by_name.get(published[i].task.as_str()) {
            Some(task) => record_queued(ctx, task, &published[i], now).await,
            None => Ok(()),
        },
        After::Act(i) => execute(project, ctx, &actions[i], by_name, now).await,
    }
}

/// A dispatch published and not yet recorded Queued.
struct Published<'a> {
    task: String,
    attempt: i32,
    /// The Task's lane, kept open from before publishing, so that it knows whether the
    /// agent reports on the attempt before Queued is written.
    place: Place<'a>,
}

/// A dispatch made and signed, not yet published.
struct Prepared<'t, 'a> {
    task: &'t Task,
    attempt: i32,
    message: TaskDispatch,
    /// The Task's lane, entered before publishing (see [`Published::place`]).
    place: Place<'a>,
}

/// Publishes `batch` (Tasks and the attempt of each): every dispatch made and signed,
/// all recorded in flight in one Redis write, then published, up to
/// [`DISPATCH_CONCURRENCY`] at a time over all passes. Returns those published, for the
/// pass to record Queued ([`record_queued`]), and the first error (each is logged). If
/// the process dies between the publish and the record, the next pass publishes the
/// same attempt again, with the same message id, which consumers recognise.
async fn dispatch_batch<'a>(
    project: &Project,
    ctx: &'a Context,
    batch: &[(&Task, i32)],
    by_name: &ByName<'_>,
    now: Timestamp,
) -> (Vec<Published<'a>>, Option<Error>) {
    if !ctx.leadership.is_current() {
        return (Vec::new(), Some(Error::NotLeader));
    }
    let defaults = &project.spec.policy.task_defaults;
    if let Some((reason, message)) =
        crate::provider::credentials::refuse_repository_credential(&ctx.credentials, project)
    {
        tracing::warn!(%reason, %message, tasks = batch.len(), "not dispatching: the repository credential may not be used");
        // (Futures made first: a closure over the batch's references held in the stream
        // trips rustc's check that the pass is Send.)
        let refusals: Vec<_> = batch
            .iter()
            .map(|&(task, _)| refuse(ctx, task, defaults, reason, &message, now))
            .collect();
        let refusals = stream::iter(refusals)
            .buffer_unordered(ACTION_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        return (
            Vec::new(),
            refusals.into_iter().find_map(Result::err).map(Error::from),
        );
    }
    let namespace = project.namespace().unwrap_or_default();
    let served_roles = ctx.served_roles(&namespace);
    let mut dependencies = DependencyResults::new(by_name);
    let prepared: Vec<Prepared<'_, 'a>> = batch
        .iter()
        .map(|&(task, attempt)| {
            let place = ctx
                .lanes
                .enter(task.metadata.uid.as_deref().unwrap_or_default());
            let policy = task_policy(task, defaults);
            let mut message = dispatch_message(
                project,
                task,
                attempt,
                &policy,
                &mut dependencies,
                &served_roles,
                ctx.preferred_providers(&namespace, task.spec.role.as_str()),
                now,
            );
            message.token = ctx.attempt_key.sign(&Attempt::of(task, message.attempt));
            Prepared {
                task,
                attempt,
                message,
                place,
            }
        })
        .collect();
    // Recorded before they are published: if a Task is deleted while no operator
    // watches, the sweep finds the attempt and cancels it (`crate::task::sweep`).
    if let Some(marks) = &ctx.cancel_marks {
        let records: Vec<Recorded> = prepared
            .iter()
            .map(|p| Recorded {
                namespace: namespace.clone(),
                name: p.task.name_any(),
                uid: p.message.task.uid.clone(),
                attempt: p.attempt,
            })
            .collect();
        if let Err(err) = marks.record(&records).await {
            tracing::warn!(error = %err, dispatches = records.len(), "not dispatching: the attempts could not be recorded in flight");
            return (Vec::new(), Some(err.into()));
        }
    }
    let mut published = Vec::with_capacity(prepared.len());
    let mut first_error = None;
    let sends: Vec<_> = prepared
        .into_iter()
        .map(|prepared| publish(ctx, prepared, &namespace, by_name))
        .collect();
    let mut results = stream::iter(sends).buffer_unordered(DISPATCH_CONCURRENCY);
    while let Some(result) = results.next().await {
        match result {
            Ok(sent) => published.push(sent),
            Err(err) => {
                tracing::warn!(error = %err, "dispatching a task failed");
                first_error.get_or_insert(err);
            }
        }
    }
    (published, first_error)
}

/// Fails the attempt of `task` that may not be dispatched (`reason`, `message`), in
/// the Task's lane.
async fn refuse(
    ctx: &Context,
    task: &Task,
    defaults: &TaskDefaults,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> Result<(), kube::Error> {
    let policy = task_policy(task, defaults);
    let status = lifecycle::fail_attempt(task, &policy, reason, message, false, now);
    let place = ctx
        .lanes
        .enter(task.metadata.uid.as_deref().unwrap_or_default());
    let _turn = place.turn().await;
    ctx.write_task(task, &status).await.map(drop)
}

/// Publishes one prepared dispatch, waiting for the broker's confirm, and counts it.
async fn publish<'a>(
    ctx: &'a Context,
    prepared: Prepared<'_, 'a>,
    namespace: &str,
    by_name: &ByName<'_>,
) -> Result<Published<'a>, Error> {
    let Prepared {
        task,
        attempt,
        message,
        place,
    } = prepared;
    let role = message.spec.role.as_str();
    // Never closed; held until the dispatch is confirmed or has failed.
    let _permit = ctx.dispatch_permits.acquire().await.ok();
    if let Err(err) = ctx.bus.publish_dispatch(&message).await {
        ctx.metrics
            .publish_failures
            .with_label_values(&["TaskDispatch", err.category()])
            .inc();
        return Err(err.into());
    }
    ctx.expect_dispatch(task, attempt);
    ctx.metrics.dispatches.with_label_values(&[role]).inc();
    if let Some(since) = ctx.task_index.succeeded_since(
        namespace,
        task.spec
            .depends_on
            .iter()
            .map(aios_crds::CompactString::as_str),
    ) {
        ctx.metrics
            .dispatch_delay
            .with_label_values(&[role])
            .observe(since.elapsed().as_secs_f64());
    }
    let ready_since = task
        .spec
        .depends_on
        .iter()
        .filter_map(|d| by_name.get(d.as_str()))
        .filter_map(|d| {
            d.status
                .as_ref()
                .and_then(|s| s.completion_time.as_ref())
                .map(|t| t.0)
        })
        .max()
        .or_else(|| {
            task.status
                .as_ref()
                .and_then(|s| s.next_attempt_time.as_ref())
                .map(|t| t.0)
        })
        .or_else(|| task.metadata.creation_timestamp.as_ref().map(|t| t.0));
    if let Some(since) = ready_since {
        let seconds = Timestamp::now()
            .duration_since(since)
            .as_secs_f64()
            .max(0.0);
        ctx.metrics
            .dispatch_latency
            .with_label_values(&[role])
            .observe(seconds);
    }
    Ok(Published {
        task: task.name_any(),
        attempt,
        place,
    })
}

/// Records the published attempt of `task` Queued, unless the agent has reported on it
/// already: its Running or its outcome, written in the Task's lane, says more. A report
/// that is in before the record's turn comes is not waited for: the pass ends without
/// waiting for the agents' reports to be written, so the next pass (the dependents of
/// those reports) is not held up by them.
async fn record_queued(
    ctx: &Context,
    task: &Task,
    published: &Published<'_>,
    now: Timestamp,
) -> Result<(), Error> {
    let attempt = u32::try_from(published.attempt).unwrap_or_default();
    let superseded = || {
        ctx.metrics
            .queued_writes
            .with_label_values(&["superseded"])
            .inc();
    };
    if published.place.reported(attempt) {
        superseded();
        return Ok(());
    }
    let _turn = published.place.turn().await;
    if published.place.reported(attempt) {
        superseded();
        return Ok(());
    }
    // Written over the copy the dispatch was decided on, so that anything since (an
    // outcome, another attempt) makes the write fail rather than be overwritten. One
    // change is no news: what a waiting Task says, written beside the pass; a newer copy
    // that differs only by that is started from.
    let newest = ctx
        .task_index
        .newest(
            &task.namespace().unwrap_or_default(),
            lifecycle::name_of(task),
            task.metadata.uid.as_deref().unwrap_or_default(),
        )
        .filter(|newest| waiting::only_waiting_since(task, newest));
    let task = newest.as_deref().unwrap_or(task);
    match ctx
        .write_task(task, &lifecycle::queued(task, published.attempt, now))
        .await
    {
        Ok(_) => {
            ctx.metrics
                .queued_writes
                .with_label_values(&["written"])
                .inc();
            Ok(())
        }
        Err(err) => {
            // Without the record the next pass publishes the same attempt again (same
            // message id, which consumers deduplicate) rather than wait on a phantom.
            ctx.forget_dispatch(task);
            Err(err.into())
        }
    }
}

async fn publish_phase_event(ctx: &Context, project: &Project, status: &aios_crds::ProjectStatus) {
    let Some(phase) = status.phase else { return };
    let message = lifecycle::condition(&status.conditions, aios_crds::conditions::SUCCEEDED)
        .map(|c| c.message.clone())
        .unwrap_or_default();
    let kind = if phase == ProjectPhase::Failed {
        EventType::Warning
    } else {
        EventType::Normal
    };
    publish_event(ctx, project, kind, &format!("{phase:?}"), &message).await;
}

async fn publish_event(
    ctx: &Context,
    project: &Project,
    kind: EventType,
    reason: &str,
    note: &str,
) {
    ctx.publish_event(&project.object_ref(&()), kind, reason, note)
        .await;
}

/// What to do after a failed reconcile: see [`Context::retry_after`].
#[allow(clippy::needless_pass_by_value)] // the signature kube's controller takes
pub fn error_policy(project: Arc<Project>, error: &Error, ctx: Arc<Context>) -> ControllerAction {
    ControllerAction::requeue(ctx.retry_after(
        "project",
        &crate::runtime::backoff::key(project.as_ref()),
        error,
        Duration::from_secs(5),
    ))
}

#[cfg(test)]
mod tests {
    use aios_crds::TaskPhase;

    use super::*;
    use crate::testing::{task, with_phase};

    fn api_error(code: u16) -> Error {
        Error::Kube(kube::Error::Api(Box::new(
            kube::core::Status::failure("tasks.aios.dev is forbidden", "Forbidden").with_code(code),
        )))
    }

    #[test]
    fn a_refusal_a_person_must_fix_stalls_the_project_until_a_pass_succeeds() {
        assert!(
            actionable(&api_error(409)).is_none(),
            "a conflict passes by itself"
        );
        assert!(actionable(&api_error(500)).is_none());
        assert!(actionable(&Error::NotLeader).is_none());
        let message = actionable(&api_error(403)).unwrap();
        assert!(message.contains("forbidden"), "{message}");

        let project = crate::testing::project("shop");
        let now = crate::testing::ts(0);
        let stalled = stalled_status(&project, &message, now);
        let stalled_condition =
            lifecycle::condition(&stalled.conditions, aios_crds::conditions::STALLED).unwrap();
        assert_eq!(
            (
                stalled_condition.status.as_str(),
                stalled_condition.reason.as_str()
            ),
            ("True", reasons::RECONCILE_FAILED)
        );
        assert_eq!(stalled_condition.message, message);
        // A pass that succeeds computes the health from the phase again.
        let mut recovered = project.clone();
        recovered.status = Some(stalled);
        let work = [task("api", &[])];
        let refs: Vec<&Task> = work.iter().collect();
        let status = crate::project::rollup::project_status(
            &recovered,
            &refs,
            &refs,
            &PlanState::Explicit,
            None,
            now,
        );
        let stalled_condition =
            lifecycle::condition(&status.conditions, aios_crds::conditions::STALLED).unwrap();
        assert_eq!(stalled_condition.status, "False");
    }

    fn waiting(name: &str, message: &str) -> Task {
        let mut t = with_phase(task(name, &[]), TaskPhase::Pending);
        if let Some(status) = t.status.as_mut() {
            status.message = Some(message.to_owned());
        }
        t
    }

    #[test]
    fn a_pending_task_waits_for_what_its_message_says() {
        let role = |role: &str| Wake::Role {
            namespace: "team-a".into(),
            role: role.into(),
        };
        let provider = Wake::Provider {
            namespace: "team-a".into(),
        };
        assert_eq!(
            Wake::awaited_by(&waiting("a", &waiting_for_role("backend"))),
            Some(role("backend"))
        );
        // The message names another role than the Task's: not a wait for that role.
        assert_eq!(
            Wake::awaited_by(&waiting("a", &waiting_for_role("qa"))),
            None
        );
        assert_eq!(
            Wake::awaited_by(&waiting(
                "e",
                &format!("{WAITING_FOR_PROVIDER} that can take a High task")
            )),
            Some(provider)
        );
        let mut elsewhere = waiting("c", &waiting_for_role("backend"));
        elsewhere.metadata.namespace = Some("team-b".into());
        assert_eq!(
            Wake::awaited_by(&elsewhere),
            Some(Wake::Role {
                namespace: "team-b".into(),
                role: "backend".into()
            })
        );
        let mut running = with_phase(task("d", &[]), TaskPhase::Running);
        running.status.as_mut().unwrap().message = Some(waiting_for_role("backend"));
        assert_eq!(Wake::awaited_by(&running), None, "no longer Pending");
        assert_eq!(Wake::awaited_by(&waiting("f", "waiting for api")), None);
        assert_eq!(Wake::awaited_by(&task("g", &[])), None, "no status");
    }
}
