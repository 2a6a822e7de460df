//! Ingestion benchmark: `cargo bench --bench ingest`.
//!
//! One run measures, against a scratch database created on the local PostgreSQL and dropped at the end:
//!
//! - **(a) raw COPY ceiling**: `COPY events ... FROM STDIN BINARY` of synthetic rows, 1,000 rows per
//!   transaction on one connection, straight into the same partitioned `events` table (same schema
//!   and indexes) the server writes to. No idempotency claim and no rollups: this is the database's
//!   ceiling for one stream, the yardstick the issue's (b)/(a) ratio uses. The same COPY over two
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

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::pin;
use std::process::{Child, ChildStderr, Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, Datelike, TimeZone, Utc};
use rand::Rng;
use serde_json::Value;
use strata::ingest::ua::{UaInfo, UaParser};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

/// Default server on which the scratch database is created.
/// HMAC secret of API keys, shared by the key created here and the server.
/// Rows per COPY transaction in phase (a).
mod common;
use common::*;

const COPY_BATCH_ROWS: usize = 1_000;
/// The user agent every HTTP request sends, and every COPY row stores (parsed the server's way).
const USER_AGENT: &str =
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";
/// Event types drawn uniformly.
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
    let scratch = ScratchDb::create(&settings.admin_url).await?;
    let outcome = tokio::spawn(run(settings, scratch.url.clone())).await;
    scratch.drop_best_effort().await;
    let consistent = outcome.map_err(|e| anyhow!("benchmark task failed: {e}"))??;
    if !consistent {
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

    let mut server = Server::start(&url).await?;
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
// Settings and scratch database
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

/// A database created for this run only.
struct ScratchDb {
    admin_url: String,
    name: String,
    url: String,
}

impl ScratchDb {
    async fn create(admin_url: &str) -> Result<ScratchDb> {
        let name = format!("strata_bench_{}", Uuid::new_v4().simple());
        let admin = strata::db::connect(admin_url)
            .await
            .with_context(|| format!("connecting to {admin_url} (set STRATA_BENCH_DATABASE_URL)"))?;
        admin.batch_execute(&format!("CREATE DATABASE \"{name}\"")).await.context("creating the scratch database")?;
        let url = with_database(admin_url, &name)?;
        println!("scratch database: {name}");
        Ok(ScratchDb { admin_url: admin_url.to_string(), name, url })
    }

    /// Drops the database, forcing out any connection left; failures are only reported.
    async fn drop_best_effort(&self) {
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        let result = match strata::db::connect(&self.admin_url).await {
            Ok(admin) => admin.batch_execute(&sql).await.map_err(anyhow::Error::from),
            Err(e) => Err(e.into()),
        };
        match result {
            Ok(()) => println!("scratch database {} dropped", self.name),
            Err(e) => eprintln!("warning: could not drop scratch database {}: {e:#}", self.name),
        }
    }
}

/// Phase (a): the reference one-stream COPY, then two streams (as many as the server's default
/// writers) for information; each starts from empty tables and leaves them empty.
async fn copy_phases(db: &tokio_postgres::Client, url: &str, fx: &Fixture, rows: usize) -> Result<Copies> {
    let mut results = Vec::new();
    for streams in [1, 2] {
        checkpoint(db).await;
        let result = copy_ceiling(url, fx, rows, streams).await?;
        print_copy(&result);
        reset_tables(db).await?;
        results.push(result);
    }
    let two = results.pop().expect("two results");
    let one = results.pop().expect("two results");
    Ok(Copies { one, two })
}

/// Empties the tables the COPY phase filled, so the HTTP phases start from the same empty state.
async fn reset_tables(db: &tokio_postgres::Client) -> Result<()> {
    const SQL: &str = "TRUNCATE events, event_ids, rollup_hourly, rollup_hourly_dims";
    db.batch_execute(SQL).await.context("truncating after the COPY phase")?;
    Ok(())
}

/// Starts every phase without a pending checkpoint's writes (best effort: needs superuser).
async fn checkpoint(db: &tokio_postgres::Client) {
    let _ = db.batch_execute("CHECKPOINT").await;
}

// ---------------------------------------------------------------------------------------------------
// Synthetic events
// ---------------------------------------------------------------------------------------------------

/// What every generated event shares: the app, the parsed user agent, the client address.
#[derive(Clone)]
struct Fixture {
    app_id: Uuid,
    ua: Arc<UaInfo>,
    ip: IpAddr,
    month_start: DateTime<Utc>,
}

impl Fixture {
    async fn new(app_id: Uuid) -> Result<Fixture> {
        let parsed = tokio::task::spawn_blocking(|| UaParser::new().parse(USER_AGENT)).await?;
        let ua = parsed.ok_or_else(|| anyhow!("the bench user agent does not parse"))?;
        let now = Utc::now();
        let month_start = Utc.with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0).single().expect("valid date");
        Ok(Fixture { app_id, ua, ip: IpAddr::V4(Ipv4Addr::LOCALHOST), month_start })
    }
}

/// One event's varying content, the same for COPY rows and HTTP bodies.
struct Synthetic {
    event_id: Uuid,
    event_type: &'static str,
    user: u32,
    session: u32,
    path: &'static str,
    plan: &'static str,
    value: u32,
}

impl Synthetic {
    fn random(rng: &mut impl Rng) -> Synthetic {
        Synthetic {
            event_id: Uuid::now_v7(),
            event_type: EVENT_TYPES[rng.random_range(0..EVENT_TYPES.len())],
            user: rng.random_range(0..USERS),
            session: rng.random_range(0..4),
            path: PATHS[rng.random_range(0..PATHS.len())],
            plan: PLANS[rng.random_range(0..PLANS.len())],
            value: rng.random_range(0..10_000),
        }
    }

    fn user_id(&self) -> String {
        format!("user-{}", self.user)
    }

    fn session_id(&self) -> String {
        format!("sess-{}-{}", self.user, self.session)
    }

    fn url(&self) -> String {
        format!("https://shop.example{}", self.path)
    }

    /// The metadata object as JSON text.
    fn metadata(&self) -> String {
        format!(r#"{{"plan":"{}","value":{},"ab":"variant-b"}}"#, self.plan, self.value)
    }

    /// Appends the event as the JSON an SDK sends (camelCase, always with an eventId).
    fn write_json(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = write!(
            out,
            r#"{{"eventId":"{}","eventType":"{}","userId":"{}","sessionId":"{}","url":"{}","metadata":{}}}"#,
            self.event_id,
            self.event_type,
            self.user_id(),
            self.session_id(),
            self.url(),
            self.metadata()
        );
    }
}

/// One row of the COPY phase, in the columns' order.
struct CopyRow {
    event_id: Uuid,
    event_type: &'static str,
    user_id: String,
    session_id: String,
    url: String,
    /// JSON text, written as jsonb without re-encoding (as the server does).
    metadata: String,
    created_at: DateTime<Utc>,
    received_at: DateTime<Utc>,
}

impl CopyRow {
    /// A row like the server writes: event time just before receipt (time-ordered, as live traffic).
    fn random(fx: &Fixture, rng: &mut impl Rng) -> CopyRow {
        let s = Synthetic::random(rng);
        let received_at = Utc::now();
        let created_at = (received_at - chrono::Duration::milliseconds(rng.random_range(0..1_000))).max(fx.month_start);
        CopyRow {
            event_id: s.event_id,
            event_type: s.event_type,
            user_id: s.user_id(),
            session_id: s.session_id(),
            url: s.url(),
            metadata: s.metadata(),
            created_at,
            received_at,
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// (a) COPY ceiling
// ---------------------------------------------------------------------------------------------------

// The same statement and column types the server's writer uses.
use strata::ingest::store::{COPY_EVENTS as COPY_SQL, COPY_TYPES};

/// Outcome of phase (a).
struct CopyResult {
    rows: usize,
    /// Concurrent connections.
    streams: usize,
    /// Wall time of the COPYs (row generation excluded).
    elapsed: Duration,
    /// CPU use over `elapsed`.
    cpu: CpuUse,
}

/// Both COPY measurements; `one` is the ceiling the issue's ratio refers to.
struct Copies {
    one: CopyResult,
    two: CopyResult,
}

impl CopyResult {
    fn rows_per_s(&self) -> f64 {
        self.rows as f64 / self.elapsed.as_secs_f64()
    }
}

/// COPYs `rows` rows over `streams` connections at once, in transactions of [`COPY_BATCH_ROWS`].
/// The rows are generated before the clock starts, so only the database work is timed.
async fn copy_ceiling(url: &str, fx: &Fixture, rows: usize, streams: usize) -> Result<CopyResult> {
    let mut lanes: Vec<Vec<Vec<CopyRow>>> = (0..streams).map(|_| Vec::new()).collect();
    {
        let mut rng = rand::rng();
        for (i, start) in (0..rows).step_by(COPY_BATCH_ROWS).enumerate() {
            let n = COPY_BATCH_ROWS.min(rows - start);
            lanes[i % streams].push((0..n).map(|_| CopyRow::random(fx, &mut rng)).collect());
        }
    }
    let mut clients = Vec::with_capacity(streams);
    for _ in 0..streams {
        clients.push(strata::db::connect(url).await?);
    }
    let (started, before) = (Instant::now(), CpuSnapshot::take(None));
    let tasks: Vec<_> = clients
        .into_iter()
        .zip(lanes)
        .map(|(mut client, lane)| {
            let fx = fx.clone();
            tokio::spawn(async move {
                for batch in &lane {
                    copy_batch(&mut client, &fx, batch).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await?.context("COPY phase")?;
    }
    let elapsed = started.elapsed();
    let cpu = CpuUse::between(&before, &CpuSnapshot::take(None), elapsed);
    Ok(CopyResult { rows, streams, elapsed, cpu })
}

/// One transaction: binary COPY of `rows`, commit.
async fn copy_batch(client: &mut tokio_postgres::Client, fx: &Fixture, rows: &[CopyRow]) -> Result<()> {
    let tx = client.transaction().await?;
    let sink = tx.copy_in(COPY_SQL).await?;
    let mut writer = pin!(BinaryCopyInWriter::new(sink, &COPY_TYPES));
    let (no_text, no_int): (Option<&str>, Option<i32>) = (None, None);
    let ua = &*fx.ua;
    let (browser, os) = (ua.browser.as_deref(), ua.os.as_deref());
    for r in rows {
        let values: [&(dyn ToSql + Sync); 17] = [
            &r.event_id,
            &fx.app_id,
            &r.event_type,
            &r.user_id,
            &r.session_id,
            &r.url,
            &no_text,
            &fx.ip,
            &ua.user_agent,
            &browser,
            &os,
            &ua.device,
            &no_int,
            &no_int,
            &JsonbText(&r.metadata),
            &r.created_at,
            &r.received_at,
        ];
        writer.as_mut().write(&values).await?;
    }
    writer.finish().await?;
    tx.commit().await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// The server subprocess
// ---------------------------------------------------------------------------------------------------

/// What the stderr drainer kept of the server's log.
#[derive(Default)]
struct LogTail {
    /// WARN and ERROR lines, and lines that are not JSON (e.g. panics).
    notable: u64,
    /// The first notable lines.
    samples: Vec<String>,
    /// The last lines, for failures at start-up.
    last: VecDeque<String>,
}

/// The `strata serve` child process.
struct Server {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    logs: Arc<Mutex<LogTail>>,
    stopped: bool,
}

impl Server {
    /// Spawns the server on a free port and waits for its "listening" log line.
    async fn start(db_url: &str) -> Result<Server> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
            .arg("serve")
            .env("DATABASE_URL", db_url)
            .env("STRATA_LISTEN", "127.0.0.1:0")
            .env("STRATA_LOG_FORMAT", "json")
            .env("STRATA_LOG", "info")
            .env("STRATA_KEY_SECRET", KEY_SECRET)
            .env("STRATA_ADMIN_TOKEN", "bench-admin")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the strata server")?;
        let pid = child.id();
        let stderr = child.stderr.take().expect("stderr is piped");
        let logs = Arc::new(Mutex::new(LogTail::default()));
        let (addr_tx, addr_rx) = mpsc::channel();
        let drain_logs = logs.clone();
        std::thread::spawn(move || drain_stderr(stderr, &drain_logs, addr_tx));
        let mut server = Server { child, pid, addr: SocketAddr::from(([127, 0, 0, 1], 0)), logs, stopped: false };
        server.addr = server.wait_for_addr(addr_rx).await?;
        Ok(server)
    }

    /// The address from the log, or an error with the log's tail if the server exits or stalls.
    async fn wait_for_addr(&mut self, rx: mpsc::Receiver<SocketAddr>) -> Result<SocketAddr> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(addr) = rx.try_recv() {
                return Ok(addr);
            }
            if let Some(status) = self.child.try_wait()? {
                self.stopped = true;
                bail!("the server exited at start-up ({status}); its log ends with:\n{}", self.log_tail());
            }
            if Instant::now() > deadline {
                bail!("the server did not log its address within 60 s; its log ends with:\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_tail(&self) -> String {
        let logs = self.logs.lock().expect("log lock");
        logs.last.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// SIGTERM, then waits for the graceful drain (up to 60 s, then SIGKILL).
    async fn stop(&mut self) -> Result<(ExitStatus, Duration)> {
        let started = Instant::now();
        Command::new("kill").args(["-TERM", &self.pid.to_string()]).status().context("running kill -TERM")?;
        while started.elapsed() < Duration::from_secs(60) {
            if let Some(status) = self.child.try_wait()? {
                self.stopped = true;
                return Ok((status, started.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.child.kill()?;
        self.stopped = true;
        bail!("the server did not exit within 60 s of SIGTERM; killed")
    }
}

impl Drop for Server {
    /// On error paths: never leave a server (and its connections to the scratch database) behind.
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Reads the server's stderr to its end: sends the listening address once, keeps notable lines.
fn drain_stderr(stderr: ChildStderr, logs: &Mutex<LogTail>, addr_tx: mpsc::Sender<SocketAddr>) {
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        let parsed: Option<Value> = serde_json::from_str(&line).ok();
        let addr = parsed.as_ref().and_then(|v| v.pointer("/fields/addr")).and_then(Value::as_str);
        if let Some(addr) = addr.and_then(|a| a.parse::<SocketAddr>().ok()) {
            let _ = addr_tx.send(addr);
        }
        let level = parsed.as_ref().and_then(|v| v.get("level")).and_then(Value::as_str);
        let notable = parsed.is_none() || matches!(level, Some("WARN" | "ERROR"));
        let mut logs = logs.lock().expect("log lock");
        if notable {
            logs.notable += 1;
            if logs.samples.len() < 10 {
                logs.samples.push(line.clone());
            }
        }
        if logs.last.len() == 30 {
            logs.last.pop_front();
        }
        logs.last.push_back(line);
    }
}

// ---------------------------------------------------------------------------------------------------
// Server memory
// ---------------------------------------------------------------------------------------------------

/// Samples the server's VmRSS every 100 ms: overall peak and the peak of the current phase.
struct RssSampler {
    peak_kb: Arc<AtomicU64>,
    phase_peak_kb: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let peak_kb = Arc::new(AtomicU64::new(0));
        let phase_peak_kb = Arc::new(AtomicU64::new(0));
        let (peak, phase) = (peak_kb.clone(), phase_peak_kb.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                let Some(kb) = proc_status_kb(pid, "VmRSS:") else { break };
                peak.fetch_max(kb, Ordering::Relaxed);
                phase.fetch_max(kb, Ordering::Relaxed);
            }
        });
        RssSampler { peak_kb, phase_peak_kb, task }
    }

    /// Starts a new phase's peak.
    fn reset_phase(&self) {
        self.phase_peak_kb.store(0, Ordering::Relaxed);
    }

    fn phase_peak_kb(&self) -> u64 {
        self.phase_peak_kb.load(Ordering::Relaxed)
    }

    /// Stops sampling; the peak is the larger of the samples and the kernel's high-water mark.
    fn finish(self, pid: u32) -> u64 {
        self.task.abort();
        let hwm = proc_status_kb(pid, "VmHWM:").unwrap_or(0);
        hwm.max(self.peak_kb.load(Ordering::Relaxed))
    }
}

/// A `kB` field of `/proc/<pid>/status`; `None` once the process is gone.
fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].split_whitespace().next()?.parse().ok()
}

// ---------------------------------------------------------------------------------------------------
// (b), (c) HTTP load
// ---------------------------------------------------------------------------------------------------

/// How many events a request carries.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// `POST /api/events/track/batch` with this many events.
    Batch(usize),
    /// `POST /api/events/track`.
    Single,
}

impl Shape {
    fn path(self) -> &'static str {
        match self {
            Shape::Batch(_) => "/api/events/track/batch",
            Shape::Single => "/api/events/track",
        }
    }

    fn events(self) -> u64 {
        match self {
            Shape::Batch(n) => n as u64,
            Shape::Single => 1,
        }
    }

    /// A fresh request body: new eventIds every time.
    fn body(self) -> String {
        let mut rng = rand::rng();
        match self {
            Shape::Single => {
                let mut out = String::with_capacity(256);
                Synthetic::random(&mut rng).write_json(&mut out);
                out
            }
            Shape::Batch(n) => {
                let mut out = String::with_capacity(16 + n * 260);
                out.push_str(r#"{"events":["#);
                for i in 0..n {
                    if i > 0 {
                        out.push(',');
                    }
                    Synthetic::random(&mut rng).write_json(&mut out);
                }
                out.push_str("]}");
                out
            }
        }
    }
}

/// One HTTP phase.
#[derive(Clone, Copy, Debug)]
struct PhaseSpec {
    name: &'static str,
    shape: Shape,
    connections: usize,
}

/// Where the load goes.
struct Target {
    url: String,
    api_key: String,
    /// The server's pid, for its CPU time.
    pid: u32,
}

/// What one connection's task saw.
#[derive(Default)]
struct WorkerStats {
    /// Latencies (µs) of 201 answers completed inside the window.
    latencies_us: Vec<u32>,
    /// Events of 201 answers completed inside the window.
    window_events: u64,
    /// Events of every 201 answer, warm-up and tail included (for the database check).
    acked_events: u64,
    /// Non-201 outcomes by status (or transport error kind), warm-up included.
    errors: BTreeMap<String, u64>,
}

/// The figures of one phase.
struct PhaseResult {
    spec: PhaseSpec,
    window: Duration,
    events_per_s: f64,
    requests_per_s: f64,
    p50: Duration,
    p95: Duration,
    p99: Duration,
    errors: BTreeMap<String, u64>,
    acked_events: u64,
    peak_rss_kb: u64,
    /// CPU use during the measured window.
    cpu: CpuUse,
}

/// Runs `spec.connections` request loops for warm-up + window and merges their figures.
async fn run_phase(spec: PhaseSpec, target: &Target, settings: &Settings, rss: &RssSampler) -> Result<PhaseResult> {
    let client = reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .pool_max_idle_per_host(spec.connections * 2)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(60))
        .build()?;
    rss.reset_phase();
    let window_start = Instant::now() + settings.warmup;
    let window = Window { start: window_start, end: window_start + settings.seconds };
    let url = format!("{}{}", target.url, spec.shape.path());
    let workers: Vec<_> = (0..spec.connections)
        .map(|_| tokio::spawn(worker(client.clone(), url.clone(), target.api_key.clone(), spec.shape, window)))
        .collect();
    let cpu = measure_cpu(window, Some(target.pid)).await;
    let mut merged = WorkerStats::default();
    for w in workers {
        let stats = w.await.context("load task")?;
        merged.latencies_us.extend(stats.latencies_us);
        merged.window_events += stats.window_events;
        merged.acked_events += stats.acked_events;
        for (k, v) in stats.errors {
            *merged.errors.entry(k).or_default() += v;
        }
    }
    let mut result = summarise(spec, settings.seconds, merged, rss.phase_peak_kb());
    result.cpu = cpu;
    Ok(result)
}

/// Turns merged worker figures into rates and percentiles.
fn summarise(spec: PhaseSpec, window: Duration, mut stats: WorkerStats, peak_rss_kb: u64) -> PhaseResult {
    stats.latencies_us.sort_unstable();
    let secs = window.as_secs_f64();
    PhaseResult {
        spec,
        window,
        events_per_s: stats.window_events as f64 / secs,
        requests_per_s: stats.latencies_us.len() as f64 / secs,
        p50: percentile(&stats.latencies_us, 0.50),
        p95: percentile(&stats.latencies_us, 0.95),
        p99: percentile(&stats.latencies_us, 0.99),
        errors: stats.errors,
        acked_events: stats.acked_events,
        peak_rss_kb,
        cpu: CpuUse::default(),
    }
}

/// Nearest-rank percentile of sorted microseconds.
fn percentile(sorted_us: &[u32], p: f64) -> Duration {
    if sorted_us.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
    Duration::from_micros(u64::from(sorted_us[rank - 1]))
}

/// The measured interval; requests completing inside it count.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

/// One connection: send, wait for the answer, record, repeat until the window closes.
async fn worker(client: reqwest::Client, url: String, key: String, shape: Shape, window: Window) -> WorkerStats {
    let mut stats = WorkerStats::default();
    while Instant::now() < window.end {
        let body = shape.body();
        let sent = Instant::now();
        let outcome = send(&client, &url, &key, body).await;
        let done = Instant::now();
        let status = match outcome {
            Ok(201) => {
                stats.acked_events += shape.events();
                if done >= window.start && done <= window.end {
                    stats.window_events += shape.events();
                    stats.latencies_us.push((done - sent).as_micros().min(u128::from(u32::MAX)) as u32);
                }
                continue;
            }
            Ok(status) => status.to_string(),
            Err(kind) => kind,
        };
        *stats.errors.entry(status).or_default() += 1;
        // Do not spin on a failing server (queue full, refused connections).
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stats
}

/// One request, body read to the end (so the connection is reused); the status or an error kind.
async fn send(client: &reqwest::Client, url: &str, key: &str, body: String) -> Result<u16, String> {
    let response = client
        .post(url)
        .header("X-API-Key", key)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| transport_error_kind(&e))?;
    let status = response.status().as_u16();
    response.bytes().await.map_err(|e| transport_error_kind(&e))?;
    Ok(status)
}

fn transport_error_kind(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "client timeout".into()
    } else if e.is_connect() {
        "connect error".into()
    } else {
        "transport error".into()
    }
}

// ---------------------------------------------------------------------------------------------------
// CPU accounting (the load generator, the server and PostgreSQL share the cores)
// ---------------------------------------------------------------------------------------------------

/// Clock ticks per second of `/proc` CPU times (USER_HZ, 100 on Linux).
const TICKS_PER_S: f64 = 100.0;

/// CPU time counters (ticks) at one instant.
#[derive(Clone, Copy, Default)]
struct CpuSnapshot {
    /// All cores: busy (user, nice, system, irq, softirq, steal) and busy + idle + iowait.
    machine_busy: u64,
    machine_total: u64,
    /// This process: the load generator (and, in phase (a), the COPY client).
    load_gen: u64,
    /// The server process, when running.
    server: u64,
}

impl CpuSnapshot {
    fn take(server: Option<u32>) -> CpuSnapshot {
        let (machine_busy, machine_total) = machine_ticks().unwrap_or((0, 0));
        let load_gen = process_ticks("self").unwrap_or(0);
        let server = server.and_then(|pid| process_ticks(&pid.to_string())).unwrap_or(0);
        CpuSnapshot { machine_busy, machine_total, load_gen, server }
    }
}

/// Busy and total ticks of all cores, from the first line of `/proc/stat`.
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    let get = |i: usize| fields.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
    Some((busy, busy + get(3) + get(4)))
}

/// utime + stime of a process (`self` or a pid), from `/proc/<pid>/stat`.
fn process_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is the first, utime the 12th.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// CPU use over an interval, in cores (1.0 = one core fully busy).
#[derive(Clone, Copy, Default)]
struct CpuUse {
    /// Share of all cores that was busy.
    machine_busy: f64,
    load_gen: f64,
    server: f64,
    /// Everything else: PostgreSQL, and any other process on the machine.
    rest: f64,
}

impl CpuUse {
    fn between(before: &CpuSnapshot, after: &CpuSnapshot, wall: Duration) -> CpuUse {
        let secs = wall.as_secs_f64().max(1e-3);
        let cores = |a: u64, b: u64| b.saturating_sub(a) as f64 / TICKS_PER_S / secs;
        let total = after.machine_total.saturating_sub(before.machine_total).max(1) as f64;
        let machine = cores(before.machine_busy, after.machine_busy);
        let load_gen = cores(before.load_gen, after.load_gen);
        let server = cores(before.server, after.server);
        CpuUse {
            machine_busy: after.machine_busy.saturating_sub(before.machine_busy) as f64 / total,
            load_gen,
            server,
            rest: (machine - load_gen - server).max(0.0),
        }
    }

    /// `gen/srv/rest` in cores, e.g. `0.61/0.72/0.55`.
    fn compact(&self) -> String {
        format!("{:.2}/{:.2}/{:.2}", self.load_gen, self.server, self.rest)
    }

    fn describe(&self) -> String {
        format!(
            "cpu: machine {:.0}% busy; cores used by load generator {:.2}, server {:.2}, PostgreSQL + rest {:.2}",
            self.machine_busy * 100.0,
            self.load_gen,
            self.server,
            self.rest
        )
    }
}

/// CPU use during `window` (waits until it has passed).
async fn measure_cpu(window: Window, server: Option<u32>) -> CpuUse {
    tokio::time::sleep_until(window.start.into()).await;
    let before = CpuSnapshot::take(server);
    tokio::time::sleep_until(window.end.into()).await;
    let after = CpuSnapshot::take(server);
    CpuUse::between(&before, &after, window.end - window.start)
}

/// CPU use of the machine during one second, to warn when it is not idle before the run.
async fn idle_check() -> CpuUse {
    let before = CpuSnapshot::take(None);
    tokio::time::sleep(Duration::from_secs(1)).await;
    CpuUse::between(&before, &CpuSnapshot::take(None), Duration::from_secs(1))
}

// ---------------------------------------------------------------------------------------------------
// Consistency check
// ---------------------------------------------------------------------------------------------------

/// The database against what the HTTP phases were told.
struct Check {
    acked: u64,
    raw_rows: i64,
    rollup_sum: i64,
    claimed_ids: i64,
}

impl Check {
    fn consistent(&self) -> bool {
        self.raw_rows == self.acked as i64 && self.rollup_sum == self.raw_rows
    }
}

async fn verify(db: &tokio_postgres::Client, acked: u64) -> Result<Check> {
    let raw_rows: i64 = db.query_one("SELECT count(*) FROM events", &[]).await?.get(0);
    let rollup_sum: i64 = db.query_one("SELECT COALESCE(sum(events), 0)::int8 FROM rollup_hourly", &[]).await?.get(0);
    let claimed_ids: i64 = db.query_one("SELECT count(*) FROM event_ids", &[]).await?.get(0);
    Ok(Check { acked, raw_rows, rollup_sum, claimed_ids })
}

// ---------------------------------------------------------------------------------------------------
// Reporting
// ---------------------------------------------------------------------------------------------------

fn print_header(settings: &Settings, busy_before: CpuUse) {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!("=== Strata ingestion benchmark ===");
    println!("machine: {cores} cores. The load generator (this process, tokio multi-thread), the strata server");
    println!("and PostgreSQL all run on this same machine and share its cores: HTTP figures are lower bounds.");
    println!(
        "COPY rows: {}; HTTP phases: {:.1} s measured after {:.1} s warm-up each; HTTP/1.1, keep-alive.",
        settings.copy_rows,
        settings.seconds.as_secs_f64(),
        settings.warmup.as_secs_f64()
    );
    let inherited: Vec<String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("STRATA_") && !k.starts_with("STRATA_BENCH_"))
        .filter(|(k, _)| !k.contains("SECRET") && !k.contains("TOKEN"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if !inherited.is_empty() {
        println!("server settings inherited from the environment: {}", inherited.join(" "));
    }
    // Rate limits would cap the figures: say which were in force (both are off unless set).
    let limit = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty()).unwrap_or_else(|| "off".into());
    println!(
        "ingestion rate limits per API key: requests {}, events {}",
        limit("STRATA_INGEST_RATE_LIMIT"),
        limit("STRATA_INGEST_EVENT_RATE_LIMIT")
    );
    let busy = busy_before.machine_busy * 100.0;
    if busy >= 15.0 {
        println!("WARNING: the machine was {busy:.0}% busy before the run: other processes compete for the cores;");
        println!("figures will be low and noisy (see the per-phase 'PostgreSQL + rest' CPU figure).");
    } else {
        println!("machine {busy:.0}% busy during the second before the run.");
    }
    println!();
}

fn print_copy(copy: &CopyResult) {
    println!(
        "(a) COPY BINARY, {COPY_BATCH_ROWS} rows/tx, {} connection(s): {} rows in {:.2} s = {} rows/s",
        copy.streams,
        copy.rows,
        copy.elapsed.as_secs_f64(),
        fmt_rate(copy.rows_per_s())
    );
    println!("    {}\n", copy.cpu.describe());
}

fn print_phase(r: &PhaseResult, copy: &Copies) {
    let ratio = match r.spec.shape {
        Shape::Batch(_) => format!(", (b)/(a) = {:.2}", r.events_per_s / copy.one.rows_per_s()),
        Shape::Single => String::new(),
    };
    println!(
        "{} ({} conns): {} events/s, {} req/s, p50 {} p95 {} p99 {}, errors: {}, peak RSS {}{ratio}",
        r.spec.name,
        r.spec.connections,
        fmt_rate(r.events_per_s),
        fmt_rate(r.requests_per_s),
        fmt_ms(r.p50),
        fmt_ms(r.p95),
        fmt_ms(r.p99),
        fmt_errors(&r.errors),
        fmt_mb(r.peak_rss_kb)
    );
    println!("    {}", r.cpu.describe());
}

/// The final table, then the consistency check, then the issue's targets.
fn print_summary(copy: &Copies, results: &[PhaseResult], peak_rss_kb: u64, check: &Check) {
    println!("\n=== Summary ===");
    let head = ["phase", "conns", "events/s", "req/s", "p50", "p95", "p99", "vs COPY", "peak RSS", "cpu gen/srv/rest"];
    print_row(&head.map(String::from), "errors");
    let reference = copy.one.rows_per_s();
    for c in [&copy.one, &copy.two] {
        let dash = || "-".to_string();
        let (rate, ratio) = (fmt_rate(c.rows_per_s()), format!("{:.2}", c.rows_per_s() / reference));
        let cells = [
            "(a) COPY".to_string(),
            c.streams.to_string(),
            rate,
            dash(),
            dash(),
            dash(),
            dash(),
            ratio,
            dash(),
            c.cpu.compact(),
        ];
        print_row(&cells, "-");
    }
    for r in results {
        let kind = if matches!(r.spec.shape, Shape::Batch(_)) { "(b)" } else { "(c)" };
        let row = [
            format!("{kind} {}", r.spec.name),
            r.spec.connections.to_string(),
            fmt_rate(r.events_per_s),
            fmt_rate(r.requests_per_s),
            fmt_ms(r.p50),
            fmt_ms(r.p95),
            fmt_ms(r.p99),
            format!("{:.2}", r.events_per_s / reference),
            fmt_mb(r.peak_rss_kb),
            r.cpu.compact(),
        ];
        print_row(&row, &fmt_errors(&r.errors));
    }
    let window = results.first().map_or(0.0, |r| r.window.as_secs_f64());
    println!("measured window per HTTP phase: {window:.1} s; 'vs COPY' = events/s / one-connection COPY rows/s;");
    println!("cpu in cores: load generator / server / PostgreSQL + anything else on the machine");
    print_check(check);
    print_targets(copy, results, peak_rss_kb);
}

/// One line of the summary table.
fn print_row(cells: &[String; 10], errors: &str) {
    let [phase, conns, events, reqs, p50, p95, p99, ratio, rss, cpu] = cells;
    print!("{phase:<20} {conns:>5} {events:>10} {reqs:>8} {p50:>9} {p95:>9} {p99:>9} ");
    println!("{ratio:>7} {rss:>8} {cpu:>16}  {errors}");
}

fn print_check(check: &Check) {
    println!("\n=== Database check ===");
    println!("events acknowledged (201) over HTTP: {}", check.acked);
    println!("count(*) FROM events:                {}", check.raw_rows);
    println!("sum(events) FROM rollup_hourly:      {}", check.rollup_sum);
    println!("count(*) FROM event_ids:             {}", check.claimed_ids);
    if check.raw_rows != check.acked as i64 {
        println!("!!!!! MISMATCH: raw rows ({}) != acknowledged events ({}) !!!!!", check.raw_rows, check.acked);
    }
    if check.rollup_sum != check.raw_rows {
        println!("!!!!! MISMATCH: rollup sum ({}) != raw rows ({}) !!!!!", check.rollup_sum, check.raw_rows);
    }
    if check.consistent() {
        println!("OK: raw rows = acknowledged events = rollup sum");
    }
}

/// Issue 2's targets next to the figures.
fn print_targets(copy: &Copies, results: &[PhaseResult], peak_rss_kb: u64) {
    println!("\n=== Targets (issue 2) ===");
    for r in results.iter().filter(|r| matches!(r.spec.shape, Shape::Batch(_))) {
        let ratio = r.events_per_s / copy.one.rows_per_s();
        let label = format!("{} >= 50,000 events/s", r.spec.name);
        target_line(&label, fmt_rate(r.events_per_s), Some(r.events_per_s >= TARGET_BATCH_EVENTS_PER_S));
        let label = format!("{} >= 0.5 x COPY (1 connection)", r.spec.name);
        target_line(&label, format!("{ratio:.3}"), Some(ratio >= TARGET_BATCH_COPY_RATIO));
        let label = format!("{} / COPY with 2 connections (= server writers)", r.spec.name);
        target_line(&label, format!("{:.3}", r.events_per_s / copy.two.rows_per_s()), None);
    }
    let single = results.iter().find(|r| matches!(r.spec.shape, Shape::Single) && r.spec.connections == 100);
    if let Some(r) = single {
        let ok = r.events_per_s >= TARGET_SINGLE_EVENTS_PER_S;
        target_line("single @100 conns >= 10,000 events/s", fmt_rate(r.events_per_s), Some(ok));
        target_line("single @100 conns p99 <= 50 ms", fmt_ms(r.p99), Some(r.p99 <= TARGET_SINGLE_P99));
    }
    let ok = peak_rss_kb <= TARGET_RSS_KB;
    target_line("server peak RSS <= 300 MB (sampled max, VmHWM)", fmt_mb(peak_rss_kb), Some(ok));
}

/// One target: what, the measured figure, met / NOT MET (or "info" when not a target).
fn target_line(label: &str, figure: String, met: Option<bool>) {
    let verdict = match met {
        Some(true) => "met",
        Some(false) => "NOT MET",
        None => "(information)",
    };
    println!("{label:<60} {figure:>10}  {verdict}");
}

fn print_server_notes(server: &Server, shutdown: (ExitStatus, Duration)) {
    println!("\nserver stopped by SIGTERM in {:.2} s ({})", shutdown.1.as_secs_f64(), shutdown.0);
    let logs = server.logs.lock().expect("log lock");
    if logs.notable > 0 {
        println!("server logged {} WARN/ERROR/non-JSON lines; first ones:", logs.notable);
        for line in &logs.samples {
            println!("  {line}");
        }
    }
}

fn fmt_ms(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1e3)
}

fn fmt_mb(kb: u64) -> String {
    format!("{:.0}MB", kb as f64 / 1024.0)
}

fn fmt_errors(errors: &BTreeMap<String, u64>) -> String {
    if errors.is_empty() {
        return "0".into();
    }
    errors.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ")
}
