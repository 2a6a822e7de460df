//! [`Catalog`]: what PostgreSQL says about the `events` partitions, read by [`read_catalog`].
//!
//! The planner is pure, so everything it and the health report need is read here in a few catalog
//! queries: bounds (from `pg_get_expr(relpartbound)`), statistics (`pg_stat_user_tables`,
//! `pg_class.reltuples`), sizes, the DEFAULT partition's rows per month, and detached leftovers.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::{Client, Row};

use crate::error::Error;
use crate::month::Month;

/// Statistics of one table, as the planner and the DBA endpoints need them.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TableStats {
    /// `pg_class.reltuples`; `None` until the table is first vacuumed or analyzed.
    pub row_estimate: Option<i64>,
    /// `pg_stat_user_tables.n_live_tup`.
    pub live_rows: i64,
    /// `pg_stat_user_tables.n_mod_since_analyze`: rows changed since statistics were gathered.
    pub mod_since_analyze: i64,
    /// Last manual ANALYZE.
    pub last_analyze: Option<DateTime<Utc>>,
    /// Last ANALYZE by autovacuum.
    pub last_autoanalyze: Option<DateTime<Utc>>,
    /// Table, indexes and TOAST, in bytes.
    pub total_bytes: i64,
    /// Indexes, in bytes.
    pub index_bytes: i64,
}

impl TableStats {
    /// The later of the manual and automatic ANALYZE times.
    pub fn last_analyzed(&self) -> Option<DateTime<Utc>> {
        self.last_analyze.max(self.last_autoanalyze)
    }
}

/// One attached, non-default partition of `events`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Partition {
    /// Table name (unqualified).
    pub name: String,
    /// The month, when the name is `events_YYYY_MM` *and* the bounds are exactly that month.
    /// Only such partitions are managed (retention never touches others).
    pub month: Option<Month>,
    /// Inclusive lower bound; `None` for MINVALUE.
    pub from: Option<DateTime<Utc>>,
    /// Exclusive upper bound; `None` for MAXVALUE.
    pub to: Option<DateTime<Utc>>,
    /// The bound as PostgreSQL prints it.
    pub bound: String,
    /// A `DETACH ... CONCURRENTLY` was interrupted and must be finalized.
    pub detach_pending: bool,
    /// Statistics and sizes.
    pub stats: TableStats,
}

impl Partition {
    /// Whether the partition's range contains all of `month`.
    pub fn covers(&self, month: Month) -> bool {
        self.from.is_none_or(|f| f <= month.start()) && self.to.is_none_or(|t| t >= month.end())
    }

    /// Whether the partition's range shares any instant with `month`.
    pub fn overlaps(&self, month: Month) -> bool {
        self.from.is_none_or(|f| f < month.end()) && self.to.is_none_or(|t| t > month.start())
    }
}

/// Rows of the DEFAULT partition that fall in one month.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MonthRows {
    /// The month (UTC).
    pub month: Month,
    /// Exact row count.
    pub rows: i64,
}

/// A DEFAULT partition a DBA attached (Strata itself never makes one).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DefaultPartition {
    /// Table name (unqualified).
    pub name: String,
    /// Exact row count.
    pub rows: i64,
    /// Rows per month, for months a partition can be made for (others count only in `rows`).
    pub months: Vec<MonthRows>,
    /// Statistics and sizes.
    pub stats: TableStats,
}

/// The state of `events` partitioning.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Catalog {
    /// Attached non-default partitions, ordered by lower bound.
    pub partitions: Vec<Partition>,
    /// The DEFAULT partition, if one is attached.
    pub default_partition: Option<DefaultPartition>,
    /// Statistics of the partitioned parent (only the ANALYZE times are meaningful).
    pub parent: TableStats,
    /// Tables named `events_YYYY_MM` in the same schema that are not attached (detached months).
    pub detached: Vec<Month>,
}

impl Catalog {
    /// The managed partition of `month`, if attached.
    pub fn month_partition(&self, month: Month) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.month == Some(month))
    }

    /// Whether some partition (managed or hand-made) holds all of `month`.
    pub fn covers(&self, month: Month) -> bool {
        self.partitions.iter().any(|p| p.covers(month))
    }

    /// Whether some partition holds part of `month` (creating it would fail).
    pub fn overlaps(&self, month: Month) -> bool {
        self.partitions.iter().any(|p| p.overlaps(month))
    }

    /// Rows in the DEFAULT partition (0 when there is none).
    pub fn default_rows(&self) -> i64 {
        self.default_partition.as_ref().map_or(0, |d| d.rows)
    }
}

// Bounds are cut out of pg_get_expr()'s text and cast back to timestamptz in the same session, so
// the session's TimeZone and DateStyle (which shape the text) cannot make us misread them.
const PARTITIONS_SQL: &str = r"
WITH p AS (
    SELECT c.oid, c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound, i.inhdetachpending,
           regexp_match(pg_get_expr(c.relpartbound, c.oid),
                        '^FOR VALUES FROM \((.*)\) TO \((.*)\)$') AS r,
           c.reltuples
    FROM pg_inherits i
    JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'events'::regclass
)
SELECT p.relname::text AS name, p.bound, p.inhdetachpending AS detach_pending,
       CASE WHEN p.r[1] ~ '^''[0-9][^'']*''$' THEN btrim(p.r[1], '''')::timestamptz END AS lower,
       CASE WHEN p.r[2] ~ '^''[0-9][^'']*''$' THEN btrim(p.r[2], '''')::timestamptz END AS upper,
       CASE WHEN p.reltuples < 0 THEN NULL ELSE p.reltuples::int8 END AS row_estimate,
       COALESCE(s.n_live_tup, 0) AS live_rows,
       COALESCE(s.n_mod_since_analyze, 0) AS mod_since_analyze,
       s.last_analyze, s.last_autoanalyze,
       pg_total_relation_size(p.oid) AS total_bytes, pg_indexes_size(p.oid) AS index_bytes,
       p.oid::regclass::text AS qualified
FROM p
LEFT JOIN pg_stat_user_tables s ON s.relid = p.oid
ORDER BY lower NULLS FIRST, name";

const PARENT_SQL: &str = r"
SELECT NULL::int8 AS row_estimate, COALESCE(s.n_live_tup, 0) AS live_rows,
       COALESCE(s.n_mod_since_analyze, 0) AS mod_since_analyze,
       s.last_analyze, s.last_autoanalyze,
       pg_total_relation_size('events'::regclass) AS total_bytes,
       pg_indexes_size('events'::regclass) AS index_bytes
FROM (SELECT 1) AS one
LEFT JOIN pg_stat_user_tables s ON s.relid = 'events'::regclass";

const DETACHED_SQL: &str = r"
SELECT c.relname::text
FROM pg_class c
WHERE c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = 'events'::regclass)
  AND c.relkind = 'r' AND NOT c.relispartition AND c.relname LIKE 'events\_%'
ORDER BY 1";

/// Reads the partitions of `events` with their bounds and statistics, the DEFAULT partition (with
/// an exact count of its rows per month: it is expected to be empty or small) and detached months.
#[tracing::instrument(skip_all)]
pub async fn read_catalog(client: &Client) -> Result<Catalog, Error> {
    read_partitions(client, true).await
}

/// The partitions only (no parent statistics, no detached tables, and the DEFAULT partition's
/// rows left uncounted at 0): what DDL needs to check bounds, cheaply.
pub(crate) async fn read_bounds(client: &Client) -> Result<Catalog, Error> {
    read_partitions(client, false).await
}

async fn read_partitions(client: &Client, full: bool) -> Result<Catalog, Error> {
    let ctx = "reading the partition catalog";
    let rows = client.query(PARTITIONS_SQL, &[]).await.map_err(Error::db(ctx))?;
    let mut catalog = Catalog::default();
    for row in &rows {
        let bound: String = row.get("bound");
        if bound == "DEFAULT" {
            let qualified: String = row.get("qualified");
            let (rows, months) = if full { default_rows(client, &qualified).await? } else { (0, Vec::new()) };
            catalog.default_partition =
                Some(DefaultPartition { name: row.get("name"), rows, months, stats: stats(row) });
        } else {
            catalog.partitions.push(partition(row, bound));
        }
    }
    if !full {
        return Ok(catalog);
    }
    let parent = client.query_one(PARENT_SQL, &[]).await.map_err(Error::db(ctx))?;
    catalog.parent = stats(&parent);
    let detached = client.query(DETACHED_SQL, &[]).await.map_err(Error::db(ctx))?;
    catalog.detached = detached.iter().filter_map(|r| Month::parse_partition_name(r.get(0))).collect();
    Ok(catalog)
}

fn partition(row: &Row, bound: String) -> Partition {
    let name: String = row.get("name");
    let from: Option<DateTime<Utc>> = row.get("lower");
    let to: Option<DateTime<Utc>> = row.get("upper");
    let month = Month::parse_partition_name(&name).filter(|m| from == Some(m.start()) && to == Some(m.end()));
    Partition { name, month, from, to, bound, detach_pending: row.get("detach_pending"), stats: stats(row) }
}

fn stats(row: &Row) -> TableStats {
    TableStats {
        row_estimate: row.get("row_estimate"),
        live_rows: row.get("live_rows"),
        mod_since_analyze: row.get("mod_since_analyze"),
        last_analyze: row.get("last_analyze"),
        last_autoanalyze: row.get("last_autoanalyze"),
        total_bytes: row.get("total_bytes"),
        index_bytes: row.get("index_bytes"),
    }
}

/// Exact rows of the DEFAULT partition per UTC month. `qualified` is the partition's
/// `oid::regclass::text`, which PostgreSQL itself quotes, so it is safe to splice.
async fn default_rows(client: &Client, qualified: &str) -> Result<(i64, Vec<MonthRows>), Error> {
    let sql = format!(
        "SELECT EXTRACT(YEAR FROM created_at AT TIME ZONE 'UTC')::int4 AS y, \
                EXTRACT(MONTH FROM created_at AT TIME ZONE 'UTC')::int4 AS m, count(*) AS n \
         FROM {qualified} GROUP BY 1, 2 ORDER BY 1, 2"
    );
    let rows = client.query(sql.as_str(), &[]).await.map_err(Error::db("counting rows of the default partition"))?;
    let mut total = 0;
    let mut months = Vec::new();
    for row in rows {
        let (y, m, n): (i32, i32, i64) = (row.get(0), row.get(1), row.get(2));
        total += n;
        if let Some(month) = u32::try_from(m).ok().and_then(|m| Month::new(y, m)) {
            months.push(MonthRows { month, rows: n });
        }
    }
    Ok((total, months))
}
