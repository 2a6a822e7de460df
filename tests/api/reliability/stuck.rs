//! A commit stuck in the database (here behind a lock) answers 503 `commit_timeout` with Retry-After
//! before the request timeout would cut the request off with a bare 408; the job may still commit, and
//! the client's retry with the same eventId is stored once.

use std::time::{Duration, Instant};

use serde_json::json;
use uuid::Uuid;

use crate::helpers::{connect, spawn_app_with};

#[tokio::test]
async fn a_commit_stuck_behind_a_lock_answers_503_in_time_and_the_retry_is_stored_once() {
    let request_timeout = Duration::from_secs(2);
    let app = spawn_app_with(|c| {
        c.writers = 1;
        c.request_timeout = request_timeout;
    })
    .await;
    let mut blocker = connect(&app.db_name).await;
    let tx = blocker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE rollup_hourly IN EXCLUSIVE MODE").await.unwrap();
    let event = json!({"eventType": "stuck", "eventId": Uuid::new_v4()});

    let started = Instant::now();
    let stuck = app.track(&event).await;
    let took = started.elapsed();
    tx.commit().await.unwrap();
    let retry = app.track(&event).await;

    assert_eq!(stuck.status, 503, "{}", stuck.body);
    assert_eq!(stuck.body["error"]["code"], "commit_timeout");
    assert_eq!(stuck.headers["retry-after"], "1");
    assert!(took >= request_timeout.mul_f64(0.9), "answered after {took:?}");
    assert_eq!(retry.status, 201, "{}", retry.body);
    assert_eq!(retry.body["data"]["duplicate"], true, "the stuck job committed once the lock was released");
    assert_eq!((app.raw_count().await, app.rollup_count().await), (1, 1));
}
