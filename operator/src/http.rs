//! `/metrics` (Prometheus text format), `/healthz` and `/readyz`.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use aios_crds::Task;
use axum::{Router, extract::State, http::StatusCode, routing::get};
use kube::runtime::reflector::Store;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use crate::{bus::Bus, lifecycle::phase, metrics::Metrics};

/// What the probes and the metrics endpoint read.
#[derive(Debug, Clone, Default)]
pub struct Health {
    /// Set once this replica leads; until then it is a standby.
    pub leading: Arc<AtomicBool>,
    /// Set once the caches have synced.
    pub synced: Arc<AtomicBool>,
    /// The bus, once connected.
    pub bus: Arc<OnceCell<Arc<Bus>>>,
    /// The Task cache, for the tasks-by-phase gauge.
    pub tasks: Arc<OnceCell<Store<Task>>>,
    /// The metrics.
    pub metrics: Metrics,
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
    if let Some(store) = health.tasks.get() {
        health.metrics.tasks.reset();
        for task in store.state() {
            let phase = format!("{:?}", phase(&task));
            health
                .metrics
                .tasks
                .with_label_values(&[phase.as_str(), task.spec.role.as_str()])
                .inc();
        }
    }
    health.metrics.render()
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
        .with_state(health);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
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
