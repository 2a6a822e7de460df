//! The app overview: total events, distinct users and sessions, event types, and the top event types,
//! over a range (all time by default, as the original answered), from the multi-tier rollups and raw
//! edges (see [`super::aggregate`]).

use uuid::Uuid;

use super::aggregate::{aggregate, Select};
use super::params::Filter;
use super::store::Reader;
use super::{QueryError, Source};

/// How many event types the overview lists.
pub const TOP_EVENTS: usize = 10;

/// An app's totals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overview {
    /// Events.
    pub total_events: i64,
    /// Distinct non-null user ids.
    pub total_users: i64,
    /// Distinct non-null session ids.
    pub total_sessions: i64,
    /// Event types with at least one event.
    pub unique_event_types: i64,
    /// The [`TOP_EVENTS`] most frequent types with their counts, ties by name.
    pub top_events: Vec<(String, i64)>,
    /// What was read.
    pub source: Source,
}

/// Answers the overview of `app` over `filter.range` (`filter.event_type` is not used).
#[tracing::instrument(skip_all, fields(app = %app))]
pub async fn overview(reader: &Reader, app: Uuid, filter: &Filter) -> Result<Overview, QueryError> {
    let mut client = reader.connection().await?;
    let tx = reader.begin(&mut client).await?;
    let (range, bounds) = (filter.range, [filter.range.start]);
    let totals = Select { event_type: None, per_type: false, users: true, sessions: true, dims: false };
    let per_type = Select { event_type: None, per_type: true, users: false, sessions: false, dims: false };
    let ((mut totals, source), (types, _)) =
        tokio::try_join!(aggregate(&tx, app, range, &bounds, totals), aggregate(&tx, app, range, &bounds, per_type))?;
    tx.commit().await?;
    let mut types: Vec<(String, i64)> =
        types.into_iter().filter(|(_, a)| a.events != 0).map(|((_, t), a)| (t, a.events)).collect();
    types.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut all = totals.remove(&(0, String::new())).unwrap_or_default();
    Ok(Overview {
        total_events: all.events,
        total_users: all.users.count(),
        total_sessions: all.sessions.count(),
        unique_event_types: i64::try_from(types.len()).expect("fits"),
        top_events: types.into_iter().take(TOP_EVENTS).collect(),
        source,
    })
}
