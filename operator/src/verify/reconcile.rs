//! Hera's side of verification: each pass advances the chain of every `Verifying` task
//! and, once every task succeeded, the Project's final verification of its branch head.
//! The decisions are [`super::step`]'s; this module polls the sandbox and writes.

use aios_crds::{Project, Task, TaskPhase, VerificationStatus, Verify};
use futures::future::join_all;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};

use super::{Fixes, Outcome, Run, SandboxError, Step, fix_state, fix_task, run_id, start, step};
use crate::{
    Error,
    project::apply_task,
    runtime::context::{Context, write_task_status},
    task::lifecycle::{ByName, phase},
};

impl From<SandboxError> for Error {
    fn from(e: SandboxError) -> Self {
        match e {
            SandboxError::Kube(e) => Self::Kube(e),
        }
    }
}

fn owner_ref<K: Resource<DynamicType = ()>>(object: &K) -> Option<OwnerReference> {
    let mut owner = object.controller_owner_ref(&())?;
    // The run belongs to it, but does not block its deletion.
    owner.controller = Some(false);
    owner.block_owner_deletion = None;
    Some(owner)
}

fn run_for<K: Resource<DynamicType = ()>>(
    project: &Project,
    verify: &Verify,
    owner: &K,
    current: &VerificationStatus,
) -> Option<Run> {
    Some(Run {
        id: run_id(owner.meta().uid.as_deref()?, current.round),
        namespace: project.namespace()?,
        owner: owner_ref(owner)?,
        repository: project.spec.repository.clone(),
        commit: current.commit.clone(),
        command: current.command.clone(),
        spec: verify.clone(),
    })
}

fn record(ctx: &Context, kind: &str, outcome: &Outcome) {
    let label = format!("{:?}", outcome.phase);
    ctx.metrics
        .verifications
        .with_label_values(&[kind, &label])
        .inc();
    ctx.metrics
        .verification_duration
        .with_label_values(&[kind, &label])
        .observe(outcome.duration.as_secs_f64());
}

/// Notes a finished run in the memory of [`super::TEST_ROLE`]'s agents, before its
/// status is written: a crash in between notes it again, and the same note is one
/// memory.
async fn remember(
    ctx: &Context,
    project: &Project,
    task: Option<&Task>,
    current: &VerificationStatus,
    outcome: &Outcome,
) -> Result<(), Error> {
    if let Some(note) = super::note(project, task, &current.command, outcome) {
        ctx.bus.publish_note(super::TEST_ROLE, &note).await?;
    }
    Ok(())
}

/// Polls the sandbox for `current`'s run when one is due (no fix in progress).
async fn poll(
    ctx: &Context,
    run: Option<&Run>,
    current: &VerificationStatus,
) -> Result<Option<Outcome>, Error> {
    match run {
        Some(run) if current.fix_task.is_none() && !current.phase.is_done() => {
            Ok(ctx.sandbox.poll(run).await?)
        }
        _ => Ok(None),
    }
}

/// Advances the verification of every `Verifying` task of `work`. Returns whether a
/// run is in progress (look again soon).
pub async fn advance_tasks(
    project: &Project,
    ctx: &Context,
    work: &[&Task],
    by_name: &ByName<'_>,
    now: Timestamp,
) -> Result<bool, Error> {
    let Some(verify) = &project.spec.verify else {
        return Ok(false);
    };
    let verifying: Vec<&Task> = work
        .iter()
        .copied()
        .filter(|t| phase(t) == TaskPhase::Verifying)
        .collect();
    let results = join_all(
        verifying
            .iter()
            .map(|task| advance_task(project, verify, ctx, task, by_name, now)),
    )
    .await;
    let mut waiting = false;
    for result in results {
        waiting |= result?;
    }
    Ok(waiting)
}

async fn advance_task(
    project: &Project,
    verify: &Verify,
    ctx: &Context,
    task: &Task,
    by_name: &ByName<'_>,
    now: Timestamp,
) -> Result<bool, Error> {
    let Some(current) = task.status.as_ref().and_then(|s| s.verification.clone()) else {
        return Ok(false);
    };
    let fix = current
        .fix_task
        .as_ref()
        .and_then(|name| by_name.get(name.as_str()))
        .map(fix_state);
    let run = run_for(project, verify, task, &current);
    let outcome = poll(ctx, run.as_ref(), &current).await?;
    if let Some(outcome) = &outcome {
        record(ctx, "task", outcome);
        remember(ctx, project, Some(task), &current, outcome).await?;
    }
    let api = ctx.task_api(&task.namespace().unwrap_or_default());
    let mut status = task.status.clone().unwrap_or_default();
    let max = project.spec.policy.max_fix_rounds;
    let next = step(&current, fix.as_ref(), outcome.as_ref(), max, true, now);
    let done = matches!(
        next,
        Step::Passed(_) | Step::Failed { .. } | Step::Fix { .. }
    );
    let fix = match &next {
        Step::Wait => return Ok(current.fix_task.is_none()),
        Step::Fix {
            status: verification,
            round,
        } => {
            let dependencies: Vec<&Task> = task
                .spec
                .depends_on
                .iter()
                .filter_map(|d| by_name.get(d.as_str()))
                .collect();
            let output = verification.output.clone().unwrap_or_default();
            let fixer = super::fixer(task, &dependencies, &output);
            let fix = fix_task(
                project,
                Fixes::Task {
                    failed: task,
                    fixer,
                },
                verification,
                *round,
            );
            // The fix exists before the status names it: a crash in between makes the
            // same fix again (same name), never a status naming no task.
            apply_task(ctx, &fix).await?;
            Some(fix.name_any())
        }
        _ => None,
    };
    super::record_step(&mut status, next, fix, max, now);
    write_task_status(&api, task, &status).await?;
    if done && let Some(run) = &run {
        ctx.sandbox.forget(run).await?;
    }
    Ok(false)
}

/// The role that delivered last among `work`: the final verification's fixes go to it.
fn last_role<'a>(work: &[&'a Task]) -> Option<&'a aios_crds::DnsLabel> {
    work.iter()
        .filter(|t| !super::delivered_files(t).is_empty())
        .max_by_key(|t| {
            t.status
                .as_ref()
                .and_then(|s| s.completion_time.clone())
                .map(|t| t.0)
        })
        .map(|t| &t.spec.role)
}

/// Advances the Project's final verification, due once every task of `work` succeeded.
/// Returns the verification to record in the Project's status (the previous one when
/// nothing moved, `None` without `spec.verify`), and whether a run is in progress.
pub async fn advance_final(
    project: &Project,
    ctx: &Context,
    work: &[&Task],
    by_name: &ByName<'_>,
    now: Timestamp,
) -> Result<(Option<VerificationStatus>, bool), Error> {
    let Some(verify) = &project.spec.verify else {
        return Ok((None, false));
    };
    let previous = project.status.as_ref().and_then(|s| s.verification.clone());
    let all_done = !work.is_empty() && work.iter().all(|t| phase(t) == TaskPhase::Succeeded);
    let fix_in_progress = previous.as_ref().is_some_and(|v| v.fix_task.is_some());
    if !all_done && !fix_in_progress {
        return Ok((previous, false));
    }
    let current = match previous {
        Some(current) => current,
        None => start(super::command(verify, None), None, now),
    };
    if current.phase.is_done() && current.fix_task.is_none() {
        return Ok((Some(current), false)); // decided: rollup reads it
    }
    let fix = current
        .fix_task
        .as_ref()
        .and_then(|name| by_name.get(name.as_str()))
        .map(fix_state);
    let run = run_for(project, verify, project, &current);
    let outcome = poll(ctx, run.as_ref(), &current).await?;
    if let Some(outcome) = &outcome {
        record(ctx, "project", outcome);
        remember(ctx, project, None, &current, outcome).await?;
    }
    let max = project.spec.policy.max_fix_rounds;
    let next = step(&current, fix.as_ref(), outcome.as_ref(), max, false, now);
    let (status, waiting) = match next {
        Step::Wait => (current.clone(), current.fix_task.is_none()),
        Step::Update(status) => (status, true),
        Step::Fix { mut status, round } => {
            let Some(role) = last_role(work) else {
                // Nothing delivered files, yet the branch fails: no role to fix it.
                return Ok((Some(status), false));
            };
            let fix = fix_task(project, Fixes::Final { role }, &status, round);
            apply_task(ctx, &fix).await?;
            status.round = round;
            status.fix_task = Some(fix.name_any());
            (status, false)
        }
        Step::Passed(status) | Step::Failed { status, .. } => (status, false),
    };
    if status.phase.is_done()
        && status.fix_task.is_none()
        && let Some(run) = &run
    {
        ctx.sandbox.forget(run).await?;
    }
    Ok((Some(status), waiting))
}
