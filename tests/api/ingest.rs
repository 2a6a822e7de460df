//! Ingestion: round trips, idempotency, partial batches, bad input, auth, late events.

use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{spawn_app, spawn_app_with};
use crate::oracle::assert_rollups_equal_raw;
use crate::wait::{eventually, when};

const CHROME_UA: &str =
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";

#[tokio::test]
async fn single_event_is_stored_field_by_field() {
    let app = spawn_app().await;
    let id = Uuid::new_v4();
    let resp = app
        .http
        .post(app.url("/api/events/track"))
        .header("X-API-Key", &app.api_key)
        .header("User-Agent", CHROME_UA)
        .json(&json!({
            "eventId": id, "eventType": "page_view", "userId": "u-1", "sessionId": "s-1",
            "url": "https://example.com/a?b=1", "referrer": "https://google.com/", "screenWidth": 1920,
            "screenHeight": 1080, "metadata": {"plan": "pro", "n": [1, 2], "nested": {"x": true}},
            "timestamp": "2026-11-20T10:15:30.123Z", "app_id": Uuid::new_v4()
        }))
        .send()
        .await
        .unwrap();
    let reply = crate::helpers::reply(resp).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(reply.body["success"], true);
    assert_eq!(reply.body["message"], "Event tracked successfully");
    assert_eq!(reply.body["data"]["eventId"], id.to_string());

    let row = app
        .db
        .query_one(
            "SELECT event_id, app_id, event_type, user_id, session_id, url, referrer, \
         host(ip_address), user_agent, browser, os, device, screen_width, screen_height, metadata, created_at \
         FROM events",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Uuid>(0), id);
    assert_eq!(row.get::<_, Uuid>(1), app.app_id, "the key's app wins over app_id in the body");
    assert_eq!(row.get::<_, &str>(2), "page_view");
    assert_eq!(row.get::<_, &str>(3), "u-1");
    assert_eq!(row.get::<_, &str>(4), "s-1");
    assert_eq!(row.get::<_, &str>(5), "https://example.com/a?b=1");
    assert_eq!(row.get::<_, &str>(6), "https://google.com/");
    assert_eq!(row.get::<_, &str>(7), "127.0.0.1");
    assert_eq!(row.get::<_, &str>(8), CHROME_UA);
    assert_eq!(row.get::<_, &str>(9), "Chrome");
    assert_eq!(row.get::<_, &str>(10), "Windows");
    assert_eq!(row.get::<_, &str>(11), "desktop");
    assert_eq!(row.get::<_, i32>(12), 1920);
    assert_eq!(row.get::<_, i32>(13), 1080);
    assert_eq!(row.get::<_, Value>(14), json!({"plan": "pro", "n": [1, 2], "nested": {"x": true}}));
    let at: DateTime<Utc> = "2026-11-20T10:15:30.123Z".parse().unwrap();
    assert_eq!(row.get::<_, DateTime<Utc>>(15), at);

    let hourly =
        app.db.query_one("SELECT hour, event_type, events, q0, q1, q2, q3 FROM rollup_hourly", &[]).await.unwrap();
    assert_eq!(hourly.get::<_, DateTime<Utc>>(0), "2026-11-20T10:00:00Z".parse::<DateTime<Utc>>().unwrap());
    assert_eq!(hourly.get::<_, &str>(1), "page_view");
    assert_eq!((hourly.get::<_, i64>(2), hourly.get::<_, i64>(4)), (1, 1), "10:15 falls in quarter 1");
    let dims: Vec<(String, String)> = app
        .db
        .query("SELECT dim, value FROM rollup_hourly_dims ORDER BY dim", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expected = [("browser", "Chrome"), ("device", "desktop"), ("os", "Windows")];
    assert_eq!(dims, expected.map(|(a, b)| (a.to_string(), b.to_string())));
}

#[tokio::test]
async fn snake_case_spellings_of_the_original_docs_are_accepted() {
    let app = spawn_app().await;
    let reply = app
        .track(&json!({"event_type": "signup", "user_id": "u-9", "session_id": "s-9", "properties": {"k": 1}}))
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let row = app.db.query_one("SELECT event_type, user_id, session_id, metadata FROM events", &[]).await.unwrap();
    assert_eq!(row.get::<_, &str>(0), "signup");
    assert_eq!(row.get::<_, &str>(1), "u-9");
    assert_eq!(row.get::<_, &str>(2), "s-9");
    assert_eq!(row.get::<_, Value>(3), json!({"k": 1}));
}

#[tokio::test]
async fn an_event_sending_both_spellings_of_a_field_is_rejected() {
    let app = spawn_app().await;
    let reply = app.track(&json!({"eventType": "a", "event_type": "b"})).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.body["error"]["code"], "conflicting_fields");
    assert_eq!(app.raw_count().await, 0);
}

#[tokio::test]
async fn batch_round_trip_stores_every_event_and_its_rollups() {
    let app = spawn_app().await;
    let base: DateTime<Utc> = "2026-11-01T00:00:00Z".parse().unwrap();
    let events: Vec<Value> = (0..250)
        .map(|i| {
            let t = base + Duration::minutes(i * 7);
            json!({"eventType": format!("type_{}", i % 3), "userId": format!("u{}", i % 10), "timestamp": t.to_rfc3339()})
        })
        .collect();
    let reply = app.post_batch(&events).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(reply.body["message"], "250 events tracked successfully");
    assert_eq!(reply.body["data"]["accepted"], 250);
    assert_eq!(reply.body["data"]["eventIds"].as_array().unwrap().len(), 250);
    assert_eq!(app.raw_count().await, 250);
    assert_eq!(app.rollup_count().await, 250);
    // Per (hour, type), the rollup equals the raw GROUP BY, quarter by quarter.
    assert_rollups_equal_raw(&app.db).await;
}

#[tokio::test]
async fn batch_with_bad_events_stores_the_good_ones_and_reports_the_bad() {
    let app = spawn_app().await;
    let future = (Utc::now() + Duration::days(3)).to_rfc3339();
    let ancient = (Utc::now() - Duration::days(800)).to_rfc3339();
    let events = vec![
        json!({"eventType": "ok_1"}),
        json!({"userId": "no type"}),
        json!({"eventType": 42}),
        json!({"eventType": "t", "timestamp": future}),
        json!({"eventType": "t", "timestamp": ancient}),
        json!({"eventType": "t", "eventId": "not-a-uuid"}),
        json!({"eventType": "t", "timestamp": "yesterday"}),
        json!({"eventType": "t", "metadata": "a string"}),
        json!({"eventType": "t", "metadata": {"big": "x".repeat(40 * 1024)}}),
        json!({"eventType": "t", "userId": "nul\u{0}byte"}),
        json!({"eventType": "t", "screenWidth": "wide"}),
        json!("not an object"),
        json!({"eventType": "ok_2", "screenWidth": 390.0}),
    ];
    let reply = app.post_batch(&events).await;
    assert_eq!(reply.status, 207, "{}", reply.body);
    assert_eq!(reply.body["success"], true);
    assert_eq!(reply.body["data"]["accepted"], 2);
    let errors: Vec<(u64, String)> = reply.body["data"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["index"].as_u64().unwrap(), e["code"].as_str().unwrap().to_string()))
        .collect();
    let expected = [
        (1, "missing_event_type"),
        (2, "invalid_type"),
        (3, "timestamp_in_future"),
        (4, "timestamp_too_old"),
        (5, "invalid_event_id"),
        (6, "invalid_timestamp"),
        (7, "invalid_type"),
        (8, "metadata_too_large"),
        (9, "invalid_string"),
        (10, "invalid_type"),
        (11, "invalid_event"),
    ];
    assert_eq!(errors, expected.map(|(i, c)| (i, c.to_string())));
    assert_eq!(app.event_types().await, ["ok_1", "ok_2"]);
    assert_eq!(app.rollup_count().await, 2);
}

#[tokio::test]
async fn batch_with_no_valid_event_is_a_400_listing_each_error() {
    let app = spawn_app().await;
    let reply = app.post_batch(&[json!({}), json!({"eventType": ""})]).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.body["success"], false);
    assert_eq!(reply.body["error"]["code"], "no_valid_events");
    let errors = reply.body["error"]["details"]["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2);
    assert_eq!(errors[1]["index"], 1);
    assert_eq!(errors[1]["code"], "missing_event_type");
    assert_eq!(app.raw_count().await, 0);
}

#[tokio::test]
async fn retrying_an_event_id_stores_and_counts_it_once() {
    let app = spawn_app().await;
    let id = Uuid::new_v4();
    let event = json!({"eventId": id, "eventType": "purchase", "userId": "u1"});
    for _ in 0..3 {
        let reply = app.track(&event).await;
        assert_eq!(reply.status, 201);
        assert_eq!(reply.body["data"]["eventId"], id.to_string());
    }
    // The same id inside one batch and across batches.
    let reply = app.post_batch(&[event.clone(), event.clone(), json!({"eventType": "other"})]).await;
    assert_eq!(reply.status, 201);
    assert_eq!(reply.body["data"]["duplicates"], 2);
    assert_eq!(app.raw_count().await, 2);
    assert_eq!(app.rollup_count().await, 2);
}

#[tokio::test]
async fn concurrent_ingestion_keeps_rollups_equal_to_raw_counts() {
    let app = std::sync::Arc::new(spawn_app().await);
    let mut tasks = Vec::new();
    for t in 0..16 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                let ev = json!({"eventType": format!("e{}", i % 4), "userId": format!("u{t}")});
                if i % 2 == 0 {
                    assert_eq!(app.track(&ev).await.status, 201);
                } else {
                    assert_eq!(app.post_batch(&[ev.clone(), ev.clone(), ev]).await.status, 201);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let expected = 16 * (10 + 10 * 3);
    assert_eq!(app.raw_count().await, expected);
    assert_eq!(app.rollup_count().await, expected);
    let dims: i64 = app
        .db
        .query_one("SELECT sum(events)::int8 FROM rollup_hourly_dims WHERE dim = 'device'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(dims, expected);
}

#[tokio::test]
async fn a_late_event_creates_its_month_partition() {
    let app = spawn_app().await;
    let t = Utc::now() - Duration::days(190);
    let month = partition_jobs::Month::containing(t);
    let exists = "SELECT count(*) FROM pg_class WHERE relname = $1";
    let before: i64 = app.db.query_one(exists, &[&month.partition_name()]).await.unwrap().get(0);
    assert_eq!(before, 0);
    let reply = app.track(&json!({"eventType": "late", "timestamp": t.to_rfc3339()})).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let after: i64 = app.db.query_one(exists, &[&month.partition_name()]).await.unwrap().get(0);
    assert_eq!(after, 1);
    let stored: i64 =
        app.db.query_one(&format!("SELECT count(*) FROM {}", month.partition_name()), &[]).await.unwrap().get(0);
    assert_eq!(stored, 1);
}

#[tokio::test]
async fn clock_skew_is_corrected_with_sent_at() {
    let app = spawn_app().await;
    // The client clock runs 1 hour fast: it says the event happened 10 s before sending.
    let client_now = Utc::now() + Duration::hours(1);
    let reply = app
        .post(
            "/api/events/track/batch",
            &json!({
                "sentAt": client_now.to_rfc3339(),
                "events": [{"eventType": "skewed", "timestamp": (client_now - Duration::seconds(10)).to_rfc3339()}]
            }),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let row = app.db.query_one("SELECT created_at, received_at FROM events", &[]).await.unwrap();
    let (created, received): (DateTime<Utc>, DateTime<Utc>) = (row.get(0), row.get(1));
    assert_eq!(received - created, Duration::seconds(10));
}

#[tokio::test]
async fn unknown_revoked_and_expired_keys_get_401_and_store_nothing() {
    let app = spawn_app_with(|c| c.key_cache_ttl = std::time::Duration::from_millis(100)).await;
    let ev = json!({"eventType": "x"});
    let send = |key: Option<String>| {
        let req = app.http.post(app.url("/api/events/track")).json(&ev);
        let req = match key {
            Some(k) => req.header("X-API-Key", k),
            None => req,
        };
        async move { crate::helpers::reply(req.send().await.unwrap()).await }
    };
    let r = send(None).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (401, Some("missing_api_key")));
    let r = send(Some("ak_nope".into())).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (401, Some("invalid_api_key")));
    let r = send(Some(format!("ak_{}", "0".repeat(64)))).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (401, Some("invalid_api_key")));

    strata::accounts::revoke_key(&app.db, app.key_id).await.unwrap();
    // Revoked behind the server's back: it learns it once its key cache entry expires. The probe's
    // body holds no valid event, so a request the cached key still admits stores nothing.
    let probe = async || {
        let req = app.http.post(app.url("/api/events/track")).header("X-API-Key", &app.api_key).json(&json!({}));
        let r = crate::helpers::reply(req.send().await.unwrap()).await;
        when(r.body["error"]["code"].clone(), |code| code == "api_key_revoked")
    };
    eventually(std::time::Duration::from_secs(5), "the key cache entry expired", probe).await;
    let r = send(Some(app.api_key.clone())).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (401, Some("api_key_revoked")));

    let expired =
        strata::accounts::create_key(&app.db, crate::helpers::KEY_SECRET.as_bytes(), app.app_id, "old", Some(1))
            .await
            .unwrap();
    app.db
        .execute("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = $1", &[&expired.id])
        .await
        .unwrap();
    let r = send(Some(expired.api_key)).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (401, Some("api_key_expired")));
    assert_eq!(app.raw_count().await, 0);
}

#[tokio::test]
async fn key_usage_is_counted_in_batches() {
    let app = spawn_app_with(|c| c.usage_flush_interval = std::time::Duration::from_millis(100)).await;
    for _ in 0..3 {
        assert_eq!(app.track(&json!({"eventType": "x"})).await.status, 201);
    }
    const USAGE: &str = "SELECT usage_count, last_used_at IS NOT NULL FROM api_keys WHERE id = $1";
    let usage = async || {
        let row = app.db.query_one(USAGE, &[&app.key_id]).await.unwrap();
        when((row.get::<_, i64>(0), row.get::<_, bool>(1)), |(count, _)| *count >= 3)
    };
    // A flush every 100 ms: the three requests are counted by one flush or several.
    let flushed = eventually(std::time::Duration::from_secs(5), "the three requests counted", usage).await;
    assert_eq!(flushed, (3, true));
}

#[tokio::test]
async fn event_ids_older_than_the_dedupe_window_are_pruned() {
    let app = spawn_app().await;
    let old = Uuid::new_v4();
    assert_eq!(app.track(&json!({"eventType": "a", "eventId": old})).await.status, 201);
    assert_eq!(app.track(&json!({"eventType": "b"})).await.status, 201);
    app.db
        .execute("UPDATE event_ids SET received_at = now() - interval '8 days' WHERE event_id = $1", &[&old])
        .await
        .unwrap();
    let pool = strata::db::pool(
        crate::helpers::test_config(&app.db_name).database_url.as_deref().unwrap(),
        &strata::config::Config::default(),
    )
    .unwrap();
    let deleted = strata::ingest::dedupe::prune_once(&pool, std::time::Duration::from_secs(7 * 86_400)).await.unwrap();
    assert_eq!(deleted, 1);
    let left: i64 = app.db.query_one("SELECT count(*) FROM event_ids", &[]).await.unwrap().get(0);
    assert_eq!(left, 1);
}
