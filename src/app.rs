//! Building and running the server: resolve the database (configured or embedded), migrate, load
//! secrets, start the writers and background loops, bind, serve, and shut down in order (stop
//! accepting, finish in-flight requests, drain the writers, flush usage counters).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::keys::KeyAuth;
use crate::bus::Bus;
use crate::cache::Cache;
use crate::config::Config;
use crate::db::{self, Secrets};
use crate::http::{self, AppState};
use crate::ingest::ua::UaParser;
use crate::ingest::writer::{self, WriterConfig};

/// The database URL to use: `DATABASE_URL`, else the embedded cluster under `data_dir`.
pub async fn database_url(cfg: &Config) -> anyhow::Result<String> {
    if let Some(url) = &cfg.database_url {
        return Ok(url.clone());
    }
    let dir = cfg.data_dir.join("postgres");
    let pg = crate::embedded::start_or_reuse(&dir)
        .await
        .context("no DATABASE_URL is set, so Strata runs its own PostgreSQL, which failed")?;
    tracing::info!(url = %pg.database_url, data_dir = %pg.data_dir.display(), "using the embedded PostgreSQL");
    Ok(pg.database_url)
}

/// A server ready to run: migrated database, bound listener.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    /// Stops the writers and loops once HTTP has drained.
    background_stop: CancellationToken,
    tracker: TaskTracker,
}

impl Application {
    /// Connects, migrates and binds `cfg.listen` (port 0 picks a free port).
    pub async fn build(cfg: Config) -> anyhow::Result<Application> {
        crate::metrics::handle();
        crate::metrics::set_slow_query(cfg.slow_query);
        let url = database_url(&cfg).await?;
        db::migrate(&url, cfg.premake_months, cfg.partition_lock_timeout).await.context("migrating the database")?;
        let pool = db::pool(&url, &cfg)?;
        let secrets = {
            let client = pool.get().await.context("connecting to the database")?;
            crate::accounts::report_repairs(&client).await.context("reporting owner repairs")?;
            Secrets::load(&client, &cfg).await?
        };
        let background_stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let writer_cfg = WriterConfig {
            capacity: cfg.ingest_queue_capacity,
            flush_max_events: cfg.flush_max_events,
            writers: cfg.writers,
            partition_lock_timeout: cfg.partition_lock_timeout,
            store_timeout: cfg.request_timeout,
        };
        let bus = Bus::start(&cfg, background_stop.clone(), &tracker);
        let cache = Cache::start(&cfg, bus.clone(), background_stop.clone(), &tracker);
        let limits =
            crate::auth::ratelimit::Limits::start(&cfg, &secrets.key_secret, background_stop.clone(), &tracker);
        let queue = writer::start(pool.clone(), writer_cfg, cache.clone(), background_stop.clone(), &tracker);
        let keys = KeyAuth::new(pool.clone(), secrets.key_secret.clone(), &cfg, limits.key_failures.clone());
        // Keys revoked on other instances leave this one's key cache at once.
        keys.follow_revocations(&bus);
        tracker.spawn(keys.clone().usage_flush_loop(cfg.usage_flush_interval, background_stop.clone()));
        crate::jobs::publish_policy(&pool, &cfg).await.context("publishing the partition policy")?;
        tracker.spawn(crate::jobs::maintenance_loop(
            pool.clone(),
            cache.clone(),
            cfg.maintenance_interval,
            cfg.partition_lock_timeout,
            background_stop.clone(),
        ));
        tracker.spawn(crate::rollup::compact::compact_loop(
            pool.clone(),
            cfg.tier_compact_interval,
            background_stop.clone(),
        ));
        tracker.spawn(crate::ingest::dedupe::prune_loop(pool.clone(), cfg.dedupe_window, background_stop.clone()));
        let ua = tokio::task::spawn_blocking(UaParser::new).await?;
        let listener = TcpListener::bind(cfg.listen).await.with_context(|| format!("binding {}", cfg.listen))?;
        let accept_window = chrono::Duration::from_std(cfg.accept_window).context("STRATA_ACCEPT_WINDOW")?;
        let budget = http::budget::Budget::new(cfg.ingest_memory_bytes, http::budget::Budget::cpu());
        let state = AppState::new(http::SharedState {
            budget,
            cfg: Arc::new(cfg),
            pool,
            keys,
            queue,
            ua,
            secrets: Arc::new(secrets),
            accept_window,
            cache,
            authz: http::authz_cache(),
            limits,
        });
        if let Some(top) = state.cfg.cache_warm {
            // STRATA_CACHE_WARM: precompute the most requested queries after start and each rollover.
            let warm_state = state.clone();
            let warm_one = move |app, recipe| http::analytics::warm_one(warm_state.clone(), app, recipe);
            tracker.spawn(crate::cache::warm::run(state.cache.clone(), top, warm_one, background_stop.clone()));
        }
        Ok(Application { listener, state, background_stop, tracker })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// The analytics cache (tests read its counters).
    pub fn cache(&self) -> &crate::cache::Cache {
        &self.state.cache
    }

    /// The rate limiters (tests peek at their buckets).
    pub fn limits(&self) -> &crate::auth::ratelimit::Limits {
        &self.state.limits
    }

    /// The admin token in force (configured or generated).
    pub fn admin_token(&self) -> &str {
        &self.state.secrets.admin_token
    }

    /// Serves until `shutdown` resolves, then drains: every accepted event is committed (or refused)
    /// before this returns.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let grace = self.state.cfg.shutdown_grace;
        let header_timeout = self.state.cfg.header_timeout;
        http::serve::serve(self.listener, http::router(self.state), header_timeout, shutdown).await;
        tracing::info!("HTTP stopped; draining the ingest queue");
        self.background_stop.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait()).await.is_err() {
            tracing::error!(?grace, "background tasks did not stop within the shutdown grace period");
        }
        Ok(())
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutdown signal received");
}
