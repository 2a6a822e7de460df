//! The analytics answers' JSON: each endpoint's `data` (the shapes of the original service, camelCase
//! with snake_case twins where it had them), and the envelope `{"success", "data", "meta"}` written
//! around a cached, serialised `data` without copying it.

use axum::http::{header, HeaderValue};
use axum::response::Response;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use chrono_tz::Tz;
use serde::Serialize;
use serde_json::{json, Value};

use super::Answer;
use crate::cache::Tier;
use crate::http::body::Chunks;
use crate::http::error::ApiError;
use crate::query::apps::AppInfo;
use crate::query::buckets::label;
use crate::query::plan::Span;
use crate::query::summary::Breakdown;
use crate::query::{overview, summary, timeline, users, Source};

/// A user's `data` object with `userId` put back first: cached answers are stored without it.
pub(super) fn with_user(data: &[u8], user_id: &str) -> Result<Vec<u8>, ApiError> {
    with_first(data, "userId", &user_id)
}

/// A user's activity without the user's id (see [`with_user`]).
pub(super) fn user_data(u: &users::UserActivity) -> Value {
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

/// The overview's cached `data` object with `app` added first, without parsing it.
pub(super) fn with_app(data: &[u8], app: &AppInfo) -> Result<Vec<u8>, ApiError> {
    let app_json = json!({"id": app.id, "name": app.name, "createdAt": instant(app.created_at),
                          "created_at": instant(app.created_at)});
    with_first(data, "app", &app_json)
}

/// The serialised JSON object `data` with `name: value` added first, without parsing it.
pub(super) fn with_first(data: &[u8], name: &str, value: &impl Serialize) -> Result<Vec<u8>, ApiError> {
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

/// `meta`: the request's own fields (range, zone, interval) and the answer's provenance.
#[derive(Serialize, Default)]
pub(super) struct Meta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) range: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) tz: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) interval: Option<&'a str>,
    pub(super) source: &'a str,
    pub(super) cache: &'a str,
    #[serde(rename = "generatedAt")]
    pub(super) generated_at: String,
}

/// `{"success": true, "data": <data>, "meta": {...}}` (and, `with_cached`, the original's top-level
/// `cached` flag, kept for existing dashboards), written around the serialised `data` as is.
pub(super) fn answer(data: impl Into<Bytes>, source: Source, tier: Tier, mut meta: Meta, with_cached: bool) -> Answer {
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
pub(super) fn to_bytes(data: &Value) -> Vec<u8> {
    // Serialising a `Value` cannot fail (its keys are strings).
    serde_json::to_vec(data).unwrap_or_else(|_| b"null".to_vec())
}

pub(super) fn timeline_data(t: &timeline::Timeline, tz: Tz) -> Value {
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

pub(super) fn summary_data(sum: &summary::Summary) -> Value {
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

pub(super) fn overview_data(o: &overview::Overview) -> Value {
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

pub(super) fn range_json(range: Span, tz: Tz) -> Value {
    json!({"start": label(range.start, tz), "end": label(range.end, tz)})
}

pub(super) fn breakdown_json(b: &Breakdown) -> Value {
    json!(b.iter().map(|(v, n)| json!({"value": v, "count": n})).collect::<Vec<_>>())
}

pub(super) fn instant(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}
