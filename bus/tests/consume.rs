//! A consume the broker refuses is asked again once the client has recovered its
//! channel, a bounded number of times: a queue that appears meanwhile is consumed, and
//! one that never does fails the consume with the broker's answer instead of hanging.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::time::{Duration, Instant};

use aios_bus::{Bus, BusError};
use lapin::{
    options::QueueDeclareOptions,
    types::{AMQPValue, FieldTable},
};
use tokio_util::sync::CancellationToken;

async fn bus(vhost: &str) -> (Bus, String) {
    let env = aios_e2e::shared();
    let url = env.create_vhost(vhost).unwrap();
    let bus = Bus::connect(&url, None, &CancellationToken::new())
        .await
        .unwrap();
    (bus, url)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_consume_is_asked_again_and_takes_a_queue_that_appears_meanwhile() {
    let (bus, url) = bus(&format!("consume-late-{}", std::process::id())).await;
    let consuming = tokio::spawn(async move {
        let started = Instant::now();
        let consumer = bus.consume("late.queue", "late", 1).await;
        (consumer.map(|_| ()), started.elapsed())
    });
    // The first ask is refused (NOT_FOUND): the queue is declared a second later.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_other, channel) = support::channel(&url).await;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(
            "late.queue".into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .unwrap();
    let (consumed, took) = consuming.await.unwrap();
    consumed.expect("the consume was asked again and took the queue");
    assert!(
        took >= Duration::from_secs(1),
        "the first ask was refused: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consume_of_a_queue_that_never_appears_fails_with_the_brokers_answer() {
    let (bus, _) = bus(&format!("consume-never-{}", std::process::id())).await;
    let consumed = tokio::time::timeout(
        Duration::from_secs(60),
        bus.consume("never.queue", "never", 1),
    )
    .await
    .expect("the consume gave up within 60 s");
    let err = consumed.expect_err("no queue, no consumer");
    assert!(matches!(err, BusError::Amqp { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("consuming never.queue") && text.contains("NOT_FOUND"),
        "{text}"
    );
}
