//! The scratch database of one benchmark run: created on the server `STRATA_BENCH_DATABASE_URL`
//! names, dropped (forcing out any session left) at the end of the run.

use anyhow::{anyhow, Context, Result};
use uuid::Uuid;

/// `url` with its database part replaced by `name` (query parameters kept).
pub(crate) fn with_database(url: &str, name: &str) -> Result<String> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map(|i| i + 3).ok_or_else(|| anyhow!("{url:?} is not a URL"))?;
    let host_part = match base[authority_start..].find('/') {
        Some(i) => &base[..authority_start + i],
        None => base,
    };
    Ok(match query {
        Some(q) => format!("{host_part}/{name}?{q}"),
        None => format!("{host_part}/{name}"),
    })
}

/// A database created for this run only.
pub(crate) struct ScratchDb {
    pub(crate) admin_url: String,
    pub(crate) name: String,
    pub(crate) url: String,
}

impl ScratchDb {
    /// Creates an empty database named `strata_bench_<uuid>` on `admin_url`'s server.
    pub(crate) async fn create(admin_url: &str) -> Result<ScratchDb> {
        let name = format!("strata_bench_{}", Uuid::new_v4().simple());
        let admin = strata::db::connect(admin_url)
            .await
            .with_context(|| format!("connecting to {admin_url} (set STRATA_BENCH_DATABASE_URL)"))?;
        admin.batch_execute(&format!("CREATE DATABASE \"{name}\"")).await.context("creating the scratch database")?;
        let url = with_database(admin_url, &name)?;
        println!("scratch database: {name}");
        Ok(ScratchDb { admin_url: admin_url.to_string(), name, url })
    }

    /// Runs `run` on the URL of a new scratch database, in a task of its own so that a panic still
    /// reaches the cleanup, then drops the database whatever happened.
    pub(crate) async fn run_in<T, F>(admin_url: &str, run: impl FnOnce(String) -> F) -> Result<T>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T>> + Send + 'static,
    {
        let scratch = ScratchDb::create(admin_url).await?;
        let outcome = tokio::spawn(run(scratch.url.clone())).await;
        scratch.drop_best_effort().await;
        outcome.map_err(|e| anyhow!("benchmark task failed: {e}"))?
    }

    /// Drops the database, forcing out any connection left; failures are only reported.
    pub(crate) async fn drop_best_effort(&self) {
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        let result = match strata::db::connect(&self.admin_url).await {
            Ok(admin) => admin.batch_execute(&sql).await.map_err(anyhow::Error::from),
            Err(e) => Err(e.into()),
        };
        match result {
            Ok(()) => println!("scratch database {} dropped", self.name),
            Err(e) => eprintln!("warning: could not drop scratch database {}: {e:#}", self.name),
        }
    }
}
