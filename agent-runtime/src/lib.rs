//! `aios-agent`: the worker that runs in every agent pod. It serves one role, takes
//! `TaskDispatch` messages from that role's queue, does the work through the LLM router,
//! commits it to the Project's repository and reports `TaskEvent`s.
//!
//! Only the configuration surface exists so far; the worker is not built yet and `run`
//! says so rather than pretending to consume.

use clap::Parser;

/// The agent's configuration, from flags and the environment.
#[derive(Debug, Clone, Parser)]
#[command(name = "aios-agent", version, about = "The AIOS agent worker")]
pub struct Config {
    /// The role this agent serves; it consumes that role's queue.
    #[arg(long, env = "AIOS_ROLE")]
    pub role: String,
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The worker is not part of this build yet.
    #[error(
        "the AIOS agent worker is not supported yet (role {0}): this build has the API types and CRDs only"
    )]
    NotSupportedYet(String),
}

/// Runs the worker until it is told to stop.
pub fn run(config: &Config) -> Result<(), RunError> {
    Err(RunError::NotSupportedYet(config.role.clone()))
}
