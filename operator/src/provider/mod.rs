//! The ModelProvider controller: keeps a `serve` provider's model server applied,
//! probes every provider's model list, reports it in the status, and publishes the
//! namespace's ready providers into the ConfigMap agent pods mount.
//!
//! fetch → desired state (pure, `providers`) → apply → probe (I/O, bounded by a timeout)
//! → status (pure, one patch when it changed) → the namespace's provider list.

pub mod credentials;
pub mod objects;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use aios_crds::{
    ModelProvider, ModelProviderStatus, ProviderType,
    conditions::{self, reasons},
    names::{field_managers, labels},
};
use jiff::Timestamp;
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service},
    },
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::{
    Api, Resource, ResourceExt,
    api::ObjectMeta,
    runtime::{controller::Action, reflector::ObjectRef},
};

use crate::{
    Error,
    kstatus::{Health, set_health},
    provider::objects::{
        ServeChildren, models_path, parse_models, provider_endpoint, provider_list, serve_children,
    },
    runtime::context::{Context, server_side_apply},
    task::lifecycle::{condition, set_condition},
};

/// How long a probe may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest wait between probes of a provider that is not ready.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The HTTP client probes use.
pub fn probe_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(PROBE_TIMEOUT)
        .connect_timeout(PROBE_TIMEOUT)
        .build()
        .unwrap_or_default()
}

/// Asks a provider for its models; the error says what went wrong, for the status.
pub async fn probe(
    http: &reqwest::Client,
    kind: ProviderType,
    endpoint: &str,
    api_key: Option<&str>,
) -> Result<Vec<String>, String> {
    let url = format!("{endpoint}{}", models_path(kind));
    let mut request = http.get(&url);
    if let Some(key) = api_key {
        request = match kind {
            ProviderType::Anthropic => request
                .header("x-api-key", key)
                .header("anthropic-version", "2023-06-01"),
            _ => request.bearer_auth(key),
        };
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("GET {url}: HTTP {status}"));
    }
    let body: serde_json::Value = response
        .json()
        .await
        .map_err(|e| format!("GET {url}: not JSON: {e}"))?;
    parse_models(kind, &body).ok_or_else(|| format!("GET {url}: no model list in the answer"))
}

/// The ModelProviders of `secret`'s namespace whose `credentialsRef` names it: a
/// credential Secret that appears or changes has them probed again at once.
pub fn providers_naming(
    providers: &crate::runtime::grouped::ProvidersByNamespace,
    secret: &Secret,
) -> Vec<ObjectRef<ModelProvider>> {
    let name = secret.name_any();
    providers
        .in_namespace(&secret.namespace().unwrap_or_default())
        .iter()
        .filter(|p| {
            p.spec
                .endpoint
                .as_ref()
                .and_then(|e| e.credentials_ref.as_ref())
                .is_some_and(|r| r.name == name)
        })
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

/// The provider's API key, if it names one and its Secret allows this use: labelled
/// for models, with the endpoint's host among its hosts (see [`crate::provider::credentials`]).
fn api_key(
    ctx: &Context,
    provider: &ModelProvider,
) -> Result<Option<String>, crate::provider::credentials::CredentialError> {
    let Some(endpoint) = provider.spec.endpoint.as_ref() else {
        return Ok(None);
    };
    let Some(reference) = endpoint.credentials_ref.as_ref() else {
        return Ok(None);
    };
    let namespace = provider.namespace().unwrap_or_default();
    crate::provider::credentials::fetch(
        &ctx.credentials,
        &namespace,
        reference,
        crate::provider::credentials::Use::Model,
        &endpoint.url,
    )
    .map(Some)
}

/// The models `provider` lists at `endpoint`, probed with its API key when its Secret
/// allows that; else why it is not ready, as a CamelCase reason and a message.
async fn probe_provider(
    ctx: &Context,
    provider: &ModelProvider,
    endpoint: Option<&str>,
) -> Result<Vec<String>, (&'static str, String)> {
    use crate::provider::credentials::{CredentialError, REFUSED, UNAVAILABLE};
    let Some(url) = endpoint else {
        return Err((
            "Unreachable",
            "no endpoint: set spec.endpoint or spec.serve".to_owned(),
        ));
    };
    let key = match api_key(ctx, provider) {
        Ok(key) => key,
        Err(err @ CredentialError::Refused(_)) => return Err((REFUSED, err.to_string())),
        Err(err) => return Err((UNAVAILABLE, err.to_string())),
    };
    probe(&ctx.http, provider.spec.provider_type, url, key.as_deref())
        .await
        .map_err(|e| ("Unreachable", e))
}

/// Reconciles one ModelProvider.
#[tracing::instrument(skip_all, fields(provider = %provider.name_any(), namespace = provider.namespace().unwrap_or_default()))]
pub async fn reconcile(provider: Arc<ModelProvider>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics
        .time_reconcile("model_provider", Box::pin(reconcile_inner(&provider, &ctx)))
        .await
}

async fn reconcile_inner(provider: &ModelProvider, ctx: &Context) -> Result<Action, Error> {
    if !ctx.leadership.is_current() {
        return Err(Error::NotLeader);
    }
    if provider.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = provider.namespace().unwrap_or_default();
    let now = Timestamp::now();

    let Served {
        cache_problem,
        starting,
    } = apply_model_server(ctx, &namespace, provider).await?;

    let endpoint = provider_endpoint(provider);
    let probed = probe_provider(ctx, provider, endpoint.as_deref()).await;
    tracing::debug!(?probed, "probed the provider");
    let previous = provider.status.clone().unwrap_or_default();
    let mut status = ModelProviderStatus {
        endpoint: endpoint.clone(),
        last_probe_time: Some(Time(now)),
        conditions: previous.conditions.clone(),
        observed_generation: provider.metadata.generation,
        ..ModelProviderStatus::default()
    };
    if provider.spec.serve.is_some() {
        let (value, reason, message) = match &cache_problem {
            Some(message) => ("False", "CacheVolumeNotUpdated", message.as_str()),
            None => (
                "True",
                "CacheVolumeApplied",
                "the model cache is as the spec says",
            ),
        };
        set_condition(
            &mut status.conditions,
            conditions::CACHE_VOLUME,
            value,
            reason,
            message,
            now,
        );
    }
    let health = match &probed {
        Ok(models) => {
            status.ready = true;
            status.reason = Some("ModelsListed".to_owned());
            status.available_models.clone_from(models);
            Health::Ready {
                reason: "ModelsListed".to_owned(),
                message: format!("{} models available", models.len()),
            }
        }
        Err((reason, error)) => {
            status.ready = false;
            status.reason = Some((*reason).to_owned());
            if starting {
                Health::Reconciling {
                    reason: reasons::MODEL_SERVER_STARTING.to_owned(),
                    message: format!("the model server is starting: {error}"),
                }
            } else {
                Health::Stalled {
                    reason: (*reason).to_owned(),
                    message: error.clone(),
                }
            }
        }
    };
    set_health(
        &mut status.conditions,
        &health,
        provider.metadata.generation,
        now,
    );
    if differs(&previous, &status) {
        crate::runtime::context::apply_status(
            &Api::<ModelProvider>::namespaced(ctx.client.clone(), &namespace),
            &provider.name_any(),
            None,
            &status,
            field_managers::MODEL_PROVIDER,
        )
        .await?;
    }
    let mut current = provider.clone();
    current.status = Some(status.clone());
    publish_provider_list(ctx, &namespace, Some(&current)).await?;

    if status.ready {
        return Ok(Action::requeue(ctx.provider_probe_interval));
    }
    // Backoff: wait about as long again as the provider has been down, 2s to 5 minutes.
    let down_since =
        condition(&status.conditions, conditions::READY).map_or(now, |c| c.last_transition_time.0);
    let down_for = Duration::try_from(now.duration_since(down_since)).unwrap_or_default();
    Ok(Action::requeue(
        down_for.clamp(Duration::from_secs(2), MAX_BACKOFF),
    ))
}

/// Applies a `serve` provider's model server, cache first: the Deployment mounts it.
/// Destructured without `..`, so a new child cannot be forgotten. A cache the API server
/// refuses to change (a claim's storage class, or a smaller size, cannot change) does
/// not stop the rest: the refusal is returned for the status, and the server keeps the
/// volume it has.
async fn apply_model_server(
    ctx: &Context,
    namespace: &str,
    provider: &ModelProvider,
) -> Result<Served, Error> {
    let Some(ServeChildren {
        cache,
        deployment,
        service,
    }) = serve_children(provider, &ctx.model_server_image)
    else {
        return Ok(Served::default());
    };
    let mut cache_problem = None;
    if let Some(cache) = cache {
        let api = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), namespace);
        match server_side_apply(&api, &cache, field_managers::MODEL_PROVIDER).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 422 => {
                let message = format!(
                    "the cache volume {} cannot be changed as the spec asks (delete it to recreate it): {}",
                    cache.name_any(),
                    status.message
                );
                tracing::warn!(%message, "model cache not updated");
                cache_problem = Some(message);
            }
            Err(err) => return Err(err.into()),
        }
    }
    let applied = server_side_apply(
        &Api::<Deployment>::namespaced(ctx.client.clone(), namespace),
        &deployment,
        field_managers::MODEL_PROVIDER,
    )
    .await?;
    server_side_apply(
        &Api::<Service>::namespaced(ctx.client.clone(), namespace),
        &service,
        field_managers::MODEL_PROVIDER,
    )
    .await?;
    let wanted = applied.spec.replicas.unwrap_or(1);
    let ready = applied
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    Ok(Served {
        cache_problem,
        starting: ready < wanted,
    })
}

/// What applying a served model's children found.
#[derive(Debug, Default)]
struct Served {
    /// The cache volume the API server would not change, and why.
    cache_problem: Option<String>,
    /// The model server has fewer ready replicas than it wants: failed probes are
    /// expected while it starts.
    starting: bool,
}

/// Whether two statuses differ in more than the probe and transition times.
fn differs(a: &ModelProviderStatus, b: &ModelProviderStatus) -> bool {
    let strip = |s: &ModelProviderStatus| {
        let mut s = s.clone();
        s.last_probe_time = None;
        for c in &mut s.conditions {
            c.last_transition_time = Time(Timestamp::UNIX_EPOCH);
        }
        s
    };
    strip(a) != strip(b)
}

/// Writes the namespace's ready providers into the ConfigMap agent pods mount, with
/// `updated` (a provider with the status just computed) in place of its cached copy.
/// Called after each provider's reconcile, and when a provider is deleted.
pub async fn publish_provider_list(
    ctx: &Context,
    namespace: &str,
    updated: Option<&ModelProvider>,
) -> Result<(), Error> {
    let updated_name = updated.map(ResourceExt::name_any);
    let others: Vec<Arc<ModelProvider>> = ctx
        .providers_of(namespace)
        .into_iter()
        .filter(|p| Some(p.name_any()) != updated_name)
        .collect();
    let list = provider_list(others.iter().map(AsRef::as_ref).chain(updated));
    let json =
        serde_json::to_string_pretty(&list).map_err(|e| Error::Kube(kube::Error::SerdeError(e)))?;
    let config_map = ConfigMap {
        metadata: ObjectMeta {
            name: Some(ctx.agent_runtime.providers_config_map.clone()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(
                labels::MANAGED_BY.to_owned(),
                labels::MANAGED_BY_VALUE.to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([("providers.json".to_owned(), json)])),
        ..ConfigMap::default()
    };
    server_side_apply(
        &Api::<ConfigMap>::namespaced(ctx.client.clone(), namespace),
        &config_map,
        field_managers::MODEL_PROVIDER,
    )
    .await?;
    Ok(())
}

/// Retries a failed reconcile after a short wait.
#[allow(clippy::needless_pass_by_value)] // the signature kube's controller takes
pub fn error_policy(provider: Arc<ModelProvider>, error: &Error, ctx: Arc<Context>) -> Action {
    Action::requeue(ctx.retry_after(
        "model_provider",
        &crate::runtime::backoff::key(provider.as_ref()),
        error,
        Duration::from_secs(5),
    ))
}
