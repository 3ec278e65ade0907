//! Every resource and message survives a JSON round trip; defaults are what the docs
//! say; messages from a newer agent or operator are read, not refused.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use aios_crds::{
    Agent, ModelProvider, Project, Task,
    bus::{
        DecodeError, DependencyResult, DispatchedTask, MemoryNote, Message, ModelHints, ObjectRef,
        SCHEMA_VERSION, TaskCancel, TaskDispatch, TaskEvent, TaskEventKind, TaskOutput,
    },
    common::{Complexity, Tier, Usage},
    project::{Repository, RoutingMode},
    task::TaskResult,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::json;

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: &T) {
    let json = serde_json::to_string(value).unwrap();
    let back: T = serde_json::from_str(&json).unwrap();
    assert_eq!(&back, value, "round trip changed the value: {json}");
}

fn project() -> Project {
    serde_json::from_value(json!({
        "apiVersion": "aios.dev/v1alpha1", "kind": "Project",
        "metadata": {"name": "shop", "namespace": "team-a"},
        "spec": {
            "description": "An online shop",
            "repository": {"url": "file:///srv/git/shop.git"},
            "tasks": [
                {"name": "api", "title": "Build the API", "role": "backend"},
                {"name": "tests", "title": "Test it", "role": "qa", "dependsOn": ["api"], "complexity": "Low"}
            ]
        },
        "status": {"phase": "Running", "progress": "1/2", "tasks": {"total": 2, "succeeded": 1, "running": 1},
                   "usage": {"inputTokens": 1200, "outputTokens": 300, "costUsd": 0.02, "localRequests": 9, "cloudRequests": 1}}
    }))
    .unwrap()
}

#[test]
fn project_defaults_match_the_documented_ones() {
    let p = project();
    assert_eq!(p.spec.repository.branch, "main");
    assert_eq!(p.spec.policy.max_parallel_tasks, 4);
    assert!(p.spec.policy.fail_fast);
    assert_eq!(p.spec.policy.task_defaults.max_retries, 2);
    assert_eq!(p.spec.policy.task_defaults.backoff.duration_seconds, 10);
    assert_eq!(p.spec.policy.task_defaults.backoff.factor, 2);
    assert_eq!(
        p.spec.policy.task_defaults.backoff.max_duration_seconds,
        300
    );
    assert_eq!(p.spec.policy.task_defaults.timeout_seconds, 1800);
    assert_eq!(p.spec.models.routing, RoutingMode::LocalFirst);
    assert!((p.spec.models.target_local_ratio - 0.85).abs() < f64::EPSILON);
    assert!(p.spec.models.budget.is_none());
    assert!(!p.spec.suspend);
    let api = p.spec_task("api").unwrap();
    assert_eq!(api.complexity, Complexity::Medium);
    assert!(api.depends_on.is_empty());
    assert_eq!(api.priority, 0);
    round_trip(&p);
}

#[test]
fn crd_schema_defaults_agree_with_serde_defaults() {
    // The API server fills defaults from the schema; the operator reads with serde.
    // They must agree, or an object means different things to each.
    let crd = aios_crds::generate::crds().remove(0);
    let schema = serde_json::to_value(crd.spec.versions[0].schema.clone().unwrap()).unwrap();
    let spec = &schema["openAPIV3Schema"]["properties"]["spec"]["properties"];
    let serde_policy = serde_json::to_value(aios_crds::project::Policy::default()).unwrap();
    assert_eq!(spec["policy"]["default"], serde_policy);
    let serde_models = serde_json::to_value(aios_crds::project::ModelPolicy::default()).unwrap();
    assert_eq!(spec["models"]["default"], serde_models);
}

#[test]
fn task_agent_and_model_provider_round_trip_with_defaults() {
    let task: Task = serde_json::from_value(json!({
        "apiVersion": "aios.dev/v1alpha1", "kind": "Task",
        "metadata": {"name": "shop-api", "namespace": "team-a"},
        "spec": {"project": "shop", "title": "Build the API", "role": "backend"},
        "status": {"phase": "Succeeded", "attempt": 2, "agent": "apollo-7d9f",
                   "result": {"summary": "done", "files": ["src/main.rs"], "commit": "abc123"}}
    }))
    .unwrap();
    assert_eq!(task.spec.complexity, Complexity::Medium);
    assert!(
        task.spec.max_retries.is_none(),
        "unset retries inherit the project's default"
    );
    round_trip(&task);

    let agent: Agent = serde_json::from_value(json!({
        "apiVersion": "aios.dev/v1alpha1", "kind": "Agent",
        "metadata": {"name": "apollo"},
        "spec": {"role": "backend", "persona": {"name": "Apollo"}}
    }))
    .unwrap();
    assert_eq!(agent.spec.concurrency, 1);
    assert_eq!(agent.spec.scaling.min_replicas, 0);
    assert_eq!(agent.spec.scaling.max_replicas, 3);
    assert_eq!(agent.spec.scaling.tasks_per_replica, 1);
    assert_eq!(agent.spec.scaling.scale_down_delay_seconds, 300);
    assert_eq!(agent.spec.termination_grace_period_seconds, 600);
    round_trip(&agent);

    let mp: ModelProvider = serde_json::from_value(json!({
        "apiVersion": "aios.dev/v1alpha1", "kind": "ModelProvider",
        "metadata": {"name": "ollama"},
        "spec": {"type": "Ollama", "tier": "Local", "models": [{"name": "qwen2.5-coder:7b"}], "serve": {}}
    }))
    .unwrap();
    let serve = mp.spec.serve.as_ref().unwrap();
    assert_eq!(serve.replicas, 1);
    assert_eq!(serve.cache.size.0, "20Gi");
    assert_eq!(mp.spec.models[0].max_complexity, Complexity::Medium);
    assert!(!mp.spec.models[0].embeddings);
    round_trip(&mp);
}

fn object(name: &str) -> ObjectRef {
    ObjectRef {
        namespace: "team-a".into(),
        name: name.into(),
        uid: format!("uid-{name}"),
    }
}

fn dispatch() -> TaskDispatch {
    TaskDispatch {
        schema_version: SCHEMA_VERSION,
        project: object("shop"),
        task: object("shop-tests"),
        attempt: 2,
        brief: "An online shop".into(),
        repository: Repository {
            url: "file:///srv/git/shop.git".into(),
            branch: "main".into(),
            secret_ref: None,
        },
        spec: DispatchedTask {
            role: "qa".into(),
            title: "Test it".into(),
            description: "Write tests".into(),
            complexity: Complexity::Low,
            acceptance_criteria: vec!["tests pass".into()],
            planning: false,
        },
        dependencies: vec![std::sync::Arc::new(DependencyResult {
            task: "shop-api".into(),
            title: "Build the API".into(),
            role: "backend".into(),
            summary: "REST API in src/main.rs".into(),
            files: vec!["src/main.rs".into()],
            commit: Some("abc123".into()),
        })],
        models: ModelHints {
            routing: RoutingMode::LocalFirst,
            target_local_ratio: Some(0.85),
            ..ModelHints::default()
        },
        available_roles: vec![],
        plan_feedback: vec![],
        deadline: Some("2026-11-24T12:00:00Z".parse().unwrap()),
        heartbeat_interval_seconds: 15,
        paths: aios_crds::project::PathPolicy::default(),
        recall_across_projects: false,
        token: String::new(),
    }
}

#[test]
fn task_dispatch_round_trips_and_names_its_attempt() {
    let d = dispatch();
    let decoded = TaskDispatch::decode(&d.encode().unwrap()).unwrap();
    assert_eq!(decoded, d);
    assert_eq!(d.attempt_id().message_id(), "uid-shop-tests-2");
}

#[test]
fn task_events_of_every_kind_round_trip_with_their_routing_keys() {
    let kinds = [
        (TaskEventKind::Started, "task.started"),
        (TaskEventKind::Heartbeat, "task.heartbeat"),
        (
            TaskEventKind::Succeeded {
                output: TaskResult {
                    summary: "tests written".into(),
                    files: vec!["tests/api.rs".into()],
                    ..TaskResult::default()
                }
                .into(),
                usage: Usage {
                    provider: Some("ollama".into()),
                    tier: Some(Tier::Local),
                    input_tokens: 800,
                    output_tokens: 200,
                    local_requests: 2,
                    ..Usage::default()
                },
            },
            "task.succeeded",
        ),
        (
            TaskEventKind::Failed {
                reason: "InvalidOutput".into(),
                message: "the model's answer was not JSON".into(),
                retryable: true,
                usage: Usage::default(),
            },
            "task.failed",
        ),
    ];
    for (kind, key) in kinds {
        let event = TaskEvent {
            schema_version: SCHEMA_VERSION,
            project: object("shop"),
            task: object("shop-tests"),
            attempt: 1,
            agent: "athena-5c4b".into(),
            token: "c2lnbmVk".into(),
            at: "2026-11-24T10:00:00Z".parse().unwrap(),
            kind,
        };
        assert_eq!(event.routing_key(), key);
        assert_eq!(TaskEvent::decode(&event.encode().unwrap()).unwrap(), event);
    }
    let cancel = TaskCancel {
        schema_version: SCHEMA_VERSION,
        task: object("shop-tests"),
        attempt: 3,
        reason: "Task deleted".into(),
    };
    assert_eq!(
        TaskCancel::decode(&cancel.encode().unwrap()).unwrap(),
        cancel
    );
    for task in [Some("program".to_owned()), None] {
        let note = MemoryNote {
            schema_version: SCHEMA_VERSION,
            project: object("shop"),
            task,
            kind: MemoryNote::VERIFICATION.into(),
            text: "Verification of task program failed.".into(),
        };
        assert_eq!(MemoryNote::decode(&note.encode().unwrap()).unwrap(), note);
    }
    let newer =
        json!({"schemaVersion": 2, "project": object("shop"), "kind": "verification", "text": "x"});
    assert!(matches!(
        MemoryNote::decode(newer.to_string().as_bytes()),
        Err(DecodeError::UnsupportedVersion { found: 2, .. })
    ));
}

#[test]
fn a_newer_writer_with_extra_fields_and_event_types_is_understood() {
    let mut value = serde_json::to_value(dispatch()).unwrap();
    value["priorityClass"] = json!("urgent");
    value["spec"]["estimatedMinutes"] = json!(12);
    let decoded = TaskDispatch::decode(value.to_string().as_bytes()).unwrap();
    assert_eq!(decoded, dispatch());

    let event = json!({
        "schemaVersion": 1, "project": object("shop"), "task": object("shop-tests"), "attempt": 1,
        "agent": "athena-5c4b", "at": "2026-11-24T10:00:00Z",
        "type": "progress", "percent": 40
    });
    let decoded = TaskEvent::decode(event.to_string().as_bytes()).unwrap();
    assert_eq!(decoded.kind, TaskEventKind::Unknown);

    let succeeded = json!({
        "schemaVersion": 1, "project": object("shop"), "task": object("shop-tests"), "attempt": 4,
        "agent": "athena-5c4b", "at": "2026-11-24T10:00:00Z", "traceId": "t-1",
        "type": "succeeded", "result": {"summary": "ok", "reviewScore": 9}
    });
    let decoded = TaskEvent::decode(succeeded.to_string().as_bytes()).unwrap();
    assert!(
        matches!(decoded.kind, TaskEventKind::Succeeded { ref output, .. } if output.result.summary == "ok")
    );
}

#[test]
fn a_plan_travels_as_a_field_of_the_result() {
    let succeeded = json!({
        "schemaVersion": 1, "project": object("shop"), "task": object("shop-plan"), "attempt": 1,
        "agent": "hera-1", "at": "2026-11-24T10:00:00Z", "type": "succeeded",
        "result": {
            "summary": "planned", "commit": "abc",
            "plan": [{"name": "api", "title": "API", "role": "backend"}]
        }
    });
    let decoded = TaskEvent::decode(succeeded.to_string().as_bytes()).unwrap();
    let TaskEventKind::Succeeded { output, .. } = decoded.kind else {
        panic!("{decoded:?}")
    };
    assert_eq!(output.result.summary, "planned");
    assert_eq!(output.plan.unwrap()[0].name, "api");
    let wire = serde_json::to_value(TaskOutput {
        result: TaskResult::default(),
        plan: Some(vec![]),
    })
    .unwrap();
    assert_eq!(wire["plan"], json!([]), "the plan is a field of the result");
}

#[test]
fn another_schema_version_or_garbage_is_refused_with_a_reason() {
    let mut value = serde_json::to_value(dispatch()).unwrap();
    value["schemaVersion"] = json!(2);
    let err = TaskDispatch::decode(value.to_string().as_bytes()).unwrap_err();
    assert!(
        matches!(err, DecodeError::UnsupportedVersion { found: 2, .. }),
        "{err}"
    );
    assert_eq!(err.category(), "unsupported_version");

    let err = TaskEvent::decode(b"{not json").unwrap_err();
    assert_eq!(err.category(), "malformed");
    assert!(err.to_string().contains("TaskEvent"), "{err}");
}
