//! Who is calling, decided in one place: extractors whose presence in a handler's signature is its
//! access rule.
//!
//! - [`Caller`]: any valid bearer token: the admin token (`STRATA_ADMIN_TOKEN`) or an owner's signed
//!   token (signature and expiry checked; logouts are checked where the database is asked anyway).
//! - [`OwnerSession`]: an owner's token that was not logged out, with its owner (the accounts API).
//! - [`AdminCaller`]: the admin token or an owner with the admin role (the DBA endpoints).
//! - [`ReadableApp`]: the live app the request names (`{appId}` in the path, else `appId` /
//!   `app_id` in the query) if the caller may read it. Another owner's app answers 404 like a
//!   missing one, so ids cannot be probed; positive answers are kept in [`AppState::authz`].
//!
//! A token is verified once per request: the analytics rate limit ([`super::limits::analytics`])
//! leaves the [`Caller`] it found in the request's extensions, where the extractors look first.
//! Rejections are [`ApiError`]s: 401 `unauthorized` (no, bad or logged-out token), 403 `forbidden`
//! (a plain owner on an admin route), 404 `app_not_found`, 503 when the database cannot tell.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, MatchedPath, OptionalFromRequestParts, Path, Query};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use chrono::Utc;
use uuid::Uuid;

use super::error::ApiError;
use super::AppState;
use crate::accounts::Owner;
use crate::auth::bearer::{bearer_token, token_matches};
use crate::auth::tokens::{self, Claims};
use crate::query::apps::{find_app, live_app_ids, AppInfo};
use crate::query::params::Params;

/// Who is asking, by any valid bearer token. [`ReadableApp`] and [`Caller::readable_apps`] are the
/// only places that decide what it may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// The admin token: every app.
    Admin,
    /// An owner's token (signature and expiry checked): only that owner's live apps. Whether the token
    /// was logged out is checked with the owner's apps, which query anyway.
    Owner {
        /// The owner's id.
        id: Uuid,
        /// The token's id, checked against logouts.
        jti: Uuid,
    },
}

impl Caller {
    /// The caller named by `Authorization: Bearer <token>`, or 401.
    pub fn from_headers(s: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
        match bearer(headers) {
            None => Err(ApiError::unauthorized("unauthorized", "an Authorization: Bearer token is required")),
            Some(t) if token_matches(t, &s.secrets.admin_token) => Ok(Caller::Admin),
            Some(t) => {
                let claims = verify(s, t)?;
                Ok(Caller::Owner { id: claims.sub, jti: claims.jti })
            }
        }
    }

    /// Every app this caller may read (the user activity across apps).
    pub async fn readable_apps(&self, s: &AppState) -> Result<Vec<Uuid>, ApiError> {
        match *self {
            Caller::Admin => Ok(live_app_ids(&s.pool).await?),
            Caller::Owner { id, jti } => {
                live_owner(s, id, jti).await?;
                Ok(crate::accounts::owned_app_ids(&*s.pool.get().await?, id).await?)
            }
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Caller, ApiError> {
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(*caller);
        }
        let caller = Caller::from_headers(s, &parts.headers)?;
        parts.extensions.insert(caller);
        Ok(caller)
    }
}

/// An owner's live session: the token's owner and claims. The admin token is no owner (401): it only
/// reads analytics and calls the DBA endpoints.
pub struct OwnerSession {
    /// The owner.
    pub owner: Owner,
    /// The token's claims (its id and expiry are what logout revokes).
    pub claims: Claims,
}

impl FromRequestParts<AppState> for OwnerSession {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<OwnerSession, ApiError> {
        let Some(token) = bearer(&parts.headers) else {
            return Err(ApiError::unauthorized("unauthorized", "an Authorization: Bearer token is required"));
        };
        let claims = verify(s, token)?;
        let owner = live_owner(s, claims.sub, claims.jti).await?;
        Ok(OwnerSession { owner, claims })
    }
}

/// The admin token, or the live session of an owner with the admin role. 401 for anything but a valid
/// token of a plain owner, which gets 403.
#[derive(Debug, Clone, Copy)]
pub struct AdminCaller;

impl FromRequestParts<AppState> for AdminCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<AdminCaller, ApiError> {
        match bearer(&parts.headers) {
            None => Err(ApiError::unauthorized("unauthorized", "an admin bearer token is required")),
            Some(t) if token_matches(t, &s.secrets.admin_token) => Ok(AdminCaller),
            Some(t) => {
                let claims = verify(s, t)?;
                match live_owner(s, claims.sub, claims.jti).await?.role.as_str() {
                    "admin" => Ok(AdminCaller),
                    _ => Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "the admin role is required")),
                }
            }
        }
    }
}

/// The live app the request names, which its [`Caller`] may read. As an extractor: 401 without a
/// valid token, 400 `invalid_parameter` when the query names no app (or is unreadable), 404
/// `app_not_found` for an app that is missing, deleted, malformed or another owner's. As an
/// `Option`, a request naming no app is `None` (the caller's readable apps are meant).
///
/// Extractors that validate the rest of a request go before it in a handler's arguments: bad
/// parameters are refused before any database work.
#[derive(Debug, Clone)]
pub struct ReadableApp(pub AppInfo);

impl ReadableApp {
    /// The live app `app_id` if `caller` may read it; 404 `app_not_found` otherwise (also for ids that
    /// are not UUIDs), so callers cannot tell others' apps from missing ones.
    pub async fn authorize(s: &AppState, caller: &Caller, app_id: &str) -> Result<ReadableApp, ApiError> {
        let id = Uuid::parse_str(app_id).map_err(|_| ApiError::app_not_found())?;
        let key = match *caller {
            Caller::Owner { id: owner, jti } => (Some((owner, jti)), id),
            Caller::Admin => (None, id),
        };
        if let Some(hit) = s.authz.get(&key).await {
            return Ok(ReadableApp(hit));
        }
        if let Caller::Owner { id: owner, jti } = *caller {
            live_owner(s, owner, jti).await?;
            // Another owner's app is "not found", like a missing one.
            crate::accounts::owned_app(&*s.pool.get().await?, owner, id).await?;
        }
        let app = find_app(&s.pool, id).await?.ok_or_else(ApiError::app_not_found)?;
        s.authz.insert(key, app.clone()).await;
        Ok(ReadableApp(app))
    }

    /// The app id the request names: `{appId}` of the route (one that is not UTF-8 once decoded names
    /// no app: empty, hence 404), else the query's `appId` / `app_id`.
    async fn requested(parts: &mut Parts) -> Result<Option<String>, ApiError> {
        if parts.extensions.get::<MatchedPath>().is_some_and(|p| p.as_str().contains("{appId}")) {
            let path = <Path<HashMap<String, String>> as FromRequestParts<()>>::from_request_parts(parts, &()).await;
            return Ok(Some(path.ok().and_then(|Path(mut p)| p.remove("appId")).unwrap_or_default()));
        }
        let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
            .map_err(|e| ApiError::invalid_parameter("query", e.body_text()))?;
        Ok(Params::new(pairs).get("appId", "app_id")?.map(str::to_owned))
    }
}

impl FromRequestParts<AppState> for ReadableApp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<ReadableApp, ApiError> {
        let caller = Caller::from_request_parts(parts, s).await?;
        match ReadableApp::requested(parts).await? {
            Some(app_id) => ReadableApp::authorize(s, &caller, &app_id).await,
            None => Err(ApiError::invalid_parameter("appId", "appId is required")),
        }
    }
}

impl OptionalFromRequestParts<AppState> for ReadableApp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Option<ReadableApp>, ApiError> {
        let caller = Caller::from_request_parts(parts, s).await?;
        match ReadableApp::requested(parts).await? {
            Some(app_id) => Ok(Some(ReadableApp::authorize(s, &caller, &app_id).await?)),
            None => Ok(None),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    bearer_token(headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()))
}

/// The claims of an owner token, or 401 (bad signature, malformed, expired).
fn verify(s: &AppState, token: &str) -> Result<Claims, ApiError> {
    tokens::verify(&s.secrets.jwt_secret, token, Utc::now())
        .map_err(|e| ApiError::unauthorized("unauthorized", format!("the bearer token is not valid: {e}")))
}

/// The owner `id` named by a verified token `jti`, or 401 when that token was logged out (or the
/// owner no longer exists).
async fn live_owner(s: &AppState, id: Uuid, jti: Uuid) -> Result<Owner, ApiError> {
    crate::accounts::owner_session(&*s.pool.get().await?, id, jti)
        .await?
        .ok_or_else(|| ApiError::unauthorized("unauthorized", "the bearer token has been revoked"))
}
