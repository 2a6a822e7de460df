//! The one error type at the HTTP edge. Every failure answers
//! `{"success": false, "error": {"code", "message", "details"}}` with a stable code; 5xx bodies hide
//! internals while the cause is logged.

use axum::extract::rejection::JsonRejection;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

/// Seconds a client is told to wait after a 503.
pub const RETRY_AFTER_SECS: u64 = 1;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
    /// Structured details (e.g. per-event errors), or null.
    pub details: Value,
    /// Extra response headers (e.g. `Retry-After` and `RateLimit-*` of a 429); they win over the
    /// defaults. Boxed: most errors have none, and `Result`s carrying an `ApiError` stay small.
    pub headers: Option<Box<HeaderMap>>,
}

impl ApiError {
    /// An error with no details.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), details: Value::Null, headers: None }
    }

    /// Adds response headers.
    pub fn with_headers(mut self, headers: HeaderMap) -> ApiError {
        self.headers.get_or_insert_with(Box::default).extend(headers);
        self
    }

    /// Adds details.
    pub fn with_details(mut self, details: Value) -> ApiError {
        self.details = details;
        self
    }

    /// 400 with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 401 with `code`.
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, code, message)
    }

    /// 503 (with Retry-After) when the database cannot be reached.
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }

    /// 500 whose body says nothing of `cause`, which is logged.
    pub fn internal(cause: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %cause, "internal error");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "internal server error")
    }

    /// 404 for unknown routes.
    pub fn not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
    }
}

/// A JSON body that could not be used: 413 `payload_too_large` when it is over the route's limit
/// (axum's `DefaultBodyLimit`, whatever its `Content-Encoding`), else 400 `invalid_body`.
impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> ApiError {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "request body is larger than this route accepts",
            );
        }
        ApiError::bad_request("invalid_body", e.body_text())
    }
}

/// A hash that found no slot is load, not a fault: 503 `overloaded` (with `Retry-After`).
impl From<crate::auth::password::PasswordError> for ApiError {
    fn from(e: crate::auth::password::PasswordError) -> ApiError {
        match e {
            crate::auth::password::PasswordError::Busy => ApiError::unavailable(
                "overloaded",
                "the server is hashing as many passwords as it can at once; retry after the Retry-After delay",
            ),
            other => ApiError::internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "success": false,
            "error": {"code": self.code, "message": self.message, "details": self.details},
        });
        let mut resp = (self.status, Json(body)).into_response();
        if matches!(self.status, StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS) {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        for (name, value) in self.headers.map(|h| *h).unwrap_or_default() {
            if let Some(name) = name {
                resp.headers_mut().insert(name, value);
            }
        }
        resp
    }
}

/// Fallback for unknown paths.
pub async fn fallback() -> ApiError {
    ApiError::not_found()
}
