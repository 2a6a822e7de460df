//! Query planning and execution for the analytics endpoints.
//!
//! A request is parsed once at the boundary ([`params`]) into a half-open UTC range, a time zone and
//! (for timelines) the bucket starts of [`buckets`]. The planner ([`plan`]) splits the range into
//! spans answered from the rollup tables (whole UTC quarter-hours or hours of months listed complete in
//! `rollup_months`) and spans answered from raw `events` rows (sub-slot edges of the range, months whose
//! rollups are not trusted). Distinct counts (users, sessions) cannot be summed from hourly rollups:
//! they are computed exactly with `COUNT(DISTINCT ...)` over the raw rows of the range.
//!
//! - [`store`]: the read transaction (consistent snapshot, JIT off), event counts and breakdowns per plan.
//! - [`timeline`], [`summary`], [`overview`], [`users`]: one endpoint's question each.
//! - [`apps`]: app lookups for authorisation.

pub mod apps;
pub mod buckets;
pub mod overview;
pub mod params;
pub mod plan;
pub mod store;
pub mod summary;
pub mod timeline;
pub mod users;

/// Failures of analytics queries (bad parameters are [`params::ParamError`], found before any query).
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// No connection could be had from the pool.
    #[error("no database connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A statement failed.
    #[error("database error: {0}")]
    Postgres(#[from] tokio_postgres::Error),
}

impl QueryError {
    /// True when the database could not be reached (worth a 503 and a retry), not a bug.
    pub fn is_unavailable(&self) -> bool {
        match self {
            QueryError::Pool(_) => true,
            QueryError::Postgres(e) => {
                e.is_closed()
                    || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
                    || e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED)
            }
        }
    }
}

/// Which tables answered a request, reported as `meta.source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Only rollup tables were read.
    Rollup,
    /// Only raw `events` rows were read.
    Raw,
    /// Both.
    Mixed,
}

impl Source {
    /// From what was read.
    pub fn of(read_rollups: bool, read_raw: bool) -> Source {
        match (read_rollups, read_raw) {
            (true, true) => Source::Mixed,
            (true, false) => Source::Rollup,
            _ => Source::Raw,
        }
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Rollup => "rollup",
            Source::Raw => "raw",
            Source::Mixed => "mixed",
        }
    }
}
