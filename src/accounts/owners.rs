//! Owners in storage: registration, login lookup, sessions and logout, and the bootstrap owner that
//! CLI-created apps belong to.
//!
//! The bootstrap owner is the one row with `bootstrap = true`. It has no email and no password (a
//! database CHECK says so), so no registration can ever claim it: registration writes an email, and
//! login looks owners up only by email. Before V6 it was found by a fixed address, which anyone
//! could register first; V6 repaired databases where that happened and recorded the repair in
//! `owner_repairs`, which [`report_repairs`] logs once.

use chrono::{DateTime, Utc};
use tokio_postgres::Client;
use uuid::Uuid;

use super::email::{self, Email};
use super::{check_name, AccountError};

/// A stored owner, as `/api/auth/me` shows it (never the password hash).
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Owner {
    /// Id (the token's `sub`).
    pub id: Uuid,
    /// Login email, as registered (trimmed, NFC).
    pub email: String,
    /// Display name.
    pub name: String,
    /// `owner` or `admin` (admins may also call the DBA endpoints).
    pub role: String,
    /// Registration time.
    pub created_at: DateTime<Utc>,
}

fn owner_from(r: &tokio_postgres::Row) -> Owner {
    Owner { id: r.get(0), email: r.get(1), name: r.get(2), role: r.get(3), created_at: r.get(4) }
}

const OWNER_COLUMNS: &str = "id, email, name, role, created_at";
/// Owners that may hold a session: never the bootstrap owner, never a disabled login.
const CAN_LOG_IN: &str = "NOT bootstrap AND disabled_at IS NULL";

/// The bootstrap owner's id, created on first use. Only the CLI and tests create apps for it.
pub async fn bootstrap_owner(client: &Client) -> Result<Uuid, AccountError> {
    const INSERT: &str = "INSERT INTO owners (id, email, name, role, bootstrap) \
         VALUES ($1, NULL, 'Bootstrap owner', 'admin', true) ON CONFLICT (bootstrap) WHERE bootstrap DO NOTHING";
    const SELECT: &str = "SELECT id FROM owners WHERE bootstrap";
    client.execute(INSERT, &[&Uuid::new_v4()]).await?;
    Ok(client.query_one(SELECT, &[]).await?.get(0))
}

/// Creates an owner with an already hashed password; `EmailTaken` when an owner has the same
/// normalised email (or, for owners registered before V6, the same address in any case).
pub async fn create_owner(
    client: &Client,
    email: &str,
    name: &str,
    password_hash: &str,
    admin: bool,
) -> Result<Owner, AccountError> {
    let sql = format!(
        "INSERT INTO owners (id, email, email_norm, name, password_hash, role) \
         SELECT $1::uuid, $2::text, $3::text, $4::text, $5::text, $6::text \
         WHERE NOT EXISTS (SELECT 1 FROM owners WHERE lower(email) = lower($2::text)) \
         ON CONFLICT (email_norm) DO NOTHING RETURNING {OWNER_COLUMNS}"
    );
    let email = Email::parse(email)?;
    let name = check_name("name", name)?;
    let role = if admin { "admin" } else { "owner" };
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] =
        [&Uuid::new_v4(), &email.display, &email.normalized, &name, &password_hash, &role];
    let row = client.query_opt(&sql, &params).await?;
    row.map(|r| owner_from(&r)).ok_or(AccountError::EmailTaken)
}

/// The owner that may log in with `email`, and its password hash. Found by the normalised form; an
/// owner registered before V6 whose address collided with an older one's after normalisation is
/// found by its address as typed in any case (the pre-V6 rule), which wins over the normalised match.
pub async fn owner_for_login(client: &Client, email: &str) -> Result<Option<(Owner, Option<String>)>, AccountError> {
    let sql = format!(
        "SELECT {OWNER_COLUMNS}, password_hash FROM owners \
         WHERE (email_norm = $1 OR lower(email) = lower($2)) AND {CAN_LOG_IN} \
         ORDER BY lower(email) = lower($2) DESC, created_at, id LIMIT 1"
    );
    let row = client.query_opt(&sql, &[&email::normalize(email), &email.trim()]).await?;
    Ok(row.map(|r| (owner_from(&r), r.get(5))))
}

/// The owner `id` if the token `jti` it presents has not been revoked (logout) and its login has
/// not been disabled; `None` otherwise.
pub async fn owner_session(client: &Client, id: Uuid, jti: Uuid) -> Result<Option<Owner>, AccountError> {
    let sql = format!(
        "SELECT {OWNER_COLUMNS} FROM owners WHERE id = $1 AND {CAN_LOG_IN} \
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

/// Logs, once (whichever process gets there first), each repair of a registered bootstrap address
/// that V6 made, as a warning naming the disabled login and the apps moved; returns how many.
pub async fn report_repairs(client: &Client) -> Result<usize, AccountError> {
    const SQL: &str = "UPDATE owner_repairs SET reported_at = now() WHERE reported_at IS NULL \
         RETURNING disabled_owner_id, bootstrap_owner_id, apps_moved, keys_to_review, repaired_at";
    let rows = client.query(SQL, &[]).await?;
    for r in &rows {
        let (disabled, bootstrap): (Uuid, Uuid) = (r.get(0), r.get(1));
        let (apps, keys, at): (i32, i32, DateTime<Utc>) = (r.get(2), r.get(3), r.get(4));
        tracing::warn!(
            disabled_owner = %disabled, bootstrap_owner = %bootstrap, apps_moved = apps, keys_to_review = keys,
            repaired_at = %at,
            "someone had registered the old bootstrap address and owned the CLI-created apps: the apps \
             moved back to the bootstrap owner and that login is disabled; review the keys made since"
        );
    }
    Ok(rows.len())
}
