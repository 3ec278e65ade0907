//! `aios get`'s tables: the columns that answer the usual questions about each kind.
//! Pure: objects and the time in, rows out.

use aios_crds::{Agent, ModelProvider, Project, Task};
use jiff::Timestamp;
use kube::ResourceExt;

use super::format;

/// A kind `aios get` lists.
pub trait Columns {
    /// The column headers; `wide` adds the `-o wide` ones.
    fn headers(wide: bool) -> Vec<&'static str>;
    /// This object's cells, in the order of [`Columns::headers`].
    fn cells(&self, wide: bool, now: Timestamp) -> Vec<String>;
}

/// The rows of `objects` as a table; `namespaces` adds a first NAMESPACE column (`-A`).
pub fn render<K: Columns + ResourceExt>(
    objects: &[K],
    wide: bool,
    namespaces: bool,
    now: Timestamp,
) -> String {
    let mut headers = K::headers(wide);
    if namespaces {
        headers.insert(0, "namespace");
    }
    let rows: Vec<Vec<String>> = objects
        .iter()
        .map(|o| {
            let mut row = o.cells(wide, now);
            if namespaces {
                row.insert(0, o.namespace().unwrap_or_default());
            }
            row
        })
        .collect();
    format::table(&headers, &rows)
}

fn phase_text<T: std::fmt::Debug>(phase: Option<T>) -> String {
    phase.map_or_else(|| "-".to_owned(), |p| format!("{p:?}"))
}

impl Columns for Project {
    fn headers(wide: bool) -> Vec<&'static str> {
        let mut h = vec![
            "name", "phase", "progress", "running", "duration", "cost", "age",
        ];
        if wide {
            h.extend(["tokens", "local", "target", "repository"]);
        }
        h
    }

    fn cells(&self, wide: bool, now: Timestamp) -> Vec<String> {
        let status = self.status.clone().unwrap_or_default();
        let mut row = vec![
            self.name_any(),
            phase_text(status.phase),
            status.progress.clone().unwrap_or_else(|| "-".to_owned()),
            status.tasks.running.to_string(),
            format::duration(
                status.start_time.as_ref(),
                status.completion_time.as_ref(),
                now,
            ),
            format::cost(status.usage.cost_usd),
            format::age(self.metadata.creation_timestamp.as_ref(), now),
        ];
        if wide {
            row.extend([
                format::tokens(status.usage.input_tokens + status.usage.output_tokens),
                status
                    .local_ratio
                    .map_or_else(|| "-".to_owned(), format::percent),
                format::percent(self.spec.models.target_local_ratio),
                self.spec.repository.url.clone(),
            ]);
        }
        row
    }
}

impl Columns for Task {
    fn headers(wide: bool) -> Vec<&'static str> {
        let mut h = vec![
            "name", "project", "role", "phase", "agent", "attempt", "duration", "age",
        ];
        if wide {
            h.extend(["tokens", "cost", "model", "commit", "message"]);
        }
        h
    }

    fn cells(&self, wide: bool, now: Timestamp) -> Vec<String> {
        let status = self.status.clone().unwrap_or_default();
        let mut row = vec![
            self.name_any(),
            self.spec.project.clone(),
            self.spec.role.to_string(),
            phase_text(status.phase),
            status.agent.clone().unwrap_or_else(|| "-".to_owned()),
            status.attempt.to_string(),
            format::duration(
                status.start_time.as_ref(),
                status.completion_time.as_ref(),
                now,
            ),
            format::age(self.metadata.creation_timestamp.as_ref(), now),
        ];
        if wide {
            let usage = status.usage.clone().unwrap_or_default();
            row.extend([
                format::tokens(usage.input_tokens + usage.output_tokens),
                format::cost(usage.cost_usd),
                usage.model.clone().unwrap_or_else(|| "-".to_owned()),
                status
                    .result
                    .as_ref()
                    .and_then(|r| r.commit.as_deref())
                    .map_or_else(|| "-".to_owned(), |c| format::short_commit(c).to_owned()),
                status
                    .message
                    .as_deref()
                    .map_or_else(|| "-".to_owned(), |m| format::line(m, 60)),
            ]);
        }
        row
    }
}

impl Columns for Agent {
    fn headers(wide: bool) -> Vec<&'static str> {
        let mut h = vec![
            "name", "role", "persona", "ready", "queued", "running", "age",
        ];
        if wide {
            h.extend(["min", "max", "concurrency"]);
        }
        h
    }

    fn cells(&self, wide: bool, now: Timestamp) -> Vec<String> {
        let status = self.status.clone().unwrap_or_default();
        let mut row = vec![
            self.name_any(),
            self.spec.role.to_string(),
            self.spec.persona.name.clone(),
            format!("{}/{}", status.ready_replicas, status.desired_replicas),
            status.queued_tasks.to_string(),
            status.running_tasks.to_string(),
            format::age(self.metadata.creation_timestamp.as_ref(), now),
        ];
        if wide {
            row.extend([
                self.spec.scaling.min_replicas.to_string(),
                self.spec.scaling.max_replicas.to_string(),
                self.spec.concurrency.to_string(),
            ]);
        }
        row
    }
}

impl Columns for ModelProvider {
    fn headers(wide: bool) -> Vec<&'static str> {
        let mut h = vec!["name", "type", "tier", "ready", "models", "age"];
        if wide {
            h.extend(["endpoint", "reason"]);
        }
        h
    }

    fn cells(&self, wide: bool, now: Timestamp) -> Vec<String> {
        let status = self.status.clone().unwrap_or_default();
        let models: Vec<&str> = self.spec.models.iter().map(|m| m.name.as_str()).collect();
        let mut row = vec![
            self.name_any(),
            format!("{:?}", self.spec.provider_type),
            format!("{:?}", self.spec.tier),
            status.ready.to_string(),
            format::line(&models.join(","), 40),
            format::age(self.metadata.creation_timestamp.as_ref(), now),
        ];
        if wide {
            row.extend([
                status.endpoint.clone().unwrap_or_else(|| "-".to_owned()),
                status.reason.clone().unwrap_or_else(|| "-".to_owned()),
            ]);
        }
        row
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::fixtures::{NOW, project, task};

    #[test]
    fn task_rows_show_phase_agent_attempt_and_a_running_duration() {
        let now: Timestamp = NOW.parse().unwrap();
        let running = task("shop-api", "backend", &[], "Running", Some("apollo-0"));
        let waiting = task("shop-ui", "frontend", &["api"], "", None);
        let text = render(&[running, waiting], false, false, now);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "NAME       PROJECT   ROLE       PHASE     AGENT      ATTEMPT   DURATION   AGE"
        );
        assert_eq!(
            lines[1],
            "shop-api   shop      backend    Running   apollo-0   1         2m0s       5m0s"
        );
        assert_eq!(
            lines[2],
            "shop-ui    shop      frontend   -         -          0         -          5m0s"
        );
    }

    #[test]
    fn wide_and_all_namespaces_add_their_columns() {
        let now: Timestamp = NOW.parse().unwrap();
        let text = render(&[project("shop", "Running")], true, true, now);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0]
                .starts_with("NAMESPACE   NAME   PHASE     PROGRESS   RUNNING   DURATION   COST"),
            "{}",
            lines[0]
        );
        assert!(
            lines[0].ends_with("TOKENS   LOCAL   TARGET   REPOSITORY"),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].starts_with("team-a      shop   Running   1/3        1"),
            "{}",
            lines[1]
        );
        assert!(lines[1].contains("$0.42"), "{}", lines[1]);
        assert!(
            lines[1].ends_with("1.5k     67%     80%      https://git.example/shop.git"),
            "{}",
            lines[1]
        );
    }
}
