//! Indexes kept beside the Task store, so reconcilers look up what they need instead
//! of scanning every Task of the cluster: Task names by Project, and by role and phase.
//! Fed by the one Task watch ([`crate::runtime::watches`]) with every event it sees, a re-list
//! included (the index is rebuilt beside the old one and swapped in when the list is
//! complete, as the store is).

use std::{
    collections::{BTreeSet, HashMap},
    sync::Mutex,
};

use aios_crds::{Task, TaskPhase};
use kube::{ResourceExt, runtime::watcher};

/// A Task's namespace and name.
type Name = (String, String);

/// Where one Task is filed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Filed {
    project: String,
    role: String,
    phase: TaskPhase,
}

#[derive(Debug, Default)]
struct Entries {
    of: HashMap<Name, Filed>,
    by_project: HashMap<(String, String), BTreeSet<String>>,
    by_role_phase: HashMap<(String, String, TaskPhase), BTreeSet<String>>,
}

impl Entries {
    fn remove(&mut self, name: &Name) {
        let Some(filed) = self.of.remove(name) else {
            return;
        };
        let (namespace, task) = name;
        let project = (namespace.clone(), filed.project);
        if let Some(names) = self.by_project.get_mut(&project) {
            names.remove(task);
            if names.is_empty() {
                self.by_project.remove(&project);
            }
        }
        let role_phase = (namespace.clone(), filed.role, filed.phase);
        if let Some(names) = self.by_role_phase.get_mut(&role_phase) {
            names.remove(task);
            if names.is_empty() {
                self.by_role_phase.remove(&role_phase);
            }
        }
    }

    fn insert(&mut self, task: &Task) {
        let name = (task.namespace().unwrap_or_default(), task.name_any());
        self.remove(&name);
        let filed = Filed {
            project: task.spec.project.clone(),
            role: task.spec.role.to_string(),
            phase: task
                .status
                .as_ref()
                .and_then(|s| s.phase)
                .unwrap_or_default(),
        };
        self.by_project
            .entry((name.0.clone(), filed.project.clone()))
            .or_default()
            .insert(name.1.clone());
        self.by_role_phase
            .entry((name.0.clone(), filed.role.clone(), filed.phase))
            .or_default()
            .insert(name.1.clone());
        self.of.insert(name, filed);
    }
}

/// Task names by Project and by role and phase.
#[derive(Debug, Default)]
pub struct TaskIndex {
    live: Mutex<Entries>,
    /// The index a re-list is building, swapped in at its end.
    building: Mutex<Option<Entries>>,
}

impl TaskIndex {
    /// Files what `event` says.
    pub fn apply(&self, event: &watcher::Event<Task>) {
        match event {
            watcher::Event::Apply(task) => lock(&self.live).insert(task),
            watcher::Event::Delete(task) => {
                lock(&self.live).remove(&(task.namespace().unwrap_or_default(), task.name_any()));
            }
            watcher::Event::Init => *lock(&self.building) = Some(Entries::default()),
            watcher::Event::InitApply(task) => {
                if let Some(building) = lock(&self.building).as_mut() {
                    building.insert(task);
                }
            }
            watcher::Event::InitDone => {
                if let Some(built) = lock(&self.building).take() {
                    *lock(&self.live) = built;
                }
            }
        }
    }

    /// The names of Project `project`'s Tasks in `namespace`.
    pub fn of_project(&self, namespace: &str, project: &str) -> Vec<String> {
        lock(&self.live)
            .by_project
            .get(&(namespace.to_owned(), project.to_owned()))
            .map(|names| names.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The names of `namespace`'s Tasks of `role` in `phase`.
    pub fn of_role(&self, namespace: &str, role: &str, phase: TaskPhase) -> Vec<String> {
        lock(&self.live)
            .by_role_phase
            .get(&(namespace.to_owned(), role.to_owned(), phase))
            .map(|names| names.iter().cloned().collect())
            .unwrap_or_default()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{task, with_phase};

    #[test]
    fn a_task_moving_between_phases_moves_between_entries() {
        let index = TaskIndex::default();
        index.apply(&watcher::Event::Apply(task("a", &[])));
        index.apply(&watcher::Event::Apply(task("b", &[])));
        assert_eq!(index.of_project("team-a", "shop"), ["a", "b"]);
        assert_eq!(
            index.of_role("team-a", "backend", TaskPhase::Pending),
            ["a", "b"]
        );

        index.apply(&watcher::Event::Apply(with_phase(
            task("a", &[]),
            TaskPhase::Queued,
        )));
        assert_eq!(
            index.of_role("team-a", "backend", TaskPhase::Pending),
            ["b"]
        );
        assert_eq!(index.of_role("team-a", "backend", TaskPhase::Queued), ["a"]);
        index.apply(&watcher::Event::Apply(with_phase(
            task("a", &[]),
            TaskPhase::Running,
        )));
        assert!(
            index
                .of_role("team-a", "backend", TaskPhase::Queued)
                .is_empty()
        );
        assert_eq!(
            index.of_role("team-a", "backend", TaskPhase::Running),
            ["a"]
        );
        assert_eq!(
            index.of_project("team-a", "shop"),
            ["a", "b"],
            "still the Project's"
        );

        index.apply(&watcher::Event::Delete(task("b", &[])));
        assert_eq!(index.of_project("team-a", "shop"), ["a"]);
        assert!(
            index
                .of_role("team-a", "backend", TaskPhase::Pending)
                .is_empty()
        );
        assert!(
            index.of_project("team-b", "shop").is_empty(),
            "another namespace"
        );
    }

    #[test]
    fn a_relist_replaces_the_index_when_it_is_complete() {
        let index = TaskIndex::default();
        index.apply(&watcher::Event::Apply(task("gone", &[])));
        index.apply(&watcher::Event::Init);
        index.apply(&watcher::Event::InitApply(task("kept", &[])));
        assert_eq!(
            index.of_project("team-a", "shop"),
            ["gone"],
            "until the list is done"
        );
        index.apply(&watcher::Event::InitDone);
        assert_eq!(index.of_project("team-a", "shop"), ["kept"]);
    }
}
