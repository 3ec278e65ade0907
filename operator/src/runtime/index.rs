//! Indexes kept beside the Task store, so reconcilers look up what they need instead
//! of scanning every Task of the cluster: each Project's Tasks with their counts by
//! phase, and Task names by role and phase.
//!
//! Fed by the one Task watch ([`crate::runtime::watches`]) with every event it sees,
//! right after the store has applied it, so the index shares the store's copy of each
//! Task rather than keeping its own. A re-list rebuilds the index from the store once
//! the list is complete, as the store swaps in its new contents then.
//!
//! The index also holds the dispatches the operator has published but the watch does
//! not show yet ([`TaskIndex::expect_dispatch`]): such a Task is seen, filed and
//! counted as Queued with the published attempt until the watch shows that attempt, so
//! a pass that runs before the watch has caught up never publishes it twice.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
};

use aios_crds::{Task, TaskPhase, TaskStatus, project::TaskCounts};
use kube::{
    ResourceExt,
    runtime::{reflector::Store, watcher},
};

use crate::project::dispatch::is_planning_task;

/// A Task's namespace and name.
type Name = (String, String);

/// A Project's namespace and name.
type ProjectKey = (String, String);

/// One Task, as filed.
#[derive(Debug, Clone)]
struct Filed {
    /// The store's copy.
    task: Arc<Task>,
    project: String,
    role: String,
    planning: bool,
    /// An attempt published that the watch does not show yet.
    expected: Option<i32>,
}

impl Filed {
    fn new(task: Arc<Task>) -> Self {
        Self {
            project: task.spec.project.clone(),
            role: task.spec.role.to_string(),
            planning: is_planning_task(&task),
            expected: None,
            task,
        }
    }

    fn uid(&self) -> &str {
        self.task.metadata.uid.as_deref().unwrap_or_default()
    }

    /// The attempt the watch shows.
    fn attempt(&self) -> i32 {
        self.task.status.as_ref().map_or(0, |s| s.attempt)
    }

    /// The phase the Task is filed and counted under.
    fn phase(&self) -> TaskPhase {
        if self.expected.is_some() {
            return TaskPhase::Queued;
        }
        self.task
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .unwrap_or_default()
    }

    /// The Task as a pass should see it: Queued with the published attempt while the
    /// watch has not shown it.
    fn seen(&self) -> Arc<Task> {
        let Some(attempt) = self.expected else {
            return self.task.clone();
        };
        let mut expected = Task::clone(&self.task);
        let status = expected.status.get_or_insert_with(TaskStatus::default);
        status.attempt = attempt;
        status.phase = Some(TaskPhase::Queued);
        status.next_attempt_time = None;
        Arc::new(expected)
    }
}

/// A Project's Tasks and their counts by phase.
#[derive(Debug, Default)]
struct Tally {
    names: BTreeSet<String>,
    work: TaskCounts,
    planning: TaskCounts,
}

#[derive(Debug, Default)]
struct Entries {
    of: HashMap<Name, Filed>,
    by_project: HashMap<ProjectKey, Tally>,
    by_role_phase: HashMap<(String, String, TaskPhase), BTreeSet<String>>,
}

impl Entries {
    fn file(&mut self, name: Name, filed: Filed) {
        let (namespace, task) = &name;
        let phase = filed.phase();
        let tally = self
            .by_project
            .entry((namespace.clone(), filed.project.clone()))
            .or_default();
        tally.names.insert(task.clone());
        if filed.planning {
            tally.planning.add(phase, 1);
        } else {
            tally.work.add(phase, 1);
        }
        self.by_role_phase
            .entry((namespace.clone(), filed.role.clone(), phase))
            .or_default()
            .insert(task.clone());
        self.of.insert(name, filed);
    }

    fn unfile(&mut self, name: &Name) -> Option<Filed> {
        let filed = self.of.remove(name)?;
        let (namespace, task) = name;
        let phase = filed.phase();
        let project = (namespace.clone(), filed.project.clone());
        if let Some(tally) = self.by_project.get_mut(&project) {
            tally.names.remove(task);
            if filed.planning {
                tally.planning.add(phase, -1);
            } else {
                tally.work.add(phase, -1);
            }
            if tally.names.is_empty() {
                self.by_project.remove(&project);
            }
        }
        let role_phase = (namespace.clone(), filed.role.clone(), phase);
        if let Some(names) = self.by_role_phase.get_mut(&role_phase) {
            names.remove(task);
            if names.is_empty() {
                self.by_role_phase.remove(&role_phase);
            }
        }
        Some(filed)
    }

    /// Files the store's copy of a Task; a published attempt the copy does not show yet
    /// stays expected.
    fn apply(&mut self, task: Arc<Task>) {
        let name = (task.namespace().unwrap_or_default(), task.name_any());
        let before = self.unfile(&name);
        let mut filed = Filed::new(task);
        filed.expected = before
            .filter(|b| b.uid() == filed.uid())
            .and_then(|b| b.expected)
            .filter(|&attempt| attempt > filed.attempt());
        self.file(name, filed);
    }

    /// Refiles the Task `name` with `change` made to it, when it is the one with `uid`.
    fn refile(&mut self, name: Name, uid: &str, change: impl FnOnce(&mut Filed)) {
        let Some(mut filed) = self.unfile(&name) else {
            return;
        };
        if filed.uid() == uid {
            change(&mut filed);
        }
        self.file(name, filed);
    }
}

/// What a Project's pass reads: its Tasks as they should be seen, and their counts.
#[derive(Debug, Default)]
pub struct ProjectTasks {
    /// Every Task of the Project, a dispatch the watch does not show yet as Queued.
    pub tasks: Vec<Arc<Task>>,
    /// The counts by phase of its Tasks but the planning task.
    pub work: TaskCounts,
    /// The counts by phase of its planning task.
    pub planning: TaskCounts,
}

/// Each Project's Tasks with their counts, Task names by role and phase, and the
/// dispatches the watch does not show yet.
#[derive(Debug, Default)]
pub struct TaskIndex {
    live: Mutex<Entries>,
}

impl TaskIndex {
    /// Files what `event` says, once `store` has applied it.
    pub fn apply(&self, event: &watcher::Event<Task>, store: &Store<Task>) {
        match event {
            watcher::Event::Apply(task) => {
                if let Some(copy) = store.get(&kube::runtime::reflector::ObjectRef::from(task)) {
                    lock(&self.live).apply(copy);
                }
            }
            watcher::Event::Delete(task) => {
                lock(&self.live).unfile(&(task.namespace().unwrap_or_default(), task.name_any()));
            }
            // The store swaps in the listed Tasks at the list's end.
            watcher::Event::Init | watcher::Event::InitApply(_) => {}
            watcher::Event::InitDone => {
                let mut live = lock(&self.live);
                let mut built = Entries::default();
                for task in store.state() {
                    let name = (task.namespace().unwrap_or_default(), task.name_any());
                    let expected = live.of.get(&name).and_then(|f| {
                        let uid = f.uid().to_owned();
                        f.expected.map(|attempt| (uid, attempt))
                    });
                    built.apply(task);
                    if let Some((uid, attempt)) = expected {
                        built.refile(name, &uid, |f| {
                            f.expected = (attempt > f.attempt()).then_some(attempt);
                        });
                    }
                }
                *live = built;
            }
        }
    }

    /// Project `project`'s Tasks in `namespace` and their counts, from the same moment.
    pub fn project(&self, namespace: &str, project: &str) -> ProjectTasks {
        let live = lock(&self.live);
        let Some(tally) = live
            .by_project
            .get(&(namespace.to_owned(), project.to_owned()))
        else {
            return ProjectTasks::default();
        };
        let tasks = tally
            .names
            .iter()
            .filter_map(|name| live.of.get(&(namespace.to_owned(), name.clone())))
            .map(Filed::seen)
            .collect();
        ProjectTasks {
            tasks,
            work: tally.work.clone(),
            planning: tally.planning.clone(),
        }
    }

    /// The names of `namespace`'s Tasks of `role` in `phase`.
    pub fn of_role(&self, namespace: &str, role: &str, phase: TaskPhase) -> Vec<String> {
        lock(&self.live)
            .by_role_phase
            .get(&(namespace.to_owned(), role.to_owned(), phase))
            .map(|names| names.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Records that attempt `attempt` of `task` was published: until the watch shows it,
    /// the Task is seen and counted as Queued with it.
    pub fn expect_dispatch(&self, task: &Task, attempt: i32) {
        let name = (task.namespace().unwrap_or_default(), task.name_any());
        let uid = task.metadata.uid.clone().unwrap_or_default();
        lock(&self.live).refile(name, &uid, |f| {
            if attempt > f.attempt() {
                f.expected = Some(attempt);
            }
        });
    }

    /// Drops the record of `task`'s dispatch whose Queued status could not be written.
    pub fn forget_dispatch(&self, task: &Task) {
        let name = (task.namespace().unwrap_or_default(), task.name_any());
        let uid = task.metadata.uid.clone().unwrap_or_default();
        lock(&self.live).refile(name, &uid, |f| f.expected = None);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
