//! AIOS's main job end to end: the operator and one agent process per role on the
//! local control plane, a Project applied with kubectl, planned by Hera, built by the
//! agents and committed to a git repository. The model is a local fixture speaking
//! Ollama's API (deterministic); a second test uses the real local model when its
//! server is built.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{process::Command, time::Duration};

use aios_crds::{ProjectPhase, TaskPhase};
use aios_e2e::local::{LocalRun, ModelServer, Operator};

mod support;

fn project() -> String {
    std::fs::read_to_string(aios_e2e::repo_root().join("manifests/examples/project-hello.yaml"))
        .unwrap()
}

fn run(model: ModelServer, prefix: &str, timeout: Duration) -> (LocalRun, tempfile::TempDir) {
    let env = aios_e2e::shared_with_crds();
    let namespace = env.create_namespace(prefix).unwrap();
    let amqp_url = env.create_vhost(&namespace).unwrap();
    let work = tempfile::tempdir().unwrap();
    let run = LocalRun {
        namespace,
        amqp_url,
        bin_dir: support::bin_dir(),
        work_dir: work.path().to_path_buf(),
        models: vec![model],
        project: project(),
        timeout,
        verbose: true,
        operator_kubeconfig: None,
        operator_env: Vec::new(),
        agents_in_pods: false,
        operator: Operator::Process,
        tls: false,
        hold: None,
        apply_command: None,
    };
    (run, work)
}

/// The operator and the agents reach RabbitMQ over `amqps://` and Redis over
/// `rediss://` only, trusting the environment's private CA (`AIOS_CA_FILE`): the
/// listeners they are given speak nothing but TLS, so the run succeeding shows every
/// dispatch, event, claim and counter went over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_completes_over_amqps_and_rediss_with_a_private_ca() {
    let fixture = support::model_fixture("127.0.0.1").await;
    let model = support::fixture_server(&fixture.uri());
    let (mut run, _work) = run(model, "tlsjob", Duration::from_secs(180));
    run.tls = true;
    let env = aios_e2e::shared_with_crds();
    assert!(
        env.over_tls(&run.amqp_url)
            .is_some_and(|url| url.starts_with("amqps://"))
            && env
                .rediss_url
                .as_deref()
                .is_some_and(|url| url.starts_with("rediss://")),
        "the environment has TLS listeners"
    );
    let outcome = tokio::task::spawn_blocking(move || run.run(env))
        .await
        .unwrap()
        .unwrap_or_else(|err| panic!("{err}"));
    let status = outcome.project.status.as_ref().unwrap();
    assert_eq!(status.phase, Some(ProjectPhase::Succeeded));
    assert_eq!(outcome.tasks.len(), 3);
    assert!(
        outcome.git_log.contains("Apollo: Write hello.py"),
        "{}",
        outcome.git_log
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_is_planned_built_committed_and_succeeds() {
    let fixture = support::model_fixture("127.0.0.1").await;
    let model = support::fixture_server(&fixture.uri());
    let (mut run, _work) = run(model, "mainjob", Duration::from_secs(180));
    let env = aios_e2e::shared_with_crds();
    // The operator runs with exactly the Helm chart's permissions: its ServiceAccount,
    // impersonated.
    let release = format!("job-{}", std::process::id());
    let rbac = aios_e2e::chart::operator_rbac(&run.namespace, &release, |_| true).unwrap();
    env.kubectl_with_input(&["apply", "-f", "-"], Some(&rbac))
        .unwrap();
    let account = aios_e2e::chart::operator_account(&release);
    run.operator_kubeconfig = Some(
        env.impersonating_kubeconfig(&run.namespace, &account)
            .unwrap(),
    );
    run.operator_env = vec![(
        "AIOS_TOKEN_KEY_SECRET".to_owned(),
        format!("{account}-token-key"),
    )];
    let outcome = tokio::task::spawn_blocking(move || run.run(env))
        .await
        .unwrap()
        .unwrap_or_else(|err| panic!("{err}"));

    let status = outcome.project.status.as_ref().unwrap();
    assert_eq!(status.phase, Some(ProjectPhase::Succeeded));
    assert_eq!(
        outcome.tasks.len(),
        3,
        "the planning task and the two planned"
    );
    for task in &outcome.tasks {
        let name = task.metadata.name.clone().unwrap();
        let status = task.status.as_ref().unwrap();
        assert_eq!(status.phase, Some(TaskPhase::Succeeded), "{name}");
        assert!(
            status
                .agent
                .as_deref()
                .is_some_and(|a| a.ends_with("-local")),
            "{name} names its agent: {:?}",
            status.agent
        );
        assert!(status.attempt >= 1, "{name}");
        let commit = status
            .result
            .as_ref()
            .and_then(|r| r.commit.clone())
            .unwrap_or_else(|| panic!("{name} names its commit"));
        let kind = Command::new("git")
            .args(["cat-file", "-t", &commit])
            .current_dir(&outcome.repository)
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&kind.stdout).trim(),
            "commit",
            "{name}'s commit is in the repository"
        );
    }
    let show = |path: &str| {
        let out = Command::new("git")
            .args(["show", &format!("main:{path}")])
            .current_dir(&outcome.repository)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(show("hello.py").contains("def greet(name)"));
    assert!(show("test_hello.py").contains("from hello import greet"));
    assert!(show(".aios/plan.json").contains("\"program\""));
    assert!(
        outcome.git_log.contains("Apollo: Write hello.py")
            && outcome.git_log.contains("Athena: Test hello.py"),
        "{}",
        outcome.git_log
    );
    assert_eq!(status.usage.local_requests, 3);
    assert!(outcome.summary.contains("Succeeded"), "{}", outcome.summary);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_local_model_runs_the_smallest_plan() {
    let serve = aios_e2e::repo_root().join("e2e/model/serve.sh");
    let port = aios_e2e::process::free_port().unwrap();
    // Only when the model server's build is cached: building it takes many minutes.
    let built = Command::new(aios_e2e::repo_root().join("e2e/model/build.sh"))
        .arg("--check")
        .output()
        .is_ok_and(|o| o.status.success());
    if !built {
        eprintln!("skipped: the local model server is not built (e2e/model/build.sh builds it)");
        return;
    }
    let started = Command::new(&serve)
        .args(["start", &port.to_string()])
        .output()
        .unwrap();
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    let vars: std::collections::BTreeMap<String, String> = String::from_utf8_lossy(&started.stdout)
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    let model = ModelServer {
        name: "local".to_owned(),
        provider_type: "Ollama".to_owned(),
        tier: "Local".to_owned(),
        priority: 1,
        url: vars["AIOS_MODEL_BASE_URL"].clone(),
        chat_model: vars["AIOS_MODEL_CHAT"].clone(),
        embed_model: vars.get("AIOS_MODEL_EMBED").cloned(),
        image: None,
    };
    let (mut run, _work) = run(model, "mainjob-real", Duration::from_secs(1500));
    // Bounded for a model this slow (each call takes tens of seconds on one core): one
    // attempt per task and one fix round, so the run ends, either way, within the time.
    run.project = run
        .project
        .replace("maxRetries: 2", "maxRetries: 0")
        .replace("  policy:\n", "  policy:\n    maxFixRounds: 1\n");
    assert!(run.project.contains("maxFixRounds: 1"), "{}", run.project);
    let env = aios_e2e::shared_with_crds();
    let result = tokio::task::spawn_blocking(move || run.run(env))
        .await
        .unwrap();
    let _ = Command::new(&serve)
        .args(["stop", &port.to_string()])
        .status();
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(aios_e2e::local::LocalError::Project { outcome, .. }) => *outcome,
        Err(err) => panic!("{err}"),
    };
    // Tests decide, not the model: a tiny model's code may never pass the sample's
    // pytest within the fix rounds. Either way the status must be true: Succeeded only
    // with the branch head verified; otherwise failed by the verification, saying so.
    let status = outcome.project.status.as_ref().unwrap();
    let verification = status.verification.clone().unwrap_or_default();
    match status.phase {
        Some(ProjectPhase::Succeeded) => {
            assert_eq!(verification.phase, aios_crds::VerificationPhase::Passed);
            let head = Command::new("git")
                .args(["rev-parse", "main"])
                .current_dir(&outcome.repository)
                .output()
                .unwrap();
            assert_eq!(
                verification.commit.as_deref(),
                Some(String::from_utf8_lossy(&head.stdout).trim())
            );
            assert!(outcome.git_log.lines().count() >= 3, "{}", outcome.git_log);
        }
        Some(ProjectPhase::Failed) => {
            let reason = status
                .conditions
                .iter()
                .find(|c| c.type_ == aios_crds::conditions::SUCCEEDED)
                .map(|c| c.reason.clone())
                .unwrap_or_default();
            eprintln!(
                "the tiny model's work did not pass verification ({reason}):\n{}\n{}",
                outcome.summary, outcome.git_log
            );
            assert!(
                reason.starts_with("Verification") || reason == "TaskFailed",
                "failed for a reason of its own: {reason}\n{}",
                outcome.summary
            );
        }
        other => panic!("not finished: {other:?}\n{}", outcome.summary),
    }
}
