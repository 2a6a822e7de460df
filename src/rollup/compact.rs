//! Compaction of the multi-tier rollups: [`compact`] (run every `STRATA_TIER_COMPACT_INTERVAL` by
//! [`compact_loop`]) deletes writer deltas (see [`super::delta`]) and merges them into the quarter-hour
//! (all types only), hour, day and month rows in one transaction, under an advisory lock, so one
//! compactor runs per database and every delta is counted either as itself or in the merged rows,
//! never both. Rebuilds ([`super::rebuild`]) take the same lock and compact first.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use postgres_types::ToSql;
use tokio_postgres::Transaction;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::agg::Agg;
use super::tier::Tier;
use super::RollupError;

/// Advisory lock key held by the compactor and by rebuilds ("strata tiers").
pub(super) const LOCK_KEY: i64 = 0x5354_5241_5449_4552;

/// A merged row's key: app, tier, period start, event type.
pub(super) type MergedKey = (Uuid, Tier, DateTime<Utc>, String);

/// [`MergedKey`]s as columns for `unnest`.
type KeyColumns<'a> = (Vec<Uuid>, Vec<Tier>, Vec<DateTime<Utc>>, Vec<&'a str>);

/// The merged tiers a delta of event type `ty` is added to.
fn merged_tiers(ty: &str) -> &'static [Tier] {
    if ty.is_empty() {
        &[Tier::Quarter, Tier::Hour, Tier::Day, Tier::Month]
    } else {
        &[Tier::Hour, Tier::Day, Tier::Month]
    }
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
pub(super) const COMPACT_BATCH: i64 = 50_000;

/// Merges up to [`COMPACT_BATCH`] deltas into the hour, day and month rows, unless another
/// compactor or a rebuild holds the lock (then `None`). Returns the deltas merged.
pub async fn compact(client: &mut tokio_postgres::Client) -> Result<Option<u64>, RollupError> {
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
pub(super) async fn compact_in(tx: &Transaction<'_>, limit: i64) -> Result<u64, RollupError> {
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
            sums.entry((app, tier, tier.start(start), ty.clone())).or_default().absorb(&agg);
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

/// Upserts merged rows (sorted by key) in chunks.
pub(super) async fn write_merged(
    tx: &Transaction<'_>,
    rows: HashMap<MergedKey, Agg>,
) -> Result<(), tokio_postgres::Error> {
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
