//! Entry encoding: a cached answer ([`Cached`]) as L1 holds it and as Redis stores it, and the
//! tier ([`Tier`]) a copy came from.

use bytes::Bytes;
use serde_json::Value;

use crate::query::Source;

/// Which tier answered, reported as `meta.cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tier {
    /// The in-process cache.
    L1,
    /// Redis.
    L2,
    /// Neither: computed from the database.
    #[default]
    Miss,
}

impl Tier {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::L1 => "l1",
            Tier::L2 => "l2",
            Tier::Miss => "miss",
        }
    }
}

/// A cached answer: the response's `data`, serialised, and `meta.source`. In Redis it is stored as
/// `{source}\n{data}`.
#[derive(Debug, Clone)]
pub struct Cached {
    /// The response's `data` as JSON text, put into the response as is.
    pub data: Bytes,
    /// `meta.source`.
    pub source: Source,
    /// Where this copy came from when it entered L1.
    pub(super) origin: Tier,
}

impl Cached {
    /// A freshly computed answer: `data` serialised once, here, so hits only copy bytes.
    pub(super) fn computed(data: &Value, source: Source) -> Cached {
        // Serialising a `Value` cannot fail (its keys are strings).
        let data = Bytes::from(serde_json::to_vec(data).unwrap_or_else(|_| b"null".to_vec()));
        Cached { data, source, origin: Tier::Miss }
    }

    /// The Redis form.
    pub(super) fn encode(&self) -> Vec<u8> {
        let source = self.source.as_str().as_bytes();
        let mut out = Vec::with_capacity(source.len() + 1 + self.data.len());
        out.extend_from_slice(source);
        out.push(b'\n');
        out.extend_from_slice(&self.data);
        out
    }

    /// From the Redis form (the data is shared, not copied); None when malformed.
    pub(super) fn decode(stored: Bytes, origin: Tier) -> Option<Cached> {
        let cut = stored.iter().take(16).position(|&b| b == b'\n')?;
        let source = match &stored[..cut] {
            b"rollup" => Source::Rollup,
            b"raw" => Source::Raw,
            b"mixed" => Source::Mixed,
            _ => return None,
        };
        let data = stored.slice(cut + 1..);
        if data.is_empty() {
            return None;
        }
        Some(Cached { data, source, origin })
    }

    /// The L1 weight: the bytes it holds, plus a little for the entry itself.
    pub(super) fn weight(&self) -> u32 {
        u32::try_from(self.data.len() + 64).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_computed_answer_holds_its_data_serialised_once() {
        let c = Cached::computed(&json!([{"bucket": "2026-01-01", "count": 2}]), Source::Rollup);

        assert_eq!(&c.data[..], br#"[{"bucket":"2026-01-01","count":2}]"#);
        assert_eq!((c.source, c.origin), (Source::Rollup, Tier::Miss));
        assert_eq!(c.weight(), 64 + 35);
    }

    #[test]
    fn the_redis_form_round_trips_and_malformed_values_are_misses() {
        let c = Cached { data: Bytes::from_static(br#"[{"a":1}]"#), source: Source::Mixed, origin: Tier::Miss };
        let stored = Bytes::from(c.encode());
        assert_eq!(&stored[..], &b"mixed\n[{\"a\":1}]"[..]);
        let back = Cached::decode(stored, Tier::L2).unwrap();
        assert_eq!((&back.data[..], back.source, back.origin), (&c.data[..], Source::Mixed, Tier::L2));
        for bad in [&b"mixed"[..], b"mixed\n", b"sideways\n[]", b"{\"data\":[],\"source\":\"raw\"}"] {
            assert!(Cached::decode(Bytes::copy_from_slice(bad), Tier::L2).is_none(), "{bad:?}");
        }
    }
}
