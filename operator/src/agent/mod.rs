//! The Agent controller: keeps each Agent's ServiceAccount, persona ConfigMap and
//! Deployment applied, scales the Deployment with the role's queued and running Tasks,
//! and reports the pool in the Agent's status.
//!
//! fetch (caches) → desired state (pure, `agents`) → apply (server-side, in order) →
//! status (pure, one patch when it changed).

pub mod objects;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use aios_crds::{
    Agent, AgentStatus, TaskPhase, conditions,
    names::{annotations, field_managers},
};
use jiff::Timestamp;
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{ConfigMap, Pod, ServiceAccount},
    },
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    runtime::{controller::Action, reflector::ObjectRef},
};
use serde_json::json;

use crate::{
    Error,
    agent::objects::{AgentChildren, agent_children, deletion_cost_changes, pod_selector, scale},
    kstatus::{Health, set_health},
    runtime::context::{Context, apply_status, server_side_apply},
    task::lifecycle::phase,
};

/// How long to wait before looking again at a pool nothing is happening to.
const RESYNC: Duration = Duration::from_secs(300);

/// The Agents serving `role` in `namespace`: a Task of the role entering or leaving
/// Queued or Running moves the demand on them.
pub fn agents_of_role(
    by_role: &crate::runtime::grouped::AgentsByRole,
    namespace: &str,
    role: &str,
) -> Vec<ObjectRef<Agent>> {
    by_role
        .in_group(namespace, role)
        .iter()
        .map(|a| ObjectRef::from_obj(a.as_ref()))
        .collect()
}

/// Reconciles one Agent.
#[tracing::instrument(skip_all, fields(agent = %agent.name_any(), namespace = agent.namespace().unwrap_or_default()))]
pub async fn reconcile(agent: Arc<Agent>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics
        .time_reconcile("agent", Box::pin(reconcile_inner(&agent, &ctx)))
        .await
}

async fn reconcile_inner(agent: &Agent, ctx: &Context) -> Result<Action, Error> {
    if !ctx.leadership.is_current() {
        return Err(Error::NotLeader);
    }
    if agent.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = agent.namespace().unwrap_or_default();
    let now = Timestamp::now();

    let demand = role_demand(ctx, &namespace, agent.spec.role.as_str());
    let previous = agent.status.clone().unwrap_or_default();
    // A pool without status has never been scaled: the first decision is the target.
    let last = agent
        .status
        .as_ref()
        .map(|s| (s.desired_replicas, s.low_demand_since.as_ref().map(|t| t.0)));
    let decision = scale(agent, demand.queued + demand.running, last, now);

    if last.is_some_and(|(current, _)| decision.replicas < current) {
        mark_deletion_costs(ctx, &namespace, agent, &demand.running_by_agent).await?;
    }

    // Apply, in dependency order: the identity and the persona the pods mount exist
    // before the pods. Destructured without `..`, so a new child cannot be forgotten.
    let AgentChildren {
        service_account,
        persona,
        deployment,
    } = agent_children(agent, &ctx.agent_runtime, decision.replicas);
    server_side_apply(
        &Api::<ServiceAccount>::namespaced(ctx.client.clone(), &namespace),
        &service_account,
        field_managers::AGENT,
    )
    .await?;
    server_side_apply(
        &Api::<ConfigMap>::namespaced(ctx.client.clone(), &namespace),
        &persona,
        field_managers::AGENT,
    )
    .await?;
    let applied = match server_side_apply(
        &Api::<Deployment>::namespaced(ctx.client.clone(), &namespace),
        &deployment,
        field_managers::AGENT,
    )
    .await
    {
        Ok(applied) => applied,
        Err(err) => {
            // A refusal a person must act on (RBAC, admission, an immutable field)
            // stalls the pool, and its status says so; anything else is retried.
            if let Some(refusal) = refused(&err) {
                let health = Health::Stalled {
                    reason: conditions::reasons::DEPLOYMENT_REFUSED.to_owned(),
                    message: format!(
                        "the API server refused Deployment {}: {refusal}",
                        deployment.name_any()
                    ),
                };
                let mut status = previous.clone();
                status.observed_generation = agent.metadata.generation;
                set_health(
                    &mut status.conditions,
                    &health,
                    agent.metadata.generation,
                    now,
                );
                write_status(ctx, agent, &previous, &status).await?;
            }
            return Err(err.into());
        }
    };

    let ready = applied
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let status = pool_status(agent, &previous, &decision, last, ready, &demand, now);
    write_status(ctx, agent, &previous, &status).await?;
    Ok(match decision.wake_at {
        Some(at) => Action::requeue(
            Duration::try_from(at.duration_since(now))
                .unwrap_or_default()
                .max(Duration::from_millis(100)),
        ),
        None => Action::requeue(RESYNC),
    })
}

/// Writes the Agent's status when it changed.
async fn write_status(
    ctx: &Context,
    agent: &Agent,
    previous: &AgentStatus,
    status: &AgentStatus,
) -> Result<(), Error> {
    if status_differs(previous, status) {
        apply_status(
            &Api::<Agent>::namespaced(ctx.client.clone(), &agent.namespace().unwrap_or_default()),
            &agent.name_any(),
            None,
            status,
            field_managers::AGENT,
        )
        .await?;
    }
    Ok(())
}

/// The API server's message when it refused a write for good: a client error other than
/// a conflict or throttling, which the next pass may not meet again.
fn refused(err: &kube::Error) -> Option<&str> {
    match err {
        kube::Error::Api(s) if (400..500).contains(&s.code) && ![409, 429].contains(&s.code) => {
            Some(s.message.as_str())
        }
        _ => None,
    }
}

/// The Agent's status after a pass: the decision, the pool's readiness, the demand.
fn pool_status(
    agent: &Agent,
    previous: &AgentStatus,
    decision: &crate::agent::objects::Scale,
    last: Option<(i32, Option<Timestamp>)>,
    ready: i32,
    demand: &Demand,
    now: Timestamp,
) -> AgentStatus {
    let mut status = AgentStatus {
        desired_replicas: decision.replicas,
        ready_replicas: ready,
        queued_tasks: demand.queued,
        running_tasks: demand.running,
        last_scale_time: if last.map(|(r, _)| r) == Some(decision.replicas) {
            previous.last_scale_time.clone()
        } else {
            Some(Time(now))
        },
        low_demand_since: decision.low_since.map(Time),
        conditions: previous.conditions.clone(),
        observed_generation: agent.metadata.generation,
    };
    let message = format!("{ready} of {} replicas ready", decision.replicas);
    let health = if ready >= decision.replicas {
        Health::Ready {
            reason: "ReplicasReady".to_owned(),
            message,
        }
    } else {
        Health::Reconciling {
            reason: conditions::reasons::SCALING.to_owned(),
            message,
        }
    };
    set_health(
        &mut status.conditions,
        &health,
        agent.metadata.generation,
        now,
    );
    status
}

/// A role's demand on its pool.
#[derive(Debug, Default)]
struct Demand {
    /// Tasks on the bus.
    queued: i32,
    /// Tasks an agent works on.
    running: i32,
    /// Running tasks by the agent (pod) that reported them.
    running_by_agent: BTreeMap<String, i32>,
}

/// Tasks of `role` in `namespace` on the bus (queued) and with an agent (running).
fn role_demand(ctx: &Context, namespace: &str, role: &str) -> Demand {
    let mut demand = Demand::default();
    let queued = ctx.task_index.of_role(namespace, role, TaskPhase::Queued);
    demand.queued = i32::try_from(queued.len()).unwrap_or(i32::MAX);
    let running = ctx.tasks_named(
        namespace,
        ctx.task_index.of_role(namespace, role, TaskPhase::Running),
    );
    for task in running.iter().filter(|t| phase(t) == TaskPhase::Running) {
        demand.running += 1;
        if let Some(agent) = task.status.as_ref().and_then(|s| s.agent.clone()) {
            *demand.running_by_agent.entry(agent).or_default() += 1;
        }
    }
    demand
}

/// Before a scale-down: marks each of the pool's pods with the tasks it runs as its
/// deletion cost, so the ReplicaSet stops idle pods and leaves busy ones working.
async fn mark_deletion_costs(
    ctx: &Context,
    namespace: &str,
    agent: &Agent,
    running_by_agent: &BTreeMap<String, i32>,
) -> Result<(), Error> {
    let pods_api = Api::<Pod>::namespaced(ctx.client.clone(), namespace);
    let pods = pods_api
        .list(&ListParams::default().labels(&pod_selector(&agent.name_any())))
        .await?;
    let current: Vec<(String, Option<String>)> = pods
        .items
        .iter()
        .map(|pod| {
            (
                pod.name_any(),
                pod.annotations()
                    .get(annotations::POD_DELETION_COST)
                    .cloned(),
            )
        })
        .collect();
    for (pod, cost) in deletion_cost_changes(&current, running_by_agent) {
        let patch = json!({"metadata": {"annotations": {annotations::POD_DELETION_COST: cost}}});
        match pods_api
            .patch(&pod, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            // A pod that went away in the meantime needs no cost.
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

/// Whether two statuses differ in more than condition transition times.
fn status_differs(a: &AgentStatus, b: &AgentStatus) -> bool {
    let strip = |s: &AgentStatus| {
        let mut s = s.clone();
        for c in &mut s.conditions {
            c.last_transition_time = Time(Timestamp::UNIX_EPOCH);
        }
        s
    };
    strip(a) != strip(b)
}

/// Retries a failed reconcile after a short wait.
#[allow(clippy::needless_pass_by_value)] // the signature kube's controller takes
pub fn error_policy(agent: Arc<Agent>, error: &Error, ctx: Arc<Context>) -> Action {
    Action::requeue(ctx.retry_after(
        "agent",
        &crate::runtime::backoff::key(agent.as_ref()),
        error,
        Duration::from_secs(2),
    ))
}
