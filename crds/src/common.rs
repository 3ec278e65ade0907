//! Types shared by several resources and by the bus messages.

use std::{borrow::Cow, fmt};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// The pattern of a DNS-1123 label, as Kubernetes defines it.
pub const DNS_LABEL_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// The longest a DNS-1123 label may be.
pub const DNS_LABEL_MAX_LEN: usize = 63;
/// The longest a Kubernetes object name (a DNS-1123 subdomain) may be.
pub const OBJECT_NAME_MAX_LEN: usize = 253;

/// Why a string is not a DNS label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The string is empty.
    #[error("name is empty")]
    Empty,
    /// The string is longer than 63 characters.
    #[error("name {0:?} is longer than {DNS_LABEL_MAX_LEN} characters")]
    TooLong(String),
    /// The string has a character a DNS label may not have, or starts or ends with `-`.
    #[error(
        "name {0:?} is not a DNS label: use lowercase letters, digits and '-', \
         starting and ending with a letter or digit"
    )]
    Invalid(String),
}

/// A DNS-1123 label: a role name, or a task's name in a plan.
///
/// Checked when it is built or deserialised; the generated schema carries the same rule
/// so the API server refuses a bad name at `kubectl apply` time.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DnsLabel(String);

impl DnsLabel {
    /// Checks `name` and wraps it.
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > DNS_LABEL_MAX_LEN {
            return Err(NameError::TooLong(name));
        }
        let bytes = name.as_bytes();
        let inner_ok = bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
        let ends_ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        if !inner_ok || !ends_ok(bytes[0]) || !ends_ok(bytes[bytes.len() - 1]) {
            return Err(NameError::Invalid(name));
        }
        Ok(Self(name))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for DnsLabel {
    type Error = NameError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl TryFrom<&str> for DnsLabel {
    type Error = NameError;
    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<DnsLabel> for String {
    fn from(value: DnsLabel) -> Self {
        value.0
    }
}

impl AsRef<str> for DnsLabel {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DnsLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for DnsLabel {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for DnsLabel {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl JsonSchema for DnsLabel {
    fn schema_name() -> Cow<'static, str> {
        "DnsLabel".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // A pattern, not a CEL rule: names sit inside lists (plans, dependencies), and
        // a pattern costs nothing against the API server's CEL budget.
        json_schema!({
            "type": "string",
            "minLength": 1,
            "maxLength": DNS_LABEL_MAX_LEN,
            "pattern": DNS_LABEL_PATTERN,
        })
    }
}

/// How hard a task is: the router's input for choosing a model.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
)]
pub enum Complexity {
    /// Small, well-specified changes; a small local model can do them.
    Low,
    /// Ordinary feature work.
    #[default]
    Medium,
    /// Design-heavy or cross-cutting work that wants the strongest model available.
    High,
}

/// Whether a model provider runs next to the agents or is a paid remote service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Tier {
    /// Served inside the cluster or on the same machine (Ollama, vLLM, llama.cpp).
    Local,
    /// A remote, usually metered, service (Anthropic, OpenAI).
    Cloud,
}

/// A reference to one key of a Secret in the same namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret, in the same namespace as the object that refers to it.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret whose value is used.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// What one language-model call, or the sum of several, cost.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// The provider (ModelProvider name) that served the last call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The model that served the last call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The tier of the provider that served the last call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<Tier>,
    /// Tokens sent to models.
    #[serde(default)]
    pub input_tokens: i64,
    /// Tokens models produced.
    #[serde(default)]
    pub output_tokens: i64,
    /// Cost in US dollars, from the providers' prices.
    #[serde(default)]
    pub cost_usd: f64,
    /// Calls served by a `Local` tier provider.
    #[serde(default)]
    pub local_requests: i64,
    /// Calls served by a `Cloud` tier provider.
    #[serde(default)]
    pub cloud_requests: i64,
    /// Wall time spent waiting on models, in milliseconds.
    #[serde(default)]
    pub latency_ms: i64,
}

impl Usage {
    /// Total tokens, in and out.
    pub fn total_tokens(&self) -> i64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }

    /// Share of calls served locally, or `None` before any call.
    #[allow(clippy::cast_precision_loss)] // request counts stay far below 2^52
    pub fn local_ratio(&self) -> Option<f64> {
        let total = self.local_requests + self.cloud_requests;
        (total > 0).then(|| self.local_requests as f64 / total as f64)
    }

    /// Adds `other`'s counters to these; provider, model and tier become `other`'s
    /// where it names them (the most recent call wins).
    pub fn accumulate(&mut self, other: &Usage) {
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.cost_usd += other.cost_usd;
        self.local_requests = self.local_requests.saturating_add(other.local_requests);
        self.cloud_requests = self.cloud_requests.saturating_add(other.cloud_requests);
        self.latency_ms = self.latency_ms.saturating_add(other.latency_ms);
        if other.provider.is_some() {
            self.provider.clone_from(&other.provider);
        }
        if other.model.is_some() {
            self.model.clone_from(&other.model);
        }
        if other.tier.is_some() {
            self.tier = other.tier;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_label_accepts_kubernetes_label_names() {
        for ok in ["a", "backend", "api-v2", "0x", "a".repeat(63).as_str()] {
            assert!(DnsLabel::new(ok).is_ok(), "{ok} should be a DNS label");
        }
    }

    #[test]
    fn dns_label_refuses_what_kubernetes_refuses() {
        assert_eq!(DnsLabel::new(""), Err(NameError::Empty));
        assert!(matches!(
            DnsLabel::new("a".repeat(64)),
            Err(NameError::TooLong(_))
        ));
        for bad in ["Backend", "-api", "api-", "api_v2", "a.b", "apí"] {
            assert!(
                matches!(DnsLabel::new(bad), Err(NameError::Invalid(_))),
                "{bad} should be refused"
            );
        }
    }

    #[test]
    fn dns_label_deserialisation_checks_the_name() {
        let err = serde_json::from_str::<DnsLabel>("\"Not_A_Label\"").unwrap_err();
        assert!(err.to_string().contains("not a DNS label"), "{err}");
        let ok: DnsLabel = serde_json::from_str("\"qa\"").unwrap();
        assert_eq!(ok, "qa");
    }

    #[test]
    fn usage_accumulates_counters_and_keeps_the_latest_provider() {
        let mut total = Usage::default();
        assert_eq!(total.local_ratio(), None);
        total.accumulate(&Usage {
            provider: Some("ollama".into()),
            tier: Some(Tier::Local),
            input_tokens: 100,
            output_tokens: 20,
            cost_usd: 0.0,
            local_requests: 3,
            ..Usage::default()
        });
        total.accumulate(&Usage {
            provider: Some("claude".into()),
            tier: Some(Tier::Cloud),
            input_tokens: 50,
            output_tokens: 10,
            cost_usd: 0.25,
            cloud_requests: 1,
            ..Usage::default()
        });
        assert_eq!(total.total_tokens(), 180);
        assert_eq!(total.provider.as_deref(), Some("claude"));
        assert!((total.cost_usd - 0.25).abs() < f64::EPSILON);
        assert_eq!(total.local_ratio(), Some(0.75));
    }
}
