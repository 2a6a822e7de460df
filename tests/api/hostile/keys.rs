//! Guessed keys against the pool: lookups of keys the server has never seen hold at most
//! `KeyAuth::lookups_max` pooled connections at once (a quarter of the pool), so a flood of random
//! keys cannot take the connections every other request needs.

use serde_json::json;
use strata::auth::keys::KeyAuth;

use super::assert_error;
use crate::helpers::{connect, reply, spawn_app, ADMIN_TOKEN};
use crate::wait::until_lock_waiters;

/// Sessions of the current database waiting for a lock.
const WAITING: &str = "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
                       WHERE NOT l.granted AND a.datname = current_database()";

#[tokio::test]
async fn lookups_of_unknown_keys_hold_at_most_a_quarter_of_the_pool_and_the_rest_keeps_serving() {
    let app = spawn_app().await;
    let cap = KeyAuth::lookups_max(8) as i64;
    assert_eq!(cap, 2, "the test server's pool holds 8 connections");
    // Every lookup waits behind this lock, holding its pooled connection until the lock goes.
    let mut blocker = connect(&app.db_name).await;
    let tx = blocker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let guesses: Vec<_> = (1..=8u32)
        .map(|i| {
            let (http, url) = (app.http.clone(), app.url("/api/events/track"));
            let key = format!("ak_{i:064x}");
            tokio::spawn(async move {
                let req = http.post(url).header("X-API-Key", key).json(&json!({"eventType": "guess"}));
                reply(req.send().await.unwrap()).await
            })
        })
        .collect();
    until_lock_waiters(&app.db, cap).await;

    // The other connections still serve while eight guesses are in flight.
    let admin = app.http.get(app.url("/api/admin/partitions")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(admin.status(), 200);
    let waiting: i64 = app.db.query_one(WAITING, &[]).await.unwrap().get(0);
    assert_eq!(waiting, cap, "key lookups reaching the database at once");

    tx.rollback().await.unwrap();
    for guess in guesses {
        assert_error(&guess.await.unwrap(), 401, "invalid_api_key", "a guessed key, once the lock is gone");
    }
}
