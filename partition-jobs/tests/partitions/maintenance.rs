//! `run_once`: premake, recreation, draining a DEFAULT partition, racing runners, ANALYZE, health.

use chrono::{Duration, TimeZone, Utc};
use partition_jobs::{
    create_month, health, list_runs, load_policy, run_once, save_policy, Action, OutcomeStatus, Policy, RunStatus,
    Status,
};

use crate::helpers::{fixed_now, m, TestDb, LOCK_TIMEOUT};

fn created_months(report: &partition_jobs::RunReport) -> Vec<partition_jobs::Month> {
    report
        .outcomes
        .iter()
        .filter(|o| o.status == OutcomeStatus::Done)
        .filter_map(|o| match o.action {
            Action::CreateMonth { month } => Some(month),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn premake_run_creates_exactly_the_expected_months_and_records_the_run() {
    let db = TestDb::new().await;
    let report = run_once(&db.client, fixed_now(), LOCK_TIMEOUT).await.unwrap();
    assert_eq!(report.status, RunStatus::Ok, "{report:?}");
    assert_eq!(created_months(&report), vec![m(2026, 11), m(2026, 12), m(2027, 1), m(2027, 2)]);
    assert_eq!(db.partition_names().await, ["events_2026_11", "events_2026_12", "events_2027_01", "events_2027_02"]);
    let runs = list_runs(&db.client, 10).await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!((runs[0].id, runs[0].status.as_str()), (report.run_id.unwrap(), "ok"));
    assert_eq!(runs[0].started_at, fixed_now());
    assert_eq!(runs[0].actions.as_array().unwrap().len(), 4);
    assert_eq!(runs[0].actions[0]["action"]["kind"], "createMonth");

    let again = run_once(&db.client, fixed_now(), LOCK_TIMEOUT).await.unwrap();
    assert_eq!((again.status, again.outcomes.len()), (RunStatus::Ok, 0));
}

#[tokio::test]
async fn a_dropped_future_partition_is_recreated_by_the_next_run() {
    let db = TestDb::new().await;
    run_once(&db.client, fixed_now(), LOCK_TIMEOUT).await.unwrap();
    db.client.batch_execute("DROP TABLE events_2027_01").await.unwrap();
    let report = run_once(&db.client, fixed_now(), LOCK_TIMEOUT).await.unwrap();
    assert_eq!(created_months(&report), vec![m(2027, 1)]);
    assert_eq!(db.partition_names().await.len(), 4);
}

#[tokio::test]
async fn two_runners_racing_do_each_action_once() {
    let db = TestDb::new().await;
    let (a, b) = (db.connect().await, db.connect().await);
    let (ra, rb) = tokio::join!(run_once(&a, fixed_now(), LOCK_TIMEOUT), run_once(&b, fixed_now(), LOCK_TIMEOUT));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let mut all = created_months(&ra);
    all.extend(created_months(&rb));
    all.sort();
    assert_eq!(all, vec![m(2026, 11), m(2026, 12), m(2027, 1), m(2027, 2)]);
    for r in [&ra, &rb] {
        assert!(r.outcomes.iter().all(|o| o.status == OutcomeStatus::Done), "{r:?}");
        assert_ne!(r.status, RunStatus::Failed);
    }
    let recorded = list_runs(&db.client, 10).await.unwrap().len();
    let skipped = [&ra, &rb].iter().filter(|r| r.status == RunStatus::Skipped).count();
    assert_eq!(recorded + skipped, 2);
}

#[tokio::test]
async fn rows_in_a_default_partition_are_moved_to_their_months_and_health_recovers() {
    let db = TestDb::new().await;
    run_once(&db.client, fixed_now(), LOCK_TIMEOUT).await.unwrap();
    db.client.batch_execute("CREATE TABLE events_default PARTITION OF events DEFAULT").await.unwrap();
    let h10 = Utc.with_ymd_and_hms(2027, 6, 1, 10, 0, 0).unwrap();
    db.insert_events(h10 + Duration::minutes(15), 2).await;
    db.insert_events(h10 + Duration::minutes(59), 1).await;
    db.insert_events(h10 + Duration::hours(2), 4).await;
    db.insert_events(Utc.with_ymd_and_hms(2025, 3, 10, 23, 30, 0).unwrap(), 1).await;
    let policy = Policy::default();
    let before = health(&db.client, fixed_now(), &policy).await.unwrap();
    let check = before.checks.iter().find(|c| c.name == "defaultPartition").unwrap();
    assert_eq!(check.status, Status::Warning);
    assert_eq!(check.detail, "8 rows in default partition events_default (months: 2025-03, 2027-06)");

    let report = run_once(&db.client, fixed_now(), LOCK_TIMEOUT).await.unwrap();
    assert_eq!(report.status, RunStatus::Ok, "{report:?}");
    let moves: Vec<(Action, i64)> = report
        .outcomes
        .iter()
        .filter(|o| matches!(o.action, Action::MoveDefaultRows { .. }))
        .map(|o| (o.action.clone(), o.moved_rows))
        .collect();
    assert_eq!(
        moves,
        vec![
            (Action::MoveDefaultRows { month: m(2025, 3), rows: 1 }, 1),
            (Action::MoveDefaultRows { month: m(2027, 6), rows: 7 }, 7),
        ]
    );
    let hours: Vec<_> = report.affected_hours().into_iter().collect();
    let h2330 = Utc.with_ymd_and_hms(2025, 3, 10, 23, 0, 0).unwrap();
    assert_eq!(hours, vec![h2330, h10, h10 + Duration::hours(2)]);
    assert_eq!(db.count("SELECT count(*) FROM events_default").await, 0);
    assert_eq!(db.count("SELECT count(*) FROM events_2027_06").await, 7);
    let incomplete = "SELECT count(*) FROM rollup_months WHERE NOT complete";
    assert_eq!(db.count(incomplete).await, 2);

    let after = health(&db.client, fixed_now() + Duration::minutes(1), &policy).await.unwrap();
    let check = after.checks.iter().find(|c| c.name == "defaultPartition").unwrap();
    assert_eq!(check.status, Status::Ok);
}

#[tokio::test]
async fn on_demand_creation_moves_the_months_rows_out_of_the_default_partition() {
    let db = TestDb::new().await;
    db.client.batch_execute("CREATE TABLE events_default PARTITION OF events DEFAULT").await.unwrap();
    db.insert_events(Utc.with_ymd_and_hms(2026, 5, 31, 23, 59, 59).unwrap(), 3).await;
    db.insert_events(Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap(), 1).await;
    let created = create_month(&db.client, m(2026, 5), LOCK_TIMEOUT).await.unwrap();
    assert_eq!((created.created, created.moved_rows), (true, 3));
    assert_eq!(created.affected_hours, vec![Utc.with_ymd_and_hms(2026, 5, 31, 23, 0, 0).unwrap()]);
    assert_eq!(db.count("SELECT count(*) FROM events_default").await, 1);
}

#[tokio::test]
async fn a_parent_never_analyzed_is_analyzed_once_it_has_rows() {
    let db = TestDb::new().await;
    let now = Utc::now();
    run_once(&db.client, now, LOCK_TIMEOUT).await.unwrap();
    db.insert_events(now, 2_000).await;
    let report = run_once(&db.client, now, LOCK_TIMEOUT).await.unwrap();
    let actions: Vec<_> = report.outcomes.iter().map(|o| (o.action.clone(), o.status)).collect();
    assert_eq!(actions, vec![(Action::AnalyzeParent, OutcomeStatus::Done)]);
    let analyzed = "SELECT count(*) FROM pg_stat_user_tables \
                    WHERE relname = 'events' AND last_analyze IS NOT NULL";
    assert_eq!(db.count(analyzed).await, 1);
    // The fresh statistics leave nothing to do.
    db.client.batch_execute("SELECT pg_stat_force_next_flush()").await.unwrap();
    let report = run_once(&db.client, now, LOCK_TIMEOUT).await.unwrap();
    assert_eq!(report.outcomes, vec![]);
}

#[tokio::test]
async fn health_is_ok_after_a_successful_run_and_critical_without_partitions() {
    let db = TestDb::new().await;
    let policy = Policy::default();
    let empty = health(&db.client, fixed_now(), &policy).await.unwrap();
    assert_eq!(empty.status, Status::Critical);
    run_once(&db.client, fixed_now(), LOCK_TIMEOUT).await.unwrap();
    let h = health(&db.client, fixed_now() + Duration::minutes(5), &policy).await.unwrap();
    assert_eq!(h.status, Status::Ok, "{h:?}");
}

#[tokio::test]
async fn the_stored_policy_starts_at_the_defaults_and_round_trips() {
    let db = TestDb::new().await;
    assert_eq!(load_policy(&db.client).await.unwrap(), Policy::default());
    let policy = Policy {
        premake_months: 6,
        retention_months: Some(24),
        retention_mode: partition_jobs::RetentionMode::Drop,
        analyze_min_changed_rows: 10,
        analyze_changed_fraction: 0.25,
        parent_analyze_min_interval_minutes: 30,
        run_stale_after_minutes: 90,
    };
    save_policy(&db.client, &policy).await.unwrap();
    assert_eq!(load_policy(&db.client).await.unwrap(), policy);
    let bad = Policy { premake_months: -1, ..policy };
    assert!(save_policy(&db.client, &bad).await.is_err());
}

#[tokio::test]
async fn the_cli_plans_runs_and_reports_status_as_json() {
    let db = TestDb::new().await;
    let url = db.url();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_partition-jobs"))
            .args(["--database-url", &url, "--json"])
            .args(args)
            .output()
            .expect("run the CLI");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON output");
        (out.status.code(), json)
    };
    let (code, plan) = cli(&["plan"]);
    assert_eq!((code, plan.as_array().unwrap().len()), (Some(0), 4));
    let (code, run) = cli(&["run"]);
    assert_eq!((code, run["status"].as_str()), (Some(0), Some("ok")));
    let (code, status) = cli(&["status"]);
    assert_eq!(code, Some(0));
    assert_eq!(status["catalog"]["partitions"].as_array().unwrap().len(), 4);
}
