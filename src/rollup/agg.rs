//! What one rollup row says, [`Agg`]: an event count, distinct-count [`Sketch`]es of users and
//! sessions, and device / browser / os breakdowns; the sum of several rows is one too. Stored in the
//! `events, users, sessions, dims` columns of `rollup_tiers`.

use std::collections::HashMap;

use tokio_postgres::Row;

use super::sketch::{CorruptSketch, Sketch};

/// Breakdown dimensions, in the order of [`Agg::dims`].
pub const DIMS: [&str; 3] = ["device", "browser", "os"];

/// Counts by dimension value ("" = unknown), per dimension of [`DIMS`].
pub type Dims = [HashMap<String, i64>; 3];

/// What one rollup row, or a sum of rows, says.
#[derive(Debug, Clone, Default)]
pub struct Agg {
    /// Events.
    pub events: i64,
    /// Distinct users.
    pub users: Sketch,
    /// Distinct sessions.
    pub sessions: Sketch,
    /// Breakdowns.
    pub dims: Dims,
}

impl Agg {
    /// Adds another aggregate.
    pub fn absorb(&mut self, other: &Agg) {
        self.events += other.events;
        self.users.merge(&other.users);
        self.sessions.merge(&other.sessions);
        for (mine, theirs) in self.dims.iter_mut().zip(&other.dims) {
            for (value, n) in theirs {
                *mine.entry(value.clone()).or_default() += n;
            }
        }
    }

    /// Adds a stored row's `events, users, sessions, dims` columns, the first at index `at`.
    pub fn absorb_columns(&mut self, row: &Row, at: usize) -> Result<(), CorruptSketch> {
        let dims: serde_json::Value = row.get(at + 3);
        self.absorb_encoded(row.get(at), row.get(at + 1), row.get(at + 2), &dims)
    }

    /// Adds the encoded columns of a stored row.
    fn absorb_encoded(
        &mut self,
        events: i64,
        users: &[u8],
        sessions: &[u8],
        dims: &serde_json::Value,
    ) -> Result<(), CorruptSketch> {
        self.events += events;
        self.users.merge_encoded(users)?;
        self.sessions.merge_encoded(sessions)?;
        if let serde_json::Value::Object(map) = dims {
            for (d, name) in DIMS.iter().enumerate() {
                if let Some(serde_json::Value::Object(values)) = map.get(*name) {
                    for (value, n) in values {
                        *self.dims[d].entry(value.clone()).or_default() += n.as_i64().unwrap_or(0);
                    }
                }
            }
        }
        Ok(())
    }

    /// The stored form of the breakdowns (the `dims` column).
    pub(super) fn dims_json(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for (d, name) in DIMS.iter().enumerate() {
            if !self.dims[d].is_empty() {
                let values: serde_json::Map<String, serde_json::Value> =
                    self.dims[d].iter().map(|(v, n)| (v.clone(), (*n).into())).collect();
                out.insert((*name).to_owned(), values.into());
            }
        }
        out.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breakdowns_round_trip_through_json() {
        let mut a = Agg::default();
        a.dims[0].insert("desktop".into(), 3);
        a.dims[2].insert(String::new(), 2);
        let json = a.dims_json();
        assert_eq!(json, serde_json::json!({"device": {"desktop": 3}, "os": {"": 2}}));
        let mut b = Agg::default();
        b.absorb_encoded(5, &[], &[], &json).unwrap();
        assert_eq!(b.events, 5);
        assert_eq!(b.dims, a.dims);
    }
}
