//! Refuses NUL characters (`%00`) in the query string and in path parameters before any handler
//! runs. PostgreSQL text cannot hold U+0000, so such a value bound to a query would fail there as a
//! 500; no parameter of this API can legitimately contain one. Answers 400 `invalid_parameter` with
//! `details.parameter` naming the parameter (or `path` when the path matched no route).

use axum::extract::{MatchedPath, Query, Request};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::ApiError;

/// The refusal of a request whose `parameter` holds a NUL.
pub fn refusal(parameter: String) -> Response {
    ApiError::bad_request("invalid_parameter", format!("{parameter} must not contain NUL characters"))
        .with_details(json!({ "parameter": parameter }))
        .into_response()
}

/// The first parameter of `req` holding a NUL, if any.
pub fn nul_parameter(req: &Request) -> Option<String> {
    let uri = req.uri();
    // A URI holds a NUL only percent-encoded, as `%00`: most requests are decided without decoding.
    // Undecodable query strings are left to the handlers, which refuse them with their own message.
    let query_may_hold_nul = uri.query().is_some_and(|q| q.contains("%00"));
    if let Some(Ok(Query(pairs))) = query_may_hold_nul.then(|| Query::<Vec<(String, String)>>::try_from_uri(uri)) {
        for (name, value) in pairs {
            if name.contains('\0') {
                return Some("query".to_string());
            }
            if value.contains('\0') {
                return Some(name);
            }
        }
    }
    // A raw path holds a NUL only as `%00` (`%2500` is the text "%00", not a NUL).
    let path = uri.path();
    if !path.contains("%00") {
        return None;
    }
    let template = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string());
    let segment = path.split('/').position(|s| s.contains("%00"))?;
    let name = template
        .as_deref()
        .and_then(|t| t.split('/').nth(segment))
        .and_then(|s| s.strip_prefix('{')?.strip_suffix('}'))
        .unwrap_or("path");
    Some(name.to_string())
}
