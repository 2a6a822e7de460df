//! [`Policy`]: how far ahead to make months, how long to keep them, when to ANALYZE. Stored in the
//! single-row `partition_policy` table ([`load_policy`], [`save_policy`]) so the server and the
//! CLI apply the same one.

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::error::Error;
use crate::month::Month;

/// What retention does with a month past the retention period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RetentionMode {
    /// Detach the partition and keep it as a plain table (the default: nothing is lost).
    #[default]
    Detach,
    /// Detach, then drop the table.
    Drop,
}

impl RetentionMode {
    /// The value stored in `partition_policy.retention_mode`.
    pub fn as_str(self) -> &'static str {
        match self {
            RetentionMode::Detach => "detach",
            RetentionMode::Drop => "drop",
        }
    }
}

/// The maintenance policy. Defaults match the `partition_policy` column defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    /// Months kept ready after the current one (default 3).
    pub premake_months: i32,
    /// Whole months kept before the current one; `None` (default) keeps everything.
    /// With `Some(n)`, a month is past retention when it ends on or before the start of the month
    /// `n` months before the current one. Rollups may outlive the raw months.
    pub retention_months: Option<i32>,
    /// Detach (default) or drop expired months.
    pub retention_mode: RetentionMode,
    /// A partition is re-analyzed once at least this many rows changed (default 1000) ...
    pub analyze_min_changed_rows: i64,
    /// ... and at least this fraction of its estimated rows (default 0.1).
    pub analyze_changed_fraction: f64,
    /// The parent is analyzed at most this often, in minutes (default 360). ANALYZE on a
    /// partitioned parent also samples every partition (there is no `ANALYZE ONLY` before PG 17).
    pub parent_analyze_min_interval_minutes: i32,
    /// Health warns when the last successful run is older than this, in minutes (default 180).
    pub run_stale_after_minutes: i32,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            premake_months: 3,
            retention_months: None,
            retention_mode: RetentionMode::Detach,
            analyze_min_changed_rows: 1000,
            analyze_changed_fraction: 0.1,
            parent_analyze_min_interval_minutes: 360,
            run_stale_after_minutes: 180,
        }
    }
}

impl Policy {
    /// Checks every value against the same ranges as the table's CHECK constraints.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |what: &str| Err(Error::InvalidPolicy(what.to_owned()));
        if !(0..=120).contains(&self.premake_months) {
            return bad("premakeMonths must be within 0..=120");
        }
        if self.retention_months.is_some_and(|r| !(1..=1200).contains(&r)) {
            return bad("retentionMonths must be within 1..=1200");
        }
        if self.analyze_min_changed_rows < 1 {
            return bad("analyzeMinChangedRows must be at least 1");
        }
        if !(0.0..=10.0).contains(&self.analyze_changed_fraction) {
            return bad("analyzeChangedFraction must be within 0..=10");
        }
        if self.parent_analyze_min_interval_minutes < 0 {
            return bad("parentAnalyzeMinIntervalMinutes must not be negative");
        }
        if self.run_stale_after_minutes < 1 {
            return bad("runStaleAfterMinutes must be at least 1");
        }
        Ok(())
    }

    /// The oldest month retention keeps at `now` (`None`: retention off). The ingestion
    /// acceptance window must not reach before its start.
    pub fn oldest_retained_month(&self, now: DateTime<Utc>) -> Option<Month> {
        self.retention_months.map(|n| Month::containing(now).add_months(-n))
    }

    /// The last month premake keeps ready at `now`.
    pub fn premake_horizon(&self, now: DateTime<Utc>) -> Month {
        Month::containing(now).add_months(self.premake_months)
    }

    /// Rows changed that make a table with `row_estimate` rows due for ANALYZE.
    pub fn analyze_threshold(&self, row_estimate: Option<i64>) -> i64 {
        let fraction = row_estimate.unwrap_or(0).max(0) as f64 * self.analyze_changed_fraction;
        self.analyze_min_changed_rows.max(fraction as i64)
    }

    /// Minimum time between two ANALYZEs of the parent.
    pub fn parent_analyze_min_interval(&self) -> ChronoDuration {
        ChronoDuration::minutes(i64::from(self.parent_analyze_min_interval_minutes))
    }

    /// Age after which the last successful run counts as stale.
    pub fn run_stale_after(&self) -> ChronoDuration {
        ChronoDuration::minutes(i64::from(self.run_stale_after_minutes))
    }
}

const LOAD_SQL: &str = r"
SELECT premake_months, retention_months, retention_mode, analyze_min_changed_rows,
       analyze_changed_fraction, parent_analyze_min_interval_minutes, run_stale_after_minutes
FROM partition_policy
WHERE id";

const SAVE_SQL: &str = r"
INSERT INTO partition_policy (id, premake_months, retention_months, retention_mode,
                              analyze_min_changed_rows, analyze_changed_fraction,
                              parent_analyze_min_interval_minutes, run_stale_after_minutes,
                              updated_at)
VALUES (true, $1, $2, $3, $4, $5, $6, $7, now())
ON CONFLICT (id) DO UPDATE SET
    premake_months = EXCLUDED.premake_months,
    retention_months = EXCLUDED.retention_months,
    retention_mode = EXCLUDED.retention_mode,
    analyze_min_changed_rows = EXCLUDED.analyze_min_changed_rows,
    analyze_changed_fraction = EXCLUDED.analyze_changed_fraction,
    parent_analyze_min_interval_minutes = EXCLUDED.parent_analyze_min_interval_minutes,
    run_stale_after_minutes = EXCLUDED.run_stale_after_minutes,
    updated_at = now()";

/// Reads the stored policy; the defaults when the row is missing.
#[tracing::instrument(skip_all)]
pub async fn load_policy(client: &Client) -> Result<Policy, Error> {
    let row = client.query_opt(LOAD_SQL, &[]).await.map_err(Error::db("loading the partition policy"))?;
    let Some(row) = row else {
        return Ok(Policy::default());
    };
    let mode: String = row.get("retention_mode");
    let retention_mode = match mode.as_str() {
        "detach" => RetentionMode::Detach,
        "drop" => RetentionMode::Drop,
        _ => return Err(Error::UnknownRetentionMode(mode)),
    };
    Ok(Policy {
        premake_months: row.get("premake_months"),
        retention_months: row.get("retention_months"),
        retention_mode,
        analyze_min_changed_rows: row.get("analyze_min_changed_rows"),
        analyze_changed_fraction: row.get("analyze_changed_fraction"),
        parent_analyze_min_interval_minutes: row.get("parent_analyze_min_interval_minutes"),
        run_stale_after_minutes: row.get("run_stale_after_minutes"),
    })
}

/// Validates and stores the policy (creating the row if it was deleted).
#[tracing::instrument(skip_all)]
pub async fn save_policy(client: &Client, policy: &Policy) -> Result<(), Error> {
    policy.validate()?;
    client
        .execute(
            SAVE_SQL,
            &[
                &policy.premake_months,
                &policy.retention_months,
                &policy.retention_mode.as_str(),
                &policy.analyze_min_changed_rows,
                &policy.analyze_changed_fraction,
                &policy.parent_analyze_min_interval_minutes,
                &policy.run_stale_after_minutes,
            ],
        )
        .await
        .map_err(Error::db("saving the partition policy"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn defaults_are_valid_and_keep_three_months_ahead_without_retention() {
        let p = Policy::default();
        p.validate().unwrap();
        let now = Utc.with_ymd_and_hms(2026, 11, 20, 0, 0, 0).unwrap();
        assert_eq!(p.premake_horizon(now), Month { year: 2027, month: 2 });
        assert_eq!(p.oldest_retained_month(now), None);
    }

    #[test]
    fn retention_keeps_n_whole_months_before_the_current_one() {
        let p = Policy { retention_months: Some(12), ..Policy::default() };
        let now = Utc.with_ymd_and_hms(2026, 1, 31, 23, 0, 0).unwrap();
        assert_eq!(p.oldest_retained_month(now), Some(Month { year: 2025, month: 1 }));
    }

    #[test]
    fn analyze_threshold_is_the_larger_of_the_minimum_and_the_fraction() {
        let p = Policy::default();
        assert_eq!(p.analyze_threshold(None), 1000);
        assert_eq!(p.analyze_threshold(Some(5_000)), 1000);
        assert_eq!(p.analyze_threshold(Some(1_000_000)), 100_000);
    }

    #[test]
    fn out_of_range_values_are_refused() {
        for p in [
            Policy { premake_months: -1, ..Policy::default() },
            Policy { premake_months: 121, ..Policy::default() },
            Policy { retention_months: Some(0), ..Policy::default() },
            Policy { analyze_min_changed_rows: 0, ..Policy::default() },
            Policy { analyze_changed_fraction: f64::NAN, ..Policy::default() },
            Policy { run_stale_after_minutes: 0, ..Policy::default() },
        ] {
            assert!(matches!(p.validate(), Err(Error::InvalidPolicy(_))), "{p:?}");
        }
    }
}
