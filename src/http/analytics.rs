//! Analytics routes (bearer token): `GET /api/analytics/events/timeline`, `/events/summary`,
//! `/users/{userId}` and `/apps/{appId}/overview`. Each handler authenticates, parses the parameters
//! ([`crate::query::params`]), authorises the app, calls one [`crate::query`] function through the
//! cache and maps its answer to `{"success": true, "data", "meta": {"source", "cache", "generatedAt"}}`.
//! The cache keeps `data` serialised; the envelope is written around those bytes ([`answer`]).
//! [`warm_one`] asks a remembered query again for cache warming.

use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use chrono_tz::Tz;
use serde::Serialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::auth::{Caller, ReadableApp};
use super::body::Chunks;
use super::error::ApiError;
use super::AppState;
use crate::cache::keys::UserKeySecret;
use crate::cache::{Hit, QueryKey, Recipe, Tier};
use crate::query::apps::{find_app, AppInfo};
use crate::query::buckets::label;
use crate::query::params::{
    parse_date, parse_tz, parse_user_id, Filter, ParamError, Params, RangeDefault, TimelineRequest,
};
use crate::query::plan::Span;
use crate::query::store::Reader;
use crate::query::summary::Breakdown;
use crate::query::{overview, summary, timeline, users, QueryError, Source};

/// The analytics routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/analytics/events/timeline", get(timeline))
        .route("/api/analytics/events/summary", get(summary))
        .route("/api/analytics/users/{userId}", get(user))
        .route("/api/analytics/apps/{appId}/overview", get(overview))
}

type QueryPairs = Result<Query<Vec<(String, String)>>, QueryRejection>;
type Answer = Result<Response, ApiError>;
type Looked = Result<Hit, Arc<QueryError>>;

/// Parameters of the timeline (name, alias), as remembered for warming.
const TIMELINE_PARAMS: &[(&str, &str)] = &[
    ("tz", "timezone"),
    ("eventType", "event_type"),
    ("startDate", "start_date"),
    ("endDate", "end_date"),
    ("interval", "granularity"),
];
/// Parameters of the summary and the overview.
const FILTER_PARAMS: &[(&str, &str)] =
    &[("tz", "timezone"), ("eventType", "event_type"), ("startDate", "start_date"), ("endDate", "end_date")];

#[tracing::instrument(level = "debug", skip_all)]
async fn timeline(State(s): State<AppState>, caller: Caller, query: QueryPairs) -> Answer {
    let p = params(query)?;
    let app_id = p.required("appId", "app_id")?;
    let req = TimelineRequest::parse(&p, Utc::now(), s.cfg.max_buckets)?;
    let ReadableApp(app) = ReadableApp::authorize(&s, &caller, app_id).await?;
    let tz = req.filter.tz;
    s.cache.record(app.id, || recipe("timeline", None, &p, TIMELINE_PARAMS, tz));
    let hit = timeline_hit(&s, app.id, &req, false).await?;
    let meta = Meta {
        range: Some(range_json(req.filter.range, tz)),
        tz: Some(tz.name()),
        interval: Some(req.granularity.as_str()),
        ..Meta::default()
    };
    answer(hit.value.data.clone(), hit.value.source, hit.tier, meta, true)
}

async fn timeline_hit(s: &AppState, app: Uuid, req: &TimelineRequest, prefetch: bool) -> Looked {
    let tz = req.filter.tz;
    let key = cache_key(s, "timeline", app, &req.filter, Some(req.granularity.as_str()));
    let compute = || async {
        let t = timeline::timeline(&reader(s), app, req).await?;
        Ok((timeline_data(&t, tz), t.source))
    };
    if prefetch {
        s.cache.prefetch(&key, compute).await
    } else {
        s.cache.get_or_compute(&key, compute).await
    }
}

#[tracing::instrument(level = "debug", skip_all)]
async fn summary(State(s): State<AppState>, caller: Caller, query: QueryPairs) -> Answer {
    let p = params(query)?;
    let app_id = p.required("appId", "app_id")?;
    let filter = Filter::parse(&p, Utc::now(), RangeDefault::LastDays)?;
    let ReadableApp(app) = ReadableApp::authorize(&s, &caller, app_id).await?;
    s.cache.record(app.id, || recipe("summary", None, &p, FILTER_PARAMS, filter.tz));
    let hit = summary_hit(&s, app.id, &filter, false).await?;
    let meta = Meta { range: Some(range_json(filter.range, filter.tz)), tz: Some(filter.tz.name()), ..Meta::default() };
    answer(hit.value.data.clone(), hit.value.source, hit.tier, meta, false)
}

async fn summary_hit(s: &AppState, app: Uuid, filter: &Filter, prefetch: bool) -> Looked {
    let key = cache_key(s, "summary", app, filter, None);
    let compute = || async {
        let sum = summary::summary(&reader(s), app, filter).await?;
        Ok((summary_data(&sum), sum.source))
    };
    if prefetch {
        s.cache.prefetch(&key, compute).await
    } else {
        s.cache.get_or_compute(&key, compute).await
    }
}

#[tracing::instrument(level = "debug", skip_all)]
async fn user(
    State(s): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    query: QueryPairs,
) -> Answer {
    let Path(user_id) = path.map_err(|e| invalid(ParamError { parameter: "userId", message: e.body_text() }))?;
    let user_id = parse_user_id(&user_id)?;
    let p = params(query)?;
    // One app's answer is guarded by its generation; answers over every readable app are not cached.
    if let Some(app_id) = p.get("appId", "app_id")? {
        // Not remembered for warming: the records (kept in Redis) would hold user ids.
        let app = ReadableApp::authorize(&s, &caller, app_id).await?.0.id;
        let hit = user_hit(&s, app, user_id).await?;
        let data = with_user(&hit.value.data, user_id)?;
        return answer(data, hit.value.source, hit.tier, Meta::default(), false);
    }
    let apps = caller.readable_apps(&s).await?;
    let u = users::user_activity(&reader(&s), &apps, user_id).await?;
    answer(with_user(&to_bytes(&user_data(&u)), user_id)?, u.source, Tier::Miss, Meta::default(), false)
}

/// The cache key of `user_id`'s activity in `app`: a keyed hash of the id, never the id.
pub fn user_key(s: &AppState, app: Uuid, user_id: &str) -> QueryKey {
    QueryKey::user(app, user_id, &UserKeySecret::derive(&s.secrets.key_secret))
}

async fn user_hit(s: &AppState, app: Uuid, user_id: &str) -> Looked {
    let key = user_key(s, app, user_id);
    let apps = [app];
    let compute = || async {
        let u = users::user_activity(&reader(s), &apps, user_id).await?;
        Ok((user_data(&u), u.source))
    };
    s.cache.get_or_compute(&key, compute).await
}

/// A user's `data` object with `userId` put back first: cached answers are stored without it.
fn with_user(data: &[u8], user_id: &str) -> Result<Vec<u8>, ApiError> {
    with_first(data, "userId", &user_id)
}

/// A user's activity without the user's id (see [`with_user`]).
fn user_data(u: &users::UserActivity) -> Value {
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
        "summary": {"totalEvents": u.total_events, "uniqueEventTypes": u.unique_event_types,
                    "totalSessions": u.total_sessions, "firstSeen": u.first_seen.map(instant),
                    "lastSeen": u.last_seen.map(instant), "primaryDevice": device, "primaryBrowser": browser,
                    "primaryOs": os},
        "recentEvents": recent,
    })
}

#[tracing::instrument(level = "debug", skip_all)]
async fn overview(
    State(s): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    query: QueryPairs,
) -> Answer {
    let p = params(query)?;
    let filter = Filter::parse(&p, Utc::now(), RangeDefault::AllTime)?;
    let app_id = path.map(|Path(id)| id).unwrap_or_default();
    let ReadableApp(app) = ReadableApp::authorize(&s, &caller, &app_id).await?;
    s.cache.record(app.id, || recipe("overview", None, &p, FILTER_PARAMS, filter.tz));
    let hit = overview_hit(&s, app.id, &filter, false).await?;
    // The app itself is not cached: it comes from the authorisation lookup.
    let data = with_app(&hit.value.data, &app)?;
    let meta = Meta { range: Some(range_json(filter.range, filter.tz)), tz: Some(filter.tz.name()), ..Meta::default() };
    answer(data, hit.value.source, hit.tier, meta, true)
}

async fn overview_hit(s: &AppState, app: Uuid, filter: &Filter, prefetch: bool) -> Looked {
    let key = cache_key(s, "overview", app, filter, None);
    let compute = || async {
        let o = overview::overview(&reader(s), app, filter).await?;
        Ok((overview_data(&o), o.source))
    };
    if prefetch {
        s.cache.prefetch(&key, compute).await
    } else {
        s.cache.get_or_compute(&key, compute).await
    }
}

/// The overview's cached `data` object with `app` added first, without parsing it.
fn with_app(data: &[u8], app: &AppInfo) -> Result<Vec<u8>, ApiError> {
    let app_json = json!({"id": app.id, "name": app.name, "createdAt": instant(app.created_at),
                          "created_at": instant(app.created_at)});
    with_first(data, "app", &app_json)
}

/// The serialised JSON object `data` with `name: value` added first, without parsing it.
fn with_first(data: &[u8], name: &str, value: &impl Serialize) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::with_capacity(data.len() + 192);
    out.push(b'{');
    serde_json::to_writer(&mut out, name).map_err(ApiError::internal)?;
    out.push(b':');
    serde_json::to_writer(&mut out, value).map_err(ApiError::internal)?;
    match data.strip_prefix(b"{") {
        Some(rest) if rest.starts_with(b"}") => out.extend_from_slice(rest),
        Some(rest) => {
            out.push(b',');
            out.extend_from_slice(rest);
        }
        None => return Err(ApiError::internal(format!("a cached answer is not a JSON object (adding {name})"))),
    }
    Ok(out)
}

/// The remembered form of a request, for warming: its parameters in canonical order; when the range
/// ends today or later (in its zone), its dates relative to today (`@{days}`), so that the same
/// dashboard is warmed after the day rolls over.
fn recipe(
    endpoint: &str,
    path: Option<&str>,
    p: &Params,
    names: &[(&'static str, &'static str)],
    tz: Tz,
) -> Option<Recipe> {
    let today = Utc::now().with_timezone(&tz).date_naive();
    let rolling = p.get("endDate", "end_date").ok().flatten().and_then(parse_date).is_some_and(|end| end >= today);
    let mut params = Vec::with_capacity(names.len());
    for &(name, alias) in names {
        let Some(v) = p.get(name, alias).ok().flatten() else { continue };
        let v = match parse_date(v) {
            Some(day) if rolling && matches!(name, "startDate" | "endDate") => format!("@{}", (day - today).num_days()),
            _ => v.to_owned(),
        };
        params.push((name.to_owned(), v));
    }
    Some(Recipe { endpoint: endpoint.to_owned(), path: path.map(str::to_owned), params })
}

/// The recipe's parameters as a request at `now` would send them.
fn materialise(r: &Recipe, now: DateTime<Utc>) -> Result<Params, ApiError> {
    let tz = parse_tz(r.params.iter().find(|(k, _)| k == "tz").map(|(_, v)| v.as_str()))?;
    let today = now.with_timezone(&tz).date_naive();
    let mut pairs = Vec::with_capacity(r.params.len());
    for (k, v) in &r.params {
        let v = match v.strip_prefix('@').map(str::parse::<i64>) {
            Some(Ok(days)) => today
                .checked_add_signed(chrono::Duration::days(days))
                .ok_or_else(|| ApiError::bad_request("invalid_parameter", "a remembered date is out of range"))?
                .format("%Y-%m-%d")
                .to_string(),
            _ => v.clone(),
        };
        pairs.push((k.clone(), v));
    }
    Ok(Params::new(pairs))
}

/// Asks `recipe` of `app` again into the cache (cache warming); false when it could not. Apps deleted
/// meanwhile are skipped.
pub async fn warm_one(s: AppState, app: Uuid, recipe: Recipe) -> bool {
    match warm_recipe(&s, app, &recipe).await {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(%app, endpoint = %recipe.endpoint, code = e.code, message = %e.message, "could not warm a query");
            false
        }
    }
}

async fn warm_recipe(s: &AppState, app: Uuid, r: &Recipe) -> Result<(), ApiError> {
    if find_app(&s.pool, app).await?.is_none() {
        return Ok(());
    }
    let now = Utc::now();
    let p = materialise(r, now)?;
    match (r.endpoint.as_str(), r.path.as_deref()) {
        ("timeline", _) => {
            timeline_hit(s, app, &TimelineRequest::parse(&p, now, s.cfg.max_buckets)?, true).await.map(drop)?
        }
        ("summary", _) => {
            summary_hit(s, app, &Filter::parse(&p, now, RangeDefault::LastDays)?, true).await.map(drop)?
        }
        ("overview", _) => {
            overview_hit(s, app, &Filter::parse(&p, now, RangeDefault::AllTime)?, true).await.map(drop)?
        }
        _ => return Err(ApiError::bad_request("invalid_parameter", "unknown remembered query")),
    }
    Ok(())
}

fn reader(s: &AppState) -> Reader {
    Reader::new(s.pool.clone(), s.cfg.request_timeout)
}

fn params(query: QueryPairs) -> Result<Params, ApiError> {
    let Query(pairs) = query.map_err(|e| invalid(ParamError { parameter: "query", message: e.body_text() }))?;
    Ok(Params::new(pairs))
}

fn invalid(e: ParamError) -> ApiError {
    ApiError::from(e)
}

/// `meta`: the request's own fields (range, zone, interval) and the answer's provenance.
#[derive(Serialize, Default)]
struct Meta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    range: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tz: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interval: Option<&'a str>,
    source: &'a str,
    cache: &'a str,
    #[serde(rename = "generatedAt")]
    generated_at: String,
}

/// `{"success": true, "data": <data>, "meta": {...}}` (and, `with_cached`, the original's top-level
/// `cached` flag, kept for existing dashboards), written around the serialised `data` as is.
fn answer(data: impl Into<Bytes>, source: Source, tier: Tier, mut meta: Meta, with_cached: bool) -> Answer {
    meta.source = source.as_str();
    meta.cache = tier.as_str();
    meta.generated_at = instant(Utc::now());
    let mut tail = Vec::with_capacity(320);
    tail.extend_from_slice(br#","meta":"#);
    serde_json::to_writer(&mut tail, &meta).map_err(ApiError::internal)?;
    if with_cached {
        tail.extend_from_slice(if tier == Tier::Miss { &br#","cached":false"#[..] } else { &br#","cached":true"#[..] });
    }
    tail.push(b'}');
    // The data goes out as stored: no copy of a cached answer.
    let body = Chunks::new([Bytes::from_static(br#"{"success":true,"data":"#), data.into(), Bytes::from(tail)]);
    let mut resp = Response::new(axum::body::Body::new(body));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}

/// A computed `data` (not cached) in its serialised form.
fn to_bytes(data: &Value) -> Vec<u8> {
    // Serialising a `Value` cannot fail (its keys are strings).
    serde_json::to_vec(data).unwrap_or_else(|_| b"null".to_vec())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Params {
        Params::new(p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn ranges_through_today_are_remembered_relative_to_today_and_others_as_given() {
        let today = Utc::now().date_naive();
        let day = |n: i64| (today + chrono::Duration::days(n)).format("%Y-%m-%d").to_string();
        let rolling = pairs(&[("appId", "x"), ("start_date", &day(-89)), ("endDate", &day(0)), ("interval", "day")]);
        let r = recipe("timeline", None, &rolling, TIMELINE_PARAMS, Tz::UTC).unwrap();
        let expected = [("startDate", "@-89"), ("endDate", "@0"), ("interval", "day")];
        assert_eq!(r.params, expected.map(|(k, v)| (k.to_string(), v.to_string())));

        let closed = pairs(&[("startDate", "2026-01-01"), ("endDate", "2026-01-31"), ("tz", "Europe/Berlin")]);
        let r = recipe("summary", None, &closed, FILTER_PARAMS, chrono_tz::Europe::Berlin).unwrap();
        let expected = [("tz", "Europe/Berlin"), ("startDate", "2026-01-01"), ("endDate", "2026-01-31")];
        assert_eq!(r.params, expected.map(|(k, v)| (k.to_string(), v.to_string())));
    }

    #[test]
    fn a_remembered_rolling_range_moves_with_the_day() {
        let r = Recipe {
            endpoint: "timeline".into(),
            path: None,
            params: vec![("startDate".into(), "@-89".into()), ("endDate".into(), "@0".into())],
        };
        let p = materialise(&r, "2026-11-27T00:00:01Z".parse().unwrap()).unwrap();
        assert_eq!(p.get("startDate", "start_date").unwrap(), Some("2026-08-30"));
        assert_eq!(p.get("endDate", "end_date").unwrap(), Some("2026-11-27"));
    }
}
