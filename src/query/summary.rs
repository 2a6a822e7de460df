//! The summary: per event type, total events, distinct users and sessions, and device / browser / os
//! breakdowns, from the multi-tier rollups and raw edges (see [`super::aggregate`]).

use std::collections::HashMap;

use uuid::Uuid;

use super::aggregate::{aggregate, Select};
use super::params::Filter;
use super::store::Reader;
use super::{QueryError, Source};

/// Counts by value, most frequent first, ties by value ascending; `None` is unknown.
pub type Breakdown = Vec<(Option<String>, i64)>;

/// One event type's summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeSummary {
    /// The type.
    pub event_type: String,
    /// Events.
    pub total_events: i64,
    /// Distinct non-null user ids.
    pub unique_users: i64,
    /// Distinct non-null session ids.
    pub unique_sessions: i64,
    /// Breakdowns by device, browser, os.
    pub breakdowns: [Breakdown; 3],
}

/// Every event type with events in the range, most events first, ties by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Per type.
    pub types: Vec<TypeSummary>,
    /// What was read.
    pub source: Source,
}

/// Answers the summary of `app` under `filter`.
#[tracing::instrument(skip_all, fields(app = %app))]
pub async fn summary(reader: &Reader, app: Uuid, filter: &Filter) -> Result<Summary, QueryError> {
    let mut client = reader.connection().await?;
    let tx = reader.begin(&mut client).await?;
    let select =
        Select { event_type: filter.event_type.as_deref(), per_type: true, users: true, sessions: true, dims: true };
    let (aggs, source) = aggregate(&tx, app, filter.range, &[filter.range.start], select).await?;
    tx.commit().await?;
    let mut types: Vec<TypeSummary> = aggs
        .into_iter()
        .filter(|(_, agg)| agg.events != 0)
        .map(|((_, name), mut agg)| TypeSummary {
            event_type: name,
            total_events: agg.events,
            unique_users: agg.users.count(),
            unique_sessions: agg.sessions.count(),
            breakdowns: agg.dims.map(sorted),
        })
        .collect();
    types.sort_by(|a, b| b.total_events.cmp(&a.total_events).then_with(|| a.event_type.cmp(&b.event_type)));
    Ok(Summary { types, source })
}

fn sorted(counts: HashMap<String, i64>) -> Breakdown {
    let mut out: Vec<(String, i64)> = counts.into_iter().filter(|(_, n)| *n != 0).collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out.into_iter().map(|(v, n)| ((!v.is_empty()).then_some(v), n)).collect()
}
