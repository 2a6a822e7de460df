//! Query planning and execution for the analytics endpoints.
//!
//! A request is parsed once at the boundary ([`params`]) into a half-open UTC range, a time zone and
//! (for timelines) the bucket starts of [`buckets`]. The planner ([`plan`]) splits the range into
//! spans answered from the rollup tables (whole UTC hours of months whose rollups are complete in
//! `rollup_months`) and spans answered from raw `events` rows (sub-hour edges of the range, months whose
//! rollups are not trusted). [`aggregate`] executes such a plan against the multi-tier rollups (UTC
//! hours, days and months: event counts, breakdowns, and distinct-count [`crate::rollup::sketch`]es of users and
//! sessions) and the raw rows.
//!
//! - [`store`]: the read transaction (consistent snapshot, JIT off), event counts per plan.
//! - [`timeline`], [`summary`], [`overview`], [`users`]: one endpoint's question each.
//! - [`apps`]: app lookups for authorisation.

pub mod aggregate;
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
    /// A parameter found unusable only when the answer is computed (too many buckets: laid out on a
    /// cache miss only).
    #[error(transparent)]
    Param(#[from] params::ParamError),
    /// A stored rollup sketch could not be decoded.
    #[error(transparent)]
    Corrupt(#[from] crate::rollup::sketch::CorruptSketch),
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
