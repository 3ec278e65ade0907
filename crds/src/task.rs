//! `Task`: one unit of work for one role.

use crate::CompactString;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    common::{Complexity, DnsLabel, Usage},
    limits,
};

/// What a Task asks for: the work, who does it, and what it waits on.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "aios.dev",
    version = "v1alpha1",
    kind = "Task",
    doc = "One unit of work for one role, dispatched to that role's agents when its dependencies have succeeded.",
    namespaced,
    derive = "PartialEq",
    status = "TaskStatus",
    shortname = "tk",
    category = "aios",
    printcolumn = r#"{"name":"Project","type":"string","jsonPath":".spec.project","description":"The Project the task belongs to"}"#,
    printcolumn = r#"{"name":"Role","type":"string","jsonPath":".spec.role","description":"The role that does the task"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase","description":"Where the task is in its life"}"#,
    printcolumn = r#"{"name":"Agent","type":"string","jsonPath":".status.agent","description":"The agent that ran the latest attempt"}"#,
    printcolumn = r#"{"name":"Attempt","type":"integer","jsonPath":".status.attempt","description":"The latest attempt, from 1"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    selectable = ".spec.project",
    selectable = ".spec.role",
    validation = Rule::new("!has(self.spec.dependsOn) || !(self.metadata.name in self.spec.dependsOn)").message("a task cannot depend on itself").field_path(".spec.dependsOn")
)]
#[serde(rename_all = "camelCase")]
pub struct TaskSpec {
    /// The name of the Project (in the same namespace) this task belongs to. It cannot
    /// change after creation.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.project cannot change after creation"))]
    pub project: String,

    /// A one-line title.
    #[schemars(length(min = 1, max = limits::TITLE_MAX_CHARS))]
    pub title: String,

    /// What to do, in enough detail for the agent to do it without asking.
    #[serde(default)]
    #[schemars(length(max = limits::DESCRIPTION_MAX_CHARS))]
    pub description: String,

    /// The role whose agents do the task.
    pub role: DnsLabel,

    /// Names of Tasks of the same Project, in the same namespace, that must succeed
    /// before this one is dispatched.
    // A `CompactString` each: the operator caches every Task, and a name of up to 24
    // bytes then needs no allocation of its own.
    #[serde(default)]
    #[schemars(
        with = "Vec<String>",
        length(max = limits::TASK_DEPENDENCIES_MAX),
        inner(length(min = 1, max = limits::DEPENDENCY_NAME_MAX_LEN))
    )]
    pub depends_on: Vec<CompactString>,

    /// How hard the task is; the router picks a model able to take it.
    #[serde(default)]
    pub complexity: Complexity,

    /// Checks the result must pass, in plain language.
    #[serde(default)]
    #[schemars(length(max = limits::ACCEPTANCE_CRITERIA_MAX))]
    pub acceptance_criteria: Vec<String>,

    /// Retries after the first attempt fails; the Project's task default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = limits::RETRIES_MAX))]
    pub max_retries: Option<i32>,

    /// How long one attempt may run, in seconds; the Project's task default when unset;
    /// 0 means no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub timeout_seconds: Option<i32>,

    /// Among ready tasks, higher priority is dispatched first.
    #[serde(default)]
    pub priority: i32,

    /// Pins the task to a provider or a model, bypassing the router's choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelPin>,

    /// The task's own check, run after the Project's `spec.verify` on its commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<crate::verify::TaskVerify>,
}

/// A provider or model a task must use.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelPin {
    /// The ModelProvider (by name, same namespace) to use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The model to use, as the provider names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// Where a Task is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum TaskPhase {
    /// Waiting on dependencies, concurrency, a provider or a retry backoff.
    #[default]
    Pending,
    /// Published to the bus; no agent has started it yet.
    Queued,
    /// An agent is working on it.
    Running,
    /// Delivered; the delivered work is being verified (`status.verification`), or fixed
    /// by a fix task after a failed verification. Dependents wait.
    Verifying,
    /// Done; the result is in `status.result` (and, with verification, it passed).
    Succeeded,
    /// Failed with no retries left; `status.message` says why.
    Failed,
    /// Not run because a dependency failed and the Project does not fail fast.
    Skipped,
    /// Stopped because its Project failed or was deleted.
    Cancelled,
}

impl TaskPhase {
    /// Whether the task has finished for good.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Skipped | Self::Cancelled
        )
    }

    /// Whether an attempt is in flight (on the bus or with an agent).
    pub fn is_in_flight(self) -> bool {
        matches!(self, Self::Queued | Self::Running)
    }
}

/// The observed state of a Task, written only by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskStatus {
    /// Where the task is in its life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<TaskPhase>,

    /// The latest attempt, counting from 1; 0 before the first dispatch.
    #[serde(default)]
    pub attempt: i32,

    /// The agent (pod) that ran the latest attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,

    /// What the task produced, once it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<TaskResult>,

    /// The verification of the delivered work (with the Project's `spec.verify`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<crate::verify::VerificationStatus>,

    /// Model usage summed over all attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,

    /// A sentence a person can act on: why the task waits, or why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// `Succeeded`: Unknown while in flight; True or False with a CamelCase reason when
    /// done, as in Tekton. And kstatus's `Ready` (succeeded), `Reconciling` (in flight)
    /// and `Stalled` (failed, skipped or cancelled).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// When the latest attempt was published to the bus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_time: Option<Time>,

    /// When an agent started the latest attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,

    /// When the latest heartbeat of the running attempt arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_time: Option<Time>,

    /// When a failed attempt may be retried (the end of its backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_time: Option<Time>,

    /// When the task finished for good.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,

    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// What a task produced.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskResult {
    /// What was done, in a few sentences; dependents receive it as context.
    #[serde(default)]
    pub summary: String,

    /// Paths, relative to the repository root, the task wrote.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,

    /// The commit that delivered the files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,

    /// Anything the agent wants people or later tasks to know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,

    /// For a planning task: where the operator keeps the plan the agent reported, which
    /// Hera turns into Tasks. The plan is not held here: a 1,000-task plan is larger than
    /// an object may be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_ref: Option<PlanRef>,
}

/// Where a planning task's plan is kept: the compact JSON of its tasks, cut into parts,
/// one ConfigMap per part in the Task's namespace, owned by the Task.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlanRef {
    /// The ConfigMaps holding the parts, in order; each keeps its part under the key
    /// `plan.json`.
    #[schemars(length(max = limits::PLAN_PARTS_MAX))]
    pub config_maps: Vec<String>,
    /// The SHA-256 of the whole JSON, in lowercase hex: the parts read back must match it.
    #[schemars(length(equal = 64))]
    pub sha256: String,
    /// How many tasks the plan has.
    #[schemars(range(min = 0))]
    pub tasks: i32,
    /// How many bytes the JSON has.
    #[schemars(range(min = 0))]
    pub bytes: i64,
}
