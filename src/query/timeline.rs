//! The timeline: events and distinct users per bucket, from the multi-tier rollups for whole UTC
//! hours of complete months and from raw rows for the rest (see [`super::aggregate`]).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::aggregate::{aggregate, Select};
use super::params::TimelineRequest;
use super::store::Reader;
use super::QueryError;
use super::Source;

/// One bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimelineBucket {
    /// The bucket's natural start (may precede the range for the first bucket).
    pub start: DateTime<Utc>,
    /// Events inside both the bucket and the range.
    pub events: i64,
    /// Distinct non-null user ids among them (see [`crate::rollup::sketch`] for exactness).
    pub users: i64,
}

/// Every bucket of the request, in order, zeros included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeline {
    /// The buckets.
    pub buckets: Vec<TimelineBucket>,
    /// What was read.
    pub source: Source,
}

/// Answers `req` for `app`.
#[tracing::instrument(skip_all, fields(app = %app))]
pub async fn timeline(reader: &Reader, app: Uuid, req: &TimelineRequest) -> Result<Timeline, QueryError> {
    let bounds = req.buckets()?;
    let bounds = bounds.as_slice();
    let mut client = reader.connection().await?;
    let tx = reader.begin(&mut client).await?;
    let select = Select {
        event_type: req.filter.event_type.as_deref(),
        per_type: false,
        users: true,
        sessions: false,
        dims: false,
    };
    let (mut aggs, source) = aggregate(&tx, app, req.filter.range, bounds, select).await?;
    tx.commit().await?;
    let buckets = bounds
        .iter()
        .enumerate()
        .map(|(i, &start)| match aggs.get_mut(&(i, String::new())) {
            Some(agg) => TimelineBucket { start, events: agg.events, users: agg.users.count() },
            None => TimelineBucket { start, events: 0, users: 0 },
        })
        .collect();
    Ok(Timeline { buckets, source })
}
