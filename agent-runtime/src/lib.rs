//! `aios-agent`: the worker that runs in every agent pod. It serves one role: takes
//! `TaskDispatch` messages from that role's queue, claims each attempt in Redis, asks a
//! model (through the [`llm::router`]) for a structured result, commits it to the
//! Project's repository ([`git`]) and reports `TaskEvent`s. Agents hold no Kubernetes
//! credentials; they speak to RabbitMQ, Redis, the vector store, model endpoints, the
//! git remote, and the operator's credential endpoint ([`credentials`]) only.

pub mod claims;
pub mod config;
pub mod context;
pub mod credentials;
pub mod edit;
pub mod git;
pub mod http;
pub mod metrics;
pub mod output;
pub mod paths;
pub mod persona;
pub mod prompt;
pub mod runtime;
pub mod work;

/// The model layer, shared with Hermes: routing, budgets, embeddings, memory.
pub use aios_models::{budget, llm, memory};

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
pub use config::Config;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{
    budget::BudgetCounter,
    claims::Claims,
    llm::router::{Providers, RetryPolicy, Router},
    metrics::Metrics,
    runtime::{Health, Runtime},
    work::{Credentials, Worker},
};

/// Connects to Redis, retrying with backoff until it answers or `shutdown`.
async fn connect_redis(
    url: &str,
    ca: Option<&aios_bus::CaBundle>,
    shutdown: &CancellationToken,
) -> anyhow::Result<ConnectionManager> {
    let client = aios_bus::tls::redis_client(url, ca)?;
    let endpoint = aios_crds::text::without_userinfo(url);
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(5)));
    let mut delay = Duration::from_millis(500);
    loop {
        match ConnectionManager::new_with_config(client.clone(), config.clone()).await {
            Ok(manager) => return Ok(manager),
            Err(err) => {
                tracing::warn!(error = %err, %endpoint, retry_in = ?delay, "cannot reach Redis");
                tokio::select! {
                    () = shutdown.cancelled() => anyhow::bail!("shutting down before Redis answered"),
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Cancels `shutdown` on SIGTERM or SIGINT.
async fn wait_for_signal(shutdown: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(err) => {
            tracing::error!(error = %err, "cannot listen for SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        () = shutdown.cancelled() => {}
    }
    shutdown.cancel();
}

/// The model router, reading API keys from what the operator gave (or the process
/// environment), and the credential endpoint's client when the operator named one.
fn router_and_credentials(
    config: &Config,
    policy: RetryPolicy,
    redis: ConnectionManager,
    metrics: &Metrics,
) -> anyhow::Result<(Arc<Router>, Option<Credentials>)> {
    let broker = config
        .credential_url
        .as_deref()
        .map(credentials::CredentialBroker::new)
        .transpose()
        .context("building the HTTP client")?
        .map(Arc::new);
    if broker.is_none() {
        tracing::warn!(
            "no credential endpoint (AIOS_CREDENTIAL_URL): repository tokens and model keys come \
             from the environment only"
        );
    }
    let mut router = Router::new(
        Providers::file(config.providers_file.clone()),
        policy,
        Some(BudgetCounter::new(redis)),
        Arc::new(metrics.clone()),
    )
    .context("building the HTTP client")?;
    if let Some(broker) = &broker {
        router = router.with_env(broker.env_lookup());
    }
    let router = Arc::new(router);
    let credentials = broker.map(|broker| {
        let router = router.clone();
        Credentials {
            broker,
            model_secrets: Arc::new(move || router.credential_refs()),
        }
    });
    Ok((router, credentials))
}

/// Runs the agent until SIGTERM: probes and metrics, Redis, the bus, the worker.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let metrics = Metrics::new();
    let health = Arc::new(Health::default());
    let mut services = JoinSet::new();
    services.spawn(wait_for_signal(shutdown.clone()));
    let listener = http::serve(
        config.http_addr,
        health.clone(),
        metrics.clone(),
        shutdown.clone(),
    );
    let http_shutdown = shutdown.clone();
    services.spawn(async move {
        if let Err(err) = listener.await {
            tracing::error!(error = %err, "the health endpoint failed; stopping");
            http_shutdown.cancel();
        }
    });

    let ca = config.ca()?;
    let redis = connect_redis(&config.redis_url, ca.as_ref(), &shutdown).await?;
    let agent = config.agent_name();
    // Unique per process: a restarted agent with the same pod name is another worker.
    let worker_id = format!("{agent}/{}", std::process::id());
    let claims = Claims::new(redis.clone(), worker_id, config.claim_lease());
    let (redis_claims, redis_health, redis_shutdown) =
        (claims.clone(), health.clone(), shutdown.clone());
    services.spawn(async move {
        redis_health
            .watch_redis(|| redis_claims.ping(), &redis_shutdown)
            .await;
    });

    let policy = RetryPolicy {
        attempts: config.llm_attempts.max(1),
        timeout: Duration::from_secs(config.llm_timeout_seconds),
        ..RetryPolicy::default()
    };
    let (router, credentials) = router_and_credentials(&config, policy, redis, &metrics)?;
    let persona = persona::load(
        &config.role,
        config.persona.as_deref(),
        config.persona_dir.as_deref(),
    )
    .context("reading the persona")?;
    let memory = open_memory(&config, router.clone()).await;
    let worker = Arc::new(Worker {
        role: config.role.clone(),
        persona,
        llm: router,
        memory,
        git: git::Git::new(
            config.work_dir.clone(),
            config.max_file_bytes,
            config.push_deadline(),
            metrics.push_rejections.clone(),
        ),
        env: Arc::new(|name| std::env::var(name).ok().filter(|v| !v.is_empty())),
        credentials,
    });
    let runtime = Arc::new(Runtime::new(
        worker,
        claims,
        metrics,
        health,
        agent,
        config.namespace.clone(),
        config.concurrency,
        config.shutdown_grace(),
        config.claim_lease(),
    ));
    tracing::info!(role = %config.role, concurrency = config.concurrency, "agent starting");
    runtime
        .run(&config.amqp_url, ca.as_ref(), shutdown.clone())
        .await;
    shutdown.cancel();
    while services.join_next().await.is_some() {}
    tracing::info!("agent stopped");
    Ok(())
}

/// Long-term memory: Qdrant when a URL is configured, else the embedded store in the
/// work directory; embeddings come from the router. Memory is context, not state: if it
/// cannot be opened the agent works without it, saying so.
async fn open_memory(config: &Config, router: Arc<Router>) -> Arc<dyn memory::Memory> {
    let embedder: Arc<dyn memory::Embedder> = router;
    if let Some(url) = config
        .qdrant_url
        .as_deref()
        .filter(|u| u.starts_with("https://"))
        && (config.ca_file.is_some() || config.ca_cert.is_some())
    {
        tracing::warn!(
            qdrant = %aios_crds::text::without_userinfo(url),
            "not supported yet: the CA bundle (AIOS_CA_FILE / AIOS_CA_CERT) for Qdrant; its client \
             trusts the system's roots only (a bundle in SSL_CERT_FILE replaces them)"
        );
    }
    let opened: Result<Arc<dyn memory::Memory>, memory::MemoryError> = match &config.qdrant_url {
        Some(url) => memory::qdrant::QdrantMemory::new(
            url,
            config.qdrant_api_key.clone(),
            memory::COLLECTION,
            embedder,
        )
        .await
        .map(|m| Arc::new(m) as Arc<dyn memory::Memory>),
        None => memory::edge::EdgeMemory::open(&config.work_dir.join("memory"), embedder)
            .map(|m| Arc::new(m) as Arc<dyn memory::Memory>),
    };
    match opened {
        Ok(memory) => memory,
        Err(err) => {
            tracing::error!(error = %err, "long-term memory is unavailable; working without it");
            Arc::new(memory::NoMemory)
        }
    }
}

/// Logs to stderr as JSON (the current span's `project` and `task` on every line) or
/// text; the level comes from `RUST_LOG` (default `info`).
pub fn init_logging(format: config::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        config::LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
        config::LogFormat::Text => builder.init(),
    }
}
