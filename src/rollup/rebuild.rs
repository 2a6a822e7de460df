//! Rebuilding rollups from raw rows: for imported data, rows moved out of a DEFAULT partition, or a
//! changed rollup design. `strata rollups rebuild` and the maintenance scheduler call [`rebuild`].
//!
//! Rebuilt counts go to shard 0 after every shard of the range was deleted. Each month's transaction
//! locks both rollup tables in SHARE ROW EXCLUSIVE mode: ingestion keeps accepting and COPYing, but
//! its commits wait for the rebuild of that month, so no committed event is counted twice or missed
//! (a writer's delta for another shard could otherwise land between the delete and the recompute).

use chrono::{DateTime, Utc};
use partition_jobs::Month;
use tokio_postgres::{Client, Transaction};
use uuid::Uuid;

use super::compact::TierError;

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

const MARK_COMPLETE: &str = "INSERT INTO rollup_months (month, complete, rebuilt_at) VALUES ($1, true, now()) \
     ON CONFLICT (month) DO UPDATE SET complete = true, rebuilt_at = now()";

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
) -> Result<RebuildReport, TierError> {
    let (from, _) = crate::ingest::store::hour_and_quarter(from);
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
) -> Result<(u64, u64, u64), TierError> {
    tx.execute(DELETE_HOURLY, &[&start, &end, &app]).await?;
    tx.execute(DELETE_DIMS, &[&start, &end, &app]).await?;
    let hourly = tx.execute(INSERT_HOURLY, &[&start, &end, &app]).await?;
    let dims = tx.execute(INSERT_DIMS, &[&start, &end, &app]).await?;
    let tier_hours = super::compact::rebuild_in(tx, app, start, end).await?;
    Ok((hourly, dims, tier_hours))
}

/// Marks `month`'s rollups complete (after its affected hours were rebuilt).
pub async fn mark_month_complete(client: &Client, month: Month) -> Result<(), tokio_postgres::Error> {
    client.execute(MARK_COMPLETE, &[&month.start().date_naive()]).await?;
    Ok(())
}
