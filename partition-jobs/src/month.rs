//! [`Month`]: a calendar month in UTC, the unit of partitioning.
//!
//! Every partition name and every partition bound in DDL is formatted from a `Month`, so identifiers
//! that must be spliced into SQL are built from two validated integers and nothing else.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Prefix of every managed partition's name: `events_YYYY_MM`.
pub const PARTITION_PREFIX: &str = "events_";

/// Smallest year a partition may be made for (4-digit names, far from chrono's limits).
pub const MIN_YEAR: i32 = 1000;
/// Largest year a partition may be made for.
pub const MAX_YEAR: i32 = 9999;

/// A calendar month in UTC.
///
/// Fields are public for convenience; [`Month::new`] and [`Month::is_valid`] check them. Functions
/// that emit SQL refuse invalid months, and [`Month::start`] / [`Month::end`] panic on them.
/// Serialized as `"YYYY-MM"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    /// Calendar year, e.g. 2026.
    pub year: i32,
    /// Month of the year, 1..=12.
    pub month: u32,
}

impl Month {
    /// A month, if `month` is in 1..=12 and `year` in [`MIN_YEAR`]..=[`MAX_YEAR`].
    pub fn new(year: i32, month: u32) -> Option<Month> {
        let m = Month { year, month };
        m.is_valid().then_some(m)
    }

    /// Whether the fields are in range (see [`Month::new`]).
    pub fn is_valid(self) -> bool {
        (1..=12).contains(&self.month) && (MIN_YEAR..=MAX_YEAR).contains(&self.year)
    }

    /// The month that contains instant `t` (UTC).
    pub fn containing(t: DateTime<Utc>) -> Month {
        Month { year: t.year(), month: t.month() }
    }

    /// The following month.
    pub fn next(self) -> Month {
        self.add_months(1)
    }

    /// The preceding month.
    pub fn prev(self) -> Month {
        self.add_months(-1)
    }

    /// This month moved by `n` months (negative goes back).
    pub fn add_months(self, n: i32) -> Month {
        let index = self.index() + i64::from(n);
        Month { year: index.div_euclid(12) as i32, month: index.rem_euclid(12) as u32 + 1 }
    }

    /// Months from `self` to `other` (positive when `other` is later).
    pub fn months_until(self, other: Month) -> i64 {
        other.index() - self.index()
    }

    /// Every month from `self` to `last`, both included (empty when `last < self`).
    pub fn through(self, last: Month) -> impl Iterator<Item = Month> {
        let count = self.months_until(last) + 1;
        (0..count.max(0)).map(move |i| self.add_months(i as i32))
    }

    /// First instant of the month.
    ///
    /// # Panics
    /// If the month is not valid for chrono (month outside 1..=12).
    pub fn start(self) -> DateTime<Utc> {
        let date = NaiveDate::from_ymd_opt(self.year, self.month, 1).expect("valid month");
        Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0).expect("midnight"))
    }

    /// First instant of the next month (the exclusive upper bound of this month).
    pub fn end(self) -> DateTime<Utc> {
        self.next().start()
    }

    /// First day of the month, as stored in `rollup_months.month`.
    pub fn first_day(self) -> NaiveDate {
        NaiveDate::from_ymd_opt(self.year, self.month, 1).expect("valid month")
    }

    /// The partition's table name, e.g. `events_2026_11`.
    pub fn partition_name(self) -> String {
        format!("{PARTITION_PREFIX}{:04}_{:02}", self.year, self.month)
    }

    /// The month of a managed partition name (`events_YYYY_MM`, exact digits), else `None`.
    pub fn parse_partition_name(name: &str) -> Option<Month> {
        let rest = name.strip_prefix(PARTITION_PREFIX)?;
        let (year, month) = rest.split_once('_')?;
        if year.len() != 4 || month.len() != 2 || !all_digits(year) || !all_digits(month) {
            return None;
        }
        Month::new(year.parse().ok()?, month.parse().ok()?)
    }

    fn index(self) -> i64 {
        i64::from(self.year) * 12 + i64::from(self.month) - 1
    }
}

fn all_digits(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit())
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// The text was not a month in `YYYY-MM` form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a month in YYYY-MM form: {0:?}")]
pub struct ParseMonthError(pub String);

impl FromStr for Month {
    type Err = ParseMonthError;

    fn from_str(s: &str) -> Result<Month, ParseMonthError> {
        let err = || ParseMonthError(s.to_owned());
        let (y, m) = s.split_once('-').ok_or_else(err)?;
        if y.len() != 4 || m.len() != 2 || !all_digits(y) || !all_digits(m) {
            return Err(err());
        }
        Month::new(y.parse().map_err(|_| err())?, m.parse().map_err(|_| err())?).ok_or_else(err)
    }
}

impl Serialize for Month {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Month {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Month, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(year: i32, month: u32) -> Month {
        Month { year, month }
    }

    #[test]
    fn add_months_crosses_year_boundaries_both_ways() {
        assert_eq!(m(2026, 12).next(), m(2027, 1));
        assert_eq!(m(2026, 1).prev(), m(2025, 12));
        assert_eq!(m(2026, 11).add_months(14), m(2028, 1));
        assert_eq!(m(2026, 2).add_months(-26), m(2023, 12));
        assert_eq!(m(2026, 5).add_months(0), m(2026, 5));
    }

    #[test]
    fn containing_uses_utc_and_the_first_instant_belongs_to_the_month() {
        let t = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
        assert_eq!(Month::containing(t), m(2026, 12));
        let before = t - chrono::Duration::nanoseconds(1);
        assert_eq!(Month::containing(before), m(2026, 11));
    }

    #[test]
    fn start_and_end_bound_the_month_including_leap_february() {
        let feb = m(2028, 2);
        assert_eq!(feb.start(), Utc.with_ymd_and_hms(2028, 2, 1, 0, 0, 0).unwrap());
        assert_eq!(feb.end(), Utc.with_ymd_and_hms(2028, 3, 1, 0, 0, 0).unwrap());
        assert_eq!((feb.end() - feb.start()).num_days(), 29);
        assert_eq!((m(2027, 2).end() - m(2027, 2).start()).num_days(), 28);
        assert_eq!((m(2100, 2).end() - m(2100, 2).start()).num_days(), 28);
        assert_eq!((m(2000, 2).end() - m(2000, 2).start()).num_days(), 29);
        assert_eq!(m(2026, 12).end(), Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap());
    }

    #[test]
    fn partition_names_round_trip_and_reject_lookalikes() {
        assert_eq!(m(2026, 11).partition_name(), "events_2026_11");
        assert_eq!(m(2027, 1).partition_name(), "events_2027_01");
        assert_eq!(Month::parse_partition_name("events_2026_11"), Some(m(2026, 11)));
        for bad in [
            "events_2026_13",
            "events_2026_00",
            "events_2026_1",
            "events_26_11",
            "events_2026_11_old",
            "events_default",
            "Events_2026_11",
            "events_+026_11",
            "events_2026-11",
        ] {
            assert_eq!(Month::parse_partition_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn months_serialize_as_year_dash_month() {
        assert_eq!(serde_json::to_string(&m(2026, 3)).unwrap(), "\"2026-03\"");
        assert_eq!(serde_json::from_str::<Month>("\"2026-03\"").unwrap(), m(2026, 3));
        assert!("2026-3".parse::<Month>().is_err());
        assert!("2026-13".parse::<Month>().is_err());
    }

    #[test]
    fn through_lists_inclusive_ranges_and_is_empty_when_reversed() {
        let v: Vec<_> = m(2026, 11).through(m(2027, 2)).collect();
        assert_eq!(v, vec![m(2026, 11), m(2026, 12), m(2027, 1), m(2027, 2)]);
        assert_eq!(m(2026, 11).through(m(2026, 10)).count(), 0);
        assert_eq!(m(2026, 11).months_until(m(2027, 2)), 3);
    }
}
