//! Exports the testdata of the Argo CD health checks
//! (`manifests/gitops/argocd/resource_customizations/aios.dev/<Kind>/testdata/`) from a
//! real run: the operator and one agent process per role on the local control plane, the
//! model played by the scripted fixture, and Projects that succeed, fail, wait suspended
//! and run out of budget. While they run, every AIOS object in the namespace is read with
//! `kubectl get -o yaml` a few times a second, and the first copy of each in each state
//! the health checks tell apart is kept; identity noise (uid, resourceVersion,
//! managedFields, ...) is dropped and nothing else is changed.
//!
//! Run on demand, when the operator's status changes:
//!
//! ```sh
//! cargo build --workspace --bins --locked
//! AIOS_EXPORT_HEALTH_TESTDATA=1 cargo test -p aios-e2e --test health_testdata -- --ignored --nocapture
//! ```
//!
//! `AIOS_EXPORT_HEALTH_TESTDATA=<directory>` writes the `aios.dev/<Kind>/testdata/` tree
//! there instead of into the repository. Then check the health checks against the new
//! objects (`cargo test -p aios-e2e --test argocd_health`) and bring `health_test.yaml`'s
//! messages up to date where the operator's wording changed.
//!
//! What a run without a node cannot show: an Agent whose pods are ready (no kubelet runs
//! them, so a pool asked for replicas stays scaling; the ready Agent exported is an idle
//! pool at zero replicas), and a served model that finishes rolling out.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use aios_e2e::{
    Environment, argocd,
    local::{LocalRun, ModelServer, Operator, REPOSITORY_PLACEHOLDER},
};
use serde_yaml_ng::Value;
use wiremock::{Mock, MockServer, ResponseTemplate, matchers};

/// The namespace of the run: fixed, so that nothing in the exported objects depends on
/// the run (a served model's endpoint names it).
const NAMESPACE: &str = "aios-health";

/// The admission policy that refuses Hephaestus's pool its Deployment, so the Agent
/// shows what a refused Deployment does to it.
const POLICY: &str = "aios-health-export-no-devops-pool";

/// A state worth a testdata file: the first copy of `kind`/`name` in it, once the
/// operator has seen its current generation.
struct Capture {
    /// The file name, without `.yaml`.
    file: &'static str,
    kind: &'static str,
    name: &'static str,
    /// Whether the export fails without it (some states last too briefly to be sure of).
    required: bool,
    when: When,
    /// What the object is caught doing, for the file's header.
    state: &'static str,
}

/// What a captured object's status shows.
#[derive(Debug, Clone, Copy)]
enum When {
    /// `status.phase` (Pending when the status has none).
    Phase(&'static str),
    /// A condition True, the object unfinished.
    Holds(&'static str),
    /// A pool with the replicas it asks for.
    PoolSettled,
    /// A pool asking for more replicas than are ready.
    PoolScaling,
    /// `status.ready`, with a reason.
    ProviderReady(bool),
    /// Any status.
    Reported,
    /// No status at all (the only state caught without the operator having reported on
    /// the current generation).
    NoStatus,
}

impl When {
    fn accepts(self, object: &Value) -> bool {
        let status = &object["status"];
        let int = |field: &str| status[field].as_i64().unwrap_or(0);
        match self {
            // A status without a phase is Pending, the CRDs' default.
            Self::Phase(phase) => {
                status.is_mapping() && status["phase"].as_str().unwrap_or("Pending") == phase
            }
            Self::Holds(type_) => {
                !matches!(status["phase"].as_str(), Some("Succeeded" | "Failed"))
                    && status["conditions"]
                        .as_sequence()
                        .into_iter()
                        .flatten()
                        .any(|c| {
                            c["type"].as_str() == Some(type_)
                                && c["status"].as_str() == Some("True")
                        })
            }
            Self::PoolSettled => int("desiredReplicas") == int("readyReplicas"),
            Self::PoolScaling => int("desiredReplicas") > int("readyReplicas"),
            Self::ProviderReady(ready) => {
                status["ready"].as_bool() == Some(ready) && status["reason"].is_string()
            }
            Self::Reported => status.is_mapping(),
            Self::NoStatus => status.is_null(),
        }
    }
}

fn observed(object: &Value) -> bool {
    let generation = object["metadata"]["generation"].as_i64();
    generation.is_some() && object["status"]["observedGeneration"].as_i64() == generation
}

/// What the run catches while it goes.
#[rustfmt::skip]
fn captures() -> Vec<Capture> {
    use When::{Holds, NoStatus, Phase, PoolScaling, PoolSettled, ProviderReady, Reported};
    let rows = [
        ("project-planning", "Project", "hello", false, Phase("Planning"),
            "Hera plans the Project"),
        ("project-running", "Project", "hello", true, Phase("Running"),
            "the planned Tasks run"),
        ("project-succeeded", "Project", "hello", true, Phase("Succeeded"),
            "every Task succeeded and the branch head passed verification"),
        ("project-failed", "Project", "broken", true, Phase("Failed"),
            "a Task failed (the model turned it down) and its dependent was skipped"),
        ("project-suspended", "Project", "paused", true, Phase("Suspended"),
            "spec.suspend is true"),
        ("project-budget-exceeded", "Project", "thrifty", false, Holds("BudgetExceeded"),
            "its model budget spent with a Task still to run"),
        ("task-pending", "Task", "unstaffed-docs", true, Phase("Pending"),
            "waiting for an Agent that serves its role"),
        ("task-pending-on-dependency", "Task", "hello-test", false, Phase("Pending"),
            "waiting for the Task it depends on"),
        ("task-no-status", "Task", "hello-test", false, NoStatus,
            "planned by Hera, waiting for the Task it depends on: no status written yet"),
        ("task-queued", "Task", "hello-program", false, Phase("Queued"),
            "published to the bus, no agent has it yet"),
        ("task-running", "Task", "hello-program", true, Phase("Running"),
            "an agent works on it"),
        ("task-verifying", "Task", "hello-program", false, Phase("Verifying"),
            "delivered, its commit being verified"),
        ("task-succeeded", "Task", "hello-program", true, Phase("Succeeded"),
            "delivered and verified"),
        ("task-failed", "Task", "broken-deploy", true, Phase("Failed"),
            "the model turned its attempt down and no retry was left"),
        ("task-skipped", "Task", "broken-announce", true, Phase("Skipped"),
            "the Task it depends on failed"),
        ("task-cancelled", "Task", "doomed-announce", true, Phase("Cancelled"),
            "its Project failed fast before it ran"),
        ("agent-ready", "Agent", "aphrodite", true, PoolSettled,
            "an idle pool at the zero replicas its empty queue asks for"),
        ("agent-scaling", "Agent", "apollo", true, PoolScaling,
            "its queue asks for a replica that is not ready (no kubelet runs it here)"),
        ("agent-deployment-refused", "Agent", "hephaestus", true, Holds("Stalled"),
            "an admission policy refuses its Deployment"),
        ("modelprovider-ready", "ModelProvider", "local", true, ProviderReady(true),
            "its last probe listed its models"),
        ("modelprovider-unreachable", "ModelProvider", "unreachable", true, ProviderReady(false),
            "its endpoint refuses connections"),
        ("modelprovider-rolling-out", "ModelProvider", "served", false, Reported,
            "its model server is rolling out (no kubelet runs it here)"),
    ];
    rows.into_iter()
        .map(|(file, kind, name, required, when, state)| Capture { file, kind, name, required, when, state })
        .collect()
}

/// Where to write, from `AIOS_EXPORT_HEALTH_TESTDATA`: `1` for the repository.
fn export_root() -> Option<PathBuf> {
    match std::env::var("AIOS_EXPORT_HEALTH_TESTDATA") {
        Ok(v) if v == "1" => Some(aios_e2e::repo_root().join(argocd::CUSTOMIZATIONS_DIR)),
        Ok(v) if !v.is_empty() && v != "0" => Some(PathBuf::from(v)),
        _ => None,
    }
}

/// The Projects besides `hello`: one that fails (Hephaestus is turned down and its
/// dependent is skipped), the same failing fast (its dependent is cancelled), one
/// suspended, one that spends its budget on its first Task, one whose Task no Agent
/// serves.
fn other_projects(repository: &str) -> String {
    format!(
        r"apiVersion: aios.dev/v1alpha1
kind: Project
metadata:
  name: broken
spec:
  description: Deployment manifests, and an announcement once they are written.
  repository: {{url: {repository}, branch: broken}}
  policy:
    failFast: false
    taskDefaults: {{maxRetries: 0}}
  tasks:
  - name: deploy
    title: Write the deployment manifests
    role: devops
  - name: announce
    title: Announce the release
    role: frontend
    dependsOn: [deploy]
---
apiVersion: aios.dev/v1alpha1
kind: Project
metadata:
  name: paused
spec:
  description: Release notes, on hold.
  repository: {{url: {repository}, branch: paused}}
  suspend: true
  tasks:
  - name: notes
    title: Write the release notes
    role: backend
---
apiVersion: aios.dev/v1alpha1
kind: Project
metadata:
  name: thrifty
spec:
  description: A test and its review, on a budget smaller than one model call.
  repository: {{url: {repository}, branch: thrifty}}
  models:
    budget: {{tokens: 100}}
  tasks:
  - name: test
    title: Test hello.py
    role: qa
  - name: review
    title: Review the test
    role: qa
    dependsOn: [test]
---
apiVersion: aios.dev/v1alpha1
kind: Project
metadata:
  name: doomed
spec:
  description: The same deployment and announcement, failing fast.
  repository: {{url: {repository}, branch: doomed}}
  policy:
    taskDefaults: {{maxRetries: 0}}
  tasks:
  - name: deploy
    title: Write the deployment manifests
    role: devops
  - name: announce
    title: Announce the release
    role: frontend
    dependsOn: [deploy]
---
apiVersion: aios.dev/v1alpha1
kind: Project
metadata:
  name: unstaffed
spec:
  description: A user guide, in a namespace where no Agent writes documentation.
  repository: {{url: {repository}, branch: unstaffed}}
  tasks:
  - name: docs
    title: Write the user guide
    role: docs
"
    )
}

/// A ValidatingAdmissionPolicy (and its binding) refusing Hephaestus's Deployment in the
/// run's namespace.
fn deny_policy() -> String {
    format!(
        r"apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata:
  name: {POLICY}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - apiGroups: [apps]
      apiVersions: [v1]
      operations: [CREATE, UPDATE]
      resources: [deployments]
  validations:
  - expression: object.metadata.name != 'aios-agent-hephaestus'
    message: this namespace runs no devops pool
    reason: Forbidden
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata:
  name: {POLICY}
spec:
  policyName: {POLICY}
  validationActions: [Deny]
  matchResources:
    namespaceSelector:
      matchLabels: {{kubernetes.io/metadata.name: {NAMESPACE}}}
"
    )
}

/// Removes the admission policy when the export ends, passed or panicked.
struct PolicyGuard(&'static Environment);

impl Drop for PolicyGuard {
    fn drop(&mut self) {
        for kind in [
            "validatingadmissionpolicybinding",
            "validatingadmissionpolicy",
        ] {
            let _ = self
                .0
                .kubectl(&["delete", kind, POLICY, "--ignore-not-found"]);
        }
    }
}

fn get(env: &Environment, kind: &str, name: &str) -> Value {
    let yaml = env
        .kubectl(&["-n", NAMESPACE, "get", kind, name, "-o", "yaml"])
        .unwrap_or_else(|e| panic!("kubectl get {kind} {name}: {e}"));
    serde_yaml_ng::from_str(&yaml).unwrap()
}

/// What the run caught: the first copy in each wanted state, by file name, and the last
/// copy of every object (to say why a state was not caught).
#[derive(Default)]
struct Caught {
    states: BTreeMap<&'static str, (Value, &'static str)>,
    last: Vec<Value>,
}

/// Reads every AIOS object of the namespace until `done`, keeping the first copy in each
/// wanted state.
fn poll(env: &Environment, done: &AtomicBool) -> Caught {
    let wanted = captures();
    let mut caught = Caught::default();
    loop {
        let finished = done.load(Ordering::SeqCst);
        let yaml = env
            .kubectl(&[
                "-n",
                NAMESPACE,
                "get",
                "projects.aios.dev,tasks.aios.dev,agents.aios.dev,modelproviders.aios.dev",
                "-o",
                "yaml",
            ])
            .unwrap_or_default();
        let list: Value = serde_yaml_ng::from_str(&yaml).unwrap_or(Value::Null);
        let items = list["items"].as_sequence().cloned().unwrap_or_default();
        for object in &items {
            for capture in &wanted {
                if caught.states.contains_key(capture.file)
                    || object["kind"].as_str() != Some(capture.kind)
                    || object["metadata"]["name"].as_str() != Some(capture.name)
                    || !(observed(object) || matches!(capture.when, When::NoStatus))
                    || !capture.when.accepts(object)
                {
                    continue;
                }
                eprintln!("==> caught {} ({})", capture.file, capture.state);
                caught
                    .states
                    .insert(capture.file, (object.clone(), capture.state));
            }
        }
        if !items.is_empty() {
            caught.last = items;
        }
        if finished {
            return caught;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Mounts, on the fixture, Hephaestus's model turning every request down.
async fn turn_hephaestus_down(fixture: &MockServer) {
    Mock::given(matchers::method("POST"))
        .and(matchers::path("/api/chat"))
        .and(matchers::body_string_contains("You are Hephaestus"))
        .respond_with(
            ResponseTemplate::new(400)
                .set_body_json(serde_json::json!({"error": "the fixture turns Hephaestus down"})),
        )
        .with_priority(1)
        .mount(fixture)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "exports the Argo CD health checks' testdata: AIOS_EXPORT_HEALTH_TESTDATA=1"]
async fn export_the_health_checks_testdata_from_a_run() {
    let Some(root) = export_root() else {
        eprintln!("skipped: set AIOS_EXPORT_HEALTH_TESTDATA=1 to export into the repository");
        return;
    };
    // Apollo takes a few seconds to answer: time to catch his Task running and his pool
    // scaling.
    let fixture = support::model_fixture_with("127.0.0.1", Duration::from_secs(6)).await;
    turn_hephaestus_down(&fixture).await;
    let url = fixture.uri();
    let files = tokio::task::spawn_blocking(move || export(&url))
        .await
        .unwrap();
    for kind in argocd::KINDS {
        let dir = root.join(argocd::GROUP).join(kind).join("testdata");
        std::fs::create_dir_all(&dir).unwrap();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                std::fs::remove_file(path).unwrap();
            }
        }
    }
    for (kind, file, text) in &files {
        let path = root
            .join(argocd::GROUP)
            .join(kind)
            .join("testdata")
            .join(format!("{file}.yaml"));
        std::fs::write(&path, text).unwrap();
        eprintln!("wrote {}", path.display());
    }
}

/// A testdata file: (kind, file name without `.yaml`, text).
type File = (String, String, String);

fn file(kind: &str, name: &str, object: Value, state: &str) -> File {
    (
        kind.to_owned(),
        name.to_owned(),
        argocd::testdata_file(object, state).unwrap(),
    )
}

/// Runs the scenario; the testdata files.
fn export(model_url: &str) -> Vec<File> {
    let env = aios_e2e::shared_with_crds();
    assert!(
        env.kubectl(&["get", "namespace", NAMESPACE]).is_err(),
        "namespace {NAMESPACE} exists: export in a fresh environment"
    );
    env.kubectl(&["create", "namespace", NAMESPACE]).unwrap();
    let amqp_url = env.create_vhost(NAMESPACE).unwrap();
    let work = std::env::temp_dir().join("aios-health-export");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let repository = format!("file://{}", work.join("delivery.git").display());

    let _policy = PolicyGuard(env);
    env.kubectl_with_input(&["apply", "--server-side", "-f", "-"], Some(&deny_policy()))
        .unwrap();
    env.kubectl_with_input(
        &["-n", NAMESPACE, "apply", "--server-side", "-f", "-"],
        Some(&other_projects(&repository)),
    )
    .unwrap();
    // Before any operator runs: a Project it has not seen.
    let new = get(env, "project", "broken");
    assert!(new["status"].is_null(), "{new:?}");
    let mut files = vec![file(
        "Project",
        "project-new",
        new,
        "applied, no operator has seen it yet",
    )];

    let run = local_run(amqp_url, work, model_url);
    let done = Arc::new(AtomicBool::new(false));
    let poller = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || poll(env, &done))
    };
    let outcome = run.run(env);
    done.store(true, Ordering::SeqCst);
    let caught = poller.join().unwrap();
    if let Err(err) = outcome {
        panic!("the run failed: {err}");
    }
    files.extend(unobserved_changes(env));

    let mut missing = Vec::new();
    for capture in captures() {
        if let Some((object, state)) = caught.states.get(capture.file) {
            files.push(file(capture.kind, capture.file, object.clone(), state));
        } else {
            say_not_caught(&capture, &caught.last);
            if capture.required {
                missing.push(capture.file);
            }
        }
    }
    let _ = env.kubectl(&["delete", "namespace", NAMESPACE, "--wait=false"]);
    assert!(
        missing.is_empty(),
        "states not caught: {missing:?}; nothing was written"
    );
    files
}

/// Says which state was not caught, and what its object was last seen as.
fn say_not_caught(capture: &Capture, last: &[Value]) {
    let object = last.iter().find(|o| {
        o["kind"].as_str() == Some(capture.kind)
            && o["metadata"]["name"].as_str() == Some(capture.name)
    });
    let seen = object.map_or_else(
        || "never seen".to_owned(),
        |o| {
            format!(
                "last seen in phase {}: {}",
                o["status"]["phase"].as_str().unwrap_or("-"),
                o["status"]["message"].as_str().unwrap_or("-")
            )
        },
    );
    eprintln!(
        "==> not caught{}: {} ({} {} {seen})",
        if capture.required { "" } else { " (optional)" },
        capture.file,
        capture.kind,
        capture.name,
    );
}

/// The main job's run, `hello` (project-hello.yaml), with the fixture as the `local`
/// model, a provider whose endpoint refuses connections and a served one.
fn local_run(amqp_url: String, work: PathBuf, model_url: &str) -> LocalRun {
    let model = |name: &str, url: String, image: Option<&str>| ModelServer {
        name: name.to_owned(),
        provider_type: "Ollama".to_owned(),
        tier: "Local".to_owned(),
        priority: i32::from(name == "local"),
        url,
        chat_model: "fixture".to_owned(),
        embed_model: None,
        image: image.map(str::to_owned),
    };
    let hello = std::fs::read_to_string(
        aios_e2e::repo_root().join("manifests/examples/project-hello.yaml"),
    )
    .unwrap();
    assert!(hello.contains(REPOSITORY_PLACEHOLDER));
    LocalRun {
        namespace: NAMESPACE.to_owned(),
        amqp_url,
        bin_dir: support::bin_dir(),
        work_dir: work,
        models: vec![
            model("local", model_url.to_owned(), None),
            // Port 1 (tcpmux): nothing listens there, and the message stays the same.
            model("unreachable", "http://127.0.0.1:1".to_owned(), None),
            model(
                "served",
                String::new(),
                Some("ghcr.io/aios-dev/aios-model-server:0.1.0"),
            ),
        ],
        project: hello,
        timeout: Duration::from_secs(300),
        verbose: true,
        operator_kubeconfig: None,
        operator_env: Vec::new(),
        agents_in_pods: false,
        operator: Operator::Process,
        tls: false,
        hold: None,
        apply_command: None,
    }
}

/// Once the operator has stopped: an Agent and a ModelProvider whose spec changed, a
/// generation the operator has not seen.
fn unobserved_changes(env: &Environment) -> Vec<File> {
    let changes = [
        (
            "Agent",
            "athena",
            r#"{"spec":{"scaling":{"maxReplicas":4}}}"#,
        ),
        ("ModelProvider", "local", r#"{"spec":{"priority":2}}"#),
    ];
    let mut files = Vec::new();
    for (kind, name, patch) in changes {
        env.kubectl(&[
            "-n",
            NAMESPACE,
            "patch",
            kind,
            name,
            "--type=merge",
            "-p",
            patch,
        ])
        .unwrap();
        let object = get(env, kind, name);
        assert!(
            !observed(&object) && object["status"].is_mapping(),
            "{kind} {name}: {object:?}"
        );
        files.push(file(
            kind,
            &format!("{}-generation-unobserved", kind.to_lowercase()),
            object,
            "its spec changed while no operator ran: the status is of an older generation",
        ));
    }
    files
}
