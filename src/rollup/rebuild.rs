//! Rebuilding rollups from raw rows: for imported data, rows moved out of a DEFAULT partition, or a
//! changed rollup design. `strata rollups rebuild` and the maintenance scheduler call [`rebuild`];
//! erasure ([`super::erase`]) calls [`recompute`] for the hours it touched.
//!
//! Rebuilt counts go to shard 0 after every shard of the range was deleted. Each month's transaction
//! locks both rollup tables in SHARE ROW EXCLUSIVE mode: ingestion keeps accepting and COPYing, but
//! its commits wait for the rebuild of that month, so no committed event is counted twice or missed
//! (a writer's delta for another shard could otherwise land between the delete and the recompute).
//!
//! The multi-tier rollups of the same hours are recomputed in the same transaction, under the
//! compactor's lock, after merging every pending delta: hours and quarter hours from raw rows, then
//! the days and months holding them from the hours.

use std::collections::HashMap;

use chrono::{DateTime, TimeDelta, Utc};
use partition_jobs::Month;
use tokio_postgres::{Client, Row, Transaction};
use uuid::Uuid;

use super::agg::Agg;
use super::compact::{compact_in, write_merged, MergedKey, COMPACT_BATCH, LOCK_KEY};
use super::tier::{hour_and_quarter, Tier};
use super::RollupError;

const DELETE_HOURLY: &str = "DELETE FROM rollup_hourly \
     WHERE hour >= $1 AND hour < $2 AND ($3::uuid IS NULL OR app_id = $3)";
const DELETE_DIMS: &str = "DELETE FROM rollup_hourly_dims \
     WHERE hour >= $1 AND hour < $2 AND ($3::uuid IS NULL OR app_id = $3)";

const INSERT_HOURLY: &str = "INSERT INTO rollup_hourly (app_id, hour, event_type, events, q0, q1, q2, q3) \
     SELECT app_id, date_trunc('hour', created_at, 'UTC') AS h, event_type, count(*), \
       count(*) FILTER (WHERE extract(minute FROM created_at AT TIME ZONE 'UTC') < 15), \
       count(*) FILTER (WHERE extract(minute FROM created_at AT TIME ZONE 'UTC') >= 15 \
                          AND extract(minute FROM created_at AT TIME ZONE 'UTC') < 30), \
       count(*) FILTER (WHERE extract(minute FROM created_at AT TIME ZONE 'UTC') >= 30 \
                          AND extract(minute FROM created_at AT TIME ZONE 'UTC') < 45), \
       count(*) FILTER (WHERE extract(minute FROM created_at AT TIME ZONE 'UTC') >= 45) \
     FROM events WHERE created_at >= $1 AND created_at < $2 AND ($3::uuid IS NULL OR app_id = $3) \
     GROUP BY 1, 2, 3 ORDER BY 1, 2, 3 \
     ON CONFLICT (app_id, hour, event_type, shard) DO UPDATE SET events = EXCLUDED.events, q0 = EXCLUDED.q0, \
       q1 = EXCLUDED.q1, q2 = EXCLUDED.q2, q3 = EXCLUDED.q3";

const INSERT_DIMS: &str = "INSERT INTO rollup_hourly_dims (app_id, hour, event_type, dim, value, events) \
     SELECT app_id, date_trunc('hour', created_at, 'UTC'), event_type, d.dim, COALESCE(d.value, ''), count(*) \
     FROM events CROSS JOIN LATERAL (VALUES ('device', device), ('browser', browser), ('os', os)) AS d(dim, value) \
     WHERE created_at >= $1 AND created_at < $2 AND ($3::uuid IS NULL OR app_id = $3) \
     GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5 \
     ON CONFLICT (app_id, hour, event_type, dim, value, shard) DO UPDATE SET events = EXCLUDED.events";

const LOCK_ROLLUPS: &str = "LOCK TABLE rollup_hourly, rollup_hourly_dims IN SHARE ROW EXCLUSIVE MODE";

// A whole month rebuilt for every app: its tiers are complete too.
const MARK_REBUILT: &str = "INSERT INTO rollup_months (month, complete, tiers, quarters, rebuilt_at) \
     VALUES ($1, true, true, true, now()) \
     ON CONFLICT (month) DO UPDATE SET complete = true, tiers = true, quarters = true, rebuilt_at = now()";

/// What a rebuild did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RebuildReport {
    /// Hourly rollup rows written.
    pub hourly_rows: u64,
    /// Breakdown rows written.
    pub dim_rows: u64,
    /// Hour rows of the multi-tier rollups written (days and months follow from them).
    pub tier_hours: u64,
    /// Months processed.
    pub months: u64,
}

/// Recomputes rollups for `[from, to)` (widened to whole UTC hours), one month per transaction,
/// for one app or all; whole months rebuilt for all apps are marked complete in `rollup_months`.
pub async fn rebuild(
    client: &mut Client,
    app: Option<Uuid>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<RebuildReport, RollupError> {
    let (from, _) = hour_and_quarter(from);
    let mut report = RebuildReport { hourly_rows: 0, dim_rows: 0, tier_hours: 0, months: 0 };
    let mut month = Month::containing(from);
    while month.start() < to {
        let start = from.max(month.start());
        let end = to.min(month.end());
        let tx = client.transaction().await?;
        lock(&tx).await?;
        let (hourly, dims, tier_hours) = recompute(&tx, app, start, end).await?;
        report.hourly_rows += hourly;
        report.dim_rows += dims;
        report.tier_hours += tier_hours;
        if app.is_none() && start == month.start() && end == month.end() {
            tx.execute(MARK_REBUILT, &[&month.start().date_naive()]).await?;
        }
        tx.commit().await?;
        report.months += 1;
        month = month.next();
    }
    Ok(report)
}

/// Locks both rollup tables for the rest of `tx` against concurrent writers' commits (see module doc).
pub async fn lock(tx: &Transaction<'_>) -> Result<(), tokio_postgres::Error> {
    tx.batch_execute(LOCK_ROLLUPS).await
}

/// Inside `tx` (which must hold [`lock`]): deletes every shard's rollups of `[start, end)` (whole
/// hours) for `app` or all apps and recomputes them from raw rows, then the multi-tier rollups of
/// those hours and of the days and months holding them. Returns rows written: hourly, breakdowns,
/// tier hours.
pub async fn recompute(
    tx: &Transaction<'_>,
    app: Option<Uuid>,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<(u64, u64, u64), RollupError> {
    tx.execute(DELETE_HOURLY, &[&start, &end, &app]).await?;
    tx.execute(DELETE_DIMS, &[&start, &end, &app]).await?;
    let hourly = tx.execute(INSERT_HOURLY, &[&start, &end, &app]).await?;
    let dims = tx.execute(INSERT_DIMS, &[&start, &end, &app]).await?;
    let tier_hours = rebuild_tiers(tx, app, start, end).await?;
    Ok((hourly, dims, tier_hours))
}

const DELETE_HOURS: &str = "DELETE FROM rollup_tiers \
     WHERE tier = 1 AND start >= $1 AND start < $2 AND ($3::uuid IS NULL OR app_id = $3)";

// Hours from raw rows; the breakdowns from `rollup_hourly_dims`, which `recompute` rebuilt for the
// same hours just before. Hashes: see `sketch::hash`.
const INSERT_HOURS: &str = "WITH raw AS ( \
       SELECT app_id, h, COALESCE(t, '') AS t, count(*) AS n, \
         COALESCE(string_agg(DISTINCT u, ''::bytea ORDER BY u), ''::bytea) AS users, \
         COALESCE(string_agg(DISTINCT s, ''::bytea ORDER BY s), ''::bytea) AS sessions \
       FROM (SELECT app_id, date_trunc('hour', created_at, 'UTC') AS h, event_type AS t, \
               substring(sha256(convert_to(user_id, 'UTF8')) FROM 1 FOR 4) AS u, \
               substring(sha256(convert_to(session_id, 'UTF8')) FROM 1 FOR 4) AS s \
             FROM events \
             WHERE created_at >= $1 AND created_at < $2 AND ($3::uuid IS NULL OR app_id = $3)) AS e \
       GROUP BY GROUPING SETS ((app_id, h, t), (app_id, h))), \
     per_dim AS ( \
       SELECT app_id, hour, event_type, dim, jsonb_object_agg(value, n) AS vals \
       FROM (SELECT app_id, hour, event_type, dim, value, sum(events) AS n FROM rollup_hourly_dims \
             WHERE hour >= $1 AND hour < $2 AND ($3::uuid IS NULL OR app_id = $3) \
             GROUP BY 1, 2, 3, 4, 5 HAVING sum(events) <> 0) AS x \
       GROUP BY 1, 2, 3, 4), \
     dims AS (SELECT app_id, hour, event_type, jsonb_object_agg(dim, vals) AS d FROM per_dim GROUP BY 1, 2, 3) \
     INSERT INTO rollup_tiers (app_id, tier, start, event_type, events, users, sessions, dims) \
     SELECT raw.app_id, 1, raw.h, raw.t, raw.n, raw.users, raw.sessions, COALESCE(dims.d, '{}'::jsonb) \
     FROM raw LEFT JOIN dims ON dims.app_id = raw.app_id AND dims.hour = raw.h AND dims.event_type = raw.t";

const DELETE_QUARTERS: &str = "DELETE FROM rollup_tiers \
     WHERE tier = 4 AND start >= $1 AND start < $2 AND ($3::uuid IS NULL OR app_id = $3)";

// Quarter hours of every type together from raw rows (no breakdowns on '' rows). Hashes as INSERT_HOURS.
const INSERT_QUARTERS: &str = "INSERT INTO rollup_tiers (app_id, tier, start, event_type, events, users, sessions, \
       dims) \
     SELECT app_id, 4, q, '', count(*), \
       COALESCE(string_agg(DISTINCT u, ''::bytea ORDER BY u), ''::bytea), \
       COALESCE(string_agg(DISTINCT s, ''::bytea ORDER BY s), ''::bytea), '{}'::jsonb \
     FROM (SELECT app_id, date_bin('15 minutes', created_at, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS q, \
             substring(sha256(convert_to(user_id, 'UTF8')) FROM 1 FOR 4) AS u, \
             substring(sha256(convert_to(session_id, 'UTF8')) FROM 1 FOR 4) AS s \
           FROM events \
           WHERE created_at >= $1 AND created_at < $2 AND ($3::uuid IS NULL OR app_id = $3)) AS e \
     GROUP BY e.app_id, e.q";

const READ_TIER: &str = "SELECT app_id, start, event_type, events, users, sessions, dims FROM rollup_tiers \
     WHERE tier = $1 AND start >= $2 AND start < $3 AND ($4::uuid IS NULL OR app_id = $4)";

const DELETE_TIER: &str = "DELETE FROM rollup_tiers \
     WHERE tier = $1 AND start >= $2 AND start < $3 AND ($4::uuid IS NULL OR app_id = $4)";

/// Inside `tx` (which holds [`lock`], so no writer commits meanwhile, and has just rebuilt
/// `rollup_hourly_dims` for the same hours): recomputes the tiers of `[start, end)` (whole UTC
/// hours) for `app` or all apps, under the compactor's lock, after merging every pending delta.
/// Returns the hour rows written.
async fn rebuild_tiers(
    tx: &Transaction<'_>,
    app: Option<Uuid>,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<u64, RollupError> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY]).await?;
    // No deltas may remain beside the merged rows recomputed below.
    while compact_in(tx, COMPACT_BATCH).await? as i64 == COMPACT_BATCH {}
    tx.execute(DELETE_HOURS, &[&start, &end, &app]).await?;
    let hours = tx.execute(INSERT_HOURS, &[&start, &end, &app]).await?;
    tx.execute(DELETE_QUARTERS, &[&start, &end, &app]).await?;
    tx.execute(INSERT_QUARTERS, &[&start, &end, &app]).await?;
    let last = end - TimeDelta::seconds(1);
    let (day_lo, day_hi) = (Tier::Day.start(start), Tier::Day.end(Tier::Day.start(last)));
    regroup(tx, app, Tier::Hour, Tier::Day, day_lo, day_hi).await?;
    let (month_lo, month_hi) = (Tier::Month.start(start), Tier::Month.end(Tier::Month.start(last)));
    regroup(tx, app, Tier::Day, Tier::Month, month_lo, month_hi).await?;
    Ok(hours)
}

/// Replaces the `to`-tier rows of `[lo, hi)` by the sums of the `from`-tier rows there.
async fn regroup(
    tx: &Transaction<'_>,
    app: Option<Uuid>,
    from: Tier,
    to: Tier,
    lo: DateTime<Utc>,
    hi: DateTime<Utc>,
) -> Result<(), RollupError> {
    let rows: Vec<Row> = tx.query(READ_TIER, &[&from, &lo, &hi, &app]).await?;
    let mut sums: HashMap<MergedKey, Agg> = HashMap::new();
    for row in &rows {
        let key = (row.get(0), to, to.start(row.get(1)), row.get(2));
        sums.entry(key).or_default().absorb_columns(row, 3)?;
    }
    tx.execute(DELETE_TIER, &[&to, &lo, &hi, &app]).await?;
    write_merged(tx, sums).await?;
    Ok(())
}
