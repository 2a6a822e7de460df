//! The types of setting values: durations ([`parse_duration`]), rate limits ([`RateLimit`], enforced
//! by `auth::ratelimit`), secrets ([`Secret`], never shown by `Debug`), and the default bucket cap
//! of timelines ([`MAX_BUCKETS`]).

use std::time::Duration;

/// Most buckets one timeline may have, by default (`STRATA_MAX_BUCKETS`).
pub const MAX_BUCKETS: usize = 10_000;

/// A secret setting (a token or signing key): `Debug` shows that it is set, never its value, so a
/// logged or printed `Config` leaks nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Secret {
        Secret(s.to_owned())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Parses `250ms`, `5s`, `10m`, `24h`, `7d`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let secs = |m: u64| n.checked_mul(m).map(Duration::from_secs);
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "" | "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => None,
    }
}

/// `requests` per `window`, refilled continuously.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Burst size, and requests (or events) allowed per window.
    pub requests: u32,
    /// The window.
    pub window: Duration,
}

impl RateLimit {
    /// Parses `N/DURATION` (e.g. `10/15m`, `1000/1s`).
    pub fn parse(s: &str) -> Option<RateLimit> {
        let (n, window) = s.trim().split_once('/')?;
        let requests: u32 = n.trim().parse().ok().filter(|n| *n > 0)?;
        let window = parse_duration(window).filter(|w| w.as_nanos() >= u128::from(requests))?;
        Some(RateLimit { requests, window })
    }

    /// Time to refill one token.
    pub fn interval(&self) -> Duration {
        self.window / self.requests
    }
}

impl std::fmt::Display for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} per {:?}", self.requests, self.window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_every_unit() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("24h"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("1y"), None);
        assert_eq!(parse_duration("h"), None);
    }

    #[test]
    fn limits_parse_from_n_per_duration() {
        assert_eq!(RateLimit::parse("10/15m"), Some(RateLimit { requests: 10, window: Duration::from_secs(900) }));
        assert_eq!(RateLimit::parse(" 1000 / 1s "), Some(RateLimit { requests: 1000, window: Duration::from_secs(1) }));
        assert_eq!(RateLimit::parse("1000/1s").unwrap().interval(), Duration::from_millis(1));
        assert_eq!(RateLimit::parse("0/1m"), None);
        assert_eq!(RateLimit::parse("5"), None);
        assert_eq!(RateLimit::parse("5/0s"), None);
        assert_eq!(RateLimit::parse("5/soon"), None);
        assert_eq!(RateLimit::parse("2000000/1ms"), None);
    }
}
