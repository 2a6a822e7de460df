//! The HTTP edge: shared state, one `router()` per area merged here, JSON errors everywhere.

use std::sync::Arc;

use axum::http::HeaderName;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::Router;
use deadpool_postgres::Pool;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::auth::keys::KeyAuth;
use crate::config::Config;
use crate::db::Secrets;
use crate::ingest::ua::UaParser;
use crate::ingest::writer::IngestQueue;

pub mod accounts;
pub mod admin;
pub mod analytics;
pub mod auth;
pub mod body;
pub mod budget;
pub mod client;
pub mod error;
pub mod health;
pub mod ingest;
pub mod limits;
pub mod metrics;
pub mod nul;
pub mod openapi;
pub mod privacy;
pub mod serve;

/// What every handler shares: one `Arc`, so axum's per-request clone of the state is one atomic
/// increment rather than one per field.
#[derive(Clone)]
pub struct AppState(Arc<SharedState>);

impl AppState {
    /// Wraps the shared handles.
    pub fn new(shared: SharedState) -> AppState {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = SharedState;

    fn deref(&self) -> &SharedState {
        &self.0
    }
}

/// The handles behind [`AppState`].
pub struct SharedState {
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
    /// The analytics cache (L1 in process, L2 Redis).
    pub cache: crate::cache::Cache,
    /// Recent positive authorisation answers: (owner session or admin, app) -> the app, for
    /// [`AUTHZ_TTL`], so cached analytics answers need no database round trip. Logout and app
    /// deletion clear it on their instance; other instances follow within the TTL.
    pub authz: moka::future::Cache<(Option<(uuid::Uuid, uuid::Uuid)>, uuid::Uuid), crate::query::apps::AppInfo>,
    /// Oldest acceptable event age (the acceptance window, never past retention).
    pub accept_window: chrono::Duration,
    /// Rate limiters (auth per IP, ingestion per API key, analytics per token).
    pub limits: crate::auth::ratelimit::Limits,
    /// The in-flight budget of ingestion bodies (`STRATA_INGEST_MEMORY_BYTES`).
    pub budget: budget::Budget,
}

/// Lifetime of an authorisation answer in [`AppState::authz`].
pub const AUTHZ_TTL: std::time::Duration = std::time::Duration::from_secs(2);
/// Authorisation answers kept at most.
const AUTHZ_CAPACITY: u64 = 100_000;

/// An empty authorisation cache.
pub fn authz_cache() -> moka::future::Cache<(Option<(uuid::Uuid, uuid::Uuid)>, uuid::Uuid), crate::query::apps::AppInfo>
{
    moka::future::Cache::builder().max_capacity(AUTHZ_CAPACITY).time_to_live(AUTHZ_TTL).build()
}

/// Every route of the service.
pub fn router(state: AppState) -> Router {
    let (slow, deadline) = (state.cfg.slow_request, state.cfg.request_timeout);
    Router::new()
        .merge(ingest::router())
        .merge(health::router())
        .merge(admin::router())
        .merge(
            analytics::router()
                .merge(privacy::router())
                .route_layer(axum::middleware::from_fn_with_state(state.clone(), limits::analytics)),
        )
        .merge(accounts::router())
        .merge(metrics::router())
        .merge(openapi::router())
        .fallback(error::fallback)
        // JSON routes (accounts, apps, keys, admin) take small bodies; ingestion reads its own.
        .layer(axum::extract::DefaultBodyLimit::max(JSON_BODY_MAX_BYTES))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(move |req, next| edge(slow, deadline, req, next)))
        // Outside the routes and the deadline, so preflights and error answers carry CORS headers too.
        .layer(cors(&state.cfg.cors_origins))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID.clone()))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(SetRequestIdLayer::new(REQUEST_ID.clone(), RandomRequestId))
        .with_state(state)
}

/// Largest body of a JSON route (accounts, apps, keys, admin): their bodies are a few fields.
/// Ingestion bodies have their own limit, `STRATA_BODY_MAX_BYTES`.
pub const JSON_BODY_MAX_BYTES: usize = 64 * 1024;

/// Header carrying the request id (taken from the client when sent, generated otherwise).
static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Random (v4) request ids from the thread's RNG: `MakeRequestUuid` asks the kernel for every one.
#[derive(Clone, Copy)]
struct RandomRequestId;

impl MakeRequestId for RandomRequestId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
        let mut text = uuid::Uuid::encode_buffer();
        HeaderValue::from_str(id.hyphenated().encode_lower(&mut text)).ok().map(RequestId::new)
    }
}

/// Every log line of a request carries its id, method and path.
fn request_span(req: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let id = req.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
    // The route template, never the path: paths hold user ids (`/api/analytics/users/{userId}`);
    // the method as labelled in the metrics: a made-up method may be 60 KB long.
    let route = req.extensions().get::<axum::extract::MatchedPath>().map_or("unmatched", |p| p.as_str());
    let method = crate::metrics::method_label(req.method());
    tracing::info_span!("request", request_id = %id, method, route = %route)
}

/// The edge of every routed request, as one middleware (each `from_fn` layer clones everything it
/// wraps on every request): counted and timed by route template, refused when a parameter holds a
/// NUL, and answered with a JSON 408 past `STRATA_REQUEST_TIMEOUT` (slow bodies included).
async fn edge(
    slow: std::time::Duration,
    deadline: std::time::Duration,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let route = req.extensions().get::<axum::extract::MatchedPath>().cloned();
    let method = req.method().clone();
    let request = crate::metrics::RequestTimer::start();
    let response = match nul::nul_parameter(&req) {
        Some(parameter) => nul::refusal(parameter),
        None => match tokio::time::timeout(deadline, next.run(req)).await {
            Ok(response) => response,
            Err(_) => {
                let message = format!("the request took longer than STRATA_REQUEST_TIMEOUT ({deadline:?})");
                error::ApiError::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", message).into_response()
            }
        },
    };
    request.finish(route.as_ref().map(|r| r.as_str()), &method, response.status(), slow);
    response
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
            HeaderName::from_static("x-api-key"),
            HeaderName::from_static("x-request-id"),
        ])
        .max_age(std::time::Duration::from_secs(86_400))
}
