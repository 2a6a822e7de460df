//! DBA endpoints under `/api/admin/` (an [`AdminCaller`]: the admin token, or an admin owner's
//! token): partitions with bounds, sizes and statistics; a health verdict with reasons; maintenance history and run-now; index usage; slow
//! queries from pg_stat_statements when the extension is installed.

use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::AdminCaller;
use super::error::{is_database_unavailable, ApiError};
use super::AppState;

/// The admin routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/admin/partitions", get(partitions))
        .route("/api/admin/partitions/health", get(partition_health))
        .route("/api/admin/maintenance/runs", get(runs))
        .route("/api/admin/maintenance/run", post(run_now))
        .route("/api/admin/indexes", get(indexes))
        .route("/api/admin/slow-queries", get(slow_queries))
}

fn ok(data: impl serde::Serialize) -> Json<Value> {
    Json(json!({"success": true, "data": data}))
}

#[tracing::instrument(level = "debug", skip_all)]
async fn partitions(State(s): State<AppState>, _: AdminCaller) -> Result<Json<Value>, ApiError> {
    let client = s.pool.get().await?;
    let catalog = partition_jobs::read_catalog(&client).await?;
    Ok(ok(catalog))
}

#[tracing::instrument(level = "debug", skip_all)]
async fn partition_health(State(s): State<AppState>, _: AdminCaller) -> Result<Json<Value>, ApiError> {
    let client = s.pool.get().await?;
    let policy = partition_jobs::load_policy(&client).await?;
    let mut health = partition_jobs::health(&client, Utc::now(), &policy).await?;
    let catalog = partition_jobs::read_catalog(&client).await?;
    let check = crate::rollup::months::health_check(&client, &catalog).await?;
    health.status = health.status.max(check.status);
    health.checks.push(check);
    Ok(Json(json!({"success": true, "data": health})))
}

#[derive(Deserialize)]
struct RunsQuery {
    limit: Option<i64>,
}

/// The `limit` of a history or slow-query listing. Read before the caller is checked (as it always
/// was): a query string that does not deserialise (its one parameter, `limit`, is not an integer in
/// range) is a 400 like every other error.
struct Limit(Option<i64>);

impl FromRequestParts<AppState> for Limit {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Limit, ApiError> {
        let Query(q) = Query::<RunsQuery>::try_from_uri(&parts.uri)
            .map_err(|e| ApiError::invalid_parameter("limit", e.body_text()))?;
        Ok(Limit(q.limit))
    }
}

/// The history's `limit`: 1 to 1000, 50 when not given.
struct RunsLimit(i64);

impl FromRequestParts<AppState> for RunsLimit {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<RunsLimit, ApiError> {
        let Limit(limit) = Limit::from_request_parts(parts, s).await?;
        let limit = limit.unwrap_or(50);
        if !(1..=1000).contains(&limit) {
            return Err(ApiError::invalid_parameter("limit", "limit must be between 1 and 1000"));
        }
        Ok(RunsLimit(limit))
    }
}

#[tracing::instrument(level = "debug", skip_all)]
async fn runs(State(s): State<AppState>, RunsLimit(limit): RunsLimit, _: AdminCaller) -> Result<Json<Value>, ApiError> {
    let client = s.pool.get().await?;
    Ok(ok(partition_jobs::list_runs(&client, limit).await?))
}

#[tracing::instrument(level = "debug", skip_all)]
async fn run_now(State(s): State<AppState>, _: AdminCaller) -> Result<Json<Value>, ApiError> {
    // Spawned, not awaited in place: a client hanging up must not cancel a run half-way on a pooled
    // connection (it would keep the runner's session lock).
    let (pool, cache, timeout) = (s.pool.clone(), s.cache.clone(), s.cfg.partition_lock_timeout);
    let run =
        tokio::spawn(
            async move { crate::jobs::run_maintenance_waiting(&pool, Some(&cache), timeout, RUN_NOW_WAIT).await },
        );
    let report = run.await??;
    Ok(ok(report))
}

/// How long "run now" waits for a run in progress elsewhere (the scheduler) to release the runner lock.
const RUN_NOW_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

const INDEXES: &str = "SELECT s.relname::text, s.indexrelname::text, s.idx_scan, s.idx_tup_read, s.idx_tup_fetch, \
       pg_relation_size(s.indexrelid) \
     FROM pg_stat_user_indexes s ORDER BY s.relname, s.indexrelname";

#[tracing::instrument(level = "debug", skip_all)]
async fn indexes(State(s): State<AppState>, _: AdminCaller) -> Result<Json<Value>, ApiError> {
    let client = s.pool.get().await?;
    let rows = client.query(INDEXES, &[]).await?;
    let list: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({"table": r.get::<_, String>(0), "index": r.get::<_, String>(1), "scans": r.get::<_, i64>(2),
                   "tuplesRead": r.get::<_, i64>(3), "tuplesFetched": r.get::<_, i64>(4), "sizeBytes": r.get::<_, i64>(5)})
        })
        .collect();
    Ok(ok(list))
}

const HAS_STATEMENTS: &str = "SELECT count(*) FROM pg_extension WHERE extname = 'pg_stat_statements'";
const SLOW: &str = "SELECT query, calls, total_exec_time, mean_exec_time, rows FROM pg_stat_statements \
     WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
     ORDER BY mean_exec_time DESC LIMIT $1";

#[tracing::instrument(level = "debug", skip_all)]
async fn slow_queries(State(s): State<AppState>, Limit(limit): Limit, _: AdminCaller) -> Result<Json<Value>, ApiError> {
    let client = s.pool.get().await?;
    let installed: i64 = client.query_one(HAS_STATEMENTS, &[]).await?.get(0);
    if installed == 0 {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "extension_unavailable",
            "pg_stat_statements is not installed: add it to shared_preload_libraries, restart PostgreSQL, \
             then run CREATE EXTENSION pg_stat_statements in this database",
        ));
    }
    let limit = limit.unwrap_or(20).clamp(1, 500);
    let rows = client.query(SLOW, &[&limit]).await.map_err(|e| {
        if is_database_unavailable(&e) {
            return ApiError::from(e);
        }
        ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "extension_unavailable",
            format!("pg_stat_statements cannot be read: {e}"),
        )
    })?;
    let list: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({"query": r.get::<_, String>(0), "calls": r.get::<_, i64>(1), "totalMs": r.get::<_, f64>(2),
                   "meanMs": r.get::<_, f64>(3), "rows": r.get::<_, i64>(4)})
        })
        .collect();
    Ok(ok(list))
}
