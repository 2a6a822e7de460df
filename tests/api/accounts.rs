//! The accounts API: registration, login, tokens, apps and keys, and tenant isolation on every
//! management and analytics endpoint.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{reply, spawn_app, spawn_app_with, Reply, TestApp, ADMIN_TOKEN, JWT_SECRET};
use crate::wait::{eventually, until_bus_connected, when};

const PASSWORD: &str = "correct horse battery";

/// Sends `body` (if any) as JSON with `token` as the bearer token.
async fn call(app: &TestApp, method: Method, path: &str, token: &str, body: Option<Value>) -> Reply {
    let mut req = app.http.request(method, app.url(path)).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    reply(req.send().await.unwrap()).await
}

async fn post_json(app: &TestApp, path: &str, body: Value) -> Reply {
    reply(app.http.post(app.url(path)).json(&body).send().await.unwrap()).await
}

/// Registers `email`; returns the owner's token and id.
async fn register(app: &TestApp, email: &str) -> (String, String) {
    let r = post_json(app, "/api/auth/register", json!({"email": email, "name": "Owner", "password": PASSWORD})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    (r.body["data"]["token"].as_str().unwrap().to_string(), r.body["data"]["user"]["id"].as_str().unwrap().to_string())
}

/// Creates an app for `token`; returns its id.
async fn new_app(app: &TestApp, token: &str, name: &str) -> String {
    let r = call(app, Method::POST, "/api/apps", token, Some(json!({"name": name}))).await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body["data"]["id"].as_str().unwrap().to_string()
}

/// Creates a key of `app_id` for `token`; returns the whole answer.
async fn new_key(app: &TestApp, token: &str, app_id: &str) -> Reply {
    let body = json!({"appId": app_id, "name": "web", "expiresInDays": 30});
    call(app, Method::POST, "/api/keys", token, Some(body)).await
}

async fn track_with(app: &TestApp, key: &str) -> u16 {
    let r = app.http.post(app.url("/api/events/track")).header("X-API-Key", key).json(&json!({"eventType": "click"}));
    r.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn an_owner_registers_logs_in_and_manages_apps_and_keys_through_their_whole_lifecycle() {
    let app = spawn_app().await;
    let (_, user_id) = register(&app, "ada@example.com").await;

    let login = post_json(&app, "/api/auth/login", json!({"email": "ADA@example.com", "password": PASSWORD})).await;
    assert_eq!(login.status, 200, "{}", login.body);
    assert_eq!(login.body["data"]["user"]["id"], user_id.as_str());
    assert_eq!(login.body["data"]["user"]["role"], "owner");
    assert!(login.body["data"]["user"].get("passwordHash").is_none());
    let token = login.body["data"]["token"].as_str().unwrap().to_string();
    let me = call(&app, Method::GET, "/api/auth/me", &token, None).await;
    assert_eq!((me.status, me.body["data"]["user"]["email"].as_str()), (200, Some("ada@example.com")));

    let app_id = new_app(&app, &token, "shop").await;
    let renamed =
        call(&app, Method::PATCH, &format!("/api/apps/{app_id}"), &token, Some(json!({"name": "store"}))).await;
    assert_eq!((renamed.status, renamed.body["data"]["name"].as_str()), (200, Some("store")));

    let created = new_key(&app, &token, &app_id).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let data = &created.body["data"];
    let api_key = data["apiKey"].as_str().unwrap().to_string();
    assert!(api_key.starts_with("ak_") && api_key.len() == 67, "{api_key}");
    assert_eq!(data["key_prefix"], &api_key[..12]);
    assert_eq!((data["app_id"].as_str(), data["status"].as_str()), (Some(app_id.as_str()), Some("active")));
    assert!(data["expires_at"].is_string() && data["created_at"].is_string() && created.body["message"].is_string());
    let key_id = data["id"].as_str().unwrap().to_string();
    assert_eq!(track_with(&app, &api_key).await, 201);

    let list = call(&app, Method::GET, &format!("/api/keys?appId={app_id}"), &token, None).await;
    assert_eq!(list.status, 200, "{}", list.body);
    let row = &list.body["data"][0];
    assert_eq!((row["id"].as_str(), row["app_name"].as_str()), (Some(key_id.as_str()), Some("store")));
    assert!(row["usage_count"].is_i64() && row.get("last_used_at").is_some());
    let one = call(&app, Method::GET, &format!("/api/keys/{key_id}"), &token, None).await;
    assert_eq!(one.status, 200);
    assert!(!one.body.to_string().contains("hash"), "{}", one.body);
    assert!(!list.body.to_string().contains("hash"), "{}", list.body);

    let regen = call(&app, Method::POST, &format!("/api/keys/{key_id}/regenerate"), &token, None).await;
    assert_eq!(regen.status, 201, "{}", regen.body);
    assert_eq!(regen.body["data"]["name"], "web");
    assert_eq!(regen.body["data"]["expires_at"], data["expires_at"]);
    let fresh = regen.body["data"]["apiKey"].as_str().unwrap().to_string();
    assert_eq!(track_with(&app, &api_key).await, 401);
    assert_eq!(track_with(&app, &fresh).await, 201);

    let new_id = regen.body["data"]["id"].as_str().unwrap();
    let revoked = call(&app, Method::DELETE, &format!("/api/keys/{new_id}"), &token, None).await;
    assert_eq!((revoked.status, revoked.body["data"]["status"].as_str()), (200, Some("revoked")));
    assert_eq!(track_with(&app, &fresh).await, 401);

    let another = new_key(&app, &token, &app_id).await.body["data"]["apiKey"].as_str().unwrap().to_string();
    assert_eq!(track_with(&app, &another).await, 201);
    let deleted = call(&app, Method::DELETE, &format!("/api/apps/{app_id}"), &token, None).await;
    assert_eq!((deleted.status, deleted.body["data"]["revokedKeys"].as_i64()), (200, Some(1)));
    assert_eq!(track_with(&app, &another).await, 401);
    assert_eq!(call(&app, Method::GET, &format!("/api/apps/{app_id}"), &token, None).await.status, 404);
}

#[tokio::test]
async fn a_wrong_password_and_an_unknown_email_get_the_same_401() {
    let app = spawn_app().await;
    register(&app, "bob@example.com").await;
    let wrong = post_json(&app, "/api/auth/login", json!({"email": "bob@example.com", "password": "nope nope"})).await;
    let unknown = post_json(&app, "/api/auth/login", json!({"email": "eve@example.com", "password": PASSWORD})).await;
    assert_eq!((wrong.status, unknown.status), (401, 401));
    assert_eq!(wrong.body, unknown.body);
    assert_eq!(wrong.body["error"]["code"], "invalid_credentials");
}

#[tokio::test]
async fn registering_an_email_twice_in_any_case_is_a_conflict() {
    let app = spawn_app().await;
    register(&app, "cy@example.com").await;
    let again =
        post_json(&app, "/api/auth/register", json!({"email": "CY@example.com", "name": "C", "password": PASSWORD}))
            .await;
    assert_eq!((again.status, again.body["error"]["code"].as_str()), (409, Some("email_taken")));
    let short =
        post_json(&app, "/api/auth/register", json!({"email": "d@example.com", "name": "D", "password": "short"}))
            .await;
    assert_eq!(short.status, 400, "{}", short.body);
}

#[tokio::test]
async fn a_token_is_refused_once_it_expires() {
    const TTL: Duration = Duration::from_secs(1);
    let app = spawn_app_with(|c| c.token_ttl = TTL).await;
    let (token, owner) = register(&app, "dee@example.com").await;
    assert_eq!(call(&app, Method::GET, "/api/auth/me", &token, None).await.status, 200);
    // The server's token lives for the configured TTL ...
    let claims = strata::auth::tokens::verify(JWT_SECRET.as_bytes(), &token, chrono::DateTime::UNIX_EPOCH).unwrap();
    assert_eq!(claims.exp - claims.iat, 1);
    // ... and the same owner's token issued one TTL and a second ago, expired a second ago, is refused.
    let issued = chrono::Utc::now() - chrono::Duration::seconds(2);
    let (expired, _) =
        strata::auth::tokens::issue(JWT_SECRET.as_bytes(), owner.parse().unwrap(), "dee@example.com", issued, TTL);
    let r = call(&app, Method::GET, "/api/auth/me", &expired, None).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (401, Some("unauthorized")));
}

#[tokio::test]
async fn logging_out_revokes_the_token_everywhere() {
    let app = spawn_app().await;
    let (token, _) = register(&app, "fay@example.com").await;
    let app_id = new_app(&app, &token, "site").await;
    let overview = format!("/api/analytics/apps/{app_id}/overview");
    assert_eq!(call(&app, Method::GET, &overview, &token, None).await.status, 200);
    assert_eq!(call(&app, Method::POST, "/api/auth/logout", &token, None).await.status, 200);
    assert_eq!(call(&app, Method::GET, "/api/auth/me", &token, None).await.status, 401);
    assert_eq!(call(&app, Method::GET, &overview, &token, None).await.status, 401);
    assert_eq!(call(&app, Method::GET, "/api/apps", &token, None).await.status, 401);
}

#[tokio::test]
async fn another_owners_apps_and_keys_are_not_found_on_every_endpoint() {
    let app = spawn_app().await;
    let (a, _) = register(&app, "alice@example.com").await;
    let (b, _) = register(&app, "mallory@example.com").await;
    let app_id = new_app(&app, &a, "alice's").await;
    let key_id = new_key(&app, &a, &app_id).await.body["data"]["id"].as_str().unwrap().to_string();
    let q = format!("appId={app_id}");
    let attempts: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, format!("/api/apps/{app_id}"), None),
        (Method::PATCH, format!("/api/apps/{app_id}"), Some(json!({"name": "mine"}))),
        (Method::DELETE, format!("/api/apps/{app_id}"), None),
        (Method::POST, "/api/keys".into(), Some(json!({"appId": app_id, "name": "x"}))),
        (Method::GET, format!("/api/keys?{q}"), None),
        (Method::GET, format!("/api/keys/{key_id}"), None),
        (Method::DELETE, format!("/api/keys/{key_id}"), None),
        (Method::POST, format!("/api/keys/{key_id}/regenerate"), None),
        (Method::GET, format!("/api/analytics/events/timeline?{q}"), None),
        (Method::GET, format!("/api/analytics/events/summary?{q}"), None),
        (Method::GET, format!("/api/analytics/users/u1?{q}"), None),
        (Method::GET, format!("/api/analytics/apps/{app_id}/overview"), None),
    ];
    for (method, path, body) in attempts {
        let r = call(&app, method.clone(), &path, &b, body.clone()).await;
        assert_eq!(r.status, 404, "{method} {path}: {}", r.body);
        let owner_view = if method == Method::GET { call(&app, method, &path, &a, body).await.status } else { 200 };
        assert_eq!(owner_view, 200, "the owner reads {path}");
    }
    // B's lists are empty; the admin token still reads every app's analytics.
    let apps = call(&app, Method::GET, "/api/apps", &b, None).await;
    assert_eq!(apps.body["data"], json!([]));
    assert_eq!(call(&app, Method::GET, "/api/keys", &b, None).await.body["data"], json!([]));
    let user = call(&app, Method::GET, "/api/analytics/users/u1", &b, None).await;
    assert_eq!((user.status, user.body["data"]["summary"]["totalEvents"].as_i64()), (200, Some(0)));
    let admin = call(&app, Method::GET, &format!("/api/analytics/apps/{app_id}/overview"), ADMIN_TOKEN, None).await;
    assert_eq!(admin.status, 200);
    // Nothing of A's changed.
    let still = call(&app, Method::GET, &format!("/api/keys/{key_id}"), &a, None).await;
    assert_eq!(still.body["data"]["status"], "active");
    let name = call(&app, Method::GET, &format!("/api/apps/{app_id}"), &a, None).await.body["data"]["name"].clone();
    assert_eq!(name, "alice's");
    // The admin token is no owner: it cannot manage apps.
    assert_eq!(call(&app, Method::GET, "/api/apps", ADMIN_TOKEN, None).await.status, 401);
}

#[tokio::test]
async fn app_lists_are_paginated() {
    let app = spawn_app().await;
    let (token, _) = register(&app, "gus@example.com").await;
    for name in ["one", "two", "three"] {
        new_app(&app, &token, name).await;
    }
    let first = call(&app, Method::GET, "/api/apps?limit=2", &token, None).await;
    assert_eq!(first.body["data"].as_array().unwrap().len(), 2);
    assert_eq!(first.body["meta"]["hasMore"], true);
    let rest = call(&app, Method::GET, "/api/apps?limit=2&offset=2", &token, None).await;
    assert_eq!(rest.body["data"][0]["name"], "three");
    assert_eq!(rest.body["meta"]["hasMore"], false);
    assert_eq!(call(&app, Method::GET, "/api/apps?limit=0", &token, None).await.status, 400);
}

#[tokio::test]
async fn dba_endpoints_accept_admin_owners_and_refuse_plain_owners() {
    let app = spawn_app().await;
    let (plain, _) = register(&app, "hal@example.com").await;
    let hash = strata::auth::password::hash(PASSWORD.into()).await.unwrap();
    strata::accounts::create_owner(&app.db, "root@example.com", "Root", &hash, true).await.unwrap();
    let login = post_json(&app, "/api/auth/login", json!({"email": "root@example.com", "password": PASSWORD})).await;
    let admin = login.body["data"]["token"].as_str().unwrap().to_string();
    assert_eq!(call(&app, Method::GET, "/api/admin/partitions", &admin, None).await.status, 200);
    assert_eq!(call(&app, Method::GET, "/api/admin/partitions", &plain, None).await.status, 403);
    assert_eq!(call(&app, Method::GET, "/api/admin/partitions", "nonsense", None).await.status, 401);
}

#[tokio::test]
async fn a_key_stops_working_at_its_expiry_and_bad_ids_are_404() {
    let app = spawn_app().await;
    let (token, _) = register(&app, "ivy@example.com").await;
    let app_id = new_app(&app, &token, "site").await;
    let key = new_key(&app, &token, &app_id).await;
    let (id, secret) = (key.body["data"]["id"].as_str().unwrap(), key.body["data"]["apiKey"].as_str().unwrap());
    let id = Uuid::parse_str(id).unwrap();
    app.db.execute("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = $1", &[&id]).await.unwrap();
    // The key was never used, so no cached answer hides the new expiry.
    assert_eq!(track_with(&app, secret).await, 401);
    assert_eq!(call(&app, Method::GET, "/api/keys/not-a-uuid", &token, None).await.status, 404);
    assert_eq!(call(&app, Method::GET, &format!("/api/apps/{}", Uuid::new_v4()), &token, None).await.status, 404);
}

#[tokio::test]
async fn owners_and_their_apps_can_be_created_from_the_cli() {
    let app = spawn_app().await;
    let url = crate::helpers::test_config(&app.db_name).database_url.unwrap();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
            .args(args)
            .env("DATABASE_URL", &url)
            .env("STRATA_KEY_SECRET", crate::helpers::KEY_SECRET)
            .env("STRATA_OWNER_PASSWORD", PASSWORD)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let owner_id = cli(&["owners", "create", "--email", "ops@example.com", "--name", "Ops", "--admin"]);
    let app_id = cli(&["apps", "create", "--name", "cli app", "--owner", "ops@example.com"]);
    let login = post_json(&app, "/api/auth/login", json!({"email": "ops@example.com", "password": PASSWORD})).await;
    assert_eq!(login.body["data"]["user"]["id"], owner_id.as_str());
    assert_eq!(login.body["data"]["user"]["role"], "admin");
    let token = login.body["data"]["token"].as_str().unwrap();
    let listed = call(&app, Method::GET, "/api/apps", token, None).await;
    assert_eq!(listed.body["data"][0]["id"], app_id.as_str());
}

#[tokio::test]
async fn auth_attempts_over_the_per_ip_limit_get_429_with_rate_limit_headers() {
    let limit = strata::config::RateLimit { requests: 3, window: Duration::from_secs(900) };
    let app = spawn_app_with(|c| c.auth_rate_limit = Some(limit)).await;
    let attempt = json!({"email": "nobody@example.com", "password": PASSWORD});
    for left in ["2", "1", "0"] {
        let r = post_json(&app, "/api/auth/login", attempt.clone()).await;
        assert_eq!((r.status, r.headers["ratelimit-remaining"].to_str().unwrap()), (401, left));
    }
    let limited =
        post_json(&app, "/api/auth/register", json!({"email": "x@example.com", "name": "X", "password": PASSWORD}))
            .await;
    assert_eq!((limited.status, limited.body["error"]["code"].as_str()), (429, Some("rate_limited")));
    assert_eq!(limited.headers["retry-after"], "300");
    assert_eq!(limited.headers["ratelimit-limit"], "3");
    assert_eq!(limited.headers["ratelimit-reset"], "300");
    // Refused before any database work: the owner was not created.
    let owners: i64 =
        app.db.query_one("SELECT count(*) FROM owners WHERE email = 'x@example.com'", &[]).await.unwrap().get(0);
    assert_eq!(owners, 0);
}

/// A new owner (token), their app and a key on it: (token, API key, key id).
async fn owner_with_key(app: &TestApp, email: &str) -> (String, String, String) {
    let (token, _) = register(app, email).await;
    let app_id = new_app(app, &token, "shop").await;
    let created = new_key(app, &token, &app_id).await;
    let key = created.body["data"]["apiKey"].as_str().unwrap().to_string();
    (token, key, created.body["data"]["id"].as_str().unwrap().to_string())
}

/// One event tracked with `key` on a second instance.
fn track_on(
    server: &crate::helpers::TestServer,
    key: &str,
) -> impl std::future::Future<Output = reqwest::Result<reqwest::Response>> {
    let url = format!("http://{}/api/events/track", server.addr);
    server.http.post(url).header("X-API-Key", key).json(&json!({"eventType": "x"})).send()
}

#[tokio::test]
async fn a_key_revoked_on_one_instance_stops_working_on_another_within_a_second() {
    let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    let redis = |c: &mut strata::config::Config| {
        c.redis_url = Some("redis://127.0.0.1:6379".into());
        c.redis_prefix = prefix.clone();
        c.key_cache_ttl = std::time::Duration::from_secs(30);
    };
    let a = crate::helpers::spawn_app_with(redis).await;
    let b = crate::helpers::spawn_server_on(&a.db_name, redis).await;
    until_bus_connected(&b).await;
    let (token, key, key_id) = owner_with_key(&a, "revoker@example.com").await;
    let track_on_b = || track_on(&b, &key);
    // B caches the key as valid (for up to 30 s without the bus).
    assert_eq!(track_on_b().await.unwrap().status(), 201);
    let revoked = call(&a, Method::DELETE, &format!("/api/keys/{key_id}"), &token, None).await;
    assert!(revoked.status < 300, "{}", revoked.body);
    let refused = async || when(track_on_b().await.unwrap().status().as_u16(), |s| *s == 401);
    let status = eventually(Duration::from_secs(1), "instance B refuses the revoked key", refused).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn without_redis_a_revoked_key_stops_working_on_another_instance_within_the_key_cache_ttl() {
    const TTL: Duration = Duration::from_secs(3);
    // Redis on a closed port: no bus, so instance B learns of the revocation only when its key cache
    // entry expires (STRATA_KEY_CACHE_TTL, the documented fallback bound).
    let no_redis = |c: &mut strata::config::Config| {
        c.redis_url = Some("redis://127.0.0.1:1".into());
        c.key_cache_ttl = TTL;
    };
    let a = spawn_app_with(no_redis).await;
    let b = crate::helpers::spawn_server_on(&a.db_name, no_redis).await;
    let (token, key, key_id) = owner_with_key(&a, "fallback@example.com").await;
    let track_on_b = || track_on(&b, &key);
    assert_eq!(track_on_b().await.unwrap().status(), 201);
    let cached_at = std::time::Instant::now();
    let revoked = call(&a, Method::DELETE, &format!("/api/keys/{key_id}"), &token, None).await;
    assert!(revoked.status < 300, "{}", revoked.body);
    // A at once (its own cache was evicted); B still serves its cached entry.
    let on_a = a.http.post(a.url("/api/events/track")).header("X-API-Key", &key).json(&json!({"eventType": "x"}));
    assert_eq!(on_a.send().await.unwrap().status(), 401);
    assert_eq!(track_on_b().await.unwrap().status(), 201, "B has no bus: it keeps its cached key until the TTL");
    let refused = async || when(track_on_b().await.unwrap().status().as_u16(), |s| *s == 401);
    let within = (TTL + Duration::from_millis(1500)).saturating_sub(cached_at.elapsed());
    let status = eventually(within, "B's key cache entry expired: it refuses the revoked key", refused).await;
    assert_eq!(status, 401);
}
