//! Bodies built to cost the server memory: tiny gzip bodies of millions of JSON values, with a key and
//! without one, and more bodies in flight than the budget holds. Memory itself is measured by
//! `cargo bench --bench hostile`; these tests pin the defences: unread fields stay unread, the
//! events array is counted rather than kept, a body without a header key is searched only in its
//! prefix, and the in-flight budget sheds with 503 `overloaded` and `Retry-After`.

use std::io::Write;

use serde_json::json;

use super::assert_error;
use crate::helpers::{connect, reply, spawn_app, spawn_app_with, Reply, TestApp};
use crate::wait::until_lock_waiters;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// `n` empty arrays, comma-separated.
fn empties(n: usize) -> String {
    let mut s = "[],".repeat(n);
    s.pop();
    s
}

async fn post_gzip(app: &TestApp, path: &str, key: Option<&str>, body: &str) -> Reply {
    let mut req =
        app.http.post(app.url(path)).header("Content-Type", "application/json").header("Content-Encoding", "gzip");
    if let Some(k) = key {
        req = req.header("X-API-Key", k);
    }
    reply(req.body(gzip(body.as_bytes())).send().await.unwrap()).await
}

#[tokio::test]
async fn millions_of_values_in_fields_strata_does_not_read_are_skipped_and_the_events_stored() {
    let app = spawn_app().await;
    let batch =
        format!(r#"{{"junk":[{}],"events":[{{"eventType":"kept","x":[{}]}}]}}"#, empties(600_000), empties(600_000));
    assert!(batch.len() < 5 * 1024 * 1024);
    let r = post_gzip(&app, "/api/events/track/batch", Some(&app.api_key), &batch).await;
    assert_eq!((r.status, r.body["data"]["accepted"].as_u64()), (201, Some(1)), "{}", r.body);
    let single = format!(r#"{{"eventType":"single","junk":[{}]}}"#, empties(1_500_000));
    let r = post_gzip(&app, "/api/events/track", Some(&app.api_key), &single).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(app.event_types().await, ["kept", "single"]);
}

#[tokio::test]
async fn an_events_array_of_a_million_values_is_counted_not_kept_and_refused_as_too_many() {
    let app = spawn_app().await;
    let batch = format!(r#"{{"events":[{}]}}"#, empties(1_000_000));
    let r = post_gzip(&app, "/api/events/track/batch", Some(&app.api_key), &batch).await;
    assert_error(&r, 413, "too_many_events", "a million empty events");
    assert_eq!(r.body["error"]["message"], "a batch holds at most 10000 events; this one has 1000000");
    assert_eq!(app.raw_count().await, 0);
}

#[tokio::test]
async fn a_body_without_a_header_key_is_searched_for_its_api_key_only_in_its_first_16_kib() {
    let app = spawn_app().await;
    // A bomb without any key: refused from its prefix, before the rest is decompressed or parsed.
    let bomb = format!(r#"{{"events":[{}]}}"#, empties(1_500_000));
    let r = post_gzip(&app, "/api/events/track/batch", None, &bomb).await;
    assert_error(&r, 401, "missing_api_key", "keyless bomb");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("X-API-Key header"), "{}", r.body);
    // The key after 16 KiB of other fields is not looked for.
    let late = format!(r#"{{"pad":"{}","apiKey":"{}","eventType":"late"}}"#, "p".repeat(16 * 1024), app.api_key);
    let r = post_gzip(&app, "/api/events/track", None, &late).await;
    assert_error(&r, 401, "missing_api_key", "key past the prefix");
    // First, it works whatever follows, compressed or not.
    let events: Vec<_> = (0..2_000).map(|i| json!({"eventType": "beacon", "userId": format!("u{i}")})).collect();
    let early = json!({"apiKey": app.api_key, "events": events}).to_string();
    assert!(early.len() > 64 * 1024);
    let r = post_gzip(&app, "/api/events/track/batch", None, &early).await;
    assert_eq!((r.status, r.body["data"]["accepted"].as_u64()), (201, Some(2_000)), "{}", r.body);
    let plain = json!({"eventType": "beacon-plain", "apiKey": app.api_key}).to_string();
    let r = reply(app.http.post(app.url("/api/events/track")).body(plain).send().await.unwrap()).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(app.raw_count().await, 2_001);
}

#[tokio::test]
async fn bodies_beyond_the_in_flight_budget_are_shed_with_503_overloaded_and_retry_after() {
    let app = spawn_app_with(|c| {
        c.body_max_bytes = 64 * 1024;
        c.ingest_memory_bytes = 256 * 1024;
        c.writers = 1;
    })
    .await;
    let batch = |tag: &str| {
        let events: Vec<_> = (0..100)
            .map(|i| json!({"eventType": tag, "url": format!("https://shop.example/{i}/{}", "p".repeat(550))}))
            .collect();
        json!({ "events": events })
    };
    assert!((60_000..64 * 1024).contains(&batch("first").to_string().len()));
    // The first batch is held in flight: its commit waits behind a lock on the rollups.
    let mut blocker = connect(&app.db_name).await;
    let tx = blocker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE rollup_hourly IN EXCLUSIVE MODE").await.unwrap();
    let held = {
        let (http, url, key, body) =
            (app.http.clone(), app.url("/api/events/track/batch"), app.api_key.clone(), batch("first"));
        tokio::spawn(
            async move { reply(http.post(url).header("X-API-Key", key).json(&body).send().await.unwrap()).await },
        )
    };
    until_lock_waiters(&app.db, 1).await;

    let shed = app.post("/api/events/track/batch", &batch("second")).await;
    assert_error(&shed, 503, "overloaded", "second batch while the first holds the budget");
    assert_eq!(shed.headers["retry-after"], "1");
    assert!(shed.body["error"]["message"].as_str().unwrap().contains("262144-byte memory budget"), "{}", shed.body);

    tx.commit().await.unwrap();
    let first = held.await.unwrap();
    assert_eq!((first.status, first.body["data"]["accepted"].as_u64()), (201, Some(100)), "{}", first.body);
    // The budget came back with the answer: the retry is accepted.
    let retry = app.post("/api/events/track/batch", &batch("second")).await;
    assert_eq!((retry.status, retry.body["data"]["accepted"].as_u64()), (201, Some(100)), "{}", retry.body);
    assert_eq!(app.raw_count().await, 200);
}
