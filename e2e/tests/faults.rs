//! Faults on the real operator and agents, on an environment of the test's own (a
//! broker restart would disturb anyone sharing one): RabbitMQ restarts while an agent
//! works, then the Project is deleted, and the work it was doing is never delivered.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use aios_e2e::{EnvOptions, Environment, process};

fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Processes the test started; stopped when dropped, passed or panicked.
struct Running(Vec<process::ServerProcess>);

impl Drop for Running {
    fn drop(&mut self) {
        for server in self.0.iter().rev() {
            server.stop(Duration::from_secs(10));
        }
    }
}

/// The operator and one agent per role the sample Project uses, as processes.
fn start_aios(env: &Environment, ns: &str, amqp: &str, work: &Path) -> Running {
    let redis = env.redis_url.clone().unwrap();
    let kubeconfig = env.kubeconfig.display().to_string();
    let base = |extra: &[(&str, String)]| -> Vec<(String, String)> {
        let mut vars = vec![
            ("KUBECONFIG".to_owned(), kubeconfig.clone()),
            ("AIOS_AMQP_URL".to_owned(), amqp.to_owned()),
            ("AIOS_REDIS_URL".to_owned(), redis.clone()),
            ("AIOS_LOG_FORMAT".to_owned(), "text".to_owned()),
            (
                "AIOS_HTTP_ADDR".to_owned(),
                format!("127.0.0.1:{}", process::free_port().unwrap()),
            ),
        ];
        vars.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        vars
    };
    let operator = process::spawn(
        "operator",
        &support::bin_dir().join("aios-operator"),
        &[],
        &base(&[
            ("AIOS_WATCH_NAMESPACE", ns.to_owned()),
            ("POD_NAMESPACE", ns.to_owned()),
            ("POD_NAME", "operator-faults".to_owned()),
            ("AIOS_PROVIDER_PROBE_SECONDS", "2".to_owned()),
        ]),
        &work.join("operator.log"),
    )
    .unwrap();
    let mut running = Running(vec![operator]);
    let providers = work.join("providers.json");
    aios_e2e::local::write_provider_list(env, ns, &providers).unwrap_or_else(|e| panic!("{e}"));
    for role in ["cto", "backend", "qa"] {
        running.0.push(
            process::spawn(
                &format!("agent-{role}"),
                &support::bin_dir().join("aios-agent"),
                &[],
                &base(&[
                    ("AIOS_ROLE", role.to_owned()),
                    ("AIOS_PROVIDERS_FILE", providers.display().to_string()),
                    ("AIOS_WORK_DIR", work.join(role).display().to_string()),
                    ("POD_NAME", format!("{role}-faults")),
                    ("POD_NAMESPACE", ns.to_owned()),
                    ("AIOS_CLAIM_LEASE_SECONDS", "6".to_owned()),
                ]),
                &work.join(format!("agent-{role}.log")),
            )
            .unwrap(),
        );
    }
    running
}

fn log(repository: &Path) -> String {
    let out = std::process::Command::new("git")
        .args(["log", "--format=%an: %s", "main"])
        .current_dir(repository)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_on_a_project_deleted_after_a_broker_restart_is_never_delivered() {
    // Apollo's answer takes 40 s: time to restart the broker and delete the Project
    // while it thinks.
    let fixture = support::model_fixture_with("127.0.0.1", Duration::from_secs(40)).await;
    let url = fixture.uri();
    let outcome = tokio::task::spawn_blocking(move || {
        let mut env = Environment::start(&EnvOptions::default()).unwrap();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            scenario(&mut env, &url);
        }));
        env.stop().unwrap();
        result
    })
    .await
    .unwrap();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

fn scenario(env: &mut Environment, model_url: &str) {
    env.install_crds().unwrap();
    let work = tempfile::tempdir().unwrap();
    let ns = env.create_namespace("faults").unwrap();
    let amqp = env.create_vhost(&ns).unwrap();
    let repository = work.path().join("delivery.git");
    std::process::Command::new("git")
        .args(["init", "--quiet", "--bare", "-b", "main"])
        .arg(&repository)
        .status()
        .unwrap();
    let agents =
        std::fs::read_to_string(aios_e2e::repo_root().join("manifests/examples/agents.yaml"))
            .unwrap();
    let provider = format!(
        "apiVersion: aios.dev/v1alpha1\nkind: ModelProvider\nmetadata:\n  name: local\nspec:\n  type: Ollama\n  tier: Local\n  models:\n    - name: fixture\n      maxComplexity: High\n  endpoint:\n    url: {model_url}\n"
    );
    env.kubectl_with_input(
        &["-n", &ns, "apply", "-f", "-"],
        Some(&format!("{agents}\n---\n{provider}")),
    )
    .unwrap();
    let running = start_aios(env, &ns, &amqp, work.path());
    let project = std::fs::read_to_string(
        aios_e2e::repo_root().join("manifests/examples/project-hello.yaml"),
    )
    .unwrap()
    .replace(
        aios_e2e::local::REPOSITORY_PLACEHOLDER,
        &format!("file://{}", repository.display()),
    );
    env.kubectl_with_input(&["-n", &ns, "apply", "-f", "-"], Some(&project))
        .unwrap();
    let phase = |env: &Environment| {
        env.kubectl(&[
            "-n",
            &ns,
            "get",
            "task",
            "hello-program",
            "-o",
            "jsonpath={.status.phase}",
        ])
        .unwrap_or_default()
    };
    wait_for("Apollo at work", Duration::from_secs(120), || {
        phase(env) == "Running"
    });

    // The broker restarts under the agents (their control queues go with it), then the
    // Project is deleted while Apollo's model call is still out.
    env.restart_rabbitmq().unwrap();
    std::thread::sleep(Duration::from_secs(5));
    env.kubectl(&["-n", &ns, "delete", "project", "hello", "--wait=false"])
        .unwrap();
    wait_for("the Tasks to go", Duration::from_secs(60), || {
        env.kubectl(&["-n", &ns, "get", "tasks", "-o", "name"])
            .is_ok_and(|names| names.trim().is_empty())
    });
    // Past Apollo's answer, with time to commit and push had it gone on.
    std::thread::sleep(Duration::from_secs(50));
    let delivered = log(&repository);
    let apollo = std::fs::read_to_string(work.path().join("agent-backend.log")).unwrap_or_default();
    drop(running);
    assert!(
        delivered.lines().all(|line| !line.starts_with("Apollo")),
        "the deleted Project's task was delivered:\n{delivered}\nApollo's log:\n{apollo}"
    );
    assert!(
        delivered.lines().any(|line| line.starts_with("Hera")),
        "the run got as far as the plan: {delivered}"
    );
}
