//! Objects for the views' tests, at a fixed time.

use aios_crds::{Project, Task};
use serde_json::json;

/// The time the views are rendered at.
pub const NOW: &str = "2026-12-05T12:00:00Z";
/// When every fixture was created: five minutes before [`NOW`].
const CREATED: &str = "2026-12-05T11:55:00Z";

/// A Project `name` in `team-a` in `phase`: three tasks, one succeeded and one running.
pub fn project(name: &str, phase: &str) -> Project {
    serde_json::from_value(json!({
        "apiVersion": "aios.dev/v1alpha1", "kind": "Project",
        "metadata": {"name": name, "namespace": "team-a", "uid": format!("uid-{name}"),
                     "creationTimestamp": CREATED},
        "spec": {
            "description": "A small shop",
            "repository": {"url": format!("https://git.example/{name}.git")},
            "models": {"targetLocalRatio": 0.8}
        },
        "status": {
            "phase": phase, "progress": "1/3",
            "tasks": {"total": 3, "succeeded": 1, "running": 1, "pending": 1},
            "usage": {"inputTokens": 1200, "outputTokens": 300, "costUsd": 0.42,
                      "localRequests": 2, "cloudRequests": 1},
            "localRatio": 0.6667,
            "startTime": "2026-12-05T11:56:00Z",
            "conditions": [{"type": "Ready", "status": "False", "reason": "TasksRunning",
                            "message": "1 of 3 tasks running", "lastTransitionTime": CREATED}]
        }
    }))
    .unwrap_or_else(|e| panic!("project fixture: {e}"))
}

/// A Task `name` of Project `shop` for `role`, after `deps`, in `phase` (`""`: no
/// status yet). Running tasks started two minutes before [`NOW`]; finished ones ran a
/// minute and a half and carry a commit.
pub fn task(name: &str, role: &str, deps: &[&str], phase: &str, agent: Option<&str>) -> Task {
    let status = match phase {
        "" => serde_json::Value::Null,
        "Running" => json!({
            "phase": phase, "attempt": 1, "agent": agent,
            "startTime": "2026-12-05T11:58:00Z",
            "usage": {"provider": "ollama", "model": "qwen2.5-coder", "tier": "Local",
                      "inputTokens": 800, "outputTokens": 100, "costUsd": 0.0}
        }),
        "Succeeded" => json!({
            "phase": phase, "attempt": 1, "agent": agent,
            "startTime": "2026-12-05T11:56:00Z", "completionTime": "2026-12-05T11:57:30Z",
            "result": {"summary": format!("Built {name}"), "commit": "3f2a1c9d8e7b6a5f"},
            "message": format!("Built {name}"),
            "usage": {"provider": "claude", "model": "sonnet", "tier": "Cloud",
                      "inputTokens": 400, "outputTokens": 200, "costUsd": 0.42}
        }),
        _ => json!({
            "phase": phase, "attempt": 2, "agent": agent,
            "startTime": "2026-12-05T11:56:00Z", "completionTime": "2026-12-05T11:57:30Z",
            "message": format!("{name} is {phase}")
        }),
    };
    let mut task = json!({
        "apiVersion": "aios.dev/v1alpha1", "kind": "Task",
        "metadata": {"name": name, "namespace": "team-a", "uid": format!("uid-{name}"),
                     "creationTimestamp": CREATED,
                     "labels": {"aios.dev/project": "shop"}},
        "spec": {"project": "shop", "title": format!("The {name} task"), "role": role,
                 "dependsOn": deps}
    });
    if !status.is_null() {
        task["status"] = status;
    }
    serde_json::from_value(task).unwrap_or_else(|e| panic!("task fixture: {e}"))
}
