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
    /// Ready: leading, caches synced and the bus connected.
    pub fn is_ready(&self) -> bool {
        self.synced.load(Ordering::Relaxed) && self.bus.get().is_some_and(|b| b.is_connected())
    }
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
            "not ready: waiting for leadership, the caches or the bus",
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
