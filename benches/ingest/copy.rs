//! Phase (a), the raw COPY ceiling, and the synthetic events every phase sends.

use super::*;

/// Phase (a): the reference one-stream COPY, then two streams (as many as the server's default
/// writers) for information; each starts from empty tables and leaves them empty.
pub(crate) async fn copy_phases(db: &tokio_postgres::Client, url: &str, fx: &Fixture, rows: usize) -> Result<Copies> {
    let mut results = Vec::new();
    for streams in [1, 2] {
        checkpoint(db).await;
        let result = copy_ceiling(url, fx, rows, streams).await?;
        print_copy(&result);
        reset_tables(db).await?;
        results.push(result);
    }
    let two = results.pop().expect("two results");
    let one = results.pop().expect("two results");
    Ok(Copies { one, two })
}

/// Empties the tables the COPY phase filled, so the HTTP phases start from the same empty state.
async fn reset_tables(db: &tokio_postgres::Client) -> Result<()> {
    const SQL: &str = "TRUNCATE events, event_ids, rollup_hourly, rollup_hourly_dims";
    db.batch_execute(SQL).await.context("truncating after the COPY phase")?;
    Ok(())
}

/// Starts every phase without a pending checkpoint's writes (best effort: needs superuser).
pub(crate) async fn checkpoint(db: &tokio_postgres::Client) {
    let _ = db.batch_execute("CHECKPOINT").await;
}

// ---------------------------------------------------------------------------------------------------
// Synthetic events
// ---------------------------------------------------------------------------------------------------

/// What every generated event shares: the app, the parsed user agent, the client address.
#[derive(Clone)]
pub(crate) struct Fixture {
    app_id: Uuid,
    pub(crate) ua: Arc<UaInfo>,
    ip: IpAddr,
    month_start: DateTime<Utc>,
}

impl Fixture {
    pub(crate) async fn new(app_id: Uuid) -> Result<Fixture> {
        let parsed = tokio::task::spawn_blocking(|| UaParser::new().parse(USER_AGENT)).await?;
        let ua = parsed.ok_or_else(|| anyhow!("the bench user agent does not parse"))?;
        let now = Utc::now();
        let month_start = Utc.with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0).single().expect("valid date");
        Ok(Fixture { app_id, ua, ip: IpAddr::V4(Ipv4Addr::LOCALHOST), month_start })
    }
}

/// One event's varying content, the same for COPY rows and HTTP bodies.
pub(crate) struct Synthetic {
    event_id: Uuid,
    event_type: &'static str,
    pub(crate) user: u32,
    session: u32,
    pub(crate) path: &'static str,
    plan: &'static str,
    value: u32,
}

impl Synthetic {
    pub(crate) fn random(rng: &mut impl Rng) -> Synthetic {
        Synthetic {
            event_id: Uuid::now_v7(),
            event_type: EVENT_TYPES[rng.random_range(0..EVENT_TYPES.len())],
            user: rng.random_range(0..USERS),
            session: rng.random_range(0..4),
            path: PATHS[rng.random_range(0..PATHS.len())],
            plan: PLANS[rng.random_range(0..PLANS.len())],
            value: rng.random_range(0..10_000),
        }
    }

    fn user_id(&self) -> String {
        format!("user-{}", self.user)
    }

    fn session_id(&self) -> String {
        format!("sess-{}-{}", self.user, self.session)
    }

    pub(crate) fn url(&self) -> String {
        format!("https://shop.example{}", self.path)
    }

    /// The metadata object as JSON text.
    pub(crate) fn metadata(&self) -> String {
        format!(r#"{{"plan":"{}","value":{},"ab":"variant-b"}}"#, self.plan, self.value)
    }

    /// Appends the event as the JSON an SDK sends (camelCase, always with an eventId).
    pub(crate) fn write_json(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = write!(
            out,
            r#"{{"eventId":"{}","eventType":"{}","userId":"{}","sessionId":"{}","url":"{}","metadata":{}}}"#,
            self.event_id,
            self.event_type,
            self.user_id(),
            self.session_id(),
            self.url(),
            self.metadata()
        );
    }
}

/// One row of the COPY phase, in the columns' order.
pub(crate) struct CopyRow {
    event_id: Uuid,
    event_type: &'static str,
    user_id: String,
    session_id: String,
    pub(crate) url: String,
    /// JSON text, written as jsonb without re-encoding (as the server does).
    metadata: String,
    created_at: DateTime<Utc>,
    received_at: DateTime<Utc>,
}

impl CopyRow {
    /// A row like the server writes: event time just before receipt (time-ordered, as live traffic).
    pub(crate) fn random(fx: &Fixture, rng: &mut impl Rng) -> CopyRow {
        let s = Synthetic::random(rng);
        let received_at = Utc::now();
        let created_at = (received_at - chrono::Duration::milliseconds(rng.random_range(0..1_000))).max(fx.month_start);
        CopyRow {
            event_id: s.event_id,
            event_type: s.event_type,
            user_id: s.user_id(),
            session_id: s.session_id(),
            url: s.url(),
            metadata: s.metadata(),
            created_at,
            received_at,
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// (a) COPY ceiling
// ---------------------------------------------------------------------------------------------------

// The same statement and column types the server's writer uses.
use strata::ingest::store::{COPY_EVENTS as COPY_SQL, COPY_TYPES};

/// Outcome of phase (a).
pub(crate) struct CopyResult {
    pub(crate) rows: usize,
    /// Concurrent connections.
    pub(crate) streams: usize,
    /// Wall time of the COPYs (row generation excluded).
    pub(crate) elapsed: Duration,
    /// CPU use over `elapsed`.
    pub(crate) cpu: CpuUse,
}

/// Both COPY measurements; `one` is the ceiling the issue's ratio refers to.
pub(crate) struct Copies {
    pub(crate) one: CopyResult,
    pub(crate) two: CopyResult,
}

impl CopyResult {
    pub(crate) fn rows_per_s(&self) -> f64 {
        self.rows as f64 / self.elapsed.as_secs_f64()
    }
}

/// COPYs `rows` rows over `streams` connections at once, in transactions of [`COPY_BATCH_ROWS`].
/// The rows are generated before the clock starts, so only the database work is timed.
async fn copy_ceiling(url: &str, fx: &Fixture, rows: usize, streams: usize) -> Result<CopyResult> {
    let mut lanes: Vec<Vec<Vec<CopyRow>>> = (0..streams).map(|_| Vec::new()).collect();
    {
        let mut rng = rand::rng();
        for (i, start) in (0..rows).step_by(COPY_BATCH_ROWS).enumerate() {
            let n = COPY_BATCH_ROWS.min(rows - start);
            lanes[i % streams].push((0..n).map(|_| CopyRow::random(fx, &mut rng)).collect());
        }
    }
    let mut clients = Vec::with_capacity(streams);
    for _ in 0..streams {
        clients.push(strata::db::connect(url).await?);
    }
    let (started, before) = (Instant::now(), CpuSnapshot::take(None));
    let tasks: Vec<_> = clients
        .into_iter()
        .zip(lanes)
        .map(|(mut client, lane)| {
            let fx = fx.clone();
            tokio::spawn(async move {
                for batch in &lane {
                    copy_batch(&mut client, &fx, batch).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await?.context("COPY phase")?;
    }
    let elapsed = started.elapsed();
    let cpu = CpuUse::between(&before, &CpuSnapshot::take(None), elapsed);
    Ok(CopyResult { rows, streams, elapsed, cpu })
}

/// One transaction: binary COPY of `rows`, commit.
async fn copy_batch(client: &mut tokio_postgres::Client, fx: &Fixture, rows: &[CopyRow]) -> Result<()> {
    let tx = client.transaction().await?;
    let sink = tx.copy_in(COPY_SQL).await?;
    let mut writer = pin!(BinaryCopyInWriter::new(sink, &COPY_TYPES));
    let (no_text, no_int): (Option<&str>, Option<i32>) = (None, None);
    let ua = &*fx.ua;
    let (browser, os) = (ua.browser.as_deref(), ua.os.as_deref());
    for r in rows {
        let values: [&(dyn ToSql + Sync); 17] = [
            &r.event_id,
            &fx.app_id,
            &r.event_type,
            &r.user_id,
            &r.session_id,
            &r.url,
            &no_text,
            &fx.ip,
            &ua.user_agent,
            &browser,
            &os,
            &ua.device,
            &no_int,
            &no_int,
            &JsonbText(&r.metadata),
            &r.created_at,
            &r.received_at,
        ];
        writer.as_mut().write(&values).await?;
    }
    writer.finish().await?;
    tx.commit().await?;
    Ok(())
}
