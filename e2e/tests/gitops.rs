//! The GitOps examples (`manifests/gitops/`) checked with the real tools' own schemas:
//! the Argo CD and Flux CRDs, taken from those projects' published Go modules
//! (`e2e/tools/gitops-crds.sh`), installed into the local control plane beside AIOS's,
//! and every example applied with a server-side dry run (server-side apply, as Argo CD
//! with `ServerSideApply=true` and Flux apply them). Broken copies of the examples are
//! refused, so the check is known to bite; the example Projects, applied twice, change
//! nothing the second time. The Flux Kustomization's `healthCheckExprs` are evaluated by
//! Flux's own CEL status reader on Projects in each state the operator's conditions
//! tell apart. And the kstatus command (`e2e/tools/kstatus`), which reads status as
//! Flux does, on hand-made Deployments.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::{
    path::{Path, PathBuf},
    process::Output,
    sync::OnceLock,
    time::{Duration, Instant},
};

use aios_e2e::{Environment, gitops, repo_root};
use serde::Deserialize as _;
use serde_json::{Value, json};

/// The field manager the tests apply with; Argo CD's and Flux's own are other names, and
/// a dry run records nothing.
const MANAGER: &str = "aios-e2e-gitops";

/// The namespaces the examples name for the tools' own objects.
const TOOL_NAMESPACES: [&str; 2] = ["argocd", "flux-system"];

fn examples(folder: &str) -> Vec<PathBuf> {
    let dir = repo_root().join("manifests/gitops").join(folder);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no examples in {}", dir.display());
    files
}

/// The Argo CD and Flux CRDs, installed once per process with server-side apply and
/// established; their directory.
fn gitops_crds(env: &Environment) -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = gitops::crds_dir().unwrap_or_else(|e| panic!("the GitOps CRDs: {e}"));
        let path = dir.display().to_string();
        env.kubectl(&[
            "apply",
            "--server-side",
            &format!("--field-manager={MANAGER}"),
            "-f",
            &path,
        ])
        .unwrap_or_else(|e| panic!("installing the CRDs of {path}: {e}"));
        env.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "-f",
            &path,
        ])
        .unwrap_or_else(|e| panic!("waiting for the CRDs of {path}: {e}"));
        dir
    })
}

/// `kubectl apply --server-side --dry-run=server` of `manifest` (a file, or `-` for
/// `input`), in `namespace` when given. Retried while kubectl's discovery does not yet
/// know a kind whose CRD was just established.
fn dry_run(
    env: &Environment,
    manifest: &str,
    namespace: Option<&str>,
    input: Option<&str>,
) -> Output {
    let manager = format!("--field-manager={MANAGER}");
    let mut args = vec![
        "apply",
        "--server-side",
        "--dry-run=server",
        &manager,
        "-f",
        manifest,
    ];
    if let Some(namespace) = namespace {
        args.extend(["-n", namespace]);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = env.kubectl_output(&args, input).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success()
            || !stderr.contains("no matches for kind")
            || Instant::now() > deadline
        {
            return out;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn accepted(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} was refused:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Creates `name` unless it exists; whether it was created here.
fn ensure_namespace(env: &Environment, name: &str) -> bool {
    let exists = env.kubectl(&["get", "namespace", name]).is_ok();
    if !exists {
        env.kubectl(&["create", "namespace", name]).unwrap();
    }
    !exists
}

#[test]
fn every_gitops_example_passes_a_server_side_dry_run_against_the_real_crds() {
    let env = aios_e2e::shared_with_crds();
    gitops_crds(env);
    let created: Vec<&str> = TOOL_NAMESPACES
        .into_iter()
        .filter(|ns| ensure_namespace(env, ns))
        .collect();
    let mut applied = String::new();
    for file in examples("argocd").into_iter().chain(examples("flux")) {
        let path = file.display().to_string();
        applied += &accepted(&dry_run(env, &path, None, None), &path);
    }
    let team = env.create_namespace("gitops-projects").unwrap();
    for file in examples("projects") {
        let path = file.display().to_string();
        applied += &accepted(&dry_run(env, &path, Some(&team), None), &path);
    }
    for name in created.into_iter().chain([team.as_str()]) {
        let _ = env.kubectl(&["delete", "namespace", name, "--wait=false"]);
    }
    for object in [
        "application.argoproj.io/aios ",
        "application.argoproj.io/aios-projects ",
        "gitrepository.source.toolkit.fluxcd.io/aios ",
        "helmrelease.helm.toolkit.fluxcd.io/aios ",
        "kustomization.kustomize.toolkit.fluxcd.io/aios-projects ",
        "project.aios.dev/temperature-converter ",
        "project.aios.dev/release-notes ",
    ] {
        assert!(
            applied.contains(&format!("{object}serverside-applied (server dry run)")),
            "{object}is not among the examples the API server accepted:\n{applied}"
        );
    }
}

/// The documents of the example `file`, as JSON objects.
fn documents(file: &str) -> Vec<Value> {
    let path = repo_root().join("manifests/gitops").join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|doc| !doc.is_null())
        .collect()
}

/// `document`, moved into `namespace`, through a server-side dry run.
fn dry_run_document(env: &Environment, namespace: &str, document: &Value) -> Output {
    let mut document = document.clone();
    document["metadata"]["namespace"] = json!(namespace);
    dry_run(env, "-", None, Some(&document.to_string()))
}

/// Asserts the API server refuses `broken` (a copy of an example with one mistake),
/// naming `field` in its answer.
fn assert_refused(env: &Environment, namespace: &str, broken: &Value, mistake: &str, field: &str) {
    let out = dry_run_document(env, namespace, broken);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the API server accepted an example with {mistake}:\n{broken:#}"
    );
    assert!(
        stderr.contains(field),
        "the refusal of an example with {mistake} does not name {field}: {stderr}"
    );
}

#[test]
fn broken_copies_of_the_examples_are_refused_by_the_tools_schemas() {
    let env = aios_e2e::shared_with_crds();
    gitops_crds(env);
    let namespace = env.create_namespace("gitops-broken").unwrap();

    let application = documents("argocd/aios-application.yaml").remove(0);
    // The unbroken example passes in this namespace: what follows fails for its mistake.
    accepted(
        &dry_run_document(env, &namespace, &application),
        "aios-application.yaml",
    );

    let mut misspelt = application.clone();
    let project = misspelt["spec"]
        .as_object_mut()
        .unwrap()
        .remove("project")
        .unwrap();
    misspelt["spec"]["projct"] = project;
    assert_refused(
        env,
        &namespace,
        &misspelt,
        "spec.project misspelt",
        "projct",
    );

    let mut missing = application.clone();
    missing["spec"]
        .as_object_mut()
        .unwrap()
        .remove("destination");
    assert_refused(
        env,
        &namespace,
        &missing,
        "no spec.destination",
        "destination",
    );

    let mut wrong_type = application.clone();
    wrong_type["spec"]["syncPolicy"]["syncOptions"] = json!("ServerSideApply=true");
    assert_refused(
        env,
        &namespace,
        &wrong_type,
        "syncOptions a string",
        "syncOptions",
    );

    let kustomization = documents("flux/projects-kustomization.yaml").remove(0);
    accepted(
        &dry_run_document(env, &namespace, &kustomization),
        "projects-kustomization.yaml",
    );
    let mut no_current = kustomization.clone();
    no_current["spec"]["healthCheckExprs"][0]
        .as_object_mut()
        .unwrap()
        .remove("current");
    assert_refused(
        env,
        &namespace,
        &no_current,
        "a health check without current",
        "current",
    );

    let _ = env.kubectl(&["delete", "namespace", &namespace, "--wait=false"]);
}

/// `(generation, resourceVersion)` of every Project in `namespace`.
fn project_versions(env: &Environment, namespace: &str) -> Vec<(String, String)> {
    let list: Value = serde_json::from_str(
        &env.kubectl(&["get", "projects", "-n", namespace, "-o", "json"])
            .unwrap(),
    )
    .unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["metadata"]["generation"].to_string(),
                p["metadata"]["resourceVersion"].to_string(),
            )
        })
        .collect()
}

#[test]
fn the_example_projects_applied_again_change_nothing() {
    let env = aios_e2e::shared_with_crds();
    let namespace = env.create_namespace("gitops-drift").unwrap();
    let folder = repo_root()
        .join("manifests/gitops/projects")
        .display()
        .to_string();
    let manager = format!("--field-manager={MANAGER}");
    let apply = [
        "apply",
        "--server-side",
        &manager,
        "-n",
        &namespace,
        "-f",
        &folder,
    ];
    env.kubectl(&apply).unwrap();
    let first = project_versions(env, &namespace);
    assert_eq!(first.len(), examples("projects").len(), "{first:?}");

    env.kubectl(&apply).unwrap();
    assert_eq!(
        project_versions(env, &namespace),
        first,
        "applying the same Projects again changed them (generation, resourceVersion)"
    );
    // kubectl diff exits 1 when it finds a difference, above 1 when it fails.
    let diff = env
        .kubectl_output(
            &[
                "diff",
                "--server-side",
                &manager,
                "-n",
                &namespace,
                "-f",
                &folder,
            ],
            None,
        )
        .unwrap();
    assert_eq!(
        diff.status.code(),
        Some(0),
        "kubectl diff found drift:\n{}{}",
        String::from_utf8_lossy(&diff.stdout),
        String::from_utf8_lossy(&diff.stderr)
    );
    let _ = env.kubectl(&["delete", "namespace", &namespace, "--wait=false"]);
}

fn deployment(generation: i64, observed: i64, ready: i64) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop", "generation": generation},
        "spec": {"replicas": 2},
        "status": {
            "observedGeneration": observed,
            "replicas": 2,
            "updatedReplicas": 2,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "conditions": [
                {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}
            ]
        }
    })
}

#[test]
fn kstatus_reads_a_deployment_behind_its_generation_as_in_progress_and_caught_up_as_current() {
    let behind = gitops::kstatus(&deployment(3, 2, 2).to_string()).unwrap();
    assert_eq!(behind.len(), 1, "{behind:?}");
    let (object, status, message) = &behind[0];
    assert_eq!(object, "Deployment/shop/web");
    assert_eq!(status, "InProgress", "{message}");
    assert!(message.contains("generation"), "{message}");

    let current = gitops::kstatus(&deployment(3, 3, 2).to_string()).unwrap();
    assert_eq!(current[0].1, "Current", "{current:?}");

    // A List, as `kubectl get -o json` prints one: one answer per item, in order.
    let list = json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": [deployment(3, 3, 1), deployment(3, 3, 2)]
    });
    let statuses: Vec<String> = gitops::kstatus(&list.to_string())
        .unwrap()
        .into_iter()
        .map(|(_, status, _)| status)
        .collect();
    assert_eq!(statuses, ["InProgress", "Current"]);
}

#[test]
fn kstatus_refuses_what_is_not_a_kubernetes_object() {
    for input in ["", "[1, 2]", r#"{"kind": "Deployment"}"#, "{not json"] {
        let err = gitops::kstatus(input).expect_err(input);
        assert!(
            matches!(err, gitops::GitopsError::Failed { .. }),
            "{input:?}: {err}"
        );
    }
}

/// A Project at `generation` whose status, of `observed`, carries `conditions` (type,
/// status) as the operator writes them: Ready, Reconciling and Stalled always, one True
/// at most, and Succeeded.
fn project(name: &str, generation: i64, observed: i64, conditions: &[(&str, &str)]) -> Value {
    let conditions: Vec<Value> = conditions
        .iter()
        .map(|(type_, status)| {
            json!({
                "type": type_, "status": status, "reason": "Test", "message": "",
                "observedGeneration": observed,
                "lastTransitionTime": "2026-01-01T00:00:00Z"
            })
        })
        .collect();
    json!({
        "apiVersion": "aios.dev/v1alpha1",
        "kind": "Project",
        "metadata": {"name": name, "namespace": "team-a", "generation": generation},
        "spec": {"description": "d", "repository": {"url": "https://git.example.com/r.git"}},
        "status": {"observedGeneration": observed, "conditions": conditions}
    })
}

#[test]
fn flux_reads_the_example_projects_kustomizations_health_checks_as_meant() {
    let kustomization = repo_root().join("manifests/gitops/flux/projects-kustomization.yaml");
    let running = [
        ("Ready", "False"),
        ("Reconciling", "True"),
        ("Stalled", "False"),
        ("Succeeded", "Unknown"),
    ];
    let succeeded = [
        ("Ready", "True"),
        ("Reconciling", "False"),
        ("Stalled", "False"),
        ("Succeeded", "True"),
    ];
    let failed = [
        ("Ready", "False"),
        ("Reconciling", "False"),
        ("Stalled", "True"),
        ("Succeeded", "False"),
    ];
    // Out of budget: stalled before any end, Succeeded still Unknown.
    let budget_spent = [
        ("Ready", "False"),
        ("Reconciling", "False"),
        ("Stalled", "True"),
        ("Succeeded", "Unknown"),
    ];
    let suspended = [
        ("Ready", "False"),
        ("Reconciling", "False"),
        ("Stalled", "False"),
        ("Succeeded", "Unknown"),
    ];
    let cases = [
        (project("running", 1, 1, &running), "InProgress"),
        (project("succeeded", 1, 1, &succeeded), "Current"),
        (project("failed", 1, 1, &failed), "Failed"),
        (project("budget-spent", 1, 1, &budget_spent), "Failed"),
        // Waits: neither done nor failed.
        (project("suspended", 1, 1, &suspended), "InProgress"),
        // A status of the previous generation says nothing of the spec applied.
        (project("edited", 2, 1, &succeeded), "InProgress"),
    ];
    let list = json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": cases.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>()
    });
    let got = gitops::flux_status(&kustomization, &list.to_string()).unwrap();
    let got: Vec<(String, String)> = got.into_iter().map(|(o, s, _)| (o, s)).collect();
    let want: Vec<(String, String)> = cases
        .iter()
        .map(|(p, status)| {
            (
                format!("Project/team-a/{}", p["metadata"]["name"].as_str().unwrap()),
                (*status).to_owned(),
            )
        })
        .collect();
    assert_eq!(got, want);

    // Before the operator first writes its status, Flux cannot evaluate the expressions
    // and keeps waiting (Unknown), rather than taking the Project as done.
    let fresh = json!({
        "apiVersion": "aios.dev/v1alpha1", "kind": "Project",
        "metadata": {"name": "fresh", "namespace": "team-a", "generation": 1}
    });
    let got = gitops::flux_status(&kustomization, &fresh.to_string()).unwrap();
    assert_eq!(got[0].1, "Unknown", "{got:?}");
}
