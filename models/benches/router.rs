//! The router's added latency per call: the same structured request sent through the
//! router and as a direct HTTP POST to the same local Ollama fixture, sequentially,
//! with p50 and p99 of each. `cargo bench -p aios-models --bench router`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::similar_names
)]

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use aios_crds::{
    Complexity, ProviderType, Tier,
    bus::ModelHints,
    model_provider::{ModelSpec, ProviderEntry},
};
use aios_models::llm::{
    ChatMessage, ChatRequest, Llm, NoRecorder, Role,
    router::{Providers, RetryPolicy, Router},
    wire,
};
use serde_json::json;
use wiremock::{Mock, MockServer, ResponseTemplate, matchers};

const CALLS: usize = 2000;

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index]
}

/// The fixture's one chat model.
fn model() -> ModelSpec {
    ModelSpec {
        name: "m".to_owned(),
        max_complexity: Complexity::High,
        context_window: None,
        input_price_per_1k: 0.0,
        output_price_per_1k: 0.0,
        embeddings: false,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    rustls::crypto::ring::default_provider()
        .install_default()
        .unwrap();
    let fixture = MockServer::builder()
        .listener(std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .start()
        .await;
    Mock::given(matchers::method("POST"))
        .and(matchers::path("/api/chat"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "model": "m", "message": {"role": "assistant", "content": "{\"summary\":\"ok\"}"},
            "done": true, "prompt_eval_count": 120, "eval_count": 45
        })))
        .mount(&fixture)
        .await;
    let model = model();
    let provider = ProviderEntry {
        name: "ollama".to_owned(),
        provider_type: ProviderType::Ollama,
        tier: Tier::Local,
        priority: 1,
        endpoint: fixture.uri(),
        models: vec![model.clone()],
        credentials_ref: None,
    };
    let router = Router::new(
        Providers::Fixed(vec![provider]),
        RetryPolicy::default(),
        None,
        Arc::new(NoRecorder),
    )
    .unwrap();
    let request = ChatRequest {
        messages: vec![
            ChatMessage::new(Role::System, "You are Apollo."),
            ChatMessage::new(Role::User, "Write it."),
        ],
        schema: json!({"type": "object", "properties": {"summary": {"type": "string"}}}),
        schema_name: "result".to_owned(),
        complexity: Complexity::Medium,
        hints: ModelHints::default(),
        project: "bench/router".to_owned(),
    };
    let (path, body) = wire::chat_request(ProviderType::Ollama, &model, &request);
    let direct_client = reqwest::Client::new();
    let url = format!("{}{path}", fixture.uri());
    for _ in 0..100 {
        router.chat(&request).await.unwrap();
        direct_client
            .post(&url)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap();
    }
    let (mut routed, mut direct) = (Vec::with_capacity(CALLS), Vec::with_capacity(CALLS));
    for _ in 0..CALLS {
        let started = Instant::now();
        router.chat(&request).await.unwrap();
        routed.push(started.elapsed());
        let started = Instant::now();
        let answer: serde_json::Value = direct_client
            .post(&url)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        wire::parse_chat(ProviderType::Ollama, &answer).unwrap();
        direct.push(started.elapsed());
    }
    let (rp50, rp99) = (percentile(&mut routed, 0.5), percentile(&mut routed, 0.99));
    let (dp50, dp99) = (percentile(&mut direct, 0.5), percentile(&mut direct, 0.99));
    println!("{CALLS} sequential calls to a local Ollama fixture");
    println!(
        "direct HTTP call:   p50 {:>7.1} µs   p99 {:>7.1} µs",
        dp50.as_secs_f64() * 1e6,
        dp99.as_secs_f64() * 1e6
    );
    println!(
        "through the router: p50 {:>7.1} µs   p99 {:>7.1} µs",
        rp50.as_secs_f64() * 1e6,
        rp99.as_secs_f64() * 1e6
    );
    println!(
        "added by the router: p50 {:>+7.1} µs   p99 {:>+7.1} µs",
        (rp50.as_secs_f64() - dp50.as_secs_f64()) * 1e6,
        (rp99.as_secs_f64() - dp99.as_secs_f64()) * 1e6
    );
}
