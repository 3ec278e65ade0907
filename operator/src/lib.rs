//! `aios-operator`: the controllers that turn AIOS resources into work. Hera (the
//! Project controller) plans Projects into Tasks and dispatches ready Tasks over
//! RabbitMQ; the Task side cancels the attempts of deleted Tasks; the event consumers
//! turn agents' reports into Task status; the Agent controller scales each role's pool and
//! the ModelProvider controller deploys and probes model servers. Only the leader of
//! several replicas runs them.
//!
//! One module per controller, each with its pure desired-state and status code beside
//! its reconcile: [`project`] (Hera: plan, schedule, roll-up, dispatch messages),
//! [`task`] (the lifecycle, the agents' events, cancels, attempt tokens), [`agent`]
//! (pools), [`provider`] (model servers, credentials) and [`verify`]. The shared
//! runtime — watches and indexes, the context, bus, leader election, backoff, metrics,
//! HTTP — is [`runtime`]; this file only wires them together.

pub mod agent;
mod error;
pub mod kstatus;
pub mod pods;
pub mod project;
pub mod provider;
pub mod runtime;
pub mod task;
#[cfg(test)]
mod testing;
pub mod verify;

pub use error::Error;

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use aios_crds::Project;
use clap::Parser;
use futures::{StreamExt, channel::mpsc};
use kube::{
    Api, Client,
    runtime::{
        Controller,
        events::{Recorder, Reporter},
        reflector, watcher,
    },
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{
    runtime::bus::Bus,
    runtime::context::Context,
    runtime::http::Health,
    runtime::leader::{ElectionConfig, Elector},
    runtime::metrics::Metrics,
};

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

    /// RabbitMQ's management API (`http://user:password@host:15672`), where the
    /// operator reads the role queues' ready and unacknowledged messages for its
    /// metrics. Without it, ready messages and consumers are read over AMQP and the
    /// unacknowledged count is not exported.
    #[arg(long, env = "AIOS_RABBITMQ_MANAGEMENT_URL")]
    pub rabbitmq_management_url: Option<String>,

    /// The agents' Redis, where the operator marks cancelled attempts so that no agent
    /// starts one later (a cancel on the bus reaches only the agents connected at that
    /// moment). Without it cancels are not durable: a dispatch waiting while its Task is
    /// deleted and no agent listens is still worked on.
    #[arg(long, env = "AIOS_REDIS_URL")]
    pub redis_url: Option<String>,

    /// A PEM file of CA certificates to trust, besides the system's roots, for
    /// `amqps://` and `rediss://` URLs.
    #[arg(long, env = "AIOS_CA_FILE", conflicts_with = "ca_cert")]
    pub ca_file: Option<std::path::PathBuf>,

    /// The same as PEM text (the chart sets it from the connection Secret's `caCert`).
    #[arg(long, env = "AIOS_CA_CERT", hide_env_values = true)]
    pub ca_cert: Option<String>,

    /// Watch only this namespace; all namespaces when unset.
    #[arg(long, env = "AIOS_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,

    /// Namespace of the leader-election Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,

    /// Name of the Secret, in the operator's namespace, that keeps the key of the
    /// tokens dispatches carry and events must return (made by the first leader).
    #[arg(long, env = "AIOS_TOKEN_KEY_SECRET", default_value = "aios-token-key")]
    pub token_key_secret: String,

    /// Name of the leader-election Lease.
    #[arg(long, env = "AIOS_LEASE_NAME", default_value = "aios-operator")]
    pub lease_name: String,

    /// This replica's identity in the election; the pod name in a cluster.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// Seconds a Lease stays valid without renewal.
    #[arg(long, env = "AIOS_LEASE_DURATION_SECONDS", default_value_t = 15)]
    pub lease_duration_seconds: u64,

    /// Seconds between Lease renewals (and standby retries).
    #[arg(long, env = "AIOS_LEASE_RETRY_SECONDS", default_value_t = 2)]
    pub lease_retry_seconds: u64,

    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(long, env = "AIOS_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,

    /// The agent image for Agents that do not name one.
    #[arg(long, env = "AIOS_AGENT_IMAGE", default_value_t = agent::objects::AgentRuntime::default().image)]
    pub agent_image: String,

    /// The Ollama image for `serve` ModelProviders that do not name one.
    #[arg(long, env = "AIOS_MODEL_SERVER_IMAGE", default_value = provider::objects::DEFAULT_OLLAMA_IMAGE)]
    pub model_server_image: String,

    /// The Secret, in each Agent's namespace, with the agents' connection settings
    /// (keys `amqpUrl`, `redisUrl`, optional `qdrantUrl`, `qdrantApiKey` and `caCert`).
    #[arg(long, env = "AIOS_AGENT_CONNECTION_SECRET", default_value_t = agent::objects::AgentRuntime::default().connection_secret)]
    pub agent_connection_secret: String,

    /// Where agent pods reach this operator's HTTP port (`http://host:port`, the
    /// chart's metrics Service): each attempt asks its credential endpoint for the
    /// repository token and model keys it needs. Without it, agents have only the
    /// credentials an Agent's `env` gives them.
    #[arg(long, env = "AIOS_AGENT_CREDENTIAL_URL")]
    pub agent_credential_url: Option<String>,

    /// Seconds between probes of a ready model provider (an unready one is probed with
    /// backoff, from 2 seconds to 5 minutes).
    #[arg(long, env = "AIOS_PROVIDER_PROBE_SECONDS", default_value_t = 60)]
    pub provider_probe_seconds: u64,

    /// Where verification runs (`spec.verify`): `job` (a Kubernetes Job per run, the
    /// default) or `local` (a sandboxed process of the operator's, where no kubelet runs).
    #[arg(long, env = "AIOS_VERIFY_SANDBOX", value_enum, default_value_t = VerifySandbox::Job)]
    pub verify_sandbox: VerifySandbox,

    /// Where the local sandbox checks out its runs.
    #[arg(long, env = "AIOS_VERIFY_DIR", default_value = "/tmp/aios-verify")]
    pub verify_dir: std::path::PathBuf,

    /// The image whose git checks out the code in a verification Job; the agent image
    /// when unset.
    #[arg(long, env = "AIOS_VERIFY_GIT_IMAGE")]
    pub verify_git_image: Option<String>,

    /// Log format: `json` (structured, the default) or `text`.
    #[arg(long, env = "AIOS_LOG_FORMAT", default_value = "json")]
    pub log_format: String,
}

/// Where verification runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VerifySandbox {
    /// A Kubernetes Job per run.
    Job,
    /// A sandboxed process of the operator's.
    Local,
}

/// The sandbox `config` asks for.
fn sandbox(config: &Config, client: &Client) -> Arc<dyn verify::Sandbox> {
    match config.verify_sandbox {
        VerifySandbox::Job => Arc::new(verify::job::JobSandbox::new(
            client.clone(),
            config
                .verify_git_image
                .clone()
                .unwrap_or_else(|| config.agent_image.clone()),
        )),
        VerifySandbox::Local => {
            Arc::new(verify::local::LocalSandbox::new(config.verify_dir.clone()))
        }
    }
}

/// The cancel marks' store, when the operator knows the agents' Redis.
fn cancel_marks(
    config: &Config,
    ca: Option<&aios_bus::CaBundle>,
) -> Result<Option<task::cancels::CancelMarks>, RunError> {
    let Some(url) = &config.redis_url else {
        tracing::warn!(
            "no Redis URL (AIOS_REDIS_URL): cancels reach only the agents connected when they are sent, and a Task deleted while no operator runs keeps its attempt"
        );
        return Ok(None);
    };
    task::cancels::CancelMarks::new(url, ca)
        .map(Some)
        .map_err(RunError::Tls)
}

/// Why the operator stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No Kubernetes client configuration was found.
    #[error("connecting to Kubernetes")]
    Kube(#[from] kube::Error),
    /// The HTTP endpoint could not be served.
    #[error("serving http on the configured address")]
    Http(#[from] std::io::Error),
    /// The key of attempt tokens could not be had.
    #[error(transparent)]
    TokenKey(#[from] task::tokens::KeyError),
    /// Leadership was lost or could not be kept.
    #[error(transparent)]
    Leader(#[from] runtime::leader::LeaderError),
    /// The bus failed.
    #[error(transparent)]
    Bus(#[from] runtime::bus::BusError),
    /// A critical task ended unexpectedly.
    #[error("{0} stopped unexpectedly")]
    TaskEnded(&'static str),
    /// The CA bundle could not be read, or the Redis URL (AIOS_REDIS_URL) is not one.
    #[error(transparent)]
    Tls(#[from] aios_bus::tls::TlsError),
    /// A setting is not usable; the message says which and what it should be.
    #[error("{0}")]
    Config(String),
}

/// Sets up logging: JSON by default, `RUST_LOG` filters (default `info`).
pub fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "text" {
        builder.init();
    } else {
        builder.json().init();
    }
}

/// Cancels `token` on SIGTERM or Ctrl-C.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(err) => {
                    tracing::error!(error = %err, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down");
        token.cancel();
    });
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs the operator until `shutdown` is cancelled or something critical fails. A
/// shutdown that comes while the operator is still starting (waiting for leadership,
/// the bus or the caches) is a clean stop too.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RunError> {
    let mut tasks = Supervised::new();
    if let Err(err) = start(&config, &shutdown, &mut tasks).await {
        let requested = shutdown.is_cancelled();
        shutdown.cancel();
        while tasks.join_next().await.is_some() {}
        return if requested { Ok(()) } else { Err(err) };
    }
    tracing::info!("operator running");

    // Supervise: the first task to end ends the process. On shutdown every task ends
    // in turn; anything else that ends is a failure.
    let mut outcome = Ok(());
    while let Some(joined) = tasks.join_next().await {
        let result = joined.unwrap_or(Err(RunError::TaskEnded("a task (panicked)")));
        if shutdown.is_cancelled() {
            continue;
        }
        outcome = match result {
            Ok(()) => Err(RunError::TaskEnded("a supervised task")),
            Err(err) => Err(err),
        };
        shutdown.cancel();
    }
    outcome
}

/// This replica's identity in the election: the configured one, else the host name (a
/// pod's name) with the pid, which tells two processes on one host apart.
fn identity(config: &Config) -> String {
    if let Some(identity) = &config.identity {
        return identity.clone();
    }
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .map_or_else(
            || format!("aios-operator-{}", std::process::id()),
            |name| format!("{name}-{}", std::process::id()),
        )
}

/// Where this replica, as `identity`, records Kubernetes Events.
fn recorder(client: &Client, identity: String) -> Recorder {
    let reporter = Reporter {
        controller: "aios-operator".into(),
        instance: Some(identity),
    };
    Recorder::new(client.clone(), reporter)
}

/// The election this replica takes part in, as `identity`.
fn election(config: &Config, identity: &str) -> ElectionConfig {
    ElectionConfig {
        namespace: config.lease_namespace.clone(),
        name: config.lease_name.clone(),
        identity: identity.to_owned(),
        lease_duration: Duration::from_secs(config.lease_duration_seconds),
        retry_period: Duration::from_secs(config.lease_retry_seconds),
    }
}

/// Waits until this replica leads, then keeps the Lease under supervision.
async fn lead(
    client: &Client,
    config: &Config,
    identity: &str,
    health: &Health,
    shutdown: &CancellationToken,
    tasks: &mut Supervised,
) -> Result<Elector, RunError> {
    let elector = Elector::new(client.clone(), election(config, identity));
    elector.acquire(shutdown).await?;
    health.leading.store(true, Ordering::Relaxed);
    if let Some(pod) = &config.identity {
        runtime::leader::label_leader_pod(client, &config.lease_namespace, pod).await;
    }
    let (keeper, shutdown) = (elector.clone(), shutdown.clone());
    tasks.spawn(async move { Ok(keeper.keep(&shutdown).await?) });
    Ok(elector)
}

/// Starts everything under supervision in `tasks`: the probes, the election (this
/// waits until this replica leads), the bus, the caches and the controllers.
async fn start(
    config: &Config,
    shutdown: &CancellationToken,
    tasks: &mut Supervised,
) -> Result<(), RunError> {
    let client = Client::try_default().await?;
    let identity = identity(config);
    let health = Health {
        metrics: Metrics::new(),
        ..Health::default()
    };
    {
        let (health, shutdown, addr) = (health.clone(), shutdown.clone(), config.http_addr);
        tasks.spawn(async move { Ok(runtime::http::serve(addr, health, shutdown).await?) });
    }

    let elector = lead(&client, config, &identity, &health, shutdown, tasks).await?;

    let attempt_key = task::tokens::AttemptKey::load_or_create(
        &client,
        &config.lease_namespace,
        &config.token_key_secret,
    )
    .await?;
    let ca = aios_bus::tls::configured_ca(config.ca_file.as_deref(), config.ca_cert.as_deref())?;
    let bus = Arc::new(Bus::connect(&config.amqp_url, ca.as_ref(), shutdown).await?);
    let _ = health.bus.set(bus.clone());
    let queue_source = queue_source(config, &bus)?;
    let cancel_marks = cancel_marks(config, ca.as_ref())?;

    let runtime::watches::Caches {
        tasks: task_store,
        task_index,
        agents: agent_store,
        agents_by_role,
        providers: provider_store,
        providers_by_namespace,
        credentials,
        agent_wakeups: agent_rx,
        provider_deletions,
        triggers,
    } = runtime::watches::start_caches(&client, config, &bus, shutdown, tasks).await?;

    let ctx = Arc::new(Context {
        client: client.clone(),
        bus,
        tasks: task_store,
        task_index,
        agents: agent_store,
        agents_by_role,
        metrics: health.metrics.clone(),
        leadership: elector.leadership(),
        recorder: recorder(&client, identity),
        providers: provider_store,
        providers_by_namespace,
        credentials,
        http: provider::probe_client(),
        provider_probe_interval: Duration::from_secs(config.provider_probe_seconds.max(1)),
        agent_runtime: agent::objects::AgentRuntime {
            image: config.agent_image.clone(),
            connection_secret: config.agent_connection_secret.clone(),
            credential_url: config.agent_credential_url.clone(),
            ..agent::objects::AgentRuntime::default()
        },
        model_server_image: config.model_server_image.clone(),
        cancel_marks,
        sandbox: sandbox(config, &client),
        attempt_key: Arc::new(attempt_key),
        backoffs: Arc::default(),
        plans: Arc::default(),
        lanes: Arc::default(),
        waiting: Arc::default(),
        project_statuses: Arc::default(),
        dispatch_permits: Arc::new(tokio::sync::Semaphore::new(project::DISPATCH_CONCURRENCY)),
        urgent: Arc::default(),
        projects: health.projects.clone(),
    });
    {
        let ctx = ctx.clone();
        let deletions = provider_deletions.take_until(shutdown.clone().cancelled_owned());
        tasks.spawn(async move {
            deletions
                .for_each(|namespace| {
                    let ctx = ctx.clone();
                    async move {
                        if let Err(err) = provider::publish_provider_list(&ctx, &namespace, None).await {
                            tracing::warn!(error = %err, %namespace, "rewriting the provider list failed");
                        }
                    }
                })
                .await;
            Ok(())
        });
    }
    let _ = health.context.set(ctx.clone());
    let (agents, depths) = (ctx.agents.clone(), health.queues.clone());
    tasks.spawn(runtime::observe::follow_queues(
        queue_source,
        agents,
        depths,
        shutdown.clone(),
    ));
    let projects = spawn_controllers(&client, config, ctx, agent_rx, triggers, shutdown, tasks);
    let _ = health.projects.set(projects);
    health.synced.store(true, Ordering::Relaxed);
    Ok(())
}

/// Where the metrics read queue depths: the management API when configured (it must be
/// a valid URL), else the bus.
fn queue_source(
    config: &Config,
    bus: &Arc<Bus>,
) -> Result<runtime::observe::QueueSource, RunError> {
    let management = match &config.rabbitmq_management_url {
        None => None,
        Some(url) => {
            let url = reqwest::Url::parse(url).map_err(|e| {
                RunError::Config(format!(
                    "--rabbitmq-management-url is not a URL ({e}); expected http://user:password@host:15672"
                ))
            })?;
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(3))
                .build()
                .map_err(|e| {
                    RunError::Config(format!("building the management API client: {e}"))
                })?;
            Some((http, url, runtime::observe::vhost_of(&config.amqp_url)))
        }
    };
    Ok(runtime::observe::QueueSource {
        bus: bus.clone(),
        management,
    })
}

type Supervised = JoinSet<Result<(), RunError>>;

/// Starts Hera, the Task controller and the two bus consumers under supervision.
fn spawn_controllers(
    client: &Client,
    config: &Config,
    ctx: Arc<Context>,
    agent_rx: mpsc::UnboundedReceiver<project::Wake>,
    triggers: runtime::watches::Triggers,
    shutdown: &CancellationToken,
    tasks: &mut Supervised,
) -> reflector::Store<Project> {
    let ns = config.watch_namespace.as_deref();
    let project_controller = Controller::new(
        api::<Project>(client, ns),
        watcher::Config::default().any_semantic(),
    );
    let project_store = project_controller.store();
    let waiting = ctx.task_index.clone();
    let projects = project_controller
        .reconcile_on(triggers.projects_now)
        .reconcile_on(project::soon::coalesced(
            triggers.projects_soon,
            project::soon::SOON,
        ))
        // An Agent or a provider that appears or changes wakes only the Projects with
        // a Task waiting for it.
        .reconcile_on(agent_rx.flat_map(move |wake| {
            let projects: Vec<_> = waiting
                .projects_waiting(&wake)
                .iter()
                .map(runtime::index::project_ref)
                .collect();
            futures::stream::iter(projects)
        }))
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(
            |o, c| runtime::backoff::resetting("project", o, c, project::reconcile),
            project::error_policy,
            ctx.clone(),
        )
        .for_each(|_| async {});
    tasks.spawn(async move {
        projects.await;
        Err(RunError::TaskEnded("the Project controller"))
    });
    let task_controller =
        Controller::for_shared_stream(triggers.tasks_for_tasks, ctx.tasks.clone())
            .graceful_shutdown_on(shutdown.clone().cancelled_owned())
            .run(
                |o, c| runtime::backoff::resetting("task", o, c, task::reconcile),
                task::error_policy,
                ctx.clone(),
            )
            .for_each(|_| async {});
    tasks.spawn(async move {
        task_controller.await;
        Err(RunError::TaskEnded("the Task controller"))
    });
    spawn_workload_controllers(&ctx, triggers.workload, shutdown, tasks);
    // Deleted Tasks' attempts: cancelled as the watch sees them go, and swept for those
    // no operator saw go.
    {
        let ctx = ctx.clone();
        let deletions = triggers
            .deleted_attempts
            .take_until(shutdown.clone().cancelled_owned());
        tasks.spawn(async move {
            deletions
                .for_each(|attempt| task::cancel_deleted(&ctx, attempt))
                .await;
            Err(RunError::TaskEnded("the deleted Task canceller"))
        });
    }
    {
        let (ctx, namespace) = (ctx.clone(), config.watch_namespace.clone());
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            task::keep_sweeping(ctx, namespace, shutdown).await;
            Err(RunError::TaskEnded("the sweep of attempts in flight"))
        });
    }
    {
        let (ctx, shutdown) = (ctx.clone(), shutdown.clone());
        tasks.spawn(async move {
            project::waiting::keep_writing(ctx, shutdown).await;
            Err(RunError::TaskEnded("the writer of what waiting Tasks say"))
        });
    }
    {
        let (ctx, shutdown) = (ctx.clone(), shutdown.clone());
        tasks.spawn(async move {
            project::status::keep_writing(ctx, shutdown).await;
            Err(RunError::TaskEnded("the writer of Project statuses"))
        });
    }
    {
        let (ctx, shutdown) = (ctx.clone(), shutdown.clone());
        tasks.spawn(async move {
            task::events::consume_events(ctx, shutdown).await?;
            Err(RunError::TaskEnded("the event consumer"))
        });
    }
    let shutdown = shutdown.clone();
    tasks.spawn(async move {
        task::events::consume_dead_letters(ctx, shutdown).await?;
        Err(RunError::TaskEnded("the dead-letter consumer"))
    });
    project_store
}

/// Starts the Agent controller (agent pools) and the ModelProvider controller (model
/// servers) under supervision.
fn spawn_workload_controllers(
    ctx: &Arc<Context>,
    triggers: runtime::watches::WorkloadTriggers,
    shutdown: &CancellationToken,
    tasks: &mut Supervised,
) {
    let by_role = ctx.agents_by_role.clone();
    let pools = Controller::for_shared_stream(triggers.agents, ctx.agents.clone())
        .owns_shared_stream(triggers.deployments_for_pools)
        // A Task reaches its role's Agents only when it moves their demand.
        .reconcile_on(triggers.demand_moved.flat_map(move |(namespace, role)| {
            futures::stream::iter(agent::agents_of_role(&by_role, &namespace, &role))
        }))
        .reconcile_on(triggers.deleted_pools)
        // Task events come in bursts; one pass a second per pool is enough.
        .with_config(kube::runtime::controller::Config::default().debounce(Duration::from_secs(1)))
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(
            |o, c| runtime::backoff::resetting("agent", o, c, agent::reconcile),
            agent::error_policy,
            ctx.clone(),
        )
        .for_each(|_| async {});
    tasks.spawn(async move {
        pools.await;
        Err(RunError::TaskEnded("the Agent controller"))
    });
    let (naming, naming_deleted) = (
        ctx.providers_by_namespace.clone(),
        ctx.providers_by_namespace.clone(),
    );
    let serving = Controller::for_shared_stream(triggers.providers, ctx.providers.clone())
        .owns_shared_stream(triggers.deployments_for_serving)
        .watches_shared_stream(triggers.secrets, move |secret| {
            provider::providers_naming(&naming, &secret)
        })
        .reconcile_on(triggers.deleted_servers)
        .reconcile_on(triggers.deleted_secrets.flat_map(move |secret| {
            futures::stream::iter(provider::providers_naming(&naming_deleted, &secret))
        }))
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(
            |o, c| runtime::backoff::resetting("model_provider", o, c, provider::reconcile),
            provider::error_policy,
            ctx.clone(),
        )
        .for_each(|_| async {});
    tasks.spawn(async move {
        serving.await;
        Err(RunError::TaskEnded("the ModelProvider controller"))
    });
}
