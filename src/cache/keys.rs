//! Cache keys: one versioned format built from the normalised query (never from the raw query
//! string), and the TTL class of the answer.
//!
//! A key's text is `{endpoint}|{event type}|{start}|{end}|{interval}|{tz}`; the app and its
//! generation are added by the tiers ([`QueryKey::l1_key`], [`QueryKey::l2_key`]). Ranges that end
//! "now" (the defaults) would give a new key every request, so ranges ending within the last
//! freshness period are rounded down to a multiple of it: two such requests share an answer whose
//! end differs by less than the freshness bound.
//!
//! A user's activity is personal data: its key holds no user id but `user|{HMAC}`, a keyed hash of
//! the app and the id ([`UserKeySecret`], derived from the server's key secret), and it is
//! [`QueryKey::personal`]: one erasable copy per app and user ([`super::l2`]), never in L1 beside Redis.

use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

use crate::query::params::Filter;

/// Version of the key format and of the stored answer; bump it when either changes.
pub const KEY_VERSION: &str = "v3";

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
    /// The answer holds one end user's personal data (see [`QueryKey::user`]).
    pub personal: bool,
}

/// The key of the keyed hash naming users in cache keys: HMAC-SHA256 of a fixed label under the
/// server's API-key secret (`STRATA_KEY_SECRET`, shared by every instance), so the hashes differ
/// between deployments and cannot be recomputed from a user id without that secret.
#[derive(Clone)]
pub struct UserKeySecret([u8; 32]);

impl UserKeySecret {
    /// Derives it from the server's key secret.
    pub fn derive(key_secret: &[u8]) -> UserKeySecret {
        let mut mac = Hmac::<Sha256>::new_from_slice(key_secret).expect("HMAC takes keys of any length");
        mac.update(b"strata cache user id v1");
        UserKeySecret(mac.finalize().into_bytes().into())
    }

    /// The hash of `user_id` in `app` (hex): different apps give unrelated hashes.
    fn hash(&self, app: Uuid, user_id: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(app.as_bytes());
        mac.update(user_id.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }
}

impl std::fmt::Debug for UserKeySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UserKeySecret(..)")
    }
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
        QueryKey { app, text, class, personal: false }
    }

    /// The key of one user's activity in `app` (all time, so always [`TtlClass::Recent`]): named by
    /// the keyed hash of the id, never the id itself.
    pub fn user(app: Uuid, user_id: &str, secret: &UserKeySecret) -> QueryKey {
        QueryKey { app, text: format!("user|{}", secret.hash(app, user_id)), class: TtlClass::Recent, personal: true }
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

    /// The Redis key of a personal answer: one per app and user, whatever the generation (which is
    /// stored in the value), so an erasure can delete it.
    pub fn personal_l2_key(&self, prefix: &str) -> String {
        format!("{prefix}{KEY_VERSION}:{}:{}", self.app, self.text)
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
        assert_eq!(k.l2_key("p:", "7"), format!("p:v3:{}:7:{}", Uuid::nil(), k.text));
    }

    #[test]
    fn user_keys_hold_a_keyed_hash_per_app_never_the_id() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let secret = UserKeySecret::derive(b"secret");
        let k = QueryKey::user(a, "alice@example.com", &secret);
        assert!(k.personal);
        assert_eq!(k.text.len(), "user|".len() + 64);
        assert!(!k.personal_l2_key("p:").contains("alice"));
        assert_eq!(k, QueryKey::user(a, "alice@example.com", &secret));
        assert_ne!(k.text, QueryKey::user(b, "alice@example.com", &secret).text);
        assert_ne!(k.text, QueryKey::user(a, "alice@example.com", &UserKeySecret::derive(b"other")).text);
        assert_eq!(k.personal_l2_key("p:"), format!("p:v3:{a}:{}", k.text));
    }
}
