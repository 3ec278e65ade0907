//! Indexes kept beside the Task store, so reconcilers look up what they need instead
//! of scanning every Task of the cluster: each Project's Tasks with their counts by
//! phase, and Task names by role and phase.
//!
//! Fed by the one Task watch ([`crate::runtime::watches`]) with every event it sees,
//! right after the store has applied it, so the index shares the store's copy of each
//! Task rather than keeping its own. A re-list rebuilds the index from the store once
//! the list is complete, as the store swaps in its new contents then.
//!
//! The index also holds what the operator has done that the watch does not show yet, so
//! a pass that runs before the watch has caught up neither repeats it nor trips over it:
//! the dispatches it has published ([`TaskIndex::expect_dispatch`]: such a Task is seen,
//! filed and counted as Queued with the published attempt until the watch shows that
//! attempt), and the status it has written ([`TaskIndex::wrote`]: the Task is seen
//! as written until the watch shows any change to it but the operator's own writes
//! leading up to it). And, for the dispatch delay metric, when this replica first knew
//! each Task's success recorded ([`TaskIndex::succeeded_since`]).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::Instant,
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

/// A copy of a Task the operator wrote, and the resourceVersions the watch may still
/// show before it without that being news: the store's when the first of the writes
/// the watch does not show yet started, and each of those writes' own but the last.
#[derive(Debug, Clone)]
struct Written {
    over: Vec<String>,
    task: Arc<Task>,
}

/// At most this many writes are chained over a copy the watch does not show yet; with
/// more, the oldest is let go (the watch showing it then counts as news, and the next
/// write starts from the store's copy, at the cost of a conflict).
const CHAINED: usize = 8;

/// One Task, as filed.
#[derive(Debug, Clone)]
struct Filed {
    /// The store's copy.
    task: Arc<Task>,
    project: String,
    role: String,
    planning: bool,
    /// A write the watch does not show yet.
    written: Option<Written>,
    /// An attempt published that the watch does not show yet.
    expected: Option<i32>,
    /// When this replica first knew the newest copy's success recorded (its own write of
    /// it returned, or the watch showed it); `None` while the newest copy has not
    /// succeeded.
    succeeded_at: Option<Instant>,
}

impl Filed {
    fn new(task: Arc<Task>) -> Self {
        Self {
            project: task.spec.project.clone(),
            role: task.spec.role.to_string(),
            planning: is_planning_task(&task),
            written: None,
            expected: None,
            succeeded_at: None,
            task,
        }
    }

    /// The newest copy: the one a pass wrote while the watch does not show it yet.
    fn current(&self) -> &Arc<Task> {
        self.written.as_ref().map_or(&self.task, |w| &w.task)
    }

    fn uid(&self) -> &str {
        self.task.metadata.uid.as_deref().unwrap_or_default()
    }

    /// The attempt the newest copy shows.
    fn attempt(&self) -> i32 {
        self.current().status.as_ref().map_or(0, |s| s.attempt)
    }

    /// The phase the Task is filed and counted under.
    fn phase(&self) -> TaskPhase {
        if self.expected.is_some() {
            return TaskPhase::Queued;
        }
        self.current()
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .unwrap_or_default()
    }

    /// Keeps from `before` (the same Task, filed from an older copy) what this copy does
    /// not show yet: a write, while the watch shows no change but the writes leading up
    /// to it (any other change came after it, since a write is conditional on the copy it
    /// starts from); and a published attempt.
    fn carry(&mut self, before: Self) {
        let seen = self.task.resource_version().unwrap_or_default();
        self.written = before.written.filter(|w| w.over.contains(&seen));
        self.expected = before.expected.filter(|&attempt| attempt > self.attempt());
        self.succeeded_at = before.succeeded_at;
    }

    /// Dates the newest copy's success, if it has succeeded and was not dated yet.
    fn date_success(&mut self) {
        let succeeded = self
            .current()
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .is_some_and(|p| p == TaskPhase::Succeeded);
        self.succeeded_at = if succeeded {
            self.succeeded_at.or_else(|| Some(Instant::now()))
        } else {
            None
        };
    }

    /// The Task as a pass should see it: Queued with the published attempt while the
    /// watch has not shown it.
    fn seen(&self) -> Arc<Task> {
        let Some(attempt) = self.expected else {
            return self.current().clone();
        };
        let mut expected = Task::clone(self.current());
        let status = expected.status.get_or_insert_with(TaskStatus::default);
        status.attempt = attempt;
        status.phase = Some(TaskPhase::Queued);
        status.next_attempt_time = None;
        Arc::new(expected)
    }
}

/// A Project's Tasks by name as a pass sees them (each marked if it is a planning
/// task), and their counts by phase, its planning task apart.
#[derive(Debug, Default)]
struct Tally {
    tasks: BTreeMap<String, (Arc<Task>, bool)>,
    work: TaskCounts,
    planning: TaskCounts,
}

impl Tally {
    fn counts(&mut self, planning: bool) -> &mut TaskCounts {
        if planning {
            &mut self.planning
        } else {
            &mut self.work
        }
    }
}

#[derive(Debug, Default)]
struct Entries {
    of: HashMap<Name, Filed>,
    by_project: HashMap<ProjectKey, Tally>,
    by_role_phase: HashMap<(String, String, TaskPhase), BTreeSet<String>>,
}

impl Entries {
    fn file(&mut self, name: Name, mut filed: Filed) {
        filed.date_success();
        let (namespace, task) = &name;
        let phase = filed.phase();
        let tally = self
            .by_project
            .entry((namespace.clone(), filed.project.clone()))
            .or_default();
        tally
            .tasks
            .insert(task.clone(), (filed.seen(), filed.planning));
        tally.counts(filed.planning).add(phase, 1);
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
            tally.tasks.remove(task);
            tally.counts(filed.planning).add(phase, -1);
            if tally.tasks.is_empty() {
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

    /// Files the store's copy of a Task, keeping what the copy does not show yet.
    fn apply(&mut self, task: Arc<Task>) {
        let name = (task.namespace().unwrap_or_default(), task.name_any());
        let before = self.unfile(&name);
        let mut filed = Filed::new(task);
        if let Some(before) = before.filter(|b| b.uid() == filed.uid()) {
            filed.carry(before);
        }
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
/// A dispatch the watch does not show yet is seen Queued.
#[derive(Debug, Default)]
pub struct ProjectTasks {
    /// Every Task of the Project, in name order.
    pub tasks: Vec<Arc<Task>>,
    /// Those of `tasks` that are planning tasks (a Project planned by Hera has one).
    pub planning: Vec<Arc<Task>>,
    /// The counts by phase of the Tasks but the planning tasks.
    pub work_counts: TaskCounts,
    /// The counts by phase of the planning tasks.
    pub planning_counts: TaskCounts,
}

impl ProjectTasks {
    /// The Tasks but the planning tasks, in name order.
    pub fn work(&self) -> impl Iterator<Item = &Task> {
        self.tasks
            .iter()
            .filter(|t| !self.planning.iter().any(|p| Arc::ptr_eq(p, t)))
            .map(AsRef::as_ref)
    }
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
                    let mut filed = Filed::new(task);
                    if let Some(before) = live.of.remove(&name).filter(|b| b.uid() == filed.uid()) {
                        filed.carry(before);
                    }
                    built.file(name, filed);
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
        let mut planning = Vec::new();
        let tasks = (tally.tasks.values())
            .map(|(task, is_planning)| {
                if *is_planning {
                    planning.push(task.clone());
                }
                task.clone()
            })
            .collect();
        ProjectTasks {
            tasks,
            planning,
            work_counts: tally.work.clone(),
            planning_counts: tally.planning.clone(),
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

    /// The newest copy of the Task `namespace`/`name` with uid `uid`: the last write the
    /// operator made that the watch does not show yet, else the store's.
    pub fn newest(&self, namespace: &str, name: &str, uid: &str) -> Option<Arc<Task>> {
        lock(&self.live)
            .of
            .get(&(namespace.to_owned(), name.to_owned()))
            .filter(|f| f.uid() == uid)
            .map(|f| f.current().clone())
    }

    /// The Task `namespace`/`name` with uid `uid` as a pass would see it now: its newest
    /// copy, Queued with an attempt published that the watch does not show yet.
    pub fn seen(&self, namespace: &str, name: &str, uid: &str) -> Option<Arc<Task>> {
        lock(&self.live)
            .of
            .get(&(namespace.to_owned(), name.to_owned()))
            .filter(|f| f.uid() == uid)
            .map(Filed::seen)
    }

    /// When this replica first knew the last of `namespace`'s Tasks `names` succeeded
    /// (each one's success written by it, or shown by the watch): `None` unless all have.
    pub fn succeeded_since<'a>(
        &self,
        namespace: &str,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Option<Instant> {
        let live = lock(&self.live);
        names
            .into_iter()
            .map(|name| {
                live.of
                    .get(&(namespace.to_owned(), name.to_owned()))
                    .and_then(|f| f.succeeded_at)
            })
            .try_fold(None, |latest: Option<Instant>, at| {
                Some(latest.max(Some(at?)))
            })
            .flatten()
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

    /// Records that the operator wrote `written` over `base` (the copy the write started
    /// from): until the watch shows a change to the Task, it is seen as written, so the
    /// next pass neither repeats the write nor starts another from the old copy.
    pub fn wrote(&self, base: &Task, written: Task) {
        let name = (base.namespace().unwrap_or_default(), base.name_any());
        let uid = base.metadata.uid.clone().unwrap_or_default();
        let Some(base_version) = base.resource_version() else {
            return;
        };
        lock(&self.live).refile(name, &uid, |f| {
            // Written over the newest copy: the store's, or one written before it that the
            // watch does not show yet, which the watch may then show on the way to this.
            if f.current().resource_version().as_deref() == Some(base_version.as_str()) {
                let over = match f.written.take() {
                    Some(before) => {
                        let mut over = before.over;
                        over.push(base_version);
                        if over.len() > CHAINED {
                            over.remove(0);
                        }
                        over
                    }
                    None => vec![base_version],
                };
                f.written = Some(Written {
                    over,
                    task: Arc::new(written),
                });
                f.expected = f.expected.filter(|&attempt| attempt > f.attempt());
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
