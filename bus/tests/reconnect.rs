//! The bus across a broker restart, on an environment of the test's own (the restart
//! would disturb anyone sharing it): a control consumer hears cancels again once its
//! connection is back, and a consume asked while the connection is being recovered is
//! served once it is back.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::time::{Duration, Instant};

use aios_bus::Bus;
use aios_crds::{bus::TaskCancel, names::bus as names};
use futures::StreamExt;
use lapin::options::BasicAckOptions;
use tokio_util::sync::CancellationToken;

/// Publishes `cancel` (on a connection of its own, until the broker confirms that a
/// queue took it) and waits for `control` to receive it.
async fn delivered(url: &str, control: &mut lapin::Consumer, message: &TaskCancel) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let shutdown = CancellationToken::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "no control queue took the cancel of attempt {} within 90 s",
            message.attempt
        );
        let published = match Bus::connect(url, None, &shutdown).await {
            Ok(bus) => {
                let result = bus.publish_cancel(message).await;
                bus.close().await;
                result
            }
            Err(err) => Err(err),
        };
        if published.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    loop {
        let delivery = tokio::time::timeout(Duration::from_secs(30), control.next())
            .await
            .expect("the consumer heard nothing within 30 s")
            .expect("the consumer ended")
            .unwrap();
        delivery.ack(BasicAckOptions::default()).await.unwrap();
        let got: TaskCancel = serde_json::from_slice(&delivery.data).unwrap();
        if got.attempt == message.attempt {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_consumers_come_back_after_a_broker_restart() {
    let mut env = aios_e2e::own().await;
    let url = env.amqp_url.clone().unwrap();
    let shutdown = CancellationToken::new();
    let agent = Bus::connect(&url, None, &shutdown).await.unwrap();
    let mut control = agent.consume_control("apollo-0-control").await.unwrap();
    delivered(&url, &mut control, &support::cancel(1)).await;

    agent.ensure_role_queue("team-a", "apollo").await.unwrap();

    let restarting = tokio::task::spawn_blocking(move || {
        env.restart_rabbitmq().unwrap();
        env
    });
    // A consume asked while the broker is down, the connection recovering: asked again
    // once the connection is back, not failed at once for the channel it cannot open.
    let deadline = Instant::now() + Duration::from_secs(60);
    while agent.is_connected() {
        assert!(Instant::now() < deadline, "the connection never dropped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let consumed = agent
        .consume(&names::role_queue("team-a", "apollo"), "apollo-0", 1)
        .await;
    let env = restarting.await.unwrap();
    let _consumer =
        consumed.expect("a consume asked during the recovery is served once it is back");
    let (_, consumers) = agent
        .queue_depth(&names::role_queue("team-a", "apollo"))
        .await
        .unwrap();
    assert_eq!(consumers, 1, "the role queue has its consumer");
    // The same consumer, once its connection recovers: its queue is declared and bound
    // again (a broker-named one would be refused).
    delivered(&url, &mut control, &support::cancel(2)).await;
    let bindings = env
        .rabbitmqctl(&["list_bindings", "source_name", "destination_name"])
        .unwrap();
    assert_eq!(
        bindings
            .lines()
            .filter(|l| l.starts_with(names::CONTROL_EXCHANGE))
            .count(),
        1,
        "one control queue, bound once: {bindings}"
    );
    agent.close().await;
    env.stop().unwrap();
}
