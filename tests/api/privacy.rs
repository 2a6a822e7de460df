//! Privacy erasure of one end user's events keeps rollups equal to raw rows and reaches every cache
//! tier of every instance; Redis never holds a raw user id.

use chrono::{Duration, Utc};
use serde_json::{json, Value};
use strata::config::{CacheMode, Config};
use uuid::Uuid;

use crate::helpers::{reply, spawn_app, spawn_app_with, spawn_server_on, Reply, ADMIN_TOKEN};
use crate::oracle::assert_rollups_equal_raw;
use crate::wait::{eventually, when};

const TEST_REDIS: &str = "redis://127.0.0.1:6379";

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
    assert_rollups_equal_raw(&app.db).await;
    let again = reply(app.http.delete(&url).bearer_auth(ADMIN_TOKEN).send().await.unwrap()).await;
    assert_eq!(again.body["data"]["deletedEvents"], 0);
}

/// Redis on (the shared test server) under a prefix no other test uses.
fn with_redis(prefix: &str) -> impl Fn(&mut Config) + '_ {
    move |c: &mut Config| {
        c.redis_url = Some(TEST_REDIS.into());
        c.redis_prefix = prefix.to_owned();
        c.redis_timeout = std::time::Duration::from_millis(500);
    }
}

fn unique_prefix() -> String {
    format!("test:{}:", Uuid::new_v4())
}

async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(TEST_REDIS).unwrap().get_multiplexed_async_connection().await.unwrap()
}

/// Every key under `prefix` (SCAN, the test's own keys only) with its content as bytes: a string's
/// value, a sorted set's members and scores, anything else's DUMP.
async fn redis_contents(prefix: &str) -> Vec<(String, Vec<u8>)> {
    let mut con = redis().await;
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut con)
            .await
            .unwrap();
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let mut out = Vec::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE").arg(&key).query_async(&mut con).await.unwrap();
        let content: Vec<u8> = match kind.as_str() {
            "string" => {
                redis::cmd("GET").arg(&key).query_async::<Option<Vec<u8>>>(&mut con).await.unwrap().unwrap_or_default()
            }
            "zset" => {
                let members: Vec<Vec<u8>> = redis::cmd("ZRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES")
                    .query_async(&mut con)
                    .await
                    .unwrap();
                members.concat()
            }
            "none" => continue,
            _ => {
                redis::cmd("DUMP").arg(&key).query_async::<Option<Vec<u8>>>(&mut con).await.unwrap().unwrap_or_default()
            }
        };
        out.push((key, content));
    }
    out
}

/// The keys under `prefix` holding a user's activity.
async fn user_keys(prefix: &str) -> Vec<String> {
    redis_contents(prefix).await.into_iter().map(|(k, _)| k).filter(|k| k.contains(":user|")).collect()
}

async fn wait_for_user_keys(prefix: &str, n: usize) {
    let what = format!("{n} user answers in Redis under {prefix}");
    eventually(std::time::Duration::from_secs(10), &what, async || when(user_keys(prefix).await, |k| k.len() >= n))
        .await;
}

async fn get(http: &reqwest::Client, url: String) -> Reply {
    reply(http.get(url).bearer_auth(ADMIN_TOKEN).send().await.unwrap()).await
}

fn activity(r: &Reply) -> (i64, usize, &str) {
    assert_eq!(r.status, 200, "{}", r.body);
    (
        r.body["data"]["summary"]["totalEvents"].as_i64().unwrap(),
        r.body["data"]["recentEvents"].as_array().unwrap().len(),
        r.body["meta"]["cache"].as_str().unwrap(),
    )
}

/// Events of two users a few days ago.
fn events_of(users: &[(&str, usize)]) -> Vec<Value> {
    let base = Utc::now() - Duration::days(2);
    let mut out = Vec::new();
    for (u, n) in users {
        for i in 0..*n {
            out.push(json!({"eventType": "view", "userId": u, "sessionId": format!("s-{u}"),
                            "timestamp": (base + Duration::minutes(i as i64 * 7)).to_rfc3339(),
                            "userAgent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/120.0.0.0 Safari/537.36"}));
        }
    }
    out
}

#[tokio::test]
async fn after_an_erasure_no_cache_tier_of_any_instance_answers_the_users_activity() {
    let prefix = unique_prefix();
    let a = spawn_app_with(with_redis(&prefix)).await;
    let b = spawn_server_on(&a.db_name, with_redis(&prefix)).await;
    assert_eq!(a.post_batch(&events_of(&[("erase-me", 4), ("keep-me", 2)])).await.status, 201);
    let path = format!("/api/analytics/users/erase-me?appId={}", a.app_id);
    let overview = format!("/api/analytics/apps/{}/overview", a.app_id);

    assert_eq!(activity(&get(&a.http, a.url(&path)).await), (4, 4, "miss"));
    wait_for_user_keys(&prefix, 1).await; // the L2 fill is asynchronous
    assert_eq!(activity(&get(&a.http, a.url(&path)).await), (4, 4, "l2"));
    assert_eq!(activity(&get(&b.http, b.url(&path)).await), (4, 4, "l2"));
    assert_eq!(get(&b.http, b.url(&overview)).await.body["data"]["stats"]["totalUsers"], 2);
    assert_eq!(get(&b.http, b.url(&overview)).await.body["meta"]["cache"], "l1");

    let r = reply(a.http.delete(a.url(&path)).bearer_auth(ADMIN_TOKEN).send().await.unwrap()).await;
    assert_eq!((r.status, &r.body["data"]["deletedEvents"]), (200, &json!(4)), "{}", r.body);

    // Acknowledged: the answer is gone from Redis, and neither instance serves it.
    assert_eq!(user_keys(&prefix).await, Vec::<String>::new());
    assert_eq!(activity(&get(&b.http, b.url(&path)).await), (0, 0, "miss"));
    assert_eq!(activity(&get(&a.http, a.url(&path)).await).0, 0);
    let kept = format!("/api/analytics/users/keep-me?appId={}", a.app_id);
    assert_eq!(activity(&get(&b.http, b.url(&kept)).await).0, 2);
    // Aggregates follow the app's invalidation: other instances drop their L1 within a second.
    let users =
        async || when(get(&b.http, b.url(&overview)).await.body["data"]["stats"]["totalUsers"].clone(), |u| u == 1);
    assert_eq!(
        eventually(std::time::Duration::from_secs(1), "instance B's overview without the erased user", users).await,
        1
    );
}

#[tokio::test]
async fn without_redis_an_erasure_drops_the_users_answer_from_l1() {
    let app = spawn_app_with(|c| c.cache_mode = CacheMode::L1).await;
    assert_eq!(app.post_batch(&events_of(&[("erase-me", 3)])).await.status, 201);
    let path = format!("/api/analytics/users/erase-me?appId={}", app.app_id);
    assert_eq!(activity(&get(&app.http, app.url(&path)).await), (3, 3, "miss"));
    assert_eq!(activity(&get(&app.http, app.url(&path)).await), (3, 3, "l1"));

    let r = reply(app.http.delete(app.url(&path)).bearer_auth(ADMIN_TOKEN).send().await.unwrap()).await;
    assert_eq!(r.status, 200, "{}", r.body);

    assert_eq!(activity(&get(&app.http, app.url(&path)).await), (0, 0, "miss"));
}

#[tokio::test]
async fn no_redis_key_or_value_holds_a_raw_user_id_after_lookups_timelines_and_summaries() {
    let prefix = unique_prefix();
    let warm = |c: &mut Config| {
        with_redis(&prefix)(c);
        c.cache_warm = Some(5);
    };
    let app = spawn_app().await;
    let server = spawn_server_on(&app.db_name, warm).await;
    let users = ["Zq7-alice@example.com", "Zq7-bob-4711"];
    assert_eq!(app.post_batch(&events_of(&[(users[0], 3), (users[1], 2)])).await.status, 201);
    let id = app.app_id;
    for u in users {
        let r = get(&server.http, server.url(&format!("/api/analytics/users/{u}?appId={id}"))).await;
        assert_eq!(r.body["data"]["userId"], u, "{}", r.body);
    }
    let day = |d: i64| (Utc::now() + Duration::days(d)).date_naive().to_string();
    for path in ["/api/analytics/events/timeline", "/api/analytics/events/summary"] {
        let q = format!("{path}?appId={id}&startDate={}&endDate={}", day(-5), day(-1));
        assert_eq!(get(&server.http, server.url(&q)).await.status, 200);
        assert_eq!(get(&server.http, server.url(&format!("{path}?appId={id}"))).await.status, 200);
    }
    assert_eq!(get(&server.http, server.url(&format!("/api/analytics/apps/{id}/overview"))).await.status, 200);
    server.cache.warm_now().await; // also adds the request counts to Redis
    wait_for_user_keys(&prefix, 2).await;

    let contents = redis_contents(&prefix).await;
    assert!(contents.len() >= 6, "answers, generation and warming records: {:?}", contents.len());
    for (key, value) in &contents {
        for u in users {
            assert!(!key.contains(u), "key {key} holds {u}");
            assert!(!value.windows(u.len()).any(|w| w == u.as_bytes()), "value of {key} holds {u}");
        }
    }
    // The user's activity is stored (under a keyed hash) and answered again with its id put back.
    let stored: Vec<&(String, Vec<u8>)> = contents.iter().filter(|(k, _)| k.contains(":user|")).collect();
    assert_eq!(stored.len(), 2);
    for (key, value) in stored {
        let hash = key.rsplit_once("user|").unwrap().1;
        assert!(hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()), "{key}");
        assert!(String::from_utf8_lossy(value).contains("\"totalEvents\""), "{key}");
    }
    let again = get(&server.http, server.url(&format!("/api/analytics/users/{}?appId={id}", users[0]))).await;
    assert_eq!((activity(&again), &again.body["data"]["userId"]), ((3, 3, "l2"), &json!(users[0])));
}
