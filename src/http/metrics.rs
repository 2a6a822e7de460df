//! `GET /metrics`: Prometheus text format, gzip-compressed when the client accepts it. Open unless
//! `STRATA_METRICS_TOKEN` is set; the admin token is always accepted.

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tower_http::compression::CompressionLayer;

use super::error::ApiError;
use super::AppState;
use crate::auth::bearer::{bearer_token, token_matches};

/// The metrics route.
pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(scrape).layer(CompressionLayer::new().gzip(true)))
}

async fn scrape(State(s): State<AppState>, headers: HeaderMap) -> Result<impl IntoResponse, ApiError> {
    if let Some(expected) = &s.cfg.metrics_token {
        let presented = bearer_token(headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()));
        let ok =
            presented.is_some_and(|t| token_matches(t, expected.expose()) || token_matches(t, &s.secrets.admin_token));
        if !ok {
            return Err(ApiError::unauthorized("unauthorized", "a metrics bearer token is required"));
        }
    }
    crate::metrics::sample(s.queue.depth(), s.cfg.ingest_queue_capacity, s.pool.status());
    crate::metrics::body_bytes_in_flight(s.budget.in_use());
    let body = crate::metrics::handle().render();
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body))
}
