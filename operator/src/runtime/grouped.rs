//! Agents by namespace and role, ModelProviders by namespace: indexes kept beside their
//! stores, like the Task index ([`crate::runtime::index`]), so a pass or a mapper looks
//! up the few objects it needs rather than scanning every one of the kind.
//!
//! Fed by the kind's one watch ([`crate::runtime::watches`]) with every event, right
//! after the store applied it, sharing the store's copy of each object. A re-list
//! rebuilds the index from the store once the list is complete.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
};

use aios_crds::{Agent, ModelProvider};

use crate::runtime::lock;
use kube::{
    Resource, ResourceExt,
    runtime::{
        reflector::{ObjectRef, Store},
        watcher,
    },
};

/// Objects of one kind by namespace, then by a group each object names (an Agent's
/// role), then by name.
pub struct Grouped<K> {
    group: fn(&K) -> String,
    live: Mutex<Groups<K>>,
}

/// The Agents by namespace and role.
pub type AgentsByRole = Grouped<Agent>;

/// The ModelProviders by namespace (in one group).
pub type ProvidersByNamespace = Grouped<ModelProvider>;

struct Groups<K> {
    /// Namespace → group → name → the store's copy.
    by: HashMap<String, BTreeMap<String, BTreeMap<String, Arc<K>>>>,
    /// The group each object is filed under, by namespace and name.
    of: HashMap<(String, String), String>,
}

impl<K> Default for Groups<K> {
    fn default() -> Self {
        Self {
            by: HashMap::new(),
            of: HashMap::new(),
        }
    }
}

impl<K> Groups<K> {
    fn file(&mut self, namespace: String, name: String, group: String, object: Arc<K>) {
        self.unfile(&namespace, &name);
        self.by
            .entry(namespace.clone())
            .or_default()
            .entry(group.clone())
            .or_default()
            .insert(name.clone(), object);
        self.of.insert((namespace, name), group);
    }

    fn unfile(&mut self, namespace: &str, name: &str) {
        let Some(group) = self.of.remove(&(namespace.to_owned(), name.to_owned())) else {
            return;
        };
        let Some(groups) = self.by.get_mut(namespace) else {
            return;
        };
        if let Some(names) = groups.get_mut(&group) {
            names.remove(name);
            if names.is_empty() {
                groups.remove(&group);
            }
        }
        if groups.is_empty() {
            self.by.remove(namespace);
        }
    }
}

impl Grouped<Agent> {
    /// An empty index of Agents by role.
    pub fn by_role() -> Self {
        Self::new(|agent| agent.spec.role.to_string())
    }
}

impl Grouped<ModelProvider> {
    /// An empty index of ModelProviders by namespace.
    pub fn by_namespace() -> Self {
        Self::new(|_| String::new())
    }
}

impl<K> Grouped<K>
where
    K: Resource<DynamicType = ()> + Clone,
{
    /// An empty index filing each object under `group(object)`.
    pub fn new(group: fn(&K) -> String) -> Self {
        Self {
            group,
            live: Mutex::new(Groups::default()),
        }
    }

    /// Files what `event` says, once `store` has applied it.
    pub fn apply(&self, event: &watcher::Event<K>, store: &Store<K>) {
        match event {
            watcher::Event::Apply(object) => {
                let namespace = object.namespace().unwrap_or_default();
                let name = object.name_any();
                let mut live = lock(&self.live);
                match store.get(&ObjectRef::from_obj(object)) {
                    Some(copy) => {
                        let group = (self.group)(&copy);
                        live.file(namespace, name, group, copy);
                    }
                    None => live.unfile(&namespace, &name),
                }
            }
            watcher::Event::Delete(object) => {
                lock(&self.live)
                    .unfile(&object.namespace().unwrap_or_default(), &object.name_any());
            }
            // The store swaps in the listed objects at the list's end.
            watcher::Event::Init | watcher::Event::InitApply(_) => {}
            watcher::Event::InitDone => {
                let mut built = Groups::default();
                for object in store.state() {
                    let group = (self.group)(&object);
                    built.file(
                        object.namespace().unwrap_or_default(),
                        object.name_any(),
                        group,
                        object,
                    );
                }
                *lock(&self.live) = built;
            }
        }
    }

    /// The groups the objects of `namespace` name (the roles its Agents serve).
    pub fn groups(&self, namespace: &str) -> BTreeSet<String> {
        lock(&self.live)
            .by
            .get(namespace)
            .map(|groups| groups.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The objects of `namespace` in `group`, in name order.
    pub fn in_group(&self, namespace: &str, group: &str) -> Vec<Arc<K>> {
        lock(&self.live)
            .by
            .get(namespace)
            .and_then(|groups| groups.get(group))
            .map(|names| names.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The objects of `namespace`, by group then name.
    pub fn in_namespace(&self, namespace: &str) -> Vec<Arc<K>> {
        lock(&self.live)
            .by
            .get(namespace)
            .map(|groups| groups.values().flat_map(|n| n.values().cloned()).collect())
            .unwrap_or_default()
    }
}

impl<K> std::fmt::Debug for Grouped<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grouped").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FedIndex, agent, provider};

    impl<K: Resource<DynamicType = ()> + Clone + 'static> FedIndex<K> for Grouped<K> {
        type Woken = ();

        fn feed(&self, event: &watcher::Event<K>, store: &Store<K>) {
            self.apply(event, store);
        }
    }

    type Fed<K> = crate::testing::Fed<K, Grouped<K>>;

    impl Fed<Agent> {
        fn new() -> Self {
            Self::with(AgentsByRole::by_role())
        }

        fn names(&self, namespace: &str, role: &str) -> Vec<String> {
            self.index
                .in_group(namespace, role)
                .iter()
                .map(|a| a.name_any())
                .collect()
        }
    }

    #[test]
    fn an_agent_is_found_under_its_namespace_and_role_and_moves_with_its_role() {
        let mut fed = Fed::new();
        fed.feed(&watcher::Event::Apply(agent("team-a", "apollo", "backend")));
        fed.feed(&watcher::Event::Apply(agent("team-a", "athena", "qa")));
        fed.feed(&watcher::Event::Apply(agent("team-b", "apollo", "backend")));
        assert_eq!(fed.names("team-a", "backend"), ["apollo"]);
        assert_eq!(
            fed.index.groups("team-a").into_iter().collect::<Vec<_>>(),
            ["backend", "qa"]
        );
        assert_eq!(fed.index.in_namespace("team-b").len(), 1);
        assert!(fed.index.groups("team-c").is_empty());

        // Its role changed: it leaves the old role's entry, which goes with its last.
        fed.feed(&watcher::Event::Apply(agent(
            "team-a", "apollo", "frontend",
        )));
        assert!(fed.names("team-a", "backend").is_empty());
        assert_eq!(fed.names("team-a", "frontend"), ["apollo"]);
        assert_eq!(
            fed.index.groups("team-a").into_iter().collect::<Vec<_>>(),
            ["frontend", "qa"]
        );

        fed.feed(&watcher::Event::Delete(agent("team-a", "athena", "qa")));
        assert_eq!(
            fed.index.groups("team-a").into_iter().collect::<Vec<_>>(),
            ["frontend"]
        );
        assert_eq!(
            fed.names("team-b", "backend"),
            ["apollo"],
            "another namespace"
        );
    }

    #[test]
    fn a_relist_files_what_the_store_holds_then() {
        let mut fed = Fed::new();
        fed.feed(&watcher::Event::Apply(agent("team-a", "apollo", "backend")));
        fed.feed(&watcher::Event::Init);
        fed.feed(&watcher::Event::InitApply(agent("team-a", "athena", "qa")));
        // Until the list is done, the index shows what the store does.
        assert_eq!(fed.names("team-a", "backend"), ["apollo"]);
        fed.feed(&watcher::Event::InitDone);
        assert!(
            fed.names("team-a", "backend").is_empty(),
            "gone while unwatched"
        );
        assert_eq!(fed.names("team-a", "qa"), ["athena"]);
    }

    #[test]
    fn providers_are_found_by_namespace() {
        let mut fed = Fed::with(ProvidersByNamespace::by_namespace());
        for (namespace, name) in [("team-a", "local"), ("team-a", "cloud"), ("team-b", "x")] {
            fed.feed(&watcher::Event::Apply(provider(namespace, name)));
        }
        let index = &fed.index;
        let names: Vec<String> = index
            .in_namespace("team-a")
            .iter()
            .map(|p| p.name_any())
            .collect();
        assert_eq!(names, ["cloud", "local"]);
        assert!(index.in_namespace("team-c").is_empty());
    }
}
