//! Cache keys: one versioned format built from the normalised query (never from the raw query
//! string), and the TTL class of the answer.
//!
//! A key's text is `{endpoint}|{event type}|{start}|{end}|{interval}|{tz}`; the app and its
//! generation are added by the tiers ([`QueryKey::l1_key`], [`QueryKey::l2_key`]). Ranges that end
//! "now" (the defaults) would give a new key every request, so ranges ending within the last
//! freshness period are rounded down to a multiple of it: two such requests share an answer whose
//! end differs by less than the freshness bound.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::query::params::Filter;

/// Version of the key format and of the stored answer; bump it when either changes.
pub const KEY_VERSION: &str = "v2";

/// How long an answer may live in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtlClass {
    /// The range touches now: new events keep changing it.
    Recent,
    /// The range is closed: only late events change it (and they bump the app's generation).
    Closed,
}

/// A normalised analytics query of one app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryKey {
    /// The app whose generation guards the answer.
    pub app: Uuid,
    /// The normalised query.
    pub text: String,
    /// The answer's lifetime class.
    pub class: TtlClass,
}

impl QueryKey {
    /// The key of `endpoint` for `app` with `filter` (and a timeline's `interval`), at `now`.
    pub fn new(
        endpoint: &str,
        app: Uuid,
        filter: &Filter,
        interval: Option<&str>,
        now: DateTime<Utc>,
        freshness: Duration,
    ) -> QueryKey {
        let (mut start, mut end) = (filter.range.start.timestamp_millis(), filter.range.end.timestamp_millis());
        let step = i64::try_from(freshness.as_millis()).unwrap_or(i64::MAX).max(1);
        let now_ms = now.timestamp_millis();
        if end <= now_ms && end > now_ms - step {
            let shift = end - end.div_euclid(step) * step;
            start -= shift;
            end -= shift;
        }
        let class = if end + step >= now_ms { TtlClass::Recent } else { TtlClass::Closed };
        let text = format!(
            "{endpoint}|{}|{start}|{end}|{}|{}",
            filter.event_type.as_deref().map(escape).unwrap_or_default(),
            interval.unwrap_or("-"),
            filter.tz.name(),
        );
        QueryKey { app, text, class }
    }

    /// The key of one user's activity in `app` (all time, so always [`TtlClass::Recent`]).
    pub fn user(app: Uuid, user_id: &str) -> QueryKey {
        QueryKey { app, text: format!("user|{}", escape(user_id)), class: TtlClass::Recent }
    }

    /// The in-process key: the app's local generation is part of it, so a bump makes old entries
    /// unreachable at once.
    pub fn l1_key(&self, local_gen: u64) -> String {
        format!("{}:{local_gen}:{}", self.app, self.text)
    }

    /// The Redis key under generation `gen` (an opaque string read from Redis).
    pub fn l2_key(&self, prefix: &str, gen: &str) -> String {
        format!("{prefix}{KEY_VERSION}:{}:{gen}:{}", self.app, self.text)
    }
}

/// Event types may contain the separator; percent-encode it (and `%` itself).
fn escape(s: &str) -> String {
    s.replace('%', "%25").replace('|', "%7C")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::plan::Span;

    fn filter(start: &str, end: &str, ty: Option<&str>) -> Filter {
        Filter {
            range: Span { start: start.parse().unwrap(), end: end.parse().unwrap() },
            tz: chrono_tz::Tz::UTC,
            event_type: ty.map(str::to_owned),
        }
    }

    #[test]
    fn ranges_ending_now_share_a_key_within_the_freshness_period() {
        let f = Duration::from_secs(5);
        let a = filter("2026-10-27T08:00:01Z", "2026-11-26T08:00:01Z", None);
        let b = filter("2026-10-27T08:00:03Z", "2026-11-26T08:00:03Z", None);
        let ka = QueryKey::new("timeline", Uuid::nil(), &a, Some("day"), a.range.end, f);
        let kb = QueryKey::new("timeline", Uuid::nil(), &b, Some("day"), b.range.end, f);
        assert_eq!(ka, kb);
        assert_eq!(ka.class, TtlClass::Recent);
    }

    #[test]
    fn closed_ranges_are_exact_and_long_lived() {
        let f = filter("2026-10-01T00:00:00Z", "2026-11-01T00:00:00Z", Some("a|b"));
        let k = QueryKey::new(
            "summary",
            Uuid::nil(),
            &f,
            None,
            "2026-11-26T08:00:00Z".parse().unwrap(),
            Duration::from_secs(5),
        );
        assert_eq!(k.class, TtlClass::Closed);
        assert_eq!(k.text, "summary|a%7Cb|1790812800000|1793491200000|-|UTC");
        assert_eq!(k.l2_key("p:", "7"), format!("p:v2:{}:7:{}", Uuid::nil(), k.text));
    }
}
