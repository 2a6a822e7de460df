//! Ingestion routes: `POST /api/events/track` and `POST /api/events/track/batch`.
//! Authenticate (X-API-Key header, else an `apiKey` body field for `sendBeacon`), validate each
//! event, queue the valid ones for the group-commit writer and answer only after they committed.

use std::net::{IpAddr, SocketAddr};

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::body::read_json;
use super::client::client_ip;
use super::error::ApiError;
use super::limits::{self, Quota};
use super::AppState;
use crate::auth::keys::{KeyInfo, KeyRejection};
use crate::ingest::event::{parse_event, time_field, EventContext, EventRow};
use crate::ingest::writer::{FlushAck, FlushError};

/// The ingestion routes with their CORS policy.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/events/track", post(track)).route("/api/events/track/batch", post(track_batch))
}

type Created = (StatusCode, HeaderMap, Json<Value>);

#[tracing::instrument(level = "debug", skip_all)]
async fn track(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Created, ApiError> {
    let received_at = Utc::now();
    let (key, value, requests) = authenticated_body(&s, &headers, peer, body, received_at).await?;
    let quota = Quota::tighter(requests, limit_events(&s, &key, 1).await?);
    let ctx = event_context(&s, &headers, peer, &key, received_at, None);
    let row = parse_event(&value, &ctx, &s.ua).map_err(|e| {
        crate::metrics::ingest_events(0, 1, 0);
        crate::metrics::rejected(e.code);
        ApiError::bad_request(e.code, e.message)
    })?;
    let event_id = row.event_id;
    let ack = commit(&s, vec![row]).await?;
    crate::metrics::ingest_events(ack.stored, 0, ack.duplicates);
    let data = json!({"eventId": event_id, "duplicate": ack.duplicates > 0});
    let body = json!({"success": true, "message": "Event tracked successfully", "data": data});
    Ok((StatusCode::CREATED, rate_headers(quota), Json(body)))
}

#[tracing::instrument(level = "debug", skip_all)]
async fn track_batch(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Created, ApiError> {
    let received_at = Utc::now();
    let (key, value, requests) = authenticated_body(&s, &headers, peer, body, received_at).await?;
    let events = batch_events(&value, s.cfg.batch_max_events)?;
    let cost = u32::try_from(events.len()).unwrap_or(u32::MAX);
    let quota = Quota::tighter(requests, limit_events(&s, &key, cost).await?);
    let sent_at = match value.get("sentAt").or_else(|| value.get("sent_at")).filter(|v| !v.is_null()) {
        Some(v) => Some(time_field("sentAt", v).map_err(|e| ApiError::bad_request(e.code, e.message))?),
        None => None,
    };
    let ctx = event_context(&s, &headers, peer, &key, received_at, sent_at);
    let (rows, errors) = parse_all(&s, events, &ctx);
    if rows.is_empty() {
        crate::metrics::ingest_events(0, errors.len(), 0);
        return Err(ApiError::bad_request("no_valid_events", "no event in the batch is valid")
            .with_details(json!({ "errors": errors })));
    }
    let ids: Vec<_> = rows.iter().map(|r| r.event_id).collect();
    let ack = commit(&s, rows).await?;
    crate::metrics::ingest_events(ack.stored, errors.len(), ack.duplicates);
    let (status, message) = if errors.is_empty() {
        (StatusCode::CREATED, format!("{} events tracked successfully", ids.len()))
    } else {
        (StatusCode::MULTI_STATUS, format!("{} events tracked successfully, {} rejected", ids.len(), errors.len()))
    };
    let data = json!({"accepted": ids.len(), "duplicates": ack.duplicates, "eventIds": ids, "errors": errors});
    Ok((status, rate_headers(quota), Json(json!({"success": true, "message": message, "data": data}))))
}

/// Authenticates by header before reading the body (cheap refusal), else by the body's `apiKey`;
/// then takes one request of the key's `STRATA_INGEST_RATE_LIMIT`.
async fn authenticated_body(
    s: &AppState,
    headers: &HeaderMap,
    peer: SocketAddr,
    body: Body,
    now: DateTime<Utc>,
) -> Result<(KeyInfo, Value, Option<Quota>), ApiError> {
    let client = client_ip(s, headers, peer);
    let header_key = headers.get("x-api-key").map(|v| v.to_str().unwrap_or(""));
    let early = match header_key {
        Some(k) => {
            let key = authenticate(s, client, Some(k), now).await?;
            let quota = limit_requests(s, &key).await?;
            Some((key, quota))
        }
        None => None,
    };
    let value = read_json(headers, body, s.cfg.body_max_bytes).await?;
    if !value.is_object() {
        return Err(ApiError::bad_request("invalid_body", "request body must be a JSON object"));
    }
    let (key, quota) = match early {
        Some(k) => k,
        None => {
            let key = authenticate(s, client, value.get("apiKey").and_then(Value::as_str), now).await?;
            let quota = limit_requests(s, &key).await?;
            (key, quota)
        }
    };
    Ok((key, value, quota))
}

/// One request of the key's `STRATA_INGEST_RATE_LIMIT`, or the 429.
async fn limit_requests(s: &AppState, key: &KeyInfo) -> Result<Option<Quota>, ApiError> {
    let what = "too many requests with this API key";
    limits::check(s.limits.ingest.as_deref(), &key.key_id.to_string(), 1, what).await
}

/// `events` of the key's `STRATA_INGEST_EVENT_RATE_LIMIT`, or the 429 (413 for more than the burst).
async fn limit_events(s: &AppState, key: &KeyInfo, events: u32) -> Result<Option<Quota>, ApiError> {
    let what = "too many events with this API key";
    limits::check(s.limits.ingest_events.as_deref(), &key.key_id.to_string(), events, what).await
}

/// The `RateLimit-*` headers of the tighter ingestion limit, if any is on.
fn rate_headers(quota: Option<Quota>) -> HeaderMap {
    quota.map(Quota::headers).unwrap_or_default()
}

/// The key's grant, or the 401 naming why not (429 `too_many_key_failures` with `Retry-After` when
/// `client` sent too many unknown keys).
async fn authenticate(
    s: &AppState,
    client: IpAddr,
    key: Option<&str>,
    now: DateTime<Utc>,
) -> Result<KeyInfo, ApiError> {
    let outcome = s.keys.authenticate(client, key, now).await.map_err(|e| {
        tracing::warn!(error = %e, "API key lookup failed");
        ApiError::unavailable("database_unavailable", "the database is unavailable; retry later")
    })?;
    outcome.map_err(|r| {
        let code = match r {
            KeyRejection::Missing => "missing_api_key",
            KeyRejection::Invalid => "invalid_api_key",
            KeyRejection::Revoked => "api_key_revoked",
            KeyRejection::Expired => "api_key_expired",
            KeyRejection::TooManyFailures { retry_after } => {
                metrics::counter!("strata_rate_limited_total").increment(1);
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                let retry = HeaderMap::from_iter([(axum::http::header::RETRY_AFTER, secs.into())]);
                let message = format!("{r}; retry in {secs} s");
                return ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_key_failures", message)
                    .with_headers(retry);
            }
        };
        ApiError::unauthorized(code, r.to_string())
    })
}

fn batch_events(value: &Value, max: usize) -> Result<&Vec<Value>, ApiError> {
    let events = value
        .get("events")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::bad_request("invalid_batch", "body must be an object with an \"events\" array"))?;
    if events.is_empty() {
        return Err(ApiError::bad_request("empty_batch", "events must contain at least one event"));
    }
    if events.len() > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_events",
            format!("a batch holds at most {max} events; this one has {}", events.len()),
        ));
    }
    Ok(events)
}

fn parse_all(s: &AppState, events: &[Value], ctx: &EventContext) -> (Vec<EventRow>, Vec<Value>) {
    let mut rows = Vec::with_capacity(events.len());
    let mut errors = Vec::new();
    for (index, ev) in events.iter().enumerate() {
        match parse_event(ev, ctx, &s.ua) {
            Ok(row) => rows.push(row),
            Err(e) => {
                crate::metrics::rejected(e.code);
                errors.push(json!({"index": index, "code": e.code, "message": e.message}));
            }
        }
    }
    (rows, errors)
}

fn event_context(
    s: &AppState,
    headers: &HeaderMap,
    peer: SocketAddr,
    key: &KeyInfo,
    received_at: DateTime<Utc>,
    sent_at: Option<DateTime<Utc>>,
) -> EventContext {
    let ua = headers.get(axum::http::header::USER_AGENT).and_then(|v| v.to_str().ok()).and_then(|v| s.ua.parse(v));
    EventContext {
        app_id: key.app_id,
        received_at,
        ip: Some(client_ip(s, headers, peer)),
        ua,
        sent_at,
        metadata_max_bytes: s.cfg.metadata_max_bytes,
        future_skew: chrono::Duration::from_std(s.cfg.future_skew).unwrap_or(chrono::Duration::MAX),
        accept_window: s.accept_window,
        retention_floor: s
            .cfg
            .retention_months
            .map(|n| partition_jobs::Month::containing(received_at).add_months(-(n as i32)).start()),
    }
}

/// Share of `STRATA_REQUEST_TIMEOUT` a request waits for its commit: the rest leaves time to answer
/// 503 `commit_timeout` before the request timeout would cut the request off with a bare 408.
const COMMIT_WAIT_SHARE: f64 = 0.9;

async fn commit(s: &AppState, rows: Vec<EventRow>) -> Result<FlushAck, ApiError> {
    let n = rows.len();
    let rx = s.queue.submit(rows).map_err(|_| {
        ApiError::unavailable("queue_full", "the ingest queue is full; retry after the Retry-After delay")
    })?;
    // A stuck database (locks, a hung server) must not hold the client past the request timeout. The
    // job stays queued and may still commit: retrying with the same eventIds is safe either way.
    let Ok(reply) = tokio::time::timeout(s.cfg.request_timeout.mul_f64(COMMIT_WAIT_SHARE), rx).await else {
        return Err(ApiError::unavailable(
            "commit_timeout",
            "the commit did not finish in time and may still happen; retry with the same eventIds",
        ));
    };
    match reply {
        Ok(Ok(ack)) => Ok(ack),
        Ok(Err(FlushError::Unavailable(_))) => Err(ApiError::unavailable(
            "database_unavailable",
            // A connection lost during COMMIT leaves the outcome unknown: not "nothing was stored".
            "the database is unavailable; the events are not acknowledged: retry with the same eventIds",
        )),
        Ok(Err(FlushError::Rejected(detail))) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "storage_rejected",
            format!("the database refused these {n} events; nothing was stored"),
        )
        .with_details(json!({ "reason": detail }))),
        Err(_) => Err(ApiError::unavailable("shutting_down", "the server is shutting down; retry")),
    }
}
