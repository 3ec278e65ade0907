//! The live view's state: what the watches and the keyboard say, reduced into what the
//! dashboard shows. Pure: messages and the time in, a changed state out.

use std::collections::{BTreeMap, HashSet, VecDeque};

use aios_crds::{Agent, Project, Task, task::TaskPhase};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Event;
use kube::ResourceExt;

use crate::view::tree::{event_time, short_name};

/// The most lines the feed keeps.
pub const FEED_MAX: usize = 200;

/// An object's key: namespace and name.
pub type Key = (String, String);

fn key_of(o: &impl ResourceExt) -> Key {
    (o.namespace().unwrap_or_default(), o.name_any())
}

/// What a watch said about an object.
#[derive(Debug, Clone)]
pub enum Change<K> {
    /// It exists, as given.
    Applied(K),
    /// It is gone.
    Deleted(K),
}

/// A key the dashboard acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Press {
    /// The next Project.
    NextProject,
    /// The previous Project.
    PreviousProject,
    /// The next Task.
    Down,
    /// The previous Task.
    Up,
    /// Open or close the selected Task's details.
    Details,
    /// Close the details, or quit.
    Back,
    /// Quit.
    Quit,
}

/// One input to the dashboard.
#[derive(Debug, Clone)]
pub enum Msg {
    /// A Project changed.
    Project(Change<Project>),
    /// A Task changed.
    Task(Change<Task>),
    /// An Agent changed.
    Agent(Change<Agent>),
    /// An Event was recorded.
    Event(Box<Event>),
    /// A key was pressed.
    Key(Press),
}

/// One line of the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedLine {
    /// When it happened.
    pub time: Timestamp,
    /// The Project it concerns, when known.
    pub project: Option<Key>,
    /// What happened.
    pub text: String,
    /// Whether it is a warning or a failure.
    pub warning: bool,
}

/// The dashboard's state.
#[derive(Debug, Clone, Default)]
pub struct Dashboard {
    /// Every Project watched.
    pub projects: BTreeMap<Key, Project>,
    /// Every Task watched.
    pub tasks: BTreeMap<Key, Task>,
    /// Every Agent watched.
    pub agents: BTreeMap<Key, Agent>,
    /// Task transitions and Events, oldest first.
    pub feed: VecDeque<FeedLine>,
    /// The Project shown; the first one when none is chosen.
    pub selected: Option<Key>,
    /// The selected Task, by its index in the shown Project's dependency order.
    pub task_index: usize,
    /// Whether the selected Task's details are open.
    pub details: bool,
    /// Whether the user asked to quit.
    pub quit: bool,
    seen_events: HashSet<(String, i32)>,
}

impl Dashboard {
    /// A dashboard showing `project` (in `namespace`) when given, else the first one.
    pub fn new(namespace: &str, project: Option<&str>) -> Self {
        Self {
            selected: project.map(|p| (namespace.to_owned(), p.to_owned())),
            ..Self::default()
        }
    }

    /// The Project shown, if there is one.
    pub fn project(&self) -> Option<&Project> {
        match &self.selected {
            Some(key) => self.projects.get(key),
            None => self.projects.values().next(),
        }
    }

    /// The shown Project's Tasks.
    pub fn project_tasks(&self) -> Vec<Task> {
        let Some(project) = self.project() else {
            return Vec::new();
        };
        let (ns, name) = key_of(project);
        self.tasks
            .iter()
            .filter(|((tns, _), t)| *tns == ns && t.spec.project == name)
            .map(|(_, t)| t.clone())
            .collect()
    }

    /// Applies `msg` at `now`; whether anything shown changed.
    pub fn apply(&mut self, msg: Msg, now: Timestamp) -> bool {
        match msg {
            Msg::Project(change) => {
                apply_change(&mut self.projects, change);
                true
            }
            Msg::Agent(change) => {
                apply_change(&mut self.agents, change);
                true
            }
            Msg::Task(change) => {
                self.on_task(change, now);
                true
            }
            Msg::Event(event) => self.on_event(&event, now),
            Msg::Key(press) => self.on_key(press),
        }
    }

    fn on_task(&mut self, change: Change<Task>, now: Timestamp) {
        let Change::Applied(task) = change else {
            apply_change(&mut self.tasks, change);
            return;
        };
        let key = key_of(&task);
        // A Task seen for the first time (the watch's first listing, or a new Task) is
        // no transition; its changes from then on are.
        let Some(previous) = self.tasks.get(&key) else {
            self.tasks.insert(key, task);
            return;
        };
        let before = previous.status.as_ref().and_then(|s| s.phase);
        let after = task.status.as_ref().and_then(|s| s.phase);
        if before != after
            && let Some(phase) = after
        {
            let name = short_name(&task.spec.project, &key.1).to_owned();
            let from = before.map_or_else(|| "new".to_owned(), |p| format!("{p:?}"));
            let agent = task
                .status
                .as_ref()
                .and_then(|s| s.agent.as_deref())
                .filter(|_| phase == TaskPhase::Running)
                .map(|a| format!(" on {a}"))
                .unwrap_or_default();
            self.push(FeedLine {
                time: now,
                project: Some((key.0.clone(), task.spec.project.clone())),
                text: format!("{name}: {from} → {phase:?}{agent}"),
                warning: matches!(phase, TaskPhase::Failed | TaskPhase::Cancelled),
            });
        }
        self.tasks.insert(key, task);
    }

    fn on_event(&mut self, event: &Event, now: Timestamp) -> bool {
        let object = &event.involved_object;
        let kind = object.kind.as_deref().unwrap_or_default();
        if !matches!(kind, "Project" | "Task" | "Agent" | "ModelProvider") {
            return false;
        }
        let id = (
            event.metadata.uid.clone().unwrap_or_default(),
            event.count.unwrap_or(1),
        );
        if !self.seen_events.insert(id) {
            return false;
        }
        let namespace = object.namespace.clone().unwrap_or_default();
        let name = object.name.clone().unwrap_or_default();
        let project = match kind {
            "Project" => Some((namespace, name.clone())),
            "Task" => self
                .tasks
                .get(&(namespace.clone(), name.clone()))
                .map(|t| (namespace, t.spec.project.clone())),
            _ => None,
        };
        self.push(FeedLine {
            time: event_time(event).unwrap_or(now),
            project,
            text: format!(
                "{} {}: {}",
                kind.to_lowercase(),
                name,
                event.message.as_deref().unwrap_or_default()
            ),
            warning: event.type_.as_deref() == Some("Warning"),
        });
        true
    }

    fn push(&mut self, line: FeedLine) {
        self.feed.push_back(line);
        while self.feed.len() > FEED_MAX {
            self.feed.pop_front();
        }
    }

    fn on_key(&mut self, press: Press) -> bool {
        match press {
            Press::Back if self.details => self.details = false,
            Press::Quit | Press::Back => self.quit = true,
            Press::Details => self.details = !self.details,
            Press::Down => {
                let count = self.project_tasks().len();
                self.task_index = (self.task_index + 1).min(count.saturating_sub(1));
            }
            Press::Up => self.task_index = self.task_index.saturating_sub(1),
            Press::NextProject | Press::PreviousProject => {
                let keys: Vec<&Key> = self.projects.keys().collect();
                if keys.is_empty() {
                    return false;
                }
                let current = self
                    .project()
                    .map(key_of)
                    .and_then(|k| keys.iter().position(|x| **x == k))
                    .unwrap_or(0);
                let next = if press == Press::NextProject {
                    (current + 1) % keys.len()
                } else {
                    (current + keys.len() - 1) % keys.len()
                };
                self.selected = Some(keys[next].clone());
                self.task_index = 0;
                self.details = false;
            }
        }
        true
    }

    /// Whether something shown moves with the clock (a Task running or a Project
    /// underway), so the view is redrawn each second.
    pub fn ticking(&self) -> bool {
        self.tasks.values().any(|t| {
            matches!(
                t.status.as_ref().and_then(|s| s.phase),
                Some(TaskPhase::Running | TaskPhase::Verifying)
            )
        })
    }
}

fn apply_change<K: ResourceExt>(map: &mut BTreeMap<Key, K>, change: Change<K>) {
    match change {
        Change::Applied(o) => {
            map.insert(key_of(&o), o);
        }
        Change::Deleted(o) => {
            map.remove(&key_of(&o));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::fixtures::{NOW, project, task};

    fn now() -> Timestamp {
        NOW.parse().unwrap()
    }

    fn api(phase: &str, agent: Option<&str>) -> Msg {
        Msg::Task(Change::Applied(task(
            "shop-api",
            "backend",
            &[],
            phase,
            agent,
        )))
    }

    #[test]
    fn a_task_changing_phase_is_one_feed_line_and_a_repeat_is_none() {
        let mut d = Dashboard::new("team-a", None);
        d.apply(api("", None), now());
        d.apply(api("Queued", None), now());
        d.apply(api("Running", Some("apollo-0")), now());
        d.apply(api("Running", Some("apollo-0")), now());
        d.apply(api("Failed", Some("apollo-0")), now());
        let lines: Vec<&str> = d.feed.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(
            lines,
            [
                "api: new → Queued",
                "api: Queued → Running on apollo-0",
                "api: Running → Failed"
            ]
        );
        assert!(d.feed.back().unwrap().warning);
        assert_eq!(d.feed[0].project, Some(("team-a".into(), "shop".into())));
    }

    #[test]
    fn events_of_other_kinds_and_repeats_are_not_in_the_feed() {
        let mut d = Dashboard::new("team-a", None);
        let event = |uid: &str, kind: &str, count: i32| {
            Box::new(
                serde_json::from_value::<Event>(serde_json::json!({
                    "metadata": {"name": uid, "namespace": "team-a", "uid": uid},
                    "involvedObject": {"kind": kind, "name": "shop", "namespace": "team-a"},
                    "reason": "Planned", "message": "planned 3 tasks", "type": "Normal",
                    "count": count, "lastTimestamp": NOW
                }))
                .unwrap(),
            )
        };
        assert!(d.apply(Msg::Event(event("e1", "Project", 1)), now()));
        assert!(!d.apply(Msg::Event(event("e1", "Project", 1)), now()));
        assert!(d.apply(Msg::Event(event("e1", "Project", 2)), now()));
        assert!(!d.apply(Msg::Event(event("e2", "Pod", 1)), now()));
        assert_eq!(d.feed.len(), 2);
        assert_eq!(d.feed[0].text, "project shop: planned 3 tasks");
    }

    #[test]
    fn keys_switch_projects_select_tasks_and_quit_after_closing_details() {
        let mut d = Dashboard::new("team-a", None);
        for name in ["alpha", "shop"] {
            d.apply(
                Msg::Project(Change::Applied(project(name, "Running"))),
                now(),
            );
        }
        d.apply(
            Msg::Task(Change::Applied(task("shop-a", "backend", &[], "", None))),
            now(),
        );
        d.apply(
            Msg::Task(Change::Applied(task("shop-b", "backend", &[], "", None))),
            now(),
        );
        assert_eq!(d.project().unwrap().name_any(), "alpha");
        assert!(d.project_tasks().is_empty());
        d.apply(Msg::Key(Press::NextProject), now());
        assert_eq!(d.project().unwrap().name_any(), "shop");
        assert_eq!(d.project_tasks().len(), 2);
        for _ in 0..5 {
            d.apply(Msg::Key(Press::Down), now());
        }
        assert_eq!(d.task_index, 1, "stops at the last task");
        d.apply(Msg::Key(Press::Details), now());
        d.apply(Msg::Key(Press::Back), now());
        assert!(!d.details && !d.quit);
        d.apply(Msg::Key(Press::Back), now());
        assert!(d.quit);
        d.apply(Msg::Key(Press::PreviousProject), now());
        assert_eq!(d.project().unwrap().name_any(), "alpha");
    }

    #[test]
    fn the_feed_keeps_its_last_lines() {
        let mut d = Dashboard::new("team-a", None);
        for i in 0..(FEED_MAX + 11) {
            let phase = if i % 2 == 0 { "Queued" } else { "Running" };
            d.apply(
                Msg::Task(Change::Applied(task("shop-a", "backend", &[], phase, None))),
                now(),
            );
        }
        assert_eq!(d.feed.len(), FEED_MAX);
    }
}
