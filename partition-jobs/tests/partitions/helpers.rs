//! `TestDb`: a fresh database per test, with typed helpers.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use partition_jobs::Month;
use tokio_postgres::{Client, NoTls};

const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const V1: &str = include_str!("../../../sql/migrations/V1__foundation.sql");
const V2: &str = include_str!("../../../sql/migrations/V2__partition_lifecycle.sql");

/// Lock timeout the tests give maintenance.
pub const LOCK_TIMEOUT: Duration = Duration::from_millis(1000);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A database of its own, migrated; dropped (with FORCE) when the value is dropped.
pub struct TestDb {
    pub name: String,
    pub client: Client,
    url: String,
}

fn admin_url() -> String {
    std::env::var("PARTITION_JOBS_TEST_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
}

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(connection);
    client
}

impl TestDb {
    pub async fn new() -> TestDb {
        let nanos = Utc::now().timestamp_subsec_nanos();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("pj_test_{}_{nanos}_{n}", std::process::id());
        let admin = connect(&admin_url()).await;
        admin.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("create database");
        let url = db_url(&admin_url(), &name);
        let client = connect(&url).await;
        client.batch_execute(V1).await.expect("V1");
        client.batch_execute(V2).await.expect("V2");
        TestDb { name, client, url }
    }

    /// The database's connection string.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Another connection to the same database.
    pub async fn connect(&self) -> Client {
        connect(&self.url).await
    }

    pub async fn count(&self, sql: &str) -> i64 {
        self.client.query_one(sql, &[]).await.expect(sql).get(0)
    }

    /// Partition names of `events`, sorted.
    pub async fn partition_names(&self) -> Vec<String> {
        let sql = "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
                   WHERE i.inhparent = 'events'::regclass ORDER BY 1";
        let rows = self.client.query(sql, &[]).await.expect("partitions");
        rows.iter().map(|r| r.get(0)).collect()
    }

    /// Inserts `n` events at `at` and flushes the statistics counters at commit.
    pub async fn insert_events(&self, at: DateTime<Utc>, n: i64) {
        let sql = "INSERT INTO events (event_id, app_id, event_type, created_at, received_at) \
                   SELECT gen_random_uuid(), gen_random_uuid(), 'click', $1, now() \
                   FROM generate_series(1, $2::int8)";
        self.client.execute(sql, &[&at, &n]).await.expect("insert events");
        self.client.batch_execute("SELECT pg_stat_force_next_flush()").await.expect("flush stats");
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside async context: use a small runtime on its own thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                let admin = connect(&admin_url()).await;
                let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                let _ = admin.batch_execute(&sql).await;
            });
        })
        .join();
    }
}

fn db_url(admin: &str, db: &str) -> String {
    let base = admin.rsplit_once('/').map_or(admin, |(b, _)| b);
    format!("{base}/{db}")
}

pub fn m(year: i32, month: u32) -> Month {
    Month { year, month }
}

/// The fixed `now` of the tests that plan.
pub fn fixed_now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 15, 12, 0, 0).unwrap()
}
