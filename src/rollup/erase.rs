//! The rollup side of erasing one end user's events (privacy requests, see `crate::privacy`): the
//! caller takes [`begin`] in its transaction before deleting raw rows, then [`recount`]s the hours
//! those rows were in, so a rollup answer equals a raw answer before and after, never in between.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};
use tokio_postgres::Transaction;
use uuid::Uuid;

use super::rebuild::{lock, recompute};
use super::tier::hour_and_quarter;
use super::RollupError;

/// Locks the rollups against concurrent writers' commits for the rest of `tx` (see
/// [`super::rebuild::lock`]); taken before the raw rows are deleted.
pub async fn begin(tx: &Transaction<'_>) -> Result<(), tokio_postgres::Error> {
    lock(tx).await
}

/// Inside `tx` (which holds [`begin`]'s lock and has deleted `app`'s events at `times`): recomputes
/// the rollups of every UTC hour holding one of `times`.
pub async fn recount(
    tx: &Transaction<'_>,
    app: Uuid,
    times: impl IntoIterator<Item = DateTime<Utc>>,
) -> Result<(), RollupError> {
    let hours: BTreeSet<DateTime<Utc>> = times.into_iter().map(|t| hour_and_quarter(t).0).collect();
    for hour in &hours {
        recompute(tx, Some(app), *hour, *hour + Duration::hours(1)).await?;
    }
    Ok(())
}
