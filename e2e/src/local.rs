//! AIOS's main job on the local environment: the operator and one agent process per
//! role (standing in for the agent pods the operator scales: there is no kubelet here),
//! a local ModelProvider, and a Project applied with kubectl, followed until it ends.
//! `scripts/run-local.sh` runs it with a real local model; the end-to-end test runs the
//! same path with a model fixture.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use aios_crds::{Project, ProjectPhase, Task};

use crate::{Environment, process};

/// The repository URL sample Projects carry; a run replaces it with its delivery
/// repository.
pub const REPOSITORY_PLACEHOLDER: &str = "file:///REPOSITORY";

/// The roles of the pantheon's Agents (`manifests/examples/agents.yaml`).
pub const ROLES: &[&str] = &["cto", "backend", "frontend", "qa", "devops"];

/// A model server the run uses.
#[derive(Debug, Clone)]
pub struct ModelServer {
    /// The ModelProvider's name.
    pub name: String,
    /// `Ollama`, `OpenAI`, `Anthropic` or `OpenAICompatible`.
    pub provider_type: String,
    /// `Local` or `Cloud`.
    pub tier: String,
    /// Higher is tried first within a tier.
    pub priority: i32,
    /// Its base URL.
    pub url: String,
    /// The chat model.
    pub chat_model: String,
    /// The embeddings model, if it has one.
    pub embed_model: Option<String>,
    /// Served in the cluster from this image (a `serve` ModelProvider, its models in the
    /// image, nothing pulled) rather than at `url`.
    pub image: Option<String>,
}

impl ModelServer {
    fn manifest(&self) -> String {
        let mut models = format!(
            "    - name: {}\n      maxComplexity: High\n",
            self.chat_model
        );
        if let Some(embed) = &self.embed_model {
            let _ = write!(models, "    - name: {embed}\n      embeddings: true\n");
        }
        let reached = match &self.image {
            Some(image) => format!(
                "  serve:\n    image: {image}\n    pullPolicy: Never\n    cache: {{fromImage: true}}\n    resources: {{requests: {{cpu: 100m, memory: 256Mi}}, limits: {{memory: 2Gi}}}}\n"
            ),
            None => format!("  endpoint:\n    url: {}\n", self.url),
        };
        format!(
            "apiVersion: aios.dev/v1alpha1\nkind: ModelProvider\nmetadata:\n  name: {}\nspec:\n  type: {}\n  tier: {}\n  priority: {}\n  models:\n{models}{reached}",
            self.name, self.provider_type, self.tier, self.priority
        )
    }
}

/// The Secret with the agents' connection settings (the operator's default name).
const CONNECTION_SECRET: &str = "aios-agent-connections";

/// How long the model providers may take to become ready (a served model starts a pod
/// and loads its model first).
const PROVIDER_READY_TIMEOUT: Duration = Duration::from_secs(300);

/// What a run needs.
/// What a run is: unset fields (`..LocalRun::default()`) mean a local operator process,
/// agents as local processes, no TLS, no hold, and `kubectl apply` of the Project.
#[derive(Debug, Clone, Default)]
pub struct LocalRun {
    /// The namespace everything goes into (created if missing).
    pub namespace: String,
    /// The AMQP URL (a vhost of the run's own).
    pub amqp_url: String,
    /// Where `aios-operator` and `aios-agent` are.
    pub bin_dir: PathBuf,
    /// Logs, agents' work directories, the delivery repository.
    pub work_dir: PathBuf,
    /// The model servers, in no particular order (the router orders them).
    pub models: Vec<ModelServer>,
    /// The Project's YAML; [`REPOSITORY_PLACEHOLDER`] in it is replaced by the delivery repository.
    pub project: String,
    /// How long the Project may take.
    pub timeout: Duration,
    /// Prints progress on stderr.
    pub verbose: bool,
    /// The kubeconfig the operator uses; the environment's admin one when unset (a test
    /// gives it one that impersonates the chart's ServiceAccount).
    pub operator_kubeconfig: Option<PathBuf>,
    /// More environment for a local operator process (a test running it as the chart
    /// would: the chart's token key Secret, say).
    pub operator_env: Vec<(String, String)>,
    /// Run the agents as the pods the operator scales, on the environment's node, rather
    /// than as local processes. The delivery repository is then served over git's smart
    /// HTTP on the node's address, and the model servers must be reachable from pods.
    pub agents_in_pods: bool,
    /// Where the operator runs.
    pub operator: Operator,
    /// The operator and the agents reach RabbitMQ over `amqps://` and Redis over
    /// `rediss://` (the environment's TLS listeners), trusting the environment's CA.
    /// Local processes only: not supported yet with `agents_in_pods`.
    pub tls: bool,
    /// After the Project ends, keep the operator and the agents running until this file
    /// exists (or the timeout passes again): a test acts on the finished run while its
    /// processes still watch, scrape and serve.
    pub hold: Option<PathBuf>,
    /// A command that applies the Project instead of `kubectl apply` of
    /// [`LocalRun::project`] (Hermes: `aios new … --apply`), run with the environment's
    /// kubeconfig; [`REPOSITORY_PLACEHOLDER`] in its arguments is replaced, and the first
    /// word it prints is `<kind>/<name>` of what it applied.
    pub apply_command: Option<Vec<String>>,
}

/// Runs `command` (its arguments' [`REPOSITORY_PLACEHOLDER`] replaced by `repository`)
/// with the environment's kubeconfig; what it printed.
fn apply_with(
    env: &Environment,
    command: &[String],
    repository: &str,
) -> Result<String, LocalError> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| step("applying the Project")("an empty apply command".to_owned()))?;
    let output = std::process::Command::new(program)
        .args(
            args.iter()
                .map(|a| a.replace(REPOSITORY_PLACEHOLDER, repository)),
        )
        .env("KUBECONFIG", &env.kubeconfig)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| step("applying the Project")(format!("{program}: {e}")))?;
    if !output.status.success() {
        return Err(step("applying the Project")(format!(
            "{program} exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// How a run's processes reach RabbitMQ and Redis.
struct Connections {
    amqp: String,
    redis: Option<String>,
    /// The CA file to trust (`AIOS_CA_FILE`), over TLS.
    ca_file: Option<PathBuf>,
}

/// Where a run's operator runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Operator {
    /// A local process the run starts and stops.
    #[default]
    Process,
    /// In the cluster, installed apart (a test's Helm release, say): none is started.
    InCluster,
    /// Installed by the run with the Helm chart (its pods, on the node) once the agents'
    /// connection Secret exists; needs `agents_in_pods`.
    Chart,
}

/// How a run ended.
#[derive(Debug)]
pub struct Outcome {
    /// The Project at the end.
    pub project: Project,
    /// Its Tasks at the end.
    pub tasks: Vec<Task>,
    /// The delivery repository (bare).
    pub repository: PathBuf,
    /// `kubectl get projects,tasks,agents`.
    pub summary: String,
    /// The delivery repository's log.
    pub git_log: String,
    /// Where the logs are.
    pub logs: PathBuf,
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// A step failed.
    #[error("{step}: {detail}")]
    Step {
        /// What was being done.
        step: String,
        /// What went wrong.
        detail: String,
    },
    /// The Project failed or did not finish.
    #[error("the Project ended {phase}: {message}")]
    Project {
        /// The phase (or "unfinished").
        phase: String,
        /// Its message, the failed Tasks' reasons.
        message: String,
        /// What was seen at the end.
        outcome: Box<Outcome>,
    },
}

fn step(step: &str) -> impl FnOnce(String) -> LocalError + '_ {
    move |detail| LocalError::Step {
        step: step.to_owned(),
        detail,
    }
}

/// Processes the run started; stopped when dropped.
struct Processes(Vec<(String, Child)>);

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for (_, child) in &mut self.0 {
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

impl LocalRun {
    fn say(&self, line: &str) {
        if self.verbose {
            eprintln!("{line}");
        }
    }

    fn spawn(
        &self,
        env: &Environment,
        name: &str,
        program: &Path,
        vars: &[(&str, String)],
    ) -> Result<Child, LocalError> {
        self.start(env, name, program, &[], vars)
    }

    /// Starts `program` with `args` and `vars`, its output in `logs/<name>.log`.
    fn start(
        &self,
        env: &Environment,
        name: &str,
        program: &Path,
        args: &[&str],
        vars: &[(&str, String)],
    ) -> Result<Child, LocalError> {
        let log_path = self.work_dir.join("logs").join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path).map_err(|e| LocalError::Step {
            step: format!("creating {}", log_path.display()),
            detail: e.to_string(),
        })?;
        let err = log
            .try_clone()
            .map_err(|e| step("opening a log")(e.to_string()))?;
        Command::new(program)
            .args(args)
            .env("KUBECONFIG", &env.kubeconfig)
            .env("AIOS_LOG_FORMAT", "text")
            .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| LocalError::Step {
                step: format!("starting {}", program.display()),
                detail: e.to_string(),
            })
    }

    /// Runs the Project to its end.
    pub fn run(&self, env: &Environment) -> Result<Outcome, LocalError> {
        let ns = self.namespace.as_str();
        for dir in ["logs", "agents"] {
            std::fs::create_dir_all(self.work_dir.join(dir))
                .map_err(|e| step("creating the work directory")(e.to_string()))?;
        }
        let repository = self.work_dir.join("delivery.git");
        if !repository.join("HEAD").exists() {
            git(
                &self.work_dir,
                &["init", "--quiet", "--bare", "-b", "main", "delivery.git"],
            )
            .map_err(step("creating the delivery repository"))?;
        }
        let _ = env.kubectl(&["create", "namespace", ns]);
        let began = Instant::now();
        let mut processes = Processes(Vec::new());
        let repository_url = if self.agents_in_pods {
            self.prepare_pods(env, &mut processes)?
        } else {
            format!("file://{}", repository.display())
        };
        let credential_url = self.operator_and_agents(env, &mut processes)?;
        self.say("==> waiting for the operator to find a ready model provider");
        let providers_file = self.work_dir.join("providers.json");
        write_provider_list(env, &self.namespace, &providers_file)?;

        if self.agents_in_pods {
            self.say("==> the agents run as pods the operator scales with their queues");
        } else {
            self.start_agents(
                env,
                &mut processes,
                &providers_file,
                credential_url.as_deref(),
            )?;
            self.say(&format!(
                "==> one agent process per role: {}",
                ROLES.join(", ")
            ));
        }

        let applied = match &self.apply_command {
            None => env
                .kubectl_with_input(
                    &["-n", ns, "apply", "-f", "-", "-o", "name"],
                    Some(
                        &self
                            .project
                            .replace(REPOSITORY_PLACEHOLDER, &repository_url),
                    ),
                )
                .map_err(|e| step("applying the Project")(e.to_string()))?,
            Some(command) => apply_with(env, command, &repository_url)?,
        };
        let name = applied
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        self.say(&format!(
            "==> applied Project {name}; following it (up to {:?})",
            self.timeout
        ));
        let applied = Instant::now();
        let outcome = self.follow(env, &name, &repository, &mut processes)?;
        self.say(&format!(
            "==> the Project ran {} s, after {} s of setting up (operator, model server, git server)",
            applied.elapsed().as_secs(),
            applied.duration_since(began).as_secs()
        ));
        if let Some(hold) = &self.hold {
            self.say(&format!(
                "==> the processes keep running until {} exists",
                hold.display()
            ));
            let deadline = Instant::now() + self.timeout;
            while !hold.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        drop(processes);
        let phase = outcome.project.status.as_ref().and_then(|s| s.phase);
        if phase == Some(ProjectPhase::Succeeded) {
            return Ok(outcome);
        }
        let message = failure_message(&outcome);
        Err(LocalError::Project {
            phase: phase.map_or_else(|| "unfinished".to_owned(), |p| format!("{p:?}")),
            message,
            outcome: Box::new(outcome),
        })
    }

    /// The operator (as `self.operator` says), then the pantheon's Agents and the model
    /// providers (after the chart, which installs the CRDs).
    /// Starts or installs the operator and applies the Agents and model providers;
    /// returns where a local operator's credential endpoint is, for local agents.
    fn operator_and_agents(
        &self,
        env: &Environment,
        processes: &mut Processes,
    ) -> Result<Option<String>, LocalError> {
        let mut credential_url = None;
        let ns = self.namespace.as_str();
        match self.operator {
            Operator::Chart => {
                self.say("==> installing the operator with the Helm chart (charts/aios)");
                crate::chart::install_operator(
                    env,
                    ns,
                    CONNECTION_SECRET,
                    &["operator.logFormat=text"],
                )
                .map_err(|e| step("installing the chart")(e.to_string()))?;
                self.say(&self.pods_table(env));
            }
            Operator::InCluster => {
                self.say("==> the operator runs in the cluster (installed apart)");
            }
            Operator::Process => {
                let (operator, url) = self.start_operator(env)?;
                processes.0.push(("operator".to_owned(), operator));
                credential_url = Some(url);
            }
        }
        self.say(&format!(
            "==> applying the pantheon's Agents and the model providers in namespace {ns}"
        ));
        let agents =
            std::fs::read_to_string(crate::repo_root().join("manifests/examples/agents.yaml"))
                .map_err(|e| step("reading the Agents")(e.to_string()))?;
        let providers = self.models.iter().fold(String::new(), |mut all, m| {
            let _ = write!(all, "---\n{}", m.manifest());
            all
        });
        env.kubectl_with_input(
            &["-n", ns, "apply", "-f", "-"],
            Some(&format!("{agents}\n{providers}")),
        )
        .map_err(|e| step("applying Agents and ModelProviders")(e.to_string()))?;
        Ok(credential_url)
    }

    /// `kubectl get pods` of the run's namespace, indented.
    fn pods_table(&self, env: &Environment) -> String {
        let table = env
            .kubectl(&["-n", &self.namespace, "get", "pods"])
            .unwrap_or_default();
        table.lines().fold(String::new(), |mut all, line| {
            if !all.is_empty() {
                all.push('\n');
            }
            let _ = write!(all, "    {line}");
            all
        })
    }

    /// The URLs the run's processes use: plain, or the TLS listeners with the CA.
    fn connections(&self, env: &Environment) -> Result<Connections, LocalError> {
        if !self.tls {
            return Ok(Connections {
                amqp: self.amqp_url.clone(),
                redis: env.redis_url.clone(),
                ca_file: None,
            });
        }
        let refuse = |why: &str| step("connecting over TLS")(why.to_owned());
        if self.agents_in_pods {
            return Err(refuse("not supported yet: TLS with agents in pods"));
        }
        Ok(Connections {
            amqp: env
                .over_tls(&self.amqp_url)
                .ok_or_else(|| refuse("the environment's RabbitMQ has no TLS listener"))?,
            redis: Some(
                env.rediss_url
                    .clone()
                    .ok_or_else(|| refuse("the environment's Redis has no TLS listener"))?,
            ),
            ca_file: Some(
                env.ca_file
                    .clone()
                    .ok_or_else(|| refuse("the environment has no CA file"))?,
            ),
        })
    }

    /// The operator as a local process watching the run's namespace; also returns
    /// where its credential endpoint is. With agents in pods it listens on the node's
    /// address, where the pods reach it.
    fn start_operator(&self, env: &Environment) -> Result<(Child, String), LocalError> {
        let ns = self.namespace.as_str();
        let connections = self.connections(env)?;
        let port = process::free_port().map_err(|e| step("finding a free port")(e.to_string()))?;
        let host = if self.agents_in_pods {
            crate::node::NODE_IP
        } else {
            "127.0.0.1"
        };
        let http_addr = format!("{host}:{port}");
        let credential_url = format!("http://{http_addr}");
        let mut operator_vars = vec![
            ("AIOS_AMQP_URL", connections.amqp.clone()),
            ("AIOS_WATCH_NAMESPACE", ns.to_owned()),
            ("POD_NAMESPACE", ns.to_owned()),
            ("POD_NAME", "aios-operator-local".to_owned()),
            ("AIOS_HTTP_ADDR", http_addr),
            ("AIOS_AGENT_CREDENTIAL_URL", credential_url.clone()),
            ("AIOS_PROVIDER_PROBE_SECONDS", "5".to_owned()),
            // No kubelet runs the verification Jobs of a local run: its own sandbox does.
            ("AIOS_VERIFY_SANDBOX", "local".to_owned()),
            (
                "AIOS_VERIFY_DIR",
                self.work_dir.join("verify").display().to_string(),
            ),
        ];
        if let Some(kubeconfig) = &self.operator_kubeconfig {
            operator_vars.push(("KUBECONFIG", kubeconfig.display().to_string()));
        }
        for (name, value) in &self.operator_env {
            operator_vars.push((name.as_str(), value.clone()));
        }
        if let Some(redis) = &connections.redis {
            operator_vars.push(("AIOS_REDIS_URL", redis.clone()));
        }
        if let Some(ca) = &connections.ca_file {
            operator_vars.push(("AIOS_CA_FILE", ca.display().to_string()));
        }
        if let Some(url) = env.rabbitmq_management_url() {
            operator_vars.push(("AIOS_RABBITMQ_MANAGEMENT_URL", url));
        }
        let operator = self.spawn(
            env,
            "operator",
            &self.bin_dir.join("aios-operator"),
            &operator_vars,
        )?;
        if !self.agents_in_pods {
            let group = serde_json::json!({"targets": [format!("{host}:{port}")], "labels": {"job": "aios-operator"}});
            self.write_scrape_targets("aios-operator", &[group])?;
        }
        Ok((operator, credential_url))
    }

    /// For agents in pods: their connection Secret (RabbitMQ and Redis through the
    /// node's relays) and a git server (smart HTTP, `aios-git-http`) serving the delivery
    /// repository on the node's address; returns the repository's URL for the Project.
    fn prepare_pods(
        &self,
        env: &Environment,
        processes: &mut Processes,
    ) -> Result<String, LocalError> {
        let missing = || {
            step("running agents in pods")(
                "the environment has no node (aios-env start --node)".to_owned(),
            )
        };
        let amqp = env.for_pods(&self.amqp_url).ok_or_else(missing)?;
        let redis = env
            .redis_url
            .as_deref()
            .and_then(|url| env.for_pods(url))
            .ok_or_else(missing)?;
        let secret = format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {CONNECTION_SECRET}\nstringData:\n  amqpUrl: \"{amqp}\"\n  redisUrl: \"{redis}\"\n"
        );
        env.kubectl_with_input(&["-n", &self.namespace, "apply", "-f", "-"], Some(&secret))
            .map_err(|e| step("creating the agents' connection Secret")(e.to_string()))?;
        let port = process::free_port().map_err(|e| step("finding a free port")(e.to_string()))?;
        let listen = format!("{}:{port}", crate::node::NODE_IP);
        let root = self.work_dir.display().to_string();
        let server = self.start(
            env,
            "git-http",
            &self.bin_dir.join("aios-git-http"),
            &["--root", &root, "--listen", &listen],
            &[],
        )?;
        processes.0.push(("git-http".to_owned(), server));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect((crate::node::NODE_IP, port)).is_err() {
            if Instant::now() > deadline {
                return Err(step("starting the git server")(process::log_tail(
                    &self.work_dir.join("logs").join("git-http.log"),
                    10,
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(format!("http://{listen}/delivery.git"))
    }

    /// One agent process per role, reading the provider list from `providers_file`.
    fn start_agents(
        &self,
        env: &Environment,
        processes: &mut Processes,
        providers_file: &Path,
        credential_url: Option<&str>,
    ) -> Result<(), LocalError> {
        let connections = self.connections(env)?;
        let redis_url = connections
            .redis
            .clone()
            .ok_or_else(|| step("finding Redis")("the environment runs no Redis".to_owned()))?;
        let mut addresses = Vec::new();
        for role in ROLES {
            let address = free_address()?;
            // The labels the chart's PodMonitor gives agent pods.
            addresses.push(serde_json::json!({"targets": [address.clone()], "labels": {
                "job": "aios-agent", "namespace": self.namespace, "role": role,
                "agent": format!("{role}-local"),
            }}));
            let mut vars = vec![
                ("AIOS_ROLE", (*role).to_owned()),
                ("AIOS_AMQP_URL", connections.amqp.clone()),
                ("AIOS_REDIS_URL", redis_url.clone()),
                ("AIOS_PROVIDERS_FILE", providers_file.display().to_string()),
                ("AIOS_HTTP_ADDR", address),
                (
                    "AIOS_WORK_DIR",
                    self.work_dir
                        .join("agents")
                        .join(role)
                        .display()
                        .to_string(),
                ),
                ("POD_NAME", format!("{role}-local")),
                ("POD_NAMESPACE", self.namespace.clone()),
                ("AIOS_CLAIM_LEASE_SECONDS", "15".to_owned()),
            ];
            if let Some(ca) = &connections.ca_file {
                vars.push(("AIOS_CA_FILE", ca.display().to_string()));
            }
            if let Some(url) = credential_url {
                vars.push(("AIOS_CREDENTIAL_URL", url.to_owned()));
            }
            let agent = self.spawn(
                env,
                &format!("agent-{role}"),
                &self.bin_dir.join("aios-agent"),
                &vars,
            )?;
            processes.0.push((format!("agent-{role}"), agent));
        }
        self.write_scrape_targets("aios-agent", &addresses)
    }

    /// Writes `groups` (target groups: `host:port` of `/metrics` endpoints and their
    /// labels, `job` among them) as a Prometheus file service discovery file,
    /// `<work_dir>/scrape/<job>.json`, so a Prometheus started before the run finds the
    /// run's processes. Written whole and renamed into place: Prometheus never reads
    /// half a file.
    fn write_scrape_targets(
        &self,
        job: &str,
        groups: &[serde_json::Value],
    ) -> Result<(), LocalError> {
        let dir = self.work_dir.join("scrape");
        std::fs::create_dir_all(&dir)
            .map_err(|e| step("creating the scrape target folder")(e.to_string()))?;
        let staged = dir.join(format!(".{job}.json"));
        std::fs::write(
            &staged,
            serde_json::Value::from(groups.to_vec()).to_string(),
        )
        .and_then(|()| std::fs::rename(&staged, dir.join(format!("{job}.json"))))
        .map_err(|e| step("writing the scrape targets")(e.to_string()))
    }

    /// Waits until the operator publishes the ready providers, and writes them where the
    /// agents read them (in a cluster the ConfigMap is mounted there).
    fn follow(
        &self,
        env: &Environment,
        name: &str,
        repository: &Path,
        processes: &mut Processes,
    ) -> Result<Outcome, LocalError> {
        let ns = self.namespace.as_str();
        let deadline = Instant::now() + self.timeout;
        let mut last = String::new();
        let mut last_pods = String::new();
        loop {
            let project: Option<Project> = env
                .kubectl(&["-n", ns, "get", "project", name, "-o", "json"])
                .ok()
                .and_then(|j| serde_json::from_str(&j).ok());
            let tasks: Vec<Task> = env
                .kubectl(&[
                    "-n",
                    ns,
                    "get",
                    "tasks",
                    "-l",
                    &format!("aios.dev/project={name}"),
                    "-o",
                    "json",
                ])
                .ok()
                .and_then(|j| serde_json::from_str::<serde_json::Value>(&j).ok())
                .and_then(|v| serde_json::from_value(v["items"].clone()).ok())
                .unwrap_or_default();
            let line = progress(project.as_ref(), &tasks);
            // On the node, `kubectl get pods` whenever a pod comes, goes or changes phase.
            let pods = if self.agents_in_pods {
                env.kubectl(&[
                    "-n",
                    ns,
                    "get",
                    "pods",
                    "-o",
                    "jsonpath={range .items[*]}{.metadata.name} {.status.phase}{\"\\n\"}{end}",
                ])
                .unwrap_or_default()
            } else {
                String::new()
            };
            if line != last {
                self.say(&line);
                last = line;
            }
            if pods != last_pods {
                self.say(&self.pods_table(env));
                last_pods = pods;
            }
            let phase = project
                .as_ref()
                .and_then(|p| p.status.as_ref())
                .and_then(|s| s.phase);
            let finished = matches!(phase, Some(ProjectPhase::Succeeded | ProjectPhase::Failed));
            for (process, child) in &mut processes.0 {
                if let Ok(Some(status)) = child.try_wait() {
                    let log = self.work_dir.join("logs").join(format!("{process}.log"));
                    return Err(step("running")(format!(
                        "{process} exited ({status}); its log: {}\n{}",
                        log.display(),
                        process::log_tail(&log, 20)
                    )));
                }
            }
            if finished || Instant::now() > deadline {
                let project = project
                    .ok_or_else(|| step("reading the Project")(format!("{name} is gone")))?;
                let kinds = if self.agents_in_pods {
                    "projects,tasks,agents,pods"
                } else {
                    "projects,tasks,agents"
                };
                let summary = env.kubectl(&["-n", ns, "get", kinds]).unwrap_or_default();
                let git_log = git(repository, &["log", "--format=%h %an: %s", "main"])
                    .unwrap_or_else(|e| format!("(no commits: {e})"));
                return Ok(Outcome {
                    project,
                    tasks,
                    repository: repository.to_path_buf(),
                    summary,
                    git_log,
                    logs: self.work_dir.join("logs"),
                });
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// A loopback address with a free port, for a process's health endpoint.
fn free_address() -> Result<String, LocalError> {
    process::free_port()
        .map(|p| format!("127.0.0.1:{p}"))
        .map_err(|e| step("finding a free port")(e.to_string()))
}

/// One line: the Project's phase, Tasks by phase, and who works on what.
fn progress(project: Option<&Project>, tasks: &[Task]) -> String {
    let phase = project
        .and_then(|p| p.status.as_ref())
        .and_then(|s| s.phase)
        .map_or_else(|| "Pending".to_owned(), |p| format!("{p:?}"));
    let mut by_phase: BTreeMap<String, usize> = BTreeMap::new();
    let mut working = Vec::new();
    for task in tasks {
        let status = task.status.as_ref();
        let task_phase = status
            .and_then(|s| s.phase)
            .map_or_else(|| "Pending".to_owned(), |p| format!("{p:?}"));
        if task_phase == "Running"
            && let Some(agent) = status.and_then(|s| s.agent.as_deref())
        {
            working.push(format!("{agent} on {}", task.spec.title));
        }
        *by_phase.entry(task_phase).or_default() += 1;
    }
    let counts: Vec<String> = by_phase.iter().map(|(p, n)| format!("{n} {p}")).collect();
    let mut line = format!(
        "project {phase} | tasks: {}",
        if counts.is_empty() {
            "none yet".to_owned()
        } else {
            counts.join(", ")
        }
    );
    if !working.is_empty() {
        let _ = write!(line, " | {}", working.join("; "));
    }
    line
}

/// The Project's message and every failed Task's reason.
fn failure_message(outcome: &Outcome) -> String {
    let mut parts: Vec<String> = outcome
        .project
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Succeeded"))
        .map(|c| c.message.clone())
        .into_iter()
        .collect();
    for task in &outcome.tasks {
        if let Some(status) = &task.status
            && let Some(message) = &status.message
            && status.phase == Some(aios_crds::TaskPhase::Failed)
        {
            parts.push(format!(
                "{}: {message}",
                task.metadata.name.clone().unwrap_or_default()
            ));
        }
    }
    if parts.is_empty() {
        "the run timed out".to_owned()
    } else {
        parts.join("; ")
    }
}

/// Waits (up to [`PROVIDER_READY_TIMEOUT`]) until the operator lists a ready model
/// provider in `namespace`'s `aios-providers` ConfigMap, and writes that list to `file`:
/// what an agent run as a process reads in place of the mounted ConfigMap.
///
/// # Errors
///
/// No ready provider in time (with the ModelProviders' status), or the file unwritable.
pub fn write_provider_list(
    env: &Environment,
    namespace: &str,
    file: &Path,
) -> Result<(), LocalError> {
    let deadline = Instant::now() + PROVIDER_READY_TIMEOUT;
    loop {
        let json = env
            .kubectl(&[
                "-n",
                namespace,
                "get",
                "configmap",
                "aios-providers",
                "-o",
                "jsonpath={.data.providers\\.json}",
            ])
            .unwrap_or_default();
        if json.trim().starts_with('[') && json.trim() != "[]" {
            std::fs::write(file, json)
                .map_err(|e| step("writing the provider list")(e.to_string()))?;
            return Ok(());
        }
        if Instant::now() > deadline {
            let status = env
                .kubectl(&["-n", namespace, "get", "modelproviders", "-o", "wide"])
                .unwrap_or_default();
            return Err(step("waiting for a ready model provider")(format!(
                "none became ready in {PROVIDER_READY_TIMEOUT:?}:\n{status}"
            )));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}
