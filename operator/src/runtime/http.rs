//! `/metrics` (Prometheus text format), `/healthz` and `/readyz`.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use aios_crds::{
    Project,
    credentials::{CredentialRequest, CredentialResponse},
};
use axum::{
    Json, Router,
    extract::State,
    http::StatusCode,
    routing::{get, post},
};
use kube::runtime::reflector::Store;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use crate::{
    runtime::bus::Bus,
    runtime::metrics::Metrics,
    runtime::observe::{self, QueueDepth, Snapshot},
};

/// What the probes and the metrics endpoint read.
#[derive(Debug, Clone, Default)]
pub struct Health {
    /// Set once this replica leads; until then it is a standby.
    pub leading: Arc<AtomicBool>,
    /// Set once the caches have synced.
    pub synced: Arc<AtomicBool>,
    /// The bus, once connected.
    pub bus: Arc<OnceCell<Arc<Bus>>>,
    /// The Project controller's cache, for the Project gauges.
    pub projects: Arc<OnceCell<Store<Project>>>,
    /// The role queues' depths, as last read by [`observe::follow_queues`].
    pub queues: Arc<std::sync::Mutex<Vec<QueueDepth>>>,
    /// The metrics.
    pub metrics: Metrics,
    /// The controllers' shared state, once this replica leads and its caches synced:
    /// the credential endpoint answers from it.
    pub context: Arc<OnceCell<Arc<crate::runtime::context::Context>>>,
}

impl Health {
    /// Whether this replica is ready; see [`ready`].
    pub fn is_ready(&self) -> bool {
        ready(
            self.leading.load(Ordering::Relaxed),
            self.synced.load(Ordering::Relaxed),
            self.bus.get().is_some_and(|b| b.is_connected()),
        )
    }
}

/// Readiness: a standby is ready (it is up and waiting for the Lease), so a rolling
/// update can proceed; if readiness waited for the Lease, the new pod of a rollout would
/// never become ready while the old one leads, and the old one would never be removed.
/// A leader is ready once its caches have synced and the bus is connected.
pub fn ready(leading: bool, synced: bool, bus_connected: bool) -> bool {
    !leading || (synced && bus_connected)
}

async fn metrics(State(health): State<Health>) -> String {
    let mut snapshot = Snapshot {
        leading: health.leading.load(Ordering::Relaxed),
        ..Snapshot::default()
    };
    if let Some(ctx) = health.context.get() {
        snapshot.tasks = ctx.tasks.state();
        snapshot.agents = ctx.agents.state();
        snapshot.providers = ctx.providers.state();
        if let Some(projects) = health.projects.get() {
            snapshot.projects = projects.state();
        }
        snapshot.queues = health.queues.lock().map(|q| q.clone()).unwrap_or_default();
        snapshot.failing = ctx.backoffs.snapshot();
    }
    health.metrics.render(observe::families(&snapshot))
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(health): State<Health>) -> (StatusCode, &'static str) {
    if health.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: leading, but the caches or the bus are not ready",
        )
    }
}

/// An agent's request for a credential its attempt needs (see
/// [`crate::provider::credentials::give`]): 200 with the value; 403 refused, saying why; 503 when
/// this replica does not lead (the agent asks again) or the credential cannot be had now.
async fn credential(
    State(health): State<Health>,
    Json(request): Json<CredentialRequest>,
) -> (StatusCode, Json<CredentialResponse>) {
    let purpose = request.purpose.to_string();
    let answer = |status: StatusCode, value: Option<String>, refused: Option<String>| {
        (status, Json(CredentialResponse { value, refused }))
    };
    let Some(ctx) = health.context.get() else {
        return answer(
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            Some("this operator replica does not lead; ask again".to_owned()),
        );
    };
    let (status, value, refused, outcome) =
        match crate::provider::credentials::give(ctx, &request).await {
            Ok(value) => (StatusCode::OK, Some(value), None, "given"),
            Err(err @ crate::provider::credentials::GiveError::Refused(_)) => (
                StatusCode::FORBIDDEN,
                None,
                Some(err.to_string()),
                "refused",
            ),
            Err(err) => (
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                Some(err.to_string()),
                "unavailable",
            ),
        };
    ctx.metrics
        .credential_requests
        .with_label_values(&[purpose.as_str(), outcome])
        .inc();
    let task = format!("{}/{}", request.task.namespace, request.task.name);
    let secret = &request.secret.name;
    let attempt = request.attempt;
    match &refused {
        Some(why) if status == StatusCode::FORBIDDEN => tracing::warn!(
            %task, attempt, %purpose, %secret, error = %why, "refused a credential request"
        ),
        _ => {
            tracing::info!(%task, attempt, %purpose, %secret, outcome, "answered a credential request");
        }
    }
    answer(status, value, refused)
}

/// Serves the endpoints on `addr` until shutdown.
pub async fn serve(
    addr: SocketAddr,
    health: Health,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route(aios_crds::credentials::PATH, post(credential))
        .with_state(health);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz and the credential endpoint");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

#[cfg(test)]
mod tests {
    use super::ready;

    #[test]
    fn a_standby_is_ready_and_a_leader_only_with_its_caches_and_the_bus() {
        assert!(
            ready(false, false, false),
            "a standby must not block a rollout"
        );
        assert!(
            !ready(true, false, true),
            "a leader still syncing is not ready"
        );
        assert!(
            !ready(true, true, false),
            "a leader without the bus is not ready"
        );
        assert!(ready(true, true, true));
    }
}
