//! The timeline: events and distinct users per bucket. Event counts follow the plan (rollups for
//! whole quarter-hours of complete months, raw rows for the rest); distinct users are counted exactly
//! from the raw rows of the range, grouped by the same bucket starts.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::params::TimelineRequest;
use super::plan::{plan, QUARTER_HOUR};
use super::store::{complete_months, event_counts, rows, Grouping, Reader};
use super::{QueryError, Source};

/// One bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimelineBucket {
    /// The bucket's natural start (may precede the range for the first bucket).
    pub start: DateTime<Utc>,
    /// Events inside both the bucket and the range.
    pub events: i64,
    /// Distinct non-null user ids among them.
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

const BUCKET_USERS: &str = "SELECT width_bucket(created_at, $5::timestamptz[]), count(DISTINCT user_id) \
     FROM events \
     WHERE app_id = $1 AND created_at >= $2::timestamptz AND created_at < $3::timestamptz \
       AND ($4::text IS NULL OR event_type = $4::text) \
     GROUP BY 1";

/// Answers `req` for `app`.
#[tracing::instrument(skip_all, fields(app = %app, buckets = req.buckets.len()))]
pub async fn timeline(reader: &Reader, app: Uuid, req: &TimelineRequest) -> Result<Timeline, QueryError> {
    let mut client = reader.connection().await?;
    let tx = reader.begin(&mut client).await?;
    let (range, bounds, ty) = (req.filter.range, req.buckets.as_slice(), req.filter.event_type.as_deref());
    let counted = async {
        let plan = plan(range, &complete_months(&tx, range).await?, bounds, QUARTER_HOUR);
        let counts = event_counts(&tx, app, ty, &plan, bounds, Grouping::Bucket).await?;
        Ok::<_, QueryError>((plan, counts))
    };
    let users = async { rows(&tx, BUCKET_USERS, &[&app, &range.start, &range.end, &ty, &bounds]).await };
    let ((plan, counts), users) = tokio::try_join!(counted, users)?;
    tx.commit().await?;
    let mut buckets: Vec<TimelineBucket> =
        bounds.iter().map(|&start| TimelineBucket { start, events: 0, users: 0 }).collect();
    for ((i, _), n) in counts {
        buckets[i].events += n;
    }
    for row in users {
        let b: i32 = row.get(0);
        buckets[usize::try_from(b.max(1) - 1).expect("non-negative")].users = row.get(1);
    }
    Ok(Timeline { buckets, source: Source::of(!plan.rollup.is_empty(), true) })
}
