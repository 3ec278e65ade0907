//! The agent's configuration, from flags and the environment (the operator sets the
//! environment of agent pods; see the README for the table).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

/// The agent's configuration.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "aios-agent",
    version,
    about = "The AIOS agent worker: serves one role's task queue"
)]
pub struct Config {
    /// The role this agent serves; it consumes that role's queue.
    #[arg(long, env = "AIOS_ROLE")]
    pub role: String,
    /// The namespace whose work the agent does: its pod's (the operator sets it). The
    /// agent consumes that namespace's queues and refuses any other's dispatches.
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: String,
    /// The persona's name (overrides the built-in one for the role).
    #[arg(long, env = "AIOS_PERSONA")]
    pub persona: Option<String>,
    /// Directory of the persona ConfigMap (`name`, `specialties`, `system-prompt`).
    #[arg(long, env = "AIOS_PERSONA_DIR")]
    pub persona_dir: Option<PathBuf>,
    /// Tasks worked on at once; also the prefetch.
    #[arg(long, env = "AIOS_CONCURRENCY", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
    /// RabbitMQ URL.
    #[arg(long, env = "AIOS_AMQP_URL")]
    pub amqp_url: String,
    /// Redis URL (claims, budget counters).
    #[arg(long, env = "AIOS_REDIS_URL")]
    pub redis_url: String,
    /// A PEM file of CA certificates to trust, besides the system's roots, for
    /// `amqps://`, `rediss://` and an `https://` Qdrant.
    #[arg(long, env = "AIOS_CA_FILE", conflicts_with = "ca_cert")]
    pub ca_file: Option<PathBuf>,
    /// The same as PEM text (the operator sets it from the connection Secret's `caCert`).
    #[arg(long, env = "AIOS_CA_CERT", hide_env_values = true)]
    pub ca_cert: Option<String>,
    /// The operator's credential endpoint (`http://host:port`; the operator sets it):
    /// each attempt asks it for the credentials it needs. Without it, repository tokens
    /// and model keys come from the environment only.
    #[arg(long, env = "AIOS_CREDENTIAL_URL")]
    pub credential_url: Option<String>,
    /// Qdrant URL for long-term memory; without it memory is the embedded store in the
    /// work directory.
    #[arg(long, env = "AIOS_QDRANT_URL")]
    pub qdrant_url: Option<String>,
    /// Qdrant API key.
    #[arg(long, env = "AIOS_QDRANT_API_KEY", hide_env_values = true)]
    pub qdrant_api_key: Option<String>,
    /// The provider list the operator writes (`providers.json`).
    #[arg(long, env = "AIOS_PROVIDERS_FILE")]
    pub providers_file: PathBuf,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    #[arg(long, env = "AIOS_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// The agent's name in events (the pod name); defaults to the host name and pid.
    #[arg(long, env = "POD_NAME")]
    pub agent_name: Option<String>,
    /// Writable directory for repository mirrors, work trees and embedded memory. One
    /// agent process owns it.
    #[arg(long, env = "AIOS_WORK_DIR", default_value = "/var/lib/aios")]
    pub work_dir: PathBuf,
    /// Lease of a claim in Redis, renewed with each heartbeat; a dead worker's attempt
    /// is taken over after it lapses.
    #[arg(long, env = "AIOS_CLAIM_LEASE_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(3..))]
    pub claim_lease_seconds: u64,
    /// After SIGTERM, how long tasks in flight may run before they are requeued; when
    /// unset, derived from `--termination-grace-seconds`.
    #[arg(long, env = "AIOS_SHUTDOWN_GRACE_SECONDS")]
    pub shutdown_grace_seconds: Option<u64>,
    /// The pod's `terminationGracePeriodSeconds` (the operator sets it): the kubelet kills
    /// the agent that long after SIGTERM, so the shutdown grace ends a little before.
    #[arg(long, env = "AIOS_TERMINATION_GRACE_SECONDS")]
    pub termination_grace_seconds: Option<u64>,
    /// The largest file the agent writes.
    #[arg(long, env = "AIOS_MAX_FILE_BYTES", default_value_t = 1024 * 1024)]
    pub max_file_bytes: u64,
    /// How long a delivery goes on rebasing and pushing again while other agents push
    /// to the branch first, before the attempt fails.
    #[arg(long, env = "AIOS_PUSH_DEADLINE_SECONDS", default_value_t = 300)]
    pub push_deadline_seconds: u64,
    /// The bound on one model call.
    #[arg(long, env = "AIOS_LLM_TIMEOUT_SECONDS", default_value_t = 300)]
    pub llm_timeout_seconds: u64,
    /// Calls per provider before falling back to the next.
    #[arg(long, env = "AIOS_LLM_ATTEMPTS", default_value_t = 2)]
    pub llm_attempts: u32,
    /// Log format.
    #[arg(long, env = "AIOS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
}

impl Config {
    /// The CA bundle to trust besides the system's roots, if one is given.
    pub fn ca(&self) -> Result<Option<aios_bus::CaBundle>, aios_bus::tls::TlsError> {
        aios_bus::tls::configured_ca(self.ca_file.as_deref(), self.ca_cert.as_deref())
    }

    /// The claim lease.
    pub fn claim_lease(&self) -> Duration {
        Duration::from_secs(self.claim_lease_seconds)
    }

    /// The push deadline.
    pub fn push_deadline(&self) -> Duration {
        Duration::from_secs(self.push_deadline_seconds)
    }

    /// The shutdown grace period.
    pub fn shutdown_grace(&self) -> Duration {
        shutdown_grace(self.shutdown_grace_seconds, self.termination_grace_seconds)
    }

    /// The agent's name: the pod name, else host name and pid.
    pub fn agent_name(&self) -> String {
        self.agent_name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map_or_else(|_| "agent".to_owned(), |h| h.trim().to_owned());
                format!("{host}-{}", std::process::id())
            })
    }
}

/// Kubernetes' default `terminationGracePeriodSeconds`, assumed when nothing says more.
const DEFAULT_TERMINATION_GRACE_SECONDS: u64 = 30;

/// How long tasks in flight may run after SIGTERM: `explicit` when set, else the pod's
/// termination grace less a margin for requeueing what is left and exiting (a tenth of
/// it, between 1 and 10 seconds), so the kubelet's SIGKILL never lands mid-requeue.
pub fn shutdown_grace(explicit: Option<u64>, termination: Option<u64>) -> Duration {
    if let Some(seconds) = explicit {
        return Duration::from_secs(seconds);
    }
    let termination = termination.unwrap_or(DEFAULT_TERMINATION_GRACE_SECONDS);
    let margin = (termination / 10).clamp(1, 10);
    Duration::from_secs(termination.saturating_sub(margin))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shutdown_grace_follows_the_pods_termination_grace() {
        // The operator's default pod grace of 600 s leaves the agent 590 s, not 25.
        assert_eq!(shutdown_grace(None, Some(600)), Duration::from_secs(590));
        assert_eq!(shutdown_grace(None, Some(30)), Duration::from_secs(27));
        assert_eq!(shutdown_grace(None, Some(5)), Duration::from_secs(4));
        assert_eq!(shutdown_grace(None, Some(0)), Duration::ZERO);
        // Outside a pod, Kubernetes' default is assumed.
        assert_eq!(shutdown_grace(None, None), Duration::from_secs(27));
        // An explicit setting wins.
        assert_eq!(shutdown_grace(Some(3), Some(600)), Duration::from_secs(3));
    }

    #[test]
    fn the_grace_is_read_from_the_environment_variables_the_operator_sets() {
        let config = Config::try_parse_from([
            "aios-agent",
            "--role=backend",
            "--namespace=tests",
            "--amqp-url=amqp://127.0.0.1",
            "--redis-url=redis://127.0.0.1",
            "--providers-file=/dev/null",
            "--termination-grace-seconds=120",
        ])
        .expect("parses");
        assert_eq!(config.shutdown_grace(), Duration::from_secs(110));
    }
}
