//! The test harness: `spawn_app()` runs the real server on port 0 against its own database (cloned
//! from a migrated template, dropped afterwards) and gives typed helpers.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use std::io::BufRead;

use serde_json::Value;
use strata::app::Application;
use strata::auth::ratelimit::Limits;
use strata::config::Config;
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::wait::{eventually, when};

/// The server all test databases live on (trust auth).
pub fn admin_url() -> String {
    std::env::var("STRATA_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn db_url(name: &str) -> String {
    let base = admin_url();
    let cut = base.rfind('/').expect("URL has a database part");
    format!("{}/{name}", &base[..cut])
}

pub const ADMIN_TOKEN: &str = "test-admin-token";
pub const KEY_SECRET: &str = "test-key-secret";
pub const JWT_SECRET: &str = "test-jwt-secret";

/// A running server with its own database, an app and an API key.
pub struct TestApp {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    pub db: tokio_postgres::Client,
    pub db_name: String,
    pub app_id: Uuid,
    pub api_key: String,
    pub key_id: Uuid,
    /// The server's rate limiters (tests peek at their buckets).
    pub limits: Limits,
    stop: CancellationToken,
    _server: tokio::task::JoinHandle<()>,
}

async fn admin_client() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&admin_url(), NoTls).await.expect("test PostgreSQL reachable");
    tokio::spawn(conn);
    client
}

/// The migrated template's name: migrations' text hashed, so changed migrations get a new template.
fn template_name() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        let mut text = String::new();
        let mut files: Vec<_> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/sql/migrations"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files {
            text.push_str(&std::fs::read_to_string(f).unwrap());
        }
        let month = chrono::Utc::now().format("%Y%m");
        format!("strata_tpl_{month}_{:016x}", fnv(&text))
    })
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3))
}

/// Makes the template once per server (under an advisory lock: test processes run in parallel).
async fn ensure_template(admin: &tokio_postgres::Client) {
    let name = template_name();
    admin.execute("SELECT pg_advisory_lock(727272)", &[]).await.unwrap();
    let exists = admin.query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name]).await.unwrap().is_some();
    if !exists {
        let building = format!("{name}_building");
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS \"{building}\"")).await.unwrap();
        admin.batch_execute(&format!("CREATE DATABASE \"{building}\"")).await.unwrap();
        strata::db::migrate(&db_url(&building), 3, Duration::from_secs(5)).await.expect("migrations apply");
        admin.batch_execute(&format!("ALTER DATABASE \"{building}\" RENAME TO \"{name}\"")).await.unwrap();
    }
    admin.execute("SELECT pg_advisory_unlock(727272)", &[]).await.unwrap();
}

/// A fresh database cloned from the template; returns its name.
pub async fn create_test_database() -> String {
    let admin = admin_client().await;
    ensure_template(&admin).await;
    let name = format!("strata_test_{}", Uuid::new_v4().simple());
    admin.batch_execute(&format!("CREATE DATABASE \"{name}\" TEMPLATE \"{}\"", template_name())).await.unwrap();
    name
}

/// A fresh test database holding one app and one API key of it, for tests that run the server binary.
pub struct KeyedDatabase {
    pub name: String,
    pub db: tokio_postgres::Client,
    pub app_id: Uuid,
    pub api_key: String,
}

/// A [`KeyedDatabase`] whose app is called `app_name`.
pub async fn keyed_database(app_name: &str) -> KeyedDatabase {
    let name = create_test_database().await;
    let db = connect(&name).await;
    let app = strata::accounts::create_app(&db, app_name, None).await.unwrap();
    let key = strata::accounts::create_key(&db, KEY_SECRET.as_bytes(), app.id, "k", None).await.unwrap();
    KeyedDatabase { name, db, app_id: app.id, api_key: key.api_key }
}

/// Connects to a test database.
pub async fn connect(db_name: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&db_url(db_name), NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

/// The configuration tests start from.
pub fn test_config(db_name: &str) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: Some(db_url(db_name)),
        admin_token: Some(ADMIN_TOKEN.into()),
        key_secret: Some(KEY_SECRET.into()),
        jwt_secret: Some(JWT_SECRET.into()),
        db_pool_size: 8,
        ..Config::default()
    }
}

/// A server with default test settings.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// A server whose config `adjust` may change.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    let db_name = create_test_database().await;
    let running = run_server(&db_name, adjust).await;
    let db = connect(&db_name).await;
    wait_for_first_maintenance_run(&db).await;
    let app = strata::accounts::create_app(&db, "test app", None).await.unwrap();
    let key = strata::accounts::create_key(&db, KEY_SECRET.as_bytes(), app.id, "test key", None).await.unwrap();
    TestApp {
        addr: running.addr,
        http: reqwest::Client::new(),
        db,
        db_name,
        app_id: app.id,
        api_key: key.api_key,
        key_id: key.id,
        limits: running.limits,
        stop: running.stop,
        _server: running.server,
    }
}

/// A server of the test config of `db_name` as `adjust` changes it, running until `stop` is cancelled.
struct Running {
    addr: SocketAddr,
    cache: strata::cache::Cache,
    limits: Limits,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

async fn run_server(db_name: &str, adjust: impl FnOnce(&mut Config)) -> Running {
    init_logs();
    let mut cfg = test_config(db_name);
    adjust(&mut cfg);
    cfg.validate().expect("test config is valid");
    let application = Application::build(cfg).await.expect("server builds");
    let (addr, cache, limits) = (application.local_addr(), application.cache().clone(), application.limits().clone());
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let server = tokio::spawn(async move {
        application.run_until_stopped(stopped.cancelled_owned()).await.expect("server runs");
    });
    Running { addr, cache, limits, stop, server }
}

/// The scheduler runs maintenance at start; tests begin once it finished, so they never race it.
async fn wait_for_first_maintenance_run(db: &tokio_postgres::Client) {
    const SQL: &str = "SELECT count(*) FROM maintenance_runs WHERE finished_at IS NOT NULL";
    let finished = async || when(db.query_one(SQL, &[]).await.unwrap().get::<_, i64>(0), |n| *n > 0);
    eventually(Duration::from_secs(10), "the startup maintenance run finished", finished).await;
}

fn init_logs() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        if std::env::var("TEST_LOG").is_ok() {
            tracing_subscriber::fmt().with_env_filter("info,strata=debug").with_test_writer().init();
        }
    });
}

/// A response's status and JSON body.
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs `body` as JSON with this app's key.
    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        let resp = self.http.post(self.url(path)).header("X-API-Key", &self.api_key).json(body).send().await.unwrap();
        reply(resp).await
    }

    pub async fn track(&self, event: &Value) -> Reply {
        self.post("/api/events/track", event).await
    }

    pub async fn post_batch(&self, events: &[Value]) -> Reply {
        self.post("/api/events/track/batch", &serde_json::json!({ "events": events })).await
    }

    /// Another key of this app, named `name`.
    pub async fn create_key(&self, name: &str) -> strata::accounts::CreatedKey {
        strata::accounts::create_key(&self.db, KEY_SECRET.as_bytes(), self.app_id, name, None).await.unwrap()
    }

    /// Count of raw rows of this app.
    pub async fn raw_count(&self) -> i64 {
        self.db.query_one("SELECT count(*) FROM events WHERE app_id = $1", &[&self.app_id]).await.unwrap().get(0)
    }

    /// Sum of the hourly rollup of this app.
    pub async fn rollup_count(&self) -> i64 {
        const SQL: &str = "SELECT COALESCE(sum(events), 0)::int8 FROM rollup_hourly WHERE app_id = $1";
        self.db.query_one(SQL, &[&self.app_id]).await.unwrap().get(0)
    }
}

pub async fn reply(resp: reqwest::Response) -> Reply {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("status {status}: body is not JSON: {text:?}"));
    Reply { status, body, headers }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
        let name = self.db_name.clone();
        // Dropped from a separate thread: Drop cannot await, and the test's runtime may be ending. No
        // wait for the server to stop: it cannot run while this thread is joined on a current-thread
        // runtime, and WITH (FORCE) ends whatever sessions it still holds.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let admin = admin_client().await;
                let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).await;
            });
        })
        .join()
        .ok();
    }
}

/// Starts the real `strata serve` binary against `db_name`; returns the child and its address.
pub fn start_binary(db_name: &str, extra_env: &[(&str, &str)]) -> (std::process::Child, String) {
    let cfg = test_config(db_name);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("serve")
        .env("DATABASE_URL", cfg.database_url.unwrap())
        .env("STRATA_LISTEN", "127.0.0.1:0")
        .env("STRATA_KEY_SECRET", KEY_SECRET)
        .env("STRATA_LOG_FORMAT", "json")
        .env("STRATA_WRITERS", "1")
        .envs(extra_env.iter().copied())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the strata binary starts");
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut lines = stderr.lines();
    let addr = loop {
        let line = lines.next().expect("server printed its address").unwrap();
        let Ok(v) = serde_json::from_str::<Value>(&line) else { continue };
        if let Some(a) = v["fields"]["addr"].as_str() {
            break a.to_string();
        }
    };
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

/// A further server on an existing test database (another instance of the same deployment). It does
/// not own the database: dropping it only stops the server.
pub struct TestServer {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    /// The instance's analytics cache (its counters).
    pub cache: strata::cache::Cache,
    stop: CancellationToken,
    _server: tokio::task::JoinHandle<()>,
}

/// Starts another server on `db_name` (e.g. a [`TestApp`]'s) with settings `adjust` may change.
pub async fn spawn_server_on(db_name: &str, adjust: impl FnOnce(&mut Config)) -> TestServer {
    let running = run_server(db_name, adjust).await;
    TestServer {
        addr: running.addr,
        http: reqwest::Client::new(),
        cache: running.cache,
        stop: running.stop,
        _server: running.server,
    }
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A redis-server of this test alone, on a free port, killed on drop.
pub struct PrivateRedis {
    child: Option<std::process::Child>,
    port: u16,
}

impl PrivateRedis {
    /// Starts one and waits (up to 2 s) until it accepts connections; `None` when redis-server is
    /// not installed.
    pub async fn start() -> Option<PrivateRedis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .ok()?;
        // Owned from here: killed on drop if it never comes up.
        let redis = PrivateRedis { child: Some(child), port };
        let listening = async || tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map(drop);
        eventually(Duration::from_secs(2), &format!("redis-server listening on port {port}"), listening).await;
        Some(redis)
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops it for good.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// FLUSHALL.
    pub async fn flushall(&self) {
        let client = redis::Client::open(self.url()).unwrap();
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("FLUSHALL").query_async::<()>(&mut con).await.unwrap();
    }

    /// SIGSTOP (`true`) or SIGCONT: a hung Redis that accepts bytes and answers nothing.
    pub fn pause(&self, stopped: bool) {
        let signal = if stopped { "-STOP" } else { "-CONT" };
        let pid = self.child.as_ref().expect("running").id().to_string();
        assert!(std::process::Command::new("kill").args([signal, &pid]).status().unwrap().success());
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads one HTTP/1.1 answer from `rd` until its body is complete (by `Content-Length`) or the
/// connection ends, within 60 s: for tests that write requests byte by byte.
pub async fn read_answer(rd: &mut (impl tokio::io::AsyncRead + Unpin)) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let read = async {
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
            if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
                let len = head.lines().find_map(|l| l.strip_prefix("content-length: ")?.trim().parse::<usize>().ok());
                if len.is_some_and(|len| answer.len() >= end + 4 + len) {
                    break;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read).await.expect("answered within 60 s");
    answer
}

impl TestApp {
    /// The event types of this app's stored events, sorted.
    pub async fn event_types(&self) -> Vec<String> {
        let rows = self.db.query("SELECT event_type FROM events ORDER BY event_type", &[]).await.unwrap();
        rows.iter().map(|r| r.get(0)).collect()
    }
}
