//! Slow clients: a slowloris client dribbling its headers, a connection that sends nothing and a client
//! dribbling its body are cut off after the configured timeouts (`STRATA_HEADER_TIMEOUT`,
//! `STRATA_REQUEST_TIMEOUT`), while normal requests keep being answered at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::spawn_app_with;

const HEADER_TIMEOUT: Duration = Duration::from_secs(1);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest the test waits for the server to cut a client off.
const GIVE_UP: Duration = Duration::from_secs(10);
/// Gap between two dribbled bytes.
const DRIBBLE: Duration = Duration::from_millis(50);

/// Writes `head` at once, then `dribble` one byte per [`DRIBBLE`] (repeated); returns when the
/// server closed the connection: the time it took and the first bytes it sent.
async fn dribble(addr: SocketAddr, head: String, dribble: &'static [u8]) -> (Duration, String) {
    let started = Instant::now();
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        if wr.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        if dribble.is_empty() {
            // Silent, but keeps its write side open (dropping it would send FIN).
            tokio::time::sleep(GIVE_UP).await;
            return;
        }
        for b in dribble.iter().cycle() {
            if wr.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(DRIBBLE).await;
        }
    });
    let mut received = Vec::new();
    let read = tokio::time::timeout(GIVE_UP, async {
        let mut buf = [0u8; 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    writer.abort();
    assert!(read.is_ok(), "the server did not cut the client off within {GIVE_UP:?}");
    let first_line = String::from_utf8_lossy(&received).lines().next().unwrap_or("").to_owned();
    (started.elapsed(), first_line)
}

#[tokio::test]
async fn slow_headers_silent_connections_and_slow_bodies_are_cut_off_while_others_are_served() {
    let app = Arc::new(
        spawn_app_with(|c| {
            c.header_timeout = HEADER_TIMEOUT;
            c.request_timeout = REQUEST_TIMEOUT;
        })
        .await,
    );
    let mut slowloris = Vec::new();
    for _ in 0..20 {
        let head = "POST /api/events/track HTTP/1.1\r\nHost: strata\r\n".to_owned();
        slowloris.push(tokio::spawn(dribble(app.addr, head, b"X-Pad: aaaaaaaaaaaaaaaa\r\n")));
        slowloris.push(tokio::spawn(dribble(app.addr, String::new(), b"")));
    }
    let mut slow_bodies = Vec::new();
    for _ in 0..5 {
        let head = format!(
            "POST /api/events/track HTTP/1.1\r\nHost: strata\r\nX-API-Key: {}\r\nContent-Type: application/json\r\n\
             Content-Length: 1000\r\n\r\n",
            app.api_key
        );
        slow_bodies.push(tokio::spawn(dribble(app.addr, head, b" ")));
    }

    let mut normal = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let r = app.track(&json!({"eventType": "normal"})).await;
        normal.push((r.status, t.elapsed()));
        // Paced on purpose (under test): normal requests spread over the second the slow clients hold.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut cut_headers = Vec::new();
    for t in slowloris {
        cut_headers.push(t.await.unwrap());
    }
    let mut cut_bodies = Vec::new();
    for t in slow_bodies {
        cut_bodies.push(t.await.unwrap());
    }

    for (status, took) in &normal {
        assert_eq!(*status, 201);
        assert!(*took < Duration::from_millis(900), "a normal request took {took:?} beside the slow clients");
    }
    for (took, first_line) in &cut_headers {
        assert!(*took >= HEADER_TIMEOUT && *took < HEADER_TIMEOUT * 2, "cut off after {took:?} ({first_line})");
    }
    for (took, first_line) in &cut_bodies {
        assert_eq!(first_line, "HTTP/1.1 408 Request Timeout");
        assert!(*took >= REQUEST_TIMEOUT && *took < REQUEST_TIMEOUT * 2, "cut off after {took:?}");
    }
    assert_eq!(app.raw_count().await, 10);
}
