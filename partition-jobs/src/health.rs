//! The health report: [`health`] reads the catalog and the run history, [`assess`] (pure) turns
//! them into a verdict with one [`Check`] per concern.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Client;

use crate::catalog::{read_catalog, Catalog};
use crate::error::Error;
use crate::month::Month;
use crate::plan::{missing_months, parent_needs_analyze, past_retention, stale_partitions};
use crate::policy::Policy;
use crate::run::{last_success, list_runs, RunRecord};

/// A verdict, ordered from best to worst.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Status {
    /// Nothing to do.
    Ok,
    /// Needs attention; maintenance may fix it on its next run.
    Warning,
    /// Ingestion or maintenance is failing or about to.
    Critical,
}

/// One concern of the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    /// Stable name: `coverage`, `gaps`, `defaultPartition`, `statistics`, `maintenance`,
    /// `retention`.
    pub name: &'static str,
    /// Its verdict.
    pub status: Status,
    /// What was found, for humans.
    pub detail: String,
}

/// The report: the worst check's status, and every check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// The worst status among the checks.
    pub status: Status,
    /// Every check, in a fixed order.
    pub checks: Vec<Check>,
}

/// What the health report needs to know about past runs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunHistory {
    /// The latest run, whatever its status.
    pub last: Option<RunRecord>,
    /// When the latest successful run finished.
    pub last_success: Option<DateTime<Utc>>,
}

/// Reads the catalog and run history and assesses them at `now` under `policy`.
#[tracing::instrument(skip_all)]
pub async fn health(client: &Client, now: DateTime<Utc>, policy: &Policy) -> Result<Health, Error> {
    let catalog = read_catalog(client).await?;
    let history =
        RunHistory { last: list_runs(client, 1).await?.into_iter().next(), last_success: last_success(client).await? };
    Ok(assess(now, &catalog, policy, &history))
}

/// The pure verdict.
pub fn assess(now: DateTime<Utc>, catalog: &Catalog, policy: &Policy, runs: &RunHistory) -> Health {
    let checks = vec![
        coverage(now, catalog, policy),
        gaps(now, catalog, policy),
        default_partition(catalog),
        statistics(now, catalog, policy),
        maintenance(now, policy, runs),
        retention(now, catalog, policy),
    ];
    let status = checks.iter().map(|c| c.status).max().unwrap_or(Status::Ok);
    Health { status, checks }
}

fn check(name: &'static str, status: Status, detail: String) -> Check {
    Check { name, status, detail }
}

/// Consecutive months covered after the current one (counting up to `limit`).
pub fn months_ahead(now: DateTime<Utc>, catalog: &Catalog, limit: i32) -> i32 {
    let current = Month::containing(now);
    (1..=limit).take_while(|&i| catalog.covers(current.add_months(i))).count() as i32
}

fn coverage(now: DateTime<Utc>, catalog: &Catalog, policy: &Policy) -> Check {
    let current = Month::containing(now);
    if !catalog.covers(current) {
        let detail = format!("no partition holds the current month {current}");
        return check("coverage", Status::Critical, detail);
    }
    let ahead = months_ahead(now, catalog, policy.premake_months);
    let detail = format!("{ahead} of {} months ahead covered", policy.premake_months);
    let status = if ahead < policy.premake_months { Status::Warning } else { Status::Ok };
    check("coverage", status, detail)
}

fn gaps(now: DateTime<Utc>, catalog: &Catalog, policy: &Policy) -> Check {
    let current = Month::containing(now);
    // Months ahead are the coverage check's business.
    let missing: Vec<Month> = missing_months(now, catalog, policy).into_iter().filter(|&m| m < current).collect();
    if missing.is_empty() {
        return check("gaps", Status::Ok, "no missing months".into());
    }
    let detail = format!("missing months between partitions: {}", list(&missing));
    check("gaps", Status::Warning, detail)
}

fn default_partition(catalog: &Catalog) -> Check {
    let name = "defaultPartition";
    match &catalog.default_partition {
        None => check(name, Status::Ok, "no default partition".into()),
        Some(d) if d.rows == 0 => {
            let detail = format!("default partition {} is empty", d.name);
            check(name, Status::Ok, detail)
        }
        Some(d) => {
            let months: Vec<Month> = d.months.iter().map(|m| m.month).collect();
            let detail = format!("{} rows in default partition {} (months: {})", d.rows, d.name, list(&months));
            check(name, Status::Warning, detail)
        }
    }
}

fn statistics(now: DateTime<Utc>, catalog: &Catalog, policy: &Policy) -> Check {
    let stale: Vec<Month> = stale_partitions(catalog, policy)
        .filter(|(m, _)| {
            let p = catalog.month_partition(*m);
            let last = p.and_then(|p| p.stats.last_analyzed());
            last.is_none_or(|t| now - t > policy.run_stale_after())
        })
        .map(|(m, _)| m)
        .collect();
    let parent_stale = parent_needs_analyze(now, catalog, policy)
        && catalog
            .parent
            .last_analyzed()
            .is_none_or(|t| now - t > policy.parent_analyze_min_interval() + policy.run_stale_after());
    if stale.is_empty() && !parent_stale {
        return check("statistics", Status::Ok, "statistics are fresh".into());
    }
    let mut detail = Vec::new();
    if parent_stale {
        detail.push("events (parent) needs ANALYZE".to_owned());
    }
    if !stale.is_empty() {
        detail.push(format!("partitions need ANALYZE: {}", list(&stale)));
    }
    check("statistics", Status::Warning, detail.join("; "))
}

fn maintenance(now: DateTime<Utc>, policy: &Policy, runs: &RunHistory) -> Check {
    let name = "maintenance";
    let Some(last) = &runs.last else {
        return check(name, Status::Warning, "no maintenance run recorded yet".into());
    };
    let limit = policy.run_stale_after();
    match runs.last_success {
        None => {
            let detail = "no maintenance run has succeeded yet".to_owned();
            return check(name, Status::Critical, detail_with_error(detail, last));
        }
        Some(t) if now - t > limit => {
            let detail = format!(
                "last successful run finished {} min ago (limit {} min)",
                (now - t).num_minutes(),
                limit.num_minutes()
            );
            return check(name, Status::Critical, detail_with_error(detail, last));
        }
        Some(_) => {}
    }
    if last.status == "failed" {
        let detail = format!("last run {} failed", last.id);
        return check(name, Status::Warning, detail_with_error(detail, last));
    }
    let detail = format!("last run {} {}", last.id, last.status);
    check(name, Status::Ok, detail)
}

fn detail_with_error(detail: String, last: &RunRecord) -> String {
    match &last.error {
        Some(e) => format!("{detail}: {e}"),
        None => detail,
    }
}

fn retention(now: DateTime<Utc>, catalog: &Catalog, policy: &Policy) -> Check {
    let Some(oldest) = policy.oldest_retained_month(now) else {
        return check("retention", Status::Ok, "retention is off".into());
    };
    let expired: Vec<Month> =
        catalog.partitions.iter().filter_map(|p| p.month).filter(|&m| past_retention(now, policy, m)).collect();
    if expired.is_empty() {
        let detail = format!("no attached month before {oldest}");
        return check("retention", Status::Ok, detail);
    }
    let detail = format!("attached past retention (before {oldest}): {}", list(&expired));
    check("retention", Status::Warning, detail)
}

/// At most 12 months, then a count of the rest.
fn list(months: &[Month]) -> String {
    const SHOWN: usize = 12;
    let mut text: Vec<String> = months.iter().take(SHOWN).map(Month::to_string).collect();
    if months.len() > SHOWN {
        text.push(format!("and {} more", months.len() - SHOWN));
    }
    text.join(", ")
}

#[cfg(test)]
#[path = "health_tests.rs"]
mod tests;
