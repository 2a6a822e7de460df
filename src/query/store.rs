//! Reading for analytics: [`Reader`] opens one read-only REPEATABLE READ transaction per request (so
//! rollups and raw rows are read from one snapshot; ingestion updates both in one transaction, so they
//! agree in it) with JIT off (it adds tens of ms to such queries) and a statement timeout; [`rows`]
//! runs a cached prepared statement in it and times it.

use std::time::Duration;

use deadpool_postgres::{Object, Pool, Transaction};
use postgres_types::ToSql;
use tokio_postgres::{IsolationLevel, Row};

use super::QueryError;

/// Hands out connections and read transactions for analytics.
#[derive(Clone)]
pub struct Reader {
    pool: Pool,
    statement_timeout: Duration,
}

const SETTINGS: &str = "SELECT set_config('jit', 'off', true), set_config('statement_timeout', $1, true)";

impl Reader {
    /// Statements are cancelled after `statement_timeout` (the request timeout: nobody waits longer).
    pub fn new(pool: Pool, statement_timeout: Duration) -> Reader {
        Reader { pool, statement_timeout }
    }

    /// A pooled connection.
    pub async fn connection(&self) -> Result<Object, QueryError> {
        Ok(self.pool.get().await?)
    }

    /// A read-only REPEATABLE READ transaction with JIT off and the statement timeout set.
    pub async fn begin<'a>(&self, client: &'a mut Object) -> Result<Transaction<'a>, QueryError> {
        let tx =
            client.build_transaction().isolation_level(IsolationLevel::RepeatableRead).read_only(true).start().await?;
        let timeout_ms = self.statement_timeout.as_millis().to_string();
        rows(&tx, SETTINGS, &[&timeout_ms]).await?;
        Ok(tx)
    }
}

/// Runs a cached prepared statement.
pub async fn rows(tx: &Transaction<'_>, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, QueryError> {
    let started = std::time::Instant::now();
    let statement = tx.prepare_cached(sql).await?;
    let result = tx.query(&statement, params).await?;
    crate::metrics::query_timed(sql, started.elapsed());
    Ok(result)
}
