//! A Project run as GitOps tools and dashboards see it, with the real tools: kstatus
//! (the library Flux, Helm's `--wait` and `kubectl wait` rely on) reads every AIOS
//! object InProgress while it runs and Current once it succeeded, or Failed when it
//! failed; `kubectl wait --for=condition=Ready` works on each kind; a real Prometheus
//! scraping the operator and the agents answers every dashboard and alert query, and
//! `promtool check metrics` passes on each `/metrics`; and a Project re-applied after it
//! ran (as Argo CD or Flux would, server-side) shows no drift and runs nothing again.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    time::{Duration, Instant},
};

use aios_crds::{ProjectPhase, Task, TaskPhase};
use aios_e2e::{
    Environment,
    local::{LocalRun, Operator, REPOSITORY_PLACEHOLDER},
    prometheus::{self, Prometheus, Target, Variables, When},
};
use serde_json::{Value, json};
use wiremock::{Mock, matchers};

mod support;

fn local_run(
    env: &Environment,
    prefix: &str,
    project: String,
    model_url: &str,
) -> (LocalRun, tempfile::TempDir) {
    let namespace = env.create_namespace(prefix).unwrap();
    let amqp_url = env.create_vhost(&namespace).unwrap();
    let work = tempfile::tempdir().unwrap();
    let run = LocalRun {
        namespace,
        amqp_url,
        bin_dir: support::bin_dir(),
        work_dir: work.path().to_path_buf(),
        models: vec![support::fixture_server(model_url)],
        project,
        timeout: Duration::from_secs(180),
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

fn hello() -> String {
    std::fs::read_to_string(aios_e2e::repo_root().join("manifests/examples/project-hello.yaml"))
        .unwrap()
}

/// kstatus's verdict on every Project and Task (and, with `all`, Agent and
/// ModelProvider) of `namespace`: object → (status, message).
fn kstatus(env: &Environment, namespace: &str, all: bool) -> BTreeMap<String, (String, String)> {
    let kinds = if all {
        "projects,tasks,agents,modelproviders"
    } else {
        "projects,tasks"
    };
    let objects = env
        .kubectl(&["-n", namespace, "get", kinds, "-o", "json"])
        .unwrap();
    aios_e2e::gitops::kstatus(&objects)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|(id, status, message)| (id, (status, message)))
        .collect()
}

/// The scrape targets a run wrote (`<work>/scrape/*.json`), once both jobs' are there.
fn scrape_targets(work: &Path) -> Option<Vec<Target>> {
    let mut targets = Vec::new();
    for job in [prometheus::OPERATOR_JOB, prometheus::AGENT_JOB] {
        let text = std::fs::read_to_string(work.join("scrape").join(format!("{job}.json"))).ok()?;
        let groups: Vec<Value> = serde_json::from_str(&text).unwrap();
        for group in groups {
            let labels: BTreeMap<String, String> = group["labels"]
                .as_object()
                .unwrap()
                .iter()
                .filter(|(k, _)| *k != "job")
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect();
            for address in group["targets"].as_array().unwrap() {
                targets.push(Target {
                    job: job.to_owned(),
                    address: address.as_str().unwrap().to_owned(),
                    labels: labels.clone(),
                });
            }
        }
    }
    Some(targets)
}

fn project_phase(env: &Environment, namespace: &str, name: &str) -> String {
    env.kubectl(&[
        "-n",
        namespace,
        "get",
        "project",
        name,
        "-o",
        "jsonpath={.status.phase}",
    ])
    .unwrap_or_default()
}

fn tasks(env: &Environment, namespace: &str) -> Vec<Task> {
    let list: Value = serde_json::from_str(
        &env.kubectl(&["-n", namespace, "get", "tasks", "-o", "json"])
            .unwrap(),
    )
    .unwrap();
    serde_json::from_value(list["items"].clone()).unwrap()
}

/// Each Task's name, attempt and phase.
fn attempts(tasks: &[Task]) -> BTreeMap<String, (i32, Option<TaskPhase>)> {
    tasks
        .iter()
        .map(|t| {
            let status = t.status.clone().unwrap_or_default();
            (
                t.metadata.name.clone().unwrap(),
                (status.attempt, status.phase),
            )
        })
        .collect()
}

/// `promtool check metrics` on every target's `/metrics`.
fn check_every_endpoint(targets: &[Target]) {
    for target in targets {
        let port: u16 = target.address.rsplit(':').next().unwrap().parse().unwrap();
        let body = aios_e2e::process::http_get(port, "/metrics")
            .unwrap_or_else(|| panic!("{} answers /metrics", target.address));
        let body = body
            .split_once("\r\n\r\n")
            .map_or(body.as_str(), |(_, b)| b);
        prometheus::check_metrics(body).unwrap_or_else(|e| {
            panic!(
                "promtool check metrics on {} ({}): {e}",
                target.address, target.job
            )
        });
    }
}

/// Every dashboard and alert query over the run so far answers, and the rules load.
fn check_every_query(prom: &Prometheus, since: f64) {
    prom.wait_for_targets(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", prom.log_tail()));
    // Rates need a few scrapes after the last change.
    std::thread::sleep(Duration::from_secs(5));
    let when = When::Range {
        start: since,
        end: prometheus::unix_now(),
        step: 1.0,
    };
    let failures = prometheus::failed_expressions(prom, when, &Variables::default()).unwrap();
    assert!(
        failures.is_empty(),
        "queries that failed against the run:\n{}",
        failures
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(prom.unhealthy_rules().unwrap(), Vec::<String>::new());
}

/// `kubectl wait --for=condition=Ready` on each kind.
fn wait_ready(env: &Environment, namespace: &str, project: &str) {
    for target in [
        format!("project/{project}"),
        "tasks".to_owned(),
        "modelproviders".to_owned(),
        // The DevOps pool had no work: ready at zero replicas.
        "agent/hephaestus".to_owned(),
    ] {
        let mut args = vec![
            "-n",
            namespace,
            "wait",
            "--for=condition=Ready",
            "--timeout=60s",
        ];
        if target == "tasks" || target == "modelproviders" {
            args.extend([target.as_str(), "--all"]);
        } else {
            args.push(target.as_str());
        }
        env.kubectl(&args)
            .unwrap_or_else(|e| panic!("kubectl wait --for=condition=Ready {target}: {e}"));
    }
}

/// Argo CD and Flux re-apply the Project they synced, server-side: nothing changes, and
/// nothing runs again while the operator watches.
fn reapply_without_drift(env: &Environment, namespace: &str, manifest: &str, name: &str) {
    let before = tasks(env, namespace);
    let generation = |env: &Environment| {
        env.kubectl(&[
            "-n",
            namespace,
            "get",
            "project",
            name,
            "-o",
            "jsonpath={.metadata.generation}/{.status.observedGeneration}",
        ])
        .unwrap()
    };
    let generation_before = generation(env);
    env.kubectl_with_input(
        &[
            "-n",
            namespace,
            "apply",
            "--server-side",
            "--field-manager=argocd-controller",
            "-f",
            "-",
        ],
        Some(manifest),
    )
    .unwrap_or_else(|e| panic!("re-applying the Project server-side: {e}"));
    // `kubectl diff` exits 0 when there is no difference, 1 when there is one.
    let diff = env.kubectl_with_input(
        &[
            "-n",
            namespace,
            "diff",
            "--server-side",
            "--field-manager=argocd-controller",
            "-f",
            "-",
        ],
        Some(manifest),
    );
    assert!(diff.is_ok(), "the re-applied Project differs: {diff:?}");
    std::thread::sleep(Duration::from_secs(8));
    let after = tasks(env, namespace);
    assert_eq!(attempts(&after), attempts(&before), "no Task ran again");
    assert_eq!(project_phase(env, namespace, name), "Succeeded");
    assert_eq!(generation(env), generation_before);
    let (seen, expected) = generation_before.split_once('/').unwrap();
    assert_eq!(seen, expected, "observedGeneration is the generation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_reads_in_progress_then_current_and_every_dashboard_query_answers() {
    // Apollo takes 12 s: Prometheus, started once the run's processes are up, sees
    // Tasks running and queued.
    let fixture = support::model_fixture_with("127.0.0.1", Duration::from_secs(12)).await;
    let env = aios_e2e::shared_with_crds();
    let (mut run, work) = local_run(env, "observed", hello(), &fixture.uri());
    let hold = work.path().join("release");
    run.hold = Some(hold.clone());
    let namespace = run.namespace.clone();
    let project = hello();
    let began = prometheus::unix_now();
    let handle = tokio::task::spawn_blocking(move || run.run(env));

    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut prom: Option<(Prometheus, Vec<Target>)> = None;
    let deadline = Instant::now() + Duration::from_secs(240);
    while !handle.is_finished() && !hold.exists() {
        assert!(Instant::now() < deadline, "the run did not end");
        for (id, (status, _)) in kstatus(env, &namespace, false) {
            seen.entry(id).or_default().insert(status);
        }
        if prom.is_none()
            && let Some(targets) = scrape_targets(work.path())
        {
            let server = Prometheus::start(&targets, &[prometheus::rules_path()]).unwrap();
            prom = Some((server, targets));
        }
        if project_phase(env, &namespace, "hello") == "Succeeded" {
            let (server, targets) = prom.as_ref().expect("the run wrote its scrape targets");
            check_every_endpoint(targets);
            check_every_query(server, began);
            wait_ready(env, &namespace, "hello");
            let repository = work.path().join("delivery.git");
            let manifest = project.replace(
                REPOSITORY_PLACEHOLDER,
                &format!("file://{}", repository.display()),
            );
            reapply_without_drift(env, &namespace, &manifest, "hello");
            std::fs::write(&hold, "").unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let outcome = handle.await.unwrap().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        outcome.project.status.as_ref().and_then(|s| s.phase),
        Some(ProjectPhase::Succeeded)
    );
    assert!(hold.exists(), "the checks ran while the processes were up");

    let last = kstatus(env, &namespace, true);
    let project_id = format!("Project/{namespace}/hello");
    assert!(
        seen[&project_id].contains("InProgress"),
        "kstatus saw the Project in progress: {seen:?}"
    );
    assert_eq!(last[&project_id].0, "Current", "{last:?}");
    let task_ids: Vec<&String> = last.keys().filter(|id| id.starts_with("Task/")).collect();
    assert_eq!(task_ids.len(), 3, "{last:?}");
    for id in task_ids {
        assert_eq!(last[id].0, "Current", "{id}: {last:?}");
    }
    assert!(
        seen.iter()
            .any(|(id, s)| id.starts_with("Task/") && s.contains("InProgress")),
        "kstatus saw a Task in progress: {seen:?}"
    );
    let provider = format!("ModelProvider/{namespace}/local");
    assert_eq!(last[&provider].0, "Current", "{last:?}");
}

/// A Project that fails for good reads Failed to kstatus, and so does its failed Task;
/// the Task its failure skipped reads Failed too (it cannot progress without a person).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_project_reads_failed() {
    let fixture = support::model_fixture("127.0.0.1").await;
    // Apollo answers with something that is not a set of files, every time.
    Mock::given(matchers::method("POST"))
        .and(matchers::path("/api/chat"))
        .and(matchers::body_string_contains("You are Apollo"))
        .respond_with(support::answer(&json!("no files today")))
        .with_priority(1)
        .mount(&fixture)
        .await;
    let env = aios_e2e::shared_with_crds();
    let project = hello().replace("maxRetries: 2", "maxRetries: 0");
    assert!(project.contains("maxRetries: 0"));
    let (run, _work) = local_run(env, "failing", project, &fixture.uri());
    let namespace = run.namespace.clone();
    let result = tokio::task::spawn_blocking(move || run.run(env))
        .await
        .unwrap();
    let Err(aios_e2e::local::LocalError::Project { phase, .. }) = result else {
        panic!("the Project should have failed: {result:?}");
    };
    assert_eq!(phase, "Failed");

    let last = kstatus(env, &namespace, false);
    let (status, message) = &last[&format!("Project/{namespace}/hello")];
    assert_eq!(status, "Failed", "{last:?}");
    assert!(message.contains("failed"), "{message}");
    let failed: Vec<_> = last
        .iter()
        .filter(|(id, (s, _))| id.starts_with("Task/") && s == "Failed")
        .collect();
    assert_eq!(
        failed.len(),
        2,
        "the program and the test it skipped: {last:?}"
    );
    // kubectl reads the same condition: Stalled, with the failure's reason.
    let reason = env
        .kubectl(&[
            "-n",
            &namespace,
            "get",
            "project",
            "hello",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Stalled\")].reason}",
        ])
        .unwrap();
    assert_eq!(reason.trim(), "TaskFailed");
}
