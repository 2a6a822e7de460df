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

mod common;
use common::*;

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
// Measuring
// ---------------------------------------------------------------------------------------------------

/// Which tier answered, from `meta.cache`.
#[derive(Clone, Copy, Default, Debug)]
struct Tiers {
    l1: u64,
    l2: u64,
    miss: u64,
    /// No `meta.cache` (e.g. `/health`).
    none: u64,
}

impl Tiers {
    fn add(&mut self, o: &Tiers) {
        self.l1 += o.l1;
        self.l2 += o.l2;
        self.miss += o.miss;
        self.none += o.none;
    }

    fn describe(&self) -> String {
        format!("l1 {} / l2 {} / miss {} / none {}", self.l1, self.l2, self.miss, self.none)
    }
}

/// `meta.cache` of a response body, looked for near the end first (where `meta` sorts), then anywhere.
fn tier_of(body: &[u8]) -> &'static str {
    fn find(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }
    let tail = &body[body.len().saturating_sub(512)..];
    for part in [tail, body] {
        for (needle, name) in
            [(&b"\"cache\":\"l1\""[..], "l1"), (b"\"cache\":\"l2\"", "l2"), (b"\"cache\":\"miss\"", "miss")]
        {
            if find(part, needle) {
                return name;
            }
        }
    }
    "none"
}

/// One measured phase.
#[derive(Clone, Default)]
struct Phase {
    label: String,
    conns: usize,
    n: usize,
    errors: usize,
    rps: f64,
    p50: Duration,
    p95: Duration,
    p99: Duration,
    tiers: Tiers,
}

fn pick(lat: &[Duration], q: f64) -> Duration {
    if lat.is_empty() {
        return Duration::ZERO;
    }
    lat[((lat.len() as f64 * q).ceil() as usize).clamp(1, lat.len()) - 1]
}

/// One keep-alive HTTP/1.1 connection of the load generator: raw hyper, one connection per task, so
/// the generator spends as little of the shared cores as it can (no pool, no URL parsing per request).
struct Conn {
    send: hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    authority: String,
    path: String,
}

impl Conn {
    async fn open(url: &str) -> Result<Conn> {
        let rest = url.strip_prefix("http://").ok_or_else(|| anyhow!("not an http:// URL: {url}"))?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let stream =
            tokio::net::TcpStream::connect(authority).await.with_context(|| format!("connecting to {authority}"))?;
        stream.set_nodelay(true)?;
        let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Conn { send, authority: authority.to_string(), path: path.to_string() })
    }

    async fn get(&mut self) -> Result<bytes::Bytes> {
        use http_body_util::BodyExt;
        let req = hyper::Request::get(&self.path)
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::AUTHORIZATION, format!("Bearer {ADMIN_TOKEN}"))
            .body(http_body_util::Empty::new())?;
        self.send.ready().await?;
        let resp = self.send.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!("GET {}: {status}: {}", self.path, String::from_utf8_lossy(&body[..body.len().min(300)]));
        }
        Ok(body)
    }
}

/// `conns` connections in a closed loop for warm-up + window; requests started inside the window count.
async fn phase(label: &str, url: &str, conns: usize, s: &Settings) -> Result<Phase> {
    let started = Instant::now();
    let (measure_from, end) = (started + s.warmup, started + s.warmup + s.seconds);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let url = url.to_string();
        let mut conn = Conn::open(&url).await?;
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors, mut tiers) = (Vec::new(), 0usize, Tiers::default());
            let mut first_error: Option<String> = None;
            loop {
                let t = Instant::now();
                if t >= end {
                    break;
                }
                let result = conn.get().await;
                if result.is_err() {
                    // A broken connection is replaced (the error is counted below).
                    if let Ok(fresh) = Conn::open(&url).await {
                        conn = fresh;
                    }
                }
                if t < measure_from {
                    continue;
                }
                match result {
                    Ok(body) => {
                        lat.push(t.elapsed());
                        match tier_of(&body) {
                            "l1" => tiers.l1 += 1,
                            "l2" => tiers.l2 += 1,
                            "miss" => tiers.miss += 1,
                            _ => tiers.none += 1,
                        }
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
            (lat, errors, tiers, first_error)
        }));
    }
    let (mut all, mut errors, mut tiers) = (Vec::new(), 0, Tiers::default());
    let mut first_error: Option<String> = None;
    for t in tasks {
        let (lat, e, tr, fe) = t.await?;
        if first_error.is_none() {
            first_error = fe;
        }
        all.extend(lat);
        errors += e;
        tiers.add(&tr);
    }
    // The window closes when the last request started in it has answered.
    let window = (Instant::now() - measure_from).max(s.seconds);
    all.sort();
    let p = Phase {
        label: label.to_string(),
        conns,
        n: all.len(),
        errors,
        rps: all.len() as f64 / window.as_secs_f64(),
        p50: pick(&all, 0.50),
        p95: pick(&all, 0.95),
        p99: pick(&all, 0.99),
        tiers,
    };
    println!(
        "  {:<14} {:>3} conns: {:>8.0} req/s  p50 {} p95 {} p99 {}  ({} req, {} errors; meta.cache {})",
        p.label,
        p.conns,
        p.rps,
        fmt_ms(p.p50),
        fmt_ms(p.p95),
        fmt_ms(p.p99),
        p.n,
        p.errors,
        p.tiers.describe()
    );
    if let Some(e) = first_error {
        let e: String = e.chars().take(300).collect();
        println!("    first error: {e}");
    }
    Ok(p)
}

/// Sends a few requests and checks the last one was answered by `expected`.
async fn warm_and_check(url: &str, expected: &str) -> Result<(usize, bool)> {
    let mut conn = Conn::open(url).await?;
    let mut body = bytes::Bytes::new();
    for _ in 0..3 {
        body = conn.get().await?;
    }
    let v: Value = serde_json::from_slice(&body)?;
    let tier = v["meta"]["cache"].as_str().unwrap_or("(none)").to_string();
    let ok = tier == expected;
    if ok {
        println!("  after warm-up meta.cache = {tier:?} as expected; response {} bytes", body.len());
    } else {
        println!("  !!!!! after warm-up meta.cache = {tier:?}, expected {expected:?} !!!!!");
    }
    Ok((body.len(), ok))
}

/// Redis GET round trip of a `size`-byte value, one connection: (p50, p99).
async fn redis_floor(redis_url: &str, prefix: &str, size: usize) -> Result<(Duration, Duration)> {
    let client = redis::Client::open(redis_url)?;
    let mut con = client.get_multiplexed_async_connection().await.context("connecting to Redis")?;
    let key = format!("{prefix}bench-payload");
    let payload = vec![b'x'; size];
    redis::cmd("SET").arg(&key).arg(&payload[..]).arg("EX").arg(600).query_async::<()>(&mut con).await?;
    for _ in 0..100 {
        redis::cmd("GET").arg(&key).query_async::<Vec<u8>>(&mut con).await?;
    }
    let mut lat = Vec::with_capacity(REDIS_GETS);
    for _ in 0..REDIS_GETS {
        let t = Instant::now();
        let v = redis::cmd("GET").arg(&key).query_async::<Vec<u8>>(&mut con).await?;
        lat.push(t.elapsed());
        if v.len() != size {
            bail!("Redis returned {} bytes, expected {size}", v.len());
        }
    }
    redis::cmd("DEL").arg(&key).query_async::<()>(&mut con).await?;
    lat.sort();
    Ok((pick(&lat, 0.50), pick(&lat, 0.99)))
}

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
    let scratch = ScratchDb::create(&settings.admin_url).await?;
    let outcome = tokio::spawn(run(settings, scratch.url.clone())).await;
    scratch.drop_best_effort().await;
    let ok = outcome.map_err(|e| anyhow!("benchmark task failed: {e}"))??;
    if !ok {
        bail!("a phase was not answered by the cache tier it measures (see above)");
    }
    Ok(())
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
    let mut server = Server::start(&url, &redis_env).await?;
    println!("(1) server pid {} on {}, default STRATA_CACHE (L1 + L2)", server.pid, server.addr);
    let base = format!("http://{}", server.addr);
    let (size, ok) = warm_and_check(&format!("{base}{path}"), "l1").await?;
    all_ok &= ok;
    let mut l1 = Vec::new();
    for c in CONNS {
        l1.push(phase("L1 hit", &format!("{base}{path}"), c, &s).await?);
    }
    let health1 = phase("/health", &format!("{base}/health"), 1, &s).await?;
    let health100 = phase("/health", &format!("{base}/health"), 100, &s).await?;
    server.stop().await?;

    // 2. L2 hits (L1 disabled).
    let mut env = redis_env.to_vec();
    env.push(("STRATA_CACHE", "l2"));
    let mut server = Server::start(&url, &env).await?;
    println!("(2) server pid {} on {}, STRATA_CACHE=l2 (L1 disabled)", server.pid, server.addr);
    let base = format!("http://{}", server.addr);
    let (_, ok) = warm_and_check(&format!("{base}{path}"), "l2").await?;
    all_ok &= ok;
    let mut l2 = Vec::new();
    for c in CONNS {
        l2.push(phase("L2 hit", &format!("{base}{path}"), c, &s).await?);
    }
    server.stop().await?;

    // 3. Misses.
    let mut env = redis_env.to_vec();
    env.push(("STRATA_CACHE", "off"));
    let mut server = Server::start(&url, &env).await?;
    println!("(3) server pid {} on {}, STRATA_CACHE=off", server.pid, server.addr);
    let base = format!("http://{}", server.addr);
    let (_, ok) = warm_and_check(&format!("{base}{path}"), "miss").await?;
    all_ok &= ok;
    let mut miss = Vec::new();
    for c in CONNS {
        miss.push(phase("miss", &format!("{base}{path}"), c, &s).await?);
    }
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
        println!(
            "{:<10} {:>5} {:>10.0} {:>9} {:>9} {:>9} {:>7}  {}",
            p.label,
            p.conns,
            p.rps,
            fmt_ms(p.p50),
            fmt_ms(p.p95),
            fmt_ms(p.p99),
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
