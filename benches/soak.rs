//! Soak run: `cargo bench --bench soak` (issue 8's proof that a 2xx means durably stored).
//!
//! Starts the real `strata serve` on a scratch database (dropped at the end) and, for
//! `STRATA_SOAK_SECONDS` (default 60), runs at once:
//! - ingest clients sending batches of 1 to 20 events with client-chosen eventIds, resending a
//!   non-acknowledged batch unchanged (same ids) until it is acknowledged, as clients are told to;
//! - query clients reading the timeline, summary and overview of the apps with the admin token;
//! - maintenance: `POST /api/admin/maintenance/run` every 10 s besides the scheduler (every 15 s).
//!
//! Then it stops the server (SIGTERM, draining) and checks the database against what was acknowledged:
//! acknowledged / stored / duplicated / lost / stored-but-never-acknowledged counts, and whether the
//! hourly rollups equal the raw counts per (app, hour, type). Exits non-zero on any loss, duplicate,
//! unacknowledged row or rollup mismatch.
//!
//! Settings (environment): `STRATA_SOAK_SECONDS`, `STRATA_BENCH_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`).

use std::collections::{BTreeMap, HashSet};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::Utc;
use partition_jobs::Month;
use rand::Rng;
use serde_json::{json, Value};
use uuid::Uuid;

mod common;
use common::*;

/// Apps ingested into (one key each).
const APPS: usize = 3;
/// Concurrent ingest clients.
const INGEST_CLIENTS: usize = 8;
/// Concurrent query clients.
const QUERY_CLIENTS: usize = 2;
/// Largest batch an ingest client sends.
const MAX_BATCH: usize = 20;
/// Pause before resending a non-acknowledged batch.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Interval of the explicit maintenance runs.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(10);
/// Event times are spread over this many hours before now.
const SPREAD_HOURS: i64 = 48;
/// Event types the soak sends.
const SOAK_TYPES: [&str; 6] = ["page_view", "click", "signup", "login", "purchase", "search"];

fn main() -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(soak()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("\nsoak FAILED: see the counts above");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("\nsoak failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What the clients saw.
#[derive(Default)]
struct Tally {
    acked: Vec<(Uuid, Uuid)>,
    statuses: BTreeMap<String, u64>,
    latencies: Vec<Duration>,
    retries: u64,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.acked.extend(other.acked);
        for (k, v) in other.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        self.latencies.extend(other.latencies);
        self.retries += other.retries;
    }

    fn percentile(&mut self, p: f64) -> Duration {
        self.latencies.sort();
        let i = ((self.latencies.len() as f64 * p) as usize).min(self.latencies.len().saturating_sub(1));
        self.latencies.get(i).copied().unwrap_or_default()
    }
}

async fn soak() -> Result<bool> {
    let seconds: u64 = match std::env::var("STRATA_SOAK_SECONDS") {
        Ok(v) => v.trim().parse().with_context(|| format!("STRATA_SOAK_SECONDS={v:?}"))?,
        Err(_) => 60,
    };
    let admin_url = std::env::var("STRATA_BENCH_DATABASE_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.into());
    println!("=== Strata soak (issue 8): {seconds} s of ingest with retries + queries + maintenance ===");
    ScratchDb::run_in(&admin_url, |url| async move { run(&url, Duration::from_secs(seconds)).await }).await
}

async fn run(url: &str, duration: Duration) -> Result<bool> {
    strata::db::migrate(url, 3, Duration::from_secs(5)).await.context("migrating the scratch database")?;
    let db = strata::db::connect(url).await?;
    let now = Utc::now();
    partition_jobs::ensure_months(
        &db,
        Month::containing(now - chrono::Duration::hours(SPREAD_HOURS)),
        Month::containing(now),
        Duration::from_secs(5),
    )
    .await?;
    let mut apps = Vec::new();
    for i in 0..APPS {
        let app = strata::accounts::create_app(&db, &format!("soak-{i}"), None).await?;
        let key = strata::accounts::create_key(&db, KEY_SECRET.as_bytes(), app.id, "soak", None).await?;
        apps.push((app.id, key.api_key));
    }
    let env = [("STRATA_MAINTENANCE_INTERVAL", "15s"), ("STRATA_WRITERS", "2")];
    let mut server = Server::start(url, &env).await?;
    let base = format!("http://{}", server.addr);
    let stop = Arc::new(AtomicBool::new(false));
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
    let started = Instant::now();
    let mut ingest = Vec::new();
    for i in 0..INGEST_CLIENTS {
        let (app, key) = apps[i % APPS].clone();
        ingest.push(tokio::spawn(ingest_client(http.clone(), base.clone(), app, key, stop.clone())));
    }
    let mut others = Vec::new();
    for i in 0..QUERY_CLIENTS {
        let app = apps[i % APPS].0;
        others.push(tokio::spawn(query_client(http.clone(), base.clone(), app, stop.clone())));
    }
    others.push(tokio::spawn(maintenance_client(http.clone(), base.clone(), stop.clone())));
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut ingested = Tally::default();
    for t in ingest {
        ingested.merge(t.await?);
    }
    let elapsed = started.elapsed();
    let mut background = Tally::default();
    for t in others {
        background.merge(t.await?);
    }
    server.stop().await?;
    report_load(&mut ingested, &mut background, elapsed);
    let background_ok = background.statuses.keys().all(|k| k.ends_with(" 200"));
    if !background_ok {
        println!("a query or maintenance run did not answer 200");
    }
    Ok(verify(&db, &ingested.acked).await? && background_ok)
}

fn event(rng: &mut impl Rng, id: Uuid) -> Value {
    let at = Utc::now() - chrono::Duration::seconds(rng.random_range(0..SPREAD_HOURS * 3600));
    let ty = SOAK_TYPES[rng.random_range(0..SOAK_TYPES.len())];
    json!({"eventId": id, "eventType": ty, "userId": format!("u{}", rng.random_range(0..500)),
           "sessionId": format!("s{}", rng.random_range(0..2000)), "timestamp": at})
}

fn status_name(r: &reqwest::Result<reqwest::Response>) -> String {
    match r {
        Ok(resp) => resp.status().as_u16().to_string(),
        Err(e) if e.is_timeout() => "timeout".into(),
        Err(_) => "transport error".into(),
    }
}

async fn ingest_client(http: reqwest::Client, base: String, app: Uuid, key: String, stop: Arc<AtomicBool>) -> Tally {
    let mut tally = Tally::default();
    let url = format!("{base}/api/events/track/batch");
    while !stop.load(Ordering::Relaxed) {
        let (ids, body) = {
            let mut rng = rand::rng();
            let ids: Vec<Uuid> = (0..rng.random_range(1..=MAX_BATCH)).map(|_| Uuid::new_v4()).collect();
            let events: Vec<Value> = ids.iter().map(|id| event(&mut rng, *id)).collect();
            (ids, json!({ "events": events }))
        };
        loop {
            let t = Instant::now();
            let r = http.post(&url).header("X-API-Key", &key).json(&body).send().await;
            let status = status_name(&r);
            let acked = matches!(&r, Ok(resp) if resp.status().as_u16() == 201);
            if let Ok(resp) = r {
                let _ = resp.bytes().await;
            }
            *tally.statuses.entry(status).or_default() += 1;
            if acked {
                tally.latencies.push(t.elapsed());
                tally.acked.extend(ids.iter().map(|id| (app, *id)));
                break;
            }
            tally.retries += 1;
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
    tally
}

async fn query_client(http: reqwest::Client, base: String, app: Uuid, stop: Arc<AtomicBool>) -> Tally {
    let mut tally = Tally::default();
    let today = Utc::now().date_naive();
    let from = today - chrono::Days::new(2);
    let paths = [
        format!("{base}/api/analytics/events/timeline?appId={app}&interval=hour&startDate={from}&endDate={today}"),
        format!("{base}/api/analytics/events/summary?appId={app}"),
        format!("{base}/api/analytics/apps/{app}/overview"),
    ];
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let path = &paths[i % paths.len()];
        i += 1;
        let t = Instant::now();
        let r = http.get(path).bearer_auth(ADMIN_TOKEN).send().await;
        *tally.statuses.entry(format!("query {}", status_name(&r))).or_default() += 1;
        if let Ok(resp) = r {
            let _ = resp.bytes().await;
        }
        tally.latencies.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tally
}

async fn maintenance_client(http: reqwest::Client, base: String, stop: Arc<AtomicBool>) -> Tally {
    let mut tally = Tally::default();
    let url = format!("{base}/api/admin/maintenance/run");
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(MAINTENANCE_EVERY).await;
        let r = http.post(&url).bearer_auth(ADMIN_TOKEN).send().await;
        *tally.statuses.entry(format!("maintenance {}", status_name(&r))).or_default() += 1;
    }
    tally
}

fn report_load(ingested: &mut Tally, background: &mut Tally, elapsed: Duration) {
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    println!(
        "ingest: {} events acknowledged in {:.1} s ({} events/s), {} retries; acknowledged batch latency p50 {}, p99 {}",
        fmt_int(ingested.acked.len() as u64),
        elapsed.as_secs_f64(),
        fmt_int((ingested.acked.len() as f64 / elapsed.as_secs_f64()) as u64),
        fmt_int(ingested.retries),
        ms(ingested.percentile(0.5)),
        ms(ingested.percentile(0.99))
    );
    println!("ingest answers: {:?}", ingested.statuses);
    let (p50, p99) = (background.percentile(0.5), background.percentile(0.99));
    println!("queries and maintenance: {:?}; query latency p50 {}, p99 {}", background.statuses, ms(p50), ms(p99));
}

/// Compares the database with what was acknowledged; true when nothing is lost, duplicated or extra
/// and the rollups equal the raw counts.
async fn verify(db: &tokio_postgres::Client, acked: &[(Uuid, Uuid)]) -> Result<bool> {
    let rows = db.query("SELECT app_id, event_id FROM events", &[]).await?;
    let stored: Vec<(Uuid, Uuid)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let stored_set: HashSet<(Uuid, Uuid)> = stored.iter().copied().collect();
    let acked_set: HashSet<(Uuid, Uuid)> = acked.iter().copied().collect();
    if acked_set.len() != acked.len() {
        bail!("an id was acknowledged twice: the load generator is broken");
    }
    let duplicated = stored.len() - stored_set.len();
    let lost = acked_set.difference(&stored_set).count();
    let unacknowledged = stored_set.difference(&acked_set).count();
    const CELLS: &str = "WITH r AS (SELECT app_id, hour, event_type, sum(events)::int8 AS n FROM rollup_hourly \
           GROUP BY 1, 2, 3 HAVING sum(events) <> 0), \
         e AS (SELECT app_id, date_trunc('hour', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS hour, \
           event_type, count(*) AS n FROM events GROUP BY 1, 2, 3) \
         SELECT (SELECT count(*) FROM e), \
           count(*) FILTER (WHERE r.n IS DISTINCT FROM e.n) \
         FROM r FULL JOIN e USING (app_id, hour, event_type)";
    let cells = db.query_one(CELLS, &[]).await?;
    let (raw_cells, mismatched): (i64, i64) = (cells.get(0), cells.get(1));
    println!(
        "\nacknowledged {} / stored {} / duplicated {} / lost {} / stored but never acknowledged {}",
        fmt_int(acked.len() as u64),
        fmt_int(stored.len() as u64),
        duplicated,
        lost,
        unacknowledged
    );
    println!(
        "rollups equal raw counts: {} ({} (app, hour, type) cells, {} mismatched)",
        if mismatched == 0 { "yes" } else { "NO" },
        fmt_int(raw_cells as u64),
        mismatched
    );
    Ok(duplicated == 0 && lost == 0 && unacknowledged == 0 && mismatched == 0 && raw_cells > 0)
}
