//! Each provider's wire format, as pure functions: the path and body of a request, the
//! headers that authenticate it, and the answer and token counts read from a response.
//! Structured output uses each provider's own mechanism: a JSON schema in Ollama's
//! `format`, OpenAI's `response_format`, and a forced tool call on Anthropic.
//! Ollama is also told the context to allocate (`num_ctx`): it otherwise uses its own
//! default and silently drops the start of a longer prompt.

use aios_crds::{ProviderType, model_provider::ModelSpec};
use serde_json::{Value, json};

use super::{ANSWER_TOKENS, ChatRequest, Role, estimate_request_tokens};

/// The Anthropic API version the requests are written for.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";
/// Anthropic requires a bound on the answer's length.
pub const ANTHROPIC_MAX_TOKENS: u32 = 8192;
/// The smallest `num_ctx` sent to Ollama: its own usual default, so a short prompt
/// never gets less than it would without the option.
pub const OLLAMA_MIN_CONTEXT: u32 = 4096;

/// The `num_ctx` for an Ollama request: the estimated prompt plus the answer's room,
/// rounded up to a power of two (Ollama reloads a model whenever `num_ctx` changes, so
/// few distinct sizes mean few reloads), at least [`OLLAMA_MIN_CONTEXT`], and never
/// more than the model's context window when its ModelProvider declares one.
pub fn ollama_context(model: &ModelSpec, request: &ChatRequest) -> u32 {
    let needed = estimate_request_tokens(request).saturating_add(u64::from(ANSWER_TOKENS));
    let size = u32::try_from(needed.next_power_of_two())
        .unwrap_or(u32::MAX)
        .max(OLLAMA_MIN_CONTEXT);
    match model.context_window.and_then(|w| u32::try_from(w).ok()) {
        Some(window) if window > 0 => size.min(window),
        _ => size,
    }
}

/// What a chat response carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatAnswer {
    /// The answer's text (JSON for a structured request).
    pub content: String,
    /// Tokens the provider counted in the prompt.
    pub input_tokens: u64,
    /// Tokens it produced.
    pub output_tokens: u64,
}

/// The path (below the provider's endpoint) and JSON body of a chat request.
pub fn chat_request(
    kind: ProviderType,
    spec: &ModelSpec,
    request: &ChatRequest,
) -> (&'static str, Value) {
    let model = spec.name.as_str();
    match kind {
        ProviderType::Ollama => (
            "/api/chat",
            json!({
                "model": model,
                "messages": messages(request, true),
                "stream": false,
                "format": request.schema,
                // Ollama bounds no answer by default; a runaway small model would never stop.
                "options": {
                    "temperature": 0,
                    "num_predict": ANSWER_TOKENS,
                    "num_ctx": ollama_context(spec, request),
                },
            }),
        ),
        ProviderType::OpenAI | ProviderType::OpenAICompatible => (
            "/v1/chat/completions",
            json!({
                "model": model,
                "messages": messages(request, true),
                "temperature": 0,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": request.schema_name, "schema": request.schema},
                },
            }),
        ),
        ProviderType::Anthropic => {
            let system: Vec<&str> = request
                .messages
                .iter()
                .filter(|m| m.role == Role::System)
                .map(|m| m.content.as_str())
                .collect();
            (
                "/v1/messages",
                json!({
                    "model": model,
                    "max_tokens": ANTHROPIC_MAX_TOKENS,
                    "system": system.join("\n\n"),
                    "messages": messages(request, false),
                    "tools": [{
                        "name": request.schema_name,
                        "description": "Report the answer in this exact structure.",
                        "input_schema": request.schema,
                    }],
                    "tool_choice": {"type": "tool", "name": request.schema_name},
                }),
            )
        }
    }
}

fn messages(request: &ChatRequest, with_system: bool) -> Vec<Value> {
    request
        .messages
        .iter()
        .filter(|m| with_system || m.role != Role::System)
        .map(|m| json!({"role": m.role.as_str(), "content": m.content}))
        .collect()
}

/// The headers that authenticate a request and pick the API version.
pub fn headers(kind: ProviderType, api_key: Option<&str>) -> Vec<(&'static str, String)> {
    let mut headers = Vec::new();
    match kind {
        ProviderType::Anthropic => {
            headers.push(("anthropic-version", ANTHROPIC_VERSION.to_owned()));
            if let Some(key) = api_key {
                headers.push(("x-api-key", key.to_owned()));
            }
        }
        ProviderType::Ollama | ProviderType::OpenAI | ProviderType::OpenAICompatible => {
            if let Some(key) = api_key {
                headers.push(("authorization", format!("Bearer {key}")));
            }
        }
    }
    headers
}

fn count(value: &Value) -> u64 {
    value.as_u64().unwrap_or(0)
}

/// Reads the answer and the token counts from a chat response body.
pub fn parse_chat(kind: ProviderType, body: &Value) -> Result<ChatAnswer, String> {
    match kind {
        ProviderType::Ollama => {
            let content = body["message"]["content"]
                .as_str()
                .ok_or("the response has no message.content")?;
            Ok(ChatAnswer {
                content: content.to_owned(),
                input_tokens: count(&body["prompt_eval_count"]),
                output_tokens: count(&body["eval_count"]),
            })
        }
        ProviderType::OpenAI | ProviderType::OpenAICompatible => {
            let message = &body["choices"][0]["message"];
            let Some(content) = message["content"].as_str() else {
                let refusal = message["refusal"].as_str().unwrap_or("no content");
                return Err(format!("the response has no content ({refusal})"));
            };
            Ok(ChatAnswer {
                content: content.to_owned(),
                input_tokens: count(&body["usage"]["prompt_tokens"]),
                output_tokens: count(&body["usage"]["completion_tokens"]),
            })
        }
        ProviderType::Anthropic => {
            let blocks = body["content"]
                .as_array()
                .ok_or("the response has no content")?;
            let input = blocks
                .iter()
                .find(|b| b["type"] == "tool_use")
                .map(|b| &b["input"])
                .ok_or("the response has no tool_use block")?;
            Ok(ChatAnswer {
                content: input.to_string(),
                input_tokens: count(&body["usage"]["input_tokens"]),
                output_tokens: count(&body["usage"]["output_tokens"]),
            })
        }
    }
}

/// The path and JSON body of an embeddings request; `None` for a provider without an
/// embeddings endpoint (Anthropic).
pub fn embed_request(
    kind: ProviderType,
    model: &str,
    texts: &[String],
) -> Option<(&'static str, Value)> {
    match kind {
        ProviderType::Ollama => Some(("/api/embed", json!({"model": model, "input": texts}))),
        ProviderType::OpenAI | ProviderType::OpenAICompatible => {
            Some(("/v1/embeddings", json!({"model": model, "input": texts})))
        }
        ProviderType::Anthropic => None,
    }
}

/// Reads the vectors (in input order) and the input token count of an embeddings response.
pub fn parse_embed(kind: ProviderType, body: &Value) -> Result<(Vec<Vec<f32>>, u64), String> {
    #[allow(clippy::cast_possible_truncation)] // embeddings are f32 by nature
    let vector = |v: &Value| -> Result<Vec<f32>, String> {
        v.as_array()
            .ok_or("an embedding is not an array")?
            .iter()
            .map(|x| {
                x.as_f64()
                    .map(|f| f as f32)
                    .ok_or_else(|| "an embedding has a non-number".to_owned())
            })
            .collect()
    };
    match kind {
        ProviderType::Ollama => {
            let vectors = body["embeddings"]
                .as_array()
                .ok_or("the response has no embeddings")?
                .iter()
                .map(vector)
                .collect::<Result<_, _>>()?;
            Ok((vectors, count(&body["prompt_eval_count"])))
        }
        ProviderType::OpenAI | ProviderType::OpenAICompatible => {
            let mut data: Vec<&Value> = body["data"]
                .as_array()
                .ok_or("the response has no data")?
                .iter()
                .collect();
            data.sort_by_key(|d| d["index"].as_u64().unwrap_or(0));
            let vectors = data
                .iter()
                .map(|d| vector(&d["embedding"]))
                .collect::<Result<_, _>>()?;
            Ok((vectors, count(&body["usage"]["prompt_tokens"])))
        }
        ProviderType::Anthropic => Err("Anthropic has no embeddings endpoint".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use aios_crds::{Complexity, bus::ModelHints};

    use super::*;
    use crate::llm::ChatMessage;

    fn model(context_window: Option<i32>) -> ModelSpec {
        ModelSpec {
            name: "coder".to_owned(),
            max_complexity: Complexity::High,
            context_window,
            input_price_per_1k: 0.0,
            output_price_per_1k: 0.0,
            embeddings: false,
        }
    }

    fn request(prompt_bytes: usize) -> ChatRequest {
        ChatRequest {
            messages: vec![ChatMessage::new(Role::User, "x".repeat(prompt_bytes))],
            schema: json!({"type": "object"}),
            schema_name: "result".to_owned(),
            complexity: Complexity::Low,
            hints: ModelHints::default(),
            project: "team-a/shop".to_owned(),
        }
    }

    #[test]
    fn ollama_gets_a_num_ctx_for_the_prompt_and_the_answer_within_the_window() {
        let (_, body) = chat_request(ProviderType::Ollama, &model(None), &request(300));
        assert_eq!(body["options"]["num_predict"], ANSWER_TOKENS);
        assert_eq!(
            body["options"]["num_ctx"], 8192,
            "a short prompt and the answer's 4096, to the next power of two"
        );
        // 30,000 bytes are 10,000 tokens; with the answer's room, 16,384.
        let long = request(30_000);
        assert_eq!(ollama_context(&model(None), &long), 16_384);
        assert_eq!(ollama_context(&model(Some(131_072)), &long), 16_384);
        assert_eq!(
            ollama_context(&model(Some(12_000)), &long),
            12_000,
            "never more than the model's window"
        );
        assert!(
            estimate_request_tokens(&long) + u64::from(ANSWER_TOKENS) <= 16_384,
            "the size holds the estimate"
        );
        let (_, body) = chat_request(ProviderType::OpenAI, &model(None), &long);
        assert!(body.get("options").is_none(), "only Ollama takes num_ctx");
    }
}
