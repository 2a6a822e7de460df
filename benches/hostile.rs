//! Hostile clients against memory: `cargo bench --bench hostile` (issue 14).
//!
//! Starts the real `strata serve` (or `STRATA_BENCH_SERVER_BIN`, to measure another build the same
//! way) on a scratch database, measures its idle RSS and `/health` latency, then runs
//! `STRATA_HOSTILE_CLIENTS` (default 64) clients for `STRATA_HOSTILE_SECONDS` (default 20) sending the
//! worst bodies they can within the limits, in turn:
//! - `batch-bomb`: gzip, valid key, `{"events":[[],[],...]}` inflating to just under the body limit;
//! - `junk-batch`: gzip, valid key, one real event beside millions of values in an unread field;
//! - `junk-single`: the same on the single-event route;
//! - `keyless-bomb`: gzip, no key at all, millions of values (the key would be looked for in the body);
//! - `plain-bomb`: the `[],` body uncompressed, valid key;
//! - `json-route`: `/api/auth/register` with the largest body a JSON route accepts, all `[],`.
//!
//! `STRATA_HOSTILE_SHAPES` (comma-separated names) runs only those. Meanwhile one client asks `/health` every 10 ms. It prints the answers by status, peak RSS (VmRSS
//! sampled every 50 ms and the kernel's VmHWM), `/health` p50/p95/p99 during the attack against the idle
//! baseline, and RSS every 5 s for 30 s after the attack, against the issue's bounds (peak <= 300 MB,
//! p99 <= 50 ms, RSS back within 2x of before).

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

mod common;
use common::*;

/// The server's body limit (its default), which every shape stays inside.
const BODY_MAX: usize = 5 * 1024 * 1024;
/// The limit of JSON routes (`strata::http::JSON_BODY_MAX_BYTES`).
const JSON_ROUTE_MAX: usize = strata::http::JSON_BODY_MAX_BYTES;

fn main() -> std::process::ExitCode {
    run_bench(bench())
}

struct Shape {
    name: &'static str,
    path: &'static str,
    keyed: bool,
    gzip: bool,
    body: Vec<u8>,
}

/// `{prefix}[],[],...[]{suffix}` filling `total` bytes.
fn bomb(prefix: &str, suffix: &str, total: usize) -> String {
    let n = (total - prefix.len() - suffix.len()) / 3;
    let mut s = String::with_capacity(total);
    s.push_str(prefix);
    s.push_str(&"[],".repeat(n));
    s.pop();
    s.push_str(suffix);
    s
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(data).expect("in memory");
    enc.finish().expect("in memory")
}

fn shapes() -> Vec<Shape> {
    let limit = BODY_MAX - 64;
    let gz = |s: String| gzip(s.as_bytes());
    vec![
        Shape {
            name: "batch-bomb",
            path: "/api/events/track/batch",
            keyed: true,
            gzip: true,
            body: gz(bomb(r#"{"events":["#, "]}", limit)),
        },
        Shape {
            name: "junk-batch",
            path: "/api/events/track/batch",
            keyed: true,
            gzip: true,
            body: gz(bomb(r#"{"events":[{"eventType":"hostile"}],"junk":["#, "]}", limit)),
        },
        Shape {
            name: "junk-single",
            path: "/api/events/track",
            keyed: true,
            gzip: true,
            body: gz(bomb(r#"{"eventType":"hostile","junk":["#, "]}", limit)),
        },
        Shape {
            name: "keyless-bomb",
            path: "/api/events/track/batch",
            keyed: false,
            gzip: true,
            body: gz(bomb(r#"{"events":["#, r#"],"apiKey":"ak_0"}"#, limit)),
        },
        Shape {
            name: "plain-bomb",
            path: "/api/events/track/batch",
            keyed: true,
            gzip: false,
            body: bomb(r#"{"events":["#, "]}", limit).into_bytes(),
        },
        Shape {
            name: "json-route",
            path: "/api/auth/register",
            keyed: false,
            gzip: false,
            body: bomb(
                r#"{"email":"a@b.example","name":"n","password":"pw-123456","junk":["#,
                "]}",
                JSON_ROUTE_MAX - 64,
            )
            .into_bytes(),
        },
    ]
}

async fn bench() -> Result<()> {
    let admin_url = std::env::var("STRATA_BENCH_DATABASE_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.into());
    let clients = env_positive("STRATA_HOSTILE_CLIENTS", 64.0)? as usize;
    let seconds = env_positive("STRATA_HOSTILE_SECONDS", 20.0)?;
    ScratchDb::run_in(&admin_url, |url| async move { run(&url, clients, Duration::from_secs_f64(seconds)).await }).await
}

async fn run(url: &str, clients: usize, attack: Duration) -> Result<()> {
    strata::db::migrate(url, 3, Duration::from_secs(5)).await.context("migrating the scratch database")?;
    let db = strata::db::connect(url).await?;
    let app = strata::accounts::create_app(&db, "hostile", None).await?;
    let key = strata::accounts::create_key(&db, KEY_SECRET.as_bytes(), app.id, "hostile", None).await?;
    // STRATA_HOSTILE_SHAPES (comma-separated names) runs only those shapes.
    let only = std::env::var("STRATA_HOSTILE_SHAPES").ok();
    let shapes: Vec<Shape> =
        shapes().into_iter().filter(|s| only.as_deref().is_none_or(|o| o.split(',').any(|n| n == s.name))).collect();
    anyhow::ensure!(!shapes.is_empty(), "STRATA_HOSTILE_SHAPES names no shape");
    let shapes = Arc::new(shapes);
    println!(
        "bodies: {}",
        shapes.iter().map(|s| format!("{} {} B", s.name, s.body.len())).collect::<Vec<_>>().join(", ")
    );

    let server = Server::start(url, &[]).await?;
    let base = format!("http://{}", server.addr);
    println!("server pid {} on {base}; {clients} clients for {} s\n", server.pid, attack.as_secs_f64());
    let http = reqwest::Client::builder().pool_max_idle_per_host(clients + 1).build()?;
    let idle = health_latencies(&http, &base, Duration::from_secs(3)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss_kb(server.pid).context("reading the server's RSS")?;

    let peak = Arc::new(AtomicU64::new(rss_before));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling, pid) = (peak.clone(), sampling.clone(), server.pid);
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                if let Some(kb) = rss_kb(pid) {
                    peak.fetch_max(kb, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let statuses = Arc::new(Mutex::new(BTreeMap::<(String, String), u64>::new()));
    let deadline = Instant::now() + attack;
    let mut tasks = Vec::new();
    for i in 0..clients {
        let (http, base, key, shapes, statuses) =
            (http.clone(), base.clone(), key.api_key.clone(), shapes.clone(), statuses.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = i;
            while Instant::now() < deadline {
                let shape = &shapes[n % shapes.len()];
                n += 1;
                let mut req = http.post(format!("{base}{}", shape.path)).header("Content-Type", "application/json");
                if shape.keyed {
                    req = req.header("X-API-Key", &key);
                }
                if shape.gzip {
                    req = req.header("Content-Encoding", "gzip");
                }
                let status = match req.body(shape.body.clone()).send().await {
                    Ok(resp) => {
                        let status = resp.status().as_u16().to_string();
                        let _ = resp.bytes().await;
                        status
                    }
                    Err(_) => "error".to_string(),
                };
                *statuses.lock().unwrap().entry((shape.name.to_string(), status)).or_default() += 1;
            }
        }));
    }
    // The prober has its own thread and runtime: the attackers' tasks never delay its requests.
    let prober = {
        let base = base.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async { health_latencies(&reqwest::Client::new(), &base, attack).await })
        })
    };
    let during = tokio::task::spawn_blocking(move || prober.join().expect("prober")).await?;
    for t in tasks {
        t.await?;
    }
    sampling.store(false, Ordering::Relaxed);
    sampler.await?;
    let hwm = proc_status_kb(server.pid, "VmHWM:").unwrap_or(0);
    let peak_kb = peak.load(Ordering::Relaxed).max(hwm);

    println!("answers during the attack (shape, status: count):");
    for ((shape, status), n) in statuses.lock().unwrap().iter() {
        println!("  {shape:<13} {status:>5}: {}", fmt_int(*n));
    }
    let mut after = Vec::new();
    for s in 1..=6 {
        tokio::time::sleep(Duration::from_secs(5)).await;
        after.push((s * 5, rss_kb(server.pid).unwrap_or(0)));
    }
    let rss_after = after.last().map_or(0, |a| a.1);
    let mb = |kb: u64| kb as f64 / 1024.0;
    println!("\n                        value          bound      baseline      ratio");
    println!("RSS before          {:>9.1} MB", mb(rss_before));
    let verdict = |ok: bool| if ok { "ok" } else { "OVER" };
    println!(
        "peak RSS            {:>9.1} MB   <= 300 MB  {:>9.1} MB   {:>6.2}x  {}",
        mb(peak_kb),
        mb(rss_before),
        peak_kb as f64 / rss_before as f64,
        verdict(mb(peak_kb) <= 300.0)
    );
    for (label, q) in [("p50", 0.50), ("p95", 0.95), ("p99", 0.99)] {
        let (d, i) = (quantile(&during, q), quantile(&idle, q));
        let bound = if label == "p99" { "<= 50 ms " } else { "         " };
        println!(
            "/health {label}         {:>9.2} ms   {bound}  {:>9.2} ms   {:>6.1}x  {}",
            d,
            i,
            d / i,
            if label == "p99" { verdict(d <= 50.0) } else { "" }
        );
    }
    println!("/health answers       {:>9} during the attack ({} idle)", during.len(), idle.len());
    let trail: Vec<String> = after.iter().map(|(s, kb)| format!("{s}s {:.0} MB", mb(*kb))).collect();
    println!("RSS after the attack: {}", trail.join(", "));
    println!(
        "RSS 30 s after      {:>9.1} MB   <= 2x      {:>9.1} MB   {:>6.2}x  {}",
        mb(rss_after),
        mb(rss_before),
        rss_after as f64 / rss_before as f64,
        verdict(rss_after <= 2 * rss_before)
    );
    Ok(())
}

/// `/health` latencies in ms, one request every 10 ms for `span`.
async fn health_latencies(http: &reqwest::Client, base: &str, span: Duration) -> Vec<f64> {
    let end = Instant::now() + span;
    let mut out = Vec::new();
    while Instant::now() < end {
        let t = Instant::now();
        if let Ok(resp) = http.get(format!("{base}/health")).send().await {
            let _ = resp.bytes().await;
            out.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    out
}

fn quantile(samples: &[f64], q: f64) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(f64::NAN)
}

fn rss_kb(pid: u32) -> Option<u64> {
    proc_status_kb(pid, "VmRSS:")
}
