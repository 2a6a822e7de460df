//! What one group commit adds to the rollups, computed from its new events ([`Counted`]) and written
//! in the writer's transaction beside them (see `ingest::store`):
//!
//! - [`Hourly`]: the upserts of `rollup_hourly` (per quarter of the hour) and `rollup_hourly_dims`,
//!   into the writer's own shard ([`UPSERT_HOURLY`], [`UPSERT_DIMS`]).
//! - [`deltas`]: one multi-tier delta row (tier [`Tier::Delta`]) per (app, hour, event type) and per
//!   (app, quarter hour) for all types, inserted by [`INSERT_DELTAS`] and later merged by
//!   [`super::compact`].
//!
//! Every statement orders its rows by key, so concurrent writers take row locks in the same order.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use postgres_types::ToSql;
use uuid::Uuid;

use super::agg::{Agg, DIMS};
use super::tier::{hour_and_quarter, Tier};

/// What the rollups count of one new event: the fields of a stored event they read.
#[derive(Debug, Clone, Copy)]
pub struct Counted<'a> {
    /// The event's app.
    pub app_id: Uuid,
    /// Event time.
    pub created_at: DateTime<Utc>,
    /// Event type.
    pub event_type: &'a str,
    /// End-user id.
    pub user_id: Option<&'a str>,
    /// Session id.
    pub session_id: Option<&'a str>,
    /// Device, browser and os (in the order of [`DIMS`]); `None` when unknown.
    pub dims: [Option<&'a str>; 3],
}

/// Adds a writer's hourly counts to its shard's rows.
pub const UPSERT_HOURLY: &str = "INSERT INTO rollup_hourly (app_id, hour, event_type, events, q0, q1, q2, q3, \
       shard) \
     SELECT a, h, t, q0 + q1 + q2 + q3, q0, q1, q2, q3, $8 \
     FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::int8[], $5::int8[], $6::int8[], $7::int8[]) \
       AS d(a, h, t, q0, q1, q2, q3) \
     ORDER BY a, h, t \
     ON CONFLICT (app_id, hour, event_type, shard) DO UPDATE SET \
       events = rollup_hourly.events + EXCLUDED.events, q0 = rollup_hourly.q0 + EXCLUDED.q0, \
       q1 = rollup_hourly.q1 + EXCLUDED.q1, q2 = rollup_hourly.q2 + EXCLUDED.q2, \
       q3 = rollup_hourly.q3 + EXCLUDED.q3";

/// Adds a writer's hourly breakdown counts to its shard's rows.
pub const UPSERT_DIMS: &str = "INSERT INTO rollup_hourly_dims (app_id, hour, event_type, dim, value, events, \
       shard) \
     SELECT a, h, t, k, v, n, $7 \
     FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::int8[]) \
       AS d(a, h, t, k, v, n) \
     ORDER BY a, h, t, k, v \
     ON CONFLICT (app_id, hour, event_type, dim, value, shard) DO UPDATE SET \
       events = rollup_hourly_dims.events + EXCLUDED.events";

type HourKey<'a> = (Uuid, DateTime<Utc>, &'a str);

/// The parameters of [`UPSERT_HOURLY`] and [`UPSERT_DIMS`] for a set of events, sorted by key.
#[derive(Debug, Default)]
pub struct Hourly<'a> {
    shard: i16,
    app: Vec<Uuid>,
    hour: Vec<DateTime<Utc>>,
    event_type: Vec<&'a str>,
    quarters: [Vec<i64>; 4],
    dim_app: Vec<Uuid>,
    dim_hour: Vec<DateTime<Utc>>,
    dim_type: Vec<&'a str>,
    dim: Vec<&'a str>,
    value: Vec<&'a str>,
    count: Vec<i64>,
}

impl<'a> Hourly<'a> {
    /// The counts of `rows`, for rollup shard `shard`.
    pub fn of(rows: &[Counted<'a>], shard: i16) -> Hourly<'a> {
        let mut hourly: BTreeMap<HourKey, [i64; 4]> = BTreeMap::new();
        let mut dims: BTreeMap<(HourKey, &str, &str), i64> = BTreeMap::new();
        for r in rows {
            let (hour, q) = hour_and_quarter(r.created_at);
            let key = (r.app_id, hour, r.event_type);
            hourly.entry(key).or_default()[q] += 1;
            for (dim, value) in DIMS.into_iter().zip(r.dims) {
                *dims.entry((key, dim, value.unwrap_or(""))).or_default() += 1;
            }
        }
        let mut out = Hourly { shard, ..Hourly::default() };
        for ((app, hour, ty), counts) in hourly {
            out.app.push(app);
            out.hour.push(hour);
            out.event_type.push(ty);
            for (column, n) in out.quarters.iter_mut().zip(counts) {
                column.push(n);
            }
        }
        for (((app, hour, ty), dim, value), n) in dims {
            out.dim_app.push(app);
            out.dim_hour.push(hour);
            out.dim_type.push(ty);
            out.dim.push(dim);
            out.value.push(value);
            out.count.push(n);
        }
        out
    }

    /// The parameters of [`UPSERT_HOURLY`].
    pub fn hourly_params(&self) -> [&(dyn ToSql + Sync); 8] {
        let q = &self.quarters;
        [&self.app, &self.hour, &self.event_type, &q[0], &q[1], &q[2], &q[3], &self.shard]
    }

    /// The parameters of [`UPSERT_DIMS`].
    pub fn dims_params(&self) -> [&(dyn ToSql + Sync); 7] {
        [&self.dim_app, &self.dim_hour, &self.dim_type, &self.dim, &self.value, &self.count, &self.shard]
    }
}

/// A delta's key: app, start (see [`delta_start`]), event type ("" for all types together).
type Key = (Uuid, DateTime<Utc>, String);

/// The deltas of `rows` (new events of one group commit): per (app, hour, type) and per (app, quarter
/// hour) with type "" (see [`delta_start`]).
pub fn deltas(rows: &[Counted]) -> BTreeMap<Key, Agg> {
    let mut out: BTreeMap<Key, Agg> = BTreeMap::new();
    for r in rows {
        let user = r.user_id.map(super::sketch::hash);
        let session = r.session_id.map(super::sketch::hash);
        for ty in [r.event_type, ""] {
            let agg = out.entry((r.app_id, delta_start(ty, r.created_at), ty.to_owned())).or_default();
            agg.events += 1;
            if let Some(h) = user {
                agg.users.insert(h);
            }
            if let Some(h) = session {
                agg.sessions.insert(h);
            }
            if !ty.is_empty() {
                for (d, v) in r.dims.iter().enumerate() {
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
    let tier = if ty.is_empty() { Tier::Quarter } else { Tier::Hour };
    tier.start(t)
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
