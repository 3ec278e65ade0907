//! Cancel marks in Redis: the durable half of a cancel. The fanout on the bus reaches
//! only the agents connected at that moment; the mark reaches every worker later, since
//! a worker checks it before it starts an attempt and whenever it renews its claim. The
//! key and its lifetime are the ones agents use (`aios_crds::names::redis`).

use std::time::Duration;

use aios_crds::names::redis::{MARK_TTL_SECONDS, cancel_key};

/// How long writing a mark may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a mark was not written.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    /// Redis refused or failed.
    #[error("writing the cancel mark of {attempt} to Redis at {endpoint}: {source}")]
    Redis {
        /// The attempt.
        attempt: String,
        /// The Redis URL without its password.
        endpoint: String,
        /// What Redis said.
        #[source]
        source: redis::RedisError,
    },
    /// Redis did not answer in time.
    #[error("writing the cancel mark of {attempt}: Redis did not answer within 5 s")]
    TimedOut {
        /// The attempt.
        attempt: String,
    },
}

/// Writes cancel marks to the agents' Redis.
#[derive(Debug, Clone)]
pub struct CancelMarks {
    client: redis::Client,
    /// The Redis URL without its password, for messages.
    endpoint: String,
}

impl CancelMarks {
    /// For the Redis at `url` (over TLS for `rediss://`, trusting `ca` when given);
    /// nothing is connected until a mark is written.
    pub fn new(
        url: &str,
        ca: Option<&aios_bus::CaBundle>,
    ) -> Result<Self, aios_bus::tls::TlsError> {
        Ok(Self {
            client: aios_bus::tls::redis_client(url, ca)?,
            endpoint: aios_crds::text::without_userinfo(url),
        })
    }

    /// Marks `attempt` (`<task uid>-<attempt>`) cancelled, for as long as agents keep
    /// their marks. Cancels are rare: each write opens a connection of its own.
    pub async fn mark(&self, attempt: &str) -> Result<(), CancelError> {
        let write = async {
            let mut connection = self.client.get_multiplexed_async_connection().await?;
            redis::cmd("SET")
                .arg(cancel_key(attempt))
                .arg("operator")
                .arg("EX")
                .arg(MARK_TTL_SECONDS)
                .query_async::<()>(&mut connection)
                .await
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(CancelError::Redis {
                attempt: attempt.to_owned(),
                endpoint: self.endpoint.clone(),
                source,
            }),
            Err(_) => Err(CancelError::TimedOut {
                attempt: attempt.to_owned(),
            }),
        }
    }
}
