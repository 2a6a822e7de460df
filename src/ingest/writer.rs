//! The bounded ingest queue and the group-commit writers.
//!
//! Handlers validate, then [`IngestQueue::submit`] a job and wait for its reply. Capacity is counted
//! in events (a semaphore): a job that does not fit is refused at once (503 + Retry-After), so memory
//! stays bounded. Each writer takes whatever is queued (whole jobs, up to `flush_max_events`), stores
//! it in one transaction and only then replies: a reply of `Ok` means committed. A flush that fails
//! for its content is retried job by job, so one poisoned request cannot fail its neighbours.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use deadpool_postgres::Pool;
use partition_jobs::Month;
use tokio::sync::{mpsc, oneshot, Mutex, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::event::EventRow;
use super::store::store_batch;
use crate::cache::Cache;
use crate::db::is_unavailable;

/// Why a job was not committed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FlushError {
    /// The database could not be reached: nothing of the job is acknowledged; retry later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database refused this job's content.
    #[error("storage refused the events: {0}")]
    Rejected(String),
}

impl FlushError {
    /// Metric label of the error.
    pub fn kind(&self) -> &'static str {
        match self {
            FlushError::Unavailable(_) => "unavailable",
            FlushError::Rejected(_) => "rejected",
        }
    }
}

/// What a committed job contained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushAck {
    /// Events stored by this job.
    pub stored: usize,
    /// Events already stored earlier (same app and eventId): not stored or counted again.
    pub duplicates: usize,
}

/// The queue is full: answer 503 with Retry-After.
#[derive(Debug, thiserror::Error)]
#[error("ingest queue is full")]
pub struct QueueFull;

struct Job {
    rows: Vec<EventRow>,
    _permit: OwnedSemaphorePermit,
    reply: oneshot::Sender<Result<FlushAck, FlushError>>,
}

/// Handle used by handlers; cheap to clone.
#[derive(Clone)]
pub struct IngestQueue {
    tx: mpsc::UnboundedSender<Job>,
    permits: Arc<Semaphore>,
    capacity: usize,
}

impl IngestQueue {
    /// Queues `rows` as one job; the receiver resolves once they are committed or refused.
    pub fn submit(&self, rows: Vec<EventRow>) -> Result<oneshot::Receiver<Result<FlushAck, FlushError>>, QueueFull> {
        let n = u32::try_from(rows.len().max(1)).map_err(|_| QueueFull)?;
        let permit = self.permits.clone().try_acquire_many_owned(n).map_err(|_| QueueFull)?;
        let (reply, rx) = oneshot::channel();
        self.tx.send(Job { rows, _permit: permit, reply }).map_err(|_| QueueFull)?;
        Ok(rx)
    }

    /// Events accepted but not yet committed.
    pub fn depth(&self) -> usize {
        self.capacity - self.permits.available_permits()
    }
}

/// Settings of the writers.
#[derive(Clone, Debug)]
pub struct WriterConfig {
    /// Events the queue holds at most.
    pub capacity: usize,
    /// Events one transaction takes at most (a bigger single job is taken whole).
    pub flush_max_events: usize,
    /// Concurrent writers.
    pub writers: usize,
    /// lock_timeout of on-demand partition creation.
    pub partition_lock_timeout: Duration,
    /// Longest a flush may wait for the database (a frozen server or a dead host would otherwise hold
    /// the writer, and the queue capacity of its jobs, until TCP gives up).
    pub store_timeout: Duration,
}

/// Creates the queue and spawns the writers; they stop once `stop` is cancelled and the queue is empty.
pub fn start(
    pool: Pool,
    cfg: WriterConfig,
    cache: Cache,
    stop: CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) -> IngestQueue {
    let (tx, rx) = mpsc::unbounded_channel();
    let rx = Arc::new(Mutex::new(rx));
    let months = Arc::new(RwLock::new(HashSet::new()));
    for i in 0..cfg.writers {
        let w = Writer {
            pool: pool.clone(),
            rx: rx.clone(),
            months: months.clone(),
            cfg: cfg.clone(),
            cache: cache.clone(),
            shard: i as i16,
        };
        tracker.spawn(w.run_until_stopped(i, stop.clone()));
    }
    IngestQueue { tx, permits: Arc::new(Semaphore::new(cfg.capacity)), capacity: cfg.capacity }
}

struct Writer {
    pool: Pool,
    rx: Arc<Mutex<mpsc::UnboundedReceiver<Job>>>,
    /// Months whose partition is known to exist, so the hot path does no catalog lookups.
    months: Arc<RwLock<HashSet<Month>>>,
    cfg: WriterConfig,
    /// Told which apps each commit changed, before any of its events is acknowledged.
    cache: Cache,
    /// This writer's rollup shard: concurrent writers never contend on the same rollup rows.
    shard: i16,
}

/// Whole-flush retries for transient conflicts (deadlock, serialisation) and a vanished partition.
const FLUSH_ATTEMPTS: usize = 3;

impl Writer {
    async fn run_until_stopped(self, id: usize, stop: CancellationToken) {
        tracing::debug!(writer = id, "writer started");
        loop {
            let jobs = {
                let mut rx = self.rx.lock().await;
                let first = tokio::select! {
                    job = rx.recv() => job,
                    _ = stop.cancelled() => rx.try_recv().ok(),
                };
                let Some(first) = first else { break };
                let mut n = first.rows.len();
                let mut jobs = vec![first];
                while n < self.cfg.flush_max_events {
                    match rx.try_recv() {
                        Ok(job) => {
                            n += job.rows.len();
                            jobs.push(job);
                        }
                        Err(_) => break,
                    }
                }
                jobs
            };
            self.flush(jobs).await;
        }
        tracing::debug!(writer = id, "writer stopped");
    }

    /// Commits `jobs` together; on a content error retries them one by one.
    async fn flush(&self, jobs: Vec<Job>) {
        let rows: Vec<&EventRow> = jobs.iter().flat_map(|j| j.rows.iter()).collect();
        let started = std::time::Instant::now();
        let result = self.store_with_retries(&rows).await;
        crate::metrics::flush(rows.len(), started.elapsed());
        match result {
            Ok(fresh) => reply_all(jobs, &fresh),
            Err(e) if e.is_unavailable() || jobs.len() == 1 => {
                let err = e.into_flush_error();
                crate::metrics::flush_error(err.kind());
                tracing::warn!(error = %err, events = rows.len(), "flush failed");
                for job in jobs {
                    let _ = job.reply.send(Err(err.clone()));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, jobs = jobs.len(), "flush failed, retrying its requests one by one");
                for job in jobs {
                    let rows: Vec<&EventRow> = job.rows.iter().collect();
                    let result = self.store_with_retries(&rows).await;
                    match result {
                        Ok(fresh) => reply_all(vec![job], &fresh),
                        Err(e) => {
                            let err = e.into_flush_error();
                            crate::metrics::flush_error(err.kind());
                            let _ = job.reply.send(Err(err));
                        }
                    }
                }
            }
        }
    }

    async fn store_with_retries(&self, rows: &[&EventRow]) -> Result<Vec<bool>, StoreError> {
        let mut attempt = 1;
        loop {
            match self.try_store(rows).await {
                Err(e) if attempt < FLUSH_ATTEMPTS && e.is_retryable() => {
                    if e.is_missing_partition() {
                        self.months.write().expect("months lock").clear();
                    }
                    tracing::debug!(error = %e, attempt, "retrying flush");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn try_store(&self, rows: &[&EventRow]) -> Result<Vec<bool>, StoreError> {
        self.ensure_months(rows).await?;
        let client = self.pool.get().await.map_err(|e| StoreError::Pool(e.to_string()))?;
        let fresh = match tokio::time::timeout(self.cfg.store_timeout, store_batch(&client, rows, self.shard)).await {
            Ok(stored) => stored?,
            Err(_) => {
                // The connection may be mid-transaction: close it rather than return it to the pool.
                // Had the COMMIT already been sent, the events may still commit; they were not
                // acknowledged, and a retry with the same eventIds is stored once.
                drop(deadpool_postgres::Object::take(client));
                return Err(StoreError::Pool(format!(
                    "no answer from the database within {:?}",
                    self.cfg.store_timeout
                )));
            }
        };
        // One generation bump per app per flush; Redis is updated in the background.
        self.cache.invalidate_apps(rows.iter().map(|r| r.app_id));
        Ok(fresh)
    }

    /// Creates the partitions of months this batch needs that are not known to exist.
    async fn ensure_months(&self, rows: &[&EventRow]) -> Result<(), StoreError> {
        let needed: HashSet<Month> = rows.iter().map(|r| Month::containing(r.created_at)).collect();
        let missing: Vec<Month> = {
            let known = self.months.read().expect("months lock");
            needed.into_iter().filter(|m| !known.contains(m)).collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let client = self.pool.get().await.map_err(|e| StoreError::Pool(e.to_string()))?;
        for m in missing {
            if partition_jobs::ensure_month(&client, m, self.cfg.partition_lock_timeout).await? {
                tracing::info!(partition = %m.partition_name(), "created partition on demand");
            }
            self.months.write().expect("months lock").insert(m);
        }
        Ok(())
    }
}

fn reply_all(jobs: Vec<Job>, fresh: &[bool]) {
    let mut offset = 0;
    for job in jobs {
        let n = job.rows.len();
        let stored = fresh[offset..offset + n].iter().filter(|f| **f).count();
        offset += n;
        let _ = job.reply.send(Ok(FlushAck { stored, duplicates: n - stored }));
    }
}

#[derive(Debug, thiserror::Error)]
enum StoreError {
    #[error("no database connection: {0}")]
    Pool(String),
    #[error(transparent)]
    Pg(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Partition(#[from] partition_jobs::Error),
}

impl StoreError {
    fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Pool(_) => true,
            StoreError::Pg(e) => is_unavailable(e),
            StoreError::Partition(e) => std::error::Error::source(e)
                .and_then(|s| s.downcast_ref::<tokio_postgres::Error>())
                .is_some_and(is_unavailable),
        }
    }

    fn sqlstate(&self) -> Option<&str> {
        match self {
            StoreError::Pg(e) => e.code().map(|c| c.code()),
            _ => None,
        }
    }

    /// 23514 with no partition for the row: a partition was dropped behind our back.
    fn is_missing_partition(&self) -> bool {
        matches!(self, StoreError::Pg(e) if e.as_db_error().is_some_and(|d| d.message().contains("no partition")))
    }

    fn is_retryable(&self) -> bool {
        matches!(self.sqlstate(), Some("40001" | "40P01")) || self.is_missing_partition()
    }

    fn into_flush_error(self) -> FlushError {
        if self.is_unavailable() {
            return FlushError::Unavailable(self.to_string());
        }
        let detail = match &self {
            StoreError::Pg(e) => {
                e.as_db_error().map_or_else(|| e.to_string(), |d| format!("{} ({})", d.message(), d.code().code()))
            }
            other => other.to_string(),
        };
        FlushError::Rejected(detail)
    }
}
