//! Indexes kept beside the Task store, so reconcilers look up what they need instead
//! of scanning every Task of the cluster: each Project's Tasks with their counts by
//! phase, Task names by role and phase, and the Projects with Pending Tasks waiting for
//! an Agent of a role or for a model provider (as their status messages say). Each role
//! whose demand moves (a Task of it entering or leaving Queued or Running) is sent to
//! its Agents' controller ([`TaskIndex::sending_demand`]).
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
//! leading up to it), and the waiting statuses handed over to be written
//! ([`TaskIndex::hand`]). And, for the dispatch delay metric, when this replica first
//! knew each Task's success recorded ([`TaskIndex::succeeded_since`]).
//!
//! Each Project's Pending Tasks a pass must look at to dispatch are kept too
//! ([`ProjectTasks::pending`]), so a pass over a Project of 10,000 Tasks looks at the
//! few whose dependencies may all have succeeded (and those without a status that no
//! waiting status is handed over for) rather than every Pending one. A Pending Task
//! whose dependencies have not all succeeded is filed under one dependency that has
//! not (`Filed::blocked_on`); only when that one is filed Succeeded is the Task looked
//! at again, and filed under the next such dependency, or among the ready ones. Each
//! Task moves along its dependencies once, however many events arrive.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::Instant,
};

use aios_crds::{Task, TaskPhase, TaskStatus, project::TaskCounts};
use kube::{
    ResourceExt,
    runtime::{
        reflector::{ObjectRef, Store},
        watcher,
    },
};

use crate::{
    project::{Wake, dispatch::is_planning_task},
    runtime::lock,
};

/// A Task's namespace and name.
type Name = (String, String);

/// A Project's namespace and name.
pub type ProjectKey = (String, String);

/// The Project `key` names, as its controller is asked to reconcile it.
pub fn project_ref((namespace, name): &ProjectKey) -> ObjectRef<aios_crds::Project> {
    ObjectRef::new(name).within(namespace)
}

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
    /// A waiting status handed over to be written and not written yet.
    handed: bool,
    /// While Pending: what its status message says it waits for, under which it is
    /// filed in [`Entries::waiting`].
    wait: Option<Wake>,
    /// While Pending: the place in its dependencies of one that has not succeeded, under
    /// which it is filed in its Project's [`Tally::blocked`]; `None` when all have (it
    /// is then among [`Tally::ready`]) or it is not Pending.
    blocked_on: Option<usize>,
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
            handed: false,
            blocked_on: None,
            wait: None,
            task,
        }
    }

    fn dependencies(&self) -> &[aios_crds::CompactString] {
        &self.task.spec.depends_on
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
        self.handed = before.handed;
    }

    /// Whether a pass must look at it to say what it waits for: Pending without a
    /// status, not being deleted, and nothing handed over to say it yet.
    fn unsaid(&self) -> bool {
        let task = self.current();
        !self.handed
            && self.expected.is_none()
            && task.status.is_none()
            && task.metadata.deletion_timestamp.is_none()
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
    /// Pending Tasks whose dependencies have all succeeded (and, after a dependency
    /// went back on its success, perhaps a few whose have not).
    ready: BTreeSet<String>,
    /// Pending Tasks a pass must say what they wait for ([`Filed::unsaid`]).
    unsaid: BTreeSet<String>,
    /// By dependency: the Pending Tasks filed under it ([`Filed::blocked_on`]), and some
    /// that were and moved on since (skipped when the dependency succeeds).
    blocked: HashMap<String, Vec<String>>,
}

/// Where a Pending Task with `dependencies` stands among the Tasks of its Project:
/// `Some(place)` of a dependency that has not succeeded, looked for from `from` on and
/// then from the start; `None` if all have.
fn first_unmet(
    tasks: &BTreeMap<String, (Arc<Task>, bool)>,
    dependencies: &[aios_crds::CompactString],
    from: usize,
) -> Option<usize> {
    let from = from.min(dependencies.len());
    (from..dependencies.len()).chain(0..from).find(|&i| {
        tasks
            .get(dependencies[i].as_str())
            .is_none_or(|(dep, _)| crate::task::lifecycle::phase(dep) != TaskPhase::Succeeded)
    })
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

/// How soon a Task's change needs its Project's pass ([`TaskIndex::apply`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    /// At once: the change may let the pass do something (dispatch, skip, verify,
    /// finish the Project, forget a deleted Task).
    Now,
    /// Soon ([`crate::project::soon::SOON`]): the change can only move the Project's status,
    /// which is written at most about that often anyway (`Urgency::of`).
    Soon,
}

impl Urgency {
    /// How soon `after`, the watch's copy of a Task whose copy before it was `before`,
    /// needs its Project's pass. Soon, when nothing but the status moved and it moved
    /// along the way an attempt goes: a status that says the same phase (a waiting
    /// message, a heartbeat, usage), an attempt recorded Queued or Running, and a
    /// success, when `tally` (after it) shows no Task ready to go (dependents it made
    /// ready are), another still in flight (whose outcome brings the next pass) and it
    /// is not a planning task. Anything else now: a new or changed spec, a deletion, a
    /// failure, a retry, a verification.
    fn of(before: &Task, after: &Task, tally: &Tally, planning: bool) -> Self {
        use TaskPhase::{Pending, Queued, Running, Succeeded};
        let same = before.metadata.generation == after.metadata.generation
            && before.metadata.deletion_timestamp == after.metadata.deletion_timestamp;
        let (from, to) = (
            crate::task::lifecycle::phase(before),
            crate::task::lifecycle::phase(after),
        );
        let routine = match (from, to) {
            _ if from == to => true,
            (Pending, Queued | Running) | (Queued, Running) => true,
            (_, Succeeded) => {
                !planning
                    && tally.ready.is_empty()
                    && tally.work.in_flight() + tally.work.verifying > 0
            }
            _ => false,
        };
        if same && routine {
            Self::Soon
        } else {
            Self::Now
        }
    }
}

#[derive(Debug, Default)]
struct Entries {
    of: HashMap<Name, Filed>,
    by_project: HashMap<ProjectKey, Tally>,
    by_role_phase: HashMap<(String, String, TaskPhase), BTreeSet<String>>,
    /// By what they wait for: the Projects with Pending Tasks waiting for it, and how
    /// many Tasks each.
    waiting: HashMap<Wake, HashMap<String, usize>>,
    /// The roles (namespace, role) whose demand moved since they were last taken: a
    /// Task of the role entered or left Queued or Running.
    moved: BTreeSet<(String, String)>,
}

/// Whether a Task in `phase` is demand on its role's Agent: on the bus, or with an agent.
fn demand(phase: TaskPhase) -> bool {
    matches!(phase, TaskPhase::Queued | TaskPhase::Running)
}

impl Entries {
    fn file(&mut self, name: Name, mut filed: Filed) {
        filed.date_success();
        let (namespace, task) = &name;
        let phase = filed.phase();
        let project = (namespace.clone(), filed.project.clone());
        let tally = self.by_project.entry(project.clone()).or_default();
        tally
            .tasks
            .insert(task.clone(), (filed.seen(), filed.planning));
        tally.counts(filed.planning).add(phase, 1);
        if phase == TaskPhase::Pending {
            let from = filed.blocked_on.unwrap_or(0);
            match first_unmet(&tally.tasks, filed.dependencies(), from) {
                None => {
                    tally.ready.insert(task.clone());
                    filed.blocked_on = None;
                }
                Some(place) => {
                    // Already filed there when it was before (see `apply`).
                    if filed.blocked_on != Some(place) {
                        let dependency = filed.dependencies()[place].to_string();
                        tally
                            .blocked
                            .entry(dependency)
                            .or_default()
                            .push(task.clone());
                    }
                    filed.blocked_on = Some(place);
                }
            }
            if filed.unsaid() {
                tally.unsaid.insert(task.clone());
            }
            filed.wait = Wake::awaited_by(filed.current());
        } else {
            filed.blocked_on = None;
            filed.wait = None;
        }
        if let Some(wake) = &filed.wait {
            *self
                .waiting
                .entry(wake.clone())
                .or_default()
                .entry(filed.project.clone())
                .or_default() += 1;
        }
        self.by_role_phase
            .entry((namespace.clone(), filed.role.clone(), phase))
            .or_default()
            .insert(task.clone());
        if phase == TaskPhase::Succeeded {
            let task = task.clone();
            self.of.insert(name, filed);
            self.unblock(&project, &task);
        } else {
            self.of.insert(name, filed);
        }
    }

    /// Looks again at the Pending Tasks of `project` filed under `dependency`, which has
    /// just been filed Succeeded: each is filed under its next dependency that has not
    /// succeeded, or among the ready ones.
    fn unblock(&mut self, project: &ProjectKey, dependency: &str) {
        let Some(tally) = self.by_project.get_mut(project) else {
            return;
        };
        let Some(waiting) = tally.blocked.remove(dependency) else {
            return;
        };
        for task in waiting {
            let key = (project.0.clone(), task);
            let Some(filed) = self.of.get_mut(&key) else {
                continue;
            };
            let name = key.1;
            // Moved on since it was filed here.
            let Some(place) = filed.blocked_on else {
                continue;
            };
            if filed.project != project.1
                || filed
                    .dependencies()
                    .get(place)
                    .map(aios_crds::CompactString::as_str)
                    != Some(dependency)
            {
                continue;
            }
            match first_unmet(&tally.tasks, filed.dependencies(), place) {
                None => {
                    tally.ready.insert(name);
                    filed.blocked_on = None;
                }
                Some(next) => {
                    let next_dependency = filed.dependencies()[next].to_string();
                    tally.blocked.entry(next_dependency).or_default().push(name);
                    filed.blocked_on = Some(next);
                }
            }
        }
    }

    fn unfile(&mut self, name: &Name) -> Option<Filed> {
        let mut filed = self.of.remove(name)?;
        let (namespace, task) = name;
        let phase = filed.phase();
        let project = (namespace.clone(), filed.project.clone());
        if let Some(tally) = self.by_project.get_mut(&project) {
            tally.tasks.remove(task);
            tally.ready.remove(task);
            tally.unsaid.remove(task);
            tally.counts(filed.planning).add(phase, -1);
            if tally.tasks.is_empty() {
                // Its Tasks filed under a dependency go with it: filed again, this one
                // is filed under its dependency anew.
                self.by_project.remove(&project);
                filed.blocked_on = None;
            }
        }
        let role_phase = (namespace.clone(), filed.role.clone(), phase);
        if let Some(names) = self.by_role_phase.get_mut(&role_phase) {
            names.remove(task);
            if names.is_empty() {
                self.by_role_phase.remove(&role_phase);
            }
        }
        if let Some(wake) = filed.wait.take()
            && let Some(projects) = self.waiting.get_mut(&wake)
        {
            if let Some(count) = projects.get_mut(&filed.project) {
                *count -= 1;
                if *count == 0 {
                    projects.remove(&filed.project);
                }
            }
            if projects.is_empty() {
                self.waiting.remove(&wake);
            }
        }
        Some(filed)
    }

    /// Unfiles the Task `name` for good (deleted): its role's demand moved if it was
    /// demand.
    fn remove(&mut self, name: &Name) {
        if let Some(filed) = self.unfile(name)
            && demand(filed.phase())
        {
            self.moved.insert((name.0.clone(), filed.role));
        }
    }

    /// Notes the move of a Task of `namespace` from `before` to `after` (its role and
    /// phase as filed before, if it was, and as filed now).
    fn note_move(
        &mut self,
        namespace: &str,
        before: Option<(String, TaskPhase)>,
        after: (String, TaskPhase),
    ) {
        if before.as_ref() == Some(&after) {
            return;
        }
        for (role, phase) in before.into_iter().chain([after]) {
            if demand(phase) {
                self.moved.insert((namespace.to_owned(), role));
            }
        }
    }

    /// Files the store's copy of a Task, keeping what the copy does not show yet: how
    /// soon its Project's pass is needed.
    fn apply(&mut self, task: Arc<Task>) -> Urgency {
        let name = (task.namespace().unwrap_or_default(), task.name_any());
        let before = self.unfile(&name);
        let filed_as = before.as_ref().map(|b| (b.role.clone(), b.phase()));
        let after = Arc::clone(&task);
        let mut filed = Filed::new(task);
        let mut was = None;
        if let Some(before) = before.filter(|b| b.uid() == filed.uid()) {
            // Still filed under the same dependency, which has not succeeded since.
            if before.project == filed.project && before.dependencies() == filed.dependencies() {
                filed.blocked_on = before.blocked_on;
            }
            was = Some((before.task.clone(), before.project.clone()));
            filed.carry(before);
        }
        let (project, planning) = ((name.0.clone(), filed.project.clone()), filed.planning);
        let filed_now = (filed.role.clone(), filed.phase());
        self.file(name, filed);
        self.note_move(&project.0, filed_as, filed_now);
        match (was, self.by_project.get(&project)) {
            (Some((before, from)), Some(tally)) if from == project.1 => {
                Urgency::of(&before, &after, tally, planning)
            }
            _ => Urgency::Now,
        }
    }

    /// Refiles the Task `name` with `change` made to it, when it is the one with `uid`.
    fn refile(&mut self, name: Name, uid: &str, change: impl FnOnce(&mut Filed)) {
        let Some(mut filed) = self.unfile(&name) else {
            return;
        };
        let filed_as = Some((filed.role.clone(), filed.phase()));
        if filed.uid() == uid {
            change(&mut filed);
        }
        let (namespace, filed_now) = (name.0.clone(), (filed.role.clone(), filed.phase()));
        self.file(name, filed);
        self.note_move(&namespace, filed_as, filed_now);
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
    /// The Pending Tasks but the planning tasks that a pass must look at to dispatch, in
    /// name order: every one whose dependencies have all succeeded, and every one
    /// without a status that no waiting status is handed over for; perhaps a few more
    /// (a dependency that went back on its success leaves its dependents here).
    pub pending: Vec<Arc<Task>>,
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

/// Each Project's Tasks with their counts, Task names by role and phase, the Projects
/// with Tasks waiting for an Agent or a model provider, and the dispatches the watch does
/// not show yet.
#[derive(Debug, Default)]
pub struct TaskIndex {
    live: Mutex<Entries>,
    /// Where each role whose demand moved is sent (namespace, role), if anywhere.
    demand: Option<futures::channel::mpsc::UnboundedSender<(String, String)>>,
}

impl TaskIndex {
    /// An empty index that sends each role whose demand moves (a Task of it entered or
    /// left Queued or Running, as the watch shows it or as the operator wrote or
    /// published it) to `demand`, as (namespace, role).
    pub fn sending_demand(
        demand: futures::channel::mpsc::UnboundedSender<(String, String)>,
    ) -> Self {
        Self {
            live: Mutex::default(),
            demand: Some(demand),
        }
    }

    /// Runs `change` on the entries, then sends on the roles whose demand it moved.
    fn change<R>(&self, change: impl FnOnce(&mut Entries) -> R) -> R {
        let mut live = lock(&self.live);
        let result = change(&mut live);
        let moved = std::mem::take(&mut live.moved);
        if let Some(demand) = &self.demand {
            for role in moved {
                let _ = demand.unbounded_send(role);
            }
        }
        result
    }

    /// Files what `event` says, once `store` has applied it: the Projects whose pass it
    /// calls for, and how soon (every Project's at once after a re-list).
    pub fn apply(
        &self,
        event: &watcher::Event<Task>,
        store: &Store<Task>,
    ) -> Vec<(ProjectKey, Urgency)> {
        match event {
            watcher::Event::Apply(task) => {
                let Some(copy) = store.get(&kube::runtime::reflector::ObjectRef::from(task)) else {
                    return Vec::new();
                };
                let project = (
                    copy.namespace().unwrap_or_default(),
                    copy.spec.project.clone(),
                );
                let urgency = self.change(|live| live.apply(copy));
                vec![(project, urgency)]
            }
            watcher::Event::Delete(task) => {
                self.change(|live| {
                    live.remove(&(task.namespace().unwrap_or_default(), task.name_any()));
                });
                let project = (
                    task.namespace().unwrap_or_default(),
                    task.spec.project.clone(),
                );
                vec![(project, Urgency::Now)]
            }
            // The store swaps in the listed Tasks at the list's end.
            watcher::Event::Init | watcher::Event::InitApply(_) => Vec::new(),
            watcher::Event::InitDone => self.change(|live| {
                let mut projects: BTreeSet<ProjectKey> = live.by_project.keys().cloned().collect();
                let mut built = Entries::default();
                for task in store.state() {
                    let name = (task.namespace().unwrap_or_default(), task.name_any());
                    let mut filed = Filed::new(task);
                    if let Some(before) = live.of.remove(&name).filter(|b| b.uid() == filed.uid()) {
                        filed.carry(before);
                    }
                    built.file(name, filed);
                }
                projects.extend(built.by_project.keys().cloned());
                // Every role with demand before or after: what moved while unwatched is
                // not known.
                built.moved = (live.by_role_phase.keys())
                    .chain(built.by_role_phase.keys())
                    .filter(|(_, _, phase)| demand(*phase))
                    .map(|(namespace, role, _)| (namespace.clone(), role.clone()))
                    .collect();
                *live = built;
                projects.into_iter().map(|p| (p, Urgency::Now)).collect()
            }),
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
        let pending = (tally.ready.union(&tally.unsaid))
            .filter_map(|name| tally.tasks.get(name))
            .filter(|(_, is_planning)| !is_planning)
            .map(|(task, _)| task.clone())
            .collect();
        ProjectTasks {
            tasks,
            planning,
            work_counts: tally.work.clone(),
            planning_counts: tally.planning.clone(),
            pending,
        }
    }

    /// The Projects with a Pending Task whose status message says it waits for what
    /// `wake` names.
    pub fn projects_waiting(&self, wake: &Wake) -> Vec<ProjectKey> {
        let namespace = match wake {
            Wake::Role { namespace, .. } | Wake::Provider { namespace } => namespace,
        };
        lock(&self.live)
            .waiting
            .get(wake)
            .map(|projects| {
                projects
                    .keys()
                    .map(|project| (namespace.clone(), project.clone()))
                    .collect()
            })
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
        self.change(|live| {
            live.refile(name, &uid, |f| {
                if attempt > f.attempt() {
                    f.expected = Some(attempt);
                }
            });
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
        self.change(|live| {
            live.refile(name, &uid, |f| {
                // Written over the newest copy: the store's, or one written before it that
                // the watch does not show yet, which the watch may then show on the way to
                // this.
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
        });
    }

    /// Records that a waiting status of the Task `namespace`/`name` with uid `uid` is
    /// handed over to be written: whether it was not already (and the Task is filed).
    /// Until [`Self::said`], a pass does not hand it over again.
    pub fn hand(&self, namespace: &str, name: &str, uid: &str) -> bool {
        let key = (namespace.to_owned(), name.to_owned());
        self.change(|live| {
            if !live
                .of
                .get(&key)
                .is_some_and(|f| f.uid() == uid && !f.handed)
            {
                return false;
            }
            live.refile(key, uid, |f| f.handed = true);
            true
        })
    }

    /// Whether a waiting status of the Task is handed over and not written yet.
    pub fn holds(&self, namespace: &str, name: &str, uid: &str) -> bool {
        lock(&self.live)
            .of
            .get(&(namespace.to_owned(), name.to_owned()))
            .is_some_and(|f| f.uid() == uid && f.handed)
    }

    /// Records that the waiting status handed over for the Task was written, or not:
    /// a pass may hand over another.
    pub fn said(&self, namespace: &str, name: &str, uid: &str) {
        let key = (namespace.to_owned(), name.to_owned());
        self.change(|live| live.refile(key, uid, |f| f.handed = false));
    }

    /// Drops the record of `task`'s dispatch whose Queued status could not be written.
    pub fn forget_dispatch(&self, task: &Task) {
        let name = (task.namespace().unwrap_or_default(), task.name_any());
        let uid = task.metadata.uid.clone().unwrap_or_default();
        self.change(|live| live.refile(name, &uid, |f| f.expected = None));
    }
}

#[cfg(test)]
mod tests;
