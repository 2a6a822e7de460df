//! The planner: which parts of a requested range the rollup tables answer and which need raw rows.
//!
//! Rollups count whole UTC slots (an hour, or a quarter hour where a month has quarter-hour rows). A
//! slot may be read from them when it lies inside the range, inside a month listed complete in
//! `rollup_months`, and no bucket boundary falls inside it. Everything else (the sub-slot edges at the
//! range's start and end, months whose rollups are not trusted, slots split by an unaligned bucket
//! boundary) is raw. The planner is pure: [`plan`] takes the complete months and their slots as input.

use chrono::{DateTime, Datelike, Months, NaiveDate, TimeDelta, Utc};

/// A half-open interval of instants `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// First instant inside.
    pub start: DateTime<Utc>,
    /// First instant after.
    pub end: DateTime<Utc>,
}

impl Span {
    /// True when no instant is inside.
    pub fn is_empty(&self) -> bool {
        self.start >= self.end
    }
}

/// Rollup slot widths.
pub const QUARTER_HOUR: TimeDelta = TimeDelta::minutes(15);
/// See [`QUARTER_HOUR`].
pub const HOUR: TimeDelta = TimeDelta::hours(1);

/// The outcome of [`plan`]: disjoint spans, sorted, together exactly the requested range.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Answered by the rollup tables (slot-aligned).
    pub rollup: Vec<Span>,
    /// Answered by raw `events` rows.
    pub raw: Vec<Span>,
}

/// The UTC month starting on `first_day`.
pub fn month_span(first_day: NaiveDate) -> Span {
    let start = first_day.and_hms_opt(0, 0, 0).expect("midnight").and_utc();
    let next = first_day.checked_add_months(Months::new(1)).expect("months within chrono's calendar");
    Span { start, end: next.and_hms_opt(0, 0, 0).expect("midnight").and_utc() }
}

/// The first day of the UTC month holding `t` (as `rollup_months.month` stores it).
pub fn month_of(t: DateTime<Utc>) -> NaiveDate {
    t.date_naive().with_day(1).expect("day 1 exists")
}

/// `t` rounded down to a multiple of `slot` (slots divide the Unix epoch evenly).
pub fn floor(t: DateTime<Utc>, slot: TimeDelta) -> DateTime<Utc> {
    let secs = t.timestamp().div_euclid(slot.num_seconds()) * slot.num_seconds();
    DateTime::from_timestamp(secs, 0).expect("in range")
}

/// `t` rounded up to a multiple of `slot`.
pub fn ceil(t: DateTime<Utc>, slot: TimeDelta) -> DateTime<Utc> {
    let f = floor(t, slot);
    if f == t {
        t
    } else {
        f + slot
    }
}

/// True when `t` is a multiple of `slot`.
pub fn is_aligned(t: DateTime<Utc>, slot: TimeDelta) -> bool {
    floor(t, slot) == t
}

/// Splits `range` into rollup and raw spans. `complete` lists the first days of complete UTC months
/// (any order), each with the slot its rollups count ([`HOUR`] or [`QUARTER_HOUR`]); `cuts` are bucket
/// starts (sorted) that a rollup slot must not straddle.
pub fn plan(range: Span, complete: &[(NaiveDate, TimeDelta)], cuts: &[DateTime<Utc>]) -> Plan {
    if range.is_empty() {
        return Plan::default();
    }
    let mut rollup = Vec::new();
    for (trusted, slot) in trusted_spans(range, complete) {
        let span = Span { start: ceil(trusted.start, slot), end: floor(trusted.end, slot) };
        if span.is_empty() {
            continue;
        }
        let mut cursor = span.start;
        let first = cuts.partition_point(|c| *c <= span.start);
        for &cut in cuts[first..].iter().take_while(|c| **c < span.end) {
            if is_aligned(cut, slot) {
                continue;
            }
            let hole = Span { start: floor(cut, slot), end: ceil(cut, slot) };
            if hole.start > cursor {
                rollup.push(Span { start: cursor, end: hole.start });
            }
            cursor = cursor.max(hole.end);
        }
        if span.end > cursor {
            rollup.push(Span { start: cursor, end: span.end });
        }
    }
    let raw = complement(range, &rollup);
    Plan { rollup, raw }
}

/// The parts of `range` inside complete months with their slot, merged where adjacent months share
/// a slot.
fn trusted_spans(range: Span, complete: &[(NaiveDate, TimeDelta)]) -> Vec<(Span, TimeDelta)> {
    let mut months = complete.to_vec();
    months.sort_unstable();
    months.dedup_by_key(|(m, _)| *m);
    let mut spans: Vec<(Span, TimeDelta)> = Vec::new();
    for (m, slot) in months {
        let s = month_span(m);
        let s = Span { start: s.start.max(range.start), end: s.end.min(range.end) };
        if s.is_empty() {
            continue;
        }
        match spans.last_mut() {
            Some((last, last_slot)) if last.end == s.start && *last_slot == slot => last.end = s.end,
            _ => spans.push((s, slot)),
        }
    }
    spans
}

/// `range` minus the sorted, disjoint `inner` spans (which lie inside it).
fn complement(range: Span, inner: &[Span]) -> Vec<Span> {
    let mut out = Vec::new();
    let mut cursor = range.start;
    for s in inner {
        if s.start > cursor {
            out.push(Span { start: cursor, end: s.start });
        }
        cursor = s.end;
    }
    if range.end > cursor {
        out.push(Span { start: cursor, end: range.end });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn span(a: &str, b: &str) -> Span {
        Span { start: at(a), end: at(b) }
    }

    fn day(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn months(days: &[NaiveDate], slot: TimeDelta) -> Vec<(NaiveDate, TimeDelta)> {
        days.iter().map(|d| (*d, slot)).collect()
    }

    #[test]
    fn whole_slots_of_complete_months_come_from_rollups_and_edges_from_raw() {
        let range = span("2026-10-20T10:07:00Z", "2026-11-03T05:50:00Z");
        let p = plan(range, &months(&[day("2026-10-01"), day("2026-11-01")], QUARTER_HOUR), &[]);
        assert_eq!(p.rollup, [span("2026-10-20T10:15:00Z", "2026-11-03T05:45:00Z")]);
        assert_eq!(
            p.raw,
            [
                span("2026-10-20T10:07:00Z", "2026-10-20T10:15:00Z"),
                span("2026-11-03T05:45:00Z", "2026-11-03T05:50:00Z")
            ]
        );
        let hourly = plan(range, &months(&[day("2026-10-01"), day("2026-11-01")], HOUR), &[]);
        assert_eq!(hourly.rollup, [span("2026-10-20T11:00:00Z", "2026-11-03T05:00:00Z")]);
    }

    #[test]
    fn a_month_missing_from_rollup_months_is_read_raw() {
        let range = span("2026-09-15T00:00:00Z", "2026-11-15T00:00:00Z");
        let p = plan(range, &months(&[day("2026-09-01"), day("2026-11-01")], HOUR), &[]);
        assert_eq!(
            p.rollup,
            [
                span("2026-09-15T00:00:00Z", "2026-10-01T00:00:00Z"),
                span("2026-11-01T00:00:00Z", "2026-11-15T00:00:00Z")
            ]
        );
        assert_eq!(p.raw, [span("2026-10-01T00:00:00Z", "2026-11-01T00:00:00Z")]);
        assert_eq!(plan(range, &months(&[], HOUR), &[]).raw, [range]);
    }

    #[test]
    fn unaligned_bucket_starts_leave_their_slot_to_raw_rows() {
        let range = span("2026-10-01T00:00:00Z", "2026-10-01T03:00:00Z");
        let cuts = [at("2026-10-01T00:00:00Z"), at("2026-10-01T01:20:00Z"), at("2026-10-01T02:30:00Z")];
        let p = plan(range, &months(&[day("2026-10-01")], QUARTER_HOUR), &cuts);
        assert_eq!(
            p.rollup,
            [
                span("2026-10-01T00:00:00Z", "2026-10-01T01:15:00Z"),
                span("2026-10-01T01:30:00Z", "2026-10-01T03:00:00Z")
            ]
        );
        assert_eq!(p.raw, [span("2026-10-01T01:15:00Z", "2026-10-01T01:30:00Z")]);
        let hourly = plan(range, &months(&[day("2026-10-01")], HOUR), &cuts);
        assert_eq!(hourly.raw, [span("2026-10-01T01:00:00Z", "2026-10-01T03:00:00Z")]);
    }

    #[test]
    fn each_month_is_cut_at_its_own_slot() {
        // October has quarter-hour rows, November hourly ones only (held events before they existed).
        let range = span("2026-10-31T20:00:00Z", "2026-11-01T04:00:00Z");
        let cuts = [at("2026-10-31T18:30:00Z"), at("2026-10-31T22:30:00Z"), at("2026-11-01T02:30:00Z")];
        let complete = [(day("2026-11-01"), HOUR), (day("2026-10-01"), QUARTER_HOUR)];
        let p = plan(range, &complete, &cuts);
        assert_eq!(
            p.rollup,
            [
                span("2026-10-31T20:00:00Z", "2026-11-01T00:00:00Z"),
                span("2026-11-01T00:00:00Z", "2026-11-01T02:00:00Z"),
                span("2026-11-01T03:00:00Z", "2026-11-01T04:00:00Z")
            ]
        );
        assert_eq!(p.raw, [span("2026-11-01T02:00:00Z", "2026-11-01T03:00:00Z")]);
    }

    #[test]
    fn an_empty_range_has_an_empty_plan() {
        let t = at("2026-10-01T00:00:00Z");
        assert_eq!(plan(Span { start: t, end: t }, &months(&[day("2026-10-01")], HOUR), &[]), Plan::default());
    }
}
