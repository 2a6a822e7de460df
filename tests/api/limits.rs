//! Rate limits: per API key on ingestion (requests and events), per token on analytics, shared by
//! two instances through Redis, and per instance when Redis is unreachable. Throttled requests store
//! nothing.

use std::time::Duration;

use serde_json::{json, Value};
use strata::auth::ratelimit::Decision;
use strata::config::Config;
use strata::config::RateLimit;
use uuid::Uuid;

use crate::helpers::{reply, spawn_app_with, spawn_server_on, Reply, TestApp, ADMIN_TOKEN};
use crate::wait::{eventually, when};

const TEST_REDIS: &str = "redis://127.0.0.1:6379";

fn limit(s: &str) -> Option<RateLimit> {
    Some(RateLimit::parse(s).unwrap())
}

fn event() -> Value {
    json!({"eventType": "click", "userId": "u-1"})
}

fn header<'a>(r: &'a Reply, name: &str) -> &'a str {
    r.headers.get(name).unwrap_or_else(|| panic!("no {name} header: {:?}", r.headers)).to_str().unwrap()
}

fn retry_after(r: &Reply) -> u64 {
    header(r, "retry-after").parse().unwrap()
}

/// Tracks one event through `addr` with `key`.
async fn track_on(http: &reqwest::Client, addr: std::net::SocketAddr, key: &str) -> Reply {
    let url = format!("http://{addr}/api/events/track");
    reply(http.post(url).header("X-API-Key", key).json(&event()).send().await.unwrap()).await
}

fn assert_rate_limited(r: &Reply, limit: &str) {
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (429, Some("rate_limited")), "{}", r.body);
    assert_eq!(r.body["success"], json!(false));
    assert_eq!((header(r, "ratelimit-limit"), header(r, "ratelimit-remaining")), (limit, "0"));
    assert_eq!(header(r, "ratelimit-reset"), header(r, "retry-after"));
}

#[tokio::test]
async fn ingestion_requests_over_the_per_key_limit_get_429_and_store_nothing() {
    let app = spawn_app_with(|c| c.ingest_rate_limit = limit("3/10m")).await;
    let other = app.create_key("other").await;

    let mut remaining = Vec::new();
    for _ in 0..3 {
        let r = app.track(&event()).await;
        assert_eq!(r.status, 201, "{}", r.body);
        remaining.push(header(&r, "ratelimit-remaining").to_owned());
    }
    let limited = app.track(&event()).await;
    let batch = app.post_batch(&[event(), event()]).await;
    let other_key = track_on(&app.http, app.addr, &other.api_key).await;

    assert_eq!(remaining, ["2", "1", "0"]);
    assert_rate_limited(&limited, "3");
    assert_rate_limited(&batch, "3");
    assert_eq!(header(&limited, "ratelimit-policy"), "3;w=600");
    // One token per 200 s: the 4th request fits again 200 s after the first (less the time spent).
    assert!((195..=200).contains(&retry_after(&limited)), "{:?}", limited.headers);
    assert_eq!(other_key.status, 201, "another key has its own bucket: {}", other_key.body);
    assert_eq!(app.raw_count().await, 4);
}

#[tokio::test]
async fn ingestion_events_over_the_per_key_limit_get_429_and_store_nothing() {
    let app = spawn_app_with(|c| c.ingest_event_rate_limit = limit("10/10m")).await;

    let six = app.post_batch(&vec![event(); 6]).await;
    let five = app.post_batch(&vec![event(); 5]).await;
    let four = app.post_batch(&vec![event(); 4]).await;
    let one = app.track(&event()).await;
    let eleven = app.post_batch(&vec![event(); 11]).await;

    assert_eq!((six.status, header(&six, "ratelimit-remaining")), (201, "4"), "{}", six.body);
    assert_rate_limited(&five, "10");
    // Five events need five tokens: 60 s each, one is back after 60 s.
    assert!((55..=60).contains(&retry_after(&five)), "{:?}", five.headers);
    assert_eq!((four.status, header(&four, "ratelimit-remaining")), (201, "0"), "{}", four.body);
    assert_rate_limited(&one, "10");
    assert_eq!((eleven.status, eleven.body["error"]["code"].as_str()), (413, Some("too_many_events")));
    assert_eq!(app.raw_count().await, 10);
}

async fn timeline_with(app: &TestApp, token: &str, app_id: Uuid) -> Reply {
    let url = app.url("/api/analytics/events/timeline");
    reply(app.http.get(url).query(&[("appId", app_id.to_string())]).bearer_auth(token).send().await.unwrap()).await
}

#[tokio::test]
async fn analytics_requests_over_the_per_token_limit_get_429() {
    let app = spawn_app_with(|c| c.analytics_rate_limit = limit("2/10m")).await;
    let register = json!({"email": "owner@example.com", "name": "Owner", "password": "correct horse battery"});
    let r = reply(app.http.post(app.url("/api/auth/register")).json(&register).send().await.unwrap()).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let owner_token = r.body["data"]["token"].as_str().unwrap().to_owned();
    let created = app.http.post(app.url("/api/apps")).bearer_auth(&owner_token).json(&json!({"name": "shop"}));
    let created = reply(created.send().await.unwrap()).await;
    let owner_app: Uuid = created.body["data"]["id"].as_str().unwrap().parse().unwrap();

    let first = timeline_with(&app, ADMIN_TOKEN, app.app_id).await;
    let second = timeline_with(&app, ADMIN_TOKEN, app.app_id).await;
    let third = timeline_with(&app, ADMIN_TOKEN, app.app_id).await;
    let owner = timeline_with(&app, &owner_token, owner_app).await;
    let anonymous = reply(app.http.get(app.url("/api/analytics/events/timeline")).send().await.unwrap()).await;
    let bad_token = timeline_with(&app, "not-a-token", app.app_id).await;

    assert_eq!((first.status, header(&first, "ratelimit-remaining")), (200, "1"), "{}", first.body);
    assert_eq!((second.status, header(&second, "ratelimit-remaining")), (200, "0"), "{}", second.body);
    assert_rate_limited(&third, "2");
    assert!((295..=300).contains(&retry_after(&third)), "{:?}", third.headers);
    assert_eq!((owner.status, header(&owner, "ratelimit-remaining")), (200, "1"), "{}", owner.body);
    assert_eq!((anonymous.status, anonymous.body["error"]["code"].as_str()), (401, Some("unauthorized")));
    assert_eq!(bad_token.status, 401, "{}", bad_token.body);
    assert!(bad_token.headers.get("ratelimit-limit").is_none());
}

/// Redis on, under a prefix no other test uses; a generous timeout for a loaded test machine.
fn shared_limits(prefix: &str) -> impl Fn(&mut Config) + '_ {
    move |c: &mut Config| {
        c.redis_url = Some(TEST_REDIS.into());
        c.redis_prefix = prefix.to_owned();
        c.redis_timeout = Duration::from_millis(500);
        c.ingest_rate_limit = limit("10/10m");
    }
}

/// Waits until the shared bucket `key` in Redis is more than `ms` ahead of full (reports arrived).
async fn wait_for_redis_bucket(key: &str, ms: i64) {
    let client = redis::Client::open(TEST_REDIS).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let pttl = async || when(redis::cmd("PTTL").arg(key).query_async::<i64>(&mut conn).await.unwrap(), |t| *t > ms);
    eventually(Duration::from_secs(5), &format!("the shared bucket {key} more than {ms} ms ahead"), pttl).await;
}

#[tokio::test]
async fn two_instances_sharing_redis_allow_the_limit_once_in_total() {
    let prefix = format!("test:{}:", Uuid::new_v4().simple());
    let a = spawn_app_with(shared_limits(&prefix)).await;
    let b = spawn_server_on(&a.db_name, shared_limits(&prefix)).await;
    let secret = crate::helpers::KEY_SECRET.as_bytes();
    let bucket = strata::auth::ratelimit::shared::redis_key(&prefix, secret, "ingest", &a.key_id.to_string());
    assert!(!bucket.contains(&a.key_id.simple().to_string()[..8]), "{bucket}");

    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(a.track(&event()).await.status);
    }
    // Six tokens of 60 s each reported by A: more than 5 × 60 s ahead.
    wait_for_redis_bucket(&bucket, 300_000).await;
    let mut on_b = Vec::new();
    for _ in 0..5 {
        let r = track_on(&b.http, b.addr, &a.api_key).await;
        on_b.push((r.status, header(&r, "ratelimit-remaining").to_owned()));
    }
    // B's four reported too: A learns it at its next reconciliation.
    wait_for_redis_bucket(&bucket, 540_000).await;
    let (ingest, key_id) = (a.limits.ingest.clone().unwrap(), a.key_id.to_string());
    let merged = async || when(ingest.peek(&key_id, 1).await, |d| matches!(d, Decision::Limited { .. }));
    eventually(Duration::from_secs(2), "A merged B's reports into its own bucket", merged).await;
    let a_again = a.track(&event()).await;

    assert_eq!(statuses, [201; 6]);
    let expected = [(201, "3"), (201, "2"), (201, "1"), (201, "0"), (429, "0")];
    assert_eq!(on_b, expected.map(|(s, r)| (s, r.to_owned())));
    assert_rate_limited(&a_again, "10");
    assert_eq!(a.raw_count().await, 10);
}

#[tokio::test]
async fn with_redis_unreachable_each_instance_limits_alone_without_errors() {
    let unreachable = |c: &mut Config| {
        c.redis_url = Some("redis://127.0.0.1:1".into());
        c.redis_prefix = format!("test:{}:", Uuid::new_v4().simple());
        c.ingest_rate_limit = limit("3/10m");
    };
    let a = spawn_app_with(unreachable).await;
    let b = spawn_server_on(&a.db_name, unreachable).await;

    let mut on_a = Vec::new();
    let mut on_b = Vec::new();
    for _ in 0..4 {
        on_a.push(a.track(&event()).await.status);
        on_b.push(track_on(&b.http, b.addr, &a.api_key).await.status);
    }

    assert_eq!(on_a, [201, 201, 201, 429]);
    assert_eq!(on_b, [201, 201, 201, 429]);
    assert_eq!(a.raw_count().await, 6);
}

/// A well-formed key that exists nowhere.
fn random_key() -> String {
    format!("ak_{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple())
}

fn code(r: &Reply) -> (u16, &str) {
    (r.status, r.body["error"]["code"].as_str().unwrap_or("none"))
}

#[tokio::test]
async fn guessing_keys_from_one_address_gets_429_before_any_lookup_while_a_cached_valid_key_works() {
    let app = spawn_app_with(|c| c.key_failure_rate_limit = limit("5/1m")).await;
    let unused = app.create_key("new").await;
    let elsewhere = reqwest::Client::builder().local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap());
    let elsewhere = elsewhere.build().unwrap();

    let first = app.track(&event()).await;
    let mut guesses = Vec::new();
    for _ in 0..5 {
        guesses.push(code(&track_on(&app.http, app.addr, &random_key()).await).1.to_owned());
    }
    let over = track_on(&app.http, app.addr, &random_key()).await;
    let in_body = json!({"apiKey": random_key(), "eventType": "beacon"});
    let over_in_body = reply(app.http.post(app.url("/api/events/track")).json(&in_body).send().await.unwrap()).await;
    let valid = app.track(&event()).await;
    let valid_but_never_seen = track_on(&app.http, app.addr, &unused.api_key).await;
    let other_address = track_on(&elsewhere, app.addr, &random_key()).await;

    assert_eq!(first.status, 201, "{}", first.body);
    assert_eq!(guesses, ["invalid_api_key"; 5]);
    assert_eq!(code(&over), (429, "too_many_key_failures"), "{}", over.body);
    assert_eq!(over.body["success"], json!(false));
    // One unknown key per 12 s.
    assert!((11..=12).contains(&retry_after(&over)), "{:?}", over.headers);
    assert_eq!(code(&over_in_body), (429, "too_many_key_failures"), "{}", over_in_body.body);
    assert_eq!(valid.status, 201, "a cached valid key keeps working: {}", valid.body);
    // Refused without a lookup: a lookup would have found this key.
    assert_eq!(code(&valid_but_never_seen), (429, "too_many_key_failures"));
    assert_eq!(code(&other_address), (401, "invalid_api_key"), "another address has its own budget");
    assert_eq!(app.raw_count().await, 2);
}

#[tokio::test]
async fn random_keys_never_push_a_valid_key_out_of_the_key_cache() {
    let app = spawn_app_with(|c| {
        c.key_cache_capacity = 1;
        c.key_failure_rate_limit = None;
    })
    .await;
    assert_eq!(app.track(&event()).await.status, 201);
    assert_eq!(app.track(&event()).await.status, 201);

    let mut answers = std::collections::BTreeMap::new();
    for _ in 0..200 {
        // Each random key several times: frequent enough to win a place in a shared cache.
        let key = random_key();
        for _ in 0..4 {
            *answers.entry(code(&track_on(&app.http, app.addr, &key).await).1.to_owned()).or_insert(0) += 1;
        }
    }
    // The database now says revoked; only a cached answer still accepts the key.
    let revoked = app.db.execute("UPDATE api_keys SET status = 'revoked' WHERE id = $1", &[&app.key_id]).await;
    let cached = app.track(&event()).await;

    assert_eq!(answers, std::collections::BTreeMap::from([("invalid_api_key".to_owned(), 800)]));
    assert_eq!(revoked.unwrap(), 1);
    assert_eq!(cached.status, 201, "the valid key was answered from the cache: {}", cached.body);
    assert_eq!(app.raw_count().await, 3);
}

#[tokio::test]
async fn unknown_keys_counted_on_one_instance_are_refused_on_another_and_redis_holds_no_address() {
    let prefix = format!("test:{}:", Uuid::new_v4().simple());
    let settings = |c: &mut Config| {
        c.redis_url = Some(TEST_REDIS.into());
        c.redis_prefix = prefix.clone();
        c.redis_timeout = Duration::from_millis(500);
        c.key_failure_rate_limit = limit("3/1m");
    };
    let a = spawn_app_with(settings).await;
    let b = spawn_server_on(&a.db_name, settings).await;
    let bucket = strata::auth::ratelimit::shared::redis_key(
        &prefix,
        crate::helpers::KEY_SECRET.as_bytes(),
        "key_failures",
        "127.0.0.1",
    );

    let mut on_a = Vec::new();
    for _ in 0..3 {
        on_a.push(code(&a.post("/api/events/track", &event()).await).1.to_owned());
        on_a.push(code(&track_on(&a.http, a.addr, &random_key()).await).1.to_owned());
    }
    // Three unknown keys of 20 s each reported by A.
    wait_for_redis_bucket(&bucket, 40_000).await;
    let on_b = track_on(&b.http, b.addr, &random_key()).await;
    let client = redis::Client::open(TEST_REDIS).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut conn).await.unwrap();

    assert_eq!(on_a, ["none", "invalid_api_key"].repeat(3));
    assert_eq!(code(&on_b), (429, "too_many_key_failures"), "{}", on_b.body);
    assert!(keys.contains(&bucket), "{keys:?}");
    assert!(keys.iter().all(|k| !k.contains("127.0.0.1")), "{keys:?}");
}
