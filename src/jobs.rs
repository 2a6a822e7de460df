//! The maintenance scheduler: runs partition maintenance (`partition_jobs::run_once`) at start and
//! every `STRATA_MAINTENANCE_INTERVAL`. Only the holder of the runner advisory lock acts, so several
//! instances on one database are normal. Rows a run moved out of a DEFAULT partition get their
//! rollups rebuilt here (the partition-jobs crate does not know the rollup tables), then their months
//! are marked complete again.

use std::time::Duration;

use chrono::Utc;
use deadpool_postgres::Pool;
use partition_jobs::{Policy, RetentionMode, RunReport, RunStatus};
use tokio_util::sync::CancellationToken;

use crate::cache::Cache;
use crate::config::Config;

/// Runner name recorded in `maintenance_runs`.
pub const RUNNER: &str = "strata-server";
/// Months ahead counted at most for the coverage gauge.
const MONTHS_AHEAD_LIMIT: i32 = 120;
/// Pause before asking again for a runner lock another process holds.
const SKIPPED_RETRY: Duration = Duration::from_millis(200);
/// Pause after a failed run before the next try.
const ERROR_BACKOFF: Duration = Duration::from_secs(60);

/// Failures of one scheduler step.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// No connection.
    #[error("no database connection: {0}")]
    Pool(String),
    /// Maintenance could not run or be recorded.
    #[error(transparent)]
    Partition(#[from] partition_jobs::Error),
    /// The rollup rebuild after moving default-partition rows failed.
    #[error("rebuilding rollups of moved rows failed: {0}")]
    Rebuild(#[from] tokio_postgres::Error),
    /// The multi-tier rollup rebuild after moving default-partition rows failed.
    #[error("rebuilding rollup tiers of moved rows failed: {0}")]
    Tiers(#[from] crate::rollup::RollupError),
}

/// The policy the configuration asks for, keeping the stored analyze thresholds.
pub fn policy_from_config(cfg: &Config, stored: Policy) -> Policy {
    Policy {
        premake_months: cfg.premake_months as i32,
        retention_months: cfg.retention_months.map(|m| m as i32),
        retention_mode: if cfg.retention_drop { RetentionMode::Drop } else { RetentionMode::Detach },
        ..stored
    }
}

/// Writes the configured policy into `partition_policy`, so the CLI applies the same one.
pub async fn publish_policy(pool: &Pool, cfg: &Config) -> Result<Policy, JobError> {
    let client = pool.get().await.map_err(|e| JobError::Pool(e.to_string()))?;
    let stored = partition_jobs::load_policy(&client).await?;
    let policy = policy_from_config(cfg, stored.clone());
    if policy != stored {
        partition_jobs::save_policy(&client, &policy).await?;
        tracing::info!(?policy, "partition policy updated from configuration");
    }
    Ok(policy)
}

/// One maintenance run plus the rollup rebuild of any rows it moved.
#[tracing::instrument(level = "debug", skip_all)]
///
/// With `cache`, the apps whose rollups were rebuilt are invalidated on every instance.
pub async fn run_maintenance(
    pool: &Pool,
    cache: Option<&Cache>,
    lock_timeout: Duration,
) -> Result<RunReport, JobError> {
    let mut client = pool.get().await.map_err(|e| JobError::Pool(e.to_string()))?;
    let report = partition_jobs::run_once_as(&client, Utc::now(), lock_timeout, RUNNER).await?;
    let result = match report.status {
        RunStatus::Ok => "ok",
        RunStatus::Failed => "failed",
        RunStatus::Skipped => "skipped",
    };
    crate::metrics::maintenance(result, Utc::now().timestamp() as f64);
    let catalog = partition_jobs::read_catalog(&client).await?;
    let ahead = partition_jobs::health::months_ahead(Utc::now(), &catalog, MONTHS_AHEAD_LIMIT);
    crate::metrics::partitions(ahead, catalog.default_rows());
    let hours = report.affected_hours();
    if !hours.is_empty() {
        for hour in &hours {
            crate::rollup::rebuild::rebuild(&mut client, None, *hour, *hour + chrono::Duration::hours(1)).await?;
        }
        for month in report.affected_months() {
            crate::rollup::months::mark_month_complete(&client, month).await?;
        }
        if let Some(cache) = cache {
            let hours: Vec<_> = hours.iter().copied().collect();
            const APPS: &str = "SELECT DISTINCT app_id FROM events \
                 WHERE created_at >= $1 AND created_at < $2 AND date_trunc('hour', created_at, 'UTC') = ANY($3)";
            let (first, last) = (hours[0], hours[hours.len() - 1] + chrono::Duration::hours(1));
            let apps = client.query(APPS, &[&first, &last, &hours]).await?;
            cache.invalidate_apps(apps.iter().map(|r| r.get::<_, uuid::Uuid>(0)));
        }
        tracing::info!(hours = hours.len(), "rebuilt rollups of rows moved out of the default partition");
    }
    Ok(report)
}

/// [`run_maintenance`], retried while another runner holds the lock, for at most `wait`.
pub async fn run_maintenance_waiting(
    pool: &Pool,
    cache: Option<&Cache>,
    lock_timeout: Duration,
    wait: Duration,
) -> Result<RunReport, JobError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let report = run_maintenance(pool, cache, lock_timeout).await?;
        if report.status != RunStatus::Skipped || tokio::time::Instant::now() >= deadline {
            return Ok(report);
        }
        tokio::time::sleep(SKIPPED_RETRY).await;
    }
}

/// Runs maintenance now and every `interval` until `stop`.
pub async fn maintenance_loop(
    pool: Pool,
    cache: Cache,
    interval: Duration,
    lock_timeout: Duration,
    stop: CancellationToken,
) {
    loop {
        let next = match run_maintenance(&pool, Some(&cache), lock_timeout).await {
            Ok(report) => {
                tracing::info!(status = ?report.status, actions = report.outcomes.len(), "maintenance run");
                interval
            }
            Err(e) => {
                tracing::warn!(error = %e, "maintenance run failed");
                ERROR_BACKOFF.min(interval)
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(next) => {}
        }
    }
}
