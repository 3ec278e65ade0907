//! Test support: an operator process per test, in a namespace and a RabbitMQ virtual
//! host of the test's own, and fake agents that take dispatches and report events the
//! way real agents do (deduplicating redeliveries by message id).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::{BTreeMap, HashSet},
    fs::File,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aios_crds::{
    Task, TaskResult, Usage,
    bus::{
        Message, SCHEMA_VERSION, TaskCancel, TaskDispatch, TaskEvent, TaskEventKind, TaskOutput,
    },
    names::bus::role_queue,
};
use aios_e2e::{Environment, process};
use aios_operator::runtime::bus::Bus;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicRejectOptions};
use tokio_util::sync::CancellationToken;

/// The shared environment with the CRDs installed.
pub fn env() -> &'static Environment {
    aios_e2e::shared_with_crds()
}

/// An operator process.
pub struct Operator {
    child: Child,
    /// Port of its /metrics endpoint.
    pub http_port: u16,
    /// Its log file.
    pub log: PathBuf,
}

/// One test's world: a namespace, a vhost, operators.
pub struct Harness {
    pub env: &'static Environment,
    pub ns: String,
    pub amqp_url: String,
    pub operators: Vec<Operator>,
    /// A local server answering as an Ollama, behind the test's ModelProvider.
    model_server: Option<wiremock::MockServer>,
    /// Environment the operators started from now on get besides the usual.
    pub operator_env: Vec<(String, String)>,
}

impl Harness {
    pub fn new(prefix: &str) -> Self {
        Self::new_in(env(), prefix)
    }

    /// A test's world on `env` (an environment of the test's own, say).
    pub fn new_in(env: &'static Environment, prefix: &str) -> Self {
        let ns = env.create_namespace(prefix).unwrap();
        let amqp_url = env.create_vhost(&ns).unwrap();
        Self {
            env,
            ns,
            amqp_url,
            operators: Vec::new(),
            model_server: None,
            operator_env: Vec::new(),
        }
    }

    /// Another namespace on `other`'s bus (RabbitMQ virtual host), as every namespace
    /// of a cluster shares one bus.
    pub fn sharing_bus(prefix: &str, other: &Harness) -> Self {
        let env = env();
        Self {
            env,
            ns: env.create_namespace(prefix).unwrap(),
            amqp_url: other.amqp_url.clone(),
            operators: Vec::new(),
            model_server: None,
            operator_env: Vec::new(),
        }
    }

    /// A test's usual world: a namespace with a ready model provider and Agents for
    /// `roles`, and one operator (`op-1`) watching it.
    pub async fn running(prefix: &str, roles: &[&str]) -> Self {
        let mut h = Self::new(prefix);
        h.serve_models().await;
        h.apply_agents(roles);
        h.start_operator("op-1");
        h
    }

    /// Starts an operator replica named `identity`; returns its index.
    pub fn start_operator(&mut self, identity: &str) -> usize {
        self.start_operator_logging(identity, "info,aios_operator=debug")
    }

    /// Starts an operator replica with `RUST_LOG` set to `filter`.
    pub fn start_operator_logging(&mut self, identity: &str, filter: &str) -> usize {
        self.start_operator_under(identity, filter, &[])
    }

    /// Starts an operator replica run by `wrapper` (a command and its arguments, the
    /// operator's path appended), e.g. `faketime -f +60s`.
    pub fn start_operator_under(
        &mut self,
        identity: &str,
        filter: &str,
        wrapper: &[&str],
    ) -> usize {
        let http_port = process::free_port().unwrap();
        let log = self
            .env
            .dir
            .join("logs")
            .join(format!("operator-{}-{identity}.log", self.ns));
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let binary = env!("CARGO_BIN_EXE_aios-operator");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        let child = command
            .env("KUBECONFIG", &self.env.kubeconfig)
            .env("AIOS_AMQP_URL", &self.amqp_url)
            .envs(self.env.redis_url.iter().map(|url| ("AIOS_REDIS_URL", url)))
            .env("AIOS_WATCH_NAMESPACE", &self.ns)
            .env("POD_NAMESPACE", &self.ns)
            .env("POD_NAME", identity)
            .env("AIOS_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
            .env("AIOS_LOG_FORMAT", "text")
            .env("AIOS_LEASE_DURATION_SECONDS", "6")
            .env("AIOS_LEASE_RETRY_SECONDS", "1")
            .env("AIOS_PROVIDER_PROBE_SECONDS", "1")
            .env("RUST_LOG", filter)
            .envs(self.operator_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        self.operators.push(Operator {
            child,
            http_port,
            log,
        });
        self.operators.len() - 1
    }

    /// The pid of operator `i`.
    pub fn operator_pid(&self, i: usize) -> u32 {
        self.operators[i].child.id()
    }

    /// Sends SIGTERM to operator `i` and waits up to `timeout` for it to exit; its exit
    /// status, or `None` if it is still running.
    pub fn terminate_operator(
        &mut self,
        i: usize,
        timeout: Duration,
    ) -> Option<std::process::ExitStatus> {
        let op = &mut self.operators[i];
        Command::new("kill")
            .args(["-TERM", &op.child.id().to_string()])
            .status()
            .unwrap();
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(status) = op.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// Kills operator `i` at once (SIGKILL): no graceful shutdown.
    pub fn kill_operator(&mut self, i: usize) {
        let op = &mut self.operators[i];
        let _ = op.child.kill();
        let _ = op.child.wait();
    }

    /// The value of metric `name` (summed over its label sets) on operator `i`.
    pub fn metric(&self, i: usize, name: &str) -> f64 {
        let Some(text) = process::http_get(self.operators[i].http_port, "/metrics") else {
            return 0.0;
        };
        text.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The values of metric `name` on operator `i`, by the value of its label `by`,
    /// among the series whose labels include `with` (e.g. `type="heartbeat"`).
    pub fn metric_by(&self, i: usize, name: &str, with: &str, by: &str) -> BTreeMap<String, f64> {
        let text = process::http_get(self.operators[i].http_port, "/metrics").unwrap_or_default();
        let label = format!("{by}=\"");
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(with))
            .filter_map(|l| {
                // The label itself, not one whose name ends with it (`le` in `role`).
                let labels = l.split_once('{')?.1;
                let value = labels
                    .split(',')
                    .find_map(|pair| pair.strip_prefix(label.as_str()))?
                    .split('"')
                    .next()?;
                let count = l.rsplit(' ').next()?.parse::<f64>().ok()?;
                Some((value.to_string(), count))
            })
            .collect()
    }

    pub fn kubectl(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.ns];
        all.extend_from_slice(args);
        self.env.kubectl(&all).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn apply(&self, yaml: &str) {
        self.env
            .kubectl_with_input(&["apply", "-n", &self.ns, "-f", "-"], Some(yaml))
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// A ready ModelProvider whose model takes any task (a local server answering as an
    /// Ollama), so the operator dispatches: it holds Tasks no ready provider can take.
    pub async fn serve_models(&mut self) {
        use wiremock::{Mock, MockServer, ResponseTemplate, matchers};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server = MockServer::builder().listener(listener).start().await;
        Mock::given(matchers::method("GET"))
            .and(matchers::path("/api/tags"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(serde_json::json!({"models": [{"name": "test-model"}]})),
            )
            .mount(&server)
            .await;
        self.apply(&format!(
            "apiVersion: aios.dev/v1alpha1\nkind: ModelProvider\nmetadata:\n  name: test-models\nspec:\n  type: Ollama\n  tier: Local\n  models:\n    - name: test-model\n      maxComplexity: High\n  endpoint:\n    url: {}\n",
            server.uri()
        ));
        self.model_server = Some(server);
    }

    /// Makes the namespace enforce Pod Security `restricted` (latest version): the API
    /// server refuses any pod that breaks it.
    pub fn enforce_restricted(&self) {
        self.kubectl(&[
            "label",
            "namespace",
            &self.ns,
            "pod-security.kubernetes.io/enforce=restricted",
            "pod-security.kubernetes.io/enforce-version=latest",
        ]);
    }

    /// Agents for `roles`, so plans may use them and their queues exist.
    pub fn apply_agents(&self, roles: &[&str]) {
        for role in roles {
            self.apply(&format!(
                "apiVersion: aios.dev/v1alpha1\nkind: Agent\nmetadata:\n  name: {role}\nspec:\n  role: {role}\n  persona:\n    name: {role}\n"
            ));
        }
    }

    /// A client of the environment's API server, as the test's user.
    pub async fn client(&self) -> kube::Client {
        // Features unified over the workspace enable more than one provider: pick one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.env.kubeconfig).unwrap();
        let options = kube::config::KubeConfigOptions::default();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .unwrap();
        kube::Client::try_from(config).unwrap()
    }

    pub fn task(&self, name: &str) -> Task {
        serde_json::from_str(&self.kubectl(&["get", "task", name, "-o", "json"])).unwrap()
    }

    pub fn tasks(&self) -> Vec<Task> {
        let list: serde_json::Value =
            serde_json::from_str(&self.kubectl(&["get", "tasks", "-o", "json"])).unwrap();
        serde_json::from_value(list["items"].clone()).unwrap()
    }

    /// Waits until `path` of `kind_name` reads `value` (the object may not exist yet).
    pub async fn wait_for_value(
        &self,
        kind_name: &str,
        path: &str,
        value: &str,
        timeout: Duration,
    ) {
        let start = Instant::now();
        loop {
            let now = self
                .env
                .kubectl(&[
                    "-n",
                    &self.ns,
                    "get",
                    kind_name,
                    "-o",
                    &format!("jsonpath={path}"),
                ])
                .unwrap_or_default();
            if now == value {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "{kind_name} {path} is {now:?}, not {value:?}, after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn jsonpath(&self, kind_name: &str, path: &str) -> String {
        self.kubectl(&["get", kind_name, "-o", &format!("jsonpath={path}")])
    }

    /// Waits until the Project's phase is `phase`, failing with the Project and the
    /// operator's log tail when it is not within `timeout`.
    pub async fn wait_for_phase(&self, project: &str, phase: &str, timeout: Duration) {
        let start = Instant::now();
        loop {
            let now = self.jsonpath(&format!("project/{project}"), "{.status.phase}");
            if now == phase {
                return;
            }
            if start.elapsed() > timeout {
                let dump = self.kubectl(&["get", "projects,tasks", "-o", "yaml"]);
                let logs: Vec<String> = self
                    .operators
                    .iter()
                    .map(|o| process::log_tail(&o.log, 40))
                    .collect();
                panic!(
                    "project {project} is {now:?}, not {phase}, after {timeout:?}\n{dump}\noperator logs:\n{}",
                    logs.join("\n---\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        for op in &mut self.operators {
            let _ = op.child.kill();
            let _ = op.child.wait();
        }
        let _ = self
            .env
            .kubectl(&["delete", "namespace", &self.ns, "--wait=false"]);
    }
}

/// What a fake agent does with a dispatch.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Report success with this result (and, for a planning task, plan).
    Succeed(TaskOutput),
    /// Report failure.
    Fail { reason: String, retryable: bool },
    /// Report Started, then nothing: a stuck or dead agent.
    Hang,
    /// Reject the message without requeueing: the bus dead-letters it.
    Reject,
}

/// A dispatch a fake agent took.
#[derive(Debug, Clone)]
pub struct Received {
    pub dispatch: TaskDispatch,
    pub at: Instant,
}

/// Fake agents for some roles.
pub struct FakeAgents {
    pub received: Arc<Mutex<Vec<Received>>>,
    /// When each task's final event was published, by task name.
    pub finished: Arc<Mutex<std::collections::HashMap<String, Instant>>>,
    pub cancels: Arc<Mutex<Vec<TaskCancel>>>,
    stop: CancellationToken,
}

impl FakeAgents {
    /// Starts consuming the queues of `roles` in `h`'s namespace; `reply` decides each answer,
    /// given after `delay`.
    pub async fn start(
        h: &Harness,
        roles: &[&str],
        delay: Duration,
        reply: impl Fn(&TaskDispatch) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let stop = CancellationToken::new();
        let bus = Arc::new(Bus::connect(&h.amqp_url, None, &stop).await.unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let cancels = Arc::new(Mutex::new(Vec::new()));
        let finished = Arc::new(Mutex::new(std::collections::HashMap::new()));
        let seen = Arc::new(Mutex::new(HashSet::new()));
        let reply = Arc::new(reply);
        for role in roles {
            bus.ensure_role_queue(&h.ns, role).await.unwrap();
            let consumer = bus
                .consume(&role_queue(&h.ns, role), &format!("fake-{role}"), 512)
                .await
                .unwrap();
            let (bus, received, seen, reply, stop) = (
                bus.clone(),
                received.clone(),
                seen.clone(),
                reply.clone(),
                stop.clone(),
            );
            let agent = format!("fake-{role}");
            let finished = finished.clone();
            tokio::spawn(async move {
                consumer
                    .take_until(stop.cancelled_owned())
                    // Many at once: each answer waits for the broker's confirms, and an
                    // "instant" responder must not become a benchmark's queue.
                    .for_each_concurrent(256, |delivery| {
                        let (bus, received, seen, reply, agent) = (
                            bus.clone(),
                            received.clone(),
                            seen.clone(),
                            reply.clone(),
                            agent.clone(),
                        );
                        let finished = finished.clone();
                        async move {
                            let Ok(delivery) = delivery else { return };
                            let dispatch = TaskDispatch::decode(&delivery.data).unwrap();
                            let first = seen
                                .lock()
                                .unwrap()
                                .insert(dispatch.attempt_id().message_id());
                            if first {
                                received.lock().unwrap().push(Received {
                                    dispatch: dispatch.clone(),
                                    at: Instant::now(),
                                });
                                let answer = reply(&dispatch);
                                if matches!(answer, Reply::Reject) {
                                    let options = BasicRejectOptions { requeue: false };
                                    delivery.reject(options).await.unwrap();
                                    return;
                                }
                                respond(&bus, &agent, &dispatch, answer, delay).await;
                                finished
                                    .lock()
                                    .unwrap()
                                    .insert(dispatch.task.name.clone(), Instant::now());
                            }
                            delivery.ack(BasicAckOptions::default()).await.unwrap();
                        }
                    })
                    .await;
            });
        }
        let control = bus.consume_control("fake-control").await.unwrap();
        let (cancels2, stop2) = (cancels.clone(), stop.clone());
        tokio::spawn(async move {
            control
                .take_until(stop2.cancelled_owned())
                .for_each(|d| {
                    let cancels = cancels2.clone();
                    async move {
                        let Ok(d) = d else { return };
                        cancels
                            .lock()
                            .unwrap()
                            .push(TaskCancel::decode(&d.data).unwrap());
                        d.ack(BasicAckOptions::default()).await.unwrap();
                    }
                })
                .await;
        });
        Self {
            received,
            finished,
            cancels,
            stop,
        }
    }

    /// The dispatches taken so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Task names in the order their dispatches arrived.
    pub fn order(&self) -> Vec<String> {
        self.received()
            .iter()
            .map(|r| r.dispatch.task.name.clone())
            .collect()
    }

    /// Waits until a cancel the agents heard matches `wanted`, failing with the cancels
    /// heard when none does within `timeout`.
    pub async fn wait_for_cancel(&self, timeout: Duration, wanted: impl Fn(&TaskCancel) -> bool) {
        let start = Instant::now();
        loop {
            let cancels = self.cancels.lock().unwrap().clone();
            if cancels.iter().any(&wanted) {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "no such cancel within {timeout:?}: {cancels:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for FakeAgents {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub fn event(dispatch: &TaskDispatch, agent: &str, kind: TaskEventKind) -> TaskEvent {
    TaskEvent {
        schema_version: SCHEMA_VERSION,
        project: dispatch.project.clone(),
        task: dispatch.task.clone(),
        attempt: dispatch.attempt,
        agent: agent.to_owned(),
        token: dispatch.token.clone(),
        at: jiff::Timestamp::now(),
        kind,
    }
}

async fn respond(bus: &Bus, agent: &str, dispatch: &TaskDispatch, reply: Reply, delay: Duration) {
    bus.publish_event(&event(dispatch, agent, TaskEventKind::Started))
        .await
        .unwrap();
    tokio::time::sleep(delay).await;
    let usage = Usage {
        input_tokens: 100,
        output_tokens: 20,
        local_requests: 1,
        ..Usage::default()
    };
    let kind = match reply {
        Reply::Succeed(output) => TaskEventKind::Succeeded { output, usage },
        Reply::Fail { reason, retryable } => TaskEventKind::Failed {
            message: format!("the fake agent was told to fail with {reason}"),
            reason,
            retryable,
            usage,
        },
        Reply::Hang | Reply::Reject => return,
    };
    bus.publish_event(&event(dispatch, agent, kind))
        .await
        .unwrap();
}

/// A result that names the task.
/// A Project `name` of one task, `<name>-only`, for role `backend`.
pub fn single(name: &str) -> String {
    format!(
        "apiVersion: aios.dev/v1alpha1\nkind: Project\nmetadata:\n  name: {name}\nspec:\n  description: One task\n  repository:\n    url: file:///tmp/{name}.git\n  tasks:\n    - name: only\n      title: The only task\n      role: backend\n"
    )
}

pub fn done(dispatch: &TaskDispatch) -> TaskOutput {
    TaskResult {
        summary: format!("{} done", dispatch.task.name),
        files: vec![format!("{}.txt", dispatch.task.name)],
        commit: Some(format!("c-{}", dispatch.task.name)),
        ..TaskResult::default()
    }
    .into()
}

/// A planning task's answer: `plan` (JSON, as an agent reports it), or the task's
/// result for any other task.
pub fn plan_reply(dispatch: &TaskDispatch, plan: &serde_json::Value) -> Reply {
    if dispatch.spec.planning {
        Reply::Succeed(TaskOutput {
            result: TaskResult {
                summary: "planned".into(),
                ..TaskResult::default()
            },
            plan: Some(serde_json::from_value(plan.clone()).unwrap()),
        })
    } else {
        Reply::Succeed(done(dispatch))
    }
}
