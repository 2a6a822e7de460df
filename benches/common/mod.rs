//! The dataset, loading, scratch-database and server-process helpers shared by the query, cache and soak
//! benchmarks (each bench declares `mod common;` and `use common::*;`).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::pin;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::BytesMut;
use chrono::{DateTime, Utc};
use partition_jobs::Month;
use rand::Rng;
use serde_json::Value;
use strata::ingest::store::{COPY_EVENTS, COPY_TYPES};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use uuid::Uuid;

/// Where scratch databases are created unless `STRATA_BENCH_DATABASE_URL` says otherwise.
pub(crate) const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// The admin token and key secret of the benchmark servers.
pub(crate) const ADMIN_TOKEN: &str = "bench-admin";
pub(crate) const KEY_SECRET: &str = "bench-secret";
/// Share of the events per app when 10 apps are loaded, biggest first.
pub(crate) const APP_SHARES: [f64; 10] = [0.30, 0.20, 0.15, 0.10, 0.08, 0.06, 0.04, 0.03, 0.02, 0.02];
/// The loaded dataset's event types and user-agent facets.
pub(crate) const EVENT_TYPES: [&str; 20] = [
    "page_view",
    "click",
    "scroll",
    "form_submit",
    "signup",
    "login",
    "logout",
    "add_to_cart",
    "remove_from_cart",
    "checkout",
    "purchase",
    "search",
    "video_play",
    "video_pause",
    "share",
    "download",
    "error",
    "feature_used",
    "notification_open",
    "session_start",
];
pub(crate) const DEVICES: [&str; 3] = ["desktop", "mobile", "tablet"];
pub(crate) const BROWSERS: [&str; 4] = ["Chrome", "Firefox", "Safari", "Edge"];
pub(crate) const OSES: [&str; 4] = ["Windows", "macOS", "Linux", "iOS"];
pub(crate) const USER_AGENT: &str = "Mozilla/5.0 (bench)";
/// Rows per COPY statement (one transaction each).
pub(crate) const COPY_CHUNK: usize = 50_000;
/// Parallel COPY connections.
pub(crate) const COPY_STREAMS: usize = 2;

/// JSON text written as jsonb: a version byte, then the text.
#[derive(Debug)]
pub(crate) struct JsonbText<'a>(pub(crate) &'a str);

impl ToSql for JsonbText<'_> {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(&[1]);
        out.extend_from_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }

    to_sql_checked!();
}

/// The shape of the loaded data.
#[derive(Clone)]
pub(crate) struct LoadSpec {
    pub(crate) apps: Vec<Uuid>,
    pub(crate) shares: Vec<f64>,
    pub(crate) events: usize,
    pub(crate) users: u64,
    pub(crate) sessions: u64,
    pub(crate) from: DateTime<Utc>,
    pub(crate) now: DateTime<Utc>,
}

/// COPYs `spec.events` random rows, `COPY_STREAMS` connections in parallel, `COPY_CHUNK` rows per
/// transaction; returns the elapsed time.
pub(crate) async fn load_events(url: &str, spec: &LoadSpec) -> Result<Duration> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for stream in 0..COPY_STREAMS {
        let n = spec.events / COPY_STREAMS + usize::from(stream < spec.events % COPY_STREAMS);
        let mut client = strata::db::connect(url).await?;
        let spec = spec.clone();
        tasks.push(tokio::spawn(async move {
            let mut left = n;
            while left > 0 {
                let chunk = left.min(COPY_CHUNK);
                copy_chunk(&mut client, &spec, chunk).await?;
                left -= chunk;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await?.context("COPY")?;
    }
    Ok(started.elapsed())
}

pub(crate) async fn copy_chunk(client: &mut tokio_postgres::Client, spec: &LoadSpec, rows: usize) -> Result<()> {
    let tx = client.transaction().await?;
    let sink = tx.copy_in(COPY_EVENTS).await?;
    let mut writer = pin!(BinaryCopyInWriter::new(sink, &COPY_TYPES));
    let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let no_text: Option<&str> = None;
    let no_int: Option<i32> = None;
    let span_ms = (spec.now - spec.from).num_milliseconds().max(1);
    // Cumulative shares to pick the app.
    let mut cumulative = Vec::with_capacity(spec.shares.len());
    let mut acc = 0.0;
    for s in &spec.shares {
        acc += s;
        cumulative.push(acc);
    }
    for _ in 0..rows {
        let (app, event_type, user_id, session_id, device, browser, os, created_at, metadata) = {
            let mut rng = rand::rng();
            let x: f64 = rng.random_range(0.0..acc);
            let app_index = cumulative.iter().position(|c| x < *c).unwrap_or(spec.apps.len() - 1);
            let session = rng.random_range(0..spec.sessions);
            let user = session % spec.users;
            let created_at = spec.from + chrono::Duration::milliseconds(rng.random_range(0..span_ms));
            (
                spec.apps[app_index],
                EVENT_TYPES[rng.random_range(0..EVENT_TYPES.len())],
                format!("user-{user}"),
                format!("sess-{session}"),
                DEVICES[rng.random_range(0..DEVICES.len())],
                BROWSERS[rng.random_range(0..BROWSERS.len())],
                OSES[rng.random_range(0..OSES.len())],
                created_at,
                format!(r#"{{"value":{}}}"#, rng.random_range(0..10_000)),
            )
        };
        let event_id = Uuid::new_v4();
        let url = "https://shop.example/";
        let values: [&(dyn ToSql + Sync); 17] = [
            &event_id,
            &app,
            &event_type,
            &user_id,
            &session_id,
            &url,
            &no_text,
            &ip,
            &USER_AGENT,
            &browser,
            &os,
            &device,
            &no_int,
            &no_int,
            &JsonbText(&metadata),
            &created_at,
            &created_at,
        ];
        writer.as_mut().write(&values).await?;
    }
    writer.finish().await?;
    tx.commit().await?;
    Ok(())
}

/// Partitions, apps, COPY, rollups, ANALYZE. Returns the apps, biggest first.
pub(crate) async fn load(url: &str, n: usize, apps: usize, days: i64) -> Result<(Vec<Uuid>, DateTime<Utc>)> {
    strata::db::migrate(url, 3, Duration::from_secs(5)).await.context("migrating the scratch database")?;
    let mut client = strata::db::connect(url).await?;
    let now = Utc::now();
    let from = now - chrono::Duration::days(days);
    let t = Instant::now();
    partition_jobs::ensure_months(&client, Month::containing(from), Month::containing(now), Duration::from_secs(5))
        .await
        .context("creating the past months' partitions")?;
    let mut ids = Vec::new();
    for i in 0..apps {
        ids.push(strata::accounts::create_app(&client, &format!("bench-app-{i}"), None).await?.id);
    }
    println!("partitions and {apps} app(s) ready in {:.1} s", t.elapsed().as_secs_f64());
    let shares = if apps == APP_SHARES.len() { APP_SHARES.to_vec() } else { vec![1.0; apps] };
    let spec = LoadSpec {
        apps: ids.clone(),
        shares,
        events: n,
        users: ((n as f64 * 0.02) as u64).max(1),
        sessions: ((n as f64 * 0.10) as u64).max(1),
        from,
        now,
    };
    println!(
        "loading {} events ({} users, {} sessions, {} event types) over {days} days by binary COPY ...",
        fmt_int(n as u64),
        fmt_int(spec.users),
        fmt_int(spec.sessions),
        EVENT_TYPES.len()
    );
    let copy = load_events(url, &spec).await?;
    println!("  COPY: {:.1} s ({} rows/s)", copy.as_secs_f64(), fmt_int((n as f64 / copy.as_secs_f64()) as u64));
    let t = Instant::now();
    let report = strata::rollup::rebuild::rebuild(
        &mut client,
        None,
        Month::containing(from).start(),
        Month::containing(now).end(),
    )
    .await
    .context("rebuilding rollups")?;
    println!(
        "  rollups rebuild: {:.1} s ({} hourly rows, {} dim rows, {} months)",
        t.elapsed().as_secs_f64(),
        fmt_int(report.hourly_rows),
        fmt_int(report.dim_rows),
        report.months
    );
    let t = Instant::now();
    client.batch_execute("ANALYZE").await?;
    println!("  ANALYZE: {:.1} s\n", t.elapsed().as_secs_f64());
    Ok((ids, now))
}

// ---------------------------------------------------------------------------------------------------
// Scratch database and server (as benches/ingest.rs)
// ---------------------------------------------------------------------------------------------------

pub(crate) fn with_database(url: &str, name: &str) -> Result<String> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map(|i| i + 3).ok_or_else(|| anyhow!("{url:?} is not a URL"))?;
    let host_part = match base[authority_start..].find('/') {
        Some(i) => &base[..authority_start + i],
        None => base,
    };
    Ok(match query {
        Some(q) => format!("{host_part}/{name}?{q}"),
        None => format!("{host_part}/{name}"),
    })
}

pub(crate) struct ScratchDb {
    pub(crate) admin_url: String,
    pub(crate) name: String,
    pub(crate) url: String,
}

impl ScratchDb {
    pub(crate) async fn create(admin_url: &str) -> Result<ScratchDb> {
        let name = format!("strata_bench_{}", Uuid::new_v4().simple());
        let admin = strata::db::connect(admin_url)
            .await
            .with_context(|| format!("connecting to {admin_url} (set STRATA_BENCH_DATABASE_URL)"))?;
        admin.batch_execute(&format!("CREATE DATABASE \"{name}\"")).await.context("creating the scratch database")?;
        let url = with_database(admin_url, &name)?;
        println!("scratch database: {name}");
        Ok(ScratchDb { admin_url: admin_url.to_string(), name, url })
    }

    pub(crate) async fn drop_best_effort(&self) {
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

pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) pid: u32,
    pub(crate) addr: SocketAddr,
    pub(crate) last: Arc<Mutex<Vec<String>>>,
    pub(crate) stopped: bool,
}

impl Server {
    pub(crate) async fn start(db_url: &str, extra_env: &[(&str, &str)]) -> Result<Server> {
        // Another build (e.g. the previous commit's) can be measured the same way.
        let bin = std::env::var("STRATA_BENCH_SERVER_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_strata").into());
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .env("DATABASE_URL", db_url)
            .env("STRATA_LISTEN", "127.0.0.1:0")
            .env("STRATA_LOG_FORMAT", "json")
            .env("STRATA_LOG", "warn,strata=info")
            .env("STRATA_KEY_SECRET", KEY_SECRET)
            .env("STRATA_ADMIN_TOKEN", ADMIN_TOKEN)
            .env_remove("REDIS_URL")
            .env_remove("STRATA_CACHE")
            .env_remove("STRATA_REDIS_PREFIX");
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the strata server")?;
        let pid = child.id();
        let stderr = child.stderr.take().expect("stderr is piped");
        let last = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let drain = last.clone();
        std::thread::spawn(move || drain_stderr(stderr, &drain, tx));
        let mut server = Server { child, pid, addr: SocketAddr::from(([127, 0, 0, 1], 0)), last, stopped: false };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(addr) = rx.try_recv() {
                server.addr = addr;
                return Ok(server);
            }
            if let Some(status) = server.child.try_wait()? {
                server.stopped = true;
                bail!("the server exited at start-up ({status}); log:\n{}", server.last.lock().unwrap().join("\n"));
            }
            if Instant::now() > deadline {
                bail!("the server did not log its address within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) async fn stop(&mut self) -> Result<()> {
        let started = Instant::now();
        Command::new("kill").args(["-TERM", &self.pid.to_string()]).status().context("running kill -TERM")?;
        while started.elapsed() < Duration::from_secs(30) {
            if self.child.try_wait()?.is_some() {
                self.stopped = true;
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.child.kill()?;
        let _ = self.child.wait();
        self.stopped = true;
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub(crate) fn drain_stderr(stderr: ChildStderr, last: &Mutex<Vec<String>>, addr_tx: mpsc::Sender<SocketAddr>) {
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        let parsed: Option<Value> = serde_json::from_str(&line).ok();
        let addr = parsed.as_ref().and_then(|v| v.pointer("/fields/addr")).and_then(Value::as_str);
        if let Some(addr) = addr.and_then(|a| a.parse::<SocketAddr>().ok()) {
            let _ = addr_tx.send(addr);
        }
        let mut last = last.lock().expect("log lock");
        if last.len() >= 30 {
            last.remove(0);
        }
        last.push(line);
    }
}

/// `n` with thousands separators (1,234,567).
pub(crate) fn fmt_int(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `x` rounded, with thousands separators.
pub(crate) fn fmt_rate(x: f64) -> String {
    fmt_int(x.round() as u64)
}

/// A non-negative number from the environment (`_` and `,` separators allowed), or `default`.
pub(crate) fn env_number(name: &str, default: f64) -> Result<f64> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(v) => match v.trim().replace(['_', ','], "").parse::<f64>() {
            Ok(n) if n.is_finite() && n >= 0.0 => Ok(n),
            _ => bail!("{name}={v:?} is not a non-negative number"),
        },
    }
}

/// Like [`env_number`], zero refused.
pub(crate) fn env_positive(name: &str, default: f64) -> Result<f64> {
    let n = env_number(name, default)?;
    if n == 0.0 {
        bail!("{name} must be positive");
    }
    Ok(n)
}

/// Runs a benchmark on a multi-threaded runtime: success, or the error printed and a failure.
pub(crate) fn run_bench(bench: impl std::future::Future<Output = Result<()>>) -> std::process::ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(bench) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nbenchmark failed: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
