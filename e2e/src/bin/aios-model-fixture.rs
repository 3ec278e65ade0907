//! `aios-model-fixture`: a scripted model server speaking Ollama's API, for
//! `scripts/run-local.sh --fixture`. It answers the sample Project
//! (`manifests/examples/project-hello.yaml`) deterministically, and shows the loop that
//! makes work real: Apollo's first `hello.py` has a bug (`greet` says "Hi"), Athena's
//! pytest catches it, the verification fails, and Apollo's answer to the fix task (its
//! prompt carries the failing output) is right. Hera's plan: `program` (backend), then
//! `test` (qa).
//!
//! Prints its base URL on standard output once it listens; serves until killed.

use std::net::SocketAddr;

use axum::{
    Router,
    http::header,
    response::IntoResponse,
    routing::{get, post},
};
use clap::Parser;
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(
    name = "aios-model-fixture",
    about = "A scripted model server (Ollama's API)"
)]
struct Args {
    /// Where to listen (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

/// `body` as a JSON response.
fn json_response(body: &Value) -> impl IntoResponse + use<> {
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

/// The model's answer `content` as Ollama's chat response.
fn answer(content: &Value) -> Value {
    json!({
        "model": "fixture",
        "message": {"role": "assistant", "content": content.to_string()},
        "done": true, "prompt_eval_count": 200, "eval_count": 80
    })
}

fn program(greeting: &str, summary: &str) -> Value {
    json!({"summary": summary, "files": [{"path": "hello.py",
        "content": format!("def greet(name):\n    return '{greeting}, ' + name + '!'\n")}]})
}

/// What the persona the request addresses answers.
fn chat(body: &str) -> Value {
    if body.contains("You are Hera") {
        answer(&json!({"tasks": [
            {"name": "program", "title": "Write hello.py", "role": "backend",
             "description": "hello.py with greet(name) returning \"Hello, \" + name + \"!\"",
             "dependsOn": [], "complexity": "Low"},
            {"name": "test", "title": "Test hello.py", "role": "qa",
             "description": "test_hello.py: a pytest test of greet(\"Ada\")",
             "dependsOn": ["program"], "complexity": "Low"}
        ]}))
    } else if body.contains("You are Apollo") && body.contains("verification command") {
        answer(&program(
            "Hello",
            "Fixed greet: it says Hello, as the test expects.",
        ))
    } else if body.contains("You are Apollo") {
        answer(&program("Hi", "Wrote greet."))
    } else if body.contains("You are Athena") {
        answer(
            &json!({"summary": "Tested greet.", "files": [{"path": "test_hello.py",
            "content": "from hello import greet\n\n\ndef test_greet():\n    assert greet('Ada') == 'Hello, Ada!'\n"}]}),
        )
    } else {
        answer(&json!({"summary": "Nothing to do.", "files": []}))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let app = Router::new()
        .route(
            "/api/tags",
            get(|| async { json_response(&json!({"models": [{"name": "fixture"}]})) }),
        )
        .route(
            "/api/chat",
            post(|body: String| async move { json_response(&chat(&body)) }),
        );
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
