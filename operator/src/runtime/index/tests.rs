use std::collections::BTreeMap;

use aios_crds::names::labels;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use proptest::prelude::*;

use super::*;
use crate::{
    project::rollup::count,
    testing::{FedIndex, task, with_phase},
};

impl FedIndex<Task> for TaskIndex {
    type Woken = Vec<(ProjectKey, Urgency)>;

    fn feed(&self, event: &watcher::Event<Task>, store: &Store<Task>) -> Self::Woken {
        self.apply(event, store)
    }
}

/// A Task store and the index fed as the watch feeds it.
type Fed = crate::testing::Fed<Task, TaskIndex>;

impl Fed {
    fn new() -> Self {
        Self::with(TaskIndex::default())
    }

    /// How soon the Project's pass is called for by the watch showing `task`.
    fn urgency(&mut self, task: &Task) -> Urgency {
        let woken = self.feed(&watcher::Event::Apply(task.clone()));
        assert_eq!(woken.len(), 1, "{woken:?}");
        assert_eq!(woken[0].0, ("team-a".to_owned(), task.spec.project.clone()));
        woken[0].1
    }

    fn relist(&mut self, tasks: impl IntoIterator<Item = Task>) -> Vec<(ProjectKey, Urgency)> {
        self.feed(&watcher::Event::Init);
        for task in tasks {
            self.feed(&watcher::Event::InitApply(task));
        }
        self.feed(&watcher::Event::InitDone)
    }

    fn names(&self) -> Vec<String> {
        self.index
            .project("team-a", "shop")
            .tasks
            .iter()
            .map(|t| t.name_any())
            .collect()
    }
}

#[test]
fn a_task_moving_between_phases_moves_between_entries() {
    let mut fed = Fed::new();
    fed.feed(&watcher::Event::Apply(task("a", &[])));
    fed.feed(&watcher::Event::Apply(task("b", &[])));
    assert_eq!(fed.names(), ["a", "b"]);
    assert_eq!(fed.index.project("team-a", "shop").work_counts.pending, 2);
    assert_eq!(
        fed.index.of_role("team-a", "backend", TaskPhase::Pending),
        ["a", "b"]
    );

    fed.feed(&watcher::Event::Apply(with_phase(
        task("a", &[]),
        TaskPhase::Queued,
    )));
    assert_eq!(
        fed.index.of_role("team-a", "backend", TaskPhase::Pending),
        ["b"]
    );
    assert_eq!(
        fed.index.of_role("team-a", "backend", TaskPhase::Queued),
        ["a"]
    );
    fed.feed(&watcher::Event::Apply(with_phase(
        task("a", &[]),
        TaskPhase::Running,
    )));
    assert!(
        fed.index
            .of_role("team-a", "backend", TaskPhase::Queued)
            .is_empty()
    );
    assert_eq!(
        fed.index.of_role("team-a", "backend", TaskPhase::Running),
        ["a"]
    );
    let shop = fed.index.project("team-a", "shop");
    assert_eq!(fed.names(), ["a", "b"], "still the Project's");
    assert_eq!(
        (
            shop.work_counts.running,
            shop.work_counts.pending,
            shop.work_counts.total
        ),
        (1, 1, 2)
    );

    fed.feed(&watcher::Event::Delete(task("b", &[])));
    assert_eq!(fed.names(), ["a"]);
    assert!(
        fed.index
            .of_role("team-a", "backend", TaskPhase::Pending)
            .is_empty()
    );
    assert_eq!(fed.index.project("team-a", "shop").work_counts.total, 1);
    assert!(
        fed.index.project("team-b", "shop").tasks.is_empty(),
        "another namespace"
    );
}

/// `task` Pending with its status saying `message`.
fn saying(task: Task, message: &str) -> Task {
    let mut task = with_phase(task, TaskPhase::Pending);
    task.status.as_mut().expect("a status").message = Some(message.to_owned());
    task
}

#[test]
fn an_agent_or_provider_wakes_only_the_projects_with_a_task_waiting_for_it() {
    use crate::project::{WAITING_FOR_PROVIDER, Wake, waiting_for_role};
    let mut fed = Fed::new();
    let role = |namespace: &str, role: &str| Wake::Role {
        namespace: namespace.into(),
        role: role.into(),
    };
    let provider = Wake::Provider {
        namespace: "team-a".into(),
    };
    let a = saying(task("a", &[]), &waiting_for_role("backend"));
    let mut b = a.clone();
    b.metadata.name = Some("b".into());
    b.metadata.uid = Some("uid-b".into());
    b.spec.project = "blog".into();
    let mut elsewhere = a.clone();
    elsewhere.metadata.namespace = Some("team-b".into());
    let c = saying(
        task("c", &[]),
        &format!("{WAITING_FOR_PROVIDER} that can take a High task"),
    );
    let idle = saying(task("d", &["c"]), "waiting for c");
    for t in [&a, &b, &elsewhere, &c, &idle] {
        fed.feed(&watcher::Event::Apply(t.clone()));
    }
    let mut projects = fed.index.projects_waiting(&role("team-a", "backend"));
    projects.sort();
    assert_eq!(
        projects,
        [
            ("team-a".to_owned(), "blog".to_owned()),
            ("team-a".to_owned(), "shop".to_owned())
        ]
    );
    assert!(fed.index.projects_waiting(&role("team-a", "qa")).is_empty());
    assert_eq!(
        fed.index.projects_waiting(&role("team-b", "backend")),
        [("team-b".to_owned(), "shop".to_owned())]
    );
    assert_eq!(
        fed.index.projects_waiting(&provider),
        [("team-a".to_owned(), "shop".to_owned())]
    );

    // Dispatched, it waits for nothing; the Project waits while another Task does.
    fed.index.expect_dispatch(&c, 1);
    assert!(fed.index.projects_waiting(&provider).is_empty());
    fed.feed(&watcher::Event::Apply(with_phase(a, TaskPhase::Running)));
    assert_eq!(
        fed.index.projects_waiting(&role("team-a", "backend")),
        [("team-a".to_owned(), "blog".to_owned())]
    );
    fed.feed(&watcher::Event::Delete(b));
    assert!(
        fed.index
            .projects_waiting(&role("team-a", "backend"))
            .is_empty()
    );
    // A relist files what waits anew.
    let listed: Vec<Task> = fed.store.state().iter().map(|t| (**t).clone()).collect();
    fed.relist(listed);
    assert_eq!(
        fed.index.projects_waiting(&role("team-b", "backend")),
        [("team-b".to_owned(), "shop".to_owned())]
    );
}

#[test]
fn a_roles_demand_moves_only_when_a_task_enters_or_leaves_queued_or_running() {
    let (tx, mut rx) = futures::channel::mpsc::unbounded();
    let mut fed = Fed::new();
    fed.index = TaskIndex::sending_demand(tx);
    let mut moved = || {
        let mut roles = Vec::new();
        while let Ok((namespace, role)) = rx.try_recv() {
            roles.push(format!("{namespace}/{role}"));
        }
        roles
    };
    let a = task("a", &[]);
    let mut qa = task("q", &[]);
    qa.spec.role = aios_crds::DnsLabel::new("qa").unwrap();
    fed.feed(&watcher::Event::Apply(a.clone()));
    fed.feed(&watcher::Event::Apply(qa.clone()));
    fed.feed(&watcher::Event::Apply(saying(a.clone(), "waiting for x")));
    assert!(moved().is_empty(), "Pending is no demand");

    // Published: demand at once, before the watch shows it; the watch showing it then
    // moves nothing.
    fed.index.expect_dispatch(&a, 1);
    assert_eq!(moved(), ["team-a/backend"]);
    let queued = with_phase(a.clone(), TaskPhase::Queued);
    fed.feed(&watcher::Event::Apply(queued));
    assert!(moved().is_empty());

    let running = at_version(with_phase(a.clone(), TaskPhase::Running), "5");
    fed.feed(&watcher::Event::Apply(running.clone()));
    assert_eq!(moved(), ["team-a/backend"]);
    // A status that says the same phase (a heartbeat's time, a message).
    let mut later = running.clone();
    later.status.as_mut().unwrap().message = Some("working".into());
    fed.feed(&watcher::Event::Apply(later));
    assert!(moved().is_empty());

    // Its success, written by the operator: demand left at once.
    let succeeded = with_phase(a.clone(), TaskPhase::Succeeded);
    fed.index.wrote(&running, succeeded);
    assert_eq!(moved(), ["team-a/backend"]);

    fed.index.expect_dispatch(&qa, 1);
    assert_eq!(moved(), ["team-a/qa"]);
    fed.index.forget_dispatch(&qa);
    assert_eq!(moved(), ["team-a/qa"], "back to Pending");
    fed.index.expect_dispatch(&qa, 1);
    moved();
    fed.feed(&watcher::Event::Delete(qa));
    assert_eq!(moved(), ["team-a/qa"], "a Queued Task deleted");
}

fn pending(fed: &Fed) -> Vec<String> {
    let shop = fed.index.project("team-a", "shop");
    shop.pending.iter().map(|t| t.name_any()).collect()
}

#[test]
fn a_pass_is_given_the_ready_tasks_and_those_with_nothing_said_yet() {
    let mut fed = Fed::new();
    let (a, b, c) = (task("a", &[]), task("b", &["a"]), task("c", &["a", "b"]));
    for t in [&a, &b, &c] {
        fed.feed(&watcher::Event::Apply(t.clone()));
    }
    // Without a status, each is looked at until what it waits for is handed over.
    assert_eq!(pending(&fed), ["a", "b", "c"]);
    assert!(fed.index.hand("team-a", "b", "uid-b"));
    assert!(
        !fed.index.hand("team-a", "b", "uid-b"),
        "handed over already"
    );
    assert!(
        !fed.index.hand("team-a", "c", "uid-other"),
        "another Task's uid"
    );
    assert!(fed.index.holds("team-a", "b", "uid-b"));
    assert_eq!(pending(&fed), ["a", "c"]);
    // Not written after all: looked at again.
    fed.index.said("team-a", "b", "uid-b");
    assert!(!fed.index.holds("team-a", "b", "uid-b"));
    assert_eq!(pending(&fed), ["a", "b", "c"]);
    // Said: each waits with a status now, and only `a` is ready.
    let (b, c) = (
        with_phase(b, TaskPhase::Pending),
        with_phase(c, TaskPhase::Pending),
    );
    fed.feed(&watcher::Event::Apply(b.clone()));
    fed.feed(&watcher::Event::Apply(c.clone()));
    assert_eq!(pending(&fed), ["a"]);

    // `a` dispatched: nothing to look at; `a` succeeded: `b` is ready, not `c`.
    fed.index.expect_dispatch(&a, 1);
    assert!(pending(&fed).is_empty());
    fed.feed(&watcher::Event::Apply(with_phase(
        a.clone(),
        TaskPhase::Succeeded,
    )));
    assert_eq!(pending(&fed), ["b"]);
    fed.feed(&watcher::Event::Apply(with_phase(
        b.clone(),
        TaskPhase::Running,
    )));
    assert!(pending(&fed).is_empty());
    fed.feed(&watcher::Event::Apply(with_phase(b, TaskPhase::Succeeded)));
    assert_eq!(pending(&fed), ["c"]);

    // A relist files each anew, in any order, and finds the same.
    let listed: Vec<Task> = fed
        .store
        .state()
        .iter()
        .rev()
        .map(|t| (**t).clone())
        .collect();
    fed.relist(listed);
    assert_eq!(pending(&fed), ["c"]);

    // A planning task is never the work's.
    let mut planner = task("plan", &[]);
    planner.metadata.labels = Some([(labels::PLANNING.to_owned(), "true".to_owned())].into());
    fed.feed(&watcher::Event::Apply(planner));
    assert_eq!(pending(&fed), ["c"]);
}

#[test]
fn only_a_change_that_can_move_nothing_but_the_status_waits_for_the_pass() {
    use TaskPhase::{Failed, Pending, Queued, Running, Succeeded};
    let mut fed = Fed::new();
    let (a, b, c) = (task("a", &[]), task("b", &[]), task("c", &["a", "b"]));
    // New Tasks: now.
    for t in [&a, &b, &c] {
        assert_eq!(fed.urgency(t), Urgency::Now, "{}", t.name_any());
    }
    // What a waiting Task says, and attempts recorded Queued and Running: soon.
    assert_eq!(fed.urgency(&with_phase(c.clone(), Pending)), Urgency::Soon);
    assert_eq!(fed.urgency(&with_phase(a.clone(), Queued)), Urgency::Soon);
    assert_eq!(fed.urgency(&with_phase(a.clone(), Running)), Urgency::Soon);
    assert_eq!(fed.urgency(&with_phase(b.clone(), Running)), Urgency::Soon);
    // A heartbeat: soon.
    let mut beat = with_phase(a.clone(), Running);
    beat.status.as_mut().unwrap().last_heartbeat_time = Some(Time(crate::testing::ts(5)));
    assert_eq!(fed.urgency(&beat), Urgency::Soon);
    // `a` succeeds while `b` runs and `c` still waits for `b`: soon.
    assert_eq!(
        fed.urgency(&with_phase(a.clone(), Succeeded)),
        Urgency::Soon
    );
    // `b` succeeds and makes `c` ready: now.
    assert_eq!(fed.urgency(&with_phase(b.clone(), Succeeded)), Urgency::Now);

    // The last Task in flight succeeding (the Project may be done): now.
    let running = |tasks: [&Task; 2]| {
        let mut fed = Fed::new();
        for t in tasks {
            fed.feed(&watcher::Event::Apply(with_phase(t.clone(), Running)));
        }
        fed
    };
    let mut fed = running([&a, &b]);
    assert_eq!(
        fed.urgency(&with_phase(a.clone(), Succeeded)),
        Urgency::Soon
    );
    assert_eq!(fed.urgency(&with_phase(b.clone(), Succeeded)), Urgency::Now);

    // A failure, a retry, a changed spec, a deletion: now.
    let mut fed = running([&a, &b]);
    assert_eq!(fed.urgency(&with_phase(a.clone(), Failed)), Urgency::Now);
    assert_eq!(fed.urgency(&with_phase(a.clone(), Pending)), Urgency::Now);
    let mut edited = with_phase(b.clone(), Running);
    edited.metadata.generation = Some(2);
    assert_eq!(fed.urgency(&edited), Urgency::Now);
    let mut going = edited.clone();
    going.metadata.deletion_timestamp = Some(Time(crate::testing::ts(9)));
    assert_eq!(fed.urgency(&going), Urgency::Now);
    let woken = fed.feed(&watcher::Event::Delete(going));
    assert_eq!(
        woken,
        [(("team-a".to_owned(), "shop".to_owned()), Urgency::Now)]
    );

    // A planning task's success: now (the plan it made is accepted in the next pass).
    let mut planner = with_phase(task("plan", &[]), Running);
    planner.metadata.labels = Some([(labels::PLANNING.to_owned(), "true".to_owned())].into());
    fed.feed(&watcher::Event::Apply(planner.clone()));
    assert_eq!(fed.urgency(&with_phase(planner, Succeeded)), Urgency::Now);

    // A re-list: every Project's pass now, those gone included.
    let mut other = task("x", &[]);
    other.spec.project = "blog".into();
    fed.feed(&watcher::Event::Apply(other));
    let mut woken = fed.relist([task("y", &[])]);
    woken.sort_by(|a, b| a.0.cmp(&b.0));
    let now = |p: &str| (("team-a".to_owned(), p.to_owned()), Urgency::Now);
    assert_eq!(woken, [now("blog"), now("shop")]);
}

#[test]
fn the_index_shares_the_stores_copy_of_each_task() {
    let mut fed = Fed::new();
    fed.feed(&watcher::Event::Apply(task("a", &[])));
    let indexed = fed.index.project("team-a", "shop").tasks.remove(0);
    let stored = fed
        .store
        .get(&kube::runtime::reflector::ObjectRef::new("a").within("team-a"))
        .unwrap();
    assert!(Arc::ptr_eq(&indexed, &stored));
}

#[test]
fn a_relist_replaces_the_index_when_it_is_complete() {
    let mut fed = Fed::new();
    fed.feed(&watcher::Event::Apply(task("gone", &[])));
    fed.feed(&watcher::Event::Init);
    fed.feed(&watcher::Event::InitApply(task("kept", &[])));
    assert_eq!(fed.names(), ["gone"], "until the list is done");
    fed.feed(&watcher::Event::InitDone);
    assert_eq!(fed.names(), ["kept"]);
    assert_eq!(fed.index.project("team-a", "shop").work_counts.total, 1);
}

#[test]
fn a_dispatch_counts_as_queued_until_the_watch_shows_it() {
    let mut fed = Fed::new();
    let a = task("a", &[]);
    fed.feed(&watcher::Event::Apply(a.clone()));
    fed.index.expect_dispatch(&a, 1);

    let shop = fed.index.project("team-a", "shop");
    assert_eq!((shop.work_counts.queued, shop.work_counts.pending), (1, 0));
    let seen = shop.tasks[0].status.clone().unwrap();
    assert_eq!((seen.phase, seen.attempt), (Some(TaskPhase::Queued), 1));
    assert_eq!(
        fed.index.of_role("team-a", "backend", TaskPhase::Queued),
        ["a"]
    );

    // A change the watch shows that is not the dispatch keeps it expected.
    let mut touched = a.clone();
    touched.metadata.labels = Some([("x".to_owned(), "y".to_owned())].into());
    fed.feed(&watcher::Event::Apply(touched));
    assert_eq!(fed.index.project("team-a", "shop").work_counts.queued, 1);
    // So does a re-list made before the Queued write.
    fed.relist([a.clone()]);
    assert_eq!(fed.index.project("team-a", "shop").work_counts.queued, 1);

    // The watch shows the attempt running: the expectation is spent.
    let mut running = with_phase(a.clone(), TaskPhase::Running);
    running.status.as_mut().unwrap().attempt = 1;
    fed.feed(&watcher::Event::Apply(running));
    let shop = fed.index.project("team-a", "shop");
    assert_eq!((shop.work_counts.running, shop.work_counts.queued), (1, 0));
    // A later copy showing the attempt failed back to Pending is not Queued again.
    let mut retry = a.clone();
    retry.status = Some(TaskStatus {
        phase: Some(TaskPhase::Pending),
        attempt: 1,
        ..TaskStatus::default()
    });
    fed.feed(&watcher::Event::Apply(retry));
    assert_eq!(fed.index.project("team-a", "shop").work_counts.pending, 1);
}

#[test]
fn a_forgotten_dispatch_and_another_tasks_dispatch_change_nothing() {
    let mut fed = Fed::new();
    let a = task("a", &[]);
    fed.feed(&watcher::Event::Apply(a.clone()));
    fed.index.expect_dispatch(&a, 1);
    fed.index.forget_dispatch(&a);
    assert_eq!(fed.index.project("team-a", "shop").work_counts.pending, 1);

    // A Task deleted and made again under the same name is another Task.
    let mut other = a.clone();
    other.metadata.uid = Some("uid-other".into());
    fed.index.expect_dispatch(&other, 1);
    assert_eq!(fed.index.project("team-a", "shop").work_counts.pending, 1);
    fed.index.expect_dispatch(&a, 1);
    fed.feed(&watcher::Event::Delete(a.clone()));
    fed.feed(&watcher::Event::Apply(other));
    let shop = fed.index.project("team-a", "shop");
    assert_eq!((shop.work_counts.pending, shop.work_counts.queued), (1, 0));
}

fn at_version(mut task: Task, version: &str) -> Task {
    task.metadata.resource_version = Some(version.to_owned());
    task
}

#[test]
fn a_pass_sees_what_it_wrote_until_the_watch_shows_a_change() {
    let mut fed = Fed::new();
    let a = at_version(task("a", &[]), "1");
    fed.feed(&watcher::Event::Apply(a.clone()));

    // A pass writes "waiting": the next pass sees the written copy, not the stale one.
    let waiting = at_version(with_phase(a.clone(), TaskPhase::Pending), "2");
    let mut waiting = waiting;
    waiting.status.as_mut().unwrap().message = Some("waiting for b".into());
    fed.index.wrote(&a, waiting.clone());
    let seen = fed.index.project("team-a", "shop").tasks.remove(0);
    assert_eq!(seen.resource_version().as_deref(), Some("2"));
    let newest = fed.index.newest("team-a", "a", "uid-a").unwrap();
    assert_eq!(newest.resource_version().as_deref(), Some("2"));
    assert!(fed.index.newest("team-a", "a", "uid-other").is_none());
    // A second write over the written copy is kept too.
    let queued = at_version(with_phase(waiting.clone(), TaskPhase::Queued), "3");
    fed.index.wrote(&waiting, queued);
    let shop = fed.index.project("team-a", "shop");
    assert_eq!(shop.tasks[0].resource_version().as_deref(), Some("3"));
    assert_eq!((shop.work_counts.queued, shop.work_counts.pending), (1, 0));
    // The watch shows the first of the two writes: the second is still the newest.
    fed.feed(&watcher::Event::Apply(waiting.clone()));
    let shop = fed.index.project("team-a", "shop");
    assert_eq!(shop.tasks[0].resource_version().as_deref(), Some("3"));
    assert_eq!((shop.work_counts.queued, shop.work_counts.pending), (1, 0));
    let newest = fed.index.newest("team-a", "a", "uid-a").unwrap();
    assert_eq!(newest.resource_version().as_deref(), Some("3"));
    // A write over a copy that is no longer the newest says nothing.
    fed.index.wrote(
        &a,
        at_version(with_phase(a.clone(), TaskPhase::Failed), "4"),
    );
    assert_eq!(fed.index.project("team-a", "shop").work_counts.failed, 0);

    // A re-list that still shows the old copy keeps the written one.
    fed.relist([a.clone()]);
    assert_eq!(fed.index.project("team-a", "shop").work_counts.queued, 1);
    // The watch shows a change: its copy is the newest from then on.
    let running = at_version(with_phase(a.clone(), TaskPhase::Running), "5");
    fed.feed(&watcher::Event::Apply(running));
    let shop = fed.index.project("team-a", "shop");
    assert_eq!(shop.tasks[0].resource_version().as_deref(), Some("5"));
    assert_eq!((shop.work_counts.running, shop.work_counts.queued), (1, 0));
}

#[test]
fn a_success_is_dated_from_when_it_was_first_known_recorded() {
    let mut fed = Fed::new();
    let a = at_version(task("a", &[]), "1");
    let b = at_version(task("b", &[]), "1");
    fed.feed(&watcher::Event::Apply(a.clone()));
    fed.feed(&watcher::Event::Apply(b.clone()));
    let since = |fed: &Fed| fed.index.succeeded_since("team-a", ["a", "b"]);
    assert!(since(&fed).is_none(), "neither has succeeded");

    // The operator's own write of a's success dates it; the watch showing it later
    // does not move the date.
    let before = Instant::now();
    let a_done = at_version(with_phase(a.clone(), TaskPhase::Succeeded), "2");
    fed.index.wrote(&a, a_done.clone());
    assert!(since(&fed).is_none(), "b has not succeeded");
    let a_at = fed.index.succeeded_since("team-a", ["a"]).unwrap();
    assert!(a_at >= before);
    std::thread::sleep(std::time::Duration::from_millis(5));
    fed.feed(&watcher::Event::Apply(a_done));
    assert_eq!(fed.index.succeeded_since("team-a", ["a"]), Some(a_at));

    // b's success, shown by the watch first, is the later: both are known from then.
    fed.feed(&watcher::Event::Apply(at_version(
        with_phase(b.clone(), TaskPhase::Succeeded),
        "2",
    )));
    let both = since(&fed).unwrap();
    assert!(both > a_at, "the last of the two");
    // A retry of b (its success undone) undates it; a missing name has no date.
    fed.feed(&watcher::Event::Apply(at_version(
        with_phase(b, TaskPhase::Pending),
        "3",
    )));
    assert!(since(&fed).is_none());
    assert!(fed.index.succeeded_since("team-a", ["a", "gone"]).is_none());
    assert!(fed.index.succeeded_since("team-a", []).is_none());
}

/// One change the watch or a pass makes, on task `i` of [`TASKS`].
#[derive(Debug, Clone)]
enum Change {
    /// The watch shows task `i` (made again under its name with `generation`) in
    /// `phase` at `attempt`.
    Apply {
        i: usize,
        generation: u8,
        /// No status at all when `None`.
        phase: Option<TaskPhase>,
        attempt: i32,
        /// What its status message says it waits for: nothing, an Agent of its role,
        /// a model provider.
        waits: u8,
    },
    Delete(usize),
    /// A pass publishes the attempt after the one the watch shows.
    Dispatch(usize),
    /// A pass hands over a waiting status of task `i`; the waiting writer is done with it.
    Hand(usize),
    Said(usize),
    /// A pass writes `phase` over the newest copy, at its attempt or `.2` after it.
    Write(usize, TaskPhase, i32),
    /// ... and cannot record it Queued.
    Forget(usize),
    /// The watch lists again; the Tasks not in `kept` were deleted meanwhile.
    Relist(Vec<bool>),
}

/// Tasks the changes are drawn from: two Projects, each with a planning task.
const TASKS: usize = 12;

fn phases() -> impl Strategy<Value = TaskPhase> {
    // Pending and Succeeded the most: a Task waits, then its dependencies succeed.
    prop_oneof![
        3 => Just(TaskPhase::Pending),
        1 => Just(TaskPhase::Queued),
        1 => Just(TaskPhase::Running),
        1 => Just(TaskPhase::Verifying),
        3 => Just(TaskPhase::Succeeded),
        1 => Just(TaskPhase::Failed),
        1 => Just(TaskPhase::Skipped),
        1 => Just(TaskPhase::Cancelled),
    ]
}

fn changes() -> impl Strategy<Value = Change> {
    prop_oneof![
        4 => (0..TASKS, 0..2u8, proptest::option::of(phases()), 0..3i32, 0..3u8).prop_map(|(i, generation, phase, attempt, waits)| {
            Change::Apply { i, generation, phase, attempt, waits }
        }),
        1 => (0..TASKS).prop_map(Change::Hand),
        1 => (0..TASKS).prop_map(Change::Said),
        1 => (0..TASKS).prop_map(Change::Delete),
        2 => (0..TASKS).prop_map(Change::Dispatch),
        2 => (0..TASKS, phases(), 0..2i32).prop_map(|(i, phase, later)| Change::Write(i, phase, later)),
        1 => (0..TASKS).prop_map(Change::Forget),
        1 => proptest::collection::vec(any::<bool>(), TASKS).prop_map(Change::Relist),
    ]
}

/// Task `i` of a random DAG: in Project `shop` or `blog`, depending on some of the tasks
/// before it; the first of each Project plans it.
fn dag_task(i: usize, generation: u8, deps: &[Vec<usize>]) -> Task {
    let dependencies: Vec<String> = deps[i].iter().map(|d| format!("t{d}")).collect();
    let refs: Vec<&str> = dependencies.iter().map(String::as_str).collect();
    let mut t = task(&format!("t{i}"), &refs);
    t.metadata.uid = Some(format!("uid-{i}-{generation}"));
    if i % 2 == 1 {
        t.spec.project = "blog".into();
    }
    if i < 2 {
        t.metadata.labels = Some([(labels::PLANNING.to_owned(), "true".to_owned())].into());
    }
    t
}

/// One Task as the model holds it: the watch's copy, a copy a pass wrote over the copy
/// with resourceVersion `.0` that the watch does not show yet, and the attempt
/// published that it does not show yet.
#[derive(Clone)]
struct Held {
    task: Task,
    written: Option<(Vec<String>, Task)>,
    expected: Option<i32>,
    handed: bool,
}

impl Held {
    fn current(&self) -> &Task {
        self.written.as_ref().map_or(&self.task, |(_, w)| w)
    }
}

/// What the index should hold, kept the plain way.
#[derive(Default)]
struct Model {
    tasks: BTreeMap<usize, Held>,
    /// The last resourceVersion given out.
    version: u64,
}

impl Model {
    fn attempt(task: &Task) -> i32 {
        task.status.as_ref().map_or(0, |s| s.attempt)
    }

    fn next_version(&mut self) -> String {
        self.version += 1;
        self.version.to_string()
    }

    fn apply(&mut self, i: usize, task: Task) {
        let before = self
            .tasks
            .remove(&i)
            .filter(|b| b.task.metadata.uid == task.metadata.uid);
        let mut held = Held {
            task,
            written: None,
            expected: None,
            handed: false,
        };
        if let Some(before) = before {
            held.handed = before.handed;
            held.written = before.written.filter(|(over, _)| {
                over.contains(held.task.metadata.resource_version.as_ref().unwrap())
            });
            let attempt = Self::attempt(held.current());
            held.expected = before.expected.filter(|&e| e > attempt);
        }
        self.tasks.insert(i, held);
    }

    /// Every Task Queued or Running as a pass should see it, with its phase, by name.
    fn demand(&self) -> BTreeMap<String, TaskPhase> {
        ["shop", "blog"]
            .iter()
            .flat_map(|p| self.seen(p))
            .filter_map(|t| {
                let phase = crate::task::lifecycle::phase(&t);
                matches!(phase, TaskPhase::Queued | TaskPhase::Running)
                    .then(|| (t.name_any(), phase))
            })
            .collect()
    }

    /// Every Task of `project` as a pass should see it.
    fn seen(&self, project: &str) -> Vec<Task> {
        self.tasks
            .values()
            .filter(|h| h.task.spec.project == project)
            .map(|h| {
                let mut t = h.current().clone();
                if let Some(attempt) = h.expected {
                    let status = t.status.get_or_insert_with(TaskStatus::default);
                    status.attempt = attempt;
                    status.phase = Some(TaskPhase::Queued);
                    status.next_attempt_time = None;
                }
                t
            })
            .collect()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The counts the index keeps as changes arrive equal a count from scratch of the
    /// Tasks as a pass sees them, after every change.
    #[test]
    fn kept_counts_equal_a_count_from_scratch(
        deps in proptest::collection::vec(proptest::collection::vec(0..TASKS, 0..4), TASKS),
        script in proptest::collection::vec(changes(), 1..60),
    ) {
        // Only earlier tasks: a DAG.
        let deps: Vec<Vec<usize>> = deps
            .iter()
            .enumerate()
            .map(|(i, d)| d.iter().copied().filter(|&d| d < i).collect())
            .collect();
        let (demand_tx, mut demand_rx) = futures::channel::mpsc::unbounded();
        let mut fed = Fed::new();
        fed.index = TaskIndex::sending_demand(demand_tx);
        let mut model = Model::default();
        for change in script {
            let demand_before = model.demand();
            let relisted = matches!(change, Change::Relist(_));
            match change {
                Change::Apply { i, generation, phase, attempt, waits } => {
                    let mut t = dag_task(i, generation, &deps);
                    t.metadata.resource_version = Some(model.next_version());
                    let message = match waits {
                        0 => None,
                        1 => Some(crate::project::waiting_for_role("backend")),
                        _ => Some(format!("{} that can take a High task", crate::project::WAITING_FOR_PROVIDER)),
                    };
                    t.status = phase.map(|phase| TaskStatus { phase: Some(phase), attempt, message, ..TaskStatus::default() });
                    fed.feed(&watcher::Event::Apply(t.clone()));
                    model.apply(i, t);
                }
                Change::Delete(i) => {
                    if let Some(held) = model.tasks.remove(&i) {
                        fed.feed(&watcher::Event::Delete(held.task));
                    }
                }
                Change::Dispatch(i) => {
                    if let Some(held) = model.tasks.get_mut(&i) {
                        let attempt = Model::attempt(held.current()) + 1;
                        fed.index.expect_dispatch(&held.task, attempt);
                        held.expected = Some(attempt);
                    }
                }
                Change::Write(i, phase, later) => {
                    let version = model.next_version();
                    if let Some(held) = model.tasks.get_mut(&i) {
                        let base = held.current().clone();
                        let mut written = base.clone();
                        written.metadata.resource_version = Some(version);
                        let status = written.status.get_or_insert_with(TaskStatus::default);
                        status.phase = Some(phase);
                        status.attempt += later;
                        fed.index.wrote(&base, written.clone());
                        let over = match held.written.take() {
                            Some((mut over, before)) => {
                                over.push(before.metadata.resource_version.unwrap_or_default());
                                if over.len() > 8 {
                                    over.remove(0);
                                }
                                over
                            }
                            None => vec![held.task.metadata.resource_version.clone().unwrap_or_default()],
                        };
                        held.written = Some((over, written));
                        let attempt = Model::attempt(held.current());
                        held.expected = held.expected.filter(|&e| e > attempt);
                    }
                }
                Change::Hand(i) => {
                    let held = model.tasks.get_mut(&i);
                    let newly = fed.index.hand("team-a", &format!("t{i}"), &held.as_ref().map_or_else(String::new, |h| h.task.uid().unwrap_or_default()));
                    prop_assert_eq!(newly, held.as_ref().is_some_and(|h| !h.handed));
                    if let Some(held) = held {
                        held.handed = true;
                    }
                }
                Change::Said(i) => {
                    if let Some(held) = model.tasks.get_mut(&i) {
                        fed.index.said("team-a", &format!("t{i}"), &held.task.uid().unwrap_or_default());
                        held.handed = false;
                    }
                }
                Change::Forget(i) => {
                    if let Some(held) = model.tasks.get_mut(&i) {
                        fed.index.forget_dispatch(&held.task);
                        held.expected = None;
                    }
                }
                Change::Relist(kept) => {
                    model.tasks.retain(|i, _| kept[*i]);
                    let listed: Vec<Task> = model.tasks.values().map(|h| h.task.clone()).collect();
                    fed.relist(listed);
                }
            }
            for project in ["shop", "blog"] {
                let kept = fed.index.project("team-a", project);
                let seen = model.seen(project);
                let (planning, work): (Vec<&Task>, Vec<&Task>) =
                    seen.iter().partition(|t| is_planning_task(t));
                prop_assert_eq!(&kept.work_counts, &count(&work), "{} work", project);
                prop_assert_eq!(&kept.planning_counts, &count(&planning), "{} planning", project);
                // Kept in name order: compared as kept with the model's sorted.
                let named = |tasks: Vec<&Task>| -> Vec<(String, Option<TaskStatus>)> {
                    tasks.iter().map(|t| (t.name_any(), t.status.clone())).collect()
                };
                let sorted = |mut tasks: Vec<&Task>| {
                    tasks.sort_by_key(|t| t.name_any());
                    named(tasks)
                };
                prop_assert_eq!(
                    named(kept.tasks.iter().map(AsRef::as_ref).collect()),
                    sorted(seen.iter().collect())
                );
                prop_assert_eq!(named(kept.work().collect()), sorted(work.clone()));
                // The Pending tasks to look at: among the work's Pending ones, every one
                // whose dependencies all succeeded and every one with nothing said nor
                // handed over.
                let listed: Vec<String> = kept.pending.iter().map(|t| t.name_any()).collect();
                let is_pending = |t: &Task| crate::task::lifecycle::phase(t) == TaskPhase::Pending;
                let succeeded = |name: &str| seen.iter().any(|t| t.name_any() == name
                    && crate::task::lifecycle::phase(t) == TaskPhase::Succeeded);
                for t in &work {
                    let name = t.name_any();
                    let i: usize = name[1..].parse().unwrap();
                    let ready = t.spec.depends_on.iter().all(|d| succeeded(d));
                    let unsaid = t.status.is_none() && !model.tasks[&i].handed;
                    if is_pending(t) && (ready || unsaid) {
                        prop_assert!(listed.contains(&name), "{} in {:?}", name, listed);
                    }
                }
                for name in &listed {
                    let t = work.iter().find(|t| &t.name_any() == name);
                    prop_assert!(t.is_some_and(|t| is_pending(t)), "{} is Pending work", name);
                }
                prop_assert!(listed.is_sorted(), "{:?}", listed);
                prop_assert_eq!(
                    named(kept.planning.iter().map(AsRef::as_ref).collect()),
                    sorted(planning)
                );
            }
            let queued: usize = ["shop", "blog"]
                .iter()
                .map(|p| model.seen(p).iter().filter(|t| t.status.as_ref().and_then(|s| s.phase) == Some(TaskPhase::Queued)).count())
                .sum();
            prop_assert_eq!(fed.index.of_role("team-a", "backend", TaskPhase::Queued).len(), queued);

            // The Projects an Agent or a provider wakes: those with a Task as a pass sees
            // it waiting for it.
            for wake in [
                crate::project::Wake::Role { namespace: "team-a".into(), role: "backend".into() },
                crate::project::Wake::Provider { namespace: "team-a".into() },
            ] {
                let mut kept = fed.index.projects_waiting(&wake);
                kept.sort();
                let waiting: Vec<ProjectKey> = ["blog", "shop"]
                    .iter()
                    .filter(|p| model.seen(p).iter().any(|t| crate::project::Wake::awaited_by(t).as_ref() == Some(&wake)))
                    .map(|p| ("team-a".to_owned(), (*p).to_owned()))
                    .collect();
                prop_assert_eq!(kept, waiting, "{:?}", wake);
            }
            // The role's demand is sent on when a Task entered or left Queued or
            // Running (or, after a relist, when any Task is demand), and only then.
            let demand_after = model.demand();
            let mut sent = Vec::new();
            while let Ok(role) = demand_rx.try_recv() {
                sent.push(role);
            }
            let expected = if relisted {
                !demand_before.is_empty() || !demand_after.is_empty()
            } else {
                demand_before != demand_after
            };
            let backend = ("team-a".to_owned(), "backend".to_owned());
            prop_assert_eq!(sent, if expected { vec![backend] } else { vec![] });
        }
    }
}
