//! Owners, apps and API keys in storage: creation, listing, revocation. Used by the CLI and by the
//! management API (`http::accounts`), whose owner-scoped functions take the caller's owner id and
//! treat another owner's rows as missing. Apps created without an owner belong to the bootstrap owner.

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
    /// Registration with an email that already has an owner.
    #[error("an account with this email already exists")]
    EmailTaken,
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
    /// Creation time.
    pub created_at: DateTime<Utc>,
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

/// A stored owner, as `/api/auth/me` shows it (never the password hash).
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Owner {
    /// Id (the token's `sub`).
    pub id: Uuid,
    /// Login email, as registered.
    pub email: String,
    /// Display name.
    pub name: String,
    /// `owner` or `admin` (admins may also call the DBA endpoints).
    pub role: String,
    /// Registration time.
    pub created_at: DateTime<Utc>,
}

const EMAIL_MAX_CHARS: usize = 254;

/// A trimmed email of plausible shape (`local@domain`, no spaces), or `Invalid`.
pub fn check_email(email: &str) -> Result<String, AccountError> {
    let email = email.trim();
    let plausible = email.chars().count() <= EMAIL_MAX_CHARS
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email.split_once('@').is_some_and(|(l, d)| !l.is_empty() && !d.is_empty() && !d.contains('@'));
    if !plausible {
        return Err(AccountError::Invalid("email must look like name@domain".into()));
    }
    Ok(email.to_string())
}

fn owner_from(r: &tokio_postgres::Row) -> Owner {
    Owner { id: r.get(0), email: r.get(1), name: r.get(2), role: r.get(3), created_at: r.get(4) }
}

const OWNER_COLUMNS: &str = "id, email, name, role, created_at";

/// Creates an owner with an already hashed password; `EmailTaken` when the email (any case) exists.
pub async fn create_owner(
    client: &Client,
    email: &str,
    name: &str,
    password_hash: &str,
    admin: bool,
) -> Result<Owner, AccountError> {
    let sql = format!(
        "INSERT INTO owners (id, email, name, password_hash, role) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (lower(email)) DO NOTHING RETURNING {OWNER_COLUMNS}"
    );
    let email = check_email(email)?;
    let name = check_name("name", name)?;
    let role = if admin { "admin" } else { "owner" };
    let row = client.query_opt(&sql, &[&Uuid::new_v4(), &email, &name, &password_hash, &role]).await?;
    row.map(|r| owner_from(&r)).ok_or(AccountError::EmailTaken)
}

/// The owner with `email` (any case) and its password hash (`None` for the bootstrap owner).
pub async fn owner_for_login(client: &Client, email: &str) -> Result<Option<(Owner, Option<String>)>, AccountError> {
    let sql = format!("SELECT {OWNER_COLUMNS}, password_hash FROM owners WHERE lower(email) = lower($1)");
    let row = client.query_opt(&sql, &[&email.trim()]).await?;
    Ok(row.map(|r| (owner_from(&r), r.get(5))))
}

/// The owner `id` if the token `jti` it presents has not been revoked (logout); `None` otherwise.
pub async fn owner_session(client: &Client, id: Uuid, jti: Uuid) -> Result<Option<Owner>, AccountError> {
    let sql = format!(
        "SELECT {OWNER_COLUMNS} FROM owners WHERE id = $1 \
         AND NOT EXISTS (SELECT 1 FROM revoked_tokens WHERE jti = $2)"
    );
    Ok(client.query_opt(&sql, &[&id, &jti]).await?.map(|r| owner_from(&r)))
}

/// Revokes the token `jti` of `owner` until `expires_at`, and forgets revocations already expired.
pub async fn revoke_token(
    client: &Client,
    owner: Uuid,
    jti: Uuid,
    expires_at: DateTime<Utc>,
) -> Result<(), AccountError> {
    const INSERT: &str =
        "INSERT INTO revoked_tokens (jti, owner_id, expires_at) VALUES ($1, $2, $3) ON CONFLICT (jti) DO NOTHING";
    const PRUNE: &str = "DELETE FROM revoked_tokens WHERE expires_at < now()";
    client.execute(INSERT, &[&jti, &owner, &expires_at]).await?;
    client.execute(PRUNE, &[]).await?;
    Ok(())
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

/// Revokes `owner`'s key `id` and creates its replacement (same app, name and expiry instant) in one
/// transaction; returns the new key and the old key's hash for cache eviction.
pub async fn regenerate_key(
    client: &mut Client,
    secret: &[u8],
    owner: Uuid,
    id: Uuid,
) -> Result<(CreatedKey, Vec<u8>), AccountError> {
    const INSERT: &str = "INSERT INTO api_keys (id, app_id, name, key_hash, key_prefix, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING created_at";
    let old = owned_key(client, owner, id).await?;
    let tx = client.transaction().await?;
    let old_hash = revoke_owned_key(&tx, owner, id).await?;
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
    Ok((created, old_hash))
}
