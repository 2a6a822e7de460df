//! Analytics routes (bearer token): `GET /api/analytics/events/timeline`, `/events/summary`,
//! `/users/{userId}` and `/apps/{appId}/overview`. Each handler authenticates, parses the parameters
//! ([`crate::query::params`]), authorises the app, calls one [`crate::query`] function and maps its
//! answer to `{"success": true, "data", "meta": {"source", "cache", "generatedAt"}}`.

use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use chrono_tz::Tz;
use serde_json::{json, Value};
use uuid::Uuid;

use super::error::ApiError;
use super::AppState;
use crate::auth::bearer::{bearer_token, token_matches};
use crate::cache::{QueryKey, Tier};
use crate::query::apps::{find_app, live_app_ids, AppInfo};
use crate::query::buckets::label;
use crate::query::params::{parse_user_id, Filter, ParamError, Params, RangeDefault, TimelineRequest};
use crate::query::plan::Span;
use crate::query::store::Reader;
use crate::query::summary::Breakdown;
use crate::query::{overview, summary, timeline, users, QueryError};

/// The analytics routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/analytics/events/timeline", get(timeline))
        .route("/api/analytics/events/summary", get(summary))
        .route("/api/analytics/users/{userId}", get(user).delete(super::privacy::erase_user))
        .route("/api/analytics/apps/{appId}/overview", get(overview))
}

type QueryPairs = Result<Query<Vec<(String, String)>>, QueryRejection>;
type Answer = Result<Json<Value>, ApiError>;

#[tracing::instrument(skip_all)]
async fn timeline(State(s): State<AppState>, headers: HeaderMap, query: QueryPairs) -> Answer {
    let caller = authenticate(&s, &headers)?;
    let p = params(query)?;
    let app_id = p.required("appId", "app_id")?;
    let req = TimelineRequest::parse(&p, Utc::now())?;
    let app = authorize_app(&s, &caller, app_id).await?;
    let tz = req.filter.tz;
    let key = cache_key(&s, "timeline", app.id, &req.filter, Some(req.granularity.as_str()));
    let hit = s
        .cache
        .get_or_compute(&key, || async {
            let t = timeline::timeline(&reader(&s), app.id, &req).await?;
            Ok::<_, QueryError>((timeline_data(&t, tz), t.source))
        })
        .await?;
    let meta =
        json!({"range": range_json(req.filter.range, tz), "tz": tz.name(), "interval": req.granularity.as_str()});
    Ok(answer(hit.value.data.clone(), &hit.value.source, hit.tier, meta, true))
}

#[tracing::instrument(skip_all)]
async fn summary(State(s): State<AppState>, headers: HeaderMap, query: QueryPairs) -> Answer {
    let caller = authenticate(&s, &headers)?;
    let p = params(query)?;
    let app_id = p.required("appId", "app_id")?;
    let filter = Filter::parse(&p, Utc::now(), RangeDefault::LastDays)?;
    let app = authorize_app(&s, &caller, app_id).await?;
    let key = cache_key(&s, "summary", app.id, &filter, None);
    let hit = s
        .cache
        .get_or_compute(&key, || async {
            let sum = summary::summary(&reader(&s), app.id, &filter).await?;
            Ok::<_, QueryError>((summary_data(&sum), sum.source))
        })
        .await?;
    let meta = json!({"range": range_json(filter.range, filter.tz), "tz": filter.tz.name()});
    Ok(answer(hit.value.data.clone(), &hit.value.source, hit.tier, meta, false))
}

#[tracing::instrument(skip_all)]
async fn user(
    State(s): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    query: QueryPairs,
) -> Answer {
    let caller = authenticate(&s, &headers)?;
    let Path(user_id) = path.map_err(|e| invalid(ParamError { parameter: "userId", message: e.body_text() }))?;
    let user_id = parse_user_id(&user_id)?;
    let p = params(query)?;
    let (apps, one_app) = match p.get("appId", "app_id")? {
        Some(app_id) => (vec![authorize_app(&s, &caller, app_id).await?.id], true),
        None => (readable_apps(&s, &caller).await?, false),
    };
    let compute = || async {
        let u = users::user_activity(&reader(&s), &apps, user_id).await?;
        Ok::<_, QueryError>((user_data(&u, user_id), u.source))
    };
    // One app's answer is guarded by its generation; answers over every readable app are not cached.
    if one_app {
        let hit = s.cache.get_or_compute(&QueryKey::user(apps[0], user_id), compute).await?;
        return Ok(answer(hit.value.data.clone(), &hit.value.source, hit.tier, json!({}), false));
    }
    let (data, source) = compute().await?;
    Ok(answer(data, source.as_str(), Tier::Miss, json!({}), false))
}

fn user_data(u: &users::UserActivity, user_id: &str) -> Value {
    let [device, browser, os] = &u.primary;
    let recent: Vec<Value> = u
        .recent
        .iter()
        .map(|e| {
            json!({
                "eventId": e.event_id, "appId": e.app_id, "eventType": e.event_type, "url": e.url,
                "createdAt": instant(e.created_at), "device": e.device, "browser": e.browser, "os": e.os,
            })
        })
        .collect();
    json!({
        "userId": user_id,
        "summary": {"totalEvents": u.total_events, "uniqueEventTypes": u.unique_event_types,
                    "totalSessions": u.total_sessions, "firstSeen": u.first_seen.map(instant),
                    "lastSeen": u.last_seen.map(instant), "primaryDevice": device, "primaryBrowser": browser,
                    "primaryOs": os},
        "recentEvents": recent,
    })
}

#[tracing::instrument(skip_all)]
async fn overview(
    State(s): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    query: QueryPairs,
) -> Answer {
    let caller = authenticate(&s, &headers)?;
    let p = params(query)?;
    let filter = Filter::parse(&p, Utc::now(), RangeDefault::AllTime)?;
    let app_id = path.map(|Path(id)| id).unwrap_or_default();
    let app = authorize_app(&s, &caller, &app_id).await?;
    let key = cache_key(&s, "overview", app.id, &filter, None);
    let hit = s
        .cache
        .get_or_compute(&key, || async {
            let o = overview::overview(&reader(&s), app.id, &filter).await?;
            Ok::<_, QueryError>((overview_data(&o), o.source))
        })
        .await?;
    let mut data = hit.value.data.clone();
    // The app itself is not cached: it comes from the authorisation lookup.
    data["app"] = json!({"id": app.id, "name": app.name, "createdAt": instant(app.created_at),
                         "created_at": instant(app.created_at)});
    let meta = json!({"range": range_json(filter.range, filter.tz), "tz": filter.tz.name()});
    Ok(answer(data, &hit.value.source, hit.tier, meta, true))
}

/// Who is asking. [`authorize_app`] and [`readable_apps`] are the only places that decide what it
/// may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// The admin token: every app.
    Admin,
    /// An owner's token (signature and expiry checked): only that owner's live apps. Whether the token
    /// was logged out is checked by [`authorize_app`] / [`readable_apps`], which query anyway.
    Owner {
        /// The owner's id.
        id: Uuid,
        /// The token's id, checked against logouts.
        jti: Uuid,
    },
}

/// The caller named by `Authorization: Bearer <token>`, or 401.
pub fn authenticate(s: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let header = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match bearer_token(header) {
        None => Err(ApiError::unauthorized("unauthorized", "an Authorization: Bearer token is required")),
        Some(t) if token_matches(t, &s.secrets.admin_token) => Ok(Caller::Admin),
        Some(t) => {
            let claims = super::accounts::verify_token(s, t)?;
            Ok(Caller::Owner { id: claims.sub, jti: claims.jti })
        }
    }
}

/// The live app `app_id` if `caller` may read it; 404 `app_not_found` otherwise (also for ids that are
/// not UUIDs), so callers cannot tell others' apps from missing ones.
pub async fn authorize_app(s: &AppState, caller: &Caller, app_id: &str) -> Result<AppInfo, ApiError> {
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "app_not_found", "no such app");
    let id = Uuid::parse_str(app_id).map_err(|_| not_found())?;
    let key = match *caller {
        Caller::Owner { id: owner, jti } => (Some((owner, jti)), id),
        Caller::Admin => (None, id),
    };
    if let Some(hit) = s.authz.get(&key).await {
        return Ok(hit);
    }
    if let Caller::Owner { id: owner, jti } = *caller {
        super::accounts::owner_session(s, owner, jti).await?;
        let client = super::accounts::db(s).await?;
        // Another owner's app is "not found", like a missing one.
        crate::accounts::owned_app(&client, owner, id).await.map_err(super::accounts::account_error)?;
    }
    let app = find_app(&s.pool, id).await?.ok_or_else(not_found)?;
    s.authz.insert(key, app.clone()).await;
    Ok(app)
}

/// Every app `caller` may read.
pub async fn readable_apps(s: &AppState, caller: &Caller) -> Result<Vec<Uuid>, ApiError> {
    match *caller {
        Caller::Admin => Ok(live_app_ids(&s.pool).await?),
        Caller::Owner { id, jti } => {
            super::accounts::owner_session(s, id, jti).await?;
            let client = super::accounts::db(s).await?;
            crate::accounts::owned_app_ids(&client, id).await.map_err(super::accounts::account_error)
        }
    }
}

fn reader(s: &AppState) -> Reader {
    Reader::new(s.pool.clone(), s.cfg.request_timeout)
}

fn params(query: QueryPairs) -> Result<Params, ApiError> {
    let Query(pairs) = query.map_err(|e| invalid(ParamError { parameter: "query", message: e.body_text() }))?;
    Ok(Params::new(pairs))
}

fn invalid(e: ParamError) -> ApiError {
    ApiError::bad_request("invalid_parameter", e.message).with_details(json!({"parameter": e.parameter}))
}

impl From<ParamError> for ApiError {
    fn from(e: ParamError) -> ApiError {
        invalid(e)
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> ApiError {
        ApiError::from(Arc::new(e))
    }
}

/// A failed computation behind the cache (shared by the requests that waited for it).
impl From<Arc<QueryError>> for ApiError {
    fn from(e: Arc<QueryError>) -> ApiError {
        if e.is_unavailable() {
            tracing::warn!(error = %e, "analytics query failed");
            ApiError::unavailable("database_unavailable", "the database is unavailable; retry later")
        } else {
            ApiError::internal(e)
        }
    }
}

fn answer(data: Value, source: &str, tier: Tier, mut meta: Value, with_cached: bool) -> Json<Value> {
    meta["source"] = json!(source);
    meta["cache"] = json!(tier.as_str());
    meta["generatedAt"] = json!(instant(Utc::now()));
    let mut body = json!({"success": true, "data": data, "meta": meta});
    if with_cached {
        // The original's flag, kept for existing dashboards.
        body["cached"] = json!(tier != Tier::Miss);
    }
    Json(body)
}

/// The cache key of an analytics question (after authorisation, from the validated filter).
fn cache_key(s: &AppState, endpoint: &str, app: Uuid, filter: &Filter, interval: Option<&str>) -> QueryKey {
    QueryKey::new(endpoint, app, filter, interval, Utc::now(), s.cache.freshness())
}

fn timeline_data(t: &timeline::Timeline, tz: Tz) -> Value {
    let rows: Vec<Value> = t
        .buckets
        .iter()
        .map(|b| {
            let at = label(b.start, tz);
            json!({"timeBucket": at, "eventCount": b.events, "uniqueUsers": b.users,
               "time_bucket": at, "event_count": b.events, "unique_users": b.users})
        })
        .collect();
    json!(rows)
}

fn summary_data(sum: &summary::Summary) -> Value {
    let rows: Vec<Value> = sum
        .types
        .iter()
        .map(|t| {
            let [device, browser, os] = &t.breakdowns;
            json!({"eventType": t.event_type, "totalEvents": t.total_events, "uniqueUsers": t.unique_users,
               "uniqueSessions": t.unique_sessions, "deviceBreakdown": breakdown_json(device),
               "browserBreakdown": breakdown_json(browser), "osBreakdown": breakdown_json(os)})
        })
        .collect();
    json!(rows)
}

fn overview_data(o: &overview::Overview) -> Value {
    let top: Vec<Value> =
        o.top_events.iter().map(|(t, n)| json!({"eventType": t, "event_type": t, "count": n})).collect();
    json!({
        "stats": {"totalEvents": o.total_events, "totalUsers": o.total_users, "totalSessions": o.total_sessions,
                  "uniqueEventTypes": o.unique_event_types, "total_events": o.total_events,
                  "total_users": o.total_users, "total_sessions": o.total_sessions,
                  "unique_event_types": o.unique_event_types},
        "topEvents": top,
    })
}

fn range_json(range: Span, tz: Tz) -> Value {
    json!({"start": label(range.start, tz), "end": label(range.end, tz)})
}

fn breakdown_json(b: &Breakdown) -> Value {
    json!(b.iter().map(|(v, n)| json!({"value": v, "count": n})).collect::<Vec<_>>())
}

fn instant(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}
