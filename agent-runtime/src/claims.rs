//! Claims in Redis: exactly one worker does an attempt. A worker claims the attempt
//! (`SET NX` with a lease) before working and renews the lease with every heartbeat; a
//! finished attempt is marked done, and a cancelled one is marked cancelled, so a
//! redelivered message for either is acknowledged without work.

use std::time::Duration;

use redis::{Script, aio::ConnectionManager};

/// How long a done or cancelled mark is kept: longer than any redelivery can come.
const MARK_TTL: Duration = Duration::from_secs(aios_crds::names::redis::MARK_TTL_SECONDS);

/// What claiming an attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This worker holds the attempt now.
    Claimed,
    /// The attempt finished already.
    Done,
    /// The attempt was cancelled.
    Cancelled,
    /// Another live worker holds it; its lease ends within the duration unless renewed.
    Held {
        /// The holder.
        by: String,
        /// The lease left.
        ttl: Duration,
    },
}

/// What renewing a claim found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Still this worker's, for another lease.
    Held,
    /// Nobody held it any more (Redis lost it): this worker holds it again.
    Recovered,
    /// No longer this worker's.
    Lost,
    /// The attempt was cancelled.
    Cancelled,
}

/// The claim store of one worker.
#[derive(Clone)]
pub struct Claims {
    redis: ConnectionManager,
    worker: String,
    lease: Duration,
}

impl std::fmt::Debug for Claims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claims")
            .field("worker", &self.worker)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

fn claim_key(attempt: &str) -> String {
    format!("aios:claim:{attempt}")
}
fn done_key(attempt: &str) -> String {
    format!("aios:done:{attempt}")
}
/// Cancel marks are written by the operator too (a cancel no agent heard), so the key
/// is the shared one.
fn cancel_key(attempt: &str) -> String {
    aios_crds::names::redis::cancel_key(attempt)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

impl Claims {
    /// Claims made by `worker` (unique per process) with leases of `lease`.
    pub fn new(redis: ConnectionManager, worker: impl Into<String>, lease: Duration) -> Self {
        Self {
            redis,
            worker: worker.into(),
            lease,
        }
    }

    /// This worker's identity.
    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// Tries to claim `attempt` (`<task uid>-<attempt>`).
    pub async fn claim(&self, attempt: &str) -> redis::RedisResult<Claim> {
        // One script, so "done", "cancelled" and "held" are read at the moment of the claim.
        let script = Script::new(
            r"
            if redis.call('EXISTS', KEYS[2]) == 1 then return {'done'} end
            if redis.call('EXISTS', KEYS[3]) == 1 then return {'cancelled'} end
            if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {'claimed'} end
            local holder = redis.call('GET', KEYS[1])
            if holder == ARGV[1] then
                redis.call('PEXPIRE', KEYS[1], ARGV[2])
                return {'claimed'}
            end
            return {'held', holder or '', tostring(redis.call('PTTL', KEYS[1]))}
            ",
        );
        let reply: Vec<String> = script
            .key(claim_key(attempt))
            .key(done_key(attempt))
            .key(cancel_key(attempt))
            .arg(&self.worker)
            .arg(millis(self.lease))
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(match reply.first().map(String::as_str) {
            Some("done") => Claim::Done,
            Some("cancelled") => Claim::Cancelled,
            Some("claimed") => Claim::Claimed,
            _ => Claim::Held {
                by: reply.get(1).cloned().unwrap_or_default(),
                ttl: Duration::from_millis(
                    reply
                        .get(2)
                        .and_then(|t| t.parse::<u64>().ok())
                        .unwrap_or(0),
                ),
            },
        })
    }

    /// Renews this worker's lease, unless the attempt was cancelled meanwhile (a cancel
    /// this worker did not hear, marked by the operator or another worker) or another
    /// worker holds the claim now; a claim nobody holds is taken back.
    pub async fn renew(&self, attempt: &str) -> redis::RedisResult<Renewal> {
        // A claim nobody holds (Redis restarted without persistence and lost it, or the
        // lease lapsed while this worker stalled) is taken back: the attempt runs here,
        // and its message is still unacknowledged on this worker's channel, so no one
        // else was given it. Only a claim another worker holds is lost.
        let script = Script::new(
            r"
            if redis.call('EXISTS', KEYS[2]) == 1 then return 2 end
            local holder = redis.call('GET', KEYS[1])
            if holder == ARGV[1] then
                return redis.call('PEXPIRE', KEYS[1], ARGV[2])
            end
            if not holder then
                redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
                return 3
            end
            return 0
            ",
        );
        let renewed: i64 = script
            .key(claim_key(attempt))
            .key(cancel_key(attempt))
            .arg(&self.worker)
            .arg(millis(self.lease))
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(match renewed {
            1 => Renewal::Held,
            2 => Renewal::Cancelled,
            3 => Renewal::Recovered,
            _ => Renewal::Lost,
        })
    }

    /// Marks `attempt` done and lets go of the claim.
    pub async fn finish(&self, attempt: &str) -> redis::RedisResult<()> {
        let script = Script::new(
            r"
            redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
            if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
            return 1
            ",
        );
        script
            .key(claim_key(attempt))
            .key(done_key(attempt))
            .arg(&self.worker)
            .arg(millis(MARK_TTL))
            .invoke_async::<i64>(&mut self.redis.clone())
            .await
            .map(drop)
    }

    /// Lets go of the claim without finishing (the message goes back to the queue).
    pub async fn release(&self, attempt: &str) -> redis::RedisResult<()> {
        let script = Script::new(
            r"
            if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
            return 0
            ",
        );
        script
            .key(claim_key(attempt))
            .arg(&self.worker)
            .invoke_async::<i64>(&mut self.redis.clone())
            .await
            .map(drop)
    }

    /// Marks `attempt` cancelled: no worker starts it from now on.
    pub async fn cancel(&self, attempt: &str) -> redis::RedisResult<()> {
        redis::cmd("SET")
            .arg(cancel_key(attempt))
            .arg(&self.worker)
            .arg("PX")
            .arg(millis(MARK_TTL))
            .query_async::<()>(&mut self.redis.clone())
            .await
    }

    /// Whether Redis answers.
    pub async fn ping(&self) -> bool {
        redis::cmd("PING")
            .query_async::<String>(&mut self.redis.clone())
            .await
            .is_ok()
    }
}
