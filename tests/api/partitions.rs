//! The scheduler and DBA endpoints against real PostgreSQL.

use chrono::{Duration, Utc};
use partition_jobs::Month;
use serde_json::{json, Value};

use crate::helpers::{reply, spawn_app, Reply, TestApp, ADMIN_TOKEN};

async fn admin_get(app: &TestApp, path: &str) -> Reply {
    reply(app.http.get(app.url(path)).bearer_auth(ADMIN_TOKEN).send().await.unwrap()).await
}

async fn run_maintenance(app: &TestApp) -> Reply {
    reply(app.http.post(app.url("/api/admin/maintenance/run")).bearer_auth(ADMIN_TOKEN).send().await.unwrap()).await
}

#[tokio::test]
async fn admin_endpoints_require_the_admin_token() {
    let app = spawn_app().await;
    for path in
        ["/api/admin/partitions", "/api/admin/partitions/health", "/api/admin/maintenance/runs", "/api/admin/indexes"]
    {
        let r = reply(app.http.get(app.url(path)).send().await.unwrap()).await;
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (401, Some("unauthorized")), "{path}");
        let r = reply(app.http.get(app.url(path)).bearer_auth("wrong").send().await.unwrap()).await;
        assert_eq!(r.status, 401, "{path}");
    }
    let r = reply(app.http.post(app.url("/api/admin/maintenance/run")).send().await.unwrap()).await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn partitions_list_the_premade_months_with_bounds() {
    let app = spawn_app().await;
    let r = admin_get(&app, "/api/admin/partitions").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let names: Vec<&str> =
        r.body["data"]["partitions"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    let now = Month::containing(Utc::now());
    let expected: Vec<String> = (0..=3).map(|i| now.add_months(i).partition_name()).collect();
    assert_eq!(names, expected);
    let idx = admin_get(&app, "/api/admin/indexes").await;
    let indexes: Vec<&str> =
        idx.body["data"].as_array().unwrap().iter().map(|i| i["index"].as_str().unwrap()).collect();
    // Partitioned indexes are reported per partition (pg_stat_user_indexes has no parent rows).
    let current = format!("{}_app_id_created_at_idx", now.partition_name());
    assert!(indexes.contains(&current.as_str()), "{indexes:?}");
    let slow = admin_get(&app, "/api/admin/slow-queries").await;
    assert_eq!((slow.status, slow.body["error"]["code"].as_str()), (501, Some("extension_unavailable")));
}

#[tokio::test]
async fn a_dropped_future_partition_is_recreated_by_the_next_run_and_recorded() {
    let app = spawn_app().await;
    let last = Month::containing(Utc::now()).add_months(3).partition_name();
    app.db.batch_execute(&format!("DROP TABLE {last}")).await.unwrap();
    let health = admin_get(&app, "/api/admin/partitions/health").await;
    // The furthest premade month missing is a warning (ingestion is not at risk yet).
    assert_eq!(health.body["data"]["status"], "warning", "{}", health.body);
    assert_eq!(health.body["data"]["checks"][0]["name"], "coverage");
    assert_eq!(health.body["data"]["checks"][0]["status"], "warning");
    let run = run_maintenance(&app).await;
    assert_eq!(run.status, 200, "{}", run.body);
    assert_eq!(run.body["data"]["status"], "ok", "{}", run.body);
    let exists: i64 =
        app.db.query_one("SELECT count(*) FROM pg_class WHERE relname = $1", &[&last]).await.unwrap().get(0);
    assert_eq!(exists, 1);
    let runs = admin_get(&app, "/api/admin/maintenance/runs").await;
    let latest = &runs.body["data"][0];
    assert_eq!(latest["status"], "ok", "{}", runs.body);
    let health = admin_get(&app, "/api/admin/partitions/health").await;
    let failing: Vec<&Value> =
        health.body["data"]["checks"].as_array().unwrap().iter().filter(|c| c["status"] != "ok").collect();
    assert!(failing.is_empty(), "{failing:?}");
    assert_eq!(health.body["data"]["status"], "ok");
}

#[tokio::test]
async fn rows_in_a_default_partition_are_moved_and_their_rollups_rebuilt() {
    let app = spawn_app().await;
    let late = Utc::now() - Duration::days(250);
    let month = Month::containing(late);
    app.db.batch_execute("CREATE TABLE events_default PARTITION OF events DEFAULT").await.unwrap();
    app.db
        .execute(
            "INSERT INTO events (event_id, app_id, event_type, created_at, received_at) \
             SELECT gen_random_uuid(), $1, 'imported', $2::timestamptz + i * interval '1 minute', now() \
             FROM generate_series(1, 90) AS i",
            &[&app.app_id, &late],
        )
        .await
        .unwrap();
    let health = admin_get(&app, "/api/admin/partitions/health").await;
    assert_ne!(health.body["data"]["status"], "ok", "{}", health.body);
    let run = run_maintenance(&app).await;
    assert_eq!(run.body["data"]["status"], "ok", "{}", run.body);
    let in_default: i64 = app.db.query_one("SELECT count(*) FROM events_default", &[]).await.unwrap().get(0);
    assert_eq!(in_default, 0);
    let moved: i64 =
        app.db.query_one(&format!("SELECT count(*) FROM {}", month.partition_name()), &[]).await.unwrap().get(0);
    assert_eq!(moved, 90);
    assert_eq!(app.rollup_count().await, 90);
    let complete: bool = app
        .db
        .query_one("SELECT complete FROM rollup_months WHERE month = $1", &[&month.start().date_naive()])
        .await
        .unwrap()
        .get(0);
    assert!(complete);
}

#[tokio::test]
async fn maintenance_while_ingesting_blocks_and_loses_nothing() {
    let app = std::sync::Arc::new(spawn_app().await);
    let last = Month::containing(Utc::now()).add_months(3).partition_name();
    app.db.batch_execute(&format!("DROP TABLE {last}")).await.unwrap();
    // A long reader holds a lock on events, as dashboards and backups do.
    let mut reader = crate::helpers::connect(&app.db_name).await;
    let tx = reader.transaction().await.unwrap();
    tx.query("SELECT count(*) FROM events", &[]).await.unwrap();
    let ingest = {
        let app = app.clone();
        tokio::spawn(async move {
            let mut ok = 0;
            for i in 0..40 {
                let r = app.post_batch(&vec![json!({"eventType": "during", "userId": format!("u{i}")}); 5]).await;
                assert_eq!(r.status, 201, "{}", r.body);
                ok += 5;
            }
            ok
        })
    };
    let run = tokio::time::timeout(std::time::Duration::from_secs(20), run_maintenance(&app)).await.unwrap();
    assert_eq!(run.body["data"]["status"], "ok", "{}", run.body);
    let acked = ingest.await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(app.raw_count().await, acked);
    assert_eq!(app.rollup_count().await, acked);
}

#[tokio::test]
async fn health_names_months_whose_rollups_are_not_trusted() {
    let app = spawn_app().await;
    let rollups =
        |body: &Value| body["data"]["checks"].as_array().unwrap().iter().find(|c| c["name"] == "rollups").cloned();
    let health = admin_get(&app, "/api/admin/partitions/health").await;
    let check = rollups(&health.body).expect("a rollups check");
    assert_eq!(
        (check["status"].as_str(), check["detail"].as_str()),
        (Some("ok"), Some("every month's rollups are complete"))
    );
    let current = Month::containing(Utc::now());
    let (next, after) = (current.add_months(1), current.add_months(2));
    app.db.execute("UPDATE rollup_months SET tiers = false WHERE month = $1", &[&current.first_day()]).await.unwrap();
    app.db.execute("DELETE FROM rollup_months WHERE month = $1", &[&next.first_day()]).await.unwrap();
    app.db.execute("UPDATE rollup_months SET quarters = false WHERE month = $1", &[&after.first_day()]).await.unwrap();
    let health = admin_get(&app, "/api/admin/partitions/health").await;
    assert_eq!(health.body["data"]["status"], "warning", "{}", health.body);
    let check = rollups(&health.body).unwrap();
    assert_eq!(check["status"], "warning");
    assert_eq!(
        check["detail"],
        format!(
            "months answered (partly) from raw rows until `strata rollups rebuild` completes them: {current} (rollup \
             tiers not built), {next} (not recorded), {after} (no quarter hours: +5:30/+5:45 zones read its bucket \
             edges raw)"
        )
    );
}
