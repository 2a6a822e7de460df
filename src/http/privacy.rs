//! `DELETE /api/analytics/users/{userId}?appId=`: a privacy request erasing one end user's events
//! of one app (the caller's, or any with the admin token), rollups kept equal to raw.

use std::collections::HashMap;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::routing::delete;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::auth::{Caller, ReadableApp};
use super::error::ApiError;
use super::AppState;

/// The erasure route (under the analytics rate limit, with the analytics routes).
pub fn router() -> Router<AppState> {
    Router::new().route("/api/analytics/users/{userId}", delete(erase_user))
}

/// Erases the user's events of `appId` and answers how many were deleted.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn erase_user(
    State(s): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    // Rejections (a path or query that is not UTF-8 once decoded) as JSON like every other error.
    let Path(user_id) = path.map_err(|e| invalid("userId", e.body_text()))?;
    let Query(q) = query.map_err(|e| invalid("query", e.body_text()))?;
    let app_id = q.get("appId").or_else(|| q.get("app_id")).ok_or_else(|| {
        ApiError::bad_request("invalid_parameter", "appId is required: erasure is per app")
            .with_details(json!({"parameter": "appId"}))
    })?;
    crate::query::params::parse_user_id(&user_id).map_err(|e| invalid("userId", e.to_string()))?;
    let ReadableApp(app) = ReadableApp::authorize(&s, &caller, app_id).await?;
    let mut client = s.pool.get().await?;
    let deleted = crate::privacy::erase_user(&mut client, app.id, &user_id).await?;
    // Every tier drops the user's answer before the erasure is acknowledged (see `Cache::forget`).
    s.cache.forget(&super::analytics::user_key(&s, app.id, &user_id)).await;
    Ok(Json(json!({"success": true, "data": {"appId": app.id, "userId": user_id, "deletedEvents": deleted}})))
}

fn invalid(parameter: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid_parameter(parameter, message)
}
