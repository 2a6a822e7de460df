//! Executing a plan against the multi-tier rollups (`rollup_tiers`, see [`crate::rollup`]) and the raw
//! rows: events, distinct users and sessions, and breakdowns per bucket (and per event type).
//!
//! The planner gives whole UTC hours of months whose tiers are complete (never straddling a bucket
//! start) and raw spans for the rest. Each bucket's hour-aligned part is covered greedily by the
//! largest tier periods inside it (UTC months, then days, then hours), so a 90-day daily timeline in
//! UTC reads 90 day rows; in other zones days are made of hours. Uncompacted writer deltas of the
//! covered hours are added to the piece holding their hour; raw spans add their rows' counts and ids.
//! Distinct counts merge sketches (see [`crate::rollup::sketch`]): exact while small, HyperLogLog beyond.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use deadpool_postgres::Transaction;
use postgres_types::ToSql;
use uuid::Uuid;

use super::plan::{month_of, plan, Plan, Span, HOUR, QUARTER_HOUR};
use super::store::rows;
use super::{QueryError, Source};
use crate::rollup::agg::Agg;
use crate::rollup::tier::Tier;

/// What to read.
#[derive(Debug, Clone, Copy)]
pub struct Select<'a> {
    /// Only this event type.
    pub event_type: Option<&'a str>,
    /// Per event type (keys carry the type) or all types together (keys carry "").
    pub per_type: bool,
    /// Distinct users.
    pub users: bool,
    /// Distinct sessions.
    pub sessions: bool,
    /// Breakdowns.
    pub dims: bool,
}

/// Aggregates keyed by (0-based bucket index, event type or ""); absent keys had no events.
pub type Aggs = HashMap<(usize, String), Agg>;

/// One tier period answering part of one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    tier: Tier,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    bucket: usize,
}

const TRUSTED_MONTHS: &str =
    "SELECT month, quarters FROM rollup_months WHERE complete AND tiers AND month >= $1 AND month <= $2";

/// A MERGED statement: its event type column, the condition on `r.event_type`, and a guard on the
/// parameters it does not use (keeping all nine typed, so every variant takes the same parameters).
macro_rules! merged {
    ($type_column:literal, $type_condition:literal, $guard:literal) => {
        concat!(
            "SELECT r.tier, r.start, ",
            $type_column,
            ", r.events, \
               CASE WHEN $6 THEN r.users ELSE ''::bytea END, CASE WHEN $7 THEN r.sessions ELSE ''::bytea END, \
               CASE WHEN $8 THEN r.dims ELSE '{}'::jsonb END \
             FROM unnest($2::int2[], $3::timestamptz[], $9::timestamptz[]) AS k(tier, lo, hi) \
             CROSS JOIN LATERAL ( \
               SELECT * FROM rollup_tiers AS r \
               WHERE r.app_id = $1 AND r.tier = k.tier AND r.start >= k.lo AND r.start < k.hi \
                 AND r.tier > 0 AND r.event_type ",
            $type_condition,
            " OFFSET 0) AS r",
            $guard
        )
    };
}

// $1 app, $2/$3/$9 tier, start and end of each run of adjacent pieces of one tier (a 90-day daily
// timeline in New York is one run of 2,160 hours: one index range scan, not 2,160 probes; `OFFSET 0`
// keeps each run a parameterised range scan rather than a join over all of the app's rows), $4 the one
// event type read, $5 per type, $6 users, $7 sessions, $8 breakdowns. Unwanted columns are replaced by
// constants, so their values are never read. The type is compared in the index, so other types' rows
// are never fetched from the heap.
const MERGED: &str = merged!("CASE WHEN $5 THEN r.event_type ELSE '' END", "= $4::text", "");

// As MERGED, every event type together ($4 is NULL, $5 false): the literal lets a generic plan use the
// partial index of these rows.
const MERGED_ALL_TYPES: &str = merged!("''", "= ''", " WHERE $4::text IS NULL AND NOT $5");

// As MERGED, every event type separately ($4 is NULL, $5 true).
const MERGED_PER_TYPE: &str = merged!("r.event_type", "> ''", " WHERE $4::text IS NULL AND $5");

// $1 app, $2/$3 hour range, then as MERGED.
const DELTAS: &str = "SELECT r.start, CASE WHEN $5 THEN r.event_type ELSE '' END, r.events, \
       CASE WHEN $6 THEN r.users ELSE ''::bytea END, CASE WHEN $7 THEN r.sessions ELSE ''::bytea END, \
       CASE WHEN $8 THEN r.dims ELSE '{}'::jsonb END \
     FROM rollup_tiers AS r \
     WHERE r.app_id = $1 AND r.tier = 0 AND r.start >= $2::timestamptz AND r.start < $3::timestamptz \
       AND CASE WHEN $5 THEN r.event_type <> '' AND ($4::text IS NULL OR r.event_type = $4::text) \
         ELSE r.event_type = COALESCE($4::text, '') END";

// $1 app, $2/$3 the raw spans' starts and ends, $4 event type or NULL, $5 bucket starts, $6 per type.
// One statement for every raw span: a zone at +5:30 has a raw half hour at each of its buckets' starts,
// and 90 statements cost far more than 90 index range scans in one. `OFFSET 0` keeps the lateral
// subquery a parameterised scan per span (index range scan, partitions pruned at run time); pulled up
// into a join, the planner may scan every row of the app once and filter it against every span.
const RAW: &str = "SELECT width_bucket(e.created_at, $5::timestamptz[]), \
       CASE WHEN $6 THEN e.event_type ELSE '' END, count(*), \
       array_agg(DISTINCT e.user_id) FILTER (WHERE e.user_id IS NOT NULL), \
       array_agg(DISTINCT e.session_id) FILTER (WHERE e.session_id IS NOT NULL) \
     FROM unnest($2::timestamptz[], $3::timestamptz[]) AS s(lo, hi) \
     CROSS JOIN LATERAL ( \
       SELECT created_at, event_type, user_id, session_id FROM events \
       WHERE app_id = $1 AND created_at >= s.lo AND created_at < s.hi \
         AND ($4::text IS NULL OR event_type = $4::text) OFFSET 0) AS e \
     GROUP BY 1, 2";

const RAW_DIMS: &str = "SELECT width_bucket(e.created_at, $5::timestamptz[]), \
       CASE WHEN $6 THEN e.event_type ELSE '' END, \
       COALESCE(e.device, ''), COALESCE(e.browser, ''), COALESCE(e.os, ''), count(*) \
     FROM unnest($2::timestamptz[], $3::timestamptz[]) AS s(lo, hi) \
     CROSS JOIN LATERAL ( \
       SELECT created_at, event_type, device, browser, os FROM events \
       WHERE app_id = $1 AND created_at >= s.lo AND created_at < s.hi \
         AND ($4::text IS NULL OR event_type = $4::text) OFFSET 0) AS e \
     GROUP BY 1, 2, 3, 4, 5";

/// Aggregates `app`'s events in `range` per bucket of `bounds` (sorted starts, the first at or before
/// `range.start`), as `select` asks.
pub async fn aggregate(
    tx: &Transaction<'_>,
    app: Uuid,
    range: Span,
    bounds: &[DateTime<Utc>],
    select: Select<'_>,
) -> Result<(Aggs, Source), QueryError> {
    let Select { event_type: ty, per_type, users, sessions, dims } = select;
    let (first, last) = (month_of(range.start), month_of(range.end));
    // Quarter-hour rows hold every event type together only.
    let quarters_wanted = !per_type && ty.is_none();
    let complete: Vec<(NaiveDate, TimeDelta)> = rows(tx, TRUSTED_MONTHS, &[&first, &last])
        .await?
        .iter()
        .map(|r| (r.get(0), if quarters_wanted && r.get::<_, bool>(1) { QUARTER_HOUR } else { HOUR }))
        .collect();
    let Plan { rollup, raw } = plan(range, &complete, bounds);
    let pieces = pieces(&rollup, bounds);
    let merged = async {
        if pieces.is_empty() {
            return Ok(Vec::new());
        }
        let (mut tiers, mut starts, mut ends) = (Vec::<Tier>::new(), Vec::<DateTime<Utc>>::new(), Vec::new());
        for p in &pieces {
            match (tiers.last(), ends.last_mut()) {
                (Some(&tier), Some(end)) if tier == p.tier && *end == p.start => *end = p.end,
                _ => {
                    tiers.push(p.tier);
                    starts.push(p.start);
                    ends.push(p.end);
                }
            }
        }
        let (sql, one_type) = match (per_type, ty) {
            (true, None) => (MERGED_PER_TYPE, None),
            (false, None) => (MERGED_ALL_TYPES, None),
            (_, Some(ty)) => (MERGED, Some(ty)),
        };
        rows(tx, sql, &[&app, &tiers, &starts, &one_type, &per_type, &users, &sessions, &dims, &ends]).await
    };
    let deltas = async {
        let (Some(lo), Some(hi)) = (pieces.first(), pieces.last()) else {
            return Ok(Vec::new());
        };
        rows(tx, DELTAS, &[&app, &lo.start, &hi.end, &ty, &per_type, &users, &sessions, &dims]).await
    };
    let raw_starts: Vec<DateTime<Utc>> = raw.iter().map(|s| s.start).collect();
    let raw_ends: Vec<DateTime<Utc>> = raw.iter().map(|s| s.end).collect();
    let raw_params: [&(dyn ToSql + Sync); 6] = [&app, &raw_starts, &raw_ends, &ty, &bounds, &per_type];
    let raws = async {
        if raw.is_empty() {
            return Ok(Vec::new());
        }
        rows(tx, RAW, &raw_params).await
    };
    let raw_dims = async {
        if raw.is_empty() || !dims {
            return Ok(Vec::new());
        }
        rows(tx, RAW_DIMS, &raw_params).await
    };
    let (merged, deltas, raws, raw_dims) = tokio::try_join!(merged, deltas, raws, raw_dims)?;

    let mut out = Aggs::new();
    let index: HashMap<(Tier, DateTime<Utc>), usize> = pieces.iter().map(|p| ((p.tier, p.start), p.bucket)).collect();
    for row in &merged {
        let Some(&bucket) = index.get(&(row.get(0), row.get(1))) else { continue };
        out.entry((bucket, row.get(2))).or_default().absorb_columns(row, 3)?;
    }
    for row in &deltas {
        // A delta covers its hour (or quarter hour, for all types together): the piece holding its
        // start holds all of it. Deltas of periods read raw are skipped (raw rows count them).
        let start: DateTime<Utc> = row.get(0);
        let at = pieces.partition_point(|p| p.end <= start);
        let Some(piece) = pieces.get(at).filter(|p| p.start <= start) else { continue };
        out.entry((piece.bucket, row.get(1))).or_default().absorb_columns(row, 2)?;
    }
    for row in &raws {
        let agg = out.entry((bucket_index(row.get(0)), row.get(1))).or_default();
        agg.events += row.get::<_, i64>(2);
        for id in row.get::<_, Option<Vec<&str>>>(3).unwrap_or_default() {
            agg.users.insert_id(id);
        }
        for id in row.get::<_, Option<Vec<&str>>>(4).unwrap_or_default() {
            agg.sessions.insert_id(id);
        }
    }
    for row in &raw_dims {
        let agg = out.entry((bucket_index(row.get(0)), row.get(1))).or_default();
        let n: i64 = row.get(5);
        for d in 0..3 {
            *agg.dims[d].entry(row.get(2 + d)).or_default() += n;
        }
    }
    Ok((out, Source::of(!pieces.is_empty(), !raw.is_empty())))
}

/// width_bucket's 1-based number as an index (0 cannot occur: the first bound precedes every row).
fn bucket_index(b: i32) -> usize {
    usize::try_from(b.max(1) - 1).expect("non-negative")
}

/// Covers the hour- or quarter-hour-aligned `spans` (sorted, none straddling a bucket start) with the
/// largest tier periods inside each bucket, sorted by start.
fn pieces(spans: &[Span], bounds: &[DateTime<Utc>]) -> Vec<Piece> {
    let mut out = Vec::new();
    for span in spans {
        let mut t = span.start;
        while t < span.end {
            let bucket = bounds.partition_point(|b| *b <= t).max(1) - 1;
            let stop = bounds.get(bucket + 1).map_or(span.end, |next| (*next).min(span.end));
            let tier = [Tier::Month, Tier::Day, Tier::Hour]
                .into_iter()
                .find(|&tier| tier.start(t) == t && tier.end(t) <= stop)
                .unwrap_or(Tier::Quarter);
            let end = tier.end(t);
            out.push(Piece { tier, start: t, end, bucket });
            t = end;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollup::tier::Tier::{Day as DAY, Hour as H, Month as MONTH, Quarter as QUARTER};

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn buckets_are_covered_by_months_then_days_then_hours() {
        let bounds = [at("2026-01-30T00:00:00Z"), at("2026-03-01T00:00:00Z")];
        let spans = [Span { start: at("2026-01-30T22:00:00Z"), end: at("2026-03-02T02:00:00Z") }];
        let p = pieces(&spans, &bounds);
        let got: Vec<(Tier, DateTime<Utc>, usize)> = p.iter().map(|p| (p.tier, p.start, p.bucket)).collect();
        assert_eq!(
            got,
            [
                (H, at("2026-01-30T22:00:00Z"), 0),
                (H, at("2026-01-30T23:00:00Z"), 0),
                (DAY, at("2026-01-31T00:00:00Z"), 0),
                (MONTH, at("2026-02-01T00:00:00Z"), 0),
                (DAY, at("2026-03-01T00:00:00Z"), 1),
                (H, at("2026-03-02T00:00:00Z"), 1),
                (H, at("2026-03-02T01:00:00Z"), 1),
            ]
        );
    }

    #[test]
    fn a_day_bucket_at_plus_five_thirty_is_made_of_quarter_hours_and_hours() {
        // Asia/Kolkata day: 18:30Z to 18:30Z.
        let bounds = [at("2026-01-14T18:30:00Z"), at("2026-01-15T18:30:00Z")];
        let spans = [Span { start: at("2026-01-14T18:30:00Z"), end: at("2026-01-15T18:30:00Z") }];
        let p = pieces(&spans, &bounds);
        let count = |tier| p.iter().filter(|p| p.tier == tier).count();
        assert_eq!((count(QUARTER), count(H), count(DAY)), (4, 23, 0));
        assert_eq!(
            (p[0].tier, p[0].start, p[0].end),
            (QUARTER, at("2026-01-14T18:30:00Z"), at("2026-01-14T18:45:00Z"))
        );
        assert_eq!((p[2].tier, p[2].start), (H, at("2026-01-14T19:00:00Z")));
        assert_eq!(p.last().map(|p| (p.tier, p.start)), Some((QUARTER, at("2026-01-15T18:15:00Z"))));
        assert!(p.windows(2).all(|w| w[0].end == w[1].start) && p.iter().all(|p| p.bucket == 0));
    }

    #[test]
    fn a_day_bucket_in_an_offset_zone_is_made_of_hours() {
        // Europe/Berlin winter day: 23:00Z to 23:00Z.
        let bounds = [at("2026-01-14T23:00:00Z"), at("2026-01-15T23:00:00Z"), at("2026-01-16T23:00:00Z")];
        let spans = [Span { start: at("2026-01-14T23:00:00Z"), end: at("2026-01-16T23:00:00Z") }];
        let p = pieces(&spans, &bounds);
        assert_eq!(p.len(), 48);
        assert!(p.iter().all(|p| p.tier == H));
        assert_eq!(p.iter().filter(|p| p.bucket == 0).count(), 24);
        assert!(p.iter().filter(|p| p.bucket == 0).all(|p| p.end <= bounds[1]));
    }
}
