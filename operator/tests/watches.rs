//! One LIST and one WATCH per kind: the operator's controllers share one watch of each
//! kind they read. Counted by the API server itself (`apiserver_request_total` for
//! LISTs, `apiserver_longrunning_requests` for the WATCHes open), on an environment of
//! the test's own so that no other test's watches are counted.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::float_cmp)] // counts are whole numbers

mod support;

use std::{collections::BTreeMap, time::Duration};

use aios_e2e::Environment;
use support::Harness;

/// The kinds the operator reads, as the API server names their resources.
const RESOURCES: [&str; 6] = [
    "projects",
    "tasks",
    "agents",
    "modelproviders",
    "deployments",
    "secrets",
];

/// `metric`'s value for each of [`RESOURCES`] with `verb`, summed over other labels.
fn by_resource(env: &Environment, metric: &str, verb: &str) -> BTreeMap<&'static str, f64> {
    let text = env.kubectl(&["get", "--raw", "/metrics"]).unwrap();
    RESOURCES
        .iter()
        .map(|resource| {
            let total = text
                .lines()
                .filter(|l| l.starts_with(&format!("{metric}{{")))
                .filter(|l| {
                    l.contains(&format!("resource=\"{resource}\""))
                        && l.contains(&format!("verb=\"{verb}\""))
                        && l.contains("subresource=\"\"")
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            (*resource, total)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_lists_and_watches_each_kind_once() {
    let env = aios_e2e::own().await;
    env.install_crds().unwrap();
    let env: &'static Environment = Box::leak(Box::new(env));
    let mut h = Harness::new_in(env, "watches");
    let lists = by_resource(env, "apiserver_request_total", "LIST");
    let open = by_resource(env, "apiserver_longrunning_requests", "WATCH");

    let op = h.start_operator("op-1");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while aios_e2e::process::http_get(h.operators[op].http_port, "/readyz").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the operator never became ready"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Time for every controller to have started its watches, were it to open more.
    tokio::time::sleep(Duration::from_secs(5)).await;

    let lists_after = by_resource(env, "apiserver_request_total", "LIST");
    let open_after = by_resource(env, "apiserver_longrunning_requests", "WATCH");
    for resource in RESOURCES {
        assert_eq!(
            lists_after[resource] - lists[resource],
            1.0,
            "LISTs of {resource}: {lists_after:?} after, {lists:?} before"
        );
        // The API server's own informers watch some kinds (Secrets) already.
        assert_eq!(
            open_after[resource] - open[resource],
            1.0,
            "WATCHes of {resource} opened: {open_after:?} after, {open:?} before"
        );
    }
    h.kill_operator(op);
}
