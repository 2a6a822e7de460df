//! Header injection and oversized headers, sent as raw HTTP.

use serde_json::Value;

use super::*;
use crate::helpers::{reply, spawn_app};

#[tokio::test]
async fn header_injection_and_huge_headers_never_reach_a_handler_as_extra_headers() {
    let app = spawn_app().await;
    let event = "{\"eventType\":\"h\"}";
    let post = |headers: &str| {
        format!(
            "POST /api/events/track HTTP/1.1\r\nHost: s\r\nConnection: close\r\nContent-Type: application/json\r\n\
             {headers}Content-Length: {}\r\n\r\n{event}",
            event.len()
        )
        .into_bytes()
    };
    let json_of = |body: &[u8]| serde_json::from_slice::<Value>(body).unwrap();
    // A bare CR inside a value is malformed HTTP: hyper refuses the request itself (400, no body).
    let (status, _, body) = raw(&app, &post(&format!("X-API-Key: {}\rX-Evil: 1\r\n", app.api_key))).await;
    assert_eq!((status, body.len()), (400, 0));
    // CR/LF ends the header: what follows is another header, never part of the key or the answer.
    let (status, head, body) =
        raw(&app, &post("X-API-Key: ak_nope\r\nX-Request-Id: abc\r\nSet-Cookie: evil=1\r\n")).await;
    assert_eq!((status, json_of(&body)["error"]["code"].as_str()), (401, Some("invalid_api_key")));
    assert!(head.to_ascii_lowercase().contains("\r\nx-request-id: abc"), "{head}");
    assert!(!head.to_ascii_lowercase().contains("set-cookie"), "{head}");
    // Bytes that are not visible ASCII in credentials are no credentials.
    let (status, _, body) = raw(&app, &post("X-API-Key: ak_\u{ff}\u{fe}\r\n")).await;
    assert_eq!((status, json_of(&body)["error"]["code"].as_str()), (401, Some("invalid_api_key")));
    let get = |headers: &str| {
        format!("GET /api/auth/me HTTP/1.1\r\nHost: s\r\nConnection: close\r\n{headers}\r\n").into_bytes()
    };
    let (status, _, body) = raw(&app, &get("Authorization: Bearer \u{ff}\r\n")).await;
    assert_eq!((status, json_of(&body)["error"]["code"].as_str()), (401, Some("unauthorized")));
    // Large but acceptable headers: a 16 KiB key is just a wrong key; a 16 KiB request id is echoed.
    let (status, _, body) = raw(&app, &post(&format!("X-API-Key: ak_{}\r\n", "f".repeat(16 * 1024)))).await;
    assert_eq!((status, json_of(&body)["error"]["code"].as_str()), (401, Some("invalid_api_key")));
    let id = "r".repeat(16 * 1024);
    let (status, head, _) = raw(&app, &post(&format!("X-API-Key: {}\r\nX-Request-Id: {id}\r\n", app.api_key))).await;
    assert_eq!(status, 201, "{head}");
    assert!(head.contains(&format!("x-request-id: {id}")));
    // Headers past hyper's limit (about 400 KB): 431 before any handler.
    let (status, _, body) = raw(&app, &get(&format!("X-Filler: {}\r\n", "f".repeat(1024 * 1024)))).await;
    assert_eq!((status, body.len()), (431, 0));
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let (status, _, body) = raw(&app, &get(&many)).await;
    assert_eq!((status, body.len()), (431, 0));
    assert_eq!(app.raw_count().await, 1);
    let health = reply(app.http.get(app.url("/health")).send().await.unwrap()).await;
    assert_eq!(health.status, 200);
}
