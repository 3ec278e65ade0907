//! How the operator scales: Projects of tasks in layers of 100 (each task depending on
//! every task of the layer before: 10 layers for 1,000 tasks, 100 for 10,000) run by an
//! instant responder, on the local control plane. Prints, per run: wall time, API writes
//! per task (by verb and subresource), dispatch latency, the operator's peak memory and
//! the API server's requests a second; beside two floors: the time the same number of
//! status writes takes from a bare client one at a time, and with the operator's
//! concurrency; and a broker floor: layers of the run's dispatches published and read
//! back with nothing else in between. And where the CPU went, during the run and the
//! concurrent floor: by process (the API server, etcd, RabbitMQ, the operator, the
//! benchmark's own agents), and the machine's time stolen by its host.
//!
//! ```text
//! cargo bench -p aios-operator --bench scale      # 1,000, 10,000, and 20 Projects x 500 at once
//! AIOS_BENCH_SIZES=1000,4x250 cargo bench -p aios-operator --bench scale
//! AIOS_BENCH_FLOORS=0 AIOS_BENCH_SIZES=10000 cargo bench ...  # without the floors
//! AIOS_BENCH_OPERATOR_WRAPPER="heaptrack -o /tmp/operator" cargo bench ...  # profiled
//! AIOS_BENCH_REPEAT=3 AIOS_BENCH_SIZES=1000,10000 cargo bench ...  # each ratio 3 times, and the median
//! ```
//!
//! This machine's speed can move by a third between runs minutes apart: with
//! `AIOS_BENCH_REPEAT`, the sizes run that many rounds, and each ratio between sizes is
//! printed per round and as the median of the rounds.

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
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aios_crds::{
    Project, ProjectPhase, Task, TaskPhase,
    bus::{Message, TaskDispatch},
    names::{bus::role_queue, field_managers},
};
use aios_operator::{project::DISPATCH_CONCURRENCY, runtime::bus::Bus};
use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use lapin::options::BasicAckOptions;
use serde_json::json;
use support::{FakeAgents, Harness, Reply, done};
use tokio_util::sync::CancellationToken;

/// Tasks per layer; a Project of N tasks has N / WIDTH layers.
const WIDTH: usize = 100;
/// How many writes the concurrent floor keeps in flight: the event consumer's
/// concurrency, the larger of the operator's two (a Project pass runs 16 at once).
const FLOOR_CONCURRENCY: usize = 32;
/// How many layers of dispatches the broker floor publishes.
const BROKER_FLOOR_ROUNDS: usize = 20;

fn task_name(project: &str, layer: usize, i: usize) -> String {
    format!("{project}-l{layer}-t{i}")
}

/// The Project and layer of a task named by [`task_name`].
fn project_and_layer(name: &str) -> Option<(&str, usize)> {
    let (project, rest) = name.split_once("-l")?;
    let layer = rest.split('-').next()?.parse().ok()?;
    Some((project, layer))
}

/// The API server's request counts, by `(resource, subresource, verb)`, from its metrics.
fn requests(h: &Harness) -> BTreeMap<(String, String, String), f64> {
    let metrics = h.env.kubectl(&["get", "--raw", "/metrics"]).unwrap();
    let label = |line: &str, name: &str| -> String {
        line.split_once(&format!("{name}=\""))
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(value, _)| value.to_owned())
            .unwrap_or_default()
    };
    let mut counts = BTreeMap::new();
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        let key = (
            label(line, "resource"),
            label(line, "subresource"),
            label(line, "verb"),
        );
        *counts.entry(key).or_insert(0.0) += value;
    }
    counts
}

fn is_write(verb: &str) -> bool {
    ["POST", "PUT", "PATCH", "APPLY", "DELETE"].contains(&verb)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index]
}

/// [`percentile`] in milliseconds.
fn ms(sorted: &[Duration], p: f64) -> f64 {
    percentile(sorted, p).as_secs_f64() * 1000.0
}

/// The bucket bound under which share `p` of a histogram's observations fall, from its
/// cumulative bucket counts by bound (`le`), and the share within `bound` seconds.
fn bucketed(buckets: &BTreeMap<String, f64>, p: f64, bound: f64) -> (String, f64) {
    let mut counts: Vec<(f64, f64)> = buckets
        .iter()
        .filter_map(|(le, n)| Some((le.parse::<f64>().ok()?, *n)))
        .collect();
    counts.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = counts.last().map_or(0.0, |c| c.1);
    if total == 0.0 {
        return ("-".to_owned(), 0.0);
    }
    let under = counts
        .iter()
        .find(|c| c.1 >= p * total)
        .map_or("-".to_owned(), |c| {
            if c.0.is_infinite() {
                "> 10 s".to_owned()
            } else {
                format!("<= {:.0} ms", c.0 * 1000.0)
            }
        });
    let within = counts
        .iter()
        .rev()
        .find(|c| c.0 <= bound + f64::EPSILON)
        .map_or(0.0, |c| c.1);
    (under, within / total)
}

/// A memory figure of process `pid` in MiB: `VmHWM` (its peak RSS) or `VmRSS` (now).
fn memory_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU time so far, in seconds, of every process of this machine by pid (with its
/// name), and of the machine as a whole: busy, idle and stolen (taken by the host for
/// other guests), from `/proc`.
#[derive(Debug, Clone, Default)]
struct Cpu {
    processes: HashMap<u32, (String, f64)>,
    busy: f64,
    idle: f64,
    stolen: f64,
}

impl Cpu {
    fn now() -> Self {
        static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
        let ticks = *TICKS.get_or_init(|| {
            let out = std::process::Command::new("getconf")
                .arg("CLK_TCK")
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        });
        let mut cpu = Self::default();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // `pid (name) state ppid ...`: the name may hold spaces; utime and stime are
            // the 12th and 13th fields after it.
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
            let time = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
            if let (Some(user), Some(system)) = (time(11), time(12)) {
                let name = stat[open + 1..close].to_owned();
                cpu.processes.insert(pid, (name, (user + system) / ticks));
            }
        }
        let stat = std::fs::read_to_string("/proc/stat").unwrap();
        let total: Vec<f64> = stat
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse().unwrap())
            .collect();
        // user nice system idle iowait irq softirq steal
        cpu.busy = (total[0] + total[1] + total[2] + total[5] + total[6]) / ticks;
        cpu.idle = (total[3] + total[4]) / ticks;
        cpu.stolen = total[7] / ticks;
        cpu
    }

    /// The CPU seconds spent since `before`, by process name, most first (the processes
    /// alive at both ends), and the machine's.
    fn since(&self, before: &Self) -> (Vec<(String, f64)>, Self) {
        let mut by_name: HashMap<String, f64> = HashMap::new();
        for (pid, (name, seconds)) in &self.processes {
            if let Some((_, earlier)) = before.processes.get(pid) {
                *by_name.entry(name.clone()).or_default() += seconds - earlier;
            }
        }
        let mut spent: Vec<(String, f64)> =
            by_name.into_iter().filter(|(_, s)| *s >= 0.05).collect();
        spent.sort_by(|a, b| b.1.total_cmp(&a.1));
        let machine = Self {
            processes: HashMap::new(),
            busy: self.busy - before.busy,
            idle: self.idle - before.idle,
            stolen: self.stolen - before.stolen,
        };
        (spent, machine)
    }

    /// The CPU spent since `before`, in a line: by process, then the machine's.
    fn line(&self, before: &Self) -> String {
        let (spent, machine) = self.since(before);
        let processes: Vec<String> = spent
            .iter()
            .take(8)
            .map(|(name, seconds)| format!("{name} {seconds:.1}"))
            .collect();
        format!(
            "{}; the machine busy {:.1}, idle {:.1}, stolen by the host {:.1}",
            processes.join(", "),
            machine.busy,
            machine.idle,
            machine.stolen
        )
    }

    /// The CPU seconds process `name` spent since `before`.
    fn of(&self, before: &Self, name: &str) -> f64 {
        self.since(before)
            .0
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0.0, |(_, seconds)| *seconds)
    }
}

/// A run's shape: `projects` Projects of `tasks` tasks each, all unsuspended at once.
#[derive(Debug, Clone, Copy)]
struct Shape {
    projects: usize,
    tasks: usize,
}

impl Shape {
    fn parse(text: &str) -> Option<Self> {
        let (projects, tasks) = match text.split_once('x') {
            Some((projects, tasks)) => (projects.trim().parse().ok()?, tasks.trim().parse().ok()?),
            None => (1, text.trim().parse().ok()?),
        };
        Some(Self { projects, tasks })
    }

    fn layers(self) -> usize {
        (self.tasks / WIDTH).max(1)
    }

    fn total(self) -> usize {
        self.projects * self.layers() * WIDTH
    }

    fn label(self) -> String {
        if self.projects == 1 {
            format!(
                "{} tasks ({} layers of {WIDTH})",
                self.total(),
                self.layers()
            )
        } else {
            format!(
                "{} Projects x {} tasks ({} layers of {WIDTH} each) at once",
                self.projects,
                self.layers() * WIDTH,
                self.layers()
            )
        }
    }
}

/// The Tasks of Project `project`, in layers of [`WIDTH`], each task depending on every
/// task of the layer before.
fn project_tasks(project: &str, layers: usize) -> Vec<Task> {
    (0..layers)
        .flat_map(|layer| (0..WIDTH).map(move |i| (layer, i)))
        .map(|(layer, i)| {
            let deps: Vec<String> = if layer == 0 {
                Vec::new()
            } else {
                (0..WIDTH).map(|j| task_name(project, layer - 1, j)).collect()
            };
            serde_json::from_value(json!({
                "apiVersion": "aios.dev/v1alpha1", "kind": "Task",
                "metadata": {"name": task_name(project, layer, i)},
                "spec": {"project": project, "title": format!("layer {layer} task {i}"), "role": "backend", "dependsOn": deps}
            }))
            .unwrap()
        })
        .collect()
}

/// Waits until every Project of the namespace has succeeded, as a watch shows them: the
/// run ends when the last success is seen, not at the next poll after it.
async fn wait_all_succeeded(projects: &Api<Project>, count: usize) {
    let mut succeeded = HashSet::new();
    let mut events =
        std::pin::pin!(watcher(projects.clone(), watcher::Config::default()).applied_objects());
    let all = async {
        while let Some(event) = events.next().await {
            let Ok(project) = event else { continue };
            let phase = project.status.as_ref().and_then(|s| s.phase);
            let name = project.name_any();
            if phase == Some(ProjectPhase::Succeeded) {
                succeeded.insert(name);
            } else {
                succeeded.remove(&name);
            }
            if succeeded.len() == count {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(3 * 3600), all)
        .await
        .unwrap_or_else(|_| panic!("{}/{count} Projects succeeded", succeeded.len()));
}

/// When each Task was first seen `Succeeded` on a watch of the API server, by name: when
/// its success was recorded, as any client could see it.
fn watch_recorded(
    tasks: Api<Task>,
) -> (
    Arc<Mutex<HashMap<String, Instant>>>,
    tokio::task::JoinHandle<()>,
) {
    let recorded = Arc::new(Mutex::new(HashMap::new()));
    let seen = recorded.clone();
    let watch = tokio::spawn(async move {
        let mut events =
            std::pin::pin!(watcher(tasks, watcher::Config::default()).applied_objects());
        while let Some(event) = events.next().await {
            let Ok(task) = event else { continue };
            let succeeded =
                task.status.as_ref().and_then(|s| s.phase) == Some(TaskPhase::Succeeded);
            if succeeded {
                let name = task.metadata.name.unwrap_or_default();
                seen.lock()
                    .unwrap()
                    .entry(name)
                    .or_insert_with(Instant::now);
            }
        }
    });
    (recorded, watch)
}

/// When each Project's layer finished, by `finished` (a time per task name): its last
/// task's.
fn layers_done(finished: &HashMap<String, Instant>) -> BTreeMap<(String, usize), Instant> {
    let mut done: BTreeMap<(String, usize), Instant> = BTreeMap::new();
    for (name, at) in finished {
        if let Some((project, layer)) = project_and_layer(name) {
            let entry = done.entry((project.to_owned(), layer)).or_insert(*at);
            *entry = (*entry).max(*at);
        }
    }
    done
}

/// Dispatch latencies: from the last success in a Project's layer (as `finished` dates
/// them: its agent's report, or its record on the API server) to each dispatch of the
/// next layer.
fn dispatch_latencies(agents: &FakeAgents, finished: &HashMap<String, Instant>) -> Vec<Duration> {
    let mut latencies: Vec<Duration> = dispatched_after(agents, finished)
        .into_iter()
        .map(|(at, ready)| at.saturating_duration_since(ready))
        .collect();
    latencies.sort();
    latencies
}

/// How many dispatches came before their layer's dependencies' last success as
/// `finished` dates them (a watch that showed it late).
fn dispatches_ahead_of(agents: &FakeAgents, finished: &HashMap<String, Instant>) -> usize {
    dispatched_after(agents, finished)
        .into_iter()
        .filter(|(at, ready)| at < ready)
        .count()
}

/// Each dispatch after the first layer: when it came, and when the last of its
/// dependencies succeeded, as `finished` dates them.
fn dispatched_after(
    agents: &FakeAgents,
    finished: &HashMap<String, Instant>,
) -> Vec<(Instant, Instant)> {
    let layer_done = layers_done(finished);
    agents
        .received()
        .iter()
        .filter_map(|r| {
            let (project, layer) = project_and_layer(&r.dispatch.task.name)?;
            let ready = layer_done.get(&(project.to_owned(), layer.checked_sub(1)?))?;
            Some((r.at, *ready))
        })
        .collect()
}

/// Per layer after the first: how long after its dependencies' last success (as
/// `finished` dates them) the first dispatch came (the wait for the pass), and how long
/// the layer's dispatches took from first to last (the pass's own pace).
fn layer_gaps(
    agents: &FakeAgents,
    finished: &HashMap<String, Instant>,
) -> (Vec<Duration>, Vec<Duration>) {
    let done = layers_done(finished);
    let mut dispatched: BTreeMap<(String, usize), (Instant, Instant)> = BTreeMap::new();
    for r in agents.received() {
        if let Some((project, layer)) = project_and_layer(&r.dispatch.task.name) {
            let entry = dispatched
                .entry((project.to_owned(), layer))
                .or_insert((r.at, r.at));
            *entry = (entry.0.min(r.at), entry.1.max(r.at));
        }
    }
    let (mut waits, mut spreads) = (Vec::new(), Vec::new());
    for ((project, layer), (first, last)) in &dispatched {
        let Some(ready) = layer
            .checked_sub(1)
            .and_then(|before| done.get(&(project.clone(), before)))
        else {
            continue;
        };
        waits.push(first.saturating_duration_since(*ready));
        spreads.push(last.saturating_duration_since(*first));
    }
    waits.sort();
    spreads.sort();
    (waits, spreads)
}

/// `writes` status writes to the Tasks of Project `project`, `concurrency` at a time,
/// each as the operator writes a Task's status (server-side apply under its field
/// manager) and of the same size: the status it wrote last (`statuses`), with a new
/// message (an unchanged apply is not written to etcd).
async fn floor(
    tasks: &Api<Task>,
    statuses: &BTreeMap<String, serde_json::Value>,
    project: &str,
    layers: usize,
    writes: usize,
    concurrency: usize,
) -> Duration {
    let start = Instant::now();
    stream::iter(0..writes)
        .for_each_concurrent(concurrency, |n| {
            let tasks = tasks.clone();
            let name = task_name(project, (n / WIDTH) % layers, n % WIDTH);
            let mut status = statuses[&name].clone();
            status["message"] = json!(format!("floor write {n}"));
            async move {
                let patch =
                    json!({"apiVersion": "aios.dev/v1alpha1", "kind": "Task", "status": status});
                tasks
                    .patch_status(
                        &name,
                        &PatchParams::apply(field_managers::TASK).force(),
                        &Patch::Apply(patch),
                    )
                    .await
                    .unwrap();
            }
        })
        .await;
    start.elapsed()
}

/// The status of each Task of `project`, by name, as the operator last wrote it.
async fn final_statuses(tasks: &Api<Task>, project: &str) -> BTreeMap<String, serde_json::Value> {
    tasks
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|t| t.spec.project == project)
        .map(|t| {
            (
                t.name_any(),
                serde_json::to_value(t.status.unwrap()).unwrap(),
            )
        })
        .collect()
}

/// The broker's share of a layer's spread: `rounds` layers of [`WIDTH`] copies of
/// `sample` (a dispatch of the run, as big as its dispatches), published through the
/// operator's bus client, [`DISPATCH_CONCURRENCY`] at a time, each waiting for its
/// confirm, to a quorum role queue of their own, read by a consumer that decodes and
/// dates each as the fake agents do. Per round, sorted: first delivery to last (what the
/// run's "first to last dispatch" measures), and first publish to last delivery.
async fn broker_floor(
    h: &Harness,
    sample: &TaskDispatch,
    rounds: usize,
) -> (Vec<Duration>, Vec<Duration>) {
    const ROLE: &str = "brokerfloor";
    let stop = CancellationToken::new();
    let bus = Bus::connect(&h.amqp_url, None, &stop).await.unwrap();
    bus.ensure_role_queue(&h.ns, ROLE).await.unwrap();
    let consumer = bus
        .consume(&role_queue(&h.ns, ROLE), "broker-floor", 512)
        .await
        .unwrap();
    let (delivered, mut deliveries) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(consumer.for_each_concurrent(256, move |delivery| {
        let delivered = delivered.clone();
        async move {
            let Ok(delivery) = delivery else { return };
            let dispatch = TaskDispatch::decode(&delivery.data).unwrap();
            let _ = delivered.send((dispatch.task.uid, Instant::now()));
            delivery.ack(BasicAckOptions::default()).await.unwrap();
        }
    }));
    let (mut spreads, mut totals) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let copies: Vec<TaskDispatch> = (0..WIDTH)
            .map(|i| {
                let mut copy = sample.clone();
                copy.task.uid = format!("broker-floor-{round}-{i}");
                ROLE.clone_into(&mut copy.spec.role);
                copy
            })
            .collect();
        let start = Instant::now();
        stream::iter(&copies)
            .for_each_concurrent(DISPATCH_CONCURRENCY, |copy| {
                let bus = &bus;
                async move { bus.publish_dispatch(copy).await.unwrap() }
            })
            .await;
        let mut times = Vec::with_capacity(WIDTH);
        while times.len() < WIDTH {
            let (uid, at) = deliveries.recv().await.unwrap();
            if uid.starts_with(&format!("broker-floor-{round}-")) {
                times.push(at);
            }
        }
        let (first, last) = (*times.iter().min().unwrap(), *times.iter().max().unwrap());
        spreads.push(last - first);
        totals.push(last - start);
    }
    reader.abort();
    stop.cancel();
    spreads.sort();
    totals.sort();
    (spreads, totals)
}

/// What one run measured.
struct Figures {
    wall: Duration,
}

/// Runs `shape` in a namespace of its own, then deletes the namespace and waits until
/// it is gone, so that the next run neither shares the API server with the deletion of
/// this one's Tasks nor finds them stored.
async fn run(shape: Shape) -> Figures {
    let mut h = Harness::new(&format!(
        "bench-{}x{}",
        shape.projects,
        shape.layers() * WIDTH
    ));
    let figures = measure(&mut h, shape).await;
    let namespaces: Api<Namespace> = Api::all(h.client().await);
    let ns = h.ns.clone();
    let deleting = Instant::now();
    drop(h); // stops the operator and deletes the namespace
    while namespaces.get_opt(&ns).await.unwrap().is_some() {
        assert!(
            deleting.elapsed() < Duration::from_secs(900),
            "namespace {ns} still there after 15 minutes"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "namespace {ns} deleted in {:.1}s",
        deleting.elapsed().as_secs_f64()
    );
    figures
}

async fn measure(h: &mut Harness, shape: Shape) -> Figures {
    let layers = shape.layers();
    let total = shape.total();
    h.apply_agents(&["backend"]);
    h.serve_models().await;
    let client = h.client().await;
    let tasks: Api<Task> = Api::namespaced(client.clone(), &h.ns);
    let projects: Api<Project> = Api::namespaced(client.clone(), &h.ns);
    let names: Vec<String> = (0..shape.projects).map(|p| format!("big{p}")).collect();

    // Each Project starts suspended; its Tasks are created apart (an empty plan).
    let created = Instant::now();
    for name in &names {
        h.apply(&format!("apiVersion: aios.dev/v1alpha1\nkind: Project\nmetadata:\n  name: {name}\nspec:\n  description: A big one\n  repository:\n    url: file:///tmp/{name}.git\n  suspend: true\n  policy:\n    maxParallelTasks: 1000\n  tasks: []\n"));
    }
    let specs: Vec<Task> = names
        .iter()
        .flat_map(|name| project_tasks(name, layers))
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

    // `AIOS_BENCH_OPERATOR_WRAPPER="heaptrack -o /tmp/operator"` runs the operator under
    // a profiler. The memory figures are then the wrapper process's, not the operator's:
    // read the profile instead.
    let wrapper = std::env::var("AIOS_BENCH_OPERATOR_WRAPPER").unwrap_or_default();
    let wrapper: Vec<&str> = wrapper.split_whitespace().collect();
    let operator = h.start_operator_under("bench", "warn", &wrapper);
    let agents =
        FakeAgents::start(h, &["backend"], Duration::ZERO, |d| Reply::Succeed(done(d))).await;
    // The operator syncs its caches: every Task is in its task gauge.
    let syncing = Instant::now();
    while (h.metric(operator, "aios_tasks{") - total as f64).abs() > 0.5 {
        assert!(
            syncing.elapsed() < Duration::from_secs(300),
            "the operator never cached the {total} tasks"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let pid = h.operator_pid(operator);
    let synced = (memory_mib(pid, "VmRSS"), memory_mib(pid, "VmHWM"));
    let before = requests(h);
    let (recorded, watch) = watch_recorded(tasks.clone());

    let cpu_before = Cpu::now();
    let start = Instant::now();
    for name in &names {
        projects
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"suspend": false}})),
            )
            .await
            .unwrap();
    }
    wait_all_succeeded(&projects, names.len()).await;
    let wall = start.elapsed();
    let cpu_after = Cpu::now();
    let after = requests(h);
    let (rss, settled) = (memory_mib(pid, "VmHWM"), memory_mib(pid, "VmRSS"));
    watch.abort();
    let reported = agents.finished.lock().unwrap().clone();
    let latencies = dispatch_latencies(&agents, &reported);
    let recorded = recorded.lock().unwrap().clone();
    let from_record = dispatch_latencies(&agents, &recorded);
    let (waits, spreads) = layer_gaps(&agents, &reported);
    let (recorded_waits, _) = layer_gaps(&agents, &recorded);
    let delay = h.metric_by(operator, "aios_dispatch_delay_seconds_bucket", "", "le");
    let queued = h.metric_by(operator, "aios_task_queued_writes_total", "", "outcome");
    let started = h.metric_by(
        operator,
        "aios_task_events_total",
        "type=\"started\"",
        "outcome",
    );
    let passes = h.metric(
        operator,
        "aios_reconcile_duration_seconds_count{controller=\"project\"}",
    );
    let pass_seconds = h.metric(
        operator,
        "aios_reconcile_duration_seconds_sum{controller=\"project\"}",
    );

    let delta = |key: &(String, String, String)| {
        after.get(key).copied().unwrap_or(0.0) - before.get(key).copied().unwrap_or(0.0)
    };
    let task_writes: Vec<((String, String), f64)> = after
        .keys()
        .filter(|(resource, _, verb)| resource == "tasks" && is_write(verb))
        .map(|key| ((key.2.clone(), key.1.clone()), delta(key)))
        .filter(|(_, n)| *n > 0.0)
        .collect();
    let writes: f64 = task_writes.iter().map(|(_, n)| n).sum();
    let all_requests: f64 = after.keys().map(delta).sum();

    // The floors: the same number of status writes from a bare client, one at a time,
    // then with the operator's concurrency.
    // `AIOS_BENCH_FLOORS=0` leaves them out, for a quicker look at the other figures.
    let floor_writes = writes.round() as usize;
    let floors = std::env::var("AIOS_BENCH_FLOORS").map_or(true, |v| v != "0");
    let (sequential, concurrent, floor_cpu) = if floors {
        let statuses = final_statuses(&tasks, &names[0]).await;
        let sequential = floor(&tasks, &statuses, &names[0], layers, floor_writes, 1).await;
        let cpu_floor = Cpu::now();
        let concurrent = floor(
            &tasks,
            &statuses,
            &names[0],
            layers,
            floor_writes,
            FLOOR_CONCURRENCY,
        )
        .await;
        (sequential, concurrent, Some((cpu_floor, Cpu::now())))
    } else {
        (Duration::ZERO, Duration::ZERO, None)
    };
    // A dispatch of the last layer: as many dependencies as any.
    let sample = agents
        .received()
        .into_iter()
        .max_by_key(|r| r.dispatch.dependencies.len())
        .map(|r| r.dispatch);
    let broker = match (floors, sample) {
        (true, Some(sample)) => Some(broker_floor(h, &sample, BROKER_FLOOR_ROUNDS).await),
        _ => None,
    };

    let seconds = wall.as_secs_f64();
    println!("{}", shape.label());
    println!("  wall time, unsuspend to Succeeded: {seconds:.1} s");
    println!(
        "  API writes to Tasks: {writes:.0} ({:.2} per task)",
        writes / total as f64
    );
    for ((verb, subresource), n) in &task_writes {
        let what = if subresource.is_empty() {
            "tasks".to_owned()
        } else {
            format!("tasks/{subresource}")
        };
        println!(
            "    {verb} {what}: {n:.0} ({:.2} per task)",
            n / total as f64
        );
    }
    println!("    Queued {queued:?}; Started events {started:?}");
    println!(
        "  dispatch latency, a dependency's success reported by its agent to dependent dispatch: p50 {:.0} ms, p99 {:.0} ms (n={})",
        ms(&latencies, 0.50),
        ms(&latencies, 0.99),
        latencies.len()
    );
    println!(
        "  dispatch latency, dependency's success recorded (seen on a watch) to dependent dispatch: p50 {:.0} ms, p99 {:.0} ms (n={})",
        ms(&from_record, 0.50),
        ms(&from_record, 0.99),
        from_record.len()
    );
    println!(
        "    of which, per layer: last dependency's success to the first dispatch p50 {:.0} ms, p99 {:.0} ms; first to last dispatch p50 {:.0} ms, p99 {:.0} ms",
        ms(&waits, 0.50),
        ms(&waits, 0.99),
        ms(&spreads, 0.50),
        ms(&spreads, 0.99),
    );
    println!(
        "    last dependency's success recorded to the first dispatch p50 {:.0} ms, p99 {:.0} ms",
        ms(&recorded_waits, 0.50),
        ms(&recorded_waits, 0.99),
    );
    let ahead = dispatches_ahead_of(&agents, &recorded);
    println!(
        "    (the benchmark's watch showed the last dependency's success after the dispatch itself for {ahead} of {}: those count 0 ms)",
        from_record.len()
    );
    let ((p50, _), (p99, within)) = (bucketed(&delay, 0.50, 0.05), bucketed(&delay, 0.99, 0.05));
    println!(
        "  dispatch delay, the operator's own clock from knowing the last dependency's success recorded (its write returned, or its watch showed it) to dependent dispatch: p50 {p50}, p99 {p99}; {:.1}% within 50 ms",
        within * 100.0
    );
    println!(
        "  Project passes (since start-up): {passes:.0}, {:.1} ms each on average, {pass_seconds:.1} s in all",
        pass_seconds * 1000.0 / passes.max(1.0)
    );
    println!(
        "  operator peak RSS: {rss:.1} MiB (before the run, its caches synced: {:.1} MiB, peak {:.1} MiB; after it: {settled:.1} MiB)",
        synced.0, synced.1
    );
    println!(
        "  API requests during the run: {all_requests:.0} ({:.0} a second, the benchmark's own watches included)",
        all_requests / seconds.max(f64::EPSILON)
    );
    println!(
        "  CPU seconds during the run, by process: {}",
        cpu_after.line(&cpu_before)
    );
    let api_server_per_write =
        |before: &Cpu, after: &Cpu| after.of(before, "kube-apiserver") * 1000.0 / writes.max(1.0);
    println!(
        "    the API server's CPU per Task write: {:.2} ms (all its requests during the run, over the writes to Tasks)",
        api_server_per_write(&cpu_before, &cpu_after)
    );
    if let Some((before, after)) = &floor_cpu {
        println!(
            "  CPU seconds during the concurrent floor, by process: {}",
            after.line(before)
        );
        println!(
            "    the API server's CPU per write: {:.2} ms",
            api_server_per_write(before, after)
        );
    }
    if !floors {
        println!("  floors not measured (AIOS_BENCH_FLOORS=0)");
        return Figures { wall };
    }
    println!(
        "  floor, {floor_writes} status writes from a bare sequential client: {:.1} s (wall / floor {:.2})",
        sequential.as_secs_f64(),
        seconds / sequential.as_secs_f64().max(f64::EPSILON)
    );
    println!(
        "  floor, the same writes {FLOOR_CONCURRENCY} at a time: {:.1} s (wall / floor {:.2})",
        concurrent.as_secs_f64(),
        seconds / concurrent.as_secs_f64().max(f64::EPSILON)
    );
    if let Some((spreads, totals)) = broker {
        println!(
            "  broker floor, {BROKER_FLOOR_ROUNDS} layers of {WIDTH} such dispatches published {DISPATCH_CONCURRENCY} at a time with confirms and read back: first to last delivery p50 {:.0} ms, p99 {:.0} ms; first publish to last delivery p50 {:.0} ms, p99 {:.0} ms",
            ms(&spreads, 0.50),
            ms(&spreads, 0.99),
            ms(&totals, 0.50),
            ms(&totals, 0.99),
        );
    }
    Figures { wall }
}

/// The ratios between the sizes of one round: t(10,000) / t(1,000), and each shape of
/// several Projects against one Project of as many tasks.
fn ratios(walls: &[(Shape, Duration)]) -> Vec<(String, f64)> {
    let single = |total: usize| {
        walls
            .iter()
            .find(|(s, _)| s.projects == 1 && s.total() == total)
            .map(|(_, wall)| wall.as_secs_f64())
    };
    let mut ratios = Vec::new();
    if let (Some(small), Some(large)) = (single(1_000), single(10_000)) {
        ratios.push(("t(10,000) / t(1,000)".to_owned(), large / small));
    }
    for (shape, wall) in walls.iter().filter(|(s, _)| s.projects > 1) {
        if let Some(large) = single(shape.total()) {
            ratios.push((
                format!("{} / {} tasks in one Project", shape.label(), shape.total()),
                wall.as_secs_f64() / large,
            ));
        }
    }
    ratios
}

fn main() {
    let shapes: Vec<Shape> = std::env::var("AIOS_BENCH_SIZES")
        .unwrap_or_else(|_| "1000,10000,20x500".to_owned())
        .split(',')
        .filter_map(Shape::parse)
        .collect();
    let repeat: usize = std::env::var("AIOS_BENCH_REPEAT").map_or(1, |r| {
        r.parse().ok().filter(|&r| r >= 1).unwrap_or_else(|| {
            panic!("AIOS_BENCH_REPEAT={r}: expected a whole number of rounds, at least 1")
        })
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rounds: Vec<Vec<(String, f64)>> = Vec::new();
    for round in 1..=repeat {
        if repeat > 1 {
            println!("round {round} of {repeat}");
        }
        let mut walls: Vec<(Shape, Duration)> = Vec::new();
        for &shape in &shapes {
            let figures = runtime.block_on(run(shape));
            walls.push((shape, figures.wall));
        }
        let round = ratios(&walls);
        for (label, ratio) in &round {
            println!("{label}: {ratio:.2}");
        }
        rounds.push(round);
    }
    if repeat > 1 {
        for (i, (label, _)) in rounds[0].iter().enumerate() {
            let mut each: Vec<f64> = rounds.iter().map(|r| r[i].1).collect();
            each.sort_by(f64::total_cmp);
            let shown: Vec<String> = each.iter().map(|r| format!("{r:.2}")).collect();
            println!(
                "{label}, median of {repeat} rounds: {:.2} ({})",
                each[each.len() / 2],
                shown.join(", ")
            );
        }
    }
}
