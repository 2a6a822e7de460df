//! The accounts API (owner bearer tokens): `/api/auth/{register,login,me,logout}`, apps under
//! `/api/apps` and API keys under `/api/keys`, in the original's shapes. Every management route sees
//! only the caller's own apps and keys; another owner's ids answer 404 like missing ones, so ids
//! cannot be probed. [`owner_session`] is also what analytics and the DBA endpoints use to accept
//! owner tokens.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use std::future::Future;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use deadpool_postgres::Object;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::client::client_ip;
use super::error::ApiError;
use super::AppState;
use crate::accounts::{self as store, AccountError, CreatedKey, Owner, Page};
use crate::auth::bearer::bearer_token;
use crate::auth::password::{self, PASSWORD_MAX_CHARS, PASSWORD_MIN_CHARS};
use crate::auth::tokens::{self, Claims};

/// The accounts routes. Register and login share the per-IP limiter `STRATA_AUTH_RATE_LIMIT`.
pub fn router() -> Router<AppState> {
    let register = |State(s): State<AppState>, ConnectInfo(peer), headers: HeaderMap, b: Body<RegisterIn>| async move {
        throttled(&s.clone(), &headers, peer, register(s, b)).await
    };
    let login = |State(s): State<AppState>, ConnectInfo(peer), headers: HeaderMap, b: Body<LoginIn>| async move {
        throttled(&s.clone(), &headers, peer, login(s, b)).await
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
async fn throttled(
    s: &AppState,
    headers: &HeaderMap,
    peer: SocketAddr,
    answer: impl Future<Output = Answer>,
) -> Response {
    let ip = client_ip(s, headers, peer).to_string();
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
    store::email::Email::parse(&b.email).map_err(account_error)?;
    let hash = password::hash(b.password).await?;
    let owner = store::create_owner(&**db(&s).await?, &b.email, &b.name, &hash, false).await.map_err(account_error)?;
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
    let found = store::owner_for_login(&**db(&s).await?, &b.email).await.map_err(account_error)?;
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
async fn me(State(s): State<AppState>, headers: HeaderMap) -> Answer {
    let (owner, _) = session(&s, &headers).await?;
    Ok(ok_json(json!({"user": owner})))
}

#[tracing::instrument(level = "debug", skip_all)]
async fn logout(State(s): State<AppState>, headers: HeaderMap) -> Answer {
    let (owner, claims) = session(&s, &headers).await?;
    store::revoke_token(&**db(&s).await?, owner.id, claims.jti, claims.expires_at()).await.map_err(account_error)?;
    s.authz.invalidate_all();
    Ok((StatusCode::OK, Json(json!({"success": true, "message": "logged out; this token no longer works"}))))
}

#[tracing::instrument(level = "debug", skip_all)]
async fn create_app(State(s): State<AppState>, headers: HeaderMap, body: Body<AppIn>) -> Answer {
    let (owner, _) = session(&s, &headers).await?;
    let Json(b) = body.map_err(bad_body)?;
    let app = store::create_app(&**db(&s).await?, &b.name, Some(owner.id)).await.map_err(account_error)?;
    Ok(created(json!(app)))
}

#[tracing::instrument(level = "debug", skip_all)]
async fn list_apps(
    State(s): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Answer {
    let (owner, _) = session(&s, &headers).await?;
    let Query(q) = query.map_err(|e| invalid("query", e.body_text()))?;
    let page = page(&q)?;
    let apps = store::list_apps(&**db(&s).await?, owner.id, page).await.map_err(account_error)?;
    Ok(ok_json_page(apps, page))
}

#[tracing::instrument(level = "debug", skip_all)]
async fn get_app(State(s): State<AppState>, headers: HeaderMap, path: IdPath) -> Answer {
    let (owner, _) = session(&s, &headers).await?;
    let id = path_id(path, app_not_found)?;
    let app = store::owned_app(&**db(&s).await?, owner.id, id).await.map_err(account_error)?;
    Ok(ok_json(json!(app)))
}

#[tracing::instrument(level = "debug", skip_all)]
async fn rename_app(State(s): State<AppState>, headers: HeaderMap, path: IdPath, body: Body<AppIn>) -> Answer {
    let (owner, _) = session(&s, &headers).await?;
    let id = path_id(path, app_not_found)?;
    let Json(b) = body.map_err(bad_body)?;
    let app = store::rename_app(&**db(&s).await?, owner.id, id, &b.name).await.map_err(account_error)?;
    Ok(ok_json(json!(app)))
}

#[tracing::instrument(level = "debug", skip_all)]
async fn delete_app(State(s): State<AppState>, headers: HeaderMap, path: IdPath) -> Answer {
    let (owner, _) = session(&s, &headers).await?;
    let id = path_id(path, app_not_found)?;
    let hashes = store::delete_app(&mut **db(&s).await?, owner.id, id).await.map_err(account_error)?;
    keys_revoked(&s, &hashes).await;
    s.authz.invalidate_all();
    let message = "app deleted and its API keys revoked; its events are kept until retention drops their month";
    Ok(ok_message(json!({"id": id, "revokedKeys": hashes.len()}), message))
}

#[tracing::instrument(level = "debug", skip_all)]
async fn create_key(State(s): State<AppState>, headers: HeaderMap, body: Body<KeyIn>) -> Answer {
    let (owner, _) = session(&s, &headers).await?;
    let Json(b) = body.map_err(bad_body)?;
    if b.expires_in_days.is_some_and(|d| !(1..=KEY_DAYS_MAX).contains(&d)) {
        return Err(invalid("expiresInDays", format!("expiresInDays must be 1 to {KEY_DAYS_MAX}")));
    }
    let app_id = Uuid::parse_str(b.app_id.trim()).map_err(|_| app_not_found())?;
    let client = db(&s).await?;
    store::owned_app(&client, owner.id, app_id).await.map_err(account_error)?;
    let key = store::create_key(&client, &s.secrets.key_secret, app_id, &b.name, b.expires_in_days)
        .await
        .map_err(account_error)?;
    Ok(created_key(key, "API key created; store it now, it is not shown again"))
}

#[tracing::instrument(level = "debug", skip_all)]
async fn list_keys(
    State(s): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Answer {
    let (owner, _) = session(&s, &headers).await?;
    let Query(q) = query.map_err(|e| invalid("query", e.body_text()))?;
    let page = page(&q)?;
    let client = db(&s).await?;
    let app = match q.app_id.as_deref() {
        Some(a) => {
            let id = Uuid::parse_str(a.trim()).map_err(|_| app_not_found())?;
            Some(store::owned_app(&client, owner.id, id).await.map_err(account_error)?.id)
        }
        None => None,
    };
    let keys = store::list_keys(&client, owner.id, app, page).await.map_err(account_error)?;
    Ok(ok_json_page(keys, page))
}

#[tracing::instrument(level = "debug", skip_all)]
async fn get_key(State(s): State<AppState>, headers: HeaderMap, path: IdPath) -> Answer {
    let (owner, _) = session(&s, &headers).await?;
    let id = path_id(path, key_not_found)?;
    let key = store::owned_key(&**db(&s).await?, owner.id, id).await.map_err(account_error)?;
    Ok(ok_json(json!(key)))
}

#[tracing::instrument(level = "debug", skip_all)]
async fn revoke_key(State(s): State<AppState>, headers: HeaderMap, path: IdPath) -> Answer {
    let (owner, _) = session(&s, &headers).await?;
    let id = path_id(path, key_not_found)?;
    let hash = store::revoke_owned_key(&**db(&s).await?, owner.id, id).await.map_err(account_error)?;
    keys_revoked(&s, &[hash]).await;
    Ok(ok_message(json!({"id": id, "status": "revoked"}), "API key revoked"))
}

#[tracing::instrument(level = "debug", skip_all)]
async fn regenerate_key(State(s): State<AppState>, headers: HeaderMap, path: IdPath) -> Answer {
    let (owner, _) = session(&s, &headers).await?;
    let id = path_id(path, key_not_found)?;
    let (key, old_hash) = store::regenerate_key(&mut **db(&s).await?, &s.secrets.key_secret, owner.id, id)
        .await
        .map_err(account_error)?;
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

/// The owner behind the request's bearer token, and the token's claims; 401 for a missing, invalid,
/// expired or logged-out token (the admin token is no owner: it only reads analytics).
async fn session(s: &AppState, headers: &HeaderMap) -> Result<(Owner, Claims), ApiError> {
    let header = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let Some(token) = bearer_token(header) else {
        return Err(ApiError::unauthorized("unauthorized", "an Authorization: Bearer token is required"));
    };
    let claims = verify_token(s, token)?;
    let owner = owner_session(s, claims.sub, claims.jti).await?;
    Ok((owner, claims))
}

/// The claims of an owner token, or 401 (bad signature, malformed, expired).
pub fn verify_token(s: &AppState, token: &str) -> Result<Claims, ApiError> {
    tokens::verify(&s.secrets.jwt_secret, token, Utc::now())
        .map_err(|e| ApiError::unauthorized("unauthorized", format!("the bearer token is not valid: {e}")))
}

/// The owner `id` named by a verified token `jti`, or 401 when that token was logged out (or the
/// owner no longer exists).
pub async fn owner_session(s: &AppState, id: Uuid, jti: Uuid) -> Result<Owner, ApiError> {
    store::owner_session(&**db(s).await?, id, jti)
        .await
        .map_err(account_error)?
        .ok_or_else(|| ApiError::unauthorized("unauthorized", "the bearer token has been revoked"))
}

/// A pooled connection, or 503.
pub async fn db(s: &AppState) -> Result<Object, ApiError> {
    s.pool.get().await.map_err(|e| {
        tracing::warn!(error = %e, "no database connection");
        ApiError::unavailable("database_unavailable", "the database is unavailable; retry later")
    })
}

/// Storage errors as answers.
pub fn account_error(e: AccountError) -> ApiError {
    match e {
        AccountError::AppNotFound(_) => app_not_found(),
        AccountError::KeyNotFound(_) => key_not_found(),
        AccountError::Invalid(m) => ApiError::bad_request("invalid_parameter", m),
        AccountError::InvalidEmail(m) => invalid("email", m),
        AccountError::KeyRevoked(_) => ApiError::new(
            StatusCode::CONFLICT,
            "key_revoked",
            "this API key is revoked and cannot be regenerated; create a new key instead",
        ),
        AccountError::EmailTaken => {
            ApiError::new(StatusCode::CONFLICT, "email_taken", "an account with this email already exists")
        }
        AccountError::Postgres(e) if e.is_closed() => {
            tracing::warn!(error = %e, "database connection lost");
            ApiError::unavailable("database_unavailable", "the database is unavailable; retry later")
        }
        AccountError::Postgres(e) => ApiError::internal(e),
    }
}

fn app_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "app_not_found", "no such app")
}

fn key_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "key_not_found", "no such API key")
}

fn invalid(parameter: &str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_parameter", message).with_details(json!({"parameter": parameter}))
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
