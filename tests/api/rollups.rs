//! Rebuilding rollups from raw rows gives exactly what ingestion maintained.

use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Value};

use crate::helpers::spawn_app;

async fn snapshot(db: &tokio_postgres::Client) -> (Vec<String>, Vec<String>) {
    let hourly = db
        .query(
            "SELECT format('%s %s %s %s %s %s %s %s', app_id, hour, event_type, sum(events), sum(q0), sum(q1), sum(q2), sum(q3)) \
             FROM rollup_hourly GROUP BY app_id, hour, event_type ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let dims = db
        .query(
            "SELECT format('%s %s %s %s %s %s', app_id, hour, event_type, dim, value, sum(events)) \
             FROM rollup_hourly_dims GROUP BY app_id, hour, event_type, dim, value ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    (hourly.iter().map(|r| r.get(0)).collect(), dims.iter().map(|r| r.get(0)).collect())
}

#[tokio::test]
async fn rebuilding_rollups_reproduces_what_ingestion_maintained() {
    let app = spawn_app().await;
    let base: DateTime<Utc> = Utc::now() - Duration::days(40);
    let events: Vec<Value> = (0..300)
        .map(|i| {
            let t = base + Duration::minutes(i * 173);
            json!({"eventType": format!("t{}", i % 5), "timestamp": t.to_rfc3339(), "userAgent": if i % 2 == 0 { "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile/15E148" } else { "curl/8.0" }})
        })
        .collect();
    assert_eq!(app.post_batch(&events).await.status, 201);
    let before = snapshot(&app.db).await;
    assert_eq!(
        before.0.len() as i64,
        app.db.query_one("SELECT count(*) FROM rollup_hourly", &[]).await.unwrap().get::<_, i64>(0)
    );
    app.db
        .batch_execute("DELETE FROM rollup_hourly; DELETE FROM rollup_hourly_dims; DELETE FROM rollup_months")
        .await
        .unwrap();

    let mut client = crate::helpers::connect(&app.db_name).await;
    let from = partition_jobs::Month::containing(base).start();
    let to = partition_jobs::Month::containing(Utc::now()).end();
    let report = strata::rollup::rebuild::rebuild(&mut client, None, from, to).await.unwrap();
    assert_eq!(report.hourly_rows as usize, before.0.len());
    assert_eq!(snapshot(&app.db).await, before);
    let complete: i64 =
        app.db.query_one("SELECT count(*) FROM rollup_months WHERE complete", &[]).await.unwrap().get(0);
    assert_eq!(complete, report.months as i64);
}
