//! Redis flushed and stopped mid-run. (`tests/api/cache.rs` already covers Redis absent and killed.)
//! FLUSHALL drops every answer and generation: answers must stay correct, late events must still show
//! within F. A stopped (SIGSTOP) Redis answers nothing: queries and ingestion must go on within the
//! Redis timeout.

use std::time::{Duration, Instant};

use chrono::{Duration as Span, SecondsFormat, Utc};
use serde_json::{json, Value};
use strata::config::CacheMode;
use uuid::Uuid;

use crate::helpers::{reply, spawn_app_with, spawn_server_on, PrivateRedis, Reply, ADMIN_TOKEN};
use crate::wait::{eventually, required, when};

fn event_days_ago(days: i64) -> Value {
    let t = (Utc::now() - Span::days(days)).to_rfc3339_opts(SecondsFormat::Secs, true);
    json!({"eventType": "page_view", "userId": "u-1", "timestamp": t, "eventId": Uuid::new_v4()})
}

/// The daily timeline of a closed ten-day range ending three days ago: (tier, total events).
async fn timeline(http: &reqwest::Client, url: String, app: Uuid) -> (String, i64) {
    let end = Utc::now().date_naive() - chrono::Days::new(3);
    let start = end - chrono::Days::new(10);
    let q = [("appId", app.to_string()), ("startDate", start.to_string()), ("endDate", end.to_string())];
    let r: Reply = reply(http.get(url).query(&q).bearer_auth(ADMIN_TOKEN).send().await.unwrap()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let total = r.body["data"].as_array().unwrap().iter().map(|b| b["eventCount"].as_i64().unwrap()).sum();
    (r.body["meta"]["cache"].as_str().unwrap().to_owned(), total)
}

#[tokio::test]
async fn flushing_or_stopping_redis_mid_run_keeps_answers_correct_and_ingestion_unaffected() {
    let Some(redis) = required(PrivateRedis::start().await, "redis-server") else { return };
    let prefix = format!("test:{}:", Uuid::new_v4());
    let redis_timeout = Duration::from_millis(200);
    let with_redis = |c: &mut strata::config::Config| {
        c.redis_url = Some(redis.url());
        c.redis_prefix = prefix.clone();
        c.redis_timeout = redis_timeout;
        c.freshness = Duration::from_secs(1);
    };
    let app = spawn_app_with(with_redis).await;
    // An instance without L1: every hit it reports comes from Redis.
    let l2 = spawn_server_on(&app.db_name, |c| {
        with_redis(c);
        c.cache_mode = CacheMode::L2;
    })
    .await;
    let url = l2.url("/api/analytics/events/timeline");
    assert_eq!(app.post_batch(&[event_days_ago(8), event_days_ago(7)]).await.status, 201);
    let before = [timeline(&l2.http, url.clone(), app.app_id).await, timeline(&l2.http, url.clone(), app.app_id).await];

    redis.flushall().await;
    let after_flush =
        [timeline(&l2.http, url.clone(), app.app_id).await, timeline(&l2.http, url.clone(), app.app_id).await];
    let late = app.track(&event_days_ago(9)).await;
    // The flush also dropped the generation: the late event's bump must still reach the L2 answers.
    let seen = async || when(timeline(&l2.http, url.clone(), app.app_id).await, |(_, total)| *total == 3);
    let seen = eventually(Duration::from_secs(1), "the late event in the L2 instance's answer", seen).await;

    assert_eq!(before, [("miss".to_owned(), 2), ("l2".to_owned(), 2)]);
    assert_eq!(after_flush, [("miss".to_owned(), 2), ("l2".to_owned(), 2)]);
    assert_eq!(late.status, 201, "{}", late.body);
    assert_eq!(seen.1, 3, "the late event shows within F after FLUSHALL");

    redis.pause(true);
    let t = Instant::now();
    let tracked = app.track(&event_days_ago(6)).await;
    let track_took = t.elapsed();
    let t = Instant::now();
    let answer = timeline(&l2.http, url.clone(), app.app_id).await;
    let query_took = t.elapsed();
    redis.pause(false);

    assert_eq!(tracked.status, 201, "{}", tracked.body);
    assert_eq!(answer, ("miss".to_owned(), 4));
    assert_eq!(app.raw_count().await, 4);
    // One Redis lookup (timed out) and one store (timed out) at most, plus the query itself.
    assert!(query_took < 4 * redis_timeout + Duration::from_millis(500), "query took {query_took:?}");
    assert!(track_took < Duration::from_secs(1), "ingestion took {track_took:?} with Redis stopped");
}
