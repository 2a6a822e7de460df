//! Privacy erasure of one end user's events keeps rollups equal to raw rows.

use chrono::{Duration, Utc};
use serde_json::{json, Value};

use crate::helpers::{reply, spawn_app, ADMIN_TOKEN};

#[tokio::test]
async fn erasing_a_user_deletes_their_events_and_their_rollup_counts_only() {
    let app = spawn_app().await;
    let base = Utc::now() - Duration::days(3);
    let events: Vec<Value> = (0..8)
        .map(|i| {
            let user = if i < 5 { "erase-me" } else { "keep-me" };
            json!({"eventType": "view", "userId": user, "timestamp": (base + Duration::minutes(i * 25)).to_rfc3339(),
                   "userAgent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile/15E148"})
        })
        .collect();
    assert_eq!(app.post_batch(&events).await.status, 201);
    let url = app.url(&format!("/api/analytics/users/erase-me?appId={}", app.app_id));

    let r = reply(app.http.delete(&url).send().await.unwrap()).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (401, Some("unauthorized")));
    let no_app = app.url("/api/analytics/users/erase-me");
    let r = reply(app.http.delete(no_app).bearer_auth(ADMIN_TOKEN).send().await.unwrap()).await;
    assert_eq!((r.status, r.body["error"]["details"]["parameter"].as_str()), (400, Some("appId")));

    let overview = app.url(&format!("/api/analytics/apps/{}/overview", app.app_id));
    let users = || async {
        let r = reply(app.http.get(&overview).bearer_auth(ADMIN_TOKEN).send().await.unwrap()).await;
        (r.body["data"]["stats"]["totalEvents"].clone(), r.body["data"]["stats"]["totalUsers"].clone())
    };
    assert_eq!(users().await, (json!(8), json!(2)));

    let r = reply(app.http.delete(&url).bearer_auth(ADMIN_TOKEN).send().await.unwrap()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // The distinct-user sketches of every tier forget the erased user.
    assert_eq!(users().await, (json!(3), json!(1)));
    assert_eq!(r.body["data"]["deletedEvents"], 5);
    assert_eq!(app.raw_count().await, 3);
    assert_eq!(app.rollup_count().await, 3);
    let left: Vec<String> =
        app.db.query("SELECT DISTINCT user_id FROM events", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(left, ["keep-me"]);
    // Hour by hour, rollups (all shards) equal raw counts, breakdowns included.
    let mismatches: i64 = app
        .db
        .query_one(
            "WITH raw AS (SELECT date_trunc('hour', created_at, 'UTC') AS hour, count(*) AS n FROM events GROUP BY 1), \
                  r AS (SELECT hour, sum(events) AS n FROM rollup_hourly GROUP BY 1), \
                  d AS (SELECT hour, sum(events) AS n FROM rollup_hourly_dims WHERE dim = 'os' GROUP BY 1) \
             SELECT count(*) FROM raw FULL JOIN r USING (hour) FULL JOIN d USING (hour) \
             WHERE raw.n IS DISTINCT FROM r.n OR raw.n IS DISTINCT FROM d.n",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(mismatches, 0);
    let again = reply(app.http.delete(&url).bearer_auth(ADMIN_TOKEN).send().await.unwrap()).await;
    assert_eq!(again.body["data"]["deletedEvents"], 0);
}
