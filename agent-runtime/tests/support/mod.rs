//! Test support for the agent: a RabbitMQ virtual host of the test's own, the shared
//! Redis, a bare git repository to deliver into, a local HTTP fixture speaking Ollama's
//! chat API, and agent processes (the real binary) to start, kill and stop.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use aios_bus::Bus;
use aios_crds::{
    Complexity,
    bus::{
        DispatchedTask, Message, ModelHints, ObjectRef, SCHEMA_VERSION, TaskDispatch, TaskEvent,
        TaskEventKind,
    },
    names::bus as names,
    project::Repository,
};
use futures::StreamExt;
use lapin::{Consumer, options::BasicAckOptions};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use wiremock::{Mock, MockServer, ResponseTemplate, matchers};

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs git and returns its stdout; panics with stderr on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.invalid")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.invalid")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A bare repository `delivery.git` in `dir` with one commit on `main`: a README and
/// a symbolic link `outside` leading out of the tree.
pub fn seeded_repository(dir: &Path) -> PathBuf {
    let repo = dir.join("delivery.git");
    git(
        dir,
        &[
            "init",
            "--quiet",
            "--bare",
            "-b",
            "main",
            repo.to_str().unwrap(),
        ],
    );
    let seed = dir.join("seed");
    git(
        dir,
        &[
            "clone",
            "--quiet",
            repo.to_str().unwrap(),
            seed.to_str().unwrap(),
        ],
    );
    std::fs::write(seed.join("README.md"), "# delivery\n").unwrap();
    std::os::unix::fs::symlink("/tmp", seed.join("outside")).unwrap();
    git(&seed, &["add", "."]);
    git(&seed, &["commit", "--quiet", "-m", "seed"]);
    git(&seed, &["push", "--quiet", "origin", "HEAD:main"]);
    repo
}

/// `(author, subject, body)` of every commit on `main` of `repo`, newest first.
pub fn commits(repo: &Path) -> Vec<(String, String, String)> {
    let log = git(repo, &["log", "main", "--format=%an <%ae>%x1f%s%x1f%b%x1e"]);
    log.split('\u{1e}')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| {
            let mut parts = c.split('\u{1f}');
            let mut next = || parts.next().unwrap_or_default().to_owned();
            (next(), next(), next())
        })
        .collect()
}

/// Commits on `main` of `repo` carrying the attempt trailer `attempt`.
pub fn commits_with_attempt(repo: &Path, attempt: &str) -> usize {
    let trailer = format!("AIOS-Attempt: {attempt}");
    commits(repo)
        .iter()
        .filter(|(_, _, body)| body.lines().any(|line| line == trailer))
        .count()
}

/// A file on `main` of `repo`.
pub fn file_on_main(repo: &Path, path: &str) -> Option<String> {
    let out = Command::new("git")
        .args(["show", &format!("main:{path}")])
        .current_dir(repo)
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The model's chat answer in Ollama's wire format, with token counts.
pub fn ollama_answer(content: &Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "model": "test-model",
        "created_at": "2026-11-24T00:00:00Z",
        "message": {"role": "assistant", "content": content.to_string()},
        "done": true,
        "done_reason": "stop",
        "prompt_eval_count": 120,
        "eval_count": 45
    }))
}

/// A work answer writing `files` (path, content).
pub fn work_answer(summary: &str, files: &[(&str, &str)]) -> Value {
    json!({
        "summary": summary,
        "files": files.iter().map(|(path, content)| json!({"path": path, "content": content})).collect::<Vec<_>>()
    })
}

/// One test's world.
pub struct World {
    pub amqp_url: String,
    pub redis_url: String,
    pub bus: Bus,
    pub llm: MockServer,
    pub dir: tempfile::TempDir,
    pub repo: PathBuf,
    pub providers: PathBuf,
    events: Consumer,
    pub seen: Vec<TaskEvent>,
    agents: u32,
}

impl World {
    /// A fresh vhost, a bare repository with one commit on `main`, and the fixture.
    pub async fn new(prefix: &str) -> Self {
        let env = aios_e2e::shared();
        let amqp_url = env.create_vhost(&unique(prefix)).unwrap();
        let redis_url = env.redis_url.clone().expect("the environment runs Redis");
        let bus = Bus::connect(&amqp_url, None, &CancellationToken::new())
            .await
            .unwrap();
        let events = bus
            .consume(names::OPERATOR_EVENTS_QUEUE, "test-events", 100)
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let repo = seeded_repository(dir.path());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let llm = MockServer::builder().listener(listener).start().await;
        let providers = dir.path().join("providers.json");
        std::fs::write(
            &providers,
            json!([{
                "name": "local-ollama", "type": "Ollama", "tier": "Local", "priority": 1,
                "endpoint": llm.uri(),
                "models": [{"name": "test-model", "maxComplexity": "High", "inputPricePer1k": 0.001, "outputPricePer1k": 0.002}]
            }])
            .to_string(),
        )
        .unwrap();
        Self {
            amqp_url,
            redis_url,
            bus,
            llm,
            dir,
            repo,
            providers,
            events,
            seen: Vec::new(),
            agents: 0,
        }
    }

    /// Adds an embeddings model to the fixture's provider (before an agent starts):
    /// every text embeds to the same vector, so a search finds whatever its filter
    /// allows.
    pub async fn serve_embeddings(&self) {
        std::fs::write(
            &self.providers,
            json!([{
                "name": "local-ollama", "type": "Ollama", "tier": "Local", "priority": 1,
                "endpoint": self.llm.uri(),
                "models": [
                    {"name": "test-model", "maxComplexity": "High", "inputPricePer1k": 0.001, "outputPricePer1k": 0.002},
                    {"name": "test-embed", "embeddings": true}
                ]
            }])
            .to_string(),
        )
        .unwrap();
        Mock::given(matchers::method("POST"))
            .and(matchers::path("/api/embed"))
            .respond_with(ResponseTemplate::new(200).set_body_json(
                json!({"model": "test-embed", "embeddings": [[0.6, 0.8, 0.0, 0.0]], "prompt_eval_count": 4}),
            ))
            .mount(&self.llm)
            .await;
    }

    /// Answers chat requests whose body contains `marker` with `answer`, `times` times
    /// at most (all of them when `None`), after `delay`.
    pub async fn answer(&self, marker: &str, answer: &Value, times: Option<u64>, delay: Duration) {
        let mut mock = Mock::given(matchers::method("POST"))
            .and(matchers::path("/api/chat"))
            .and(matchers::body_string_contains(marker))
            .respond_with(ollama_answer(answer).set_delay(delay));
        if let Some(times) = times {
            mock = mock.up_to_n_times(times).with_priority(1);
        }
        mock.mount(&self.llm).await;
    }

    /// Two backend agents given one task each, from the same branch head. Pushes to
    /// the repository are held (a `pre-receive` hook waits on a gate file) until the
    /// model has been asked for both answers, so both agents have checked out the seed
    /// before either can land, however slow this machine is.
    pub async fn race(
        &mut self,
        one: (&str, Value),
        two: (&str, Value),
    ) -> (Agent, Agent, TaskDispatch, TaskDispatch) {
        for (title, answer) in [&one, &two] {
            self.answer(title, answer, None, Duration::ZERO).await;
        }
        let gate = self.hold_pushes();
        let first = self.agent("backend", &[]);
        let second = self.agent("backend", &[]);
        first.wait_ready(Duration::from_secs(60)).await;
        second.wait_ready(Duration::from_secs(60)).await;
        let a = self.dispatch(&format!("race-{}", self.agents), "backend", one.0);
        let b = self.dispatch(&format!("race-{}-b", self.agents), "backend", two.0);
        self.publish(&a).await;
        self.publish(&b).await;
        self.wait_for_chats(&[one.0, two.0], Duration::from_secs(60))
            .await;
        std::fs::write(&gate, "").unwrap();
        (first, second, a, b)
    }

    /// Makes every push to the repository wait (up to a minute) until the returned
    /// file exists.
    fn hold_pushes(&self) -> PathBuf {
        let gate = self.dir.path().join("pushes-open");
        let hook = self.repo.join("hooks").join("pre-receive");
        std::fs::write(
            &hook,
            format!(
                "#!/bin/sh\ni=0\nwhile [ ! -e '{}' ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done\ncat >/dev/null\n",
                gate.display()
            ),
        )
        .unwrap();
        let mut permissions = std::fs::metadata(&hook).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
        std::fs::set_permissions(&hook, permissions).unwrap();
        gate
    }

    /// Waits until the model has been asked a chat whose body contains each of `markers`.
    async fn wait_for_chats(&self, markers: &[&str], limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let asked = self.llm.received_requests().await.unwrap_or_default();
            let all = markers.iter().all(|marker| {
                asked.iter().any(|r| {
                    r.url.path() == "/api/chat" && String::from_utf8_lossy(&r.body).contains(marker)
                })
            });
            if all {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the model was not asked for all of {markers:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A dispatch of a work task for `role`, titled `title`, delivering into the repository.
    pub fn dispatch(&self, task: &str, role: &str, title: &str) -> TaskDispatch {
        TaskDispatch {
            schema_version: SCHEMA_VERSION,
            project: ObjectRef {
                namespace: "tests".to_owned(),
                name: "shop".to_owned(),
                uid: "project-uid".to_owned(),
            },
            task: ObjectRef {
                namespace: "tests".to_owned(),
                name: task.to_owned(),
                uid: unique(task),
            },
            attempt: 1,
            brief: "A tiny shop.".to_owned(),
            repository: Repository {
                url: format!("file://{}", self.repo.display()),
                branch: "main".to_owned(),
                secret_ref: None,
            },
            spec: DispatchedTask {
                role: role.to_owned(),
                title: title.to_owned(),
                description: format!("Do {title}."),
                complexity: Complexity::Low,
                acceptance_criteria: vec!["it works".to_owned()],
                planning: false,
            },
            dependencies: Vec::new(),
            models: ModelHints::default(),
            available_roles: Vec::new(),
            plan_feedback: Vec::new(),
            deadline: None,
            heartbeat_interval_seconds: 1,
            paths: aios_crds::project::PathPolicy::default(),
            recall_across_projects: false,
            token: String::new(),
        }
    }

    /// Marks `dispatch`'s attempt cancelled in Redis, under the key the operator writes
    /// (a cancel no agent heard on the bus).
    pub async fn mark_cancelled(&self, dispatch: &TaskDispatch) {
        let client = redis::Client::open(self.redis_url.as_str()).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("SET")
            .arg(aios_crds::names::redis::cancel_key(
                &dispatch.attempt_id().message_id(),
            ))
            .arg("operator")
            .arg("EX")
            .arg(60)
            .query_async::<()>(&mut connection)
            .await
            .unwrap();
    }

    /// Waits until `agent` counts `n` attempts with `outcome`.
    pub async fn wait_for_outcome(&self, agent: &Agent, role: &str, outcome: &str, n: u32) {
        let line = format!(r#"aios_agent_tasks_total{{outcome="{outcome}",role="{role}"}} {n}"#);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !agent.metrics().contains(&line) {
            assert!(
                std::time::Instant::now() < deadline,
                "never counted {line}:\n{}",
                agent.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn publish(&self, dispatch: &TaskDispatch) {
        self.bus.publish_dispatch(dispatch).await.unwrap();
    }

    /// Starts an agent process for `role`.
    pub fn agent(&mut self, role: &str, extra: &[(&str, &str)]) -> Agent {
        self.agents += 1;
        let name = format!("agent-{}", self.agents);
        let work = self.dir.path().join(&name);
        let log = self.dir.path().join(format!("{name}.log"));
        let port = aios_e2e::process::free_port().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_aios-agent"));
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("AIOS_ROLE", role)
            .env("AIOS_AMQP_URL", &self.amqp_url)
            .env("AIOS_REDIS_URL", &self.redis_url)
            .env("AIOS_PROVIDERS_FILE", &self.providers)
            .env("AIOS_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("AIOS_WORK_DIR", &work)
            .env("POD_NAME", &name)
            .env("POD_NAMESPACE", "tests")
            .env("AIOS_CLAIM_LEASE_SECONDS", "3")
            .env("AIOS_LOG_FORMAT", "text")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap());
        command.stderr(std::fs::OpenOptions::new().append(true).open(&log).unwrap());
        for (key, value) in extra {
            command.env(key, value);
        }
        let child = command.spawn().unwrap();
        Agent {
            child,
            log,
            port,
            name,
        }
    }

    /// The next event, acknowledged.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<TaskEvent> {
        let delivery = tokio::time::timeout(timeout, self.events.next())
            .await
            .ok()??
            .unwrap();
        delivery.ack(BasicAckOptions::default()).await.unwrap();
        let event = TaskEvent::decode(&delivery.data).unwrap();
        self.seen.push(event.clone());
        Some(event)
    }

    /// Waits for an event matching `wanted`; panics after `timeout` with what was seen.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        wanted: impl Fn(&TaskEvent) -> bool,
    ) -> TaskEvent {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left).await {
                Some(event) if wanted(&event) => return event,
                Some(_) => {}
                None => panic!(
                    "no matching event in {timeout:?}; seen: {:#?}",
                    self.seen
                        .iter()
                        .map(|e| (&e.task.name, e.routing_key()))
                        .collect::<Vec<_>>()
                ),
            }
        }
    }

    /// Collects every event arriving within `quiet` of the previous one.
    pub async fn drain(&mut self, quiet: Duration) {
        while self.next_event(quiet).await.is_some() {}
    }

    /// Events of a kind seen for a task.
    pub fn count(&self, task_uid: &str, routing_key: &str) -> usize {
        self.seen
            .iter()
            .filter(|e| e.task.uid == task_uid && e.routing_key() == routing_key)
            .count()
    }

    /// `(author, subject, body)` of every commit on `main`, newest first.
    pub fn commits(&self) -> Vec<(String, String, String)> {
        commits(&self.repo)
    }

    /// Commits on `main` carrying the attempt trailer of `dispatch`.
    pub fn commits_of(&self, dispatch: &TaskDispatch) -> usize {
        commits_with_attempt(&self.repo, &dispatch.attempt_id().message_id())
    }

    /// A file on `main`.
    pub fn file(&self, path: &str) -> Option<String> {
        file_on_main(&self.repo, path)
    }
}

/// A running agent process; killed when dropped.
pub struct Agent {
    child: Child,
    pub log: PathBuf,
    pub port: u16,
    pub name: String,
}

impl Agent {
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap()
    }

    /// SIGKILL: the process dies at once, as in a node failure.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, as Kubernetes sends when a pod is deleted.
    pub fn terminate(&self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Its `/metrics` text, once it serves it.
    pub fn metrics(&self) -> String {
        aios_e2e::process::http_get(self.port, "/metrics").unwrap_or_default()
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if aios_e2e::process::http_get(self.port, "/readyz").is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "{} not ready in {timeout:?}:\n{}",
            self.name,
            self.log_tail()
        );
    }

    /// Waits until `/readyz` stops answering 200; how long that took.
    pub async fn wait_unready(&self, timeout: Duration) -> Duration {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if aios_e2e::process::http_get(self.port, "/readyz").is_none() {
                return started.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "{} still ready after {timeout:?}:\n{}",
            self.name,
            self.log_tail()
        );
    }

    pub fn log_tail(&self) -> String {
        aios_e2e::process::log_tail(&self.log, 40)
    }
}

/// A Redis of one test's own, to freeze and stop without disturbing the shared one;
/// stopped when dropped.
pub struct OwnRedis {
    pub url: String,
    port: u16,
    dir: PathBuf,
    process: aios_e2e::process::ServerProcess,
}

impl OwnRedis {
    /// Starts `redis-server` on a free loopback port, without persistence, its log in
    /// `dir`.
    pub fn start(dir: &Path) -> Self {
        let port = aios_e2e::process::free_port().unwrap();
        Self {
            url: format!("redis://127.0.0.1:{port}/"),
            port,
            dir: dir.to_path_buf(),
            process: Self::launch(dir, port),
        }
    }

    fn launch(dir: &Path, port: u16) -> aios_e2e::process::ServerProcess {
        aios_e2e::env::start_redis(
            port,
            None,
            &dir.join("redis-data"),
            &dir.join("redis.log"),
            Duration::from_secs(30),
        )
        .unwrap()
    }

    /// Stops the server and starts it again on the same port, empty: a Redis without
    /// persistence restarting.
    pub fn restart(&mut self) {
        self.stop();
        self.process = Self::launch(&self.dir, self.port);
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.process.pid).unwrap());
        nix::sys::signal::kill(pid, signal).unwrap();
    }

    /// SIGSTOP: the server hangs with its connections open, as on a stalled node.
    pub fn freeze(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// SIGCONT: it answers again.
    pub fn thaw(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    /// Stops the server: its connections close and new ones are refused.
    pub fn stop(&self) {
        self.thaw();
        self.process.stop(Duration::from_secs(5));
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        if self.process.is_running() {
            self.stop();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether an event is a terminal one (succeeded or failed).
pub fn is_terminal(event: &TaskEvent) -> bool {
    matches!(
        event.kind,
        TaskEventKind::Succeeded { .. } | TaskEventKind::Failed { .. }
    )
}
