//! The app overview: total events, distinct users and sessions, event types, and the top event types,
//! over a range (all time by default, as the original answered). Counts follow a quarter-hour plan;
//! distinct counts are exact, from the raw rows of the range.

use uuid::Uuid;

use super::params::Filter;
use super::plan::{plan, QUARTER_HOUR};
use super::store::{complete_months, event_counts, rows, Grouping, Reader};
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

const TOTAL_DISTINCT: &str = "SELECT count(DISTINCT user_id), count(DISTINCT session_id) \
     FROM events \
     WHERE app_id = $1 AND created_at >= $2::timestamptz AND created_at < $3::timestamptz";

/// Answers the overview of `app` over `filter.range` (`filter.event_type` is not used).
#[tracing::instrument(skip_all, fields(app = %app))]
pub async fn overview(reader: &Reader, app: Uuid, filter: &Filter) -> Result<Overview, QueryError> {
    let mut client = reader.connection().await?;
    let tx = reader.begin(&mut client).await?;
    let range = filter.range;
    let bounds = [range.start];
    let counted = async {
        let plan = plan(range, &complete_months(&tx, range).await?, &[], QUARTER_HOUR);
        let counts = event_counts(&tx, app, None, &plan, &bounds, Grouping::BucketAndType).await?;
        Ok::<_, QueryError>((plan, counts))
    };
    let distinct = async { rows(&tx, TOTAL_DISTINCT, &[&app, &range.start, &range.end]).await };
    let ((plan, counts), distinct) = tokio::try_join!(counted, distinct)?;
    tx.commit().await?;
    let mut types: Vec<(String, i64)> = counts.into_iter().map(|((_, t), n)| (t, n)).collect();
    types.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let row = distinct.first().expect("an aggregate returns one row");
    Ok(Overview {
        total_events: types.iter().map(|(_, n)| n).sum(),
        total_users: row.get(0),
        total_sessions: row.get(1),
        unique_event_types: i64::try_from(types.len()).expect("fits"),
        top_events: types.into_iter().take(TOP_EVENTS).collect(),
        source: Source::of(!plan.rollup.is_empty(), true),
    })
}
