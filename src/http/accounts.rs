//! The accounts API (owner bearer tokens): `/api/auth/{register,login,me,logout}`, apps under
//! `/api/apps` and API keys under `/api/keys`, in the original's shapes. Every management route sees
//! only the caller's own apps and keys; another owner's ids answer 404 like missing ones, so ids
//! cannot be probed. Every route but register and login takes an [`OwnerSession`].

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use std::future::Future;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::auth::OwnerSession;
use super::client::ClientIp;
use super::error::ApiError;
use super::AppState;
use crate::accounts::{self as store, CreatedKey, Page};
use crate::auth::password::{self, PASSWORD_MAX_CHARS, PASSWORD_MIN_CHARS};
use crate::auth::tokens;

/// The accounts routes. Register and login share the per-IP limiter `STRATA_AUTH_RATE_LIMIT`.
pub fn router() -> Router<AppState> {
    let register = |State(s): State<AppState>, ip: ClientIp, b: Body<RegisterIn>| async move {
        throttled(&s.clone(), ip, register(s, b)).await
    };
    let login = |State(s): State<AppState>, ip: ClientIp, b: Body<LoginIn>| async move {
        throttled(&s.clone(), ip, login(s, b)).await
    };
    Router::new()
        .route("/api/auth/register", post(register))
        .route("/api/auth/login", post(login))
        .route("/api/auth/me", get(me))
        .route("/api/auth/logout", post(logout))
        .route("/api/apps", post(create_app).get(list_apps))
        .route("/api/apps/{id}", get(get_app).patch(rename_app).delete(delete_app))
        .route("/api/keys", post(create_key).get(list_keys))
        .route("/api/keys/{id}", get(get_key).delete(revoke_key))
        .route("/api/keys/{id}/regenerate", post(regenerate_key))
}

type Answer = Result<(StatusCode, Json<Value>), ApiError>;
type Body<T> = Result<Json<T>, JsonRejection>;
type IdPath = Result<Path<String>, PathRejection>;

/// The one answer to every failed login, whether the email exists or not.
const BAD_CREDENTIALS: &str = "invalid email or password";
/// List pages: default and largest `limit`.
const PAGE_DEFAULT: i64 = 100;
const PAGE_MAX: i64 = 1000;
/// Longest key lifetime a client may ask for (ten years).
const KEY_DAYS_MAX: u32 = 3650;

#[derive(Deserialize)]
struct RegisterIn {
    email: String,
    name: String,
    password: String,
}

#[derive(Deserialize)]
struct LoginIn {
    email: String,
    password: String,
}

#[derive(Deserialize)]
struct AppIn {
    name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeyIn {
    #[serde(alias = "app_id")]
    app_id: String,
    name: String,
    #[serde(alias = "expires_in_days")]
    expires_in_days: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    limit: Option<i64>,
    offset: Option<i64>,
    #[serde(alias = "app_id")]
    app_id: Option<String>,
}

/// Runs `answer` unless the client IP is over the auth rate limit: then 429 with `Retry-After` and
/// `RateLimit-*` headers, before any database or hashing work.
async fn throttled(s: &AppState, ClientIp(ip): ClientIp, answer: impl Future<Output = Answer>) -> Response {
    let ip = ip.to_string();
    let what = "too many attempts from this address";
    match super::limits::check(s.limits.auth.as_deref(), &ip, 1, what).await {
        Ok(quota) => {
            let mut resp = answer.await.into_response();
            if let Some(q) = quota {
                resp.headers_mut().extend(q.headers());
            }
            resp
        }
        Err(e) => e.into_response(),
    }
}

#[tracing::instrument(level = "debug", skip_all)]
async fn register(s: AppState, body: Body<RegisterIn>) -> Answer {
    let Json(b) = body.map_err(bad_body)?;
    let chars = b.password.chars().count();
    if !(PASSWORD_MIN_CHARS..=PASSWORD_MAX_CHARS).contains(&chars) {
        let msg = format!("password must be {PASSWORD_MIN_CHARS} to {PASSWORD_MAX_CHARS} characters");
        return Err(invalid("password", msg));
    }
    // Validated before the (costly) hash, so bad requests cost no hashing.
    store::email::Email::parse(&b.email).map_err(ApiError::from)?;
    let hash = password::hash(b.password).await?;
    let owner = store::create_owner(&**s.pool.get().await?, &b.email, &b.name, &hash, false).await?;
    let (token, _) = tokens::issue(&s.secrets.jwt_secret, owner.id, &owner.email, Utc::now(), s.cfg.token_ttl);
    Ok(created(json!({"user": owner, "token": token})))
}

#[tracing::instrument(level = "debug", skip_all)]
async fn login(s: AppState, body: Body<LoginIn>) -> Answer {
    let Json(b) = body.map_err(bad_body)?;
    // PostgreSQL text cannot hold U+0000: such an email could only fail in the lookup.
    if b.email.contains('\0') {
        return Err(invalid("email", "email must not contain NUL characters"));
    }
    let found = store::owner_for_login(&**s.pool.get().await?, &b.email).await?;
    let (owner, hash) = match found {
        Some((owner, hash)) => (Some(owner), hash),
        None => (None, None),
    };
    // Verified even for unknown emails (against a dummy hash): same answer, same time.
    let ok = password::verify(b.password, hash).await?;
    let Some(owner) = owner.filter(|_| ok) else {
        return Err(ApiError::unauthorized("invalid_credentials", BAD_CREDENTIALS));
    };
    let (token, _) = tokens::issue(&s.secrets.jwt_secret, owner.id, &owner.email, Utc::now(), s.cfg.token_ttl);
    Ok(ok_json(json!({"user": owner, "token": token})))
}

#[tracing::instrument(level = "debug", skip_all)]
async fn me(OwnerSession { owner, .. }: OwnerSession) -> Answer {
    Ok(ok_json(json!({"user": owner})))
}

#[tracing::instrument(level = "debug", skip_all)]
async fn logout(State(s): State<AppState>, OwnerSession { owner, claims }: OwnerSession) -> Answer {
    store::revoke_token(&**s.pool.get().await?, owner.id, claims.jti, claims.expires_at()).await?;
    s.authz.invalidate_all();
    Ok((StatusCode::OK, Json(json!({"success": true, "message": "logged out; this token no longer works"}))))
}

#[tracing::instrument(level = "debug", skip_all)]
async fn create_app(State(s): State<AppState>, OwnerSession { owner, .. }: OwnerSession, body: Body<AppIn>) -> Answer {
    let Json(b) = body.map_err(bad_body)?;
    let app = store::create_app(&**s.pool.get().await?, &b.name, Some(owner.id)).await?;
    Ok(created(json!(app)))
}

#[tracing::instrument(level = "debug", skip_all)]
async fn list_apps(
    State(s): State<AppState>,
    OwnerSession { owner, .. }: OwnerSession,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Answer {
    let Query(q) = query.map_err(|e| invalid("query", e.body_text()))?;
    let page = page(&q)?;
    let apps = store::list_apps(&**s.pool.get().await?, owner.id, page).await?;
    Ok(ok_json_page(apps, page))
}

#[tracing::instrument(level = "debug", skip_all)]
async fn get_app(State(s): State<AppState>, OwnerSession { owner, .. }: OwnerSession, path: IdPath) -> Answer {
    let id = path_id(path, ApiError::app_not_found)?;
    let app = store::owned_app(&**s.pool.get().await?, owner.id, id).await?;
    Ok(ok_json(json!(app)))
}

#[tracing::instrument(level = "debug", skip_all)]
async fn rename_app(
    State(s): State<AppState>,
    OwnerSession { owner, .. }: OwnerSession,
    path: IdPath,
    body: Body<AppIn>,
) -> Answer {
    let id = path_id(path, ApiError::app_not_found)?;
    let Json(b) = body.map_err(bad_body)?;
    let app = store::rename_app(&**s.pool.get().await?, owner.id, id, &b.name).await?;
    Ok(ok_json(json!(app)))
}

#[tracing::instrument(level = "debug", skip_all)]
async fn delete_app(State(s): State<AppState>, OwnerSession { owner, .. }: OwnerSession, path: IdPath) -> Answer {
    let id = path_id(path, ApiError::app_not_found)?;
    let hashes = store::delete_app(&mut **s.pool.get().await?, owner.id, id).await?;
    keys_revoked(&s, &hashes).await;
    s.authz.invalidate_all();
    let message = "app deleted and its API keys revoked; its events are kept until retention drops their month";
    Ok(ok_message(json!({"id": id, "revokedKeys": hashes.len()}), message))
}

#[tracing::instrument(level = "debug", skip_all)]
async fn create_key(State(s): State<AppState>, OwnerSession { owner, .. }: OwnerSession, body: Body<KeyIn>) -> Answer {
    let Json(b) = body.map_err(bad_body)?;
    if b.expires_in_days.is_some_and(|d| !(1..=KEY_DAYS_MAX).contains(&d)) {
        return Err(invalid("expiresInDays", format!("expiresInDays must be 1 to {KEY_DAYS_MAX}")));
    }
    let app_id = Uuid::parse_str(b.app_id.trim()).map_err(|_| ApiError::app_not_found())?;
    let client = s.pool.get().await?;
    store::owned_app(&client, owner.id, app_id).await?;
    let key = store::create_key(&client, &s.secrets.key_secret, app_id, &b.name, b.expires_in_days).await?;
    Ok(created_key(key, "API key created; store it now, it is not shown again"))
}

#[tracing::instrument(level = "debug", skip_all)]
async fn list_keys(
    State(s): State<AppState>,
    OwnerSession { owner, .. }: OwnerSession,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Answer {
    let Query(q) = query.map_err(|e| invalid("query", e.body_text()))?;
    let page = page(&q)?;
    let client = s.pool.get().await?;
    let app = match q.app_id.as_deref() {
        Some(a) => {
            let id = Uuid::parse_str(a.trim()).map_err(|_| ApiError::app_not_found())?;
            Some(store::owned_app(&client, owner.id, id).await?.id)
        }
        None => None,
    };
    let keys = store::list_keys(&client, owner.id, app, page).await?;
    Ok(ok_json_page(keys, page))
}

#[tracing::instrument(level = "debug", skip_all)]
async fn get_key(State(s): State<AppState>, OwnerSession { owner, .. }: OwnerSession, path: IdPath) -> Answer {
    let id = path_id(path, ApiError::key_not_found)?;
    let key = store::owned_key(&**s.pool.get().await?, owner.id, id).await?;
    Ok(ok_json(json!(key)))
}

#[tracing::instrument(level = "debug", skip_all)]
async fn revoke_key(State(s): State<AppState>, OwnerSession { owner, .. }: OwnerSession, path: IdPath) -> Answer {
    let id = path_id(path, ApiError::key_not_found)?;
    let hash = store::revoke_owned_key(&**s.pool.get().await?, owner.id, id).await?;
    keys_revoked(&s, &[hash]).await;
    Ok(ok_message(json!({"id": id, "status": "revoked"}), "API key revoked"))
}

#[tracing::instrument(level = "debug", skip_all)]
async fn regenerate_key(State(s): State<AppState>, OwnerSession { owner, .. }: OwnerSession, path: IdPath) -> Answer {
    let id = path_id(path, ApiError::key_not_found)?;
    let (key, old_hash) =
        store::regenerate_key(&mut **s.pool.get().await?, &s.secrets.key_secret, owner.id, id).await?;
    keys_revoked(&s, &[old_hash]).await;
    Ok(created_key(key, "API key regenerated; the old key no longer works; store the new one now"))
}

/// Makes revoked keys stop working at once in this process. Other instances learn it within the key
/// cache's TTL (≤ 30 s); the cache issue's Redis bus is to publish `hashes` from here so they evict
/// within 1 s.
async fn keys_revoked(s: &AppState, hashes: &[Vec<u8>]) {
    for hash in hashes {
        s.keys.evict(hash).await;
    }
    s.cache.publish_key_revocations(hashes);
}

fn invalid(parameter: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid_parameter(parameter, message)
}

/// 413 over the body limit, else 400 (the one mapping, [`ApiError::from`]).
fn bad_body(e: JsonRejection) -> ApiError {
    ApiError::from(e)
}

/// A path id; ids that are not UUIDs are missing ids (404), never a 500.
fn path_id(path: IdPath, not_found: fn() -> ApiError) -> Result<Uuid, ApiError> {
    let Path(raw) = path.map_err(|_| not_found())?;
    Uuid::parse_str(&raw).map_err(|_| not_found())
}

fn page(q: &ListQuery) -> Result<Page, ApiError> {
    let limit = q.limit.unwrap_or(PAGE_DEFAULT);
    if !(1..=PAGE_MAX).contains(&limit) {
        return Err(invalid("limit", format!("limit must be 1 to {PAGE_MAX}")));
    }
    let offset = q.offset.unwrap_or(0);
    if offset < 0 {
        return Err(invalid("offset", "offset must not be negative"));
    }
    Ok(Page { limit, offset })
}

fn ok_json(data: Value) -> (StatusCode, Json<Value>) {
    (StatusCode::OK, Json(json!({"success": true, "data": data})))
}

fn ok_message(data: Value, message: &str) -> (StatusCode, Json<Value>) {
    (StatusCode::OK, Json(json!({"success": true, "data": data, "message": message})))
}

fn created(data: Value) -> (StatusCode, Json<Value>) {
    (StatusCode::CREATED, Json(json!({"success": true, "data": data})))
}

/// A list page: storage returns one row past the page when there is a next one.
fn ok_json_page<T: serde::Serialize>(mut rows: Vec<T>, page: Page) -> (StatusCode, Json<Value>) {
    let has_more = rows.len() as i64 > page.limit;
    rows.truncate(page.limit as usize);
    let meta = json!({"limit": page.limit, "offset": page.offset, "hasMore": has_more});
    (StatusCode::OK, Json(json!({"success": true, "data": rows, "meta": meta})))
}

/// The original's key shape: snake_case columns plus `apiKey`, shown this once.
fn created_key(key: CreatedKey, message: &str) -> (StatusCode, Json<Value>) {
    let data = json!({
        "id": key.id, "app_id": key.app_id, "key_prefix": key.key_prefix, "name": key.name,
        "status": "active", "expires_at": key.expires_at, "created_at": key.created_at, "apiKey": key.api_key,
    });
    (StatusCode::CREATED, Json(json!({"success": true, "data": data, "message": message})))
}
