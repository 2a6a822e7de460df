//! Analytics query benchmark: `cargo bench --bench queries` (issue 4's benchmark).
//!
//! Loads synthetic events into a scratch database (created on the local PostgreSQL and dropped at the
//! end) the fast way: binary COPY straight into `events`, then `rollup::rebuild`, then `ANALYZE`.
//! 10 apps with skewed sizes (30%, 20%, 15%, 10%, 8%, 6%, 4%, 3%, 2%, 2%), users = 2% of the events,
//! sessions = 10%, 20 event types, `created_at` uniform over the last 365 days (never in the future).
//!
//! Then starts the real `strata serve` with `STRATA_CACHE=off` and measures, over HTTP with the admin
//! token, for the biggest app: the 90-day daily timeline, the 7-day hourly timeline, the 12-month
//! monthly timeline, the 30-day summary and the 30-day app overview. Each at 1 connection (sequential
//! requests) and at 16 connections (a timed window), p50/p95/p99, next to the same question answered by
//! a raw SQL scan of `events` in the same run (median of 5), and the ratio raw / HTTP.
//!
//! Settings (environment):
//! - `STRATA_BENCH_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`).
//! - `STRATA_BENCH_EVENTS` (default 2,000,000; the issue asks 10,000,000, which takes too long on a
//!   shared 2-core machine: set `STRATA_BENCH_EVENTS=10000000` for the issue's size).
//! - `STRATA_BENCH_SECONDS`: window of the 16-connection phases (default 5).
//! - `STRATA_BENCH_REQUESTS`: sequential requests of the 1-connection phases (default 20).
//! - `STRATA_BENCH_TZ`: the dashboards' time zone (IANA name, default UTC): days, months and the ranges
//!   are that zone's, and so are the raw scans. `Asia/Kolkata` (+5:30) measures the zones whose
//!   buckets do not start on UTC hours (their half-hour edges are read raw).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use partition_jobs::Month;
use serde_json::Value;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

#[path = "../common/mod.rs"]
mod common;
mod questions;

use common::*;
use questions::{check_timeline, questions, Question, Row};

const ISSUE_EVENTS: usize = 10_000_000;
const DEFAULT_EVENTS: usize = 2_000_000;
const RAW_RUNS: usize = 5;
const CONNS_HIGH: usize = 16;

fn main() -> ExitCode {
    run_bench(bench())
}

struct Settings {
    admin_url: String,
    events: usize,
    seconds: Duration,
    requests: usize,
    tz: chrono_tz::Tz,
}

impl Settings {
    fn from_env() -> Result<Settings> {
        Ok(Settings {
            admin_url: std::env::var("STRATA_BENCH_DATABASE_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.into()),
            events: env_positive("STRATA_BENCH_EVENTS", DEFAULT_EVENTS as f64)? as usize,
            seconds: Duration::from_secs_f64(env_positive("STRATA_BENCH_SECONDS", 5.0)?),
            requests: env_positive("STRATA_BENCH_REQUESTS", 20.0)? as usize,
            tz: match std::env::var("STRATA_BENCH_TZ") {
                Ok(name) if !name.trim().is_empty() => {
                    name.trim().parse().map_err(|_| anyhow!("STRATA_BENCH_TZ={name:?} is not an IANA time zone"))?
                }
                _ => chrono_tz::Tz::UTC,
            },
        })
    }
}

async fn bench() -> Result<()> {
    let settings = Settings::from_env()?;
    println!("=== Strata analytics query benchmark (issue 4) ===");
    if settings.events < ISSUE_EVENTS {
        println!(
            "NOTE: loading {} events, NOT the issue's {} (too slow on this shared 2-core machine);",
            fmt_int(settings.events as u64),
            fmt_int(ISSUE_EVENTS as u64)
        );
        println!("      set STRATA_BENCH_EVENTS=10000000 for the issue's size. Raw-scan times scale with the size.");
    } else {
        println!("events: {}", fmt_int(settings.events as u64));
    }
    println!("server, PostgreSQL and this load generator share the machine's cores; caches off (STRATA_CACHE=off).\n");
    let admin_url = settings.admin_url.clone();
    if !ScratchDb::run_in(&admin_url, |url| run(settings, url)).await? {
        bail!("MISMATCH between the HTTP answer and the raw scan (see above)");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------------
// Measuring
// ---------------------------------------------------------------------------------------------------

/// Latency percentiles of one phase.
#[derive(Clone, Copy, Default)]
struct Lat {
    n: usize,
    errors: usize,
    p50: Duration,
    p95: Duration,
    p99: Duration,
    rps: f64,
}

fn percentiles(mut lat: Vec<Duration>, errors: usize, wall: Duration) -> Lat {
    lat.sort();
    let pick = |q: f64| {
        if lat.is_empty() {
            Duration::ZERO
        } else {
            lat[((lat.len() as f64 * q).ceil() as usize).clamp(1, lat.len()) - 1]
        }
    };
    Lat {
        n: lat.len(),
        errors,
        p50: pick(0.50),
        p95: pick(0.95),
        p99: pick(0.99),
        rps: lat.len() as f64 / wall.as_secs_f64(),
    }
}

fn http_client(conns: usize) -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder().pool_max_idle_per_host(conns).no_gzip().timeout(Duration::from_secs(60)).build()?)
}

async fn get(client: &reqwest::Client, url: &str) -> Result<bytes::Bytes> {
    let resp = client.get(url).bearer_auth(ADMIN_TOKEN).send().await?;
    let status = resp.status();
    let body = resp.bytes().await?;
    if !status.is_success() {
        bail!("GET {url}: {status}: {}", String::from_utf8_lossy(&body[..body.len().min(300)]));
    }
    Ok(body)
}

/// `requests` sequential requests on one connection (after 2 unmeasured ones).
async fn one_connection(url: &str, requests: usize) -> Result<Lat> {
    let client = http_client(1)?;
    for _ in 0..2 {
        get(&client, url).await?;
    }
    let mut lat = Vec::with_capacity(requests);
    let started = Instant::now();
    for _ in 0..requests {
        let t = Instant::now();
        get(&client, url).await?;
        lat.push(t.elapsed());
    }
    Ok(percentiles(lat, 0, started.elapsed()))
}

/// `conns` connections, each sending its next request when the previous answered, for `window`.
async fn many_connections(url: &str, conns: usize, window: Duration) -> Result<Lat> {
    let client = http_client(conns)?;
    let started = Instant::now();
    let end = started + window;
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (client, url) = (client.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors) = (Vec::new(), 0usize);
            while Instant::now() < end {
                let t = Instant::now();
                match get(&client, &url).await {
                    Ok(_) => lat.push(t.elapsed()),
                    Err(_) => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (lat, e) = t.await?;
        all.extend(lat);
        errors += e;
    }
    Ok(percentiles(all, errors, started.elapsed()))
}

/// Median wall time of `RAW_RUNS` runs of `sqls` (run one after the other, as one question).
async fn raw_median(db: &tokio_postgres::Client, sqls: &[&str], params: &[&(dyn ToSql + Sync)]) -> Result<Duration> {
    let mut times = Vec::new();
    for _ in 0..RAW_RUNS {
        let t = Instant::now();
        for sql in sqls {
            db.query(*sql, params).await?;
        }
        times.push(t.elapsed());
    }
    times.sort();
    Ok(times[times.len() / 2])
}

async fn run(settings: Settings, url: String) -> Result<bool> {
    let (apps, now) = load(&url, settings.events, APP_SHARES.len(), 365).await?;
    let app = apps[0];
    let db = strata::db::connect(&url).await?;
    let app_rows: i64 = db.query_one("SELECT count(*) FROM events WHERE app_id = $1", &[&app]).await?.get(0);
    println!("biggest app {app}: {} events over 365 days", fmt_int(app_rows as u64));

    let mut server = Server::start(&url, &[("STRATA_CACHE", "off")]).await?;
    println!("server pid {} on {} (STRATA_CACHE=off)\n", server.pid, server.addr);
    let base = format!("http://{}", server.addr);
    let tz = settings.tz;
    println!("time zone of the questions and raw scans: {}", tz.name());
    let qs = questions(app, now, tz);
    let consistent = check_timeline(&db, &base, &qs[0], app, tz).await?;
    println!();

    let mut rows = Vec::new();
    for q in &qs {
        let url = format!("{base}{}", q.path);
        let one = one_connection(&url, settings.requests).await.with_context(|| q.name)?;
        let high = many_connections(&url, CONNS_HIGH, settings.seconds).await?;
        let zone = tz.name();
        let params: Vec<&(dyn ToSql + Sync)> =
            if q.zoned { vec![&app, &q.from, &q.to, &zone] } else { vec![&app, &q.from, &q.to] };
        let raw = raw_median(&db, &q.raw, &params).await?;
        let row = Row { name: q.name, one, high, raw };
        print_row(&row);
        rows.push(row);
    }
    server.stop().await?;
    print_summary(&settings, &qs, &rows);
    println!();
    Ok(consistent)
}

// ---------------------------------------------------------------------------------------------------
// Reporting
// ---------------------------------------------------------------------------------------------------

fn fmt_ms(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1e3)
}

fn print_row(r: &Row) {
    println!(
        "{}: 1 conn p50 {} p95 {} p99 {} ({} req) | {CONNS_HIGH} conns p50 {} p95 {} p99 {} {:.0} req/s \
         ({} req, {} errors) | raw SQL median {}",
        r.name,
        fmt_ms(r.one.p50),
        fmt_ms(r.one.p95),
        fmt_ms(r.one.p99),
        r.one.n,
        fmt_ms(r.high.p50),
        fmt_ms(r.high.p95),
        fmt_ms(r.high.p99),
        r.high.rps,
        r.high.n,
        r.high.errors,
        fmt_ms(r.raw)
    );
}

fn print_summary(settings: &Settings, qs: &[Question], rows: &[Row]) {
    println!(
        "\n=== Summary ({} events, 10 apps, biggest app measured, caches off, tz {}) ===",
        fmt_int(settings.events as u64),
        settings.tz.name()
    );
    println!(
        "{:<28} {:>8} {:>8} {:>8} | {:>8} {:>8} {:>8} {:>8} | {:>9} {:>9}",
        "question", "1c p50", "1c p95", "1c p99", "16c p50", "16c p95", "16c p99", "16c rps", "raw SQL", "raw/p50"
    );
    for r in rows {
        let ratio = r.raw.as_secs_f64() / r.one.p50.as_secs_f64().max(1e-9);
        println!(
            "{:<28} {:>8} {:>8} {:>8} | {:>8} {:>8} {:>8} {:>8.0} | {:>9} {:>8.1}x",
            r.name,
            fmt_ms(r.one.p50),
            fmt_ms(r.one.p95),
            fmt_ms(r.one.p99),
            fmt_ms(r.high.p50),
            fmt_ms(r.high.p95),
            fmt_ms(r.high.p99),
            r.high.rps,
            fmt_ms(r.raw),
            ratio
        );
    }
    let errors: usize = rows.iter().map(|r| r.high.errors).sum();
    println!(
        "1c = {} sequential requests on 1 connection; 16c = {:.0} s window; raw SQL = median of {RAW_RUNS} runs of",
        settings.requests,
        settings.seconds.as_secs_f64()
    );
    println!("the equivalent scan of `events` from this process; raw/p50 = raw SQL time / HTTP p50 at 1 connection.");
    if errors > 0 {
        println!("WARNING: {errors} failed requests in the 16-connection phases");
    }
    if settings.events < ISSUE_EVENTS {
        println!(
            "NOTE: {} events instead of the issue's {} (STRATA_BENCH_EVENTS); the raw scans grow with the data.",
            fmt_int(settings.events as u64),
            fmt_int(ISSUE_EVENTS as u64)
        );
    }
    println!("\n=== Targets (issue 4) ===");
    let line = |label: String, figure: String, ok: bool| {
        println!("{label:<62} {figure:>10}  {}", if ok { "met" } else { "NOT MET" });
    };
    for (q, r) in qs.iter().zip(rows) {
        line(
            format!("{} p95 <= {} (1 conn, uncached)", q.name, fmt_ms(q.target_p95)),
            fmt_ms(r.one.p95),
            r.one.p95 <= q.target_p95,
        );
    }
    if let Some(r) = rows.first() {
        let ratio = r.raw.as_secs_f64() / r.one.p95.as_secs_f64().max(1e-9);
        line(format!("{} >= 25x faster than the raw scan (raw / p95)", r.name), format!("{ratio:.1}x"), ratio >= 25.0);
    }
}
