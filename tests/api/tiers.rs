//! The multi-tier rollups (quarter-hour, hour, day, month rows with distinct-count sketches): ingestion deltas and
//! compaction keep them equal to the raw rows at every tier, a rebuild reproduces them byte for byte,
//! and large distinct counts stay within the sketch's documented error.

use std::time::Duration as Wait;

use chrono::{DateTime, Duration, DurationRound, Utc};
use serde_json::{json, Value};

use crate::helpers::{connect, spawn_app, spawn_app_with, TestApp, ADMIN_TOKEN};
use crate::oracle::assert_rollups_equal_raw;
use crate::wait::eventually;

/// Every merged row, canonical: sketches are sorted distinct hashes while small.
async fn merged_rows(db: &tokio_postgres::Client) -> Vec<String> {
    let sql = "SELECT format('%s %s %s %s %s %s %s %s', app_id, tier, start, event_type, events, \
                 encode(users, 'hex'), encode(sessions, 'hex'), dims) \
               FROM rollup_tiers WHERE tier > 0 ORDER BY 1";
    db.query(sql, &[]).await.unwrap().iter().map(|r| r.get(0)).collect()
}

async fn compact_all(app: &TestApp) {
    const DELTAS: &str = "SELECT count(*) FROM rollup_tiers WHERE tier = 0";
    let mut client = connect(&app.db_name).await;
    // The server's own compactor may hold the lock for a moment.
    eventually(Wait::from_secs(30), "every delta compacted", async || {
        match strata::rollup::compact::compact(&mut client).await.unwrap() {
            Some(0) => match app.db.query_one(DELTAS, &[]).await.unwrap().get::<_, i64>(0) {
                0 => Ok(()),
                left => Err(format!("{left} deltas left")),
            },
            other => Err(format!("compact answered {other:?}")),
        }
    })
    .await;
}

fn events(base: DateTime<Utc>, n: i64) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let t = base + Duration::minutes(i * 97);
            let ua = if i % 3 == 0 {
                "curl/8.0"
            } else {
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile/15E148"
            };
            let mut e = json!({"eventType": format!("t{}", i % 4), "timestamp": t.to_rfc3339(), "userAgent": ua});
            if i % 5 != 0 {
                e["userId"] = json!(format!("u{}", i % 17));
            }
            if i % 7 != 0 {
                e["sessionId"] = json!(format!("s{}", i % 29));
            }
            e
        })
        .collect()
}

#[tokio::test]
async fn concurrent_ingestion_and_compaction_keep_every_tier_equal_to_raw_rows() {
    let app = spawn_app_with(|c| c.tier_compact_interval = std::time::Duration::from_millis(30)).await;
    let base = Utc::now() - Duration::days(50);
    let batches: Vec<Vec<Value>> = (0..8).map(|k| events(base + Duration::minutes(k * 11), 120)).collect();
    let posts = batches.iter().map(|b| app.post_batch(b));
    for r in futures_util::future::join_all(posts).await {
        assert_eq!(r.status, 201, "{}", r.body);
    }
    // Deltas may remain: readers add them to the merged rows.
    assert_rollups_equal_raw(&app.db).await;
    compact_all(&app).await;
    assert_rollups_equal_raw(&app.db).await;
    let raw: i64 = app.db.query_one("SELECT count(*) FROM events", &[]).await.unwrap().get(0);
    assert_eq!(raw, 960);
}

#[tokio::test]
async fn a_rebuild_reproduces_the_tiers_ingestion_maintained() {
    let app = spawn_app().await;
    let base = Utc::now() - Duration::days(45);
    assert_eq!(app.post_batch(&events(base, 600)).await.status, 201);
    compact_all(&app).await;
    let before = merged_rows(&app.db).await;
    assert!(before.len() > 100, "{} rows", before.len());
    app.db.batch_execute("DELETE FROM rollup_tiers; UPDATE rollup_months SET tiers = false").await.unwrap();

    let mut client = connect(&app.db_name).await;
    let from = partition_jobs::Month::containing(base).start();
    let to = partition_jobs::Month::containing(Utc::now()).end();
    let report = strata::rollup::rebuild::rebuild(&mut client, None, from, to).await.unwrap();
    let after = merged_rows(&app.db).await;
    assert_eq!(after, before);
    let hours: i64 = app.db.query_one("SELECT count(*) FROM rollup_tiers WHERE tier = 1", &[]).await.unwrap().get(0);
    assert_eq!(report.tier_hours as i64, hours);
    // Every month rebuilt is trusted again; the premade months after it were not rebuilt.
    let sql = "SELECT count(*) FILTER (WHERE tiers), count(*) FROM rollup_months WHERE month >= $1 AND month < $2";
    let (first, last) = (from.date_naive(), to.date_naive());
    let row = app.db.query_one(sql, &[&first, &last]).await.unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (report.months as i64, report.months as i64));
}

#[tokio::test]
async fn a_month_whose_tiers_are_not_complete_is_read_raw() {
    let app = spawn_app_with(|c| c.cache_mode = strata::config::CacheMode::Off).await;
    let base = (Utc::now() - Duration::days(3)).duration_trunc(Duration::days(1)).unwrap();
    assert_eq!(app.post_batch(&events(base, 20)).await.status, 201);
    let q = [("appId", app.app_id.to_string()), ("startDate", base.to_rfc3339()), ("endDate", Utc::now().to_rfc3339())];
    let url = app.url(&format!("/api/analytics/apps/{}/overview", app.app_id));
    let before =
        crate::helpers::reply(app.http.get(&url).query(&q[1..]).bearer_auth(ADMIN_TOKEN).send().await.unwrap()).await;
    // Tiers emptied behind the server's back and the months marked incomplete: only raw rows answer.
    app.db.batch_execute("DELETE FROM rollup_tiers; UPDATE rollup_months SET tiers = false").await.unwrap();
    let after =
        crate::helpers::reply(app.http.get(&url).query(&q[1..]).bearer_auth(ADMIN_TOKEN).send().await.unwrap()).await;
    assert_eq!(after.body["meta"]["source"], "raw");
    assert_eq!(after.body["data"], before.body["data"]);
    assert_eq!(after.body["data"]["stats"]["total_events"], 20, "{}", after.body);
}

#[tokio::test]
async fn large_distinct_counts_are_within_three_standard_errors_and_counts_exact() {
    let app = spawn_app_with(|c| c.cache_mode = strata::config::CacheMode::Off).await;
    let hour = (Utc::now() - Duration::days(2)).duration_trunc(Duration::hours(1)).unwrap();
    // 9,000 distinct users in one hour: beyond the sparse limit, so the sketches are HyperLogLogs.
    for chunk in 0..3 {
        let batch: Vec<Value> = (0..3000)
            .map(|i| {
                let n = chunk * 3000 + i;
                json!({"eventType": "view", "userId": format!("user-{n}"), "sessionId": format!("s-{}", n / 2),
                       "timestamp": (hour + Duration::milliseconds(n * 300)).to_rfc3339()})
            })
            .collect();
        assert_eq!(app.post_batch(&batch).await.status, 201);
    }
    compact_all(&app).await;
    let dense: i64 =
        app.db.query_one("SELECT count(*) FROM rollup_tiers WHERE length(users) = 16385", &[]).await.unwrap().get(0);
    assert_eq!(dense, 6, "hour, day and month rows, per type and for all types");
    let day = hour.duration_trunc(Duration::days(1)).unwrap();
    let q = [
        ("appId", app.app_id.to_string()),
        ("startDate", day.to_rfc3339()),
        ("endDate", (day + Duration::days(1)).to_rfc3339()),
        ("interval", "day".to_string()),
    ];
    let get = |path: &'static str| {
        let q = q.clone();
        let app = &app;
        async move {
            crate::helpers::reply(app.http.get(app.url(path)).query(&q).bearer_auth(ADMIN_TOKEN).send().await.unwrap())
                .await
        }
    };
    let tl = get("/api/analytics/events/timeline").await;
    assert_eq!(tl.body["data"][0]["eventCount"], 9000, "{}", tl.body);
    assert_eq!(tl.body["meta"]["source"], "rollup");
    let within = |got: &Value, exact: f64| {
        let got = got.as_f64().unwrap();
        // Standard error 1.04 / sqrt(2^14) = 0.81%; three of them.
        assert!((got - exact).abs() / exact < 0.0244, "estimated {got} for {exact}");
    };
    within(&tl.body["data"][0]["uniqueUsers"], 9000.0);
    let sm = get("/api/analytics/events/summary").await;
    assert_eq!(sm.body["data"][0]["totalEvents"], 9000);
    within(&sm.body["data"][0]["uniqueUsers"], 9000.0);
    within(&sm.body["data"][0]["uniqueSessions"], 4500.0);
}
