//! Verification: tests, not the model's say-so, decide when work is done.
//!
//! With a Project's `spec.verify`, a task that changed files goes to `Verifying` when its
//! agent reports success; Hera runs the command on the delivered commit in a
//! [`Sandbox`] (a Kubernetes Job on a cluster, [`job`]; a sandboxed process locally,
//! [`local`]; one [`Outcome`] type for both). A pass makes the task `Succeeded`. A
//! failure creates a fix task (`<task>-fix-<n>`) for the same role, carrying the
//! command, the output and the files, while the task (and so its dependents) waits;
//! once the fix is delivered its commit is verified in turn. When `policy.maxFixRounds`
//! run out, the task fails `VerificationFailed` (or `VerificationTimedOut`) with the last
//! output. Once every task succeeded, the branch head is verified the same way
//! (fix tasks `<project>-final-fix-<n>`), and only a pass there makes the Project
//! `Succeeded`.
//!
//! This module is the pure part: what to run, what a result means for the chain of
//! runs and fixes ([`step`]), and the fix tasks ([`fix_task`]).

pub mod job;
pub mod local;
pub mod reconcile;

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use aios_crds::{
    Project, Task, TaskPhase, TaskSpec, TaskStatus, VerificationPhase, VerificationStatus, Verify,
    conditions::{self, reasons},
    limits,
    names::{annotations, labels},
    project::Repository,
    text::{self, Shape},
    verify::OUTPUT_MAX_CHARS,
};
use futures::future::BoxFuture;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::{Resource, ResourceExt};

use crate::{project::plan::sha256_hex, task::lifecycle::set_condition};

/// One verification run: what to check out and what to run, with the limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// Unique per owner and round, usable as an object name: `verify-<hash>`.
    pub id: String,
    /// The namespace of the owner.
    pub namespace: String,
    /// The Task (or the Project, for the final verification) the run belongs to; its
    /// Job is owned by it.
    pub owner: k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
    /// Where the code is.
    pub repository: Repository,
    /// The commit to check out; `None` for the head of the repository's branch.
    pub commit: Option<String>,
    /// The command (`sh -c`), the Project's then the Task's own.
    pub command: String,
    /// Image, timeout, limits, network.
    pub spec: Verify,
}

/// What a finished run found; the same from a Job and from the local sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Passed, Failed, TimedOut or Error.
    pub phase: VerificationPhase,
    /// The command's exit code, when it exited.
    pub exit_code: Option<i32>,
    /// How long the run took.
    pub duration: Duration,
    /// The last lines of the output.
    pub output: String,
    /// The commit checked out, when the checkout got that far.
    pub commit: Option<String>,
    /// Why the run could not decide (`Error`).
    pub message: Option<String>,
}

impl Outcome {
    /// A run that could not decide (`Error`), and why.
    pub fn error(message: impl Into<String>, duration: Duration, commit: Option<String>) -> Self {
        Self {
            phase: VerificationPhase::Error,
            exit_code: None,
            duration,
            output: String::new(),
            commit,
            message: Some(message.into()),
        }
    }
}

/// A sandbox's failure to talk to what runs the command (not the command's failure,
/// which is an [`Outcome`]).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The API server refused or failed a request.
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

/// Where verification runs happen. [`Sandbox::poll`] is idempotent: it starts the run
/// the first time it sees its id (and again after the operator restarted, for a
/// sandbox that keeps nothing outside the process), and returns the outcome once the
/// run finished.
pub trait Sandbox: Send + Sync + std::fmt::Debug {
    /// Starts `run` unless it runs or ran; its outcome once finished.
    fn poll<'a>(&'a self, run: &'a Run) -> BoxFuture<'a, Result<Option<Outcome>, SandboxError>>;
    /// Drops what is kept of `run` (its outcome was recorded).
    fn forget<'a>(&'a self, run: &'a Run) -> BoxFuture<'a, Result<(), SandboxError>>;
}

/// The command a task's verification runs: the Project's, then the Task's own.
pub fn command(verify: &Verify, task: Option<&TaskSpec>) -> String {
    match task.and_then(|t| t.verify.as_ref()) {
        Some(own) => format!("{} && {}", verify.command, own.command),
        None => verify.command.clone(),
    }
}

/// Whether `task`'s reported success must be verified before it counts: the Project
/// has `spec.verify`, the task wrote files, and it is neither the planning task nor a
/// fix task (a fix is verified as part of the task it fixes).
pub fn required(project: Option<&Project>, task: &Task, files_written: bool) -> bool {
    project.is_some_and(|p| p.spec.verify.is_some())
        && files_written
        && !crate::project::dispatch::is_planning_task(task)
        && !is_fix(task)
}

/// Whether `task` is a fix task.
pub fn is_fix(task: &Task) -> bool {
    task.annotations().contains_key(annotations::FIXES)
}

/// The id of round `round` of `owner_uid`'s verification: an object name.
pub fn run_id(owner_uid: &str, round: i32) -> String {
    let hex = sha256_hex(format!("{owner_uid}/{round}").as_bytes());
    format!("verify-{}", &hex[..16])
}

/// The first status of a verification of `commit` (a task's delivered commit; `None`
/// for a branch head).
pub fn start(command: String, commit: Option<String>, now: Timestamp) -> VerificationStatus {
    VerificationStatus {
        phase: VerificationPhase::Running,
        command,
        commit,
        start_time: Some(Time(now)),
        ..VerificationStatus::default()
    }
}

/// Where a fix task is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixState {
    /// Its phase.
    pub phase: TaskPhase,
    /// The commit it delivered, once it succeeded.
    pub commit: Option<String>,
    /// Its status message (why it failed).
    pub message: Option<String>,
}

/// What to do next with a verification chain.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Nothing changed; look again later.
    Wait,
    /// Record this status (a fix was delivered: its commit is verified next).
    Update(VerificationStatus),
    /// Create fix task round `round` (record the status first: it names the task).
    Fix {
        /// The status, naming the fix task.
        status: VerificationStatus,
        /// The fix round, from 1.
        round: i32,
    },
    /// The verification passed.
    Passed(VerificationStatus),
    /// The chain ends in failure.
    Failed {
        /// The status.
        status: VerificationStatus,
        /// `VerificationFailed`, `VerificationTimedOut` or `VerificationError`.
        reason: &'static str,
        /// What failed, ending with the last output.
        message: String,
    },
}

/// The next step of a verification chain whose current status is `current`.
///
/// - A fix in progress: once it succeeded, its commit (`follow_fix`; else the branch
///   head again) is verified next; if it failed, the chain fails.
/// - A run in progress: `outcome` is its result once finished. A pass ends the chain;
///   a failure gets a fix task while rounds remain (`max_rounds`), else ends it; an
///   `Error` ends it at once (no model can fix a checkout that fails).
pub fn step(
    current: &VerificationStatus,
    fix: Option<&FixState>,
    outcome: Option<&Outcome>,
    max_rounds: i32,
    follow_fix: bool,
    now: Timestamp,
) -> Step {
    if let Some(fix_name) = &current.fix_task {
        let Some(fix) = fix else {
            return Step::Wait; // created, not in the cache yet
        };
        return match fix.phase {
            TaskPhase::Succeeded => {
                let commit = if follow_fix { fix.commit.clone() } else { None };
                let mut next = start(current.command.clone(), commit, now);
                next.round = current.round;
                Step::Update(next)
            }
            TaskPhase::Failed | TaskPhase::Skipped | TaskPhase::Cancelled => Step::Failed {
                status: current.clone(),
                reason: reasons::VERIFICATION_FAILED,
                message: format!(
                    "fix task {fix_name} did not succeed ({}); the verification `{}` still fails:\n{}",
                    fix.message.as_deref().unwrap_or("no message"),
                    current.command,
                    current.output.as_deref().unwrap_or_default()
                ),
            },
            _ => Step::Wait,
        };
    }
    let Some(outcome) = outcome else {
        return Step::Wait;
    };
    let mut done = current.clone();
    done.phase = outcome.phase;
    done.exit_code = outcome.exit_code;
    done.duration_ms = Some(i64::try_from(outcome.duration.as_millis()).unwrap_or(i64::MAX));
    // The output is what the delivered code printed: fit it for people to read (see
    // `aios_crds::text`) before it reaches the status, the Events and the fix task.
    done.output = Some(tail(
        &text::sanitize(&outcome.output, Shape::Lines),
        OUTPUT_MAX_CHARS,
    ));
    done.message = outcome
        .message
        .as_deref()
        .map(|m| text::sanitize(m, Shape::Lines));
    if outcome.commit.is_some() {
        done.commit.clone_from(&outcome.commit);
    }
    done.completion_time = Some(Time(now));
    let on = done
        .commit
        .as_deref()
        .map_or(String::new(), |c| format!(" on {}", short(c)));
    match outcome.phase {
        VerificationPhase::Passed | VerificationPhase::Running => Step::Passed(done),
        VerificationPhase::Error => Step::Failed {
            reason: reasons::VERIFICATION_ERROR,
            message: format!(
                "the verification could not run{on}: {}",
                done.message.as_deref().unwrap_or("no reason given")
            ),
            status: done,
        },
        VerificationPhase::Failed | VerificationPhase::TimedOut if current.round < max_rounds => {
            Step::Fix {
                round: current.round + 1,
                status: done,
            }
        }
        VerificationPhase::Failed | VerificationPhase::TimedOut => {
            let (reason, what) = if outcome.phase == VerificationPhase::TimedOut {
                (
                    reasons::VERIFICATION_TIMED_OUT,
                    format!(
                        "was killed at its timeout ({} s)",
                        outcome.duration.as_secs()
                    ),
                )
            } else {
                (
                    reasons::VERIFICATION_FAILED,
                    format!("exited {}", outcome.exit_code.unwrap_or(-1)),
                )
            };
            Step::Failed {
                message: format!(
                    "the verification `{}` {what}{on} after {} fix round(s):\n{}",
                    done.command,
                    current.round,
                    done.output.as_deref().unwrap_or_default()
                ),
                reason,
                status: done,
            }
        }
    }
}

/// A Task's status after step `next` of its verification (`fix`: the fix task made for
/// a [`Step::Fix`]). Nothing changes for [`Step::Wait`].
pub fn record_step(
    status: &mut TaskStatus,
    next: Step,
    fix: Option<String>,
    max_rounds: i32,
    now: Timestamp,
) {
    let finish = |status: &mut TaskStatus, phase, value, reason, message: String| {
        status.phase = Some(phase);
        status.completion_time = Some(Time(now));
        set_condition(
            &mut status.conditions,
            conditions::SUCCEEDED,
            value,
            reason,
            &message,
            now,
        );
        status.message = Some(message);
    };
    match next {
        Step::Wait => {}
        Step::Update(verification) => {
            let delivered = status
                .verification
                .as_ref()
                .and_then(|v| v.fix_task.clone())
                .unwrap_or_default();
            status.message = Some(format!("fix {delivered} delivered; verifying it"));
            status.verification = Some(verification);
        }
        Step::Fix {
            status: mut verification,
            round,
        } => {
            status.message = Some(format!(
                "the verification failed; fix task {} (round {round} of {max_rounds}) is working on it",
                fix.as_deref().unwrap_or_default()
            ));
            verification.round = round;
            verification.fix_task = fix;
            status.verification = Some(verification);
        }
        Step::Passed(verification) => {
            let on = verification
                .commit
                .as_deref()
                .map_or(String::new(), |c| format!(" on {}", short(c)));
            let message = format!(
                "delivered and verified: `{}` passed{on}",
                verification.command
            );
            finish(
                status,
                TaskPhase::Succeeded,
                "True",
                reasons::SUCCEEDED,
                message,
            );
            status.verification = Some(verification);
        }
        Step::Failed {
            status: verification,
            reason,
            message,
        } => {
            finish(status, TaskPhase::Failed, "False", reason, message);
            status.verification = Some(verification);
        }
    }
}

/// The first 12 characters of a commit id.
pub fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

/// The last lines of `text` that fit in `max` characters (cut at a line start where
/// possible).
pub fn tail(text: &str, max: usize) -> String {
    let count = text.chars().count();
    if count <= max {
        return text.to_owned();
    }
    let skip = count - max;
    let cut: String = text.chars().skip(skip).collect();
    match cut.find('\n') {
        Some(i) if i + 1 < cut.len() => cut[i + 1..].to_owned(),
        _ => cut,
    }
}

/// The role whose tasks write tests: a failure of its verification most often catches
/// the code under test, not the tests. Its agents (Athena) also keep every
/// verification's result in their memory ([`note`]).
pub const TEST_ROLE: &str = "qa";

/// The most characters of a run's output a memory note keeps: enough for the failing
/// assertion, small enough to sit among a prompt's memories.
const NOTE_OUTPUT_CHARS: usize = 1500;

/// What [`TEST_ROLE`]'s agents remember of a finished run of `command`: `task`'s (with
/// the files it delivered), or the Project's final verification when `None`. Nothing
/// that changes between two readings of one outcome goes in (no duration, no time):
/// the same outcome noted twice is one memory. `None` for a Project without a uid (not
/// yet stored).
pub fn note(
    project: &Project,
    task: Option<&Task>,
    command: &str,
    outcome: &Outcome,
) -> Option<aios_crds::bus::MemoryNote> {
    let subject = match task {
        Some(task) => format!("task `{}` (role {})", task.name_any(), task.spec.role),
        None => format!("the branch head of project `{}`", project.name_any()),
    };
    let mut text = format!("Verification of {subject}");
    if let Some(commit) = &outcome.commit {
        let _ = write!(text, " on commit {}", short(commit));
    }
    let _ = write!(text, ": {:?}. Command: `{command}`", outcome.phase);
    match (outcome.exit_code, &outcome.message) {
        (Some(code), _) => {
            let _ = write!(text, ", exit code {code}.");
        }
        (None, Some(message)) => {
            let _ = write!(text, ". {message}");
        }
        (None, None) => text.push('.'),
    }
    let files = task.map(delivered_files).unwrap_or_default();
    if !files.is_empty() {
        let _ = write!(text, "\nFiles: {}.", files.join(", "));
    }
    let output = tail(outcome.output.trim_end(), NOTE_OUTPUT_CHARS);
    if !output.is_empty() {
        let _ = write!(text, "\nLast output:\n{output}");
    }
    Some(aios_crds::bus::MemoryNote {
        schema_version: aios_crds::bus::SCHEMA_VERSION,
        project: aios_crds::bus::ObjectRef {
            namespace: project.namespace()?,
            name: project.name_any(),
            uid: project.uid()?,
        },
        task: task.map(ResourceExt::name_any),
        kind: aios_crds::bus::MemoryNote::VERIFICATION.to_owned(),
        text,
    })
}

/// Which task's author fixes a failed verification of `task`: its own, except for a
/// task of [`TEST_ROLE`] with dependencies (tests of code others delivered), where the
/// dependency whose files the failing output names is, else the first dependency.
pub fn fixer<'a>(task: &'a Task, dependencies: &[&'a Task], output: &str) -> &'a Task {
    if task.spec.role != TEST_ROLE || dependencies.is_empty() {
        return task;
    }
    dependencies
        .iter()
        .copied()
        .find(|dep| {
            delivered_files(dep)
                .iter()
                .any(|f| output.contains(f.as_str()))
        })
        .unwrap_or(dependencies[0])
}

/// The files `task` delivered.
pub fn delivered_files(task: &Task) -> Vec<String> {
    task.status
        .as_ref()
        .and_then(|s| s.result.as_ref())
        .map(|r| r.files.clone())
        .unwrap_or_default()
}

/// What a fix task fixes: a Task's delivered work, or the Project's branch head.
#[derive(Debug, Clone, Copy)]
pub enum Fixes<'a> {
    /// A task whose verification failed, and the task whose author fixes it (see
    /// [`fixer`]).
    Task {
        /// The task whose verification failed.
        failed: &'a Task,
        /// Whose role and files the fix gets.
        fixer: &'a Task,
    },
    /// The Project's final verification; the fix goes to `role`.
    Final {
        /// The role that delivered last.
        role: &'a aios_crds::DnsLabel,
    },
}

/// The name of fix round `round` for `owner` (a Task's name, or the Project's for the
/// final verification), within the API server's name limit.
pub fn fix_name(owner: &str, final_check: bool, round: i32) -> String {
    let suffix = if final_check {
        format!("-final-fix-{round}")
    } else {
        format!("-fix-{round}")
    };
    let room = aios_crds::common::OBJECT_NAME_MAX_LEN.saturating_sub(suffix.len());
    if owner.len() <= room {
        return format!("{owner}{suffix}");
    }
    let hex = &sha256_hex(owner.as_bytes())[..8];
    let keep = room.saturating_sub(hex.len() + 1);
    format!("{}-{hex}{suffix}", &owner[..keep])
}

/// Fix task round `round` for what `fixes`: the same role, the failing command and its
/// output, and the files involved, in its description; owned by the Project like every
/// other task.
pub fn fix_task(
    project: &Project,
    fixes: Fixes<'_>,
    status: &VerificationStatus,
    round: i32,
) -> Task {
    let project_name = project.name_any();
    let (owner, role, title, involved, complexity) = match fixes {
        Fixes::Task { failed, fixer } => {
            let mut involved = delivered_files(fixer);
            for file in delivered_files(failed) {
                if !involved.contains(&file) {
                    involved.push(file);
                }
            }
            (
                failed.name_any(),
                fixer.spec.role.clone(),
                format!("Fix: {}", failed.spec.title),
                involved,
                fixer.spec.complexity.max(failed.spec.complexity),
            )
        }
        Fixes::Final { role } => (
            project_name.clone(),
            role.clone(),
            format!("Fix the project's verification ({project_name})"),
            Vec::new(),
            aios_crds::Complexity::Medium,
        ),
    };
    let name = fix_name(&owner, matches!(fixes, Fixes::Final { .. }), round);
    let on = status
        .commit
        .as_deref()
        .map_or(String::new(), |c| format!(" on commit {}", short(c)));
    let exit = match (status.phase, status.exit_code) {
        (VerificationPhase::TimedOut, _) => "ran past its timeout".to_owned(),
        (_, Some(code)) => format!("exited {code}"),
        _ => "failed".to_owned(),
    };
    let mut description = format!(
        "The project's verification command `{}` {exit}{on}. Change the code so that it passes; \
         do not weaken or delete the tests to make it pass.\n\nIts output (last lines):\n```\n{}\n```\n",
        status.command,
        status.output.as_deref().unwrap_or_default().trim_end()
    );
    if !involved.is_empty() {
        let _ = write!(description, "\nFiles involved: {}.\n", involved.join(", "));
    }
    let description: String = description
        .chars()
        .take(limits::DESCRIPTION_MAX_CHARS)
        .collect();
    let title: String = title.chars().take(limits::TITLE_MAX_CHARS).collect();
    Task {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: project.namespace(),
            owner_references: project.controller_owner_ref(&()).map(|o| vec![o]),
            labels: Some(BTreeMap::from([
                (labels::PROJECT.to_owned(), project_name.clone()),
                (labels::ROLE.to_owned(), role.to_string()),
                (
                    labels::MANAGED_BY.to_owned(),
                    labels::MANAGED_BY_VALUE.to_owned(),
                ),
            ])),
            annotations: Some(BTreeMap::from([(annotations::FIXES.to_owned(), owner)])),
            ..ObjectMeta::default()
        },
        spec: TaskSpec {
            project: project_name,
            title,
            description,
            role,
            depends_on: Vec::new(),
            complexity,
            acceptance_criteria: vec![format!("`{}` exits 0", status.command)],
            max_retries: None,
            timeout_seconds: None,
            priority: 1,
            model: None,
            verify: None,
        },
        status: None,
    }
}

/// The fix task's state, from the tasks Hera sees.
pub fn fix_state(task: &Task) -> FixState {
    let status = task.status.as_ref();
    FixState {
        phase: crate::task::lifecycle::phase(task),
        commit: status
            .and_then(|s| s.result.as_ref())
            .and_then(|r| r.commit.clone()),
        message: status.and_then(|s| s.message.clone()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
