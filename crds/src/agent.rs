//! `Agent`: a pool of workers for one role.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{EnvVar, ResourceRequirements, Toleration},
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::DnsLabel;

/// What an Agent pool asks for: its role, persona, pods and scaling.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "aios.dev",
    version = "v1alpha1",
    kind = "Agent",
    doc = "A pool of agent pods serving one role, scaled with that role's queue.",
    namespaced,
    derive = "PartialEq",
    status = "AgentStatus",
    shortname = "ag",
    category = "aios",
    printcolumn = r#"{"name":"Role","type":"string","jsonPath":".spec.role","description":"The role the agent serves"}"#,
    printcolumn = r#"{"name":"Persona","type":"string","jsonPath":".spec.persona.name","description":"The agent's persona"}"#,
    printcolumn = r#"{"name":"Desired","type":"integer","jsonPath":".status.desiredReplicas","description":"Replicas the queue asks for"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyReplicas","description":"Replicas ready to take tasks"}"#,
    printcolumn = r#"{"name":"Queued","type":"integer","jsonPath":".status.queuedTasks","description":"Tasks of the role waiting on the bus"}"#,
    printcolumn = r#"{"name":"Running","type":"integer","jsonPath":".status.runningTasks","description":"Tasks of the role being worked on"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AgentSpec {
    /// The role this pool serves; Tasks with this role are dispatched to it.
    pub role: DnsLabel,

    /// Who the agent is: its name, what it is good at, and its system prompt.
    pub persona: Persona,

    /// The agent container image; the operator's configured default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,

    /// When the kubelet pulls the agent image: `Always`, `IfNotPresent` (the default, so
    /// a versioned image loaded onto the nodes runs without a registry) or `Never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(Always|IfNotPresent|Never)$"))]
    pub image_pull_policy: Option<String>,

    /// Compute resources of the agent container; the operator's defaults when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Extra environment variables for the agent container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,

    /// Node labels the agent pods must be scheduled on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations of the agent pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// How the pool scales with the role's queue.
    #[serde(default)]
    pub scaling: Scaling,

    /// Tasks one pod works on at once.
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1, max = 64))]
    pub concurrency: i32,

    /// How long a pod being stopped may take to finish its tasks, in seconds.
    #[serde(default = "default_termination_grace_period_seconds")]
    #[schemars(range(min = 0))]
    pub termination_grace_period_seconds: i64,

    /// Which providers and models this role's calls prefer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<ModelPreferences>,
}

fn default_concurrency() -> i32 {
    1
}

fn default_termination_grace_period_seconds() -> i64 {
    600
}

/// Who an agent is.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Persona {
    /// The persona's name (Apollo, Athena, ...); commits are authored by it.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,

    /// What the agent is good at; part of its prompt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub specialties: Vec<String>,

    /// Replaces the built-in system prompt for the role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub system_prompt: Option<String>,
}

/// How an agent pool scales: desired replicas are
/// `ceil((queued + running tasks of the role) / tasksPerReplica)`, clamped to
/// `[minReplicas, maxReplicas]`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("scaling.minReplicas must not exceed scaling.maxReplicas"))]
pub struct Scaling {
    /// The fewest replicas; 0 lets the pool scale to zero when the role is idle.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub min_replicas: i32,

    /// The most replicas.
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1))]
    pub max_replicas: i32,

    /// Tasks (queued or running) one replica is meant to take.
    #[serde(default = "default_tasks_per_replica")]
    #[schemars(range(min = 1))]
    pub tasks_per_replica: i32,

    /// How long demand must stay lower before the pool scales down, in seconds.
    #[serde(default = "default_scale_down_delay_seconds")]
    #[schemars(range(min = 0))]
    pub scale_down_delay_seconds: i32,
}

impl Default for Scaling {
    fn default() -> Self {
        Self {
            min_replicas: 0,
            max_replicas: default_max_replicas(),
            tasks_per_replica: default_tasks_per_replica(),
            scale_down_delay_seconds: default_scale_down_delay_seconds(),
        }
    }
}

fn default_max_replicas() -> i32 {
    3
}

fn default_tasks_per_replica() -> i32 {
    1
}

fn default_scale_down_delay_seconds() -> i32 {
    300
}

/// Which providers and models a role prefers, before the router's own order.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelPreferences {
    /// ModelProvider names to try first, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<String>,

    /// Model names to try first, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
}

/// The observed state of an Agent pool, written only by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    /// Replicas the role's queue asks for.
    #[serde(default)]
    pub desired_replicas: i32,

    /// Replicas ready to take tasks.
    #[serde(default)]
    pub ready_replicas: i32,

    /// Tasks of the role published and not yet started.
    #[serde(default)]
    pub queued_tasks: i32,

    /// Tasks of the role being worked on.
    #[serde(default)]
    pub running_tasks: i32,

    /// When the desired replica count last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,

    /// Since when demand has been below the desired replicas; the pool scales down
    /// `scaleDownDelaySeconds` after it, unless demand rises again first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_demand_since: Option<Time>,

    /// kstatus's `Ready` (the pool has the replicas it wants), `Reconciling` (scaling)
    /// and `Stalled` (the API server refused its Deployment).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
