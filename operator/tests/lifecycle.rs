//! The operator against a real API server and RabbitMQ, with a test playing the agents.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aios_crds::{Project, ProjectPhase, ProjectStatus, TaskPhase, TaskResult};
use futures::StreamExt;
use kube::{Api, ResourceExt, runtime::watcher};
use support::{FakeAgents, Harness, Reply, done, plan_reply, single};

const TIMEOUT: Duration = Duration::from_secs(60);

fn diamond(name: &str, extra_policy: &str) -> String {
    format!(
        r"apiVersion: aios.dev/v1alpha1
kind: Project
metadata:
  name: {name}
spec:
  description: A diamond
  repository:
    url: file:///tmp/{name}.git
  policy:
    maxParallelTasks: 4
{extra_policy}
  tasks:
    - name: design
      title: Design
      role: backend
    - name: api
      title: API
      role: backend
      dependsOn: [design]
    - name: ui
      title: UI
      role: frontend
      dependsOn: [design]
    - name: qa
      title: QA
      role: qa
      dependsOn: [api, ui]
"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_diamond_plan_runs_in_dependency_order_to_succeeded() {
    let h = Harness::running("diamond", &["backend", "frontend", "qa"]).await;
    let agents = FakeAgents::start(
        &h,
        &["backend", "frontend", "qa"],
        Duration::from_millis(300),
        |d| Reply::Succeed(done(d)),
    )
    .await;
    h.apply(&diamond("shop", ""));
    h.wait_for_phase("shop", "Succeeded", TIMEOUT).await;

    let order = agents.order();
    assert_eq!(order.len(), 4, "each task dispatched once: {order:?}");
    assert_eq!(order[0], "shop-design");
    assert_eq!(order[3], "shop-qa");
    // api and ui ran side by side: both were dispatched before either finished.
    let received = agents.received();
    let gap = received[2].at.duration_since(received[1].at);
    assert!(
        gap < Duration::from_millis(300),
        "api and ui were not dispatched together: {gap:?}"
    );
    // qa received its dependencies' results.
    let qa = &received[3].dispatch;
    let deps: Vec<_> = qa.dependencies.iter().map(|d| d.summary.clone()).collect();
    assert_eq!(deps, ["shop-api done", "shop-ui done"]);
    assert_eq!(qa.brief, "A diamond");

    let api = h.task("shop-api");
    let status = api.status.unwrap();
    assert_eq!(status.phase, Some(TaskPhase::Succeeded));
    assert_eq!(status.attempt, 1);
    assert_eq!(status.agent.as_deref(), Some("fake-backend"));
    assert_eq!(status.result.unwrap().commit.as_deref(), Some("c-shop-api"));
    let succeeded = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Succeeded")
        .unwrap();
    assert_eq!(
        (succeeded.status.as_str(), succeeded.reason.as_str()),
        ("True", "Succeeded")
    );
    assert!(
        api.metadata.finalizers.unwrap_or_default().is_empty(),
        "no finalizer: attempts in flight are recorded in Redis instead"
    );

    assert_eq!(h.jsonpath("project/shop", "{.status.progress}"), "4/4");
    assert_eq!(
        h.jsonpath("project/shop", "{.status.usage.inputTokens}"),
        "400"
    );
    let listing = h.kubectl(&["get", "tasks"]);
    assert_eq!(
        listing
            .lines()
            .filter(|l| l.contains("Succeeded") && l.contains("fake-"))
            .count(),
        4,
        "{listing}"
    );
    let events = h.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=shop",
    ]);
    assert!(
        events.contains("Succeeded"),
        "a Kubernetes Event records the success: {events}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_project_without_tasks_is_planned_by_hera_into_tasks() {
    let h = Harness::running("planned", &["cto", "backend", "qa"]).await;
    let plan = serde_json::json!([
        {"name": "build", "title": "Build it", "role": "backend", "complexity": "High"},
        {"name": "test", "title": "Test it", "role": "qa", "dependsOn": ["build"], "acceptanceCriteria": ["tests pass"]}
    ]);
    let agents = FakeAgents::start(
        &h,
        &["cto", "backend", "qa"],
        Duration::from_millis(50),
        move |d| plan_reply(d, &plan),
    )
    .await;
    h.apply("apiVersion: aios.dev/v1alpha1\nkind: Project\nmetadata:\n  name: todo\nspec:\n  description: A todo app\n  repository:\n    url: file:///tmp/todo.git\n");
    h.wait_for_phase("todo", "Succeeded", TIMEOUT).await;

    assert_eq!(agents.order(), ["todo-plan", "todo-build", "todo-test"]);
    let planning = &agents.received()[0].dispatch;
    assert!(planning.spec.planning);
    assert_eq!(planning.available_roles, ["backend", "cto", "qa"]);
    let test = h.task("todo-test");
    assert_eq!(test.spec.depends_on, ["todo-build"]);
    assert_eq!(test.spec.acceptance_criteria, ["tests pass"]);
    let owner = &test.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Project", "todo")
    );
    assert_eq!(
        test.metadata.labels.as_ref().unwrap()["aios.dev/project"],
        "todo"
    );
    assert_eq!(h.jsonpath("project/todo", "{.status.progress}"), "2/2");
    assert_eq!(
        h.jsonpath(
            "project/todo",
            "{.status.conditions[?(@.type==\"Planned\")].status}"
        ),
        "True"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_plan_is_replanned_and_finally_fails_with_plan_invalid() {
    let h = Harness::running("replan", &["cto", "backend"]).await;
    // Every plan uses a role no Agent serves.
    let plan = serde_json::json!([{"name": "hack", "title": "Hack", "role": "security"}]);
    let agents = FakeAgents::start(&h, &["cto"], Duration::from_millis(20), move |d| {
        plan_reply(d, &plan)
    })
    .await;
    h.apply("apiVersion: aios.dev/v1alpha1\nkind: Project\nmetadata:\n  name: vault\nspec:\n  description: A vault\n  repository:\n    url: file:///tmp/vault.git\n  policy:\n    taskDefaults:\n      maxRetries: 1\n      backoff:\n        durationSeconds: 1\n");
    h.wait_for_phase("vault", "Failed", TIMEOUT).await;

    let received = agents.received();
    assert_eq!(received.len(), 2, "one plan and one re-plan");
    assert!(received[0].dispatch.plan_feedback.is_empty());
    let feedback = received[1].dispatch.plan_feedback.join(" ");
    assert!(
        feedback.contains("security") && feedback.contains("no Agent"),
        "{feedback}"
    );
    let reason = h.jsonpath(
        "project/vault",
        "{.status.conditions[?(@.type==\"Succeeded\")].reason}",
    );
    assert_eq!(reason, "PlanInvalid");
    let invalid = h.jsonpath(
        "project/vault",
        "{.status.conditions[?(@.type==\"PlanInvalid\")].message}",
    );
    assert!(invalid.contains("security"), "{invalid}");
    assert_eq!(
        project_condition(&h, "vault", "Planned", "reason"),
        "PlanInvalid"
    );
    assert_eq!(h.tasks().len(), 1, "no Tasks from a refused plan");
}

/// A Project without tasks, named `name`, whose planning may retry `retries` times
/// one second apart.
fn unplanned(name: &str, retries: u32) -> String {
    format!(
        "apiVersion: aios.dev/v1alpha1\nkind: Project\nmetadata:\n  name: {name}\nspec:\n  description: Plan me\n  repository:\n    url: file:///tmp/{name}.git\n  policy:\n    taskDefaults:\n      maxRetries: {retries}\n      backoff:\n        durationSeconds: 1\n"
    )
}

/// The value of `field` of the Project's condition `type_`.
fn project_condition(h: &Harness, project: &str, type_: &str, field: &str) -> String {
    h.jsonpath(
        &format!("project/{project}"),
        &format!("{{.status.conditions[?(@.type==\"{type_}\")].{field}}}"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cyclic_plan_is_refused_by_hera_with_its_problems_and_planned_again() {
    let h = Harness::running("cycle", &["cto", "backend"]).await;
    let cyclic = serde_json::json!([
        {"name": "api", "title": "API", "role": "backend", "dependsOn": ["store"]},
        {"name": "store", "title": "Store", "role": "backend", "dependsOn": ["api"]}
    ]);
    let acyclic = serde_json::json!([
        {"name": "api", "title": "API", "role": "backend", "dependsOn": ["store"]},
        {"name": "store", "title": "Store", "role": "backend"}
    ]);
    let agents = FakeAgents::start(
        &h,
        &["cto", "backend"],
        Duration::from_millis(20),
        move |d| plan_reply(d, if d.attempt == 1 { &cyclic } else { &acyclic }),
    )
    .await;
    h.apply(&unplanned("loop", 2));
    h.wait_for_phase("loop", "Succeeded", TIMEOUT).await;

    let plans: Vec<_> = agents
        .received()
        .into_iter()
        .filter(|r| r.dispatch.spec.planning)
        .collect();
    assert_eq!(plans.len(), 2, "a plan and a re-plan");
    let feedback = plans[1].dispatch.plan_feedback.join(" ");
    assert!(feedback.contains("in a cycle"), "{feedback}");
    assert_eq!(agents.order()[2..], ["loop-store", "loop-api"]);
    assert_eq!(project_condition(&h, "loop", "Planned", "status"), "True");
    assert_eq!(
        project_condition(&h, "loop", "PlanInvalid", "status"),
        "False",
        "the accepted plan is valid"
    );
    let events = h.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=loop,reason=PlanInvalid",
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert!(
        events.contains("in a cycle"),
        "a Warning names the problem: {events:?}\n{}",
        h.kubectl(&["get", "events"])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dependency_on_no_task_of_the_plan_is_dropped_by_hera_and_named() {
    let h = Harness::running("dangling", &["cto", "backend", "qa"]).await;
    // A small model's plan: a role named as a dependency.
    let plan = serde_json::json!([
        {"name": "build", "title": "Build it", "role": "backend"},
        {"name": "test", "title": "Test it", "role": "qa", "dependsOn": ["build", "backend"]}
    ]);
    let _agents = FakeAgents::start(
        &h,
        &["cto", "backend", "qa"],
        Duration::from_millis(20),
        move |d| plan_reply(d, &plan),
    )
    .await;
    h.apply(&unplanned("loose", 0));
    h.wait_for_phase("loose", "Succeeded", TIMEOUT).await;

    assert_eq!(h.task("loose-test").spec.depends_on, ["loose-build"]);
    assert_eq!(
        project_condition(&h, "loose", "Planned", "reason"),
        "DependenciesDropped"
    );
    let message = project_condition(&h, "loose", "Planned", "message");
    assert!(
        message.contains("task \"test\" depends on \"backend\", which is not in the plan"),
        "{message}"
    );
    let events = h.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=loose,reason=DependenciesDropped",
        "-o",
        "jsonpath={.items[*].type} {.items[*].message}",
    ]);
    assert!(
        events.starts_with("Warning") && events.contains("\"backend\""),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_planning_task_that_fails_without_a_plan_leaves_every_condition_current() {
    let h = Harness::running("planfail", &["cto", "backend"]).await;
    let _agents = FakeAgents::start(&h, &["cto"], Duration::from_millis(10), |_| Reply::Fail {
        reason: "InvalidPlan".into(),
        retryable: true,
    })
    .await;
    h.apply(&unplanned("noplan", 0));
    h.wait_for_phase("noplan", "Failed", TIMEOUT).await;

    assert_eq!(
        project_condition(&h, "noplan", "Succeeded", "reason"),
        "TaskFailed"
    );
    assert_eq!(
        project_condition(&h, "noplan", "Planned", "status"),
        "False"
    );
    assert_eq!(
        project_condition(&h, "noplan", "Planned", "reason"),
        "PlanningFailed",
        "not still 'Planning' once the Project has failed"
    );
    let message = project_condition(&h, "noplan", "Planned", "message");
    assert!(message.contains("InvalidPlan"), "{message}");
}

fn failing(name: &str, task_a: &str, fail_fast: bool) -> String {
    format!(
        r"apiVersion: aios.dev/v1alpha1
kind: Project
metadata:
  name: {name}
spec:
  description: One task fails
  repository:
    url: file:///tmp/{name}.git
  policy:
    failFast: {fail_fast}
    maxParallelTasks: 1
    taskDefaults:
      maxRetries: 2
      backoff:
        durationSeconds: 1
        factor: 2
        maxDurationSeconds: 10
  tasks:
    - name: {task_a}
      title: Flaky
      role: backend
      priority: 10
    - name: after
      title: After the flaky one
      role: backend
      dependsOn: [{task_a}]
    - name: aside
      title: Independent
      role: backend
"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_task_is_retried_with_backoff_and_fails_the_project_under_fail_fast() {
    let h = Harness::running("failfast", &["backend"]).await;
    let agents = FakeAgents::start(&h, &["backend"], Duration::from_millis(10), |d| {
        if d.task.name.ends_with("-flaky") {
            Reply::Fail {
                reason: "InvalidOutput".into(),
                retryable: true,
            }
        } else {
            Reply::Succeed(done(d))
        }
    })
    .await;
    h.apply(&failing("ff", "flaky", true));
    h.wait_for_phase("ff", "Failed", TIMEOUT).await;

    let flaky: Vec<_> = agents
        .received()
        .into_iter()
        .filter(|r| r.dispatch.task.name == "ff-flaky")
        .collect();
    let attempts: Vec<u32> = flaky.iter().map(|r| r.dispatch.attempt).collect();
    assert_eq!(attempts, [1, 2, 3], "maxRetries 2: three attempts");
    // Backoff: 1s after the first failure, 2s after the second.
    let first_gap = flaky[1].at.duration_since(flaky[0].at);
    let second_gap = flaky[2].at.duration_since(flaky[1].at);
    assert!(first_gap >= Duration::from_millis(950), "{first_gap:?}");
    assert!(second_gap >= Duration::from_millis(1950), "{second_gap:?}");
    assert_eq!(h.jsonpath("task/ff-flaky", "{.status.phase}"), "Failed");
    assert_eq!(
        h.jsonpath(
            "task/ff-flaky",
            "{.status.conditions[?(@.type==\"Succeeded\")].reason}"
        ),
        "InvalidOutput"
    );
    // failFast: nothing else started after the failure; what had not run is Cancelled.
    assert_eq!(h.jsonpath("task/ff-after", "{.status.phase}"), "Cancelled");
    let reason = h.jsonpath(
        "project/ff",
        "{.status.conditions[?(@.type==\"Succeeded\")].reason}",
    );
    assert_eq!(reason, "TaskFailed");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_fail_fast_dependents_are_skipped_and_other_branches_finish() {
    let h = Harness::running("continue", &["backend"]).await;
    let _agents = FakeAgents::start(&h, &["backend"], Duration::from_millis(10), |d| {
        if d.task.name.ends_with("-broken") {
            Reply::Fail {
                reason: "BudgetExceeded".into(),
                retryable: false,
            }
        } else {
            Reply::Succeed(done(d))
        }
    })
    .await;
    h.apply(&failing("nf", "broken", false));
    h.wait_for_phase("nf", "Failed", TIMEOUT).await;
    assert_eq!(
        h.jsonpath("task/nf-broken", "{.status.attempt}"),
        "1",
        "not retryable: one attempt"
    );
    assert_eq!(h.jsonpath("task/nf-after", "{.status.phase}"), "Skipped");
    assert_eq!(h.jsonpath("task/nf-aside", "{.status.phase}"), "Succeeded");
    assert_eq!(h.jsonpath("project/nf", "{.status.progress}"), "1/3");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_timed_out_attempt_is_cancelled_and_retried() {
    let h = Harness::running("timeout", &["backend"]).await;
    let agents = FakeAgents::start(&h, &["backend"], Duration::from_millis(10), |d| {
        if d.attempt == 1 {
            Reply::Hang
        } else {
            Reply::Succeed(done(d))
        }
    })
    .await;
    h.apply("apiVersion: aios.dev/v1alpha1\nkind: Project\nmetadata:\n  name: slow\nspec:\n  description: Slow\n  repository:\n    url: file:///tmp/slow.git\n  policy:\n    taskDefaults:\n      backoff:\n        durationSeconds: 0\n  tasks:\n    - name: crawl\n      title: Crawl\n      role: backend\n      timeoutSeconds: 2\n");
    h.wait_for_phase("slow", "Succeeded", TIMEOUT).await;
    let attempts: Vec<u32> = agents
        .received()
        .iter()
        .map(|r| r.dispatch.attempt)
        .collect();
    assert_eq!(attempts, [1, 2]);
    let message = h.jsonpath("task/slow-crawl", "{.status.message}");
    assert!(message.contains("attempt 2 succeeded"), "{message}");
    let cancels = agents.cancels.lock().unwrap().clone();
    assert!(
        cancels
            .iter()
            .any(|c| c.task.name == "slow-crawl" && c.attempt == 1),
        "the timed-out attempt was cancelled: {cancels:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicate_and_stale_events_change_nothing() {
    use aios_crds::{Usage, bus::TaskEventKind};
    let h = Harness::running("dupes", &["backend"]).await;
    let agents = FakeAgents::start(&h, &["backend"], Duration::from_millis(10), |d| {
        Reply::Succeed(done(d))
    })
    .await;
    h.apply(&single("dup"));
    h.wait_for_phase("dup", "Succeeded", TIMEOUT).await;
    let before = h.task("dup-only");

    let dispatch = agents.received()[0].dispatch.clone();
    let stop = tokio_util::sync::CancellationToken::new();
    let bus = aios_operator::runtime::bus::Bus::connect(&h.amqp_url, None, &stop)
        .await
        .unwrap();
    let again = TaskEventKind::Succeeded {
        output: TaskResult {
            summary: "a second time".into(),
            ..TaskResult::default()
        }
        .into(),
        usage: Usage {
            input_tokens: 5,
            ..Usage::default()
        },
    };
    bus.publish_event(&support::event(&dispatch, "fake-backend", again))
        .await
        .unwrap();
    let late_failure = TaskEventKind::Failed {
        reason: "Late".into(),
        message: "late".into(),
        retryable: true,
        usage: Usage::default(),
    };
    bus.publish_event(&support::event(&dispatch, "fake-backend", late_failure))
        .await
        .unwrap();
    let mut stale = dispatch.clone();
    stale.attempt = 0;
    bus.publish_event(&support::event(
        &stale,
        "fake-backend",
        TaskEventKind::Started,
    ))
    .await
    .unwrap();
    let mut other_uid = dispatch.clone();
    other_uid.task.uid = "a-deleted-task".into();
    bus.publish_event(&support::event(
        &other_uid,
        "fake-backend",
        TaskEventKind::Started,
    ))
    .await
    .unwrap();

    // Wait until the operator has consumed all four, then compare. The stale one
    // carries the token of attempt 1, not of attempt 0: it is rejected, not ignored.
    let start = std::time::Instant::now();
    while h.metric(0, "aios_task_events_total{outcome=\"ignored\"") < 3.0
        || h.metric(0, "aios_task_events_total{outcome=\"rejected\"") < 1.0
    {
        assert!(
            start.elapsed() < TIMEOUT,
            "the operator did not consume the events"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = h.task("dup-only");
    assert_eq!(
        after.metadata.resource_version, before.metadata.resource_version,
        "the Task was not written"
    );
    assert_eq!(
        h.jsonpath("project/dup", "{.status.usage.inputTokens}"),
        "100"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_lettered_dispatch_fails_its_attempt_as_a_poison_message() {
    let h = Harness::running("poison", &["backend"]).await;
    let _agents = FakeAgents::start(&h, &["backend"], Duration::from_millis(10), |_| {
        Reply::Reject
    })
    .await;
    h.apply(&single("poison"));
    h.wait_for_phase("poison", "Failed", TIMEOUT).await;
    assert_eq!(
        h.jsonpath(
            "task/poison-only",
            "{.status.conditions[?(@.type==\"Succeeded\")].reason}"
        ),
        "PoisonMessage"
    );
    assert!(
        h.jsonpath("task/poison-only", "{.status.message}")
            .contains("dead-lettered")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_result_the_api_server_refuses_fails_the_attempt_with_its_message_and_is_not_redelivered()
{
    let h = Harness::running("refused", &["backend"]).await;
    // Larger than the API server takes in one request, on every attempt.
    let _agents = FakeAgents::start(&h, &["backend"], Duration::from_millis(10), |d| {
        let mut output = done(d);
        output.result.summary = "x".repeat(4 * 1024 * 1024);
        Reply::Succeed(output)
    })
    .await;
    h.apply("apiVersion: aios.dev/v1alpha1\nkind: Project\nmetadata:\n  name: huge\nspec:\n  description: A result too large\n  repository:\n    url: file:///tmp/huge.git\n  policy:\n    taskDefaults:\n      maxRetries: 1\n      backoff:\n        durationSeconds: 1\n  tasks:\n    - name: only\n      title: The only task\n      role: backend\n");
    h.wait_for_phase("huge", "Failed", TIMEOUT).await;

    let task = h.task("huge-only");
    let status = task.status.unwrap();
    assert_eq!(status.attempt, 2, "maxRetries 1: both attempts ran");
    let succeeded = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Succeeded")
        .unwrap();
    assert_eq!(succeeded.reason, "ResultRefused");
    assert!(
        succeeded.message.contains("Request entity too large"),
        "the API server's message: {}",
        succeeded.message
    );
    let project = h.jsonpath(
        "project/huge",
        "{.status.conditions[?(@.type==\"Succeeded\")].message}",
    );
    assert!(
        project.contains("ResultRefused") && project.contains("Request entity too large"),
        "{project}"
    );
    let events = h.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=huge-only,reason=ResultRefused",
    ]);
    assert!(events.contains("too large"), "{events}");
    // Each refused outcome was handled once, not redelivered in a loop.
    let refused = h.metric(
        0,
        "aios_task_events_total{outcome=\"refused\",type=\"succeeded\"}",
    );
    assert!((refused - 2.0).abs() < 0.5, "{refused} refused outcomes");
    let log = std::fs::read_to_string(&h.operators[0].log).unwrap();
    assert!(
        !log.contains("it will be redelivered"),
        "{}",
        aios_e2e::process::log_tail(&h.operators[0].log, 20)
    );
}

/// An admission policy that refuses every Task of the namespace: Hera's writes are
/// refused (422), so the Project is `Stalled` with reason `ReconcileFailed` and the API
/// server's message, for a person to act. Once the policy goes, the next pass creates
/// the Tasks, the Project runs to `Succeeded`, and it is no longer Stalled.
#[tokio::test(flavor = "multi_thread")]
async fn a_project_whose_tasks_the_api_server_refuses_is_stalled_until_a_person_acts() {
    let h = Harness::running("frozen", &["backend"]).await;
    let _agents = FakeAgents::start(&h, &["backend"], Duration::from_millis(10), |d| {
        Reply::Succeed(done(d))
    })
    .await;
    let policy = format!("{}-no-tasks", h.ns);
    h.apply(&format!(
        "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicy\nmetadata:\n  name: {policy}\nspec:\n  failurePolicy: Fail\n  matchConstraints:\n    resourceRules:\n      - apiGroups: [aios.dev]\n        apiVersions: ['*']\n        operations: [CREATE]\n        resources: [tasks]\n  validations:\n    - expression: 'false'\n      message: Tasks are frozen in this namespace\n---\napiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicyBinding\nmetadata:\n  name: {policy}\nspec:\n  policyName: {policy}\n  validationActions: [Deny]\n  matchResources:\n    namespaceSelector:\n      matchLabels:\n        kubernetes.io/metadata.name: {}\n",
        h.ns
    ));
    // The API server takes a moment to enforce a new policy: wait until it refuses.
    let probe = "apiVersion: aios.dev/v1alpha1\nkind: Task\nmetadata:\n  name: probe\nspec:\n  project: nowhere\n  title: Probe\n  role: backend\n";
    let start = std::time::Instant::now();
    loop {
        let refused = h.env.kubectl_with_input(
            &["apply", "--dry-run=server", "-n", &h.ns, "-f", "-"],
            Some(probe),
        );
        match refused {
            Err(err) if err.to_string().contains("frozen") => break,
            Err(err) => panic!("the probe failed otherwise: {err}"),
            Ok(_) => {}
        }
        assert!(start.elapsed() < TIMEOUT, "the policy is never enforced");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Six Tasks, each refused: the status names the first in the plan's order, whichever
    // refusal comes first.
    h.apply(concat!(
        "apiVersion: aios.dev/v1alpha1\nkind: Project\nmetadata:\n  name: cold\nspec:\n",
        "  description: Six tasks\n  repository:\n    url: file:///tmp/cold.git\n  tasks:\n",
        "    - name: one\n      title: One\n      role: backend\n",
        "    - name: two\n      title: Task two\n      role: backend\n      dependsOn: [one]\n",
        "    - name: three\n      title: Task three\n      role: backend\n      dependsOn: [one]\n",
        "    - name: four\n      title: Task four\n      role: backend\n      dependsOn: [one]\n",
        "    - name: five\n      title: Task five\n      role: backend\n      dependsOn: [one]\n",
        "    - name: six\n      title: Task six\n      role: backend\n      dependsOn: [one]\n",
    ));
    let stalled = |field: &str| {
        h.jsonpath(
            "project/cold",
            &format!("{{.status.conditions[?(@.type==\"Stalled\")].{field}}}"),
        )
    };
    h.wait_for_value(
        "project/cold",
        "{.status.conditions[?(@.type==\"Stalled\")].reason}",
        "ReconcileFailed",
        TIMEOUT,
    )
    .await;
    assert_eq!(stalled("status"), "True");
    let message = stalled("message");
    assert!(
        message.contains("422") && message.contains("Tasks are frozen in this namespace"),
        "the API server's refusal: {message}"
    );
    assert!(
        message.contains("\"cold-one\""),
        "the first Task refused: {message}"
    );
    // Its passes keep failing, backing off; the status says the same and is not written
    // again (a rewrite would wake the Project ahead of its backoff, and the backoff grow
    // with each such pass).
    let written = h.jsonpath("project/cold", "{.metadata.resourceVersion}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        h.jsonpath("project/cold", "{.metadata.resourceVersion}"),
        written,
        "the stalled Project was written again: {}",
        stalled("message")
    );
    assert!(h.tasks().is_empty(), "no Task got past the policy");

    h.kubectl(&["delete", "validatingadmissionpolicybinding", &policy]);
    h.kubectl(&["delete", "validatingadmissionpolicy", &policy]);
    h.wait_for_phase("cold", "Succeeded", TIMEOUT).await;
    assert_eq!(stalled("status"), "False", "{}", stalled("message"));
    assert_eq!(h.tasks().len(), 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_project_cancels_what_is_in_flight() {
    let h = Harness::running("delete", &["backend"]).await;
    let agents =
        FakeAgents::start(&h, &["backend"], Duration::from_millis(10), |_| Reply::Hang).await;
    h.apply(&single("gone"));
    h.wait_for_value("task/gone-only", "{.status.phase}", "Running", TIMEOUT)
        .await;
    h.kubectl(&["delete", "project", "gone", "--wait=false"]);
    h.kubectl(&["wait", "--for=delete", "task/gone-only", "--timeout=60s"]);
    // The watch saw the Task go: the agents hear at once.
    agents
        .wait_for_cancel(TIMEOUT, |c| c.task.name == "gone-only" && c.attempt == 1)
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_created_apart_from_an_empty_plan_are_the_projects_work() {
    let h = Harness::running("gitops", &["backend"]).await;
    let agents = FakeAgents::start(&h, &["backend"], Duration::from_millis(10), |d| {
        Reply::Succeed(done(d))
    })
    .await;
    // The Tasks first, as a GitOps sync might order them: a Project whose only Tasks
    // have all succeeded is Succeeded, so the Project comes last here.
    for (name, deps) in [("ops-a", "[]"), ("ops-b", "[ops-a]")] {
        h.apply(&format!(
            "apiVersion: aios.dev/v1alpha1\nkind: Task\nmetadata:\n  name: {name}\nspec:\n  project: ops\n  title: {name}\n  role: backend\n  dependsOn: {deps}\n"
        ));
    }
    h.apply("apiVersion: aios.dev/v1alpha1\nkind: Project\nmetadata:\n  name: ops\nspec:\n  description: Tasks come from Git\n  repository:\n    url: file:///tmp/ops.git\n  tasks: []\n");
    h.wait_for_phase("ops", "Succeeded", TIMEOUT).await;
    assert_eq!(agents.order(), ["ops-a", "ops-b"]);
    assert!(
        h.tasks()
            .iter()
            .all(|t| t.metadata.name.as_deref() != Some("ops-plan")),
        "no planning task"
    );
}

/// The attacker's Project: its repository on their server, its secretRef naming the
/// namespace's model key. No agent is asked to send it: the Task fails before dispatch.
#[tokio::test(flavor = "multi_thread")]
async fn a_project_naming_a_secret_not_labelled_for_git_is_never_dispatched() {
    let h = Harness::running("gitcred", &["cto"]).await;
    h.kubectl(&[
        "create",
        "secret",
        "generic",
        "anthropic",
        "--from-literal=api-key=MODEL-API-KEY",
    ]);
    h.kubectl(&[
        "label",
        "secret",
        "anthropic",
        "aios.dev/credential-type=model",
    ]);
    h.kubectl(&[
        "annotate",
        "secret",
        "anthropic",
        "aios.dev/credential-hosts=api.anthropic.com,capture.example",
    ]);
    let agents = FakeAgents::start(&h, &["cto"], Duration::ZERO, |d| {
        plan_reply(d, &serde_json::json!([]))
    })
    .await;
    h.apply("apiVersion: aios.dev/v1alpha1\nkind: Project\nmetadata:\n  name: steal\nspec:\n  description: Anything\n  repository:\n    url: https://capture.example/team/app.git\n    secretRef:\n      name: anthropic\n      key: api-key\n");
    h.wait_for_phase("steal", "Failed", TIMEOUT).await;
    let planner = h.task("steal-plan");
    let status = planner.status.unwrap();
    let message = status.message.unwrap_or_default();
    assert!(
        message.contains("CredentialRefused")
            && message.contains("\"anthropic\"")
            && message.contains("aios.dev/credential-type=git"),
        "{message}"
    );
    assert!(!message.contains("MODEL-API-KEY"));
    assert!(
        agents.received().is_empty(),
        "a dispatch carrying the credential reached an agent"
    );
}

/// A Task an earlier version dispatched carries the cancel finalizer (owned by the
/// operator's finalizer field manager). Deleting it (with its Project) still cancels its
/// attempt, and the finalizer is removed.
#[tokio::test(flavor = "multi_thread")]
async fn a_task_with_the_finalizer_of_an_earlier_version_is_still_cancelled_and_let_go() {
    let h = Harness::running("legacy", &["backend"]).await;
    let agents = FakeAgents::start(&h, &["backend"], Duration::ZERO, |_| Reply::Hang).await;
    h.apply(&single("legacy"));
    h.wait_for_value("task/legacy-only", "{.status.phase}", "Running", TIMEOUT)
        .await;
    h.env
        .kubectl_with_input(
            &[
                "apply",
                "-n",
                &h.ns,
                "--server-side",
                "--field-manager=aios-operator/finalizer",
                "-f",
                "-",
            ],
            Some(
                "apiVersion: aios.dev/v1alpha1\nkind: Task\nmetadata:\n  name: legacy-only\n  finalizers: [aios.dev/cancel-in-flight]\n",
            ),
        )
        .unwrap();
    assert_eq!(
        h.jsonpath("task/legacy-only", "{.metadata.finalizers[0]}"),
        "aios.dev/cancel-in-flight"
    );
    // The Project goes, so Hera does not make its Task again.
    h.kubectl(&["delete", "project", "legacy", "--wait=false"]);
    h.kubectl(&["wait", "--for=delete", "task/legacy-only", "--timeout=60s"]);
    agents
        .wait_for_cancel(TIMEOUT, |c| c.task.name == "legacy-only")
        .await;
}

/// Sends a heartbeat for every dispatch `agents` took, `rounds` times, `every` apart.
async fn beat(h: &Harness, agents: &FakeAgents, rounds: u32, every: Duration) {
    let bus = aios_bus::Bus::connect(
        &h.amqp_url,
        None,
        &tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap();
    let dispatches: Vec<_> = agents.received().into_iter().map(|r| r.dispatch).collect();
    for _ in 0..rounds {
        for dispatch in &dispatches {
            bus.publish_event(&support::event(
                dispatch,
                "fake-backend",
                aios_crds::bus::TaskEventKind::Heartbeat,
            ))
            .await
            .unwrap();
        }
        tokio::time::sleep(every).await;
    }
    bus.close().await;
}

/// A hundred running tasks beating every 2 s for 25 s, with a 600 s heartbeat timeout:
/// no beat is due to be recorded (one is, at most, every half timeout, and the timeout
/// is long enough that slow dispatch under load cannot make one due), so no Task is
/// written at all — each keeps its resourceVersion — and every beat is counted as
/// skipped, none as applied.
#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_tasks_heartbeating_cause_no_task_writes() {
    const TASKS: usize = 100;
    let h = Harness::running("quiet-beats", &["backend"]).await;
    let agents = FakeAgents::start(&h, &["backend"], Duration::ZERO, |_| Reply::Hang).await;
    let tasks = (0..TASKS)
        .map(|i| format!("    - name: t{i}\n      title: Task {i}\n      role: backend\n"))
        .collect::<Vec<_>>()
        .concat();
    h.apply(&format!(
        "apiVersion: aios.dev/v1alpha1\nkind: Project\nmetadata:\n  name: quiet\nspec:\n  description: Long tasks\n  repository:\n    url: file:///tmp/quiet.git\n  policy:\n    maxParallelTasks: {TASKS}\n    taskDefaults:\n      heartbeatTimeoutSeconds: 600\n  tasks:\n{tasks}"
    ));
    let versions = || -> BTreeMap<String, (String, String)> {
        h.tasks()
            .into_iter()
            .map(|t| {
                let phase = format!("{:?}", t.status.as_ref().and_then(|s| s.phase));
                (
                    t.name_any(),
                    (t.resource_version().unwrap_or_default(), phase),
                )
            })
            .collect()
    };
    let deadline = std::time::Instant::now() + TIMEOUT * 2;
    let before = loop {
        let now = versions();
        if now.len() == TASKS && now.values().all(|(_, phase)| phase == "Some(Running)") {
            break now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{TASKS} tasks running"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(agents.received().len(), TASKS);
    // A beat is skipped from the cache (coalesced) or, when the cache has not yet
    // shown the Task Running, after a read (ignored); either way nothing is written.
    let skipped = |outcomes: &BTreeMap<String, f64>| {
        ["coalesced", "ignored"]
            .iter()
            .filter_map(|o| outcomes.get(*o))
            .sum::<f64>()
    };
    let skipped_before = skipped(&heartbeat_outcomes(&h));
    let rounds: u32 = 13;
    beat(&h, &agents, rounds, Duration::from_secs(2)).await;
    // Every beat was handled (counted) before the versions are compared.
    let expected = f64::from(rounds) * f64::from(u32::try_from(TASKS).unwrap());
    let start = std::time::Instant::now();
    let outcomes = loop {
        let outcomes = heartbeat_outcomes(&h);
        if skipped(&outcomes) - skipped_before >= expected || start.elapsed() > TIMEOUT {
            break outcomes;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let handled = skipped(&outcomes) - skipped_before;
    assert!(
        (handled - expected).abs() < 0.5,
        "{handled} of {expected} beats skipped; heartbeat outcomes: {outcomes:?}"
    );
    assert!(
        outcomes.get("applied").copied().unwrap_or(0.0) < 0.5,
        "beats were written: {outcomes:?}"
    );
    let after = versions();
    let written: Vec<&String> = before
        .iter()
        .filter(|(name, version)| after.get(*name) != Some(version))
        .map(|(name, _)| name)
        .collect();
    assert!(
        written.is_empty(),
        "Tasks written while they only beat: {written:?}"
    );
}

/// The operator's count of heartbeat events by outcome.
fn heartbeat_outcomes(h: &Harness) -> BTreeMap<String, f64> {
    h.metric_by(
        0,
        "aios_task_events_total",
        r#"type="heartbeat""#,
        "outcome",
    )
}

/// Agents beat every half second; the heartbeat timeout is 10 s. The operator records a
/// beat at most once per 5 s per task (the rest cost no API call), and the tasks stay
/// Running well past the timeout: what it records is always recent enough.
#[tokio::test(flavor = "multi_thread")]
async fn heartbeats_keep_tasks_alive_with_one_write_per_half_timeout() {
    let h = Harness::running("beats", &["backend"]).await;
    let agents =
        FakeAgents::start(&h, &["backend"], Duration::from_millis(10), |_| Reply::Hang).await;
    let tasks = (0..5)
        .map(|i| format!("    - name: t{i}\n      title: Task {i}\n      role: backend\n"))
        .collect::<Vec<_>>()
        .concat();
    h.apply(&format!(
        "apiVersion: aios.dev/v1alpha1\nkind: Project\nmetadata:\n  name: beats\nspec:\n  description: Long tasks\n  repository:\n    url: file:///tmp/beats.git\n  policy:\n    maxParallelTasks: 5\n    taskDefaults:\n      heartbeatTimeoutSeconds: 10\n  tasks:\n{tasks}"
    ));
    let deadline = std::time::Instant::now() + TIMEOUT;
    while agents.received().len() < 5
        || (0..5).any(|i| h.jsonpath(&format!("task/beats-t{i}"), "{.status.phase}") != "Running")
    {
        assert!(std::time::Instant::now() < deadline, "five tasks running");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    beat(&h, &agents, 30, Duration::from_millis(500)).await;
    for i in 0..5 {
        assert_eq!(
            h.jsonpath(&format!("task/beats-t{i}"), "{.status.phase}"),
            "Running",
            "t{i} is alive after 15 s of beats with a 10 s timeout"
        );
    }
    // The last beats sent may still be in hand: wait until all 150 are counted.
    let counted = || {
        let outcome = |o: &str| {
            h.metric(
                0,
                &format!(r#"aios_task_events_total{{outcome="{o}",type="heartbeat"}}"#),
            )
        };
        (outcome("applied"), outcome("coalesced"))
    };
    let start = std::time::Instant::now();
    let (applied, coalesced) = loop {
        let (applied, coalesced) = counted();
        if applied + coalesced >= 149.5 || start.elapsed() > Duration::from_secs(10) {
            break (applied, coalesced);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // 15 s of beats: at most four writes a task (one per 5 s, and one at the edge).
    assert!(applied <= 20.0, "{applied} heartbeats written");
    assert!(
        applied >= 10.0,
        "{applied}: beats were recorded as time went on"
    );
    assert!(
        (applied + coalesced - 150.0).abs() < 0.5,
        "every beat counted once: {applied} + {coalesced}"
    );
}

/// An Agent that appears or changes wakes only the Projects with a Task waiting for its
/// role: with twenty finished Projects, a change to an Agent nobody waits for reconciles
/// none of them, and the Agent a Project waits for gets its Task dispatched.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_wakes_only_the_projects_waiting_for_its_role() {
    let h = Harness::running("wake", &["backend"]).await;
    let agents = FakeAgents::start(&h, &["backend", "qa"], Duration::from_millis(10), |d| {
        Reply::Succeed(done(d))
    })
    .await;
    for i in 0..20 {
        h.apply(&single(&format!("idle{i}")));
    }
    for i in 0..20 {
        h.wait_for_phase(&format!("idle{i}"), "Succeeded", TIMEOUT)
            .await;
    }
    h.apply(&single("waits").replace("role: backend", "role: qa"));
    h.wait_for_value(
        "task/waits-only",
        "{.status.message}",
        "waiting for an Agent that serves role qa",
        TIMEOUT,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let projects = r#"aios_reconciles_total{controller="project"}"#;
    let before = h.metric(0, projects);

    // Nobody waits for a backend Agent.
    h.kubectl(&["label", "agent", "backend", "touched=yes"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = h.metric(0, projects);
    assert!(
        (after - before).abs() < 0.5,
        "{} Project reconciles for an Agent nobody waits for",
        after - before
    );

    // The qa Agent appears: the waiting Project runs.
    h.apply_agents(&["qa"]);
    h.wait_for_phase("waits", "Succeeded", TIMEOUT).await;
    assert!(agents.order().contains(&"waits-only".to_owned()));
    let woken = h.metric(0, projects) - after;
    assert!(
        woken < 15.0,
        "{woken} Project reconciles to run one waiting Project"
    );
}

/// A pass over many new Tasks that wait dispatches the ready one at once: what the
/// waiting ones say (Pending, and what they wait for) is written beside the pass, and
/// all of it is written.
#[tokio::test(flavor = "multi_thread")]
async fn the_ready_task_goes_out_before_what_the_waiting_ones_say_is_written() {
    const WAITING: usize = 300;
    let all = f64::from(u32::try_from(WAITING).unwrap());
    let h = Harness::running("fanout", &["backend"]).await;
    // The root's answer comes late enough for every waiting status to be written first.
    let agents = FakeAgents::start(&h, &["backend"], Duration::from_secs(8), |d| {
        Reply::Succeed(done(d))
    })
    .await;
    // An explicit plan holds at most 100 tasks: these are made apart, as the scale
    // benchmark makes them.
    h.apply("apiVersion: aios.dev/v1alpha1\nkind: Project\nmetadata:\n  name: fan\nspec:\n  description: One root, many leaves\n  repository:\n    url: file:///tmp/fan.git\n  suspend: true\n  policy:\n    maxParallelTasks: 1000\n  tasks: []\n");
    let task = |name: &str, depends_on: &str| {
        format!(
            "apiVersion: aios.dev/v1alpha1\nkind: Task\nmetadata:\n  name: {name}\nspec:\n  project: fan\n  title: {name}\n  role: backend\n  dependsOn: [{depends_on}]\n"
        )
    };
    let mut tasks = vec![task("root", "")];
    tasks.extend((0..WAITING).map(|i| task(&format!("leaf{i}"), "root")));
    h.apply(&tasks.join("---\n"));
    let deadline = std::time::Instant::now() + TIMEOUT;
    while h.kubectl(&["get", "tasks", "-o", "name"]).lines().count() < WAITING + 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the Tasks were never all made"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let written = r#"aios_task_waiting_writes_total{outcome="written"}"#;
    assert!(h.metric(0, written) < 0.5, "nothing waits while suspended");

    h.kubectl(&[
        "patch",
        "project",
        "fan",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"suspend":false}}"#,
    ]);
    while !agents.order().contains(&"root".to_owned()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the root was never dispatched"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let when_dispatched = h.metric(0, written);
    assert!(
        when_dispatched < all,
        "the root went out only after all {when_dispatched} waiting statuses were written"
    );

    // Every leaf says what it waits for, before the root's answer.
    h.wait_for_value(
        "task/leaf299",
        "{.status.message}",
        "waiting for root",
        TIMEOUT,
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while h.metric(0, written) < all {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {WAITING} waiting statuses written",
            h.metric(0, written)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let phases = h.kubectl(&[
        "get",
        "tasks",
        "-o",
        "jsonpath={range .items[*]}{.status.phase}/{.status.message}{\"\\n\"}{end}",
    ]);
    let waiting = phases
        .lines()
        .filter(|l| *l == "Pending/waiting for root")
        .count();
    assert_eq!(waiting, WAITING, "{phases}");
    assert_eq!(agents.order(), ["root"], "the leaves wait for the root");

    h.wait_for_phase("fan", "Succeeded", TIMEOUT).await;
    // The Project status is written beside the passes, only the newest of those handed
    // over: the one that lands last counts every task.
    h.wait_for_value(
        "project/fan",
        "{.status.progress}",
        &format!("{}/{}", WAITING + 1, WAITING + 1),
        Duration::from_secs(5),
    )
    .await;
    // Each leaf's dispatch is dated from when the operator knew the root's success.
    let dated = h.metric(0, "aios_dispatch_delay_seconds_count");
    assert!(
        (dated - all).abs() < 0.5,
        "the dispatch delay of every leaf: {dated}"
    );
}

/// A busy Project's status is written at most once a second, whatever the number of
/// passes, except when its phase changes (written at once); and what is written last is
/// the whole truth. A chain of forty tasks of a tenth of a second each: a change of the
/// Project's counts every tenth of a second or so, for about five seconds, each outcome
/// asking for a pass. Counted on a watch of the Project: every change of its status is
/// one write.
#[tokio::test(flavor = "multi_thread")]
async fn a_busy_project_s_status_is_written_at_most_once_a_second() {
    const TASKS: usize = 40;
    let h = Harness::running("status-writes", &["backend"]).await;
    let _agents = FakeAgents::start(&h, &["backend"], Duration::from_millis(100), |d| {
        Reply::Succeed(done(d))
    })
    .await;
    let mut tasks = String::new();
    for i in 0..TASKS {
        let _ = writeln!(
            tasks,
            "    - name: t{i}\n      title: Task {i}\n      role: backend"
        );
        if i > 0 {
            let _ = writeln!(tasks, "      dependsOn: [t{}]", i - 1);
        }
    }
    let projects: Api<Project> = Api::namespaced(h.client().await, &h.ns);
    // Every change of the status the watch shows, and when; the Project is made once the
    // watch is listening, so that its first writes are not seen late, all at once.
    let writes = Arc::new(Mutex::new(Vec::<(Instant, ProjectStatus)>::new()));
    let (listening, listens) = tokio::sync::oneshot::channel();
    let watch = tokio::spawn({
        let writes = writes.clone();
        let mut listening = Some(listening);
        let config = watcher::Config::default().fields("metadata.name=busy");
        watcher(projects.clone(), config).for_each(move |event| {
            match event {
                Ok(watcher::Event::InitDone) => {
                    listening.take().map(|l| l.send(()));
                }
                Ok(watcher::Event::Apply(project) | watcher::Event::InitApply(project)) => {
                    if let Some(status) = project.status {
                        let mut writes = writes.lock().unwrap();
                        if writes.last().is_none_or(|(_, last)| *last != status) {
                            writes.push((Instant::now(), status));
                        }
                    }
                }
                _ => {}
            }
            std::future::ready(())
        })
    });
    listens.await.unwrap();
    let passes_before = project_passes(&h);
    h.apply(&format!(
        "apiVersion: aios.dev/v1alpha1\nkind: Project\nmetadata:\n  name: busy\nspec:\n  description: Busy\n  repository:\n    url: file:///tmp/busy.git\n  tasks:\n{tasks}"
    ));
    h.wait_for_phase("busy", "Succeeded", TIMEOUT * 2).await;
    // Anything written after the phase (none expected) would show within the interval.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    watch.abort();
    let passes = project_passes(&h) - passes_before;
    let writes = writes.lock().unwrap().clone();

    let (_, last) = writes.last().expect("the status was written");
    assert_eq!(last.phase, Some(ProjectPhase::Succeeded));
    let total = i32::try_from(TASKS).unwrap();
    assert_eq!(
        (last.tasks.total, last.tasks.succeeded),
        (total, total),
        "the last status counts every task: {last:?}"
    );
    // A write without a phase change comes a second after the one before at the
    // earliest: over the span of the writes seen, at most one a second, give or take
    // one for when the watch showed the first and the last.
    let span = writes.last().unwrap().0.duration_since(writes[0].0);
    let gaps: Vec<(Duration, Option<ProjectPhase>)> = writes
        .windows(2)
        .map(|pair| (pair[1].0.duration_since(pair[0].0), pair[1].1.phase))
        .collect();
    let steady = writes
        .windows(2)
        .filter(|pair| pair[1].1.phase == pair[0].1.phase)
        .count();
    let steady = u32::try_from(steady).unwrap();
    assert!(
        f64::from(steady) <= span.as_secs_f64() + 2.0,
        "{steady} writes without a phase change over {span:?}; each write's gap from the one before, and its phase: {gaps:?}"
    );
    let written = u32::try_from(writes.len()).unwrap();
    assert!(
        passes >= 3.0 * f64::from(written),
        "{passes} passes and {written} status writes over {span:?}: too few passes to show the writes coalesced"
    );
}

/// A Task's outcome that can only move its Project's status wakes the Project within a
/// second, with the others of that second; one that readies a dependent wakes it at
/// once. Sixty tasks run at once and answer together; a sixty-first depends on them all.
/// Their sixty outcomes wake the Project a few times (they woke it once each before);
/// the last of them, which readies the sixty-first, wakes it at once: its dispatch is
/// within 250 ms of the operator knowing the last success (coalesced with the others,
/// it would wait up to a second: three times in four longer than that).
#[tokio::test(flavor = "multi_thread")]
async fn outcomes_that_only_move_the_status_wake_the_project_a_few_times() {
    const TASKS: usize = 60;
    let h = Harness::running("soon", &["backend"]).await;
    let agents = FakeAgents::start(&h, &["backend"], Duration::from_millis(300), |d| {
        Reply::Succeed(done(d))
    })
    .await;
    // Made apart from the Project (an empty plan): a plan's task has 20 dependencies
    // at most, a Task more.
    h.apply(
        "apiVersion: aios.dev/v1alpha1\nkind: Project\nmetadata:\n  name: soon\nspec:\n  description: Wide\n  repository:\n    url: file:///tmp/soon.git\n  suspend: true\n  policy:\n    maxParallelTasks: 100\n  tasks: []\n",
    );
    let task = |name: &str, deps: &[String]| {
        format!(
            "apiVersion: aios.dev/v1alpha1\nkind: Task\nmetadata:\n  name: {name}\nspec:\n  project: soon\n  title: Do {name}\n  role: backend\n  dependsOn: [{}]\n",
            deps.join(", ")
        )
    };
    let all: Vec<String> = (0..TASKS).map(|i| format!("t{i}")).collect();
    let mut documents: Vec<String> = all.iter().map(|name| task(name, &[])).collect();
    documents.push(task("last", &all));
    h.apply(&documents.join("---\n"));
    // The Tasks counted by the Project: the passes they call for done.
    h.wait_for_value(
        "project/soon",
        "{.status.progress}",
        &format!("0/{}", TASKS + 1),
        TIMEOUT,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let passes_before = project_passes(&h);
    h.kubectl(&[
        "patch",
        "project",
        "soon",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"suspend":false}}"#,
    ]);
    h.wait_for_phase("soon", "Succeeded", TIMEOUT).await;
    let passes = project_passes(&h) - passes_before;
    assert_eq!(agents.order().last().map(String::as_str), Some("last"));
    // The unsuspension's pass, a few a second while the sixty run (recorded Queued and
    // Running, then their outcomes), the one that dispatches `last`, and its outcome's.
    assert!(
        passes <= 12.0,
        "{passes} Project passes for {TASKS} outcomes and one dispatch after them"
    );
    // Only `last` has dependencies: the one dispatch dated.
    let buckets = h.metric_by(0, "aios_dispatch_delay_seconds_bucket", "", "le");
    let within = buckets.get("0.25").copied().unwrap_or_default();
    let dated = h.metric(0, "aios_dispatch_delay_seconds_count");
    assert!(
        (dated - 1.0).abs() < 0.5 && (within - 1.0).abs() < 0.5,
        "{within} of {dated} dispatches after their dependencies within 250 ms: {buckets:?}"
    );
}

/// How many Project passes the test's operator has made.
fn project_passes(h: &Harness) -> f64 {
    h.metric(
        0,
        "aios_reconcile_duration_seconds_count{controller=\"project\"}",
    )
}
