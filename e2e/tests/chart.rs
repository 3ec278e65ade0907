//! The Helm chart, checked with helm itself (built from its Go module): strict lint with
//! the default and a production-style values file, the templates' output (replicas,
//! RBAC, security contexts, images), the schema refusing bad values, the CRDs and the
//! plain install manifests matching their sources, a server-side dry run, and a real
//! install, upgrade and uninstall on the local control plane into a namespace that
//! enforces Pod Security `restricted`, with the operator running under the chart's
//! ServiceAccount (impersonated) rendering agent and model-server pods there.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use aios_e2e::{Environment, chart, repo_root};
use serde_json::Value;

fn helm_path() -> PathBuf {
    aios_e2e::binaries::tools_bin_dir()
        .expect("helm is built by e2e/tools/build.sh")
        .join("helm")
}

fn chart() -> String {
    chart::chart_dir().display().to_string()
}

/// Runs helm with `args`, against `env` when given (its kubeconfig).
fn helm(env: Option<&Environment>, args: &[&str]) -> Output {
    let mut command = chart::helm().expect("helm");
    command.args(args);
    if let Some(env) = env {
        command.envs(env.exports());
    }
    command.output().expect("running helm")
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `helm template` of the chart with `sets`, as JSON objects.
fn template(sets: &[&str]) -> Vec<Value> {
    chart::render("aios", "aios-system", sets).unwrap_or_else(|e| panic!("{e}"))
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendered chart"))
}

fn template_error(sets: &[&str]) -> String {
    let chart = chart();
    let mut args = vec!["template", "aios", chart.as_str()];
    for set in sets {
        args.extend(["--set", set]);
    }
    let out = helm(None, &args);
    assert!(
        !out.status.success(),
        "helm template accepted {sets:?}, which must be refused"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_chart_lints_strictly_with_the_default_and_a_production_values_file() {
    let chart = chart();
    ok(
        &helm(None, &["lint", "--strict", &chart]),
        "helm lint --strict",
    );
    let production = repo_root().join("charts/aios/ci/production-values.yaml");
    ok(
        &helm(
            None,
            &[
                "lint",
                "--strict",
                &chart,
                "-f",
                &production.display().to_string(),
            ],
        ),
        "helm lint --strict with the production values",
    );
}

#[test]
fn the_operator_runs_replicated_locked_down_with_probes_and_a_disruption_budget() {
    let objects = template(&[]);
    let deployment = find(&objects, "Deployment", "aios-operator");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "aios-operator");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let container = &pod["containers"][0];
    assert_eq!(container["image"], "ghcr.io/aios-dev/aios-operator:0.1.0");
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["capabilities"]["drop"][0],
        "ALL"
    );
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert!(container["resources"]["requests"]["memory"].is_string());
    let env: Vec<(String, Value)> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_owned(), e.clone()))
        .collect();
    let var = |name: &str| {
        env.iter()
            .find(|(n, _)| n == name)
            .map_or_else(|| panic!("no {name}"), |(_, v)| v.clone())
    };
    assert_eq!(
        var("POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(
        var("POD_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(
        var("AIOS_AGENT_IMAGE")["value"],
        "ghcr.io/aios-dev/aios-agent:0.1.0",
        "the agent image defaults to the chart's appVersion"
    );
    assert_eq!(
        var("AIOS_AMQP_URL")["valueFrom"]["secretKeyRef"]["name"],
        "aios-agent-connections"
    );
    let pdb = find(&objects, "PodDisruptionBudget", "aios-operator");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    find(&objects, "Service", "aios-operator-metrics");

    // One replica: no budget (it would block every drain).
    let single = template(&["operator.replicas=1"]);
    assert_eq!(
        find(&single, "Deployment", "aios-operator")["spec"]["replicas"],
        1
    );
    assert!(
        !single.iter().any(|o| o["kind"] == "PodDisruptionBudget"),
        "no PodDisruptionBudget for a single replica"
    );
    let tagged = template(&["image.tag=1.2.3", "image.registry=registry.local/aios"]);
    let pod = &find(&tagged, "Deployment", "aios-operator")["spec"]["template"]["spec"];
    assert_eq!(
        pod["containers"][0]["image"],
        "registry.local/aios/aios-operator:1.2.3"
    );
}

/// The operator's permissions as (group, resource, verb) triples.
fn rules(role: &Value) -> BTreeSet<(String, String, String)> {
    let mut triples = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        for group in rule["apiGroups"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                for verb in rule["verbs"].as_array().unwrap() {
                    triples.insert((
                        group.as_str().unwrap().to_owned(),
                        resource.as_str().unwrap().to_owned(),
                        verb.as_str().unwrap().to_owned(),
                    ));
                }
            }
        }
    }
    triples
}

#[test]
fn the_operators_permissions_are_exactly_what_it_uses() {
    let objects = template(&[]);
    let cluster = rules(find(&objects, "ClusterRole", "aios-operator"));
    let expected: BTreeSet<(String, String, String)> = [
        ("aios.dev", "projects", "get list watch"),
        ("aios.dev", "agents", "get list watch"),
        ("aios.dev", "modelproviders", "get list watch"),
        ("aios.dev", "tasks", "get list watch create patch"),
        ("aios.dev", "projects/status", "patch"),
        ("aios.dev", "tasks/status", "patch"),
        ("aios.dev", "agents/status", "patch"),
        ("aios.dev", "modelproviders/status", "patch"),
        ("apps", "deployments", "list watch create patch"),
        ("", "serviceaccounts", "create patch"),
        ("", "configmaps", "get create patch"),
        ("", "services", "create patch"),
        ("", "persistentvolumeclaims", "create patch"),
        ("", "secrets", "list watch"),
        ("", "pods", "list patch"),
        ("events.k8s.io", "events", "create patch"),
        ("batch", "jobs", "get create"),
        ("networking.k8s.io", "networkpolicies", "create patch"),
    ]
    .iter()
    .flat_map(|(g, r, verbs)| {
        verbs
            .split(' ')
            .map(|v| ((*g).to_owned(), (*r).to_owned(), v.to_owned()))
    })
    .collect();
    assert_eq!(cluster, expected, "no verb more, no verb less");
    assert!(
        !cluster.iter().any(|(_, _, v)| v == "delete" || v == "*"),
        "the operator deletes nothing: garbage collection removes children"
    );
    let leader_role = find(&objects, "Role", "aios-operator-leader");
    let mut own: BTreeSet<(String, String, String)> = ["get", "create", "update"]
        .iter()
        .map(|v| {
            (
                "coordination.k8s.io".to_owned(),
                "leases".to_owned(),
                (*v).to_owned(),
            )
        })
        .collect();
    own.insert((String::new(), "secrets".to_owned(), "create".to_owned()));
    own.insert((String::new(), "secrets".to_owned(), "get".to_owned()));
    assert_eq!(rules(leader_role), own);
    // Of the Secrets in its own namespace, it reads only its token key.
    let secret_get = leader_role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resources"][0] == "secrets" && r["verbs"][0] == "get")
        .unwrap();
    assert_eq!(
        secret_get["resourceNames"],
        serde_json::json!(["aios-operator-token-key"])
    );
    let deployment = find(&objects, "Deployment", "aios-operator");
    assert!(
        deployment["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(
                |e| e["name"] == "AIOS_TOKEN_KEY_SECRET" && e["value"] == "aios-operator-token-key"
            ),
        "the operator is told the Secret its Role lets it read"
    );
    let binding = find(&objects, "ClusterRoleBinding", "aios-operator");
    assert_eq!(binding["subjects"][0]["name"], "aios-operator");
    assert_eq!(binding["subjects"][0]["namespace"], "aios-system");

    // Watching one namespace binds the same rules there only.
    let scoped = template(&["operator.watchNamespace=team-a"]);
    assert!(!scoped.iter().any(|o| o["kind"] == "ClusterRoleBinding"));
    let binding = find(&scoped, "RoleBinding", "aios-operator");
    assert_eq!(binding["metadata"]["namespace"], "team-a");
}

/// The people's roles, on the control plane's own RBAC: bound to the built-in view,
/// edit and admin in a namespace, users get what the chart's roles aggregate there.
#[test]
fn the_built_in_view_edit_and_admin_roles_carry_aios_permissions() {
    let objects = chart::render("rbac-check", "aios-system", &[]).unwrap();
    let roles: Vec<&Value> = objects
        .iter()
        .filter(|o| {
            o["kind"] == "ClusterRole"
                && o["metadata"]["labels"].as_object().is_some_and(|l| {
                    l.keys()
                        .any(|k| k.starts_with("rbac.authorization.k8s.io/aggregate-to-"))
                })
        })
        .collect();
    let names: Vec<&str> = roles
        .iter()
        .map(|r| r["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "rbac-check-aios-view",
            "rbac-check-aios-edit",
            "rbac-check-aios-admin"
        ]
    );
    assert!(
        !template(&["userRoles.create=false"])
            .iter()
            .any(|o| o["metadata"]["name"] == "aios-view"),
        "they can be left out"
    );

    let env = aios_e2e::shared_with_crds();
    let namespace = env.create_namespace("user-roles").unwrap();
    let manifest = roles
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    env.kubectl_with_input(&["apply", "-f", "-"], Some(&manifest))
        .unwrap();
    for (user, role) in [("ada", "view"), ("grace", "edit"), ("linus", "admin")] {
        env.kubectl(&[
            "create",
            "rolebinding",
            &format!("{user}-{role}"),
            "-n",
            &namespace,
            &format!("--clusterrole={role}"),
            &format!("--user={user}"),
        ])
        .unwrap();
    }
    let can = |user: &str, verb: &str, resource: &str| -> bool {
        // `auth can-i` exits 1 for "no": read its answer, not its status.
        let mut args = vec!["auth", "can-i", verb, "-n", &namespace, "--as", user];
        // `kind/name` names an object to kubectl: a subresource is a flag.
        match resource.split_once('/') {
            Some((kind, sub)) => args.extend([kind, "--subresource", sub]),
            None => args.push(resource),
        }
        let out = env.kubectl_output(&args, None).unwrap();
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    // The aggregation controller fills the built-in roles: wait for it.
    wait_for(
        "edit to aggregate aios-edit",
        Duration::from_secs(60),
        || can("grace", "create", "projects.aios.dev").then_some(()),
    );
    for (user, verb, resource, allowed) in [
        ("ada", "list", "tasks.aios.dev", true),
        ("ada", "get", "projects.aios.dev", true),
        ("ada", "create", "projects.aios.dev", false),
        ("grace", "create", "agents.aios.dev", true),
        ("grace", "delete", "modelproviders.aios.dev", true),
        ("grace", "patch", "projects.aios.dev/status", false),
        ("grace", "deletecollection", "tasks.aios.dev", false),
        ("linus", "deletecollection", "tasks.aios.dev", true),
        ("linus", "patch", "tasks.aios.dev/status", false),
    ] {
        assert_eq!(
            can(user, verb, resource),
            allowed,
            "{user} {verb} {resource}"
        );
    }
    env.kubectl_with_input(&["delete", "-f", "-"], Some(&manifest))
        .unwrap();
}

#[test]
fn bad_values_are_refused_with_a_message_naming_them() {
    let negative = template_error(&["operator.replicas=-1"]);
    assert!(
        negative.contains("replicas"),
        "a negative replica count is refused: {negative}"
    );
    let unknown = template_error(&["operator.replica=2"]);
    assert!(
        unknown.contains("replica"),
        "an unknown key is refused, naming it: {unknown}"
    );
    let policy = template_error(&["image.pullPolicy=Sometimes"]);
    assert!(policy.contains("pullPolicy"), "{policy}");
    let url = template_error(&["connection.amqpUrl=http://rabbit"]);
    assert!(url.contains("amqpUrl"), "{url}");
    let management = template_error(&["connection.rabbitmqManagementUrl=rabbit:15672"]);
    assert!(management.contains("rabbitmqManagementUrl"), "{management}");
    let nothing = template_error(&["rabbitmq.enabled=false"]);
    assert!(
        nothing.contains("connection.amqpUrl"),
        "without a broker the chart says what to set: {nothing}"
    );
}

#[test]
fn the_connection_secret_comes_from_values_an_existing_secret_or_the_bundled_services() {
    let bundled = template(&["rabbitmq.password=s3cret"]);
    let secret = find(&bundled, "Secret", "aios-agent-connections");
    assert_eq!(
        secret["stringData"]["amqpUrl"],
        "amqp://aios:s3cret@aios-rabbitmq.aios-system.svc:5672/%2f"
    );
    assert_eq!(
        secret["stringData"]["redisUrl"],
        "redis://aios-redis.aios-system.svc:6379/"
    );
    for name in ["aios-rabbitmq", "aios-redis"] {
        let set = find(&bundled, "StatefulSet", name);
        assert_eq!(
            set["spec"]["volumeClaimTemplates"][0]["metadata"]["name"], "data",
            "{name} keeps its data"
        );
    }

    assert!(
        secret["stringData"].get("rabbitmqManagementUrl").is_none(),
        "the bundled broker has no management API"
    );
    let management = |objects: &[Value]| {
        let pod = &find(objects, "Deployment", "aios-operator")["spec"]["template"]["spec"];
        pod["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "AIOS_RABBITMQ_MANAGEMENT_URL")
            .map(|e| e["valueFrom"]["secretKeyRef"].clone())
            .expect("the operator reads the management URL from the connection Secret")
    };
    let reference = management(&bundled);
    assert_eq!(
        (
            &reference["name"],
            &reference["key"],
            &reference["optional"]
        ),
        (
            &Value::from("aios-agent-connections"),
            &Value::from("rabbitmqManagementUrl"),
            &Value::from(true)
        )
    );

    let external = template(&[
        "rabbitmq.enabled=false",
        "redis.enabled=false",
        "connection.amqpUrl=amqps://u:p@mq.internal:5671/aios",
        "connection.redisUrl=rediss://cache.internal:6380/",
        "connection.rabbitmqManagementUrl=https://u:p@mq.internal:15671",
    ]);
    let secret = find(&external, "Secret", "aios-agent-connections");
    assert_eq!(
        secret["stringData"]["amqpUrl"],
        "amqps://u:p@mq.internal:5671/aios"
    );
    assert_eq!(
        secret["stringData"]["rabbitmqManagementUrl"],
        "https://u:p@mq.internal:15671"
    );
    assert_eq!(management(&external)["key"], "rabbitmqManagementUrl");
    assert!(!external.iter().any(|o| o["kind"] == "StatefulSet"));

    let existing = template(&[
        "rabbitmq.enabled=false",
        "redis.enabled=false",
        "connection.existingSecret=team-connections",
    ]);
    assert!(
        !existing.iter().any(|o| o["kind"] == "Secret"),
        "no Secret is made when one is named"
    );
    let pod = &find(&existing, "Deployment", "aios-operator")["spec"]["template"]["spec"];
    let env = pod["containers"][0]["env"].as_array().unwrap();
    let secret_of = env
        .iter()
        .find(|e| e["name"] == "AIOS_AGENT_CONNECTION_SECRET")
        .unwrap();
    assert_eq!(secret_of["value"], "team-connections");
}

/// `value` with every number as a float: helm's YAML round trip writes `0.0` as `0`.
fn numbers_as_floats(value: &Value) -> Value {
    match value {
        Value::Number(n) => Value::from(n.as_f64().unwrap()),
        Value::Array(items) => items.iter().map(numbers_as_floats).collect(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| (k.clone(), numbers_as_floats(v)))
            .collect(),
        other => other.clone(),
    }
}

#[test]
fn the_chart_installs_the_crds_from_the_one_source_and_keeps_them() {
    let objects = template(&[]);
    let crds: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "CustomResourceDefinition")
        .collect();
    assert_eq!(crds.len(), 4);
    for crd in &crds {
        let name = crd["metadata"]["name"].as_str().unwrap();
        let source =
            std::fs::read_to_string(repo_root().join("crds").join(format!("{name}.yaml"))).unwrap();
        let source: Value = serde_yaml_ng::from_str(&source).unwrap();
        assert!(
            numbers_as_floats(&crd["spec"]) == numbers_as_floats(&source["spec"]),
            "{name}: the chart installs crds/{name}.yaml as it is"
        );
        assert_eq!(
            crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
            "{name} survives helm uninstall"
        );
    }
    let off = template(&["crds.install=false"]);
    assert!(!off.iter().any(|o| o["kind"] == "CustomResourceDefinition"));
}

#[test]
fn the_plain_install_manifests_are_what_the_chart_renders() {
    let script = repo_root().join("scripts/render-install.sh");
    let out = Command::new(&script)
        .arg("--check")
        .env("HELM", helm_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn json(env: &Environment, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&env.kubectl(&all).unwrap()).unwrap()
}

fn pods_with(env: &Environment, namespace: &str, selector: &str) -> Vec<Value> {
    json(env, &["get", "pods", "-n", namespace, "-l", selector])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn the_rendered_chart_passes_a_server_side_dry_run() {
    let env = aios_e2e::shared_with_crds();
    let namespace = env.create_namespace("chart-dry-run").unwrap();
    let chart = chart();
    let rendered = ok(
        &helm(
            None,
            &[
                "template",
                "dry",
                &chart,
                "--namespace",
                &namespace,
                "--set",
                "crds.install=false",
            ],
        ),
        "helm template",
    );
    let out = env
        .kubectl_with_input(&["apply", "--dry-run=server", "-f", "-"], Some(&rendered))
        .unwrap();
    assert!(
        out.contains("deployment.apps/dry-aios-operator created (server dry run)"),
        "{out}"
    );
}

/// The operator binary, beside this test's own.
fn operator_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(Path::parent)
        .unwrap()
        .join("aios-operator")
}

#[test]
#[allow(clippy::too_many_lines)] // one user's scenario, in order: install, use, upgrade, uninstall
fn helm_installs_upgrades_and_uninstalls_into_a_restricted_namespace() {
    let env = aios_e2e::shared_with_crds();
    let namespace = env.create_namespace("chart-install").unwrap();
    env.kubectl(&[
        "label",
        "namespace",
        &namespace,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
    ])
    .unwrap();
    // The namespace does enforce it: a pod that runs as root is refused.
    let refused = env
        .kubectl(&[
            "run",
            "rooted",
            "-n",
            &namespace,
            "--image=registry.local/busybox:1",
        ])
        .expect_err("a pod breaking `restricted` must be refused");
    assert!(refused.to_string().contains("PodSecurity"), "{refused}");
    let release = "rel";
    let chart = chart();
    // The shared environment installed the CRDs already: the release adopts them.
    ok(
        &helm(
            Some(env),
            &[
                "install",
                release,
                &chart,
                "--namespace",
                &namespace,
                "--take-ownership",
                "--set",
                "image.registry=registry.local/aios",
            ],
        ),
        "helm install",
    );

    // Pod Security admission runs when a controller creates a pod: pods that exist
    // passed `restricted` (without a kubelet they stay Pending).
    let operator_selector = "app.kubernetes.io/name=aios-operator";
    wait_for("the operator's two pods", Duration::from_secs(60), || {
        (pods_with(env, &namespace, operator_selector).len() == 2).then_some(())
    });
    for name in ["rabbitmq", "redis"] {
        wait_for(
            &format!("the bundled {name} pod"),
            Duration::from_secs(60),
            || {
                (!pods_with(env, &namespace, &format!("app.kubernetes.io/name={name}")).is_empty())
                    .then_some(())
            },
        );
    }

    // The operator, with exactly the chart's permissions, renders agent and model-server
    // pods that pass `restricted` too.
    operator_renders_restricted_pods(env, &namespace, &chart::operator_account(release));

    // An upgrade with a changed value rolls the operator: a new ReplicaSet with its pods.
    ok(
        &helm(
            Some(env),
            &[
                "upgrade",
                release,
                &chart,
                "--namespace",
                &namespace,
                "--reuse-values",
                "--set",
                "operator.logFormat=text",
            ],
        ),
        "helm upgrade",
    );
    let replica_sets = || {
        json(
            env,
            &[
                "get",
                "replicasets",
                "-n",
                &namespace,
                "-l",
                operator_selector,
            ],
        )["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    wait_for(
        "a second operator ReplicaSet",
        Duration::from_secs(60),
        || (replica_sets().len() == 2).then_some(()),
    );
    // The new ReplicaSet carries the changed setting.
    assert!(
        replica_sets().iter().any(|set| {
            set["spec"]["template"]["spec"]["containers"][0]["env"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["name"] == "AIOS_LOG_FORMAT" && e["value"] == "text")
        }),
        "the upgrade's value reached a ReplicaSet"
    );

    // Uninstall: nothing of the release is left but the CRDs and the bundled services'
    // volumes (their claims come from StatefulSet templates; the README says so).
    ok(
        &helm(
            Some(env),
            &["uninstall", release, "--namespace", &namespace, "--wait"],
        ),
        "helm uninstall",
    );
    nothing_of_the_release_is_left(env, &namespace, release);
}

/// Nothing labelled with `release` is left in `namespace` or the cluster; the CRDs are.
fn nothing_of_the_release_is_left(env: &Environment, namespace: &str, release: &str) {
    let selector = format!("app.kubernetes.io/instance={release}");
    let left = env
        .kubectl(&[
            "get",
            "deployments,statefulsets,services,secrets,serviceaccounts,roles,rolebindings,poddisruptionbudgets",
            "-n",
            namespace,
            "-l",
            &selector,
            "-o",
            "name",
        ])
        .unwrap();
    assert_eq!(left.trim(), "", "left behind in the namespace");
    let cluster_left = env
        .kubectl(&[
            "get",
            "clusterroles,clusterrolebindings",
            "-l",
            &selector,
            "-o",
            "name",
        ])
        .unwrap();
    assert_eq!(cluster_left.trim(), "", "left behind in the cluster");
    env.kubectl(&["get", "crd", "projects.aios.dev"]).unwrap();
}

/// Starts the operator binary as `service_account` of `namespace` (impersonated),
/// watching that namespace; returns it and its log.
fn start_operator_as(
    env: &Environment,
    namespace: &str,
    service_account: &str,
) -> (aios_e2e::process::ServerProcess, PathBuf) {
    let kubeconfig = env
        .impersonating_kubeconfig(namespace, service_account)
        .unwrap();
    let amqp_url = env.create_vhost(namespace).unwrap();
    let port = aios_e2e::process::free_port().unwrap();
    let log = std::env::temp_dir().join(format!("aios-operator-{namespace}.log"));
    let operator = aios_e2e::process::spawn(
        "aios-operator",
        &operator_binary(),
        &[],
        &[
            ("KUBECONFIG".to_owned(), kubeconfig.display().to_string()),
            ("AIOS_AMQP_URL".to_owned(), amqp_url),
            ("AIOS_WATCH_NAMESPACE".to_owned(), namespace.to_owned()),
            ("POD_NAMESPACE".to_owned(), namespace.to_owned()),
            ("POD_NAME".to_owned(), "operator-under-test".to_owned()),
            ("AIOS_HTTP_ADDR".to_owned(), format!("127.0.0.1:{port}")),
            ("AIOS_LOG_FORMAT".to_owned(), "text".to_owned()),
            ("AIOS_PROVIDER_PROBE_SECONDS".to_owned(), "2".to_owned()),
            // The token key the chart names, the one Secret its Role lets it read.
            (
                "AIOS_TOKEN_KEY_SECRET".to_owned(),
                format!("{service_account}-token-key"),
            ),
        ],
        &log,
    )
    .unwrap();
    (operator, log)
}

/// The Agent the RBAC tests apply.
const AGENT: &str = "\
apiVersion: aios.dev/v1alpha1
kind: Agent
metadata:
  name: apollo
spec:
  role: backend
  persona: {name: Apollo}
  scaling: {minReplicas: 1, maxReplicas: 2}
";

#[test]
fn each_rule_of_the_operators_role_is_needed_for_what_it_is_there_for() {
    let env = aios_e2e::shared_with_crds();
    // Without Deployments, no agent pool; without agents/status, no pool status.
    let cases: [(&str, &str, &str); 2] = [
        ("deployments", "apps", "deployments"),
        ("agents-status", "aios.dev", "agents/status"),
    ];
    for (case, group, resource) in cases {
        let namespace = env.create_namespace(&format!("rbac-{case}")).unwrap();
        let release = format!("r-{case}");
        let rbac = chart::operator_rbac(&namespace, &release, |rule| {
            !(rule["apiGroups"][0] == group
                && rule["resources"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r == resource))
        })
        .unwrap();
        env.kubectl_with_input(&["apply", "-f", "-"], Some(&rbac))
            .unwrap();
        let (operator, log) =
            start_operator_as(env, &namespace, &chart::operator_account(&release));
        env.kubectl_with_input(&["apply", "-n", &namespace, "-f", "-"], Some(AGENT))
            .unwrap();
        // The persona ConfigMap comes before the Deployment: once it is there, the
        // operator has reached the Deployment.
        wait_for_or_log(&operator, &log, || {
            env.kubectl(&[
                "get",
                "configmap",
                "aios-agent-apollo-persona",
                "-n",
                &namespace,
            ])
            .ok()
        });
        let refused = wait_for_or_log(&operator, &log, || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.lines()
                .find(|l| {
                    l.contains("forbidden") && l.contains(resource.split('/').next().unwrap())
                })
                .map(str::to_owned)
        });
        let deployment = env.kubectl(&["get", "deployment", "aios-agent-apollo", "-n", &namespace]);
        let status = json(env, &["get", "agent", "apollo", "-n", &namespace]);
        operator.stop(Duration::from_secs(10));
        if case == "deployments" {
            assert!(
                deployment.is_err(),
                "without the deployments rule no pool is made ({refused})"
            );
        } else {
            assert!(deployment.is_ok(), "the pool is made");
            assert!(
                status["status"].is_null(),
                "without agents/status no status is written ({refused})"
            );
        }
        env.kubectl(&[
            "delete",
            "clusterrole,clusterrolebinding",
            &chart::operator_account(&release),
        ])
        .unwrap();
    }
}

/// Runs the operator binary as `service_account` of `namespace` (impersonated), applies
/// an Agent and a served ModelProvider there, and waits until their pods exist (so they
/// passed the namespace's Pod Security admission) and the Agent's status was written.
fn operator_renders_restricted_pods(env: &Environment, namespace: &str, service_account: &str) {
    let (operator, log) = start_operator_as(env, namespace, service_account);
    let manifests = AGENT.to_owned()
        + "\
---
apiVersion: aios.dev/v1alpha1
kind: ModelProvider
metadata:
  name: local
spec:
  type: Ollama
  tier: Local
  models: [{name: smollm2:135m}]
  serve: {replicas: 1}
";
    env.kubectl_with_input(&["apply", "-n", namespace, "-f", "-"], Some(&manifests))
        .unwrap();
    let rendered = wait_for_or_log(&operator, &log, || {
        let agents = pods_with(env, namespace, "aios.dev/agent=apollo");
        let servers = pods_with(env, namespace, "aios.dev/model-provider=local");
        (!agents.is_empty() && !servers.is_empty()).then_some((agents, servers))
    });
    let (agents, servers) = rendered;
    assert_eq!(
        agents[0]["spec"]["containers"][0]["image"], "ghcr.io/aios-dev/aios-agent:0.1.0",
        "this operator runs with its own default image"
    );
    assert!(servers[0]["spec"]["initContainers"].is_array());
    // The status writes went through too: the Agent reports its pool.
    wait_for_or_log(&operator, &log, || {
        let agent = json(env, &["get", "agent", "apollo", "-n", namespace]);
        (agent["status"]["desiredReplicas"] == 1).then_some(())
    });
    operator.stop(Duration::from_secs(10));
}

fn wait_for_or_log<T>(
    operator: &aios_e2e::process::ServerProcess,
    log: &Path,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(value) = check() {
            return value;
        }
        if Instant::now() > deadline || !operator.is_running() {
            operator.stop(Duration::from_secs(5));
            panic!(
                "the operator did not render the pods; its log:\n{}",
                aios_e2e::process::log_tail(log, 40)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
