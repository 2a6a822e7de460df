//! Bodies: size, depth, encoding, NUL characters and numbers.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::*;
use crate::helpers::{reply, spawn_app, ADMIN_TOKEN};

#[tokio::test]
async fn a_100_mb_streamed_body_is_refused_with_413_without_being_read_to_the_end() {
    let app = spawn_app().await;
    const TOTAL: usize = 100 * 1024 * 1024;
    let stream = TcpStream::connect(app.addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let head = format!(
        "POST /api/events/track HTTP/1.1\r\nHost: strata\r\nX-API-Key: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {TOTAL}\r\n\r\n{{\"eventType\":\"big\",\"metadata\":{{\"pad\":\"",
        app.api_key
    );
    wr.write_all(head.as_bytes()).await.unwrap();
    // Streams the rest in 64 KiB chunks until the server stops taking them.
    let writer = tokio::spawn(async move {
        let chunk = vec![b'a'; 64 * 1024];
        let mut sent = head.len();
        while sent < TOTAL {
            let n = chunk.len().min(TOTAL - sent);
            if wr.write_all(&chunk[..n]).await.is_err() {
                break;
            }
            sent += n;
        }
        sent
    });
    let answer = crate::helpers::read_answer(&mut rd).await;
    let (status, _, body) = split_answer(&answer);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((status, body["error"]["code"].as_str()), (413, Some("payload_too_large")), "{body}");
    drop(rd);
    let sent = tokio::time::timeout(Duration::from_secs(60), writer).await.expect("writer stopped").unwrap();
    assert!(sent < TOTAL, "the server read all {sent} bytes instead of stopping at the limit");
    assert_eq!(app.raw_count().await, 0);
    let health = reply(app.http.get(app.url("/health")).send().await.unwrap()).await;
    assert_eq!(health.status, 200);
}

#[tokio::test]
async fn json_nested_ten_thousand_levels_deep_is_a_400_on_every_body() {
    let app = spawn_app().await;
    let deep_object = |inner: &str| format!("{}{inner}{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
    let deep_array = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let track = format!("{{\"eventType\":\"x\",\"metadata\":{}}}", deep_object("1"));
    let r = post_bytes(&app, "/api/events/track", Some(&app.api_key), track.into_bytes()).await;
    assert_error(&r, 400, "invalid_metadata", "track");
    // In a batch the deep event alone is refused; its neighbour is stored.
    let batch = format!(
        "{{\"events\":[{{\"eventType\":\"x\",\"metadata\":{{\"list\":{deep_array}}}}},{{\"eventType\":\"ok\"}}]}}"
    );
    let r = post_bytes(&app, "/api/events/track/batch", Some(&app.api_key), batch.into_bytes()).await;
    assert_eq!(r.status, 207, "batch: {}", r.body);
    assert_eq!(r.body["data"]["errors"][0]["index"], 0);
    assert_eq!(r.body["data"]["errors"][0]["code"], "invalid_metadata");
    assert_eq!(r.body["data"]["accepted"], 1);
    let register = format!("{{\"email\":\"a@b.c\",\"name\":{},\"password\":\"12345678\"}}", deep_object("\"n\""));
    let r = post_bytes(&app, "/api/auth/register", None, register.into_bytes()).await;
    assert_error(&r, 400, "invalid_body", "register");
    let token = owner(&app, "deep@example.com").await;
    let r = reply(
        app.http
            .post(app.url("/api/apps"))
            .bearer_auth(&token)
            .header("Content-Type", "application/json")
            .body(deep_array.clone())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_error(&r, 400, "invalid_body", "create app");
    assert_eq!(app.raw_count().await, 1);
}

#[tokio::test]
async fn invalid_utf8_in_bodies_paths_and_queries_is_a_4xx_json_error() {
    let app = spawn_app().await;
    let token = owner(&app, "utf8@example.com").await;
    let mine = owned_app(&app, &token).await;
    let bad_string = b"{\"eventType\":\"\xff\xfe\"}".to_vec();
    let r = post_bytes(&app, "/api/events/track", Some(&app.api_key), bad_string).await;
    assert_error(&r, 400, "invalid_json", "track");
    let r = post_bytes(
        &app,
        "/api/events/track/batch",
        Some(&app.api_key),
        b"{\"events\":[{\"eventType\":\"\xc3\x28\"}]}".to_vec(),
    )
    .await;
    assert_error(&r, 400, "invalid_json", "batch");
    let r = post_bytes(
        &app,
        "/api/auth/register",
        None,
        b"{\"email\":\"a@b.c\",\"name\":\"\xed\xa0\x80\",\"password\":\"12345678\"}".to_vec(),
    )
    .await;
    assert_error(&r, 400, "invalid_body", "register");
    // Paths: %FF is not UTF-8 once decoded.
    let r = send(&app, Method::GET, "/api/apps/%FF", Some(&token), None).await;
    assert_error(&r, 404, "app_not_found", "app id");
    let r = send(&app, Method::DELETE, "/api/keys/%FF", Some(&token), None).await;
    assert_error(&r, 404, "key_not_found", "key id");
    let r = send(&app, Method::GET, &format!("/api/analytics/users/%FF?appId={mine}"), Some(&token), None).await;
    assert_parameter(&r, "userId", "user activity");
    let r = send(&app, Method::DELETE, &format!("/api/analytics/users/%FF?appId={mine}"), Some(&token), None).await;
    assert_parameter(&r, "userId", "erasure");
    let r = send(&app, Method::GET, "/api/analytics/apps/%FF/overview", Some(&token), None).await;
    assert_error(&r, 404, "app_not_found", "overview");
    // Queries: undecodable bytes become U+FFFD, which no parameter accepts.
    let r = send(&app, Method::GET, &format!("/api/analytics/events/summary?appId={mine}&tz=%FF"), Some(&token), None)
        .await;
    assert_parameter(&r, "tz", "summary tz");
    let r = send(&app, Method::GET, "/api/analytics/events/timeline?appId=%FF", Some(&token), None).await;
    assert_error(&r, 404, "app_not_found", "timeline appId");
    let r = send(&app, Method::GET, "/api/keys?appId=%FF", Some(&token), None).await;
    assert_error(&r, 404, "app_not_found", "keys appId");
    let r = send(&app, Method::GET, "/api/apps?limit=%FF", Some(&token), None).await;
    assert_parameter(&r, "query", "apps limit");
    let r = send(&app, Method::GET, "/api/admin/maintenance/runs?limit=%FF", Some(ADMIN_TOKEN), None).await;
    assert_parameter(&r, "limit", "runs limit");
}

#[tokio::test]
async fn nul_characters_are_400s_naming_the_field_never_500s() {
    let app = spawn_app().await;
    let token = owner(&app, "nul@example.com").await;
    let mine = owned_app(&app, &token).await;
    for (field, value, message) in [
        ("eventType", json!("a\u{0}b"), "eventType must not contain NUL characters"),
        ("userId", json!("u\u{0}"), "userId must not contain NUL characters"),
        ("sessionId", json!("\u{0}"), "sessionId must not contain NUL characters"),
        ("url", json!("https://x/\u{0}"), "url must not contain NUL characters"),
        ("referrer", json!("\u{0}"), "referrer must not contain NUL characters"),
        ("userAgent", json!("Mozilla\u{0}"), "userAgent must not contain NUL characters"),
        ("metadata", json!({"k": "v\u{0}"}), "metadata must not contain NUL characters"),
        ("metadata", json!({"k\u{0}": "v"}), "metadata must not contain NUL characters"),
        ("metadata", json!({"k": ["ok", {"deep": "\u{0}"}]}), "metadata must not contain NUL characters"),
    ] {
        let mut event = json!({"eventType": "nul"});
        event[field] = value;
        let r = app.track(&event).await;
        assert_error(&r, 400, "invalid_string", field);
        assert_eq!(r.body["error"]["message"], message);
        let r = app.post_batch(&[event]).await;
        assert_error(&r, 400, "no_valid_events", field);
        assert_eq!(r.body["error"]["details"]["errors"][0]["code"], "invalid_string");
    }
    let r = app.post("/api/events/track/batch", &json!({"sentAt": "\u{0}", "events": [{"eventType": "x"}]})).await;
    assert_error(&r, 400, "invalid_timestamp", "sentAt");
    let register = |email: &str, name: &str| json!({"email": email, "name": name, "password": "pass\u{0}word"});
    let r = send(&app, Method::POST, "/api/auth/register", None, Some(register("n@example.com", "a\u{0}"))).await;
    assert_error(&r, 400, "invalid_parameter", "register name");
    let r = send(&app, Method::POST, "/api/auth/register", None, Some(register("n\u{0}@example.com", "a"))).await;
    assert_error(&r, 400, "invalid_parameter", "register email");
    let login = json!({"email": "nul\u{0}@example.com", "password": "correct horse battery"});
    let r = send(&app, Method::POST, "/api/auth/login", None, Some(login)).await;
    assert_parameter(&r, "email", "login email");
    let r = send(&app, Method::POST, "/api/apps", Some(&token), Some(json!({"name": "\u{0}"}))).await;
    assert_error(&r, 400, "invalid_parameter", "app name");
    let r =
        send(&app, Method::PATCH, &format!("/api/apps/{mine}"), Some(&token), Some(json!({"name": "a\u{0}"}))).await;
    assert_error(&r, 400, "invalid_parameter", "app rename");
    let r = send(&app, Method::POST, "/api/keys", Some(&token), Some(json!({"appId": mine, "name": "k\u{0}"}))).await;
    assert_error(&r, 400, "invalid_parameter", "key name");
    let r = send(&app, Method::POST, "/api/keys", Some(&token), Some(json!({"appId": "\u{0}", "name": "k"}))).await;
    assert_error(&r, 404, "app_not_found", "key appId");
    // Query and path parameters: refused before any handler (see src/http/guard.rs).
    for (method, path, parameter) in [
        (Method::GET, format!("/api/analytics/events/timeline?appId={mine}&eventType=a%00b"), "eventType"),
        (Method::GET, format!("/api/analytics/events/summary?appId={mine}&event_type=%00"), "event_type"),
        (Method::GET, format!("/api/analytics/events/summary?appId={mine}&tz=UTC%00"), "tz"),
        (Method::GET, format!("/api/analytics/users/u%00?appId={mine}"), "userId"),
        (Method::DELETE, format!("/api/analytics/users/u%00?appId={mine}"), "userId"),
        (Method::GET, "/api/analytics/users/u?appId=%00".to_string(), "appId"),
        (Method::GET, "/api/analytics/apps/%00/overview".to_string(), "appId"),
        (Method::GET, "/api/apps/%00".to_string(), "id"),
        (Method::GET, "/api/keys?appId=%00".to_string(), "appId"),
        (Method::GET, "/api/apps?limit=1%00".to_string(), "limit"),
        (Method::GET, "/api/admin/maintenance/runs?limit=%00".to_string(), "limit"),
        (Method::GET, "/api/keys?%00=1".to_string(), "query"),
    ] {
        let r = send(&app, method.clone(), &path, Some(&token), None).await;
        assert_parameter(&r, parameter, &format!("{method} {path}"));
    }
    assert_eq!(app.raw_count().await, 0);
}

#[tokio::test]
async fn huge_numbers_are_refused_never_wrapped() {
    let app = spawn_app().await;
    let token = owner(&app, "numbers@example.com").await;
    let mine = owned_app(&app, &token).await;
    let raw_event = |field: &str, number: &str| format!("{{\"eventType\":\"n\",\"{field}\":{number}}}").into_bytes();
    for (field, number, code) in [
        ("screenWidth", "1e308", "invalid_type"),
        ("screenWidth", "9223372036854775808", "invalid_type"),
        ("screenHeight", "-9223372036854775809", "invalid_type"),
        ("screenHeight", "4294967296", "invalid_value"),
        ("screenWidth", "-1", "invalid_value"),
        ("timestamp", "1e308", "invalid_timestamp"),
        ("timestamp", "9223372036854775807", "invalid_timestamp"),
        ("timestamp", "-9223372036854775808", "invalid_timestamp"),
        ("sentAt", "18446744073709551615", "invalid_timestamp"),
        ("userId", "1e308", "invalid_type"),
        ("sessionId", "-1.5", "invalid_type"),
    ] {
        let r = post_bytes(&app, "/api/events/track", Some(&app.api_key), raw_event(field, number)).await;
        assert_error(&r, 400, code, &format!("{field}={number}"));
    }
    // 2^64 as an id is stored as its text, like any integer id the original accepted.
    let r =
        post_bytes(&app, "/api/events/track", Some(&app.api_key), raw_event("userId", "18446744073709551615")).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let user: String = app.db.query_one("SELECT user_id FROM events", &[]).await.unwrap().get(0);
    assert_eq!(user, "18446744073709551615");
    let r = send(
        &app,
        Method::POST,
        "/api/keys",
        Some(&token),
        Some(json!({"appId": mine, "name": "k", "expiresInDays": 9223372036854775807u64})),
    )
    .await;
    assert_error(&r, 400, "invalid_body", "expiresInDays 2^63-1");
    let r = send(
        &app,
        Method::POST,
        "/api/keys",
        Some(&token),
        Some(json!({"appId": mine, "name": "k", "expiresInDays": 4294967295u32})),
    )
    .await;
    assert_parameter(&r, "expiresInDays", "expiresInDays u32::MAX");
    let r = send(&app, Method::GET, "/api/apps?limit=9223372036854775808", Some(&token), None).await;
    assert_parameter(&r, "query", "apps limit 2^63");
    let r = send(&app, Method::GET, "/api/keys?offset=-9223372036854775808", Some(&token), None).await;
    assert_parameter(&r, "offset", "keys offset -2^63");
    let r =
        send(&app, Method::GET, "/api/admin/maintenance/runs?limit=9223372036854775808", Some(ADMIN_TOKEN), None).await;
    assert_parameter(&r, "limit", "runs limit 2^63");
    let r =
        send(&app, Method::GET, "/api/admin/maintenance/runs?limit=9223372036854775807", Some(ADMIN_TOKEN), None).await;
    assert_parameter(&r, "limit", "runs limit 2^63-1");
    let r = send(&app, Method::GET, "/api/admin/slow-queries?limit=1e308", Some(ADMIN_TOKEN), None).await;
    assert_parameter(&r, "limit", "slow-queries limit 1e308");
    for (name, value) in [("startDate", "+262143-01-01T00:00:00Z"), ("endDate", "99999-12-31"), ("startDate", "1e308")]
    {
        let path = format!("/api/analytics/events/timeline?appId={mine}&{name}={}", enc(value));
        let r = send(&app, Method::GET, &path, Some(&token), None).await;
        assert_parameter(&r, name, value);
    }
}
