//! `aios describe project`: the Project's DAG as a tree in dependency order (every Task
//! once, after everything it depends on), then usage, conditions and recent Events.

use std::collections::{BTreeMap, HashMap};

use std::fmt::Write as _;

use aios_crds::{Project, Task, task::TaskPhase};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Event;
use kube::ResourceExt;

use super::format;

/// How many Events `describe` shows, newest last.
pub const EVENTS_SHOWN: usize = 15;

/// `tasks` in dependency order with their depth: a Task comes after every Task of the
/// list it depends on, at one level below the deepest of them. Within a level, higher
/// priority first, then by name. Dependencies on Tasks not in the list are ignored; a
/// cycle (which Hera refuses) leaves its Tasks at the end, at level 0.
pub fn dependency_order(tasks: &[Task]) -> Vec<(usize, &Task)> {
    let by_name: HashMap<String, &Task> = tasks.iter().map(|t| (t.name_any(), t)).collect();
    let mut level: HashMap<String, usize> = HashMap::new();
    let mut remaining: Vec<&Task> = tasks.iter().collect();
    loop {
        let before = remaining.len();
        remaining.retain(|t| {
            let deps: Vec<&str> = t
                .spec
                .depends_on
                .iter()
                .map(aios_crds::CompactString::as_str)
                .filter(|d| by_name.contains_key(*d))
                .collect();
            if deps.iter().all(|d| level.contains_key(*d)) {
                let depth = deps.iter().map(|d| level[*d] + 1).max().unwrap_or(0);
                level.insert(t.name_any(), depth);
                false
            } else {
                true
            }
        });
        if remaining.is_empty() || remaining.len() == before {
            break;
        }
    }
    let mut ordered: Vec<(usize, &Task)> = tasks
        .iter()
        .filter_map(|t| level.get(&t.name_any()).map(|l| (*l, t)))
        .collect();
    ordered.sort_by(|(la, a), (lb, b)| {
        la.cmp(lb)
            .then(b.spec.priority.cmp(&a.spec.priority))
            .then(a.name_any().cmp(&b.name_any()))
    });
    ordered.extend(remaining.into_iter().map(|t| (0, t)));
    ordered
}

/// The mark of a phase in trees and dashboards.
pub fn mark(phase: Option<TaskPhase>) -> &'static str {
    match phase {
        None | Some(TaskPhase::Pending) => "○",
        Some(TaskPhase::Queued) => "◷",
        Some(TaskPhase::Running) => "●",
        Some(TaskPhase::Verifying) => "◐",
        Some(TaskPhase::Succeeded) => "✔",
        Some(TaskPhase::Failed) => "✖",
        Some(TaskPhase::Skipped) => "⊘",
        Some(TaskPhase::Cancelled) => "⊗",
    }
}

/// A Task's name without its Project's prefix.
pub fn short_name<'a>(project: &str, task: &'a str) -> &'a str {
    task.strip_prefix(project)
        .and_then(|rest| rest.strip_prefix('-'))
        .filter(|rest| !rest.is_empty())
        .unwrap_or(task)
}

/// The tree of `project`'s `tasks`.
pub fn tree(project: &Project, tasks: &[Task], now: Timestamp) -> String {
    let name = project.name_any();
    let ordered = dependency_order(tasks);
    let headers = [
        "step", "role", "phase", "agent", "attempt", "duration", "commit", "after", "message",
    ];
    let mut rows = Vec::with_capacity(ordered.len() + 1);
    let status = project.status.clone().unwrap_or_default();
    rows.push(vec![
        format!("◆ {name}"),
        String::new(),
        status
            .phase
            .map_or_else(|| "-".to_owned(), |p| format!("{p:?}")),
        String::new(),
        String::new(),
        format::duration(
            status.start_time.as_ref(),
            status.completion_time.as_ref(),
            now,
        ),
        String::new(),
        String::new(),
        status.progress.clone().unwrap_or_default(),
    ]);
    for (i, (level, task)) in ordered.iter().enumerate() {
        let branch = if i + 1 == ordered.len() {
            "└─"
        } else {
            "├─"
        };
        let s = task.status.clone().unwrap_or_default();
        let after: Vec<&str> = task
            .spec
            .depends_on
            .iter()
            .map(|d| short_name(&name, d))
            .collect();
        rows.push(vec![
            format!(
                "{branch}{}{} {}",
                "  ".repeat(*level),
                mark(s.phase),
                short_name(&name, &task.name_any())
            ),
            task.spec.role.to_string(),
            s.phase
                .map_or_else(|| "Pending".to_owned(), |p| format!("{p:?}")),
            s.agent.clone().unwrap_or_else(|| "-".to_owned()),
            s.attempt.to_string(),
            format::duration(s.start_time.as_ref(), s.completion_time.as_ref(), now),
            s.result
                .as_ref()
                .and_then(|r| r.commit.as_deref())
                .map_or_else(|| "-".to_owned(), |c| format::short_commit(c).to_owned()),
            if after.is_empty() {
                "-".to_owned()
            } else {
                after.join(",")
            },
            s.message
                .as_deref()
                .map(|m| format::line(m, 60))
                .unwrap_or_default(),
        ]);
    }
    format::table(&headers, &rows)
}

/// The whole `describe project` page.
pub fn describe_project(
    project: &Project,
    tasks: &[Task],
    events: &[Event],
    now: Timestamp,
) -> String {
    let mut out = String::new();
    let status = project.status.clone().unwrap_or_default();
    let spec = &project.spec;
    let mut field = |k: &str, v: String| {
        let _ = writeln!(out, "{:<14}{v}", format!("{k}:"));
    };
    field("Name", project.name_any());
    field("Namespace", project.namespace().unwrap_or_default());
    field(
        "Phase",
        status
            .phase
            .map_or_else(|| "-".to_owned(), |p| format!("{p:?}")),
    );
    field(
        "Repository",
        format!("{} ({})", spec.repository.url, spec.repository.branch),
    );
    field("Brief", format::line(&spec.description, 100));
    if let Some(verify) = &spec.verify {
        field("Verify", verify.command.clone());
    }
    out.push_str("\nTasks:\n");
    out.push_str(&indent(&tree(project, tasks, now)));
    out.push_str("\nUsage:\n");
    let usage = &status.usage;
    let mut usage_lines = vec![
        format!(
            "Tokens:       {} in, {} out",
            format::tokens(usage.input_tokens),
            format::tokens(usage.output_tokens)
        ),
        format!("Cost:         {}", format::cost(usage.cost_usd)),
        format!(
            "Local ratio:  {} (target {}; {} local, {} cloud calls)",
            status
                .local_ratio
                .map_or_else(|| "-".to_owned(), format::percent),
            format::percent(spec.models.target_local_ratio),
            usage.local_requests,
            usage.cloud_requests
        ),
    ];
    if let Some(budget) = &spec.models.budget {
        let mut parts = Vec::new();
        if let Some(tokens) = budget.tokens {
            parts.push(format!(
                "{} of {} tokens",
                format::tokens(usage.input_tokens + usage.output_tokens),
                format::tokens(tokens)
            ));
        }
        if let Some(usd) = budget.usd {
            parts.push(format!(
                "{} of {}",
                format::cost(usage.cost_usd),
                format::cost(usd)
            ));
        }
        usage_lines.push(format!("Budget:       {}", parts.join(", ")));
    }
    for line in usage_lines {
        let _ = writeln!(out, "  {line}");
    }
    out.push_str("\nConditions:\n");
    let rows: Vec<Vec<String>> = status
        .conditions
        .iter()
        .map(|c| {
            vec![
                c.type_.clone(),
                c.status.clone(),
                c.reason.clone(),
                format::line(&c.message, 80),
            ]
        })
        .collect();
    if rows.is_empty() {
        out.push_str("  <none>\n");
    } else {
        out.push_str(&indent(&format::table(
            &["type", "status", "reason", "message"],
            &rows,
        )));
    }
    out.push_str("\nEvents:\n");
    out.push_str(&indent(&events_table(events, now)));
    out
}

/// Events, oldest first, the last [`EVENTS_SHOWN`] of them, as `kubectl describe`
/// shows them.
pub fn events_table(events: &[Event], now: Timestamp) -> String {
    if events.is_empty() {
        return "<none>\n".to_owned();
    }
    let mut sorted: Vec<&Event> = events.iter().collect();
    sorted.sort_by_key(|e| event_time(e));
    let start = sorted.len().saturating_sub(EVENTS_SHOWN);
    let rows: Vec<Vec<String>> = sorted[start..]
        .iter()
        .map(|e| {
            vec![
                e.type_.clone().unwrap_or_default(),
                e.reason.clone().unwrap_or_default(),
                event_time(e).map_or_else(
                    || "-".to_owned(),
                    |t| format::span(now.as_second() - t.as_second()),
                ),
                format!(
                    "{}/{}",
                    e.involved_object
                        .kind
                        .clone()
                        .unwrap_or_default()
                        .to_lowercase(),
                    e.involved_object.name.clone().unwrap_or_default()
                ),
                format::line(e.message.as_deref().unwrap_or_default(), 80),
            ]
        })
        .collect();
    format::table(&["type", "reason", "age", "object", "message"], &rows)
}

/// When an Event last happened.
pub fn event_time(e: &Event) -> Option<Timestamp> {
    e.last_timestamp
        .as_ref()
        .map(|t| t.0)
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.first_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

fn indent(text: &str) -> String {
    text.lines().fold(String::new(), |mut out, l| {
        let _ = writeln!(out, "  {l}");
        out
    })
}

/// Tasks grouped by their level in the DAG.
pub fn levels(tasks: &[Task]) -> BTreeMap<usize, Vec<&Task>> {
    let mut levels: BTreeMap<usize, Vec<&Task>> = BTreeMap::new();
    for (level, task) in dependency_order(tasks) {
        levels.entry(level).or_default().push(task);
    }
    levels
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::fixtures::{NOW, project, task};

    fn names(ordered: &[(usize, &Task)]) -> Vec<(usize, String)> {
        ordered.iter().map(|(l, t)| (*l, t.name_any())).collect()
    }

    #[test]
    fn a_fan_out_puts_every_branch_after_its_root() {
        let tasks = vec![
            task(
                "shop-ui",
                "frontend",
                &["shop-design"],
                "Running",
                Some("aphrodite-0"),
            ),
            task(
                "shop-api",
                "backend",
                &["shop-design"],
                "Succeeded",
                Some("apollo-0"),
            ),
            task("shop-design", "backend", &[], "Succeeded", Some("apollo-0")),
        ];
        assert_eq!(
            names(&dependency_order(&tasks)),
            [
                (0, "shop-design".to_owned()),
                (1, "shop-api".to_owned()),
                (1, "shop-ui".to_owned())
            ]
        );
    }

    #[test]
    fn a_diamond_lists_its_join_once_after_both_branches() {
        let tasks = vec![
            task("shop-tests", "qa", &["shop-api", "shop-ui"], "", None),
            task("shop-ui", "frontend", &["shop-design"], "Succeeded", None),
            task("shop-api", "backend", &["shop-design"], "Succeeded", None),
            task("shop-design", "backend", &[], "Succeeded", None),
        ];
        let now: Timestamp = NOW.parse().unwrap();
        let text = tree(&project("shop", "Running"), &tasks, now);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6, "{text}");
        assert!(lines[0].starts_with("STEP "), "{text}");
        assert!(lines[1].starts_with("◆ shop "), "{text}");
        assert!(lines[2].starts_with("├─✔ design "), "{text}");
        assert!(lines[3].starts_with("├─  ✔ api "), "{text}");
        assert!(lines[4].starts_with("├─  ✔ ui "), "{text}");
        assert!(lines[5].starts_with("└─    ○ tests "), "{text}");
        assert!(lines[5].ends_with(" api,ui"), "{text}");
        let step_width = lines[0].find("ROLE").unwrap();
        for name in ["design", "api", "ui", "tests"] {
            let steps = lines
                .iter()
                .filter(|l| {
                    let step: String = l.chars().take(step_width).collect();
                    step.trim_end().ends_with(&format!(" {name}"))
                })
                .count();
            assert_eq!(steps, 1, "{name} once: {text}");
        }
    }

    #[test]
    fn failed_and_skipped_branches_show_their_marks_attempts_and_messages() {
        let tasks = vec![
            task("shop-api", "backend", &[], "Failed", Some("apollo-0")),
            task("shop-docs", "backend", &["shop-api"], "Skipped", None),
            task("shop-ui", "frontend", &[], "Succeeded", Some("aphrodite-0")),
        ];
        let now: Timestamp = NOW.parse().unwrap();
        let text = tree(&project("shop", "Failed"), &tasks, now);
        let api = text.lines().find(|l| l.contains(" api ")).unwrap();
        assert!(
            api.contains("✖ api") && api.contains("Failed") && api.contains("apollo-0"),
            "{api}"
        );
        assert!(api.contains("shop-api is Failed"), "{api}");
        assert!(api.contains(" 2 "), "attempt 2: {api}");
        let ui = text.lines().find(|l| l.contains(" ui ")).unwrap();
        assert!(ui.contains("3f2a1c9") && ui.contains("1m30s"), "{ui}");
        let docs = text.lines().last().unwrap();
        assert!(docs.starts_with("└─  ⊘ docs"), "{docs}");
    }

    #[test]
    fn a_cycle_does_not_lose_its_tasks() {
        let tasks = vec![
            task("shop-a", "backend", &["shop-b"], "", None),
            task("shop-b", "backend", &["shop-a"], "", None),
            task("shop-c", "backend", &[], "", None),
        ];
        assert_eq!(dependency_order(&tasks).len(), 3);
    }

    #[test]
    fn describe_shows_usage_against_the_target_and_conditions() {
        let now: Timestamp = NOW.parse().unwrap();
        let tasks = vec![task(
            "shop-api",
            "backend",
            &[],
            "Running",
            Some("apollo-0"),
        )];
        let text = describe_project(&project("shop", "Running"), &tasks, &[], now);
        assert!(
            text.contains("Local ratio:  67% (target 80%; 2 local, 1 cloud calls)"),
            "{text}"
        );
        assert!(text.contains("Tokens:       1.2k in, 300 out"), "{text}");
        assert!(text.contains("Ready   False    TasksRunning"), "{text}");
        assert!(text.contains("Events:\n  <none>"), "{text}");
    }
}
