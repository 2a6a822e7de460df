//! The pure planner: [`plan`] turns `(now, Catalog, Policy)` into the [`Action`]s a run applies.
//!
//! No I/O and no clock: `now` is an argument, so every decision is unit-tested (see
//! `plan_tests.rs`). Actions come out in the order [`crate::apply()`] runs them.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::catalog::{Catalog, Partition};
use crate::month::Month;
use crate::policy::{Policy, RetentionMode};

/// Missing months are filled back to at most this many months before the current one (older
/// gaps are left to on-demand creation), so an ancient hand-made partition cannot cause a storm.
pub const GAP_FILL_MAX_MONTHS_BACK: i32 = 24;

/// One step of maintenance. Serialized as `{"kind": "createMonth", "month": "2026-11", ...}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum Action {
    /// Make the month's partition (premake, or a gap in the covered range).
    CreateMonth {
        /// The month.
        month: Month,
    },
    /// Make the month's partition, moving the month's rows out of the DEFAULT partition in the
    /// same transaction. The outcome lists the UTC hours whose rollups the service must rebuild.
    MoveDefaultRows {
        /// The month.
        month: Month,
        /// Rows the catalog counted (the outcome says how many were moved).
        rows: i64,
    },
    /// Detach the month's partition (retention, or finishing an interrupted concurrent detach).
    DetachPartition {
        /// The month.
        month: Month,
    },
    /// Drop the month's detached table (retention mode `drop`).
    DropPartition {
        /// The month.
        month: Month,
    },
    /// ANALYZE one partition whose rows changed past the policy's thresholds.
    AnalyzePartition {
        /// The month.
        month: Month,
        /// `n_mod_since_analyze` when planned.
        changed_rows: i64,
    },
    /// ANALYZE the partitioned parent (autovacuum never does). On PostgreSQL before 17 this also
    /// analyzes every partition, so it replaces this run's `AnalyzePartition` actions.
    AnalyzeParent,
}

impl Action {
    /// Position in the lock order `apply` follows: create/move (month ascending), detach, drop,
    /// analyze partitions, analyze the parent.
    pub fn rank(&self) -> (u8, Option<Month>) {
        match *self {
            Action::CreateMonth { month } | Action::MoveDefaultRows { month, .. } => (0, Some(month)),
            Action::DetachPartition { month } => (1, Some(month)),
            Action::DropPartition { month } => (2, Some(month)),
            Action::AnalyzePartition { month, .. } => (3, Some(month)),
            Action::AnalyzeParent => (4, None),
        }
    }

    /// The month acted on, if any.
    pub fn month(&self) -> Option<Month> {
        self.rank().1
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::CreateMonth { month } => write!(f, "create {}", month.partition_name()),
            Action::MoveDefaultRows { month, rows } => {
                write!(f, "create {} moving {rows} rows from the default partition", month.partition_name())
            }
            Action::DetachPartition { month } => write!(f, "detach {}", month.partition_name()),
            Action::DropPartition { month } => write!(f, "drop {}", month.partition_name()),
            Action::AnalyzePartition { month, changed_rows } => {
                write!(f, "analyze {} ({changed_rows} rows changed)", month.partition_name())
            }
            Action::AnalyzeParent => write!(f, "analyze events (parent)"),
        }
    }
}

/// Plans one maintenance run.
pub fn plan(now: DateTime<Utc>, catalog: &Catalog, policy: &Policy) -> Vec<Action> {
    let mut actions = creations(now, catalog, policy);
    actions.extend(retention(now, catalog, policy));
    let retiring: BTreeSet<Month> =
        actions.iter().filter(|a| matches!(a, Action::DetachPartition { .. })).filter_map(Action::month).collect();
    if parent_needs_analyze(now, catalog, policy) {
        actions.push(Action::AnalyzeParent);
    } else {
        actions.extend(
            stale_partitions(catalog, policy)
                .filter(|(month, _)| !retiring.contains(month))
                .map(|(month, changed_rows)| Action::AnalyzePartition { month, changed_rows }),
        );
    }
    actions.sort_by_key(Action::rank);
    actions
}

/// Months that premake and gap filling want and no partition covers, without months a
/// hand-made partition partly overlaps (those cannot be made) and months whose table was detached
/// (never re-attached or shadowed silently).
pub fn missing_months(now: DateTime<Utc>, catalog: &Catalog, policy: &Policy) -> Vec<Month> {
    let current = Month::containing(now);
    let mut first = current;
    if let Some(oldest) = catalog.partitions.iter().filter_map(first_month).min() {
        first = first.min(oldest.max(current.add_months(-GAP_FILL_MAX_MONTHS_BACK)));
    }
    if let Some(retained) = policy.oldest_retained_month(now) {
        first = first.max(retained).min(current);
    }
    first
        .through(policy.premake_horizon(now))
        .filter(|&m| !catalog.overlaps(m) && !catalog.detached.contains(&m))
        .collect()
}

/// The month holding a partition's lower bound (MINVALUE partitions have none).
fn first_month(p: &Partition) -> Option<Month> {
    p.from.map(Month::containing)
}

fn creations(now: DateTime<Utc>, catalog: &Catalog, policy: &Policy) -> Vec<Action> {
    let mut moves: Vec<Action> = Vec::new();
    let mut moving = BTreeSet::new();
    if let Some(default) = &catalog.default_partition {
        for mr in &default.months {
            // A partly overlapping hand-made partition leaves nowhere to move these rows.
            if !catalog.overlaps(mr.month) {
                moving.insert(mr.month);
                moves.push(Action::MoveDefaultRows { month: mr.month, rows: mr.rows });
            }
        }
    }
    let creates = missing_months(now, catalog, policy)
        .into_iter()
        .filter(|m| !moving.contains(m))
        .map(|month| Action::CreateMonth { month });
    moves.extend(creates);
    moves
}

fn retention(now: DateTime<Utc>, catalog: &Catalog, policy: &Policy) -> Vec<Action> {
    let drop = policy.retention_mode == RetentionMode::Drop;
    let mut actions = Vec::new();
    for p in &catalog.partitions {
        let Some(month) = p.month else { continue };
        if p.detach_pending || past_retention(now, policy, month) {
            actions.push(Action::DetachPartition { month });
            if drop && past_retention(now, policy, month) {
                actions.push(Action::DropPartition { month });
            }
        }
    }
    if drop {
        let expired = catalog.detached.iter().filter(|&&m| past_retention(now, policy, m));
        actions.extend(expired.map(|&month| Action::DropPartition { month }));
    }
    actions
}

/// Whether retention says `month` should no longer be attached at `now`.
pub fn past_retention(now: DateTime<Utc>, policy: &Policy, month: Month) -> bool {
    policy.oldest_retained_month(now).is_some_and(|oldest| month < oldest)
}

/// Managed partitions whose changed rows reached the policy's threshold, with that count.
pub fn stale_partitions<'a>(catalog: &'a Catalog, policy: &'a Policy) -> impl Iterator<Item = (Month, i64)> + 'a {
    catalog.partitions.iter().filter_map(move |p| {
        let changed = p.stats.mod_since_analyze;
        let due = changed > 0 && changed >= policy.analyze_threshold(p.stats.row_estimate);
        p.month.filter(|_| due && !p.detach_pending).map(|m| (m, changed))
    })
}

/// Whether the partitioned parent is due for ANALYZE: it holds rows and was never analyzed, or
/// the minimum interval has passed and partitions changed since (a partition was analyzed after
/// the parent, or the rows changed since reach the threshold for the whole table).
pub fn parent_needs_analyze(now: DateTime<Utc>, catalog: &Catalog, policy: &Policy) -> bool {
    let parts = &catalog.partitions;
    let rows: i64 = parts.iter().map(|p| p.stats.row_estimate.unwrap_or(0).max(p.stats.live_rows)).sum();
    let changed: i64 = parts.iter().map(|p| p.stats.mod_since_analyze).sum();
    let Some(last) = catalog.parent.last_analyzed() else {
        return rows > 0 || changed > 0;
    };
    if now - last < policy.parent_analyze_min_interval() {
        return false;
    }
    let analyzed_since = parts.iter().any(|p| p.stats.last_analyzed().is_some_and(|t| t > last));
    analyzed_since || (changed > 0 && changed >= policy.analyze_threshold(Some(rows)))
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
