//! One user's activity across the apps asked for: totals, first and last seen, sessions, primary
//! device / browser / os and the most recent events. Rollups do not key by user, so this reads raw
//! rows through the partial `(app_id, user_id, created_at)` index.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::store::{rows, Reader};
use super::{QueryError, Source};

/// How many recent events are listed.
pub const RECENT_EVENTS: i64 = 10;

/// One recent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecentEvent {
    /// Event id.
    pub event_id: Uuid,
    /// App.
    pub app_id: Uuid,
    /// Type.
    pub event_type: String,
    /// Page URL.
    pub url: Option<String>,
    /// Event time.
    pub created_at: DateTime<Utc>,
    /// Device class, browser and os (from the user agent), each possibly unknown.
    pub device: Option<String>,
    /// See `device`.
    pub browser: Option<String>,
    /// See `device`.
    pub os: Option<String>,
}

/// A user's activity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserActivity {
    /// Events.
    pub total_events: i64,
    /// Distinct event types.
    pub unique_event_types: i64,
    /// Distinct non-null session ids.
    pub total_sessions: i64,
    /// Earliest event time.
    pub first_seen: Option<DateTime<Utc>>,
    /// Latest event time.
    pub last_seen: Option<DateTime<Utc>>,
    /// Most frequent known device, browser and os, in that order (ties by name ascending).
    pub primary: [Option<String>; 3],
    /// The latest events, newest first (ties by event id, descending).
    pub recent: Vec<RecentEvent>,
    /// What was read.
    pub source: Source,
}

const USER_TOTALS: &str = "SELECT count(*), count(DISTINCT event_type), count(DISTINCT session_id), \
       min(created_at), max(created_at) \
     FROM events WHERE app_id = ANY($1::uuid[]) AND user_id = $2::text";

const USER_DIMS: &str = "SELECT device, browser, os, count(*) \
     FROM events WHERE app_id = ANY($1::uuid[]) AND user_id = $2::text \
     GROUP BY 1, 2, 3";

const USER_RECENT: &str = "SELECT event_id, app_id, event_type, url, created_at, device, browser, os \
     FROM events WHERE app_id = ANY($1::uuid[]) AND user_id = $2::text \
     ORDER BY created_at DESC, event_id DESC LIMIT $3";

/// Answers for `user_id` over the events of `apps`.
#[tracing::instrument(skip_all, fields(apps = apps.len()))]
pub async fn user_activity(reader: &Reader, apps: &[Uuid], user_id: &str) -> Result<UserActivity, QueryError> {
    let mut client = reader.connection().await?;
    let tx = reader.begin(&mut client).await?;
    let (totals, dims, recent) = tokio::try_join!(
        async { rows(&tx, USER_TOTALS, &[&apps, &user_id]).await },
        async { rows(&tx, USER_DIMS, &[&apps, &user_id]).await },
        async { rows(&tx, USER_RECENT, &[&apps, &user_id, &RECENT_EVENTS]).await },
    )?;
    tx.commit().await?;
    let t = totals.first().expect("an aggregate returns one row");
    let mut per_dim: [HashMap<String, i64>; 3] = Default::default();
    for row in &dims {
        let n: i64 = row.get(3);
        for (d, counts) in per_dim.iter_mut().enumerate() {
            if let Some(v) = row.get::<_, Option<String>>(d) {
                *counts.entry(v).or_default() += n;
            }
        }
    }
    Ok(UserActivity {
        total_events: t.get(0),
        unique_event_types: t.get(1),
        total_sessions: t.get(2),
        first_seen: t.get(3),
        last_seen: t.get(4),
        primary: per_dim.map(most_frequent),
        recent: recent
            .iter()
            .map(|r| RecentEvent {
                event_id: r.get(0),
                app_id: r.get(1),
                event_type: r.get(2),
                url: r.get(3),
                created_at: r.get(4),
                device: r.get(5),
                browser: r.get(6),
                os: r.get(7),
            })
            .collect(),
        source: Source::Raw,
    })
}

fn most_frequent(counts: HashMap<String, i64>) -> Option<String> {
    counts.into_iter().max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0))).map(|(v, _)| v)
}
