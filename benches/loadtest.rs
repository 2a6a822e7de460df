//! A load-test kit to point at any running Strata (the original system shipped ab, Artillery and k6
//! scripts; this is one self-contained driver).
//!
//! ```sh
//! cargo bench --bench loadtest -- --url http://127.0.0.1:3000 --api-key ak_... --token $ADMIN_TOKEN \
//!     --app-id <uuid> --scenario all --warmup 5 --sustained 20 --peak 10 --connections 16
//! ```
//! Scenarios: `single` (one event per request), `batch` (`--batch-size` events per request),
//! `timeline-cached` (the same 90-day timeline again and again), `timeline-uncached` (a different
//! range each request), or `all`. Each runs three phases like the original guide's Artillery config:
//! warm-up at a quarter of the connections, sustained at half, peak at all of them; every phase prints
//! requests/s, events/s, p50/p95/p99 and errors by status, then the driver stops by itself.
//! Only run it against servers you operate, on addresses you own.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{json, Value};
use tokio::sync::Mutex;

#[derive(Parser, Clone)]
#[command(about = "Load-test a running Strata")]
struct Args {
    /// Base URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    url: String,
    /// API key for the ingestion scenarios.
    #[arg(long, env = "STRATA_LOAD_API_KEY")]
    api_key: Option<String>,
    /// Bearer token for the query scenarios (admin or owner token).
    #[arg(long, env = "STRATA_LOAD_TOKEN")]
    token: Option<String>,
    /// App id for the query scenarios.
    #[arg(long)]
    app_id: Option<String>,
    /// single | batch | timeline-cached | timeline-uncached | all
    #[arg(long, default_value = "all")]
    scenario: String,
    /// Events per batch request.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Connections at peak (warm-up uses a quarter, sustained half).
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Warm-up seconds.
    #[arg(long, default_value_t = 5)]
    warmup: u64,
    /// Sustained seconds.
    #[arg(long, default_value_t = 20)]
    sustained: u64,
    /// Peak seconds.
    #[arg(long, default_value_t = 10)]
    peak: u64,
    /// cargo passes --bench to bench binaries; accepted and ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Default)]
struct Tally {
    latencies: Mutex<Vec<Duration>>,
    events: AtomicU64,
    statuses: Mutex<BTreeMap<u16, u64>>,
    transport_errors: AtomicU64,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let scenarios: Vec<&str> = match args.scenario.as_str() {
        "all" => vec!["single", "batch", "timeline-cached", "timeline-uncached"],
        s => vec![s],
    };
    let http = reqwest::Client::builder().pool_max_idle_per_host(args.connections).build().expect("HTTP client");
    println!("Strata load test against {} (load generator on this machine)", args.url);
    for scenario in scenarios {
        if !ready_for(&args, scenario) {
            println!(
                "skipping {scenario}: it needs {}",
                if scenario.starts_with("timeline") { "--token and --app-id" } else { "--api-key" }
            );
            continue;
        }
        let phases = [
            ("warm-up", (args.connections / 4).max(1), args.warmup),
            ("sustained", (args.connections / 2).max(1), args.sustained),
            ("peak", args.connections, args.peak),
        ];
        for (phase, conns, secs) in phases {
            let tally = run_phase(&http, &args, scenario, conns, Duration::from_secs(secs)).await;
            report(scenario, phase, conns, secs, &tally).await;
        }
    }
}

fn ready_for(args: &Args, scenario: &str) -> bool {
    if scenario.starts_with("timeline") {
        args.token.is_some() && args.app_id.is_some()
    } else {
        args.api_key.is_some()
    }
}

async fn run_phase(http: &reqwest::Client, args: &Args, scenario: &str, conns: usize, length: Duration) -> Arc<Tally> {
    let tally = Arc::new(Tally::default());
    let deadline = Instant::now() + length;
    let counter = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (http, args, tally, counter) = (http.clone(), args.clone(), tally.clone(), counter.clone());
        let scenario = scenario.to_string();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let (req, events) = request(&http, &args, &scenario, n);
                let started = Instant::now();
                match req.send().await {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        let _ = resp.bytes().await;
                        tally.latencies.lock().await.push(started.elapsed());
                        *tally.statuses.lock().await.entry(status).or_default() += 1;
                        if (200..300).contains(&status) {
                            tally.events.fetch_add(events, Ordering::Relaxed);
                        }
                    }
                    Err(_) => {
                        tally.transport_errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    tally
}

/// The request of scenario `scenario` number `n`, and how many events it carries.
fn request(http: &reqwest::Client, args: &Args, scenario: &str, n: u64) -> (reqwest::RequestBuilder, u64) {
    let event = |i: u64| -> Value {
        json!({"eventType": format!("load_{}", i % 10), "userId": format!("u{}", i % 5000),
               "sessionId": format!("s{}", i % 20000), "eventId": uuid::Uuid::now_v7(),
               "url": "https://example.test/load", "metadata": {"n": i}})
    };
    let key = args.api_key.clone().unwrap_or_default();
    match scenario {
        "single" => (http.post(format!("{}/api/events/track", args.url)).header("X-API-Key", key).json(&event(n)), 1),
        "batch" => {
            let events: Vec<Value> = (0..args.batch_size as u64).map(|i| event(n * 1000 + i)).collect();
            let req = http.post(format!("{}/api/events/track/batch", args.url)).header("X-API-Key", key);
            (req.json(&json!({ "events": events })), args.batch_size as u64)
        }
        _ => {
            let end = chrono::Utc::now().date_naive();
            // Uncached: shift the range by a day per request so every key differs.
            let shift = if scenario == "timeline-uncached" { (n % 365) as i64 } else { 0 };
            let end = end - chrono::Duration::days(shift);
            let start = end - chrono::Duration::days(90);
            let url = format!(
                "{}/api/analytics/events/timeline?appId={}&startDate={start}&endDate={end}&interval=day",
                args.url,
                args.app_id.clone().unwrap_or_default()
            );
            (http.get(url).bearer_auth(args.token.clone().unwrap_or_default()), 0)
        }
    }
}

async fn report(scenario: &str, phase: &str, conns: usize, secs: u64, tally: &Tally) {
    let mut lat = tally.latencies.lock().await.clone();
    lat.sort();
    let pct = |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied();
    let ms = |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{:.1}ms", d.as_secs_f64() * 1000.0));
    let secs = secs.max(1) as f64;
    let statuses = tally.statuses.lock().await;
    let errors: u64 = statuses.iter().filter(|(s, _)| !(200..300).contains(*s)).map(|(_, n)| n).sum::<u64>()
        + tally.transport_errors.load(Ordering::Relaxed);
    println!(
        "{scenario:<18} {phase:<9} conns {conns:>3}: {:>9.0} req/s {:>9.0} events/s  p50 {} p95 {} p99 {}  errors {errors} {:?}",
        lat.len() as f64 / secs,
        tally.events.load(Ordering::Relaxed) as f64 / secs,
        ms(pct(0.50)),
        ms(pct(0.95)),
        ms(pct(0.99)),
        *statuses,
    );
}
