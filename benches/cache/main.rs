//! Two-tier cache benchmark: `cargo bench --bench cache` (issue 5's benchmark).
//!
//! Loads synthetic events for one app over the last 90 days into a scratch database (binary COPY,
//! `rollup::rebuild`, `ANALYZE`; dropped at the end), then measures the 90-day daily timeline over HTTP
//! with the admin token against the real `strata serve`, started three times on one Redis
//! (`REDIS_URL=redis://127.0.0.1:6379`, a unique `STRATA_REDIS_PREFIX` per run of the benchmark):
//!
//! 1. default `STRATA_CACHE` (L1 + L2): L1 hits at 1, 10 and 100 connections, then `/health` at 1 and
//!    100 connections (the trivial-route ceiling and the HTTP overhead);
//! 2. `STRATA_CACHE=l2` (L1 disabled): L2 hits at 1, 10 and 100 connections (identical concurrent
//!    requests share one Redis lookup, so at 10 and 100 connections lookups are coalesced);
//! 3. `STRATA_CACHE=off`: misses at 1, 10 and 100 connections;
//!
//! and, as the floor, the Redis GET round trip of a value of the timeline's size (redis crate, one
//! connection). Each connection is a task (a raw hyper HTTP/1.1 connection of its own, the leanest
//! generator we have: it shares the cores with the server) sending its next request as soon as the
//! previous one answered; requests started after the warm-up and within the window count. Every response's
//! `meta.cache` is tallied, so a phase that was not served by the tier it claims shows it. Responses
//! are not compressed (the client sends no `Accept-Encoding`).
//!
//! Settings (environment): `STRATA_BENCH_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`), `STRATA_BENCH_EVENTS` (default 300,000),
//! `STRATA_BENCH_SECONDS` (measured window per phase, default 5), `STRATA_BENCH_WARMUP_SECONDS`
//! (default 1), `STRATA_BENCH_REDIS_URL` (default `redis://127.0.0.1:6379`).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use uuid::Uuid;

#[path = "../common/mod.rs"]
mod common;
mod measure;

use common::*;
use measure::{phase, redis_floor, warm_and_check, Phase};

const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
const DEFAULT_EVENTS: usize = 300_000;
/// Connection counts of the cached and uncached phases.
const CONNS: [usize; 3] = [1, 10, 100];
/// Sequential Redis GETs of the floor measurement.
const REDIS_GETS: usize = 2_000;

// ---------------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------------

struct Settings {
    admin_url: String,
    redis_url: String,
    events: usize,
    seconds: Duration,
    warmup: Duration,
}

impl Settings {
    fn from_env() -> Result<Settings> {
        let s = Settings {
            admin_url: std::env::var("STRATA_BENCH_DATABASE_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.into()),
            redis_url: std::env::var("STRATA_BENCH_REDIS_URL").unwrap_or_else(|_| DEFAULT_REDIS_URL.into()),
            events: env_number("STRATA_BENCH_EVENTS", DEFAULT_EVENTS as f64)? as usize,
            seconds: Duration::from_secs_f64(env_number("STRATA_BENCH_SECONDS", 5.0)?),
            warmup: Duration::from_secs_f64(env_number("STRATA_BENCH_WARMUP_SECONDS", 1.0)?),
        };
        if s.events == 0 || s.seconds.is_zero() {
            bail!("STRATA_BENCH_EVENTS and STRATA_BENCH_SECONDS must be positive");
        }
        Ok(s)
    }
}

fn main() -> ExitCode {
    run_bench(bench())
}

async fn bench() -> Result<()> {
    let settings = Settings::from_env()?;
    println!("=== Strata two-tier cache benchmark (issue 5) ===");
    println!(
        "{} events, one app, 90 days; {:.1} s measured after {:.1} s warm-up per phase; Redis {}.",
        fmt_int(settings.events as u64),
        settings.seconds.as_secs_f64(),
        settings.warmup.as_secs_f64(),
        settings.redis_url
    );
    println!(
        "server, Redis, PostgreSQL and this load generator share the machine's cores: figures are lower bounds.\n"
    );
    let admin_url = settings.admin_url.clone();
    if !ScratchDb::run_in(&admin_url, |url| run(settings, url)).await? {
        bail!("a phase was not answered by the cache tier it measures (see above)");
    }
    Ok(())
}

/// One server configuration of the run and the tier its answers must come from.
struct Tier {
    heading: &'static str,
    /// What the server runs with, as printed.
    setting: &'static str,
    /// `STRATA_CACHE`, when not the default.
    cache: Option<&'static str>,
    /// The `meta.cache` every answer must carry.
    tier: &'static str,
    /// The phase's label in the figures.
    label: &'static str,
}

impl Tier {
    /// Starts the server, checks that the timeline at `path` is answered from this tier, and measures
    /// it at each of [`CONNS`] connections. Returns the running server, the answer's size, whether
    /// the check passed, and the phases.
    async fn measure(
        &self,
        s: &Settings,
        db_url: &str,
        redis_env: &[(&str, &str)],
        path: &str,
    ) -> Result<(Server, usize, bool, Vec<Phase>)> {
        let mut env = redis_env.to_vec();
        env.extend(self.cache.map(|c| ("STRATA_CACHE", c)));
        let server = Server::start(db_url, &env).await?;
        println!("{} server pid {} on {}, {}", self.heading, server.pid, server.addr, self.setting);
        let url = format!("http://{}{path}", server.addr);
        let (size, ok) = warm_and_check(&url, self.tier).await?;
        let mut phases = Vec::new();
        for c in CONNS {
            phases.push(phase(self.label, &url, c, s).await?);
        }
        Ok((server, size, ok, phases))
    }
}

async fn run(s: Settings, url: String) -> Result<bool> {
    let (apps, now) = load(&url, s.events, 1, 90).await?;
    let app = apps[0];
    let today = now.date_naive();
    let start = today - chrono::Duration::days(89);
    let path = format!("/api/analytics/events/timeline?appId={app}&startDate={start}&endDate={today}&interval=day");
    let prefix = format!("strata-bench-{}:", Uuid::new_v4().simple());
    let redis_env = [("REDIS_URL", s.redis_url.as_str()), ("STRATA_REDIS_PREFIX", prefix.as_str())];
    println!("90-day daily timeline: {path}\nRedis prefix {prefix}\n");
    let mut all_ok = true;

    // 1. L1 hits (default STRATA_CACHE), /health.
    let l1_run =
        Tier { heading: "(1)", setting: "default STRATA_CACHE (L1 + L2)", cache: None, tier: "l1", label: "L1 hit" };
    let (mut server, size, ok, l1) = l1_run.measure(&s, &url, &redis_env, &path).await?;
    all_ok &= ok;
    let base = format!("http://{}", server.addr);
    let health1 = phase("/health", &format!("{base}/health"), 1, &s).await?;
    let health100 = phase("/health", &format!("{base}/health"), 100, &s).await?;
    server.stop().await?;

    // 2. L2 hits (L1 disabled).
    let l2_run = Tier {
        heading: "(2)",
        setting: "STRATA_CACHE=l2 (L1 disabled)",
        cache: Some("l2"),
        tier: "l2",
        label: "L2 hit",
    };
    let (mut server, _, ok, l2) = l2_run.measure(&s, &url, &redis_env, &path).await?;
    all_ok &= ok;
    server.stop().await?;

    // 3. Misses.
    let miss_run =
        Tier { heading: "(3)", setting: "STRATA_CACHE=off", cache: Some("off"), tier: "miss", label: "miss" };
    let (mut server, _, ok, miss) = miss_run.measure(&s, &url, &redis_env, &path).await?;
    all_ok &= ok;
    server.stop().await?;

    // 4. Redis floor.
    let (redis_p50, redis_p99) = redis_floor(&s.redis_url, &prefix, size).await?;
    println!(
        "(4) Redis GET of {size} bytes, 1 connection, {REDIS_GETS} GETs: p50 {} p99 {}",
        fmt_ms(redis_p50),
        fmt_ms(redis_p99)
    );

    print_summary(&s, size, &l1, &l2, &miss, &health1, &health100, (redis_p50, redis_p99));
    for p in l1.iter().chain(&l2).chain(&miss) {
        let expected = match p.label.as_str() {
            "L1 hit" => p.tiers.l1,
            "L2 hit" => p.tiers.l2,
            _ => p.tiers.miss,
        };
        if expected != p.n as u64 {
            println!(
                "note: {} at {} conns: {} of {} answers from another tier ({})",
                p.label,
                p.conns,
                p.n as u64 - expected,
                p.n,
                p.tiers.describe()
            );
        }
    }
    println!();
    Ok(all_ok)
}

#[allow(clippy::too_many_arguments)]
fn print_summary(
    s: &Settings,
    size: usize,
    l1: &[Phase],
    l2: &[Phase],
    miss: &[Phase],
    health1: &Phase,
    health100: &Phase,
    redis: (Duration, Duration),
) {
    println!("\n=== Summary: 90-day daily timeline, {} events, {size}-byte answer ===", fmt_int(s.events as u64));
    println!(
        "{:<10} {:>5} {:>10} {:>9} {:>9} {:>9} {:>7}  meta.cache",
        "phase", "conns", "req/s", "p50", "p95", "p99", "errors"
    );
    for p in l1.iter().chain(l2).chain(miss).chain([health1, health100]) {
        let [p50, p95, p99] = p.percentiles();
        println!(
            "{:<10} {:>5} {:>10.0} {p50:>9} {p95:>9} {p99:>9} {:>7}  {}",
            p.label,
            p.conns,
            p.rps,
            p.errors,
            p.tiers.describe()
        );
    }
    println!("{:<10} {:>5} {:>10} {:>9} {:>9} {:>9}", "Redis GET", 1, "-", fmt_ms(redis.0), "-", fmt_ms(redis.1));
    println!("HTTP/1.1 keep-alive, no compression; {:.1} s window per phase.", s.seconds.as_secs_f64());

    println!("\n=== Targets (issue 5) ===");
    let line = |label: &str, figure: String, ok: bool| {
        println!("{label:<66} {figure:>12}  {}", if ok { "met" } else { "NOT MET" });
    };
    if let Some(p) = l1.iter().find(|p| p.conns == 100) {
        let ratio = p.rps / health100.rps.max(1e-9);
        line(
            &format!("L1 hits @100 conns / /health @100 conns ({:.0} / {:.0} req/s) >= 0.7", p.rps, health100.rps),
            format!("{ratio:.2}"),
            ratio >= 0.7,
        );
        line("L1 hits @100 conns p99 <= 5 ms", fmt_ms(p.p99), p.p99 <= Duration::from_millis(5));
    }
    if let Some(p) = l2.iter().find(|p| p.conns == 100) {
        line(
            &format!("L2 hits @100 conns answered without errors, all from L2 ({:.0} req/s)", p.rps),
            format!("{} errors", p.errors),
            p.errors == 0 && p.tiers.l2 == p.n as u64 && p.n > 0,
        );
    }
    if let Some(p) = l2.iter().find(|p| p.conns == 1) {
        let floor = redis.0 + health1.p50;
        let ratio = p.p50.as_secs_f64() / floor.as_secs_f64().max(1e-9);
        line(
            &format!(
                "L2 p50 @1 conn {} <= 2x (Redis GET p50 {} + /health p50 @1 conn {})",
                fmt_ms(p.p50),
                fmt_ms(redis.0),
                fmt_ms(health1.p50)
            ),
            format!("{ratio:.2}x"),
            ratio <= 2.0,
        );
    }
}

// ---------------------------------------------------------------------------------------------------
// Reporting helpers
// ---------------------------------------------------------------------------------------------------

fn fmt_ms(d: Duration) -> String {
    format!("{:.2}ms", d.as_secs_f64() * 1e3)
}
