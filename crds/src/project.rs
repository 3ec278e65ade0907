//! `Project`: the brief, where to deliver it, and the rules of the run.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    common::{Complexity, DnsLabel, SecretKeyRef, Usage},
    limits,
};

/// What a Project asks for: the brief, where to deliver, and the rules of the run.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "aios.dev",
    version = "v1alpha1",
    kind = "Project",
    doc = "A software project for the AIOS agents to plan, build, test and deliver into a git repository.",
    namespaced,
    derive = "PartialEq",
    status = "ProjectStatus",
    shortname = "proj",
    category = "aios",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase","description":"Where the Project is in its life"}"#,
    printcolumn = r#"{"name":"Progress","type":"string","jsonPath":".status.progress","description":"Tasks succeeded of all tasks"}"#,
    printcolumn = r#"{"name":"Tokens","type":"integer","jsonPath":".status.usage.inputTokens","priority":1,"description":"Input tokens used"}"#,
    printcolumn = r#"{"name":"Cost","type":"number","jsonPath":".status.usage.costUsd","priority":1,"description":"Cost in USD"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("self.metadata.name.size() <= 63").message("a Project's name must be at most 63 characters: it is used as a label value on its Tasks")
)]
#[serde(rename_all = "camelCase")]
pub struct ProjectSpec {
    /// The brief: what to build, in plain language. Hera plans from it and every agent
    /// reads it as context.
    #[schemars(length(min = 1, max = 65536))]
    pub description: String,

    /// The git repository the agents deliver their work into.
    pub repository: Repository,

    /// An explicit plan. When present, no planning happens and these tasks are run as
    /// written; when absent, Hera has the project planned by the `cto` role. An empty
    /// list means the Tasks are created separately (by a tool or through GitOps), each
    /// naming this Project in its spec.project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::EXPLICIT_PLAN.tasks))]
    #[x_kube(
        validation = Rule::new("self.all(t, self.exists_one(u, u.name == t.name))").message("task names in spec.tasks must be unique"),
        validation = Rule::new("self.all(t, !has(t.dependsOn) || t.dependsOn.all(d, self.exists(u, u.name == d)))").message("every dependsOn entry must name a task in spec.tasks")
    )]
    pub tasks: Option<Vec<PlannedTask>>,

    /// How the run behaves: concurrency, failure handling, retries and timeouts.
    #[serde(default)]
    pub policy: Policy,

    /// How language-model calls are routed, and what they may cost.
    #[serde(default)]
    pub models: ModelPolicy,

    /// Stops new dispatches while true; tasks already running finish.
    #[serde(default)]
    pub suspend: bool,

    /// How the delivered work is checked. When set, each task that changed files is
    /// verified on its commit (a failure becomes a fix task), and the Project succeeds
    /// only once the command passes on the branch head. When unset, the work is not
    /// checked, and the Project's `Verified` condition says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<crate::verify::Verify>,
}

/// Where the work is delivered.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.secretRef) || self.url.startsWith('https://')").message("repository secretRef: a credential is sent only over https://, never to an http://, git://, ssh://, git@ or file:// URL"))]
pub struct Repository {
    /// Clone URL: `https://`, `http://`, `ssh://`, `git://` (the git daemon's protocol,
    /// anonymous), `git@host:path` or `file://` (a repository on the agents' filesystem).
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.matches('^(https://|http://|ssh://|git://|file://|git@)')").message("repository url must start with https://, http://, ssh://, git://, file:// or git@"))]
    pub url: String,

    /// Branch the agents commit to; created from the default branch when missing.
    #[serde(default = "default_branch")]
    #[schemars(length(min = 1, max = 255))]
    #[x_kube(validation = Rule::new("!self.contains(' ') && !self.contains('..') && !self.startsWith('-')").message("branch must be a valid git branch name"))]
    pub branch: String,

    /// Secret key holding an access token for `https://` remotes (refused with any
    /// other URL: a credential never crosses plain HTTP). The operator never reads it:
    /// agent pods get it as an environment variable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
}

fn default_branch() -> String {
    "main".to_owned()
}

/// One task of a plan: in `spec.tasks`, or in the plan of Hera's planning task. The
/// bounds here are an explicit plan's; the operator holds Hera's plan to larger ones.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.dependsOn) || !(self.name in self.dependsOn)").message("a task cannot depend on itself"))]
pub struct PlannedTask {
    /// The task's name within the plan, a DNS label. The Task object is named
    /// `<project>-<name>`.
    pub name: DnsLabel,

    /// A one-line title.
    #[schemars(length(min = 1, max = limits::TITLE_MAX_CHARS))]
    pub title: String,

    /// The role that does the task (`backend`, `frontend`, `qa`, `devops`, or any role
    /// an Agent in the namespace serves).
    pub role: DnsLabel,

    /// What to do, in enough detail for the agent to do it without asking.
    #[serde(default)]
    #[schemars(length(max = limits::DESCRIPTION_MAX_CHARS))]
    pub description: String,

    /// Names of tasks in the same plan that must succeed before this one starts.
    #[serde(default)]
    #[schemars(length(max = limits::EXPLICIT_PLAN.dependencies))]
    pub depends_on: Vec<DnsLabel>,

    /// How hard the task is; the router picks a model able to take it.
    #[serde(default)]
    pub complexity: Complexity,

    /// Checks the result must pass, in plain language.
    #[serde(default)]
    #[schemars(length(max = limits::ACCEPTANCE_CRITERIA_MAX))]
    pub acceptance_criteria: Vec<String>,

    /// Overrides `policy.taskDefaults.maxRetries` for this task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = limits::RETRIES_MAX))]
    pub max_retries: Option<i32>,

    /// Overrides `policy.taskDefaults.timeoutSeconds` for this task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub timeout_seconds: Option<i32>,

    /// Among ready tasks, higher priority is dispatched first.
    #[serde(default)]
    pub priority: i32,
}

/// The rules of a run.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    /// The most tasks of this project Queued or Running at once.
    #[serde(default = "default_max_parallel_tasks")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_parallel_tasks: i32,

    /// As in Argo Workflows: when true, a failed task stops new dispatches and the
    /// Project fails once running tasks finish; when false, independent branches go on
    /// and the failed task's dependents are Skipped.
    #[serde(default = "default_true")]
    pub fail_fast: bool,

    /// Retry and timeout settings for tasks that do not set their own.
    #[serde(default)]
    pub task_defaults: TaskDefaults,

    /// How many fix tasks a failed verification may get, one after another, before the
    /// Project fails with reason `VerificationFailed`.
    #[serde(default = "default_max_fix_rounds")]
    #[schemars(range(min = 0, max = crate::verify::FIX_ROUNDS_MAX))]
    pub max_fix_rounds: i32,

    /// Where agents may write in the repository.
    #[serde(default, skip_serializing_if = "PathPolicy::is_empty")]
    pub paths: PathPolicy,

    /// Whether agents recall memories of the namespace's other Projects too (briefs,
    /// decisions, results, verifications). Off by default: a task sees its own
    /// Project's memories only. Memories of other namespaces are never recalled.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recall_across_projects: bool,
}

/// Where agents may write, beyond the checks every write passes (relative, inside the
/// work tree, not in `.git`, no symbolic link). Patterns are globs on the path from the
/// repository root, compared without regard to case: `*` stays within a directory,
/// `**` crosses directories (`src/**`, `docs/*.md`).
///
/// Protected by default, whatever `allowed` says: CI and automation definitions
/// (`.github/workflows/**`, `.github/actions/**`, `.gitlab-ci.yml`, `.gitlab/**`,
/// `.circleci/**`, `**/Jenkinsfile`, `.travis.yml`, `.drone.yml`, `azure-pipelines.yml`,
/// `bitbucket-pipelines.yml`, `.buildkite/**`, `.woodpecker.yml`, `.woodpecker/**`),
/// git hooks (`.githooks/**`, `.husky/**`, `.pre-commit-config.yaml`) and AIOS's own
/// `.aios/**` (the planner writes its plan there): what runs with the repository's
/// secrets or on people's machines must not come from a model's answer unless the
/// Project says so.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PathPolicy {
    /// When set, agents write only paths matching one of these patterns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub allowed: Vec<String>,

    /// Protected paths agents may write all the same, as patterns: for example
    /// `.github/workflows/**` for a Project whose DevOps task writes its CI.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub allow_protected: Vec<String>,
}

impl PathPolicy {
    /// Whether it says nothing (the default).
    pub fn is_empty(&self) -> bool {
        self.allowed.is_empty() && self.allow_protected.is_empty()
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            max_parallel_tasks: default_max_parallel_tasks(),
            fail_fast: true,
            task_defaults: TaskDefaults::default(),
            max_fix_rounds: default_max_fix_rounds(),
            paths: PathPolicy::default(),
            recall_across_projects: false,
        }
    }
}

fn default_max_fix_rounds() -> i32 {
    3
}

fn default_max_parallel_tasks() -> i32 {
    4
}

fn default_true() -> bool {
    true
}

/// Retry and timeout settings a task inherits.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TaskDefaults {
    /// Retries after the first attempt fails (so `maxRetries: 2` allows three attempts).
    #[serde(default = "default_max_retries")]
    #[schemars(range(min = 0, max = limits::RETRIES_MAX))]
    pub max_retries: i32,

    /// Wait between attempts.
    #[serde(default)]
    pub backoff: Backoff,

    /// How long one attempt may run before it counts as failed; 0 means no limit.
    #[serde(default = "default_timeout_seconds")]
    #[schemars(range(min = 0))]
    pub timeout_seconds: i32,

    /// How long a Running task may go without a heartbeat before its attempt counts as
    /// failed (its agent is presumed dead).
    #[serde(default = "default_heartbeat_timeout_seconds")]
    #[schemars(range(min = 10))]
    pub heartbeat_timeout_seconds: i32,
}

impl Default for TaskDefaults {
    fn default() -> Self {
        Self {
            max_retries: default_max_retries(),
            backoff: Backoff::default(),
            timeout_seconds: default_timeout_seconds(),
            heartbeat_timeout_seconds: default_heartbeat_timeout_seconds(),
        }
    }
}

fn default_max_retries() -> i32 {
    2
}

fn default_timeout_seconds() -> i32 {
    1800
}

fn default_heartbeat_timeout_seconds() -> i32 {
    120
}

/// Exponential backoff between attempts, with Argo Workflows' meaning: the wait before
/// retry `n` (counting from 1) is `durationSeconds * factor^(n-1)`, capped at
/// `maxDurationSeconds`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Backoff {
    /// Wait before the first retry, in seconds.
    #[serde(default = "default_backoff_duration")]
    #[schemars(range(min = 0))]
    pub duration_seconds: i32,

    /// Multiplier applied to the wait for each further retry.
    #[serde(default = "default_backoff_factor")]
    #[schemars(range(min = 1, max = 10))]
    pub factor: i32,

    /// The longest wait between two attempts, in seconds.
    #[serde(default = "default_backoff_cap")]
    #[schemars(range(min = 0))]
    pub max_duration_seconds: i32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            duration_seconds: default_backoff_duration(),
            factor: default_backoff_factor(),
            max_duration_seconds: default_backoff_cap(),
        }
    }
}

fn default_backoff_duration() -> i32 {
    10
}

fn default_backoff_factor() -> i32 {
    2
}

fn default_backoff_cap() -> i32 {
    300
}

/// How language-model calls of this project are routed, and what they may cost.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModelPolicy {
    /// How the router orders providers.
    #[serde(default)]
    pub routing: RoutingMode,

    /// The share of requests the project aims to serve from `Local` tier providers.
    #[serde(default = "default_target_local_ratio")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub target_local_ratio: f64,

    /// Limits on what the project's model calls may consume; checked before each call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
}

impl Default for ModelPolicy {
    fn default() -> Self {
        Self {
            routing: RoutingMode::default(),
            target_local_ratio: default_target_local_ratio(),
            budget: None,
        }
    }
}

fn default_target_local_ratio() -> f64 {
    0.85
}

/// How the router orders the providers able to take a task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum RoutingMode {
    /// Local tier first, then by priority, then by price.
    #[default]
    LocalFirst,
    /// Cheapest first, whatever the tier.
    CostOptimized,
    /// The most capable model first, whatever it costs.
    QualityFirst,
}

/// Limits on what a project's model calls may consume. A limit left out is unlimited.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Budget {
    /// The most tokens, in and out, all of the project's calls may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub tokens: Option<i64>,

    /// The most the project's calls may cost, in US dollars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub usd: Option<f64>,
}

/// Where a Project is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ProjectPhase {
    /// Accepted, nothing started yet.
    #[default]
    Pending,
    /// Hera's planning task is in flight.
    Planning,
    /// Tasks are being dispatched and run.
    Running,
    /// Every task succeeded, and with `spec.verify`, the verification passed on the
    /// branch head (`status.verification` names the commit and the command).
    Succeeded,
    /// The project cannot complete; the `Succeeded` condition says why.
    Failed,
    /// `spec.suspend` is true; no new dispatches.
    Suspended,
}

impl ProjectPhase {
    /// Whether the Project has finished for good.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

/// The observed state of a Project, written only by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProjectStatus {
    /// Where the Project is in its life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ProjectPhase>,

    /// Tasks succeeded of all tasks, as "N/M".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,

    /// How many of the project's tasks are in each phase.
    #[serde(default)]
    pub tasks: TaskCounts,

    /// Model usage summed over all tasks.
    #[serde(default)]
    pub usage: Usage,

    /// Share of model requests served by local providers, from `usage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_ratio: Option<f64>,

    /// How many times the project has been planned (planning attempts).
    #[serde(default)]
    pub plan_attempts: i32,

    /// `Planned`, `Succeeded` (with a CamelCase reason), `Verified`, `BudgetExceeded`,
    /// `PlanInvalid`; and kstatus's `Ready` (succeeded), `Reconciling` (in flight) and
    /// `Stalled` (failed, or the budget is spent). A suspended Project has all three
    /// False.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The verification of the branch head once every task succeeded (with
    /// `spec.verify`): the commit and the command a `Succeeded` Project was verified by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<crate::verify::VerificationStatus>,

    /// When the first task was dispatched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,

    /// When the Project reached Succeeded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
}

/// How many tasks are in each phase.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskCounts {
    /// All tasks of the project.
    #[serde(default)]
    pub total: i32,
    /// Waiting on dependencies, concurrency or a retry backoff.
    #[serde(default)]
    pub pending: i32,
    /// Published to the bus, not yet started by an agent.
    #[serde(default)]
    pub queued: i32,
    /// Being worked on by an agent.
    #[serde(default)]
    pub running: i32,
    /// Delivered, being verified or fixed.
    #[serde(default)]
    pub verifying: i32,
    /// Done.
    #[serde(default)]
    pub succeeded: i32,
    /// Failed with no retries left.
    #[serde(default)]
    pub failed: i32,
    /// Not run because a dependency failed.
    #[serde(default)]
    pub skipped: i32,
    /// Stopped because the project failed or was deleted.
    #[serde(default)]
    pub cancelled: i32,
}

impl TaskCounts {
    /// Counts `n` more tasks in `phase` (fewer when `n` is negative).
    pub fn add(&mut self, phase: crate::TaskPhase, n: i32) {
        use crate::TaskPhase;
        let slot = match phase {
            TaskPhase::Pending => &mut self.pending,
            TaskPhase::Queued => &mut self.queued,
            TaskPhase::Running => &mut self.running,
            TaskPhase::Verifying => &mut self.verifying,
            TaskPhase::Succeeded => &mut self.succeeded,
            TaskPhase::Failed => &mut self.failed,
            TaskPhase::Skipped => &mut self.skipped,
            TaskPhase::Cancelled => &mut self.cancelled,
        };
        *slot += n;
        self.total += n;
    }

    /// How many tasks have an attempt in flight (Queued or Running).
    pub fn in_flight(&self) -> i32 {
        self.queued + self.running
    }

    /// How many tasks have finished for good (see [`crate::TaskPhase::is_terminal`]).
    pub fn terminal(&self) -> i32 {
        self.succeeded + self.failed + self.skipped + self.cancelled
    }
}

impl Project {
    /// The plan's task by name, when the Project carries an explicit plan.
    pub fn spec_task(&self, name: &str) -> Option<&PlannedTask> {
        self.spec.tasks.as_deref()?.iter().find(|t| t.name == name)
    }
}
