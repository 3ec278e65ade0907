//! Builders for unit-test fixtures, with non-default names.

use aios_crds::{Agent, ModelProvider, Project, Task, TaskPhase, TaskStatus};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::{
    reflector::{self, Store, store::Writer},
    watcher,
};

/// An index kept beside a store of `K`, fed every watch event once the store applied it.
pub trait FedIndex<K: kube::Resource<DynamicType = ()> + Clone + 'static> {
    /// What an event calls for.
    type Woken;
    /// Files `event`, which `store` has applied.
    fn feed(&self, event: &watcher::Event<K>, store: &Store<K>) -> Self::Woken;
}

/// A store, its writer and an index, fed as the watch feeds them.
pub struct Fed<K: kube::Resource<DynamicType = ()> + Clone + 'static, I> {
    pub store: Store<K>,
    pub writer: Writer<K>,
    pub index: I,
}

impl<K, I> Fed<K, I>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
    I: FedIndex<K>,
{
    /// An empty store and `index`.
    pub fn with(index: I) -> Self {
        let (store, writer) = reflector::store();
        Self {
            store,
            writer,
            index,
        }
    }

    /// Applies `event` to the store, then the index.
    pub fn feed(&mut self, event: &watcher::Event<K>) -> I::Woken {
        self.writer.apply_watcher_event(event);
        self.index.feed(event, &self.store)
    }
}

/// `secs` seconds after a fixed instant.
pub fn ts(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).expect("in range")
}

/// An Agent named `name` in `namespace` serving `role`.
pub fn agent(namespace: &str, name: &str, role: &str) -> Agent {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "aios.dev/v1alpha1", "kind": "Agent",
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{namespace}-{name}")},
        "spec": {"role": role, "persona": {"name": "Apollo"}},
    }))
    .expect("valid agent")
}

/// A local Ollama ModelProvider named `name` in `namespace`, serving model `coder`.
pub fn provider(namespace: &str, name: &str) -> ModelProvider {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "aios.dev/v1alpha1", "kind": "ModelProvider",
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{namespace}-{name}")},
        "spec": {"type": "Ollama", "tier": "Local", "models": [{"name": "coder"}],
                 "endpoint": {"url": "http://127.0.0.1:11434"}},
    }))
    .expect("valid provider")
}

/// A Project named `name` in namespace `team-a`, with default policy and no plan.
pub fn project(name: &str) -> Project {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "aios.dev/v1alpha1", "kind": "Project",
        "metadata": {"name": name, "namespace": "team-a", "uid": format!("uid-{name}"), "generation": 1},
        "spec": {"description": format!("the {name} project"), "repository": {"url": "file:///srv/git/shop.git"}}
    }))
    .expect("valid project")
}

/// A backend Task of project `shop` named `name`, depending on `deps`.
pub fn task(name: &str, deps: &[&str]) -> Task {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "aios.dev/v1alpha1", "kind": "Task",
        "metadata": {"name": name, "namespace": "team-a", "uid": format!("uid-{name}"),
                     "creationTimestamp": "2027-01-15T08:00:00Z"},
        "spec": {"project": "shop", "title": format!("do {name}"), "role": "backend", "dependsOn": deps}
    }))
    .expect("valid task")
}

/// `task` with its status in `phase` (attempt 1 once dispatched).
pub fn with_phase(mut task: Task, phase: TaskPhase) -> Task {
    let status = task.status.get_or_insert_with(TaskStatus::default);
    status.phase = Some(phase);
    if phase != TaskPhase::Pending {
        status.attempt = 1;
    }
    if phase == TaskPhase::Running {
        status.start_time = Some(Time(ts(0)));
        status.last_heartbeat_time = Some(Time(ts(0)));
    }
    task
}
