//! Rollups: the pre-aggregated tables analytics read instead of raw `events` rows. `rollup_hourly`
//! and `rollup_hourly_dims` count events per (app, UTC hour, event type) in writer shards;
//! `rollup_tiers` (see `sql/migrations/V4__rollup_tiers.sql` and `V5__quarter_tiers.sql`) holds per
//! (app, UTC hour, day or month, event type) the event count, sketches of distinct users and
//! sessions, and device / browser / os breakdowns, and per (app, UTC quarter hour) the same for every
//! event type together, so zones at +5:30 and +5:45 read rollups too; `rollup_months` says which
//! months the query planner trusts.
//!
//! One room per concern:
//! - [`tier`]: the periods ([`tier::Tier`]: delta, quarter hour, hour, day, month) and their bounds.
//! - [`sketch`]: mergeable distinct-count sketches of users and sessions.
//! - [`agg`]: what one rollup row (or a sum of rows) says, and its stored columns.
//! - [`delta`]: what a group commit adds, computed from its new events: hourly upserts and tier
//!   deltas, written in the writer's transaction.
//! - [`compact`]: merging tier deltas into quarter-hour, hour, day and month rows.
//! - [`rebuild`]: recomputing rollups from raw rows (CLI, maintenance scheduler).
//! - [`erase`]: the rollup side of erasing an end user's events.
//! - [`months`]: which months' rollups are complete (trusted by the planner), and their health check.
//!
//! This module imports nothing from `ingest` or `query`: the writer hands it [`delta::Counted`]
//! rows, and the query planner reads [`agg::Agg`]s and [`tier::Tier`]s from it.

pub mod agg;
pub mod compact;
pub mod delta;
pub mod erase;
pub mod months;
pub mod rebuild;
pub mod sketch;
pub mod tier;

/// Failures of compaction, rebuilds and erasure.
#[derive(Debug, thiserror::Error)]
pub enum RollupError {
    /// A statement failed.
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    /// A stored sketch could not be read.
    #[error(transparent)]
    Corrupt(#[from] sketch::CorruptSketch),
}
