//! The executor: [`apply()`] runs planned [`Action`]s and reports an [`ActionOutcome`] for each.
//!
//! Lock order, the same for every action and every process: the partition DDL advisory lock,
//! then `events`, then partitions. Each action is its own transaction (or, for `DETACH ...
//! CONCURRENTLY`, which cannot run in one, its own statement under the session-level advisory
//! lock), bounded by `lock_timeout` and retried a bounded number of times. Actions run in
//! [`Action::rank`] order. ANALYZE does not take the advisory lock: it only needs SHARE UPDATE
//! EXCLUSIVE, and holding the DDL lock through a long ANALYZE would stall on-demand creation.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::catalog::read_bounds;
use crate::ddl::{create_month, in_ddl_transaction, retry, set_lock_timeout, transaction_once};
use crate::error::Error;
use crate::month::Month;
use crate::plan::Action;
use crate::PARTITION_DDL_LOCK_KEY;

/// How an action ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum OutcomeStatus {
    /// It changed something.
    Done,
    /// Nothing to do any more (e.g. another process made the month first).
    Noop,
    /// It failed; `detail` has the error chain.
    Failed,
    /// Not attempted (e.g. a drop whose detach failed).
    Skipped,
}

/// The result of one action.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionOutcome {
    /// The action.
    pub action: Action,
    /// How it ended.
    pub status: OutcomeStatus,
    /// Why it failed, was skipped or was a no-op.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Wall time spent, retries included.
    pub elapsed_ms: u64,
    /// Rows moved out of the DEFAULT partition.
    #[serde(skip_serializing_if = "is_zero")]
    pub moved_rows: i64,
    /// UTC hours (truncated) of moved rows: their rollups must be rebuilt by the service.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub affected_hours: Vec<DateTime<Utc>>,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// Applies `actions` in lock order ([`Action::rank`]); each failure is reported in its outcome
/// and does not stop the others (except that a month whose detach failed is not dropped).
#[tracing::instrument(skip_all, fields(actions = actions.len()))]
pub async fn apply(client: &Client, actions: &[Action], lock_timeout: Duration) -> Vec<ActionOutcome> {
    let mut ordered = actions.to_vec();
    ordered.sort_by_key(Action::rank);
    let mut failed_detach = BTreeSet::new();
    let mut outcomes = Vec::with_capacity(ordered.len());
    for action in ordered {
        let started = Instant::now();
        let mut outcome = match action {
            Action::DropPartition { month } if failed_detach.contains(&month) => {
                outcome(action.clone(), OutcomeStatus::Skipped, Some("detach failed".into()))
            }
            _ => run_action(client, &action, lock_timeout).await,
        };
        outcome.elapsed_ms = started.elapsed().as_millis() as u64;
        if let (Action::DetachPartition { month }, OutcomeStatus::Failed) = (&action, outcome.status) {
            failed_detach.insert(*month);
        }
        if outcome.status == OutcomeStatus::Failed {
            tracing::warn!(action = ?action, detail = ?outcome.detail, "maintenance action failed");
        }
        outcomes.push(outcome);
    }
    outcomes
}

fn outcome(action: Action, status: OutcomeStatus, detail: Option<String>) -> ActionOutcome {
    ActionOutcome { action, status, detail, elapsed_ms: 0, moved_rows: 0, affected_hours: Vec::new() }
}

async fn run_action(client: &Client, action: &Action, lock_timeout: Duration) -> ActionOutcome {
    let result = match *action {
        Action::CreateMonth { month } | Action::MoveDefaultRows { month, .. } => {
            match create_month(client, month, lock_timeout).await {
                Ok(c) if c.created => {
                    let mut o = outcome(action.clone(), OutcomeStatus::Done, None);
                    o.moved_rows = c.moved_rows;
                    o.affected_hours = c.affected_hours;
                    return o;
                }
                Ok(_) => Ok(false),
                Err(e) => Err(e),
            }
        }
        Action::DetachPartition { month } => detach(client, month, lock_timeout).await,
        Action::DropPartition { month } => drop_table(client, month, lock_timeout).await,
        Action::AnalyzePartition { month, .. } => analyze(client, &month.partition_name(), lock_timeout).await,
        Action::AnalyzeParent => analyze(client, "events", lock_timeout).await,
    };
    match result {
        Ok(true) => outcome(action.clone(), OutcomeStatus::Done, None),
        Ok(false) => outcome(action.clone(), OutcomeStatus::Noop, Some("nothing to do".into())),
        Err(e) => outcome(action.clone(), OutcomeStatus::Failed, Some(error_chain(&e))),
    }
}

/// `error: cause: cause ...`, for outcomes and run records.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Detaches the month: `CONCURRENTLY` when no DEFAULT partition exists (inserts continue), plain
/// otherwise (PostgreSQL forbids `CONCURRENTLY` then), and `FINALIZE` for an interrupted one.
/// `DETACH ... CONCURRENTLY` cannot run in a transaction, so this holds the DDL advisory lock at
/// session level (it conflicts with the transaction-level one all the same) and releases it after.
/// Ok(false) when the month is not attached.
async fn detach(client: &Client, month: Month, lock_timeout: Duration) -> Result<bool, Error> {
    retry("detaching a partition", || async {
        let previous: String = client
            .query_one("SELECT current_setting('lock_timeout')", &[])
            .await
            .map_err(Error::db("reading lock_timeout"))?
            .get(0);
        set_lock_timeout(client, lock_timeout, false).await?;
        let result = detach_under_session_lock(client, month).await;
        let restore = "SELECT set_config('lock_timeout', $1, false)";
        let _ = client.execute(restore, &[&previous]).await;
        result
    })
    .await
}

async fn detach_under_session_lock(client: &Client, month: Month) -> Result<bool, Error> {
    let ctx = "detaching a partition";
    client
        .execute("SELECT pg_advisory_lock($1)", &[&PARTITION_DDL_LOCK_KEY])
        .await
        .map_err(Error::db("taking the partition DDL lock"))?;
    let result = async {
        let bounds = read_bounds(client).await?;
        let Some(p) = bounds.month_partition(month) else {
            return Ok(false);
        };
        let mode = if p.detach_pending {
            " FINALIZE"
        } else if bounds.default_partition.is_some() {
            ""
        } else {
            " CONCURRENTLY"
        };
        let sql = format!("ALTER TABLE events DETACH PARTITION {}{mode}", month.partition_name());
        client.batch_execute(&sql).await.map_err(Error::db(ctx))?;
        tracing::info!(month = %month, mode, "detached partition");
        Ok(true)
    }
    .await;
    let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&PARTITION_DDL_LOCK_KEY]).await;
    result
}

const TABLE_STATE_SQL: &str = r"
SELECT c.relispartition
FROM pg_class c
WHERE c.relname = $1 AND c.relkind = 'r'
  AND c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = 'events'::regclass)";

/// Drops the month's table once detached; refuses while it is still attached.
async fn drop_table(client: &Client, month: Month, lock_timeout: Duration) -> Result<bool, Error> {
    let name = month.partition_name();
    in_ddl_transaction(client, "dropping a detached partition", lock_timeout, || async {
        let row =
            client.query_opt(TABLE_STATE_SQL, &[&name]).await.map_err(Error::db("dropping a detached partition"))?;
        match row {
            None => Ok(false),
            Some(r) if r.get::<_, bool>(0) => Err(Error::StillAttached { name: name.clone() }),
            Some(_) => {
                let sql = format!("DROP TABLE {name}");
                client.batch_execute(&sql).await.map_err(Error::db("dropping a detached partition"))?;
                tracing::info!(table = %name, "dropped detached partition");
                Ok(true)
            }
        }
    })
    .await
}

/// ANALYZE under `lock_timeout`; a table that no longer exists is a no-op. `table` is `events`
/// or a name made by [`Month::partition_name`].
async fn analyze(client: &Client, table: &str, lock_timeout: Duration) -> Result<bool, Error> {
    let ctx = "analyzing";
    let sql = format!("ANALYZE {table}");
    let body = || async { client.batch_execute(&sql).await.map_err(Error::db(ctx)) };
    match retry(ctx, || transaction_once(client, ctx, lock_timeout, false, &body)).await {
        Ok(()) => Ok(true),
        Err(e) if e.sql_state() == Some(&SqlState::UNDEFINED_TABLE) => Ok(false),
        Err(e) => Err(e),
    }
}
