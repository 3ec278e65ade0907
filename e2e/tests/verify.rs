//! Tests decide success: the sample Project with `spec.verify` (pytest) on the local
//! control plane, the operator's local sandbox running the verifications, and a model
//! fixture whose backend answer has a bug the test catches.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{process::Command, time::Duration};

use aios_crds::{ProjectPhase, TaskPhase, VerificationPhase, conditions};
use aios_e2e::local::{LocalError, LocalRun, ModelServer, Operator, Outcome};

mod support;

/// Passes when pytest collects no test yet (exit 5): the first commits have none.
const PYTEST: &str = "python3 -m pytest -q -p no:cacheprovider || [ $? -eq 5 ]";

/// The sample Project, named `name`, verified by `command` with `rounds` fix rounds.
fn project(name: &str, command: &str, timeout_seconds: u32, rounds: u32) -> String {
    let sample = std::fs::read_to_string(
        aios_e2e::repo_root().join("manifests/examples/project-hello.yaml"),
    )
    .unwrap();
    let head = sample
        .split("\n  verify:")
        .next()
        .unwrap()
        .replace("name: hello", &format!("name: {name}"));
    let command = serde_json::to_string(command).unwrap();
    format!(
        "{}\n  verify:\n    command: {command}\n    timeoutSeconds: {timeout_seconds}\n",
        head.trim_end()
    )
    .replace(
        "  policy:\n",
        &format!("  policy:\n    maxFixRounds: {rounds}\n"),
    )
}

/// What a run left: its outcome, its work directory, and the model fixture (with the
/// requests it received).
struct Ran {
    outcome: Outcome,
    _work: tempfile::TempDir,
    fixture: wiremock::MockServer,
}

async fn run(prefix: &str, fixes: bool, manifest: String) -> Ran {
    let fixture = support::buggy_fixture("127.0.0.1", fixes).await;
    support::serve_embeddings(&fixture).await;
    let env = aios_e2e::shared_with_crds();
    let namespace = env.create_namespace(prefix).unwrap();
    let amqp_url = env.create_vhost(&namespace).unwrap();
    let work = tempfile::tempdir().unwrap();
    let run = LocalRun {
        namespace,
        amqp_url,
        bin_dir: support::bin_dir(),
        work_dir: work.path().to_path_buf(),
        models: vec![ModelServer {
            embed_model: Some("fixture-embed".to_owned()),
            ..support::fixture_server(&fixture.uri())
        }],
        project: manifest,
        timeout: Duration::from_secs(240),
        verbose: true,
        operator_kubeconfig: None,
        operator_env: Vec::new(),
        agents_in_pods: false,
        operator: Operator::Process,
        tls: false,
        hold: None,
        apply_command: None,
    };
    // A Project that ended Failed is an outcome too: some of these must fail.
    let outcome = match tokio::task::spawn_blocking(move || run.run(env))
        .await
        .unwrap()
    {
        Ok(outcome) => outcome,
        Err(LocalError::Project { outcome, .. }) => *outcome,
        Err(err) => panic!("{err}"),
    };
    Ran {
        outcome,
        _work: work,
        fixture,
    }
}

fn ending(outcome: &Outcome) -> (Option<ProjectPhase>, String, String) {
    let status = outcome.project.status.clone().unwrap();
    let succeeded = status
        .conditions
        .iter()
        .find(|c| c.type_ == conditions::SUCCEEDED)
        .unwrap();
    (
        status.phase,
        succeeded.reason.clone(),
        succeeded.message.clone(),
    )
}

fn git(repository: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(repository)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Athena's memory holds the verifications of the Project `verified`: the failure with
/// its output, the pass after the fix, and the final verification. Each note she stored
/// was embedded by `fixture`.
async fn athena_noted_every_run(fixture: &wiremock::MockServer) {
    let embedded = support::embedded_texts(fixture).await;
    let noted = |start: &str, needle: &str| {
        embedded
            .iter()
            .any(|t| t.starts_with(start) && t.contains(needle))
    };
    assert!(
        noted(
            "Verification of task `verified-test` (role qa)",
            "Failed. Command: `python3 -m pytest"
        ) && noted("Verification of task `verified-test` (role qa)", "Hi, Ada!"),
        "the failure and its output: {embedded:#?}"
    );
    assert!(
        noted(
            "Verification of task `verified-test` (role qa)",
            ": Passed."
        ) && noted(
            "Verification of the branch head of project `verified`",
            ": Passed."
        ),
        "the pass after the fix, and the final verification: {embedded:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bug_the_test_catches_is_fixed_in_one_round_and_the_project_is_verified() {
    let Ran {
        outcome,
        _work: _kept,
        fixture,
    } = run("verified", true, project("verified", PYTEST, 120, 2)).await;
    assert_eq!(
        outcome.project.status.as_ref().unwrap().phase,
        Some(ProjectPhase::Succeeded),
        "{}\n{}",
        outcome.summary,
        outcome.git_log
    );
    let fix = outcome
        .tasks
        .iter()
        .find(|t| t.metadata.name.as_deref() == Some("verified-test-fix-1"))
        .unwrap_or_else(|| panic!("one fix round: {}", outcome.summary));
    assert_eq!(fix.spec.role, "backend", "the code under test is Apollo's");
    assert!(
        fix.spec.description.contains("test_greet") && fix.spec.description.contains("Hi, Ada!"),
        "the fix names the failing test and its output: {}",
        fix.spec.description
    );
    assert!(
        !outcome
            .tasks
            .iter()
            .any(|t| t.metadata.name.as_deref() == Some("verified-test-fix-2")),
        "no second round"
    );
    let test = outcome
        .tasks
        .iter()
        .find(|t| t.metadata.name.as_deref() == Some("verified-test"))
        .unwrap();
    let checked = test.status.as_ref().unwrap().verification.clone().unwrap();
    assert_eq!(
        (checked.phase, checked.round),
        (VerificationPhase::Passed, 1)
    );
    assert_eq!(
        test.status.as_ref().unwrap().phase,
        Some(TaskPhase::Succeeded)
    );

    // The history shows the bug, then the fix; the Project names the verified head.
    let head = git(&outcome.repository, &["rev-parse", "main"]);
    let verified = outcome
        .project
        .status
        .as_ref()
        .unwrap()
        .verification
        .clone()
        .unwrap();
    assert_eq!(verified.phase, VerificationPhase::Passed);
    assert_eq!(
        verified.commit.as_deref(),
        Some(head.trim()),
        "the verified commit is the head: {}",
        git(&outcome.repository, &["log", "--format=%H %an: %s", "main"])
    );
    assert_eq!(verified.command, PYTEST);
    let versions = git(
        &outcome.repository,
        &["log", "--format=%H", "--reverse", "main", "--", "hello.py"],
    );
    let contents: Vec<String> = versions
        .lines()
        .map(|c| git(&outcome.repository, &["show", &format!("{c}:hello.py")]))
        .collect();
    assert_eq!(
        contents.len(),
        2,
        "the bug and its fix: {}",
        outcome.git_log
    );
    assert!(contents[0].contains("'Hi, '") && contents[1].contains("'Hello, '"));
    let verified_condition = outcome
        .project
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == conditions::VERIFIED)
        .unwrap();
    assert_eq!(verified_condition.status, "True");

    athena_noted_every_run(&fixture).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bug_never_fixed_fails_the_project_when_the_rounds_run_out() {
    let Ran {
        outcome,
        _work: _kept,
        ..
    } = run("unfixed", false, project("unfixed", PYTEST, 120, 1)).await;
    let (phase, reason, message) = ending(&outcome);
    assert_eq!(phase, Some(ProjectPhase::Failed), "{}", outcome.summary);
    assert_eq!(reason, "VerificationFailed", "{message}");
    assert!(message.contains("Hi, Ada!"), "the last output: {message}");
    assert!(
        outcome
            .tasks
            .iter()
            .any(|t| t.metadata.name.as_deref() == Some("unfixed-test-fix-1")),
        "one round was tried: {}",
        outcome.summary
    );
    assert!(
        !outcome
            .tasks
            .iter()
            .any(|t| t.metadata.name.as_deref() == Some("unfixed-test-fix-2")),
        "and no more"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_verification_is_killed_at_its_timeout_and_a_network_call_is_refused() {
    let Ran {
        outcome,
        _work: _kept,
        ..
    } = run("hung", true, project("hung", "sleep 600", 3, 0)).await;
    let (phase, reason, message) = ending(&outcome);
    assert_eq!(phase, Some(ProjectPhase::Failed), "{}", outcome.summary);
    assert_eq!(reason, "VerificationTimedOut", "{message}");

    // The attacker's verification: reach a server on this machine, which listens.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let call = format!(
        "python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=5)\""
    );
    let Ran {
        outcome,
        _work: _kept,
        ..
    } = run("offline", true, project("offline", &call, 30, 0)).await;
    let (phase, reason, message) = ending(&outcome);
    assert_eq!(phase, Some(ProjectPhase::Failed), "{}", outcome.summary);
    assert_eq!(reason, "VerificationFailed", "{message}");
    assert!(message.contains("Network is unreachable"), "{message}");
    assert!(listener.accept().is_err(), "nothing connected");
}
