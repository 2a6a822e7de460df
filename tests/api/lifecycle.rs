//! Back-pressure, poisoned flushes and shutdown: a 2xx always means committed.

use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::helpers::{connect, keyed_database, spawn_app_with, start_binary, KeyedDatabase};
use crate::wait::{eventually, until_lock_waiters, when};

/// The ingest queue's depth (events accepted, not yet committed) as the server at `base` reports it.
async fn queue_depth(http: &reqwest::Client, base: &str) -> f64 {
    let text = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    let line = text.lines().find(|l| l.starts_with("strata_ingest_queue_depth ")).expect("a queue depth gauge");
    line["strata_ingest_queue_depth ".len()..].trim().parse().unwrap()
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after_and_loses_nothing() {
    let app = std::sync::Arc::new(
        spawn_app_with(|c| {
            c.ingest_queue_capacity = 10;
            c.batch_max_events = 10;
            c.writers = 1;
        })
        .await,
    );
    let mut blocker = connect(&app.db_name).await;
    let tx = blocker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE rollup_hourly IN EXCLUSIVE MODE").await.unwrap();
    let first = {
        let app = app.clone();
        tokio::spawn(async move { app.post_batch(&vec![json!({"eventType": "queued"}); 10]).await })
    };
    until_lock_waiters(&app.db, 1).await;
    let refused = app.track(&json!({"eventType": "refused"})).await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.body["error"]["code"], "queue_full");
    assert_eq!(refused.headers["retry-after"], "1");
    tx.commit().await.unwrap();
    let first = first.await.unwrap();
    assert_eq!(first.status, 201, "{}", first.body);
    assert_eq!(app.raw_count().await, 10);
    // Capacity is back once the queue drained.
    assert_eq!(app.track(&json!({"eventType": "later"})).await.status, 201);
}

/// Makes every insert into `table` of a row whose event_type is 'poison' fail.
async fn poison_inserts_into(db: &tokio_postgres::Client, table: &str) {
    let sql = format!(
        "CREATE FUNCTION poison_{table}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           IF NEW.event_type = 'poison' THEN RAISE EXCEPTION 'poisoned row'; END IF; RETURN NEW; END $$; \
         CREATE TRIGGER poison BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION poison_{table}();"
    );
    db.batch_execute(&sql).await.unwrap();
}

/// Stored events per type.
async fn events_by_type(db: &tokio_postgres::Client) -> Vec<(String, i64)> {
    let sql = "SELECT event_type, count(*) FROM events GROUP BY 1 ORDER BY 1";
    db.query(sql, &[]).await.unwrap().iter().map(|r| (r.get(0), r.get(1))).collect()
}

#[tokio::test]
async fn a_poisoned_request_fails_alone_and_its_neighbours_are_stored() {
    let app = std::sync::Arc::new(spawn_app_with(|c| c.writers = 1).await);
    poison_inserts_into(&app.db, "events").await;
    let mut blocker = connect(&app.db_name).await;
    let tx = blocker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE rollup_hourly IN EXCLUSIVE MODE").await.unwrap();
    let head = {
        let app = app.clone();
        tokio::spawn(async move { app.track(&json!({"eventType": "head"})).await })
    };
    until_lock_waiters(&app.db, 1).await;
    // These queue up behind the blocked flush and are committed together in the next one.
    let mut tasks = Vec::new();
    for i in 0..6 {
        let app = app.clone();
        let ty = if i == 3 { "poison" } else { "good" };
        tasks.push(tokio::spawn(async move {
            (ty, app.post_batch(&[json!({"eventType": ty}), json!({"eventType": ty})]).await)
        }));
    }
    let queued = async || when(queue_depth(&app.http, &app.url("")).await, |depth| *depth == 13.0);
    eventually(Duration::from_secs(5), "the head event and the six batches of two queued", queued).await;
    tx.commit().await.unwrap();
    assert_eq!(head.await.unwrap().status, 201);
    for t in tasks {
        let (ty, reply) = t.await.unwrap();
        if ty == "poison" {
            assert_eq!(reply.status, 422, "{}", reply.body);
            assert_eq!(reply.body["error"]["code"], "storage_rejected");
        } else {
            assert_eq!(reply.status, 201, "{}", reply.body);
        }
    }
    let rows = events_by_type(&app.db).await;
    assert_eq!(rows, vec![("good".to_string(), 10), ("head".to_string(), 1)]);
    assert_eq!(app.rollup_count().await, 11);
}

#[tokio::test]
async fn a_failure_in_the_last_pipelined_statement_commits_nothing_of_its_flush() {
    // One writer, so every flush reuses the same connection: it must come back outside any transaction.
    let app = spawn_app_with(|c| c.writers = 1).await;
    poison_inserts_into(&app.db, "rollup_tiers").await;
    let batch = |n: usize, poison: bool| -> Vec<serde_json::Value> {
        (0..n).map(|i| json!({"eventType": if poison && i == n / 2 { "poison" } else { "good" }})).collect()
    };
    // Small flushes insert their events in the pipeline; flushes over 256 events COPY them first.
    for (n, poison, status) in [(2, false, 201), (2, true, 422), (300, true, 422), (300, false, 201), (1, false, 201)] {
        let reply = app.post_batch(&batch(n, poison)).await;
        assert_eq!(reply.status, status, "{n} events, poison {poison}: {}", reply.body);
    }
    let rows = events_by_type(&app.db).await;
    assert_eq!(rows, vec![("good".to_string(), 303)]);
    assert_eq!(app.rollup_count().await, 303);
    let tier_events: i64 = app
        .db
        .query_one(
            "SELECT COALESCE(sum(events), 0)::int8 FROM rollup_tiers WHERE tier IN (0, 1) AND event_type = ''",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tier_events, 303);
}

#[tokio::test]
async fn sigterm_drains_every_accepted_event_before_exit() {
    let KeyedDatabase { name: db_name, db, api_key, .. } = keyed_database("shutdown").await;
    let (mut child, addr) = start_binary(&db_name, &[]);

    let mut blocker = connect(&db_name).await;
    let tx = blocker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE rollup_hourly IN EXCLUSIVE MODE").await.unwrap();
    let http = reqwest::Client::new();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let (http, key, url) = (http.clone(), api_key.clone(), format!("http://{addr}/api/events/track/batch"));
        tasks.push(tokio::spawn(async move {
            let events = vec![json!({"eventType": "drain", "userId": format!("u{i}")}); 5];
            http.post(url)
                .header("X-API-Key", key)
                .json(&json!({ "events": events }))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    until_lock_waiters(&db, 1).await;
    let queued = async || when(queue_depth(&http, &format!("http://{addr}")).await, |depth| *depth == 200.0);
    eventually(Duration::from_secs(10), "all 40 batches of five queued", queued).await;
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    // Draining: the listener is closed, so new connections are refused.
    let refused = async || when(tokio::net::TcpStream::connect(&addr).await.is_err(), |refused| *refused);
    eventually(Duration::from_secs(5), "the server stopped accepting connections", refused).await;
    tx.commit().await.unwrap();
    let mut acked = 0;
    for t in tasks {
        if let Ok(Ok(201)) = t.await {
            acked += 5;
        }
    }
    let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "server exited with {status}");
    let stored: i64 = db.query_one("SELECT count(*) FROM events", &[]).await.unwrap().get(0);
    assert_eq!(acked, 200, "every request sent before SIGTERM was in flight and must be acknowledged");
    assert_eq!(stored, acked);
}
