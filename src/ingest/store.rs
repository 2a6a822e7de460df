//! One group-commit transaction: claim event ids (idempotency), COPY the new events in binary, upsert
//! the hourly rollup deltas of exactly those events and COPY their multi-tier deltas (see
//! [`crate::tiers`]), then commit. Every statement takes its row
//! locks in sorted key order, so concurrent writers queue behind each other instead of deadlocking.

use std::collections::{BTreeMap, HashSet};
use std::pin::pin;

use bytes::BytesMut;
use chrono::{DateTime, DurationRound, Timelike, Utc};
use deadpool_postgres::Transaction;
use postgres_types::{IsNull, ToSql, Type};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use uuid::Uuid;

use super::event::EventRow;

const CLAIM_IDS: &str = "INSERT INTO event_ids (app_id, event_id) \
     SELECT a, e FROM unnest($1::uuid[], $2::uuid[]) AS d(a, e) ORDER BY a, e \
     ON CONFLICT DO NOTHING RETURNING app_id, event_id";

/// The COPY statement of the events table (the ingest benchmark measures its ceiling with it).
pub const COPY_EVENTS: &str = "COPY events (event_id, app_id, event_type, user_id, session_id, url, referrer, \
     ip_address, user_agent, browser, os, device, screen_width, screen_height, metadata, created_at, \
     received_at) FROM STDIN BINARY";

/// Column types of [`COPY_EVENTS`], in order.
pub const COPY_TYPES: [Type; 17] = [
    Type::UUID,
    Type::UUID,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::INET,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::INT4,
    Type::INT4,
    Type::JSONB,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMPTZ,
];

const UPSERT_HOURLY: &str = "INSERT INTO rollup_hourly (app_id, hour, event_type, events, q0, q1, q2, q3, shard) \
     SELECT a, h, t, q0 + q1 + q2 + q3, q0, q1, q2, q3, $8 \
     FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::int8[], $5::int8[], $6::int8[], $7::int8[]) \
       AS d(a, h, t, q0, q1, q2, q3) \
     ORDER BY a, h, t \
     ON CONFLICT (app_id, hour, event_type, shard) DO UPDATE SET \
       events = rollup_hourly.events + EXCLUDED.events, q0 = rollup_hourly.q0 + EXCLUDED.q0, \
       q1 = rollup_hourly.q1 + EXCLUDED.q1, q2 = rollup_hourly.q2 + EXCLUDED.q2, \
       q3 = rollup_hourly.q3 + EXCLUDED.q3";

const UPSERT_DIMS: &str = "INSERT INTO rollup_hourly_dims (app_id, hour, event_type, dim, value, events, shard) \
     SELECT a, h, t, k, v, n, $7 \
     FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::int8[]) \
       AS d(a, h, t, k, v, n) \
     ORDER BY a, h, t, k, v \
     ON CONFLICT (app_id, hour, event_type, dim, value, shard) DO UPDATE SET \
       events = rollup_hourly_dims.events + EXCLUDED.events";

/// Stores the not-yet-seen events among `rows` and their rollups (in rollup shard `shard`, the
/// writer's own) inside `tx` (not committed here). Returns, per row, whether it was new (`true`) or a
/// duplicate of a stored or earlier row.
pub async fn store_batch(
    tx: &Transaction<'_>,
    rows: &[&EventRow],
    shard: i16,
) -> Result<Vec<bool>, tokio_postgres::Error> {
    let fresh = claim_ids(tx, rows).await?;
    let new_rows: Vec<&EventRow> = rows.iter().zip(&fresh).filter(|(_, f)| **f).map(|(r, _)| *r).collect();
    if !new_rows.is_empty() {
        copy_rows(tx, &new_rows).await?;
        upsert_rollups(tx, &new_rows, shard).await?;
        // After the rollup upserts: while a rebuild holds the rollup lock they wait, so this delta
        // is written (and becomes visible) only after the rebuild's commit.
        crate::tiers::copy_deltas(tx, crate::tiers::deltas(&new_rows)).await?;
    }
    Ok(fresh)
}

/// Inserts (app, eventId) pairs; a pair already present, or repeated earlier in `rows`, is a duplicate.
async fn claim_ids(tx: &Transaction<'_>, rows: &[&EventRow]) -> Result<Vec<bool>, tokio_postgres::Error> {
    let mut pairs: Vec<(Uuid, Uuid)> = rows.iter().map(|r| (r.app_id, r.event_id)).collect();
    pairs.sort_unstable();
    pairs.dedup();
    let (apps, ids): (Vec<Uuid>, Vec<Uuid>) = pairs.into_iter().unzip();
    let claimed: HashSet<(Uuid, Uuid)> =
        tx.query(CLAIM_IDS, &[&apps, &ids]).await?.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut seen = HashSet::with_capacity(rows.len());
    Ok(rows
        .iter()
        .map(|r| {
            let key = (r.app_id, r.event_id);
            claimed.contains(&key) && seen.insert(key)
        })
        .collect())
}

async fn copy_rows(tx: &Transaction<'_>, rows: &[&EventRow]) -> Result<(), tokio_postgres::Error> {
    let stmt = tx.prepare_cached(COPY_EVENTS).await?;
    let sink = tx.copy_in(&stmt).await?;
    let mut writer = pin!(BinaryCopyInWriter::new(sink, &COPY_TYPES));
    for r in rows {
        let ua = r.ua.as_deref();
        writer
            .as_mut()
            .write(&[
                &r.event_id,
                &r.app_id,
                &r.event_type,
                &r.user_id,
                &r.session_id,
                &r.url,
                &r.referrer,
                &r.ip,
                &ua.map(|u| u.user_agent.as_str()),
                &ua.and_then(|u| u.browser.as_deref()),
                &ua.and_then(|u| u.os.as_deref()),
                &ua.map(|u| u.device.as_str()),
                &r.screen_width,
                &r.screen_height,
                &r.metadata.as_deref().map(RawJson),
                &r.created_at,
                &r.received_at,
            ])
            .await?;
    }
    writer.finish().await?;
    Ok(())
}

/// The UTC hour of `t` and its quarter (0..=3).
pub fn hour_and_quarter(t: DateTime<Utc>) -> (DateTime<Utc>, usize) {
    let hour = t.duration_trunc(chrono::Duration::hours(1)).expect("event times are far from overflow");
    (hour, (t.minute() / 15) as usize)
}

type HourKey<'a> = (Uuid, DateTime<Utc>, &'a str);

async fn upsert_rollups(tx: &Transaction<'_>, rows: &[&EventRow], shard: i16) -> Result<(), tokio_postgres::Error> {
    let mut hourly: BTreeMap<HourKey, [i64; 4]> = BTreeMap::new();
    let mut dims: BTreeMap<(HourKey, &str, &str), i64> = BTreeMap::new();
    for r in rows {
        let (hour, q) = hour_and_quarter(r.created_at);
        let key = (r.app_id, hour, r.event_type.as_str());
        hourly.entry(key).or_default()[q] += 1;
        let ua = r.ua.as_deref();
        let values = [
            ("device", ua.map(|u| u.device.as_str())),
            ("browser", ua.and_then(|u| u.browser.as_deref())),
            ("os", ua.and_then(|u| u.os.as_deref())),
        ];
        for (dim, value) in values {
            *dims.entry((key, dim, value.unwrap_or(""))).or_default() += 1;
        }
    }
    let (mut a, mut h, mut t) = (Vec::new(), Vec::new(), Vec::new());
    let mut q: [Vec<i64>; 4] = Default::default();
    for ((app, hour, ty), counts) in &hourly {
        a.push(*app);
        h.push(*hour);
        t.push(*ty);
        for i in 0..4 {
            q[i].push(counts[i]);
        }
    }
    let (mut da, mut dh, mut dt, mut k, mut v, mut n) = (vec![], vec![], vec![], vec![], vec![], vec![]);
    for (((app, hour, ty), dim, value), count) in &dims {
        da.push(*app);
        dh.push(*hour);
        dt.push(*ty);
        k.push(*dim);
        v.push(*value);
        n.push(*count);
    }
    let (hourly_stmt, dims_stmt) = tokio::try_join!(tx.prepare_cached(UPSERT_HOURLY), tx.prepare_cached(UPSERT_DIMS))?;
    // Both upserts are sent together (pipelined on the connection): one round trip instead of two.
    let hourly_params: [&(dyn ToSql + Sync); 8] = [&a, &h, &t, &q[0], &q[1], &q[2], &q[3], &shard];
    let dims_params: [&(dyn ToSql + Sync); 7] = [&da, &dh, &dt, &k, &v, &n, &shard];
    tokio::try_join!(tx.execute(&hourly_stmt, &hourly_params), tx.execute(&dims_stmt, &dims_params))?;
    Ok(())
}

/// JSON text already validated and serialised by the handler, written without re-encoding.
#[derive(Debug)]
struct RawJson<'a>(&'a str);

impl ToSql for RawJson<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        if *ty == Type::JSONB {
            // jsonb binary format: a version byte, then the text.
            out.extend_from_slice(&[1]);
        }
        out.extend_from_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB || *ty == Type::JSON
    }

    postgres_types::to_sql_checked!();
}
