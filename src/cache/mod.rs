//! The analytics cache: two tiers behind one facade, [`Cache::get_or_compute`].
//!
//! - L1 ([`moka`]): in process, bounded by the bytes of the serialised answers, entries live at most
//!   the freshness period F.
//! - L2 ([`l2`]): Redis shared by all instances, TTL by class ([`keys::TtlClass`]). Optional: absent,
//!   down or slow Redis is counted in `strata_redis_errors_total` and skipped.
//! - Single flight across both tiers ([`flight`]): identical concurrent L1 misses (same app
//!   generation and query) share one L2 lookup and, when L2 misses, fails or times out, one
//!   computation; with L1 disabled too. A lookup slower than `STRATA_REDIS_TIMEOUT` keeps running
//!   beside the computation (up to 1 s) and answers if it comes first. A cancelled leader hands over
//!   to one of the waiters; a failure is shared by the requests that waited for it, never cached.
//! - Answers are kept serialised ([`entry`]: [`Cached::data`], the response's `data` as JSON
//!   bytes, and `{source}\n{data}` in Redis): a hit copies bytes into the response envelope, it never
//!   parses or clones a JSON tree.
//! - Warming ([`warm`], `STRATA_CACHE_WARM`): the most requested queries of active apps are
//!   precomputed after start and after each hour rollover.
//!
//! # Freshness contract
//! An acknowledged event shows in every query whose range covers it within F (`STRATA_FRESHNESS`,
//! default 5 s). After each commit the writer calls [`Cache::invalidate_apps`] once per app of the
//! flush, before acknowledging: the app's local generation ([`generations`], part of every L1 key)
//! is bumped at once; its Redis generation (part of every L2 key) is bumped and the bump published
//! on the bus ([`crate::bus`], [`Message::Generation`]), so other instances drop their L1 entries
//! within a second. Late events invalidate the same way. If Redis loses a bump or the bus, L1
//! entries still expire within F, and a missing Redis generation (evicted by LRU) restarts at a
//! random epoch, never at an old value. No key is ever scanned.
//!
//! # Personal answers and erasure
//! A user's activity ([`QueryKey::personal`]) is kept in one place an erasure reaches before it
//! answers: in Redis when there is one (never in L1 then, so no instance can serve a copy the
//! erasure missed), under a keyed hash of the id, one key per app and user; in L1 only without
//! Redis. [`Cache::forget`] bumps the app's generations (local at once; Redis awaited, with the
//! user's key deleted in the same script, and retried like any bump when Redis fails) and tells the
//! other instances, whose aggregated answers of the app then drop like after a commit.
//!
//! Authorisation runs in the handlers before any lookup; keys are built from validated, normalised
//! queries ([`keys`]).

pub mod entry;
pub mod flight;
pub mod generations;
pub mod keys;
pub mod l2;
pub mod warm;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics::{counter, gauge};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::bus::{Bus, Event, Message};
use crate::config::Config;
use crate::query::{QueryError, Source};
pub use entry::{Cached, Tier};
use flight::Flights;
use generations::Generations;
pub use keys::{QueryKey, TtlClass};
use l2::L2;
pub use warm::Recipe;

/// The outcome of one flight (the answer and the tier that gave it to the request that flew),
/// shared by the requests that waited for it.
type FlightResult = Result<(Arc<Cached>, Tier), Arc<QueryError>>;

/// An answer and the tier that gave it.
#[derive(Debug, Clone)]
pub struct Hit {
    /// The answer.
    pub value: Arc<Cached>,
    /// Who answered.
    pub tier: Tier,
}

/// The cache facade (cheap to clone).
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

/// State shared by the facade, the writer hook and the bus subscription.
pub struct Inner {
    l1: Option<moka::future::Cache<String, Arc<Cached>>>,
    l2: Option<L2>,
    /// Lookups in progress by L1 key (app, local generation, query): single flight over both tiers.
    flights: Flights<FlightResult>,
    /// Warming state, when `STRATA_CACHE_WARM` is on.
    warm: Option<Arc<warm::Warm>>,
    /// The apps' generations, local (part of every L1 key) and shared (part of every L2 key).
    gens: Arc<Generations>,
    /// Where other instances' commits are heard and key revocations told.
    bus: Bus,
    freshness: Duration,
    ttl_recent: Duration,
    ttl_closed: Duration,
    /// Computations started (for tests and benchmarks).
    computations: AtomicU64,
    /// Lookups sent to Redis (for tests).
    l2_lookups: AtomicU64,
    /// Request counters, registered once (hits only add to an atomic).
    metrics: Counters,
}

impl Cache {
    /// The cache of `cfg`, subscribed to `bus`; with Redis configured, spawns the retries of failed
    /// generation bumps and the eviction policy check.
    pub fn start(cfg: &Config, bus: Bus, stop: CancellationToken, tracker: &TaskTracker) -> Cache {
        let l1 = cfg.cache_mode.l1().then(|| {
            moka::future::Cache::builder()
                .max_capacity(cfg.l1_max_bytes)
                .weigher(|k: &String, v: &Arc<Cached>| (k.len() as u32).saturating_add(v.weight()))
                .time_to_live(cfg.freshness)
                .eviction_listener(|_, _, cause| {
                    if cause == moka::notification::RemovalCause::Size {
                        counter!("strata_cache_evictions_total", "tier" => "l1").increment(1);
                    }
                })
                .build()
        });
        let l2 = match (&cfg.redis_url, cfg.cache_mode.l2()) {
            (Some(url), true) => match L2::new(url, &cfg.redis_prefix, cfg.redis_timeout, generations::key_ttl(cfg)) {
                Ok(l2) => Some(l2),
                Err(e) => {
                    tracing::warn!(error = %e, "REDIS_URL is unusable; caching in process only");
                    None
                }
            },
            _ => None,
        };
        let gens = Arc::new(Generations::new(l2.clone(), bus.clone()));
        let inner = Arc::new(Inner {
            l1,
            l2,
            flights: Flights::default(),
            warm: cfg.cache_warm.map(|_| warm::Warm::new()),
            gens,
            bus,
            freshness: cfg.freshness,
            ttl_recent: cfg.cache_ttl_recent,
            ttl_closed: cfg.cache_ttl_closed,
            computations: AtomicU64::new(0),
            l2_lookups: AtomicU64::new(0),
            metrics: Counters::register(),
        });
        let cache = Arc::downgrade(&inner);
        inner.bus.subscribe(Box::new(move |event| {
            if let Some(inner) = cache.upgrade() {
                inner.on_bus(event);
            }
        }));
        gauge!("strata_cache_l1_weighted_bytes").set(0.0);
        counter!("strata_cache_evictions_total", "tier" => "l1").absolute(0);
        if let Some(l2) = inner.l2.clone() {
            tracker.spawn(generations::retry_bumps_loop(Arc::downgrade(&inner.gens), stop));
            tracker.spawn(async move { l2.warn_unless_lru().await });
        }
        Cache { inner }
    }

    /// The freshness bound F.
    pub fn freshness(&self) -> Duration {
        self.inner.freshness
    }

    /// Computations started so far (single flight makes identical misses count once).
    pub fn computations(&self) -> u64 {
        self.inner.computations.load(Ordering::Relaxed)
    }

    /// Answer lookups sent to Redis so far (single flight makes identical misses count once).
    pub fn l2_lookups(&self) -> u64 {
        self.inner.l2_lookups.load(Ordering::Relaxed)
    }

    /// Requests currently boarded on a flight (waiting for an L2 lookup or a computation; for tests).
    pub fn passengers(&self) -> usize {
        self.inner.flights.passengers()
    }

    /// True while this instance is subscribed to the invalidation bus.
    pub fn bus_connected(&self) -> bool {
        self.inner.bus.connected()
    }

    /// The answer for `key`: from L1, else L2 (filling L1), else `compute` (filling both). Identical
    /// concurrent calls share one L2 lookup and computation.
    pub async fn get_or_compute<F, Fut>(&self, key: &QueryKey, compute: F) -> Result<Hit, Arc<QueryError>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(Value, Source), QueryError>>,
    {
        let hit = self.inner.get(key, compute).await?;
        if self.inner.l1_for(key).is_some() {
            let m = &self.inner.metrics;
            if hit.tier == Tier::L1 { &m.l1_hit } else { &m.l1_miss }.increment(1);
        }
        Ok(hit)
    }

    /// Like [`Cache::get_or_compute`] but for warming: not counted as a request.
    pub async fn prefetch<F, Fut>(&self, key: &QueryKey, compute: F) -> Result<Hit, Arc<QueryError>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(Value, Source), QueryError>>,
    {
        self.inner.get(key, compute).await
    }

    /// True when `STRATA_CACHE_WARM` is on: handlers then [`Cache::record`] their queries.
    pub fn warming(&self) -> bool {
        self.inner.warm.is_some()
    }

    /// Counts one request of `app` for warming (`recipe` is only called when warming is on).
    pub fn record(&self, app: Uuid, recipe: impl FnOnce() -> Option<Recipe>) {
        if let Some(warm) = &self.inner.warm {
            if let Some(r) = recipe() {
                warm.tracker.record(app, r, chrono::Utc::now().timestamp());
            }
        }
    }

    /// Runs a warming pass now and returns once it finished (at once when warming is off or its loop
    /// is not running). The loop also runs one after start and after each hour rollover.
    pub async fn warm_now(&self) {
        if let Some(warm) = &self.inner.warm {
            warm.pass_now().await;
        }
    }

    /// Warming passes finished so far (0 when warming is off).
    pub fn warm_passes(&self) -> u64 {
        self.inner.warm.as_ref().map_or(0, |w| w.passes())
    }

    /// Tells every other instance to evict these revoked keys from their key caches (a
    /// [`Message::KeyRevoked`] each on the bus, which the accounts handlers reach through the cache).
    /// Fire and forget: without the bus, other instances notice within their key cache TTL (at most
    /// 30 s).
    pub fn publish_key_revocations(&self, hashes: &[Vec<u8>]) {
        self.inner.bus.publish(hashes.iter().map(|hash| Message::KeyRevoked { hash: hash.clone() }).collect());
    }

    /// Marks the data of `apps` changed (call after a commit, once per app): local L1 entries become
    /// unreachable at once; Redis generations are bumped and other instances told, in the background.
    pub fn invalidate_apps(&self, apps: impl IntoIterator<Item = Uuid>) {
        let mut changed: Vec<Uuid> = apps.into_iter().collect();
        changed.sort_unstable();
        changed.dedup();
        for &app in &changed {
            self.inner.gens.bump_local(app);
        }
        if self.inner.l2.is_none() {
            return;
        }
        // In the background: the writer never waits for Redis.
        tokio::spawn(self.inner.gens.clone().bump_remote(changed.into_iter().map(|app| (app, Vec::new())).collect()));
    }

    /// After an erasure: invalidates the app of `personal` like a commit and deletes that user's
    /// answer from Redis, waiting for Redis (up to 1 s; on failure both are retried in the
    /// background). When it returns, no tier of any instance sharing the Redis answers the old
    /// activity; without Redis, other instances' L1 copies live at most F.
    pub async fn forget(&self, personal: &QueryKey) {
        self.inner.gens.bump_local(personal.app);
        if self.inner.l2.is_some() {
            self.inner.gens.clone().bump_remote(vec![(personal.app, vec![personal.clone()])]).await;
        }
    }
}

impl Inner {
    /// L1 for `key`: none for personal answers when Redis is the place that holds them.
    fn l1_for(&self, key: &QueryKey) -> Option<&moka::future::Cache<String, Arc<Cached>>> {
        self.l1.as_ref().filter(|_| !(key.personal && self.l2.is_some()))
    }

    fn l1_clear(&self) {
        if let Some(l1) = &self.l1 {
            l1.invalidate_all();
        }
    }

    /// What the bus tells: after a (re)subscription messages may have been missed, so all of L1
    /// goes; another instance's commit makes the app's L1 entries unreachable.
    fn on_bus(&self, event: &Event<'_>) {
        match event {
            Event::Subscribed => self.l1_clear(),
            Event::Received(Message::Generation { app }) => self.gens.bump_local(*app),
            Event::Received(Message::KeyRevoked { .. }) => {}
        }
    }

    /// L1, else one flight per L1 key: L2, else `compute`.
    async fn get<F, Fut>(&self, key: &QueryKey, compute: F) -> Result<Hit, Arc<QueryError>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(Value, Source), QueryError>>,
    {
        let l1_key = key.l1_key(self.gens.local(key.app));
        if let Some(l1) = self.l1_for(key) {
            if let Some(value) = l1.get(&l1_key).await {
                return Ok(Hit { value, tier: Tier::L1 });
            }
        }
        let (outcome, led) = self.flights.run(&l1_key, || self.fly(&l1_key, key, compute)).await;
        let (value, leader_tier) = outcome?;
        // A waiter was answered in process (as if from L1) when there is an L1, else by the leader's tier.
        let tier = match led {
            true => leader_tier,
            false if self.l1_for(key).is_some() => Tier::L1,
            false => value.origin,
        };
        Ok(Hit { value, tier })
    }

    /// The flight itself: L1 once more (the previous flight may just have filled it), L2, else
    /// `compute`; fills L1. Returns the answer and the tier that gave it.
    async fn fly<F, Fut>(&self, l1_key: &str, key: &QueryKey, compute: F) -> FlightResult
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(Value, Source), QueryError>>,
    {
        let Some(l1) = self.l1_for(key) else {
            let value = self.fill(key, compute).await.map_err(Arc::new)?;
            return Ok((value.clone(), value.origin));
        };
        if let Some(value) = l1.get(l1_key).await {
            return Ok((value, Tier::L1));
        }
        let value = self.fill(key, compute).await.map_err(Arc::new)?;
        l1.insert(l1_key.to_owned(), value.clone()).await;
        gauge!("strata_cache_l1_weighted_bytes").set(l1.weighted_size() as f64);
        Ok((value.clone(), value.origin))
    }

    /// L2, else the database (storing the answer in L2).
    async fn fill<F, Fut>(&self, key: &QueryKey, compute: F) -> Result<Arc<Cached>, QueryError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(Value, Source), QueryError>>,
    {
        let mut gen = None;
        // A lookup still running after the request's timeout: raced against the computation.
        let mut late = None;
        if let Some(l2) = &self.l2 {
            self.l2_lookups.fetch_add(1, Ordering::Relaxed);
            let mut lookup = Box::pin(l2.lookup_within(key, l2::BACKGROUND_TIMEOUT));
            match tokio::time::timeout(l2.timeout(), &mut lookup).await {
                Ok(Ok(found)) => {
                    if let Some(c) = found.value.and_then(|b| Cached::decode(b, Tier::L2)) {
                        self.metrics.l2_hit.increment(1);
                        return Ok(Arc::new(c));
                    }
                    self.metrics.l2_miss.increment(1);
                    gen = Some(found.gen);
                }
                Ok(Err(e)) => {
                    counter!("strata_redis_errors_total").increment(1);
                    tracing::debug!(error = %e, "redis lookup failed; computing");
                }
                Err(_) => {
                    counter!("strata_redis_errors_total").increment(1);
                    tracing::debug!("redis lookup slower than the timeout; computing unless it answers first");
                    late = Some(lookup);
                }
            }
        }
        self.computations.fetch_add(1, Ordering::Relaxed);
        let computing = compute();
        let (data, source) = match late {
            None => computing.await?,
            Some(lookup) => {
                // Redis slower than the timeout but faster than the database still answers. Whatever
                // it says, nothing is stored: its generation may postdate the computation's start.
                tokio::pin!(computing);
                tokio::select! {
                    biased;
                    computed = &mut computing => computed?,
                    found = lookup => match found.ok().and_then(|f| f.value).and_then(|b| Cached::decode(b, Tier::L2)) {
                        Some(c) => {
                            self.metrics.l2_hit.increment(1);
                            return Ok(Arc::new(c));
                        }
                        None => computing.await?,
                    },
                }
            }
        };
        let cached = Cached::computed(&data, source);
        if let (Some(l2), Some(gen)) = (self.l2.clone(), gen) {
            let bytes = cached.encode();
            let (key, ttl) = (key.clone(), self.ttl(key.class));
            // Stored under the generation read before computing: if a commit bumped it meanwhile,
            // this answer is unreachable, as it should be.
            tokio::spawn(async move {
                if let Err(e) = l2.store(&key, &gen, &bytes, ttl).await {
                    counter!("strata_redis_errors_total").increment(1);
                    tracing::debug!(error = %e, "redis store failed");
                }
            });
        }
        Ok(Arc::new(cached))
    }

    fn ttl(&self, class: TtlClass) -> Duration {
        match class {
            TtlClass::Recent => self.ttl_recent,
            TtlClass::Closed => self.ttl_closed,
        }
    }
}

/// `strata_cache_requests_total{tier,result}`.
struct Counters {
    l1_hit: metrics::Counter,
    l1_miss: metrics::Counter,
    l2_hit: metrics::Counter,
    l2_miss: metrics::Counter,
}

impl Counters {
    fn register() -> Counters {
        Counters {
            l1_hit: counter!("strata_cache_requests_total", "tier" => "l1", "result" => "hit"),
            l1_miss: counter!("strata_cache_requests_total", "tier" => "l1", "result" => "miss"),
            l2_hit: counter!("strata_cache_requests_total", "tier" => "l2", "result" => "hit"),
            l2_miss: counter!("strata_cache_requests_total", "tier" => "l2", "result" => "miss"),
        }
    }
}

#[cfg(test)]
mod tests;
