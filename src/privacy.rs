//! Privacy requests: erasing one end user's events of one app. The raw rows and the rollups they
//! counted change in one transaction (rollups locked against concurrent commits meanwhile, see
//! [`crate::rollup::erase`]), so a rollup answer equals a raw answer before and after, never in
//! between.

use tokio_postgres::Client;
use uuid::Uuid;

use crate::rollup::{erase, RollupError};

const ERASE: &str = "DELETE FROM events WHERE app_id = $1 AND user_id = $2 RETURNING created_at";

/// Deletes every event of `user_id` in `app` and recomputes the rollup hours they touched; returns
/// how many events were deleted. Idempotency pairs (`event_ids`) hold no personal data and stay, so
/// a late retry of an erased event is still recognised as a duplicate within the dedupe window.
pub async fn erase_user(client: &mut Client, app: Uuid, user_id: &str) -> Result<u64, RollupError> {
    let tx = client.transaction().await?;
    erase::begin(&tx).await?;
    let rows = tx.query(ERASE, &[&app, &user_id]).await?;
    erase::recount(&tx, app, rows.iter().map(|r| r.get(0))).await?;
    tx.commit().await?;
    Ok(rows.len() as u64)
}
