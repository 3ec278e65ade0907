//! Test support for the bus: a cancel message to publish, and a channel on a connection
//! of the test's own, beside the bus under test.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use aios_crds::bus::{ObjectRef, SCHEMA_VERSION, TaskCancel};

/// A cancel of attempt `attempt` of one Task.
pub fn cancel(attempt: u32) -> TaskCancel {
    TaskCancel {
        schema_version: SCHEMA_VERSION,
        task: ObjectRef {
            namespace: "team-a".to_owned(),
            name: "build".to_owned(),
            uid: "uid-1".to_owned(),
        },
        attempt,
        reason: "the Task was deleted".to_owned(),
    }
}

/// A connection of its own to `url`, and a channel on it (keep the connection while
/// the channel is used).
pub async fn channel(url: &str) -> (lapin::Connection, lapin::Channel) {
    let connection = lapin::DefaultConnectionBuilder::new()
        .unwrap()
        .with_uri_str(url.to_owned())
        .connect()
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    (connection, channel)
}
