#![allow(clippy::unwrap_used)]

use aios_crds::{
    AgentStatus, ModelProviderStatus, ProjectPhase, ProjectStatus, TaskPhase, Usage,
    project::Budget,
};
use prometheus::{Encoder, TextEncoder};

use super::*;
use crate::testing::{project, task, with_phase};

fn text(snapshot: &Snapshot) -> String {
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&families(snapshot), &mut buf)
        .unwrap();
    String::from_utf8(buf).unwrap()
}

fn qa(mut task: Task) -> Task {
    task.spec.role = aios_crds::DnsLabel::new("qa").unwrap();
    task
}

fn agent(name: &str, role: &str, desired: i32, ready: i32) -> Arc<Agent> {
    let mut agent = crate::testing::agent("team-a", name, role);
    agent.status = Some(AgentStatus {
        desired_replicas: desired,
        ready_replicas: ready,
        ..AgentStatus::default()
    });
    Arc::new(agent)
}

fn provider(name: &str, ready: bool) -> Arc<ModelProvider> {
    let mut provider = crate::testing::provider("team-a", name);
    provider.status = Some(ModelProviderStatus {
        ready,
        ..ModelProviderStatus::default()
    });
    Arc::new(provider)
}

fn running_project(name: &str, phase: ProjectPhase, usage: Usage) -> Arc<Project> {
    let mut p = project(name);
    p.spec.models.budget = Some(Budget {
        tokens: Some(1000),
        usd: Some(2.0),
    });
    p.status = Some(ProjectStatus {
        phase: Some(phase),
        local_ratio: Some(0.5),
        usage,
        ..ProjectStatus::default()
    });
    Arc::new(p)
}

#[test]
fn a_standby_exports_only_that_it_does_not_lead() {
    let snapshot = Snapshot {
        leading: false,
        tasks: vec![Arc::new(task("a", &[]))],
        ..Snapshot::default()
    };
    let text = text(&snapshot);
    assert!(text.contains("aios_leader 0"), "{text}");
    assert!(!text.contains("aios_tasks"), "{text}");
}

#[test]
fn the_caches_become_gauges_with_bounded_labels() {
    let usage = Usage {
        input_tokens: 600,
        output_tokens: 300,
        cost_usd: 1.0,
        ..Usage::default()
    };
    let snapshot = Snapshot {
        leading: true,
        tasks: vec![
            Arc::new(with_phase(task("a", &[]), TaskPhase::Running)),
            Arc::new(with_phase(task("b", &[]), TaskPhase::Running)),
            Arc::new(with_phase(qa(task("c", &[])), TaskPhase::Succeeded)),
        ],
        projects: vec![
            running_project("live", ProjectPhase::Running, usage.clone()),
            running_project("done", ProjectPhase::Succeeded, usage),
        ],
        agents: vec![agent("apollo", "backend", 3, 1)],
        providers: vec![provider("local", true), provider("cloud", false)],
        queues: vec![QueueDepth {
            namespace: "team-a".into(),
            role: "backend".into(),
            ready: 4,
            unacked: Some(2),
            consumers: 1,
        }],
        failing: {
            let backoffs = crate::runtime::backoff::Backoffs::default();
            for _ in 0..3 {
                backoffs.failed("agent", "team-a/apollo");
            }
            backoffs.failed("agent", "team-a/athena");
            backoffs.snapshot()
        },
    };
    let text = text(&snapshot);
    for line in [
        "aios_leader 1",
        r#"aios_tasks{phase="Running",role="backend"} 2"#,
        r#"aios_tasks{phase="Succeeded",role="qa"} 1"#,
        r#"aios_projects{namespace="team-a",phase="Running"} 1"#,
        r#"aios_projects{namespace="team-a",phase="Succeeded"} 1"#,
        // Usage sums every Project of the namespace, finished or not.
        r#"aios_usage_tokens{direction="input",namespace="team-a"} 1200"#,
        r#"aios_usage_tokens{direction="output",namespace="team-a"} 600"#,
        r#"aios_usage_cost_usd{namespace="team-a"} 2"#,
        r#"aios_project_local_ratio{namespace="team-a",project="live"} 0.5"#,
        r#"aios_project_local_ratio_target{namespace="team-a",project="live"} 0.8"#,
        r#"aios_project_budget_used_ratio{limit="tokens",namespace="team-a",project="live"} 0.9"#,
        r#"aios_project_budget_used_ratio{limit="usd",namespace="team-a",project="live"} 0.5"#,
        r#"aios_pool_desired_replicas{agent="apollo",namespace="team-a",role="backend"} 3"#,
        r#"aios_pool_ready_replicas{agent="apollo",namespace="team-a",role="backend"} 1"#,
        r#"aios_model_provider_ready{namespace="team-a",provider="local",tier="Local"} 1"#,
        r#"aios_model_provider_ready{namespace="team-a",provider="cloud",tier="Local"} 0"#,
        r#"aios_queue_messages{namespace="team-a",role="backend",state="ready"} 4"#,
        r#"aios_queue_messages{namespace="team-a",role="backend",state="unacked"} 2"#,
        r#"aios_queue_consumers{namespace="team-a",role="backend"} 1"#,
        r#"aios_reconcile_failing_objects{controller="agent"} 2"#,
        r#"aios_reconcile_consecutive_failures_max{controller="agent"} 3"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    // A finished Project leaves no per-Project series behind.
    assert!(!text.contains(r#"project="done""#), "{text}");
}

#[test]
fn without_the_management_api_the_unacked_count_is_left_out() {
    let snapshot = Snapshot {
        leading: true,
        queues: vec![QueueDepth {
            namespace: "team-a".into(),
            role: "qa".into(),
            ready: 0,
            unacked: None,
            consumers: 0,
        }],
        ..Snapshot::default()
    };
    let text = text(&snapshot);
    assert!(text.contains(r#"state="ready"} 0"#), "{text}");
    assert!(!text.contains("unacked\""), "{text}");
}

#[test]
fn the_vhost_comes_from_the_amqp_url_decoded() {
    assert_eq!(vhost_of("amqp://u:p@host:5672/%2f"), "/");
    assert_eq!(vhost_of("amqp://u:p@host:5672/"), "/");
    assert_eq!(vhost_of("amqp://u:p@host:5672"), "/");
    assert_eq!(vhost_of("amqps://u:p@host:5671/team%2Da"), "team-a");
    assert_eq!(vhost_of("amqp://host/aios"), "aios");
}

/// The management API is asked once per queue with one set of credentials (decoded from
/// the URL's user info): a request carrying them twice is refused by RabbitMQ.
#[tokio::test]
async fn the_management_api_is_asked_with_the_urls_credentials_once() {
    use wiremock::{Mock, MockServer, ResponseTemplate, matchers};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = MockServer::start().await;
    Mock::given(matchers::method("GET"))
        .and(matchers::path(
            "/api/queues/team%2Fa/aios.tasks.team-a.backend",
        ))
        .and(matchers::basic_auth("watcher", "p@ss"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "messages_ready": 7, "messages_unacknowledged": 3, "consumers": 2
        })))
        .expect(1)
        .mount(&server)
        .await;
    let base =
        reqwest::Url::parse(&server.uri().replace("http://", "http://watcher:p%40ss@")).unwrap();
    let read = read_management(
        &reqwest::Client::new(),
        &base,
        "team/a",
        "aios.tasks.team-a.backend",
    )
    .await
    .unwrap();
    assert_eq!(read, (7, Some(3), 2));
    let requests = server.received_requests().await.unwrap();
    let auth: Vec<_> = requests[0]
        .headers
        .get_all("authorization")
        .iter()
        .collect();
    assert_eq!(auth.len(), 1, "one Authorization header");

    let wrong =
        reqwest::Url::parse(&server.uri().replace("http://", "http://watcher:nope@")).unwrap();
    let refused = read_management(
        &reqwest::Client::new(),
        &wrong,
        "team/a",
        "aios.tasks.team-a.backend",
    )
    .await;
    assert!(refused.is_err(), "{refused:?}");
    assert!(
        !refused.unwrap_err().contains("nope"),
        "no password in the error"
    );
}
