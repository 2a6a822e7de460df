//! Retention: detach (concurrently, or plainly when a DEFAULT partition exists) and drop.

use chrono::Duration;
use partition_jobs::{
    ensure_months, health, read_catalog, run_once, save_policy, Action, OutcomeStatus, Policy, RetentionMode,
    RunStatus, Status,
};

use crate::helpers::{fixed_now, m, TestDb, LOCK_TIMEOUT};

fn retention_actions(report: &partition_jobs::RunReport) -> Vec<(Action, OutcomeStatus)> {
    report
        .outcomes
        .iter()
        .filter(|o| matches!(o.action, Action::DetachPartition { .. } | Action::DropPartition { .. }))
        .map(|o| (o.action.clone(), o.status))
        .collect()
}

#[tokio::test]
async fn drop_mode_detaches_concurrently_then_drops_expired_months() {
    let db = TestDb::new().await;
    let policy = Policy { retention_months: Some(1), retention_mode: RetentionMode::Drop, ..Policy::default() };
    save_policy(&db.client, &policy).await.unwrap();
    ensure_months(&db.client, m(2026, 8), m(2026, 9), LOCK_TIMEOUT).await.unwrap();
    db.insert_events(m(2026, 8).start() + Duration::hours(5), 10).await;
    let before = health(&db.client, fixed_now(), &policy).await.unwrap();
    let check = before.checks.iter().find(|c| c.name == "retention").unwrap();
    assert_eq!(check.status, Status::Warning);

    let report = run_once(&db.client, fixed_now(), LOCK_TIMEOUT).await.unwrap();
    assert_eq!(report.status, RunStatus::Ok, "{report:?}");
    let done = OutcomeStatus::Done;
    assert_eq!(
        retention_actions(&report),
        vec![
            (Action::DetachPartition { month: m(2026, 8) }, done),
            (Action::DetachPartition { month: m(2026, 9) }, done),
            (Action::DropPartition { month: m(2026, 8) }, done),
            (Action::DropPartition { month: m(2026, 9) }, done),
        ]
    );
    let expected: Vec<String> = m(2026, 10).through(m(2027, 2)).map(|x| x.partition_name()).collect();
    assert_eq!(db.partition_names().await, expected);
    let left = "SELECT count(*) FROM pg_class WHERE relname IN ('events_2026_08', 'events_2026_09')";
    assert_eq!(db.count(left).await, 0);
    let after = health(&db.client, fixed_now() + Duration::minutes(1), &policy).await.unwrap();
    assert_eq!(after.status, Status::Ok, "{after:?}");
}

#[tokio::test]
async fn detach_mode_keeps_the_data_and_works_beside_a_default_partition() {
    let db = TestDb::new().await;
    let policy = Policy { retention_months: Some(1), ..Policy::default() };
    save_policy(&db.client, &policy).await.unwrap();
    ensure_months(&db.client, m(2026, 9), m(2026, 9), LOCK_TIMEOUT).await.unwrap();
    db.insert_events(m(2026, 9).start(), 3).await;
    db.client.batch_execute("CREATE TABLE events_default PARTITION OF events DEFAULT").await.unwrap();

    let report = run_once(&db.client, fixed_now(), LOCK_TIMEOUT).await.unwrap();
    assert_eq!(retention_actions(&report), vec![(Action::DetachPartition { month: m(2026, 9) }, OutcomeStatus::Done)]);
    assert_eq!(db.count("SELECT count(*) FROM events_2026_09").await, 3);
    let catalog = read_catalog(&db.client).await.unwrap();
    assert_eq!(catalog.detached, vec![m(2026, 9)]);
    assert!(catalog.month_partition(m(2026, 9)).is_none());

    let again = run_once(&db.client, fixed_now(), LOCK_TIMEOUT).await.unwrap();
    assert_eq!(again.outcomes, vec![]);
}

#[tokio::test]
async fn an_interrupted_concurrent_detach_is_finalized_by_the_next_run() {
    let db = TestDb::new().await;
    run_once(&db.client, fixed_now(), LOCK_TIMEOUT).await.unwrap();
    // An old snapshot makes DETACH CONCURRENTLY wait in its second phase, where a timeout
    // leaves the partition "detach pending".
    let holder = db.connect().await;
    holder.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM events").await.unwrap();
    let detacher = db.connect().await;
    detacher.batch_execute("SET statement_timeout = '300ms'").await.unwrap();
    let sql = "ALTER TABLE events DETACH PARTITION events_2027_02 CONCURRENTLY";
    let err = detacher.batch_execute(sql).await.unwrap_err();
    assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::QUERY_CANCELED));
    let catalog = read_catalog(&db.client).await.unwrap();
    assert!(catalog.month_partition(m(2027, 2)).unwrap().detach_pending);
    holder.batch_execute("COMMIT").await.unwrap();

    let report = run_once(&db.client, fixed_now(), LOCK_TIMEOUT).await.unwrap();
    assert_eq!(retention_actions(&report), vec![(Action::DetachPartition { month: m(2027, 2) }, OutcomeStatus::Done)]);
    let catalog = read_catalog(&db.client).await.unwrap();
    assert_eq!(catalog.detached, vec![m(2027, 2)]);
    assert!(catalog.month_partition(m(2027, 2)).is_none());
}
