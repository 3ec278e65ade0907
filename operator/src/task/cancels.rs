//! Cancels in Redis, where agents keep their state.
//!
//! A cancel mark is the durable half of a cancel. The fanout on the bus reaches only the
//! agents connected at that moment; the mark reaches every worker later, since a worker
//! checks it before it starts an attempt and whenever it renews its claim. The key and
//! its lifetime are the ones agents use (`aios_crds::names::redis`).
//!
//! The attempts in flight are recorded beside the marks (hash
//! `aios:inflight:<namespace>`, field `<task uid>-<attempt>`, value the Task's name), so
//! that a Task deleted with an attempt in flight has it cancelled even when no operator
//! watched the deletion: the record outlives the Task, and the sweep (see
//! [`crate::task::sweep`]) finds it. This is what a finalizer on every dispatched Task
//! did, at two API writes per task on the dispatch path; a record costs one Redis write.

use std::{sync::Arc, time::Duration};

use aios_crds::names::redis::{MARK_TTL_SECONDS, cancel_key};
use redis::aio::ConnectionManager;
use tokio::sync::OnceCell;

/// How long one Redis command may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The hash of the attempts in flight in `namespace`.
pub fn in_flight_key(namespace: &str) -> String {
    format!("aios:inflight:{namespace}")
}

/// An attempt recorded in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The Task's namespace.
    pub namespace: String,
    /// The Task's name.
    pub name: String,
    /// The Task's uid.
    pub uid: String,
    /// The attempt.
    pub attempt: i32,
}

impl Recorded {
    /// The attempt's id, `<task uid>-<attempt>`: the field it is recorded under.
    pub fn id(&self) -> String {
        format!("{}-{}", self.uid, self.attempt)
    }

    /// The record of field `id` (`<task uid>-<attempt>`) with value `name` in
    /// `namespace`'s hash; `None` if the field is not an attempt id.
    pub fn parse(namespace: &str, id: &str, name: &str) -> Option<Self> {
        let (uid, attempt) = id.rsplit_once('-')?;
        Some(Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid: uid.to_owned(),
            attempt: attempt.parse().ok()?,
        })
    }
}

/// Why Redis did not do what a cancel needed.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    /// Redis refused or failed.
    #[error("{what} in Redis at {endpoint}: {source}")]
    Redis {
        /// What was being done.
        what: String,
        /// The Redis URL without its password.
        endpoint: String,
        /// What Redis said.
        #[source]
        source: redis::RedisError,
    },
    /// Redis did not answer in time.
    #[error("{what}: Redis did not answer within 5 s")]
    TimedOut {
        /// What was being done.
        what: String,
    },
}

/// Writes cancel marks to the agents' Redis, and records the attempts in flight.
#[derive(Clone)]
pub struct CancelMarks {
    client: redis::Client,
    /// One connection, made on first use and re-made when lost.
    connection: Arc<OnceCell<ConnectionManager>>,
    /// The Redis URL without its password, for messages.
    endpoint: String,
}

impl std::fmt::Debug for CancelMarks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelMarks")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl CancelMarks {
    /// For the Redis at `url` (over TLS for `rediss://`, trusting `ca` when given);
    /// nothing is connected until the first command.
    pub fn new(
        url: &str,
        ca: Option<&aios_bus::CaBundle>,
    ) -> Result<Self, aios_bus::tls::TlsError> {
        Ok(Self {
            client: aios_bus::tls::redis_client(url, ca)?,
            connection: Arc::default(),
            endpoint: aios_crds::text::without_userinfo(url),
        })
    }

    /// Runs `command` within [`WRITE_TIMEOUT`]; `what` names it in an error.
    async fn run<T: redis::FromRedisValue>(
        &self,
        what: impl FnOnce() -> String,
        command: &redis::Cmd,
    ) -> Result<T, CancelError> {
        let call = async {
            let mut connection = self
                .connection
                .get_or_try_init(|| self.client.get_connection_manager())
                .await?
                .clone();
            command.query_async::<T>(&mut connection).await
        };
        match tokio::time::timeout(WRITE_TIMEOUT, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) => Err(CancelError::Redis {
                what: what(),
                endpoint: self.endpoint.clone(),
                source,
            }),
            Err(_) => Err(CancelError::TimedOut { what: what() }),
        }
    }

    /// Marks `attempt` (`<task uid>-<attempt>`) cancelled, for as long as agents keep
    /// their marks.
    pub async fn mark(&self, attempt: &str) -> Result<(), CancelError> {
        let mut command = redis::cmd("SET");
        command
            .arg(cancel_key(attempt))
            .arg("operator")
            .arg("EX")
            .arg(MARK_TTL_SECONDS);
        self.run(|| format!("writing the cancel mark of {attempt}"), &command)
            .await
    }

    /// Records `attempts` in flight: one command per namespace (a pass records all of
    /// its dispatches at once, before it publishes any).
    pub async fn record(&self, attempts: &[Recorded]) -> Result<(), CancelError> {
        for (namespace, attempts) in by_namespace(attempts) {
            let mut command = redis::cmd("HSET");
            command.arg(in_flight_key(namespace));
            for attempt in &attempts {
                command.arg(attempt.id()).arg(&attempt.name);
            }
            self.run::<()>(
                || {
                    format!(
                        "recording {} attempts in flight in {namespace}",
                        attempts.len()
                    )
                },
                &command,
            )
            .await?;
        }
        Ok(())
    }

    /// Forgets the records of `attempts` (they are over, or cancelled): one command per
    /// namespace.
    pub async fn forget(&self, attempts: &[Recorded]) -> Result<(), CancelError> {
        for (namespace, attempts) in by_namespace(attempts) {
            let ids: Vec<String> = attempts.iter().map(|a| a.id()).collect();
            let mut command = redis::cmd("HDEL");
            command.arg(in_flight_key(namespace)).arg(&ids);
            self.run::<()>(
                || format!("forgetting {} attempts in flight in {namespace}", ids.len()),
                &command,
            )
            .await?;
        }
        Ok(())
    }

    /// The attempts recorded in flight: in `namespace` only, or in every namespace.
    pub async fn recorded(&self, namespace: Option<&str>) -> Result<Vec<Recorded>, CancelError> {
        let keys = if let Some(namespace) = namespace {
            vec![in_flight_key(namespace)]
        } else {
            self.in_flight_keys().await?
        };
        let mut recorded = Vec::new();
        for key in keys {
            let Some(namespace) = key.strip_prefix(&in_flight_key("")) else {
                continue;
            };
            let mut command = redis::cmd("HGETALL");
            command.arg(&key);
            let fields: Vec<(String, String)> = self
                .run(
                    || format!("reading the attempts in flight of {namespace}"),
                    &command,
                )
                .await?;
            recorded.extend(
                fields
                    .iter()
                    .filter_map(|(id, name)| Recorded::parse(namespace, id, name)),
            );
        }
        Ok(recorded)
    }

    /// The in-flight hashes of every namespace, by SCAN rather than KEYS: Redis stays
    /// responsive to the agents meanwhile.
    async fn in_flight_keys(&self) -> Result<Vec<String>, CancelError> {
        let mut keys = Vec::new();
        let mut cursor = 0_u64;
        loop {
            let mut command = redis::cmd("SCAN");
            command
                .arg(cursor)
                .arg("MATCH")
                .arg(in_flight_key("*"))
                .arg("COUNT")
                .arg(1000);
            let (next, batch): (u64, Vec<String>) = self
                .run(|| "listing the attempts in flight".to_owned(), &command)
                .await?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }
}

/// `attempts` grouped by namespace: one Redis hash each.
fn by_namespace(attempts: &[Recorded]) -> std::collections::BTreeMap<&str, Vec<&Recorded>> {
    let mut grouped: std::collections::BTreeMap<&str, Vec<&Recorded>> =
        std::collections::BTreeMap::new();
    for attempt in attempts {
        grouped
            .entry(attempt.namespace.as_str())
            .or_default()
            .push(attempt);
    }
    grouped
}
