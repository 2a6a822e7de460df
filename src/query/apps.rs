//! App lookups behind analytics authorisation: one live app by id, or every live app (what the admin
//! token may read). Deleted apps are invisible to analytics.

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use uuid::Uuid;

use super::QueryError;

/// An app as the overview shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppInfo {
    /// Id.
    pub id: Uuid,
    /// Display name.
    pub name: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

const FIND_APP: &str = "SELECT id, name, created_at FROM apps WHERE id = $1 AND deleted_at IS NULL";

/// The live app `id`, if there is one.
#[tracing::instrument(skip_all, fields(app = %id))]
pub async fn find_app(pool: &Pool, id: Uuid) -> Result<Option<AppInfo>, QueryError> {
    let client = pool.get().await?;
    let statement = client.prepare_cached(FIND_APP).await?;
    let row = client.query_opt(&statement, &[&id]).await?;
    Ok(row.map(|r| AppInfo { id: r.get(0), name: r.get(1), created_at: r.get(2) }))
}

const LIVE_APP_IDS: &str = "SELECT id FROM apps WHERE deleted_at IS NULL ORDER BY id";

/// Ids of every live app.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn live_app_ids(pool: &Pool) -> Result<Vec<Uuid>, QueryError> {
    let client = pool.get().await?;
    let statement = client.prepare_cached(LIVE_APP_IDS).await?;
    Ok(client.query(&statement, &[]).await?.iter().map(|r| r.get(0)).collect())
}
