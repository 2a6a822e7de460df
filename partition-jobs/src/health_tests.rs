//! Unit tests of each health check's verdicts.

use chrono::{Duration, TimeZone};

use super::*;
use crate::catalog::{DefaultPartition, MonthRows, Partition, TableStats};

fn m(year: i32, month: u32) -> Month {
    Month { year, month }
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 15, 12, 0, 0).unwrap()
}

fn catalog_of(months: impl IntoIterator<Item = Month>) -> Catalog {
    let partitions = months
        .into_iter()
        .map(|month| Partition {
            name: month.partition_name(),
            month: Some(month),
            from: Some(month.start()),
            to: Some(month.end()),
            bound: String::new(),
            detach_pending: false,
            stats: TableStats::default(),
        })
        .collect();
    Catalog { partitions, ..Catalog::default() }
}

fn good_runs() -> RunHistory {
    RunHistory { last: Some(run("ok", None)), last_success: Some(now() - Duration::minutes(10)) }
}

fn run(status: &str, error: Option<&str>) -> RunRecord {
    RunRecord {
        id: 7,
        started_at: now() - Duration::minutes(11),
        finished_at: Some(now() - Duration::minutes(10)),
        runner: "test".into(),
        status: status.into(),
        actions: serde_json::json!([]),
        error: error.map(str::to_owned),
    }
}

fn status_of(h: &Health, name: &str) -> Status {
    h.checks.iter().find(|c| c.name == name).unwrap().status
}

#[test]
fn a_fully_maintained_catalog_is_ok() {
    let h = assess(now(), &catalog_of(m(2026, 1).through(m(2027, 2))), &Policy::default(), &good_runs());
    assert_eq!(h.status, Status::Ok, "{h:?}");
    assert_eq!(h.checks.len(), 6);
}

#[test]
fn a_missing_current_month_is_critical_and_too_few_ahead_is_a_warning() {
    let policy = Policy::default();
    let h = assess(now(), &catalog_of([m(2026, 12)]), &policy, &good_runs());
    assert_eq!(status_of(&h, "coverage"), Status::Critical);
    assert_eq!(h.status, Status::Critical);
    let h = assess(now(), &catalog_of(m(2026, 11).through(m(2027, 1))), &policy, &good_runs());
    assert_eq!(status_of(&h, "coverage"), Status::Warning);
    let c = h.checks.iter().find(|c| c.name == "coverage").unwrap();
    assert_eq!(c.detail, "2 of 3 months ahead covered");
}

#[test]
fn a_gap_between_partitions_is_a_warning() {
    let mut months: Vec<Month> = m(2026, 6).through(m(2027, 2)).collect();
    months.retain(|&x| x != m(2026, 8));
    let h = assess(now(), &catalog_of(months), &Policy::default(), &good_runs());
    let c = h.checks.iter().find(|c| c.name == "gaps").unwrap();
    assert_eq!((c.status, c.detail.as_str()), (Status::Warning, "missing months between partitions: 2026-08"));
}

#[test]
fn rows_in_the_default_partition_are_a_warning_and_an_empty_one_is_ok() {
    let mut catalog = catalog_of(m(2026, 11).through(m(2027, 2)));
    let mut default = DefaultPartition {
        name: "events_default".into(),
        rows: 5,
        months: vec![MonthRows { month: m(2025, 1), rows: 5 }],
        stats: TableStats::default(),
    };
    catalog.default_partition = Some(default.clone());
    let h = assess(now(), &catalog, &Policy::default(), &good_runs());
    let c = h.checks.iter().find(|c| c.name == "defaultPartition").unwrap();
    assert_eq!(c.status, Status::Warning);
    assert_eq!(c.detail, "5 rows in default partition events_default (months: 2025-01)");
    default.rows = 0;
    default.months.clear();
    catalog.default_partition = Some(default);
    let h = assess(now(), &catalog, &Policy::default(), &good_runs());
    assert_eq!(status_of(&h, "defaultPartition"), Status::Ok);
}

#[test]
fn statistics_are_stale_when_changes_wait_longer_than_a_run_interval() {
    let mut catalog = catalog_of(m(2026, 11).through(m(2027, 2)));
    catalog.parent.last_analyze = Some(now() - Duration::minutes(1));
    catalog.partitions[0].stats.mod_since_analyze = 50_000;
    catalog.partitions[0].stats.last_autoanalyze = Some(now() - Duration::minutes(5));
    let h = assess(now(), &catalog, &Policy::default(), &good_runs());
    assert_eq!(status_of(&h, "statistics"), Status::Ok);
    catalog.partitions[0].stats.last_autoanalyze = Some(now() - Duration::days(2));
    let h = assess(now(), &catalog, &Policy::default(), &good_runs());
    let c = h.checks.iter().find(|c| c.name == "statistics").unwrap();
    assert_eq!((c.status, c.detail.as_str()), (Status::Warning, "partitions need ANALYZE: 2026-11"));
}

#[test]
fn a_never_analyzed_parent_with_rows_is_stale() {
    let mut catalog = catalog_of(m(2026, 11).through(m(2027, 2)));
    catalog.partitions[0].stats.row_estimate = Some(10);
    let h = assess(now(), &catalog, &Policy::default(), &good_runs());
    let c = h.checks.iter().find(|c| c.name == "statistics").unwrap();
    assert_eq!((c.status, c.detail.as_str()), (Status::Warning, "events (parent) needs ANALYZE"));
}

#[test]
fn maintenance_verdicts_follow_the_last_runs() {
    let catalog = catalog_of(m(2026, 11).through(m(2027, 2)));
    let p = Policy::default();
    let none = RunHistory::default();
    assert_eq!(status_of(&assess(now(), &catalog, &p, &none), "maintenance"), Status::Warning);
    let failed = RunHistory { last: Some(run("failed", Some("lock timeout"))), ..good_runs() };
    let h = assess(now(), &catalog, &p, &failed);
    let c = h.checks.iter().find(|c| c.name == "maintenance").unwrap();
    assert_eq!((c.status, c.detail.as_str()), (Status::Warning, "last run 7 failed: lock timeout"));
    let never_ok = RunHistory { last: Some(run("failed", None)), last_success: None };
    assert_eq!(status_of(&assess(now(), &catalog, &p, &never_ok), "maintenance"), Status::Critical);
    let old = RunHistory { last_success: Some(now() - Duration::hours(4)), ..good_runs() };
    let h = assess(now(), &catalog, &p, &old);
    let c = h.checks.iter().find(|c| c.name == "maintenance").unwrap();
    assert_eq!(
        (c.status, c.detail.as_str()),
        (Status::Critical, "last successful run finished 240 min ago (limit 180 min)")
    );
}

#[test]
fn months_past_retention_still_attached_are_a_warning() {
    let policy = Policy { retention_months: Some(2), ..Policy::default() };
    let catalog = catalog_of(m(2026, 7).through(m(2027, 2)));
    let h = assess(now(), &catalog, &policy, &good_runs());
    let c = h.checks.iter().find(|c| c.name == "retention").unwrap();
    assert_eq!(
        (c.status, c.detail.as_str()),
        (Status::Warning, "attached past retention (before 2026-09): 2026-07, 2026-08")
    );
}

#[test]
fn health_serializes_with_lowercase_statuses() {
    let h = assess(now(), &catalog_of([]), &Policy::default(), &good_runs());
    let json = serde_json::to_value(&h).unwrap();
    assert_eq!(json["status"], "critical");
    assert_eq!(json["checks"][0]["name"], "coverage");
}
