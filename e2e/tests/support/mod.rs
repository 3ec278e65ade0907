//! What the end-to-end tests share: a model fixture speaking Ollama's API.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)] // shared by several test binaries

use serde_json::json;
use wiremock::{Mock, MockServer, ResponseTemplate, matchers};

/// `target/<profile>`, where the workspace's binaries are built next to the tests.
pub fn bin_dir() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(std::path::Path::parent)
        .unwrap()
        .to_path_buf()
}

/// The local model server a run uses when the fixture at `url` plays the model.
pub fn fixture_server(url: &str) -> aios_e2e::local::ModelServer {
    aios_e2e::local::ModelServer {
        name: "local".to_owned(),
        provider_type: "Ollama".to_owned(),
        tier: "Local".to_owned(),
        priority: 1,
        url: url.to_owned(),
        chat_model: "fixture".to_owned(),
        embed_model: None,
        image: None,
    }
}

/// An Ollama chat answer carrying `content` as the model's message.
pub fn answer(content: &serde_json::Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "model": "fixture", "message": {"role": "assistant", "content": content.to_string()},
        "done": true, "prompt_eval_count": 200, "eval_count": 80
    }))
}

/// A model server speaking Ollama's API on `ip`, answering as Hera (a two-task plan),
/// Apollo (hello.py) and Athena (its test): deterministic, for the main job.
pub async fn model_fixture(ip: &str) -> MockServer {
    model_fixture_with(ip, std::time::Duration::ZERO).await
}

/// [`model_fixture`], with Apollo taking `apollo_delay` to answer (time to do something
/// to the agent that waits for it).
pub async fn model_fixture_with(ip: &str, apollo_delay: std::time::Duration) -> MockServer {
    let server = MockServer::builder()
        .listener(std::net::TcpListener::bind((ip, 0)).unwrap())
        .start()
        .await;
    Mock::given(matchers::method("GET"))
        .and(matchers::path("/api/tags"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"models": [{"name": "fixture"}]})),
        )
        .mount(&server)
        .await;
    let chat = |persona: &str| {
        Mock::given(matchers::method("POST"))
            .and(matchers::path("/api/chat"))
            .and(matchers::body_string_contains(format!("You are {persona}")))
    };
    chat("Hera")
        .respond_with(answer(&json!({"tasks": [
            {"name": "program", "title": "Write hello.py", "role": "backend", "description": "greet(name)", "dependsOn": [], "complexity": "Low"},
            {"name": "test", "title": "Test hello.py", "role": "qa", "description": "pytest", "dependsOn": ["program"], "complexity": "Low"}
        ]})))
        .mount(&server)
        .await;
    chat("Apollo")
        .respond_with(apollo_answer().set_delay(apollo_delay))
        .mount(&server)
        .await;
    chat("Athena")
        .respond_with(answer(&json!({"summary": "Tested greet.", "files": [{"path": "test_hello.py", "content": "from hello import greet\n\ndef test_greet():\n    assert greet('Ada') == 'Hello, Ada!'\n"}]})))
        .mount(&server)
        .await;
    server
}

/// Apollo's answer: hello.py.
fn apollo_answer() -> ResponseTemplate {
    answer(
        &json!({"summary": "Wrote greet.", "files": [{"path": "hello.py", "content": "def greet(name):\n    return 'Hello, ' + name + '!'\n"}]}),
    )
}

/// From now on, Apollo takes `delay` to answer on `server` (a fixture made by
/// [`model_fixture_with`]). The same server, so agents already running see the change at
/// once: a new fixture would reach agent pods only when the kubelet next syncs the
/// providers ConfigMap they mount.
pub async fn slow_apollo(server: &MockServer, delay: std::time::Duration) {
    Mock::given(matchers::method("POST"))
        .and(matchers::path("/api/chat"))
        .and(matchers::body_string_contains("You are Apollo"))
        .respond_with(apollo_answer().set_delay(delay))
        .with_priority(1)
        .mount(server)
        .await;
}

/// Serves an embeddings model, `fixture-embed`, on `server`: every text embeds to the
/// same vector. What agents store in memory shows in the requests `server` received.
pub async fn serve_embeddings(server: &MockServer) {
    Mock::given(matchers::method("POST"))
        .and(matchers::path("/api/embed"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"model": "fixture-embed", "embeddings": [[0.6, 0.8, 0.0, 0.0]], "prompt_eval_count": 4}),
        ))
        .mount(server)
        .await;
}

/// The texts `server` was asked to embed, in order.
pub async fn embedded_texts(server: &MockServer) -> Vec<String> {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.url.path() == "/api/embed")
        .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
        .flat_map(|body| match &body["input"] {
            serde_json::Value::String(one) => vec![one.clone()],
            serde_json::Value::Array(many) => many
                .iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        })
        .collect()
}

/// A model server like [`model_fixture`] whose Apollo delivers a bug the test catches
/// (`greet` says "Hi"); when `fixes`, Apollo's answer to a fix task (its prompt carries
/// the failing verification) is the right program.
pub async fn buggy_fixture(ip: &str, fixes: bool) -> MockServer {
    let server = model_fixture(ip).await;
    let program = |greeting: &str| {
        answer(
            &json!({"summary": format!("Wrote greet ({greeting})."), "files": [{"path": "hello.py", "content": format!("def greet(name):\n    return '{greeting}, ' + name + '!'\n")}]}),
        )
    };
    Mock::given(matchers::method("POST"))
        .and(matchers::path("/api/chat"))
        .and(matchers::body_string_contains("You are Apollo"))
        .respond_with(program("Hi"))
        .with_priority(2)
        .mount(&server)
        .await;
    if fixes {
        Mock::given(matchers::method("POST"))
            .and(matchers::path("/api/chat"))
            .and(matchers::body_string_contains("You are Apollo"))
            .and(matchers::body_string_contains("verification command"))
            .respond_with(program("Hello"))
            .with_priority(1)
            .mount(&server)
            .await;
    }
    server
}
