//! Owners, apps and API keys in storage: creation, listing, revocation. Used by the CLI and by the
//! management API (`http::accounts`), whose owner-scoped functions take the caller's owner id and
//! treat another owner's rows as missing. Apps created without an owner belong to the bootstrap owner
//! (`owners`), which no login can reach. Emails are normalised in `email`.

use chrono::{DateTime, Duration, Utc};
use tokio_postgres::Client;
use uuid::Uuid;

use crate::auth::keys;

pub mod email;
mod owners;

pub use owners::{bootstrap_owner, create_owner, owner_for_login, owner_session, report_repairs, revoke_token, Owner};

/// Storage failures of account management.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// A query failed.
    #[error("database error: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// The app does not exist (or was deleted).
    #[error("app {0} not found")]
    AppNotFound(Uuid),
    /// The key does not exist.
    #[error("API key {0} not found")]
    KeyNotFound(Uuid),
    /// A name was empty or too long.
    #[error("{0}")]
    Invalid(String),
    /// An email of the wrong shape, or with control or invisible formatting characters.
    #[error("{0}")]
    InvalidEmail(String),
    /// The key is revoked, so it cannot be regenerated (that would bring a revoked key back to life).
    #[error("API key {0} is revoked")]
    KeyRevoked(Uuid),
    /// Registration with an email that already has an owner.
    #[error("an account with this email already exists")]
    EmailTaken,
}

/// A stored app.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct App {
    /// UUIDv4 id.
    pub id: Uuid,
    /// Display name.
    pub name: String,
    /// Owner.
    pub owner_id: Option<Uuid>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// A key as created: `api_key` is the only time the secret is shown.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CreatedKey {
    /// Key id.
    pub id: Uuid,
    /// App the key writes to.
    pub app_id: Uuid,
    /// `ak_` + 64 hex.
    pub api_key: String,
    /// First 12 characters.
    pub key_prefix: String,
    /// Display name.
    pub name: String,
    /// Expiry instant, if any.
    pub expires_at: Option<DateTime<Utc>>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

const NAME_MAX_CHARS: usize = 200;

pub(crate) fn check_name(what: &str, name: &str) -> Result<String, AccountError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > NAME_MAX_CHARS || name.contains('\0') {
        return Err(AccountError::Invalid(format!("{what} must be 1 to {NAME_MAX_CHARS} characters without NUL")));
    }
    Ok(name.to_string())
}

/// Creates an app owned by `owner` (the bootstrap owner when `None`).
pub async fn create_app(client: &Client, name: &str, owner: Option<Uuid>) -> Result<App, AccountError> {
    const SQL: &str = "INSERT INTO apps (id, owner_id, name) VALUES ($1, $2, $3) RETURNING created_at";
    let name = check_name("app name", name)?;
    let owner = match owner {
        Some(o) => o,
        None => bootstrap_owner(client).await?,
    };
    let id = Uuid::new_v4();
    let created_at = client.query_one(SQL, &[&id, &owner, &name]).await?.get(0);
    Ok(App { id, name, owner_id: Some(owner), created_at })
}

/// Creates a key for `app_id`, expiring after `expires_in_days` when given.
pub async fn create_key(
    client: &Client,
    secret: &[u8],
    app_id: Uuid,
    name: &str,
    expires_in_days: Option<u32>,
) -> Result<CreatedKey, AccountError> {
    const APP: &str = "SELECT 1 FROM apps WHERE id = $1 AND deleted_at IS NULL";
    const SQL: &str = "INSERT INTO api_keys (id, app_id, name, key_hash, key_prefix, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING created_at, expires_at";
    let name = check_name("key name", name)?;
    if client.query_opt(APP, &[&app_id]).await?.is_none() {
        return Err(AccountError::AppNotFound(app_id));
    }
    let key = keys::generate(secret);
    let id = Uuid::new_v4();
    let expires_at = expires_in_days.map(|d| Utc::now() + Duration::days(i64::from(d)));
    let row = client.query_one(SQL, &[&id, &app_id, &name, &key.hash, &key.prefix, &expires_at]).await?;
    // As stored (microseconds), so later reads of the key show the same instant.
    let (created_at, expires_at) = (row.get(0), row.get(1));
    Ok(CreatedKey { id, app_id, api_key: key.secret, key_prefix: key.prefix, name, expires_at, created_at })
}

/// Revokes a key; revoking twice is not an error.
pub async fn revoke_key(client: &Client, key_id: Uuid) -> Result<(), AccountError> {
    const SQL: &str = "UPDATE api_keys SET status = 'revoked', revoked_at = COALESCE(revoked_at, now()) WHERE id = $1";
    match client.execute(SQL, &[&key_id]).await? {
        0 => Err(AccountError::KeyNotFound(key_id)),
        _ => Ok(()),
    }
}

/// One page of a list: `limit` rows from `offset`.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    /// Rows at most.
    pub limit: i64,
    /// Rows skipped.
    pub offset: i64,
}

const APP_COLUMNS: &str = "id, name, owner_id, created_at";

fn app_from(r: &tokio_postgres::Row) -> App {
    App { id: r.get(0), name: r.get(1), owner_id: r.get(2), created_at: r.get(3) }
}

/// `owner`'s live apps, oldest first, one page (plus one row, so callers can tell a next page exists).
pub async fn list_apps(client: &Client, owner: Uuid, page: Page) -> Result<Vec<App>, AccountError> {
    let sql = format!(
        "SELECT {APP_COLUMNS} FROM apps WHERE owner_id = $1 AND deleted_at IS NULL \
         ORDER BY created_at, id LIMIT $2 OFFSET $3"
    );
    let rows = client.query(&sql, &[&owner, &(page.limit + 1), &page.offset]).await?;
    Ok(rows.iter().map(app_from).collect())
}

/// `owner`'s live app `id`; `AppNotFound` for missing, deleted and other owners' apps alike.
pub async fn owned_app(client: &Client, owner: Uuid, id: Uuid) -> Result<App, AccountError> {
    let sql = format!("SELECT {APP_COLUMNS} FROM apps WHERE id = $1 AND owner_id = $2 AND deleted_at IS NULL");
    let row = client.query_opt(&sql, &[&id, &owner]).await?;
    row.map(|r| app_from(&r)).ok_or(AccountError::AppNotFound(id))
}

/// Ids of `owner`'s live apps.
pub async fn owned_app_ids(client: &Client, owner: Uuid) -> Result<Vec<Uuid>, AccountError> {
    const SQL: &str = "SELECT id FROM apps WHERE owner_id = $1 AND deleted_at IS NULL ORDER BY id";
    Ok(client.query(SQL, &[&owner]).await?.iter().map(|r| r.get(0)).collect())
}

/// Renames `owner`'s app `id`.
pub async fn rename_app(client: &Client, owner: Uuid, id: Uuid, name: &str) -> Result<App, AccountError> {
    let sql = format!(
        "UPDATE apps SET name = $3 WHERE id = $1 AND owner_id = $2 AND deleted_at IS NULL RETURNING {APP_COLUMNS}"
    );
    let name = check_name("app name", name)?;
    let row = client.query_opt(&sql, &[&id, &owner, &name]).await?;
    row.map(|r| app_from(&r)).ok_or(AccountError::AppNotFound(id))
}

/// Soft-deletes `owner`'s app `id` and revokes its active keys in one transaction; returns the
/// revoked keys' hashes so the caller can evict them from key caches. The app's events are kept
/// until retention drops their month (analytics no longer shows them: deleted apps are invisible).
pub async fn delete_app(client: &mut Client, owner: Uuid, id: Uuid) -> Result<Vec<Vec<u8>>, AccountError> {
    const APP: &str = "UPDATE apps SET deleted_at = now() WHERE id = $1 AND owner_id = $2 AND deleted_at IS NULL";
    const KEYS: &str = "UPDATE api_keys SET status = 'revoked', revoked_at = now() \
         WHERE app_id = $1 AND status = 'active' RETURNING key_hash";
    let tx = client.transaction().await?;
    if tx.execute(APP, &[&id, &owner]).await? == 0 {
        return Err(AccountError::AppNotFound(id));
    }
    let hashes = tx.query(KEYS, &[&id]).await?.iter().map(|r| r.get(0)).collect();
    tx.commit().await?;
    Ok(hashes)
}

/// A key as the management API lists it: every column but the hash.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyRow {
    /// Key id.
    pub id: Uuid,
    /// App the key writes to.
    pub app_id: Uuid,
    /// That app's name.
    pub app_name: String,
    /// First 12 characters of the key.
    pub key_prefix: String,
    /// Display name.
    pub name: String,
    /// `active` or `revoked`.
    pub status: String,
    /// Expiry instant, if any.
    pub expires_at: Option<DateTime<Utc>>,
    /// Latest use (written in batches, up to the usage flush interval late).
    pub last_used_at: Option<DateTime<Utc>>,
    /// Uses counted so far.
    pub usage_count: i64,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Revocation time, if revoked.
    pub revoked_at: Option<DateTime<Utc>>,
}

const KEY_SELECT: &str = "SELECT k.id, k.app_id, a.name, k.key_prefix, k.name, k.status, k.expires_at, \
     k.last_used_at, k.usage_count, k.created_at, k.revoked_at \
     FROM api_keys k JOIN apps a ON a.id = k.app_id WHERE a.owner_id = $1 AND a.deleted_at IS NULL";

fn key_from(r: &tokio_postgres::Row) -> KeyRow {
    KeyRow {
        id: r.get(0),
        app_id: r.get(1),
        app_name: r.get(2),
        key_prefix: r.get(3),
        name: r.get(4),
        status: r.get(5),
        expires_at: r.get(6),
        last_used_at: r.get(7),
        usage_count: r.get(8),
        created_at: r.get(9),
        revoked_at: r.get(10),
    }
}

/// `owner`'s keys (of one app when `app` is given), newest first, one page plus one row.
pub async fn list_keys(
    client: &Client,
    owner: Uuid,
    app: Option<Uuid>,
    page: Page,
) -> Result<Vec<KeyRow>, AccountError> {
    let sql = format!(
        "{KEY_SELECT} AND ($2::uuid IS NULL OR k.app_id = $2) ORDER BY k.created_at DESC, k.id LIMIT $3 OFFSET $4"
    );
    let rows = client.query(&sql, &[&owner, &app, &(page.limit + 1), &page.offset]).await?;
    Ok(rows.iter().map(key_from).collect())
}

/// `owner`'s key `id`; `KeyNotFound` for missing keys and other owners' keys alike.
pub async fn owned_key(client: &Client, owner: Uuid, id: Uuid) -> Result<KeyRow, AccountError> {
    let sql = format!("{KEY_SELECT} AND k.id = $2");
    let row = client.query_opt(&sql, &[&owner, &id]).await?;
    row.map(|r| key_from(&r)).ok_or(AccountError::KeyNotFound(id))
}

/// Revokes `owner`'s key `id` (again is not an error); returns its hash for cache eviction.
pub async fn revoke_owned_key(
    client: &impl tokio_postgres::GenericClient,
    owner: Uuid,
    id: Uuid,
) -> Result<Vec<u8>, AccountError> {
    const SQL: &str = "UPDATE api_keys k SET status = 'revoked', revoked_at = COALESCE(k.revoked_at, now()) \
         FROM apps a WHERE k.id = $1 AND a.id = k.app_id AND a.owner_id = $2 AND a.deleted_at IS NULL \
         RETURNING k.key_hash";
    let row = client.query_opt(SQL, &[&id, &owner]).await?;
    row.map(|r| r.get(0)).ok_or(AccountError::KeyNotFound(id))
}

/// Revokes `owner`'s active key `id` and creates its replacement (same app, name and expiry instant)
/// in one transaction; returns the new key and the old key's hash for cache eviction. A key already
/// revoked is `KeyRevoked` and nothing is minted: only the transaction that revokes the key makes its
/// replacement, so concurrent calls mint one key at most.
pub async fn regenerate_key(
    client: &mut Client,
    secret: &[u8],
    owner: Uuid,
    id: Uuid,
) -> Result<(CreatedKey, Vec<u8>), AccountError> {
    const REVOKE_ACTIVE: &str = "UPDATE api_keys k SET status = 'revoked', revoked_at = now() \
         FROM apps a WHERE k.id = $1 AND k.status = 'active' AND a.id = k.app_id AND a.owner_id = $2 \
         AND a.deleted_at IS NULL RETURNING k.key_hash";
    const INSERT: &str = "INSERT INTO api_keys (id, app_id, name, key_hash, key_prefix, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING created_at";
    let old = owned_key(client, owner, id).await?;
    let tx = client.transaction().await?;
    let Some(revoked) = tx.query_opt(REVOKE_ACTIVE, &[&id, &owner]).await? else {
        return Err(AccountError::KeyRevoked(id));
    };
    let key = keys::generate(secret);
    let new_id = Uuid::new_v4();
    let row = tx.query_one(INSERT, &[&new_id, &old.app_id, &old.name, &key.hash, &key.prefix, &old.expires_at]).await?;
    tx.commit().await?;
    let created = CreatedKey {
        id: new_id,
        app_id: old.app_id,
        api_key: key.secret,
        key_prefix: key.prefix,
        name: old.name,
        expires_at: old.expires_at,
        created_at: row.get(0),
    };
    Ok((created, revoked.get(0)))
}
