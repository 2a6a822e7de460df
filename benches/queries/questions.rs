//! The dashboards' questions: each one's HTTP request next to the raw SQL scan answering the same
//! question, and a check that both agree.

use super::*;

// ---------------------------------------------------------------------------------------------------
// The questions
// ---------------------------------------------------------------------------------------------------

const RAW_DAILY: &str = "SELECT date_trunc('day', created_at AT TIME ZONE $4), count(*), count(DISTINCT user_id) \
     FROM events WHERE app_id = $1 AND created_at >= $2 AND created_at < $3 GROUP BY 1 ORDER BY 1";
const RAW_HOURLY: &str = "SELECT date_trunc('hour', created_at AT TIME ZONE $4), count(*), count(DISTINCT user_id) \
     FROM events WHERE app_id = $1 AND created_at >= $2 AND created_at < $3 GROUP BY 1 ORDER BY 1";
const RAW_MONTHLY: &str = "SELECT date_trunc('month', created_at AT TIME ZONE $4), count(*), count(DISTINCT user_id) \
     FROM events WHERE app_id = $1 AND created_at >= $2 AND created_at < $3 GROUP BY 1 ORDER BY 1";
const RAW_SUMMARY: [&str; 4] = [
    "SELECT event_type, count(*), count(DISTINCT user_id), count(DISTINCT session_id) FROM events \
     WHERE app_id = $1 AND created_at >= $2 AND created_at < $3 GROUP BY 1",
    "SELECT event_type, device, count(*) FROM events WHERE app_id = $1 AND created_at >= $2 AND created_at < $3 \
     GROUP BY 1, 2",
    "SELECT event_type, browser, count(*) FROM events WHERE app_id = $1 AND created_at >= $2 AND created_at < $3 \
     GROUP BY 1, 2",
    "SELECT event_type, os, count(*) FROM events WHERE app_id = $1 AND created_at >= $2 AND created_at < $3 \
     GROUP BY 1, 2",
];
const RAW_OVERVIEW: [&str; 2] = [
    "SELECT count(*), count(DISTINCT user_id), count(DISTINCT session_id), count(DISTINCT event_type) FROM events \
     WHERE app_id = $1 AND created_at >= $2 AND created_at < $3",
    "SELECT event_type, count(*) FROM events WHERE app_id = $1 AND created_at >= $2 AND created_at < $3 \
     GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 10",
];

pub(crate) struct Question {
    pub(crate) name: &'static str,
    pub(crate) path: String,
    pub(crate) raw: Vec<&'static str>,
    /// The raw statements take the zone as `$4`.
    pub(crate) zoned: bool,
    pub(crate) from: DateTime<Utc>,
    pub(crate) to: DateTime<Utc>,
    /// p95 target at 1 connection.
    pub(crate) target_p95: Duration,
}

pub(crate) struct Row {
    pub(crate) name: &'static str,
    pub(crate) one: Lat,
    pub(crate) high: Lat,
    pub(crate) raw: Duration,
}

/// The first instant of day `d` in `tz`.
fn day_start(d: NaiveDate, tz: chrono_tz::Tz) -> DateTime<Utc> {
    let midnight = d.and_hms_opt(0, 0, 0).expect("midnight");
    // A zone whose clocks skip midnight starts that day at the first instant after the gap.
    let local = (0..4).find_map(|h| tz.from_local_datetime(&(midnight + chrono::Duration::hours(h))).earliest());
    local.expect("a day has a start").with_timezone(&Utc)
}

pub(crate) fn questions(app: Uuid, now: DateTime<Utc>, tz: chrono_tz::Tz) -> Vec<Question> {
    let today = now.with_timezone(&tz).date_naive();
    let day_start = |d: NaiveDate| day_start(d, tz);
    let tomorrow = day_start(today + chrono::Duration::days(1));
    let days_back = |n: i64| today - chrono::Duration::days(n);
    let month_start = NaiveDate::from_ymd_opt(today.year(), today.month(), 1).expect("first of month");
    let twelve = Month::containing(Utc.from_utc_datetime(&month_start.and_hms_opt(0, 0, 0).expect("midnight")))
        .add_months(-11)
        .first_day();
    let ms15 = Duration::from_millis(15);
    let ms50 = Duration::from_millis(50);
    let timeline = |start: NaiveDate, interval: &str| {
        format!(
            "/api/analytics/events/timeline?appId={app}&startDate={start}&endDate={today}&interval={interval}&tz={tz}"
        )
    };
    vec![
        Question {
            name: "timeline 90 days, daily",
            path: timeline(days_back(89), "day"),
            raw: vec![RAW_DAILY],
            zoned: true,
            from: day_start(days_back(89)),
            to: tomorrow,
            target_p95: ms15,
        },
        Question {
            name: "timeline 7 days, hourly",
            path: timeline(days_back(6), "hour"),
            raw: vec![RAW_HOURLY],
            zoned: true,
            from: day_start(days_back(6)),
            to: tomorrow,
            target_p95: ms15,
        },
        Question {
            name: "timeline 12 months, monthly",
            path: timeline(twelve, "month"),
            raw: vec![RAW_MONTHLY],
            zoned: true,
            from: day_start(twelve),
            to: tomorrow,
            target_p95: ms15,
        },
        Question {
            name: "summary 30 days",
            path: format!(
                "/api/analytics/events/summary?appId={app}&startDate={}&endDate={today}&tz={tz}",
                days_back(29)
            ),
            raw: RAW_SUMMARY.to_vec(),
            zoned: false,
            from: day_start(days_back(29)),
            to: tomorrow,
            target_p95: ms50,
        },
        Question {
            name: "app overview 30 days",
            path: format!("/api/analytics/apps/{app}/overview?startDate={}&endDate={today}&tz={tz}", days_back(29)),
            raw: RAW_OVERVIEW.to_vec(),
            zoned: false,
            from: day_start(days_back(29)),
            to: tomorrow,
            target_p95: ms50,
        },
    ]
}

/// Compares the 90-day timeline's totals with the raw scan (events exactly, distinct users within
/// the sketches' documented error); prints MISMATCH loudly.
pub(crate) async fn check_timeline(
    db: &tokio_postgres::Client,
    base: &str,
    q: &Question,
    app: Uuid,
    tz: chrono_tz::Tz,
) -> Result<bool> {
    let body = get(&http_client(1)?, &format!("{base}{}", q.path)).await?;
    let v: Value = serde_json::from_slice(&body)?;
    let buckets = v["data"].as_array().ok_or_else(|| anyhow!("timeline without a data array"))?;
    let http_events: i64 = buckets.iter().map(|b| b["eventCount"].as_i64().unwrap_or(0)).sum();
    let http_users: i64 = buckets.iter().map(|b| b["uniqueUsers"].as_i64().unwrap_or(0)).sum();
    let rows = db.query(RAW_DAILY, &[&app, &q.from, &q.to, &tz.name()]).await?;
    let raw_events: i64 = rows.iter().map(|r| r.get::<_, i64>(1)).sum();
    let raw_users: i64 = rows.iter().map(|r| r.get::<_, i64>(2)).sum();
    println!(
        "check, 90-day timeline: {} buckets; eventCount total {} (raw {}), sum of daily uniqueUsers {} (raw {}); \
         meta.source {}, meta.cache {}",
        buckets.len(),
        fmt_int(http_events as u64),
        fmt_int(raw_events as u64),
        fmt_int(http_users as u64),
        fmt_int(raw_users as u64),
        v["meta"]["source"],
        v["meta"]["cache"]
    );
    // Event counts are exact; distinct users come from sketches: exact up to 32-bit hash collisions
    // while a bucket holds at most 4,096 ids, a HyperLogLog (0.81% standard error) beyond.
    let users_error = (http_users - raw_users).abs() as f64 / (raw_users.max(1) as f64);
    println!("    distinct users: relative error {:.4}% (bound: 3 standard errors = 2.43%)", users_error * 100.0);
    let ok = http_events == raw_events && users_error <= 0.0243 && buckets.len() == 90;
    if !ok {
        println!("!!!!! MISMATCH: the 90-day timeline over HTTP differs from the raw scan !!!!!");
    } else {
        println!("OK: the 90-day timeline's events equal the raw scan, distinct users within the sketch's bound");
    }
    Ok(ok)
}
