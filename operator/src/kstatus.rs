//! The kstatus conditions every AIOS kind carries, so that Flux, Helm's `--wait`,
//! `kubectl wait --for=condition=Ready` and Argo CD read an object's health the way
//! they read any well-behaved resource: `Ready`, `Reconciling` and `Stalled`, each with
//! a CamelCase reason, beside the status's `observedGeneration`.
//!
//! Pure: each controller decides its object's [`Health`] and [`set_health`] writes the
//! three conditions from it.

use aios_crds::{
    ProjectPhase, TaskPhase, TaskStatus,
    conditions::{self, reasons},
};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::task::lifecycle::{condition, set_condition};

/// What an object's status says of it, in kstatus's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Done what it was asked: `Ready` True.
    Ready {
        /// CamelCase.
        reason: String,
        /// For a person.
        message: String,
    },
    /// Work in flight: `Reconciling` True.
    Reconciling {
        /// CamelCase: what is in flight.
        reason: String,
        /// For a person.
        message: String,
    },
    /// Cannot progress without a person: `Stalled` True.
    Stalled {
        /// CamelCase: why.
        reason: String,
        /// For a person: what went wrong.
        message: String,
    },
    /// Neither in flight nor stalled nor ready (a suspended Project): all three False.
    Idle {
        /// CamelCase.
        reason: String,
        /// For a person.
        message: String,
    },
}

impl Health {
    fn parts(&self) -> (&str, &str) {
        match self {
            Self::Ready { reason, message }
            | Self::Reconciling { reason, message }
            | Self::Stalled { reason, message }
            | Self::Idle { reason, message } => (reason, message),
        }
    }
}

/// Sets `Ready`, `Reconciling` and `Stalled` from `health`, each marked with the
/// generation it was computed from. The one that holds carries the reason and message;
/// the others are False with the same reason, so each reads on its own.
pub fn set_health(
    conditions: &mut Vec<Condition>,
    health: &Health,
    generation: Option<i64>,
    now: Timestamp,
) {
    let (reason, message) = health.parts();
    let holds = |wanted: bool| if wanted { "True" } else { "False" };
    let ready = matches!(health, Health::Ready { .. });
    let reconciling = matches!(health, Health::Reconciling { .. });
    let stalled = matches!(health, Health::Stalled { .. });
    for (type_, value) in [
        (conditions::READY, ready),
        (conditions::RECONCILING, reconciling),
        (conditions::STALLED, stalled),
    ] {
        set_condition(conditions, type_, holds(value), reason, message, now);
        if let Some(c) = conditions.iter_mut().find(|c| c.type_ == type_) {
            c.observed_generation = generation;
        }
    }
}

/// A Project's health from its phase and `Succeeded` condition; a spent budget stalls an
/// unfinished Project.
pub fn project(
    phase: ProjectPhase,
    conditions: &[Condition],
    budget_exceeded: bool,
    progress: &str,
) -> Health {
    let succeeded = condition(conditions, conditions::SUCCEEDED);
    let message = succeeded.map(|c| c.message.clone()).unwrap_or_default();
    match phase {
        ProjectPhase::Succeeded => Health::Ready {
            reason: reasons::SUCCEEDED.to_owned(),
            message,
        },
        ProjectPhase::Failed => Health::Stalled {
            reason: succeeded
                .map_or(reasons::TASK_FAILED, |c| c.reason.as_str())
                .to_owned(),
            message,
        },
        ProjectPhase::Suspended => Health::Idle {
            reason: reasons::SUSPENDED.to_owned(),
            message,
        },
        _ if budget_exceeded => Health::Stalled {
            reason: reasons::BUDGET_EXCEEDED.to_owned(),
            message: format!(
                "the model budget is spent: no new dispatches ({progress} tasks succeeded)"
            ),
        },
        in_flight => Health::Reconciling {
            reason: format!("{in_flight:?}"),
            message: if message.is_empty() {
                format!("{in_flight:?}: {progress} tasks succeeded")
            } else {
                message
            },
        },
    }
}

/// A Task's health from its phase, message and `Succeeded` condition.
pub fn task(status: &TaskStatus) -> Health {
    let phase = status.phase.unwrap_or_default();
    let succeeded = condition(&status.conditions, conditions::SUCCEEDED);
    let message = status
        .message
        .clone()
        .or_else(|| succeeded.map(|c| c.message.clone()))
        .unwrap_or_else(|| format!("{phase:?}"));
    let reason_or = |fallback: &str| {
        succeeded
            .map(|c| c.reason.as_str())
            .filter(|r| !r.is_empty())
            .unwrap_or(fallback)
            .to_owned()
    };
    match phase {
        TaskPhase::Succeeded => Health::Ready {
            reason: reasons::SUCCEEDED.to_owned(),
            message,
        },
        TaskPhase::Failed => Health::Stalled {
            reason: reason_or(reasons::TASK_FAILED),
            message,
        },
        TaskPhase::Skipped => Health::Stalled {
            reason: reasons::DEPENDENCY_FAILED.to_owned(),
            message,
        },
        TaskPhase::Cancelled => Health::Stalled {
            reason: reasons::CANCELLED.to_owned(),
            message,
        },
        in_flight => Health::Reconciling {
            reason: format!("{in_flight:?}"),
            message,
        },
    }
}

/// `status` with its kstatus conditions and `observedGeneration` brought up to date.
pub fn with_task_health(
    mut status: TaskStatus,
    generation: Option<i64>,
    now: Timestamp,
) -> TaskStatus {
    let health = task(&status);
    set_health(&mut status.conditions, &health, generation, now);
    status.observed_generation = generation;
    status
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap()
    }

    fn get<'a>(conditions: &'a [Condition], type_: &str) -> &'a Condition {
        condition(conditions, type_).unwrap()
    }

    fn values(conditions: &[Condition]) -> [String; 3] {
        [
            conditions::READY,
            conditions::RECONCILING,
            conditions::STALLED,
        ]
        .map(|t| get(conditions, t).status.clone())
    }

    #[test]
    fn exactly_one_condition_holds_and_each_carries_the_generation() {
        let mut c = Vec::new();
        let stalled = Health::Stalled {
            reason: "TaskFailed".into(),
            message: "task a failed".into(),
        };
        set_health(&mut c, &stalled, Some(3), at(10));
        assert_eq!(values(&c), ["False", "False", "True"]);
        for t in [
            conditions::READY,
            conditions::RECONCILING,
            conditions::STALLED,
        ] {
            assert_eq!(get(&c, t).observed_generation, Some(3));
            assert_eq!(get(&c, t).reason, "TaskFailed");
        }
        let idle = Health::Idle {
            reason: "Suspended".into(),
            message: "spec.suspend is true".into(),
        };
        set_health(&mut c, &idle, Some(4), at(20));
        assert_eq!(values(&c), ["False", "False", "False"]);
        // Ready stayed False: its transition time is kept; Stalled flipped.
        assert_eq!(get(&c, conditions::READY).last_transition_time.0, at(10));
        assert_eq!(get(&c, conditions::STALLED).last_transition_time.0, at(20));
    }

    #[test]
    fn project_phases_map_to_kstatus() {
        let failed = {
            let mut c = Vec::new();
            set_condition(
                &mut c,
                conditions::SUCCEEDED,
                "False",
                "PlanInvalid",
                "bad plan",
                at(1),
            );
            c
        };
        let cases = [
            (
                ProjectPhase::Pending,
                &[][..],
                false,
                "Reconciling",
                "Pending",
            ),
            (
                ProjectPhase::Planning,
                &[][..],
                false,
                "Reconciling",
                "Planning",
            ),
            (
                ProjectPhase::Running,
                &[][..],
                false,
                "Reconciling",
                "Running",
            ),
            (
                ProjectPhase::Running,
                &[][..],
                true,
                "Stalled",
                "BudgetExceeded",
            ),
            (
                ProjectPhase::Succeeded,
                &[][..],
                false,
                "Ready",
                "Succeeded",
            ),
            (
                ProjectPhase::Failed,
                &failed[..],
                false,
                "Stalled",
                "PlanInvalid",
            ),
            (ProjectPhase::Suspended, &[][..], true, "Idle", "Suspended"),
        ];
        for (phase, conds, budget, kind, reason) in cases {
            let health = project(phase, conds, budget, "1/2");
            let (got_reason, _) = health.parts();
            let got_kind = format!("{health:?}");
            assert!(got_kind.starts_with(kind), "{phase:?}: {health:?}");
            assert_eq!(got_reason, reason, "{phase:?}");
        }
        let Health::Stalled { message, .. } = project(ProjectPhase::Failed, &failed, false, "0/1")
        else {
            panic!("a failed Project is stalled");
        };
        assert_eq!(message, "bad plan");
    }

    #[test]
    fn task_phases_map_to_kstatus_with_the_failure_reason() {
        let mut failed = TaskStatus {
            phase: Some(TaskPhase::Failed),
            message: Some("attempt 3 failed (TimedOut)".into()),
            ..TaskStatus::default()
        };
        set_condition(
            &mut failed.conditions,
            conditions::SUCCEEDED,
            "False",
            reasons::TIMED_OUT,
            "attempt 3 failed",
            at(1),
        );
        let status = with_task_health(failed, Some(1), at(2));
        assert_eq!(values(&status.conditions), ["False", "False", "True"]);
        let stalled = get(&status.conditions, conditions::STALLED);
        assert_eq!(stalled.reason, reasons::TIMED_OUT);
        assert_eq!(stalled.message, "attempt 3 failed (TimedOut)");
        assert_eq!(status.observed_generation, Some(1));

        for (phase, expected) in [
            (TaskPhase::Pending, ["False", "True", "False"]),
            (TaskPhase::Queued, ["False", "True", "False"]),
            (TaskPhase::Running, ["False", "True", "False"]),
            (TaskPhase::Verifying, ["False", "True", "False"]),
            (TaskPhase::Succeeded, ["True", "False", "False"]),
            (TaskPhase::Skipped, ["False", "False", "True"]),
            (TaskPhase::Cancelled, ["False", "False", "True"]),
        ] {
            let status = TaskStatus {
                phase: Some(phase),
                ..TaskStatus::default()
            };
            let status = with_task_health(status, Some(1), at(2));
            assert_eq!(values(&status.conditions), expected, "{phase:?}");
        }
    }
}
