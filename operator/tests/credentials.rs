//! The credential endpoint, played by an attacker who holds one real attempt token: the
//! attempt gets its Project's repository token and its namespace's model key, and
//! nothing else — not another Project's token, not an unlabelled Secret, not with a
//! made-up or another attempt's token. Agent pods carry no credential, so adding a
//! ModelProvider leaves their pod template as it was.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::time::{Duration, Instant};

use aios_crds::{
    bus::TaskDispatch,
    common::SecretKeyRef,
    credentials::{CredentialRequest, CredentialResponse, PATH, Purpose},
};
use support::{FakeAgents, Harness, Reply};

const TIMEOUT: Duration = Duration::from_secs(60);

/// Every value a refused answer must never carry.
const VALUES: [&str; 4] = ["REPO-TOKEN", "OTHER-TOKEN", "MODEL-KEY", "DB-PASSWORD"];

fn secret(h: &Harness, name: &str, literal: &str, kind: Option<&str>, hosts: &str) {
    h.kubectl(&[
        "create",
        "secret",
        "generic",
        name,
        &format!("--from-literal={literal}"),
    ]);
    if let Some(kind) = kind {
        h.kubectl(&[
            "label",
            "secret",
            name,
            &format!("aios.dev/credential-type={kind}"),
        ]);
        h.kubectl(&[
            "annotate",
            "secret",
            name,
            &format!("aios.dev/credential-hosts={hosts}"),
        ]);
    }
}

/// Asks operator 0 of `h` for `secret/key` as attempt `attempt` of `dispatch`'s Task
/// with `token`; the HTTP status and the answer.
async fn ask(
    h: &Harness,
    dispatch: &TaskDispatch,
    (attempt, token, purpose, secret): (u32, &str, Purpose, &str),
) -> (u16, CredentialResponse) {
    let (name, key) = secret.split_once('/').unwrap();
    let request = CredentialRequest {
        task: dispatch.task.clone(),
        attempt,
        token: token.to_owned(),
        purpose,
        secret: SecretKeyRef {
            name: name.to_owned(),
            key: key.to_owned(),
        },
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let response = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{}{PATH}",
            h.operators[0].http_port
        ))
        .json(&request)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap())
}

/// A provider `name` naming the key `key` of Secret `secret`; its endpoint is a closed
/// local port (it is probed, and is Unreachable: its Secret allowed the probe).
fn cloud_provider(h: &Harness, name: &str, secret: &str) {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    h.apply(&format!(
        "apiVersion: aios.dev/v1alpha1\nkind: ModelProvider\nmetadata:\n  name: {name}\nspec:\n  type: OpenAI\n  tier: Cloud\n  models:\n    - name: gpt-4o\n  endpoint:\n    url: https://127.0.0.1:{port}/v1\n    credentialsRef:\n      name: {secret}\n      key: key\n"
    ));
}

/// A request that must be refused: attempt, token, purpose, `secret/key`, and words
/// the refusal must say.
type Case<'a> = (u32, &'a str, Purpose, &'a str, &'a str);

async fn assert_refused(h: &Harness, dispatch: &TaskDispatch, case: Case<'_>) {
    let (attempt, token, purpose, secret, why) = case;
    let (status, answer) = ask(h, dispatch, (attempt, token, purpose, secret)).await;
    let what = format!("{purpose} {secret} attempt {attempt}");
    assert_eq!(status, 403, "{what}: {answer:?}");
    assert_eq!(answer.value, None, "{what}");
    let said = answer.refused.unwrap_or_default();
    assert!(said.contains(why), "{what}: {said}");
    for value in VALUES {
        assert!(!said.contains(value), "{what} leaked {value}: {said}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_attempt_gets_only_the_credentials_its_task_uses() {
    let h = Harness::running("creds", &["backend"]).await;
    secret(
        &h,
        "repo-token",
        "token=REPO-TOKEN",
        Some("git"),
        "git.example.com",
    );
    secret(
        &h,
        "other-repo",
        "token=OTHER-TOKEN",
        Some("git"),
        "git.example.com",
    );
    secret(&h, "model-key", "key=MODEL-KEY", Some("model"), "127.0.0.1");
    secret(&h, "team-db", "password=DB-PASSWORD", None, "");
    cloud_provider(&h, "cloud", "model-key");
    let agents = FakeAgents::start(&h, &["backend"], Duration::ZERO, |_| Reply::Hang).await;
    h.apply("apiVersion: aios.dev/v1alpha1\nkind: Project\nmetadata:\n  name: shop\nspec:\n  description: One task\n  repository:\n    url: https://git.example.com/team/shop.git\n    secretRef:\n      name: repo-token\n      key: token\n  tasks:\n    - name: only\n      title: The only task\n      role: backend\n");
    h.wait_for_value("task/shop-only", "{.status.phase}", "Running", TIMEOUT)
        .await;
    let dispatch = agents.received()[0].dispatch.clone();
    assert!(!dispatch.token.is_empty(), "the dispatch carries its token");

    // What the attempt uses: given.
    let token = dispatch.token.as_str();
    for (purpose, secret, value) in [
        (Purpose::Git, "repo-token/token", "REPO-TOKEN"),
        (Purpose::Model, "model-key/key", "MODEL-KEY"),
    ] {
        let (status, answer) = ask(&h, &dispatch, (1, token, purpose, secret)).await;
        assert_eq!(
            (status, answer.value.as_deref()),
            (200, Some(value)),
            "{answer:?}"
        );
    }

    // What it does not: refused, saying why, and nothing of any Secret's value.
    let forged = "A".repeat(43);
    #[rustfmt::skip]
    let refusals: [Case<'_>; 7] = [
        (1, token, Purpose::Git, "other-repo/token", "not the repository secretRef"),
        (1, token, Purpose::Git, "team-db/password", "not the repository secretRef"),
        (1, token, Purpose::Model, "team-db/password", "no ModelProvider"),
        // The model key asked for as a git token: its owner labelled it for models.
        (1, token, Purpose::Git, "model-key/key", "not the repository secretRef"),
        (1, &forged, Purpose::Git, "repo-token/token", "does not carry the token"),
        (1, "", Purpose::Model, "model-key/key", "does not carry the token"),
        // The attempt-1 token for an attempt that has not begun.
        (2, token, Purpose::Git, "repo-token/token", "does not carry the token"),
    ];
    for case in refusals {
        assert_refused(&h, &dispatch, case).await;
    }
    let metric = |name: &str| h.metric(0, name);
    let given = metric("aios_credential_requests_total{outcome=\"given\"");
    let refused = metric("aios_credential_requests_total{outcome=\"refused\"");
    assert!(
        (given - 2.0).abs() < 0.5 && (refused - 7.0).abs() < 0.5,
        "given {given}, refused {refused}"
    );
    assert!(
        metric("aios_rejected_messages_total{message=\"CredentialRequest\"") >= 3.0,
        "forged tokens are counted as rejected messages"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_pods_carry_no_credential_so_a_new_provider_changes_no_pod() {
    let h = Harness::running("nopodcreds", &["backend"]).await;
    secret(&h, "model-key", "key=MODEL-KEY", Some("model"), "127.0.0.1");
    cloud_provider(&h, "cloud", "model-key");
    let template = |h: &Harness| {
        h.env
            .kubectl(&[
                "-n",
                &h.ns,
                "get",
                "deployment",
                "aios-agent-backend",
                "-o",
                "jsonpath={.spec.template}",
            ])
            .unwrap_or_default()
    };
    // The first provider's Secret allowed its probe: it is cleared for use.
    h.wait_for_value(
        "modelprovider/cloud",
        "{.status.conditions[?(@.type==\"Ready\")].reason}",
        "Unreachable",
        TIMEOUT,
    )
    .await;
    let deadline = Instant::now() + TIMEOUT;
    while template(&h).is_empty() {
        assert!(Instant::now() < deadline, "no agent Deployment");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before = template(&h);
    assert!(
        !before.contains("AIOS_SECRET_") && !before.contains("model-key"),
        "{before}"
    );
    secret(
        &h,
        "second-key",
        "key=SECOND-KEY",
        Some("model"),
        "127.0.0.1",
    );
    cloud_provider(&h, "second-cloud", "second-key");
    h.wait_for_value(
        "modelprovider/second-cloud",
        "{.status.conditions[?(@.type==\"Ready\")].reason}",
        "Unreachable",
        TIMEOUT,
    )
    .await;
    // A pass of the Agent controller after the provider appeared.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(template(&h), before, "the pod template did not change");
}
