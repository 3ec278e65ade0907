//! Model providers as Kubernetes objects and as the agents see them, as pure builders:
//! the in-cluster Ollama a `serve` provider becomes (model cache volume, Deployment that
//! pulls its models before it counts as ready, Service), and the list of ready providers
//! agents read.

use std::collections::BTreeMap;

pub use aios_crds::model_provider::ProviderEntry;
use aios_crds::{ModelProvider, ProviderType, names::labels};
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy},
        core::v1::{
            Container, ContainerPort, EnvVar, HTTPGetAction, PersistentVolumeClaim,
            PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec,
            Probe, ResourceRequirements, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
            VolumeResourceRequirements,
        },
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use kube::{Resource, ResourceExt};

/// The port Ollama serves on.
pub const OLLAMA_PORT: i32 = 11434;
/// The Ollama image for `serve` providers that do not name one.
pub const DEFAULT_OLLAMA_IMAGE: &str = "ollama/ollama:0.12.6";

/// What a `serve` provider becomes, in apply order.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeChildren {
    /// The model cache.
    pub cache: PersistentVolumeClaim,
    /// The model server.
    pub deployment: Deployment,
    /// Where agents reach it.
    pub service: Service,
}

/// Name of every object made for provider `provider`.
pub fn serve_name(provider: &str) -> String {
    format!("aios-model-{provider}")
}

/// Where agents reach a provider: its own endpoint, or the Service of its server.
pub fn provider_endpoint(provider: &ModelProvider) -> Option<String> {
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

fn serve_labels(provider: &ModelProvider) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::NAME.to_owned(), "ollama".to_owned()),
        (labels::COMPONENT.to_owned(), "model-server".to_owned()),
        (labels::MODEL_PROVIDER.to_owned(), provider.name_any()),
        (
            labels::MANAGED_BY.to_owned(),
            labels::MANAGED_BY_VALUE.to_owned(),
        ),
    ])
}

/// The objects a `serve` provider becomes; `None` for an external one.
pub fn serve_children(provider: &ModelProvider) -> Option<ServeChildren> {
    let serve = provider.spec.serve.as_ref()?;
    let name = serve_name(&provider.name_any());
    let meta = |name: String| ObjectMeta {
        name: Some(name),
        namespace: provider.namespace(),
        labels: Some(serve_labels(provider)),
        owner_references: provider.controller_owner_ref(&()).map(|o| vec![o]),
        ..ObjectMeta::default()
    };
    let cache_name = format!("{name}-cache");
    let cache = PersistentVolumeClaim {
        metadata: meta(cache_name.clone()),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
            storage_class_name: serve.cache.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    serve.cache.size.clone(),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    };
    let (puller, server) = ollama_containers(provider, serve);
    let selector = BTreeMap::from([
        (labels::NAME.to_owned(), "ollama".to_owned()),
        (labels::MODEL_PROVIDER.to_owned(), provider.name_any()),
    ]);
    let deployment = Deployment {
        metadata: meta(name.clone()),
        spec: DeploymentSpec {
            replicas: Some(serve.replicas),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                ..LabelSelector::default()
            },
            // One ReadWriteOnce cache: the old pod lets go before the new one mounts it.
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".to_owned()),
                rolling_update: None,
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(serve_labels(provider)),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    init_containers: Some(vec![puller]),
                    containers: vec![server],
                    volumes: Some(vec![Volume {
                        name: "models".to_owned(),
                        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                            claim_name: cache_name,
                            read_only: Some(false),
                        }),
                        ..Volume::default()
                    }]),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        status: None,
    };
    let service = Service {
        metadata: meta(name),
        spec: Some(ServiceSpec {
            selector: Some(selector),
            ports: Some(vec![ServicePort {
                name: Some("http".to_owned()),
                port: OLLAMA_PORT,
                target_port: Some(IntOrString::Int(OLLAMA_PORT)),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    };
    Some(ServeChildren {
        cache,
        deployment,
        service,
    })
}

/// The init container that pulls the models into the cache, and the server.
fn ollama_containers(
    provider: &ModelProvider,
    serve: &aios_crds::model_provider::Serve,
) -> (Container, Container) {
    let pull: Vec<String> = if serve.pull.is_empty() {
        provider
            .spec
            .models
            .iter()
            .map(|m| m.name.clone())
            .collect()
    } else {
        serve.pull.clone()
    };
    let image = serve
        .image
        .clone()
        .unwrap_or_else(|| DEFAULT_OLLAMA_IMAGE.to_owned());
    let models_mount = VolumeMount {
        name: "models".to_owned(),
        mount_path: "/models".to_owned(),
        ..VolumeMount::default()
    };
    let ollama_env = vec![
        EnvVar {
            name: "OLLAMA_MODELS".to_owned(),
            value: Some("/models".to_owned()),
            value_from: None,
        },
        EnvVar {
            name: "OLLAMA_HOST".to_owned(),
            value: Some(format!("0.0.0.0:{OLLAMA_PORT}")),
            value_from: None,
        },
    ];
    let mut resources = serve.resources.clone().unwrap_or_default();
    if let Some(gpu) = &serve.gpu {
        let count = Quantity(gpu.count.to_string());
        resources
            .limits
            .get_or_insert_with(BTreeMap::new)
            .insert(gpu.resource_name.clone(), count);
    }
    // The init container pulls every listed model into the cache before the server
    // starts, so the pod is not ready (and no task waits on it) until they are there.
    let pull_script = "ollama serve & server=$!; \
         until ollama list >/dev/null 2>&1; do sleep 1; done; \
         for model in $AIOS_PULL_MODELS; do ollama pull \"$model\" || exit 1; done; \
         kill $server";
    let mut pull_env = ollama_env.clone();
    pull_env.push(EnvVar {
        name: "AIOS_PULL_MODELS".to_owned(),
        value: Some(pull.join(" ")),
        value_from: None,
    });
    let puller = Container {
        name: "pull-models".to_owned(),
        image: Some(image.clone()),
        command: Some(vec![
            "/bin/sh".to_owned(),
            "-c".to_owned(),
            pull_script.to_owned(),
        ]),
        env: Some(pull_env),
        volume_mounts: Some(vec![models_mount.clone()]),
        ..Container::default()
    };
    let server = Container {
        name: "ollama".to_owned(),
        image: Some(image),
        env: Some(ollama_env),
        ports: Some(vec![ContainerPort {
            name: Some("http".to_owned()),
            container_port: OLLAMA_PORT,
            ..ContainerPort::default()
        }]),
        resources: Some(ResourceRequirements { ..resources }),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/api/tags".to_owned()),
                port: IntOrString::Int(OLLAMA_PORT),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(10),
            ..Probe::default()
        }),
        volume_mounts: Some(vec![models_mount]),
        ..Container::default()
    };
    (puller, server)
}

/// The path that lists a provider's models.
pub fn models_path(kind: ProviderType) -> &'static str {
    match kind {
        ProviderType::Ollama => "/api/tags",
        ProviderType::OpenAI | ProviderType::OpenAICompatible | ProviderType::Anthropic => {
            "/v1/models"
        }
    }
}

/// The model names in a model-list response: Ollama's `{"models": [{"name"}]}` or the
/// OpenAI and Anthropic `{"data": [{"id"}]}`.
pub fn parse_models(kind: ProviderType, body: &serde_json::Value) -> Option<Vec<String>> {
    let (list, key) = match kind {
        ProviderType::Ollama => (body.get("models")?, "name"),
        _ => (body.get("data")?, "id"),
    };
    Some(
        list.as_array()?
            .iter()
            .filter_map(|m| {
                m.get(key)
                    .and_then(serde_json::Value::as_str)
                    .map(str::to_owned)
            })
            .collect(),
    )
}

/// Whether a ready provider among `providers` has a chat model that may take a task of
/// `complexity`.
pub fn can_take<'a>(
    providers: impl IntoIterator<Item = &'a ModelProvider>,
    complexity: aios_crds::Complexity,
) -> bool {
    providers.into_iter().any(|p| {
        p.status.as_ref().is_some_and(|s| s.ready)
            && p.spec
                .models
                .iter()
                .any(|m| !m.embeddings && m.max_complexity >= complexity)
    })
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
                name: p.name_any(),
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

#[cfg(test)]
mod tests {
    use aios_crds::model_provider::ModelProviderStatus;

    use super::*;

    #[allow(clippy::needless_pass_by_value)] // builders take their JSON by value
    fn provider(spec: serde_json::Value) -> ModelProvider {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "aios.dev/v1alpha1", "kind": "ModelProvider",
            "metadata": {"name": "ollama", "namespace": "team-a", "uid": "uid-ollama"},
            "spec": spec
        }))
        .unwrap()
    }

    fn served() -> ModelProvider {
        provider(serde_json::json!({
            "type": "Ollama", "tier": "Local",
            "models": [{"name": "qwen2.5-coder:7b"}, {"name": "nomic-embed-text", "embeddings": true}],
            "serve": {"replicas": 1, "gpu": {"count": 1}, "cache": {"size": "30Gi", "storageClassName": "fast"},
                      "resources": {"requests": {"cpu": "2"}}}
        }))
    }

    #[test]
    fn a_served_provider_becomes_a_cache_a_server_that_pulls_first_and_a_service() {
        let c = serve_children(&served()).unwrap();
        let pvc = c.cache.spec.unwrap();
        assert_eq!(
            pvc.resources.unwrap().requests.unwrap()["storage"],
            Quantity("30Gi".into())
        );
        assert_eq!(pvc.storage_class_name.as_deref(), Some("fast"));
        let pod = c.deployment.spec.template.spec.unwrap();
        let pull = &pod.init_containers.as_ref().unwrap()[0];
        let models = pull
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == "AIOS_PULL_MODELS")
            .unwrap();
        assert_eq!(
            models.value.as_deref(),
            Some("qwen2.5-coder:7b nomic-embed-text")
        );
        let server = &pod.containers[0];
        let limits = server.resources.as_ref().unwrap().limits.as_ref().unwrap();
        assert_eq!(limits["nvidia.com/gpu"], Quantity("1".into()));
        assert_eq!(
            server
                .readiness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/api/tags")
        );
        assert_eq!(
            pod.volumes.as_ref().unwrap()[0]
                .persistent_volume_claim
                .as_ref()
                .unwrap()
                .claim_name,
            "aios-model-ollama-cache"
        );
        assert_eq!(
            c.deployment.spec.strategy.unwrap().type_.as_deref(),
            Some("Recreate")
        );
        let svc = c.service.spec.unwrap();
        assert_eq!(svc.ports.unwrap()[0].port, OLLAMA_PORT);
        for meta in [
            &c.cache.metadata,
            &c.deployment.metadata,
            &c.service.metadata,
        ] {
            let owner = &meta.owner_references.as_ref().unwrap()[0];
            assert_eq!(
                (owner.kind.as_str(), owner.name.as_str()),
                ("ModelProvider", "ollama")
            );
        }
        assert_eq!(
            provider_endpoint(&served()).as_deref(),
            Some("http://aios-model-ollama.team-a.svc:11434")
        );
    }

    #[test]
    fn an_external_provider_has_no_children_and_keeps_its_endpoint() {
        let p = provider(serde_json::json!({
            "type": "Anthropic", "tier": "Cloud", "models": [{"name": "claude-sonnet-4-5"}],
            "endpoint": {"url": "https://api.anthropic.com/", "credentialsRef": {"name": "anthropic", "key": "api-key"}}
        }));
        assert!(serve_children(&p).is_none());
        assert_eq!(
            provider_endpoint(&p).as_deref(),
            Some("https://api.anthropic.com")
        );
        assert_eq!(models_path(ProviderType::Anthropic), "/v1/models");
    }

    #[test]
    fn model_lists_are_read_from_each_wire_format() {
        let ollama = serde_json::json!({"models": [{"name": "llama3.2:latest", "size": 1}, {"name": "qwen"}]});
        assert_eq!(
            parse_models(ProviderType::Ollama, &ollama).unwrap(),
            ["llama3.2:latest", "qwen"]
        );
        let openai = serde_json::json!({"object": "list", "data": [{"id": "gpt-4o"}]});
        assert_eq!(
            parse_models(ProviderType::OpenAICompatible, &openai).unwrap(),
            ["gpt-4o"]
        );
        assert!(
            parse_models(ProviderType::Ollama, &openai).is_none(),
            "the wrong shape is not a list"
        );
    }

    #[test]
    fn the_agents_list_holds_ready_providers_with_secret_references_only() {
        let mut ready = provider(serde_json::json!({
            "type": "OpenAI", "tier": "Cloud", "priority": 5, "models": [{"name": "gpt-4o", "inputPricePer1k": 0.005}],
            "endpoint": {"url": "https://api.openai.com", "credentialsRef": {"name": "openai", "key": "key"}}
        }));
        ready.status = Some(ModelProviderStatus {
            ready: true,
            ..ModelProviderStatus::default()
        });
        let not_ready = served();
        let list = provider_list([&ready, &not_ready]);
        assert!(
            can_take([&ready, &not_ready], aios_crds::Complexity::Medium),
            "gpt-4o takes Medium"
        );
        assert!(
            !can_take([&ready, &not_ready], aios_crds::Complexity::High),
            "nothing ready takes High"
        );
        assert_eq!(list.len(), 1);
        let json = serde_json::to_value(&list).unwrap();
        assert_eq!(json[0]["type"], "OpenAI");
        assert_eq!(json[0]["credentialsRef"]["name"], "openai");
        assert_eq!(json[0]["models"][0]["inputPricePer1k"], 0.005);
    }
}
