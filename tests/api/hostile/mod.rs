//! Hostile input on every endpoint: a 100 MB streamed body, 10,000-level JSON, invalid UTF-8, NUL
//! characters, huge numbers (`bodies`), SQL-looking text in every field and parameter, path traversal
//! and malformed ids (`params`), header injection and huge headers (`headers`). Each answer is an exact
//! 4xx (a JSON error with its code wherever the application answers), never a 5xx, and the server keeps
//! serving. (`requests.rs` covers the ordinary malformed bodies and encodings; these do not repeat them.)

mod bodies;
mod headers;
mod keys;
mod memory;
mod params;

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{reply, Reply, TestApp};

/// Text that would change a query if it were pasted into SQL instead of bound.
pub(super) const SQL: [&str; 4] = [
    "'; DROP TABLE events; --",
    "\" OR 1=1 --",
    "x') ; TRUNCATE apps CASCADE; SELECT pg_sleep(10); --",
    "$1 \\' UNION SELECT key_hash FROM api_keys --",
];

/// Percent-encodes everything but unreserved characters (for paths and query values).
pub(super) fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub(super) async fn send(app: &TestApp, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Reply {
    let mut req = app.http.request(method, app.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    reply(req.send().await.unwrap()).await
}

/// Posts raw bytes as a JSON body.
pub(super) async fn post_bytes(app: &TestApp, path: &str, key: Option<&str>, body: Vec<u8>) -> Reply {
    let mut req = app.http.post(app.url(path)).header("Content-Type", "application/json");
    if let Some(k) = key {
        req = req.header("X-API-Key", k);
    }
    reply(req.body(body).send().await.unwrap()).await
}

/// Registers an owner; returns its token.
pub(super) async fn owner(app: &TestApp, email: &str) -> String {
    let body = json!({"email": email, "name": "Owner", "password": "correct horse battery"});
    let r = send(app, Method::POST, "/api/auth/register", None, Some(body)).await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body["data"]["token"].as_str().unwrap().to_string()
}

/// Creates an app for `token`; returns its id.
pub(super) async fn owned_app(app: &TestApp, token: &str) -> String {
    let r = send(app, Method::POST, "/api/apps", Some(token), Some(json!({"name": "mine"}))).await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body["data"]["id"].as_str().unwrap().to_string()
}

#[track_caller]
pub(super) fn assert_error(r: &Reply, status: u16, code: &str, what: &str) {
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (status, Some(code)), "{what}: {}", r.body);
    assert_eq!(r.body["success"], false, "{what}");
}

#[track_caller]
pub(super) fn assert_parameter(r: &Reply, parameter: &str, what: &str) {
    assert_error(r, 400, "invalid_parameter", what);
    assert_eq!(r.body["error"]["details"]["parameter"], parameter, "{what}: {}", r.body);
}

/// A raw HTTP/1.1 exchange: `head` is sent as is (it must end with the blank line), the answer read
/// until the server closes. Returns the status, the head and the body.
pub(super) async fn raw(app: &TestApp, head: &[u8]) -> (u16, String, Vec<u8>) {
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream.write_all(head).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer)).await.unwrap().unwrap();
    split_answer(&answer)
}

pub(super) fn split_answer(answer: &[u8]) -> (u16, String, Vec<u8>) {
    let end = answer.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete response head");
    let head = String::from_utf8_lossy(&answer[..end]).to_string();
    let status = head[9..12].parse().unwrap();
    (status, head, answer[end + 4..].to_vec())
}
