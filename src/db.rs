//! Storage plumbing: the connection pool, migrations (refinery, under an advisory lock so several
//! processes may start at once), the partitions migrate keeps ahead, and server secrets generated
//! once and shared through the database by every process that uses it.

use std::str::FromStr;
use std::time::Duration;

use chrono::Utc;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use partition_jobs::Month;
use rand::RngCore;
use tokio_postgres::NoTls;

use crate::config::Config;

mod embedded_migrations {
    refinery::embed_migrations!("sql/migrations");
}

/// Storage failures of this module.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database URL does not parse.
    #[error("invalid DATABASE_URL: {0}")]
    BadUrl(#[source] tokio_postgres::Error),
    /// The pool could not be built.
    #[error("could not build the connection pool: {0}")]
    Pool(String),
    /// A query or connection failed.
    #[error("database error: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// Migrations failed.
    #[error("migrations failed: {0}")]
    Migrate(#[source] refinery::Error),
    /// Partition DDL failed.
    #[error("partition maintenance failed: {0}")]
    Partition(#[from] partition_jobs::Error),
}

/// Arbitrary constant key of the session advisory lock that serialises migrations.
const MIGRATION_LOCK_KEY: i64 = 0x5354_5241_5441_4d31; // "STRATAM1"

/// Builds the pool. Connections are opened lazily; `db_timeout` bounds every wait for one.
pub fn pool(url: &str, cfg: &Config) -> Result<Pool, DbError> {
    let mut pg = tokio_postgres::Config::from_str(url).map_err(DbError::BadUrl)?;
    pg.connect_timeout(cfg.db_timeout);
    if pg.get_application_name().is_none() {
        pg.application_name("strata");
    }
    let mgr = Manager::from_config(pg, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Pool::builder(mgr)
        .max_size(cfg.db_pool_size)
        .wait_timeout(Some(cfg.db_timeout))
        .create_timeout(Some(cfg.db_timeout))
        .recycle_timeout(Some(cfg.db_timeout))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| DbError::Pool(e.to_string()))
}

/// One direct connection, for migrations and CLI commands.
pub async fn connect(url: &str) -> Result<tokio_postgres::Client, DbError> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "direct connection closed");
        }
    });
    Ok(client)
}

/// Applies pending migrations, then makes sure the current month and `premake_months` ahead exist.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn migrate(url: &str, premake_months: u32, lock_timeout: Duration) -> Result<(), DbError> {
    let mut client = connect(url).await?;
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY]).await?;
    let report = embedded_migrations::migrations::runner().set_abort_divergent(true).run_async(&mut client).await;
    let unlocked = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY]).await;
    let report = report.map_err(DbError::Migrate)?;
    unlocked?;
    for m in report.applied_migrations() {
        tracing::info!(migration = %m, "applied");
    }
    let now = Month::containing(Utc::now());
    partition_jobs::ensure_months(&client, now, now.add_months(premake_months as i32), lock_timeout).await?;
    Ok(())
}

/// The newest migration version this binary knows; `/ready` compares it with the database.
pub fn latest_migration_version() -> i64 {
    embedded_migrations::migrations::runner().get_migrations().iter().map(|m| i64::from(m.version())).max().unwrap_or(0)
}

/// The newest migration version applied to the database, if any.
pub async fn applied_migration_version(client: &tokio_postgres::Client) -> Result<Option<i64>, DbError> {
    const SQL: &str = "SELECT max(version)::int8 FROM refinery_schema_history";
    Ok(client.query_one(SQL, &[]).await?.get(0))
}

/// Server secrets, taken from the config when set, otherwise generated once and kept in the database.
#[derive(Clone)]
pub struct Secrets {
    /// Bearer token of DBA endpoints.
    pub admin_token: String,
    /// HMAC key of API-key hashes.
    pub key_secret: Vec<u8>,
    /// Signing key of owner tokens.
    pub jwt_secret: Vec<u8>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets { .. }")
    }
}

impl Secrets {
    /// Resolves every secret: configured value, else the stored one, else a new stored one.
    pub async fn load(client: &tokio_postgres::Client, cfg: &Config) -> Result<Secrets, DbError> {
        let admin_token =
            resolve(client, "admin_token", cfg.admin_token.as_ref().map(crate::config::Secret::expose)).await?;
        let key_secret =
            resolve(client, "key_secret", cfg.key_secret.as_ref().map(crate::config::Secret::expose)).await?;
        let jwt_secret =
            resolve(client, "jwt_secret", cfg.jwt_secret.as_ref().map(crate::config::Secret::expose)).await?;
        Ok(Secrets { admin_token, key_secret: key_secret.into_bytes(), jwt_secret: jwt_secret.into_bytes() })
    }
}

async fn resolve(client: &tokio_postgres::Client, name: &str, configured: Option<&str>) -> Result<String, DbError> {
    if let Some(v) = configured {
        return Ok(v.to_string());
    }
    // Insert-if-absent then read: racing processes all end up with the first value written.
    const INSERT: &str = "INSERT INTO server_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING";
    const SELECT: &str = "SELECT value FROM server_secrets WHERE name = $1";
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    client.execute(INSERT, &[&name, &hex::encode(bytes)]).await?;
    Ok(client.query_one(SELECT, &[&name]).await?.get(0))
}

/// True for errors that mean "the database is unreachable right now" rather than "this statement
/// is wrong": the caller answers 503 and the client retries.
pub fn is_unavailable(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        let c = code.code();
        // 08: connection exception; 57P0x: shutdown / cannot connect now; 53300: too many connections.
        return c.starts_with("08") || c.starts_with("57P") || c == "53300";
    }
    // No SQLSTATE: unavailable when an I/O failure lies underneath (connect, socket, timeout).
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}
