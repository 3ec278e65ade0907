//! A Project's status, rolled up from its Tasks: phase, progress, counts, usage and
//! conditions. Pure: the reconciler writes the result only when it differs.

use aios_crds::{
    Project, ProjectPhase, ProjectStatus, Task, TaskPhase, Usage, VerificationPhase,
    VerificationStatus,
    conditions::{self, reasons},
    project::TaskCounts,
};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use crate::{
    kstatus::{self, set_health},
    task::lifecycle::{condition, phase, set_condition},
};

/// Where the Project's plan stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanState {
    /// `spec.tasks` is the plan.
    Explicit,
    /// The planning task has not produced a valid plan yet.
    Planning,
    /// The latest plan was refused and a new one was asked for.
    Replanning {
        /// What was wrong.
        message: String,
    },
    /// Plans were refused until no retries were left.
    Invalid {
        /// What was wrong with the last one.
        message: String,
    },
    /// The planning task's plan was accepted and its Tasks exist.
    Planned {
        /// The dependencies Hera dropped from it (naming no other task of the plan), if
        /// any.
        dropped: Option<String>,
    },
    /// The planning task failed for good without a plan to judge (the model's answer
    /// was unusable, its result could not be recorded, ...).
    PlanningFailed {
        /// The planning task's message.
        message: String,
    },
}

/// Whether the Project's model budget is spent.
pub fn budget_exceeded(project: &Project, usage: &Usage) -> bool {
    let Some(budget) = &project.spec.models.budget else {
        return false;
    };
    budget
        .tokens
        .is_some_and(|limit| usage.total_tokens() >= limit)
        || budget.usd.is_some_and(|limit| usage.cost_usd >= limit)
}

/// The summed usage of `tasks` (every task of the Project, the planning task included).
pub fn total_usage<'a>(tasks: impl IntoIterator<Item = &'a Task>) -> Usage {
    let mut total = Usage::default();
    for task in tasks {
        if let Some(usage) = task.status.as_ref().and_then(|s| s.usage.as_ref()) {
            total.accumulate(usage);
        }
    }
    total.provider = None;
    total.model = None;
    total.tier = None;
    total
}

/// How many of `tasks` are in each phase, counted from scratch (the pass keeps these
/// counts as the watch changes them: [`crate::runtime::index::TaskIndex::project`]).
pub fn count(tasks: &[&Task]) -> TaskCounts {
    let mut counts = TaskCounts::default();
    for task in tasks {
        counts.add(phase(task), 1);
    }
    counts
}

/// The Project's status. `work` are its tasks without the planning task (or just the
/// planning task while planning); `all` are every task, for usage.
pub fn project_status(
    project: &Project,
    work: &[&Task],
    all: &[&Task],
    plan: &PlanState,
    verification: Option<&VerificationStatus>,
    now: Timestamp,
) -> ProjectStatus {
    let usage = total_usage(all.iter().copied());
    project_status_counted(project, &count(work), work, usage, plan, verification, now)
}

/// [`project_status`], with `work`'s counts by phase already kept (the pass's come from
/// the index, which keeps them as the watch changes Tasks) and the usage of every task
/// summed (once a pass: the pass checks the budget with it too).
pub fn project_status_counted(
    project: &Project,
    work_counts: &TaskCounts,
    work: &[&Task],
    usage: Usage,
    plan: &PlanState,
    verification: Option<&VerificationStatus>,
    now: Timestamp,
) -> ProjectStatus {
    let previous = project.status.clone().unwrap_or_default();
    let planning = matches!(plan, PlanState::Planning | PlanState::Replanning { .. });
    let counts = if planning {
        TaskCounts::default()
    } else {
        work_counts.clone()
    };
    let (phase, reason, message) = decide_phase(project, work, work_counts, plan, verification);

    let mut conditions = previous.conditions.clone();
    let succeeded = match phase {
        ProjectPhase::Succeeded => "True",
        ProjectPhase::Failed => "False",
        _ => "Unknown",
    };
    set_condition(
        &mut conditions,
        conditions::SUCCEEDED,
        succeeded,
        reason,
        &message,
        now,
    );
    set_plan_conditions(&mut conditions, plan, now);
    set_verified_condition(&mut conditions, project, phase, verification, now);
    let spent = budget_exceeded(project, &usage);
    if spent {
        set_condition(
            &mut conditions,
            conditions::BUDGET_EXCEEDED,
            "True",
            reasons::BUDGET_EXCEEDED,
            "the model budget is spent: no new dispatches",
            now,
        );
    } else if conditions
        .iter()
        .any(|c| c.type_ == conditions::BUDGET_EXCEEDED)
    {
        set_condition(
            &mut conditions,
            conditions::BUDGET_EXCEEDED,
            "False",
            "WithinBudget",
            "usage is within the budget",
            now,
        );
    }

    let progress = format!("{}/{}", counts.succeeded, counts.total);
    let health = kstatus::project(phase, &conditions, spent, &progress);
    set_health(&mut conditions, &health, project.metadata.generation, now);

    let started = phase != ProjectPhase::Pending;
    ProjectStatus {
        phase: Some(phase),
        progress: Some(progress),
        local_ratio: usage.local_ratio(),
        tasks: counts,
        usage,
        plan_attempts: previous.plan_attempts,
        verification: verification.cloned(),
        conditions,
        observed_generation: project.metadata.generation,
        start_time: previous.start_time.or_else(|| started.then_some(Time(now))),
        completion_time: if phase.is_terminal() {
            previous.completion_time.or(Some(Time(now)))
        } else {
            None
        },
    }
}

/// The phase, with the `Succeeded` condition's reason and message.
fn decide_phase(
    project: &Project,
    work: &[&Task],
    counts: &TaskCounts,
    plan: &PlanState,
    verification: Option<&VerificationStatus>,
) -> (ProjectPhase, &'static str, String) {
    let planning = matches!(plan, PlanState::Planning | PlanState::Replanning { .. });
    // From the counts: a sweep over 10,000 Tasks reads each of them.
    let in_flight = counts.in_flight();
    let all_done = counts.terminal() == counts.total;
    let fail_fast = project.spec.policy.fail_fast;
    let first_failed = (counts.failed > 0)
        .then(|| work.iter().find(|t| phase(t) == TaskPhase::Failed))
        .flatten();
    if let PlanState::Invalid { message } = plan {
        (ProjectPhase::Failed, reasons::PLAN_INVALID, message.clone())
    } else if let Some(failed) =
        first_failed.filter(|_| if fail_fast { in_flight == 0 } else { all_done })
    {
        let detail = failed
            .status
            .as_ref()
            .and_then(|s| s.message.clone())
            .unwrap_or_default();
        // A verification that failed for good is the Project's reason too.
        let reason = condition(
            failed.status.as_ref().map_or(&[][..], |s| &s.conditions),
            conditions::SUCCEEDED,
        )
        .map(|c| c.reason.as_str())
        .and_then(|r| VERIFICATION_REASONS.iter().find(|v| **v == r))
        .copied()
        .unwrap_or(reasons::TASK_FAILED);
        (
            ProjectPhase::Failed,
            reason,
            format!("task {} failed: {detail}", failed.name_any()),
        )
    } else if !planning && counts.total > 0 && counts.succeeded == counts.total {
        final_verdict(project, counts, verification)
    } else if project.spec.suspend {
        (
            ProjectPhase::Suspended,
            "Suspended",
            "spec.suspend is true: no new dispatches".to_owned(),
        )
    } else if planning {
        (
            ProjectPhase::Planning,
            "Planning",
            "Hera is planning the project".to_owned(),
        )
    } else if work
        .iter()
        .any(|t| t.status.as_ref().is_some_and(|s| s.attempt > 0))
    {
        (
            ProjectPhase::Running,
            reasons::RUNNING,
            format!("{} of {} tasks succeeded", counts.succeeded, counts.total),
        )
    } else {
        (
            ProjectPhase::Pending,
            reasons::PENDING,
            "waiting to dispatch the first task".to_owned(),
        )
    }
}

/// The reasons a verification fails with.
const VERIFICATION_REASONS: [&str; 3] = [
    reasons::VERIFICATION_FAILED,
    reasons::VERIFICATION_TIMED_OUT,
    reasons::VERIFICATION_ERROR,
];

/// The phase once every task succeeded: without `spec.verify`, Succeeded (unverified,
/// which the `Verified` condition says); with it, what the branch head's verification
/// came to.
fn final_verdict(
    project: &Project,
    counts: &TaskCounts,
    verification: Option<&VerificationStatus>,
) -> (ProjectPhase, &'static str, String) {
    let all = counts.total;
    let Some(verify) = &project.spec.verify else {
        return (
            ProjectPhase::Succeeded,
            reasons::SUCCEEDED,
            format!("all {all} tasks succeeded (not verified: the Project has no spec.verify)"),
        );
    };
    let on = |v: &VerificationStatus| {
        v.commit.as_deref().map_or(String::new(), |c| {
            format!(" on {}", crate::verify::short(c))
        })
    };
    match verification {
        Some(v) if v.phase == VerificationPhase::Passed => (
            ProjectPhase::Succeeded,
            reasons::SUCCEEDED,
            format!(
                "all {all} tasks succeeded, and `{}` passed{}",
                v.command,
                on(v)
            ),
        ),
        Some(v) if v.phase.is_done() && v.fix_task.is_none() => {
            let reason = match v.phase {
                VerificationPhase::TimedOut => reasons::VERIFICATION_TIMED_OUT,
                VerificationPhase::Error => reasons::VERIFICATION_ERROR,
                _ => reasons::VERIFICATION_FAILED,
            };
            let what = v.message.clone().unwrap_or_else(|| match v.exit_code {
                Some(code) => format!("exited {code}"),
                None => "did not finish".to_owned(),
            });
            (
                ProjectPhase::Failed,
                reason,
                format!(
                    "the verification `{}` of the branch head{} {what} after {} fix round(s):\n{}",
                    v.command,
                    on(v),
                    v.round,
                    v.output.as_deref().unwrap_or_default()
                ),
            )
        }
        Some(v) if v.fix_task.is_some() => (
            ProjectPhase::Running,
            reasons::VERIFYING,
            format!(
                "the branch head failed `{}`; fix task {} is working on it",
                v.command,
                v.fix_task.as_deref().unwrap_or_default()
            ),
        ),
        _ => (
            ProjectPhase::Running,
            reasons::VERIFYING,
            format!(
                "all {all} tasks succeeded; verifying the branch head with `{}`",
                verify.command
            ),
        ),
    }
}

/// `Verified`: True once the branch head passed; False without `spec.verify` or when the
/// verification failed for good; Unknown while it runs.
fn set_verified_condition(
    conditions: &mut Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    project: &Project,
    phase: ProjectPhase,
    verification: Option<&VerificationStatus>,
    now: Timestamp,
) {
    let (value, reason, message) = match (&project.spec.verify, verification) {
        (None, _) => (
            "False",
            reasons::NOT_VERIFIED,
            "the Project has no spec.verify: its work is not checked".to_owned(),
        ),
        (Some(_), Some(v)) if v.phase == VerificationPhase::Passed => (
            "True",
            reasons::VERIFIED,
            format!(
                "`{}` passed on {}",
                v.command,
                v.commit.as_deref().unwrap_or("the branch head")
            ),
        ),
        (Some(_), Some(v)) if phase == ProjectPhase::Failed && v.phase.is_done() => (
            "False",
            reasons::VERIFICATION_FAILED,
            "the branch head did not pass its verification".to_owned(),
        ),
        (Some(_), _) if phase == ProjectPhase::Failed => (
            "False",
            reasons::NOT_VERIFIED,
            "the Project failed before its branch head was verified".to_owned(),
        ),
        (Some(verify), _) => (
            "Unknown",
            reasons::VERIFYING,
            format!("`{}` has not passed on the branch head yet", verify.command),
        ),
    };
    set_condition(
        conditions,
        conditions::VERIFIED,
        value,
        reason,
        &message,
        now,
    );
}

fn set_plan_conditions(
    conditions: &mut Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    plan: &PlanState,
    now: Timestamp,
) {
    match plan {
        PlanState::Explicit | PlanState::Planned { .. } => {
            let (reason, how) = match plan {
                PlanState::Planned {
                    dropped: Some(dropped),
                } => (
                    reasons::DEPENDENCIES_DROPPED,
                    format!(
                        "Hera's plan was accepted without its dependencies that name no \
                         other task of it: {dropped}"
                    ),
                ),
                PlanState::Planned { dropped: None } => {
                    ("Planned", "Hera's plan was accepted".to_owned())
                }
                _ => ("Planned", "spec.tasks is the plan".to_owned()),
            };
            set_condition(conditions, conditions::PLANNED, "True", reason, &how, now);
            if conditions
                .iter()
                .any(|c| c.type_ == conditions::PLAN_INVALID)
            {
                set_condition(
                    conditions,
                    conditions::PLAN_INVALID,
                    "False",
                    "PlanValid",
                    "the latest plan is valid",
                    now,
                );
            }
        }
        PlanState::Planning => {
            set_condition(
                conditions,
                conditions::PLANNED,
                "False",
                "Planning",
                "the planning task has not finished",
                now,
            );
        }
        PlanState::PlanningFailed { message } => {
            set_condition(
                conditions,
                conditions::PLANNED,
                "False",
                reasons::PLANNING_FAILED,
                &format!("the planning task failed: {message}"),
                now,
            );
        }
        PlanState::Replanning { message } | PlanState::Invalid { message } => {
            set_condition(
                conditions,
                conditions::PLANNED,
                "False",
                reasons::PLAN_INVALID,
                message,
                now,
            );
            set_condition(
                conditions,
                conditions::PLAN_INVALID,
                "True",
                reasons::PLAN_INVALID,
                message,
                now,
            );
        }
    }
}

/// The problems of a plan refused since `previous`: the `Planned` condition turned to
/// reason `PlanInvalid` or names other problems. Each refusal passes through `Planning`
/// (the next attempt is dispatched in between), so a plan refused again for the same
/// problems is reported again.
pub fn refused_plan<'a>(previous: &ProjectStatus, status: &'a ProjectStatus) -> Option<&'a str> {
    let now = refused_problems(status)?;
    (refused_problems(previous) != Some(now)).then_some(now)
}

fn refused_problems(status: &ProjectStatus) -> Option<&str> {
    condition(&status.conditions, conditions::PLANNED)
        .filter(|c| c.reason == reasons::PLAN_INVALID)
        .map(|c| c.message.as_str())
}

/// Whether two statuses differ in more than timestamps (so a write can be skipped).
pub fn differs(a: &ProjectStatus, b: &ProjectStatus) -> bool {
    let strip = |s: &ProjectStatus| {
        let mut s = s.clone();
        for c in &mut s.conditions {
            c.last_transition_time = Time(Timestamp::UNIX_EPOCH);
        }
        s
    };
    strip(a) != strip(b)
}

#[cfg(test)]
mod tests {
    use aios_crds::{
        TaskPhase::{Failed, Pending, Running, Skipped, Succeeded},
        project::Budget,
    };

    use super::*;
    use crate::testing::{project, task, ts, with_phase};

    fn status_of(p: &Project, tasks: &[Task], plan: &PlanState) -> ProjectStatus {
        let refs: Vec<&Task> = tasks.iter().collect();
        project_status(p, &refs, &refs, plan, None, ts(100))
    }

    #[test]
    fn all_succeeded_is_succeeded_with_progress() {
        let p = project("shop");
        let tasks = [
            with_phase(task("a", &[]), Succeeded),
            with_phase(task("b", &["a"]), Succeeded),
        ];
        let s = status_of(&p, &tasks, &PlanState::Explicit);
        assert_eq!(s.phase, Some(ProjectPhase::Succeeded));
        assert_eq!(s.progress.as_deref(), Some("2/2"));
        let c = condition(&s.conditions, "Succeeded").unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "Succeeded")
        );
        assert!(s.completion_time.is_some());
        assert_eq!(s.observed_generation, Some(1));
    }

    #[test]
    fn with_verify_the_project_succeeds_only_once_the_branch_head_passed() {
        use aios_crds::{VerificationPhase, VerificationStatus};
        let mut p = project("shop");
        p.spec.verify =
            Some(serde_json::from_value(serde_json::json!({"command": "pytest -q"})).unwrap());
        let tasks = [with_phase(task("a", &[]), Succeeded)];
        let refs: Vec<&Task> = tasks.iter().collect();
        let at = |v: Option<&VerificationStatus>| {
            project_status(&p, &refs, &refs, &PlanState::Explicit, v, ts(9))
        };
        let verified = |s: &ProjectStatus| {
            condition(&s.conditions, "Verified").map(|c| (c.status.clone(), c.reason.clone()))
        };
        let running = at(None);
        assert_eq!(
            running.phase,
            Some(ProjectPhase::Running),
            "all tasks done, the head not verified"
        );
        assert_eq!(
            verified(&running),
            Some(("Unknown".into(), "Verifying".into()))
        );
        let mut check = VerificationStatus {
            phase: VerificationPhase::Passed,
            command: "pytest -q".into(),
            commit: Some("abc".into()),
            ..VerificationStatus::default()
        };
        let passed = at(Some(&check));
        assert_eq!(passed.phase, Some(ProjectPhase::Succeeded));
        assert_eq!(
            passed.verification.as_ref(),
            Some(&check),
            "the verified commit and command"
        );
        assert_eq!(verified(&passed), Some(("True".into(), "Verified".into())));
        check.phase = VerificationPhase::Failed;
        check.output = Some("1 failed".into());
        check.fix_task = Some("shop-final-fix-1".into());
        assert_eq!(
            at(Some(&check)).phase,
            Some(ProjectPhase::Running),
            "a fix is on it"
        );
        check.fix_task = None;
        let failed = at(Some(&check));
        assert_eq!(failed.phase, Some(ProjectPhase::Failed));
        let c = condition(&failed.conditions, "Succeeded").unwrap();
        assert_eq!(c.reason, "VerificationFailed");
        assert!(c.message.ends_with("1 failed"), "{}", c.message);

        let unverified = status_of(&project("shop"), &tasks, &PlanState::Explicit);
        assert_eq!(unverified.phase, Some(ProjectPhase::Succeeded));
        assert_eq!(
            verified(&unverified),
            Some(("False".into(), "NotVerified".into()))
        );
    }

    #[test]
    fn a_task_that_failed_its_verification_fails_the_project_with_that_reason() {
        let mut failed = with_phase(task("a", &[]), Failed);
        let status = failed.status.as_mut().unwrap();
        crate::task::lifecycle::set_condition(
            &mut status.conditions,
            "Succeeded",
            "False",
            "VerificationTimedOut",
            "killed",
            ts(1),
        );
        let s = status_of(&project("shop"), &[failed], &PlanState::Explicit);
        assert_eq!(
            condition(&s.conditions, "Succeeded").unwrap().reason,
            "VerificationTimedOut"
        );
    }

    #[test]
    fn running_counts_and_progress() {
        let p = project("shop");
        let tasks = [
            with_phase(task("a", &[]), Succeeded),
            with_phase(task("b", &["a"]), Running),
            with_phase(task("c", &["b"]), Pending),
        ];
        let s = status_of(&p, &tasks, &PlanState::Explicit);
        assert_eq!(s.phase, Some(ProjectPhase::Running));
        assert_eq!(s.progress.as_deref(), Some("1/3"));
        assert_eq!(
            (
                s.tasks.succeeded,
                s.tasks.running,
                s.tasks.pending,
                s.tasks.total
            ),
            (1, 1, 1, 3)
        );
        assert_eq!(
            condition(&s.conditions, "Succeeded").unwrap().status,
            "Unknown"
        );
        assert!(s.completion_time.is_none());
    }

    #[test]
    fn fail_fast_fails_only_when_nothing_is_in_flight() {
        let p = project("shop");
        let tasks = [
            with_phase(task("a", &[]), Failed),
            with_phase(task("b", &[]), Running),
        ];
        assert_eq!(
            status_of(&p, &tasks, &PlanState::Explicit).phase,
            Some(ProjectPhase::Running)
        );
        let tasks = [
            with_phase(task("a", &[]), Failed),
            with_phase(task("b", &[]), Succeeded),
        ];
        let s = status_of(&p, &tasks, &PlanState::Explicit);
        assert_eq!(s.phase, Some(ProjectPhase::Failed));
        assert_eq!(
            condition(&s.conditions, "Succeeded").unwrap().reason,
            "TaskFailed"
        );
    }

    #[test]
    fn without_fail_fast_the_project_fails_when_everything_is_done() {
        let mut p = project("shop");
        p.spec.policy.fail_fast = false;
        let tasks = [
            with_phase(task("a", &[]), Failed),
            with_phase(task("b", &[]), Pending),
        ];
        assert_eq!(
            status_of(&p, &tasks, &PlanState::Explicit).phase,
            Some(ProjectPhase::Running)
        );
        let tasks = [
            with_phase(task("a", &[]), Failed),
            with_phase(task("b", &["a"]), Skipped),
            with_phase(task("c", &[]), Succeeded),
        ];
        assert_eq!(
            status_of(&p, &tasks, &PlanState::Explicit).phase,
            Some(ProjectPhase::Failed)
        );
    }

    #[test]
    fn planning_states_set_the_plan_conditions() {
        let p = project("shop");
        let planner = [with_phase(task("shop-plan", &[]), Running)];
        let s = status_of(&p, &planner, &PlanState::Planning);
        assert_eq!(s.phase, Some(ProjectPhase::Planning));
        assert_eq!(condition(&s.conditions, "Planned").unwrap().status, "False");
        let s = status_of(
            &p,
            &planner,
            &PlanState::Replanning {
                message: "cycle".into(),
            },
        );
        assert_eq!(
            condition(&s.conditions, "PlanInvalid").unwrap().message,
            "cycle"
        );
        let s = status_of(
            &p,
            &planner,
            &PlanState::Invalid {
                message: "cycle".into(),
            },
        );
        assert_eq!(s.phase, Some(ProjectPhase::Failed));
        assert_eq!(
            condition(&s.conditions, "Succeeded").unwrap().reason,
            "PlanInvalid"
        );
    }

    #[test]
    fn usage_is_summed_and_the_budget_checked() {
        let mut p = project("shop");
        p.spec.models.budget = Some(Budget {
            tokens: Some(100),
            usd: None,
        });
        let mut a = with_phase(task("a", &[]), Succeeded);
        a.status.as_mut().unwrap().usage = Some(Usage {
            input_tokens: 60,
            output_tokens: 10,
            local_requests: 3,
            ..Usage::default()
        });
        let mut b = with_phase(task("b", &[]), Succeeded);
        b.status.as_mut().unwrap().usage = Some(Usage {
            input_tokens: 30,
            output_tokens: 5,
            cloud_requests: 1,
            cost_usd: 0.5,
            ..Usage::default()
        });
        let s = status_of(&p, &[a, b], &PlanState::Explicit);
        assert_eq!(s.usage.total_tokens(), 105);
        assert_eq!(s.local_ratio, Some(0.75));
        assert!(budget_exceeded(&p, &s.usage));
        assert_eq!(
            condition(&s.conditions, "BudgetExceeded").unwrap().status,
            "True"
        );
    }

    #[test]
    fn only_timestamps_changing_is_not_a_difference() {
        let p = project("shop");
        let tasks = [with_phase(task("a", &[]), Running)];
        let refs: Vec<&Task> = tasks.iter().collect();
        let a = project_status(&p, &refs, &refs, &PlanState::Explicit, None, ts(1));
        let b = project_status(&p, &refs, &refs, &PlanState::Explicit, None, ts(2));
        assert!(
            differs(&a, &b),
            "start time is set from now on the first pass"
        );
        let mut with_prev = p.clone();
        with_prev.status = Some(a.clone());
        let c = project_status(&with_prev, &refs, &refs, &PlanState::Explicit, None, ts(3));
        assert!(!differs(&a, &c));
    }

    #[test]
    fn a_planning_task_that_failed_without_a_plan_leaves_no_condition_stale() {
        let p = project("shop");
        let mut planner = with_phase(task("shop-plan", &[]), Failed);
        planner.status.as_mut().unwrap().message =
            Some("attempt 3 failed (InvalidOutput) and no retries are left: not JSON".into());
        let s = status_of(
            &p,
            &[planner],
            &PlanState::PlanningFailed {
                message: "attempt 3 failed (InvalidOutput) and no retries are left: not JSON"
                    .into(),
            },
        );
        assert_eq!(s.phase, Some(ProjectPhase::Failed));
        let plan_condition = condition(&s.conditions, "Planned").unwrap();
        assert_eq!(
            (
                plan_condition.status.as_str(),
                plan_condition.reason.as_str()
            ),
            ("False", "PlanningFailed")
        );
        assert!(
            plan_condition.message.contains("not JSON"),
            "{}",
            plan_condition.message
        );
        assert_eq!(
            condition(&s.conditions, "Succeeded").unwrap().reason,
            "TaskFailed"
        );
    }

    #[test]
    fn each_refusal_of_a_plan_is_reported_once() {
        let mut p = project("shop");
        let planner = [with_phase(task("shop-plan", &[]), Pending)];
        let cycle = PlanState::Replanning {
            message: "tasks a -> b -> a depend on each other in a cycle".into(),
        };
        let planning = status_of(&p, &planner, &PlanState::Planning);
        p.status = Some(planning.clone());
        let refused = status_of(&p, &planner, &cycle);
        assert_eq!(
            refused_plan(&planning, &refused),
            Some("tasks a -> b -> a depend on each other in a cycle")
        );
        p.status = Some(refused.clone());
        let again = status_of(&p, &planner, &cycle);
        assert_eq!(refused_plan(&refused, &again), None, "the same pass again");
        p.status = Some(again.clone());
        let replanning = status_of(&p, &planner, &PlanState::Planning);
        p.status = Some(replanning.clone());
        let refused_again = status_of(&p, &planner, &cycle);
        assert!(
            refused_plan(&replanning, &refused_again).is_some(),
            "the next attempt refused for the same problems"
        );
    }

    #[test]
    fn the_dependencies_hera_dropped_are_named_in_planned() {
        let p = project("shop");
        let work = [with_phase(task("shop-test", &[]), Running)];
        let dropped = "task \"test\" depends on \"backend\", which is not in the plan";
        let s = status_of(
            &p,
            &work,
            &PlanState::Planned {
                dropped: Some(dropped.into()),
            },
        );
        assert_eq!(s.phase, Some(ProjectPhase::Running));
        let planned = condition(&s.conditions, "Planned").unwrap();
        assert_eq!(
            (planned.status.as_str(), planned.reason.as_str()),
            ("True", "DependenciesDropped")
        );
        assert!(planned.message.contains(dropped), "{}", planned.message);
        let clean = status_of(&p, &work, &PlanState::Planned { dropped: None });
        assert_eq!(
            condition(&clean.conditions, "Planned").unwrap().reason,
            "Planned"
        );
    }
}
