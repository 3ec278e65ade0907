//! Tasks per second through one agent process (instant model fixture, local bare
//! repository, real RabbitMQ and Redis), against a bare consume-and-ack loop on the
//! same broker: the ratio is the runtime's overhead per task (claim, events with
//! confirms, clone/commit/push). Then several agents share one queue and push to one
//! branch, each task writing a file of its own: every push that loses a race must be
//! rebased and land within its attempt, so the count of task retries from contention
//! (attempts failed in delivery, which the operator would retry) is the figure to hold
//! at zero. Run inside a local environment:
//!
//! `aios-env run -- cargo bench -p aios-agent --bench throughput`
//!
//! The contended run's size is `AIOS_BENCH_AGENTS` agents (4) and
//! `AIOS_BENCH_TASKS_PER_AGENT` tasks per agent (200).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_precision_loss)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use aios_crds::{bus::TaskEventKind, names::bus as names};
use futures::StreamExt;
use lapin::options::BasicAckOptions;
use support::{World, is_terminal, ollama_answer, work_answer};
use wiremock::{Mock, Request, matchers};

const TASKS: usize = 200;
/// The title of the contended run's tasks, followed by the task's number.
const CONTENDED_TITLE: &str = "Contended task";
/// Settings of every benchmarked agent. The claim lease is the agent's default, not
/// the tests' 3 s: on a loaded machine a stall that long would read as a dead worker
/// and drop the attempt, which is not what this measures.
const BENCH_AGENT: [(&str, &str); 2] = [("RUST_LOG", "warn"), ("AIOS_CLAIM_LEASE_SECONDS", "30")];

async fn bare_loop(world: &World) -> f64 {
    let role = "bare";
    let dispatches: Vec<_> = (0..TASKS)
        .map(|i| world.dispatch(&format!("bare-{i}"), role, "Bare"))
        .collect();
    world.bus.ensure_role_queue("tests", role).await.unwrap();
    for dispatch in &dispatches {
        world.publish(dispatch).await;
    }
    let mut consumer = world
        .bus
        .consume(&names::role_queue("tests", role), "bare", 1)
        .await
        .unwrap();
    let started = Instant::now();
    for _ in 0..TASKS {
        let delivery = consumer.next().await.unwrap().unwrap();
        delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    TASKS as f64 / started.elapsed().as_secs_f64()
}

async fn through_agent(world: &mut World, concurrency: &str) -> f64 {
    let role = format!("bench{concurrency}");
    let agent = world.agent(
        &role,
        &[&BENCH_AGENT[..], &[("AIOS_CONCURRENCY", concurrency)]].concat(),
    );
    agent.wait_ready(Duration::from_secs(60)).await;
    let dispatches: Vec<_> = (0..TASKS)
        .map(|i| world.dispatch(&format!("{role}-{i}"), &role, "Bench task"))
        .collect();
    // Published before timing starts, like the bare loop: the figure is consumption.
    world.bus.ensure_role_queue("tests", &role).await.unwrap();
    let started = Instant::now();
    for dispatch in &dispatches {
        world.publish(dispatch).await;
    }
    for _ in 0..TASKS {
        let event = world.wait_for(Duration::from_secs(120), is_terminal).await;
        assert!(
            matches!(event.kind, aios_crds::bus::TaskEventKind::Succeeded { .. }),
            "{event:?}\n{}",
            agent.log_tail()
        );
    }
    TASKS as f64 / started.elapsed().as_secs_f64()
}

/// A size from the environment, else `default`.
fn size(variable: &str, default: usize) -> usize {
    std::env::var(variable)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The number after [`CONTENDED_TITLE`] in a chat request, naming the task's file.
fn task_number(request: &Request) -> String {
    let body = String::from_utf8_lossy(&request.body);
    let after = body
        .split_once(CONTENDED_TITLE)
        .map_or("", |(_, rest)| rest.trim_start());
    after.chars().take_while(char::is_ascii_digit).collect()
}

/// A counter's value in Prometheus' text format.
fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

/// What the contended run measured.
struct Contended {
    rate: f64,
    tasks: usize,
    retries: usize,
    rejections: u64,
    commits: usize,
}

/// `agents` agents (concurrency 1 each) share `tasks` tasks on one branch; each task
/// writes `contended/<n>.txt`, so every race is one a rebase resolves.
async fn agents_on_one_branch(world: &mut World, agents: usize, tasks: usize) -> Contended {
    let role = "contended";
    Mock::given(matchers::method("POST"))
        .and(matchers::path("/api/chat"))
        .and(matchers::body_string_contains(CONTENDED_TITLE))
        .respond_with(|request: &Request| {
            let n = task_number(request);
            ollama_answer(&work_answer(
                "Done.",
                &[(&format!("contended/{n}.txt"), &format!("{n}\n"))],
            ))
        })
        .mount(&world.llm)
        .await;
    let running: Vec<_> = (0..agents)
        .map(|_| world.agent(role, &BENCH_AGENT))
        .collect();
    for agent in &running {
        agent.wait_ready(Duration::from_secs(60)).await;
    }
    let dispatches: Vec<_> = (0..tasks)
        .map(|i| {
            world.dispatch(
                &format!("{role}-{i}"),
                role,
                &format!("{CONTENDED_TITLE} {i}"),
            )
        })
        .collect();
    world.bus.ensure_role_queue("tests", role).await.unwrap();
    let started = Instant::now();
    for dispatch in &dispatches {
        world.publish(dispatch).await;
    }
    let mut retries = 0;
    for _ in 0..tasks {
        let event = world.wait_for(Duration::from_secs(120), is_terminal).await;
        match event.kind {
            TaskEventKind::Succeeded { .. } => {}
            TaskEventKind::Failed {
                reason, message, ..
            } if reason.starts_with("Delivery") => {
                eprintln!("{}: {reason}: {message}", event.task.name);
                retries += 1;
            }
            other => panic!("{other:?}\n{}", running[0].log_tail()),
        }
    }
    let rate = tasks as f64 / started.elapsed().as_secs_f64();
    let rejections = running
        .iter()
        .map(|agent| counter(&agent.metrics(), "aios_agent_push_rejections_total"))
        .sum();
    let commits = world
        .commits()
        .iter()
        .filter(|(_, subject, _)| subject.starts_with(CONTENDED_TITLE))
        .count();
    Contended {
        rate,
        tasks,
        retries,
        rejections,
        commits,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut world = World::new("bench-agent").await;
    world
        .answer(
            "Bench task",
            &work_answer("Done.", &[("bench.txt", "x\n")]),
            None,
            Duration::ZERO,
        )
        .await;
    let bare = bare_loop(&world).await;
    println!("bare consume-and-ack loop:       {bare:>8.1} messages/s ({TASKS} messages)");
    for concurrency in ["1", "4"] {
        let agent = through_agent(&mut world, concurrency).await;
        println!(
            "agent, concurrency {concurrency}:             {agent:>8.1} tasks/s ({TASKS} tasks; {:.1} ms per task; bare loop is {:.0}x faster)",
            1000.0 / agent,
            bare / agent
        );
    }
    let agents = size("AIOS_BENCH_AGENTS", 4);
    let tasks = agents * size("AIOS_BENCH_TASKS_PER_AGENT", 200);
    let contended = agents_on_one_branch(&mut world, agents, tasks).await;
    println!(
        "{agents} agents, one branch:           {:>8.1} tasks/s ({} tasks; {} commits; {} pushes rejected and rebased, {:.2} per task)",
        contended.rate,
        contended.tasks,
        contended.commits,
        contended.rejections,
        contended.rejections as f64 / contended.tasks as f64,
    );
    println!(
        "task retries from contention:    {:>8} (target 0)",
        contended.retries
    );
}
