//! Analytics request parameters, validated once at the boundary into a [`Filter`] (half-open UTC
//! range, time zone, optional event type) and, for timelines, a [`TimelineRequest`] with its bucket
//! starts. Every failure is a [`ParamError`] naming the parameter.
//!
//! Dates: `YYYY-MM-DD` is read in `tz` (`startDate` from that day's first instant, `endDate` through
//! that whole day); an RFC 3339 instant is used as is (`endDate` exclusive). Names follow the
//! original API in camelCase; the snake_case spellings of its docs are accepted too.
//!
//! A range whose start is after its end is refused (400 naming `startDate`), however small the
//! difference: with an instant `endDate`, a start later than it (by one millisecond too); with a
//! date `endDate`, a start on a later day, i.e. at or after the next day's first instant (the
//! exclusive end it is read as). Equal values are a range: two equal dates are that one day, two
//! equal instants an empty range.

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use chrono_tz::Tz;

use super::buckets::{bucket_starts, local_start, Granularity};
use super::plan::Span;

/// Range used when neither `startDate` nor `endDate` is given (timeline, summary).
pub const DEFAULT_RANGE_DAYS: i64 = 30;
/// Longest event type (as ingestion accepts).
pub const EVENT_TYPE_MAX_CHARS: usize = 128;
/// Longest user id (as ingestion accepts).
pub const USER_ID_MAX_CHARS: usize = 256;
/// Instants a range may span: beyond them nothing can be stored, and chrono and PostgreSQL agree.
const EARLIEST_SECS: i64 = 0; // 1970-01-01T00:00:00Z
const LATEST_SECS: i64 = 32_503_680_000; // 3000-01-01T00:00:00Z

/// A parameter that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ParamError {
    /// The parameter's (camelCase) name.
    pub parameter: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl ParamError {
    fn new(parameter: &'static str, message: impl Into<String>) -> ParamError {
        ParamError { parameter, message: message.into() }
    }
}

/// The query string's pairs.
#[derive(Debug, Clone, Default)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// From decoded pairs, in order.
    pub fn new(pairs: Vec<(String, String)>) -> Params {
        Params { pairs }
    }

    /// The value of `name` (or its other spelling `alias`). Empty values count as absent (the original
    /// ignored them); a parameter given twice is an error.
    pub fn get(&self, name: &'static str, alias: &'static str) -> Result<Option<&str>, ParamError> {
        let mut found = None;
        for (k, v) in &self.pairs {
            if (k == name || k == alias) && !v.is_empty() {
                if found.is_some() {
                    return Err(ParamError::new(name, format!("{name} is given more than once")));
                }
                found = Some(v.as_str());
            }
        }
        Ok(found)
    }

    /// Like [`Params::get`], absent being an error.
    pub fn required(&self, name: &'static str, alias: &'static str) -> Result<&str, ParamError> {
        self.get(name, alias)?.ok_or_else(|| ParamError::new(name, format!("{name} is required")))
    }
}

/// What a missing `startDate`/`endDate` means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeDefault {
    /// The last [`DEFAULT_RANGE_DAYS`] days up to now.
    LastDays,
    /// Everything (the app overview, which the original answered all-time).
    AllTime,
}

/// The filters shared by the analytics endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    /// Half-open range of event times.
    pub range: Span,
    /// Zone of date parameters and buckets.
    pub tz: Tz,
    /// Only this event type, if given.
    pub event_type: Option<String>,
}

impl Filter {
    /// Reads `tz`, `eventType`, `startDate` and `endDate`.
    pub fn parse(p: &Params, now: DateTime<Utc>, default: RangeDefault) -> Result<Filter, ParamError> {
        let tz = parse_tz(p.get("tz", "timezone")?)?;
        let event_type = p.get("eventType", "event_type")?.map(str::to_owned);
        if event_type.as_ref().is_some_and(|t| t.chars().count() > EVENT_TYPE_MAX_CHARS) {
            return Err(ParamError::new(
                "eventType",
                format!("eventType is longer than {EVENT_TYPE_MAX_CHARS} characters"),
            ));
        }
        if event_type.as_ref().is_some_and(|t| t.contains('\0')) {
            return Err(ParamError::new("eventType", "eventType must not contain NUL characters"));
        }
        let start = p.get("startDate", "start_date")?.map(|v| parse_bound("startDate", v, tz, false)).transpose()?;
        let end_value = p.get("endDate", "end_date")?;
        let end = end_value.map(|v| parse_bound("endDate", v, tz, true)).transpose()?;
        // A date end stands for its whole day: a start at its exclusive end lies on a later day.
        let end_is_date = end_value.is_some_and(|v| v.len() == 10);
        let (earliest, latest) = (instant(EARLIEST_SECS), instant(LATEST_SECS));
        let range = match (default, start, end) {
            (_, Some(s), Some(e)) => Span { start: s, end: e },
            (RangeDefault::LastDays, s, e) => {
                let end = e.unwrap_or(now);
                Span { start: s.unwrap_or(end - TimeDelta::days(DEFAULT_RANGE_DAYS)).max(earliest), end }
            }
            (RangeDefault::AllTime, s, e) => Span { start: s.unwrap_or(earliest), end: e.unwrap_or(latest) },
        };
        if range.start > range.end || (end_is_date && range.start == range.end) {
            return Err(ParamError::new("startDate", "startDate is after endDate"));
        }
        Ok(Filter { range, tz, event_type })
    }
}

fn instant(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).expect("constant in range")
}

/// An IANA zone name (exact spelling, e.g. `Europe/Berlin`); absent means UTC.
pub fn parse_tz(v: Option<&str>) -> Result<Tz, ParamError> {
    match v {
        None => Ok(Tz::UTC),
        Some(name) => name
            .parse::<Tz>()
            .map_err(|_| ParamError::new("tz", "tz must be an IANA time zone name such as Europe/Berlin")),
    }
}

/// `YYYY-MM-DD`, digits exactly so (without the cost of a format string parsed on every call).
pub fn parse_date(v: &str) -> Option<NaiveDate> {
    let b = v.as_bytes();
    let digits = |r: std::ops::Range<usize>| -> Option<u32> {
        b.get(r)?.iter().try_fold(0u32, |n, &c| c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0')))
    };
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    NaiveDate::from_ymd_opt(digits(0..4)? as i32, digits(5..7)?, digits(8..10)?)
}

/// A date (read in `tz`; an end date includes its whole day) or an RFC 3339 instant.
fn parse_bound(name: &'static str, v: &str, tz: Tz, is_end: bool) -> Result<DateTime<Utc>, ParamError> {
    let invalid = || ParamError::new(name, format!("{name} must be a date (YYYY-MM-DD) or an RFC 3339 instant"));
    let t = if v.len() == 10 {
        let day = parse_date(v).ok_or_else(invalid)?;
        let day = if is_end { day.succ_opt().ok_or_else(invalid)? } else { day };
        local_start(tz, day.and_hms_opt(0, 0, 0).expect("midnight"))
    } else {
        DateTime::parse_from_rfc3339(v).map_err(|_| invalid())?.with_timezone(&Utc)
    };
    if t < instant(EARLIEST_SECS) || t > instant(LATEST_SECS) {
        return Err(ParamError::new(name, format!("{name} must lie between 1970 and 3000")));
    }
    Ok(t)
}

/// A timeline request: filters, bucket width and the bucket starts.
#[derive(Debug, Clone, PartialEq)]
pub struct TimelineRequest {
    /// Filters.
    pub filter: Filter,
    /// Bucket width (`interval`, or `granularity` as the original's docs spelled it; default day).
    pub granularity: Granularity,
    /// Most buckets allowed (`STRATA_MAX_BUCKETS`).
    pub max_buckets: usize,
}

impl TimelineRequest {
    /// Reads the filters and `interval`. The buckets are laid out by [`TimelineRequest::buckets`], only
    /// when an answer is computed (a cache hit needs none of the time-zone arithmetic).
    pub fn parse(p: &Params, now: DateTime<Utc>, max_buckets: usize) -> Result<TimelineRequest, ParamError> {
        let filter = Filter::parse(p, now, RangeDefault::LastDays)?;
        let granularity = match p.get("interval", "granularity")? {
            None => Granularity::Day,
            Some(v) => Granularity::parse(v)
                .ok_or_else(|| ParamError::new("interval", "interval must be hour, day, week or month"))?,
        };
        Ok(TimelineRequest { filter, granularity, max_buckets })
    }

    /// Bucket starts, in order (see [`bucket_starts`]): at most `max_buckets`, else an error naming
    /// `interval`.
    pub fn buckets(&self) -> Result<Vec<DateTime<Utc>>, ParamError> {
        let (filter, granularity) = (&self.filter, self.granularity);
        bucket_starts(filter.range, filter.tz, granularity, self.max_buckets).map_err(|e| {
            ParamError::new("interval", format!("the range holds more than {} {} buckets", e.cap, granularity.as_str()))
        })
    }
}

/// A user id from the path: at most [`USER_ID_MAX_CHARS`], as ingestion stores them.
pub fn parse_user_id(v: &str) -> Result<&str, ParamError> {
    if v.is_empty() || v.chars().count() > USER_ID_MAX_CHARS {
        return Err(ParamError::new("userId", format!("userId must have 1 to {USER_ID_MAX_CHARS} characters")));
    }
    if v.contains('\0') {
        return Err(ParamError::new("userId", "userId must not contain NUL characters"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_exactly_yyyy_mm_dd_and_real() {
        let d = |y, m, day| NaiveDate::from_ymd_opt(y, m, day);
        assert_eq!(parse_date("2024-02-29"), d(2024, 2, 29));
        assert_eq!(parse_date("0001-01-01"), d(1, 1, 1));
        for bad in
            ["2023-02-29", "2024-13-01", "2024-00-10", "2024-1-011", "2024/01/01", "2024-01-1x", "+024-01-01", ""]
        {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn nul_characters_are_refused_where_postgresql_text_cannot_hold_them() {
        let p = Params::new(vec![("eventType".into(), "a\0b".into())]);
        let e = Filter::parse(&p, Utc::now(), RangeDefault::LastDays).unwrap_err();
        assert_eq!((e.parameter, e.message.as_str()), ("eventType", "eventType must not contain NUL characters"));
        let e = parse_user_id("u\0").unwrap_err();
        assert_eq!((e.parameter, e.message.as_str()), ("userId", "userId must not contain NUL characters"));
    }

    fn params(q: &[(&str, &str)]) -> Params {
        Params::new(q.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    fn now() -> DateTime<Utc> {
        "2026-11-26T08:00:00Z".parse().unwrap()
    }

    #[test]
    fn an_end_date_includes_its_whole_day_in_the_zone() {
        let p = params(&[("startDate", "2026-11-01"), ("endDate", "2026-11-01"), ("tz", "Asia/Kolkata")]);
        let f = Filter::parse(&p, now(), RangeDefault::LastDays).unwrap();
        assert_eq!(f.range.start, "2026-10-31T18:30:00Z".parse::<DateTime<Utc>>().unwrap());
        assert_eq!(f.range.end, "2026-11-01T18:30:00Z".parse::<DateTime<Utc>>().unwrap());
    }

    #[test]
    fn a_start_after_the_end_is_refused_however_small_the_difference() {
        let range = |s: &str, e: &str| {
            Filter::parse(&params(&[("startDate", s), ("endDate", e)]), now(), RangeDefault::LastDays)
        };
        for (s, e) in [
            ("2026-11-02", "2026-11-01"),
            ("2026-11-01T00:00:00.001Z", "2026-11-01T00:00:00Z"),
            ("2026-11-02T00:00:00Z", "2026-11-01"),
            ("2026-11-02", "2026-11-01T23:59:59.999Z"),
        ] {
            assert_eq!(range(s, e).unwrap_err().parameter, "startDate", "{s} .. {e}");
        }
        let ok = |s: &str, e: &str| range(s, e).unwrap().range;
        let at = |t: &str| t.parse::<DateTime<Utc>>().unwrap();
        let day = ok("2026-11-01", "2026-11-01");
        assert_eq!((day.start, day.end), (at("2026-11-01T00:00:00Z"), at("2026-11-02T00:00:00Z")));
        let empty = ok("2026-11-01T10:00:00Z", "2026-11-01T10:00:00Z");
        assert_eq!((empty.start, empty.end), (at("2026-11-01T10:00:00Z"), at("2026-11-01T10:00:00Z")));
        let late_start = ok("2026-11-01T23:59:59.999Z", "2026-11-01");
        assert_eq!((late_start.start, late_start.end), (at("2026-11-01T23:59:59.999Z"), at("2026-11-02T00:00:00Z")));
    }

    #[test]
    fn missing_dates_mean_the_last_30_days_or_all_time() {
        let f = Filter::parse(&params(&[]), now(), RangeDefault::LastDays).unwrap();
        assert_eq!((f.range.start, f.range.end), (now() - TimeDelta::days(30), now()));
        let f = Filter::parse(&params(&[]), now(), RangeDefault::AllTime).unwrap();
        assert_eq!((f.range.start, f.range.end), (instant(EARLIEST_SECS), instant(LATEST_SECS)));
    }

    #[test]
    fn bad_parameters_are_named() {
        let cases: [(&[(&str, &str)], &str); 7] = [
            (&[("tz", "Mars/Olympus")], "tz"),
            (&[("interval", "fortnight")], "interval"),
            (&[("startDate", "2026-11-02"), ("endDate", "2026-11-01T00:00:00Z")], "startDate"),
            (&[("startDate", "yesterday")], "startDate"),
            (&[("endDate", "2026-13-01")], "endDate"),
            (&[("startDate", "2016-01-01"), ("endDate", "2026-01-01"), ("interval", "hour")], "interval"),
            (&[("eventType", "a"), ("event_type", "b")], "eventType"),
        ];
        for (q, name) in cases {
            let err = TimelineRequest::parse(&params(q), now(), crate::config::MAX_BUCKETS)
                .and_then(|r| r.buckets())
                .unwrap_err();
            assert_eq!(err.parameter, name, "{q:?}");
        }
        assert_eq!(params(&[("appId", "")]).required("appId", "app_id").unwrap_err().parameter, "appId");
    }
}
