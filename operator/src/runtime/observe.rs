//! The gauges read at scrape time: tasks and Projects by phase, usage per namespace, the
//! unfinished Projects' local ratio and budget, each Agent's pool, each ModelProvider's
//! readiness, the role queues' depth, and whether this replica leads.
//!
//! [`families`] is pure (a [`Snapshot`] in, metric families out); a fresh registry per
//! scrape means an object gone from the caches is gone from the metrics. The queue
//! depths are read by [`read_queues`], at the edge: from RabbitMQ's management API when
//! the operator is given its URL (ready and unacknowledged messages, consumers), else
//! with a passive declare over AMQP (ready messages and consumers only).
//!
//! Cardinality: labels are namespaces, roles, phases, and the names of Agents and
//! ModelProviders (objects an administrator creates, a few per namespace). Per-Project
//! series exist only for Projects not yet finished, so they are bounded by the work in
//! flight, not by history.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use aios_crds::{Agent, ModelProvider, Project, Task, names};
use kube::ResourceExt;
use prometheus::{GaugeVec, IntGaugeVec, Opts, Registry, proto::MetricFamily};

use crate::{runtime::bus::Bus, task::lifecycle::phase};

/// What one scrape reads.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Whether this replica holds the Lease.
    pub leading: bool,
    /// Every Task in the cache.
    pub tasks: Vec<Arc<Task>>,
    /// Every Project in the cache.
    pub projects: Vec<Arc<Project>>,
    /// Every Agent in the cache.
    pub agents: Vec<Arc<Agent>>,
    /// Every ModelProvider in the cache.
    pub providers: Vec<Arc<ModelProvider>>,
    /// The role queues that could be read.
    pub queues: Vec<QueueDepth>,
    /// The objects whose last reconcile failed.
    pub failing: Vec<(&'static str, String, crate::runtime::backoff::Failing)>,
}

/// One role queue's depth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDepth {
    /// The namespace of the role.
    pub namespace: String,
    /// The role.
    pub role: String,
    /// Messages waiting for a consumer.
    pub ready: u64,
    /// Messages delivered and not yet acknowledged; `None` without the management API.
    pub unacked: Option<u64>,
    /// Consumers (agents) on the queue.
    pub consumers: u64,
}

struct Gauges<'r>(&'r Registry);

impl Gauges<'_> {
    fn int(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        let g = IntGaugeVec::new(Opts::new(name, help), labels)
            .unwrap_or_else(|e| panic!("metric definition {name}: {e}"));
        self.register(Box::new(g.clone()), name);
        g
    }

    fn float(&self, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
        let g = GaugeVec::new(Opts::new(name, help), labels)
            .unwrap_or_else(|e| panic!("metric definition {name}: {e}"));
        self.register(Box::new(g.clone()), name);
        g
    }

    fn register(&self, collector: Box<dyn prometheus::core::Collector>, name: &str) {
        // Names are static and unique in this module; a duplicate is a programming
        // error the tests catch.
        self.0
            .register(collector)
            .unwrap_or_else(|e| panic!("registering {name}: {e}"));
    }
}

/// The scrape-time metric families of `snapshot`.
pub fn families(snapshot: &Snapshot) -> Vec<MetricFamily> {
    let registry = Registry::new();
    let g = Gauges(&registry);
    let leader = g.int(
        "aios_leader",
        "1 on the replica that holds the leader Lease, 0 on standbys",
        &[],
    );
    leader
        .with_label_values(&[] as &[&str])
        .set(i64::from(snapshot.leading));
    if snapshot.leading {
        tasks_and_projects(&g, snapshot);
        pools_and_providers(&g, snapshot);
        queues(&g, &snapshot.queues);
    }
    failing(&g, &snapshot.failing);
    registry.gather()
}

/// Objects backing off after failed reconciles: how many per controller, and the
/// longest run of failures (object names are not labels: they are unbounded).
fn failing(g: &Gauges<'_>, failing: &[(&'static str, String, crate::runtime::backoff::Failing)]) {
    let objects = g.int(
        "aios_reconcile_failing_objects",
        "Objects whose last reconcile failed, backing off, by controller",
        &["controller"],
    );
    let longest = g.int(
        "aios_reconcile_consecutive_failures_max",
        "The most failures in a row of any one object, by controller",
        &["controller"],
    );
    for (controller, _, f) in failing {
        objects.with_label_values(&[*controller]).inc();
        let max = longest.with_label_values(&[*controller]);
        max.set(max.get().max(i64::from(f.count)));
    }
}

fn tasks_and_projects(g: &Gauges<'_>, snapshot: &Snapshot) {
    let tasks = g.int("aios_tasks", "Tasks by phase and role", &["phase", "role"]);
    for task in &snapshot.tasks {
        let phase = format!("{:?}", phase(task));
        tasks
            .with_label_values(&[phase.as_str(), task.spec.role.as_str()])
            .inc();
    }
    let projects = g.int(
        "aios_projects",
        "Projects by namespace and phase",
        &["namespace", "phase"],
    );
    let tokens = g.int(
        "aios_usage_tokens",
        "Model tokens the namespace's Projects have used, by direction",
        &["namespace", "direction"],
    );
    let cost = g.float(
        "aios_usage_cost_usd",
        "What the namespace's Projects' model calls cost, in US dollars",
        &["namespace"],
    );
    let local = g.float(
        "aios_project_local_ratio",
        "Share of an unfinished Project's model calls served locally",
        &["namespace", "project"],
    );
    let target = g.float(
        "aios_project_local_ratio_target",
        "The local share an unfinished Project aims for",
        &["namespace", "project"],
    );
    let budget = g.float(
        "aios_project_budget_used_ratio",
        "Share of an unfinished Project's budget used, by limit (tokens or usd)",
        &["namespace", "project", "limit"],
    );
    for project in &snapshot.projects {
        let namespace = project.namespace().unwrap_or_default();
        let name = project.name_any();
        let status = project.status.clone().unwrap_or_default();
        let phase = format!("{:?}", status.phase.unwrap_or_default());
        projects.with_label_values(&[&namespace, &phase]).inc();
        let usage = &status.usage;
        tokens
            .with_label_values(&[&namespace, "input"])
            .add(usage.input_tokens);
        tokens
            .with_label_values(&[&namespace, "output"])
            .add(usage.output_tokens);
        cost.with_label_values(&[&namespace]).add(usage.cost_usd);
        if status
            .phase
            .is_some_and(aios_crds::ProjectPhase::is_terminal)
        {
            continue;
        }
        let ids = [namespace.as_str(), name.as_str()];
        target
            .with_label_values(&ids)
            .set(project.spec.models.target_local_ratio);
        if let Some(ratio) = status.local_ratio {
            local.with_label_values(&ids).set(ratio);
        }
        if let Some(limits) = &project.spec.models.budget {
            if let Some(max) = limits.tokens.filter(|t| *t > 0) {
                let used = usage.input_tokens.saturating_add(usage.output_tokens);
                #[allow(clippy::cast_precision_loss)] // a ratio; tokens are far below 2^52
                let ratio = used as f64 / max as f64;
                budget
                    .with_label_values(&[ids[0], ids[1], "tokens"])
                    .set(ratio);
            }
            if let Some(max) = limits.usd.filter(|u| *u > 0.0) {
                budget
                    .with_label_values(&[ids[0], ids[1], "usd"])
                    .set(usage.cost_usd / max);
            }
        }
    }
}

fn pools_and_providers(g: &Gauges<'_>, snapshot: &Snapshot) {
    let desired = g.int(
        "aios_pool_desired_replicas",
        "Replicas an Agent's queue asks for",
        &["namespace", "agent", "role"],
    );
    let ready = g.int(
        "aios_pool_ready_replicas",
        "Replicas of an Agent's pool ready to take tasks",
        &["namespace", "agent", "role"],
    );
    for agent in &snapshot.agents {
        let namespace = agent.namespace().unwrap_or_default();
        let name = agent.name_any();
        let labels = [namespace.as_str(), name.as_str(), agent.spec.role.as_str()];
        let status = agent.status.clone().unwrap_or_default();
        desired
            .with_label_values(&labels)
            .set(i64::from(status.desired_replicas));
        ready
            .with_label_values(&labels)
            .set(i64::from(status.ready_replicas));
    }
    let providers = g.int(
        "aios_model_provider_ready",
        "1 when a ModelProvider answered its last probe, else 0",
        &["namespace", "provider", "tier"],
    );
    for provider in &snapshot.providers {
        let namespace = provider.namespace().unwrap_or_default();
        let tier = format!("{:?}", provider.spec.tier);
        let ready = provider.status.as_ref().is_some_and(|s| s.ready);
        providers
            .with_label_values(&[&namespace, &provider.name_any(), &tier])
            .set(i64::from(ready));
    }
}

fn queues(g: &Gauges<'_>, depths: &[QueueDepth]) {
    let messages = g.int(
        "aios_queue_messages",
        "Messages in a role's task queue, by state (ready, unacked), read from RabbitMQ",
        &["namespace", "role", "state"],
    );
    let consumers = g.int(
        "aios_queue_consumers",
        "Consumers (agents) of a role's task queue, read from RabbitMQ",
        &["namespace", "role"],
    );
    let int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    for q in depths {
        let ids = [q.namespace.as_str(), q.role.as_str()];
        messages
            .with_label_values(&[ids[0], ids[1], "ready"])
            .set(int(q.ready));
        if let Some(unacked) = q.unacked {
            messages
                .with_label_values(&[ids[0], ids[1], "unacked"])
                .set(int(unacked));
        }
        consumers.with_label_values(&ids).set(int(q.consumers));
    }
}

/// Where the operator reads queue depths.
#[derive(Debug, Clone)]
pub struct QueueSource {
    /// The bus (passive declares).
    pub bus: Arc<Bus>,
    /// RabbitMQ's management API (`http://user:password@host:15672`) and the vhost of
    /// the operator's AMQP URL; `None` to read over AMQP only.
    pub management: Option<(reqwest::Client, reqwest::Url, String)>,
}

/// How long one read of a queue's depth may take before it is left out.
const QUEUE_READ_TIMEOUT: Duration = Duration::from_secs(3);

/// How often the queue depths are read: scrapes read the last result, so a slow broker
/// never slows a scrape.
const QUEUE_READ_INTERVAL: Duration = Duration::from_secs(5);

/// Reads the depth of the role queues every [`QUEUE_READ_INTERVAL`] into `depths`
/// until `shutdown`. A failing read is logged when it starts failing and when it
/// recovers, not on every pass.
pub async fn follow_queues(
    source: QueueSource,
    agents: kube::runtime::reflector::Store<Agent>,
    depths: Arc<std::sync::Mutex<Vec<QueueDepth>>>,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<(), crate::RunError> {
    let mut failing = false;
    loop {
        let (read, problem) = read_queues(&source, &agents.state()).await;
        match (&problem, failing) {
            (Some(problem), false) => {
                tracing::warn!(%problem, "reading the role queues' depth failed; the queue metrics leave those queues out");
            }
            (None, true) => tracing::info!("reading the role queues' depth works again"),
            _ => {}
        }
        failing = problem.is_some();
        if let Ok(mut depths) = depths.lock() {
            *depths = read;
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(QUEUE_READ_INTERVAL) => {}
        }
    }
}

/// The depth of the queue of each role an Agent serves; a queue that cannot be read is
/// left out, and the last problem is returned beside the rest.
pub async fn read_queues(
    source: &QueueSource,
    agents: &[Arc<Agent>],
) -> (Vec<QueueDepth>, Option<String>) {
    let roles: BTreeSet<(String, String)> = agents
        .iter()
        .map(|a| (a.namespace().unwrap_or_default(), a.spec.role.to_string()))
        .collect();
    let mut depths = Vec::new();
    let mut problem = None;
    for (namespace, role) in roles {
        let queue = names::bus::role_queue(&namespace, &role);
        let read = tokio::time::timeout(QUEUE_READ_TIMEOUT, read_queue(source, &queue)).await;
        match read {
            Ok(Ok((ready, unacked, consumers))) => depths.push(QueueDepth {
                namespace,
                role,
                ready,
                unacked,
                consumers,
            }),
            Ok(Err(err)) => problem = Some(format!("queue {queue}: {err}")),
            Err(_) => {
                problem = Some(format!(
                    "queue {queue}: no answer in {QUEUE_READ_TIMEOUT:?}"
                ));
            }
        }
    }
    (depths, problem)
}

async fn read_queue(source: &QueueSource, queue: &str) -> Result<(u64, Option<u64>, u64), String> {
    let Some((http, base, vhost)) = &source.management else {
        let (ready, consumers) = source
            .bus
            .queue_depth(queue)
            .await
            .map_err(|e| e.to_string())?;
        return Ok((u64::from(ready), None, u64::from(consumers)));
    };
    read_management(http, base, vhost, queue).await
}

/// A queue's ready and unacknowledged messages and its consumers, from the management
/// API at `base` (credentials in its user info).
async fn read_management(
    http: &reqwest::Client,
    base: &reqwest::Url,
    vhost: &str,
    queue: &str,
) -> Result<(u64, Option<u64>, u64), String> {
    let mut url = base.clone();
    // The credentials go in one Authorization header of our own: left in the URL as
    // well, the client would send a second one, which RabbitMQ refuses (400).
    let (user, password) = (decoded(base.username()), base.password().map(decoded));
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.path_segments_mut()
        .map_err(|()| "the management URL cannot be a base URL".to_owned())?
        .pop_if_empty()
        .extend(["api", "queues", vhost, queue]);
    let mut request = http.get(url);
    if !user.is_empty() {
        request = request.basic_auth(user, password);
    }
    let body: serde_json::Value = request
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| e.without_url().to_string())?
        .json()
        .await
        .map_err(|e| e.without_url().to_string())?;
    let count = |field: &str| body.get(field).and_then(serde_json::Value::as_u64);
    Ok((
        count("messages_ready").unwrap_or(0),
        Some(count("messages_unacknowledged").unwrap_or(0)),
        count("consumers").unwrap_or(0),
    ))
}

fn decoded(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// The vhost of an AMQP URL: its path without the leading slash, percent-decoded;
/// `/` when it has none.
pub fn vhost_of(amqp_url: &str) -> String {
    let path = reqwest::Url::parse(amqp_url)
        .map(|u| u.path().trim_start_matches('/').to_owned())
        .unwrap_or_default();
    if path.is_empty() {
        return "/".to_owned();
    }
    decoded(&path)
}

#[cfg(test)]
mod tests;
