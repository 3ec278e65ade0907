//! The `aios` command line as a person uses it, on the local control plane. Hermes
//! applies a Project (`aios new --brief … --apply`, its model a scripted fixture); the
//! operator and one agent process per role run it while `aios watch` runs inside tmux;
//! then `aios get` and `aios describe` read the finished run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use aios_crds::ProjectPhase;
use aios_e2e::local::{LocalRun, REPOSITORY_PLACEHOLDER};
use serde_json::{Value, json};
use wiremock::{Mock, matchers};

mod support;

/// `aios` with the environment's kubeconfig, in `namespace`; its stdout, or a panic
/// with its stderr.
fn aios(namespace: &str, args: &[&str]) -> String {
    let env = aios_e2e::shared_with_crds();
    let output = Command::new(support::bin_dir().join("aios"))
        .args(args)
        .args(["-n", namespace])
        .env("KUBECONFIG", &env.kubeconfig)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "aios {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// What tmux shows of `session`.
fn capture(session: &str) -> String {
    let output = Command::new("tmux")
        .args(["capture-pane", "-p", "-t", session])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Kills the tmux session when dropped, a failed assertion included.
struct Session(String);

impl Drop for Session {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .status();
    }
}

/// Starts `aios watch` in a detached 80×24 tmux session.
fn watch_in_tmux(namespace: &str, work: &Path) -> Session {
    let env = aios_e2e::shared_with_crds();
    let name = format!("aios-watch-{}", std::process::id());
    let command = format!(
        "KUBECONFIG={} {} watch -n {namespace} 2>{}",
        env.kubeconfig.display(),
        support::bin_dir().join("aios").display(),
        work.join("watch.err").display()
    );
    let status = Command::new("tmux")
        .args([
            "new-session",
            "-d",
            "-s",
            &name,
            "-x",
            "80",
            "-y",
            "24",
            &command,
        ])
        .env("TERM", "xterm-256color")
        .status()
        .unwrap();
    assert!(status.success(), "tmux new-session");
    Session(name)
}

/// The providers file Hermes reads: the fixture, as the agents' list names it.
fn providers_file(dir: &Path, url: &str) -> PathBuf {
    let path = dir.join("hermes-providers.json");
    let list = json!([{
        "name": "local", "type": "Ollama", "tier": "Local", "priority": 1, "endpoint": url,
        "models": [{"name": "fixture", "maxComplexity": "High"}]
    }]);
    std::fs::write(&path, list.to_string()).unwrap();
    path
}

/// A run whose Project Hermes applies: `aios new --brief … --repo … --apply`, its model
/// the fixture at `model_url`.
fn hermes_run(namespace: &str, work: &Path, model_url: &str) -> LocalRun {
    let env = aios_e2e::shared_with_crds();
    let providers = providers_file(work, model_url);
    let aios_bin = support::bin_dir().join("aios");
    LocalRun {
        namespace: namespace.to_owned(),
        amqp_url: env.create_vhost(namespace).unwrap(),
        bin_dir: support::bin_dir(),
        work_dir: work.to_path_buf(),
        models: vec![support::fixture_server(model_url)],
        timeout: Duration::from_secs(180),
        verbose: true,
        apply_command: Some(
            [
                aios_bin.to_str().unwrap(),
                "new",
                "--brief",
                "A greeting module in Python",
                "--repo",
                REPOSITORY_PLACEHOLDER,
                "--providers",
                providers.to_str().unwrap(),
                "--apply",
                "-n",
                namespace,
            ]
            .map(str::to_owned)
            .to_vec(),
        ),
        ..LocalRun::default()
    }
}

/// Samples what tmux shows of `session` every 300 ms until `done`.
fn sample(session: &str, done: &Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<String>> {
    let (done, name) = (done.clone(), session.to_owned());
    std::thread::spawn(move || {
        let mut frames = Vec::new();
        while !done.load(Ordering::Relaxed) {
            frames.push(capture(&name));
            std::thread::sleep(Duration::from_millis(300));
        }
        frames
    })
}

/// Waits until the live view's header says Succeeded; the last frame.
fn until_succeeded(session: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = capture(session);
    while !last
        .lines()
        .next()
        .unwrap_or_default()
        .contains("Succeeded")
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(300));
        last = capture(session);
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hermes_applies_a_project_the_agents_run_while_aios_watch_shows_it() {
    let fixture = support::model_fixture("127.0.0.1").await;
    // Hermes' draft: the manifest's parts; nobody named a test command.
    Mock::given(matchers::method("POST"))
        .and(matchers::path("/api/chat"))
        .and(matchers::body_string_contains("You are Hermes"))
        .respond_with(support::answer(&json!({
            "name": "greeter",
            "description": "A Python module hello.py with greet(name) returning 'Hello, <name>!', and its pytest test.",
            "testCommand": ""
        })))
        .mount(&fixture)
        .await;
    let env = aios_e2e::shared_with_crds();
    let namespace = env.create_namespace("cli").unwrap();
    let work = tempfile::tempdir().unwrap();
    let run = hermes_run(&namespace, work.path(), &fixture.uri());

    let session = watch_in_tmux(&namespace, work.path());
    // `aios get projects --watch` prints each change as a row, from before the Project exists.
    let env = aios_e2e::shared_with_crds();
    let mut get_watch = Command::new(support::bin_dir().join("aios"))
        .args(["get", "projects", "--watch", "-n", &namespace])
        .env("KUBECONFIG", &env.kubeconfig)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let sampler = sample(&session.0, &done);
    let outcome = tokio::task::spawn_blocking(move || run.run(env))
        .await
        .unwrap()
        .unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(
        outcome.project.metadata.name.as_deref(),
        Some("greeter"),
        "Hermes named it"
    );
    let status = outcome.project.status.as_ref().unwrap();
    assert_eq!(status.phase, Some(ProjectPhase::Succeeded));
    let managers = env_kubectl(&[
        "-n",
        &namespace,
        "get",
        "project",
        "greeter",
        "--show-managed-fields",
        "-o",
        "jsonpath={.metadata.managedFields[*].manager}",
    ]);
    assert!(
        managers.split_whitespace().any(|m| m == "aios-cli"),
        "applied by Hermes: {managers}"
    );

    // The live view reaches Succeeded on its own (a watch, no polling).
    let last = until_succeeded(&session.0);
    done.store(true, Ordering::Relaxed);
    let frames = sampler.join().unwrap();
    drop(session);
    println!("aios watch, at the end of the run:\n{last}");
    let header = last.lines().next().unwrap_or_default().to_owned();
    assert!(
        header.starts_with(&format!("AIOS {namespace}/greeter  Succeeded  2/2")),
        "{last}\n(stderr: {})",
        std::fs::read_to_string(work.path().join("watch.err")).unwrap_or_default()
    );
    for persona in ["Apollo", "Aphrodite", "Athena", "Hephaestus"] {
        assert!(last.contains(persona), "{persona}'s panel: {last}");
    }
    assert!(
        last.lines().count() <= 24 && last.lines().all(|l| l.chars().count() <= 80),
        "{last}"
    );
    assert!(
        frames
            .iter()
            .any(|f| f.contains("feed") && f.contains("→ Succeeded")),
        "the feed showed transitions: {}",
        frames.last().cloned().unwrap_or_default()
    );
    std::thread::sleep(Duration::from_secs(1));
    let _ = get_watch.kill();
    let rows = String::from_utf8(get_watch.wait_with_output().unwrap().stdout).unwrap();
    assert!(
        rows.lines().any(|l| l.starts_with("greeter   Planning")),
        "{rows}"
    );
    assert!(
        rows.lines()
            .any(|l| l.starts_with("greeter   Succeeded   2/2")),
        "{rows}"
    );
    the_views_read_the_finished_run(&namespace);
    errors_name_the_object_and_exit_with_their_code(&namespace);
}

/// What a script sees when something is wrong: a message naming the object and what
/// to do, and the exit code of the kind of error.
fn errors_name_the_object_and_exit_with_their_code(namespace: &str) {
    let env = aios_e2e::shared_with_crds();
    let run = |args: &[&str]| {
        let output = Command::new(support::bin_dir().join("aios"))
            .args(args)
            .env("KUBECONFIG", &env.kubeconfig)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["describe", "project", "nope", "-n", namespace]);
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains("project nope not found in namespace") && err.contains("aios get projects"),
        "{err}"
    );
    let (code, err) = run(&["get", "projects", "--context", "no-such-context"]);
    assert_eq!(code, Some(4), "{err}");
    assert!(err.contains("no-such-context"), "{err}");
    let (code, _) = run(&["get", "pods"]);
    assert_eq!(code, Some(2), "bad usage");
}

/// `aios get`, `describe`, `watch --once` and `kubectl aios` on the finished run.
fn the_views_read_the_finished_run(namespace: &str) {
    // `aios get tasks -o json` is what kubectl reads.
    let ours: Value =
        serde_json::from_str(&aios(namespace, &["get", "tasks", "-o", "json"])).unwrap();
    let kubectl: Value = serde_json::from_str(&env_kubectl(&[
        "-n", namespace, "get", "tasks", "-o", "json",
    ]))
    .unwrap();
    assert_eq!(ours["kind"], "List");
    assert_eq!(ours["items"].as_array().unwrap().len(), 3);
    assert_eq!(ours["items"], kubectl["items"]);

    let table = aios(namespace, &["get", "projects"]);
    assert!(
        table
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("greeter   Succeeded   2/2"),
        "{table}"
    );

    // `aios describe` shows every Task once, in dependency order.
    let text = aios(namespace, &["describe", "project", "greeter"]);
    let steps: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("├─") || l.trim_start().starts_with("└─"))
        .collect();
    assert_eq!(steps.len(), 3, "{text}");
    let position = |name: &str| {
        steps
            .iter()
            .position(|l| l.contains(&format!("✔ {name} ")))
            .unwrap_or_else(|| panic!("{name}: {text}"))
    };
    assert!(
        position("plan") < position("program") && position("program") < position("test"),
        "{text}"
    );
    assert!(text.contains("Local ratio:  100%"), "{text}");

    // One frame for scripts.
    let frame = aios(
        namespace,
        &[
            "watch", "greeter", "--once", "--width", "100", "--height", "30",
        ],
    );
    assert_eq!(frame.lines().count(), 30);
    assert!(
        frame.starts_with(&format!("AIOS {namespace}/greeter  Succeeded")),
        "{frame}"
    );

    // As a kubectl plugin: `kubectl aios …` runs `kubectl-aios` from PATH.
    let plugins = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        support::bin_dir().join("aios"),
        plugins.path().join("kubectl-aios"),
    )
    .unwrap();
    let env = aios_e2e::shared_with_crds();
    let path = format!(
        "{}:{}",
        plugins.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = Command::new(&env.kubectl)
        .args(["aios", "get", "projects", "-n", namespace])
        .env("KUBECONFIG", &env.kubeconfig)
        .env("PATH", path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("greeter   Succeeded"),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn env_kubectl(args: &[&str]) -> String {
    aios_e2e::shared_with_crds().kubectl(args).unwrap()
}
