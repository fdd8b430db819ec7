//! Rate limits: a sliding-window counter per bucket (a key, or an IP's failed logins), in memory
//! by default or shared by every node through Redis (`ANNALS_REDIS_URL`).
//!
//! The window estimate is `previous_minute × (1 − elapsed fraction) + this_minute`: unlike a
//! fixed window it never lets 2× the limit through around a minute boundary, and it costs two
//! counters per bucket. Both backends feed the same `decide` so they answer identically.
//! Losing Redis must not take ingest down, nor slow it: while Redis does not answer, each node
//! counts on its own in memory (a limit then holds per node, not across them), a background probe
//! pings Redis until it answers, and the outage and the recovery are logged once each. A node
//! also starts while Redis is down.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;

use crate::domain::Timestamp;

const WINDOW_MS: u64 = 60_000;

/// The answer for one request, with what the `RateLimit-*` headers report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the current window ends.
    pub reset_secs: u64,
    /// When refused: seconds until a request would be allowed.
    pub retry_after_secs: u64,
}

/// Decides from the counts before this request. `now_ms` is wall-clock milliseconds.
pub fn decide(limit: u32, now_ms: u64, current: u64, previous: u64) -> Decision {
    let into_window = now_ms % WINDOW_MS;
    let weight = 1.0 - into_window as f64 / WINDOW_MS as f64;
    let estimate = previous as f64 * weight + current as f64;
    let limit_f = f64::from(limit);
    let reset_secs = (WINDOW_MS - into_window).div_ceil(1000);
    if estimate + 1.0 <= limit_f {
        let remaining = (limit_f - estimate - 1.0).floor().max(0.0) as u32;
        return Decision {
            allowed: true,
            limit,
            remaining,
            reset_secs,
            retry_after_secs: 0,
        };
    }
    // Refused: wait until the previous minute's share has decayed enough, or the window turns.
    let retry_after_ms = if current + 1 > u64::from(limit) || previous == 0 {
        WINDOW_MS - into_window
    } else {
        let needed_weight = (limit_f - current as f64 - 1.0) / previous as f64;
        let at = ((1.0 - needed_weight) * WINDOW_MS as f64).ceil() as u64;
        at.saturating_sub(into_window)
            .clamp(1, WINDOW_MS - into_window)
    };
    Decision {
        allowed: false,
        limit,
        remaining: 0,
        reset_secs,
        retry_after_secs: retry_after_ms.div_ceil(1000).max(1),
    }
}

fn now_ms() -> u64 {
    u64::try_from(Timestamp::now().as_micros() / 1000).unwrap_or(0)
}

#[async_trait]
pub trait RateLimiter: Send + Sync {
    /// Checks `bucket` against `limit` per minute; an allowed request is counted when `count`.
    async fn check(&self, bucket: &str, limit: u32, count: bool) -> Decision;

    /// As `check`, when the counters are in this process and the answer needs no waiting;
    /// `None` when only `check` can answer.
    fn check_now(&self, _bucket: &str, _limit: u32, _count: bool) -> Option<Decision> {
        None
    }

    /// Where the counters are now, for the health answer.
    fn scope(&self) -> &'static str {
        "per node"
    }
}

/// Counters in this process only, one bucket per `K` (key buckets are strings; the failed-login
/// limiter counts per address).
pub struct MemoryRateLimiter<K = String> {
    buckets: Mutex<HashMap<K, (u64, u64, u64)>>, // window index, current, previous
}

impl<K> Default for MemoryRateLimiter<K> {
    fn default() -> Self {
        Self {
            buckets: Mutex::new(HashMap::new()),
        }
    }
}

const MEMORY_MAX_BUCKETS: usize = 100_000;

#[async_trait]
impl RateLimiter for MemoryRateLimiter {
    async fn check(&self, bucket: &str, limit: u32, count: bool) -> Decision {
        self.check_local(bucket, limit, count)
    }

    fn check_now(&self, bucket: &str, limit: u32, count: bool) -> Option<Decision> {
        Some(self.check_local(bucket, limit, count))
    }
}

impl<K: Hash + Eq> MemoryRateLimiter<K> {
    /// `RateLimiter::check`, answered at once.
    pub fn check_local<Q>(&self, bucket: &Q, limit: u32, count: bool) -> Decision
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let now = now_ms();
        let window = now / WINDOW_MS;
        let mut buckets = self.buckets.lock().expect("rate limiter lock");
        // Looked up by reference: only a new bucket costs an allocation.
        if let Some(counts) = buckets.get_mut(bucket) {
            return counted(counts, limit, now, count);
        }
        if !count {
            // A look that counts nothing leaves no bucket behind.
            return decide(limit, now, 0, 0);
        }
        if buckets.len() >= MEMORY_MAX_BUCKETS {
            // Forget buckets idle for more than a window; they count nothing any more.
            buckets.retain(|_, (w, _, _)| *w + 1 >= window);
        }
        let mut counts = (window, 0, 0);
        let decision = counted(&mut counts, limit, now, count);
        buckets.insert(bucket.to_owned(), counts);
        decision
    }
}

/// Decides for one bucket's `(window index, current, previous)` counts, moving them to the
/// current window first, and counts the request if it is allowed and `count` says so.
fn counted(counts: &mut (u64, u64, u64), limit: u32, now: u64, count: bool) -> Decision {
    let window = now / WINDOW_MS;
    if counts.0 != window {
        let previous = if counts.0 + 1 == window { counts.1 } else { 0 };
        *counts = (window, 0, previous);
    }
    let decision = decide(limit, now, counts.1, counts.2);
    if decision.allowed && count {
        counts.1 += 1;
    }
    decision
}

/// Counters in Redis, shared by every node: `annals:rl:<bucket>:<window>`, expiring after two
/// windows. The read-decide-increment runs as one Lua script, so nodes never race. While Redis
/// does not answer, `fallback` counts in this process (see the module's docs).
pub struct RedisRateLimiter {
    connection: redis::aio::ConnectionManager,
    script: redis::Script,
    link: Arc<RedisLink>,
}

/// Whether Redis answers, and the counters used while it does not.
struct RedisLink {
    answering: AtomicBool,
    fallback: MemoryRateLimiter,
}

/// How long one Redis call may take before the node counts on its own: Redis answers a local
/// script in well under a millisecond, and a request waits for this at most once per outage.
const REDIS_RESPONSE_TIMEOUT: Duration = Duration::from_millis(250);
/// How long connecting may take, at start and when the probe reconnects.
const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How often an unanswering Redis is asked again.
const REDIS_PROBE_INTERVAL: Duration = Duration::from_secs(1);

const SCRIPT: &str = r"
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local previous = tonumber(redis.call('GET', KEYS[2]) or '0')
local limit = tonumber(ARGV[1])
local weight = tonumber(ARGV[2])
if ARGV[3] == '1' and previous * weight + current + 1 <= limit then
  redis.call('INCR', KEYS[1])
  redis.call('PEXPIRE', KEYS[1], 120000)
end
return {current, previous}
";

impl RedisRateLimiter {
    /// Refuses a URL that is no Redis URL; a Redis that does not answer yet is logged, and the
    /// node counts on its own until it does.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(REDIS_RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(REDIS_CONNECT_TIMEOUT))
            .set_number_of_retries(1);
        let connection = redis::aio::ConnectionManager::new_lazy_with_config(client, config)?;
        let limiter = Self {
            connection,
            script: redis::Script::new(SCRIPT),
            link: Arc::new(RedisLink {
                answering: AtomicBool::new(true),
                fallback: MemoryRateLimiter::default(),
            }),
        };
        if let Err(e) = ping(&limiter.connection).await {
            limiter.lost(&e);
        }
        Ok(limiter)
    }

    /// True while rate limits are shared through Redis, false while each node counts alone.
    fn is_shared(&self) -> bool {
        self.link.answering.load(Ordering::Relaxed)
    }

    /// Marks Redis as not answering; the first caller of an outage logs it and starts the probe
    /// that marks it answering again.
    fn lost(&self, error: &redis::RedisError) {
        if !self.link.answering.swap(false, Ordering::Relaxed) {
            return;
        }
        tracing::warn!(
            error = %error,
            "Redis rate limiter unavailable; each node limits on its own until Redis answers"
        );
        let link = Arc::downgrade(&self.link);
        let connection = self.connection.clone();
        tokio::spawn(probe(link, connection));
    }
}

async fn ping(connection: &redis::aio::ConnectionManager) -> redis::RedisResult<()> {
    let mut connection = connection.clone();
    redis::cmd("PING")
        .query_async::<String>(&mut connection)
        .await
        .map(drop)
}

/// Pings Redis every `REDIS_PROBE_INTERVAL` until it answers; ends early when the limiter is
/// gone (its server stopped).
async fn probe(link: Weak<RedisLink>, connection: redis::aio::ConnectionManager) {
    loop {
        tokio::time::sleep(REDIS_PROBE_INTERVAL).await;
        if link.strong_count() == 0 {
            return;
        }
        if ping(&connection).await.is_ok() {
            if let Some(link) = link.upgrade() {
                link.answering.store(true, Ordering::Relaxed);
                tracing::info!("Redis rate limiter answers again; limits are shared across nodes");
            }
            return;
        }
    }
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn check(&self, bucket: &str, limit: u32, count: bool) -> Decision {
        if !self.is_shared() {
            return self.link.fallback.check_local(bucket, limit, count);
        }
        let now = now_ms();
        let window = now / WINDOW_MS;
        let weight = 1.0 - (now % WINDOW_MS) as f64 / WINDOW_MS as f64;
        let mut connection = self.connection.clone();
        let result: redis::RedisResult<(u64, u64)> = self
            .script
            .key(format!("annals:rl:{bucket}:{window}"))
            .key(format!("annals:rl:{bucket}:{}", window.saturating_sub(1)))
            .arg(limit)
            .arg(weight)
            .arg(if count { "1" } else { "0" })
            .invoke_async(&mut connection)
            .await;
        match result {
            Ok((current, previous)) => decide(limit, now, current, previous),
            Err(e) => {
                self.lost(&e);
                self.link.fallback.check_local(bucket, limit, count)
            }
        }
    }

    /// While Redis does not answer, the node's own counters answer at once.
    fn check_now(&self, bucket: &str, limit: u32, count: bool) -> Option<Decision> {
        (!self.is_shared()).then(|| self.link.fallback.check_local(bucket, limit, count))
    }

    fn scope(&self) -> &'static str {
        if self.is_shared() {
            "shared through Redis"
        } else {
            "per node: Redis unavailable"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_up_to_the_limit_in_a_fresh_window() {
        let d = decide(10, 0, 9, 0);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        let d = decide(10, 0, 10, 0);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_secs, 60);
    }

    #[test]
    fn the_previous_minute_weighs_less_as_time_passes() {
        // 30 s into the window, 10 from last minute count as 5.
        let d = decide(10, 30_000, 4, 10);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        let d = decide(10, 30_000, 5, 10);
        assert!(!d.allowed);
        // needs weight ≤ 0.4 → 36 s into the window → 6 s from now
        assert_eq!(d.retry_after_secs, 6);
    }

    #[tokio::test]
    async fn memory_limiter_counts_only_allowed_and_counted_requests() {
        let limiter = MemoryRateLimiter::default();
        for _ in 0..3 {
            assert!(
                limiter.check("k", 3, false).await.allowed,
                "peeks don't count"
            );
        }
        let mut allowed = 0;
        for _ in 0..10 {
            allowed += usize::from(limiter.check("k", 3, true).await.allowed);
        }
        // Unless the minute turned mid-test, exactly 3 pass.
        assert!((3..=6).contains(&allowed), "{allowed}");
        assert!(
            limiter.check("other", 3, true).await.allowed,
            "buckets are separate"
        );
        let peeked = limiter.check("peeked", 3, false).await;
        assert!(peeked.allowed);
        assert_eq!(
            peeked.remaining, 2,
            "a fresh bucket's peek sees the whole limit"
        );
        let buckets = limiter.buckets.lock().unwrap();
        assert!(!buckets.contains_key("peeked"), "a peek leaves no bucket");
        assert_eq!(buckets.len(), 2);
    }
}
