//! Ingestion bodies read without a JSON tree of the whole body. The top level and each event are
//! walked as maps: the fields Strata reads are kept as raw slices of the body, every other field is
//! skipped without allocating, and the `events` array is kept as at most `max` raw slices (the rest
//! only counted). One event at a time then becomes a small `Value` of its known fields, with
//! `metadata` parsed only when its text is within [`METADATA_TEXT_SLACK`] times its limit.
//!
//! Why: a generic `Value` tree costs 30 to 50 times the bytes of a body of tiny values (`[],[],...`),
//! so a 5 MiB body (a few KB gzipped) became over 100 MB of heap. Read this way, a body costs about
//! its own size, whatever its shape.

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::event::EventError;

/// The event fields [`super::event::parse_event`] reads, in both spellings; anything else in an
/// event is skipped unread.
pub const EVENT_FIELDS: [&str; 21] = [
    "eventType",
    "event_type",
    "userId",
    "user_id",
    "sessionId",
    "session_id",
    "url",
    "referrer",
    "screenWidth",
    "screen_width",
    "screenHeight",
    "screen_height",
    "metadata",
    "properties",
    "eventId",
    "event_id",
    "userAgent",
    "user_agent",
    "timestamp",
    "sentAt",
    "sent_at",
];

/// Metadata text as sent may be this many times its limit (whitespace, escapes) before it is refused
/// unparsed; within it, the limit applies to the compact serialisation as before.
pub const METADATA_TEXT_SLACK: usize = 4;

/// Why a body could not be read as a JSON object.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyError {
    /// Not JSON at all (the parser's message).
    Invalid(String),
    /// JSON, but not an object.
    NotAnObject,
}

/// A batch body: its `events` (at most `max` kept) and its batch-level `sentAt`.
#[derive(Debug)]
pub struct Batch<'a> {
    /// The `events` field, when present and an array: the first `max` elements and the total count.
    pub events: Option<(Vec<&'a RawValue>, usize)>,
    /// `events` was present but not an array.
    pub events_not_array: bool,
    /// `sentAt` (else `sent_at`), unless null.
    pub sent_at: Option<Value>,
}

/// Reads a batch body; the events are left raw for [`event_value`].
pub fn read_batch(body: &[u8], max: usize) -> Result<Batch<'_>, BodyError> {
    let fields = pick(body, &["events", "sentAt", "sent_at"])?;
    let (events, events_not_array) = match fields[0] {
        Some(raw) if raw.get().starts_with('[') => (Some(elements(raw, max).map_err(invalid)?), false),
        Some(raw) => (None, raw.get() != "null"),
        None => (None, false),
    };
    let sent_at = fields[1].or(fields[2]).map(scalar).filter(|v| !v.is_null());
    Ok(Batch { events, events_not_array, sent_at })
}

/// One event's known fields, raw (in [`EVENT_FIELDS`] order).
pub struct EventFields<'a>(Vec<Option<&'a RawValue>>);

/// Reads the known fields of the event object `raw`.
pub fn event_fields(raw: &[u8]) -> Result<EventFields<'_>, BodyError> {
    pick(raw, &EVENT_FIELDS).map(EventFields)
}

/// The known fields of one event as a small object (values of other shapes than the field can take
/// stand in as empty arrays or objects: the checks look only at their type).
pub fn event_value(raw: &[u8], metadata_max_bytes: usize) -> Result<Value, EventError> {
    match event_fields(raw) {
        Ok(fields) => fields.into_value(metadata_max_bytes),
        Err(BodyError::NotAnObject) => Err(EventError::new("invalid_event", "each event must be a JSON object")),
        Err(BodyError::Invalid(e)) => Err(EventError::new("invalid_event", format!("invalid JSON: {e}"))),
    }
}

impl EventFields<'_> {
    /// The fields as an object for [`super::event::parse_event`].
    pub fn into_value(self, metadata_max_bytes: usize) -> Result<Value, EventError> {
        let mut map = Map::new();
        for (name, raw) in EVENT_FIELDS.iter().zip(self.0) {
            let Some(raw) = raw else { continue };
            let value = if matches!(*name, "metadata" | "properties") && raw.get().starts_with('{') {
                metadata(raw.get(), metadata_max_bytes)?
            } else {
                scalar(raw)
            };
            map.insert((*name).to_string(), value);
        }
        Ok(Value::Object(map))
    }
}

/// The string value of a top-level `apiKey` found in `prefix` (the first bytes of a body), if the
/// prefix holds all of it. Fields before it are skipped unread; whatever follows it is not read.
pub fn find_api_key(prefix: &[u8]) -> Option<String> {
    let mut found = None;
    let mut de = serde_json::Deserializer::from_slice(prefix);
    // The search stops at the key, so the parser then reports the object as unfinished: that
    // error is expected, and `found` says what was seen before it.
    let _ = de.deserialize_map(KeyFinder(&mut found));
    found
}

fn invalid(e: serde_json::Error) -> BodyError {
    BodyError::Invalid(e.to_string())
}

/// The values of `names` in the JSON object `body` (the last one when a key repeats).
fn pick<'a>(body: &'a [u8], names: &[&'static str]) -> Result<Vec<Option<&'a RawValue>>, BodyError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        // Only a well-formed non-object is "not an object"; skipping it costs no allocation.
        return match serde_json::from_slice::<IgnoredAny>(body) {
            Ok(_) => Err(BodyError::NotAnObject),
            Err(e) => Err(invalid(e)),
        };
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let fields = de.deserialize_map(Pick(names)).map_err(invalid)?;
    de.end().map_err(invalid)?;
    Ok(fields)
}

/// The first `max` elements of the JSON array `raw`, and how many it has.
fn elements(raw: &RawValue, max: usize) -> Result<(Vec<&RawValue>, usize), serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(raw.get());
    de.deserialize_seq(Elements(max))
}

/// A value the checks read only for its type and scalar content.
fn scalar(raw: &RawValue) -> Value {
    match raw.get().as_bytes().first() {
        Some(b'[') => Value::Array(Vec::new()),
        Some(b'{') => Value::Object(Map::new()),
        // A validated scalar parses; a number out of `f64` range is the one exception.
        _ => serde_json::from_str(raw.get()).unwrap_or_else(|_| Value::Array(Vec::new())),
    }
}

fn metadata(text: &str, max_bytes: usize) -> Result<Value, EventError> {
    let bound = max_bytes.saturating_mul(METADATA_TEXT_SLACK);
    if text.len() > bound {
        return Err(EventError::new(
            "metadata_too_large",
            format!(
                "metadata is {} bytes as sent, more than {METADATA_TEXT_SLACK} times the {max_bytes}-byte limit",
                text.len()
            ),
        ));
    }
    serde_json::from_str(text).map_err(|e| EventError::new("invalid_metadata", format!("metadata: {e}")))
}

/// Finds a field name among `names` without allocating it.
struct KeyIndex<'n>(&'n [&'static str]);

impl<'de> DeserializeSeed<'de> for KeyIndex<'_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIndex<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E>(self, v: &str) -> Result<Option<usize>, E> {
        Ok(self.0.iter().position(|n| *n == v))
    }
}

/// An object's fields among `names`, raw; other fields skipped.
struct Pick<'n>(&'n [&'static str]);

impl<'de> Visitor<'de> for Pick<'_> {
    type Value = Vec<Option<&'de RawValue>>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = vec![None; self.0.len()];
        while let Some(index) = map.next_key_seed(KeyIndex(self.0))? {
            match index {
                Some(i) => found[i] = Some(map.next_value::<&'de RawValue>()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(found)
    }
}

/// An array's first `max` elements, raw, and its length.
struct Elements(usize);

impl<'de> Visitor<'de> for Elements {
    type Value = (Vec<&'de RawValue>, usize);

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut kept = Vec::new();
        let mut total = 0;
        loop {
            let more = if total < self.0 {
                seq.next_element::<&'de RawValue>()?.map(|v| kept.push(v)).is_some()
            } else {
                seq.next_element::<IgnoredAny>()?.is_some()
            };
            if !more {
                return Ok((kept, total));
            }
            total += 1;
        }
    }
}

/// Stops at a top-level `apiKey` and keeps its string value.
struct KeyFinder<'s>(&'s mut Option<String>);

impl<'de> Visitor<'de> for KeyFinder<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(index) = map.next_key_seed(KeyIndex(&["apiKey"]))? {
            if index.is_some() {
                *self.0 = map.next_value::<Option<String>>()?;
                return Ok(());
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
