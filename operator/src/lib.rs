//! `aios-operator`: the controllers that turn AIOS resources into work. Hera (the
//! Project controller) plans Projects into Tasks; the Task controller dispatches ready
//! Tasks over RabbitMQ and turns agents' events into status; the Agent and
//! ModelProvider controllers run agent pools and model servers.
//!
//! Only the configuration surface exists so far; the controllers are not built yet and
//! `run` says so rather than pretending to reconcile.

pub mod lifecycle;
pub mod plan;
pub mod rollup;
pub mod schedule;
#[cfg(test)]
mod testing;

use clap::Parser;

/// The operator's configuration, from flags and the environment.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "aios-operator",
    version,
    about = "The AIOS Kubernetes operator"
)]
pub struct Config {
    /// RabbitMQ URL the operator dispatches tasks through.
    #[arg(
        long,
        env = "AIOS_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,
}

/// Why the operator stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The controllers are not part of this build yet.
    #[error(
        "the AIOS controllers are not supported yet: this build has the API types and CRDs only"
    )]
    NotSupportedYet,
}

/// Runs the operator until it is told to stop.
pub fn run(_config: &Config) -> Result<(), RunError> {
    Err(RunError::NotSupportedYet)
}
