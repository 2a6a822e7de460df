//! Unit tests of the planner over time: month and year boundaries, leap years, gaps, hand-made
//! partitions, a populated DEFAULT partition, retention and ANALYZE decisions.

use chrono::{DateTime, Duration, TimeZone, Utc};

use super::*;
use crate::catalog::{DefaultPartition, MonthRows, TableStats};

fn m(year: i32, month: u32) -> Month {
    Month { year, month }
}

fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
}

/// A managed partition, analyzed and unchanged.
fn part(month: Month) -> Partition {
    Partition {
        name: month.partition_name(),
        month: Some(month),
        from: Some(month.start()),
        to: Some(month.end()),
        bound: String::new(),
        detach_pending: false,
        stats: TableStats::default(),
    }
}

/// A hand-made partition over `[from, to)` (months), with a name the crate does not manage.
fn hand_made(name: &str, from: Month, to: Month) -> Partition {
    Partition { name: name.to_owned(), month: None, from: Some(from.start()), to: Some(to.start()), ..part(from) }
}

fn catalog_of(months: impl IntoIterator<Item = Month>) -> Catalog {
    Catalog { partitions: months.into_iter().map(part).collect(), ..Catalog::default() }
}

fn created(actions: &[Action]) -> Vec<Month> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::CreateMonth { month } => Some(*month),
            _ => None,
        })
        .collect()
}

#[test]
fn empty_catalog_gets_the_current_month_and_three_ahead() {
    let actions = plan(at(2026, 11, 15, 12, 0, 0), &Catalog::default(), &Policy::default());
    assert_eq!(actions, [m(2026, 11), m(2026, 12), m(2027, 1), m(2027, 2)].map(|month| Action::CreateMonth { month }));
}

#[test]
fn december_premake_crosses_into_the_next_year() {
    let actions = plan(at(2026, 12, 31, 23, 59, 59), &Catalog::default(), &Policy::default());
    assert_eq!(created(&actions), vec![m(2026, 12), m(2027, 1), m(2027, 2), m(2027, 3)]);
}

#[test]
fn the_first_instant_of_a_month_already_belongs_to_it() {
    let catalog = catalog_of(m(2026, 9).through(m(2026, 12)));
    let actions = plan(at(2027, 1, 1, 0, 0, 0), &catalog, &Policy::default());
    assert_eq!(created(&actions), vec![m(2027, 1), m(2027, 2), m(2027, 3), m(2027, 4)]);
}

#[test]
fn leap_day_plans_february_as_the_current_month() {
    let actions = plan(at(2028, 2, 29, 23, 59, 59), &Catalog::default(), &Policy::default());
    assert_eq!(created(&actions), vec![m(2028, 2), m(2028, 3), m(2028, 4), m(2028, 5)]);
}

#[test]
fn nothing_is_planned_when_every_month_exists_and_nothing_changed() {
    let catalog = catalog_of(m(2026, 1).through(m(2027, 2)));
    assert_eq!(plan(at(2026, 11, 3, 0, 0, 0), &catalog, &Policy::default()), vec![]);
}

#[test]
fn premake_zero_keeps_only_the_current_month() {
    let policy = Policy { premake_months: 0, ..Policy::default() };
    assert_eq!(created(&plan(at(2026, 11, 3, 0, 0, 0), &Catalog::default(), &policy)), vec![m(2026, 11)]);
}

#[test]
fn a_dropped_future_month_and_a_past_gap_are_recreated() {
    let mut months: Vec<Month> = m(2026, 6).through(m(2027, 2)).collect();
    months.retain(|&x| x != m(2026, 8) && x != m(2027, 1));
    let actions = plan(at(2026, 11, 3, 0, 0, 0), &catalog_of(months), &Policy::default());
    assert_eq!(created(&actions), vec![m(2026, 8), m(2027, 1)]);
}

#[test]
fn a_detached_month_between_partitions_is_not_recreated() {
    let mut catalog = catalog_of([m(2026, 5), m(2026, 7)]);
    catalog.partitions.extend(catalog_of(m(2026, 11).through(m(2027, 2))).partitions);
    catalog.detached = vec![m(2026, 6)];
    let actions = plan(at(2026, 11, 3, 0, 0, 0), &catalog, &Policy::default());
    assert_eq!(created(&actions), vec![m(2026, 8), m(2026, 9), m(2026, 10)]);
}

#[test]
fn gaps_are_filled_only_within_the_gap_fill_window() {
    let mut months = vec![m(2020, 1)];
    months.extend(m(2026, 11).through(m(2027, 2)));
    let actions = plan(at(2026, 11, 3, 0, 0, 0), &catalog_of(months), &Policy::default());
    let expected: Vec<Month> = m(2024, 11).through(m(2026, 10)).collect();
    assert_eq!(created(&actions), expected);
}

#[test]
fn months_covered_by_hand_made_or_far_future_partitions_are_left_alone() {
    let mut catalog = catalog_of([m(2026, 11), m(2030, 1)]);
    catalog.partitions.push(hand_made("events_q1", m(2026, 12), m(2027, 3)));
    let actions = plan(at(2026, 11, 3, 0, 0, 0), &catalog, &Policy::default());
    assert_eq!(actions, vec![]);
}

#[test]
fn a_month_a_hand_made_partition_partly_overlaps_is_not_planned() {
    let mut catalog = catalog_of([m(2026, 11)]);
    let mut odd = hand_made("events_odd", m(2026, 12), m(2027, 1));
    odd.to = Some(m(2027, 1).start() + Duration::days(10));
    catalog.partitions.push(odd);
    let actions = plan(at(2026, 11, 3, 0, 0, 0), &catalog, &Policy::default());
    assert_eq!(created(&actions), vec![m(2027, 2)]);
}

#[test]
fn default_partition_rows_are_moved_instead_of_creating_their_months() {
    let mut catalog = catalog_of([m(2026, 11)]);
    catalog.default_partition = Some(DefaultPartition {
        name: "events_default".into(),
        rows: 12,
        months: vec![MonthRows { month: m(2025, 3), rows: 2 }, MonthRows { month: m(2026, 12), rows: 10 }],
        stats: TableStats::default(),
    });
    let actions = plan(at(2026, 11, 3, 0, 0, 0), &catalog, &Policy::default());
    assert_eq!(
        actions,
        vec![
            Action::MoveDefaultRows { month: m(2025, 3), rows: 2 },
            Action::MoveDefaultRows { month: m(2026, 12), rows: 10 },
            Action::CreateMonth { month: m(2027, 1) },
            Action::CreateMonth { month: m(2027, 2) },
        ]
    );
}

#[test]
fn retention_detaches_months_before_the_retained_window_and_never_the_current_one() {
    let policy = Policy { retention_months: Some(3), ..Policy::default() };
    let catalog = catalog_of(m(2026, 5).through(m(2027, 2)));
    let actions = plan(at(2026, 11, 30, 23, 0, 0), &catalog, &policy);
    assert_eq!(
        actions,
        vec![
            Action::DetachPartition { month: m(2026, 5) },
            Action::DetachPartition { month: m(2026, 6) },
            Action::DetachPartition { month: m(2026, 7) },
        ]
    );
}

#[test]
fn retention_in_drop_mode_detaches_then_drops_and_drops_old_detached_tables() {
    let policy = Policy { retention_months: Some(1), retention_mode: RetentionMode::Drop, ..Policy::default() };
    let mut catalog = catalog_of(m(2026, 9).through(m(2027, 2)));
    catalog.detached = vec![m(2025, 1), m(2026, 10)];
    let actions = plan(at(2026, 11, 3, 0, 0, 0), &catalog, &policy);
    assert_eq!(
        actions,
        vec![
            Action::DetachPartition { month: m(2026, 9) },
            Action::DropPartition { month: m(2025, 1) },
            Action::DropPartition { month: m(2026, 9) },
        ]
    );
}

#[test]
fn retention_off_keeps_every_month() {
    let catalog = catalog_of(m(2010, 1).through(m(2027, 2)));
    assert_eq!(plan(at(2026, 11, 3, 0, 0, 0), &catalog, &Policy::default()), vec![]);
}

#[test]
fn detach_mode_keeps_detached_tables_past_retention() {
    let policy = Policy { retention_months: Some(12), ..Policy::default() };
    let catalog = Catalog { detached: vec![m(2001, 1)], ..catalog_of(m(2025, 11).through(m(2027, 2))) };
    assert_eq!(plan(at(2026, 11, 3, 0, 0, 0), &catalog, &policy), vec![]);
}

#[test]
fn an_interrupted_concurrent_detach_is_finished() {
    let mut catalog = catalog_of(m(2026, 11).through(m(2027, 2)));
    catalog.partitions[1].detach_pending = true;
    let actions = plan(at(2026, 11, 3, 0, 0, 0), &catalog, &Policy::default());
    assert_eq!(actions, vec![Action::DetachPartition { month: m(2026, 12) }]);
}

fn analyzed(mut p: Partition, at: DateTime<Utc>, rows: i64, changed: i64) -> Partition {
    p.stats.last_autoanalyze = Some(at);
    p.stats.row_estimate = Some(rows);
    p.stats.mod_since_analyze = changed;
    p
}

#[test]
fn partitions_are_analyzed_only_past_the_change_thresholds() {
    let now = at(2026, 11, 3, 0, 0, 0);
    let earlier = now - Duration::hours(1);
    let mut catalog = catalog_of([]);
    catalog.parent.last_analyze = Some(earlier);
    catalog.partitions = vec![
        analyzed(part(m(2026, 10)), earlier - Duration::hours(1), 1_000_000, 50_000),
        analyzed(part(m(2026, 11)), earlier - Duration::hours(1), 10_000, 5_000),
        analyzed(part(m(2026, 12)), earlier - Duration::hours(1), 0, 999),
        analyzed(part(m(2027, 1)), earlier - Duration::hours(1), 0, 0),
        analyzed(part(m(2027, 2)), earlier - Duration::hours(1), 0, 0),
    ];
    assert_eq!(
        plan(now, &catalog, &Policy::default()),
        vec![Action::AnalyzePartition { month: m(2026, 11), changed_rows: 5_000 }]
    );
}

#[test]
fn a_new_partition_is_analyzed_once_filled() {
    let now = at(2026, 11, 3, 0, 0, 0);
    let mut catalog = catalog_of(m(2026, 11).through(m(2027, 2)));
    catalog.parent.last_analyze = Some(now - Duration::minutes(5));
    catalog.partitions[0].stats.mod_since_analyze = 2_000;
    assert_eq!(
        plan(now, &catalog, &Policy::default()),
        vec![Action::AnalyzePartition { month: m(2026, 11), changed_rows: 2_000 }]
    );
}

#[test]
fn a_never_analyzed_parent_with_rows_is_analyzed_instead_of_its_partitions() {
    let now = at(2026, 11, 3, 0, 0, 0);
    let mut catalog = catalog_of(m(2026, 11).through(m(2027, 2)));
    catalog.partitions[0].stats.mod_since_analyze = 2_000;
    assert_eq!(plan(now, &catalog, &Policy::default()), vec![Action::AnalyzeParent]);
}

#[test]
fn an_empty_parent_is_not_analyzed() {
    let catalog = catalog_of(m(2026, 11).through(m(2027, 2)));
    assert_eq!(plan(at(2026, 11, 3, 0, 0, 0), &catalog, &Policy::default()), vec![]);
}

#[test]
fn the_parent_waits_for_its_interval_and_for_a_change() {
    let now = at(2026, 11, 3, 12, 0, 0);
    let policy = Policy::default();
    let mut catalog = catalog_of(m(2026, 11).through(m(2027, 2)));
    let parent_at = now - Duration::hours(1);
    catalog.parent.last_analyze = Some(parent_at);
    catalog.partitions[0] = analyzed(part(m(2026, 11)), parent_at + Duration::minutes(30), 9, 0);
    // Changed since, but analyzed an hour ago: the 6-hour interval has not passed.
    assert!(!parent_needs_analyze(now, &catalog, &policy));
    let later = now + Duration::hours(6);
    assert!(parent_needs_analyze(later, &catalog, &policy));
    // Nothing analyzed or changed since the parent's ANALYZE: skipped however old it is.
    catalog.partitions[0] = analyzed(part(m(2026, 11)), parent_at - Duration::minutes(1), 9, 0);
    assert!(!parent_needs_analyze(later + Duration::days(30), &catalog, &policy));
}

#[test]
fn months_being_detached_are_not_analyzed() {
    let now = at(2026, 11, 3, 0, 0, 0);
    let policy = Policy { retention_months: Some(1), ..Policy::default() };
    let mut catalog = catalog_of(m(2026, 9).through(m(2027, 2)));
    catalog.parent.last_analyze = Some(now);
    catalog.partitions[0].stats.mod_since_analyze = 5_000;
    assert_eq!(plan(now, &catalog, &policy), vec![Action::DetachPartition { month: m(2026, 9) }]);
}

#[test]
fn actions_serialize_with_a_kind_tag_and_camel_case_fields() {
    let json = serde_json::to_value(Action::MoveDefaultRows { month: m(2026, 3), rows: 7 }).unwrap();
    assert_eq!(json, serde_json::json!({"kind": "moveDefaultRows", "month": "2026-03", "rows": 7}));
    let json = serde_json::to_value(Action::AnalyzeParent).unwrap();
    assert_eq!(json, serde_json::json!({"kind": "analyzeParent"}));
}
