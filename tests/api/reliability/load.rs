//! Load clients of the fault tests. Each client sends batches with client-chosen eventIds; a retrying
//! client resends a batch unchanged (same ids) until it is acknowledged with 201, as the README tells
//! clients to. Every answer is recorded with its completion time, so a test can look at what happened
//! around a fault.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use uuid::Uuid;

/// Pause before resending a non-acknowledged batch (shorter than Retry-After, to stress recovery).
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// A batch not acknowledged within this time fails the test.
const GIVE_UP: Duration = Duration::from_secs(60);
/// Event types of the load, so rollups have several cells per hour.
const TYPES: [&str; 3] = ["page_view", "click", "signup"];

/// One answer (or transport failure, status 0).
#[derive(Debug, Clone)]
pub struct Outcome {
    pub done: Instant,
    pub status: u16,
    pub latency: Duration,
    /// `Retry-After: 1` was present.
    pub retry_after_ok: bool,
    pub error: Option<String>,
}

/// What the clients saw.
pub struct LoadResult {
    pub outcomes: Vec<Outcome>,
    /// Ids of every acknowledged event.
    pub acked: Vec<Uuid>,
    pub max_latency: Duration,
}

impl LoadResult {
    fn new(parts: Vec<(Vec<Outcome>, Vec<Uuid>)>) -> LoadResult {
        let mut outcomes = Vec::new();
        let mut acked = Vec::new();
        for (o, a) in parts {
            outcomes.extend(o);
            acked.extend(a);
        }
        let max_latency = outcomes.iter().map(|o| o.latency).max().unwrap_or_default();
        LoadResult { outcomes, acked, max_latency }
    }

    /// 99th percentile latency of acknowledged requests.
    pub fn p99_accepted(&self) -> Duration {
        let mut l: Vec<Duration> = self.outcomes.iter().filter(|o| o.status == 201).map(|o| o.latency).collect();
        l.sort();
        l.get((l.len() * 99 / 100).min(l.len().saturating_sub(1))).copied().unwrap_or_default()
    }

    /// One line: answers by status, acknowledged events, latencies.
    pub fn describe(&self) -> String {
        let mut by_status = std::collections::BTreeMap::new();
        for o in &self.outcomes {
            *by_status.entry(o.status).or_insert(0) += 1;
        }
        let first_error = self.outcomes.iter().find_map(|o| o.error.as_deref()).unwrap_or("none");
        format!(
            "answers by status (0 = no answer) {by_status:?}; {} events acknowledged; accepted p99 {:?}, max {:?}; \
             first transport error: {first_error}",
            self.acked.len(),
            self.p99_accepted(),
            self.max_latency
        )
    }
}

/// Retrying clients running until [`Load::finish`].
pub struct Load {
    target: Arc<RwLock<String>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<(Vec<Outcome>, Vec<Uuid>)>>,
}

impl Load {
    /// `clients` retrying clients sending batches of `batch` events to `addr`.
    pub fn start(addr: &str, key: &str, clients: usize, batch: usize, timeout: Duration) -> Load {
        let target = Arc::new(RwLock::new(addr.to_string()));
        let stop = Arc::new(AtomicBool::new(false));
        let http = reqwest::Client::builder().timeout(timeout).build().unwrap();
        let tasks = (0..clients)
            .map(|_| tokio::spawn(retrying_client(http.clone(), target.clone(), key.to_string(), batch, stop.clone())))
            .collect();
        Load { target, stop, tasks }
    }

    /// Sends further requests (retries included) to `addr` (a restarted server).
    pub fn retarget(&self, addr: &str) {
        *self.target.write().unwrap() = addr.to_string();
    }

    /// Stops starting new batches, waits until every started batch is acknowledged.
    pub async fn finish(self) -> LoadResult {
        self.stop.store(true, Ordering::Relaxed);
        let mut parts = Vec::new();
        for t in self.tasks {
            parts.push(t.await.expect("a client gave up"));
        }
        LoadResult::new(parts)
    }
}

/// A batch of `n` events with fresh ids, types and times spread over the last four hours.
fn batch(n: usize) -> (Vec<Uuid>, Value) {
    let mut rng = rand::rng();
    let ids: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
    let events: Vec<Value> = ids
        .iter()
        .map(|id| {
            let at = chrono::Utc::now() - chrono::Duration::seconds(rng.random_range(0..4 * 3600));
            let ty = TYPES[rng.random_range(0..TYPES.len())];
            json!({"eventId": id, "eventType": ty, "userId": format!("u{}", rng.random_range(0..50)), "timestamp": at})
        })
        .collect();
    (ids, json!({ "events": events }))
}

async fn send(http: &reqwest::Client, url: &str, key: &str, body: &Value) -> Outcome {
    let started = Instant::now();
    let (status, retry_after_ok, error) = match http.post(url).header("X-API-Key", key).json(body).send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            let retry_after_ok = r.headers().get("retry-after").is_some_and(|v| v == "1");
            match r.bytes().await {
                Ok(_) => (status, retry_after_ok, None),
                Err(e) => (0, false, Some(e.to_string())),
            }
        }
        Err(e) => (0, false, Some(e.to_string())),
    };
    Outcome { done: Instant::now(), status, latency: started.elapsed(), retry_after_ok, error }
}

async fn retrying_client(
    http: reqwest::Client,
    target: Arc<RwLock<String>>,
    key: String,
    n: usize,
    stop: Arc<AtomicBool>,
) -> (Vec<Outcome>, Vec<Uuid>) {
    let mut outcomes = Vec::new();
    let mut acked = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let (ids, body) = batch(n);
        let give_up = Instant::now() + GIVE_UP;
        loop {
            let url = format!("http://{}/api/events/track/batch", target.read().unwrap());
            let outcome = send(&http, &url, &key, &body).await;
            let done = outcome.status == 201;
            outcomes.push(outcome);
            if done {
                acked.extend(&ids);
                break;
            }
            assert!(Instant::now() < give_up, "a batch was not acknowledged within {GIVE_UP:?}: {outcomes:?}");
            // The client's own retry pause (the behaviour under test), not a wait for a condition.
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
    (outcomes, acked)
}

/// `clients` clients sending batches of `batch` back to back for `duration`, never retrying.
pub async fn overload(addr: &str, key: &str, clients: usize, n: usize, duration: Duration) -> LoadResult {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let url = format!("http://{addr}/api/events/track/batch");
    let until = Instant::now() + duration;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (http, url, key) = (http.clone(), url.clone(), key.to_string());
            tokio::spawn(async move {
                let (mut outcomes, mut acked) = (Vec::new(), Vec::new());
                while Instant::now() < until {
                    let (ids, body) = batch(n);
                    let outcome = send(&http, &url, &key, &body).await;
                    if outcome.status == 201 {
                        acked.extend(ids);
                    }
                    outcomes.push(outcome);
                }
                (outcomes, acked)
            })
        })
        .collect();
    let mut parts = Vec::new();
    for t in tasks {
        parts.push(t.await.unwrap());
    }
    LoadResult::new(parts)
}

/// Samples the resident set size of process `pid` every 50 ms into `peak_kib` (the highest seen).
pub fn sample_rss(pid: u32, peak_kib: Arc<AtomicU64>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let rss = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok());
            if let Some(kib) = rss {
                peak_kib.fetch_max(kib, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}
