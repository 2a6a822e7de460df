//! What a full scan of the raw events says, written independently of the planner: PostgreSQL's own
//! `date_trunc(.. AT TIME ZONE tz)` for buckets, plain GROUP BYs for counts. Each `expect_*` asserts an
//! endpoint's reply equals it exactly.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDateTime, Offset, SecondsFormat, TimeZone, Utc};
use chrono_tz::Tz;
use serde_json::{json, Value};
use uuid::Uuid;

/// A question as the test resolved it.
pub struct Question<'a> {
    pub app: Uuid,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub tz: &'a str,
    pub event_type: Option<&'a str>,
}

pub fn instant(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

const FILTER: &str = "app_id = $1 AND created_at >= $2 AND created_at < $3 AND ($4::text IS NULL OR event_type = $4)";

/// The timeline's buckets: every local key the range touches, with raw counts.
pub async fn expect_timeline(db: &tokio_postgres::Client, q: &Question<'_>, unit: &str, data: &Value) {
    let items = data.as_array().expect("timeline data is an array");
    let labels: Vec<DateTime<Utc>> = items
        .iter()
        .map(|b| {
            let text = b["timeBucket"].as_str().unwrap();
            assert_eq!(b["time_bucket"], b["timeBucket"]);
            assert_eq!((&b["event_count"], &b["unique_users"]), (&b["eventCount"], &b["uniqueUsers"]));
            let at = DateTime::parse_from_rfc3339(text).unwrap();
            let tz: Tz = q.tz.parse().unwrap();
            let zone_offset = tz.offset_from_utc_datetime(&at.naive_utc()).fix();
            assert_eq!(*at.offset(), zone_offset, "{text} carries the zone's offset");
            at.with_timezone(&Utc)
        })
        .collect();
    // Label keys, and the key one second earlier: a label is the first instant of its bucket.
    let sql = "SELECT date_trunc($1, l AT TIME ZONE $2), date_trunc($1, (l - INTERVAL '1 second') AT TIME ZONE $2) \
               FROM unnest($3::timestamptz[]) WITH ORDINALITY AS u (l, i) ORDER BY i";
    let rows = db.query(sql, &[&unit, &q.tz, &labels]).await.unwrap();
    let keys: Vec<NaiveDateTime> = rows.iter().map(|r| r.get(0)).collect();
    for (r, l) in rows.iter().zip(&labels) {
        assert_ne!(r.get::<_, NaiveDateTime>(0), r.get::<_, NaiveDateTime>(1), "{l} starts its bucket");
    }
    let expected_keys: Vec<NaiveDateTime> = if q.start < q.end {
        let sql = "SELECT DISTINCT date_trunc($1, g AT TIME ZONE $2) AS k FROM (\
                     SELECT generate_series($3::timestamptz, $4::timestamptz - INTERVAL '1 microsecond', \
                       INTERVAL '15 minutes') AS g \
                     UNION ALL SELECT $4::timestamptz - INTERVAL '1 microsecond') AS s ORDER BY k";
        db.query(sql, &[&unit, &q.tz, &q.start, &q.end]).await.unwrap().iter().map(|r| r.get(0)).collect()
    } else {
        Vec::new()
    };
    assert_eq!(keys, expected_keys, "every bucket of the range, in order");
    let sql = format!(
        "SELECT date_trunc($5, created_at AT TIME ZONE $6), count(*), count(DISTINCT user_id) FROM events \
         WHERE {FILTER} GROUP BY 1"
    );
    let truth: HashMap<NaiveDateTime, (i64, i64)> = db
        .query(&sql, &[&q.app, &q.start, &q.end, &q.event_type, &unit, &q.tz])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    let got: Vec<(i64, i64)> =
        items.iter().map(|b| (b["eventCount"].as_i64().unwrap(), b["uniqueUsers"].as_i64().unwrap())).collect();
    let want: Vec<(i64, i64)> = keys.iter().map(|k| truth.get(k).copied().unwrap_or_default()).collect();
    assert_eq!(got, want, "timeline counts equal the raw scan");
    assert_eq!(truth.values().map(|v| v.0).sum::<i64>(), got.iter().map(|v| v.0).sum::<i64>());
}

/// The summary's exact JSON.
pub async fn expect_summary(db: &tokio_postgres::Client, q: &Question<'_>, data: &Value) {
    let sql = format!(
        "SELECT event_type, count(*), count(DISTINCT user_id), count(DISTINCT session_id) FROM events \
         WHERE {FILTER} GROUP BY 1 ORDER BY 2 DESC, event_type COLLATE \"C\""
    );
    let args: [&(dyn tokio_postgres::types::ToSql + Sync); 4] = [&q.app, &q.start, &q.end, &q.event_type];
    let types = db.query(&sql, &args).await.unwrap();
    let sql = format!(
        "SELECT event_type, d.dim, d.v, count(*) FROM events \
         CROSS JOIN LATERAL (VALUES ('device', device), ('browser', browser), ('os', os)) AS d (dim, v) \
         WHERE {FILTER} GROUP BY 1, 2, 3 ORDER BY 4 DESC, COALESCE(d.v, '') COLLATE \"C\""
    );
    let mut dims: HashMap<(String, String), Vec<Value>> = HashMap::new();
    for r in db.query(&sql, &args).await.unwrap() {
        let entry = dims.entry((r.get(0), r.get(1))).or_default();
        entry.push(json!({"value": r.get::<_, Option<String>>(2), "count": r.get::<_, i64>(3)}));
    }
    let mut take = |t: &str, d: &str| json!(dims.remove(&(t.to_string(), d.to_string())).unwrap_or_default());
    let want: Vec<Value> = types
        .iter()
        .map(|r| {
            let t: String = r.get(0);
            json!({"eventType": t, "totalEvents": r.get::<_, i64>(1), "uniqueUsers": r.get::<_, i64>(2),
                   "uniqueSessions": r.get::<_, i64>(3), "deviceBreakdown": take(&t, "device"),
                   "browserBreakdown": take(&t, "browser"), "osBreakdown": take(&t, "os")})
        })
        .collect();
    assert_eq!(data, &json!(want), "summary equals the raw scan");
}

/// The overview's stats and top events.
pub async fn expect_overview(db: &tokio_postgres::Client, q: &Question<'_>, data: &Value) {
    let sql = "SELECT count(*), count(DISTINCT user_id), count(DISTINCT session_id), count(DISTINCT event_type) \
               FROM events WHERE app_id = $1 AND created_at >= $2 AND created_at < $3";
    let r = db.query_one(sql, &[&q.app, &q.start, &q.end]).await.unwrap();
    let (events, users, sessions, types): (i64, i64, i64, i64) = (r.get(0), r.get(1), r.get(2), r.get(3));
    let stats = json!({"totalEvents": events, "totalUsers": users, "totalSessions": sessions,
        "uniqueEventTypes": types, "total_events": events, "total_users": users, "total_sessions": sessions,
        "unique_event_types": types});
    assert_eq!(data["stats"], stats, "overview stats equal the raw scan");
    let sql = "SELECT event_type, count(*) FROM events WHERE app_id = $1 AND created_at >= $2 AND created_at < $3 \
               GROUP BY 1 ORDER BY 2 DESC, event_type COLLATE \"C\" LIMIT 10";
    let top: Vec<Value> = db
        .query(sql, &[&q.app, &q.start, &q.end])
        .await
        .unwrap()
        .iter()
        .map(|r| json!({"eventType": r.get::<_, String>(0), "event_type": r.get::<_, String>(0), "count": r.get::<_, i64>(1)}))
        .collect();
    assert_eq!(data["topEvents"], json!(top), "top events equal the raw scan");
}

/// The user endpoint's exact JSON (`app` None: every app).
pub async fn expect_user(db: &tokio_postgres::Client, app: Option<Uuid>, user: &str, data: &Value) {
    let scope = "($1::uuid IS NULL OR app_id = $1) AND user_id = $2";
    let sql = format!(
        "SELECT count(*), count(DISTINCT event_type), count(DISTINCT session_id), min(created_at), max(created_at) \
         FROM events WHERE {scope}"
    );
    let t = db.query_one(&sql, &[&app, &user]).await.unwrap();
    let mut primary = Vec::new();
    for dim in ["device", "browser", "os"] {
        let sql = format!(
            "SELECT {dim} FROM events WHERE {scope} AND {dim} IS NOT NULL \
             GROUP BY 1 ORDER BY count(*) DESC, {dim} COLLATE \"C\" LIMIT 1"
        );
        primary.push(db.query_opt(&sql, &[&app, &user]).await.unwrap().map(|r| r.get::<_, String>(0)));
    }
    let sql = format!(
        "SELECT event_id, app_id, event_type, url, created_at, device, browser, os FROM events WHERE {scope} \
         ORDER BY created_at DESC, event_id DESC LIMIT 10"
    );
    let recent: Vec<Value> = db
        .query(&sql, &[&app, &user])
        .await
        .unwrap()
        .iter()
        .map(|r| {
            json!({"eventId": r.get::<_, Uuid>(0), "appId": r.get::<_, Uuid>(1), "eventType": r.get::<_, String>(2),
                   "url": r.get::<_, Option<String>>(3), "createdAt": instant(r.get(4)),
                   "device": r.get::<_, Option<String>>(5), "browser": r.get::<_, Option<String>>(6),
                   "os": r.get::<_, Option<String>>(7)})
        })
        .collect();
    let seen = |i: usize| t.get::<_, Option<DateTime<Utc>>>(i).map(instant);
    let want = json!({
        "userId": user,
        "summary": {"totalEvents": t.get::<_, i64>(0), "uniqueEventTypes": t.get::<_, i64>(1),
                    "totalSessions": t.get::<_, i64>(2), "firstSeen": seen(3), "lastSeen": seen(4),
                    "primaryDevice": primary[0], "primaryBrowser": primary[1], "primaryOs": primary[2]},
        "recentEvents": recent,
    });
    assert_eq!(data, &want, "user activity equals the raw scan");
}
