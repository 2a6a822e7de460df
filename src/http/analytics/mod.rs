//! Analytics routes (bearer token): `GET /api/analytics/events/timeline`, `/events/summary`,
//! `/users/{userId}` and `/apps/{appId}/overview`. Each handler authenticates, parses the parameters
//! ([`crate::query::params`]), authorises the app, calls one [`crate::query`] function through the
//! cache and maps its answer to `{"success": true, "data", "meta": {"source", "cache", "generatedAt"}}`.
//! The cache keeps `data` serialised; the envelope is written around those bytes ([`shape::answer`]).
//!
//! - [`shape`]: the answers' JSON (`data` of each endpoint, the envelope and `meta`).
//! - [`warm`]: remembered requests ([`warm::recipe`]) asked again for cache warming ([`warm_one`]).

mod shape;
mod warm;

pub use warm::warm_one;

use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use chrono::Utc;
use uuid::Uuid;

use self::shape::{
    answer, overview_data, range_json, summary_data, timeline_data, to_bytes, user_data, with_app, with_user, Meta,
};
use self::warm::recipe;
use super::auth::{Caller, ReadableApp};
use super::error::ApiError;
use super::AppState;
use crate::cache::keys::UserKeySecret;
use crate::cache::{Hit, QueryKey, Tier};
use crate::query::params::{parse_user_id, Filter, ParamError, Params, RangeDefault, TimelineRequest};
use crate::query::store::Reader;
use crate::query::{overview, summary, timeline, users, QueryError};

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

/// The cached answer of `key`, computed on a miss: for a request, or ahead of one when warming
/// (`prefetch`: not promoted into L1).
async fn look<F, Fut>(s: &AppState, key: &QueryKey, prefetch: bool, compute: F) -> Looked
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(serde_json::Value, crate::query::Source), QueryError>>,
{
    if prefetch {
        s.cache.prefetch(key, compute).await
    } else {
        s.cache.get_or_compute(key, compute).await
    }
}

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
    look(s, &key, prefetch, compute).await
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
    look(s, &key, prefetch, compute).await
}

#[tracing::instrument(level = "debug", skip_all)]
async fn user(State(s): State<AppState>, caller: Caller, UserId(user_id): UserId, app: Option<ReadableApp>) -> Answer {
    let user_id = user_id.as_str();
    // One app's answer is guarded by its generation; answers over every readable app are not cached.
    if let Some(ReadableApp(app)) = app {
        // Not remembered for warming: the records (kept in Redis) would hold user ids.
        let hit = user_hit(&s, app.id, user_id).await?;
        let data = with_user(&hit.value.data, user_id)?;
        return answer(data, hit.value.source, hit.tier, Meta::default(), false);
    }
    let apps = caller.readable_apps(&s).await?;
    let u = users::user_activity(&reader(&s), &apps, user_id).await?;
    answer(with_user(&to_bytes(&user_data(&u)), user_id)?, u.source, Tier::Miss, Meta::default(), false)
}

/// The `{userId}` of the path, validated before the app is looked at: 400 `invalid_parameter`.
struct UserId(String);

impl FromRequestParts<AppState> for UserId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<UserId, ApiError> {
        let Path(user_id) = <Path<String> as FromRequestParts<AppState>>::from_request_parts(parts, s)
            .await
            .map_err(|e| invalid(ParamError { parameter: "userId", message: e.body_text() }))?;
        parse_user_id(&user_id)?;
        Ok(UserId(user_id))
    }
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
    look(s, &key, prefetch, compute).await
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

/// The cache key of an analytics question (after authorisation, from the validated filter).
fn cache_key(s: &AppState, endpoint: &str, app: Uuid, filter: &Filter, interval: Option<&str>) -> QueryKey {
    QueryKey::new(endpoint, app, filter, interval, Utc::now(), s.cache.freshness())
}
