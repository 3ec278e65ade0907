//! What every controller shares: the API client, the bus, the caches, the metrics, and
//! the leadership handle; plus the writes they all make.

use std::{collections::BTreeSet, sync::Arc};

use aios_crds::{
    Agent, PlannedTask, Project, Task, TaskStatus,
    names::{GROUP, VERSION, field_managers},
    task::PlanRef,
    text::{self, Shape},
};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        events::{Event, EventType, Recorder},
        reflector::Store,
    },
};
use serde_json::json;

use crate::{
    kstatus,
    project::plan::{PlanReadError, read_plan},
    runtime::bus::Bus,
    runtime::leader::Leadership,
    runtime::metrics::Metrics,
};

/// The longest Event note the API server takes, in bytes.
const EVENT_NOTE_BYTES: usize = 1024;

/// Shared state of the controllers.
#[derive(Clone)]
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// The bus.
    pub bus: Arc<Bus>,
    /// Cache of every Task.
    pub tasks: Store<Task>,
    /// The Tasks' names by Project, and by role and phase.
    pub task_index: Arc<crate::runtime::index::TaskIndex>,
    /// Cache of every Agent.
    pub agents: Store<Agent>,
    /// The Agents by namespace and role.
    pub agents_by_role: Arc<crate::runtime::grouped::AgentsByRole>,
    /// Metrics.
    pub metrics: Metrics,
    /// Whether this replica leads.
    pub leadership: Leadership,
    /// Kubernetes Events for transitions people care about.
    pub recorder: Recorder,
    /// How agent pods are configured.
    pub agent_runtime: crate::agent::objects::AgentRuntime,
    /// The Ollama image for `serve` providers that name none.
    pub model_server_image: String,
    /// Cache of every ModelProvider.
    pub providers: Store<aios_crds::ModelProvider>,
    /// The ModelProviders by namespace.
    pub providers_by_namespace: Arc<crate::runtime::grouped::ProvidersByNamespace>,
    /// Cache of the Secrets labelled as credentials: the only Secrets the operator
    /// reads (see [`crate::provider::credentials`]).
    pub credentials: Store<k8s_openapi::api::core::v1::Secret>,
    /// Where verification runs.
    pub sandbox: Arc<dyn crate::verify::Sandbox>,
    /// The HTTP client that probes model providers.
    pub http: reqwest::Client,
    /// How often a ready model provider is probed again.
    pub provider_probe_interval: std::time::Duration,
    /// Where cancels are marked for agents that did not hear them; none without Redis.
    pub cancel_marks: Option<crate::task::cancels::CancelMarks>,
    /// The key of the tokens dispatches carry and events must return.
    pub attempt_key: Arc<crate::task::tokens::AttemptKey>,
    /// The objects whose reconciles keep failing, and how long each waits.
    pub backoffs: Arc<crate::runtime::backoff::Backoffs>,
    /// Cache of every Project, once the Project controller has started (the bus
    /// consumers read the policies of the Tasks they report on from it).
    pub projects: Arc<tokio::sync::OnceCell<Store<aios_crds::Project>>>,
    /// The explicit plans already validated, by Project and generation.
    pub plans: Arc<crate::project::plan::ValidatedPlans>,
    /// One lane of writes per Task with writes in flight.
    pub lanes: Arc<crate::task::lanes::Lanes>,
    /// What waiting Tasks say, handed over by passes to be written beside them.
    pub waiting: Arc<crate::project::waiting::WaitingWrites>,
    /// The Project statuses passes decided, handed over to be written beside them.
    pub project_statuses: Arc<crate::project::status::StatusWrites>,
    /// Dispatches being published, over all passes
    /// ([`crate::project::DISPATCH_CONCURRENCY`] at most).
    pub dispatch_permits: Arc<tokio::sync::Semaphore>,
    /// The agents' reports being handled, which writes for people to read let go
    /// first ([`crate::runtime::urgent`]).
    pub urgent: Arc<crate::runtime::urgent::Urgent>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

impl Context {
    /// Counts a failed reconcile of `object` (`namespace/name`) by `controller`, logs
    /// why (a refused permission or an invalid object is visible in the log, not only as
    /// a metric) and says when to try again: a conflict at once (the cache will have
    /// caught up), a standby's pass after `usual`, and anything else after the object's
    /// own backoff, which grows with its failures in a row ([`crate::runtime::backoff`]).
    pub fn retry_after(
        &self,
        controller: &'static str,
        object: &str,
        error: &crate::Error,
        usual: std::time::Duration,
    ) -> std::time::Duration {
        let category = error.category();
        self.metrics
            .reconcile_errors
            .with_label_values(&[controller, category])
            .inc();
        match category {
            "conflict" => {
                tracing::debug!(controller, object, error = %error, "reconcile retried");
                crate::runtime::backoff::FIRST
            }
            "not_leader" => {
                tracing::debug!(controller, object, error = %error, "reconcile retried");
                usual
            }
            _ => {
                let (delay, failures) = self.backoffs.failed(controller, object);
                tracing::warn!(controller, object, error = %error, failures, retry_in = ?delay, "reconcile failed; backing off");
                delay
            }
        }
    }

    /// Forgets `object`'s failures after a successful reconcile.
    pub fn reconciled(&self, controller: &'static str, object: &str) {
        if self.backoffs.succeeded(controller, object) {
            tracing::info!(controller, object, "reconcile succeeded after failures");
        }
    }

    /// The Tasks of Project `project` in `namespace`, as a pass should see them, with
    /// their counts (see [`crate::runtime::index`]).
    pub fn project_tasks(
        &self,
        namespace: &str,
        project: &str,
    ) -> crate::runtime::index::ProjectTasks {
        self.task_index.project(namespace, project)
    }

    /// The cached Tasks of `namespace` named `names` (those still cached).
    pub fn tasks_named(&self, namespace: &str, names: Vec<String>) -> Vec<Arc<Task>> {
        names
            .into_iter()
            .filter_map(|name| {
                self.tasks
                    .get(&kube::runtime::reflector::ObjectRef::new(&name).within(namespace))
            })
            .collect()
    }

    /// The roles the Agents of `namespace` serve.
    pub fn served_roles(&self, namespace: &str) -> BTreeSet<String> {
        self.agents_by_role.groups(namespace)
    }

    /// The preferred providers of the Agent serving `role` in `namespace` (the first by
    /// name, if several do).
    pub fn preferred_providers(&self, namespace: &str, role: &str) -> Vec<String> {
        self.agents_by_role
            .in_group(namespace, role)
            .first()
            .and_then(|a| a.spec.models.as_ref().map(|m| m.providers.clone()))
            .unwrap_or_default()
    }

    /// The ModelProviders of `namespace`.
    pub fn providers_of(&self, namespace: &str) -> Vec<Arc<aios_crds::ModelProvider>> {
        self.providers_by_namespace.in_namespace(namespace)
    }

    /// The Task API of `namespace`.
    pub fn task_api(&self, namespace: &str) -> Api<Task> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// The Project API of `namespace`.
    pub fn project_api(&self, namespace: &str) -> Api<Project> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Writes `status` to `task` as [`write_task_status`] does; the index keeps the
    /// written copy until the watch shows it ([`TaskIndex::wrote`]), so the next pass or
    /// event starts from it.
    ///
    /// [`TaskIndex::wrote`]: crate::runtime::index::TaskIndex::wrote
    pub async fn write_task(&self, task: &Task, status: &TaskStatus) -> Result<Task, kube::Error> {
        let api = self.task_api(&task.namespace().unwrap_or_default());
        let mut written = write_task_status(&api, task, status).await?;
        // As the watch's copies are kept.
        written.managed_fields_mut().clear();
        self.task_index.wrote(task, written.clone());
        Ok(written)
    }

    /// Records that attempt `attempt` of `task` was published (see
    /// [`TaskIndex::expect_dispatch`](crate::runtime::index::TaskIndex::expect_dispatch)).
    pub fn expect_dispatch(&self, task: &Task, attempt: i32) {
        self.task_index.expect_dispatch(task, attempt);
    }

    /// Drops the record of a dispatch whose Queued status could not be written.
    pub fn forget_dispatch(&self, task: &Task) {
        self.task_index.forget_dispatch(task);
    }

    /// Publishes a Kubernetes Event about `object`; a failure is logged, never fatal
    /// (Events are a courtesy to people, not state).
    pub async fn publish_event(
        &self,
        object: &ObjectReference,
        kind: EventType,
        reason: &str,
        note: &str,
    ) {
        let event = Event {
            type_: kind,
            reason: reason.to_owned(),
            note: Some(event_note(note)),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        if let Err(err) = self.recorder.publish(&event, object).await {
            tracing::debug!(error = %err, "publishing a Kubernetes event failed");
        }
    }

    /// Keeps a plan in its ConfigMaps (see [`crate::project::plan::stored_plan`]), by server-side
    /// apply: applying the same plan again changes nothing.
    pub async fn store_plan(&self, config_maps: &[ConfigMap]) -> Result<(), kube::Error> {
        for cm in config_maps {
            let api: Api<ConfigMap> =
                Api::namespaced(self.client.clone(), &cm.namespace().unwrap_or_default());
            server_side_apply(&api, cm, field_managers::PLAN).await?;
        }
        Ok(())
    }

    /// Reads back the plan `plan_ref` names in `namespace`: the outer error is the API's
    /// (retried), the inner one says the kept plan is gone or changed (a plan problem).
    pub async fn load_plan(
        &self,
        namespace: &str,
        plan_ref: &PlanRef,
    ) -> Result<Result<Vec<PlannedTask>, PlanReadError>, kube::Error> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
        let mut parts = Vec::with_capacity(plan_ref.config_maps.len());
        for name in &plan_ref.config_maps {
            parts.push(api.get_opt(name).await?);
        }
        Ok(read_plan(plan_ref, &parts))
    }
}

/// An Event's note from a message that may carry task titles and model text: control and
/// bidirectional characters removed (the rule commits follow too), then cut at a
/// character boundary to fit the API server's limit.
fn event_note(message: &str) -> String {
    let note = text::sanitize(message, Shape::Lines);
    text::truncate(&note, EVENT_NOTE_BYTES).to_owned()
}

/// Writes a Task's status with server-side apply, failing with 409 Conflict if the Task
/// changed since `task` was read (its resourceVersion is a precondition). Every Task
/// status write uses the one field manager, so fields left out are removed. The kstatus
/// conditions and `observedGeneration` are brought up to date here, for every writer.
pub async fn write_task_status(
    api: &Api<Task>,
    task: &Task,
    status: &TaskStatus,
) -> Result<Task, kube::Error> {
    let status =
        kstatus::with_task_health(status.clone(), task.metadata.generation, Timestamp::now());
    apply_status(
        api,
        &task.name_any(),
        task.metadata.resource_version.as_deref(),
        &status,
        field_managers::TASK,
    )
    .await
}

/// Removes the cancel finalizer an earlier version put on a Task: the finalizer's field
/// manager applies no finalizers, which drops the one it owns.
pub async fn remove_task_finalizer(api: &Api<Task>, task: &str) -> Result<Task, kube::Error> {
    let patch = json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": "Task",
        "metadata": {"name": task, "finalizers": Vec::<&str>::new()},
    });
    api.patch(
        task,
        &PatchParams::apply(field_managers::FINALIZER).force(),
        &Patch::Apply(patch),
    )
    .await
}

/// Applies `object` with server-side apply as `manager`, forcing ownership of the
/// fields it sets; fields it leaves out that others set are left alone.
pub async fn server_side_apply<K>(api: &Api<K>, object: &K, manager: &str) -> Result<K, kube::Error>
where
    K: kube::Resource + serde::Serialize + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    let name = object.meta().name.clone().unwrap_or_default();
    let mut body = serde_json::to_value(object).map_err(kube::Error::SerdeError)?;
    body["apiVersion"] = json!(K::api_version(&K::DynamicType::default()));
    body["kind"] = json!(K::kind(&K::DynamicType::default()));
    api.patch(
        &name,
        &PatchParams::apply(manager).force(),
        &Patch::Apply(body),
    )
    .await
}

/// Applies `status` to the status of `api`'s object `name` with server-side apply as
/// `manager`, forcing ownership (each kind's status has one writer, so the fields it
/// leaves out are removed). With `precondition`, only if the object is still at that
/// resourceVersion (409 Conflict otherwise).
pub async fn apply_status<K>(
    api: &Api<K>,
    name: &str,
    precondition: Option<&str>,
    status: &impl serde::Serialize,
    manager: &str,
) -> Result<K, kube::Error>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    let mut patch = json!({
        "apiVersion": K::api_version(&K::DynamicType::default()),
        "kind": K::kind(&K::DynamicType::default()),
        "status": status,
    });
    if let Some(version) = precondition {
        patch["metadata"] = json!({"name": name, "resourceVersion": version});
    }
    api.patch_status(
        name,
        &PatchParams::apply(manager).force(),
        &Patch::Apply(patch),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_note_has_no_bidi_or_control_characters_and_fits_the_limit() {
        assert_eq!(
            event_note("task \"Pay \u{202E}fdp.exe\" failed:\n\u{1b}[31mboom\u{2069}"),
            "task \"Pay fdp.exe\" failed:\n[31mboom"
        );
        let long = "é".repeat(1000);
        let note = event_note(&long);
        assert_eq!(note.len(), EVENT_NOTE_BYTES, "cut in bytes, not characters");
        assert!(long.starts_with(&note));
        assert_eq!(event_note(&format!("a{}", "é".repeat(600))).len(), 1023);
    }
}
