//! Each provider's wire format, as pure functions: the path and body of a request, the
//! headers that authenticate it, and the answer and token counts read from a response.
//! Structured output uses each provider's own mechanism: a JSON schema in Ollama's
//! `format`, OpenAI's `response_format`, and a forced tool call on Anthropic.

use aios_crds::ProviderType;
use serde_json::{Value, json};

use super::{ChatRequest, Role};

/// The Anthropic API version the requests are written for.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";
/// Anthropic requires a bound on the answer's length.
pub const ANTHROPIC_MAX_TOKENS: u32 = 8192;

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
    model: &str,
    request: &ChatRequest,
) -> (&'static str, Value) {
    match kind {
        ProviderType::Ollama => (
            "/api/chat",
            json!({
                "model": model,
                "messages": messages(request, true),
                "stream": false,
                "format": request.schema,
                // Ollama bounds no answer by default; a runaway small model would never stop.
                "options": {"temperature": 0, "num_predict": 4096},
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
