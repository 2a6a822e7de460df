//! The summary: per event type, total events, distinct users and sessions, and device / browser / os
//! breakdowns. Totals and breakdowns follow an hourly plan (the breakdown rollup is hourly); distinct
//! counts are exact, from the raw rows of the range.

use std::collections::{BTreeSet, HashMap};

use uuid::Uuid;

use super::params::Filter;
use super::plan::{plan, HOUR};
use super::store::{breakdowns, complete_months, event_counts, rows, Grouping, Reader};
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

const TYPE_DISTINCT: &str = "SELECT event_type, count(DISTINCT user_id), count(DISTINCT session_id) \
     FROM events \
     WHERE app_id = $1 AND created_at >= $2::timestamptz AND created_at < $3::timestamptz \
       AND ($4::text IS NULL OR event_type = $4::text) \
     GROUP BY 1";

/// Answers the summary of `app` under `filter`.
#[tracing::instrument(skip_all, fields(app = %app))]
pub async fn summary(reader: &Reader, app: Uuid, filter: &Filter) -> Result<Summary, QueryError> {
    let mut client = reader.connection().await?;
    let tx = reader.begin(&mut client).await?;
    let (range, ty) = (filter.range, filter.event_type.as_deref());
    let bounds = [range.start];
    let counted = async {
        let plan = plan(range, &complete_months(&tx, range).await?, &[], HOUR);
        let (counts, dims) = tokio::try_join!(
            event_counts(&tx, app, ty, &plan, &bounds, Grouping::BucketAndType),
            breakdowns(&tx, app, ty, &plan)
        )?;
        Ok::<_, QueryError>((plan, counts, dims))
    };
    let distinct = async { rows(&tx, TYPE_DISTINCT, &[&app, &range.start, &range.end, &ty]).await };
    let ((plan, counts, mut dims), distinct) = tokio::try_join!(counted, distinct)?;
    tx.commit().await?;
    let distinct: HashMap<String, (i64, i64)> =
        distinct.iter().map(|r| (r.get::<_, String>(0), (r.get(1), r.get(2)))).collect();
    let totals: HashMap<String, i64> = counts.into_iter().map(|((_, t), n)| (t, n)).collect();
    let names: BTreeSet<&String> = totals.keys().chain(distinct.keys()).collect();
    let mut types: Vec<TypeSummary> = names
        .into_iter()
        .map(|name| {
            let (unique_users, unique_sessions) = distinct.get(name).copied().unwrap_or_default();
            TypeSummary {
                event_type: name.clone(),
                total_events: totals.get(name).copied().unwrap_or_default(),
                unique_users,
                unique_sessions,
                breakdowns: dims.remove(name).unwrap_or_default().map(sorted),
            }
        })
        .collect();
    types.sort_by(|a, b| b.total_events.cmp(&a.total_events).then_with(|| a.event_type.cmp(&b.event_type)));
    Ok(Summary { types, source: Source::of(!plan.rollup.is_empty(), true) })
}

fn sorted(counts: HashMap<String, i64>) -> Breakdown {
    let mut out: Vec<(String, i64)> = counts.into_iter().filter(|(_, n)| *n != 0).collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out.into_iter().map(|(v, n)| ((!v.is_empty()).then_some(v), n)).collect()
}
