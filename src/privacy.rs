//! Privacy requests: erasing one end user's events of one app. The raw rows and the rollups they
//! counted change in one transaction (rollups locked against concurrent commits meanwhile), so a
//! rollup answer equals a raw answer before and after, never in between.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};
use tokio_postgres::Client;
use uuid::Uuid;

const ERASE: &str = "DELETE FROM events WHERE app_id = $1 AND user_id = $2 RETURNING created_at";

/// Deletes every event of `user_id` in `app` and recomputes the rollup hours they touched; returns
/// how many events were deleted. Idempotency pairs (`event_ids`) hold no personal data and stay, so
/// a late retry of an erased event is still recognised as a duplicate within the dedupe window.
pub async fn erase_user(
    client: &mut Client,
    app: Uuid,
    user_id: &str,
) -> Result<u64, crate::rollup::compact::TierError> {
    let tx = client.transaction().await?;
    crate::rollup::rebuild::lock(&tx).await?;
    let rows = tx.query(ERASE, &[&app, &user_id]).await?;
    let hours: BTreeSet<DateTime<Utc>> =
        rows.iter().map(|r| crate::ingest::store::hour_and_quarter(r.get(0)).0).collect();
    for hour in &hours {
        crate::rollup::rebuild::recompute(&tx, Some(app), *hour, *hour + Duration::hours(1)).await?;
    }
    tx.commit().await?;
    Ok(rows.len() as u64)
}
