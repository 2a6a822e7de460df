//! Rate limits: token buckets per key (client IP for register and login and for unknown API keys,
//! API key for ingestion requests and events, bearer token for analytics), held in process and shared across instances
//! through Redis without a Redis round trip per request.
//!
//! - [`bucket`]: the bucket math (GCRA: one instant per key), pure.
//! - [`Limiter`]: the buckets of one limit, in shards of bounded size; a full, reported bucket is the
//!   same as no bucket, so those go first when a shard is full.
//! - [`shared`]: every [`SYNC_INTERVAL`] [`sync_loop`] reports each bucket's tokens taken since the
//!   last report to its Redis key (named by a keyed hash of the limited key) and reads back the shared state, which it merges into the local
//!   bucket: N instances together stay within the limit up to what they take in one interval. A key
//!   an instance has not seen recently is read from Redis once, on its first request.
//! - Without Redis (unset, down, or slower than `STRATA_REDIS_TIMEOUT`), each instance limits alone,
//!   so N instances allow up to N times the limit; sharing resumes when Redis answers again.

pub mod bucket;
pub mod shared;

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, RateLimit};
use bucket::Bucket;
use shared::Shared;

/// How often each instance reports to Redis and reads the shared state back.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(200);
/// Buckets kept per limiter at most (bounded memory).
const MAX_BUCKETS: usize = 100_000;
/// Shards per limiter: requests for different keys rarely wait on one lock.
const SHARDS: usize = 16;
/// With Redis answering, a bucket unused here this long is dropped once reported (it is read back
/// from Redis if the key comes again), so reports cover active keys only.
const IDLE_DROP: Duration = Duration::from_secs(10);

/// The verdict on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead; `remaining` more tokens fit now.
    Allowed {
        /// Whole tokens left.
        remaining: u32,
    },
    /// Refused; the cost fits again after `retry_after`.
    Limited {
        /// Time until the same request is allowed.
        retry_after: Duration,
    },
    /// Refused for good: the cost is more than the whole burst.
    TooLarge,
}

/// The buckets of one limit.
pub struct Limiter {
    name: &'static str,
    limit: RateLimit,
    shards: Vec<Mutex<HashMap<String, Bucket>>>,
    hasher: std::collections::hash_map::RandomState,
    shared: Option<Arc<Shared>>,
}

impl Limiter {
    /// Buckets of `limit`, shared through `shared` under `name` when given.
    pub fn new(name: &'static str, limit: RateLimit, shared: Option<Arc<Shared>>) -> Limiter {
        Limiter {
            name,
            limit,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: Default::default(),
            shared,
        }
    }

    /// The limit enforced.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Takes `cost` tokens of `key`'s bucket. Never waits for Redis, except once for a key this
    /// instance holds no bucket for, while Redis answers.
    pub async fn check(&self, key: &str, cost: u32) -> Decision {
        if let Some(d) = self.take_known(key, cost, Instant::now()) {
            return d;
        }
        let ahead = match &self.shared {
            Some(s) => s.fetch(&s.key(self.name, key)).await.unwrap_or_default(),
            None => Duration::ZERO,
        };
        self.take_seeded(key, cost, Instant::now(), ahead)
    }

    /// What [`Limiter::check`] would decide for `key`, without taking anything: lets a caller refuse
    /// work up front and take a token only when the work turns out to count (a failed key lookup).
    /// Waits for Redis only for a key this instance holds no bucket for, while Redis answers.
    pub async fn peek(&self, key: &str, cost: u32) -> Decision {
        let now = Instant::now();
        if let Some(b) = self.shard(key).get(key) {
            return b.peek(self.limit, cost, now);
        }
        let ahead = match &self.shared {
            Some(s) if s.healthy() => s.fetch(&s.key(self.name, key)).await.unwrap_or_default(),
            _ => Duration::ZERO,
        };
        if ahead.is_zero() {
            // A full bucket: nothing worth keeping a bucket for.
            return Bucket::new(now, ahead).peek(self.limit, cost, now);
        }
        let now = Instant::now();
        self.with_bucket(key, now, ahead, |b| b.peek(self.limit, cost, now))
    }

    /// Takes `cost` tokens at `now`, without Redis (a new key starts full).
    pub fn check_at(&self, key: &str, cost: u32, now: Instant) -> Decision {
        self.take_known(key, cost, now).unwrap_or_else(|| self.take_seeded(key, cost, now, Duration::ZERO))
    }

    fn shard(&self, key: &str) -> std::sync::MutexGuard<'_, HashMap<String, Bucket>> {
        let i = (self.hasher.hash_one(key) % SHARDS as u64) as usize;
        // A panic while holding the lock cannot leave a bucket half-updated: keep going.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The decision for a key with a bucket; `None` when there is none and Redis should be asked.
    fn take_known(&self, key: &str, cost: u32, now: Instant) -> Option<Decision> {
        let mut shard = self.shard(key);
        if let Some(b) = shard.get_mut(key) {
            return Some(b.take(self.limit, cost, now));
        }
        if self.shared.as_ref().is_some_and(|s| s.healthy()) {
            return None;
        }
        drop(shard);
        Some(self.take_seeded(key, cost, now, Duration::ZERO))
    }

    /// The decision for `key`, making its bucket `ahead` of full if it has none.
    fn take_seeded(&self, key: &str, cost: u32, now: Instant, ahead: Duration) -> Decision {
        self.with_bucket(key, now, ahead, |b| b.take(self.limit, cost, now))
    }

    /// Runs `f` on `key`'s bucket, made `ahead` of full (merged into an existing one).
    fn with_bucket<R>(&self, key: &str, now: Instant, ahead: Duration, f: impl FnOnce(&mut Bucket) -> R) -> R {
        let mut shard = self.shard(key);
        if !shard.contains_key(key) && shard.len() >= MAX_BUCKETS / SHARDS {
            shard.retain(|_, b| !b.idle(now));
            if shard.len() >= MAX_BUCKETS / SHARDS {
                // Every bucket is in use: drop the one closest to full (it loses the least).
                if let Some(k) = shard.iter().min_by_key(|(_, b)| b.tat).map(|(k, _)| k.clone()) {
                    shard.remove(&k);
                }
            }
        }
        let b = shard.entry(key.to_owned()).or_insert_with(|| Bucket::new(now, Duration::ZERO));
        b.merge(self.limit, ahead, now);
        f(b)
    }

    /// Buckets held (for tests).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len()).sum()
    }

    /// True when no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops buckets that need no report (full ones; with Redis answering, also those idle for
    /// [`IDLE_DROP`]), and takes the tokens to report of the others: `(key, microseconds)`.
    fn drain(&self, now: Instant, healthy: bool) -> Vec<(String, u64)> {
        let interval_ns = self.limit.interval().as_nanos();
        let mut out = Vec::new();
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            shard.retain(|_, b| {
                !(b.idle(now) || (healthy && b.unsynced == 0 && now.saturating_duration_since(b.used) > IDLE_DROP))
            });
            for (k, b) in shard.iter_mut() {
                let us = (u128::from(b.unsynced) * interval_ns).div_ceil(1000);
                out.push((k.clone(), u64::try_from(us).unwrap_or(u64::MAX)));
                b.unsynced = 0;
            }
        }
        out
    }

    /// Merges the shared state `ahead` of `key` read at `now`.
    fn merge(&self, key: &str, ahead: Duration, now: Instant) {
        if let Some(b) = self.shard(key).get_mut(key) {
            b.merge(self.limit, ahead, now);
        }
    }
}

/// The limiters of the service (`None`: that limit is off).
#[derive(Clone, Default)]
pub struct Limits {
    /// Register and login attempts per client IP (`STRATA_AUTH_RATE_LIMIT`).
    pub auth: Option<Arc<Limiter>>,
    /// Ingestion requests per API key (`STRATA_INGEST_RATE_LIMIT`).
    pub ingest: Option<Arc<Limiter>>,
    /// Ingested events per API key (`STRATA_INGEST_EVENT_RATE_LIMIT`).
    pub ingest_events: Option<Arc<Limiter>>,
    /// Analytics requests per bearer token (`STRATA_ANALYTICS_RATE_LIMIT`).
    pub analytics: Option<Arc<Limiter>>,
    /// Unknown API keys per client IP (`STRATA_KEY_FAILURE_RATE_LIMIT`).
    pub key_failures: Option<Arc<Limiter>>,
}

impl Limits {
    /// The limiters of `cfg`; with Redis configured and any limit on, spawns [`sync_loop`]. Limited
    /// keys are hashed under `secret` in Redis key names.
    pub fn start(cfg: &Config, secret: &[u8], stop: CancellationToken, tracker: &TaskTracker) -> Limits {
        let any = [
            cfg.auth_rate_limit,
            cfg.ingest_rate_limit,
            cfg.ingest_event_rate_limit,
            cfg.analytics_rate_limit,
            cfg.key_failure_rate_limit,
        ]
        .iter()
        .any(Option::is_some);
        let shared = match &cfg.redis_url {
            Some(url) if any => match Shared::new(url, &cfg.redis_prefix, cfg.redis_timeout, secret) {
                Ok(s) => Some(Arc::new(s)),
                Err(e) => {
                    tracing::warn!(error = %e, "REDIS_URL is unusable; each instance applies the rate limits alone");
                    None
                }
            },
            _ => None,
        };
        let make = |name, limit: Option<RateLimit>| limit.map(|l| Arc::new(Limiter::new(name, l, shared.clone())));
        let limits = Limits {
            auth: make("auth", cfg.auth_rate_limit),
            ingest: make("ingest", cfg.ingest_rate_limit),
            ingest_events: make("ingest_events", cfg.ingest_event_rate_limit),
            analytics: make("analytics", cfg.analytics_rate_limit),
            key_failures: make("key_failures", cfg.key_failure_rate_limit),
        };
        if let Some(shared) = shared {
            tracker.spawn(sync_loop(limits.clone(), shared, stop));
        }
        limits
    }

    fn all(&self) -> impl Iterator<Item = &Arc<Limiter>> {
        [&self.auth, &self.ingest, &self.ingest_events, &self.analytics, &self.key_failures].into_iter().flatten()
    }
}

/// Reports to Redis and merges the shared state back every [`SYNC_INTERVAL`] until `stop`.
pub async fn sync_loop(limits: Limits, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(SYNC_INTERVAL) => {}
        }
        sync_once(&limits, &shared).await;
    }
}

/// One report of every limiter's buckets, in one pipeline (per thousand buckets).
pub async fn sync_once(limits: &Limits, shared: &Shared) {
    let healthy = shared.healthy();
    let now = Instant::now();
    let mut owners = Vec::new();
    let mut reports = Vec::new();
    for limiter in limits.all() {
        for (key, us) in limiter.drain(now, healthy) {
            reports.push((shared.key(limiter.name, &key), us));
            owners.push((limiter, key));
        }
    }
    let Some(aheads) = shared.report(&reports).await else { return };
    let now = Instant::now();
    for ((limiter, key), ahead) in owners.into_iter().zip(aheads) {
        limiter.merge(&key, ahead, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limiter_keeps_one_bucket_per_key() {
        let limiter = Limiter::new("auth", RateLimit::parse("10/15m").unwrap(), None);
        let t = Instant::now();
        for i in 0..10 {
            assert_eq!(limiter.check_at("10.0.0.1", 1, t), Decision::Allowed { remaining: 9 - i });
        }
        assert_eq!(limiter.check_at("10.0.0.1", 1, t), Decision::Limited { retry_after: Duration::from_secs(90) });
        assert_eq!(limiter.check_at("10.0.0.2", 1, t), Decision::Allowed { remaining: 9 });
        assert_eq!(limiter.check_at("10.0.0.1", 1, t + Duration::from_secs(91)), Decision::Allowed { remaining: 0 });
        assert_eq!(limiter.len(), 2);
    }

    #[tokio::test]
    async fn a_peek_answers_like_a_check_and_takes_nothing() {
        let limiter = Limiter::new("key_failures", RateLimit::parse("2/1m").unwrap(), None);
        assert_eq!(limiter.peek("10.0.0.1", 1).await, Decision::Allowed { remaining: 1 });
        assert!(limiter.is_empty(), "a peek at a full bucket keeps no bucket");
        let t = Instant::now();
        limiter.check_at("10.0.0.1", 1, t);
        assert_eq!(limiter.peek("10.0.0.1", 1).await, Decision::Allowed { remaining: 0 });
        limiter.check_at("10.0.0.1", 1, t);
        let Decision::Limited { retry_after } = limiter.peek("10.0.0.1", 1).await else { panic!("not limited") };
        assert!(retry_after > Duration::from_secs(29) && retry_after <= Duration::from_secs(30), "{retry_after:?}");
        assert!(matches!(limiter.peek("10.0.0.1", 1).await, Decision::Limited { .. }));
        assert_eq!(limiter.peek("10.0.0.2", 1).await, Decision::Allowed { remaining: 1 });
        assert_eq!(limiter.len(), 1);
    }

    #[test]
    fn memory_stays_bounded_and_full_buckets_go_first() {
        let limiter = Limiter::new("ingest", RateLimit::parse("5/1h").unwrap(), None);
        let t = Instant::now();
        for i in 0..MAX_BUCKETS + 5_000 {
            limiter.check_at(&i.to_string(), 1, t);
        }
        assert!(limiter.len() <= MAX_BUCKETS, "{} buckets", limiter.len());
        // After the window every bucket is full and reported: the next drain keeps none.
        for shard in &limiter.shards {
            shard.lock().unwrap().values_mut().for_each(|b| b.unsynced = 0);
        }
        assert!(limiter.drain(t + Duration::from_secs(3600), false).is_empty());
        assert!(limiter.is_empty());
    }

    #[test]
    fn a_drain_reports_tokens_taken_in_microseconds_once() {
        let limiter = Limiter::new("ingest_events", RateLimit::parse("100/1s").unwrap(), None);
        let t = Instant::now();
        assert_eq!(limiter.check_at("k", 30, t), Decision::Allowed { remaining: 70 });
        assert_eq!(limiter.drain(t, true), vec![("k".to_owned(), 300_000)]);
        assert_eq!(limiter.drain(t, true), vec![("k".to_owned(), 0)]);
        // Another instance took 50 more meanwhile: Redis says 800 ms ahead.
        limiter.merge("k", Duration::from_millis(800), t);
        assert_eq!(limiter.check_at("k", 30, t), Decision::Limited { retry_after: Duration::from_millis(100) });
        assert_eq!(limiter.check_at("k", 20, t), Decision::Allowed { remaining: 0 });
        // Unused for longer than IDLE_DROP and reported: dropped while Redis answers.
        limiter.drain(t, true);
        assert!(limiter.drain(t + IDLE_DROP + Duration::from_secs(1), true).is_empty());
    }
}
