//! `/metrics` (Prometheus text format), `/healthz` and `/readyz`.

use std::{net::SocketAddr, sync::Arc};

use axum::{Router, extract::State, http::StatusCode, routing::get};
use tokio_util::sync::CancellationToken;

use crate::{metrics::Metrics, runtime::Health};

#[derive(Clone)]
struct Endpoints {
    health: Arc<Health>,
    metrics: Metrics,
}

async fn metrics(State(endpoints): State<Endpoints>) -> String {
    endpoints.metrics.render()
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(endpoints): State<Endpoints>) -> (StatusCode, &'static str) {
    if endpoints.health.is_ready().await {
        (StatusCode::OK, "ready")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: not connected to RabbitMQ or Redis",
        )
    }
}

/// Binds `addr`; the server runs until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(self::metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Endpoints { health, metrics });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
