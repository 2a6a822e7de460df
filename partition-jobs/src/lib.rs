//! Partition maintenance for Strata's `events` table: one partition per UTC month
//! (`events_YYYY_MM`), made ahead of time, analyzed, retired by retention, and drained out of a
//! DEFAULT partition if a DBA ever attached one.
//!
//! # Layout
//! - [`month`](mod@month): [`Month`], a validated UTC calendar month; partition names and bounds come from it.
//! - [`error`](mod@error): [`Error`], this crate's error enum.
//! - [`catalog`](mod@catalog): [`Catalog`], partitions with bounds and statistics, read by [`read_catalog`].
//! - [`ddl`](mod@ddl): [`ensure_month`] / [`create_month`]: the one lock discipline for partition DDL.
//! - [`policy`](mod@policy): [`Policy`], stored in `partition_policy` ([`load_policy`], [`save_policy`]).
//! - [`plan`](mod@plan): the pure planner [`plan()`](plan::plan) and its [`Action`]s.
//! - [`apply`](mod@apply): the executor [`apply()`](apply::apply) and its [`ActionOutcome`]s.
//! - [`run`](mod@run): [`run_once`]: one recorded run by the single runner of a database; run history.
//! - [`health`](mod@health): [`health()`](health::health): the verdict DBAs and `/ready` read.
//!
//! The CLI (`src/bin/partition-jobs.rs`) calls the same functions as the server's scheduler.
//!
//! # Rollups
//! Rows moved out of a DEFAULT partition were never in a month whose rollups are trusted: their
//! month is marked `complete = false` in `rollup_months`, and [`RunReport::affected_hours`] lists
//! the UTC hours moved. Rebuilding those rollups is the service's job (this crate does not know
//! the rollup tables). Retention never touches rollups: they may outlive the raw months.
//!
//! # Locks
//! Two advisory lock keys, both documented constants: [`PARTITION_DDL_LOCK_KEY`] (transaction
//! level, around every partition DDL) and [`MAINTENANCE_RUNNER_LOCK_KEY`] (session level, held by
//! the one process running maintenance for a database).

#![warn(missing_docs)]

pub mod apply;
pub mod catalog;
pub mod ddl;
pub mod error;
pub mod health;
pub mod month;
pub mod plan;
pub mod policy;
pub mod run;

pub use apply::{apply, ActionOutcome, OutcomeStatus};
pub use catalog::{read_catalog, Catalog, DefaultPartition, MonthRows, Partition, TableStats};
pub use ddl::{create_month, ensure_month, ensure_months, MonthCreation};
pub use error::Error;
pub use health::{assess, health, Check, Health, RunHistory, Status};
pub use month::Month;
pub use plan::{plan, Action};
pub use policy::{load_policy, save_policy, Policy, RetentionMode};
pub use run::{list_runs, run_once, run_once_as, RunRecord, RunReport, RunStatus};

/// Advisory lock key (transaction level) held around every partition DDL transaction, by the
/// ingest path's on-demand creation and by maintenance alike. ASCII "STRATAPD" (partition DDL).
pub const PARTITION_DDL_LOCK_KEY: i64 = 0x5354_5241_5441_5044;

/// Advisory lock key (session level, `pg_try_advisory_lock`) held by the single process running
/// maintenance on a database. ASCII "STRATAMR" (maintenance runner).
pub const MAINTENANCE_RUNNER_LOCK_KEY: i64 = 0x5354_5241_5441_4D52;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    fn assert_send<T: Send>(_: T) {}

    /// Compile-time check: the service spawns these futures on a multi-threaded runtime.
    #[allow(dead_code)]
    fn futures_are_send(client: &tokio_postgres::Client, policy: &crate::Policy) {
        let now = chrono::Utc::now();
        let month = crate::Month::containing(now);
        let t = Duration::from_secs(1);
        assert_send(crate::ensure_month(client, month, t));
        assert_send(crate::ensure_months(client, month, month, t));
        assert_send(crate::read_catalog(client));
        assert_send(crate::apply(client, &[], t));
        assert_send(crate::run_once(client, now, t));
        assert_send(crate::health(client, now, policy));
        assert_send(crate::load_policy(client));
        assert_send(crate::save_policy(client, policy));
    }
}
