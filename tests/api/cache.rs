//! The analytics cache: hit sequence (miss → l1 → l2 on another instance), freshness after ingest,
//! late events, cross-instance invalidation over the bus, Redis absent or killed mid-test, and
//! single flight of identical misses; warming in [`warming`].

mod warming;

use std::time::Duration;

use chrono::{DateTime, Duration as Span, SecondsFormat, Utc};
use serde_json::{json, Value};
use strata::config::{CacheMode, Config};
use uuid::Uuid;

use crate::helpers::{
    connect, reply, spawn_app_with, spawn_server_on, PrivateRedis, Reply, TestApp, TestServer, ADMIN_TOKEN,
};
use crate::wait::{eventually, required, until_bus_connected, when};

const TEST_REDIS: &str = "redis://127.0.0.1:6379";

/// Redis on, with a prefix no other test uses.
fn with_redis(prefix: &str) -> impl Fn(&mut Config) + '_ {
    move |c: &mut Config| {
        c.redis_url = Some(TEST_REDIS.into());
        c.redis_prefix = prefix.to_owned();
        // Generous: a loaded test machine must not turn hits into timeouts.
        c.redis_timeout = Duration::from_millis(500);
    }
}

/// Waits (up to 10 s) until Redis holds an answer under `prefix`.
async fn wait_for_answers_in_redis(prefix: &str) {
    let client = redis::Client::open(TEST_REDIS).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let pattern = format!("{prefix}{}:*", strata::cache::keys::KEY_VERSION);
    let keys = async || {
        let keys: Vec<String> = redis::cmd("KEYS").arg(&pattern).query_async(&mut con).await.unwrap();
        when(keys, |k| !k.is_empty())
    };
    eventually(Duration::from_secs(10), &format!("an answer in Redis under {pattern}"), keys).await;
}

fn unique_prefix() -> String {
    format!("test:{}:", Uuid::new_v4())
}

fn at(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

async fn get(http: &reqwest::Client, url: String, query: &[(&str, String)]) -> Reply {
    reply(http.get(url).query(query).bearer_auth(ADMIN_TOKEN).send().await.unwrap()).await
}

/// A closed ten-day range ending three days ago, by day.
fn closed_range(app: Uuid) -> Vec<(&'static str, String)> {
    let end = Utc::now().date_naive() - chrono::Days::new(3);
    let start = end - chrono::Days::new(10);
    vec![
        ("appId", app.to_string()),
        ("startDate", start.to_string()),
        ("endDate", end.to_string()),
        ("interval", "day".into()),
    ]
}

fn event_at(t: DateTime<Utc>) -> Value {
    json!({"eventType": "page_view", "userId": "u-1", "timestamp": at(t)})
}

fn total(r: &Reply) -> i64 {
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["data"].as_array().unwrap().iter().map(|b| b["eventCount"].as_i64().unwrap()).sum()
}

fn tier(r: &Reply) -> &str {
    r.body["meta"]["cache"].as_str().unwrap()
}

async fn timeline(app: &TestApp, query: &[(&str, String)]) -> Reply {
    get(&app.http, app.url("/api/analytics/events/timeline"), query).await
}

/// Tracks `event` (201), then asks for the timeline `q`.
async fn after_tracking(app: &TestApp, event: &Value, q: &[(&str, String)]) -> Reply {
    let r = app.track(event).await;
    assert_eq!(r.status, 201, "{}", r.body);
    timeline(app, q).await
}

async fn seed(app: &TestApp) {
    let t = Utc::now() - Span::days(8);
    let r = app.post_batch(&[event_at(t), event_at(t + Span::hours(1))]).await;
    assert_eq!(r.status, 201, "{}", r.body);
}

#[tokio::test]
async fn a_repeated_query_is_a_miss_then_an_l1_hit_with_the_same_answer() {
    let prefix = unique_prefix();
    let app = spawn_app_with(with_redis(&prefix)).await;
    seed(&app).await;
    let q = closed_range(app.app_id);

    let first = timeline(&app, &q).await;
    let second = timeline(&app, &q).await;

    assert_eq!((tier(&first), first.body["cached"].clone()), ("miss", json!(false)));
    assert_eq!((tier(&second), second.body["cached"].clone()), ("l1", json!(true)));
    assert_eq!(first.body["data"], second.body["data"]);
    assert_eq!(total(&second), 2);
}

#[tokio::test]
async fn another_instance_sharing_redis_answers_from_l2() {
    let prefix = unique_prefix();
    let app = spawn_app_with(with_redis(&prefix)).await;
    seed(&app).await;
    let q = closed_range(app.app_id);
    let first = timeline(&app, &q).await;
    assert_eq!(tier(&first), "miss");
    wait_for_answers_in_redis(&prefix).await; // the L2 fill is asynchronous

    let other = spawn_server_on(&app.db_name, with_redis(&prefix)).await;
    let from_other = get(&other.http, other.url("/api/analytics/events/timeline"), &q).await;

    assert_eq!(tier(&from_other), "l2", "{}", from_other.body);
    assert_eq!(from_other.body["cached"], json!(true));
    assert_eq!(from_other.body["data"], first.body["data"]);
    assert_eq!(other.cache.computations(), 0);
}

#[tokio::test]
async fn an_ingested_event_shows_in_the_next_query_within_the_freshness_period() {
    let prefix = unique_prefix();
    let app = spawn_app_with(with_redis(&prefix)).await;
    let q = vec![("appId", app.app_id.to_string()), ("interval", "hour".into())];
    assert_eq!(total(&timeline(&app, &q).await), 0);
    assert_eq!(total(&timeline(&app, &q).await), 0);

    let after = after_tracking(&app, &event_at(Utc::now() - Span::seconds(2)), &q).await;

    assert_eq!(total(&after), 1);
    assert_eq!(tier(&after), "miss");
}

#[tokio::test]
async fn a_late_event_invalidates_the_closed_range_holding_its_bucket() {
    let prefix = unique_prefix();
    let app = spawn_app_with(with_redis(&prefix)).await;
    seed(&app).await;
    let q = closed_range(app.app_id);
    assert_eq!(total(&timeline(&app, &q).await), 2);
    assert_eq!(tier(&timeline(&app, &q).await), "l1");

    let after = after_tracking(&app, &event_at(Utc::now() - Span::days(9)), &q).await;

    assert_eq!(total(&after), 3);
    assert_eq!(tier(&after), "miss");
}

#[tokio::test]
async fn an_invalidation_on_one_instance_evicts_the_other_instances_l1_within_a_second() {
    let prefix = unique_prefix();
    // A long freshness period: only the bus can explain a prompt eviction.
    let long = |c: &mut Config| {
        with_redis(&prefix)(c);
        c.freshness = Duration::from_secs(60);
    };
    let a = spawn_app_with(long).await;
    seed(&a).await;
    let b = spawn_server_on(&a.db_name, long).await;
    until_bus_connected(&b).await;
    let q = closed_range(a.app_id);
    let url = b.url("/api/analytics/events/timeline");
    get(&b.http, url.clone(), &q).await;
    assert_eq!(tier(&get(&b.http, url.clone(), &q).await), "l1");

    let r = a.track(&event_at(Utc::now() - Span::days(9))).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let seen = async || when(total(&get(&b.http, url.clone(), &q).await), |n| *n == 3);
    let seen = eventually(Duration::from_secs(1), "instance B sees the late event", seen).await;

    assert_eq!(seen, 3, "instance B saw the event within a second");
}

#[tokio::test]
async fn without_redis_queries_are_answered_correctly_from_l1_and_the_database() {
    let app = spawn_app_with(|c| {
        c.redis_url = Some("redis://127.0.0.1:1".into());
        c.redis_prefix = unique_prefix();
    })
    .await;
    seed(&app).await;
    let q = closed_range(app.app_id);

    let first = timeline(&app, &q).await;
    let second = timeline(&app, &q).await;
    app.track(&event_at(Utc::now() - Span::days(9))).await;
    let third = timeline(&app, &q).await;

    assert_eq!((tier(&first), total(&first)), ("miss", 2));
    assert_eq!((tier(&second), total(&second)), ("l1", 2));
    assert_eq!((tier(&third), total(&third)), ("miss", 3));
}

#[tokio::test]
async fn queries_stay_correct_when_redis_dies_mid_test() {
    let Some(mut redis) = required(PrivateRedis::start().await, "redis-server") else { return };
    let url = redis.url();
    let app = spawn_app_with(|c| {
        c.redis_url = Some(url.clone());
        c.redis_prefix = unique_prefix();
    })
    .await;
    seed(&app).await;
    let q = closed_range(app.app_id);
    assert_eq!(tier(&timeline(&app, &q).await), "miss");

    redis.kill();
    app.track(&event_at(Utc::now() - Span::days(9))).await;
    let mut answers = Vec::new();
    for _ in 0..3 {
        let r = timeline(&app, &q).await;
        answers.push((tier(&r).to_owned(), total(&r)));
    }

    assert_eq!(answers, [("miss".to_owned(), 3), ("l1".to_owned(), 3), ("l1".to_owned(), 3)]);
}

#[tokio::test]
async fn identical_concurrent_misses_compute_once() {
    let app = spawn_app_with(|_| {}).await;
    seed(&app).await;
    let server = spawn_server_on(&app.db_name, |c| c.cache_mode = CacheMode::L1).await;
    let q = closed_range(app.app_id);
    let url = server.url("/api/analytics/events/timeline");

    let answers = all_aboard(&server, &app.db_name, &url, &q, 20).await;

    assert!(answers.iter().all(|r| total(r) == 2));
    assert_eq!(server.cache.computations(), 1);
}

#[tokio::test]
async fn with_the_cache_off_every_query_is_a_miss() {
    let app = spawn_app_with(|c| c.cache_mode = CacheMode::Off).await;
    let q = closed_range(app.app_id);
    for _ in 0..2 {
        assert_eq!(tier(&timeline(&app, &q).await), "miss");
    }
}

#[tokio::test]
async fn one_apps_user_activity_is_cached_and_refreshed_by_ingest() {
    let prefix = unique_prefix();
    let app = spawn_app_with(with_redis(&prefix)).await;
    seed(&app).await;
    let url = app.url("/api/analytics/users/u-1");
    let q = [("appId", app.app_id.to_string())];
    let events = |r: &Reply| r.body["data"]["summary"]["totalEvents"].as_i64().unwrap();

    let first = get(&app.http, url.clone(), &q).await;
    wait_for_answers_in_redis(&prefix).await; // the L2 fill is asynchronous
    let second = get(&app.http, url.clone(), &q).await;
    app.track(&event_at(Utc::now() - Span::days(1))).await;
    let third = get(&app.http, url.clone(), &q).await;
    let all_apps = get(&app.http, url.clone(), &[]).await;

    assert_eq!((tier(&first), events(&first)), ("miss", 2));
    // Personal answers live in Redis alone when there is one (an erasure reaches every instance).
    assert_eq!((tier(&second), events(&second)), ("l2", 2));
    assert_eq!((tier(&third), events(&third)), ("miss", 3));
    assert_eq!((tier(&all_apps), events(&all_apps)), ("miss", 3));
}

/// Top-level keys of a body, and `meta`'s.
fn shape(r: &Reply) -> (Vec<String>, Vec<String>) {
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    (keys(&r.body), keys(&r.body["meta"]))
}

#[tokio::test]
async fn hits_are_written_around_the_stored_data_with_the_envelope_of_a_miss() {
    let app = spawn_app_with(|c| c.cache_mode = CacheMode::L1).await;
    seed(&app).await;
    let q = closed_range(app.app_id);
    let overview_url = app.url(&format!("/api/analytics/apps/{}/overview", app.app_id));
    let overview_q = [("startDate", q[1].1.clone()), ("endDate", q[2].1.clone())];

    let (miss, hit) = (timeline(&app, &q).await, timeline(&app, &q).await);
    let overview_miss = get(&app.http, overview_url.clone(), &overview_q).await;
    let overview_hit = get(&app.http, overview_url, &overview_q).await;

    assert_eq!((tier(&miss), tier(&hit)), ("miss", "l1"));
    assert_eq!(hit.headers["content-type"], "application/json");
    assert_eq!(shape(&hit), shape(&miss));
    assert_eq!(shape(&hit).0, ["cached", "data", "meta", "success"]);
    assert_eq!(shape(&hit).1, ["cache", "generatedAt", "interval", "range", "source", "tz"]);
    assert_eq!(hit.body["success"], json!(true));
    assert_eq!(hit.body["meta"]["source"], miss.body["meta"]["source"]);
    assert_eq!(hit.body["data"], miss.body["data"]);
    assert_eq!((tier(&overview_miss), tier(&overview_hit)), ("miss", "l1"));
    assert_eq!(shape(&overview_hit), shape(&overview_miss));
    assert_eq!(overview_hit.body["data"], overview_miss.body["data"]);
    assert_eq!(overview_hit.body["data"]["app"]["id"], json!(app.app_id));
    assert_eq!(overview_hit.body["data"]["app"]["name"], json!("test app"));
    assert_eq!(overview_hit.body["data"]["stats"]["totalEvents"], json!(2));
}

/// Sends `n` identical queries at once and answers them all, with their computation held behind a
/// lock on the tiers until every request has boarded its flight: none can arrive after the flight
/// landed and start another (a loaded CI machine spreads concurrent requests out otherwise).
async fn all_aboard(server: &TestServer, db: &str, url: &str, q: &[(&'static str, String)], n: usize) -> Vec<Reply> {
    let mut blocker = connect(db).await;
    let lock = blocker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE rollup_tiers IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let requests: Vec<_> = (0..n)
        .map(|_| {
            let (http, url, q) = (server.http.clone(), url.to_owned(), q.to_vec());
            tokio::spawn(async move { get(&http, url, &q).await })
        })
        .collect();
    let boarded = async || when(server.cache.passengers(), |p| *p >= n);
    eventually(Duration::from_secs(20), &format!("{n} requests boarded"), boarded).await;
    lock.rollback().await.unwrap();
    let mut answers = Vec::with_capacity(n);
    for r in requests {
        answers.push(r.await.unwrap());
    }
    answers
}

#[tokio::test]
async fn with_l1_off_identical_concurrent_requests_share_one_redis_lookup_and_one_computation() {
    let prefix = unique_prefix();
    let app = spawn_app_with(|_| {}).await;
    seed(&app).await;
    let server = spawn_server_on(&app.db_name, |c| {
        with_redis(&prefix)(c);
        c.cache_mode = CacheMode::L2;
    })
    .await;
    let q = closed_range(app.app_id);
    let url = server.url("/api/analytics/events/timeline");

    let misses = all_aboard(&server, &app.db_name, &url, &q, 20).await;
    let after_misses = (server.cache.l2_lookups(), server.cache.computations());
    wait_for_answers_in_redis(&prefix).await; // the L2 fill is asynchronous
    let hits = futures_util::future::join_all((0..20).map(|_| get(&server.http, url.clone(), &q))).await;

    assert!(misses.iter().all(|r| total(r) == 2 && tier(r) == "miss"), "{}", misses[0].body);
    assert_eq!(after_misses, (1, 1));
    assert!(hits.iter().all(|r| total(r) == 2 && tier(r) == "l2"), "{}", hits[0].body);
    assert_eq!((server.cache.l2_lookups(), server.cache.computations()), (2, 1));
}

#[tokio::test]
async fn a_redis_that_never_answers_costs_one_computation_not_a_storm_of_them() {
    // Accepts connections and never answers: every lookup times out.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in silent.incoming() {
            held.push(conn);
        }
    });
    let app = spawn_app_with(|_| {}).await;
    seed(&app).await;
    let server = spawn_server_on(&app.db_name, |c| {
        c.redis_url = Some(format!("redis://127.0.0.1:{port}"));
        c.redis_prefix = unique_prefix();
        c.redis_timeout = Duration::from_millis(50);
        c.cache_mode = CacheMode::L2;
    })
    .await;
    let q = closed_range(app.app_id);
    let url = server.url("/api/analytics/events/timeline");

    let answers = all_aboard(&server, &app.db_name, &url, &q, 30).await;

    let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200; 30]);
    assert!(answers.iter().all(|r| total(r) == 2 && tier(r) == "miss"));
    assert_eq!((server.cache.l2_lookups(), server.cache.computations()), (1, 1));
}
