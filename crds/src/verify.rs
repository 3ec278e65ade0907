//! How a Project's work is checked: the command that decides whether delivered code
//! works (`spec.verify`), and what a run of it found (a Task's and a Project's
//! `status.verification`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The longest command, in characters.
pub const COMMAND_MAX_CHARS: usize = 4096;
/// The most characters of a run's output kept in a status (its last lines).
pub const OUTPUT_MAX_CHARS: usize = 4096;
/// The most fix rounds a Project may allow.
pub const FIX_ROUNDS_MAX: i32 = 10;

/// A Project's verification: a shell command run at the root of the repository, checked
/// out at the delivered commit, in a sandbox. It passes when the command exits 0.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Verify {
    /// The command, run by `sh -c` at the repository root, for example
    /// `python3 -m pytest -q`. It must pass on every delivered commit, including the
    /// first ones, before any test exists (pytest exits 5 when it collects no test).
    #[schemars(length(min = 1, max = COMMAND_MAX_CHARS))]
    pub command: String,

    /// The image the command runs in on a cluster: it needs `sh` and whatever the command
    /// calls. Not used by the local sandbox, which runs the machine's own programs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// How long a run may take before it is killed and reported `VerificationTimedOut`.
    #[serde(default = "default_timeout_seconds")]
    #[schemars(range(min = 1, max = 86_400))]
    pub timeout_seconds: i32,

    /// The most memory a run may use, in MiB.
    #[serde(default = "default_memory_mib")]
    #[schemars(range(min = 16, max = 65_536))]
    pub memory_mib: i32,

    /// The most CPU a run may use, in millicores (on a cluster).
    #[serde(default = "default_cpu_millis")]
    #[schemars(range(min = 10, max = 64_000))]
    pub cpu_millis: i32,

    /// Whether the command may open network connections. Denied by default: tests that
    /// reach the network are neither reproducible nor safe to run on model-written code.
    #[serde(default)]
    pub allow_network: bool,
}

fn default_timeout_seconds() -> i32 {
    600
}

fn default_memory_mib() -> i32 {
    1024
}

fn default_cpu_millis() -> i32 {
    1000
}

/// A Task's own check, run after the Project's in the same sandbox (the Project's image,
/// limits and timeout). Used only when the Project has `spec.verify`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TaskVerify {
    /// The command, run by `sh -c` at the repository root.
    #[schemars(length(min = 1, max = COMMAND_MAX_CHARS))]
    pub command: String,
}

/// What a verification run came to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum VerificationPhase {
    /// Waiting to run, or running.
    #[default]
    Running,
    /// The command exited 0.
    Passed,
    /// The command exited non-zero.
    Failed,
    /// The command ran past its timeout and was killed.
    TimedOut,
    /// The sandbox could not run the command (the checkout failed, the sandbox could not
    /// be set up); the message says why.
    Error,
}

impl VerificationPhase {
    /// Whether the run has finished.
    pub fn is_done(self) -> bool {
        self != Self::Running
    }
}

/// The verification of a Task's delivered work, or of a Project's branch head.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerificationStatus {
    /// What the latest run came to.
    #[serde(default)]
    pub phase: VerificationPhase,

    /// The command run (the Project's, then the Task's own, joined by ` && `).
    #[serde(default)]
    pub command: String,

    /// The commit the latest run checked out: the delivered one, or the branch head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,

    /// The command's exit code, when it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,

    /// How long the latest run took, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,

    /// The last lines of the latest run's output (standard output and error together).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = OUTPUT_MAX_CHARS))]
    pub output: Option<String>,

    /// A sentence a person can act on, when the run could not decide (`Error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// Fix rounds used so far: 0 while the delivered work itself is verified.
    #[serde(default)]
    pub round: i32,

    /// The fix task of the current round, while one is in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix_task: Option<String>,

    /// When the latest run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,

    /// When the latest run finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
}
