//! Agent pools as Kubernetes objects, as pure builders: the ServiceAccount (no API
//! permissions), the persona ConfigMap and the Deployment of agent pods; and the
//! replica arithmetic that makes a pool follow its role's queue.

use std::collections::BTreeMap;

use aios_crds::{
    Agent,
    names::{annotations, labels},
};
use jiff::Timestamp;
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy},
        core::v1::{
            ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
            HTTPGetAction, ObjectFieldSelector, PodSpec, PodTemplateSpec, Probe,
            ResourceRequirements, SecretKeySelector, ServiceAccount, Volume, VolumeMount,
        },
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use kube::{Resource, ResourceExt};

use crate::pods::{env, restricted_container, restricted_pod, scratch_volume};

/// Where agent pods get what they need to reach the bus, Redis and the vector store,
/// from the operator's configuration. Connection settings live in a Secret of the
/// Agent's namespace and reach the pods as environment variables; they are never
/// copied. Pods carry no repository token or model key: each attempt asks the
/// operator's credential endpoint for the ones it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRuntime {
    /// The agent image, for Agents that do not name one.
    pub image: String,
    /// The Secret (in each Agent's namespace) holding the connection settings: keys
    /// `amqpUrl` and `redisUrl`, and optionally `qdrantUrl`, `qdrantApiKey` and `caCert`
    /// (PEM certificates the agents trust for `amqps://`, `rediss://` and Qdrant).
    pub connection_secret: String,
    /// The port agent pods serve `/healthz`, `/readyz` and `/metrics` on.
    pub health_port: i32,
    /// The ConfigMap (per namespace) with the ready model providers, mounted by pods.
    pub providers_config_map: String,
    /// Where agents reach the operator's credential endpoint (`http://host:port`);
    /// without it they have only the credentials an Agent's `env` gives them.
    pub credential_url: Option<String>,
}

impl Default for AgentRuntime {
    fn default() -> Self {
        Self {
            image: format!("ghcr.io/aios-dev/aios-agent:{}", env!("CARGO_PKG_VERSION")),
            connection_secret: "aios-agent-connections".to_owned(),
            health_port: 8080,
            providers_config_map: "aios-providers".to_owned(),
            credential_url: None,
        }
    }
}

/// Everything an Agent is made of, in apply order.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentChildren {
    /// The pods' identity: no API permissions, no token mounted.
    pub service_account: ServiceAccount,
    /// The persona: name, specialties and system prompt.
    pub persona: ConfigMap,
    /// The agent pods.
    pub deployment: Deployment,
}

/// Name of every object made for Agent `agent`.
pub fn child_name(agent: &str) -> String {
    format!("aios-agent-{agent}")
}

fn child_labels(agent: &Agent) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::NAME.to_owned(), "aios-agent".to_owned()),
        (labels::COMPONENT.to_owned(), "agent".to_owned()),
        (labels::AGENT.to_owned(), agent.name_any()),
        (labels::ROLE.to_owned(), agent.spec.role.to_string()),
        (
            labels::MANAGED_BY.to_owned(),
            labels::MANAGED_BY_VALUE.to_owned(),
        ),
    ])
}

fn child_meta(agent: &Agent, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: agent.namespace(),
        labels: Some(child_labels(agent)),
        owner_references: agent.controller_owner_ref(&()).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

/// A short, stable hash of the persona, so a changed persona rolls the pods.
fn persona_hash(data: &BTreeMap<String, String>) -> String {
    // FNV-1a: stable across builds and platforms, unlike `DefaultHasher`.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, v) in data {
        for byte in k.bytes().chain([0]).chain(v.bytes()).chain([0]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

/// A variable the pod's own object fills (downward API), e.g. `metadata.name`.
fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.to_owned(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}

fn secret_env(name: &str, secret: &str, key: &str, optional: bool) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_owned(),
                key: key.to_owned(),
                optional: Some(optional),
            }),
            ..EnvVarSource::default()
        }),
    }
}

fn default_resources() -> ResourceRequirements {
    let q = |s: &str| Quantity(s.to_owned());
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), q("100m")),
            ("memory".to_owned(), q("256Mi")),
        ])),
        limits: Some(BTreeMap::from([("memory".to_owned(), q("1Gi"))])),
        ..ResourceRequirements::default()
    }
}

/// The Agent's resources (or the defaults), with an ephemeral-storage request added
/// when they name none.
fn agent_resources(spec: Option<&ResourceRequirements>) -> ResourceRequirements {
    let mut resources = spec.cloned().unwrap_or_else(default_resources);
    resources
        .requests
        .get_or_insert_with(BTreeMap::new)
        .entry("ephemeral-storage".to_owned())
        .or_insert_with(|| Quantity(EPHEMERAL_STORAGE_REQUEST.to_owned()));
    resources
}

fn probe(path: &str, port: i32, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::Int(port),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(3),
        ..Probe::default()
    }
}

/// The objects Agent `agent` becomes, with `replicas` agent pods. Nothing of them
/// depends on the namespace's model providers: adding one changes no pod.
pub fn agent_children(agent: &Agent, runtime: &AgentRuntime, replicas: i32) -> AgentChildren {
    let name = child_name(&agent.name_any());
    let spec = &agent.spec;
    let persona_data = BTreeMap::from([
        ("name".to_owned(), spec.persona.name.clone()),
        (
            "specialties".to_owned(),
            spec.persona.specialties.join("\n"),
        ),
        (
            "system-prompt".to_owned(),
            spec.persona.system_prompt.clone().unwrap_or_default(),
        ),
    ]);
    let persona = ConfigMap {
        metadata: child_meta(agent, format!("{name}-persona")),
        data: Some(persona_data.clone()),
        ..ConfigMap::default()
    };
    let service_account = ServiceAccount {
        metadata: child_meta(agent, name.clone()),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    };

    let container = agent_container(agent, runtime);
    let selector = BTreeMap::from([
        (labels::NAME.to_owned(), "aios-agent".to_owned()),
        (labels::AGENT.to_owned(), agent.name_any()),
    ]);
    let deployment = Deployment {
        metadata: child_meta(agent, name.clone()),
        spec: DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            // Replacing a pod early would cut a task short: new pods come up first.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(k8s_openapi::api::apps::v1::RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(child_labels(agent)),
                    annotations: Some(BTreeMap::from([(
                        annotations::CONFIG_HASH.to_owned(),
                        persona_hash(&persona_data),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(name.clone()),
                    automount_service_account_token: Some(false),
                    termination_grace_period_seconds: Some(spec.termination_grace_period_seconds),
                    security_context: Some(restricted_pod()),
                    containers: vec![container],
                    volumes: Some(agent_volumes(&name, runtime)),
                    node_selector: (!spec.node_selector.is_empty())
                        .then(|| spec.node_selector.clone()),
                    tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone()),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        status: None,
    };
    AgentChildren {
        service_account,
        persona,
        deployment,
    }
}

/// The agent container: role, persona and concurrency in its environment, connection
/// settings from the Secret, locked down, with probes on the health port.
fn agent_container(agent: &Agent, runtime: &AgentRuntime) -> Container {
    let spec = &agent.spec;
    let secret = &runtime.connection_secret;
    let mut container_env = vec![
        env("AIOS_ROLE", spec.role.as_str()),
        env("AIOS_PERSONA", &spec.persona.name),
        env("AIOS_CONCURRENCY", &spec.concurrency.to_string()),
        env("AIOS_PERSONA_DIR", "/etc/aios/persona"),
        env("AIOS_PROVIDERS_FILE", "/etc/aios/providers/providers.json"),
        env(
            "AIOS_HTTP_ADDR",
            &format!("0.0.0.0:{}", runtime.health_port),
        ),
        // The kubelet kills the agent this long after SIGTERM; the agent ends its own
        // shutdown grace a little before, so tasks in flight finish or are requeued.
        env(
            "AIOS_TERMINATION_GRACE_SECONDS",
            &spec.termination_grace_period_seconds.to_string(),
        ),
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        secret_env("AIOS_AMQP_URL", secret, "amqpUrl", false),
        secret_env("AIOS_REDIS_URL", secret, "redisUrl", false),
        secret_env("AIOS_QDRANT_URL", secret, "qdrantUrl", true),
        secret_env("AIOS_QDRANT_API_KEY", secret, "qdrantApiKey", true),
        secret_env("AIOS_CA_CERT", secret, "caCert", true),
    ];
    if let Some(url) = &runtime.credential_url {
        container_env.push(env("AIOS_CREDENTIAL_URL", url));
    }
    container_env.extend(spec.env.iter().cloned());

    let mount = |volume: &str, path: &str, read_only: bool| VolumeMount {
        name: volume.to_owned(),
        mount_path: path.to_owned(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    };
    Container {
        name: "agent".to_owned(),
        image: Some(spec.image.clone().unwrap_or_else(|| runtime.image.clone())),
        env: Some(container_env),
        ports: Some(vec![ContainerPort {
            name: Some("health".to_owned()),
            container_port: runtime.health_port,
            ..ContainerPort::default()
        }]),
        image_pull_policy: Some(
            spec.image_pull_policy
                .clone()
                .unwrap_or_else(|| "IfNotPresent".to_owned()),
        ),
        resources: Some(agent_resources(spec.resources.as_ref())),
        readiness_probe: Some(probe("/readyz", runtime.health_port, 5)),
        liveness_probe: Some(probe("/healthz", runtime.health_port, 10)),
        security_context: Some(restricted_container()),
        volume_mounts: Some(vec![
            mount("persona", "/etc/aios/persona", true),
            mount("providers", "/etc/aios/providers", true),
            mount("work", "/var/lib/aios", false),
            mount("tmp", "/tmp", false),
        ]),
        ..Container::default()
    }
}

/// Size limit of an agent pod's work directory (mirrors, work trees, embedded memory).
pub const WORK_VOLUME_LIMIT: &str = "4Gi";
/// Size limit of an agent pod's `/tmp`.
pub const TMP_VOLUME_LIMIT: &str = "512Mi";
/// The ephemeral storage an agent pod requests when its resources name none, so the
/// scheduler counts its scratch space.
pub const EPHEMERAL_STORAGE_REQUEST: &str = "1Gi";

/// The persona and provider ConfigMaps, and writable scratch space (the root
/// filesystem is read-only), each with a size limit.
fn agent_volumes(name: &str, runtime: &AgentRuntime) -> Vec<Volume> {
    let config_map_volume = |volume: &str, config_map: &str, optional: bool| Volume {
        name: volume.to_owned(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map.to_owned(),
            optional: Some(optional),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    };
    vec![
        config_map_volume("persona", &format!("{name}-persona"), false),
        config_map_volume("providers", &runtime.providers_config_map, true),
        scratch_volume("work", WORK_VOLUME_LIMIT),
        scratch_volume("tmp", TMP_VOLUME_LIMIT),
    ]
}

/// The label selector of Agent `agent`'s pods.
pub fn pod_selector(agent: &str) -> String {
    format!("{}=aios-agent,{}={agent}", labels::NAME, labels::AGENT)
}

/// The deletion cost each of a pool's pods should carry before a scale-down: the number
/// of tasks it is running (from the agents' events), so the ReplicaSet removes idle pods
/// first and busy ones last. `pods` are the pods' names with their current annotation;
/// only the pods whose annotation must change are returned.
pub fn deletion_cost_changes(
    pods: &[(String, Option<String>)],
    running_by_agent: &BTreeMap<String, i32>,
) -> Vec<(String, String)> {
    pods.iter()
        .filter_map(|(pod, current)| {
            let cost = running_by_agent.get(pod).copied().unwrap_or(0).to_string();
            // No annotation counts as cost 0.
            (current.as_deref().unwrap_or("0") != cost).then(|| (pod.clone(), cost))
        })
        .collect()
}

/// The replica count a pool should have now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scale {
    /// Replicas to run.
    pub replicas: i32,
    /// Since when demand has been below `replicas`, if it is.
    pub low_since: Option<Timestamp>,
    /// When to look again for a pending scale-down.
    pub wake_at: Option<Timestamp>,
}

/// Replicas for `demand` (queued + running tasks of the role), like KEDA's queue-length
/// scaler: `ceil(demand / tasksPerReplica)` clamped to `[minReplicas, maxReplicas]`, up
/// at once, down only once demand has stayed lower for `scaleDownDelaySeconds`.
/// `previous` is the last decision: its replicas, and since when demand was lower.
pub fn scale(
    agent: &Agent,
    demand: i32,
    previous: Option<(i32, Option<Timestamp>)>,
    now: Timestamp,
) -> Scale {
    let s = &agent.spec.scaling;
    let per = s.tasks_per_replica.max(1);
    let wanted = (demand.max(0) + per - 1) / per;
    let min = s.min_replicas.max(0);
    let target = wanted.clamp(min, s.max_replicas.max(min));
    match previous {
        Some((current, low_since)) if target < current => {
            let low = low_since.unwrap_or(now);
            let delay =
                jiff::SignedDuration::from_secs(i64::from(s.scale_down_delay_seconds.max(0)));
            let due = low.checked_add(delay).unwrap_or(Timestamp::MAX);
            if now >= due {
                Scale {
                    replicas: target,
                    low_since: None,
                    wake_at: None,
                }
            } else {
                Scale {
                    replicas: current,
                    low_since: Some(low),
                    wake_at: Some(due),
                }
            }
        }
        _ => Scale {
            replicas: target,
            low_since: None,
            wake_at: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::ts;

    fn agent() -> Agent {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "aios.dev/v1alpha1", "kind": "Agent",
            "metadata": {"name": "apollo", "namespace": "team-a", "uid": "uid-apollo"},
            "spec": {
                "role": "backend",
                "persona": {"name": "Apollo", "specialties": ["APIs", "databases"], "systemPrompt": "You build APIs."},
                "concurrency": 2,
                "terminationGracePeriodSeconds": 900,
                "env": [{"name": "EXTRA", "value": "1"}],
                "scaling": {"minReplicas": 0, "maxReplicas": 4, "tasksPerReplica": 2, "scaleDownDelaySeconds": 60}
            }
        }))
        .unwrap()
    }

    #[test]
    fn the_pods_run_locked_down_with_probes_and_the_grace_period() {
        let children = agent_children(&agent(), &AgentRuntime::default(), 2);
        let deployment = children.deployment;
        let spec = deployment.spec;
        assert_eq!(spec.replicas, Some(2));
        let pod = spec.template.spec.unwrap();
        assert_eq!(
            pod.service_account_name.as_deref(),
            Some("aios-agent-apollo")
        );
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(pod.termination_grace_period_seconds, Some(900));
        assert_eq!(pod.security_context.unwrap().run_as_non_root, Some(true));
        let c = &pod.containers[0];
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_owned()][..])
        );
        let resources = c.resources.as_ref().unwrap();
        assert!(resources.requests.as_ref().unwrap().contains_key("cpu"));
        assert!(resources.limits.as_ref().unwrap().contains_key("memory"));
        let readiness = c
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(
            (readiness.path.as_deref(), &readiness.port),
            (Some("/readyz"), &IntOrString::Int(8080))
        );
        assert_eq!(
            c.liveness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/healthz")
        );
    }

    #[test]
    fn pods_carry_no_credential_only_where_to_ask_for_one() {
        let runtime = AgentRuntime {
            credential_url: Some("http://aios-operator-metrics.aios-system.svc:8080".to_owned()),
            ..AgentRuntime::default()
        };
        let children = agent_children(&agent(), &runtime, 1);
        let pod = children.deployment.spec.template.spec.unwrap();
        let env = pod.containers[0].env.clone().unwrap();
        assert_eq!(
            env.iter()
                .find(|e| e.name == "AIOS_CREDENTIAL_URL")
                .and_then(|e| e.value.as_deref()),
            Some("http://aios-operator-metrics.aios-system.svc:8080")
        );
        assert!(
            !env.iter().any(|e| e.name.starts_with("AIOS_SECRET_")),
            "no provider key on the pod: {env:?}"
        );
        // The connection Secret's keys are the only Secret the pod reads.
        let secrets: Vec<&str> = env
            .iter()
            .filter_map(|e| e.value_from.as_ref()?.secret_key_ref.as_ref())
            .map(|k| k.name.as_str())
            .collect();
        assert!(
            secrets.iter().all(|s| *s == "aios-agent-connections"),
            "{secrets:?}"
        );
    }

    #[test]
    fn connection_settings_come_from_a_secret_and_the_role_from_the_agent() {
        let children = agent_children(&agent(), &AgentRuntime::default(), 1);
        let pod = children.deployment.spec.template.spec.unwrap();
        let env = pod.containers[0].env.clone().unwrap();
        let get = |n: &str| env.iter().find(|e| e.name == n).unwrap().clone();
        assert_eq!(get("AIOS_ROLE").value.as_deref(), Some("backend"));
        assert_eq!(get("AIOS_CONCURRENCY").value.as_deref(), Some("2"));
        assert_eq!(get("EXTRA").value.as_deref(), Some("1"));
        let amqp = get("AIOS_AMQP_URL");
        assert!(amqp.value.is_none(), "credentials are never inlined");
        let key = amqp.value_from.unwrap().secret_key_ref.unwrap();
        assert_eq!(
            (key.name.as_str(), key.key.as_str(), key.optional),
            ("aios-agent-connections", "amqpUrl", Some(false))
        );
        let qdrant = get("AIOS_QDRANT_URL")
            .value_from
            .unwrap()
            .secret_key_ref
            .unwrap();
        assert_eq!(qdrant.optional, Some(true));
        let ca = get("AIOS_CA_CERT")
            .value_from
            .unwrap()
            .secret_key_ref
            .unwrap();
        assert_eq!(
            (ca.key.as_str(), ca.optional),
            ("caCert", Some(true)),
            "a CA bundle for amqps:// and rediss://, when the platform has one"
        );
    }

    #[test]
    fn children_are_owned_labelled_and_carry_the_persona() {
        let children = agent_children(&agent(), &AgentRuntime::default(), 1);
        for meta in [
            &children.service_account.metadata,
            &children.persona.metadata,
            &children.deployment.metadata,
        ] {
            let owner = &meta.owner_references.as_ref().unwrap()[0];
            assert_eq!(
                (owner.kind.as_str(), owner.name.as_str(), owner.controller),
                ("Agent", "apollo", Some(true))
            );
            assert_eq!(meta.labels.as_ref().unwrap()["aios.dev/role"], "backend");
            assert_eq!(meta.namespace.as_deref(), Some("team-a"));
        }
        assert_eq!(
            children.service_account.automount_service_account_token,
            Some(false)
        );
        let data = children.persona.data.unwrap();
        assert_eq!(data["system-prompt"], "You build APIs.");
        assert_eq!(data["specialties"], "APIs\ndatabases");
        let mut other = agent();
        other.spec.persona.system_prompt = Some("You build better APIs.".into());
        let hash = |a: &Agent| {
            agent_children(a, &AgentRuntime::default(), 1)
                .deployment
                .spec
                .template
                .metadata
                .unwrap()
                .annotations
                .unwrap()["aios.dev/config-hash"]
                .clone()
        };
        assert_ne!(hash(&agent()), hash(&other), "a new persona rolls the pods");
    }

    #[test]
    fn replicas_follow_the_queue_up_at_once_and_down_after_the_delay() {
        let a = agent(); // 2 tasks a replica, 0..4, 60s delay
        assert_eq!(
            scale(&a, 0, None, ts(0)).replicas,
            0,
            "idle pools scale to zero"
        );
        assert_eq!(
            scale(&a, 1, Some((0, None)), ts(1)).replicas,
            1,
            "a queued task wakes it"
        );
        assert_eq!(
            scale(&a, 5, Some((1, None)), ts(2)).replicas,
            3,
            "ceil(5 / 2)"
        );
        assert_eq!(
            scale(&a, 50, Some((3, None)), ts(3)).replicas,
            4,
            "clamped to max"
        );
        // Demand falls at 30: held for the delay, counted from when it fell.
        let held = scale(&a, 1, Some((4, None)), ts(30));
        assert_eq!(
            (held.replicas, held.low_since, held.wake_at),
            (4, Some(ts(30)), Some(ts(90)))
        );
        let still = scale(&a, 1, Some((4, held.low_since)), ts(89));
        assert_eq!(still.replicas, 4);
        // Demand rising again in between resets the delay.
        let back = scale(&a, 8, Some((4, still.low_since)), ts(89));
        assert_eq!((back.replicas, back.low_since), (4, None));
        let down = scale(&a, 1, Some((4, held.low_since)), ts(90));
        assert_eq!((down.replicas, down.low_since), (1, None));
        let mut floor = agent();
        floor.spec.scaling.min_replicas = 2;
        assert_eq!(
            scale(&floor, 0, Some((2, None)), ts(500)).replicas,
            2,
            "never below min"
        );
    }

    #[test]
    fn the_agents_shutdown_grace_follows_the_pods_and_scratch_space_is_bounded() {
        let children = agent_children(&agent(), &AgentRuntime::default(), 1);
        let pod = children.deployment.spec.template.spec.unwrap();
        let c = &pod.containers[0];
        let grace = c
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == "AIOS_TERMINATION_GRACE_SECONDS")
            .and_then(|e| e.value.clone());
        assert_eq!(grace.as_deref(), Some("900"), "the pod's own grace period");
        assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
        let requests = c.resources.as_ref().unwrap().requests.clone().unwrap();
        assert_eq!(
            requests["ephemeral-storage"],
            Quantity(EPHEMERAL_STORAGE_REQUEST.to_owned())
        );
        let limits: BTreeMap<_, _> = pod
            .volumes
            .unwrap()
            .into_iter()
            .filter_map(|v| Some((v.name, v.empty_dir?.size_limit?)))
            .collect();
        assert_eq!(
            limits,
            BTreeMap::from([
                ("work".to_owned(), Quantity(WORK_VOLUME_LIMIT.to_owned())),
                ("tmp".to_owned(), Quantity(TMP_VOLUME_LIMIT.to_owned())),
            ])
        );

        // An Agent's own resources keep their ephemeral-storage request, and its own
        // pull policy wins.
        let mut own = agent();
        own.spec.image_pull_policy = Some("Always".to_owned());
        own.spec.resources = Some(ResourceRequirements {
            requests: Some(BTreeMap::from([(
                "ephemeral-storage".to_owned(),
                Quantity("5Gi".to_owned()),
            )])),
            ..ResourceRequirements::default()
        });
        let pod = agent_children(&own, &AgentRuntime::default(), 1)
            .deployment
            .spec
            .template
            .spec
            .unwrap();
        let c = &pod.containers[0];
        assert_eq!(c.image_pull_policy.as_deref(), Some("Always"));
        assert_eq!(
            c.resources.as_ref().unwrap().requests.as_ref().unwrap()["ephemeral-storage"],
            Quantity("5Gi".to_owned())
        );
    }

    #[test]
    fn idle_pods_are_marked_cheapest_to_delete_and_only_changes_are_written() {
        let pods = vec![
            ("apollo-a".to_owned(), None),
            ("apollo-b".to_owned(), Some("2".to_owned())),
            ("apollo-c".to_owned(), Some("1".to_owned())),
            ("apollo-d".to_owned(), Some("0".to_owned())),
        ];
        let running = BTreeMap::from([("apollo-b".to_owned(), 2), ("apollo-d".to_owned(), 1)]);
        assert_eq!(
            deletion_cost_changes(&pods, &running),
            vec![
                // c finished its task: it goes back to the cheapest.
                ("apollo-c".to_owned(), "0".to_owned()),
                // d took one: it is kept over the idle ones.
                ("apollo-d".to_owned(), "1".to_owned()),
            ],
            "a (idle, no annotation) and b (unchanged) are not written"
        );
        assert_eq!(
            pod_selector("apollo"),
            "app.kubernetes.io/name=aios-agent,aios.dev/agent=apollo"
        );
    }
}
