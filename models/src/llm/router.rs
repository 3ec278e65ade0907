//! The router: per call, the providers able to take the request in the order the
//! Project's routing mode asks for, each tried with bounded, jittered retries on
//! transient errors (honouring `Retry-After`) behind its circuit breaker, until one
//! answers. The budget is checked before and charged after every call.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use aios_crds::{
    Complexity, ProviderType, Tier,
    model_provider::{ModelSpec, ProviderEntry},
    project::RoutingMode,
};
use futures::future::BoxFuture;
use serde_json::Value;
use tokio::time::Instant;

use super::{
    Call, CallRecorder, ChatRequest, ChatResponse, DEFAULT_CONTEXT_WINDOW, Llm, LlmError,
    breaker::Breaker,
    wire::{self, ChatAnswer},
};
use crate::budget::BudgetCounter;

/// A provider and the model of it chosen for a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// The provider.
    pub provider: ProviderEntry,
    /// The model.
    pub model: ModelSpec,
}

impl Choice {
    /// What the call costs at this model's prices.
    #[allow(clippy::cast_precision_loss)] // token counts stay far below 2^52
    pub fn cost(&self, input_tokens: u64, output_tokens: u64) -> f64 {
        (input_tokens as f64 / 1000.0) * self.model.input_price_per_1k
            + (output_tokens as f64 / 1000.0) * self.model.output_price_per_1k
    }

    fn price(&self) -> f64 {
        self.model.input_price_per_1k + self.model.output_price_per_1k
    }
}

/// The providers that may take a request, best first. Each provider offers its
/// cheapest chat model able to take `complexity` (or the pinned model). Orders:
/// `LocalFirst` by tier (local first), the Agent's preferred providers, priority
/// (higher first), then price; `CostOptimized` by price, then tier, then priority;
/// `QualityFirst` by the model's highest complexity, then priority, cloud before local.
pub fn choose(
    providers: &[ProviderEntry],
    complexity: Complexity,
    hints: &aios_crds::bus::ModelHints,
) -> Vec<Choice> {
    let pin = hints.pin.as_ref();
    let mut choices: Vec<Choice> = providers
        .iter()
        .filter(|p| {
            pin.and_then(|pin| pin.provider.as_deref())
                .is_none_or(|name| name == p.name)
        })
        .filter_map(|p| {
            let model = p
                .models
                .iter()
                .filter(|m| !m.embeddings)
                .filter(|m| match pin.and_then(|pin| pin.model.as_deref()) {
                    // A pinned model is the user's choice, whatever its complexity.
                    Some(name) => m.name == name,
                    None => m.max_complexity >= complexity,
                })
                .min_by(|a, b| {
                    (a.input_price_per_1k + a.output_price_per_1k)
                        .total_cmp(&(b.input_price_per_1k + b.output_price_per_1k))
                })?;
            Some(Choice {
                provider: p.clone(),
                model: model.clone(),
            })
        })
        .collect();
    let preferred = |c: &Choice| {
        hints
            .preferred_providers
            .iter()
            .position(|name| *name == c.provider.name)
            .unwrap_or(usize::MAX)
    };
    let local_first = |c: &Choice| u8::from(c.provider.tier != Tier::Local);
    match hints.routing {
        RoutingMode::LocalFirst => choices.sort_by(|a, b| {
            (local_first(a), preferred(a), -a.provider.priority)
                .cmp(&(local_first(b), preferred(b), -b.provider.priority))
                .then(a.price().total_cmp(&b.price()))
        }),
        RoutingMode::CostOptimized => choices.sort_by(|a, b| {
            a.price().total_cmp(&b.price()).then(
                (local_first(a), -a.provider.priority).cmp(&(local_first(b), -b.provider.priority)),
            )
        }),
        RoutingMode::QualityFirst => choices.sort_by(|a, b| {
            (
                b.model.max_complexity,
                b.provider.priority,
                b.provider.tier == Tier::Cloud,
            )
                .cmp(&(
                    a.model.max_complexity,
                    a.provider.priority,
                    a.provider.tier == Tier::Cloud,
                ))
        }),
    }
    choices
}

/// The context window a request of `complexity` with `hints` must fit: the smallest
/// among the models [`choose`] offers for it, since a fallback may reach any of them. A
/// model whose ModelProvider declares no window counts as [`DEFAULT_CONTEXT_WINDOW`],
/// and so does a request no model can take (it fails before any prompt is sent).
pub fn context_window(
    providers: &[ProviderEntry],
    complexity: Complexity,
    hints: &aios_crds::bus::ModelHints,
) -> u32 {
    choose(providers, complexity, hints)
        .iter()
        .map(|c| {
            c.model
                .context_window
                .and_then(|w| u32::try_from(w).ok())
                .filter(|w| *w > 0)
                .unwrap_or(DEFAULT_CONTEXT_WINDOW)
        })
        .min()
        .unwrap_or(DEFAULT_CONTEXT_WINDOW)
}

/// How hard the router tries one provider.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Calls per provider before moving on, the first included.
    pub attempts: u32,
    /// The first backoff; it doubles per retry, with full jitter.
    pub base_delay: Duration,
    /// The longest backoff.
    pub max_delay: Duration,
    /// The longest `Retry-After` the router waits for; a longer one moves to the next
    /// provider at once.
    pub max_retry_after: Duration,
    /// The bound on one call.
    pub timeout: Duration,
    /// Failures in a row that open a provider's breaker.
    pub breaker_threshold: u32,
    /// How long an open breaker skips its provider.
    pub breaker_cool_down: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 2,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(30),
            timeout: Duration::from_secs(300),
            breaker_threshold: 3,
            breaker_cool_down: Duration::from_secs(30),
        }
    }
}

/// How one call failed.
#[derive(Debug, Clone, PartialEq)]
enum Failure {
    Status {
        status: u16,
        retry_after: Option<Duration>,
        body: String,
    },
    Timeout,
    Connect(String),
    /// A success status with a body that is not JSON: a proxy's error page, a truncated
    /// or garbled answer. The provider is at fault, as with a 5xx.
    Undecodable {
        error: String,
        body: String,
    },
    /// JSON without the answer where the wire format puts it (a refusal, another API's
    /// shape): asking the same provider again would get the same.
    Invalid(String),
}

impl Failure {
    /// 429, 5xx, timeouts, connection errors and undecodable bodies may pass; anything
    /// else will not.
    fn transient(&self) -> bool {
        match self {
            Self::Status { status, .. } => *status == 429 || *status >= 500,
            Self::Timeout | Self::Connect(_) | Self::Undecodable { .. } => true,
            Self::Invalid(_) => false,
        }
    }

    fn category(&self) -> &'static str {
        match self {
            Self::Status { status: 429, .. } => "rate_limited",
            Self::Status { status, .. } if *status >= 500 => "server_error",
            Self::Status { .. } => "client_error",
            Self::Timeout => "timeout",
            Self::Connect(_) => "connect",
            Self::Undecodable { .. } => "undecodable_response",
            Self::Invalid(_) => "invalid_response",
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Status { status, body, .. } => {
                format!("HTTP {status}: {}", excerpt(body))
            }
            Self::Timeout => "timed out".to_owned(),
            Self::Connect(err) => format!("connection failed: {err}"),
            Self::Undecodable { error, body } => {
                format!("undecodable response ({error}): {}", excerpt(body))
            }
            Self::Invalid(err) => format!("invalid response: {err}"),
        }
    }
}

/// The start of a response body, enough to say what answered.
fn excerpt(body: &str) -> String {
    body.chars().take(200).collect()
}

/// A transport error: a timeout, or the connection failing before the body was read.
fn transport_failure(err: &reqwest::Error) -> Failure {
    if err.is_timeout() {
        Failure::Timeout
    } else {
        Failure::Connect(error_chain(err))
    }
}

/// Decodes a success response's body as JSON.
fn decode_body(body: &[u8]) -> Result<Value, Failure> {
    serde_json::from_slice(body).map_err(|err| Failure::Undecodable {
        error: err.to_string(),
        body: String::from_utf8_lossy(body).into_owned(),
    })
}

/// Reads `Retry-After` as seconds or an HTTP date.
fn retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    let wait = at.duration_since(jiff::Timestamp::now());
    Some(Duration::try_from(wait).unwrap_or(Duration::ZERO))
}

/// Where the provider list comes from.
#[derive(Debug)]
pub enum Providers {
    /// A fixed list.
    Fixed(Vec<ProviderEntry>),
    /// The JSON file the operator's ConfigMap is mounted as, re-read when it changes.
    File {
        /// The file.
        path: PathBuf,
        /// The list read last, and the file's modification time then.
        cached: Mutex<Option<(SystemTime, Vec<ProviderEntry>)>>,
    },
}

impl Providers {
    /// The list in a file.
    pub fn file(path: PathBuf) -> Self {
        Self::File {
            path,
            cached: Mutex::new(None),
        }
    }

    fn list(&self) -> Result<Vec<ProviderEntry>, String> {
        match self {
            Self::Fixed(list) => Ok(list.clone()),
            Self::File { path, cached } => {
                let modified = std::fs::metadata(path)
                    .and_then(|m| m.modified())
                    .map_err(|err| format!("reading {}: {err}", path.display()))?;
                let mut cached = cached
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if let Some((at, list)) = cached.as_ref()
                    && *at == modified
                {
                    return Ok(list.clone());
                }
                let text = std::fs::read_to_string(path)
                    .map_err(|err| format!("reading {}: {err}", path.display()))?;
                let list: Vec<ProviderEntry> = serde_json::from_str(&text)
                    .map_err(|err| format!("parsing {}: {err}", path.display()))?;
                *cached = Some((modified, list.clone()));
                Ok(list)
            }
        }
    }
}

/// The environment variable an API key is read from when a provider names no Secret:
/// the usual one for its type.
fn default_key_variable(kind: ProviderType) -> Option<&'static str> {
    match kind {
        ProviderType::OpenAI => Some("OPENAI_API_KEY"),
        ProviderType::Anthropic => Some("ANTHROPIC_API_KEY"),
        ProviderType::Ollama | ProviderType::OpenAICompatible => None,
    }
}

/// Reads environment variables; tests pass their own.
pub type EnvLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// The LLM router.
pub struct Router {
    http: reqwest::Client,
    providers: Providers,
    env: EnvLookup,
    policy: RetryPolicy,
    breakers: Mutex<HashMap<String, Breaker>>,
    budget: Option<BudgetCounter>,
    recorder: Arc<dyn CallRecorder>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("providers", &self.providers)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Router {
    /// A router over `providers`, reading API keys from the process environment.
    pub fn new(
        providers: Providers,
        policy: RetryPolicy,
        budget: Option<BudgetCounter>,
        recorder: Arc<dyn CallRecorder>,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(policy.timeout)
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self {
            http,
            providers,
            env: Arc::new(|name| std::env::var(name).ok().filter(|v| !v.is_empty())),
            policy,
            breakers: Mutex::new(HashMap::new()),
            budget,
            recorder,
        })
    }

    /// Replaces how environment variables are read (for API keys).
    #[must_use]
    pub fn with_env(mut self, env: EnvLookup) -> Self {
        self.env = env;
        self
    }

    /// The Secret keys the providers in the list name, once each: what an attempt asks
    /// the operator for. Empty when the list cannot be read.
    pub fn credential_refs(&self) -> Vec<aios_crds::common::SecretKeyRef> {
        let mut refs: Vec<_> = self
            .providers
            .list()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|p| p.credentials_ref)
            .collect();
        refs.sort_by(|a, b| (&a.name, &a.key).cmp(&(&b.name, &b.key)));
        refs.dedup();
        refs
    }

    /// The API key of a provider: from the variable its Secret is mounted as, else the
    /// usual variable for its type.
    fn api_key(&self, provider: &ProviderEntry) -> Option<String> {
        if let Some(secret) = &provider.credentials_ref
            && let Some(key) = (self.env)(&aios_crds::names::env::secret_variable(
                &secret.name,
                &secret.key,
            ))
        {
            return Some(key);
        }
        default_key_variable(provider.provider_type).and_then(|name| (self.env)(name))
    }

    fn breaker_allows(&self, provider: &str) -> bool {
        let mut breakers = self
            .breakers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        breakers
            .entry(provider.to_owned())
            .or_insert_with(|| {
                Breaker::new(self.policy.breaker_threshold, self.policy.breaker_cool_down)
            })
            .allow(Instant::now())
    }

    fn breaker_report(&self, provider: &str, ok: bool) {
        let mut breakers = self
            .breakers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(breaker) = breakers.get_mut(provider) {
            if ok {
                breaker.succeeded();
            } else {
                breaker.failed(Instant::now());
            }
        }
    }

    /// Sends one request to one provider.
    async fn send(&self, choice: &Choice, path: &str, body: &Value) -> Result<Value, Failure> {
        let url = format!("{}{path}", choice.provider.endpoint.trim_end_matches('/'));
        let mut request = self.http.post(url).json(body);
        for (name, value) in wire::headers(
            choice.provider.provider_type,
            self.api_key(&choice.provider).as_deref(),
        ) {
            request = request.header(name, value);
        }
        let response = request
            .send()
            .await
            .map_err(|err| transport_failure(&err))?;
        let status = response.status();
        if !status.is_success() {
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(retry_after);
            let body = response.text().await.unwrap_or_default();
            return Err(Failure::Status {
                status: status.as_u16(),
                retry_after,
                body,
            });
        }
        let body = response
            .bytes()
            .await
            .map_err(|err| transport_failure(&err))?;
        decode_body(&body)
    }

    /// Tries one provider with bounded retries; the error describes the last failure.
    async fn try_provider<T>(
        &self,
        choice: &Choice,
        path: &str,
        body: &Value,
        parse: &(dyn Fn(&Value) -> Result<T, String> + Sync),
    ) -> Result<(T, Duration), Failure> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let started = Instant::now();
            let result = self
                .send(choice, path, body)
                .await
                .and_then(|body| parse(&body).map_err(Failure::Invalid));
            let latency = started.elapsed();
            let failure = match result {
                Ok(answer) => return Ok((answer, latency)),
                Err(failure) => failure,
            };
            self.recorder.failed(
                &choice.provider.name,
                &choice.model.name,
                choice.provider.tier,
                failure.category(),
                latency.as_secs_f64(),
            );
            tracing::warn!(provider = %choice.provider.name, model = %choice.model.name, attempt, error = %failure.describe(), "model call failed");
            if !failure.transient() || attempt >= self.policy.attempts {
                return Err(failure);
            }
            let wait = match &failure {
                Failure::Status {
                    retry_after: Some(wait),
                    ..
                } if *wait > self.policy.max_retry_after => return Err(failure),
                Failure::Status {
                    retry_after: Some(wait),
                    ..
                } => *wait,
                _ => self.backoff(attempt),
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Walks `choices` in order, skipping open breakers, until one answers; otherwise
    /// what each one answered.
    async fn first_answer<T>(
        &self,
        choices: &[Choice],
        request: &(dyn Fn(&Choice) -> (&'static str, Value) + Sync),
        parse: &(dyn Fn(ProviderType, &Value) -> Result<T, String> + Sync),
    ) -> Result<(usize, T, Duration), Vec<String>> {
        let mut answers = Vec::new();
        for (index, choice) in choices.iter().enumerate() {
            let name = &choice.provider.name;
            if !self.breaker_allows(name) {
                answers.push(format!("{name}: skipped, its circuit breaker is open"));
                continue;
            }
            let (path, body) = request(choice);
            let kind = choice.provider.provider_type;
            match self
                .try_provider(choice, path, &body, &|body| parse(kind, body))
                .await
            {
                Ok((answer, latency)) => {
                    self.breaker_report(name, true);
                    return Ok((index, answer, latency));
                }
                Err(failure) => {
                    self.breaker_report(name, !failure.transient());
                    answers.push(format!(
                        "{name} ({}): {}",
                        choice.model.name,
                        failure.describe()
                    ));
                }
            }
        }
        Err(answers)
    }

    /// Full jitter: a random wait up to the doubled base delay.
    fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self
            .policy
            .base_delay
            .saturating_mul(2_u32.saturating_pow(attempt.saturating_sub(1)))
            .min(self.policy.max_delay);
        ceiling.mul_f64(rand::random::<f64>())
    }

    async fn route(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
        if let (Some(budget), Some(limits)) = (&self.budget, &request.hints.budget) {
            budget.check(&request.project, limits).await?;
        }
        let providers = self
            .providers
            .list()
            .map_err(|err| LlmError::AllFailed(vec![err]))?;
        let choices = choose(&providers, request.complexity, &request.hints);
        if choices.is_empty() {
            let pinned = request
                .hints
                .pin
                .as_ref()
                .map(|p| {
                    format!(
                        " (pinned to provider {:?}, model {:?})",
                        p.provider, p.model
                    )
                })
                .unwrap_or_default();
            return Err(LlmError::NoProvider {
                complexity: request.complexity,
                pinned,
            });
        }
        let (index, answer, latency) = self
            .first_answer(
                &choices,
                &|choice| wire::chat_request(choice.provider.provider_type, &choice.model, request),
                &wire::parse_chat,
            )
            .await
            .map_err(LlmError::AllFailed)?;
        let choice = &choices[index];
        let ChatAnswer {
            content,
            input_tokens,
            output_tokens,
        } = answer;
        let call = Call {
            provider: choice.provider.name.clone(),
            model: choice.model.name.clone(),
            tier: choice.provider.tier,
            input_tokens,
            output_tokens,
            cost_usd: choice.cost(input_tokens, output_tokens),
            latency,
        };
        self.recorder.answered(&call);
        if let Some(budget) = &self.budget {
            budget.charge(&request.project, &call).await?;
        }
        Ok(ChatResponse { content, call })
    }

    /// Embeds `texts` with the first healthy provider offering an embeddings model,
    /// local first, then by priority.
    pub async fn embed_texts(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, LlmError> {
        let providers = self
            .providers
            .list()
            .map_err(|err| LlmError::AllFailed(vec![err]))?;
        let mut choices: Vec<Choice> = providers
            .iter()
            .filter(|p| p.provider_type != ProviderType::Anthropic)
            .filter_map(|p| {
                let model = p.models.iter().find(|m| m.embeddings)?;
                Some(Choice {
                    provider: p.clone(),
                    model: model.clone(),
                })
            })
            .collect();
        choices.sort_by_key(|c| (c.provider.tier != Tier::Local, -c.provider.priority));
        if choices.is_empty() {
            return Err(LlmError::NoEmbeddings);
        }
        let request = |choice: &Choice| {
            wire::embed_request(choice.provider.provider_type, &choice.model.name, texts)
                .unwrap_or(("/", Value::Null))
        };
        let (index, (vectors, input_tokens), latency) = self
            .first_answer(&choices, &request, &wire::parse_embed)
            .await
            .map_err(LlmError::AllFailed)?;
        let choice = &choices[index];
        if vectors.len() != texts.len() {
            return Err(LlmError::AllFailed(vec![format!(
                "{}: {} embeddings for {} texts",
                choice.provider.name,
                vectors.len(),
                texts.len()
            )]));
        }
        self.recorder.answered(&Call {
            provider: choice.provider.name.clone(),
            model: choice.model.name.clone(),
            tier: choice.provider.tier,
            input_tokens,
            output_tokens: 0,
            cost_usd: choice.cost(input_tokens, 0),
            latency,
        });
        Ok(vectors)
    }
}

impl crate::memory::Embedder for Router {
    fn embed<'a>(
        &'a self,
        texts: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Vec<f32>>, crate::memory::MemoryError>> {
        Box::pin(async move {
            self.embed_texts(texts)
                .await
                .map_err(|err| crate::memory::MemoryError::Embed(err.to_string()))
        })
    }
}

impl Llm for Router {
    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(self.route(request))
    }

    /// From the provider list as it is now; when it cannot be read the default, and the
    /// call itself will fail saying why.
    fn context_window(&self, complexity: Complexity, hints: &aios_crds::bus::ModelHints) -> u32 {
        self.providers
            .list()
            .map_or(DEFAULT_CONTEXT_WINDOW, |providers| {
                context_window(&providers, complexity, hints)
            })
    }
}

/// An error and its causes on one line: reqwest's own message hides the cause.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use aios_crds::{bus::ModelHints, task::ModelPin};

    use super::*;

    fn provider(
        name: &str,
        tier: Tier,
        priority: i32,
        models: &[(&str, Complexity, f64)],
    ) -> ProviderEntry {
        ProviderEntry {
            name: name.to_owned(),
            provider_type: ProviderType::Ollama,
            tier,
            priority,
            endpoint: format!("http://{name}"),
            models: models
                .iter()
                .map(|(model, max, price)| ModelSpec {
                    name: (*model).to_owned(),
                    max_complexity: *max,
                    context_window: None,
                    input_price_per_1k: *price,
                    output_price_per_1k: *price,
                    embeddings: false,
                })
                .collect(),
            credentials_ref: None,
        }
    }

    fn pantheon() -> Vec<ProviderEntry> {
        vec![
            provider(
                "claude",
                Tier::Cloud,
                10,
                &[("sonnet", Complexity::High, 0.003)],
            ),
            provider(
                "gpt",
                Tier::Cloud,
                5,
                &[
                    ("mini", Complexity::Medium, 0.0002),
                    ("big", Complexity::High, 0.005),
                ],
            ),
            provider(
                "ollama",
                Tier::Local,
                1,
                &[
                    ("small", Complexity::Low, 0.0),
                    ("coder", Complexity::Medium, 0.0),
                ],
            ),
        ]
    }

    fn order(choices: &[Choice]) -> Vec<String> {
        choices
            .iter()
            .map(|c| format!("{}/{}", c.provider.name, c.model.name))
            .collect()
    }

    #[test]
    fn local_first_puts_the_local_tier_first_then_priority() {
        let hints = ModelHints::default();
        assert_eq!(
            order(&choose(&pantheon(), Complexity::Low, &hints)),
            ["ollama/small", "claude/sonnet", "gpt/mini"]
        );
        assert_eq!(
            order(&choose(&pantheon(), Complexity::Medium, &hints)),
            ["ollama/coder", "claude/sonnet", "gpt/mini"]
        );
        assert_eq!(
            order(&choose(&pantheon(), Complexity::High, &hints)),
            ["claude/sonnet", "gpt/big"],
            "no local model takes High"
        );
        let preferred = ModelHints {
            preferred_providers: vec!["gpt".to_owned()],
            ..ModelHints::default()
        };
        assert_eq!(
            order(&choose(&pantheon(), Complexity::Medium, &preferred)),
            ["ollama/coder", "gpt/mini", "claude/sonnet"]
        );
    }

    #[test]
    fn cost_optimized_and_quality_first_order_by_price_and_capability() {
        let cost = ModelHints {
            routing: RoutingMode::CostOptimized,
            ..ModelHints::default()
        };
        assert_eq!(
            order(&choose(&pantheon(), Complexity::Medium, &cost)),
            ["ollama/coder", "gpt/mini", "claude/sonnet"]
        );
        let quality = ModelHints {
            routing: RoutingMode::QualityFirst,
            ..ModelHints::default()
        };
        assert_eq!(
            order(&choose(&pantheon(), Complexity::Low, &quality)),
            ["claude/sonnet", "gpt/mini", "ollama/small"]
        );
    }

    #[test]
    fn a_pin_limits_the_choice_to_the_provider_or_model() {
        let pin = |provider: Option<&str>, model: Option<&str>| ModelHints {
            pin: Some(ModelPin {
                provider: provider.map(str::to_owned),
                model: model.map(str::to_owned),
            }),
            ..ModelHints::default()
        };
        assert_eq!(
            order(&choose(
                &pantheon(),
                Complexity::Medium,
                &pin(Some("gpt"), None)
            )),
            ["gpt/mini"]
        );
        assert_eq!(
            order(&choose(
                &pantheon(),
                Complexity::High,
                &pin(None, Some("small"))
            )),
            ["ollama/small"],
            "a pinned model is taken whatever its complexity"
        );
        assert!(choose(&pantheon(), Complexity::Medium, &pin(Some("absent"), None)).is_empty());
    }

    #[test]
    fn embedding_models_are_never_chosen_for_chat_and_cost_follows_prices() {
        let mut list = pantheon();
        list[2].models[0].embeddings = true;
        assert_eq!(
            order(&choose(&list, Complexity::Low, &ModelHints::default()))[0],
            "ollama/coder"
        );
        let choice = &choose(&pantheon(), Complexity::High, &ModelHints::default())[0];
        assert!((choice.cost(1000, 2000) - 0.009).abs() < 1e-12);
    }

    #[test]
    fn the_context_window_is_the_smallest_among_the_models_that_may_answer() {
        let hints = ModelHints::default();
        let mut list = pantheon();
        list[0].models[0].context_window = Some(200_000);
        list[1].models[0].context_window = Some(128_000);
        list[1].models[1].context_window = Some(64_000);
        list[2].models[1].context_window = Some(32_768);
        assert_eq!(
            context_window(&list, Complexity::Medium, &hints),
            32_768,
            "ollama/coder, claude/sonnet, gpt/mini: the local model's"
        );
        assert_eq!(
            context_window(&list, Complexity::High, &hints),
            64_000,
            "claude/sonnet and gpt/big"
        );
        assert_eq!(
            context_window(&list, Complexity::Low, &hints),
            DEFAULT_CONTEXT_WINDOW,
            "ollama/small declares none, so it counts as the default"
        );
        let pinned = ModelHints {
            pin: Some(ModelPin {
                provider: Some("claude".to_owned()),
                model: None,
            }),
            ..ModelHints::default()
        };
        assert_eq!(context_window(&list, Complexity::Low, &pinned), 200_000);
        assert_eq!(
            context_window(&[], Complexity::Low, &hints),
            DEFAULT_CONTEXT_WINDOW,
            "no model at all"
        );
    }

    #[test]
    fn a_body_that_is_not_json_is_a_transient_provider_failure() {
        let failure = decode_body(b"<html>bad gateway</html>").unwrap_err();
        assert!(failure.transient());
        assert_eq!(failure.category(), "undecodable_response");
        assert!(
            failure.describe().ends_with(": <html>bad gateway</html>"),
            "{}",
            failure.describe()
        );
        assert_eq!(decode_body(br#"{"a":1}"#), Ok(serde_json::json!({"a": 1})));
        assert!(
            !Failure::Invalid("no message.content".to_owned()).transient(),
            "JSON of the wrong shape is not asked again"
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO),
            "a past date waits nothing"
        );
        assert_eq!(retry_after("soon"), None);
    }
}
