//! Edge cases and definitions: empty range, single bucket, partition boundary, untrusted month,
//! distinct-count and tie rules, parameters, auth and unknown apps.

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc, Weekday};
use serde_json::{json, Value};
use uuid::Uuid;

use super::{event, get, post_events, AGENTS};
use crate::helpers::{reply, spawn_app, TestApp, KEY_SECRET};

fn month_start(t: DateTime<Utc>) -> DateTime<Utc> {
    t.date_naive().with_day(1).unwrap().and_hms_opt(0, 0, 0).unwrap().and_utc()
}

fn counts(body: &Value) -> Vec<i64> {
    body["data"].as_array().unwrap().iter().map(|b| b["eventCount"].as_i64().unwrap()).collect()
}

async fn timeline(app: &TestApp, query: &[(&str, &str)]) -> Value {
    let mut q: Vec<(&str, String)> = vec![("appId", app.app_id.to_string())];
    q.extend(query.iter().map(|(k, v)| (*k, v.to_string())));
    let r = get(app, "/api/analytics/events/timeline", &q).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

#[tokio::test]
async fn an_empty_range_has_no_buckets_and_zero_totals() {
    let app = spawn_app().await;
    let at = Utc::now() - Duration::hours(2);
    post_events(&app, &app.api_key, &[event("click", at, Some("u".into()), None, None)]).await;
    let t = at.to_rfc3339();
    let body = timeline(&app, &[("startDate", &t), ("endDate", &t), ("interval", "hour")]).await;
    assert_eq!(body["data"], json!([]));
    let q = [("appId", app.app_id.to_string()), ("startDate", t.clone()), ("endDate", t.clone())];
    assert_eq!(get(&app, "/api/analytics/events/summary", &q).await.body["data"], json!([]));
    let ov = get(&app, &format!("/api/analytics/apps/{}/overview", app.app_id), &q[1..]).await;
    assert_eq!(ov.body["data"]["stats"]["totalEvents"], 0);
    assert_eq!(ov.body["data"]["topEvents"], json!([]));
}

#[tokio::test]
async fn a_single_bucket_is_labelled_with_its_natural_start_and_counts_only_the_range() {
    let app = spawn_app().await;
    let berlin = chrono_tz::Europe::Berlin;
    let mut wed = (Utc::now() - Duration::days(14)).date_naive();
    while wed.weekday() != Weekday::Wed {
        wed = wed.pred_opt().unwrap();
    }
    let local = |d: NaiveDate, h: u32, m: u32| berlin.from_local_datetime(&d.and_hms_opt(h, m, 0).unwrap()).unwrap();
    let monday = wed - Duration::days(2);
    let events = [
        event("click", local(monday, 10, 0).to_utc(), Some("u1".into()), None, None),
        event("click", local(wed, 0, 0).to_utc(), Some("u1".into()), None, None),
        event("click", local(wed + Duration::days(1), 23, 59).to_utc(), Some("u1".into()), None, None),
        event("click", local(wed + Duration::days(2), 0, 0).to_utc(), Some("u2".into()), None, None),
    ];
    post_events(&app, &app.api_key, &events).await;
    let (s, e) = (wed.to_string(), (wed + Duration::days(1)).to_string());
    let body =
        timeline(&app, &[("startDate", &s), ("endDate", &e), ("interval", "week"), ("tz", "Europe/Berlin")]).await;
    let label = local(monday, 0, 0).to_rfc3339();
    assert_eq!(
        body["data"],
        json!([{"timeBucket": label, "time_bucket": label, "eventCount": 2, "event_count": 2,
                                     "uniqueUsers": 1, "unique_users": 1}])
    );
}

#[tokio::test]
async fn a_range_crossing_a_partition_boundary_is_exact_in_whole_and_half_hour_zones() {
    let app = spawn_app().await;
    let b = month_start(Utc::now());
    let at = |mins: i64| b + Duration::minutes(mins);
    let events = [
        event("a", b - Duration::milliseconds(1), None, None, None),
        event("a", b, None, None, None),
        event("b", at(-300), None, None, None),
        event("b", at(300), None, None, None),
        event("c", at(-390), None, None, None),
        event("c", at(18 * 60), None, None, None),
    ];
    post_events(&app, &app.api_key, &events).await;
    let (s, e) = ((b - Duration::days(1)).date_naive().to_string(), b.date_naive().to_string());
    let utc = timeline(&app, &[("startDate", &s), ("endDate", &e)]).await;
    assert_eq!(counts(&utc), [3, 3]);
    let kolkata = timeline(&app, &[("startDate", &s), ("endDate", &e), ("tz", "Asia/Kolkata")]).await;
    assert_eq!(counts(&kolkata), [1, 5]);
    assert_eq!(kolkata["data"][1]["timeBucket"], format!("{}T00:00:00+05:30", b.date_naive()));
}

#[tokio::test]
async fn rollups_of_a_month_missing_from_rollup_months_are_not_read() {
    // Rows and rollup_months are changed by hand, behind the writer's back: the analytics cache
    // would rightly serve the earlier answer for up to the freshness period, so it is off here.
    let app = crate::helpers::spawn_app_with(|c| c.cache_mode = strata::config::CacheMode::Off).await;
    let m = month_start(month_start(Utc::now()) - Duration::days(1));
    let evs: Vec<Value> = (0..3).map(|i| event("click", m + Duration::hours(30 + i), None, None, None)).collect();
    post_events(&app, &app.api_key, &evs).await;
    // Rows moved in by hand: raw rows without rollups.
    let import = "INSERT INTO events (event_id, app_id, event_type, user_id, created_at, received_at) \
                  VALUES (gen_random_uuid(), $1, 'imported', 'u-imp', $2, now())";
    for h in [40, 41] {
        app.db.execute(import, &[&app.app_id, &(m + Duration::hours(h))]).await.unwrap();
    }
    let (s, e) = (m.to_rfc3339(), (m + Duration::days(10)).to_rfc3339());
    let trusted = timeline(&app, &[("startDate", &s), ("endDate", &e)]).await;
    assert_eq!((counts(&trusted).iter().sum::<i64>(), &trusted["meta"]["source"]), (3, &json!("rollup")));
    let deleted = app.db.execute("DELETE FROM rollup_months WHERE month = $1", &[&m.date_naive()]).await.unwrap();
    assert_eq!(deleted, 1);
    let raw = timeline(&app, &[("startDate", &s), ("endDate", &e)]).await;
    assert_eq!((counts(&raw).iter().sum::<i64>(), &raw["meta"]["source"]), (5, &json!("raw")));
    let q = [("appId", app.app_id.to_string()), ("startDate", s), ("endDate", e)];
    let sm = get(&app, "/api/analytics/events/summary", &q).await;
    assert_eq!(sm.body["data"][0]["eventType"], "click");
    assert_eq!((&sm.body["data"][1]["eventType"], &sm.body["data"][1]["totalEvents"]), (&json!("imported"), &json!(2)));
}

#[tokio::test]
async fn anonymous_events_count_as_events_not_users_and_ties_break_by_name() {
    let app = spawn_app().await;
    let other = strata::accounts::create_app(&app.db, "other", None).await.unwrap();
    let other_key = strata::accounts::create_key(&app.db, KEY_SECRET.as_bytes(), other.id, "k", None).await.unwrap();
    let t = Utc::now() - Duration::hours(3);
    let alice = || Some("alice".to_string());
    let mut evs = vec![
        event("page_view", t, alice(), Some("s-a".into()), Some(AGENTS[0])),
        event("page_view", t, alice(), Some("s-a".into()), Some(AGENTS[0])),
        event("page_view", t, alice(), None, Some(AGENTS[2])),
        event("page_view", t, alice(), None, Some(AGENTS[2])),
    ];
    evs.extend((0..3).map(|_| event("click", t, None, None, None)));
    evs.extend(["bob", "carol", "dave"].map(|u| event("signup", t, Some(u.into()), None, None)));
    post_events(&app, &app.api_key, &evs).await;
    post_events(&app, &other_key.api_key, &[event("purchase", t, alice(), None, None)]).await;

    let ov = get(&app, &format!("/api/analytics/apps/{}/overview", app.app_id), &[]).await;
    assert_eq!(ov.body["data"]["stats"]["totalUsers"], 4, "anonymous events have no user");
    assert_eq!(ov.body["data"]["stats"]["totalSessions"], 1);
    let top: Vec<(&str, i64)> = ov.body["data"]["topEvents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["eventType"].as_str().unwrap(), e["count"].as_i64().unwrap()))
        .collect();
    assert_eq!(top, [("page_view", 4), ("click", 3), ("signup", 3)]);
    assert_eq!(ov.body["cached"], false);

    let everywhere = get(&app, "/api/analytics/users/alice", &[]).await;
    let s = &everywhere.body["data"]["summary"];
    assert_eq!((&s["totalEvents"], &s["uniqueEventTypes"]), (&json!(5), &json!(2)), "all readable apps");
    let here = get(&app, "/api/analytics/users/alice", &[("appId", app.app_id.to_string())]).await;
    let s = &here.body["data"]["summary"];
    assert_eq!(s["totalEvents"], 4);
    assert_eq!(
        (&s["primaryBrowser"], &s["primaryOs"], &s["primaryDevice"]),
        (&json!("Chrome"), &json!("Linux"), &json!("desktop"))
    );
    let nobody = get(&app, "/api/analytics/users/nobody", &[]).await;
    assert_eq!(nobody.body["data"]["summary"]["totalEvents"], 0);
    assert_eq!(nobody.body["data"]["recentEvents"], json!([]));
}

#[tokio::test]
async fn bad_parameters_are_400s_naming_the_parameter() {
    let app = spawn_app().await;
    let id = app.app_id.to_string();
    let tl = "/api/analytics/events/timeline";
    let long_type = "x".repeat(200);
    type Case<'a> = (String, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (tl.into(), vec![], "appId"),
        (tl.into(), vec![("appId", &id), ("tz", "Mars/Base")], "tz"),
        (tl.into(), vec![("appId", &id), ("interval", "fortnight")], "interval"),
        (tl.into(), vec![("appId", &id), ("granularity", "minute")], "interval"),
        (
            tl.into(),
            vec![("appId", &id), ("startDate", "2026-11-02"), ("endDate", "2026-11-01T00:00:00Z")],
            "startDate",
        ),
        (tl.into(), vec![("appId", &id), ("startDate", "yesterday")], "startDate"),
        (tl.into(), vec![("appId", &id), ("endDate", "2026-02-30")], "endDate"),
        (
            tl.into(),
            vec![("appId", &id), ("startDate", "2020-01-01"), ("endDate", "2026-01-01"), ("interval", "hour")],
            "interval",
        ),
        ("/api/analytics/events/summary".into(), vec![("appId", &id), ("eventType", &long_type)], "eventType"),
        (format!("/api/analytics/users/{}", "u".repeat(300)), vec![], "userId"),
        (format!("/api/analytics/apps/{id}/overview"), vec![("tz", "utc+1")], "tz"),
    ];
    for (path, query, parameter) in cases {
        let q: Vec<(&str, String)> = query.iter().map(|(k, v)| (*k, v.to_string())).collect();
        let r = get(&app, &path, &q).await;
        assert_eq!(r.status, 400, "{path} {query:?}: {}", r.body);
        assert_eq!((&r.body["success"], &r.body["error"]["code"]), (&json!(false), &json!("invalid_parameter")));
        assert_eq!(r.body["error"]["details"], json!({ "parameter": parameter }), "{path} {query:?}");
    }
}

#[tokio::test]
async fn requests_without_the_right_bearer_token_are_401() {
    let app = spawn_app().await;
    let paths = [
        format!("/api/analytics/events/timeline?appId={}", app.app_id),
        format!("/api/analytics/events/summary?appId={}", app.app_id),
        "/api/analytics/users/alice".to_string(),
        format!("/api/analytics/apps/{}/overview", app.app_id),
    ];
    for path in &paths {
        for auth in [None, Some("Bearer wrong-token"), Some("Basic dGVzdC1hZG1pbi10b2tlbg==")] {
            let mut req = app.http.get(app.url(path));
            if let Some(a) = auth {
                req = req.header("Authorization", a);
            }
            let r = reply(req.send().await.unwrap()).await;
            assert_eq!((r.status, &r.body["error"]["code"]), (401, &json!("unauthorized")), "{path} {auth:?}");
        }
    }
}

#[tokio::test]
async fn unknown_deleted_or_malformed_app_ids_are_404() {
    let app = spawn_app().await;
    let gone = strata::accounts::create_app(&app.db, "gone", None).await.unwrap();
    app.db.execute("UPDATE apps SET deleted_at = now() WHERE id = $1", &[&gone.id]).await.unwrap();
    for id in [Uuid::new_v4().to_string(), "not-a-uuid".into(), "1' OR '1'='1".into(), gone.id.to_string()] {
        let q = [("appId", id.clone())];
        for path in ["/api/analytics/events/timeline", "/api/analytics/events/summary", "/api/analytics/users/u1"] {
            let r = get(&app, path, &q).await;
            assert_eq!((r.status, &r.body["error"]["code"]), (404, &json!("app_not_found")), "{path} {id}");
        }
        let path = format!("/api/analytics/apps/{}/overview", urlencode(&id));
        let r = get(&app, &path, &[]).await;
        assert_eq!((r.status, &r.body["error"]["code"]), (404, &json!("app_not_found")), "{path}");
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b == b'-' { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

#[tokio::test]
async fn the_bucket_cap_follows_the_configuration() {
    let app = crate::helpers::spawn_app_with(|c| c.max_buckets = 48).await;
    let q = |end: &str| {
        vec![
            ("appId", app.app_id.to_string()),
            ("startDate", "2026-03-01T00:00:00Z".to_string()),
            ("endDate", end.to_string()),
            ("interval", "hour".to_string()),
        ]
    };
    let ok = get(&app, "/api/analytics/events/timeline", &q("2026-03-03T00:00:00Z")).await;
    assert_eq!((ok.status, ok.body["data"].as_array().map(Vec::len)), (200, Some(48)), "{}", ok.body);
    let over = get(&app, "/api/analytics/events/timeline", &q("2026-03-03T01:00:00Z")).await;
    assert_eq!(over.status, 400, "{}", over.body);
    assert_eq!(over.body["error"]["details"]["parameter"], "interval");
    assert_eq!(over.body["error"]["message"], "the range holds more than 48 hour buckets");
}

/// `startDate` after `endDate` is a 400 however small the difference; equal values are a range (two
/// equal dates the whole day, two equal instants an empty range). A date `endDate` stands for its
/// whole day: a start on a later day (its next midnight included) is after it.
#[tokio::test]
async fn a_start_after_the_end_is_a_400_however_small_the_difference_and_equal_values_are_a_range() {
    let app = spawn_app().await;
    let day = (Utc::now() - Duration::days(3)).date_naive();
    let noon = day.and_hms_opt(12, 0, 0).unwrap().and_utc();
    post_events(&app, &app.api_key, &[event("click", noon, Some("u".into()), None, None)]).await;
    let (d, next) = (day.to_string(), day.succ_opt().unwrap().to_string());
    let at = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let (noon_s, noon_1ms) = (at(noon), at(noon + Duration::milliseconds(1)));
    let next_midnight = at(day.succ_opt().unwrap().and_hms_opt(0, 0, 0).unwrap().and_utc());
    let last_ms = at(day.succ_opt().unwrap().and_hms_opt(0, 0, 0).unwrap().and_utc() - Duration::milliseconds(1));

    for (start, end) in [(&next, &d), (&noon_1ms, &noon_s), (&next_midnight, &d), (&next, &last_ms)] {
        for path in ["/api/analytics/events/timeline", "/api/analytics/events/summary"] {
            let q = [("appId", app.app_id.to_string()), ("startDate", start.clone()), ("endDate", end.clone())];
            let r = get(&app, path, &q).await;
            assert_eq!(r.status, 400, "{path} {start} .. {end}: {}", r.body);
            assert_eq!(r.body["error"]["code"], "invalid_parameter");
            assert_eq!(r.body["error"]["details"], json!({"parameter": "startDate"}), "{start} .. {end}");
        }
        let q = [("startDate", start.clone()), ("endDate", end.clone())];
        let r = get(&app, &format!("/api/analytics/apps/{}/overview", app.app_id), &q).await;
        assert_eq!((r.status, &r.body["error"]["details"]), (400, &json!({"parameter": "startDate"})));
    }
    let one_day = timeline(&app, &[("startDate", &d), ("endDate", &d), ("interval", "day")]).await;
    assert_eq!(counts(&one_day), [1]);
    assert_eq!(
        one_day["meta"]["range"],
        json!({"start": format!("{d}T00:00:00Z"), "end": format!("{next}T00:00:00Z")})
    );
    let empty = timeline(&app, &[("startDate", &noon_s), ("endDate", &noon_s), ("interval", "hour")]).await;
    assert_eq!(empty["data"], json!([]));
    let last_instant = timeline(&app, &[("startDate", &last_ms), ("endDate", &d), ("interval", "day")]).await;
    assert_eq!(counts(&last_instant), [0]);
    let from_noon = timeline(&app, &[("startDate", &noon_s), ("endDate", &d), ("interval", "day")]).await;
    assert_eq!(counts(&from_noon), [1]);
}
