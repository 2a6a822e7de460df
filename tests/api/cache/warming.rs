//! Warming (`STRATA_CACHE_WARM`): the most requested queries are computed before anyone asks again,
//! after a rollover and on a new instance from the request counts Redis remembers.

use super::*;

fn warm_on(c: &mut Config) {
    c.cache_warm = Some(5);
    // Long enough that a slow test machine cannot expire a warmed answer before it is asked for.
    c.freshness = Duration::from_secs(60);
}

/// The last ten days through today, by day: a rolling dashboard range.
fn through_today(app: Uuid) -> Vec<(&'static str, String)> {
    let today = Utc::now().date_naive();
    vec![
        ("appId", app.to_string()),
        ("startDate", (today - chrono::Days::new(10)).to_string()),
        ("endDate", today.to_string()),
        ("interval", "day".into()),
    ]
}

#[tokio::test]
async fn a_warmed_query_answers_l1_on_its_first_request_after_the_rollover() {
    let app = spawn_app_with(|_| {}).await;
    seed(&app).await;
    let server = spawn_server_on(&app.db_name, |c| {
        c.cache_mode = CacheMode::L1;
        warm_on(c);
    })
    .await;
    let q = through_today(app.app_id);
    let url = server.url("/api/analytics/events/timeline");
    assert_eq!(tier(&get(&server.http, url.clone(), &q).await), "miss");
    // A commit on this instance makes the app's cached answers unreachable.
    let event = event_at(Utc::now() - Span::days(1));
    let r = reply(
        server
            .http
            .post(server.url("/api/events/track"))
            .header("X-API-Key", &app.api_key)
            .json(&event)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let before = server.cache.computations();

    server.cache.warm_now().await;
    let warmed = server.cache.computations();
    let first = get(&server.http, url.clone(), &q).await;

    assert_eq!(warmed, before + 1);
    assert_eq!((tier(&first), total(&first)), ("l1", 3));
    assert_eq!(server.cache.computations(), warmed);
}

#[tokio::test]
async fn a_new_instance_warms_what_redis_remembers_before_its_first_request() {
    let prefix = unique_prefix();
    let app = spawn_app_with(|_| {}).await;
    seed(&app).await;
    let with_warming = |c: &mut Config| {
        with_redis(&prefix)(c);
        warm_on(c);
    };
    let a = spawn_server_on(&app.db_name, with_warming).await;
    let q = through_today(app.app_id);
    assert_eq!(tier(&get(&a.http, a.url("/api/analytics/events/timeline"), &q).await), "miss");
    a.cache.warm_now().await; // also adds the request counts to Redis

    let b = spawn_server_on(&app.db_name, with_warming).await;
    let warmed = async || when(b.cache.warm_passes(), |passes| *passes > 0);
    eventually(Duration::from_secs(5), "instance B's first warming pass", warmed).await;
    let first = get(&b.http, b.url("/api/analytics/events/timeline"), &q).await;

    assert_eq!(b.cache.warm_passes(), 1);
    assert_eq!((tier(&first), total(&first)), ("l1", 2));
    assert_eq!((b.cache.l2_lookups(), b.cache.computations()), (1, 0));
}
