//! The HTTP edge: shared state, one `router()` per area merged here, JSON errors everywhere.

use std::sync::Arc;

use axum::http::{HeaderValue, Method, StatusCode};
use axum::Router;
use deadpool_postgres::Pool;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::timeout::TimeoutLayer;

use crate::auth::keys::KeyAuth;
use crate::config::Config;
use crate::db::Secrets;
use crate::ingest::ua::UaParser;
use crate::ingest::writer::IngestQueue;

pub mod admin;
pub mod analytics;
pub mod body;
pub mod error;
pub mod health;
pub mod ingest;

/// Cheap handles shared by every handler.
#[derive(Clone)]
pub struct AppState {
    /// Configuration.
    pub cfg: Arc<Config>,
    /// PostgreSQL pool.
    pub pool: Pool,
    /// API-key authentication.
    pub keys: KeyAuth,
    /// The group-commit queue.
    pub queue: IngestQueue,
    /// User-agent parser.
    pub ua: UaParser,
    /// Server secrets.
    pub secrets: Arc<Secrets>,
    /// Oldest acceptable event age (the acceptance window, never past retention).
    pub accept_window: chrono::Duration,
}

/// Every route of the service.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(ingest::router())
        .merge(health::router())
        .merge(admin::router())
        .merge(analytics::router())
        .fallback(error::fallback)
        .method_not_allowed_fallback(method_not_allowed)
        // Outermost but for the timeout, so preflights and error answers carry CORS headers too.
        .layer(cors(&state.cfg.cors_origins))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, state.cfg.request_timeout))
        .with_state(state)
}

async fn method_not_allowed() -> error::ApiError {
    error::ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this route")
}

/// CORS for browser clients: `STRATA_CORS_ORIGINS` (`*` allows any origin).
fn cors(origins: &[String]) -> CorsLayer {
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE, Method::OPTIONS])
        .allow_headers([
            axum::http::header::CONTENT_TYPE,
            axum::http::header::CONTENT_ENCODING,
            axum::http::header::AUTHORIZATION,
            axum::http::HeaderName::from_static("x-api-key"),
        ])
        .max_age(std::time::Duration::from_secs(86_400))
}
