//! The synthetic dataset of the query and cache benchmarks: apps of skewed sizes, random users,
//! sessions, types and user-agent facets, COPYed in binary straight into `events`, then rolled up.

use std::net::{IpAddr, Ipv4Addr};
use std::pin::pin;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::BytesMut;
use chrono::{DateTime, Utc};
use partition_jobs::Month;
use rand::Rng;
use strata::ingest::store::{COPY_EVENTS, COPY_TYPES};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use uuid::Uuid;

use super::*;

/// JSON text written as jsonb: a version byte, then the text.
#[derive(Debug)]
pub(crate) struct JsonbText<'a>(pub(crate) &'a str);

impl ToSql for JsonbText<'_> {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(&[1]);
        out.extend_from_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }

    to_sql_checked!();
}

/// The shape of the loaded data.
#[derive(Clone)]
pub(crate) struct LoadSpec {
    pub(crate) apps: Vec<Uuid>,
    pub(crate) shares: Vec<f64>,
    pub(crate) events: usize,
    pub(crate) users: u64,
    pub(crate) sessions: u64,
    pub(crate) from: DateTime<Utc>,
    pub(crate) now: DateTime<Utc>,
}

/// COPYs `spec.events` random rows, `COPY_STREAMS` connections in parallel, `COPY_CHUNK` rows per
/// transaction; returns the elapsed time.
pub(crate) async fn load_events(url: &str, spec: &LoadSpec) -> Result<Duration> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for stream in 0..COPY_STREAMS {
        let n = spec.events / COPY_STREAMS + usize::from(stream < spec.events % COPY_STREAMS);
        let mut client = strata::db::connect(url).await?;
        let spec = spec.clone();
        tasks.push(tokio::spawn(async move {
            let mut left = n;
            while left > 0 {
                let chunk = left.min(COPY_CHUNK);
                copy_chunk(&mut client, &spec, chunk).await?;
                left -= chunk;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await?.context("COPY")?;
    }
    Ok(started.elapsed())
}

pub(crate) async fn copy_chunk(client: &mut tokio_postgres::Client, spec: &LoadSpec, rows: usize) -> Result<()> {
    let tx = client.transaction().await?;
    let sink = tx.copy_in(COPY_EVENTS).await?;
    let mut writer = pin!(BinaryCopyInWriter::new(sink, &COPY_TYPES));
    let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let no_text: Option<&str> = None;
    let no_int: Option<i32> = None;
    let span_ms = (spec.now - spec.from).num_milliseconds().max(1);
    // Cumulative shares to pick the app.
    let mut cumulative = Vec::with_capacity(spec.shares.len());
    let mut acc = 0.0;
    for s in &spec.shares {
        acc += s;
        cumulative.push(acc);
    }
    for _ in 0..rows {
        let (app, event_type, user_id, session_id, device, browser, os, created_at, metadata) = {
            let mut rng = rand::rng();
            let x: f64 = rng.random_range(0.0..acc);
            let app_index = cumulative.iter().position(|c| x < *c).unwrap_or(spec.apps.len() - 1);
            let session = rng.random_range(0..spec.sessions);
            let user = session % spec.users;
            let created_at = spec.from + chrono::Duration::milliseconds(rng.random_range(0..span_ms));
            (
                spec.apps[app_index],
                EVENT_TYPES[rng.random_range(0..EVENT_TYPES.len())],
                format!("user-{user}"),
                format!("sess-{session}"),
                DEVICES[rng.random_range(0..DEVICES.len())],
                BROWSERS[rng.random_range(0..BROWSERS.len())],
                OSES[rng.random_range(0..OSES.len())],
                created_at,
                format!(r#"{{"value":{}}}"#, rng.random_range(0..10_000)),
            )
        };
        let event_id = Uuid::new_v4();
        let url = "https://shop.example/";
        let values: [&(dyn ToSql + Sync); 17] = [
            &event_id,
            &app,
            &event_type,
            &user_id,
            &session_id,
            &url,
            &no_text,
            &ip,
            &USER_AGENT,
            &browser,
            &os,
            &device,
            &no_int,
            &no_int,
            &JsonbText(&metadata),
            &created_at,
            &created_at,
        ];
        writer.as_mut().write(&values).await?;
    }
    writer.finish().await?;
    tx.commit().await?;
    Ok(())
}

/// Partitions, apps, COPY, rollups, ANALYZE. Returns the apps, biggest first.
pub(crate) async fn load(url: &str, n: usize, apps: usize, days: i64) -> Result<(Vec<Uuid>, DateTime<Utc>)> {
    strata::db::migrate(url, 3, Duration::from_secs(5)).await.context("migrating the scratch database")?;
    let mut client = strata::db::connect(url).await?;
    let now = Utc::now();
    let from = now - chrono::Duration::days(days);
    let t = Instant::now();
    partition_jobs::ensure_months(&client, Month::containing(from), Month::containing(now), Duration::from_secs(5))
        .await
        .context("creating the past months' partitions")?;
    let mut ids = Vec::new();
    for i in 0..apps {
        ids.push(strata::accounts::create_app(&client, &format!("bench-app-{i}"), None).await?.id);
    }
    println!("partitions and {apps} app(s) ready in {:.1} s", t.elapsed().as_secs_f64());
    let shares = if apps == APP_SHARES.len() { APP_SHARES.to_vec() } else { vec![1.0; apps] };
    let spec = LoadSpec {
        apps: ids.clone(),
        shares,
        events: n,
        users: ((n as f64 * 0.02) as u64).max(1),
        sessions: ((n as f64 * 0.10) as u64).max(1),
        from,
        now,
    };
    println!(
        "loading {} events ({} users, {} sessions, {} event types) over {days} days by binary COPY ...",
        fmt_int(n as u64),
        fmt_int(spec.users),
        fmt_int(spec.sessions),
        EVENT_TYPES.len()
    );
    let copy = load_events(url, &spec).await?;
    println!("  COPY: {:.1} s ({} rows/s)", copy.as_secs_f64(), fmt_int((n as f64 / copy.as_secs_f64()) as u64));
    let t = Instant::now();
    let report = strata::rollup::rebuild::rebuild(
        &mut client,
        None,
        Month::containing(from).start(),
        Month::containing(now).end(),
    )
    .await
    .context("rebuilding rollups")?;
    println!(
        "  rollups rebuild: {:.1} s ({} hourly rows, {} dim rows, {} months)",
        t.elapsed().as_secs_f64(),
        fmt_int(report.hourly_rows),
        fmt_int(report.dim_rows),
        report.months
    );
    let t = Instant::now();
    client.batch_execute("ANALYZE").await?;
    println!("  ANALYZE: {:.1} s\n", t.elapsed().as_secs_f64());
    Ok((ids, now))
}
