//! `/metrics` after a scripted workload, in a server process of its own (the recorder is per process).

use std::collections::HashMap;

use serde_json::json;
use uuid::Uuid;

use crate::helpers::{create_test_database, keyed_database, start_binary, KeyedDatabase};

const FAMILIES: [&str; 17] = [
    "strata_ingest_rejected_total",
    "strata_http_requests_total",
    "strata_http_request_duration_seconds",
    "strata_http_requests_in_flight",
    "strata_ingest_events_total",
    "strata_ingest_queue_depth",
    "strata_ingest_queue_capacity",
    "strata_ingest_batch_size",
    "strata_db_pool_connections",
    "strata_cache_requests_total",
    "strata_redis_errors_total",
    "strata_partitions_months_ahead",
    "strata_partitions_default_rows",
    "strata_maintenance_runs_total",
    "strata_maintenance_last_success_timestamp_seconds",
    "strata_process_resident_memory_bytes",
    "strata_ingest_flush_duration_seconds",
];

/// Sample lines as "name{labels}" -> value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

#[tokio::test]
async fn metrics_expose_every_family_and_count_the_workload_exactly() {
    let KeyedDatabase { name: db_name, api_key, .. } = keyed_database("metrics").await;
    let (mut child, addr) = start_binary(&db_name, &[("STRATA_METRICS_TOKEN", "scrape-me")]);
    let http = reqwest::Client::builder().no_gzip().build().unwrap();
    let url = |p: &str| format!("http://{addr}{p}");

    let denied = http.get(url("/metrics")).send().await.unwrap();
    assert_eq!(denied.status(), 401);

    let id = Uuid::new_v4();
    for ev in
        [json!({"eventType": "a", "eventId": id}), json!({"eventType": "b"}), json!({"eventType": "a", "eventId": id})]
    {
        let r = http.post(url("/api/events/track")).header("X-API-Key", &api_key).json(&ev).send().await.unwrap();
        assert_eq!(r.status(), 201);
    }
    let batch = json!({"events": [{"eventType": "c"}, {"eventType": "c"}, {"nope": 1}]});
    let r = http.post(url("/api/events/track/batch")).header("X-API-Key", &api_key).json(&batch).send().await.unwrap();
    assert_eq!(r.status(), 207);
    let r = http.get(url("/api/analytics/users/someone")).send().await.unwrap();
    assert_eq!(r.status(), 401);

    let scrape =
        http.get(url("/metrics")).bearer_auth("scrape-me").header("Accept-Encoding", "gzip").send().await.unwrap();
    assert_eq!(scrape.status(), 200);
    assert_eq!(scrape.headers()["content-encoding"], "gzip");
    let text = http.get(url("/metrics")).bearer_auth("scrape-me").send().await.unwrap().text().await.unwrap();
    for family in FAMILIES {
        assert!(text.contains(&format!("# TYPE {family} ")), "{family} missing from:\n{text}");
    }
    let s = samples(&text);
    assert_eq!(s[r#"strata_ingest_events_total{result="accepted"}"#], 4.0);
    assert_eq!(s[r#"strata_ingest_events_total{result="rejected"}"#], 1.0);
    assert_eq!(s[r#"strata_ingest_events_total{result="duplicate"}"#], 1.0);
    assert_eq!(s[r#"strata_ingest_rejected_total{reason="missing_event_type"}"#], 1.0);
    assert_eq!(s[r#"strata_http_requests_total{route="/api/events/track",method="POST",status="201"}"#], 3.0);
    assert_eq!(s[r#"strata_http_requests_total{route="/api/events/track/batch",method="POST",status="207"}"#], 1.0);
    // Route labels are templates, never raw paths.
    assert_eq!(
        s[r#"strata_http_requests_total{route="/api/analytics/users/{userId}",method="GET",status="401"}"#],
        1.0
    );
    assert!(!text.contains("someone"));
    assert_eq!(s["strata_partitions_months_ahead"], 3.0);
    assert_eq!(s["strata_partitions_default_rows"], 0.0);
    assert_eq!(s[r#"strata_maintenance_runs_total{result="ok"}"#], 1.0);
    assert_eq!(s["strata_ingest_queue_depth"], 0.0);
    assert!(s["strata_process_resident_memory_bytes"] > 1e6);

    let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
}

/// Metric names an expression mentions (identifiers starting with `strata_`).
fn referenced_metrics(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes: Vec<char> = text.chars().collect();
    let mut i = 0;
    while let Some(pos) = text[i..].find("strata_") {
        let start = i + pos;
        let end = start
            + text[start..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(text.len() - start);
        let name = bytes[start..end].iter().collect::<String>();
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .fold(name.clone(), |n, s| n.strip_suffix(s).map_or(n.clone(), str::to_string));
        names.push(base);
        i = end;
    }
    names.sort();
    names.dedup();
    names
}

#[test]
fn dashboard_and_alert_rules_reference_only_exported_metrics() {
    let dashboard =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/strata.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard is valid JSON");
    let exprs: Vec<String> = parsed["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_string()))
        .collect();
    assert!(exprs.len() >= 8);
    let alerts = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus/alerts.yml")).unwrap();
    let alert_exprs: Vec<&str> = alerts.lines().filter_map(|l| l.trim().strip_prefix("expr: ")).collect();
    assert_eq!(alert_exprs.len(), alerts.matches("- alert: ").count(), "every rule has a one-line expr");
    for name in referenced_metrics(&(exprs.join("\n") + "\n" + &alert_exprs.join("\n"))) {
        assert!(FAMILIES.contains(&name.as_str()), "{name} is not exported by the service");
    }
}

/// The series of a scrape: every sample's name and labels (values left out).
fn series(text: &str) -> std::collections::BTreeSet<String> {
    samples(text).into_keys().collect()
}

/// A random request-method token (RFC 9110 `tchar`s), never one of the standard methods.
fn made_up_method() -> String {
    const TCHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-.^_`|~";
    let len = 1 + rand::random_range(0..24);
    let token: String = (0..len).map(|_| TCHARS[rand::random_range(0..TCHARS.len())] as char).collect();
    format!("X{token}")
}

/// The server process, stopped when the test ends (also when it fails).
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn made_up_methods_and_paths_add_no_metric_series() {
    const STANDARD: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];
    let db_name = create_test_database().await;
    let (child, addr) = start_binary(&db_name, &[("STRATA_METRICS_TOKEN", "scrape-me")]);
    let _server = Server(child);
    let http = reqwest::Client::builder().no_gzip().build().unwrap();
    let scrape = || async {
        let r = http.get(format!("http://{addr}/metrics")).bearer_auth("scrape-me").send().await.unwrap();
        assert_eq!(r.status(), 200);
        series(&r.text().await.unwrap())
    };
    let target = addr.clone();
    let send = move |http: reqwest::Client, method: String, path: String| {
        let url = format!("http://{target}{path}");
        async move { http.request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url).send().await.unwrap() }
    };
    let random_path = || format!("/{}/{}", Uuid::new_v4().simple(), rand::random::<u32>());

    scrape().await;
    for method in STANDARD.iter().map(|m| m.to_string()).chain([made_up_method()]) {
        send(http.clone(), method, random_path()).await;
    }
    let before = scrape().await;
    assert!(before.contains(r#"strata_http_requests_total{route="unmatched",method="other",status="404"}"#));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (http, send) = (http.clone(), send.clone());
        clients.push(tokio::spawn(async move {
            for i in 0..1250 {
                let method = if i % 10 == 0 { STANDARD[i / 10 % 9].to_owned() } else { made_up_method() };
                let path = format!("/{}/{}", Uuid::new_v4().simple(), rand::random::<u32>());
                send(http.clone(), method, path).await;
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    let after = scrape().await;

    assert_eq!(after.len(), before.len(), "new series: {:?}", after.difference(&before).collect::<Vec<_>>());
    assert_eq!(after, before);
}
