//! Agents' reports are believed only with their attempt's token. Every namespace shares
//! one bus, so any agent can publish an event naming any Task; here an agent of one
//! namespace tries to finish, fail, keep alive and re-plan a Task of another.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::time::{Duration, Instant};

use aios_crds::{
    TaskResult, Usage,
    bus::{ObjectRef, TaskDispatch, TaskEvent, TaskEventKind, TaskOutput},
};
use aios_operator::runtime::bus::Bus;
use support::{FakeAgents, Harness, Reply, single};
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_cannot_report_on_another_namespaces_task() {
    // The victim's namespace: its agent takes the Task, says Started, then nothing.
    let victim = Harness::running("victim", &["backend"]).await;
    let _victim_agents =
        FakeAgents::start(&victim, &["backend"], Duration::ZERO, |_| Reply::Hang).await;
    victim.apply(&single("shop"));
    victim
        .wait_for_value("task/shop-only", "{.status.phase}", "Running", TIMEOUT)
        .await;

    let (_attacker, stolen) = attackers_own_dispatch(&victim).await;

    let before = victim.task("shop-only");
    let target = ObjectRef {
        namespace: victim.ns.clone(),
        name: "shop-only".into(),
        uid: before.metadata.uid.clone().unwrap(),
    };
    let project = ObjectRef {
        namespace: victim.ns.clone(),
        name: "shop".into(),
        uid: victim.jsonpath("project/shop", "{.metadata.uid}"),
    };
    let forge = |kind: TaskEventKind, token: &str| TaskEvent {
        task: target.clone(),
        project: project.clone(),
        token: token.to_owned(),
        agent: "mallory".into(),
        ..support::event(&stolen, "mallory", kind)
    };
    let succeeded = TaskEventKind::Succeeded {
        output: TaskOutput {
            result: TaskResult {
                summary: "FORGED".into(),
                ..TaskResult::default()
            },
            plan: Some(
                serde_json::from_value(serde_json::json!([
                    {"name": "exfiltrate", "title": "Exfiltrate", "role": "backend"}
                ]))
                .unwrap(),
            ),
        },
        usage: Usage::default(),
    };
    let failed = TaskEventKind::Failed {
        reason: "Forged".into(),
        message: "FORGED".into(),
        retryable: false,
        usage: Usage::default(),
    };
    let stop = CancellationToken::new();
    let bus = Bus::connect(&victim.amqp_url, None, &stop).await.unwrap();
    for event in [
        forge(succeeded.clone(), &stolen.token),
        forge(failed.clone(), &stolen.token),
        forge(TaskEventKind::Heartbeat, &stolen.token),
        // A token made up, and none at all.
        forge(succeeded, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        forge(failed, ""),
    ] {
        bus.publish_event(&event).await.unwrap();
    }

    let rejected = |reason: &str| {
        victim.metric(
            0,
            &format!("aios_rejected_messages_total{{message=\"TaskEvent\",reason=\"{reason}\"}}"),
        )
    };
    let start = Instant::now();
    while rejected("bad_token") < 4.0 || rejected("missing_token") < 1.0 {
        assert!(
            start.elapsed() < TIMEOUT,
            "the forged events were not all rejected: bad {}, missing {}",
            rejected("bad_token"),
            rejected("missing_token")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = victim.task("shop-only");
    assert_eq!(
        after.metadata.resource_version, before.metadata.resource_version,
        "the victim's Task was not written"
    );
    assert_eq!(
        victim.jsonpath("project/shop", "{.status.phase}"),
        "Running"
    );
    assert!(
        !victim
            .kubectl(&["get", "configmaps", "-o", "name"])
            .contains("plan"),
        "no forged plan was kept"
    );
    let log = std::fs::read_to_string(&victim.operators[0].log).unwrap();
    assert!(
        log.contains("rejected a message without its attempt's token")
            && log.contains("mallory")
            && log.contains(&victim.ns),
        "each rejection is logged with what it claimed: {}",
        aios_e2e::process::log_tail(&victim.operators[0].log, 20)
    );
}

/// The attacker's namespace, on the victim's bus and under the same operator key (as
/// one operator watching both namespaces), and the dispatch its agent got: a real
/// token, of its own attempt.
async fn attackers_own_dispatch(victim: &Harness) -> (Harness, TaskDispatch) {
    let mut attacker = Harness::sharing_bus("attacker", victim);
    attacker.serve_models().await;
    attacker.apply_agents(&["backend"]);
    attacker.operator_env = vec![
        ("POD_NAMESPACE".into(), victim.ns.clone()),
        ("AIOS_LEASE_NAME".into(), "aios-operator-attacker".into()),
    ];
    attacker.start_operator("op-attacker");
    let own = FakeAgents::start(&attacker, &["backend"], Duration::ZERO, |_| Reply::Hang).await;
    attacker.apply(&single("loot"));
    let start = Instant::now();
    while own.received().is_empty() {
        assert!(start.elapsed() < TIMEOUT, "the attacker got no dispatch");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stolen = own.received()[0].dispatch.clone();
    assert_eq!(stolen.task.namespace, attacker.ns);
    assert!(!stolen.token.is_empty(), "dispatches carry a token");
    // From here only the victim's operator reads the events.
    attacker.kill_operator(0);
    (attacker, stolen)
}
