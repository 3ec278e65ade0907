//! `ModelProvider`: where language-model calls go.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{Affinity, ResourceRequirements, Toleration},
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{Condition, Time},
    },
};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Complexity, SecretKeyRef, Tier};

/// What a ModelProvider offers and where it is: exactly one of `endpoint` and `serve`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "aios.dev",
    version = "v1alpha1",
    kind = "ModelProvider",
    doc = "A language-model provider the agents may call: an external service (endpoint) or an Ollama server the operator deploys in the cluster (serve).",
    namespaced,
    derive = "PartialEq",
    status = "ModelProviderStatus",
    shortname = "mp",
    category = "aios",
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.type","description":"The wire protocol the provider speaks"}"#,
    printcolumn = r#"{"name":"Tier","type":"string","jsonPath":".spec.tier","description":"Local or Cloud"}"#,
    printcolumn = r#"{"name":"Ready","type":"boolean","jsonPath":".status.ready","description":"Whether the provider answered its last probe"}"#,
    printcolumn = r#"{"name":"Endpoint","type":"string","jsonPath":".status.endpoint","priority":1,"description":"Where agents reach the provider"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.endpoint) != has(self.serve)").message("a ModelProvider needs exactly one of endpoint (an external service) and serve (an in-cluster Ollama)"),
    validation = Rule::new("!has(self.serve) || self.type == 'Ollama'").message("serve deploys Ollama: only a provider of type Ollama can use serve"),
    validation = Rule::new("!has(self.serve) || !has(self.serve.replicas) || self.serve.replicas <= 1").message("serve.replicas above 1 is not supported yet: the model cache is one ReadWriteOnce volume, which two replicas cannot share; use one replica per ModelProvider"),
    validation = Rule::new("!has(self.serve) || !has(self.serve.cache) || !(has(self.serve.cache.existingClaim) && has(self.serve.cache.fromImage) && self.serve.cache.fromImage)").message("serve.cache: existingClaim and fromImage exclude each other")
)]
pub struct ModelProviderSpec {
    /// The wire protocol the provider speaks.
    #[serde(rename = "type")]
    pub provider_type: ProviderType,

    /// `Local` providers are tried before `Cloud` ones in `LocalFirst` routing.
    pub tier: Tier,

    /// Within a tier, providers with a higher priority are tried first.
    #[serde(default)]
    pub priority: i32,

    /// The models the provider offers, and what each may be used for.
    #[schemars(length(min = 1, max = 64))]
    pub models: Vec<ModelSpec>,

    /// An external service: its base URL and credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<Endpoint>,

    /// An Ollama server the operator deploys and keeps running in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serve: Option<Serve>,
}

/// The wire protocol a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ProviderType {
    /// Ollama's native API (`/api/chat`, `/api/embed`).
    Ollama,
    /// OpenAI's API (`/v1/chat/completions`, `/v1/embeddings`).
    OpenAI,
    /// Anthropic's Messages API (`/v1/messages`).
    Anthropic,
    /// Any server speaking OpenAI's API: vLLM, llama.cpp's server, LiteLLM.
    OpenAICompatible,
}

/// One model a provider offers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    /// The model's name as the provider knows it (`qwen2.5-coder:7b`, `claude-sonnet-4-5`).
    #[schemars(length(min = 1, max = 256))]
    pub name: String,

    /// The hardest tasks this model may be given.
    #[serde(default)]
    pub max_complexity: Complexity,

    /// The model's context window, in tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub context_window: Option<i32>,

    /// Price of 1,000 input tokens, in US dollars.
    #[serde(default)]
    #[schemars(range(min = 0.0))]
    pub input_price_per_1k: f64,

    /// Price of 1,000 output tokens, in US dollars.
    #[serde(default)]
    #[schemars(range(min = 0.0))]
    pub output_price_per_1k: f64,

    /// True for an embedding model (used for memory), false for a chat model.
    #[serde(default)]
    pub embeddings: bool,
}

/// An external provider.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.credentialsRef) || self.url.startsWith('https://')").message("endpoint credentialsRef: an API key is sent only over https://, never to an http:// endpoint"))]
pub struct Endpoint {
    /// Base URL, such as `https://api.anthropic.com` or `http://ollama.models:11434`.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.matches('^https?://')").message("endpoint url must start with http:// or https://"))]
    pub url: String,

    /// Secret key holding the API key, for an `https://` endpoint only (a key never
    /// crosses plain HTTP). Agents receive it as an environment variable; it is never
    /// copied into a ConfigMap or a status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_ref: Option<SecretKeyRef>,
}

/// An in-cluster Ollama the operator deploys.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Serve {
    /// The Ollama image; the operator's configured default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,

    /// Replicas of the model server: 0 or 1 (each replica would need a cache of its own).
    #[serde(default = "default_serve_replicas")]
    #[schemars(range(min = 0, max = 64))]
    pub replicas: i32,

    /// Compute resources of the model server container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// GPUs each replica requests; none when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<Gpu>,

    /// Nodes the model server may run on, by label (for example a GPU node pool).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Taints the model server tolerates (GPU nodes are often tainted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// Scheduling constraints of the model server's pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// The volume that keeps pulled models across restarts.
    #[serde(default)]
    pub cache: ModelCache,

    /// Models pulled before the server counts as ready; every model in `models` when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pull: Vec<String>,

    /// `IfNotPresent` (the default): a model already in the cache is not pulled again,
    /// so a restart needs no model registry. `Never`: the models must already be in the
    /// cache or the image (clusters that reach no registry); a missing one fails the
    /// server's start, naming it.
    #[serde(default)]
    pub pull_policy: ModelPullPolicy,
}

/// When a model server fetches its models from the model registry.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ModelPullPolicy {
    /// Pull the models the cache lacks.
    #[default]
    IfNotPresent,
    /// Never pull: every model must already be in the cache or the image.
    Never,
}

fn default_serve_replicas() -> i32 {
    1
}

/// GPUs for a model server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Gpu {
    /// GPUs per replica.
    #[schemars(range(min = 1, max = 16))]
    pub count: i32,

    /// The extended resource that names a GPU on the cluster's nodes.
    #[serde(default = "default_gpu_resource")]
    pub resource_name: String,
}

fn default_gpu_resource() -> String {
    "nvidia.com/gpu".to_owned()
}

/// The persistent volume pulled models are kept on.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelCache {
    /// Size of the volume.
    #[serde(default = "default_cache_size")]
    pub size: Quantity,

    /// Storage class of the volume; the cluster's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,

    /// An existing claim (pre-filled with models, for example) to use instead of one
    /// the operator creates; `size` and `storageClassName` are then ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub existing_claim: Option<String>,

    /// The models are in the image (at its own `OLLAMA_MODELS`): no volume is made or
    /// mounted.
    #[serde(default)]
    pub from_image: bool,
}

impl Default for ModelCache {
    fn default() -> Self {
        Self {
            size: default_cache_size(),
            storage_class_name: None,
            existing_claim: None,
            from_image: false,
        }
    }
}

fn default_cache_size() -> Quantity {
    Quantity("20Gi".to_owned())
}

/// The observed state of a ModelProvider, written only by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelProviderStatus {
    /// Whether the provider answered its last probe.
    #[serde(default)]
    pub ready: bool,

    /// Why the provider is or is not ready, in CamelCase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,

    /// Where agents reach the provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,

    /// The models the provider reported at its last probe.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub available_models: Vec<String>,

    /// When the provider was last probed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe_time: Option<Time>,

    /// kstatus's `Ready` (the last probe answered), `Reconciling` (the model server is
    /// starting) and `Stalled` (the probe's error); `CacheVolume` with `serve`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// One entry of the agents' provider list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProviderEntry {
    /// The ModelProvider's name.
    pub name: String,
    /// Its wire protocol.
    #[serde(rename = "type")]
    pub provider_type: ProviderType,
    /// Local or Cloud.
    pub tier: crate::Tier,
    /// Higher first within a tier.
    pub priority: i32,
    /// Where to reach it.
    pub endpoint: String,
    /// Its models, as the spec describes them.
    pub models: Vec<crate::model_provider::ModelSpec>,
    /// The Secret key holding its API key; agents get it as an environment variable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_ref: Option<crate::common::SecretKeyRef>,
}

/// The port Ollama serves on.
pub const OLLAMA_PORT: i32 = 11434;

/// Name of every object made for provider `provider`.
pub fn serve_name(provider: &str) -> String {
    format!("aios-model-{provider}")
}

/// Where agents reach a provider: its own endpoint, or the Service of its server (an
/// in-cluster address).
pub fn provider_endpoint(provider: &ModelProvider) -> Option<String> {
    use kube::ResourceExt as _;
    if let Some(endpoint) = &provider.spec.endpoint {
        return Some(endpoint.url.trim_end_matches('/').to_owned());
    }
    provider.spec.serve.as_ref()?;
    Some(format!(
        "http://{}.{}.svc:{OLLAMA_PORT}",
        serve_name(&provider.name_any()),
        provider.namespace().unwrap_or_default()
    ))
}

/// The ready providers of a namespace, in a stable order, for the agents' ConfigMap.
pub fn provider_list<'a>(
    providers: impl IntoIterator<Item = &'a ModelProvider>,
) -> Vec<ProviderEntry> {
    let mut list: Vec<ProviderEntry> = providers
        .into_iter()
        .filter(|p| p.status.as_ref().is_some_and(|s| s.ready))
        .filter_map(|p| {
            Some(ProviderEntry {
                name: kube::ResourceExt::name_any(p),
                provider_type: p.spec.provider_type,
                tier: p.spec.tier,
                priority: p.spec.priority,
                endpoint: provider_endpoint(p)?,
                models: p.spec.models.clone(),
                credentials_ref: p
                    .spec
                    .endpoint
                    .as_ref()
                    .and_then(|e| e.credentials_ref.clone()),
            })
        })
        .collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    list
}
