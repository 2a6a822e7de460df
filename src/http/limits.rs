//! Rate limits at the HTTP edge ([`crate::auth::ratelimit`]): [`check`] turns a limiter's decision
//! into `RateLimit-*` headers or a refusal (429 `rate_limited` with `Retry-After`; 413
//! `too_many_events` for a batch larger than the whole burst), and [`analytics`] is the layer of the
//! analytics routes, keyed by the [`Caller`] (found once, and left for the handlers' extractors).
//! Refusals happen before any database work.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::auth::Caller;
use super::error::ApiError;
use super::AppState;
use crate::auth::ratelimit::{Decision, Limiter};
use crate::config::RateLimit;

/// What is left of a limit after an allowed request.
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    limit: RateLimit,
    remaining: u32,
}

impl Quota {
    /// The `RateLimit-*` headers of an allowed request.
    pub fn headers(self) -> HeaderMap {
        rate_headers(self.limit, self.remaining, 0)
    }

    /// The quota with less left, of two optional ones.
    pub fn tighter(a: Option<Quota>, b: Option<Quota>) -> Option<Quota> {
        match (a, b) {
            (Some(a), Some(b)) => Some(if b.remaining < a.remaining { b } else { a }),
            (a, b) => a.or(b),
        }
    }
}

/// Takes `cost` tokens of `key` from `limiter` (no limiter: the limit is off). `what` opens the
/// message of a 429, e.g. "too many requests with this API key".
pub async fn check(limiter: Option<&Limiter>, key: &str, cost: u32, what: &str) -> Result<Option<Quota>, ApiError> {
    let Some(limiter) = limiter else { return Ok(None) };
    let limit = limiter.limit();
    match limiter.check(key, cost).await {
        Decision::Allowed { remaining } => Ok(Some(Quota { limit, remaining })),
        Decision::Limited { retry_after } => {
            metrics::counter!("strata_rate_limited_total").increment(1);
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            let mut headers = rate_headers(limit, 0, secs);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
            let msg = format!("{what}; retry in {secs} s");
            Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", msg).with_headers(headers))
        }
        Decision::TooLarge => {
            metrics::counter!("strata_rate_limited_total").increment(1);
            let msg = format!("{cost} events in one request exceed the rate limit of {limit}; send smaller batches");
            Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_many_events", msg)
                .with_headers(rate_headers(limit, 0, 0)))
        }
    }
}

/// `RateLimit-Limit`, `-Remaining`, `-Reset` (seconds until the refused request fits; 0 when
/// allowed) and `-Policy` (`N;w=SECONDS`).
fn rate_headers(limit: RateLimit, remaining: u32, reset: u64) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("ratelimit-limit", HeaderValue::from(limit.requests));
    h.insert("ratelimit-remaining", HeaderValue::from(remaining));
    h.insert("ratelimit-reset", HeaderValue::from(reset));
    let policy = format!("{};w={}", limit.requests, limit.window.as_secs());
    h.insert("ratelimit-policy", HeaderValue::from_str(&policy).expect("digits are a valid header value"));
    h
}

/// The layer of the analytics routes (`STRATA_ANALYTICS_RATE_LIMIT`): a valid bearer token (the
/// admin token, or an owner token whose signature and expiry check out, keyed by its id) takes one
/// token before the handler runs, and its [`Caller`] goes into the request's extensions, so the
/// handler's extractors do not verify the token again. Requests without a valid token go on, to be
/// refused 401 there.
pub async fn analytics(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    let Some(limiter) = s.limits.analytics.as_deref() else { return next.run(req).await };
    let Ok(caller) = Caller::from_headers(&s, req.headers()) else { return next.run(req).await };
    req.extensions_mut().insert(caller);
    let key = match caller {
        Caller::Admin => "admin".to_owned(),
        Caller::Owner { jti, .. } => format!("owner:{jti}"),
    };
    match check(Some(limiter), &key, 1, "too many requests with this token").await {
        Ok(quota) => {
            let mut resp = next.run(req).await;
            if let Some(q) = quota {
                resp.headers_mut().extend(q.headers());
            }
            resp
        }
        Err(e) => e.into_response(),
    }
}
