//! SQL-looking text in every field and parameter; traversal and malformed ids in every path segment.

use reqwest::Method;
use serde_json::{json, Value};

use super::*;
use crate::helpers::{reply, spawn_app, ADMIN_TOKEN};

#[tokio::test]
async fn sql_looking_text_is_stored_and_echoed_verbatim_in_every_field_and_parameter() {
    let app = spawn_app().await;
    let email = "x'or'1'='1--@example.com";
    let body = json!({"email": email, "name": SQL[0], "password": SQL[2]});
    let r = send(&app, Method::POST, "/api/auth/register", None, Some(body)).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        (r.body["data"]["user"]["email"].as_str(), r.body["data"]["user"]["name"].as_str()),
        (Some(email), Some(SQL[0]))
    );
    let r = send(&app, Method::POST, "/api/auth/login", None, Some(json!({"email": email, "password": SQL[2]}))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let token = r.body["data"]["token"].as_str().unwrap().to_string();
    let r = send(&app, Method::POST, "/api/auth/login", None, Some(json!({"email": SQL[1], "password": SQL[1]}))).await;
    assert_error(&r, 401, "invalid_credentials", "login with SQL");
    let r = send(&app, Method::POST, "/api/apps", Some(&token), Some(json!({"name": SQL[1]}))).await;
    assert_eq!((r.status, r.body["data"]["name"].as_str()), (201, Some(SQL[1])), "{}", r.body);
    let mine = r.body["data"]["id"].as_str().unwrap().to_string();
    let r = send(&app, Method::PATCH, &format!("/api/apps/{mine}"), Some(&token), Some(json!({"name": SQL[2]}))).await;
    assert_eq!((r.status, r.body["data"]["name"].as_str()), (200, Some(SQL[2])), "{}", r.body);
    let r = send(&app, Method::POST, "/api/keys", Some(&token), Some(json!({"appId": mine, "name": SQL[3]}))).await;
    assert_eq!((r.status, r.body["data"]["name"].as_str()), (201, Some(SQL[3])), "{}", r.body);
    let key = r.body["data"]["apiKey"].as_str().unwrap().to_string();

    // Every string field of an event, stored verbatim.
    for (i, text) in SQL.iter().enumerate() {
        let event = json!({"eventType": text, "userId": text, "sessionId": text, "url": text, "referrer": text,
                           "userAgent": text, "metadata": {*text: text}, "eventId": format!("0193f0c4-7d1a-7000-8000-00000000000{i}")});
        let r = reply(
            app.http.post(app.url("/api/events/track")).header("X-API-Key", &key).json(&event).send().await.unwrap(),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let r = reply(
        app.http
            .post(app.url("/api/events/track/batch"))
            .header("X-API-Key", &key)
            .json(&json!({"events": [{"eventType": SQL[0], "apiKey": SQL[1]}], "apiKey": SQL[2]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((r.status, r.body["data"]["accepted"].as_u64()), (201, Some(1)), "{}", r.body);
    // The fields that are not free text refuse it by name; nothing is stored.
    for text in SQL {
        for (field, code) in [
            ("timestamp", "invalid_timestamp"),
            ("sentAt", "invalid_timestamp"),
            ("eventId", "invalid_event_id"),
            ("screenWidth", "invalid_type"),
            ("metadata", "invalid_type"),
        ] {
            let event = json!({"eventType": "typed", field: text});
            let r = reply(
                app.http
                    .post(app.url("/api/events/track"))
                    .header("X-API-Key", &key)
                    .json(&event)
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            assert_error(&r, 400, code, field);
        }
        let r = send(&app, Method::POST, "/api/keys", Some(&token), Some(json!({"appId": text, "name": "k"}))).await;
        assert_error(&r, 404, "app_not_found", "key appId");
        let body = json!({"appId": mine, "name": "k", "expiresInDays": text});
        assert_error(
            &send(&app, Method::POST, "/api/keys", Some(&token), Some(body)).await,
            400,
            "invalid_body",
            "days",
        );
    }
    const STORED: &str =
        "SELECT event_type, user_id, session_id, url, referrer, metadata FROM events WHERE user_id = $1";
    for text in SQL {
        let row = app.db.query_one(STORED, &[&text]).await.unwrap();
        let fields: Vec<String> = (0..5).map(|i| row.get(i)).collect();
        assert_eq!(fields, vec![text; 5]);
        assert_eq!(row.get::<_, Value>(5), json!({ text: text }));
    }

    // Every analytics parameter: the event type is matched as data, the rest refused by name.
    let base = format!("appId={mine}&startDate=2000-01-01");
    for text in SQL {
        let q = format!("/api/analytics/events/summary?{base}&eventType={}", enc(text));
        let r = send(&app, Method::GET, &q, Some(&token), None).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let expected = if text == SQL[0] { 2 } else { 1 };
        assert_eq!(
            (r.body["data"][0]["eventType"].as_str(), r.body["data"][0]["totalEvents"].as_i64()),
            (Some(text), Some(expected))
        );
        let q = format!("/api/analytics/events/timeline?{base}&interval=month&eventType={}", enc(text));
        let r = send(&app, Method::GET, &q, Some(&token), None).await;
        let total: i64 = r.body["data"].as_array().unwrap().iter().map(|b| b["eventCount"].as_i64().unwrap()).sum();
        assert_eq!((r.status, total), (200, expected), "{}", r.body);
        let r =
            send(&app, Method::GET, &format!("/api/analytics/users/{}?appId={mine}", enc(text)), Some(&token), None)
                .await;
        assert_eq!((r.status, r.body["data"]["userId"].as_str()), (200, Some(text)), "{}", r.body);
        assert_eq!(r.body["data"]["summary"]["totalEvents"], 1);
        let q = format!("/api/analytics/events/summary?{base}&event_type={}", enc(text));
        let r = send(&app, Method::GET, &q, Some(&token), None).await;
        assert_eq!((r.status, r.body["data"][0]["eventType"].as_str()), (200, Some(text)), "{}", r.body);
        for (name, code_param) in [
            ("tz", "tz"),
            ("timezone", "tz"),
            ("startDate", "startDate"),
            ("start_date", "startDate"),
            ("endDate", "endDate"),
            ("end_date", "endDate"),
            ("interval", "interval"),
            ("granularity", "interval"),
        ] {
            let q = format!("/api/analytics/events/timeline?appId={mine}&{name}={}", enc(text));
            assert_parameter(&send(&app, Method::GET, &q, Some(&token), None).await, code_param, &q);
        }
        for (name, code_param) in [("tz", "tz"), ("startDate", "startDate"), ("endDate", "endDate")] {
            let q = format!("/api/analytics/apps/{mine}/overview?{name}={}", enc(text));
            assert_parameter(&send(&app, Method::GET, &q, Some(&token), None).await, code_param, &q);
        }
        let q = format!("/api/analytics/users/u?app_id={}", enc(text));
        assert_error(&send(&app, Method::DELETE, &q, Some(&token), None).await, 404, "app_not_found", &q);
        for path in [
            format!("/api/analytics/events/timeline?appId={}", enc(text)),
            format!("/api/analytics/events/summary?app_id={}", enc(text)),
            format!("/api/analytics/apps/{}/overview", enc(text)),
            format!("/api/keys?appId={}", enc(text)),
            format!("/api/analytics/users/u?appId={}", enc(text)),
        ] {
            assert_error(&send(&app, Method::GET, &path, Some(&token), None).await, 404, "app_not_found", &path);
        }
        for (path, caller, parameter) in [
            (format!("/api/apps?limit={}", enc(text)), token.as_str(), "query"),
            (format!("/api/apps?offset={}", enc(text)), token.as_str(), "query"),
            (format!("/api/keys?limit={}", enc(text)), token.as_str(), "query"),
            (format!("/api/keys?offset={}", enc(text)), token.as_str(), "query"),
            (format!("/api/admin/maintenance/runs?limit={}", enc(text)), ADMIN_TOKEN, "limit"),
            (format!("/api/admin/slow-queries?limit={}", enc(text)), ADMIN_TOKEN, "limit"),
        ] {
            assert_parameter(&send(&app, Method::GET, &path, Some(caller), None).await, parameter, &path);
        }
    }
    let r = send(&app, Method::GET, &format!("/api/analytics/apps/{mine}/overview"), Some(&token), None).await;
    assert_eq!((r.status, r.body["data"]["app"]["name"].as_str()), (200, Some(SQL[2])), "{}", r.body);
    assert_eq!(r.body["data"]["stats"]["totalEvents"], 5);
    // Erasure by an SQL-looking user id deletes exactly that user's event.
    let r =
        send(&app, Method::DELETE, &format!("/api/analytics/users/{}?appId={mine}", enc(SQL[0])), Some(&token), None)
            .await;
    assert_eq!((r.status, r.body["data"]["deletedEvents"].as_i64()), (200, Some(1)), "{}", r.body);
    // Nothing was executed: every table is still there with its rows.
    let count = |table: &'static str| {
        let db = &app.db;
        async move { db.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(count("events").await, 4);
    assert_eq!(count("apps").await, 2);
    assert_eq!(count("api_keys").await, 2);
}

#[tokio::test]
async fn path_traversal_and_malformed_ids_in_every_id_segment_are_json_4xx() {
    let app = spawn_app().await;
    let token = owner(&app, "paths@example.com").await;
    let mine = owned_app(&app, &token).await;
    let long = "a".repeat(4000);
    let ids = [
        "..%2F..%2F..%2Fetc%2Fpasswd",
        "%2E%2E%2F%2E%2E%2Fapi%2Fkeys",
        "..%5C..%5Cwindows",
        "not-a-uuid",
        "00000000-0000-0000-0000-000000000000",
        "%27%20OR%20%271%27%3D%271",
        "%7B%7D",
        "%20",
        long.as_str(),
    ];
    for id in ids {
        let app_routes = [
            (Method::GET, format!("/api/apps/{id}")),
            (Method::PATCH, format!("/api/apps/{id}")),
            (Method::DELETE, format!("/api/apps/{id}")),
            (Method::GET, format!("/api/analytics/apps/{id}/overview")),
            (Method::GET, format!("/api/analytics/events/summary?appId={id}")),
        ];
        for (method, path) in app_routes {
            let body = (method == Method::PATCH).then(|| json!({"name": "x"}));
            let r = send(&app, method.clone(), &path, Some(&token), body).await;
            assert_error(&r, 404, "app_not_found", &format!("{method} {path}"));
        }
        for (method, path) in [
            (Method::GET, format!("/api/keys/{id}")),
            (Method::DELETE, format!("/api/keys/{id}")),
            (Method::POST, format!("/api/keys/{id}/regenerate")),
        ] {
            let r = send(&app, method.clone(), &path, Some(&token), None).await;
            assert_error(&r, 404, "key_not_found", &format!("{method} {path}"));
        }
        // A user id is free text: unknown ones have no events, too long ones are refused.
        for method in [Method::GET, Method::DELETE] {
            let r = send(&app, method.clone(), &format!("/api/analytics/users/{id}?appId={mine}"), Some(&token), None)
                .await;
            if id.len() > 256 {
                assert_parameter(&r, "userId", &format!("{method} users/{id}"));
            } else if method == Method::GET {
                assert_eq!(
                    (r.status, r.body["data"]["summary"]["totalEvents"].as_i64()),
                    (200, Some(0)),
                    "{id}: {}",
                    r.body
                );
            } else {
                assert_eq!((r.status, r.body["data"]["deletedEvents"].as_i64()), (200, Some(0)), "{id}: {}", r.body);
            }
        }
    }
    // Traversal that resolves outside the API is an unknown route, still JSON.
    let (status, _, body) =
        raw(&app, b"GET /api/apps/../../../etc/passwd HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n").await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")), "{body}");
}
