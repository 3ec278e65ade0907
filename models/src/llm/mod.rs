//! Language models as agents and Hermes see them: one [`Llm`] interface, implemented by
//! the [`router::Router`] that picks a provider per call, speaks its wire format
//! ([`wire`]), falls back down the chain and accounts for every call to a
//! [`CallRecorder`].

pub mod breaker;
pub mod router;
pub mod wire;

use std::time::Duration;

use aios_crds::{Complexity, Tier, Usage, bus::ModelHints};
use futures::future::BoxFuture;
use serde_json::Value;

/// The context window, in tokens, assumed for a model whose ModelProvider declares
/// none: small enough for the local models people run on a workstation (and Ollama's
/// usual allocation), so a prompt sized to it fits any model.
pub const DEFAULT_CONTEXT_WINDOW: u32 = 8192;

/// The room, in tokens, kept for the answer: Ollama's `num_predict`, and what every
/// prompt leaves free in the context window.
pub const ANSWER_TOKENS: u32 = 4096;

/// Tokens counted for each message beyond its text: the role and the chat template's
/// markers around it.
const MESSAGE_OVERHEAD_TOKENS: u64 = 8;

/// A conservative estimate of the tokens a text takes: one per three bytes, rounded
/// up. Tokenizers of current models average about four bytes of English or code per
/// token; three leaves room for denser text (symbols, short identifiers, non-ASCII),
/// so a prompt sized with it does not overflow a window, at the price of sending a
/// little less than would fit.
pub fn estimate_tokens(text: &str) -> u64 {
    u64::try_from(text.len()).unwrap_or(u64::MAX).div_ceil(3)
}

/// The estimated prompt of a request, in tokens: its messages, each with the chat
/// template's overhead, and its schema (OpenAI and Anthropic put it in the prompt).
pub fn estimate_request_tokens(request: &ChatRequest) -> u64 {
    let messages: u64 = request
        .messages
        .iter()
        .map(|m| estimate_tokens(&m.content) + MESSAGE_OVERHEAD_TOKENS)
        .sum();
    messages + estimate_tokens(&request.schema.to_string())
}

/// Where the router reports each model call: the agent's Prometheus metrics, or
/// nowhere ([`NoRecorder`], for a command line that reports usage itself).
pub trait CallRecorder: std::fmt::Debug + Send + Sync {
    /// A call that was answered.
    fn answered(&self, call: &Call);
    /// A call that failed, by error category, after `seconds`.
    fn failed(&self, provider: &str, model: &str, tier: Tier, category: &str, seconds: f64);
}

/// Records nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRecorder;

impl CallRecorder for NoRecorder {
    fn answered(&self, _call: &Call) {}
    fn failed(&self, _provider: &str, _model: &str, _tier: Tier, _category: &str, _seconds: f64) {}
}

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Instructions that frame the conversation.
    System,
    /// The agent's request.
    User,
    /// The model's earlier answer (in a repair request).
    Assistant,
}

impl Role {
    /// The name every wire format uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
        }
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// Who said it.
    pub role: Role,
    /// What was said.
    pub content: String,
}

impl ChatMessage {
    /// A message from `role`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

/// A structured-output request: the answer must be JSON matching `schema`.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// The conversation, system message first.
    pub messages: Vec<ChatMessage>,
    /// The JSON schema the answer must match.
    pub schema: Value,
    /// A short name for the schema (OpenAI's `json_schema.name`, Anthropic's tool name).
    pub schema_name: String,
    /// How hard the task is: only models that may take it are chosen.
    pub complexity: Complexity,
    /// The Project's routing hints (mode, pin, preferred providers, budget).
    pub hints: ModelHints,
    /// `<namespace>/<project>`: the budget counter the call counts against.
    pub project: String,
}

/// One model call that was answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// The ModelProvider's name.
    pub provider: String,
    /// The model.
    pub model: String,
    /// The provider's tier.
    pub tier: Tier,
    /// Tokens sent.
    pub input_tokens: u64,
    /// Tokens produced.
    pub output_tokens: u64,
    /// What the call cost, from the provider's prices.
    pub cost_usd: f64,
    /// How long the provider took.
    pub latency: Duration,
}

impl Call {
    /// Adds this call to a task's usage: tokens, cost and latency add up; the last call
    /// names the provider and model.
    pub fn add_to(&self, usage: &mut Usage) {
        let tokens = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        usage.provider = Some(self.provider.clone());
        usage.model = Some(self.model.clone());
        usage.tier = Some(self.tier);
        usage.input_tokens = usage.input_tokens.saturating_add(tokens(self.input_tokens));
        usage.output_tokens = usage
            .output_tokens
            .saturating_add(tokens(self.output_tokens));
        usage.cost_usd += self.cost_usd;
        match self.tier {
            Tier::Local => usage.local_requests += 1,
            Tier::Cloud => usage.cloud_requests += 1,
        }
        let ms = i64::try_from(self.latency.as_millis()).unwrap_or(i64::MAX);
        usage.latency_ms = usage.latency_ms.saturating_add(ms);
    }
}

/// A model's answer.
#[derive(Debug, Clone)]
pub struct ChatResponse {
    /// The answer's text (JSON, for a structured request).
    pub content: String,
    /// The call that produced it.
    pub call: Call,
}

/// Why no model answered.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LlmError {
    /// The Project's token or cost budget is spent.
    #[error("the project's budget is exhausted: {0}")]
    BudgetExceeded(String),
    /// No configured provider has a model that may take the request.
    #[error("no model provider can take a {complexity:?} task{pinned}")]
    NoProvider {
        /// The request's complexity.
        complexity: Complexity,
        /// Describes the pin, when the task has one.
        pinned: String,
    },
    /// Every provider that could take the request failed.
    #[error("every model provider failed: {}", .0.join("; "))]
    AllFailed(Vec<String>),
    /// No provider offers an embeddings model.
    #[error("no model provider offers an embeddings model")]
    NoEmbeddings,
    /// Reading or updating the shared budget counter failed.
    #[error("the budget counter is unavailable: {0}")]
    Budget(String),
}

impl LlmError {
    /// The Task's failure reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BudgetExceeded(_) => "BudgetExceeded",
            Self::NoProvider { .. } => "NoModelProvider",
            Self::AllFailed(_) => "ModelUnavailable",
            Self::NoEmbeddings => "NoEmbeddingModel",
            Self::Budget(_) => "BudgetUnavailable",
        }
    }

    /// Whether another attempt may succeed.
    pub fn retryable(&self) -> bool {
        !matches!(self, Self::BudgetExceeded(_))
    }
}

/// Something that answers chat requests. The router is the real one; tests may play it.
pub trait Llm: Send + Sync {
    /// Sends a structured-output request.
    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, LlmError>>;

    /// The context window, in tokens, a request of this complexity and these hints must
    /// fit: the smallest among the models that may answer it (any of them may, after a
    /// fallback). [`DEFAULT_CONTEXT_WINDOW`] when nothing says more, which is what a
    /// test double that does not care gets.
    fn context_window(&self, complexity: Complexity, hints: &ModelHints) -> u32 {
        let _ = (complexity, hints);
        DEFAULT_CONTEXT_WINDOW
    }
}
