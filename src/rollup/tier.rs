//! The periods rollups are kept for, [`Tier`]: what the `tier` smallint of `rollup_tiers` holds (see
//! `sql/migrations/V4__rollup_tiers.sql` and `V5__quarter_tiers.sql`), and their UTC bounds.

use chrono::{DateTime, Datelike, DurationRound, Months, NaiveDate, TimeDelta, Timelike, Utc};
use postgres_types::{FromSql, IsNull, ToSql, Type};

/// One row kind of `rollup_tiers`, stored as the smallint of [`Tier::code`]. Declared in code order,
/// so sorting by tier sorts as the stored codes do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    /// A writer's delta of one hour (one quarter hour for all types together): 0.
    Delta,
    /// A merged UTC hour: 1.
    Hour,
    /// A merged UTC day: 2.
    Day,
    /// A merged UTC month: 3.
    Month,
    /// A merged UTC quarter hour, of every event type together only (event type ""): 4.
    Quarter,
}

/// A stored tier code that is not one of [`Tier`]'s.
#[derive(Debug, thiserror::Error)]
#[error("unknown rollup tier {0}")]
pub struct UnknownTier(pub i16);

impl Tier {
    /// The smallint stored in `rollup_tiers.tier`.
    pub const fn code(self) -> i16 {
        match self {
            Tier::Delta => 0,
            Tier::Hour => 1,
            Tier::Day => 2,
            Tier::Month => 3,
            Tier::Quarter => 4,
        }
    }

    /// The tier stored as `code`.
    pub const fn from_code(code: i16) -> Result<Tier, UnknownTier> {
        Ok(match code {
            0 => Tier::Delta,
            1 => Tier::Hour,
            2 => Tier::Day,
            3 => Tier::Month,
            4 => Tier::Quarter,
            _ => return Err(UnknownTier(code)),
        })
    }

    /// The start of this tier's period holding `t`.
    pub fn start(self, t: DateTime<Utc>) -> DateTime<Utc> {
        let secs = match self {
            Tier::Quarter => 900,
            Tier::Delta | Tier::Hour => 3600,
            Tier::Day => 86_400,
            Tier::Month => {
                let first = NaiveDate::from_ymd_opt(t.year(), t.month(), 1).expect("day 1 exists");
                return first.and_hms_opt(0, 0, 0).expect("midnight").and_utc();
            }
        };
        DateTime::from_timestamp(t.timestamp().div_euclid(secs) * secs, 0).expect("in range")
    }

    /// The end of this tier's period starting at `start`.
    pub fn end(self, start: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Tier::Quarter => start + TimeDelta::minutes(15),
            Tier::Delta | Tier::Hour => start + TimeDelta::hours(1),
            Tier::Day => start + TimeDelta::days(1),
            Tier::Month => start.checked_add_months(Months::new(1)).expect("months within chrono's calendar"),
        }
    }
}

impl From<Tier> for i16 {
    fn from(tier: Tier) -> i16 {
        tier.code()
    }
}

impl TryFrom<i16> for Tier {
    type Error = UnknownTier;

    fn try_from(code: i16) -> Result<Tier, UnknownTier> {
        Tier::from_code(code)
    }
}

impl ToSql for Tier {
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        self.code().to_sql(ty, out)
    }

    fn accepts(ty: &Type) -> bool {
        <i16 as ToSql>::accepts(ty)
    }

    postgres_types::to_sql_checked!();
}

impl<'a> FromSql<'a> for Tier {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Tier, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Tier::from_code(i16::from_sql(ty, raw)?)?)
    }

    fn accepts(ty: &Type) -> bool {
        <i16 as FromSql>::accepts(ty)
    }
}

/// The UTC hour of `t` and its quarter (0..=3).
pub fn hour_and_quarter(t: DateTime<Utc>) -> (DateTime<Utc>, usize) {
    let hour = t.duration_trunc(chrono::Duration::hours(1)).expect("event times are far from overflow");
    (hour, (t.minute() / 15) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn tier_periods_are_utc_hours_days_and_months() {
        let t = at("2024-02-29T13:45:10Z");
        assert_eq!(Tier::Hour.start(t), at("2024-02-29T13:00:00Z"));
        assert_eq!(Tier::Day.start(t), at("2024-02-29T00:00:00Z"));
        assert_eq!(Tier::Month.start(t), at("2024-02-01T00:00:00Z"));
        assert_eq!(Tier::Month.end(at("2024-02-01T00:00:00Z")), at("2024-03-01T00:00:00Z"));
        assert_eq!(Tier::Month.end(at("2024-12-01T00:00:00Z")), at("2025-01-01T00:00:00Z"));
        assert_eq!(Tier::Day.end(at("2024-12-31T00:00:00Z")), at("2025-01-01T00:00:00Z"));
        assert_eq!(Tier::Hour.start(at("1969-12-31T23:59:59Z")), at("1969-12-31T23:00:00Z"));
    }

    #[test]
    fn tiers_round_trip_through_their_stored_codes_in_order() {
        let all = [Tier::Delta, Tier::Hour, Tier::Day, Tier::Month, Tier::Quarter];
        for (code, tier) in all.into_iter().enumerate() {
            assert_eq!(i16::from(tier), code as i16);
            assert_eq!(Tier::try_from(code as i16).unwrap(), tier);
        }
        assert!(all.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(Tier::from_code(5).unwrap_err().0, 5);
        assert_eq!(Tier::from_code(-1).unwrap_err().0, -1);
    }
}
