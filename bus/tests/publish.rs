//! A publish the broker refuses (a negative confirm) is sent again a few times: one
//! refused for a moment lands, and one refused for good fails with `NotConfirmed`
//! instead of hanging. The broker's refusal here comes from a queue at its length limit
//! that rejects what does not fit, bound beside the ones the bus publishes to.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::time::{Duration, Instant};

use aios_bus::{Bus, BusError};
use aios_crds::{bus::TaskCancel, names::bus as names};
use lapin::{
    options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions, QueuePurgeOptions},
    types::{AMQPValue, FieldTable},
};
use tokio_util::sync::CancellationToken;

/// A bus on a vhost of its own, and a channel on another connection (with the connection)
/// holding a queue of one message at most, bound to the control exchange, that refuses
/// what does not fit.
async fn bus_and_full_queue(vhost: &str) -> (Bus, lapin::Connection, lapin::Channel) {
    let env = aios_e2e::shared();
    let url = env.create_vhost(vhost).unwrap();
    let bus = Bus::connect(&url, None, &CancellationToken::new())
        .await
        .unwrap();
    let (other, channel) = support::channel(&url).await;
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(1));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    channel
        .queue_declare("full.queue".into(), QueueDeclareOptions::default(), args)
        .await
        .unwrap();
    channel
        .queue_bind(
            "full.queue".into(),
            names::CONTROL_EXCHANGE.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    bus.publish_cancel(&support::cancel(1))
        .await
        .expect("the first fits");
    (bus, other, channel)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_publish_refused_for_a_moment_is_sent_again_and_lands() {
    let (bus, _other, channel) =
        bus_and_full_queue(&format!("publish-late-{}", std::process::id())).await;
    // The queue is full until it is drained, 300 ms after the publish starts.
    let drain = channel.clone();
    let draining = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        drain
            .queue_purge("full.queue".into(), QueuePurgeOptions::default())
            .await
            .unwrap();
    });
    let started = Instant::now();
    bus.publish_cancel(&support::cancel(2))
        .await
        .expect("sent again once the queue had room");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "refused until drained: {:?}",
        started.elapsed()
    );
    draining.await.unwrap();
    let landed = channel
        .basic_get("full.queue".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the cancel sent again is in the queue");
    let got: TaskCancel = serde_json::from_slice(&landed.delivery.data).unwrap();
    assert_eq!(got.attempt, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_publish_refused_for_good_fails_after_a_few_tries() {
    let (bus, _other, _channel) =
        bus_and_full_queue(&format!("publish-never-{}", std::process::id())).await;
    let started = Instant::now();
    let refused = bus.publish_cancel(&support::cancel(2)).await;
    assert!(
        matches!(refused, Err(BusError::NotConfirmed { .. })),
        "{refused:?}"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(20),
        "sent again after 0.1, 0.4 and 1.6 s, then given up: {took:?}"
    );
}
