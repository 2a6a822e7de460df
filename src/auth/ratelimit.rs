//! Per-client rate limiting of the auth endpoints (register, login): one token bucket per IP, held
//! in process. Each instance limits on its own, so N instances allow up to N times the limit; the
//! Redis-shared limiter of the accounts issue is not built yet.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Buckets kept at most; beyond it, full (idle) buckets are dropped, as a full bucket is the same
/// as no bucket.
const MAX_BUCKETS: usize = 100_000;

/// `requests` per `window`, refilled continuously.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Burst size, and requests allowed per window.
    pub requests: u32,
    /// The window.
    pub window: Duration,
}

impl RateLimit {
    /// Parses `N/DURATION` (e.g. `10/15m`).
    pub fn parse(s: &str) -> Option<RateLimit> {
        let (n, window) = s.trim().split_once('/')?;
        let requests: u32 = n.trim().parse().ok().filter(|n| *n > 0)?;
        let window = crate::config::parse_duration(window).filter(|w| !w.is_zero())?;
        Some(RateLimit { requests, window })
    }
}

/// The verdict on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead; `remaining` more requests fit now.
    Allowed {
        /// Whole tokens left.
        remaining: u32,
    },
    /// Refused; one token is back after `retry_after`.
    Limited {
        /// Time until the next request is allowed.
        retry_after: Duration,
    },
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets keyed by client IP.
pub struct IpRateLimiter {
    limit: RateLimit,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl IpRateLimiter {
    /// Buckets of `limit`.
    pub fn new(limit: RateLimit) -> IpRateLimiter {
        IpRateLimiter { limit, buckets: Mutex::default() }
    }

    /// The limit enforced.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Takes one token of `ip`'s bucket at `now`, if there is one.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Decision {
        let capacity = f64::from(self.limit.requests);
        let per_sec = capacity / self.limit.window.as_secs_f64();
        let mut buckets = self.buckets.lock().expect("rate limit lock");
        if buckets.len() >= MAX_BUCKETS {
            buckets.retain(|_, b| b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * per_sec < capacity);
        }
        let b = buckets.entry(ip).or_insert(Bucket { tokens: capacity, at: now });
        b.tokens = (b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * per_sec).min(capacity);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Decision::Allowed { remaining: b.tokens as u32 }
        } else {
            Decision::Limited { retry_after: Duration::from_secs_f64((1.0 - b.tokens) / per_sec) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_refills_over_the_window() {
        let limiter = IpRateLimiter::new(RateLimit::parse("10/15m").unwrap());
        let (ip, other): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t = Instant::now();
        for i in 0..10 {
            assert_eq!(limiter.check(ip, t), Decision::Allowed { remaining: 9 - i });
        }
        let Decision::Limited { retry_after } = limiter.check(ip, t) else { panic!("the 11th is limited") };
        assert_eq!(retry_after.as_secs(), 90);
        assert_eq!(limiter.check(other, t), Decision::Allowed { remaining: 9 });
        assert!(matches!(limiter.check(ip, t + Duration::from_secs(91)), Decision::Allowed { .. }));
        assert_eq!(RateLimit::parse("0/1m"), None);
        assert_eq!(RateLimit::parse("5"), None);
    }
}
