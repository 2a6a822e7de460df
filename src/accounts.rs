//! Apps and API keys in storage: creation, listing, revocation. Used by the CLI today and by the
//! management API later. Apps created without an owner belong to the bootstrap owner.

use chrono::{DateTime, Duration, Utc};
use tokio_postgres::Client;
use uuid::Uuid;

use crate::auth::keys;

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
}

/// The email of the owner that CLI-created apps belong to; it cannot log in (no password).
pub const BOOTSTRAP_OWNER_EMAIL: &str = "bootstrap@strata.invalid";

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
}

const NAME_MAX_CHARS: usize = 200;

fn check_name(what: &str, name: &str) -> Result<String, AccountError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > NAME_MAX_CHARS || name.contains('\0') {
        return Err(AccountError::Invalid(format!("{what} must be 1 to {NAME_MAX_CHARS} characters without NUL")));
    }
    Ok(name.to_string())
}

/// The bootstrap owner's id, created on first use.
pub async fn bootstrap_owner(client: &Client) -> Result<Uuid, AccountError> {
    const INSERT: &str = "INSERT INTO owners (id, email, name, role) VALUES ($1, $2, 'Bootstrap owner', 'admin') \
         ON CONFLICT (lower(email)) DO NOTHING";
    const SELECT: &str = "SELECT id FROM owners WHERE lower(email) = lower($1)";
    client.execute(INSERT, &[&Uuid::new_v4(), &BOOTSTRAP_OWNER_EMAIL]).await?;
    Ok(client.query_one(SELECT, &[&BOOTSTRAP_OWNER_EMAIL]).await?.get(0))
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
         VALUES ($1, $2, $3, $4, $5, $6)";
    let name = check_name("key name", name)?;
    if client.query_opt(APP, &[&app_id]).await?.is_none() {
        return Err(AccountError::AppNotFound(app_id));
    }
    let key = keys::generate(secret);
    let id = Uuid::new_v4();
    let expires_at = expires_in_days.map(|d| Utc::now() + Duration::days(i64::from(d)));
    client.execute(SQL, &[&id, &app_id, &name, &key.hash, &key.prefix, &expires_at]).await?;
    Ok(CreatedKey { id, app_id, api_key: key.secret, key_prefix: key.prefix, name, expires_at })
}

/// Revokes a key; revoking twice is not an error.
pub async fn revoke_key(client: &Client, key_id: Uuid) -> Result<(), AccountError> {
    const SQL: &str = "UPDATE api_keys SET status = 'revoked', revoked_at = COALESCE(revoked_at, now()) WHERE id = $1";
    match client.execute(SQL, &[&key_id]).await? {
        0 => Err(AccountError::KeyNotFound(key_id)),
        _ => Ok(()),
    }
}
