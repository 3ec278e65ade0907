//! One watch per kind. Each kind the operator reads is listed and watched once, into
//! one store every controller and handler reads; the controllers it triggers subscribe
//! to that watch (kube's shared streams) instead of opening watches of their own.
//!
//! A subscription only hears objects that appear or change. Deletions, which some
//! controllers act on (a deleted Task, a deleted owned Deployment), reach them through
//! the `on_event` hook, which sees every event of the watch.

use futures::StreamExt;
use kube::{
    Api, Resource, ResourceExt,
    runtime::{
        WatchStreamExt,
        reflector::{self, ReflectHandle, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;

use std::sync::Arc;

use aios_crds::{Agent, ModelProvider, Project, Task};
use futures::channel::mpsc;
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Secret};
use kube::Client;
use tokio_util::sync::CancellationToken as Shutdown;

use crate::{
    Config, RunError, Supervised, api, project,
    provider::credentials,
    runtime::{
        bus::Bus,
        grouped::{AgentsByRole, ProvidersByNamespace},
        index::Urgency,
    },
};

/// How many changes a subscriber may lag behind before the watch waits for it.
pub const SUBSCRIBER_BUFFER: usize = 4096;

/// A kind's store and its controllers' subscriptions.
pub(crate) struct Watched<K: Resource + Clone + 'static>
where
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    /// Every object of the kind, as the watch last saw it.
    pub store: Store<K>,
    /// One stream of changed objects per subscriber, in the order asked for.
    pub subscriptions: Vec<ReflectHandle<K>>,
}

/// Starts the one watch of `K` with `subscribers` subscriptions, `on_event` seeing
/// every event, under supervision as `what`. Waits until its store is synced when the
/// operator cannot work without it (`synced`); a watch that only triggers controllers
/// does not hold the others up (without the permission to list it, only the controllers
/// it triggers are affected).
pub(crate) async fn watch<K>(
    (api, config): (Api<K>, watcher::Config),
    subscribers: usize,
    synced: bool,
    mut on_event: impl FnMut(&watcher::Event<K>, &Store<K>) + Send + 'static,
    what: &'static str,
    shutdown: &Shutdown,
    tasks: &mut Supervised,
) -> Result<Watched<K>, RunError>
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store_shared(SUBSCRIBER_BUFFER);
    let subscriptions = (0..subscribers)
        .map(|_| writer.subscribe().ok_or(RunError::TaskEnded(what)))
        .collect::<Result<Vec<_>, _>>()?;
    let stream = watcher(api, config)
        .default_backoff()
        // Nothing reads who manages which field, and at 10,000 Tasks those entries are
        // a large share of the cache.
        .modify(|object| object.managed_fields_mut().clear())
        .reflect_shared(writer)
        .take_until(shutdown.clone().cancelled_owned());
    let applied = store.clone();
    tasks.spawn(async move {
        stream
            .for_each(|event| {
                if let Ok(event) = &event {
                    on_event(event, &applied);
                }
                async {}
            })
            .await;
        Err(RunError::TaskEnded(what))
    });
    if synced {
        store
            .wait_until_ready()
            .await
            .map_err(|_| RunError::TaskEnded(what))?;
    }
    Ok(Watched {
        store,
        subscriptions,
    })
}

/// The operator's caches, synced: one watch per kind (see [`watches`]).
pub(crate) struct Caches {
    pub tasks: reflector::Store<Task>,
    pub task_index: Arc<crate::runtime::index::TaskIndex>,
    pub agents: reflector::Store<Agent>,
    pub agents_by_role: Arc<AgentsByRole>,
    pub providers: reflector::Store<ModelProvider>,
    pub providers_by_namespace: Arc<ProvidersByNamespace>,
    /// The Secrets labelled as credentials.
    pub credentials: reflector::Store<Secret>,
    /// What each Agent or ModelProvider that appears or changes may wake.
    pub agent_wakeups: mpsc::UnboundedReceiver<project::Wake>,
    /// The namespace of each deleted ModelProvider.
    pub provider_deletions: mpsc::UnboundedReceiver<String>,
    /// What wakes the controllers.
    pub triggers: Triggers,
}

/// The controllers' subscriptions to the shared watches, and the deletions they act on.
pub(crate) struct Triggers {
    pub tasks_for_tasks: ReflectHandle<Task>,
    /// The Projects whose pass a Task's change calls for now ([`Urgency::Now`]).
    pub projects_now: mpsc::UnboundedReceiver<reflector::ObjectRef<Project>>,
    /// The Projects whose pass a Task's change calls for soon ([`Urgency::Soon`]).
    pub projects_soon: mpsc::UnboundedReceiver<reflector::ObjectRef<Project>>,
    /// The attempt in flight of each deleted Task that had one.
    pub deleted_attempts: mpsc::UnboundedReceiver<crate::task::cancels::Recorded>,
    /// What wakes the Agent and ModelProvider controllers.
    pub workload: WorkloadTriggers,
}

/// Starts the one watch of each kind the controllers share and waits for them to sync.
/// Agents also declare their role's queue as they appear; Agents and ModelProviders wake
/// the Projects with Tasks waiting for them.
pub(crate) async fn start_caches(
    client: &Client,
    config: &Config,
    bus: &Arc<Bus>,
    shutdown: &Shutdown,
    tasks: &mut Supervised,
) -> Result<Caches, RunError> {
    let ns = config.watch_namespace.as_deref();
    let TaskWatch {
        watched: watched_tasks,
        index: task_index,
        projects_now,
        projects_soon,
        deleted_attempts,
        demand_moved,
    } = watch_tasks(client, ns, shutdown, tasks).await?;
    let (agent_tx, agent_rx) = mpsc::unbounded::<project::Wake>();
    let provider_wakeups = agent_tx.clone();
    let agents_by_role = Arc::new(AgentsByRole::by_role());
    let watched_agents = watch_agents(
        client,
        ns,
        bus,
        (agent_tx, agents_by_role.clone()),
        shutdown,
        tasks,
    )
    .await?;
    let providers_by_namespace = Arc::new(ProvidersByNamespace::by_namespace());
    let (watched_providers, deleted_rx) = watch_providers(
        client,
        ns,
        (provider_wakeups, providers_by_namespace.clone()),
        shutdown,
        tasks,
    )
    .await?;
    // Secrets: only those labelled as credentials are ever read.
    let (deleted_secret_tx, deleted_secrets) = mpsc::unbounded();
    let watched_secrets = watch(
        (api::<Secret>(client, ns), credentials::watch_config()),
        1,
        true,
        move |event, _| {
            if let watcher::Event::Delete(secret) = event {
                let _ = deleted_secret_tx.unbounded_send(secret.clone());
            }
        },
        "the credential Secret watch",
        shutdown,
        tasks,
    )
    .await?;
    let (watched_deployments, deleted_pools, deleted_servers) =
        watch_deployments(client, ns, shutdown, tasks).await?;
    let mut task_subs = watched_tasks.subscriptions.into_iter();
    let mut deployment_subs = watched_deployments.subscriptions.into_iter();
    let missing = || RunError::TaskEnded("a subscription");
    let workload = WorkloadTriggers {
        demand_moved,
        agents: first(watched_agents.subscriptions).ok_or_else(missing)?,
        providers: first(watched_providers.subscriptions).ok_or_else(missing)?,
        secrets: first(watched_secrets.subscriptions).ok_or_else(missing)?,
        deployments_for_pools: deployment_subs.next().ok_or_else(missing)?,
        deployments_for_serving: deployment_subs.next().ok_or_else(missing)?,
        deleted_pools,
        deleted_servers,
        deleted_secrets,
    };
    let triggers = Triggers {
        tasks_for_tasks: task_subs.next().ok_or_else(missing)?,
        projects_now,
        projects_soon,
        deleted_attempts,
        workload,
    };
    Ok(Caches {
        tasks: watched_tasks.store,
        task_index,
        agents: watched_agents.store,
        agents_by_role,
        providers: watched_providers.store,
        providers_by_namespace,
        credentials: watched_secrets.store,
        agent_wakeups: agent_rx,
        provider_deletions: deleted_rx,
        triggers,
    })
}

/// The one watch of Tasks, its index, and what its events wake.
struct TaskWatch {
    watched: Watched<Task>,
    index: Arc<crate::runtime::index::TaskIndex>,
    /// The Projects whose pass a Task's change calls for now ([`Urgency::Now`]).
    projects_now: mpsc::UnboundedReceiver<reflector::ObjectRef<Project>>,
    /// The Projects whose pass a Task's change calls for soon ([`Urgency::Soon`]).
    projects_soon: mpsc::UnboundedReceiver<reflector::ObjectRef<Project>>,
    /// The attempt in flight of each deleted Task that had one.
    deleted_attempts: mpsc::UnboundedReceiver<crate::task::cancels::Recorded>,
    /// The roles whose demand moved.
    demand_moved: mpsc::UnboundedReceiver<(String, String)>,
}

/// The one watch of Tasks, indexed ([`crate::runtime::index`]): each Task's change wakes
/// its Project, now or soon (the Project controller has no subscription of its own),
/// and its role's Agents when it moves their demand; a deleted Task's attempt in flight
/// is sent on to be cancelled.
async fn watch_tasks(
    client: &Client,
    ns: Option<&str>,
    shutdown: &Shutdown,
    tasks: &mut Supervised,
) -> Result<TaskWatch, RunError> {
    let (now_tx, projects_now) = mpsc::unbounded();
    let (soon_tx, projects_soon) = mpsc::unbounded();
    let (deleted_attempt_tx, deleted_attempts) = mpsc::unbounded();
    let (demand_tx, demand_moved) = mpsc::unbounded();
    let index = Arc::new(crate::runtime::index::TaskIndex::sending_demand(demand_tx));
    let indexing = index.clone();
    let watched = watch(
        (api::<Task>(client, ns), watcher::Config::default()),
        1,
        true,
        move |event, store| {
            for (project, urgency) in indexing.apply(event, store) {
                let project = crate::runtime::index::project_ref(&project);
                let _ = match urgency {
                    Urgency::Now => now_tx.unbounded_send(project),
                    Urgency::Soon => soon_tx.unbounded_send(project),
                };
            }
            if let watcher::Event::Delete(task) = event
                && let Some(attempt) = crate::task::deleted_in_flight(task)
            {
                let _ = deleted_attempt_tx.unbounded_send(attempt);
            }
        },
        "the Task watch",
        shutdown,
        tasks,
    )
    .await?;
    Ok(TaskWatch {
        watched,
        index,
        projects_now,
        projects_soon,
        deleted_attempts,
        demand_moved,
    })
}

/// The first of `handles`.
fn first<K: Resource + Clone + 'static>(handles: Vec<ReflectHandle<K>>) -> Option<ReflectHandle<K>>
where
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    handles.into_iter().next()
}

/// What wakes the Agent and ModelProvider controllers.
pub(crate) struct WorkloadTriggers {
    /// The roles (namespace, role) whose demand moved: a Task of the role entered or
    /// left Queued or Running.
    pub demand_moved: mpsc::UnboundedReceiver<(String, String)>,
    pub agents: ReflectHandle<Agent>,
    pub providers: ReflectHandle<ModelProvider>,
    pub secrets: ReflectHandle<Secret>,
    pub deployments_for_pools: ReflectHandle<Deployment>,
    pub deployments_for_serving: ReflectHandle<Deployment>,
    pub deleted_pools: mpsc::UnboundedReceiver<reflector::ObjectRef<Agent>>,
    pub deleted_servers: mpsc::UnboundedReceiver<reflector::ObjectRef<ModelProvider>>,
    pub deleted_secrets: mpsc::UnboundedReceiver<Secret>,
}

/// The one watch of Agents, filed by role: each Agent that appears or changes has its
/// role's queue declared and wakes the Projects with Tasks waiting for an Agent of that
/// role.
async fn watch_agents(
    client: &Client,
    ns: Option<&str>,
    bus: &Arc<Bus>,
    (agent_tx, by_role): (mpsc::UnboundedSender<project::Wake>, Arc<AgentsByRole>),
    shutdown: &Shutdown,
    tasks: &mut Supervised,
) -> Result<Watched<Agent>, RunError> {
    let (appeared_tx, appeared) = mpsc::unbounded::<Agent>();
    let watched = watch(
        (api::<Agent>(client, ns), watcher::Config::default()),
        1,
        true,
        move |event, store| {
            by_role.apply(event, store);
            if let watcher::Event::Apply(agent) | watcher::Event::InitApply(agent) = event {
                let _ = appeared_tx.unbounded_send(agent.clone());
            }
        },
        "the Agent watch",
        shutdown,
        tasks,
    )
    .await?;
    {
        let bus = bus.clone();
        let appeared = appeared.take_until(shutdown.clone().cancelled_owned());
        tasks.spawn(async move {
            appeared
                .for_each(|agent| {
                    let (bus, agent_tx) = (bus.clone(), agent_tx.clone());
                    async move {
                        if let Err(err) = bus.ensure_role_queue(&kube::ResourceExt::namespace(&agent).unwrap_or_default(), agent.spec.role.as_str()).await {
                            tracing::warn!(error = %err, role = %agent.spec.role, "declaring the role queue failed");
                        }
                        let _ = agent_tx.unbounded_send(project::Wake::Role {
                            namespace: kube::ResourceExt::namespace(&agent).unwrap_or_default(),
                            role: agent.spec.role.to_string(),
                        });
                    }
                })
                .await;
            Ok(())
        });
    }
    Ok(watched)
}

/// The one watch of the Deployments the operator made (agent pools and model servers),
/// and the owners of those deleted: Agents, then ModelProviders.
#[allow(clippy::type_complexity)] // a watch and its two deletion streams
async fn watch_deployments(
    client: &Client,
    ns: Option<&str>,
    shutdown: &Shutdown,
    tasks: &mut Supervised,
) -> Result<
    (
        Watched<Deployment>,
        mpsc::UnboundedReceiver<reflector::ObjectRef<Agent>>,
        mpsc::UnboundedReceiver<reflector::ObjectRef<ModelProvider>>,
    ),
    RunError,
> {
    // The Deployments the operator made: agent pools and model servers.
    let managed = format!(
        "{}={}",
        aios_crds::names::labels::MANAGED_BY,
        aios_crds::names::labels::MANAGED_BY_VALUE
    );
    let (deleted_pool_tx, deleted_pools) = mpsc::unbounded();
    let (deleted_server_tx, deleted_servers) = mpsc::unbounded();
    let watched_deployments = watch(
        (
            api::<Deployment>(client, ns),
            watcher::Config::default().labels(&managed),
        ),
        2,
        false,
        move |event, _| {
            let watcher::Event::Delete(deployment) = event else {
                return;
            };
            let namespace = deployment.metadata.namespace.clone().unwrap_or_default();
            for owner in deployment.metadata.owner_references.iter().flatten() {
                match owner.kind.as_str() {
                    "Agent" => {
                        let _ = deleted_pool_tx.unbounded_send(
                            reflector::ObjectRef::new(&owner.name).within(&namespace),
                        );
                    }
                    "ModelProvider" => {
                        let _ = deleted_server_tx.unbounded_send(
                            reflector::ObjectRef::new(&owner.name).within(&namespace),
                        );
                    }
                    _ => {}
                }
            }
        },
        "the Deployment watch",
        shutdown,
        tasks,
    )
    .await?;
    Ok((watched_deployments, deleted_pools, deleted_servers))
}

/// The one watch of ModelProviders, filed by namespace: each change wakes the Projects
/// with Tasks waiting for a provider; the namespace of each deleted one is sent on (its
/// list is rewritten: a deleted provider has no reconcile).
async fn watch_providers(
    client: &Client,
    ns: Option<&str>,
    (provider_wakeups, by_namespace): (
        mpsc::UnboundedSender<project::Wake>,
        Arc<ProvidersByNamespace>,
    ),
    shutdown: &Shutdown,
    tasks: &mut Supervised,
) -> Result<(Watched<ModelProvider>, mpsc::UnboundedReceiver<String>), RunError> {
    // A deleted provider has no reconcile; its namespace's list is rewritten instead.
    // Every provider change also wakes the Projects with Tasks waiting for a provider.
    let (deleted_tx, deleted_rx) = mpsc::unbounded::<String>();
    let watched_providers = watch(
        (api::<ModelProvider>(client, ns), watcher::Config::default()),
        1,
        true,
        move |event, store| {
            by_namespace.apply(event, store);
            if let watcher::Event::Apply(provider)
            | watcher::Event::InitApply(provider)
            | watcher::Event::Delete(provider) = event
            {
                let _ = provider_wakeups.unbounded_send(project::Wake::Provider {
                    namespace: provider.metadata.namespace.clone().unwrap_or_default(),
                });
            }
            if let watcher::Event::Delete(provider) = event
                && let Some(namespace) = provider.metadata.namespace.clone()
            {
                let _ = deleted_tx.unbounded_send(namespace);
            }
        },
        "the ModelProvider watch",
        shutdown,
        tasks,
    )
    .await?;
    Ok((watched_providers, deleted_rx))
}
