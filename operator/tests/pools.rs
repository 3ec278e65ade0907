//! Agent pools on the real API server: the objects an Agent becomes, and replicas that
//! follow the role's queue.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::time::{Duration, Instant};

use aios_e2e::repo_root;
use support::Harness;

const TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn example_agents_become_locked_down_deployments_that_go_with_them() {
    let mut h = Harness::new("pools");
    h.start_operator("op-1");
    let agents = repo_root().join("manifests/examples/agents.yaml");
    h.kubectl(&["apply", "-f", agents.to_str().unwrap()]);
    for agent in ["hera", "apollo", "aphrodite", "athena", "hephaestus"] {
        h.wait_for_value(
            &format!("deployment/aios-agent-{agent}"),
            "{.spec.replicas}",
            "0",
            TIMEOUT,
        )
        .await;
    }
    h.wait_for_value("agent/apollo", "{.status.desiredReplicas}", "0", TIMEOUT)
        .await;

    let deployment: serde_json::Value =
        serde_json::from_str(&h.kubectl(&["get", "deployment", "aios-agent-apollo", "-o", "json"]))
            .unwrap();
    assert_eq!(
        deployment["metadata"]["ownerReferences"][0]["kind"],
        "Agent"
    );
    assert_eq!(
        deployment["metadata"]["ownerReferences"][0]["name"],
        "apollo"
    );
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["serviceAccountName"], "aios-agent-apollo");
    let container = &pod["containers"][0];
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["resources"]["requests"]["cpu"], "250m",
        "the Agent's own resources"
    );
    let env = container["env"].as_array().unwrap();
    let role = env.iter().find(|e| e["name"] == "AIOS_ROLE").unwrap();
    assert_eq!(role["value"], "backend");
    assert_eq!(
        h.jsonpath(
            "serviceaccount/aios-agent-apollo",
            "{.automountServiceAccountToken}"
        ),
        "false"
    );
    assert_eq!(
        h.jsonpath("configmap/aios-agent-apollo-persona", "{.data.name}"),
        "Apollo"
    );

    // A change by someone else to a field the operator does not own stays.
    h.kubectl(&[
        "annotate",
        "deployment",
        "aios-agent-apollo",
        "team=payments",
    ]);
    h.kubectl(&[
        "patch",
        "agent",
        "apollo",
        "--type=merge",
        "-p",
        r#"{"spec":{"concurrency":3}}"#,
    ]);
    h.wait_for_value(
        "deployment/aios-agent-apollo",
        "{.spec.template.spec.containers[0].env[?(@.name==\"AIOS_CONCURRENCY\")].value}",
        "3",
        TIMEOUT,
    )
    .await;
    assert_eq!(
        h.jsonpath(
            "deployment/aios-agent-apollo",
            "{.metadata.annotations.team}"
        ),
        "payments"
    );

    // The children go with their Agent (kube-controller-manager's garbage collector).
    h.kubectl(&["delete", "agent", "apollo"]);
    h.kubectl(&[
        "wait",
        "--for=delete",
        "deployment/aios-agent-apollo",
        "configmap/aios-agent-apollo-persona",
        "serviceaccount/aios-agent-apollo",
        "--timeout=60s",
    ]);
}

fn set_phase(h: &Harness, task: &str, phase: &str) {
    h.kubectl(&[
        "patch",
        "task",
        task,
        "--subresource=status",
        "--type=merge",
        "-p",
        &format!(r#"{{"status":{{"phase":"{phase}","attempt":1}}}}"#),
    ]);
}

#[tokio::test(flavor = "multi_thread")]
async fn queued_tasks_scale_a_pool_up_and_it_scales_down_after_the_delay() {
    let mut h = Harness::new("scaling");
    h.start_operator("op-1");
    h.apply("apiVersion: aios.dev/v1alpha1\nkind: Agent\nmetadata:\n  name: apollo\nspec:\n  role: backend\n  persona:\n    name: Apollo\n  scaling:\n    minReplicas: 0\n    maxReplicas: 4\n    tasksPerReplica: 2\n    scaleDownDelaySeconds: 4\n");
    h.wait_for_value(
        "deployment/aios-agent-apollo",
        "{.spec.replicas}",
        "0",
        TIMEOUT,
    )
    .await;
    // Tasks of a Project that does not exist: Hera leaves them alone, so the test sets
    // their phases as an operator would.
    for i in 0..3 {
        h.apply(&format!("apiVersion: aios.dev/v1alpha1\nkind: Task\nmetadata:\n  name: work-{i}\nspec:\n  project: elsewhere\n  title: Work {i}\n  role: backend\n"));
        set_phase(&h, &format!("work-{i}"), "Queued");
    }
    h.wait_for_value(
        "deployment/aios-agent-apollo",
        "{.spec.replicas}",
        "2",
        TIMEOUT,
    )
    .await;
    h.wait_for_value("agent/apollo", "{.status.queuedTasks}", "3", TIMEOUT)
        .await;
    set_phase(&h, "work-0", "Running");
    h.wait_for_value("agent/apollo", "{.status.runningTasks}", "1", TIMEOUT)
        .await;

    for i in 0..3 {
        set_phase(&h, &format!("work-{i}"), "Succeeded");
    }
    let done = Instant::now();
    h.wait_for_value("agent/apollo", "{.status.queuedTasks}", "0", TIMEOUT)
        .await;
    assert_eq!(
        h.jsonpath("deployment/aios-agent-apollo", "{.spec.replicas}"),
        "2",
        "held during the delay"
    );
    h.wait_for_value(
        "deployment/aios-agent-apollo",
        "{.spec.replicas}",
        "0",
        TIMEOUT,
    )
    .await;
    let waited = done.elapsed();
    assert!(
        waited >= Duration::from_secs(3),
        "scaled down after {waited:?}, before the 4s delay"
    );
    assert_eq!(h.jsonpath("agent/apollo", "{.status.desiredReplicas}"), "0");
}
