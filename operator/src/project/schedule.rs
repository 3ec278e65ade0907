//! What to do next for a Project's tasks, as a pure function of the Project, its Tasks
//! and the time: which attempts have timed out, which tasks to skip or cancel, which to
//! dispatch (dependencies succeeded, concurrency free, not suspended, budget left;
//! higher priority first, then creation order), and when to look again.

use std::collections::BTreeSet;

use aios_crds::{
    CompactString, Project, Task, TaskPhase, conditions::reasons, project::TaskCounts,
};
use jiff::Timestamp;
use kube::ResourceExt;

use crate::{
    project::rollup::count,
    task::lifecycle::{ByName, after, by_name, name_of, phase, task_policy},
};

/// One thing the reconciler must do to a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The running attempt ran out of time or heartbeats: it counts as failed.
    Expire {
        /// The task.
        task: String,
        /// `TimedOut` or `HeartbeatLost`.
        reason: &'static str,
        /// Why, in a sentence.
        message: String,
    },
    /// A dependency failed or was skipped, and the Project does not fail fast.
    Skip {
        /// The task.
        task: String,
        /// The dependency that did not succeed.
        dependency: String,
    },
    /// The Project failed; the task will never run.
    Cancel {
        /// The task.
        task: String,
        /// Why.
        message: String,
    },
    /// The task waits for its dependencies and has no status yet: say so (what it says,
    /// [`waiting_for`], is made only when it is written: a pass over a new Project of
    /// thousands of Tasks hands thousands of these, and the next passes again until
    /// they are written).
    AwaitDependencies {
        /// The task.
        task: String,
    },
    /// The task is ready but cannot be dispatched yet; say why in its status.
    Wait {
        /// The task.
        task: String,
        /// Why, in a sentence.
        message: String,
    },
    /// Publish attempt `attempt` of the task.
    Dispatch {
        /// The task.
        task: String,
        /// The attempt number, from 1.
        attempt: i32,
    },
}

/// The reconciler's orders for one pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunPlan {
    /// What to do, in order.
    pub actions: Vec<Action>,
    /// When to look again even if nothing changes (a backoff ends, a deadline passes).
    pub wake_at: Option<Timestamp>,
}

/// Why no task may be dispatched right now, if any reason holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// `spec.suspend` is true.
    Suspended,
    /// The model budget is spent.
    BudgetExceeded,
}

/// The tasks a pass plans over, as the pass has them at hand: a Project's work (its
/// tasks, without the planning task once the plan exists), the work's counts by phase,
/// and every task of the Project by name, where dependencies are looked up. A pass at
/// 10,000 tasks reads each Task once for each sweep over them, so the counts answer
/// what they can (anything in flight, failed, running?) without one.
#[derive(Clone, Copy)]
pub struct Tasks<'a> {
    /// The work.
    pub work: &'a [&'a Task],
    /// `work`'s counts by phase.
    pub counts: &'a TaskCounts,
    /// Every task of the Project by name.
    pub by_name: &'a ByName<'a>,
    /// Whether what a status-less task waits for is on its way to its status already
    /// ([`Action::AwaitDependencies`] handed over by an earlier pass and not written
    /// yet): it is not asked for again.
    pub handed: &'a dyn Fn(&Task) -> bool,
    /// The Pending tasks of `work` a dispatch must be looked for among, when the pass
    /// knows them ([`crate::runtime::index::ProjectTasks::pending`]: every one whose
    /// dependencies may all have succeeded, and every one without a status not
    /// `handed`); `None`: every Pending task of `work`.
    pub pending: Option<&'a [&'a Task]>,
}

impl std::fmt::Debug for Tasks<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tasks")
            .field("work", &self.work.len())
            .field("counts", self.counts)
            .finish_non_exhaustive()
    }
}

/// Plans one pass over `tasks` (the Project's tasks, without the planning task once
/// the plan exists).
pub fn plan_run(project: &Project, tasks: &[&Task], hold: Option<Hold>, now: Timestamp) -> RunPlan {
    plan_over(project, tasks, hold, &|_| None, now)
}

/// [`plan_run_gated`] over `tasks` alone, counted and named here.
fn plan_over(
    project: &Project,
    tasks: &[&Task],
    hold: Option<Hold>,
    gate: Gate<'_>,
    now: Timestamp,
) -> RunPlan {
    let (counts, by_name) = (count(tasks), by_name(tasks.iter().copied()));
    let tasks = Tasks {
        work: tasks,
        counts: &counts,
        by_name: &by_name,
        handed: &|_| false,
        pending: None,
    };
    plan_run_gated(project, tasks, hold, gate, now)
}

/// Why a ready task may not be dispatched yet, if it may not.
pub type Gate<'a> = &'a dyn Fn(&Task) -> Option<String>;

/// [`plan_run`], dispatching only ready tasks `gate` lets through (an Agent serves the
/// role, a ready model provider can take the complexity); the others wait, saying why.
pub fn plan_run_gated(
    project: &Project,
    tasks: Tasks<'_>,
    hold: Option<Hold>,
    gate: Gate<'_>,
    now: Timestamp,
) -> RunPlan {
    let Tasks { work, counts, .. } = tasks;
    let mut plan = RunPlan::default();
    // 1. Running attempts past their deadline or silent for too long. These are handled
    // alone: their new status changes everything below, and the write triggers a pass.
    if counts.running > 0 {
        expirations(project, work, now, &mut plan);
        if !plan.actions.is_empty() {
            return plan;
        }
    }

    // 2. Failure handling, with Argo Workflows' meaning of failFast.
    let in_flight = usize::try_from(counts.in_flight()).unwrap_or_default();
    let failed = counts.failed > 0;
    if project.spec.policy.fail_fast {
        if failed && let Some(first) = work.iter().find(|t| phase(t) == TaskPhase::Failed) {
            if in_flight == 0 {
                let message = format!(
                    "not run: the project failed because task {} failed",
                    first.name_any()
                );
                for task in work.iter().filter(|t| phase(t) == TaskPhase::Pending) {
                    plan.actions.push(Action::Cancel {
                        task: task.name_any(),
                        message: message.clone(),
                    });
                }
            }
            return plan;
        }
    } else if failed || counts.skipped > 0 || counts.cancelled > 0 {
        plan.actions.extend(skips(work));
        if !plan.actions.is_empty() {
            return plan;
        }
    }

    // 3. Dispatch.
    if hold.is_none() {
        let max = usize::try_from(project.spec.policy.max_parallel_tasks.max(1)).unwrap_or(1);
        let capacity = max.saturating_sub(in_flight);
        dispatches(tasks, capacity, gate, now, &mut plan);
    }
    plan
}

impl RunPlan {
    fn wake(&mut self, at: Timestamp) {
        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
    }
}

fn expirations(project: &Project, tasks: &[&Task], now: Timestamp, plan: &mut RunPlan) {
    let defaults = &project.spec.policy.task_defaults;
    for task in tasks.iter().filter(|t| phase(t) == TaskPhase::Running) {
        let policy = task_policy(task, defaults);
        let status = task.status.as_ref();
        let started = status.and_then(|s| s.start_time.as_ref()).map(|t| t.0);
        let beat = status
            .and_then(|s| s.last_heartbeat_time.as_ref())
            .map(|t| t.0)
            .or(started);
        if let (Some(start), Some(timeout)) = (started, policy.timeout) {
            let deadline = after(start, timeout);
            if now >= deadline {
                plan.actions.push(Action::Expire {
                    task: task.name_any(),
                    reason: reasons::TIMED_OUT,
                    message: format!("the attempt ran longer than {}s", timeout.as_secs()),
                });
                continue;
            }
            plan.wake(deadline);
        }
        if let Some(beat) = beat {
            let deadline = after(beat, policy.heartbeat_timeout);
            if now >= deadline {
                plan.actions.push(Action::Expire {
                    task: task.name_any(),
                    reason: reasons::HEARTBEAT_LOST,
                    message: format!(
                        "no heartbeat for {}s: the agent is presumed gone",
                        policy.heartbeat_timeout.as_secs()
                    ),
                });
                continue;
            }
            plan.wake(deadline);
        }
    }
}

/// How many dependencies a waiting Task's message names; the rest are counted.
const NAMED_DEPENDENCIES: usize = 5;

/// What a Task whose dependencies have not all succeeded says it waits for: its first
/// few dependencies by name, then how many more (a task may depend on hundreds, and the
/// message is read in `kubectl get tasks`).
pub fn waiting_for(dependencies: &[CompactString]) -> String {
    let named = dependencies.len().min(NAMED_DEPENDENCIES);
    let first = dependencies[..named].join(", ");
    match dependencies.len() - named {
        0 => format!("waiting for {first}"),
        more => format!("waiting for {first} and {more} more"),
    }
}

fn dispatches(
    tasks: Tasks<'_>,
    capacity: usize,
    gate: Gate<'_>,
    now: Timestamp,
    plan: &mut RunPlan,
) {
    let Tasks {
        work,
        by_name,
        handed,
        pending,
        ..
    } = tasks;
    let every_pending: Vec<&Task>;
    let pending = if let Some(pending) = pending {
        pending
    } else {
        every_pending = (work.iter().copied())
            .filter(|t| phase(t) == TaskPhase::Pending)
            .collect();
        &every_pending
    };
    let mut ready: Vec<&Task> = Vec::new();
    for &task in pending.iter().filter(|t| phase(t) == TaskPhase::Pending) {
        let deps_done = task.spec.depends_on.iter().all(|d| {
            by_name
                .get(d.as_str())
                .is_some_and(|dep| phase(dep) == TaskPhase::Succeeded)
        });
        if !deps_done {
            // A Task without status reads "done" to kstatus (no conditions, no
            // observedGeneration): say once what it waits for, which sets them.
            if task.status.is_none() && task.metadata.deletion_timestamp.is_none() && !handed(task)
            {
                plan.actions.push(Action::AwaitDependencies {
                    task: task.name_any(),
                });
            }
            continue;
        }
        if let Some(at) = task
            .status
            .as_ref()
            .and_then(|s| s.next_attempt_time.as_ref())
            .map(|t| t.0)
            && at > now
        {
            plan.wake(at);
            continue;
        }
        if task.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if let Some(message) = gate(task) {
            if task.status.as_ref().and_then(|s| s.message.as_deref()) != Some(message.as_str()) {
                plan.actions.push(Action::Wait {
                    task: task.name_any(),
                    message,
                });
            }
            continue;
        }
        ready.push(task);
    }
    ready.sort_by(|a, b| {
        b.spec
            .priority
            .cmp(&a.spec.priority)
            .then_with(|| {
                a.metadata
                    .creation_timestamp
                    .cmp(&b.metadata.creation_timestamp)
            })
            .then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
    for task in ready.into_iter().take(capacity) {
        let attempt = task.status.as_ref().map_or(0, |s| s.attempt) + 1;
        plan.actions.push(Action::Dispatch {
            task: task.name_any(),
            attempt,
        });
    }
}

/// Pending tasks with a dependency that failed, was skipped or was cancelled, including
/// everything downstream of them, found in one pass.
fn skips(tasks: &[&Task]) -> Vec<Action> {
    let mut dead: BTreeSet<&str> = tasks
        .iter()
        .filter(|t| {
            matches!(
                phase(t),
                TaskPhase::Failed | TaskPhase::Skipped | TaskPhase::Cancelled
            )
        })
        .map(|t| name_of(t))
        .collect();
    let mut actions = Vec::new();
    while !dead.is_empty() {
        let mut changed = false;
        for task in tasks.iter().filter(|t| phase(t) == TaskPhase::Pending) {
            if dead.contains(name_of(task)) {
                continue;
            }
            if let Some(dep) = task
                .spec
                .depends_on
                .iter()
                .find(|d| dead.contains(d.as_str()))
            {
                actions.push(Action::Skip {
                    task: name_of(task).to_owned(),
                    dependency: dep.to_string(),
                });
                dead.insert(name_of(task));
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use aios_crds::TaskPhase::{Failed, Pending, Queued, Running, Succeeded};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use aios_crds::Complexity;

    use super::*;
    use crate::testing::{project, task, ts, with_phase};

    fn dispatched(plan: &RunPlan) -> Vec<String> {
        plan.actions
            .iter()
            .filter_map(|a| match a {
                Action::Dispatch { task, .. } => Some(task.clone()),
                _ => None,
            })
            .collect()
    }

    fn diamond(phases: [TaskPhase; 4]) -> Vec<Task> {
        vec![
            with_phase(task("design", &[]), phases[0]),
            with_phase(task("api", &["design"]), phases[1]),
            with_phase(task("ui", &["design"]), phases[2]),
            with_phase(task("qa", &["api", "ui"]), phases[3]),
        ]
    }

    #[test]
    fn only_tasks_whose_dependencies_succeeded_are_ready() {
        let p = project("shop");
        let tasks = diamond([Pending, Pending, Pending, Pending]);
        let refs: Vec<&Task> = tasks.iter().collect();
        assert_eq!(dispatched(&plan_run(&p, &refs, None, ts(0))), ["design"]);

        let tasks = diamond([Succeeded, Pending, Pending, Pending]);
        let refs: Vec<&Task> = tasks.iter().collect();
        assert_eq!(dispatched(&plan_run(&p, &refs, None, ts(0))), ["api", "ui"]);

        let tasks = diamond([Succeeded, Succeeded, Running, Pending]);
        let refs: Vec<&Task> = tasks.iter().collect();
        assert!(
            dispatched(&plan_run(&p, &refs, None, ts(0))).is_empty(),
            "qa waits for ui"
        );
    }

    #[test]
    fn concurrency_priority_and_creation_order_decide_among_ready_tasks() {
        let mut p = project("shop");
        p.spec.policy.max_parallel_tasks = 2;
        let mut a = task("a", &[]);
        let mut b = task("b", &[]);
        let mut c = task("c", &[]);
        a.metadata.creation_timestamp = Some(Time(ts(3)));
        b.metadata.creation_timestamp = Some(Time(ts(1)));
        c.metadata.creation_timestamp = Some(Time(ts(2)));
        c.spec.priority = 5;
        let running = with_phase(task("busy", &[]), Queued);
        let refs = [&a, &b, &c];
        assert_eq!(dispatched(&plan_run(&p, &refs, None, ts(10))), ["c", "b"]);
        let refs = [&a, &b, &c, &running];
        assert_eq!(
            dispatched(&plan_run(&p, &refs, None, ts(10))),
            ["c"],
            "one slot left"
        );
        let attempt = plan_run(&p, &[&a], None, ts(10)).actions;
        assert_eq!(
            attempt,
            [Action::Dispatch {
                task: "a".into(),
                attempt: 1
            }]
        );
    }

    #[test]
    fn a_waiting_message_names_a_few_dependencies_and_counts_the_rest() {
        let names = |n: usize| (0..n).map(|i| format!("t{i}").into()).collect::<Vec<_>>();
        assert_eq!(waiting_for(&names(2)), "waiting for t0, t1");
        assert_eq!(
            waiting_for(&names(5)),
            "waiting for t0, t1, t2, t3, t4",
            "five are all named"
        );
        assert_eq!(
            waiting_for(&names(100)),
            "waiting for t0, t1, t2, t3, t4 and 95 more"
        );
    }

    #[test]
    fn a_pass_that_knows_the_pending_tasks_to_look_at_looks_at_those_alone() {
        let p = project("shop");
        let (a, b, c) = (task("a", &[]), task("b", &[]), task("c", &["a"]));
        let work = [&a, &b, &c];
        let (counts, by_name) = (count(&work), by_name(work));
        let plan = |pending: Option<&[&Task]>| {
            let tasks = Tasks {
                work: &work,
                counts: &counts,
                by_name: &by_name,
                handed: &|_| false,
                pending,
            };
            plan_run_gated(&p, tasks, None, &|_| None, ts(0))
        };
        // Every Pending task: both ready ones dispatched, `c` told what it waits for.
        let every = plan(None);
        assert_eq!(dispatched(&every), ["a", "b"]);
        assert!(
            every
                .actions
                .contains(&Action::AwaitDependencies { task: "c".into() })
        );
        // Only those listed: `b`.
        assert_eq!(
            plan(Some(&[&b])).actions,
            [Action::Dispatch {
                task: "b".into(),
                attempt: 1
            }]
        );
        // A listed task no longer Pending is left alone.
        let queued = with_phase(b.clone(), Queued);
        assert_eq!(plan(Some(&[&queued])).actions, []);
    }

    #[test]
    fn a_task_waiting_on_dependencies_gets_a_status_once() {
        let p = project("shop");
        let first = task("first", &[]);
        let second = task("second", &["first"]);
        let plan = plan_run(&p, &[&first, &second], None, ts(0));
        assert!(
            plan.actions.contains(&Action::AwaitDependencies {
                task: "second".into(),
            }),
            "{:?}",
            plan.actions
        );
        // Handed over to be written, it is not asked for again meanwhile.
        let (counts, by_name) = (count(&[&first, &second]), by_name([&first, &second]));
        let tasks = Tasks {
            work: &[&first, &second],
            counts: &counts,
            by_name: &by_name,
            handed: &|t| name_of(t) == "second",
            pending: None,
        };
        let plan = plan_run_gated(&p, tasks, None, &|_| None, ts(0));
        assert_eq!(dispatched(&plan), ["first"]);
        assert_eq!(plan.actions.len(), 1, "{:?}", plan.actions);
        // Once it has a status, nothing more is written until it can run.
        let waiting = with_phase(second.clone(), Pending);
        let plan = plan_run(&p, &[&first, &waiting], None, ts(0));
        assert!(
            !plan
                .actions
                .iter()
                .any(|a| matches!(a, Action::AwaitDependencies { task } if task == "second")),
            "{:?}",
            plan.actions
        );
    }

    #[test]
    fn tasks_no_ready_provider_can_take_wait_and_say_so_once() {
        let p = project("shop");
        let mut hard = task("hard", &[]);
        hard.spec.complexity = Complexity::High;
        let easy = task("easy", &[]);
        let only_medium = |t: &Task| {
            (t.spec.complexity > Complexity::Medium)
                .then(|| format!("no provider takes {:?}", t.spec.complexity))
        };
        let plan = plan_over(&p, &[&hard, &easy], None, &only_medium, ts(0));
        assert_eq!(dispatched(&plan), ["easy"]);
        let Some(Action::Wait { task, message }) = plan
            .actions
            .iter()
            .find(|a| matches!(a, Action::Wait { .. }))
        else {
            panic!("{plan:?}")
        };
        assert_eq!(task, "hard");
        assert!(message.contains("High"), "{message}");
        hard.status.get_or_insert_with(Default::default).message = Some(message.clone());
        let again = plan_over(&p, &[&hard], None, &only_medium, ts(1));
        assert!(
            again.actions.is_empty(),
            "the message is written once: {again:?}"
        );
    }

    #[test]
    fn suspension_and_budget_hold_dispatches() {
        let p = project("shop");
        let t = task("a", &[]);
        assert!(
            plan_run(&p, &[&t], Some(Hold::Suspended), ts(0))
                .actions
                .is_empty()
        );
        assert!(
            plan_run(&p, &[&t], Some(Hold::BudgetExceeded), ts(0))
                .actions
                .is_empty()
        );
    }

    #[test]
    fn a_backoff_delays_the_retry_and_sets_the_wake_up() {
        let p = project("shop");
        let mut t = task("a", &[]);
        let status = t.status.get_or_insert_with(Default::default);
        status.attempt = 1;
        status.next_attempt_time = Some(Time(ts(50)));
        let early = plan_run(&p, &[&t], None, ts(10));
        assert!(early.actions.is_empty());
        assert_eq!(early.wake_at, Some(ts(50)));
        let late = plan_run(&p, &[&t], None, ts(50));
        assert_eq!(
            late.actions,
            [Action::Dispatch {
                task: "a".into(),
                attempt: 2
            }]
        );
    }

    #[test]
    fn fail_fast_stops_dispatch_and_cancels_once_nothing_runs() {
        let p = project("shop");
        let tasks = [
            with_phase(task("a", &[]), Failed),
            with_phase(task("b", &[]), Running),
            with_phase(task("c", &[]), Pending),
        ];
        let refs: Vec<&Task> = tasks.iter().collect();
        let plan = plan_run(&p, &refs, None, ts(0));
        assert!(
            plan.actions
                .iter()
                .all(|a| !matches!(a, Action::Dispatch { .. } | Action::Cancel { .. })),
            "{plan:?}"
        );

        let tasks = [
            with_phase(task("a", &[]), Failed),
            with_phase(task("b", &[]), Succeeded),
            with_phase(task("c", &[]), Pending),
        ];
        let refs: Vec<&Task> = tasks.iter().collect();
        let plan = plan_run(&p, &refs, None, ts(0));
        assert!(
            matches!(plan.actions.as_slice(), [Action::Cancel { task, .. }] if task == "c"),
            "{plan:?}"
        );
    }

    #[test]
    fn without_fail_fast_dependents_are_skipped_and_independent_branches_go_on() {
        let mut p = project("shop");
        p.spec.policy.fail_fast = false;
        let tasks = [
            with_phase(task("a", &[]), Failed),
            with_phase(task("b", &["a"]), Pending),
            with_phase(task("c", &["b"]), Pending),
            with_phase(task("d", &[]), Pending),
        ];
        let refs: Vec<&Task> = tasks.iter().collect();
        let plan = plan_run(&p, &refs, None, ts(0));
        assert_eq!(
            plan.actions,
            [
                Action::Skip {
                    task: "b".into(),
                    dependency: "a".into()
                },
                Action::Skip {
                    task: "c".into(),
                    dependency: "b".into()
                },
            ]
        );
        let tasks = [
            with_phase(task("a", &[]), Failed),
            with_phase(task("b", &["a"]), TaskPhase::Skipped),
            with_phase(task("d", &[]), Pending),
        ];
        let refs: Vec<&Task> = tasks.iter().collect();
        assert_eq!(dispatched(&plan_run(&p, &refs, None, ts(0))), ["d"]);
    }

    #[test]
    fn a_running_attempt_times_out_or_loses_its_heartbeat() {
        let p = project("shop"); // timeout 1800s, heartbeat 120s
        let mut t = with_phase(task("a", &[]), Running);
        let s = t.status.get_or_insert_with(Default::default);
        s.attempt = 1;
        s.start_time = Some(Time(ts(0)));
        s.last_heartbeat_time = Some(Time(ts(100)));
        let fine = plan_run(&p, &[&t], None, ts(150));
        assert!(fine.actions.is_empty());
        assert_eq!(
            fine.wake_at,
            Some(ts(220)),
            "wakes when the heartbeat deadline passes"
        );
        let silent = plan_run(&p, &[&t], None, ts(221));
        assert!(
            matches!(&silent.actions[..], [Action::Expire { reason, .. }] if *reason == "HeartbeatLost")
        );
        t.status.as_mut().unwrap().last_heartbeat_time = Some(Time(ts(1799)));
        let late = plan_run(&p, &[&t], None, ts(1800));
        assert!(
            matches!(&late.actions[..], [Action::Expire { reason, .. }] if *reason == "TimedOut")
        );
    }
}
