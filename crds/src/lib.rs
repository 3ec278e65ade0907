//! AIOS's contracts, and nothing else: the custom resources people apply (`Project`,
//! `Task`, `Agent`, `ModelProvider`, group `aios.dev/v1alpha1`), the messages the
//! operator and the agents exchange over RabbitMQ, every name that crosses a process
//! boundary, the limits plans are held to ([`limits`]), and what text may carry into
//! commits and Events ([`text`]). The operator, the agent runtime and the CLI all build
//! on this crate; the CRD YAML under `crds/` is generated from it (`crdgen`).

pub mod agent;
pub mod bus;
pub mod common;
pub mod conditions;
pub mod credentials;
pub mod generate;
pub mod limits;
pub mod model_provider;
pub mod names;
pub mod plan;
pub mod project;
pub mod task;
pub mod text;
pub mod verify;

pub use agent::{Agent, AgentSpec, AgentStatus};
pub use common::{Complexity, DnsLabel, Tier, Usage};
/// The string type of a Task's `dependsOn` entries.
pub use compact_str::CompactString;
pub use model_provider::{ModelProvider, ModelProviderSpec, ModelProviderStatus, ProviderType};
pub use project::{PlannedTask, Project, ProjectPhase, ProjectSpec, ProjectStatus};
pub use task::{Task, TaskPhase, TaskResult, TaskSpec, TaskStatus};
pub use verify::{VerificationPhase, VerificationStatus, Verify};
