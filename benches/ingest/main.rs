//! Ingestion benchmark: `cargo bench --bench ingest`.
//!
//! One run measures, against a scratch database created on the local PostgreSQL and dropped at the end:
//!
//! - **(a) raw COPY ceiling**: `COPY events ... FROM STDIN BINARY` of synthetic rows, 1,000 rows per
//!   transaction on one connection, straight into the same partitioned `events` table (same schema
//!   and indexes) the server writes to. No idempotency claim and no rollups: this is the database's
//!   ceiling for one stream, the yardstick the (b)/(a) ratio uses. The same COPY over two
//!   connections at once (as many as the server's default writers) is printed for information.
//! - **(b) batch ingestion over HTTP**: `POST /api/events/track/batch` with 100 and with 1,000 events
//!   per request, 16 concurrent connections.
//! - **(c) single-event ingestion over HTTP**: `POST /api/events/track` at 10 and 100 connections.
//!
//! The HTTP phases run the real `strata serve` binary as a subprocess (built by cargo for benches),
//! each connection being one task that sends its next request as soon as the previous one answered.
//! After a warm-up, requests completing within the measured window give events/s, requests/s and
//! latency percentiles (from sorting every latency; no histogram). Only 201 answers count as
//! accepted; every other status is an error counted by status. The server's resident memory is
//! sampled from `/proc/<pid>/status` every 100 ms; its peak (and `VmHWM`) is reported. Finally the
//! database is checked: raw rows must equal the events acknowledged over HTTP, and the hourly
//! rollup must sum to the raw count; a mismatch is printed as "MISMATCH" and fails the run.
//!
//! The load generator, the server and PostgreSQL share the same machine and cores, so the figures
//! are lower bounds of what the server alone could do; the header says so. Each phase also prints
//! the cores used by the load generator, the server and the rest (PostgreSQL and any other process,
//! from `/proc`), and the header warns when the machine was busy before the run: other work on the
//! machine (a concurrent build) easily moves these figures by 30% or more.
//!
//! Settings (environment):
//! - `STRATA_BENCH_DATABASE_URL`: server to create the scratch database on (trust auth), default
//!   `postgres://postgres@127.0.0.1:5432/postgres`.
//! - `STRATA_BENCH_EVENTS`: rows of the COPY phase (default 200,000).
//! - `STRATA_BENCH_SECONDS`: measured seconds per HTTP phase (default 10).
//! - `STRATA_BENCH_WARMUP_SECONDS`: warm-up per HTTP phase, not measured (default 2).
//! - Server settings (`STRATA_WRITERS`, `STRATA_DB_POOL_SIZE`, ...) are inherited by the server.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::pin;
use std::process::{ExitCode, ExitStatus};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, Datelike, TimeZone, Utc};
use rand::Rng;
use strata::ingest::ua::{UaInfo, UaParser};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

#[path = "../common/mod.rs"]
mod common;
mod copy;
mod cpu;
mod load;
mod report;

use common::*;
use copy::*;
use cpu::*;
use load::*;
use report::*;

/// Rows per COPY transaction in phase (a).
const COPY_BATCH_ROWS: usize = 1_000;
/// The user agent every HTTP request sends, and every COPY row stores (parsed the server's way).
const USER_AGENT: &str =
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";
/// Page paths drawn uniformly.
const PATHS: [&str; 8] =
    ["/", "/pricing", "/docs", "/blog/launch", "/cart", "/checkout", "/account", "/search?q=shoes"];
/// Plans stored in metadata.
const PLANS: [&str; 3] = ["free", "pro", "enterprise"];
/// Distinct end users.
const USERS: u32 = 50_000;

/// The HTTP phases, in the order they run.
const PHASES: [PhaseSpec; 4] = [
    PhaseSpec { name: "batch 100/req", shape: Shape::Batch(100), connections: 16 },
    PhaseSpec { name: "batch 1000/req", shape: Shape::Batch(1_000), connections: 16 },
    PhaseSpec { name: "single", shape: Shape::Single, connections: 10 },
    PhaseSpec { name: "single", shape: Shape::Single, connections: 100 },
];

/// Issue 2's targets.
const TARGET_BATCH_EVENTS_PER_S: f64 = 50_000.0;
const TARGET_BATCH_COPY_RATIO: f64 = 0.5;
const TARGET_SINGLE_EVENTS_PER_S: f64 = 10_000.0;
const TARGET_SINGLE_P99: Duration = Duration::from_millis(50);
const TARGET_RSS_KB: u64 = 300 * 1024;

fn main() -> ExitCode {
    run_bench(bench())
}

/// Creates the scratch database, runs every phase in a task (so a panic still reaches the cleanup)
/// and drops the database whatever happened.
async fn bench() -> Result<()> {
    let settings = Settings::from_env()?;
    print_header(&settings, idle_check().await);
    let admin_url = settings.admin_url.clone();
    if !ScratchDb::run_in(&admin_url, |url| run(settings, url)).await? {
        bail!("MISMATCH between acknowledged events, raw rows and rollups (see above)");
    }
    Ok(())
}

/// Every phase in order; returns whether the database matched what was acknowledged.
async fn run(settings: Settings, url: String) -> Result<bool> {
    strata::db::migrate(&url, 3, Duration::from_secs(5)).await.context("migrating the scratch database")?;
    let db = strata::db::connect(&url).await.context("connecting to the scratch database")?;
    let app = strata::accounts::create_app(&db, "bench", None).await?;
    let key = strata::accounts::create_key(&db, KEY_SECRET.as_bytes(), app.id, "bench", None).await?;
    let fixture = Fixture::new(app.id).await?;

    let copy = copy_phases(&db, &url, &fixture, settings.copy_rows).await?;

    let mut server = Server::spawn(&url, |cmd| {
        cmd.env("STRATA_LOG", "info");
    })
    .await?;
    println!("server pid {} listening on {}\n", server.pid, server.addr);
    let rss = RssSampler::start(server.pid);
    let target = Target { url: format!("http://{}", server.addr), api_key: key.api_key, pid: server.pid };
    let mut results = Vec::new();
    for spec in PHASES {
        checkpoint(&db).await;
        let result = run_phase(spec, &target, &settings, &rss).await?;
        print_phase(&result, &copy);
        results.push(result);
    }
    let peak_rss_kb = rss.finish(server.pid);
    let shutdown = server.stop().await?;
    let check = verify(&db, results.iter().map(|r| r.acked_events).sum()).await?;
    print_summary(&copy, &results, peak_rss_kb, &check);
    print_server_notes(&server, shutdown);
    Ok(check.consistent())
}

// ---------------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------------

/// What the environment configures.
#[derive(Clone, Debug)]
struct Settings {
    /// Server URL on which the scratch database is created.
    admin_url: String,
    /// Rows of the COPY phase.
    copy_rows: usize,
    /// Measured window of each HTTP phase.
    seconds: Duration,
    /// Unmeasured warm-up before each window.
    warmup: Duration,
}

impl Settings {
    fn from_env() -> Result<Settings> {
        let admin_url = std::env::var("STRATA_BENCH_DATABASE_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.into());
        let copy_rows = env_number("STRATA_BENCH_EVENTS", 200_000.0)? as usize;
        let seconds = Duration::from_secs_f64(env_number("STRATA_BENCH_SECONDS", 10.0)?);
        let warmup = Duration::from_secs_f64(env_number("STRATA_BENCH_WARMUP_SECONDS", 2.0)?);
        if copy_rows == 0 || seconds.is_zero() {
            bail!("STRATA_BENCH_EVENTS and STRATA_BENCH_SECONDS must be positive");
        }
        Ok(Settings { admin_url, copy_rows, seconds, warmup })
    }
}
