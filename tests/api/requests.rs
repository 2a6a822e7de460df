//! Request-level behaviour: bodies, encodings, browser clients, health, errors.

use std::io::Write;

use serde_json::json;

use crate::helpers::{reply, spawn_app, spawn_app_with};

#[tokio::test]
async fn malformed_and_oversized_bodies_get_specific_4xx_errors() {
    let app = spawn_app_with(|c| {
        c.body_max_bytes = 64 * 1024;
        c.batch_max_events = 5;
    })
    .await;
    let post_raw = |path: &'static str, body: Vec<u8>| {
        let req =
            app.http.post(app.url(path)).header("X-API-Key", &app.api_key).header("Content-Type", "application/json");
        async move { reply(req.body(body).send().await.unwrap()).await }
    };
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("/api/events/track", b"{not json".to_vec(), 400, "invalid_json"),
        ("/api/events/track", b"".to_vec(), 400, "invalid_json"),
        ("/api/events/track", b"[1,2]".to_vec(), 400, "invalid_body"),
        ("/api/events/track", vec![0xff, 0xfe, b'{', b'}'], 400, "invalid_json"),
        (
            "/api/events/track",
            format!("{{\"eventType\":\"{}\"}}", "a".repeat(70 * 1024)).into_bytes(),
            413,
            "payload_too_large",
        ),
        ("/api/events/track", b"{\"eventType\":\"x\",\"metadata\":{\"n\":1e999}}".to_vec(), 400, "invalid_metadata"),
        ("/api/events/track/batch", b"{\"events\":{}}".to_vec(), 400, "invalid_batch"),
        ("/api/events/track/batch", b"{\"events\":[]}".to_vec(), 400, "empty_batch"),
        (
            "/api/events/track/batch",
            json!({"events": vec![json!({"eventType": "x"}); 6]}).to_string().into_bytes(),
            413,
            "too_many_events",
        ),
        (
            "/api/events/track/batch",
            b"{\"sentAt\":\"later\",\"events\":[{\"eventType\":\"x\"}]}".to_vec(),
            400,
            "invalid_timestamp",
        ),
    ];
    for (path, body, status, code) in cases {
        let r = post_raw(path, body).await;
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (status, Some(code)), "{path}: {}", r.body);
        assert_eq!(r.body["success"], false);
        assert!(r.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let deep = format!("{{\"eventType\":\"x\",\"metadata\":{}1{}}}", "{\"a\":".repeat(200), "}".repeat(200));
    let r = post_raw("/api/events/track", deep.into_bytes()).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (400, Some("invalid_metadata")));
    assert_eq!(app.raw_count().await, 0);
    // Fields Strata does not read are skipped unread, whatever they hold.
    let r = post_raw("/api/events/track", b"{\"eventType\":\"x\",\"n\":1e999,\"deep\":[[[[[]]]]]}".to_vec()).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(app.raw_count().await, 1);
}

#[tokio::test]
async fn gzip_bodies_are_accepted_and_zip_bombs_refused() {
    let app = spawn_app_with(|c| c.body_max_bytes = 64 * 1024).await;
    let gzip = |data: &[u8]| {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    };
    // POSTs `body` with this app's key, encoded as `encoding` says.
    let send = |path: &str, encoding: &str, body: Vec<u8>| {
        let req = app.http.post(app.url(path)).header("X-API-Key", &app.api_key).header("Content-Encoding", encoding);
        let req = req.body(body);
        async move { reply(req.send().await.unwrap()).await }
    };
    let body = json!({"events": [{"eventType": "zipped"}, {"eventType": "zipped"}]}).to_string();
    let r = send("/api/events/track/batch", "gzip", gzip(body.as_bytes())).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(app.raw_count().await, 2);

    let bomb = format!("{{\"eventType\":\"x\",\"metadata\":{{\"a\":\"{}\"}}}}", "0".repeat(1024 * 1024));
    let r = send("/api/events/track", "gzip", gzip(bomb.as_bytes())).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (413, Some("payload_too_large")));
    let r = send("/api/events/track", "br", b"{}".to_vec()).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (415, Some("unsupported_encoding")));
    assert_eq!(app.raw_count().await, 2);
}

#[tokio::test]
async fn send_beacon_text_plain_with_api_key_in_body_is_accepted() {
    let app = spawn_app().await;
    let body = json!({"apiKey": app.api_key, "eventType": "beacon", "userId": 12345}).to_string();
    let r = reply(
        app.http
            .post(app.url("/api/events/track"))
            .header("Content-Type", "text/plain;charset=UTF-8")
            .header("Origin", "https://shop.example")
            .body(body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.headers["access-control-allow-origin"], "*");
    let user: String = app.db.query_one("SELECT user_id FROM events", &[]).await.unwrap().get(0);
    assert_eq!(user, "12345", "numeric user ids are stored as their text");
}

#[tokio::test]
async fn cors_preflight_allows_configured_origins_only() {
    let app = spawn_app_with(|c| c.cors_origins = vec!["https://shop.example".into()]).await;
    let preflight = |origin: &'static str| {
        app.http
            .request(reqwest::Method::OPTIONS, app.url("/api/events/track"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", "x-api-key,content-type")
            .send()
    };
    let ok = preflight("https://shop.example").await.unwrap();
    assert_eq!(
        ok.headers().get("access-control-allow-origin").map(|v| v.to_str().unwrap()),
        Some("https://shop.example"),
        "{ok:?}"
    );
    let allowed = ok.headers()["access-control-allow-headers"].to_str().unwrap().to_ascii_lowercase();
    assert!(allowed.contains("x-api-key"), "{allowed}");
    let other = preflight("https://evil.example").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
}

/// Behind a proxy at 127.0.0.1 (the test client) that forwards in `X-Forwarded-For`, with another
/// proxy hop in 10.0.0.0/8.
fn behind_proxies(c: &mut strata::config::Config) {
    c.trusted_proxy_header = Some("x-forwarded-for".into());
    c.trusted_proxies = strata::config::TrustedProxies::parse("127.0.0.1/32,10.0.0.0/8").unwrap();
}

/// Tracks one event with the given `X-Forwarded-For` lines; answers the stored client address.
async fn stored_ip(app: &crate::helpers::TestApp, forwarded: &[&str]) -> String {
    let mut req = app.http.post(app.url("/api/events/track")).header("X-API-Key", &app.api_key);
    for line in forwarded {
        req = req.header("X-Forwarded-For", *line);
    }
    let id = uuid::Uuid::new_v4();
    let r = reply(req.json(&json!({"eventType": "x", "eventId": id})).send().await.unwrap()).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let row = app.db.query_one("SELECT host(ip_address) FROM events WHERE event_id = $1", &[&id]).await.unwrap();
    row.get(0)
}

#[tokio::test]
async fn client_ip_comes_from_the_trusted_proxy_header_only_when_configured() {
    let plain = spawn_app().await;
    let proxied = spawn_app_with(behind_proxies).await;

    let ignored = stored_ip(&plain, &["203.0.113.7"]).await;
    let forwarded = stored_ip(&proxied, &["203.0.113.7, 10.0.0.1"]).await;
    let not_sent = stored_ip(&proxied, &[]).await;

    assert_eq!(ignored, "127.0.0.1");
    assert_eq!(forwarded, "203.0.113.7");
    assert_eq!(not_sent, "127.0.0.1", "the trusted peer is all there is");
}

#[tokio::test]
async fn a_stored_event_has_the_right_most_forwarded_address_that_is_not_a_trusted_proxy() {
    let app = spawn_app_with(behind_proxies).await;

    let spoofed = stored_ip(&app, &["198.51.100.66, 203.0.113.7, 10.0.0.2, 10.0.0.1"]).await;
    let two_lines = stored_ip(&app, &["198.51.100.66", "203.0.113.8, 10.0.0.1"]).await;
    let all_trusted = stored_ip(&app, &["10.0.0.9, 10.0.0.1"]).await;
    let garbage = stored_ip(&app, &["203.0.113.7, not-an-address, 10.0.0.1"]).await;
    let ipv6 = stored_ip(&app, &["[2001:db8::7]:4711"]).await;

    assert_eq!(spoofed, "203.0.113.7");
    assert_eq!(two_lines, "203.0.113.8");
    assert_eq!(all_trusted, "10.0.0.9");
    assert_eq!(garbage, "10.0.0.1", "the last hop a trusted proxy vouched for");
    assert_eq!(ipv6, "2001:db8::7");
}

#[tokio::test]
async fn a_peer_that_is_not_a_trusted_proxy_has_its_forwarded_header_ignored() {
    let app = spawn_app_with(|c| {
        c.trusted_proxy_header = Some("x-forwarded-for".into());
        c.trusted_proxies = strata::config::TrustedProxies::parse("10.0.0.0/8,::1/128").unwrap();
    })
    .await;

    let ip = stored_ip(&app, &["203.0.113.7"]).await;

    assert_eq!(ip, "127.0.0.1");
}

#[tokio::test]
async fn logins_behind_a_trusted_proxy_with_changing_left_most_addresses_hit_the_auth_limit() {
    let app = spawn_app_with(behind_proxies).await;
    let login = json!({"email": "nobody@example.com", "password": "wrong password here"});

    let mut statuses = Vec::new();
    for i in 0..15 {
        let forwarded = format!("198.51.100.{i}, 203.0.113.7, 10.0.0.1");
        let req = app.http.post(app.url("/api/auth/login")).header("X-Forwarded-For", forwarded).json(&login);
        let r = reply(req.send().await.unwrap()).await;
        statuses.push((r.status, r.body["error"]["code"].as_str().unwrap_or_default().to_owned()));
        if r.status == 429 {
            assert!(r.headers.contains_key("retry-after"), "{:?}", r.headers);
        }
    }
    let elsewhere = app
        .http
        .post(app.url("/api/auth/login"))
        .header("X-Forwarded-For", "203.0.113.99, 10.0.0.1")
        .json(&login)
        .send()
        .await
        .unwrap();

    let expected: Vec<_> = (0..15)
        .map(|i| if i < 10 { (401, "invalid_credentials") } else { (429, "rate_limited") })
        .map(|(s, c)| (s, c.to_owned()))
        .collect();
    assert_eq!(statuses, expected);
    assert_eq!(elsewhere.status(), 401, "another client behind the same proxy has its own budget");
}

#[tokio::test]
async fn health_and_ready_report_the_database_and_migrations() {
    let app = spawn_app().await;
    let h = reply(app.http.get(app.url("/health")).send().await.unwrap()).await;
    assert_eq!((h.status, h.body["status"].as_str()), (200, Some("ok")));
    let r = reply(app.http.get(app.url("/ready")).send().await.unwrap()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "ready");
    assert_eq!(r.body["checks"]["partitions"]["present"], 4);
    // A missing future partition makes the service not ready.
    let last = partition_jobs::Month::containing(chrono::Utc::now()).add_months(3).partition_name();
    app.db.batch_execute(&format!("ALTER TABLE events DETACH PARTITION {last}")).await.unwrap();
    let r = reply(app.http.get(app.url("/ready")).send().await.unwrap()).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.body["checks"]["partitions"]["ok"], false);
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json_errors() {
    let app = spawn_app().await;
    let r = reply(app.http.get(app.url("/api/nope/../../etc/passwd")).send().await.unwrap()).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (404, Some("not_found")));
    let r = reply(app.http.get(app.url("/api/events/track")).send().await.unwrap()).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (405, Some("method_not_allowed")));
}

#[tokio::test]
async fn a_request_over_the_timeout_gets_a_json_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = crate::helpers::spawn_app_with(|c| c.request_timeout = std::time::Duration::from_secs(1)).await;
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /api/events/track HTTP/1.1\r\nHost: strata\r\nX-API-Key: {}\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\nConnection: close\r\n\r\n{{",
        app.api_key
    );
    // The body never completes.
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 408 Request Timeout"), "{head}");
    let body: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["success"], false);
    assert_eq!(body["error"]["code"], "request_timeout");
    assert_eq!(app.raw_count().await, 0);
}
