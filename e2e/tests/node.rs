//! The local node, end to end: `aios-env` with a node runs pods from the locally built
//! images under Pod Security `restricted`, and pods reach each other through a Service
//! by its DNS name (CoreDNS and kube-proxy); stopping the environment leaves nothing of
//! the node behind, and a start after a crash (everything killed, nothing cleaned)
//! works without manual cleanup.
//!
//! The main job runs on it: a Project is planned, built and delivered by agent pods the
//! operator scales from zero with their queues, delivering over git's smart HTTP on the
//! node's address; the Helm chart's operator runs as two pods and survives a rolling
//! update; a busy agent pod deleted by force loses nothing, one stopped gracefully (as a
//! scale-down stops it) finishes its task; a changed persona rolls only its Agent's pods,
//! a provider without credentials rolls none, and an idle pool goes back to zero.
//!
//! A machine runs one node at a time: the tests take turns.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::{
    path::Path,
    sync::Mutex,
    time::{Duration, Instant},
};

use aios_crds::{ProjectPhase, TaskPhase};
use aios_e2e::{
    EnvOptions, Environment,
    local::{LocalRun, Operator},
    node,
};

/// Held by each test for as long as it has a node.
static ONE_NODE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn start_with(brokers: bool) -> Environment {
    Environment::start(&EnvOptions {
        rabbitmq: brokers,
        redis: brokers,
        node: true,
        ..EnvOptions::default()
    })
    .unwrap_or_else(|e| panic!("{:#}", anyhow::Error::new(e)))
}

fn start() -> Environment {
    start_with(false)
}

/// Stops a test's environment when the test ends, passed or panicked, so a failed test
/// leaves no node behind to fail the next one (stopping twice is harmless).
struct StopOnDrop<'a>(&'a Environment);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        if let Err(err) = self.0.stop() {
            eprintln!("stopping the test's environment: {err}");
        }
    }
}

/// Runs `manifests/examples/project-hello.yaml` (renamed `project`) with agents in pods,
/// the bus at `amqp_url` and a model fixture at `model_url`; panics with the pods' state
/// if it fails.
fn run_hello(
    env: &'static Environment,
    namespace: &str,
    amqp_url: String,
    model_url: &str,
    project: &str,
    operator_in_cluster: bool,
) -> aios_e2e::local::Outcome {
    let work = tempfile::tempdir().unwrap();
    let manifest = std::fs::read_to_string(
        aios_e2e::repo_root().join("manifests/examples/project-hello.yaml"),
    )
    .unwrap()
    .replace("name: hello", &format!("name: {project}"));
    let run = LocalRun {
        namespace: namespace.to_owned(),
        amqp_url,
        bin_dir: support::bin_dir(),
        work_dir: work.path().to_path_buf(),
        models: vec![support::fixture_server(model_url)],
        project: manifest,
        timeout: Duration::from_secs(300),
        verbose: true,
        operator_kubeconfig: None,
        operator_env: Vec::new(),
        agents_in_pods: true,
        operator: if operator_in_cluster {
            Operator::InCluster
        } else {
            Operator::Process
        },
        tls: false,
        hold: None,
        apply_command: None,
    };
    match run.run(env) {
        Ok(outcome) => outcome,
        Err(err) => {
            let pods = env
                .kubectl(&["get", "pods", "-n", namespace, "-o", "wide"])
                .unwrap_or_default();
            panic!("{err}\n{pods}");
        }
    }
}

/// Every Task of `outcome` succeeded, done by an agent pod, and the work is committed.
fn assert_done_by_pods(outcome: &aios_e2e::local::Outcome) {
    let status = outcome.project.status.as_ref().unwrap();
    assert_eq!(status.phase, Some(ProjectPhase::Succeeded));
    // Tests decided: the sample's pytest passed on the branch head (in a verification
    // Job when the operator runs in the cluster, in its local sandbox otherwise).
    let verification = status.verification.clone().unwrap_or_default();
    assert_eq!(
        verification.phase,
        aios_crds::VerificationPhase::Passed,
        "{status:?}"
    );
    assert!(verification.commit.is_some(), "{verification:?}");
    assert_eq!(
        outcome.tasks.len(),
        3,
        "the planning task and the two planned"
    );
    for task in &outcome.tasks {
        let name = task.metadata.name.clone().unwrap();
        let status = task.status.as_ref().unwrap();
        assert_eq!(status.phase, Some(TaskPhase::Succeeded), "{name}");
        let agent = status.agent.clone().unwrap_or_default();
        assert!(
            agent.starts_with("aios-agent-"),
            "{name} was done by an agent pod, not {agent:?}"
        );
    }
    assert!(
        outcome.git_log.contains("Apollo: Write hello.py")
            && outcome.git_log.contains("Athena: Test hello.py"),
        "{}",
        outcome.git_log
    );
    assert!(
        outcome.summary.contains("pod/aios-agent-"),
        "the agent pods show in kubectl get pods:\n{}",
        outcome.summary
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)] // the node is this test's for its whole run
async fn a_project_is_built_and_delivered_by_agent_pods() {
    let _node = ONE_NODE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let env: &'static Environment = Box::leak(Box::new(start_with(true)));
    let _stop = StopOnDrop(env);
    env.install_crds().unwrap();
    let fixture = support::model_fixture(node::NODE_IP).await;
    let namespace = env.create_namespace("pods").unwrap();
    let amqp_url = env.create_vhost(&namespace).unwrap();
    let url = fixture.uri();
    let outcome = tokio::task::spawn_blocking(move || {
        run_hello(env, &namespace, amqp_url, &url, "hello", false)
    })
    .await;
    let stopped = env.stop();
    assert_done_by_pods(&outcome.unwrap());
    stopped.unwrap();
}

/// Runs the sample Project with Apollo's model answer taking `apollo_delay`, deletes the
/// pod working on the backend task with `delete_flags`, and returns the outcome and the
/// deleted pod's name.
async fn delete_the_busy_pod(
    prefix: &str,
    apollo_delay: Duration,
    delete_flags: &[&str],
) -> (aios_e2e::local::Outcome, String) {
    let env: &'static Environment = Box::leak(Box::new(start_with(true)));
    let _stop = StopOnDrop(env);
    env.install_crds().unwrap();
    let fixture = support::model_fixture_with(node::NODE_IP, apollo_delay).await;
    let namespace = env.create_namespace(prefix).unwrap();
    let amqp_url = env.create_vhost(&namespace).unwrap();
    let (ns, url) = (namespace.clone(), fixture.uri());
    let run =
        tokio::task::spawn_blocking(move || run_hello(env, &ns, amqp_url, &url, "hello", false));
    let busy = wait_for_value(
        "the backend task running on a pod",
        Duration::from_secs(240),
        || {
            let seen = env
                .kubectl(&[
                    "get",
                    "task",
                    "hello-program",
                    "-n",
                    &namespace,
                    "-o",
                    "jsonpath={.status.phase} {.status.agent}",
                ])
                .ok()?;
            let (phase, agent) = seen.split_once(' ')?;
            (phase == "Running" && agent.starts_with("aios-agent-apollo")).then(|| agent.to_owned())
        },
    );
    let mut delete = vec!["delete", "pod", busy.as_str(), "-n", namespace.as_str()];
    delete.extend_from_slice(delete_flags);
    env.kubectl(&delete).unwrap();
    let outcome = run.await;
    let stopped = env.stop();
    let outcome = outcome.unwrap();
    stopped.unwrap();
    assert_done_by_pods(&outcome);
    assert_eq!(
        outcome.git_log.matches("Apollo: Write hello.py").count(),
        1,
        "one commit for the task:\n{}",
        outcome.git_log
    );
    (outcome, busy)
}

fn agent_of(outcome: &aios_e2e::local::Outcome, task: &str) -> Option<String> {
    outcome
        .tasks
        .iter()
        .find(|t| t.metadata.name.as_deref() == Some(task))
        .and_then(|t| t.status.as_ref()?.agent.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)] // the node is this test's for its whole run
async fn a_busy_agent_pod_deleted_mid_task_loses_nothing() {
    let _node = ONE_NODE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let (outcome, busy) = delete_the_busy_pod(
        "busy",
        Duration::from_secs(20),
        &["--grace-period=0", "--force"],
    )
    .await;
    assert_ne!(
        agent_of(&outcome, "hello-program").as_deref(),
        Some(busy.as_str()),
        "redone by another pod"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)] // the node is this test's for its whole run
async fn a_pod_stopped_as_a_scale_down_stops_it_finishes_its_task_within_its_grace() {
    let _node = ONE_NODE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // 40 s of work: more than the agent's old fixed grace of 25 s, well within the pod's
    // 600 s, which the agent now follows.
    let (outcome, stopped) =
        delete_the_busy_pod("grace", Duration::from_secs(40), &["--wait=false"]).await;
    assert_eq!(
        agent_of(&outcome, "hello-program").as_deref(),
        Some(stopped.as_str()),
        "the stopping pod finished its own task"
    );
}

fn wait_for_value<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `helm` against `env`.
fn helm(env: &Environment, args: &[&str]) -> String {
    aios_e2e::chart::run(env, args).unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock, clippy::too_many_lines)] // one scenario; the node is its own
async fn the_chart_runs_the_operator_as_pods_and_a_rolling_update_does_not_wedge() {
    let _node = ONE_NODE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let env: &'static Environment = Box::leak(Box::new(start_with(true)));
    let _stop = StopOnDrop(env);
    let fixture = support::model_fixture(node::NODE_IP).await;
    let namespace = env.create_namespace("chart").unwrap();
    // The connection Secret first: the operator's pods read RabbitMQ's URL from it.
    let amqp_url = env.create_vhost(&namespace).unwrap();
    let amqp = env.for_pods(&amqp_url).unwrap();
    let redis = env.for_pods(env.redis_url.as_deref().unwrap()).unwrap();
    env.kubectl(&[
        "create",
        "secret",
        "generic",
        "aios-agent-connections",
        "-n",
        &namespace,
        &format!("--from-literal=amqpUrl={amqp}"),
        &format!("--from-literal=redisUrl={redis}"),
    ])
    .unwrap();
    aios_e2e::chart::install_operator(
        env,
        &namespace,
        "aios-agent-connections",
        &["operator.logFormat=text"],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let chart = aios_e2e::chart::chart_dir().display().to_string();
    let deployment = "deployment/aios-operator";
    env.kubectl(&[
        "rollout",
        "status",
        deployment,
        "-n",
        &namespace,
        "--timeout=180s",
    ])
    .unwrap_or_else(|e| panic!("the operator's pods never became ready: {e}"));
    let operator_pods = |env: &Environment| -> Vec<String> {
        env.kubectl(&[
            "get",
            "pods",
            "-n",
            &namespace,
            "-l",
            "app.kubernetes.io/name=aios-operator",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ])
        .unwrap()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
    };
    assert_eq!(operator_pods(env).len(), 2, "two replicas");

    let (ns, bus, url) = (namespace.clone(), amqp_url.clone(), fixture.uri());
    let first = tokio::task::spawn_blocking(move || run_hello(env, &ns, bus, &url, "first", true))
        .await
        .unwrap();
    assert_done_by_pods(&first);
    // The operator in the cluster verified in Jobs, on the node: one per task that wrote
    // files, and one for the branch head, each passed.
    let jobs = env
        .kubectl(&[
            "get",
            "jobs",
            "-n",
            &namespace,
            "-l",
            "app.kubernetes.io/component=verification",
            "-o",
            "jsonpath={.items[*].status.succeeded}",
        ])
        .unwrap();
    assert_eq!(
        jobs.split_whitespace().collect::<Vec<_>>(),
        ["1", "1", "1"],
        "{jobs}"
    );
    let leader = env
        .kubectl(&[
            "get",
            "lease",
            "aios-operator",
            "-n",
            &namespace,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .unwrap();
    assert!(
        operator_pods(env).contains(&leader),
        "a pod of the chart leads: {leader}"
    );
    // Only the leader can answer the credential endpoint: it labels its pod, and the
    // Service sends requests to that pod alone.
    let credential_backends = |env: &Environment| -> (String, String) {
        let get = |args: &[&str]| {
            let mut all = vec!["get", "-n", &namespace];
            all.extend_from_slice(args);
            env.kubectl(&all).unwrap().trim().to_owned()
        };
        (
            get(&[
                "pods",
                "-l",
                "aios.dev/leader=true",
                "-o",
                "jsonpath={.items[*].metadata.name}",
            ]),
            get(&[
                "endpointslices",
                "-l",
                "kubernetes.io/service-name=aios-operator",
                "-o",
                "jsonpath={.items[*].endpoints[*].targetRef.name}",
            ]),
        )
    };
    wait_for(
        "the leader's pod behind the credential Service",
        Duration::from_secs(60),
        || credential_backends(env) == (leader.clone(), leader.clone()),
    );

    // A changed value rolls the operator while a Project runs (Apollo's answer takes
    // 20 s): the rollout completes (a standby is ready, so nothing waits on the Lease),
    // the new pods take over, and the running Project finishes.
    support::slow_apollo(&fixture, Duration::from_secs(20)).await;
    let (ns, url) = (namespace.clone(), fixture.uri());
    let second =
        tokio::task::spawn_blocking(move || run_hello(env, &ns, amqp_url, &url, "second", true));
    wait_for(
        "the second Project's backend task to run",
        Duration::from_secs(180),
        || {
            env.kubectl(&[
                "get",
                "task",
                "second-program",
                "-n",
                &namespace,
                "-o",
                "jsonpath={.status.phase}",
            ])
            .is_ok_and(|phase| phase == "Running")
        },
    );
    let before = operator_pods(env);
    let mut upgrade = vec![
        "upgrade",
        "aios",
        chart.as_str(),
        "-n",
        &namespace,
        "--reuse-values",
    ];
    upgrade.extend(["--set", "operator.logFormat=json"]);
    helm(env, &upgrade);
    env.kubectl(&[
        "rollout",
        "status",
        deployment,
        "-n",
        &namespace,
        "--timeout=180s",
    ])
    .unwrap_or_else(|e| panic!("the rolling update wedged: {e}"));
    // The rollout is complete once the new pods are ready; the old ones may still be
    // shutting down (releasing the Lease), so wait for them to go.
    let mut gone = vec!["wait", "--for=delete", "--timeout=120s", "-n", &namespace];
    let old: Vec<String> = before.iter().map(|pod| format!("pod/{pod}")).collect();
    gone.extend(old.iter().map(String::as_str));
    env.kubectl(&gone)
        .unwrap_or_else(|e| panic!("the old operator pods never went: {e}"));
    let after = operator_pods(env);
    assert!(
        after.len() == 2 && after.iter().all(|pod| !before.contains(pod)),
        "two new operator pods replaced {before:?}: {after:?}"
    );
    wait_for(
        "a new leader behind the credential Service",
        Duration::from_secs(60),
        || {
            let (labelled, behind) = credential_backends(env);
            after.contains(&labelled) && behind == labelled
        },
    );
    let second = second.await.unwrap();
    assert_done_by_pods(&second);
    roll_only_what_changed(env, &namespace, &fixture.uri());
    a_served_model_runs_as_a_pod_and_restarts_offline(env, &namespace);

    // Idle, a pool goes back to zero once demand has stayed low for its delay.
    env.kubectl(&[
        "patch",
        "agent",
        "hera",
        "-n",
        &namespace,
        "--type=merge",
        "-p",
        r#"{"spec":{"scaling":{"scaleDownDelaySeconds":5}}}"#,
    ])
    .unwrap();
    wait_for(
        "Hera's pods to go back to zero",
        Duration::from_secs(120),
        || {
            env.kubectl(&[
                "get",
                "pods",
                "-n",
                &namespace,
                "-l",
                "aios.dev/agent=hera",
                "-o",
                "name",
            ])
            .is_ok_and(|pods| pods.trim().is_empty())
        },
    );
    env.stop().unwrap();
}

/// A `serve` ModelProvider runs Ollama as a pod from the local model-server image with
/// the model in it: Ready once the model is loaded (the operator's probe, through the
/// Service's DNS name, lists it), and Ready again after its pod is deleted, with
/// `pullPolicy: Never` and no registry reachable. Skipped, saying so, when the model
/// server is not built (e2e/model/build.sh).
fn a_served_model_runs_as_a_pod_and_restarts_offline(env: &Environment, namespace: &str) {
    let Some((_, image)) = aios_e2e::binaries::model_server_image() else {
        eprintln!(
            "skipped the model-server pod: the model server is not built (e2e/model/build.sh builds it)"
        );
        return;
    };
    let provider = format!(
        "apiVersion: aios.dev/v1alpha1
kind: ModelProvider
metadata: {{name: served}}
spec:
  type: Ollama
  tier: Local
  models: [{{name: smollm2-135m-instruct, maxComplexity: Low}}]
  serve:
    image: {image}
    pullPolicy: Never
    cache: {{fromImage: true}}
    resources: {{requests: {{cpu: 100m, memory: 256Mi}}, limits: {{memory: 2Gi}}}}
"
    );
    env.kubectl_with_input(&["apply", "-n", namespace, "-f", "-"], Some(&provider))
        .unwrap();
    let ready = || {
        env.kubectl(&[
            "get",
            "modelprovider",
            "served",
            "-n",
            namespace,
            "-o",
            "jsonpath={.status.ready} {.status.availableModels}",
        ])
        .is_ok_and(|s| s.starts_with("true") && s.contains("smollm2-135m-instruct"))
    };
    let pod = || {
        env.kubectl(&[
            "get",
            "pods",
            "-n",
            namespace,
            "-l",
            "aios.dev/model-provider=served",
            "-o",
            "jsonpath={.items[?(@.status.phase==\"Running\")].metadata.name}",
        ])
        .unwrap_or_default()
        .trim()
        .to_owned()
    };
    wait_for(
        "the model-server pod to be ready",
        Duration::from_secs(180),
        || ready() && !pod().is_empty(),
    );
    let first = pod();
    assert_loaded(env, namespace, &first);
    env.kubectl(&["delete", "pod", &first, "-n", namespace])
        .unwrap();
    let second = wait_for_value("a new model-server pod", Duration::from_secs(180), || {
        let now = pod();
        (!now.is_empty() && now != first && !now.contains(' ')).then_some(now)
    });
    env.kubectl(&[
        "wait",
        "-n",
        namespace,
        "--for=condition=Ready",
        &format!("pod/{second}"),
        "--timeout=180s",
    ])
    .unwrap_or_else(|e| panic!("the restarted model server never became ready: {e}"));
    assert_loaded(env, namespace, &second);
    wait_for("the provider ready again", Duration::from_secs(120), ready);
}

/// A Ready model-server pod has its model in memory, not only on disk: `ollama ps` in
/// the pod names it.
fn assert_loaded(env: &Environment, namespace: &str, pod: &str) {
    let ready = env
        .kubectl(&[
            "get",
            "pod",
            pod,
            "-n",
            namespace,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ])
        .unwrap();
    assert_eq!(ready.trim(), "True", "{pod} is Ready");
    let loaded = env
        .kubectl(&[
            "exec", pod, "-n", namespace, "-c", "ollama", "--", "ollama", "ps",
        ])
        .unwrap();
    assert!(
        loaded.contains("smollm2-135m-instruct:latest"),
        "a Ready server has its model loaded: {loaded}"
    );
}

/// A provider without credentials changes no agent pod; a changed persona rolls only its
/// Agent's pods.
fn roll_only_what_changed(env: &Environment, namespace: &str, model_url: &str) {
    let generation = |agent: &str| {
        env.kubectl(&[
            "get",
            "deployment",
            &format!("aios-agent-{agent}"),
            "-n",
            namespace,
            "-o",
            "jsonpath={.metadata.generation}",
        ])
        .unwrap()
    };
    let (hera, apollo) = (generation("hera"), generation("apollo"));
    let spare = format!(
        "apiVersion: aios.dev/v1alpha1\nkind: ModelProvider\nmetadata:\n  name: spare\nspec:\n  type: Ollama\n  tier: Local\n  models: [{{name: fixture}}]\n  endpoint: {{url: \"{model_url}\"}}\n"
    );
    env.kubectl_with_input(&["apply", "-n", namespace, "-f", "-"], Some(&spare))
        .unwrap();
    wait_for(
        "the operator to list the new provider",
        Duration::from_secs(60),
        || {
            env.kubectl(&[
                "get",
                "configmap",
                "aios-providers",
                "-n",
                namespace,
                "-o",
                "jsonpath={.data.providers\\.json}",
            ])
            .is_ok_and(|list| list.contains("\"spare\""))
        },
    );
    assert_eq!(
        (generation("hera"), generation("apollo")),
        (hera.clone(), apollo.clone()),
        "a provider without credentials rolls no agent"
    );
    env.kubectl(&[
        "patch",
        "agent",
        "apollo",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        r#"{"spec":{"persona":{"systemPrompt":"You are Apollo. Write small, tested services."}}}"#,
    ])
    .unwrap();
    wait_for("apollo's pods to roll", Duration::from_secs(60), || {
        generation("apollo") != apollo
    });
    assert_eq!(
        generation("hera"),
        hera,
        "another Agent's persona rolls not Hera's pods"
    );
}

fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A git server pod (the agent image's git) behind a Service, and a client pod that
/// lists its branches by the Service's name; returns what the client printed.
fn git_over_a_service(env: &Environment, namespace: &str) -> String {
    let image = format!("ghcr.io/aios-dev/aios-agent:{VERSION}");
    let locked = "securityContext: {readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}";
    let pod_security = "securityContext: {runAsNonRoot: true, runAsUser: 65532, seccompProfile: {type: RuntimeDefault}}";
    let server = format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: git-server, labels: {{app: git}}}}
spec:
  automountServiceAccountToken: false
  {pod_security}
  containers:
  - name: git
    image: {image}
    command: [sh, -c, 'git init -q -b main /var/lib/aios/r && git -C /var/lib/aios/r -c user.name=t -c user.email=t@t commit -q --allow-empty -m hello && git daemon --export-all --base-path=/var/lib/aios --port=9418 --reuseaddr']
    {locked}
    readinessProbe: {{tcpSocket: {{port: 9418}}, periodSeconds: 1}}
    resources: {{requests: {{cpu: 10m, memory: 32Mi}}, limits: {{memory: 128Mi}}}}
    volumeMounts: [{{name: work, mountPath: /var/lib/aios}}]
  volumes: [{{name: work, emptyDir: {{sizeLimit: 64Mi}}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: git}}
spec:
  selector: {{app: git}}
  ports: [{{port: 9418, targetPort: 9418}}]
"
    );
    env.kubectl_with_input(&["apply", "-n", namespace, "-f", "-"], Some(&server))
        .unwrap();
    env.kubectl(&[
        "wait",
        "-n",
        namespace,
        "--for=condition=Ready",
        "pod/git-server",
        "--timeout=90s",
    ])
    .unwrap();
    let client = format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: git-client}}
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  {pod_security}
  containers:
  - name: git
    image: {image}
    imagePullPolicy: Never
    command: [git, ls-remote, 'git://git.{namespace}.svc.cluster.local/r']
    {locked}
    resources: {{requests: {{cpu: 10m, memory: 32Mi}}, limits: {{memory: 128Mi}}}}
"
    );
    env.kubectl_with_input(&["apply", "-n", namespace, "-f", "-"], Some(&client))
        .unwrap();
    wait_for("the client pod to finish", Duration::from_secs(90), || {
        env.kubectl(&[
            "get",
            "pod",
            "git-client",
            "-n",
            namespace,
            "-o",
            "jsonpath={.status.phase}",
        ])
        .is_ok_and(|p| p == "Succeeded" || p == "Failed")
    });
    env.kubectl(&["logs", "git-client", "-n", namespace])
        .unwrap()
}

/// What a node leaves on the machine: the bridge, mounts, processes, cgroups, state.
fn leftovers() -> Vec<String> {
    let mut left = Vec::new();
    if Path::new(&format!("/sys/class/net/{}", node::BRIDGE)).exists() {
        left.push(format!("the bridge {}", node::BRIDGE));
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    left.extend(
        mounts
            .lines()
            .filter(|l| l.contains(node::STATE_DIR) || l.contains(node::RUN_DIR))
            .map(|l| format!("mount {l}")),
    );
    for dir in [node::STATE_DIR, node::RUN_DIR] {
        if Path::new(dir).exists() {
            left.push(dir.to_owned());
        }
    }
    if Path::new("/sys/fs/cgroup/memory/kubepods").exists() {
        left.push("the kubepods cgroup".to_owned());
    }
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.contains(node::STATE_DIR) || cmdline.contains(node::RUN_DIR) {
            left.push(format!("process {}", cmdline.replace('\0', " ")));
        }
    }
    left
}

#[test]
fn the_node_runs_restricted_pods_that_reach_services_by_name_and_cleans_up_even_after_a_crash() {
    let _node = ONE_NODE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let env = start();
    let _stop = StopOnDrop(&env);
    let nodes = env.kubectl(&["get", "nodes", "-o", "wide"]).unwrap();
    assert!(
        nodes.contains(node::NODE_NAME) && nodes.contains(" Ready"),
        "{nodes}"
    );
    let namespace = env.create_namespace("node").unwrap();
    env.kubectl(&[
        "label",
        "namespace",
        &namespace,
        "pod-security.kubernetes.io/enforce=restricted",
    ])
    .unwrap();
    let listed = git_over_a_service(&env, &namespace);
    assert!(
        listed.contains("refs/heads/main"),
        "the client reached the server by its Service name: {listed:?}"
    );

    env.stop().unwrap();
    assert_eq!(
        leftovers(),
        Vec::<String>::new(),
        "a stopped node leaves nothing"
    );

    // A crash: every process of the environment killed, nothing cleaned.
    let crashed = start();
    for process in &crashed.processes {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(-i32::try_from(process.pid).unwrap()),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(
        !leftovers().is_empty(),
        "a killed node leaves its state (or this test proves nothing)"
    );
    let again = start();
    let _stop_again = StopOnDrop(&again);
    let nodes = again.kubectl(&["get", "nodes"]).unwrap();
    assert!(nodes.contains(" Ready"), "{nodes}");
    again.stop().unwrap();
    let _ = std::fs::remove_dir_all(&crashed.dir);
    assert_eq!(leftovers(), Vec::<String>::new());
}
