//! A Task's status transitions, as pure functions: dispatch, agents' events, failed
//! attempts with retries and backoff (Argo Workflows' meaning), skips and cancellation.
//! The `Succeeded` condition follows Tekton: Unknown while in flight, True or False with
//! a reason when done.

use std::time::Duration;

use aios_crds::{
    Task, TaskPhase, TaskResult, TaskStatus, Usage,
    bus::{TaskEvent, TaskEventKind},
    conditions::{self, reasons},
    project::{Backoff, TaskDefaults},
    text::{self, Shape},
};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The retry and timeout rules that apply to one task: its own settings, else the
/// Project's task defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskPolicy {
    /// Retries after the first attempt.
    pub max_retries: i32,
    /// Wait between attempts.
    pub backoff: Backoff,
    /// How long one attempt may run; `None` for no limit.
    pub timeout: Option<Duration>,
    /// How long a running attempt may go without a heartbeat.
    pub heartbeat_timeout: Duration,
    /// The verification command a reported success that wrote files must pass before
    /// the task succeeds (see [`crate::verify::required`]); `None` when none applies.
    pub verify: Option<String>,
}

fn seconds(s: i32) -> Duration {
    Duration::from_secs(u64::try_from(s.max(0)).unwrap_or(0))
}

/// The policy for `task` under `defaults`.
pub fn task_policy(task: &Task, defaults: &TaskDefaults) -> TaskPolicy {
    let timeout = task
        .spec
        .timeout_seconds
        .unwrap_or(defaults.timeout_seconds);
    TaskPolicy {
        max_retries: task.spec.max_retries.unwrap_or(defaults.max_retries),
        backoff: defaults.backoff.clone(),
        timeout: (timeout > 0).then(|| seconds(timeout)),
        heartbeat_timeout: seconds(defaults.heartbeat_timeout_seconds),
        verify: None,
    }
}

/// The wait before retrying after failed attempt `attempt` (from 1):
/// `duration * factor^(attempt-1)`, capped at `maxDuration`.
pub fn retry_delay(backoff: &Backoff, attempt: i32) -> Duration {
    let base = u64::try_from(backoff.duration_seconds.max(0)).unwrap_or(0);
    let factor = u64::try_from(backoff.factor.max(1)).unwrap_or(1);
    let cap = u64::try_from(backoff.max_duration_seconds.max(0)).unwrap_or(0);
    let exponent = u32::try_from((attempt - 1).max(0)).unwrap_or(0);
    let delay = factor
        .checked_pow(exponent)
        .and_then(|f| f.checked_mul(base))
        .unwrap_or(u64::MAX);
    Duration::from_secs(delay.min(cap))
}

/// Adds `d` to `t`, saturating at the end of time.
pub fn after(t: Timestamp, d: Duration) -> Timestamp {
    jiff::SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

/// `t` rounded up to a whole second. Kubernetes `Time` is stored with second
/// precision, so a retry time rounded down could come before the backoff ends.
pub fn ceil_to_second(t: Timestamp) -> Timestamp {
    if t.subsec_nanosecond() == 0 {
        return t;
    }
    Timestamp::from_second(t.as_second().saturating_add(1)).unwrap_or(Timestamp::MAX)
}

/// A Task's name, borrowed (`ResourceExt::name_any` makes a copy).
pub fn name_of(task: &Task) -> &str {
    task.metadata.name.as_deref().unwrap_or_default()
}

/// Tasks by name, for a pass's lookups: a list sorted by name, searched by halves. A
/// pass gets its Tasks in name order from the index, so the list is built without a
/// sort and without a node to allocate, and a lookup compares fewer names than a
/// B-tree's (tried before it: at 10,000 Tasks, building one on every pass and its
/// comparisons were a fifth of the operator's CPU; a hash map, tried before that,
/// hashed every name of the 10,000 on every pass and cost more still).
#[derive(Debug, Clone, Default)]
pub struct ByName<'a>(Vec<(&'a str, &'a Task)>);

impl<'a> ByName<'a> {
    /// `tasks`, which are in name order, each name once.
    pub fn sorted(tasks: impl IntoIterator<Item = &'a Task>) -> Self {
        let named: Vec<(&str, &Task)> = tasks.into_iter().map(|t| (name_of(t), t)).collect();
        debug_assert!(named.is_sorted_by(|a, b| a.0 < b.0), "not in name order");
        Self(named)
    }

    /// The task named `name`.
    pub fn get(&self, name: &str) -> Option<&'a Task> {
        self.find(name).map(|(_, task)| task)
    }

    /// The task named `name` and its place among the tasks, from 0 to [`Self::len`].
    pub fn find(&self, name: &str) -> Option<(usize, &'a Task)> {
        let i = self.0.binary_search_by(|(n, _)| (*n).cmp(name)).ok()?;
        Some((i, self.0[i].1))
    }

    /// How many tasks there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `tasks` by name, in any order; of two with the same name, the last.
pub fn by_name<'a>(tasks: impl IntoIterator<Item = &'a Task>) -> ByName<'a> {
    let mut named: Vec<(&str, &Task)> = tasks.into_iter().map(|t| (name_of(t), t)).collect();
    // Stable: of equal names, the last stays last, and is kept.
    named.sort_by(|a, b| a.0.cmp(b.0));
    named.dedup_by(|later, earlier| {
        let same = later.0 == earlier.0;
        if same {
            *earlier = *later;
        }
        same
    });
    ByName(named)
}

/// Sets condition `type_`, keeping its transition time when the status is unchanged.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) {
    let fresh = Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        last_transition_time: Time(now),
        observed_generation: None,
    };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(existing) => {
            let transition = if existing.status == status {
                existing.last_transition_time.clone()
            } else {
                Time(now)
            };
            *existing = Condition {
                last_transition_time: transition,
                ..fresh
            };
        }
        None => conditions.push(fresh),
    }
}

/// The status condition of `type_`, if set.
pub fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

fn succeeded(status: &mut TaskStatus, value: &str, reason: &str, message: &str, now: Timestamp) {
    set_condition(
        &mut status.conditions,
        conditions::SUCCEEDED,
        value,
        reason,
        message,
        now,
    );
}

/// The phase of a task, `Pending` when it has no status yet.
pub fn phase(task: &Task) -> TaskPhase {
    task.status
        .as_ref()
        .and_then(|s| s.phase)
        .unwrap_or_default()
}

/// The task's status after attempt `attempt` was published to the bus.
pub fn queued(task: &Task, attempt: i32, now: Timestamp) -> TaskStatus {
    let mut status = task.status.clone().unwrap_or_default();
    status.phase = Some(TaskPhase::Queued);
    status.attempt = attempt;
    status.queued_time = Some(Time(now));
    status.start_time = None;
    status.last_heartbeat_time = None;
    status.next_attempt_time = None;
    status.agent = None;
    status.message = Some(format!("attempt {attempt} is waiting for an agent"));
    succeeded(
        &mut status,
        "Unknown",
        reasons::PENDING,
        "queued for an agent",
        now,
    );
    status
}

/// Ends an attempt that failed: back to Pending with a backoff when it is retryable and
/// retries remain, else Failed for good.
pub fn fail_attempt(
    task: &Task,
    policy: &TaskPolicy,
    reason: &str,
    message: &str,
    retryable: bool,
    now: Timestamp,
) -> TaskStatus {
    let mut status = task.status.clone().unwrap_or_default();
    let attempt = status.attempt.max(1);
    if retryable && attempt <= policy.max_retries {
        let delay = retry_delay(&policy.backoff, attempt);
        let at = ceil_to_second(after(now, delay));
        status.phase = Some(TaskPhase::Pending);
        status.next_attempt_time = Some(Time(at));
        status.message = Some(format!(
            "attempt {attempt} failed ({reason}): {message}; retrying in {}s",
            delay.as_secs()
        ));
        succeeded(&mut status, "Unknown", reason, message, now);
    } else {
        status.phase = Some(TaskPhase::Failed);
        status.next_attempt_time = None;
        status.completion_time = Some(Time(now));
        let why = if retryable {
            format!("attempt {attempt} failed ({reason}) and no retries are left: {message}")
        } else {
            format!("attempt {attempt} failed ({reason}): {message}")
        };
        status.message = Some(why.clone());
        succeeded(&mut status, "False", reason, &why, now);
    }
    status
}

/// The status of a task that will not run because `dependency` failed or was skipped.
pub fn skipped(task: &Task, dependency: &str, now: Timestamp) -> TaskStatus {
    let mut status = task.status.clone().unwrap_or_default();
    status.phase = Some(TaskPhase::Skipped);
    status.completion_time = Some(Time(now));
    let message = format!("not run: dependency {dependency} did not succeed");
    status.message = Some(message.clone());
    succeeded(
        &mut status,
        "False",
        reasons::DEPENDENCY_FAILED,
        &message,
        now,
    );
    status
}

/// The status of a task stopped because its Project failed.
pub fn cancelled(task: &Task, why: &str, now: Timestamp) -> TaskStatus {
    let mut status = task.status.clone().unwrap_or_default();
    status.phase = Some(TaskPhase::Cancelled);
    status.completion_time = Some(Time(now));
    status.message = Some(why.to_owned());
    succeeded(&mut status, "False", reasons::CANCELLED, why, now);
    status
}

/// Whether `attempt` of the Task with `uid` is the one in flight: the current attempt
/// while Queued or Running, or the next one while Pending (the operator publishes, then
/// records Queued, so a quick answer can arrive before the record).
fn is_live_attempt(task: &Task, uid: &str, attempt: i32) -> bool {
    if task.metadata.uid.as_deref() != Some(uid) {
        return false;
    }
    let status = task.status.clone().unwrap_or_default();
    let phase = status.phase.unwrap_or_default();
    (attempt == status.attempt && phase.is_in_flight())
        || (attempt == status.attempt + 1 && phase == TaskPhase::Pending)
}

/// Whether `task` shows attempt `attempt` over (a later attempt, or this one no longer
/// in flight). Attempts only move forward, so even an old copy of the Task that shows
/// this is right: nothing an agent reports about that attempt can change the Task.
pub fn attempt_over(task: &Task, attempt: i32) -> bool {
    let seen = task.status.as_ref().map_or(0, |s| s.attempt);
    attempt <= seen
        && !is_live_attempt(
            task,
            task.metadata.uid.as_deref().unwrap_or_default(),
            attempt,
        )
}

/// The task's status after the bus dead-lettered the dispatch of `attempt`: that
/// attempt fails for good with reason `PoisonMessage` (no agent could take it, and
/// another copy would fare no better). `None` when the attempt is not the live one.
pub fn apply_poison(
    task: &Task,
    policy: &TaskPolicy,
    uid: &str,
    attempt: i32,
    now: Timestamp,
) -> Option<TaskStatus> {
    // A dead-lettered copy of an attempt an agent is already running says nothing
    // about that run.
    if !is_live_attempt(task, uid, attempt) || phase(task) == TaskPhase::Running {
        return None;
    }
    let mut at_attempt = task.clone();
    at_attempt
        .status
        .get_or_insert_with(TaskStatus::default)
        .attempt = attempt;
    let message = format!(
        "the dispatch of attempt {attempt} was dead-lettered by the bus: no agent could take it"
    );
    Some(fail_attempt(
        &at_attempt,
        policy,
        reasons::POISON_MESSAGE,
        &message,
        false,
        now,
    ))
}

/// Whether a heartbeat for `task`'s running attempt can go unrecorded: the recorded one
/// is younger than half the heartbeat timeout. Agents beat every quarter of it (at least
/// every 5 s), so the recorded time is never older than three quarters of the timeout
/// while the agent lives, and a dead one is still found out within the timeout; the API
/// server sees one write per half timeout instead of one per beat.
pub fn heartbeat_needless(task: &Task, policy: &TaskPolicy, event: &TaskEvent) -> bool {
    let status = task.status.as_ref();
    matches!(event.kind, TaskEventKind::Heartbeat)
        && status.and_then(|s| s.phase) == Some(TaskPhase::Running)
        && i32::try_from(event.attempt).ok() == status.map(|s| s.attempt)
        && status
            .and_then(|s| s.last_heartbeat_time.as_ref())
            .is_some_and(|last| {
                jiff::SignedDuration::try_from(policy.heartbeat_timeout / 2)
                    .ok()
                    .and_then(|half| last.0.checked_add(half).ok())
                    .is_some_and(|due| event.at < due)
            })
}

/// The task's status after an agent's event, or `None` when the event changes nothing:
/// it is for another Task object (uid), an older attempt, a duplicate, or the task has
/// already finished. Delivery is at least once, so this must be idempotent.
pub fn apply_event(
    task: &Task,
    policy: &TaskPolicy,
    event: &TaskEvent,
    now: Timestamp,
) -> Option<TaskStatus> {
    let attempt = i32::try_from(event.attempt).ok()?;
    if !is_live_attempt(task, &event.task.uid, attempt) {
        return None;
    }
    let event = &readable(event);
    let current = task.status.clone().unwrap_or_default();
    let phase = current.phase.unwrap_or_default();
    let mut status = current.clone();
    status.attempt = attempt;
    status.agent = Some(event.agent.clone());
    let at = Time(event.at);
    match &event.kind {
        TaskEventKind::Started | TaskEventKind::Heartbeat => {
            if phase == TaskPhase::Running {
                if heartbeat_needless(task, policy, event) {
                    return None;
                }
                // Only the heartbeat time moves, never backwards (events can reorder), and
                // the start time stays whoever reports: a redelivered copy on a second
                // agent must not push the attempt's deadline out.
                if current
                    .last_heartbeat_time
                    .as_ref()
                    .is_some_and(|t| t.0 >= event.at)
                {
                    return None;
                }
                let mut beat = current.clone();
                beat.last_heartbeat_time = Some(at);
                return Some(beat);
            }
            status.phase = Some(TaskPhase::Running);
            status.start_time = Some(at.clone());
            status.last_heartbeat_time = Some(at);
            status.next_attempt_time = None;
            status.message = Some(format!("attempt {attempt} is running on {}", event.agent));
            succeeded(
                &mut status,
                "Unknown",
                reasons::RUNNING,
                "an agent is working on it",
                now,
            );
        }
        TaskEventKind::Succeeded { output, usage } => {
            let result = &output.result;
            // Where a plan is kept is the operator's to say, never the agent's.
            status.result = Some(TaskResult {
                plan_ref: None,
                ..result.clone()
            });
            status
                .usage
                .get_or_insert_with(Default::default)
                .accumulate(usage);
            status.next_attempt_time = None;
            if let Some(command) = policy.verify.clone().filter(|_| !result.files.is_empty()) {
                verifying(&mut status, result, &command, now);
                return Some(status);
            }
            status.phase = Some(TaskPhase::Succeeded);
            status.completion_time = Some(Time(now));
            status.message = Some(format!("attempt {attempt} succeeded on {}", event.agent));
            succeeded(
                &mut status,
                "True",
                reasons::SUCCEEDED,
                &result.summary,
                now,
            );
        }
        TaskEventKind::Failed {
            reason,
            message,
            retryable,
            usage,
        } => {
            let mut with_usage = task.clone();
            let mut base = status.clone();
            base.usage
                .get_or_insert_with(Default::default)
                .accumulate(usage);
            with_usage.status = Some(base);
            return Some(fail_attempt(
                &with_usage,
                policy,
                reason,
                message,
                *retryable,
                now,
            ));
        }
        TaskEventKind::Unknown => return None,
    }
    Some(status)
}

/// `event` with the text an agent wrote (and a model, through it) made fit for the
/// records people read, `kubectl get`, `aios describe` and `aios watch` among them (see
/// [`aios_crds::text`]): the agent's name, a failure's reason and message, and a
/// result's summary, notes, files and commit lose their control and bidirectional
/// characters. Lengths are left alone: what the API server will not take fails the
/// attempt as `ResultRefused`, with its message.
fn readable(event: &TaskEvent) -> TaskEvent {
    let line = |text: &str| text::sanitize(text, Shape::Line);
    let lines = |text: &str| text::sanitize(text, Shape::Lines);
    let mut event = event.clone();
    event.agent = line(&event.agent);
    match &mut event.kind {
        TaskEventKind::Succeeded { output, .. } => {
            let result = &mut output.result;
            result.summary = lines(&result.summary);
            result.notes = result.notes.as_deref().map(lines);
            result.commit = result.commit.as_deref().map(line);
            for file in &mut result.files {
                *file = line(file);
            }
        }
        TaskEventKind::Failed {
            reason, message, ..
        } => {
            *reason = line(reason);
            *message = lines(message);
        }
        TaskEventKind::Started | TaskEventKind::Heartbeat | TaskEventKind::Unknown => {}
    }
    event
}

/// Records when attempt `attempt` started, from a Started event written with its outcome
/// (see [`crate::task::lanes`]), if `status` is that attempt's and has no start time.
pub fn started_at(status: &mut TaskStatus, attempt: u32, at: Timestamp) {
    let same = u32::try_from(status.attempt).is_ok_and(|a| a == attempt);
    if same && status.start_time.is_none() {
        status.start_time = Some(Time(at));
    }
}

/// `status` (with the result recorded) once the live attempt delivered `result`, which
/// `command` must now verify: delivered, not done.
fn verifying(status: &mut TaskStatus, result: &TaskResult, command: &str, now: Timestamp) {
    status.phase = Some(TaskPhase::Verifying);
    status.message = Some(format!(
        "attempt {} delivered; verifying it with `{command}`",
        status.attempt
    ));
    status.verification = Some(crate::verify::start(
        command.to_owned(),
        result.commit.clone(),
        now,
    ));
    succeeded(
        status,
        "Unknown",
        reasons::VERIFYING,
        "the delivered work is being verified",
        now,
    );
}

/// The task's status when what an agent reported for the live attempt cannot be
/// recorded (the API server refused it as invalid, or its plan is too large to keep):
/// the attempt fails with `reason` and `message`, its usage counted, and is retried
/// under the task's policy, as if the agent had reported the failure. `None` when the
/// event would change nothing (see [`apply_event`]).
pub fn refuse_outcome(
    task: &Task,
    policy: &TaskPolicy,
    event: &TaskEvent,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> Option<TaskStatus> {
    let usage = match &event.kind {
        TaskEventKind::Succeeded { usage, .. } | TaskEventKind::Failed { usage, .. } => {
            usage.clone()
        }
        _ => Usage::default(),
    };
    let failed = TaskEvent {
        kind: TaskEventKind::Failed {
            reason: reason.to_owned(),
            message: message.to_owned(),
            retryable: true,
            usage,
        },
        ..event.clone()
    };
    apply_event(task, policy, &failed, now)
}

#[cfg(test)]
mod tests {
    use aios_crds::bus::{ObjectRef, SCHEMA_VERSION};

    use super::*;
    use crate::testing::{task, ts};

    fn policy(max_retries: i32) -> TaskPolicy {
        TaskPolicy {
            max_retries,
            backoff: Backoff {
                duration_seconds: 10,
                factor: 2,
                max_duration_seconds: 60,
            },
            timeout: Some(Duration::from_secs(600)),
            verify: None,
            heartbeat_timeout: Duration::from_secs(60),
        }
    }

    fn event(t: &Task, attempt: u32, kind: TaskEventKind, at: i64) -> TaskEvent {
        let obj = ObjectRef {
            namespace: "ns".into(),
            name: t.metadata.name.clone().unwrap(),
            uid: t.metadata.uid.clone().unwrap(),
        };
        TaskEvent {
            schema_version: SCHEMA_VERSION,
            project: obj.clone(),
            task: obj,
            attempt,
            agent: "apollo-1".into(),
            token: String::new(),
            at: ts(at),
            kind,
        }
    }

    #[test]
    fn an_attempt_is_over_once_a_copy_shows_it_ended_or_a_later_one() {
        let at = |phase: TaskPhase, attempt: i32| {
            let mut t = crate::testing::with_phase(task("a", &[]), phase);
            t.status.as_mut().unwrap().attempt = attempt;
            t
        };
        let running = at(TaskPhase::Running, 2);
        assert!(attempt_over(&running, 1));
        assert!(!attempt_over(&running, 2));
        assert!(
            !attempt_over(&running, 3),
            "not dispatched yet, as far as this copy knows"
        );
        assert!(attempt_over(&at(TaskPhase::Succeeded, 2), 2));
        // Failed and waiting for its retry: attempt 2 is over, attempt 3 is next.
        let retrying = at(TaskPhase::Pending, 2);
        assert!(attempt_over(&retrying, 2));
        assert!(!attempt_over(&retrying, 3));
        assert!(!attempt_over(&task("a", &[]), 1), "never dispatched");
    }

    #[test]
    fn tasks_are_found_by_name_in_any_order_and_the_last_of_a_name_wins() {
        let (a, b, c) = (task("a", &[]), task("b", &[]), task("c", &[]));
        let mut later_b = task("b", &[]);
        later_b.spec.title = "later".into();
        let named = by_name([&c, &a, &b, &later_b]);
        assert_eq!(named.get("a").map(name_of), Some("a"));
        assert_eq!(named.get("c").map(name_of), Some("c"));
        assert_eq!(named.get("b").map(|t| t.spec.title.as_str()), Some("later"));
        assert!(named.get("d").is_none() && named.get("").is_none());
        let sorted = ByName::sorted([&a, &b, &c]);
        for name in ["a", "b", "c"] {
            assert_eq!(sorted.get(name).map(name_of), Some(name));
        }
        assert!(sorted.get("bb").is_none());
    }

    #[test]
    fn backoff_grows_by_the_factor_and_stops_at_the_cap() {
        let b = Backoff {
            duration_seconds: 10,
            factor: 2,
            max_duration_seconds: 60,
        };
        let delays: Vec<u64> = (1..=6).map(|n| retry_delay(&b, n).as_secs()).collect();
        assert_eq!(delays, [10, 20, 40, 60, 60, 60]);
        let huge = Backoff {
            duration_seconds: i32::MAX,
            factor: 10,
            max_duration_seconds: 300,
        };
        assert_eq!(
            retry_delay(&huge, 40).as_secs(),
            300,
            "overflow saturates at the cap"
        );
    }

    #[test]
    fn retry_times_are_never_rounded_below_the_backoff() {
        let t = ts(10)
            .checked_add(jiff::SignedDuration::from_millis(300))
            .unwrap();
        assert_eq!(ceil_to_second(t), ts(11));
        assert_eq!(ceil_to_second(ts(10)), ts(10));
    }

    #[test]
    fn task_settings_override_project_defaults() {
        let mut t = task("shop-api", &[]);
        let defaults = TaskDefaults::default();
        assert_eq!(task_policy(&t, &defaults).max_retries, 2);
        assert_eq!(
            task_policy(&t, &defaults).timeout,
            Some(Duration::from_secs(1800))
        );
        t.spec.max_retries = Some(0);
        t.spec.timeout_seconds = Some(0);
        let p = task_policy(&t, &defaults);
        assert_eq!((p.max_retries, p.timeout), (0, None));
    }

    #[test]
    fn a_failed_attempt_is_retried_with_backoff_until_retries_run_out() {
        let mut t = task("shop-api", &[]);
        t.status = Some(queued(&t, 1, ts(0)));
        let s = fail_attempt(&t, &policy(1), "InvalidOutput", "not JSON", true, ts(100));
        assert_eq!(s.phase, Some(TaskPhase::Pending));
        assert_eq!(s.next_attempt_time, Some(Time(ts(110))));
        assert_eq!(
            condition(&s.conditions, "Succeeded").unwrap().status,
            "Unknown"
        );

        t.status = Some(queued(&t, 2, ts(110)));
        let s = fail_attempt(&t, &policy(1), "InvalidOutput", "not JSON", true, ts(200));
        assert_eq!(s.phase, Some(TaskPhase::Failed));
        let c = condition(&s.conditions, "Succeeded").unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "InvalidOutput")
        );
        assert!(s.message.unwrap().contains("no retries are left"));
    }

    #[test]
    fn a_non_retryable_failure_fails_at_once() {
        let mut t = task("shop-api", &[]);
        t.status = Some(queued(&t, 1, ts(0)));
        let s = fail_attempt(
            &t,
            &policy(5),
            "BudgetExceeded",
            "budget spent",
            false,
            ts(5),
        );
        assert_eq!(s.phase, Some(TaskPhase::Failed));
    }

    #[test]
    fn a_heartbeat_is_recorded_once_per_half_timeout_and_never_for_another_attempt() {
        let mut t = task("shop-api", &[]);
        t.status = Some(queued(&t, 2, ts(0)));
        let p = policy(2); // heartbeat timeout 60 s: one write per 30 s
        t.status = apply_event(&t, &p, &event(&t, 2, TaskEventKind::Started, 5), ts(5));
        let beat = |t: &Task, at: i64| event(t, 2, TaskEventKind::Heartbeat, at);
        for at in [10, 20, 34] {
            assert!(heartbeat_needless(&t, &p, &beat(&t, at)), "{at}");
            assert_eq!(apply_event(&t, &p, &beat(&t, at), ts(at)), None, "{at}");
        }
        assert!(!heartbeat_needless(&t, &p, &beat(&t, 35)));
        t.status = apply_event(&t, &p, &beat(&t, 35), ts(35));
        assert_eq!(
            t.status.as_ref().unwrap().last_heartbeat_time,
            Some(Time(ts(35)))
        );
        assert!(heartbeat_needless(&t, &p, &beat(&t, 64)));
        assert!(!heartbeat_needless(&t, &p, &beat(&t, 65)));
        // Another attempt's beat is never taken for this one's.
        assert!(!heartbeat_needless(
            &t,
            &p,
            &event(&t, 3, TaskEventKind::Heartbeat, 40)
        ));
        // Nor is a start: it moves the phase.
        assert!(!heartbeat_needless(
            &t,
            &p,
            &event(&t, 2, TaskEventKind::Started, 40)
        ));
    }

    /// A hostile agent (or the model behind it) writes terminal escapes and
    /// bidirectional controls into what it reports: none reaches the status.
    #[test]
    fn what_an_agent_reports_reaches_the_status_without_control_characters() {
        const TITLE: &str = "\u{1b}]0;pwned\u{7}";
        const CLEAR: &str = "\u{1b}[2J\u{1b}[H";
        let hostile = |text: &str| format!("{TITLE}{text}\u{202E}{CLEAR}\r");
        let readable = |text: &str| {
            !text
                .chars()
                .any(|c| (c.is_control() && c != '\n' && c != '\t') || text::is_bidi_control(c))
        };
        let mut t = task("shop-api", &[]);
        t.status = Some(queued(&t, 1, ts(0)));
        let p = policy(0);
        let mut started = event(&t, 1, TaskEventKind::Started, 1);
        started.agent = hostile("apollo");
        let running = apply_event(&t, &p, &started, ts(1)).unwrap();
        let texts = |s: &TaskStatus| {
            let mut all = vec![
                s.agent.clone().unwrap_or_default(),
                s.message.clone().unwrap_or_default(),
            ];
            for c in &s.conditions {
                all.extend([c.reason.clone(), c.message.clone()]);
            }
            if let Some(r) = &s.result {
                all.push(r.summary.clone());
                all.extend(r.notes.clone());
                all.extend(r.commit.clone());
                all.extend(r.files.clone());
            }
            all
        };
        for text in texts(&running) {
            assert!(readable(&text), "{text:?}");
        }
        t.status = Some(running);

        let delivered = TaskEventKind::Succeeded {
            output: TaskResult {
                summary: hostile("built\nit"),
                notes: Some(hostile("note")),
                commit: Some(hostile("abc123")),
                files: vec![hostile("src/main.rs")],
                ..TaskResult::default()
            }
            .into(),
            usage: Usage::default(),
        };
        let ok = apply_event(&t, &p, &event(&t, 1, delivered, 2), ts(2)).unwrap();
        for text in texts(&ok) {
            assert!(readable(&text), "{text:?}");
        }
        let result = ok.result.as_ref().unwrap();
        assert_eq!(
            result.summary, "]0;pwnedbuilt\nit[2J[H",
            "the text itself stays"
        );
        assert_eq!(result.files, ["]0;pwnedsrc/main.rs[2J[H"]);

        let failed = TaskEventKind::Failed {
            reason: hostile("Broken"),
            message: hostile("tests\tfailed"),
            retryable: false,
            usage: Usage::default(),
        };
        let gone = apply_event(&t, &p, &event(&t, 1, failed, 2), ts(2)).unwrap();
        assert_eq!(gone.phase, Some(TaskPhase::Failed));
        for text in texts(&gone) {
            assert!(readable(&text), "{text:?}");
        }
        assert!(
            condition(&gone.conditions, "Succeeded")
                .unwrap()
                .message
                .contains("tests\tfailed")
        );
    }

    #[test]
    fn events_move_the_task_and_duplicates_or_stale_ones_change_nothing() {
        let mut t = task("shop-api", &[]);
        t.status = Some(queued(&t, 2, ts(0)));
        let p = policy(2);

        let started = apply_event(&t, &p, &event(&t, 2, TaskEventKind::Started, 5), ts(5)).unwrap();
        assert_eq!(started.phase, Some(TaskPhase::Running));
        assert_eq!(started.agent.as_deref(), Some("apollo-1"));
        t.status = Some(started);
        assert_eq!(
            apply_event(&t, &p, &event(&t, 2, TaskEventKind::Started, 5), ts(6)),
            None,
            "duplicate"
        );
        assert_eq!(
            apply_event(&t, &p, &event(&t, 1, TaskEventKind::Heartbeat, 7), ts(7)),
            None,
            "older attempt"
        );

        let beat =
            apply_event(&t, &p, &event(&t, 2, TaskEventKind::Heartbeat, 40), ts(40)).unwrap();
        assert_eq!(beat.last_heartbeat_time, Some(Time(ts(40))));
        t.status = Some(beat);
        assert_eq!(
            apply_event(&t, &p, &event(&t, 2, TaskEventKind::Heartbeat, 35), ts(41)),
            None,
            "reordered heartbeat"
        );

        let done = TaskEventKind::Succeeded {
            output: TaskResult {
                summary: "built".into(),
                ..TaskResult::default()
            }
            .into(),
            usage: Usage {
                input_tokens: 10,
                local_requests: 1,
                ..Usage::default()
            },
        };
        let ok = apply_event(&t, &p, &event(&t, 2, done.clone(), 30), ts(30)).unwrap();
        assert_eq!(ok.phase, Some(TaskPhase::Succeeded));
        assert_eq!(
            condition(&ok.conditions, "Succeeded").unwrap().status,
            "True"
        );
        assert_eq!(ok.usage.as_ref().unwrap().input_tokens, 10);
        t.status = Some(ok);
        assert_eq!(
            apply_event(&t, &p, &event(&t, 2, done, 31), ts(31)),
            None,
            "duplicate success"
        );
        let late_failure = TaskEventKind::Failed {
            reason: "X".into(),
            message: "x".into(),
            retryable: true,
            usage: Usage::default(),
        };
        assert_eq!(
            apply_event(&t, &p, &event(&t, 2, late_failure, 32), ts(32)),
            None,
            "finished tasks stay finished"
        );
    }

    #[test]
    fn a_poisoned_dispatch_fails_the_live_attempt_for_good() {
        let mut t = task("shop-api", &[]);
        let s = apply_poison(&t, &policy(3), "uid-shop-api", 1, ts(1)).unwrap();
        assert_eq!(
            (s.phase, s.attempt),
            (Some(TaskPhase::Failed), 1),
            "before Queued was recorded"
        );
        assert_eq!(
            condition(&s.conditions, "Succeeded").unwrap().reason,
            "PoisonMessage"
        );
        t.status = Some(queued(&t, 1, ts(0)));
        assert!(apply_poison(&t, &policy(3), "uid-shop-api", 1, ts(1)).is_some());
        assert!(
            apply_poison(&t, &policy(3), "uid-shop-api", 2, ts(1)).is_none(),
            "not dispatched yet"
        );
        assert!(apply_poison(&t, &policy(3), "other-uid", 1, ts(1)).is_none());
        t.status = Some(fail_attempt(&t, &policy(3), "X", "x", true, ts(2)));
        t.status = Some(queued(&t, 2, ts(3)));
        assert!(
            apply_poison(&t, &policy(3), "uid-shop-api", 1, ts(4)).is_none(),
            "an older attempt"
        );
    }

    #[test]
    fn a_second_agent_reporting_the_same_attempt_does_not_restart_it() {
        let mut t = task("shop-api", &[]);
        t.status = Some(queued(&t, 1, ts(0)));
        let p = policy(1);
        t.status =
            Some(apply_event(&t, &p, &event(&t, 1, TaskEventKind::Started, 5), ts(5)).unwrap());
        let mut other = event(&t, 1, TaskEventKind::Started, 50);
        other.agent = "apollo-2".into();
        let s = apply_event(&t, &p, &other, ts(50)).unwrap();
        assert_eq!(
            s.start_time,
            Some(Time(ts(5))),
            "the deadline still counts from the first start"
        );
        assert_eq!(s.agent.as_deref(), Some("apollo-1"));
        assert_eq!(s.last_heartbeat_time, Some(Time(ts(50))));
        t.status = Some(s);
        assert!(
            apply_poison(&t, &p, "uid-shop-api", 1, ts(60)).is_none(),
            "a running attempt is not poisoned"
        );
    }

    #[test]
    fn an_event_for_a_recreated_task_is_ignored() {
        let t = task("shop-api", &[]);
        let mut e = event(&t, 1, TaskEventKind::Started, 1);
        e.task.uid = "another-uid".into();
        assert_eq!(apply_event(&t, &policy(1), &e, ts(1)), None);
    }

    #[test]
    fn an_event_may_arrive_before_the_queued_status_is_written() {
        let t = task("shop-api", &[]);
        let s = apply_event(
            &t,
            &policy(1),
            &event(&t, 1, TaskEventKind::Started, 1),
            ts(1),
        )
        .unwrap();
        assert_eq!((s.phase, s.attempt), (Some(TaskPhase::Running), 1));
    }

    #[test]
    fn a_failed_event_accumulates_usage_and_retries() {
        let mut t = task("shop-api", &[]);
        t.status = Some(queued(&t, 1, ts(0)));
        let failed = TaskEventKind::Failed {
            reason: "InvalidOutput".into(),
            message: "bad".into(),
            retryable: true,
            usage: Usage {
                output_tokens: 7,
                ..Usage::default()
            },
        };
        let s = apply_event(&t, &policy(2), &event(&t, 1, failed, 3), ts(3)).unwrap();
        assert_eq!(s.phase, Some(TaskPhase::Pending));
        assert_eq!(s.usage.unwrap().output_tokens, 7);
    }

    #[test]
    fn a_result_that_cannot_be_recorded_fails_the_attempt_with_the_reason_and_its_usage() {
        let mut t = task("shop-plan", &[]);
        t.status = Some(queued(&t, 1, ts(0)));
        let p = policy(2);
        t.status =
            Some(apply_event(&t, &p, &event(&t, 1, TaskEventKind::Started, 1), ts(1)).unwrap());
        let done = TaskEventKind::Succeeded {
            output: TaskResult {
                summary: "planned".into(),
                ..TaskResult::default()
            }
            .into(),
            usage: Usage {
                output_tokens: 9,
                ..Usage::default()
            },
        };
        let refused = "Task.aios.dev \"shop-plan\" is invalid: status.result.summary: Too long";
        let s = refuse_outcome(
            &t,
            &p,
            &event(&t, 1, done.clone(), 2),
            reasons::RESULT_REFUSED,
            refused,
            ts(2),
        )
        .unwrap();
        assert_eq!(s.phase, Some(TaskPhase::Pending), "retried");
        assert_eq!(s.result, None);
        assert_eq!(s.usage.unwrap().output_tokens, 9);
        let c = condition(&s.conditions, "Succeeded").unwrap();
        assert_eq!(
            (c.reason.as_str(), c.message.as_str()),
            ("ResultRefused", refused)
        );
        assert!(s.message.unwrap().contains(refused));
        let mut finished = t.clone();
        finished.status = Some(apply_event(&t, &p, &event(&t, 1, done.clone(), 3), ts(3)).unwrap());
        assert_eq!(
            refuse_outcome(&finished, &p, &event(&t, 1, done, 4), "X", "x", ts(4)),
            None,
            "a finished attempt stays finished"
        );
    }

    #[test]
    fn an_agents_plan_reference_is_not_recorded() {
        let mut t = task("shop-plan", &[]);
        t.status = Some(queued(&t, 1, ts(0)));
        let mut result = TaskResult {
            summary: "planned".into(),
            ..TaskResult::default()
        };
        result.plan_ref = Some(aios_crds::task::PlanRef {
            config_maps: vec!["someone-elses".into()],
            ..aios_crds::task::PlanRef::default()
        });
        let done = TaskEventKind::Succeeded {
            output: result.into(),
            usage: Usage::default(),
        };
        let s = apply_event(&t, &policy(1), &event(&t, 1, done, 1), ts(1)).unwrap();
        assert_eq!(s.result.unwrap().plan_ref, None);
    }

    #[test]
    fn a_success_that_wrote_files_is_verified_before_it_counts() {
        let running = crate::testing::with_phase(task("api", &[]), TaskPhase::Running);
        let mut verified = policy(1);
        verified.verify = Some("pytest -q".into());
        let done = |files: Vec<String>| TaskEventKind::Succeeded {
            output: TaskResult {
                summary: "built".into(),
                files,
                commit: Some("c1".into()),
                ..TaskResult::default()
            }
            .into(),
            usage: Usage::default(),
        };
        let status = apply_event(
            &running,
            &verified,
            &event(&running, 1, done(vec!["app.py".into()]), 1),
            ts(1),
        )
        .unwrap();
        assert_eq!(status.phase, Some(TaskPhase::Verifying));
        assert_eq!(status.completion_time, None, "not done yet");
        let c = condition(&status.conditions, "Succeeded").unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("Unknown", "Verifying")
        );
        let v = status.verification.unwrap();
        assert_eq!(
            (v.command.as_str(), v.commit.as_deref(), v.round),
            ("pytest -q", Some("c1"), 0)
        );
        let none = apply_event(
            &running,
            &verified,
            &event(&running, 1, done(Vec::new()), 1),
            ts(1),
        )
        .unwrap();
        assert_eq!(
            none.phase,
            Some(TaskPhase::Succeeded),
            "nothing written, nothing to verify"
        );
        let unverified = apply_event(
            &running,
            &policy(1),
            &event(&running, 1, done(vec!["a".into()]), 1),
            ts(1),
        )
        .unwrap();
        assert_eq!(
            unverified.phase,
            Some(TaskPhase::Succeeded),
            "no spec.verify"
        );
    }
}
