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
            Container, ContainerPort, ExecAction, HTTPGetAction, Lifecycle, LifecycleHandler,
            PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource,
            PodSpec, PodTemplateSpec, Probe, ResourceRequirements, Service, ServicePort,
            ServiceSpec, Volume, VolumeMount, VolumeResourceRequirements,
        },
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use kube::{Resource, ResourceExt};

use crate::pods::{env, quantities, restricted_container, restricted_pod, scratch_volume};

pub use aios_crds::model_provider::{OLLAMA_PORT, provider_endpoint, provider_list, serve_name};
/// The Ollama image for `serve` providers that do not name one, unless the operator is
/// configured with another (`--model-server-image`).
pub const DEFAULT_OLLAMA_IMAGE: &str = "ollama/ollama:0.17.4";

/// What a `serve` provider becomes, in apply order.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeChildren {
    /// The model cache the operator owns; none when the provider names an existing
    /// claim or keeps its models in the image.
    pub cache: Option<PersistentVolumeClaim>,
    /// The model server.
    pub deployment: Deployment,
    /// Where agents reach it.
    pub service: Service,
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

/// The objects a `serve` provider becomes; `None` for an external one. `default_image`
/// serves providers that name no image.
pub fn serve_children(provider: &ModelProvider, default_image: &str) -> Option<ServeChildren> {
    let serve = provider.spec.serve.as_ref()?;
    let name = serve_name(&provider.name_any());
    let meta = |name: String| ObjectMeta {
        name: Some(name),
        namespace: provider.namespace(),
        labels: Some(serve_labels(provider)),
        owner_references: provider.controller_owner_ref(&()).map(|o| vec![o]),
        ..ObjectMeta::default()
    };
    let owned_cache = format!("{name}-cache");
    let cache = (!serve.cache.from_image && serve.cache.existing_claim.is_none())
        .then(|| cache_claim(serve, meta(owned_cache.clone())));
    let claim = if serve.cache.from_image {
        None
    } else {
        Some(serve.cache.existing_claim.clone().unwrap_or(owned_cache))
    };
    let (puller, server) = ollama_containers(provider, serve, default_image, claim.is_some());
    let mut volumes = vec![
        scratch_volume("tmp", "1Gi"),
        scratch_volume("home", "256Mi"),
    ];
    if let Some(claim_name) = claim {
        volumes.push(Volume {
            name: "models".to_owned(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name,
                read_only: Some(false),
            }),
            ..Volume::default()
        });
    }
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
                    // The server needs no Kubernetes API.
                    automount_service_account_token: Some(false),
                    // fsGroup makes the cache volume writable by the server.
                    security_context: Some(restricted_pod()),
                    init_containers: Some(vec![puller]),
                    containers: vec![server],
                    volumes: Some(volumes),
                    node_selector: (!serve.node_selector.is_empty())
                        .then(|| serve.node_selector.clone()),
                    tolerations: (!serve.tolerations.is_empty()).then(|| serve.tolerations.clone()),
                    affinity: serve.affinity.clone(),
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

/// The ReadWriteOnce claim the operator makes for a provider's models.
fn cache_claim(
    serve: &aios_crds::model_provider::Serve,
    metadata: ObjectMeta,
) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata,
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
    }
}

/// The model server's resources: the provider's (or defaults sized for a small model),
/// with its GPUs as a limit.
fn server_resources(serve: &aios_crds::model_provider::Serve) -> ResourceRequirements {
    let mut resources = serve
        .resources
        .clone()
        .unwrap_or_else(|| ResourceRequirements {
            requests: Some(quantities(&[
                ("cpu", "500m"),
                ("memory", "1Gi"),
                ("ephemeral-storage", "1Gi"),
            ])),
            limits: Some(quantities(&[("memory", "8Gi")])),
            ..ResourceRequirements::default()
        });
    if let Some(gpu) = &serve.gpu {
        let count = Quantity(gpu.count.to_string());
        resources
            .limits
            .get_or_insert_with(BTreeMap::new)
            .insert(gpu.resource_name.clone(), count);
    }
    resources
}

/// The script of the init container: starts a private server, then for each model
/// checks the cache (and the image) first and pulls only what is missing, unless the
/// policy is `Never`, where a missing model fails the start naming it.
const PULL_SCRIPT: &str = "ollama serve & server=$!; \
     until ollama list >/dev/null 2>&1; do sleep 1; done; \
     for model in $AIOS_PULL_MODELS; do \
       if ollama show \"$model\" >/dev/null 2>&1; then echo \"model $model: already present\"; \
       elif [ \"$AIOS_PULL_POLICY\" = Never ]; then echo \"model $model is not in the cache or the image and pullPolicy is Never\" >&2; kill $server; exit 1; \
       else ollama pull \"$model\" || { kill $server; exit 1; }; fi; \
     done; \
     kill $server";

/// The server container's start hook: once the server answers, loads every served
/// model into memory (an empty prompt loads a generative model; an embeddings model
/// needs an input), so the first agent call does not pay the load. A model that fails
/// to load fails the hook, and the kubelet restarts the container.
const LOAD_SCRIPT: &str = "until ollama list >/dev/null 2>&1; do sleep 1; done; \
     for model in $AIOS_SERVE_MODELS; do \
       ollama run \"$model\" </dev/null >/dev/null 2>&1 || ollama run \"$model\" load </dev/null >/dev/null || exit 1; \
     done";

/// The startup probe's script: the server has every served model loaded (`ollama ps`
/// names it, with `:latest` when the name has no tag). Until it passes the pod is not
/// Ready, so the Service sends no agent call to a server still loading.
const LOADED_SCRIPT: &str = "loaded=$(ollama ps) || exit 1; \
     for model in $AIOS_SERVE_MODELS; do \
       case $model in *:*) name=$model ;; *) name=$model:latest ;; esac; \
       printf '%s\\n' \"$loaded\" | grep -q \"^$name \" || { echo \"$model is not loaded\"; exit 1; }; \
     done";

/// How long a model server may take to load its models before the kubelet restarts it
/// (the startup probe's period times its failure threshold): large models on slow disks
/// take minutes.
const LOAD_TIMEOUT_SECONDS: i32 = 1800;

/// The init container that fills the cache, and the server.
fn ollama_containers(
    provider: &ModelProvider,
    serve: &aios_crds::model_provider::Serve,
    default_image: &str,
    has_cache_volume: bool,
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
        .unwrap_or_else(|| default_image.to_owned());
    let mount = |name: &str, path: &str| VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        ..VolumeMount::default()
    };
    let mut mounts = vec![mount("tmp", "/tmp"), mount("home", "/home/ollama")];
    let mut ollama_env = vec![
        env("OLLAMA_HOST", &format!("0.0.0.0:{OLLAMA_PORT}")),
        // Ollama keeps its key under $HOME; the root file system is read-only.
        env("HOME", "/home/ollama"),
    ];
    if has_cache_volume {
        mounts.push(mount("models", "/models"));
        ollama_env.push(env("OLLAMA_MODELS", "/models"));
    }
    let mut pull_env = ollama_env.clone();
    pull_env.push(env("AIOS_PULL_MODELS", &pull.join(" ")));
    // A dedicated server keeps what it serves in memory rather than unloading it after
    // five idle minutes (Ollama's default), and names the models it loads at start.
    ollama_env.push(env("OLLAMA_KEEP_ALIVE", "-1"));
    ollama_env.push(env("AIOS_SERVE_MODELS", &pull.join(" ")));
    let policy = match serve.pull_policy {
        aios_crds::model_provider::ModelPullPolicy::IfNotPresent => "IfNotPresent",
        aios_crds::model_provider::ModelPullPolicy::Never => "Never",
    };
    pull_env.push(env("AIOS_PULL_POLICY", policy));
    let puller = Container {
        name: "pull-models".to_owned(),
        image: Some(image.clone()),
        image_pull_policy: Some("IfNotPresent".to_owned()),
        command: Some(vec![
            "/bin/sh".to_owned(),
            "-c".to_owned(),
            PULL_SCRIPT.to_owned(),
        ]),
        env: Some(pull_env),
        resources: Some(ResourceRequirements {
            requests: Some(quantities(&[("cpu", "100m"), ("memory", "256Mi")])),
            limits: Some(quantities(&[("memory", "1Gi")])),
            ..ResourceRequirements::default()
        }),
        security_context: Some(restricted_container()),
        volume_mounts: Some(mounts.clone()),
        ..Container::default()
    };
    let server = Container {
        name: "ollama".to_owned(),
        image: Some(image),
        image_pull_policy: Some("IfNotPresent".to_owned()),
        env: Some(ollama_env),
        ports: Some(vec![ContainerPort {
            name: Some("http".to_owned()),
            container_port: OLLAMA_PORT,
            ..ContainerPort::default()
        }]),
        resources: Some(server_resources(serve)),
        lifecycle: Some(Lifecycle {
            post_start: Some(LifecycleHandler {
                exec: Some(shell(LOAD_SCRIPT)),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        startup_probe: Some(Probe {
            exec: Some(shell(LOADED_SCRIPT)),
            period_seconds: Some(5),
            timeout_seconds: Some(5),
            failure_threshold: Some(LOAD_TIMEOUT_SECONDS / 5),
            ..Probe::default()
        }),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/api/tags".to_owned()),
                port: IntOrString::Int(OLLAMA_PORT),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(10),
            ..Probe::default()
        }),
        security_context: Some(restricted_container()),
        volume_mounts: Some(mounts),
        ..Container::default()
    };
    (puller, server)
}

/// A command that runs `script` with the image's shell.
fn shell(script: &str) -> ExecAction {
    ExecAction {
        command: Some(vec![
            "/bin/sh".to_owned(),
            "-c".to_owned(),
            script.to_owned(),
        ]),
    }
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

/// Whether agent pods may carry `provider`'s credential: its last reconcile found the
/// Secret allows the use (the provider was then probed: it listed its models, or was
/// unreachable). Before that first check, and after a refusal, they do not.
pub fn credential_cleared(provider: &ModelProvider) -> bool {
    matches!(
        provider.status.as_ref().and_then(|s| s.reason.as_deref()),
        Some("ModelsListed" | "Unreachable")
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

    /// The model server's pod as `provider` renders it.
    fn server_pod(provider: &ModelProvider) -> k8s_openapi::api::core::v1::PodSpec {
        serve_children(provider, DEFAULT_OLLAMA_IMAGE)
            .unwrap()
            .deployment
            .spec
            .template
            .spec
            .unwrap()
    }

    #[test]
    fn a_served_provider_is_placed_where_its_spec_says() {
        let placed = provider(serde_json::json!({
            "type": "Ollama", "tier": "Local", "models": [{"name": "m"}],
            "serve": {
                "gpu": {"count": 1},
                "nodeSelector": {"pool": "gpu"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [{"key": "gpu-type", "operator": "In", "values": ["l4"]}]}]}}}
            }
        }));
        let pod = server_pod(&placed);
        assert_eq!(pod.node_selector.unwrap()["pool"], "gpu");
        assert_eq!(
            pod.tolerations.unwrap()[0].key.as_deref(),
            Some("nvidia.com/gpu")
        );
        assert!(pod.affinity.unwrap().node_affinity.is_some());
        let plain = server_pod(&served());
        assert!(
            plain.node_selector.is_none()
                && plain.tolerations.is_none()
                && plain.affinity.is_none()
        );
    }

    #[test]
    fn a_served_provider_becomes_a_cache_a_server_that_pulls_first_and_a_service() {
        let c = serve_children(&served(), DEFAULT_OLLAMA_IMAGE).unwrap();
        let cache = c.cache.unwrap();
        let pvc = cache.spec.clone().unwrap();
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
        assert_eq!(claim_of(&pod).as_deref(), Some("aios-model-ollama-cache"));
        assert_eq!(
            c.deployment.spec.strategy.unwrap().type_.as_deref(),
            Some("Recreate")
        );
        let svc = c.service.spec.unwrap();
        assert_eq!(svc.ports.unwrap()[0].port, OLLAMA_PORT);
        for meta in [&cache.metadata, &c.deployment.metadata, &c.service.metadata] {
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

    /// Runs one of the server's scripts with `sh`, against a scripted `ollama` on the
    /// PATH: `ps` prints `loaded`; `run` with an empty prompt fails for `nomic-embed-text`
    /// (an embeddings model) and records each load in `runs`.
    fn run_script(script: &str, models: &str, loaded: &str) -> (bool, String, String) {
        let dir = std::env::temp_dir().join(format!(
            "aios-ollama-script-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let runs = dir.join("runs");
        let fake = format!(
            "#!/bin/sh\ncase $1 in\n list) exit 0 ;;\n ps) printf 'NAME ID SIZE\\n{loaded}' ;;\n run) prompt=$(cat); [ -n \"$3$prompt\" ] || [ \"$2\" != nomic-embed-text ] || exit 1; echo \"$2 $3\" >>{runs} ;;\nesac\n",
            runs = runs.display()
        );
        let ollama = dir.join("ollama");
        std::fs::write(&ollama, fake).unwrap();
        std::process::Command::new("chmod")
            .args(["+x", &ollama.display().to_string()])
            .status()
            .unwrap();
        let out = std::process::Command::new("/bin/sh")
            .args(["-c", script])
            .env("PATH", format!("{}:/usr/bin:/bin", dir.display()))
            .env("AIOS_SERVE_MODELS", models)
            .output()
            .unwrap();
        let recorded = std::fs::read_to_string(&runs).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&dir);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            recorded,
        )
    }

    fn rand_suffix() -> u64 {
        use std::hash::{BuildHasher, RandomState};
        RandomState::new().hash_one(std::time::SystemTime::now())
    }

    #[test]
    fn the_server_is_started_only_once_every_served_model_is_loaded() {
        let c = serve_children(&served(), DEFAULT_OLLAMA_IMAGE).unwrap();
        let server = &c.deployment.spec.template.spec.unwrap().containers[0];
        assert_eq!(
            env_of(server, "AIOS_SERVE_MODELS").as_deref(),
            Some("qwen2.5-coder:7b nomic-embed-text")
        );
        assert_eq!(env_of(server, "OLLAMA_KEEP_ALIVE").as_deref(), Some("-1"));
        let startup = server.startup_probe.as_ref().unwrap();
        let probe = startup.exec.as_ref().unwrap().command.as_ref().unwrap();
        assert_eq!(probe[2], LOADED_SCRIPT);
        assert!(
            startup.period_seconds.unwrap() * startup.failure_threshold.unwrap() >= 1800,
            "large models get time to load"
        );
        let hook = server
            .lifecycle
            .as_ref()
            .unwrap()
            .post_start
            .as_ref()
            .unwrap();
        assert_eq!(
            hook.exec.as_ref().unwrap().command.as_ref().unwrap()[2],
            LOAD_SCRIPT
        );

        // The probe fails while a model is missing from `ollama ps`, naming it…
        let models = "qwen2.5-coder:7b nomic-embed-text";
        let (ok, said, _) = run_script(LOADED_SCRIPT, models, "qwen2.5-coder:7b abc 5 GB\\n");
        assert!(!ok);
        assert!(said.contains("nomic-embed-text is not loaded"), "{said}");
        // …a name without a tag is the `:latest` one, and a prefix is not a match…
        let (ok, _, _) = run_script(
            LOADED_SCRIPT,
            models,
            "qwen2.5-coder:7b-q8 a 5 GB\\nnomic-embed-text:latest b 1 GB\\n",
        );
        assert!(!ok, "qwen2.5-coder:7b-q8 is another model");
        // …and passes once every one is loaded.
        let (ok, said, _) = run_script(
            LOADED_SCRIPT,
            models,
            "qwen2.5-coder:7b a 5 GB\\nnomic-embed-text:latest b 1 GB\\n",
        );
        assert!(ok, "{said}");

        // The hook loads each model: an empty prompt, or an input for embeddings.
        let (ok, _, runs) = run_script(LOAD_SCRIPT, models, "");
        assert!(ok);
        assert_eq!(
            runs.lines().collect::<Vec<_>>(),
            ["qwen2.5-coder:7b ", "nomic-embed-text load"]
        );
    }

    fn claim_of(pod: &PodSpec) -> Option<String> {
        pod.volumes
            .as_ref()?
            .iter()
            .find_map(|v| Some(v.persistent_volume_claim.as_ref()?.claim_name.clone()))
    }

    fn env_of(container: &Container, name: &str) -> Option<String> {
        container
            .env
            .as_ref()?
            .iter()
            .find(|e| e.name == name)?
            .value
            .clone()
    }

    #[test]
    fn model_server_pods_pass_pod_security_restricted_and_have_resources() {
        // A provider that names no resources gets the defaults.
        let mut p = served();
        p.spec.serve.as_mut().unwrap().resources = None;
        let c = serve_children(&p, "registry.local/ollama:1.0").unwrap();
        let pod = c.deployment.spec.template.spec.unwrap();
        let sc = pod.security_context.as_ref().unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.run_as_user, Some(65532));
        assert_eq!(
            sc.fs_group,
            Some(65532),
            "the cache is writable by the server"
        );
        assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        assert_eq!(pod.automount_service_account_token, Some(false));
        let init = &pod.init_containers.as_ref().unwrap()[0];
        for container in [init, &pod.containers[0]] {
            let csc = container.security_context.as_ref().unwrap();
            assert_eq!(
                csc.allow_privilege_escalation,
                Some(false),
                "{}",
                container.name
            );
            assert_eq!(
                csc.read_only_root_filesystem,
                Some(true),
                "{}",
                container.name
            );
            assert_eq!(
                csc.capabilities.as_ref().unwrap().drop.as_deref(),
                Some(&["ALL".to_owned()][..])
            );
            let resources = container.resources.as_ref().unwrap();
            assert!(resources.requests.as_ref().unwrap().contains_key("memory"));
            assert!(resources.limits.as_ref().unwrap().contains_key("memory"));
            assert_eq!(
                container.image.as_deref(),
                Some("registry.local/ollama:1.0")
            );
            assert_eq!(container.image_pull_policy.as_deref(), Some("IfNotPresent"));
            assert_eq!(env_of(container, "HOME").as_deref(), Some("/home/ollama"));
        }
        // Scratch space is bounded.
        for volume in pod.volumes.as_ref().unwrap() {
            if let Some(empty) = &volume.empty_dir {
                assert!(
                    empty.size_limit.is_some(),
                    "{} has a size limit",
                    volume.name
                );
            }
        }
    }

    #[test]
    fn a_model_in_the_cache_is_not_pulled_again_and_never_means_never() {
        let mut p = served();
        let c = serve_children(&p, DEFAULT_OLLAMA_IMAGE).unwrap();
        let pod = c.deployment.spec.template.spec.unwrap();
        let init = &pod.init_containers.as_ref().unwrap()[0];
        let script = &init.command.as_ref().unwrap()[2];
        let show = script.find("ollama show").expect("the cache is checked");
        let pull = script
            .find("ollama pull")
            .expect("missing models are pulled");
        assert!(
            show < pull,
            "the cache is checked before any pull: {script}"
        );
        assert_eq!(
            env_of(init, "AIOS_PULL_POLICY").as_deref(),
            Some("IfNotPresent")
        );

        p.spec.serve.as_mut().unwrap().pull_policy =
            aios_crds::model_provider::ModelPullPolicy::Never;
        let c = serve_children(&p, DEFAULT_OLLAMA_IMAGE).unwrap();
        let pod = c.deployment.spec.template.spec.unwrap();
        let init = &pod.init_containers.as_ref().unwrap()[0];
        assert_eq!(env_of(init, "AIOS_PULL_POLICY").as_deref(), Some("Never"));
    }

    #[test]
    fn models_can_come_from_an_existing_claim_or_from_the_image() {
        let mut p = served();
        p.spec.serve.as_mut().unwrap().cache.existing_claim = Some("prefilled".to_owned());
        let c = serve_children(&p, DEFAULT_OLLAMA_IMAGE).unwrap();
        assert!(c.cache.is_none(), "no claim is made when one is named");
        let pod = c.deployment.spec.template.spec.unwrap();
        assert_eq!(claim_of(&pod).as_deref(), Some("prefilled"));
        assert_eq!(
            env_of(&pod.containers[0], "OLLAMA_MODELS").as_deref(),
            Some("/models")
        );

        let mut p = served();
        p.spec.serve.as_mut().unwrap().cache.from_image = true;
        let c = serve_children(&p, DEFAULT_OLLAMA_IMAGE).unwrap();
        assert!(c.cache.is_none());
        let pod = c.deployment.spec.template.spec.unwrap();
        assert_eq!(claim_of(&pod), None, "no volume hides the image's models");
        assert_eq!(
            env_of(&pod.containers[0], "OLLAMA_MODELS"),
            None,
            "the image's own OLLAMA_MODELS stays"
        );
    }

    #[test]
    fn an_external_provider_has_no_children_and_keeps_its_endpoint() {
        let p = provider(serde_json::json!({
            "type": "Anthropic", "tier": "Cloud", "models": [{"name": "claude-sonnet-4-5"}],
            "endpoint": {"url": "https://api.anthropic.com/", "credentialsRef": {"name": "anthropic", "key": "api-key"}}
        }));
        assert!(serve_children(&p, DEFAULT_OLLAMA_IMAGE).is_none());
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
