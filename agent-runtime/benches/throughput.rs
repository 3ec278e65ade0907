//! Tasks per second through one agent process (instant model fixture, local bare
//! repository, real RabbitMQ and Redis), against a bare consume-and-ack loop on the
//! same broker: the ratio is the runtime's overhead per task (claim, events with
//! confirms, clone/commit/push). Run inside a local environment:
//!
//! `aios-env run -- cargo bench -p aios-agent --bench throughput`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_precision_loss)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use aios_crds::names::bus as names;
use futures::StreamExt;
use lapin::options::BasicAckOptions;
use support::{World, is_terminal, work_answer};

const TASKS: usize = 200;

async fn bare_loop(world: &World) -> f64 {
    let role = "bare";
    let dispatches: Vec<_> = (0..TASKS)
        .map(|i| world.dispatch(&format!("bare-{i}"), role, "Bare"))
        .collect();
    world.bus.ensure_role_queue(role).await.unwrap();
    for dispatch in &dispatches {
        world.publish(dispatch).await;
    }
    let mut consumer = world
        .bus
        .consume(&names::role_queue(role), "bare", 1)
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
        &[("AIOS_CONCURRENCY", concurrency), ("RUST_LOG", "warn")],
    );
    agent.wait_ready(Duration::from_secs(60)).await;
    let dispatches: Vec<_> = (0..TASKS)
        .map(|i| world.dispatch(&format!("{role}-{i}"), &role, "Bench task"))
        .collect();
    // Published before timing starts, like the bare loop: the figure is consumption.
    world.bus.ensure_role_queue(&role).await.unwrap();
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
}
