//! Pruning of the idempotency table: (app, eventId) pairs older than the dedupe window are deleted
//! in small batches so the table stays small and no long lock is held.

use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

/// Rows deleted per statement: small enough to never hold locks for long.
const PRUNE_BATCH: i64 = 10_000;
/// Pause between prune rounds.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

const PRUNE: &str = "DELETE FROM event_ids WHERE ctid = ANY(ARRAY( \
     SELECT ctid FROM event_ids WHERE received_at < now() - make_interval(secs => $1) LIMIT $2))";

/// Deletes pairs older than `window`; returns how many.
pub async fn prune_once(pool: &Pool, window: Duration) -> Result<u64, String> {
    let client = pool.get().await.map_err(|e| e.to_string())?;
    let mut total = 0;
    loop {
        let n = client.execute(PRUNE, &[&window.as_secs_f64(), &PRUNE_BATCH]).await.map_err(|e| e.to_string())?;
        total += n;
        if n < PRUNE_BATCH as u64 {
            return Ok(total);
        }
    }
}

/// Prunes every [`PRUNE_EVERY`] until `stop`.
pub async fn prune_loop(pool: Pool, window: Duration, stop: CancellationToken) {
    loop {
        match prune_once(&pool, window).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "pruned expired event ids"),
            Err(e) => tracing::warn!(error = %e, "could not prune event ids"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(PRUNE_EVERY) => {}
        }
    }
}
