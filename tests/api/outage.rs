//! One database outage, one answer on every route family: a connection lost in the middle of a
//! statement answers 503 `database_unavailable` with `Retry-After`, and the body says nothing of the
//! database's own words. Each test holds a lock the request's statement waits behind, terminates the
//! server's waiting sessions (`pg_terminate_backend`, as a failover or an administrator would) and
//! releases the lock only once the answer is in: the request can only end through the lost connection.

use std::future::Future;
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{connect, reply, spawn_app, Reply, TestApp, ADMIN_TOKEN};

/// Terminates every session of the test database that waits for a lock (the request's, and any
/// background job that happened to queue behind the same lock: the server replaces both).
const KILL_WAITERS: &str = "SELECT count(pg_terminate_backend(a.pid)) FROM pg_stat_activity a \
     WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() \
     AND a.pid IN (SELECT pid FROM pg_locks WHERE NOT granted)";

/// Pause between two rounds of terminations.
const KILL_POLL: Duration = Duration::from_millis(20);

/// `request`'s answer when its statement on `tables` loses its connection.
async fn killed_mid_statement(app: &TestApp, tables: &str, request: impl Future<Output = Reply>) -> Reply {
    let mut blocker = connect(&app.db_name).await;
    let tx = blocker.transaction().await.unwrap();
    tx.batch_execute(&format!("LOCK TABLE {tables} IN ACCESS EXCLUSIVE MODE")).await.unwrap();
    let killer = async {
        loop {
            app.db.query_one(KILL_WAITERS, &[]).await.unwrap();
            tokio::time::sleep(KILL_POLL).await;
        }
    };
    let answer = tokio::select! {
        answer = request => answer,
        () = killer => unreachable!("the killer never stops"),
    };
    tx.rollback().await.unwrap();
    answer
}

/// 503 `database_unavailable`, `Retry-After: 1`, and none of the database's text.
fn assert_database_unavailable(r: &Reply, what: &str) {
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (503, Some("database_unavailable")), "{what}: {}", r.body);
    assert_eq!(r.headers["retry-after"], "1", "{what}");
    let message = r.body["error"]["message"].as_str().unwrap().to_lowercase();
    for leak in ["terminat", "administrator", "db error", "57p01", "connection closed", "sql"] {
        assert!(!message.contains(leak), "{what}: the message leaks {leak:?}: {message}");
    }
}

async fn send(app: &TestApp, method: reqwest::Method, path: &str, token: &str, body: Option<Value>) -> Reply {
    let mut req = app.http.request(method, app.url(path)).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    reply(req.send().await.unwrap()).await
}

/// A registered owner's token.
async fn owner_token(app: &TestApp, email: &str) -> String {
    let body = json!({"email": email, "name": "Owner", "password": "correct horse battery"});
    let r = reply(app.http.post(app.url("/api/auth/register")).json(&body).send().await.unwrap()).await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body["data"]["token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn accounts_answer_503_when_the_connection_is_lost_mid_statement() {
    let app = spawn_app().await;
    let body = json!({"email": "lost@example.com", "name": "Lost", "password": "correct horse battery"});
    let register =
        async { reply(app.http.post(app.url("/api/auth/register")).json(&body).send().await.unwrap()).await };
    let r = killed_mid_statement(&app, "owners", register).await;
    assert_database_unavailable(&r, "register");
}

#[tokio::test]
async fn apps_and_keys_answer_503_when_the_connection_is_lost_mid_statement() {
    let app = spawn_app().await;
    let token = owner_token(&app, "keys@example.com").await;
    let list = send(&app, reqwest::Method::GET, "/api/keys", &token, None);
    assert_database_unavailable(&killed_mid_statement(&app, "api_keys", list).await, "list keys");
    let create = send(&app, reqwest::Method::POST, "/api/apps", &token, Some(json!({"name": "shop"})));
    assert_database_unavailable(&killed_mid_statement(&app, "apps", create).await, "create app");
}

#[tokio::test]
async fn analytics_answer_503_when_the_connection_is_lost_mid_statement() {
    let app = spawn_app().await;
    let path = format!("/api/analytics/events/summary?appId={}", app.app_id);
    let summary = send(&app, reqwest::Method::GET, &path, ADMIN_TOKEN, None);
    let r =
        killed_mid_statement(&app, "events, rollup_months, rollup_hourly, rollup_hourly_dims, rollup_tiers", summary)
            .await;
    assert_database_unavailable(&r, "summary");
}

#[tokio::test]
async fn privacy_erasure_answers_503_when_the_connection_is_lost_mid_statement() {
    let app = spawn_app().await;
    let path = format!("/api/analytics/users/u1?appId={}", app.app_id);
    let erase = send(&app, reqwest::Method::DELETE, &path, ADMIN_TOKEN, None);
    let r = killed_mid_statement(&app, "events, rollup_months, rollup_hourly, rollup_hourly_dims, rollup_tiers", erase)
        .await;
    assert_database_unavailable(&r, "erasure");
}

#[tokio::test]
async fn admin_endpoints_answer_503_when_the_connection_is_lost_mid_statement() {
    let app = spawn_app().await;
    let runs = send(&app, reqwest::Method::GET, "/api/admin/maintenance/runs", ADMIN_TOKEN, None);
    assert_database_unavailable(&killed_mid_statement(&app, "maintenance_runs", runs).await, "maintenance runs");
    let partitions = send(&app, reqwest::Method::GET, "/api/admin/partitions/health", ADMIN_TOKEN, None);
    let r = killed_mid_statement(&app, "rollup_months, partition_policy", partitions).await;
    assert_database_unavailable(&r, "partition health");
}

#[tokio::test]
async fn ingestion_answers_503_when_the_connection_is_lost_mid_statement() {
    let app = spawn_app().await;
    let event = json!({"eventType": "lost"});
    let r = killed_mid_statement(&app, "events, rollup_hourly", app.track(&event)).await;
    assert_database_unavailable(&r, "track");
    let events = [json!({"eventType": "lost"})];
    let r = killed_mid_statement(&app, "events, rollup_hourly", app.post_batch(&events)).await;
    assert_database_unavailable(&r, "batch");
}

#[tokio::test]
async fn every_route_family_answers_503_when_the_database_refuses_connections() {
    let app = spawn_app().await;
    let token = owner_token(&app, "down@example.com").await;
    let admin = connect("postgres").await;
    admin.batch_execute(&format!("ALTER DATABASE \"{}\" ALLOW_CONNECTIONS false", app.db_name)).await.unwrap();
    let kill_all = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1";
    admin.query_one(kill_all, &[&app.db_name]).await.unwrap();
    let routes = [
        (reqwest::Method::GET, "/api/auth/me".to_string(), token.as_str()),
        (reqwest::Method::GET, "/api/apps".to_string(), token.as_str()),
        (reqwest::Method::GET, format!("/api/analytics/events/summary?appId={}", app.app_id), ADMIN_TOKEN),
        (reqwest::Method::DELETE, format!("/api/analytics/users/u1?appId={}", app.app_id), ADMIN_TOKEN),
        (reqwest::Method::GET, "/api/admin/maintenance/runs".to_string(), ADMIN_TOKEN),
    ];
    for (method, path, bearer) in routes {
        let r = send(&app, method.clone(), &path, bearer, None).await;
        assert_database_unavailable(&r, &format!("{method} {path}"));
    }
    let r = app.track(&json!({"eventType": "down"})).await;
    assert_database_unavailable(&r, "track");
}
