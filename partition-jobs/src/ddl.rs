//! Partition DDL with one lock discipline: [`ensure_month`], [`ensure_months`], [`create_month`].
//!
//! Every DDL transaction here (and in `apply`) runs as: `BEGIN`, `SET LOCAL lock_timeout`,
//! `pg_advisory_xact_lock(PARTITION_DDL_LOCK_KEY)`, then catalog checks, then the DDL, `COMMIT`.
//! The advisory lock serializes Strata's own DDL across processes, so the checks made after it
//! cannot be invalidated by another Strata process; `lock_timeout` bounds how long we wait behind
//! other sessions (an open transaction on `events`), and a timed-out attempt is retried with
//! backoff a bounded number of times. Lock order is always: advisory lock, `events`, partitions.
//!
//! The functions take `&Client` and issue `BEGIN`/`COMMIT` themselves, so callers holding a pooled
//! connection can pass it as is. They must not be called inside an open transaction, and their
//! futures should not be dropped half-way (the connection would be left inside a transaction).

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Client;

use crate::error::{is_retryable_db, Error};
use crate::month::Month;
use crate::PARTITION_DDL_LOCK_KEY;

/// Attempts per DDL transaction before giving up with [`Error::LockContention`].
pub const DDL_MAX_ATTEMPTS: u32 = 5;
/// Pause after the first failed attempt; doubled after each further one (plus jitter).
const DDL_BACKOFF_BASE: Duration = Duration::from_millis(50);
/// [`ensure_months`] refuses wider ranges: one bad timestamp must not make a storm of partitions.
pub const MAX_MONTHS_PER_CALL: i64 = 120;

/// What [`create_month`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MonthCreation {
    /// The partition was made by this call (false: it already existed or a partition covers it).
    pub created: bool,
    /// Rows moved out of the DEFAULT partition into the new partition.
    pub moved_rows: i64,
    /// UTC hours of the moved rows: the service must rebuild their rollups (the month is marked
    /// `complete = false` in `rollup_months` until it does).
    pub affected_hours: Vec<DateTime<Utc>>,
}

/// Creates the month's partition if it does not exist.
///
/// Runs `CREATE TABLE IF NOT EXISTS events_YYYY_MM (LIKE events INCLUDING DEFAULTS INCLUDING
/// CONSTRAINTS)` then `ALTER TABLE events ATTACH PARTITION ... FOR VALUES FROM (..) TO (..)` (never
/// `PARTITION OF`, whose ACCESS EXCLUSIVE lock on `events` would block inserts) in one transaction
/// holding the DDL advisory lock, under `lock_timeout`, retried on lock timeout, deadlock or
/// serialization failure. Safe when several processes race: existence is checked after the
/// advisory lock. Inserts `(month, true)` into `rollup_months` when it creates the partition.
/// If a DEFAULT partition holds rows of the month they are moved in the same transaction (see
/// [`create_month`]). Returns `Ok(true)` when this call created the partition.
pub async fn ensure_month(client: &Client, month: Month, lock_timeout: Duration) -> Result<bool, Error> {
    Ok(create_month(client, month, lock_timeout).await?.created)
}

/// [`ensure_month`] for every month in `[from, to]` (inclusive); returns the months it created.
/// Refuses ranges longer than [`MAX_MONTHS_PER_CALL`].
pub async fn ensure_months(
    client: &Client,
    from: Month,
    to: Month,
    lock_timeout: Duration,
) -> Result<Vec<Month>, Error> {
    if from.months_until(to) >= MAX_MONTHS_PER_CALL {
        return Err(Error::RangeTooLarge { from, to, limit: MAX_MONTHS_PER_CALL });
    }
    let mut created = Vec::new();
    for month in from.through(to) {
        if ensure_month(client, month, lock_timeout).await? {
            created.push(month);
        }
    }
    Ok(created)
}

/// Like [`ensure_month`], reporting rows moved out of a DEFAULT partition.
///
/// A row in the DEFAULT partition inside the new month's range would make `ATTACH` fail, so such
/// rows are moved first, in the same transaction: `DELETE FROM events` over the month's range
/// (which only the DEFAULT partition can hold) `RETURNING` the rows into the new table. Only the
/// DEFAULT partition and the new table are locked exclusively; inserts into other months go on.
/// When rows were moved, `rollup_months` gets `complete = false` for the month.
#[tracing::instrument(skip_all, fields(month = %month))]
pub async fn create_month(client: &Client, month: Month, lock_timeout: Duration) -> Result<MonthCreation, Error> {
    if !month.is_valid() {
        return Err(Error::InvalidMonth { year: month.year, month: month.month });
    }
    let created =
        in_ddl_transaction(client, "creating a partition", lock_timeout, || create_month_locked(client, month)).await?;
    if created.created {
        tracing::info!(moved_rows = created.moved_rows, "created partition");
    }
    Ok(created)
}

const RELATION_SQL: &str = r"
SELECT EXISTS (SELECT 1 FROM pg_inherits i
               WHERE i.inhrelid = c.oid AND i.inhparent = 'events'::regclass) AS attached
FROM pg_class c
WHERE c.relname = $1
  AND c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = 'events'::regclass)";

const ROLLUP_MONTH_SQL: &str = r"
INSERT INTO rollup_months (month, complete) VALUES ($1, true) ON CONFLICT (month) DO NOTHING";

const ROLLUP_MONTH_INCOMPLETE_SQL: &str = r"
INSERT INTO rollup_months (month, complete) VALUES ($1, false)
ON CONFLICT (month) DO UPDATE SET complete = false";

async fn create_month_locked(client: &Client, month: Month) -> Result<MonthCreation, Error> {
    let name = month.partition_name();
    let ctx = "creating a partition";
    match client.query_opt(RELATION_SQL, &[&name]).await.map_err(Error::db(ctx))? {
        Some(row) if row.get::<_, bool>(0) => return Ok(MonthCreation::default()),
        Some(_) => return Err(Error::UnattachedTableExists { name }),
        None => {}
    }
    let catalog = crate::catalog::read_bounds(client).await?;
    if catalog.covers(month) {
        return Ok(MonthCreation::default());
    }
    if let Some(p) = catalog.partitions.iter().find(|p| p.overlaps(month)) {
        return Err(Error::Overlap { month, partition: p.name.clone() });
    }
    let create = format!("CREATE TABLE IF NOT EXISTS {name} (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)");
    client.batch_execute(&create).await.map_err(Error::db(ctx))?;
    let mut result = MonthCreation { created: true, ..MonthCreation::default() };
    if catalog.default_partition.is_some() {
        (result.moved_rows, result.affected_hours) = move_default_rows(client, month).await?;
    }
    let attach = format!(
        "ALTER TABLE events ATTACH PARTITION {name} FOR VALUES FROM ('{}') TO ('{}')",
        bound_literal(month.start()),
        bound_literal(month.end()),
    );
    client.batch_execute(&attach).await.map_err(Error::db(ctx))?;
    let sql = if result.moved_rows > 0 { ROLLUP_MONTH_INCOMPLETE_SQL } else { ROLLUP_MONTH_SQL };
    client.execute(sql, &[&month.first_day()]).await.map_err(Error::db("recording the month in rollup_months"))?;
    Ok(result)
}

/// Moves the month's rows from the DEFAULT partition into the (not yet attached) month table.
/// Deleting through `events` keeps the parent's column order, which `LIKE events` copied.
async fn move_default_rows(client: &Client, month: Month) -> Result<(i64, Vec<DateTime<Utc>>), Error> {
    let sql = format!(
        "WITH moved AS (DELETE FROM events WHERE created_at >= $1 AND created_at < $2 RETURNING *), \
              ins AS (INSERT INTO {} SELECT * FROM moved RETURNING created_at) \
         SELECT date_trunc('hour', created_at, 'UTC') AS hour, count(*) AS n \
         FROM ins GROUP BY 1 ORDER BY 1",
        month.partition_name()
    );
    let rows = client
        .query(sql.as_str(), &[&month.start(), &month.end()])
        .await
        .map_err(Error::db("moving rows out of the default partition"))?;
    let moved = rows.iter().map(|r| r.get::<_, i64>(1)).sum();
    let hours = rows.iter().map(|r| r.get(0)).collect();
    Ok((moved, hours))
}

/// A bound for DDL, with an explicit UTC offset so the session's TimeZone cannot shift it.
fn bound_literal(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S+00").to_string()
}

/// Runs `body` in a transaction holding the DDL advisory lock under `lock_timeout`, retrying
/// retryable failures with backoff up to [`DDL_MAX_ATTEMPTS`] times.
pub(crate) async fn in_ddl_transaction<T, F, Fut>(
    client: &Client,
    context: &'static str,
    lock_timeout: Duration,
    body: F,
) -> Result<T, Error>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    retry(context, || transaction_once(client, context, lock_timeout, true, &body)).await
}

/// One transaction: `BEGIN`, `SET LOCAL lock_timeout`, the DDL advisory lock when `ddl_lock`,
/// `body`, `COMMIT`; `ROLLBACK` on any error.
pub(crate) async fn transaction_once<T, F, Fut>(
    client: &Client,
    context: &'static str,
    lock_timeout: Duration,
    ddl_lock: bool,
    body: &F,
) -> Result<T, Error>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let result = async {
        client.batch_execute("BEGIN").await.map_err(Error::db(context))?;
        set_lock_timeout(client, lock_timeout, true).await?;
        if ddl_lock {
            client
                .execute("SELECT pg_advisory_xact_lock($1)", &[&PARTITION_DDL_LOCK_KEY])
                .await
                .map_err(Error::db("taking the partition DDL lock"))?;
        }
        let value = body().await?;
        client.batch_execute("COMMIT").await.map_err(Error::db(context))?;
        Ok(value)
    }
    .await;
    if result.is_err() {
        // A failed ROLLBACK means the connection is gone: the original error says more.
        let _ = client.batch_execute("ROLLBACK").await;
    }
    result
}

/// Runs `op` until it succeeds, fails for good, or fails retryably [`DDL_MAX_ATTEMPTS`] times
/// (then [`Error::LockContention`]), sleeping with exponential backoff and jitter in between.
pub(crate) async fn retry<T, F, Fut>(context: &'static str, mut op: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let mut attempt = 1;
    loop {
        match op().await {
            Err(Error::Db { source, .. }) if is_retryable_db(&source) => {
                if attempt >= DDL_MAX_ATTEMPTS {
                    return Err(Error::LockContention { context, attempts: attempt, source });
                }
                tracing::warn!(attempt, error = %source, "{context}: retrying");
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Sets `lock_timeout` for the transaction (`local`) or the session; never 0 (which would mean
/// "wait forever").
pub(crate) async fn set_lock_timeout(client: &Client, lock_timeout: Duration, local: bool) -> Result<(), Error> {
    let value = format!("{}ms", lock_timeout.as_millis().max(1));
    client
        .execute("SELECT set_config('lock_timeout', $1, $2)", &[&value, &local])
        .await
        .map_err(Error::db("setting lock_timeout"))?;
    Ok(())
}

fn backoff(attempt: u32) -> Duration {
    let base = DDL_BACKOFF_BASE * 2u32.saturating_pow(attempt - 1);
    // Jitter from the clock keeps racing processes from retrying in lockstep.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    base + Duration::from_millis(u64::from(nanos) % (base.as_millis() as u64 + 1))
}
