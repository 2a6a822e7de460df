//! Reading for analytics: [`Reader`] opens one read-only REPEATABLE READ transaction per request (so
//! rollups and raw rows are read from one snapshot; ingestion updates both in one transaction, so they
//! agree in it) with JIT off (it adds tens of ms to such queries) and a statement timeout. Then
//! [`event_counts`] and [`breakdowns`] execute a [`Plan`]: rollup spans from `rollup_hourly` /
//! `rollup_hourly_dims`, raw spans from `events`, all statements of a request pipelined on its connection.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use deadpool_postgres::{Object, Pool, Transaction};
use futures_util::future::try_join_all;
use postgres_types::ToSql;
use tokio_postgres::{IsolationLevel, Row};
use uuid::Uuid;

use super::plan::{is_aligned, month_of, Plan, Span, HOUR};
use super::QueryError;

/// Hands out connections and read transactions for analytics.
#[derive(Clone)]
pub struct Reader {
    pool: Pool,
    statement_timeout: Duration,
}

const SETTINGS: &str = "SELECT set_config('jit', 'off', true), set_config('statement_timeout', $1, true)";

impl Reader {
    /// Statements are cancelled after `statement_timeout` (the request timeout: nobody waits longer).
    pub fn new(pool: Pool, statement_timeout: Duration) -> Reader {
        Reader { pool, statement_timeout }
    }

    /// A pooled connection.
    pub async fn connection(&self) -> Result<Object, QueryError> {
        Ok(self.pool.get().await?)
    }

    /// A read-only REPEATABLE READ transaction with JIT off and the statement timeout set.
    pub async fn begin<'a>(&self, client: &'a mut Object) -> Result<Transaction<'a>, QueryError> {
        let tx =
            client.build_transaction().isolation_level(IsolationLevel::RepeatableRead).read_only(true).start().await?;
        let timeout_ms = self.statement_timeout.as_millis().to_string();
        rows(&tx, SETTINGS, &[&timeout_ms]).await?;
        Ok(tx)
    }
}

/// Runs a cached prepared statement.
pub async fn rows(tx: &Transaction<'_>, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, QueryError> {
    let started = std::time::Instant::now();
    let statement = tx.prepare_cached(sql).await?;
    let result = tx.query(&statement, params).await?;
    crate::metrics::query_timed(sql, started.elapsed());
    Ok(result)
}

const COMPLETE_MONTHS: &str = "SELECT month FROM rollup_months WHERE complete AND month >= $1 AND month <= $2";

/// First days of the months overlapping `range` whose rollups are complete.
pub async fn complete_months(tx: &Transaction<'_>, range: Span) -> Result<Vec<NaiveDate>, QueryError> {
    let (first, last) = (month_of(range.start), month_of(range.end));
    Ok(rows(tx, COMPLETE_MONTHS, &[&first, &last]).await?.iter().map(|r| r.get(0)).collect())
}

// Every count query takes: $1 app, $2 span start, $3 span end, $4 event type or NULL, $5 bucket starts
// (width_bucket gives 1-based bucket numbers; a single start puts every row in bucket 1). `$key` is the
// second grouping column: `event_type`, or a constant when only buckets matter (grouping by text sorts
// with the collation, which costs more than the rest of a timeline's rollup read).
macro_rules! count_sql {
    ($key:literal) => {
        CountSql {
            // Spans whose every boundary is a whole UTC hour read the hour totals.
            rollup_hours: concat!(
                "SELECT width_bucket(hour, $5::timestamptz[]), ",
                $key,
                ", sum(events)::int8 \
                 FROM rollup_hourly \
                 WHERE app_id = $1 AND hour >= $2::timestamptz AND hour < $3::timestamptz \
                   AND ($4::text IS NULL OR event_type = $4::text) \
                 GROUP BY 1, 2"
            ),
            // Other spans read quarter-hours (zones at +5:30 / +5:45, ranges starting at :15, :30, :45).
            rollup_quarters: concat!(
                "SELECT width_bucket(r.hour + s.off, $5::timestamptz[]), ",
                $key,
                ", \
                   sum(CASE s.q WHEN 0 THEN r.q0 WHEN 1 THEN r.q1 WHEN 2 THEN r.q2 ELSE r.q3 END)::int8 \
                 FROM rollup_hourly AS r \
                 CROSS JOIN (VALUES (0, INTERVAL '0 minutes'), (1, INTERVAL '15 minutes'), \
                   (2, INTERVAL '30 minutes'), (3, INTERVAL '45 minutes')) AS s (q, off) \
                 WHERE r.app_id = $1 AND r.hour >= date_trunc('hour', $2::timestamptz, 'UTC') \
                   AND r.hour < $3::timestamptz AND ($4::text IS NULL OR r.event_type = $4::text) \
                   AND r.hour + s.off >= $2::timestamptz AND r.hour + s.off < $3::timestamptz \
                 GROUP BY 1, 2"
            ),
            raw: concat!(
                "SELECT width_bucket(created_at, $5::timestamptz[]), ",
                $key,
                ", count(*) \
                 FROM events \
                 WHERE app_id = $1 AND created_at >= $2::timestamptz AND created_at < $3::timestamptz \
                   AND ($4::text IS NULL OR event_type = $4::text) \
                 GROUP BY 1, 2"
            ),
        }
    };
}

/// One grouping's statements.
struct CountSql {
    rollup_hours: &'static str,
    rollup_quarters: &'static str,
    raw: &'static str,
}

const BY_BUCKET_AND_TYPE: CountSql = count_sql!("event_type");
const BY_BUCKET: CountSql = count_sql!("''::text");

/// How [`event_counts`] groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grouping {
    /// Per bucket and event type.
    BucketAndType,
    /// Per bucket only (the event type of every key is "").
    Bucket,
}

/// Event counts keyed by (0-based bucket index, event type); absent keys are zero.
pub type Counts = HashMap<(usize, String), i64>;

/// Counts the events of `app` (of `event_type` if given) per bucket of `bounds` (and event type, per
/// `grouping`), following `plan`. `bounds` must start at or before the plan's first instant.
pub async fn event_counts(
    tx: &Transaction<'_>,
    app: Uuid,
    event_type: Option<&str>,
    plan: &Plan,
    bounds: &[DateTime<Utc>],
    grouping: Grouping,
) -> Result<Counts, QueryError> {
    let sql = match grouping {
        Grouping::BucketAndType => &BY_BUCKET_AND_TYPE,
        Grouping::Bucket => &BY_BUCKET,
    };
    let rollups = plan.rollup.iter().map(|s| {
        let text = if hour_aligned(s, bounds) { sql.rollup_hours } else { sql.rollup_quarters };
        async move { rows(tx, text, &[&app, &s.start, &s.end, &event_type, &bounds]).await }
    });
    let raws = plan
        .raw
        .iter()
        .map(|s| async move { rows(tx, sql.raw, &[&app, &s.start, &s.end, &event_type, &bounds]).await });
    let (rollups, raws) = tokio::try_join!(try_join_all(rollups), try_join_all(raws))?;
    let mut counts = Counts::new();
    for row in rollups.iter().chain(&raws).flatten() {
        let n: i64 = row.get(2);
        if n != 0 {
            *counts.entry((bucket_index(row.get(0)), row.get(1))).or_default() += n;
        }
    }
    Ok(counts)
}

/// width_bucket's 1-based number as an index (0 cannot occur: the first bound precedes every row).
fn bucket_index(b: i32) -> usize {
    usize::try_from(b.max(1) - 1).expect("non-negative")
}

/// True when the span's ends and every bucket start inside it are whole UTC hours.
fn hour_aligned(span: &Span, bounds: &[DateTime<Utc>]) -> bool {
    let first = bounds.partition_point(|b| *b <= span.start);
    is_aligned(span.start, HOUR)
        && is_aligned(span.end, HOUR)
        && bounds[first..].iter().take_while(|b| **b < span.end).all(|b| is_aligned(*b, HOUR))
}

/// Breakdown dimensions, in the order of [`Breakdowns`]' arrays.
pub const DIMS: [&str; 3] = ["device", "browser", "os"];

/// Per event type, per dimension of [`DIMS`]: counts by value ("" = unknown).
pub type Breakdowns = HashMap<String, [HashMap<String, i64>; 3]>;

const ROLLUP_DIMS: &str = "SELECT event_type, dim, value, sum(events)::int8 \
     FROM rollup_hourly_dims \
     WHERE app_id = $1 AND hour >= $2::timestamptz AND hour < $3::timestamptz \
       AND ($4::text IS NULL OR event_type = $4::text) \
     GROUP BY 1, 2, 3";

const RAW_DIMS: &str = "SELECT event_type, COALESCE(device, ''), COALESCE(browser, ''), COALESCE(os, ''), count(*) \
     FROM events \
     WHERE app_id = $1 AND created_at >= $2::timestamptz AND created_at < $3::timestamptz \
       AND ($4::text IS NULL OR event_type = $4::text) \
     GROUP BY 1, 2, 3, 4";

/// Device / browser / os counts per event type following `plan`, whose rollup spans must be whole
/// UTC hours (the breakdown rollup is hourly).
pub async fn breakdowns(
    tx: &Transaction<'_>,
    app: Uuid,
    event_type: Option<&str>,
    plan: &Plan,
) -> Result<Breakdowns, QueryError> {
    let rollups =
        plan.rollup.iter().map(|s| async move { rows(tx, ROLLUP_DIMS, &[&app, &s.start, &s.end, &event_type]).await });
    let raws = plan.raw.iter().map(|s| async move { rows(tx, RAW_DIMS, &[&app, &s.start, &s.end, &event_type]).await });
    let (rollups, raws) = tokio::try_join!(try_join_all(rollups), try_join_all(raws))?;
    let mut out = Breakdowns::new();
    for row in rollups.iter().flatten() {
        let (ty, dim, value, n): (String, &str, String, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
        if let Some(d) = DIMS.iter().position(|x| *x == dim) {
            *out.entry(ty).or_default()[d].entry(value).or_default() += n;
        }
    }
    for row in raws.iter().flatten() {
        let entry = out.entry(row.get(0)).or_default();
        let n: i64 = row.get(4);
        for (d, counts) in entry.iter_mut().enumerate() {
            *counts.entry(row.get(d + 1)).or_default() += n;
        }
    }
    Ok(out)
}
