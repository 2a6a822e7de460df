//! One group-commit transaction: claim event ids (idempotency), write the new events, upsert the
//! hourly rollup deltas of exactly those events and insert their multi-tier deltas (computed by
//! [`crate::rollup::delta`]), then commit. Every statement takes its row locks in sorted key order, so
//! concurrent writers queue behind each other instead of deadlocking.
//!
//! Round trips are what a small flush waits for, so statements are pipelined: `BEGIN` travels with
//! the claim; a small flush's events (an `INSERT ... SELECT FROM unnest(...)`), the rollup statements
//! and `COMMIT` travel together. A big flush COPYs its events in binary first (two round trips, but
//! the cheapest per row). If any pipelined statement fails, PostgreSQL turns the `COMMIT` into a
//! rollback; the first error is returned and nothing is acknowledged.

use std::collections::HashSet;
use std::pin::pin;

use bytes::BytesMut;
use chrono::{DateTime, Utc};
use deadpool_postgres::ClientWrapper as Client;
use postgres_types::{IsNull, ToSql, Type};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use uuid::Uuid;

use super::event::EventRow;
use crate::rollup::delta::{deltas, Counted, DeltaColumns, Hourly, INSERT_DELTAS, UPSERT_DIMS, UPSERT_HOURLY};

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

/// Flushes of at most this many new events insert them with one pipelined statement; bigger ones COPY.
const INSERT_MAX_ROWS: usize = 256;

const INSERT_EVENTS: &str = "INSERT INTO events (event_id, app_id, event_type, user_id, session_id, url, referrer, \
     ip_address, user_agent, browser, os, device, screen_width, screen_height, metadata, created_at, received_at) \
     SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
       $8::inet[], $9::text[], $10::text[], $11::text[], $12::text[], $13::int4[], $14::int4[], $15::jsonb[], \
       $16::timestamptz[], $17::timestamptz[])";

/// Stores the not-yet-seen events among `rows` and their rollups (in rollup shard `shard`, the
/// writer's own) in one transaction on `client`, committed here. Returns, per row, whether it was new
/// (`true`) or a duplicate of a stored or earlier row. On error nothing was committed and the
/// connection is left outside any transaction.
pub async fn store_batch(client: &Client, rows: &[&EventRow], shard: i16) -> Result<Vec<bool>, tokio_postgres::Error> {
    let result = pipelined(client, rows, shard).await;
    if result.is_err() {
        // A no-op (with a warning) when the COMMIT already ended the aborted transaction.
        let _ = client.batch_execute("ROLLBACK").await;
    }
    result
}

async fn pipelined(client: &Client, rows: &[&EventRow], shard: i16) -> Result<Vec<bool>, tokio_postgres::Error> {
    // Prepared (or found in the connection's cache) before anything is sent: a statement prepared
    // inside the pipeline would reach the server after the COMMIT.
    let statements = tokio::try_join!(
        client.prepare_cached(CLAIM_IDS),
        client.prepare_cached(INSERT_EVENTS),
        client.prepare_cached(UPSERT_HOURLY),
        client.prepare_cached(UPSERT_DIMS),
        client.prepare_cached(INSERT_DELTAS),
    )?;
    let (claim, insert_events, hourly, dims, tiers) = statements;
    let mut pairs: Vec<(Uuid, Uuid)> = rows.iter().map(|r| (r.app_id, r.event_id)).collect();
    pairs.sort_unstable();
    pairs.dedup();
    let (apps, ids): (Vec<Uuid>, Vec<Uuid>) = pairs.into_iter().unzip();
    let claim_params: [&(dyn ToSql + Sync); 2] = [&apps, &ids];
    let (begun, claimed) = tokio::join!(client.batch_execute("BEGIN"), client.query(&claim, &claim_params));
    begun?;
    let claimed: HashSet<(Uuid, Uuid)> = claimed?.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut seen = HashSet::with_capacity(rows.len());
    let fresh: Vec<bool> = rows
        .iter()
        .map(|r| {
            let key = (r.app_id, r.event_id);
            claimed.contains(&key) && seen.insert(key)
        })
        .collect();
    let new_rows: Vec<&EventRow> = rows.iter().zip(&fresh).filter(|(_, f)| **f).map(|(r, _)| *r).collect();
    if new_rows.is_empty() {
        client.batch_execute("COMMIT").await?;
        return Ok(fresh);
    }
    let small = new_rows.len() <= INSERT_MAX_ROWS;
    if !small {
        copy_rows(client, &new_rows).await?;
    }
    let columns = small.then(|| Columns::of(&new_rows));
    let insert = async {
        match &columns {
            Some(c) => client.execute(&insert_events, &c.params()).await.map(|_| ()),
            None => Ok(()),
        }
    };
    let counted: Vec<Counted> = new_rows.iter().map(|r| counted(r)).collect();
    let rollups = Hourly::of(&counted, shard);
    let deltas = DeltaColumns::of(deltas(&counted));
    // In this order on the wire (each future sends its message on its first poll, and join! polls them
    // in order first): the events, the rollup upserts (which wait while a rebuild holds the rollup
    // lock), the tier deltas, COMMIT.
    let (hourly_params, dims_params, tier_params) = (rollups.hourly_params(), rollups.dims_params(), deltas.params());
    let (inserted, hourly, dims, tiers, committed) = tokio::join!(
        insert,
        client.execute(&hourly, &hourly_params),
        client.execute(&dims, &dims_params),
        client.execute(&tiers, &tier_params),
        client.batch_execute("COMMIT"),
    );
    inserted?;
    hourly?;
    dims?;
    tiers?;
    committed?;
    Ok(fresh)
}

/// The columns of [`INSERT_EVENTS`].
struct Columns<'a> {
    event_id: Vec<Uuid>,
    app_id: Vec<Uuid>,
    event_type: Vec<&'a str>,
    user_id: Vec<Option<&'a str>>,
    session_id: Vec<Option<&'a str>>,
    url: Vec<Option<&'a str>>,
    referrer: Vec<Option<&'a str>>,
    ip: Vec<Option<std::net::IpAddr>>,
    user_agent: Vec<Option<&'a str>>,
    browser: Vec<Option<&'a str>>,
    os: Vec<Option<&'a str>>,
    device: Vec<Option<&'a str>>,
    screen_width: Vec<Option<i32>>,
    screen_height: Vec<Option<i32>>,
    metadata: Vec<Option<RawJson<'a>>>,
    created_at: Vec<DateTime<Utc>>,
    received_at: Vec<DateTime<Utc>>,
}

impl<'a> Columns<'a> {
    fn of(rows: &[&'a EventRow]) -> Columns<'a> {
        let ua = |r: &'a EventRow| r.ua.as_deref();
        Columns {
            event_id: rows.iter().map(|r| r.event_id).collect(),
            app_id: rows.iter().map(|r| r.app_id).collect(),
            event_type: rows.iter().map(|r| r.event_type.as_str()).collect(),
            user_id: rows.iter().map(|r| r.user_id.as_deref()).collect(),
            session_id: rows.iter().map(|r| r.session_id.as_deref()).collect(),
            url: rows.iter().map(|r| r.url.as_deref()).collect(),
            referrer: rows.iter().map(|r| r.referrer.as_deref()).collect(),
            ip: rows.iter().map(|r| r.ip).collect(),
            user_agent: rows.iter().map(|r| ua(r).map(|u| u.user_agent.as_str())).collect(),
            browser: rows.iter().map(|r| ua(r).and_then(|u| u.browser.as_deref())).collect(),
            os: rows.iter().map(|r| ua(r).and_then(|u| u.os.as_deref())).collect(),
            device: rows.iter().map(|r| ua(r).map(|u| u.device.as_str())).collect(),
            screen_width: rows.iter().map(|r| r.screen_width).collect(),
            screen_height: rows.iter().map(|r| r.screen_height).collect(),
            metadata: rows.iter().map(|r| r.metadata.as_deref().map(RawJson)).collect(),
            created_at: rows.iter().map(|r| r.created_at).collect(),
            received_at: rows.iter().map(|r| r.received_at).collect(),
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 17] {
        [
            &self.event_id,
            &self.app_id,
            &self.event_type,
            &self.user_id,
            &self.session_id,
            &self.url,
            &self.referrer,
            &self.ip,
            &self.user_agent,
            &self.browser,
            &self.os,
            &self.device,
            &self.screen_width,
            &self.screen_height,
            &self.metadata,
            &self.created_at,
            &self.received_at,
        ]
    }
}

async fn copy_rows(client: &Client, rows: &[&EventRow]) -> Result<(), tokio_postgres::Error> {
    let stmt = client.prepare_cached(COPY_EVENTS).await?;
    let sink = client.copy_in(&stmt).await?;
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

/// What the rollups count of `r`.
fn counted(r: &EventRow) -> Counted<'_> {
    let ua = r.ua.as_deref();
    Counted {
        app_id: r.app_id,
        created_at: r.created_at,
        event_type: &r.event_type,
        user_id: r.user_id.as_deref(),
        session_id: r.session_id.as_deref(),
        dims: [ua.map(|u| u.device.as_str()), ua.and_then(|u| u.browser.as_deref()), ua.and_then(|u| u.os.as_deref())],
    }
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
