//! Model providers on the real API server: a served provider's model server objects,
//! and probes of a provider's model list against a local server speaking Ollama's API.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::time::Duration;

use aios_e2e::repo_root;
use support::Harness;
use wiremock::{Mock, MockServer, ResponseTemplate, matchers};

const TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn a_provider_that_lists_its_models_is_ready_and_unready_once_it_stops() {
    let mut h = Harness::new("probe");
    h.start_operator("op-1");
    // A server of its own (not from wiremock's pool), so dropping it stops it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ollama = MockServer::builder().listener(listener).start().await;
    Mock::given(matchers::method("GET"))
        .and(matchers::path("/api/tags"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "models": [{"name": "smollm2:135m", "size": 1}, {"name": "all-minilm:l6-v2", "size": 2}]
        })))
        .mount(&ollama)
        .await;
    h.apply(&format!(
        "apiVersion: aios.dev/v1alpha1\nkind: ModelProvider\nmetadata:\n  name: local\nspec:\n  type: Ollama\n  tier: Local\n  models:\n    - name: smollm2:135m\n      maxComplexity: Low\n  endpoint:\n    url: {}\n",
        ollama.uri()
    ));
    h.wait_for_value("modelprovider/local", "{.status.ready}", "true", TIMEOUT)
        .await;
    assert_eq!(
        h.jsonpath("modelprovider/local", "{.status.availableModels}"),
        r#"["smollm2:135m","all-minilm:l6-v2"]"#
    );
    assert_eq!(
        h.jsonpath("modelprovider/local", "{.status.endpoint}"),
        ollama.uri()
    );
    let list = h.jsonpath("configmap/aios-providers", "{.data.providers\\.json}");
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list[0]["name"], "local");
    assert_eq!(list[0]["models"][0]["maxComplexity"], "Low");

    // A second provider joins the list, and leaves it when deleted.
    h.apply(&format!(
        "apiVersion: aios.dev/v1alpha1\nkind: ModelProvider\nmetadata:\n  name: spare\nspec:\n  type: Ollama\n  tier: Local\n  models:\n    - name: smollm2:135m\n  endpoint:\n    url: {}\n",
        ollama.uri()
    ));
    let names = |h: &Harness| -> Vec<String> {
        let list = h.jsonpath("configmap/aios-providers", "{.data.providers\\.json}");
        let list: Vec<serde_json::Value> = serde_json::from_str(&list).unwrap_or_default();
        list.iter()
            .map(|p| p["name"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let start = std::time::Instant::now();
    while names(&h) != ["local", "spare"] {
        assert!(
            start.elapsed() < TIMEOUT,
            "spare never joined: {:?}",
            names(&h)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    h.kubectl(&["delete", "modelprovider", "spare"]);
    while names(&h) != ["local"] {
        assert!(
            start.elapsed() < TIMEOUT,
            "spare never left: {:?}",
            names(&h)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    drop(ollama);
    h.wait_for_value("modelprovider/local", "{.status.ready}", "false", TIMEOUT)
        .await;
    let message = h.jsonpath(
        "modelprovider/local",
        "{.status.conditions[?(@.type==\"Ready\")].message}",
    );
    assert!(
        message.contains("/api/tags"),
        "the error says what failed: {message}"
    );
    h.wait_for_value(
        "configmap/aios-providers",
        "{.data.providers\\.json}",
        "[]",
        TIMEOUT,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_served_provider_becomes_a_model_cache_a_server_and_a_service() {
    let mut h = Harness::new("serve");
    h.start_operator("op-1");
    let example = repo_root().join("manifests/examples/modelprovider-ollama.yaml");
    h.kubectl(&["apply", "-f", example.to_str().unwrap()]);
    h.wait_for_value(
        "deployment/aios-model-ollama",
        "{.spec.replicas}",
        "1",
        TIMEOUT,
    )
    .await;
    assert_eq!(
        h.jsonpath(
            "pvc/aios-model-ollama-cache",
            "{.spec.resources.requests.storage}"
        ),
        "30Gi"
    );
    assert_eq!(
        h.jsonpath("service/aios-model-ollama", "{.spec.ports[0].port}"),
        "11434"
    );
    assert_eq!(
        h.jsonpath(
            "deployment/aios-model-ollama",
            "{.spec.template.spec.initContainers[0].name}"
        ),
        "pull-models"
    );
    assert_eq!(
        h.jsonpath(
            "deployment/aios-model-ollama",
            "{.spec.template.spec.containers[0].resources.limits.nvidia\\.com/gpu}"
        ),
        "1"
    );
    for child in [
        "deployment/aios-model-ollama",
        "pvc/aios-model-ollama-cache",
        "service/aios-model-ollama",
    ] {
        assert_eq!(
            h.jsonpath(child, "{.metadata.ownerReferences[0].kind}"),
            "ModelProvider",
            "{child}"
        );
    }
    // No kubelet runs here, so the server never answers: the provider is not ready,
    // and says why.
    h.wait_for_value(
        "modelprovider/ollama",
        "{.status.reason}",
        "Unreachable",
        TIMEOUT,
    )
    .await;
    assert_eq!(
        h.jsonpath("modelprovider/ollama", "{.status.endpoint}"),
        format!("http://aios-model-ollama.{}.svc:11434", h.ns)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cache_change_the_api_server_refuses_is_a_condition_and_the_rest_is_applied() {
    let mut h = Harness::new("cache");
    h.start_operator("op-1");
    let example = repo_root().join("manifests/examples/modelprovider-ollama.yaml");
    h.kubectl(&["apply", "-f", example.to_str().unwrap()]);
    h.wait_for_value(
        "modelprovider/ollama",
        "{.status.conditions[?(@.type==\"CacheVolume\")].status}",
        "True",
        TIMEOUT,
    )
    .await;
    // A change the API server refuses on the claim (it cannot shrink) is reported, and
    // the rest of the change is still applied.
    h.kubectl(&[
        "patch",
        "modelprovider",
        "ollama",
        "--type=merge",
        "-p",
        r#"{"spec":{"serve":{"image":"registry.local/ollama:0.17.4","cache":{"size":"10Gi"}}}}"#,
    ]);
    h.wait_for_value(
        "deployment/aios-model-ollama",
        "{.spec.template.spec.containers[0].image}",
        "registry.local/ollama:0.17.4",
        TIMEOUT,
    )
    .await;
    h.wait_for_value(
        "modelprovider/ollama",
        "{.status.conditions[?(@.type==\"CacheVolume\")].reason}",
        "CacheVolumeNotUpdated",
        TIMEOUT,
    )
    .await;
    let message = h.jsonpath(
        "modelprovider/ollama",
        "{.status.conditions[?(@.type==\"CacheVolume\")].message}",
    );
    assert!(
        message.contains("aios-model-ollama-cache") && message.contains("cannot be changed"),
        "{message}"
    );
    assert_eq!(
        h.jsonpath(
            "pvc/aios-model-ollama-cache",
            "{.spec.resources.requests.storage}"
        ),
        "30Gi",
        "the claim keeps its size"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_wait_until_a_ready_provider_can_take_them() {
    use support::{FakeAgents, Reply, done};
    let mut h = Harness::new("gated");
    h.apply_agents(&["backend"]);
    h.start_operator("op-1");
    let agents = FakeAgents::start(&h, &["backend"], Duration::from_millis(10), |d| {
        Reply::Succeed(done(d))
    })
    .await;
    h.apply("apiVersion: aios.dev/v1alpha1\nkind: Project\nmetadata:\n  name: hard\nspec:\n  description: Hard work\n  repository:\n    url: file:///tmp/hard.git\n  tasks:\n    - name: design\n      title: Design it all\n      role: backend\n      complexity: High\n");
    h.wait_for_value(
        "task/hard-design",
        "{.status.message}",
        "waiting for a ready model provider that can take a High task",
        TIMEOUT,
    )
    .await;
    assert!(
        agents.received().is_empty(),
        "nothing is dispatched without a provider"
    );

    // A provider whose model takes High tasks arrives: the task runs.
    h.serve_models().await;
    h.wait_for_phase("hard", "Succeeded", TIMEOUT).await;
    assert_eq!(agents.order(), ["hard-design"]);
}

/// The attacker's ModelProvider manifest: an endpoint on `port` naming the Secret
/// `team-db`; `change` alters its metadata, so applying it again is an update.
fn thief(port: u16, change: u32) -> String {
    format!(
        "apiVersion: aios.dev/v1alpha1\nkind: ModelProvider\nmetadata:\n  name: thief\n  annotations:\n    change: \"{change}\"\nspec:\n  type: OpenAI\n  tier: Cloud\n  models:\n    - name: gpt-4o\n  endpoint:\n    url: https://127.0.0.1:{port}\n    credentialsRef:\n      name: team-db\n      key: password\n"
    )
}

/// Waits until `check` holds; fails naming `what` after [`TIMEOUT`].
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !check() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The attacker's ModelProvider: an endpoint of their choosing naming a Secret of the
/// namespace. A TCP listener records every connection the operator makes to it.
#[tokio::test(flavor = "multi_thread")]
async fn a_provider_naming_a_secret_not_labelled_for_it_never_gets_the_secret_sent() {
    let mut h = Harness::new("credential");
    let capture = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    capture.set_nonblocking(true).unwrap();
    let port = capture.local_addr().unwrap().port();
    h.kubectl(&[
        "create",
        "secret",
        "generic",
        "team-db",
        "--from-literal=password=DATABASE-PASSWORD",
    ]);
    h.start_operator("op-1");
    h.apply(&thief(port, 0));
    h.wait_for_value(
        "modelprovider/thief",
        "{.status.conditions[?(@.type==\"Ready\")].reason}",
        "CredentialRefused",
        TIMEOUT,
    )
    .await;
    let message = h.jsonpath(
        "modelprovider/thief",
        "{.status.conditions[?(@.type==\"Ready\")].message}",
    );
    assert!(
        message.contains("\"team-db\"")
            && message.contains("127.0.0.1")
            && message.contains("aios.dev/credential-type=model"),
        "{message}"
    );
    assert!(!message.contains("DATABASE-PASSWORD"));
    assert_eq!(
        h.jsonpath("modelprovider/thief", "{.status.ready}"),
        "false"
    );
    // An Agent of the namespace: its pods carry no refused credential.
    h.apply_agents(&["backend"]);
    let deployments = |h: &Harness| h.kubectl(&["get", "deployments", "-o", "yaml"]);
    eventually("an agent Deployment", || {
        deployments(&h).contains("AIOS_AMQP_URL")
    })
    .await;
    let rendered = deployments(&h);
    assert!(
        !rendered.contains("team-db"),
        "a refused Secret reached agent pods: {rendered}"
    );
    assert!(
        capture.accept().is_err(),
        "the operator connected to the attacker's endpoint"
    );

    // Labelled for models but for another host: still refused, still no connection.
    h.kubectl(&[
        "label",
        "secret",
        "team-db",
        "aios.dev/credential-type=model",
    ]);
    h.kubectl(&[
        "annotate",
        "secret",
        "team-db",
        "aios.dev/credential-hosts=api.openai.com",
    ]);
    h.apply(&thief(port, 1));
    eventually("a refusal naming the host", || {
        h.jsonpath(
            "modelprovider/thief",
            "{.status.conditions[?(@.type==\"Ready\")].message}",
        )
        .contains("may not be sent to 127.0.0.1")
    })
    .await;
    assert!(capture.accept().is_err(), "no connection to another host");

    // Once its owner lists the host, the operator uses it: it connects (the TLS
    // handshake then fails on this plain listener, so the provider is Unreachable).
    h.kubectl(&[
        "annotate",
        "--overwrite",
        "secret",
        "team-db",
        "aios.dev/credential-hosts=api.openai.com,127.0.0.1",
    ]);
    h.apply(&thief(port, 2));
    h.wait_for_value(
        "modelprovider/thief",
        "{.status.conditions[?(@.type==\"Ready\")].reason}",
        "Unreachable",
        TIMEOUT,
    )
    .await;
    eventually("a connection from the operator", || {
        capture.accept().is_ok()
    })
    .await;
    // Agent pods never carry it: an attempt asks the operator for it (see
    // tests/credentials.rs).
    assert!(
        !deployments(&h).contains("team-db"),
        "a credential reached the agent pods"
    );
}

/// Pod Security `restricted` enforced on the namespace: the ReplicaSets of every
/// Deployment the operator renders (an Agent's pool, a served model) create their pods,
/// which admission checks when they are created (no kubelet needed to see that).
#[tokio::test(flavor = "multi_thread")]
async fn every_deployment_the_operator_renders_gets_its_pods_past_restricted_admission() {
    let mut h = Harness::new("restricted");
    h.enforce_restricted();
    h.start_operator("op-1");
    h.apply("apiVersion: aios.dev/v1alpha1\nkind: Agent\nmetadata:\n  name: backend\nspec:\n  role: backend\n  persona:\n    name: backend\n  scaling:\n    minReplicas: 1\n    maxReplicas: 2\n");
    let example = repo_root().join("manifests/examples/modelprovider-ollama.yaml");
    h.kubectl(&["apply", "-f", example.to_str().unwrap()]);
    let deployments: Vec<String> = {
        let deadline = std::time::Instant::now() + TIMEOUT;
        loop {
            let names = h.kubectl(&["get", "deployments", "-o", "name"]);
            let names: Vec<String> = names.lines().map(str::to_owned).collect();
            if names.len() >= 2 {
                break names;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "deployments: {names:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    // Each Deployment's pods exist: admission let them through.
    for deployment in &deployments {
        let selector = h.jsonpath(deployment, "{.spec.selector.matchLabels}");
        let labels: std::collections::BTreeMap<String, String> =
            serde_json::from_str(&selector).unwrap();
        let selector = labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let deadline = std::time::Instant::now() + TIMEOUT;
        loop {
            let pods = h.kubectl(&["get", "pods", "-l", &selector, "-o", "name"]);
            if !pods.trim().is_empty() {
                break;
            }
            let events = h.kubectl(&["get", "events", "--field-selector", "reason=FailedCreate"]);
            assert!(
                !events.contains("violates PodSecurity"),
                "{deployment}'s pods were refused: {events}"
            );
            assert!(
                std::time::Instant::now() < deadline,
                "{deployment} made no pod: {events}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}
