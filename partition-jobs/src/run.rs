//! [`run_once`]: one maintenance run (catalog + policy -> plan -> apply), by at most one process
//! per database, recorded in `maintenance_runs`; [`list_runs`] reads that history.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::{Client, Row};

use crate::apply::{apply, error_chain, ActionOutcome, OutcomeStatus};
use crate::catalog::read_catalog;
use crate::error::Error;
use crate::month::Month;
use crate::plan::plan;
use crate::policy::{load_policy, Policy};
use crate::MAINTENANCE_RUNNER_LOCK_KEY;

/// Runner name [`run_once`] records.
pub const DEFAULT_RUNNER: &str = "partition-jobs";

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum RunStatus {
    /// Every action succeeded (or had nothing to do).
    Ok,
    /// Reading the state failed or some action failed; see `error` and the outcomes.
    Failed,
    /// Another process holds the runner lock; nothing was done or recorded.
    Skipped,
}

/// What one call of [`run_once`] did.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunReport {
    /// The `maintenance_runs` row, when the run was recorded (not for skipped runs).
    pub run_id: Option<i64>,
    /// How it ended.
    pub status: RunStatus,
    /// Why it was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The `now` the run planned with.
    pub started_at: DateTime<Utc>,
    /// `started_at` plus the elapsed wall time.
    pub finished_at: DateTime<Utc>,
    /// The policy applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<Policy>,
    /// Every action with its outcome.
    pub outcomes: Vec<ActionOutcome>,
    /// The first failure, as an error chain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl RunReport {
    /// UTC hours whose rows were moved out of the DEFAULT partition: the service must rebuild the
    /// rollups of these hours (this crate does not know the rollup tables) and then mark their
    /// months complete in `rollup_months`.
    pub fn affected_hours(&self) -> BTreeSet<DateTime<Utc>> {
        let hours = self.outcomes.iter().flat_map(|o| o.affected_hours.iter());
        hours.copied().collect()
    }

    /// Months that received rows from the DEFAULT partition (`rollup_months.complete = false`).
    pub fn affected_months(&self) -> BTreeSet<Month> {
        self.affected_hours().into_iter().map(Month::containing).collect()
    }
}

/// [`run_once_as`] with the runner name [`DEFAULT_RUNNER`].
pub async fn run_once(client: &Client, now: DateTime<Utc>, lock_timeout: Duration) -> Result<RunReport, Error> {
    run_once_as(client, now, lock_timeout, DEFAULT_RUNNER).await
}

/// One maintenance run, if this session gets the runner lock (`pg_try_advisory_lock(`
/// [`MAINTENANCE_RUNNER_LOCK_KEY`]`)`, session level); otherwise a [`RunStatus::Skipped`] report.
/// Reads policy and catalog, plans with `now`, applies, and records the run (start, end, outcomes,
/// error) in `maintenance_runs`. Failures while reading or applying end up in the report (status
/// `Failed`); `Err` only when the run could not even be recorded.
///
/// The lock is released before returning. Do not drop the future half-way on a pooled
/// connection: the session lock (and possibly a transaction) would stay with the connection.
#[tracing::instrument(skip_all, fields(runner))]
pub async fn run_once_as(
    client: &Client,
    now: DateTime<Utc>,
    lock_timeout: Duration,
    runner: &str,
) -> Result<RunReport, Error> {
    let got: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&MAINTENANCE_RUNNER_LOCK_KEY])
        .await
        .map_err(Error::db("taking the maintenance runner lock"))?
        .get(0);
    if !got {
        tracing::info!("skipped: another runner holds the lock");
        return Ok(RunReport {
            run_id: None,
            status: RunStatus::Skipped,
            detail: Some("skipped: another runner holds the lock".into()),
            started_at: now,
            finished_at: now,
            policy: None,
            outcomes: Vec::new(),
            error: None,
        });
    }
    let result = run_locked(client, now, lock_timeout, runner).await;
    let unlock = "SELECT pg_advisory_unlock($1)";
    let _ = client.execute(unlock, &[&MAINTENANCE_RUNNER_LOCK_KEY]).await;
    result
}

const START_SQL: &str = "INSERT INTO maintenance_runs (started_at, runner) VALUES ($1, $2) RETURNING id";

const FINISH_SQL: &str = r"
UPDATE maintenance_runs SET finished_at = $2, status = $3, actions = $4, error = $5
WHERE id = $1";

async fn run_locked(
    client: &Client,
    now: DateTime<Utc>,
    lock_timeout: Duration,
    runner: &str,
) -> Result<RunReport, Error> {
    let clock = Instant::now();
    let run_id: i64 =
        client.query_one(START_SQL, &[&now, &runner]).await.map_err(Error::db("recording the maintenance run"))?.get(0);
    let mut report = RunReport {
        run_id: Some(run_id),
        status: RunStatus::Ok,
        detail: None,
        started_at: now,
        finished_at: now,
        policy: None,
        outcomes: Vec::new(),
        error: None,
    };
    match load_state(client).await {
        Ok((policy, catalog)) => {
            let actions = plan(now, &catalog, &policy);
            report.outcomes = apply(client, &actions, lock_timeout).await;
            report.policy = Some(policy);
            report.error =
                report.outcomes.iter().find(|o| o.status == OutcomeStatus::Failed).and_then(|o| o.detail.clone());
        }
        Err(e) => report.error = Some(error_chain(&e)),
    }
    if report.error.is_some() {
        report.status = RunStatus::Failed;
    }
    let elapsed = chrono::Duration::from_std(clock.elapsed()).unwrap_or_default();
    report.finished_at = now + elapsed;
    let status = if report.status == RunStatus::Ok { "ok" } else { "failed" };
    let actions = serde_json::to_value(&report.outcomes).map_err(Error::Json)?;
    client
        .execute(FINISH_SQL, &[&run_id, &report.finished_at, &status, &actions, &report.error])
        .await
        .map_err(Error::db("recording the maintenance run"))?;
    tracing::info!(run_id, status, actions = report.outcomes.len(), "maintenance run finished");
    Ok(report)
}

async fn load_state(client: &Client) -> Result<(Policy, crate::catalog::Catalog), Error> {
    Ok((load_policy(client).await?, read_catalog(client).await?))
}

/// One row of `maintenance_runs`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunRecord {
    /// Row id.
    pub id: i64,
    /// When it started (the `now` it planned with).
    pub started_at: DateTime<Utc>,
    /// When it finished; `None` while running or if its process died.
    pub finished_at: Option<DateTime<Utc>>,
    /// Who ran it.
    pub runner: String,
    /// `running`, `ok` or `failed`.
    pub status: String,
    /// The outcomes as recorded (JSON array of [`ActionOutcome`]).
    pub actions: serde_json::Value,
    /// The first failure.
    pub error: Option<String>,
}

const LIST_SQL: &str = r"
SELECT id, started_at, finished_at, runner, status, actions, error
FROM maintenance_runs
ORDER BY started_at DESC, id DESC
LIMIT $1";

/// The latest `limit` runs, newest first.
pub async fn list_runs(client: &Client, limit: i64) -> Result<Vec<RunRecord>, Error> {
    let rows = client.query(LIST_SQL, &[&limit]).await.map_err(Error::db("listing maintenance runs"))?;
    Ok(rows.iter().map(record).collect())
}

const LAST_OK_SQL: &str = "SELECT max(finished_at) FROM maintenance_runs WHERE status = 'ok'";

/// When the latest successful run finished.
pub async fn last_success(client: &Client) -> Result<Option<DateTime<Utc>>, Error> {
    let row = client.query_one(LAST_OK_SQL, &[]).await.map_err(Error::db("reading the last successful run"))?;
    Ok(row.get(0))
}

fn record(row: &Row) -> RunRecord {
    RunRecord {
        id: row.get("id"),
        started_at: row.get("started_at"),
        finished_at: row.get("finished_at"),
        runner: row.get("runner"),
        status: row.get("status"),
        actions: row.get("actions"),
        error: row.get("error"),
    }
}
