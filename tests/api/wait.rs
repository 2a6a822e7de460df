//! Waiting for what a test means: [`eventually`] polls a condition until it holds, and panics naming
//! what was awaited and the last thing seen. [`required`] turns a missing tool into a skip locally
//! and into a failure under CI.

use std::fmt::Debug;
use std::time::{Duration, Instant};

/// Pause between two polls of a condition.
const POLL: Duration = Duration::from_millis(20);

/// Polls `condition` until it answers `Ok`, and returns that value. `Err` carries what was observed
/// instead; when `timeout` has passed, panics with `what` (the awaited state, as a phrase) and the
/// last observation.
pub async fn eventually<T, E: Debug>(
    timeout: Duration,
    what: &str,
    mut condition: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    let started = Instant::now();
    loop {
        match condition().await {
            Ok(done) => return done,
            Err(seen) if started.elapsed() >= timeout => {
                panic!("not within {timeout:?}: {what}; last observed: {seen:?}")
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// `Ok(seen)` when `holds`, else `Err(seen)`: the common shape of an [`eventually`] condition.
pub fn when<T>(seen: T, holds: impl FnOnce(&T) -> bool) -> Result<T, T> {
    if holds(&seen) {
        Ok(seen)
    } else {
        Err(seen)
    }
}

/// Set by `.ci/run`: a test that needs a tool which is missing fails instead of skipping.
pub const REQUIRE_ALL: &str = "STRATA_TEST_REQUIRE_ALL";

/// `found`, or `None` after printing that the test is skipped for want of `missing`. Under CI
/// ([`REQUIRE_ALL`] set to anything but `0` or empty) a missing tool fails the test instead.
pub fn required<T>(found: Option<T>, missing: &str) -> Option<T> {
    if found.is_none() {
        if std::env::var(REQUIRE_ALL).is_ok_and(|v| !v.is_empty() && v != "0") {
            panic!("{missing} is required ({REQUIRE_ALL} is set) but not available: install it");
        }
        eprintln!("{missing} not installed; skipped");
    }
    found
}

/// Waits (up to 10 s) until `n` sessions of `db`'s database wait for a lock (e.g. a writer blocked
/// behind the test's lock).
pub async fn until_lock_waiters(db: &tokio_postgres::Client, n: i64) {
    const SQL: &str = "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
                       WHERE NOT l.granted AND a.datname = current_database()";
    eventually(Duration::from_secs(10), &format!("{n} sessions waiting on a lock"), async || {
        when(db.query_one(SQL, &[]).await.unwrap().get::<_, i64>(0), |waiting| *waiting >= n)
    })
    .await;
}

/// Waits (up to 2 s) until `server` has subscribed to the cache bus.
pub async fn until_bus_connected(server: &crate::helpers::TestServer) {
    let connected = async || when(server.cache.bus_connected(), |c| *c);
    eventually(Duration::from_secs(2), "the instance subscribed to the cache bus", connected).await;
}
