//! The Project budget counters in Redis, shared by every agent pod: checked before a
//! model call, charged (atomic increments) after it. A call starts only while the
//! counters are below the limits, so a budget is overshot by at most the calls already
//! in flight when it ran out.

use aios_crds::project::Budget;
use redis::aio::ConnectionManager;

use crate::llm::{Call, LlmError};

/// Dollars are counted in millionths, so the counter stays an integer Redis can add
/// atomically.
const MICRO: f64 = 1_000_000.0;

/// The shared counters.
#[derive(Clone)]
pub struct BudgetCounter {
    redis: ConnectionManager,
}

impl std::fmt::Debug for BudgetCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BudgetCounter")
    }
}

fn keys(project: &str) -> (String, String) {
    (
        format!("aios:budget:{project}:tokens"),
        format!("aios:budget:{project}:micro-usd"),
    )
}

fn unavailable(err: &redis::RedisError) -> LlmError {
    LlmError::Budget(err.to_string())
}

impl BudgetCounter {
    /// Counters on `redis`.
    pub fn new(redis: ConnectionManager) -> Self {
        Self { redis }
    }

    /// What `project` has used: tokens and US dollars.
    pub async fn used(&self, project: &str) -> Result<(i64, f64), LlmError> {
        let (tokens, micro) = keys(project);
        let (tokens, micro): (Option<i64>, Option<i64>) = redis::cmd("MGET")
            .arg(&tokens)
            .arg(&micro)
            .query_async(&mut self.redis.clone())
            .await
            .map_err(|e| unavailable(&e))?;
        #[allow(clippy::cast_precision_loss)] // micro-dollars stay far below 2^52
        let usd = micro.unwrap_or(0) as f64 / MICRO;
        Ok((tokens.unwrap_or(0), usd))
    }

    /// Fails with `BudgetExceeded` when `project` has reached a limit of `budget`.
    pub async fn check(&self, project: &str, budget: &Budget) -> Result<(), LlmError> {
        let (tokens, usd) = self.used(project).await?;
        if let Some(limit) = budget.tokens
            && tokens >= limit
        {
            return Err(LlmError::BudgetExceeded(format!(
                "{tokens} of {limit} tokens used"
            )));
        }
        if let Some(limit) = budget.usd
            && usd >= limit
        {
            return Err(LlmError::BudgetExceeded(format!(
                "${usd:.4} of ${limit:.4} spent"
            )));
        }
        Ok(())
    }

    /// Adds a call's tokens and cost to `project`'s counters.
    pub async fn charge(&self, project: &str, call: &Call) -> Result<(), LlmError> {
        let (tokens, micro) = keys(project);
        let used =
            i64::try_from(call.input_tokens.saturating_add(call.output_tokens)).unwrap_or(i64::MAX);
        #[allow(clippy::cast_possible_truncation)]
        // a call's cost is far below i64::MAX micro-dollars
        let cost = (call.cost_usd * MICRO).round() as i64;
        redis::pipe()
            .atomic()
            .cmd("INCRBY")
            .arg(&tokens)
            .arg(used)
            .ignore()
            .cmd("INCRBY")
            .arg(&micro)
            .arg(cost)
            .ignore()
            .query_async::<()>(&mut self.redis.clone())
            .await
            .map_err(|e| unavailable(&e))
    }
}
