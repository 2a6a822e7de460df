//! Multi-tier rollups (`rollup_tiers`, see `sql/migrations/V4__rollup_tiers.sql` and
//! `V5__quarter_tiers.sql`): per (app, UTC hour, day or month, event type) the event count, sketches
//! of distinct users and sessions, and device / browser / os breakdowns; and per (app, UTC quarter
//! hour) the same for every event type together, so zones at +5:30 and +5:45 read rollups too.
//!
//! - Ingestion appends one delta row (tier 0) per (app, hour, event type) and per (app, quarter hour)
//!   for all types, in the same transaction as the events ([`deltas`], [`INSERT_DELTAS`]).
//! - The compactor ([`compact`], run every `STRATA_TIER_COMPACT_INTERVAL` by [`compact_loop`]) deletes
//!   deltas and merges them into the quarter-hour (all types only), hour, day and month rows in one
//!   transaction, under an advisory lock, so one compactor runs per database and every delta is
//!   counted either as itself or in the merged rows, never both.
//! - Rebuilds ([`rebuild_in`], part of `rebuild::recompute`) recompute hours and quarter hours from raw
//!   rows, then the days and months holding them from the hours.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Datelike, Months, NaiveDate, TimeDelta, Utc};
use deadpool_postgres::Pool;
use postgres_types::ToSql;
use tokio_postgres::{Row, Transaction};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::sketch::{CorruptSketch, Sketch};
use crate::ingest::event::EventRow;

/// A writer's delta of one hour (one quarter hour for all types together).
pub const DELTA: i16 = 0;
/// A merged UTC hour.
pub const HOUR: i16 = 1;
/// A merged UTC day.
pub const DAY: i16 = 2;
/// A merged UTC month.
pub const MONTH: i16 = 3;
/// A merged UTC quarter hour, of every event type together only (event type "").
pub const QUARTER: i16 = 4;

/// Advisory lock key held by the compactor and by rebuilds ("strata tiers").
const LOCK_KEY: i64 = 0x5354_5241_5449_4552;

/// Breakdown dimensions, in the order of [`Agg::dims`].
pub const DIMS: [&str; 3] = ["device", "browser", "os"];

/// Counts by dimension value ("" = unknown), per dimension of [`DIMS`].
pub type Dims = [HashMap<String, i64>; 3];

/// What one rollup row, or a sum of rows, says.
#[derive(Debug, Clone, Default)]
pub struct Agg {
    /// Events.
    pub events: i64,
    /// Distinct users.
    pub users: Sketch,
    /// Distinct sessions.
    pub sessions: Sketch,
    /// Breakdowns.
    pub dims: Dims,
}

impl Agg {
    /// Adds another aggregate.
    pub fn absorb(&mut self, other: &Agg) {
        self.events += other.events;
        self.users.merge(&other.users);
        self.sessions.merge(&other.sessions);
        for (mine, theirs) in self.dims.iter_mut().zip(&other.dims) {
            for (value, n) in theirs {
                *mine.entry(value.clone()).or_default() += n;
            }
        }
    }

    /// Adds a stored row's `events, users, sessions, dims` columns, the first at index `at`.
    pub fn absorb_columns(&mut self, row: &Row, at: usize) -> Result<(), CorruptSketch> {
        let dims: serde_json::Value = row.get(at + 3);
        self.absorb_encoded(row.get(at), row.get(at + 1), row.get(at + 2), &dims)
    }

    /// Adds the encoded columns of a stored row.
    fn absorb_encoded(
        &mut self,
        events: i64,
        users: &[u8],
        sessions: &[u8],
        dims: &serde_json::Value,
    ) -> Result<(), CorruptSketch> {
        self.events += events;
        self.users.merge_encoded(users)?;
        self.sessions.merge_encoded(sessions)?;
        if let serde_json::Value::Object(map) = dims {
            for (d, name) in DIMS.iter().enumerate() {
                if let Some(serde_json::Value::Object(values)) = map.get(*name) {
                    for (value, n) in values {
                        *self.dims[d].entry(value.clone()).or_default() += n.as_i64().unwrap_or(0);
                    }
                }
            }
        }
        Ok(())
    }

    fn dims_json(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for (d, name) in DIMS.iter().enumerate() {
            if !self.dims[d].is_empty() {
                let values: serde_json::Map<String, serde_json::Value> =
                    self.dims[d].iter().map(|(v, n)| (v.clone(), (*n).into())).collect();
                out.insert((*name).to_owned(), values.into());
            }
        }
        out.into()
    }
}

/// The start of the tier-`tier` period holding `t`.
pub fn tier_start(tier: i16, t: DateTime<Utc>) -> DateTime<Utc> {
    let secs = match tier {
        QUARTER => 900,
        DELTA | HOUR => 3600,
        DAY => 86_400,
        _ => {
            let first = NaiveDate::from_ymd_opt(t.year(), t.month(), 1).expect("day 1 exists");
            return first.and_hms_opt(0, 0, 0).expect("midnight").and_utc();
        }
    };
    DateTime::from_timestamp(t.timestamp().div_euclid(secs) * secs, 0).expect("in range")
}

/// The end of the tier-`tier` period starting at `start`.
pub fn tier_end(tier: i16, start: DateTime<Utc>) -> DateTime<Utc> {
    match tier {
        QUARTER => start + TimeDelta::minutes(15),
        DELTA | HOUR => start + TimeDelta::hours(1),
        DAY => start + TimeDelta::days(1),
        _ => start.checked_add_months(Months::new(1)).expect("months within chrono's calendar"),
    }
}

type Key = (Uuid, DateTime<Utc>, String);

/// A merged row's key: app, tier, period start, event type.
type MergedKey = (Uuid, i16, DateTime<Utc>, String);

/// [`MergedKey`]s as columns for `unnest`.
type KeyColumns<'a> = (Vec<Uuid>, Vec<i16>, Vec<DateTime<Utc>>, Vec<&'a str>);

/// The deltas of `rows` (new events of one group commit): per (app, hour, type) and per (app, quarter
/// hour) with type "" (see [`delta_start`]).
pub fn deltas(rows: &[&EventRow]) -> BTreeMap<Key, Agg> {
    let mut out: BTreeMap<Key, Agg> = BTreeMap::new();
    for r in rows {
        let user = r.user_id.as_deref().map(super::sketch::hash);
        let session = r.session_id.as_deref().map(super::sketch::hash);
        let ua = r.ua.as_deref();
        let values =
            [ua.map(|u| u.device.as_str()), ua.and_then(|u| u.browser.as_deref()), ua.and_then(|u| u.os.as_deref())];
        for ty in [r.event_type.as_str(), ""] {
            let agg = out.entry((r.app_id, delta_start(ty, r.created_at), ty.to_owned())).or_default();
            agg.events += 1;
            if let Some(h) = user {
                agg.users.insert(h);
            }
            if let Some(h) = session {
                agg.sessions.insert(h);
            }
            if !ty.is_empty() {
                for (d, v) in values.iter().enumerate() {
                    *agg.dims[d].entry(v.unwrap_or("").to_owned()).or_default() += 1;
                }
            }
        }
    }
    out
}

/// Where a delta of event type `ty` holding `t` starts: its UTC quarter hour for "" (every type
/// together, merged into quarter rows too), its UTC hour otherwise.
pub fn delta_start(ty: &str, t: DateTime<Utc>) -> DateTime<Utc> {
    tier_start(if ty.is_empty() { QUARTER } else { HOUR }, t)
}

/// The merged tiers a delta of event type `ty` is added to.
fn merged_tiers(ty: &str) -> &'static [i16] {
    if ty.is_empty() {
        &[QUARTER, HOUR, DAY, MONTH]
    } else {
        &[HOUR, DAY, MONTH]
    }
}

/// Inserts writer deltas (tier 0) from columns (see [`DeltaColumns`]).
pub const INSERT_DELTAS: &str = "INSERT INTO rollup_tiers (app_id, tier, start, event_type, events, users, sessions, \
       dims) \
     SELECT a, 0, s, t, n, u, v, d \
     FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::int8[], $5::bytea[], $6::bytea[], $7::jsonb[]) \
       AS x(a, s, t, n, u, v, d)";

/// The parameters of [`INSERT_DELTAS`].
#[derive(Debug, Default)]
pub struct DeltaColumns {
    app: Vec<Uuid>,
    start: Vec<DateTime<Utc>>,
    event_type: Vec<String>,
    events: Vec<i64>,
    users: Vec<Vec<u8>>,
    sessions: Vec<Vec<u8>>,
    dims: Vec<serde_json::Value>,
}

impl DeltaColumns {
    /// Encodes `deltas` (see [`deltas`]).
    pub fn of(deltas: BTreeMap<Key, Agg>) -> DeltaColumns {
        let mut c = DeltaColumns::default();
        for ((app, start, ty), mut agg) in deltas {
            c.app.push(app);
            c.start.push(start);
            c.event_type.push(ty);
            c.events.push(agg.events);
            c.users.push(agg.users.encode());
            c.sessions.push(agg.sessions.encode());
            c.dims.push(agg.dims_json());
        }
        c
    }

    /// The statement's parameters.
    pub fn params(&self) -> [&(dyn ToSql + Sync); 7] {
        [&self.app, &self.start, &self.event_type, &self.events, &self.users, &self.sessions, &self.dims]
    }
}

/// Failures of compaction and rebuilds.
#[derive(Debug, thiserror::Error)]
pub enum TierError {
    /// A statement failed.
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    /// A stored sketch could not be read.
    #[error(transparent)]
    Corrupt(#[from] CorruptSketch),
}

const TAKE_DELTAS: &str = "DELETE FROM rollup_tiers WHERE ctid = ANY(ARRAY( \
       SELECT ctid FROM rollup_tiers WHERE tier = 0 LIMIT $1)) \
     RETURNING app_id, start, event_type, events, users, sessions, dims";

const READ_MERGED: &str = "SELECT r.app_id, r.tier, r.start, r.event_type, r.events, r.users, r.sessions, r.dims \
     FROM unnest($1::uuid[], $2::int2[], $3::timestamptz[], $4::text[]) AS k(app_id, tier, start, event_type) \
     JOIN rollup_tiers AS r ON r.app_id = k.app_id AND r.tier = k.tier AND r.start = k.start \
       AND r.event_type = k.event_type \
     WHERE r.tier > 0";

const UPSERT_MERGED: &str =
    "INSERT INTO rollup_tiers (app_id, tier, start, event_type, events, users, sessions, dims) \
     SELECT * FROM unnest($1::uuid[], $2::int2[], $3::timestamptz[], $4::text[], $5::int8[], $6::bytea[], \
       $7::bytea[], $8::jsonb[]) \
     ON CONFLICT (app_id, tier, start, event_type) WHERE tier > 0 DO UPDATE SET events = EXCLUDED.events, \
       users = EXCLUDED.users, sessions = EXCLUDED.sessions, dims = EXCLUDED.dims";

/// Deltas merged per compaction transaction at most.
const COMPACT_BATCH: i64 = 50_000;

/// Merges up to [`COMPACT_BATCH`] deltas into the hour, day and month rows, unless another
/// compactor or a rebuild holds the lock (then `None`). Returns the deltas merged.
pub async fn compact(client: &mut tokio_postgres::Client) -> Result<Option<u64>, TierError> {
    let tx = client.transaction().await?;
    let locked: bool = tx.query_one("SELECT pg_try_advisory_xact_lock($1)", &[&LOCK_KEY]).await?.get(0);
    if !locked {
        return Ok(None);
    }
    let merged = compact_in(&tx, COMPACT_BATCH).await?;
    tx.commit().await?;
    Ok(Some(merged))
}

/// Inside `tx`, which holds the lock: merges up to `limit` deltas.
async fn compact_in(tx: &Transaction<'_>, limit: i64) -> Result<u64, TierError> {
    let taken = tx.query(TAKE_DELTAS, &[&limit]).await?;
    if taken.is_empty() {
        return Ok(0);
    }
    let mut sums: HashMap<MergedKey, Agg> = HashMap::new();
    for row in &taken {
        let mut agg = Agg::default();
        agg.absorb_columns(row, 3)?;
        let (app, start, ty): (Uuid, DateTime<Utc>, String) = (row.get(0), row.get(1), row.get(2));
        for &tier in merged_tiers(&ty) {
            sums.entry((app, tier, tier_start(tier, start), ty.clone())).or_default().absorb(&agg);
        }
    }
    let keys: Vec<_> = sums.keys().cloned().collect();
    let (a, t, s, e) = columns(&keys);
    for row in tx.query(READ_MERGED, &[&a, &t, &s, &e]).await? {
        let key = (row.get(0), row.get(1), row.get(2), row.get(3));
        if let Some(agg) = sums.get_mut(&key) {
            agg.absorb_columns(&row, 4)?;
        }
    }
    write_merged(tx, sums).await?;
    Ok(taken.len() as u64)
}

fn columns(keys: &[MergedKey]) -> KeyColumns<'_> {
    let mut cols = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (app, tier, start, ty) in keys {
        cols.0.push(*app);
        cols.1.push(*tier);
        cols.2.push(*start);
        cols.3.push(ty.as_str());
    }
    cols
}

async fn write_merged(tx: &Transaction<'_>, rows: HashMap<MergedKey, Agg>) -> Result<(), tokio_postgres::Error> {
    let mut rows: Vec<_> = rows.into_iter().collect();
    rows.sort_by(|x, y| x.0.cmp(&y.0));
    for chunk in rows.chunks_mut(2_000) {
        let keys: Vec<_> = chunk.iter().map(|(k, _)| k.clone()).collect();
        let (a, t, s, e) = columns(&keys);
        let mut events = Vec::with_capacity(chunk.len());
        let (mut users, mut sessions, mut dims) = (Vec::new(), Vec::new(), Vec::new());
        for (_, agg) in chunk.iter_mut() {
            events.push(agg.events);
            users.push(agg.users.encode());
            sessions.push(agg.sessions.encode());
            dims.push(agg.dims_json());
        }
        let params: [&(dyn ToSql + Sync); 8] = [&a, &t, &s, &e, &events, &users, &sessions, &dims];
        tx.execute(UPSERT_MERGED, &params).await?;
    }
    Ok(())
}

/// Runs [`compact`] every `interval` until `stop`; logs failures and carries on.
pub async fn compact_loop(pool: Pool, interval: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut client = match pool.get().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "tier compaction: no database connection");
                continue;
            }
        };
        loop {
            match compact(&mut client).await {
                Ok(Some(n)) if n as i64 == COMPACT_BATCH => continue,
                Ok(Some(n)) => {
                    if n > 0 {
                        tracing::debug!(deltas = n, "tier compaction");
                    }
                    break;
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "tier compaction failed");
                    break;
                }
            }
        }
    }
}

const DELETE_HOURS: &str = "DELETE FROM rollup_tiers \
     WHERE tier = 1 AND start >= $1 AND start < $2 AND ($3::uuid IS NULL OR app_id = $3)";

// Hours from raw rows; the breakdowns from `rollup_hourly_dims`, which `rebuild::recompute` rebuilt
// for the same hours just before. Hashes: see `sketch::hash`.
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

/// Inside `tx` (which holds `rebuild::lock`, so no writer commits meanwhile, and has just rebuilt
/// `rollup_hourly_dims` for the same hours): recomputes the tiers of `[start, end)` (whole UTC
/// hours) for `app` or all apps. Returns the hour rows written.
pub async fn rebuild_in(
    tx: &Transaction<'_>,
    app: Option<Uuid>,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<u64, TierError> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY]).await?;
    // No deltas may remain beside the merged rows recomputed below.
    while compact_in(tx, COMPACT_BATCH).await? as i64 == COMPACT_BATCH {}
    tx.execute(DELETE_HOURS, &[&start, &end, &app]).await?;
    let hours = tx.execute(INSERT_HOURS, &[&start, &end, &app]).await?;
    tx.execute(DELETE_QUARTERS, &[&start, &end, &app]).await?;
    tx.execute(INSERT_QUARTERS, &[&start, &end, &app]).await?;
    let (day_lo, day_hi) = (tier_start(DAY, start), tier_end(DAY, tier_start(DAY, end - TimeDelta::seconds(1))));
    regroup(tx, app, HOUR, DAY, day_lo, day_hi).await?;
    let (month_lo, month_hi) =
        (tier_start(MONTH, start), tier_end(MONTH, tier_start(MONTH, end - TimeDelta::seconds(1))));
    regroup(tx, app, DAY, MONTH, month_lo, month_hi).await?;
    Ok(hours)
}

/// Replaces the `to`-tier rows of `[lo, hi)` by the sums of the `from`-tier rows there.
async fn regroup(
    tx: &Transaction<'_>,
    app: Option<Uuid>,
    from: i16,
    to: i16,
    lo: DateTime<Utc>,
    hi: DateTime<Utc>,
) -> Result<(), TierError> {
    let rows: Vec<Row> = tx.query(READ_TIER, &[&from, &lo, &hi, &app]).await?;
    let mut sums: HashMap<MergedKey, Agg> = HashMap::new();
    for row in &rows {
        let key = (row.get(0), to, tier_start(to, row.get(1)), row.get(2));
        sums.entry(key).or_default().absorb_columns(row, 3)?;
    }
    tx.execute(DELETE_TIER, &[&to, &lo, &hi, &app]).await?;
    write_merged(tx, sums).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn tier_periods_are_utc_hours_days_and_months() {
        let t = at("2024-02-29T13:45:10Z");
        assert_eq!(tier_start(HOUR, t), at("2024-02-29T13:00:00Z"));
        assert_eq!(tier_start(DAY, t), at("2024-02-29T00:00:00Z"));
        assert_eq!(tier_start(MONTH, t), at("2024-02-01T00:00:00Z"));
        assert_eq!(tier_end(MONTH, at("2024-02-01T00:00:00Z")), at("2024-03-01T00:00:00Z"));
        assert_eq!(tier_end(MONTH, at("2024-12-01T00:00:00Z")), at("2025-01-01T00:00:00Z"));
        assert_eq!(tier_end(DAY, at("2024-12-31T00:00:00Z")), at("2025-01-01T00:00:00Z"));
        assert_eq!(tier_start(HOUR, at("1969-12-31T23:59:59Z")), at("1969-12-31T23:00:00Z"));
    }

    #[test]
    fn breakdowns_round_trip_through_json() {
        let mut a = Agg::default();
        a.dims[0].insert("desktop".into(), 3);
        a.dims[2].insert(String::new(), 2);
        let json = a.dims_json();
        assert_eq!(json, serde_json::json!({"device": {"desktop": 3}, "os": {"": 2}}));
        let mut b = Agg::default();
        b.absorb_encoded(5, &[], &[], &json).unwrap();
        assert_eq!(b.events, 5);
        assert_eq!(b.dims, a.dims);
    }
}
