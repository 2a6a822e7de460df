//! Time buckets in a time zone: [`Granularity`] (hour, day, ISO week, month of the wall clock in the
//! zone) and [`bucket_starts`], the instants where buckets begin over a range.
//!
//! A bucket is the contiguous run of instants whose wall-clock time, truncated to the unit, is the same.
//! Its start is the first instant whose wall-clock time reaches the unit's start: the earlier instant
//! when a fall-back repeats it, the end of the gap when a spring-forward skips it (a zone whose DST
//! starts at midnight begins that day at 01:00). Rust (chrono-tz) alone decides the boundaries; SQL
//! only assigns rows to them (`width_bucket`), so rollup and raw answers agree by construction.

use chrono::{
    DateTime, Datelike, Days, LocalResult, Months, NaiveDate, NaiveDateTime, SecondsFormat, TimeZone, Timelike, Utc,
};
use chrono_tz::Tz;

use super::plan::Span;

/// The bucket width of a timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    /// Wall-clock hours.
    Hour,
    /// Calendar days.
    Day,
    /// ISO weeks, starting on Monday.
    Week,
    /// Calendar months.
    Month,
}

impl Granularity {
    /// `hour`, `day`, `week` or `month` (case-insensitive).
    pub fn parse(s: &str) -> Option<Granularity> {
        match s.to_ascii_lowercase().as_str() {
            "hour" => Some(Granularity::Hour),
            "day" => Some(Granularity::Day),
            "week" => Some(Granularity::Week),
            "month" => Some(Granularity::Month),
            _ => None,
        }
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Hour => "hour",
            Granularity::Day => "day",
            Granularity::Week => "week",
            Granularity::Month => "month",
        }
    }

    /// The start of the unit holding the wall-clock time `local`.
    pub fn truncate(self, local: NaiveDateTime) -> NaiveDateTime {
        let day = local.date();
        match self {
            Granularity::Hour => day.and_hms_opt(local.hour(), 0, 0).expect("valid hour"),
            Granularity::Day => midnight(day),
            Granularity::Week => midnight(day - Days::new(u64::from(day.weekday().num_days_from_monday()))),
            Granularity::Month => midnight(day.with_day(1).expect("day 1 exists")),
        }
    }

    /// The start of the unit after the one starting at `unit`; `None` past chrono's calendar.
    pub fn next(self, unit: NaiveDateTime) -> Option<NaiveDateTime> {
        match self {
            Granularity::Hour => unit.checked_add_signed(chrono::TimeDelta::hours(1)),
            Granularity::Day => unit.checked_add_days(Days::new(1)),
            Granularity::Week => unit.checked_add_days(Days::new(7)),
            Granularity::Month => unit.checked_add_months(Months::new(1)),
        }
    }
}

fn midnight(day: NaiveDate) -> NaiveDateTime {
    day.and_hms_opt(0, 0, 0).expect("midnight exists")
}

/// The first instant whose wall-clock time in `tz` is `local` or later: the earlier of two instants
/// when a fall-back repeats `local`, the end of the gap when a spring-forward skips it.
pub fn local_start(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => t.with_timezone(&Utc),
        LocalResult::Ambiguous(a, b) => a.min(b).with_timezone(&Utc),
        LocalResult::None => end_of_gap(tz, local),
    }
}

/// Offsets stay within ±26 hours, so the instant sought lies within this distance of `local` read as UTC.
const OFFSET_BOUND_SECS: i64 = 27 * 3600;

/// Binary search for the first instant whose wall-clock time is at or after a skipped `local`. The
/// predicate is monotone here: a wall-clock time inside a gap is never repeated by a fall-back.
fn end_of_gap(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    let wall = |secs: i64| {
        let t = DateTime::from_timestamp(secs, 0).expect("in range");
        tz.from_utc_datetime(&t.naive_utc()).naive_local()
    };
    let guess = local.and_utc().timestamp();
    let (mut lo, mut hi) = (guess - OFFSET_BOUND_SECS, guess + OFFSET_BOUND_SECS);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if wall(mid) >= local {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    DateTime::from_timestamp(lo, 0).expect("in range")
}

/// The range holds more buckets than the cap allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the range holds more than {cap} buckets")]
pub struct TooManyBuckets {
    /// The cap.
    pub cap: usize,
}

/// The starts of the buckets of `g` in `tz` that overlap `range`, in order. The first may start before
/// `range.start` (its natural start, e.g. the Monday before); an empty range has no buckets.
pub fn bucket_starts(range: Span, tz: Tz, g: Granularity, cap: usize) -> Result<Vec<DateTime<Utc>>, TooManyBuckets> {
    let mut starts: Vec<DateTime<Utc>> = Vec::new();
    if range.is_empty() {
        return Ok(starts);
    }
    let mut unit = Some(g.truncate(range.start.with_timezone(&tz).naive_local()));
    while let Some(u) = unit {
        let t = local_start(tz, u);
        if t >= range.end {
            break;
        }
        // A unit skipped entirely (a gap longer than it) starts where the next one does: keep one.
        if starts.last().is_none_or(|last| t > *last) {
            if starts.len() == cap {
                return Err(TooManyBuckets { cap });
            }
            starts.push(t);
        }
        unit = g.next(u);
    }
    Ok(starts)
}

/// `t` as RFC 3339 with the zone's offset at that instant (`Z` in UTC).
pub fn label(t: DateTime<Utc>, tz: Tz) -> String {
    t.with_timezone(&tz).to_rfc3339_opts(SecondsFormat::AutoSi, tz == Tz::UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn labels(start: &str, end: &str, tz: Tz, g: Granularity) -> Vec<String> {
        let range = Span { start: at(start), end: at(end) };
        bucket_starts(range, tz, g, 10_000).unwrap().into_iter().map(|t| label(t, tz)).collect()
    }

    #[test]
    fn days_follow_the_zone_across_a_dst_change() {
        let got = labels("2026-03-28T12:00:00Z", "2026-03-30T22:00:00Z", chrono_tz::Europe::Berlin, Granularity::Day);
        assert_eq!(got, ["2026-03-28T00:00:00+01:00", "2026-03-29T00:00:00+01:00", "2026-03-30T00:00:00+02:00"]);
    }

    #[test]
    fn a_repeated_hour_is_one_bucket_and_a_skipped_hour_none() {
        let ny = chrono_tz::America::New_York;
        let fall = labels("2026-11-01T04:00:00Z", "2026-11-01T08:00:00Z", ny, Granularity::Hour);
        assert_eq!(fall, ["2026-11-01T00:00:00-04:00", "2026-11-01T01:00:00-04:00", "2026-11-01T02:00:00-05:00"]);
        let spring = labels("2026-03-08T06:00:00Z", "2026-03-08T08:00:00Z", ny, Granularity::Hour);
        assert_eq!(spring, ["2026-03-08T01:00:00-05:00", "2026-03-08T03:00:00-04:00"]);
    }

    #[test]
    fn half_hour_dst_of_lord_howe_starts_the_skipped_hour_at_the_gap_end() {
        let lh = chrono_tz::Australia::Lord_Howe;
        // 2026-10-04 02:00 +10:30 becomes 02:30 +11:00 (15:30Z).
        let got = labels("2026-10-03T15:00:00Z", "2026-10-03T16:30:00Z", lh, Granularity::Hour);
        assert_eq!(got, ["2026-10-04T01:00:00+10:30", "2026-10-04T02:30:00+11:00", "2026-10-04T03:00:00+11:00"]);
    }

    #[test]
    fn weeks_start_on_monday_and_the_first_bucket_keeps_its_natural_start() {
        let got = labels("2026-11-26T10:00:00Z", "2026-12-08T00:00:00Z", chrono_tz::Asia::Kolkata, Granularity::Week);
        assert_eq!(got, ["2026-11-23T00:00:00+05:30", "2026-11-30T00:00:00+05:30", "2026-12-07T00:00:00+05:30"]);
    }

    #[test]
    fn months_and_caps() {
        let got = labels("2026-01-15T00:00:00Z", "2026-03-01T00:00:00Z", Tz::UTC, Granularity::Month);
        assert_eq!(got, ["2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z"]);
        let range = Span { start: at("2026-01-01T00:00:00Z"), end: at("2026-01-02T00:00:00Z") };
        assert_eq!(bucket_starts(range, Tz::UTC, Granularity::Hour, 23), Err(TooManyBuckets { cap: 23 }));
        assert_eq!(bucket_starts(range, Tz::UTC, Granularity::Hour, 24).unwrap().len(), 24);
        assert!(bucket_starts(Span { start: range.start, end: range.start }, Tz::UTC, Granularity::Day, 1)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_skipped_day_is_not_a_bucket() {
        // Samoa skipped 2011-12-30 entirely.
        let got = labels("2011-12-29T00:00:00Z", "2011-12-31T09:00:00Z", chrono_tz::Pacific::Apia, Granularity::Day);
        assert_eq!(got, ["2011-12-28T00:00:00-10:00", "2011-12-29T00:00:00-10:00", "2011-12-31T00:00:00+14:00"]);
    }
}
