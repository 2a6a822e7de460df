//! A cached answer and its Redis form.

use bytes::Bytes;

use super::Tier;
use crate::query::Source;

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
    use super::*;

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
