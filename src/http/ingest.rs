//! Ingestion routes: `POST /api/events/track` and `POST /api/events/track/batch`.
//! Authenticate (X-API-Key header before the body is read, else an `apiKey` field within the first
//! [`KEY_PREFIX_BYTES`] of the body, for `sendBeacon`), read the body against the in-flight budget,
//! validate each event without a JSON tree of the whole body, queue the valid ones for the
//! group-commit writer and answer only after they committed.

use std::net::IpAddr;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::body::{decode, decode_prefix, is_blank, read_raw, Encoding, Raw};
use super::budget::Ticket;
use super::client::ClientIp;
use super::error::ApiError;
use super::limits::{self, Quota};
use super::AppState;
use crate::auth::keys::{KeyInfo, KeyRejection};
use crate::ingest::event::{parse_event, time_field, EventContext, EventError, EventRow};
use crate::ingest::ua::UaParser;
use crate::ingest::wire::{self, BodyError};
use crate::ingest::writer::{FlushAck, FlushError};

/// A body without an `X-API-Key` header must carry its `apiKey` within this many (decoded) bytes:
/// finding it costs at most this much work, whatever the body holds after it.
pub const KEY_PREFIX_BYTES: usize = 16 * 1024;
/// Identity bodies up to this size are parsed on the request's task; larger or compressed ones on
/// the blocking pool, away from the workers that answer every other request.
const INLINE_PARSE_BYTES: usize = 64 * 1024;
/// Accounted per parsed event beyond its text (the row, its error or id in the answer).
const ROW_BYTES: usize = 320;

/// The ingestion routes with their CORS policy.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/events/track", post(track)).route("/api/events/track/batch", post(track_batch))
}

type Created = (StatusCode, HeaderMap, Json<Value>);

#[tracing::instrument(level = "debug", skip_all)]
async fn track(
    State(s): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Body,
) -> Result<Created, ApiError> {
    let received_at = Utc::now();
    let mut ticket = s.budget.ticket();
    let (key, raw, requests) = authenticated_body(&s, &headers, ip, body, received_at, &mut ticket).await?;
    let quota = Quota::tighter(requests, limit_events(&s, &key, 1).await?);
    let ctx = event_context(&s, &headers, ip, &key, received_at, None);
    let (encoding, max, ua) = (Encoding::of(&headers)?, s.cfg.body_max_bytes, s.ua.clone());
    let (row, _ticket) = on_cpu(&s, encoding, raw.len(), ticket, move |t| {
        let body = decode(encoding, raw, max, t)?;
        t.grow(body.len() + ROW_BYTES)?;
        parse_single(&body, &ctx, &ua)
    })
    .await?;
    let row = row.map_err(|e| {
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
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Body,
) -> Result<Created, ApiError> {
    let received_at = Utc::now();
    let mut ticket = s.budget.ticket();
    let (key, raw, requests) = authenticated_body(&s, &headers, ip, body, received_at, &mut ticket).await?;
    let ctx = event_context(&s, &headers, ip, &key, received_at, None);
    let (encoding, max, max_events, ua) =
        (Encoding::of(&headers)?, s.cfg.body_max_bytes, s.cfg.batch_max_events, s.ua.clone());
    let (parsed, _ticket) = on_cpu(&s, encoding, raw.len(), ticket, move |t| {
        let body = decode(encoding, raw, max, t)?;
        parse_batch(&body, ctx, &ua, max_events, t)
    })
    .await?;
    let Parsed { rows, errors, total } = parsed;
    let cost = u32::try_from(total).unwrap_or(u32::MAX);
    let quota = Quota::tighter(requests, limit_events(&s, &key, cost).await?);
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

/// Runs `work` with the request's ticket: on the request's task for a small identity body, else on
/// the blocking pool in one of the budget's decoding slots. The ticket comes back to be held until the answer is sent.
async fn on_cpu<T: Send + 'static>(
    s: &AppState,
    encoding: Encoding,
    raw_len: usize,
    mut ticket: Ticket,
    work: impl FnOnce(&mut Ticket) -> Result<T, ApiError> + Send + 'static,
) -> Result<(T, Ticket), ApiError> {
    if encoding == Encoding::Identity && raw_len <= INLINE_PARSE_BYTES {
        return work(&mut ticket).map(|out| (out, ticket));
    }
    let slot = s.budget.cpu_slot().await?;
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        work(&mut ticket).map(|out| (out, ticket))
    })
    .await
    .map_err(ApiError::internal)?
}

/// Authenticates by header before reading the body (cheap refusal), else by an `apiKey` field in
/// the body's first [`KEY_PREFIX_BYTES`]; then takes one request of the key's
/// `STRATA_INGEST_RATE_LIMIT`. Returns the body as sent (the budget accounts it).
async fn authenticated_body(
    s: &AppState,
    headers: &HeaderMap,
    client: IpAddr,
    body: Body,
    now: DateTime<Utc>,
    ticket: &mut Ticket,
) -> Result<(KeyInfo, Raw, Option<Quota>), ApiError> {
    let encoding = Encoding::of(headers)?;
    let header_key = headers.get("x-api-key").map(|v| v.to_str().unwrap_or(""));
    if let Some(k) = header_key {
        let key = authenticate(s, client, Some(k), now).await?;
        let quota = limit_requests(s, &key).await?;
        let raw = read_raw(body, s.cfg.body_max_bytes, ticket).await?;
        return Ok((key, raw, quota));
    }
    let raw = read_raw(body, s.cfg.body_max_bytes, ticket).await?;
    let prefix = decode_prefix(encoding, &raw, KEY_PREFIX_BYTES);
    if is_blank(&prefix) {
        return Err(ApiError::bad_request("invalid_json", "request body is empty; expected a JSON object"));
    }
    let found = wire::find_api_key(&prefix);
    let key = authenticate(s, client, found.as_deref(), now).await.map_err(|e| match found {
        None if e.code == "missing_api_key" => ApiError::unauthorized(
            "missing_api_key",
            format!(
                "API key required: send it in the X-API-Key header, or as an apiKey string field within the \
                 first {KEY_PREFIX_BYTES} bytes of the JSON body"
            ),
        ),
        _ => e,
    })?;
    let quota = limit_requests(s, &key).await?;
    Ok((key, raw, quota))
}

/// A single-event body as one row, or the event's refusal.
fn parse_single(body: &[u8], ctx: &EventContext, ua: &UaParser) -> Result<Result<EventRow, EventError>, ApiError> {
    let fields = wire::event_fields(body).map_err(body_error(body))?;
    Ok(fields.into_value(ctx.metadata_max_bytes).and_then(|v| parse_event(&v, ctx, ua)))
}

/// A batch body's valid rows, its per-event refusals and how many events it holds.
struct Parsed {
    rows: Vec<EventRow>,
    errors: Vec<Value>,
    total: usize,
}

fn parse_batch(
    body: &[u8],
    mut ctx: EventContext,
    ua: &UaParser,
    max: usize,
    t: &mut Ticket,
) -> Result<Parsed, ApiError> {
    let batch = wire::read_batch(body, max).map_err(body_error(body))?;
    let invalid = || ApiError::bad_request("invalid_batch", "body must be an object with an \"events\" array");
    if batch.events_not_array {
        return Err(invalid());
    }
    let (events, total) = batch.events.ok_or_else(invalid)?;
    if total == 0 {
        return Err(ApiError::bad_request("empty_batch", "events must contain at least one event"));
    }
    if total > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_events",
            format!("a batch holds at most {max} events; this one has {total}"),
        ));
    }
    t.grow(body.len() + total * ROW_BYTES)?;
    if let Some(v) = &batch.sent_at {
        ctx.sent_at = Some(time_field("sentAt", v).map_err(|e| ApiError::bad_request(e.code, e.message))?);
    }
    let mut rows = Vec::with_capacity(events.len());
    let mut errors = Vec::new();
    for (index, raw) in events.iter().enumerate() {
        let parsed =
            wire::event_value(raw.get().as_bytes(), ctx.metadata_max_bytes).and_then(|v| parse_event(&v, &ctx, ua));
        match parsed {
            Ok(row) => rows.push(row),
            Err(e) => {
                crate::metrics::rejected(e.code);
                errors.push(json!({"index": index, "code": e.code, "message": e.message}));
            }
        }
    }
    Ok(Parsed { rows, errors, total })
}

/// The 400 of a body that is not a JSON object.
fn body_error(body: &[u8]) -> impl FnOnce(BodyError) -> ApiError + '_ {
    move |e| match e {
        _ if is_blank(body) => ApiError::bad_request("invalid_json", "request body is empty; expected a JSON object"),
        BodyError::NotAnObject => ApiError::bad_request("invalid_body", "request body must be a JSON object"),
        BodyError::Invalid(e) => ApiError::bad_request("invalid_json", format!("request body is not valid JSON: {e}")),
    }
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
    // A lookup fails only when the database cannot be asked.
    let outcome = s.keys.authenticate(client, key, now).await.map_err(|e| ApiError::database(e, true))?;
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

fn event_context(
    s: &AppState,
    headers: &HeaderMap,
    ip: IpAddr,
    key: &KeyInfo,
    received_at: DateTime<Utc>,
    sent_at: Option<DateTime<Utc>>,
) -> EventContext {
    let ua = headers.get(axum::http::header::USER_AGENT).and_then(|v| v.to_str().ok()).and_then(|v| s.ua.parse(v));
    EventContext {
        app_id: key.app_id,
        received_at,
        ip: Some(ip),
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
        Ok(Err(FlushError::Unavailable(_))) => Err(ApiError {
            // A connection lost during COMMIT leaves the outcome unknown: not "nothing was stored".
            message: "the database is unavailable; the events are not acknowledged: retry with the same eventIds"
                .into(),
            ..ApiError::database_unavailable()
        }),
        Ok(Err(FlushError::Rejected(detail))) => {
            // The database's words stay in the log: they name tables and constraints.
            tracing::warn!(%detail, events = n, "the database refused a flush");
            Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "storage_rejected",
                format!("the database refused these {n} events; nothing was stored"),
            ))
        }
        Err(_) => Err(ApiError::unavailable("shutting_down", "the server is shutting down; retry")),
    }
}
