//! Loading, scratch-database and server-process helpers shared by the query and cache benchmarks (each bench declares
//! `mod common;`; the constants they read, such as `APP_SHARES`, come from the bench itself).
#![allow(dead_code, unused_imports)]

use super::*;

/// JSON text written as jsonb: a version byte, then the text.
#[derive(Debug)]
pub(crate) struct JsonbText<'a>(&'a str);

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
    let report =
        strata::rollups::rebuild(&mut client, None, Month::containing(from).start(), Month::containing(now).end())
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
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_strata"));
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
