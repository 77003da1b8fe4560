//! Sign-in throttling shared by a cluster: [`RedisThrottleCounters`] keeps
//! `keyward_auth::throttle`'s failure counts and spraying sets in Redis, so
//! that an attacker who spreads guesses over the nodes gains nothing.
//!
//! Each operation is one script (atomic per key). Expiry follows the caller's
//! clock (`now_ms`), as `LocalThrottleCounters` does; Redis's own key expiry
//! only cleans up.
//!
//! Decision: when Redis cannot be reached, the counts fall back to this node's
//! memory (a `LocalThrottleCounters`), logged and counted in
//! `keyward_redis_errors_total`. Failing closed (refusing every sign-in) would
//! let whoever can disturb Redis lock everyone out, and counting nothing would
//! switch throttling off; per node, an attacker gains at most the number of
//! nodes over the outage, and never reaches the lockout through it (a count
//! read from Redis is never added to a local one).

use crate::metrics::Metrics;
use async_trait::async_trait;
use keyward_auth::throttle::{Failures, LocalThrottleCounters, ThrottleCounters};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use std::sync::Arc;
use std::time::Duration;

/// Failure counts and spraying sets in Redis, under one prefix.
pub struct RedisThrottleCounters {
    redis: ConnectionManager,
    prefix: String,
    metrics: Arc<Metrics>,
    fallback: LocalThrottleCounters,
    add_failure: Script,
    add_distinct: Script,
}

/// KEYS[1] the count's hash; ARGV now, ttl. A count whose expiry passed starts
/// again from zero. Returns {count, last}.
const ADD_FAILURE: &str = r"
local now, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local f = redis.call('HMGET', KEYS[1], 'count', 'expires')
local count = tonumber(f[1]) or 0
if (tonumber(f[2]) or 0) <= now then count = 0 end
count = count + 1
redis.call('HSET', KEYS[1], 'count', count, 'last', now, 'expires', now + ttl)
redis.call('PEXPIRE', KEYS[1], ttl)
return { count, now }
";

/// KEYS[1] the set (members scored by their expiry); ARGV now, ttl, member.
/// Returns how many members have not expired.
const ADD_DISTINCT: &str = r"
local now, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[3])
redis.call('PEXPIRE', KEYS[1], ttl)
return redis.call('ZCARD', KEYS[1])
";

impl RedisThrottleCounters {
    /// Counters in the Redis at `url`, every key under `prefix`. Does not wait
    /// for Redis (a node may start while it is down). The error never holds
    /// the URL: it may carry a password.
    pub fn connect(url: &str, prefix: &str, metrics: Arc<Metrics>) -> Result<Self, InvalidUrl> {
        let client = redis::Client::open(url).map_err(|_| InvalidUrl)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1);
        let redis =
            ConnectionManager::new_lazy_with_config(client, config).map_err(|_| InvalidUrl)?;
        Ok(Self {
            redis,
            prefix: prefix.to_owned(),
            metrics,
            fallback: LocalThrottleCounters::default(),
            add_failure: Script::new(ADD_FAILURE),
            add_distinct: Script::new(ADD_DISTINCT),
        })
    }

    /// The Redis key of a throttling key, which names an email address or a
    /// source address: hashed, so that Redis holds neither.
    fn key(&self, kind: &str, key: &str) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(key.as_bytes());
        format!("{}{kind}:{}", self.prefix, hex::encode(digest))
    }

    fn failed(&self, what: &str, e: &redis::RedisError) {
        self.metrics.redis_errors.inc();
        // The error names no key: keys hold email addresses and sources.
        tracing::warn!(operation = what, error = %e, "sign-in throttling: Redis failed; counting on this node meanwhile");
    }
}

/// The Redis URL does not parse.
#[derive(Debug, thiserror::Error)]
#[error("the Redis URL is not valid")]
pub struct InvalidUrl;

/// A reply's `[count, last]` as failures (never more than `u32::MAX`).
fn failures_of(reply: &[i64]) -> Failures {
    match reply {
        [count, last] => Failures {
            count: u32::try_from(*count).unwrap_or(u32::MAX),
            last_ms: *last,
        },
        _ => Failures::default(),
    }
}

#[async_trait]
impl ThrottleCounters for RedisThrottleCounters {
    async fn add_failure(&self, key: &str, now_ms: i64, ttl_ms: i64) -> Failures {
        let mut con = self.redis.clone();
        let reply: redis::RedisResult<Vec<i64>> = self
            .add_failure
            .key(self.key("fail", key))
            .arg(now_ms)
            .arg(ttl_ms.max(1))
            .invoke_async(&mut con)
            .await;
        match reply {
            Ok(reply) => failures_of(&reply),
            Err(e) => {
                self.failed("add_failure", &e);
                self.fallback.add_failure(key, now_ms, ttl_ms).await
            }
        }
    }

    async fn failures(&self, key: &str, now_ms: i64) -> Failures {
        let mut con = self.redis.clone();
        let reply: redis::RedisResult<(Option<i64>, Option<i64>, Option<i64>)> =
            redis::cmd("HMGET")
                .arg(self.key("fail", key))
                .arg(&["count", "last", "expires"][..])
                .query_async(&mut con)
                .await;
        match reply {
            Ok((Some(count), Some(last), Some(expires))) if expires > now_ms => {
                failures_of(&[count, last])
            }
            Ok(_) => Failures::default(),
            Err(e) => {
                self.failed("failures", &e);
                self.fallback.failures(key, now_ms).await
            }
        }
    }

    async fn reset(&self, key: &str) {
        let mut con = self.redis.clone();
        let reply: redis::RedisResult<()> = redis::cmd("DEL")
            .arg(self.key("fail", key))
            .query_async(&mut con)
            .await;
        if let Err(e) = reply {
            self.failed("reset", &e);
        }
        self.fallback.reset(key).await;
    }

    async fn add_distinct(&self, key: &str, member: &str, now_ms: i64, ttl_ms: i64) -> usize {
        let mut con = self.redis.clone();
        let reply: redis::RedisResult<i64> = self
            .add_distinct
            .key(self.key("set", key))
            .arg(now_ms)
            .arg(ttl_ms.max(1))
            .arg(member)
            .invoke_async(&mut con)
            .await;
        match reply {
            Ok(n) => usize::try_from(n).unwrap_or(0),
            Err(e) => {
                self.failed("add_distinct", &e);
                self.fallback
                    .add_distinct(key, member, now_ms, ttl_ms)
                    .await
            }
        }
    }

    async fn distinct(&self, key: &str, now_ms: i64) -> usize {
        let mut con = self.redis.clone();
        let reply: redis::RedisResult<i64> = redis::cmd("ZCOUNT")
            .arg(self.key("set", key))
            .arg(format!("({now_ms}"))
            .arg("+inf")
            .query_async(&mut con)
            .await;
        match reply {
            Ok(n) => usize::try_from(n).unwrap_or(0),
            Err(e) => {
                self.failed("distinct", &e);
                self.fallback.distinct(key, now_ms).await
            }
        }
    }
}
