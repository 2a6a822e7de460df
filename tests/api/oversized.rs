//! Every route that takes a body, as the OpenAPI document lists them, answers an over-limit body
//! with 413 `payload_too_large`: with a `Content-Length`, chunked, and gzip-encoded.

use std::io::Write;

use rand::Rng;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::helpers::{reply, spawn_app_with, TestApp};

/// Over ingestion's limit (set to 1 MiB here) and the JSON routes' (64 KiB), also gzipped:
/// random base64-like text compresses to about three quarters.
const BODY_BYTES: usize = 4 * 1024 * 1024;

/// How a body is sent.
#[derive(Debug, Clone, Copy)]
enum Framing {
    Length,
    Chunked,
    Gzip,
}

/// One raw HTTP/1.1 exchange: the body is written by its own task (the server may answer and close
/// before reading it all); returns the answer's status and JSON body.
async fn exchange(app: &TestApp, head: &str, framing: Framing, body: &[u8]) -> (u16, Value) {
    let stream = TcpStream::connect(app.addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let payload = match framing {
        Framing::Length | Framing::Chunked => body.to_vec(),
        Framing::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(body).unwrap();
            enc.finish().unwrap()
        }
    };
    let framing_head = match framing {
        Framing::Length => format!("Content-Length: {}\r\n", payload.len()),
        Framing::Chunked => "Transfer-Encoding: chunked\r\n".to_owned(),
        Framing::Gzip => format!("Content-Encoding: gzip\r\nContent-Length: {}\r\n", payload.len()),
    };
    let head = format!("{head}Content-Type: application/json\r\n{framing_head}Connection: close\r\n\r\n");
    let writer = tokio::spawn(async move {
        if wr.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        for chunk in payload.chunks(64 * 1024) {
            let sent = match framing {
                Framing::Chunked => {
                    let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
                    framed.extend_from_slice(chunk);
                    framed.extend_from_slice(b"\r\n");
                    wr.write_all(&framed).await
                }
                _ => wr.write_all(chunk).await,
            };
            if sent.is_err() {
                return;
            }
        }
        if matches!(framing, Framing::Chunked) {
            let _ = wr.write_all(b"0\r\n\r\n").await;
        }
    });
    let answer = crate::helpers::read_answer(&mut rd).await;
    writer.abort();
    let end = answer.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete response head");
    let status = String::from_utf8_lossy(&answer[9..12]).parse().unwrap();
    (status, serde_json::from_slice(&answer[end + 4..]).unwrap_or(Value::Null))
}

/// `{"name": "<random text>"}` of at least `bytes` bytes (random, so gzip cannot shrink it much).
fn big_body(bytes: usize) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut rng = rand::rng();
    let mut body = b"{\"name\":\"".to_vec();
    body.extend((0..bytes).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())]));
    body.extend_from_slice(b"\"}");
    body
}

#[tokio::test]
async fn every_route_with_a_body_answers_413_payload_too_large_for_an_over_limit_body_gzip_or_not() {
    let app = spawn_app_with(|c| c.body_max_bytes = 1024 * 1024).await;
    let register = json!({"email": "big@example.com", "name": "Owner", "password": "correct horse battery"});
    let r = reply(app.http.post(app.url("/api/auth/register")).json(&register).send().await.unwrap()).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let token = r.body["data"]["token"].as_str().unwrap().to_owned();
    let r = reply(
        app.http.post(app.url("/api/apps")).bearer_auth(&token).json(&json!({"name": "mine"})).send().await.unwrap(),
    )
    .await;
    let mine = r.body["data"]["id"].as_str().unwrap().to_owned();
    let doc = reply(app.http.get(app.url("/api/openapi.json")).send().await.unwrap()).await.body;

    let mut routes = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if op.get("requestBody").is_some() {
                routes.push((method.to_uppercase(), path.replace("{id}", &mine)));
            }
        }
    }
    routes.sort();
    let names: Vec<String> = routes.iter().map(|(m, p)| format!("{m} {}", p.replace(&mine, "{id}"))).collect();
    assert_eq!(
        names,
        [
            "PATCH /api/apps/{id}",
            "POST /api/apps",
            "POST /api/auth/login",
            "POST /api/auth/register",
            "POST /api/events/track",
            "POST /api/events/track/batch",
            "POST /api/keys",
        ]
    );
    let body = big_body(BODY_BYTES);
    for (method, path) in &routes {
        for framing in [Framing::Length, Framing::Chunked, Framing::Gzip] {
            let head = format!(
                "{method} {path} HTTP/1.1\r\nHost: strata\r\nAuthorization: Bearer {token}\r\nX-API-Key: {}\r\n",
                app.api_key
            );
            let (status, answer) = exchange(&app, &head, framing, &body).await;
            assert_eq!(
                (status, answer["error"]["code"].as_str()),
                (413, Some("payload_too_large")),
                "{method} {path} {framing:?}: {answer}"
            );
            assert_eq!(answer["success"], false);
        }
    }
    assert_eq!(app.raw_count().await, 0);
    let health = reply(app.http.get(app.url("/health")).send().await.unwrap()).await;
    assert_eq!(health.status, 200);
}
