//! How the operator scales: a Project of N tasks in layers of 100 (each task depending on
//! every task of the layer before: 10 layers for 1,000 tasks, 100 for 10,000) run by an
//! instant responder, on the local control plane. Prints wall time, API writes per task, dispatch latency and the operator's
//! peak memory, beside the floor: the time the same number of status writes takes from
//! a bare client loop.
//!
//! ```text
//! cargo bench -p aios-operator --bench scale                   # 1,000 and 10,000 tasks
//! AIOS_BENCH_SIZES=1000 cargo bench -p aios-operator --bench scale
//! ```

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::too_many_lines
)] // a benchmark program: figures, not production code

#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use aios_crds::{Project, Task};
use futures::{StreamExt, stream};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::json;
use support::{FakeAgents, Harness, Reply, done};

/// Tasks per layer; a Project of N tasks has N / WIDTH layers.
const WIDTH: usize = 100;

async fn client(h: &Harness) -> Client {
    let kubeconfig = Kubeconfig::read_from(&h.env.kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

fn task_name(layer: usize, i: usize) -> String {
    format!("big-l{layer}-t{i}")
}

/// Writes to Tasks (not reads) the API server has served, from its own metrics.
fn task_writes(h: &Harness) -> f64 {
    let metrics = h.env.kubectl(&["get", "--raw", "/metrics"]).unwrap();
    metrics
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{") && l.contains("resource=\"tasks\""))
        .filter(|l| {
            ["POST", "PUT", "PATCH", "APPLY", "DELETE"]
                .iter()
                .any(|v| l.contains(&format!("verb=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index]
}

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn run(total: usize) {
    let width = WIDTH;
    let layers = (total / WIDTH).max(1);
    let total = layers * width;
    let mut h = Harness::new(&format!("bench-{total}"));
    h.apply_agents(&["backend"]);
    h.serve_models().await;
    let client = client(&h).await;
    let tasks: Api<Task> = Api::namespaced(client.clone(), &h.ns);
    let projects: Api<Project> = Api::namespaced(client.clone(), &h.ns);

    // The Project starts suspended; its Tasks are created apart (an empty plan).
    h.apply("apiVersion: aios.dev/v1alpha1\nkind: Project\nmetadata:\n  name: big\nspec:\n  description: A big one\n  repository:\n    url: file:///tmp/big.git\n  suspend: true\n  policy:\n    maxParallelTasks: 1000\n  tasks: []\n");
    let created = Instant::now();
    let specs: Vec<Task> = (0..layers)
        .flat_map(|layer| (0..width).map(move |i| (layer, i)))
        .map(|(layer, i)| {
            let deps: Vec<String> = if layer == 0 { Vec::new() } else { (0..width).map(|j| task_name(layer - 1, j)).collect() };
            serde_json::from_value(json!({
                "apiVersion": "aios.dev/v1alpha1", "kind": "Task",
                "metadata": {"name": task_name(layer, i)},
                "spec": {"project": "big", "title": format!("layer {layer} task {i}"), "role": "backend", "dependsOn": deps}
            }))
            .unwrap()
        })
        .collect();
    stream::iter(specs)
        .for_each_concurrent(32, |t| {
            let tasks = tasks.clone();
            async move {
                tasks.create(&PostParams::default(), &t).await.unwrap();
            }
        })
        .await;
    eprintln!(
        "created {total} tasks in {:.1}s",
        created.elapsed().as_secs_f64()
    );

    let operator = h.start_operator_logging("bench", "warn");
    let agents = FakeAgents::start(&h, &["backend"], Duration::ZERO, |d| {
        Reply::Succeed(done(d))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await; // the operator syncs its caches
    let writes_before = task_writes(&h);

    let start = Instant::now();
    projects
        .patch(
            "big",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"suspend": false}})),
        )
        .await
        .unwrap();
    h.wait_for_phase("big", "Succeeded", Duration::from_secs(3600))
        .await;
    let wall = start.elapsed();
    let writes = task_writes(&h) - writes_before;
    let rss = peak_rss_mib(h.operator_pid(operator));

    // Dispatch latency: from the last success in a layer to each dispatch of the next.
    let received = agents.received();
    let finished = agents.finished.lock().unwrap().clone();
    let mut layer_done: BTreeMap<usize, Instant> = BTreeMap::new();
    for (name, at) in &finished {
        let layer: usize = name
            .trim_start_matches("big-l")
            .split('-')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let entry = layer_done.entry(layer).or_insert(*at);
        *entry = (*entry).max(*at);
    }
    let mut latencies: Vec<Duration> = received
        .iter()
        .filter_map(|r| {
            let layer: usize = r
                .dispatch
                .task
                .name
                .trim_start_matches("big-l")
                .split('-')
                .next()?
                .parse()
                .ok()?;
            let ready = layer.checked_sub(1).and_then(|l| layer_done.get(&l))?;
            Some(r.at.saturating_duration_since(*ready))
        })
        .collect();
    latencies.sort();

    // The floor: the same number of status writes from a bare client loop.
    let floor_writes = writes.round() as usize;
    let floor_start = Instant::now();
    for n in 0..floor_writes {
        let name = task_name(n % layers, n % width);
        let patch = json!({"apiVersion": "aios.dev/v1alpha1", "kind": "Task", "status": {"message": format!("floor write {n}")}});
        tasks
            .patch_status(
                &name,
                &PatchParams::apply("aios-bench").force(),
                &Patch::Apply(patch),
            )
            .await
            .unwrap();
    }
    let floor = floor_start.elapsed();

    println!("tasks: {total} ({layers} layers of {width})");
    println!(
        "  wall time, unsuspend to Succeeded: {:.1} s",
        wall.as_secs_f64()
    );
    println!(
        "  API writes to Tasks: {writes:.0} ({:.2} per task)",
        writes / total as f64
    );
    println!(
        "  dispatch latency, dependency success to dependent dispatch: p50 {:.0} ms, p99 {:.0} ms (n={})",
        percentile(&latencies, 0.50).as_secs_f64() * 1000.0,
        percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
        latencies.len()
    );
    println!("  operator peak RSS: {rss:.1} MiB");
    println!(
        "  floor, {floor_writes} status writes from a bare client loop: {:.1} s",
        floor.as_secs_f64()
    );
    println!(
        "  wall time / floor: {:.2}",
        wall.as_secs_f64() / floor.as_secs_f64().max(f64::EPSILON)
    );
}

fn main() {
    let sizes: Vec<usize> = std::env::var("AIOS_BENCH_SIZES")
        .unwrap_or_else(|_| "1000,10000".to_owned())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    for total in sizes {
        runtime.block_on(run(total));
    }
}
