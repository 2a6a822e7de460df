//! DBA endpoints under `/api/admin/` (bearer admin token, or an admin owner's token): partitions with bounds, sizes and
//! statistics; a health verdict with reasons; maintenance history and run-now; index usage; slow
//! queries from pg_stat_statements when the extension is installed.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use deadpool_postgres::Object;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::AppState;
use crate::auth::bearer::{bearer_token, token_matches};

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

/// Passes the admin token, or the token of an owner with the admin role; 401 for anything else but a
/// valid token of a plain owner, which gets 403.
pub async fn require_admin(s: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let header = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match bearer_token(header) {
        None => Err(ApiError::unauthorized("unauthorized", "an admin bearer token is required")),
        Some(t) if token_matches(t, &s.secrets.admin_token) => Ok(()),
        Some(t) => {
            let claims = super::accounts::verify_token(s, t)?;
            let owner = super::accounts::owner_session(s, claims.sub, claims.jti).await?;
            match owner.role.as_str() {
                "admin" => Ok(()),
                _ => Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "the admin role is required")),
            }
        }
    }
}

async fn admin_client(s: &AppState, headers: &HeaderMap) -> Result<Object, ApiError> {
    require_admin(s, headers).await?;
    s.pool.get().await.map_err(|e| {
        tracing::warn!(error = %e, "no database connection");
        ApiError::unavailable("database_unavailable", "the database is unavailable; retry later")
    })
}

fn ok(data: impl serde::Serialize) -> Json<Value> {
    Json(json!({"success": true, "data": data}))
}

fn job_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(e)
}

#[tracing::instrument(level = "debug", skip_all)]
async fn partitions(State(s): State<AppState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let client = admin_client(&s, &headers).await?;
    let catalog = partition_jobs::read_catalog(&client).await.map_err(job_error)?;
    Ok(ok(catalog))
}

#[tracing::instrument(level = "debug", skip_all)]
async fn partition_health(State(s): State<AppState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let client = admin_client(&s, &headers).await?;
    let policy = partition_jobs::load_policy(&client).await.map_err(job_error)?;
    let mut health = partition_jobs::health(&client, Utc::now(), &policy).await.map_err(job_error)?;
    let catalog = partition_jobs::read_catalog(&client).await.map_err(job_error)?;
    let check = crate::rollup::months::health_check(&client, &catalog).await.map_err(job_error)?;
    health.status = health.status.max(check.status);
    health.checks.push(check);
    Ok(Json(json!({"success": true, "data": health})))
}

#[derive(Deserialize)]
struct RunsQuery {
    limit: Option<i64>,
}

/// A query string that does not deserialise (its one parameter, `limit`, is not an integer in range),
/// as JSON like every other error.
fn bad_limit(e: QueryRejection) -> ApiError {
    ApiError::bad_request("invalid_parameter", e.body_text()).with_details(json!({"parameter": "limit"}))
}

#[tracing::instrument(level = "debug", skip_all)]
async fn runs(
    State(s): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<RunsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(bad_limit)?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("invalid_parameter", "limit must be between 1 and 1000")
            .with_details(json!({"parameter": "limit"})));
    }
    let client = admin_client(&s, &headers).await?;
    Ok(ok(partition_jobs::list_runs(&client, limit).await.map_err(job_error)?))
}

#[tracing::instrument(level = "debug", skip_all)]
async fn run_now(State(s): State<AppState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    require_admin(&s, &headers).await?;
    // Spawned, not awaited in place: a client hanging up must not cancel a run half-way on a pooled
    // connection (it would keep the runner's session lock).
    let (pool, cache, timeout) = (s.pool.clone(), s.cache.clone(), s.cfg.partition_lock_timeout);
    let run =
        tokio::spawn(
            async move { crate::jobs::run_maintenance_waiting(&pool, Some(&cache), timeout, RUN_NOW_WAIT).await },
        );
    let report = run.await.map_err(job_error)?.map_err(job_error)?;
    Ok(ok(report))
}

/// How long "run now" waits for a run in progress elsewhere (the scheduler) to release the runner lock.
const RUN_NOW_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

const INDEXES: &str = "SELECT s.relname::text, s.indexrelname::text, s.idx_scan, s.idx_tup_read, s.idx_tup_fetch, \
       pg_relation_size(s.indexrelid) \
     FROM pg_stat_user_indexes s ORDER BY s.relname, s.indexrelname";

#[tracing::instrument(level = "debug", skip_all)]
async fn indexes(State(s): State<AppState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let client = admin_client(&s, &headers).await?;
    let rows = client.query(INDEXES, &[]).await.map_err(job_error)?;
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
async fn slow_queries(
    State(s): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<RunsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(bad_limit)?;
    let client = admin_client(&s, &headers).await?;
    let installed: i64 = client.query_one(HAS_STATEMENTS, &[]).await.map_err(job_error)?.get(0);
    if installed == 0 {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "extension_unavailable",
            "pg_stat_statements is not installed: add it to shared_preload_libraries, restart PostgreSQL, \
             then run CREATE EXTENSION pg_stat_statements in this database",
        ));
    }
    let limit = q.limit.unwrap_or(20).clamp(1, 500);
    let rows = client.query(SLOW, &[&limit]).await.map_err(|e| {
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
