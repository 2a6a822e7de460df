//! Validation and normalisation of one incoming event (`EventIn` as JSON) into an [`EventRow`]
//! ready to be written. Accepts the original clients' camelCase fields and the snake_case spellings
//! its docs used; an event sending both spellings of one field is refused. Each refusal carries a
//! stable code (listed in the README) and a message naming the field.

use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::ua::{UaInfo, UaParser};

/// One validated event, as stored.
#[derive(Debug, Clone)]
pub struct EventRow {
    /// Client-supplied or server-assigned (UUIDv7) idempotency id.
    pub event_id: Uuid,
    /// The app of the API key (never taken from the body).
    pub app_id: Uuid,
    /// Required, non-empty.
    pub event_type: String,
    /// End-user id.
    pub user_id: Option<String>,
    /// Session id.
    pub session_id: Option<String>,
    /// Page URL.
    pub url: Option<String>,
    /// Referrer URL.
    pub referrer: Option<String>,
    /// Client IP (socket peer or trusted proxy header).
    pub ip: Option<IpAddr>,
    /// Parsed user agent, shared by the events of one request.
    pub ua: Option<Arc<UaInfo>>,
    /// Screen width in pixels.
    pub screen_width: Option<i32>,
    /// Screen height in pixels.
    pub screen_height: Option<i32>,
    /// `metadata` (or `properties`) serialised as JSON text, an object.
    pub metadata: Option<String>,
    /// Event time, corrected for client clock skew.
    pub created_at: DateTime<Utc>,
    /// When the server received it.
    pub received_at: DateTime<Utc>,
}

/// Why one event was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventError {
    /// Stable machine-readable code, e.g. `missing_event_type`.
    pub code: &'static str,
    /// Human-readable message naming the field.
    pub message: String,
}

impl EventError {
    pub(crate) fn new(code: &'static str, message: impl Into<String>) -> EventError {
        EventError { code, message: message.into() }
    }
}

/// Per-request facts and limits every event of the request is checked against.
#[derive(Clone)]
pub struct EventContext {
    /// The app of the API key.
    pub app_id: Uuid,
    /// Receive time of the request.
    pub received_at: DateTime<Utc>,
    /// Client IP.
    pub ip: Option<IpAddr>,
    /// The request's User-Agent header, parsed.
    pub ua: Option<Arc<UaInfo>>,
    /// A batch-level `sentAt`, used for events that carry none.
    pub sent_at: Option<DateTime<Utc>>,
    /// Largest serialised metadata.
    pub metadata_max_bytes: usize,
    /// Latest acceptable event time: `received_at + future skew`.
    pub future_skew: Duration,
    /// Oldest acceptable event time: `received_at - accept window`.
    pub accept_window: Duration,
    /// Start of the oldest month retention keeps, when retention is on: an event is never
    /// acknowledged into a month that retention removes.
    pub retention_floor: Option<DateTime<Utc>>,
}

const EVENT_TYPE_MAX_CHARS: usize = 128;
const ID_MAX_CHARS: usize = 256;
const URL_MAX_CHARS: usize = 4096;
const SCREEN_MAX_PIXELS: i64 = 100_000;

/// Validates one event against `ctx`.
pub fn parse_event(value: &Value, ctx: &EventContext, ua: &UaParser) -> Result<EventRow, EventError> {
    let obj = value.as_object().ok_or_else(|| EventError::new("invalid_event", "each event must be a JSON object"))?;
    let event_type = pick(obj, "eventType", "event_type")?
        .ok_or_else(|| EventError::new("missing_event_type", "eventType is required"))?;
    let event_type = string_field("eventType", event_type, EVENT_TYPE_MAX_CHARS)?;
    if event_type.trim().is_empty() {
        return Err(EventError::new("missing_event_type", "eventType must not be empty"));
    }
    let user_id = opt(pick(obj, "userId", "user_id")?, |v| id_field("userId", v))?;
    let session_id = opt(pick(obj, "sessionId", "session_id")?, |v| id_field("sessionId", v))?;
    let url = opt(pick(obj, "url", "url")?, |v| string_field("url", v, URL_MAX_CHARS))?;
    let referrer = opt(pick(obj, "referrer", "referrer")?, |v| string_field("referrer", v, URL_MAX_CHARS))?;
    let screen_width = opt(pick(obj, "screenWidth", "screen_width")?, |v| screen_field("screenWidth", v))?;
    let screen_height = opt(pick(obj, "screenHeight", "screen_height")?, |v| screen_field("screenHeight", v))?;
    let metadata = opt(pick(obj, "metadata", "properties")?, |v| metadata_field(v, ctx.metadata_max_bytes))?;
    let event_id = opt(pick(obj, "eventId", "event_id")?, event_id_field)?.unwrap_or_else(Uuid::now_v7);
    let ua = match pick(obj, "userAgent", "user_agent")? {
        Some(v) => ua.parse(&string_field("userAgent", v, usize::MAX)?),
        None => ctx.ua.clone(),
    };
    let timestamp = opt(pick(obj, "timestamp", "timestamp")?, |v| time_field("timestamp", v))?;
    let sent_at = opt(pick(obj, "sentAt", "sent_at")?, |v| time_field("sentAt", v))?.or(ctx.sent_at);
    let created_at = event_time(ctx, timestamp, sent_at)?;
    Ok(EventRow {
        event_id,
        app_id: ctx.app_id,
        event_type,
        user_id,
        session_id,
        url,
        referrer,
        ip: ctx.ip,
        ua,
        screen_width,
        screen_height,
        metadata,
        created_at,
        received_at: ctx.received_at,
    })
}

/// Event time = receivedAt − (sentAt − timestamp) when both are given, else the timestamp, else the
/// receive time; then checked against the acceptance window.
fn event_time(
    ctx: &EventContext,
    timestamp: Option<DateTime<Utc>>,
    sent_at: Option<DateTime<Utc>>,
) -> Result<DateTime<Utc>, EventError> {
    let t = match (timestamp, sent_at) {
        (Some(ts), Some(sent)) => ctx
            .received_at
            .checked_sub_signed(sent - ts)
            .ok_or_else(|| EventError::new("invalid_timestamp", "timestamp and sentAt are too far apart"))?,
        (Some(ts), None) => ts,
        (None, _) => ctx.received_at,
    };
    if t > ctx.received_at + ctx.future_skew {
        return Err(EventError::new(
            "timestamp_in_future",
            format!(
                "event time {} is more than {}h ahead of the server clock",
                t.to_rfc3339(),
                ctx.future_skew.num_hours()
            ),
        ));
    }
    if let Some(floor) = ctx.retention_floor.filter(|f| t < *f) {
        return Err(EventError::new(
            "timestamp_too_old",
            format!("event time {} is before {}, the oldest month retention keeps", t.to_rfc3339(), floor.to_rfc3339()),
        ));
    }
    if t < ctx.received_at - ctx.accept_window {
        return Err(EventError::new(
            "timestamp_too_old",
            format!(
                "event time {} is older than the {}-day acceptance window",
                t.to_rfc3339(),
                ctx.accept_window.num_days()
            ),
        ));
    }
    Ok(t)
}

/// The value of a field under either spelling; null counts as absent. Both spellings present is an error.
fn pick<'a>(obj: &'a Map<String, Value>, camel: &str, snake: &str) -> Result<Option<&'a Value>, EventError> {
    let a = obj.get(camel);
    let b = if camel == snake { None } else { obj.get(snake) };
    match (a, b) {
        (Some(_), Some(_)) => Err(EventError::new(
            "conflicting_fields",
            format!("{camel} and {snake} are two spellings of one field: send only one"),
        )),
        (Some(v), None) | (None, Some(v)) => Ok(Some(v).filter(|v| !v.is_null())),
        (None, None) => Ok(None),
    }
}

fn opt<T>(v: Option<&Value>, f: impl FnOnce(&Value) -> Result<T, EventError>) -> Result<Option<T>, EventError> {
    v.map(f).transpose()
}

fn string_field(name: &str, v: &Value, max_chars: usize) -> Result<String, EventError> {
    let s = v.as_str().ok_or_else(|| EventError::new("invalid_type", format!("{name} must be a string")))?;
    check_text(name, s, max_chars)?;
    Ok(s.to_string())
}

fn check_text(name: &str, s: &str, max_chars: usize) -> Result<(), EventError> {
    if s.contains('\0') {
        return Err(EventError::new("invalid_string", format!("{name} must not contain NUL characters")));
    }
    if max_chars != usize::MAX && s.chars().count() > max_chars {
        return Err(EventError::new("field_too_long", format!("{name} is longer than {max_chars} characters")));
    }
    Ok(())
}

/// Ids are strings; integers are accepted too (the original stored whatever clients sent).
fn id_field(name: &str, v: &Value) -> Result<String, EventError> {
    match v {
        Value::Number(n) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
        _ => string_field(name, v, ID_MAX_CHARS),
    }
}

fn screen_field(name: &str, v: &Value) -> Result<i32, EventError> {
    let n = v
        .as_i64()
        .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 1e15).map(|f| f as i64))
        .ok_or_else(|| EventError::new("invalid_type", format!("{name} must be an integer")))?;
    if !(0..=SCREEN_MAX_PIXELS).contains(&n) {
        return Err(EventError::new("invalid_value", format!("{name} must be between 0 and {SCREEN_MAX_PIXELS}")));
    }
    Ok(n as i32)
}

fn metadata_field(v: &Value, max_bytes: usize) -> Result<String, EventError> {
    if !v.is_object() {
        return Err(EventError::new("invalid_type", "metadata must be a JSON object"));
    }
    if contains_nul(v) {
        return Err(EventError::new("invalid_string", "metadata must not contain NUL characters"));
    }
    let text = serde_json::to_string(v).map_err(|e| EventError::new("invalid_metadata", e.to_string()))?;
    if text.len() > max_bytes {
        return Err(EventError::new(
            "metadata_too_large",
            format!("metadata is {} bytes, more than the {max_bytes}-byte limit", text.len()),
        ));
    }
    Ok(text)
}

/// PostgreSQL text and jsonb cannot hold U+0000.
fn contains_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(contains_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        _ => false,
    }
}

fn event_id_field(v: &Value) -> Result<Uuid, EventError> {
    let s = v.as_str().ok_or_else(|| EventError::new("invalid_event_id", "eventId must be a UUID string"))?;
    match Uuid::try_parse(s) {
        Ok(id) if !id.is_nil() => Ok(id),
        _ => Err(EventError::new("invalid_event_id", "eventId must be a non-nil UUID")),
    }
}

/// RFC 3339 text, or a number of milliseconds since the Unix epoch.
pub fn time_field(name: &str, v: &Value) -> Result<DateTime<Utc>, EventError> {
    let bad = || {
        EventError::new(
            "invalid_timestamp",
            format!("{name} must be an RFC 3339 date-time with offset or Unix milliseconds"),
        )
    };
    match v {
        Value::String(s) => DateTime::parse_from_rfc3339(s.trim()).map(|t| t.with_timezone(&Utc)).map_err(|_| bad()),
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite() && f.abs() < 1e15).map(|f| f as i64))
            .and_then(DateTime::from_timestamp_millis)
            .ok_or_else(bad),
        _ => Err(bad()),
    }
}

#[cfg(test)]
#[path = "event_tests.rs"]
mod tests;
