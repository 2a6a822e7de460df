//! Cache warming (`STRATA_CACHE_WARM`, off by default): remember the most requested queries of each
//! app, and precompute the top N of every active app in the background after start and after each
//! rollover of the open bucket.
//!
//! - **What is remembered**: a [`Recipe`] per timeline, summary or overview request (endpoint, query
//!   parameters; dates of ranges ending today or later kept relative to today, so "the last 90 days"
//!   is still the last 90 days tomorrow), counted per app in process. A user's activity is not
//!   remembered: the records, kept in Redis, would hold user ids. Bounded: [`MAX_APPS`] apps (the least recently active
//!   go first) and [`MAX_QUERIES`] queries per app (space-saving: a new query replaces the least
//!   requested one and inherits its count). With Redis the counts are added to `{prefix}warm:*` every
//!   [`FLUSH_INTERVAL`] and before each pass, and read back at start, so a restarted or new instance
//!   warms what the deployment asked for.
//! - **When**: once after start, at each UTC hour boundary (the open hour rolls over; day boundaries of
//!   whole-hour zones are hour boundaries too) and when [`super::Cache::warm_now`] asks (tests).
//! - **How**: apps requested within [`ACTIVE_WINDOW`], their top N recipes each, [`CONCURRENCY`] at a
//!   time, through the same single flight as requests (so a warm computation and a request for the
//!   same answer share it, and an answer already in L2 is not recomputed). Warmed answers live in L1
//!   for the freshness period and in L2 for their TTL class; a commit to the app drops them as usual.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::l2::AppQueries;
use super::Cache;

/// Apps remembered at most.
pub const MAX_APPS: usize = 1_000;
/// Queries remembered per app at most.
pub const MAX_QUERIES: usize = 64;
/// Apps with a request within this window are warmed.
pub const ACTIVE_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Warm computations running at once (each holds one database connection).
pub const CONCURRENCY: usize = 2;
/// How often request counts are added to Redis.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(30);
/// A pass starts this long after the hour boundary, so "today" and the open hour have moved on.
const AFTER_BOUNDARY: Duration = Duration::from_secs(1);

/// A request that can be asked again later: the endpoint, its path parameter (a user id) and its
/// query parameters (without `appId`). Date values `@{days}` are relative to today in the query's zone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Recipe {
    /// `timeline`, `summary`, `overview` or `user`.
    #[serde(rename = "e")]
    pub endpoint: String,
    /// The path parameter, if the endpoint has one.
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Query parameters in canonical order.
    #[serde(rename = "q", default)]
    pub params: Vec<(String, String)>,
}

/// Counts of one query.
struct QueryStats {
    recipe: Recipe,
    count: u64,
    /// Requests not yet added to Redis.
    unflushed: u64,
}

/// What is remembered of one app.
#[derive(Default)]
struct AppStats {
    /// Unix seconds of its last request.
    last_seen: i64,
    queries: HashMap<String, QueryStats>,
    dirty: bool,
}

/// The in-process request counts.
#[derive(Default)]
pub struct Tracker {
    apps: Mutex<HashMap<Uuid, AppStats>>,
}

impl Tracker {
    /// Counts one request of `recipe` on `app` at `now` (unix seconds).
    pub fn record(&self, app: Uuid, recipe: Recipe, now: i64) {
        let Ok(text) = serde_json::to_string(&recipe) else { return };
        self.add(app, text, recipe, 1, 1, now);
    }

    fn add(&self, app: Uuid, text: String, recipe: Recipe, count: u64, unflushed: u64, seen: i64) {
        let mut apps = self.apps.lock().expect("warm tracker lock");
        if !apps.contains_key(&app) && apps.len() >= MAX_APPS {
            if let Some(oldest) = apps.iter().min_by_key(|(_, s)| s.last_seen).map(|(a, _)| *a) {
                apps.remove(&oldest);
            }
        }
        let stats = apps.entry(app).or_default();
        stats.last_seen = stats.last_seen.max(seen);
        stats.dirty |= unflushed > 0;
        if let Some(q) = stats.queries.get_mut(&text) {
            q.count += count;
            q.unflushed += unflushed;
            return;
        }
        let mut base = 0;
        if stats.queries.len() >= MAX_QUERIES {
            if let Some(least) = stats.queries.iter().min_by_key(|(_, q)| q.count).map(|(t, _)| t.clone()) {
                base = stats.queries.remove(&least).map_or(0, |q| q.count);
            }
        }
        stats.queries.insert(text, QueryStats { recipe, count: base + count, unflushed });
    }

    /// Counts read back from Redis at start (not to be written back).
    fn seed(&self, app: Uuid, seen: i64, queries: Vec<(String, u64)>) {
        for (text, n) in queries {
            if let Ok(recipe) = serde_json::from_str::<Recipe>(&text) {
                self.add(app, text, recipe, n, 0, seen);
            }
        }
    }

    /// Takes the counts not yet in Redis.
    fn take_unflushed(&self) -> Vec<AppQueries> {
        let mut apps = self.apps.lock().expect("warm tracker lock");
        let mut out = Vec::new();
        for (app, stats) in apps.iter_mut().filter(|(_, s)| s.dirty) {
            stats.dirty = false;
            let queries: Vec<(String, u64)> = stats
                .queries
                .iter_mut()
                .filter(|(_, q)| q.unflushed > 0)
                .map(|(t, q)| (t.clone(), std::mem::take(&mut q.unflushed)))
                .collect();
            out.push(AppQueries { app: *app, last_seen: stats.last_seen, queries });
        }
        out
    }

    /// Puts back counts Redis did not take.
    fn restore_unflushed(&self, batch: Vec<AppQueries>) {
        let mut apps = self.apps.lock().expect("warm tracker lock");
        for a in batch {
            let Some(stats) = apps.get_mut(&a.app) else { continue };
            stats.dirty = true;
            for (text, n) in a.queries {
                if let Some(q) = stats.queries.get_mut(&text) {
                    q.unflushed += n;
                }
            }
        }
    }

    /// The `top` most requested recipes of every app active since `since` (unix seconds).
    pub fn plan(&self, since: i64, top: usize) -> Vec<(Uuid, Recipe)> {
        let apps = self.apps.lock().expect("warm tracker lock");
        let mut out = Vec::new();
        for (app, stats) in apps.iter().filter(|(_, s)| s.last_seen >= since) {
            let mut qs: Vec<&QueryStats> = stats.queries.values().collect();
            qs.sort_by_key(|q| std::cmp::Reverse(q.count));
            out.extend(qs.into_iter().take(top).map(|q| (*app, q.recipe.clone())));
        }
        out
    }
}

/// The next pass time after `now`: just past the next UTC hour boundary.
pub fn next_rollover(now: DateTime<Utc>) -> DateTime<Utc> {
    let hour = now.with_minute(0).and_then(|t| t.with_second(0)).and_then(|t| t.with_nanosecond(0)).unwrap_or(now);
    hour + chrono::Duration::hours(1) + chrono::Duration::from_std(AFTER_BOUNDARY).unwrap_or_default()
}

/// Warms the cache until `stop` is cancelled: a pass after start (from what Redis remembers), after
/// each hour rollover and on [`Cache::warm_now`]; request counts go to Redis every [`FLUSH_INTERVAL`].
/// `warm_one` computes one recipe of one app into the cache (it returns false when it could not).
pub async fn run<W, Fut>(cache: Cache, top: usize, warm_one: W, stop: CancellationToken)
where
    W: Fn(Uuid, Recipe) -> Fut,
    Fut: Future<Output = bool>,
{
    let Some(warm) = cache.inner.warm.clone() else { return };
    if let Some(l2) = &cache.inner.l2 {
        let since = Utc::now().timestamp() - ACTIVE_WINDOW.as_secs() as i64;
        match l2.recorded_queries(since, MAX_APPS, MAX_QUERIES).await {
            Ok(apps) => {
                for a in apps {
                    warm.tracker.seed(a.app, a.last_seen, a.queries);
                }
            }
            Err(e) => {
                metrics::counter!("strata_redis_errors_total").increment(1);
                tracing::warn!(error = %e, "could not read the cache warming records; warming what this instance sees");
            }
        }
    }
    let mut next_flush = tokio::time::Instant::now() + FLUSH_INTERVAL;
    let mut first = true;
    loop {
        if !first {
            let until_rollover = (next_rollover(Utc::now()) - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            let rollover = tokio::time::Instant::now() + until_rollover;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = warm.trigger.notified() => {}
                _ = tokio::time::sleep_until(rollover) => {}
                _ = tokio::time::sleep_until(next_flush) => {
                    flush(&cache, &warm.tracker).await;
                    next_flush = tokio::time::Instant::now() + FLUSH_INTERVAL;
                    continue;
                }
            }
        }
        first = false;
        let asked = warm.asked.load(Ordering::Acquire);
        flush(&cache, &warm.tracker).await;
        let since = Utc::now().timestamp() - ACTIVE_WINDOW.as_secs() as i64;
        let plan = warm.tracker.plan(since, top);
        let planned = plan.len();
        let pass = futures_util::stream::iter(plan)
            .map(|(app, recipe)| warm_one(app, recipe))
            .buffer_unordered(CONCURRENCY)
            .fold(0usize, |n, ok| async move { n + usize::from(ok) });
        let warmed = tokio::select! {
            _ = stop.cancelled() => return,
            warmed = pass => warmed,
        };
        tracing::debug!(planned, warmed, "cache warming pass done");
        metrics::counter!("strata_cache_warmed_total").increment(warmed as u64);
        warm.done.send_modify(|d| {
            d.passes += 1;
            d.asked = d.asked.max(asked);
        });
    }
}

/// Adds the unflushed request counts to Redis (kept for the next try when Redis fails).
async fn flush(cache: &Cache, tracker: &Tracker) {
    let Some(l2) = &cache.inner.l2 else { return };
    let batch = tracker.take_unflushed();
    if batch.is_empty() {
        return;
    }
    if let Err(e) = l2.record_queries(&batch, MAX_APPS, MAX_QUERIES).await {
        metrics::counter!("strata_redis_errors_total").increment(1);
        tracing::debug!(error = %e, "could not record cache warming counts; will retry");
        tracker.restore_unflushed(batch);
    }
}

/// Progress of the warming loop, for [`Cache::warm_now`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Done {
    /// Passes finished.
    pub passes: u64,
    /// The highest [`Cache::warm_now`] request a finished pass started after.
    pub asked: u64,
}

/// Warming state shared by the handlers (recording) and the loop.
pub struct Warm {
    /// Request counts.
    pub tracker: Tracker,
    /// Wakes the loop for a pass now.
    trigger: tokio::sync::Notify,
    /// Pass requests made so far.
    asked: std::sync::atomic::AtomicU64,
    /// Progress of the loop.
    done: tokio::sync::watch::Sender<Done>,
}

impl Warm {
    /// Empty state.
    pub fn new() -> Arc<Warm> {
        Arc::new(Warm {
            tracker: Tracker::default(),
            trigger: tokio::sync::Notify::new(),
            asked: std::sync::atomic::AtomicU64::new(0),
            done: tokio::sync::watch::channel(Done::default()).0,
        })
    }

    /// Asks for a pass and waits until one that started afterwards finished.
    pub async fn pass_now(&self) {
        let ticket = self.asked.fetch_add(1, Ordering::AcqRel) + 1;
        let mut done = self.done.subscribe();
        self.trigger.notify_one();
        let _ = done.wait_for(|d| d.asked >= ticket).await;
    }

    /// Passes finished so far.
    pub fn passes(&self) -> u64 {
        self.done.borrow().passes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe(n: usize) -> Recipe {
        Recipe { endpoint: "summary".into(), path: None, params: vec![("eventType".into(), format!("t{n}"))] }
    }

    #[test]
    fn the_most_requested_queries_of_active_apps_are_planned_and_the_tracker_stays_bounded() {
        let t = Tracker::default();
        let (busy, idle) = (Uuid::new_v4(), Uuid::new_v4());
        for (n, times) in [(1, 5), (2, 9), (3, 1)] {
            for _ in 0..times {
                t.record(busy, recipe(n), 1_000);
            }
        }
        t.record(idle, recipe(7), 10);
        for n in 100..100 + MAX_QUERIES {
            t.record(busy, recipe(n), 1_000);
        }

        assert_eq!(t.plan(500, 2), [(busy, recipe(2)), (busy, recipe(1))]);
        assert_eq!(t.apps.lock().unwrap()[&busy].queries.len(), MAX_QUERIES);
        assert_eq!(t.plan(0, 1).len(), 2);
    }

    #[test]
    fn passes_start_just_after_the_next_hour_boundary() {
        let now: DateTime<Utc> = "2026-11-26T23:59:30.5Z".parse().unwrap();
        assert_eq!(next_rollover(now), "2026-11-27T00:00:01Z".parse::<DateTime<Utc>>().unwrap());
    }
}
