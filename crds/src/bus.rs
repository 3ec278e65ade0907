//! The messages on the bus: what the operator tells agents, and what agents report.
//!
//! Every message is JSON with a `schemaVersion`. Decoders tolerate unknown fields and
//! unknown event types, so a newer agent can talk to an older operator and the other
//! way round within one major schema version.

use std::sync::Arc;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::{
    common::{Complexity, Usage},
    project::{Budget, PathPolicy, PlannedTask, Repository, RoutingMode},
    task::{ModelPin, TaskResult},
};

/// The schema version this build writes. Readers accept any message with the same
/// major version; fields they do not know are ignored.
pub const SCHEMA_VERSION: u32 = 1;

/// Why a message could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The body is not JSON of the expected shape.
    #[error("malformed {kind} message")]
    Malformed {
        /// Which message was being decoded.
        kind: &'static str,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// The message was written by a schema version this build does not understand.
    #[error("{kind} message has schema version {found}; this build understands {SCHEMA_VERSION}")]
    UnsupportedVersion {
        /// Which message was being decoded.
        kind: &'static str,
        /// The version the message carried.
        found: u32,
    },
}

impl DecodeError {
    /// A bounded label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Malformed { .. } => "malformed",
            Self::UnsupportedVersion { .. } => "unsupported_version",
        }
    }
}

/// A message on the bus: it carries its schema version and a name for errors.
pub trait Message: Serialize + for<'de> Deserialize<'de> {
    /// Name used in error messages and metric labels.
    const KIND: &'static str;

    /// The schema version the message was written with.
    fn schema_version(&self) -> u32;

    /// Encodes the message as JSON.
    fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    /// Decodes a message, refusing a schema version this build does not understand.
    fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let message: Self =
            serde_json::from_slice(body).map_err(|source| DecodeError::Malformed {
                kind: Self::KIND,
                source,
            })?;
        let found = message.schema_version();
        if found != SCHEMA_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                kind: Self::KIND,
                found,
            });
        }
        Ok(message)
    }
}

/// Identifies a Kubernetes object across processes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    /// The object's namespace.
    pub namespace: String,
    /// The object's name.
    pub name: String,
    /// The object's uid: tells a re-created object from the one a message was about.
    pub uid: String,
}

/// The identity of one attempt of one task: what consumers deduplicate on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttemptId {
    /// The Task's uid.
    pub task_uid: String,
    /// The attempt number, from 1.
    pub attempt: u32,
}

impl AttemptId {
    /// The AMQP message id and the Redis claim key suffix: `<task uid>-<attempt>`.
    pub fn message_id(&self) -> String {
        format!("{}-{}", self.task_uid, self.attempt)
    }
}

/// Everything an agent needs to do one attempt of one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskDispatch {
    /// The schema version the message was written with.
    pub schema_version: u32,
    /// The Project the task belongs to.
    pub project: ObjectRef,
    /// The Task.
    pub task: ObjectRef,
    /// Which attempt this is, from 1.
    pub attempt: u32,
    /// The Project's brief.
    pub brief: String,
    /// Where to deliver the work.
    pub repository: Repository,
    /// What to do.
    pub spec: DispatchedTask,
    /// What the task's dependencies produced, in dependency order. Shared: the operator
    /// makes each dependency's result once for all the dependents it dispatches at once.
    #[serde(default)]
    pub dependencies: Vec<Arc<DependencyResult>>,
    /// How to route the task's model calls.
    #[serde(default)]
    pub models: ModelHints,
    /// For a planning task: the roles the namespace's Agents serve, which the plan may use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub available_roles: Vec<String>,
    /// For a re-planning attempt: what was wrong with the previous plan.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plan_feedback: Vec<String>,
    /// When the attempt times out; the agent should give up before then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Timestamp>,
    /// How often the agent must send a heartbeat while it works, in seconds.
    pub heartbeat_interval_seconds: u32,
    /// Where the agent may write: the Project's `spec.policy.paths`.
    #[serde(default, skip_serializing_if = "PathPolicy::is_empty")]
    pub paths: PathPolicy,
    /// Whether memories of the namespace's other Projects may be recalled: the
    /// Project's `spec.policy.recallAcrossProjects`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recall_across_projects: bool,
    /// The operator's token for this attempt (an HMAC of the Task's namespace, name,
    /// uid and role and the attempt number, under a key only the operator holds). The
    /// agent sends it back with every event about the attempt; an event without the
    /// right token changes nothing.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
}

impl TaskDispatch {
    /// The attempt this dispatch is for.
    pub fn attempt_id(&self) -> AttemptId {
        AttemptId {
            task_uid: self.task.uid.clone(),
            attempt: self.attempt,
        }
    }
}

impl Message for TaskDispatch {
    const KIND: &'static str = "TaskDispatch";
    fn schema_version(&self) -> u32 {
        self.schema_version
    }
}

/// The task as an agent sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DispatchedTask {
    /// The role that does the task.
    pub role: String,
    /// A one-line title.
    pub title: String,
    /// What to do.
    #[serde(default)]
    pub description: String,
    /// How hard the task is.
    #[serde(default)]
    pub complexity: Complexity,
    /// Checks the result must pass.
    #[serde(default)]
    pub acceptance_criteria: Vec<String>,
    /// True for Hera's planning task: the result must carry a plan.
    #[serde(default)]
    pub planning: bool,
}

/// What a dependency produced, as context for its dependents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DependencyResult {
    /// The dependency's Task name.
    pub task: String,
    /// Its title.
    pub title: String,
    /// Its role.
    pub role: String,
    /// Its result summary.
    pub summary: String,
    /// The files it wrote.
    #[serde(default)]
    pub files: Vec<String>,
    /// The commit that delivered them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

/// How a task's model calls are to be routed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelHints {
    /// The Project's routing mode.
    #[serde(default)]
    pub routing: RoutingMode,
    /// The Project's target share of local requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_local_ratio: Option<f64>,
    /// A provider or model the task is pinned to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<ModelPin>,
    /// Preferred providers of the role's Agent, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preferred_providers: Vec<String>,
    /// The Project's budget; agents check it against the shared counter before each call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
}

/// What an agent reports about one attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskEvent {
    /// The schema version the message was written with.
    pub schema_version: u32,
    /// The Project the task belongs to.
    pub project: ObjectRef,
    /// The Task.
    pub task: ObjectRef,
    /// The attempt the event is about; events for an older attempt are ignored.
    pub attempt: u32,
    /// The agent (pod name) that sent the event.
    pub agent: String,
    /// When the agent sent the event.
    pub at: Timestamp,
    /// The token the attempt's dispatch carried: what tells the operator the event
    /// comes from the agent the attempt was dispatched to.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
    /// What happened.
    #[serde(flatten)]
    pub kind: TaskEventKind,
}

impl TaskEvent {
    /// The attempt this event is about.
    pub fn attempt_id(&self) -> AttemptId {
        AttemptId {
            task_uid: self.task.uid.clone(),
            attempt: self.attempt,
        }
    }

    /// The routing key the event is published with.
    pub fn routing_key(&self) -> &'static str {
        self.kind.routing_key()
    }
}

impl Message for TaskEvent {
    const KIND: &'static str = "TaskEvent";
    fn schema_version(&self) -> u32 {
        self.schema_version
    }
}

/// What happened to an attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum TaskEventKind {
    /// An agent claimed the attempt and began work.
    Started,
    /// The agent is still working on the attempt.
    Heartbeat,
    /// The attempt succeeded.
    #[serde(rename_all = "camelCase")]
    Succeeded {
        /// What the task produced.
        #[serde(rename = "result")]
        output: TaskOutput,
        /// What its model calls cost.
        #[serde(default)]
        usage: Usage,
    },
    /// The attempt failed.
    #[serde(rename_all = "camelCase")]
    Failed {
        /// Why, in CamelCase (`InvalidOutput`, `BudgetExceeded`, `DeliveryConflict`, ...).
        reason: String,
        /// Why, in a sentence a person can act on.
        message: String,
        /// Whether another attempt may succeed; false fails the task at once.
        retryable: bool,
        /// What its model calls cost before it failed.
        #[serde(default)]
        usage: Usage,
    },
    /// An event type this build does not know (sent by a newer agent); ignored.
    #[serde(other)]
    Unknown,
}

impl TaskEventKind {
    /// The routing key an event of this kind is published with.
    pub fn routing_key(&self) -> &'static str {
        use crate::names::bus;
        match self {
            Self::Started => bus::EVENT_STARTED,
            Self::Heartbeat => bus::EVENT_HEARTBEAT,
            Self::Unknown => bus::EVENT_UNKNOWN,
            Self::Succeeded { .. } => bus::EVENT_SUCCEEDED,
            Self::Failed { .. } => bus::EVENT_FAILED,
        }
    }
}

/// Tells agents to stop an attempt: its Task or Project was deleted or failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskCancel {
    /// The schema version the message was written with.
    pub schema_version: u32,
    /// The Task.
    pub task: ObjectRef,
    /// The attempt to stop; agents also drop any later redelivery of it.
    pub attempt: u32,
    /// Why, in a sentence.
    pub reason: String,
}

impl TaskCancel {
    /// The attempt to stop.
    pub fn attempt_id(&self) -> AttemptId {
        AttemptId {
            task_uid: self.task.uid.clone(),
            attempt: self.attempt,
        }
    }
}

impl Message for TaskCancel {
    const KIND: &'static str = "TaskCancel";
    fn schema_version(&self) -> u32 {
        self.schema_version
    }
}

/// Something a role's agents should keep in long-term memory, from the operator: the
/// result of a verification, so that Athena (`qa`) recalls what failed and why when she
/// next writes tests. Storing the same note twice keeps one copy (memory records are
/// keyed by their content), so a note published again after an operator restart is
/// harmless.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryNote {
    /// The schema version the message was written with.
    pub schema_version: u32,
    /// The Project the note is about.
    pub project: ObjectRef,
    /// The Task it is about; none for the Project's final verification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// What it is: `verification`.
    pub kind: String,
    /// What to remember, in sentences.
    pub text: String,
}

impl MemoryNote {
    /// The kind of a verification's result.
    pub const VERIFICATION: &'static str = "verification";
}

impl Message for MemoryNote {
    const KIND: &'static str = "MemoryNote";
    fn schema_version(&self) -> u32 {
        self.schema_version
    }
}

/// A planning task's answer, as the `cto` role returns it: re-exported here so the
/// agent and the operator agree on its shape.
pub type Plan = Vec<PlannedTask>;

/// What an agent reports a task produced: the result the Task's status records and,
/// from a planning task, the plan. On the wire the plan is a field of the result
/// (`result.plan`); the operator keeps it apart (see [`crate::task::PlanRef`]) and records
/// the rest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskOutput {
    /// The result as the Task's status records it. An agent's `planRef` is ignored: only
    /// the operator says where a plan is kept.
    #[serde(flatten)]
    pub result: TaskResult,
    /// For a planning task: the plan, as the agent's model answered it (checked, maybe
    /// repaired once, but judged by Hera).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<Plan>,
}

impl From<TaskResult> for TaskOutput {
    fn from(result: TaskResult) -> Self {
        Self { result, plan: None }
    }
}
