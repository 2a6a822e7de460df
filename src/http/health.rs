//! `/health` (the process is up) and `/ready` (database reachable, migrations applied, partitions
//! ahead of time).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use partition_jobs::Month;
use serde_json::{json, Value};

use super::AppState;
use crate::db;

/// The health routes.
pub fn router() -> Router<AppState> {
    Router::new().route("/health", get(health)).route("/ready", get(ready))
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok", "timestamp": Utc::now().to_rfc3339()}))
}

const PARTITIONS_AHEAD: &str = "SELECT count(*) FROM pg_inherits i \
     JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent \
     WHERE p.relname = 'events' AND p.relnamespace = 'public'::regnamespace AND c.relname = ANY($1)";

#[tracing::instrument(level = "debug", skip_all)]
async fn ready(State(s): State<AppState>) -> (StatusCode, Json<Value>) {
    let checks = match readiness(&s).await {
        Ok(c) => c,
        Err(e) => json!({"database": {"ok": false, "detail": e}}),
    };
    let ok = checks.as_object().is_some_and(|m| m.values().all(|c| c["ok"] == true));
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({"status": if ok { "ready" } else { "not_ready" }, "checks": checks})))
}

async fn readiness(s: &AppState) -> Result<Value, String> {
    let client = s.pool.get().await.map_err(|e| format!("no connection: {e}"))?;
    let applied = db::applied_migration_version(&client).await.map_err(|e| e.to_string())?;
    let latest = db::latest_migration_version();
    let now = Month::containing(Utc::now());
    let wanted: Vec<String> = (0..=s.cfg.premake_months as i32).map(|i| now.add_months(i).partition_name()).collect();
    let have: i64 = client.query_one(PARTITIONS_AHEAD, &[&wanted]).await.map_err(|e| e.to_string())?.get(0);
    Ok(json!({
        "database": {"ok": true},
        "migrations": {"ok": applied == Some(latest), "applied": applied, "expected": latest},
        "partitions": {"ok": have == wanted.len() as i64, "present": have, "expected": wanted.len()},
    }))
}
