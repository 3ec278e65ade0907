//! The router against local HTTP fixtures speaking each provider's real wire format,
//! and the budget counters against the shared Redis.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{sync::Arc, time::Duration};

use aios_crds::{
    Complexity, ProviderType, Tier, Usage,
    bus::ModelHints,
    common::SecretKeyRef,
    model_provider::{ModelSpec, ProviderEntry},
    project::Budget,
};
use aios_models::{
    budget::BudgetCounter,
    llm::{
        ChatMessage, ChatRequest, Llm, LlmError, NoRecorder, Role,
        router::{Providers, RetryPolicy, Router},
    },
};
use serde_json::{Value, json};
use wiremock::{Mock, MockServer, ResponseTemplate, matchers};

fn entry(
    name: &str,
    kind: ProviderType,
    tier: Tier,
    priority: i32,
    endpoint: &str,
) -> ProviderEntry {
    ProviderEntry {
        name: name.to_owned(),
        provider_type: kind,
        tier,
        priority,
        endpoint: endpoint.to_owned(),
        models: vec![
            ModelSpec {
                name: format!("{name}-chat"),
                max_complexity: Complexity::High,
                context_window: None,
                input_price_per_1k: 0.003,
                output_price_per_1k: 0.015,
                embeddings: false,
            },
            ModelSpec {
                name: format!("{name}-embed"),
                max_complexity: Complexity::Low,
                context_window: None,
                input_price_per_1k: 0.0001,
                output_price_per_1k: 0.0,
                embeddings: true,
            },
        ],
        credentials_ref: None,
    }
}

fn fast_policy() -> RetryPolicy {
    RetryPolicy {
        attempts: 2,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        max_retry_after: Duration::from_secs(5),
        timeout: Duration::from_millis(800),
        breaker_threshold: 2,
        breaker_cool_down: Duration::from_millis(400),
    }
}

fn router(providers: Vec<ProviderEntry>, policy: RetryPolicy) -> Router {
    Router::new(
        Providers::Fixed(providers),
        policy,
        None,
        Arc::new(NoRecorder),
    )
    .unwrap()
    .with_env(Arc::new(|name| match name {
        "OPENAI_API_KEY" => Some("sk-openai".to_owned()),
        "ANTHROPIC_API_KEY" => Some("sk-anthropic".to_owned()),
        "AIOS_SECRET_VLLM_KEYS_TOKEN" => Some("sk-vllm".to_owned()),
        _ => None,
    }))
}

/// A router over one provider, with the fast test policy.
fn single(name: &str, kind: ProviderType, tier: Tier, endpoint: &str) -> Router {
    router(vec![entry(name, kind, tier, 1, endpoint)], fast_policy())
}

fn request() -> ChatRequest {
    ChatRequest {
        messages: vec![
            ChatMessage::new(Role::System, "You are Apollo."),
            ChatMessage::new(Role::User, "Write it."),
        ],
        schema: json!({"type": "object", "properties": {"summary": {"type": "string"}}, "required": ["summary"]}),
        schema_name: "result".to_owned(),
        complexity: Complexity::Medium,
        hints: ModelHints::default(),
        project: "tests/shop".to_owned(),
    }
}

fn ollama_ok(content: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "model": "m", "message": {"role": "assistant", "content": content},
        "done": true, "prompt_eval_count": 120, "eval_count": 45
    }))
}

/// Answers every POST to `path` with `response`.
async fn answer_posts(server: &MockServer, path: &str, response: ResponseTemplate) {
    Mock::given(matchers::method("POST"))
        .and(matchers::path(path))
        .respond_with(response)
        .mount(server)
        .await;
}

/// Answers every POST, whatever its path, with `response`.
async fn answer_all_posts(server: &MockServer, response: ResponseTemplate) {
    Mock::given(matchers::method("POST"))
        .respond_with(response)
        .mount(server)
        .await;
}

async fn server() -> MockServer {
    MockServer::builder()
        .listener(std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .start()
        .await
}

async fn body_of(server: &MockServer, index: usize) -> (Value, wiremock::Request) {
    let requests = server.received_requests().await.unwrap();
    let request = requests[index].clone();
    (serde_json::from_slice(&request.body).unwrap(), request)
}

#[tokio::test]
async fn ollama_gets_the_schema_in_format_and_its_counts_are_read() {
    let fixture = server().await;
    answer_posts(&fixture, "/api/chat", ollama_ok(r#"{"summary":"ok"}"#)).await;
    let router = single("ollama", ProviderType::Ollama, Tier::Local, &fixture.uri());
    let answer = router.chat(&request()).await.unwrap();
    assert_eq!(answer.content, r#"{"summary":"ok"}"#);
    assert_eq!(
        (answer.call.input_tokens, answer.call.output_tokens),
        (120, 45)
    );
    assert_eq!(answer.call.tier, Tier::Local);
    let (body, sent) = body_of(&fixture, 0).await;
    assert_eq!(body["model"], "ollama-chat");
    assert_eq!(body["stream"], false);
    assert_eq!(body["format"], request().schema);
    assert_eq!(
        body["messages"][0],
        json!({"role": "system", "content": "You are Apollo."})
    );
    assert_eq!(
        body["options"]["num_ctx"], 8192,
        "Ollama is told the context to allocate, not left to truncate"
    );
    assert!(
        sent.headers.get("authorization").is_none(),
        "no key, no header"
    );
    assert_eq!(
        router.context_window(Complexity::Medium, &ModelHints::default()),
        aios_models::llm::DEFAULT_CONTEXT_WINDOW,
        "a model declaring no window gets the default"
    );
}

#[tokio::test]
async fn openai_gets_a_bearer_key_and_a_json_schema_response_format() {
    let fixture = server().await;
    Mock::given(matchers::method("POST"))
        .and(matchers::path("/v1/chat/completions"))
        .and(matchers::header("authorization", "Bearer sk-openai"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": "chatcmpl-1", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "{\"summary\":\"hi\"}"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1000, "completion_tokens": 2000, "total_tokens": 3000}
        })))
        .mount(&fixture)
        .await;
    let router = single("openai", ProviderType::OpenAI, Tier::Cloud, &fixture.uri());
    let answer = router.chat(&request()).await.unwrap();
    assert_eq!(answer.content, r#"{"summary":"hi"}"#);
    assert!(
        (answer.call.cost_usd - (0.003 + 0.030)).abs() < 1e-12,
        "{}",
        answer.call.cost_usd
    );
    let (body, _) = body_of(&fixture, 0).await;
    assert_eq!(body["response_format"]["type"], "json_schema");
    assert_eq!(body["response_format"]["json_schema"]["name"], "result");
    assert_eq!(
        body["response_format"]["json_schema"]["schema"],
        request().schema
    );
}

#[tokio::test]
async fn an_openai_compatible_server_gets_the_key_of_its_secret() {
    let fixture = server().await;
    Mock::given(matchers::method("POST"))
        .and(matchers::path("/v1/chat/completions"))
        .and(matchers::header("authorization", "Bearer sk-vllm"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "choices": [{"message": {"content": "{}"}}], "usage": {"prompt_tokens": 3, "completion_tokens": 4}
        })))
        .mount(&fixture)
        .await;
    let mut vllm = entry(
        "vllm",
        ProviderType::OpenAICompatible,
        Tier::Local,
        1,
        &format!("{}/", fixture.uri()),
    );
    vllm.credentials_ref = Some(SecretKeyRef {
        name: "vllm-keys".to_owned(),
        key: "token".to_owned(),
    });
    let answer = router(vec![vllm], fast_policy())
        .chat(&request())
        .await
        .unwrap();
    assert_eq!(
        (answer.call.input_tokens, answer.call.output_tokens),
        (3, 4)
    );
}

#[tokio::test]
async fn anthropic_gets_its_headers_and_a_forced_tool_whose_input_is_the_answer() {
    let fixture = server().await;
    Mock::given(matchers::method("POST"))
        .and(matchers::path("/v1/messages"))
        .and(matchers::header("x-api-key", "sk-anthropic"))
        .and(matchers::header("anthropic-version", "2023-06-01"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "result", "input": {"summary": "done"}}],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 50, "output_tokens": 7}
        })))
        .mount(&fixture)
        .await;
    let router = single(
        "claude",
        ProviderType::Anthropic,
        Tier::Cloud,
        &fixture.uri(),
    );
    let answer = router.chat(&request()).await.unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&answer.content).unwrap(),
        json!({"summary": "done"})
    );
    assert_eq!(
        (answer.call.input_tokens, answer.call.output_tokens),
        (50, 7)
    );
    let (body, _) = body_of(&fixture, 0).await;
    assert_eq!(body["system"], "You are Apollo.");
    assert_eq!(
        body["messages"],
        json!([{"role": "user", "content": "Write it."}]),
        "the system prompt is not a message"
    );
    assert_eq!(body["tools"][0]["input_schema"], request().schema);
    assert_eq!(
        body["tool_choice"],
        json!({"type": "tool", "name": "result"})
    );
    assert!(body["max_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn embeddings_come_from_the_local_provider_with_an_embeddings_model() {
    let ollama = server().await;
    answer_posts(
        &ollama,
        "/api/embed",
        ResponseTemplate::new(200).set_body_json(
            json!({"model": "m", "embeddings": [[0.1, 0.2], [0.3, 0.4]], "prompt_eval_count": 9}),
        ),
    )
    .await;
    let openai = server().await;
    answer_posts(&openai, "/v1/embeddings", ResponseTemplate::new(200).set_body_json(json!({
            "object": "list",
            "data": [{"object": "embedding", "index": 1, "embedding": [0.0, 1.0]}, {"object": "embedding", "index": 0, "embedding": [1.0, 0.0]}],
            "usage": {"prompt_tokens": 4, "total_tokens": 4}
        }))).await;
    let texts = vec!["a".to_owned(), "b".to_owned()];
    let both = router(
        vec![
            entry(
                "openai",
                ProviderType::OpenAI,
                Tier::Cloud,
                9,
                &openai.uri(),
            ),
            entry(
                "ollama",
                ProviderType::Ollama,
                Tier::Local,
                1,
                &ollama.uri(),
            ),
        ],
        fast_policy(),
    );
    assert_eq!(
        both.embed_texts(&texts).await.unwrap(),
        vec![vec![0.1, 0.2], vec![0.3, 0.4]]
    );
    let (body, _) = body_of(&ollama, 0).await;
    assert_eq!(body, json!({"model": "ollama-embed", "input": ["a", "b"]}));
    let cloud = single("openai", ProviderType::OpenAI, Tier::Cloud, &openai.uri());
    assert_eq!(
        cloud.embed_texts(&texts).await.unwrap(),
        vec![vec![1.0, 0.0], vec![0.0, 1.0]],
        "in input order"
    );
    let none = single(
        "claude",
        ProviderType::Anthropic,
        Tier::Cloud,
        &openai.uri(),
    );
    assert!(matches!(
        none.embed_texts(&texts).await,
        Err(LlmError::NoEmbeddings)
    ));
}

#[tokio::test]
async fn a_429_is_retried_after_its_retry_after_and_a_long_one_falls_back() {
    let fixture = server().await;
    Mock::given(matchers::method("POST"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "1")
                .set_body_string("slow down"),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&fixture)
        .await;
    answer_all_posts(&fixture, ollama_ok("{}")).await;
    let router1 = single("ollama", ProviderType::Ollama, Tier::Local, &fixture.uri());
    let started = std::time::Instant::now();
    router1.chat(&request()).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited for Retry-After: {:?}",
        started.elapsed()
    );

    let busy = server().await;
    answer_all_posts(
        &busy,
        ResponseTemplate::new(429).insert_header("retry-after", "3600"),
    )
    .await;
    let backup = server().await;
    answer_all_posts(&backup, ollama_ok("{}")).await;
    let router2 = router(
        vec![
            entry("busy", ProviderType::Ollama, Tier::Local, 2, &busy.uri()),
            entry(
                "backup",
                ProviderType::Ollama,
                Tier::Local,
                1,
                &backup.uri(),
            ),
        ],
        fast_policy(),
    );
    let started = std::time::Instant::now();
    let answer = router2.chat(&request()).await.unwrap();
    assert_eq!(answer.call.provider, "backup");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "an hour-long Retry-After is not waited for"
    );
    assert_eq!(busy.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn server_errors_timeouts_and_refused_connections_fall_back_down_the_chain() {
    let broken = server().await;
    answer_all_posts(
        &broken,
        ResponseTemplate::new(503).set_body_string("overloaded"),
    )
    .await;
    let slow = server().await;
    answer_all_posts(&slow, ollama_ok("{}").set_delay(Duration::from_secs(3))).await;
    let refused = format!(
        "http://127.0.0.1:{}",
        aios_e2e::process::free_port().unwrap()
    );
    let good = server().await;
    answer_all_posts(&good, ollama_ok(r#"{"summary":"fell back"}"#)).await;
    let router = router(
        vec![
            entry(
                "broken",
                ProviderType::Ollama,
                Tier::Local,
                4,
                &broken.uri(),
            ),
            entry("slow", ProviderType::Ollama, Tier::Local, 3, &slow.uri()),
            entry("refused", ProviderType::Ollama, Tier::Local, 2, &refused),
            entry("good", ProviderType::Ollama, Tier::Local, 1, &good.uri()),
        ],
        fast_policy(),
    );
    let answer = router.chat(&request()).await.unwrap();
    assert_eq!(answer.call.provider, "good");
    assert_eq!(
        broken.received_requests().await.unwrap().len(),
        2,
        "a 5xx is retried once"
    );
}

#[tokio::test]
async fn an_undecodable_answer_is_retried_counted_by_the_breaker_then_falls_back() {
    let garbled = server().await;
    answer_all_posts(
        &garbled,
        ResponseTemplate::new(200)
            .insert_header("content-type", "application/json")
            .set_body_string("<html>502 Bad Gateway</html>"),
    )
    .await;
    let good = server().await;
    answer_all_posts(&good, ollama_ok(r#"{"summary":"fell back"}"#)).await;
    let router = router(
        vec![
            entry(
                "garbled",
                ProviderType::Ollama,
                Tier::Local,
                2,
                &garbled.uri(),
            ),
            entry("good", ProviderType::Ollama, Tier::Local, 1, &good.uri()),
        ],
        fast_policy(),
    );
    let answer = router.chat(&request()).await.unwrap();
    assert_eq!(answer.call.provider, "good");
    assert_eq!(answer.content, r#"{"summary":"fell back"}"#);
    assert_eq!(
        garbled.received_requests().await.unwrap().len(),
        2,
        "retried once, as the policy's two attempts say"
    );
    router.chat(&request()).await.unwrap();
    assert_eq!(garbled.received_requests().await.unwrap().len(), 4);
    assert_eq!(router.chat(&request()).await.unwrap().call.provider, "good");
    assert_eq!(
        garbled.received_requests().await.unwrap().len(),
        4,
        "two failures in a row opened its breaker: skipped"
    );
}

#[tokio::test]
async fn when_every_provider_fails_the_error_says_what_each_answered() {
    let broken = server().await;
    answer_all_posts(&broken, ResponseTemplate::new(500).set_body_string("kaput")).await;
    let picky = server().await;
    answer_all_posts(
        &picky,
        ResponseTemplate::new(400).set_body_string("bad schema"),
    )
    .await;
    let router = router(
        vec![
            entry(
                "broken",
                ProviderType::Ollama,
                Tier::Local,
                2,
                &broken.uri(),
            ),
            entry("picky", ProviderType::OpenAI, Tier::Cloud, 1, &picky.uri()),
        ],
        fast_policy(),
    );
    let err = router.chat(&request()).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("broken (broken-chat): HTTP 500: kaput"),
        "{text}"
    );
    assert!(
        text.contains("picky (picky-chat): HTTP 400: bad schema"),
        "{text}"
    );
    assert_eq!(err.reason(), "ModelUnavailable");
    assert!(err.retryable());
    assert_eq!(
        picky.received_requests().await.unwrap().len(),
        1,
        "a 400 is not retried"
    );
}

#[tokio::test]
async fn the_breaker_skips_a_dead_provider_and_lets_it_back_after_the_cool_down() {
    let flaky = server().await;
    let good = server().await;
    answer_all_posts(&good, ollama_ok("{}")).await;
    let dead = Mock::given(matchers::method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .mount_as_scoped(&flaky)
        .await;
    let policy = RetryPolicy {
        attempts: 1,
        ..fast_policy()
    };
    let router = router(
        vec![
            entry("flaky", ProviderType::Ollama, Tier::Local, 2, &flaky.uri()),
            entry("good", ProviderType::Ollama, Tier::Local, 1, &good.uri()),
        ],
        policy,
    );
    for _ in 0..2 {
        assert_eq!(router.chat(&request()).await.unwrap().call.provider, "good");
    }
    assert_eq!(dead.received_requests().await.len(), 2);
    assert_eq!(router.chat(&request()).await.unwrap().call.provider, "good");
    assert_eq!(
        dead.received_requests().await.len(),
        2,
        "open: the dead provider is skipped"
    );
    drop(dead);
    answer_all_posts(&flaky, ollama_ok("{}")).await;
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(
        router.chat(&request()).await.unwrap().call.provider,
        "flaky",
        "the trial after the cool-down closes it"
    );
    assert_eq!(
        router.chat(&request()).await.unwrap().call.provider,
        "flaky"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_sharing_one_redis_stop_at_the_budget() {
    let env = aios_e2e::shared();
    let client = redis::Client::open(env.redis_url.clone().unwrap()).unwrap();
    let fixture = server().await;
    // Slow enough that the two clients' calls overlap.
    answer_all_posts(
        &fixture,
        ollama_ok("{}").set_delay(Duration::from_millis(50)),
    )
    .await;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let project = format!("tests/budget-{nanos}");
    let mut request = request();
    request.project.clone_from(&project);
    request.hints.budget = Some(Budget {
        tokens: Some(1000),
        usd: None,
    });
    let mut clients = Vec::new();
    for _ in 0..2 {
        let redis = redis::aio::ConnectionManager::new(client.clone())
            .await
            .unwrap();
        let router = Router::new(
            Providers::Fixed(vec![entry(
                "ollama",
                ProviderType::Ollama,
                Tier::Local,
                1,
                &fixture.uri(),
            )]),
            fast_policy(),
            Some(BudgetCounter::new(redis)),
            Arc::new(NoRecorder),
        )
        .unwrap();
        let request = request.clone();
        clients.push(tokio::spawn(async move {
            let mut usage = Usage::default();
            loop {
                match router.chat(&request).await {
                    Ok(answer) => answer.call.add_to(&mut usage),
                    Err(err @ LlmError::BudgetExceeded(_)) => {
                        assert!(!err.retryable());
                        assert_eq!(err.reason(), "BudgetExceeded");
                        return usage;
                    }
                    Err(other) => panic!("{other}"),
                }
            }
        }));
    }
    let mut spent = 0;
    for client in clients {
        let usage = client.await.unwrap();
        assert!(
            usage.local_requests > 0,
            "both clients got calls in before the budget ran out"
        );
        spent += usage.total_tokens();
    }
    let redis = redis::aio::ConnectionManager::new(client).await.unwrap();
    let (counted, _) = BudgetCounter::new(redis).used(&project).await.unwrap();
    assert_eq!(counted, spent, "the counter holds exactly what was used");
    assert!(
        (1000..1000 + 2 * 165).contains(&spent),
        "stopped at the budget, overshooting by at most the calls in flight: {spent}"
    );
}
