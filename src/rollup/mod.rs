//! Rollups: the pre-aggregated tables analytics read instead of raw `events` rows (`rollup_hourly`,
//! `rollup_hourly_dims`, the multi-tier `rollup_tiers`, and `rollup_months`, which says which months
//! the planner trusts).
//!
//! - [`sketch`]: the mergeable distinct-count sketches of users and sessions.
//! - [`compact`]: the multi-tier rollups: writer deltas, compaction, tier rebuilds.
//! - [`rebuild`]: rebuilding rollups from raw rows (CLI, scheduler, erasure).

pub mod compact;
pub mod rebuild;
pub mod sketch;
