//! The one error type at the HTTP edge, and the one mapping from failures to answers. Every failure
//! answers `{"success": false, "error": {"code", "message", "details"}}` with a stable code; 5xx
//! bodies hide internals while the cause is logged.
//!
//! Every domain error converts with `From` (so handlers use `?`): accounts, analytics queries and
//! parameters, rollups (privacy erasure), maintenance jobs, partition catalog reads, pool and driver
//! errors. Whatever the route, a database that cannot be reached or a connection lost mid-statement
//! ([`is_database_unavailable`]) answers [`ApiError::database_unavailable`]: 503 with `Retry-After`.

use axum::extract::rejection::JsonRejection;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::accounts::AccountError;
use crate::jobs::JobError;
use crate::query::params::ParamError;
use crate::query::QueryError;
use crate::rollup::RollupError;

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

    /// 400 `invalid_parameter` naming the `parameter` in `details`.
    pub fn invalid_parameter(parameter: &str, message: impl Into<String>) -> ApiError {
        ApiError::bad_request("invalid_parameter", message).with_details(json!({ "parameter": parameter }))
    }

    /// 503 (with Retry-After): load or a passing state, worth a retry.
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }

    /// The one answer to a database outage, on every route: 503 `database_unavailable` with
    /// `Retry-After`, and none of the database's words (they are logged by [`ApiError::database`]).
    pub fn database_unavailable() -> ApiError {
        ApiError::unavailable("database_unavailable", "the database is unavailable; retry later")
    }

    /// A failed database operation: [`ApiError::database_unavailable`] when it is an outage
    /// (`unavailable`, from [`is_database_unavailable`] or a pool that gave no connection), else a 500.
    /// Either way the cause is logged, never sent.
    pub fn database(cause: impl std::fmt::Display, unavailable: bool) -> ApiError {
        if unavailable {
            tracing::warn!(error = %cause, "database unavailable");
            ApiError::database_unavailable()
        } else {
            ApiError::internal(cause)
        }
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

    /// 404 `app_not_found`: missing, deleted, malformed, or another owner's (never told apart).
    pub fn app_not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "app_not_found", "no such app")
    }

    /// 404 `key_not_found`: missing, malformed, or another owner's.
    pub fn key_not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "key_not_found", "no such API key")
    }
}

/// True when a driver error means "the database cannot answer right now" rather than "this statement
/// is wrong": unreachable, connection lost or closed (mid-statement included), shutting down, too many
/// connections ([`crate::db::is_unavailable`]), or a statement cancelled by its timeout (analytics
/// reads stop at the request timeout). The one predicate behind every 503 `database_unavailable`.
pub fn is_database_unavailable(e: &tokio_postgres::Error) -> bool {
    crate::db::is_unavailable(e) || e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED)
}

/// No pooled connection (none free within the wait, or none could be opened): an outage.
impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(e: deadpool_postgres::PoolError) -> ApiError {
        ApiError::database(e, true)
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(e: tokio_postgres::Error) -> ApiError {
        let unavailable = is_database_unavailable(&e);
        ApiError::database(e, unavailable)
    }
}

/// Accounts storage: expected cases are 4xx with their own codes.
impl From<AccountError> for ApiError {
    fn from(e: AccountError) -> ApiError {
        match e {
            AccountError::AppNotFound(_) => ApiError::app_not_found(),
            AccountError::KeyNotFound(_) => ApiError::key_not_found(),
            AccountError::Invalid(m) => ApiError::bad_request("invalid_parameter", m),
            AccountError::InvalidEmail(m) => ApiError::invalid_parameter("email", m),
            AccountError::KeyRevoked(_) => ApiError::new(
                StatusCode::CONFLICT,
                "key_revoked",
                "this API key is revoked and cannot be regenerated; create a new key instead",
            ),
            AccountError::EmailTaken => {
                ApiError::new(StatusCode::CONFLICT, "email_taken", "an account with this email already exists")
            }
            AccountError::Postgres(e) => ApiError::from(e),
        }
    }
}

/// An analytics parameter: 400 `invalid_parameter` naming it.
impl From<ParamError> for ApiError {
    fn from(e: ParamError) -> ApiError {
        ApiError::invalid_parameter(e.parameter, e.message)
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> ApiError {
        ApiError::from(std::sync::Arc::new(e))
    }
}

/// A failed analytics computation (behind the cache, shared by the requests that waited for it).
impl From<std::sync::Arc<QueryError>> for ApiError {
    fn from(e: std::sync::Arc<QueryError>) -> ApiError {
        let unavailable = match &*e {
            QueryError::Param(p) => return ApiError::from(p.clone()),
            QueryError::Pool(_) => true,
            QueryError::Postgres(pg) => is_database_unavailable(pg),
            QueryError::Corrupt(_) => false,
        };
        ApiError::database(e, unavailable)
    }
}

/// Rollup maintenance and erasure (privacy requests).
impl From<RollupError> for ApiError {
    fn from(e: RollupError) -> ApiError {
        let unavailable = matches!(&e, RollupError::Postgres(pg) if is_database_unavailable(pg));
        ApiError::database(e, unavailable)
    }
}

/// Partition catalog, health and maintenance history reads (the DBA endpoints).
impl From<partition_jobs::Error> for ApiError {
    fn from(e: partition_jobs::Error) -> ApiError {
        let unavailable = match &e {
            partition_jobs::Error::Db { source, .. } | partition_jobs::Error::LockContention { source, .. } => {
                is_database_unavailable(source)
            }
            _ => false,
        };
        ApiError::database(e, unavailable)
    }
}

/// A maintenance run asked for by an admin.
impl From<JobError> for ApiError {
    fn from(e: JobError) -> ApiError {
        match e {
            JobError::Partition(p) => ApiError::from(p),
            JobError::Rebuild(pg) => ApiError::from(pg),
            JobError::Tiers(r) => ApiError::from(r),
            JobError::Pool(_) => ApiError::database(e, true),
        }
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

/// A task that panicked or was cancelled: a bug, 500.
impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> ApiError {
        ApiError::internal(e)
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
