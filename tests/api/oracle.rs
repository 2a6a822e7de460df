//! The raw-SQL oracle: every rollup of a test database, recomputed from its raw `events` rows.

/// Per (app, hour, type): the hourly rollup's events and quarter-hour counts (all shards).
const HOURLY: &str = "WITH raw AS ( \
       SELECT app_id, date_trunc('hour', created_at, 'UTC') AS hour, event_type, count(*) AS n, \
         count(*) FILTER (WHERE extract(minute FROM created_at AT TIME ZONE 'UTC') < 15) AS q0, \
         count(*) FILTER (WHERE extract(minute FROM created_at AT TIME ZONE 'UTC') >= 15 \
                            AND extract(minute FROM created_at AT TIME ZONE 'UTC') < 30) AS q1, \
         count(*) FILTER (WHERE extract(minute FROM created_at AT TIME ZONE 'UTC') >= 30 \
                            AND extract(minute FROM created_at AT TIME ZONE 'UTC') < 45) AS q2, \
         count(*) FILTER (WHERE extract(minute FROM created_at AT TIME ZONE 'UTC') >= 45) AS q3 \
       FROM events GROUP BY 1, 2, 3), \
     r AS ( \
       SELECT app_id, hour, event_type, sum(events) AS n, sum(q0) AS q0, sum(q1) AS q1, sum(q2) AS q2, \
         sum(q3) AS q3 \
       FROM rollup_hourly GROUP BY 1, 2, 3 HAVING sum(events) <> 0) \
     SELECT count(*) FROM raw FULL JOIN r USING (app_id, hour, event_type) \
     WHERE (raw.n, raw.q0, raw.q1, raw.q2, raw.q3) IS DISTINCT FROM (r.n, r.q0, r.q1, r.q2, r.q3)";

/// Per (app, hour, type) and dimension: the breakdown's events sum to the raw count (every event
/// counts once in each dimension, "" when unknown).
const DIMS: &str = "WITH raw AS ( \
       SELECT app_id, date_trunc('hour', created_at, 'UTC') AS hour, event_type, dim, count(*) AS n \
       FROM events CROSS JOIN (VALUES ('device'), ('browser'), ('os')) AS d(dim) GROUP BY 1, 2, 3, 4), \
     r AS ( \
       SELECT app_id, hour, event_type, dim, sum(events) AS n FROM rollup_hourly_dims \
       GROUP BY 1, 2, 3, 4 HAVING sum(events) <> 0) \
     SELECT count(*) FROM raw FULL JOIN r USING (app_id, hour, event_type, dim) WHERE raw.n IS DISTINCT FROM r.n";

/// Per tier ($1, truncated by $2): (app, period, type) keys whose merged rows plus remaining deltas
/// disagree with the raw event count, for every type and for the all-types rows.
const TIER: &str = "WITH raw AS ( \
       SELECT app_id, date_trunc($2, created_at, 'UTC') AS p, event_type, count(*) AS n FROM events \
       GROUP BY GROUPING SETS ((app_id, p, event_type), (app_id, p))), \
     t AS ( \
       SELECT app_id, date_trunc($2, start, 'UTC') AS p, NULLIF(event_type, '') AS event_type, sum(events) AS n \
       FROM rollup_tiers WHERE tier IN (0, $1::int2) GROUP BY 1, 2, 3 HAVING sum(events) <> 0) \
     SELECT count(*) FROM raw FULL JOIN t \
       ON raw.app_id = t.app_id AND raw.p = t.p AND raw.event_type IS NOT DISTINCT FROM t.event_type \
     WHERE raw.n IS DISTINCT FROM t.n";

/// Quarter hours exist for all types together only; their deltas start on the quarter.
const QUARTERS: &str = "WITH raw AS ( \
       SELECT app_id, date_bin('15 minutes', created_at, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS p, count(*) AS n \
       FROM events GROUP BY 1, 2), \
     t AS ( \
       SELECT app_id, start AS p, sum(events) AS n FROM rollup_tiers \
       WHERE tier IN (0, 4) AND event_type = '' GROUP BY 1, 2 HAVING sum(events) <> 0) \
     SELECT count(*) FROM raw FULL JOIN t ON raw.app_id = t.app_id AND raw.p = t.p \
     WHERE raw.n IS DISTINCT FROM t.n";

/// Asserts that every rollup of `db` equals its raw rows: the hourly rollup (events and quarters),
/// its breakdowns by dimension, and every tier of `rollup_tiers` (merged rows plus pending deltas).
/// A rollup cell summing to zero counts as absent.
pub async fn assert_rollups_equal_raw(db: &tokio_postgres::Client) {
    let count = |row: tokio_postgres::Row| row.get::<_, i64>(0);
    let mut mismatches = vec![
        ("hourly", count(db.query_one(HOURLY, &[]).await.unwrap())),
        ("hourly dims", count(db.query_one(DIMS, &[]).await.unwrap())),
    ];
    for (name, tier, unit) in [("hour tier", 1i16, "hour"), ("day tier", 2, "day"), ("month tier", 3, "month")] {
        mismatches.push((name, count(db.query_one(TIER, &[&tier, &unit]).await.unwrap())));
    }
    mismatches.push(("quarter tier", count(db.query_one(QUARTERS, &[]).await.unwrap())));
    let none: Vec<_> = mismatches.iter().map(|(name, _)| (*name, 0)).collect();
    assert_eq!(mismatches, none, "rollup cells that differ from the raw rows, by rollup");
}
