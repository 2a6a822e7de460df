//! Prometheus metrics: the recorder (one per process), the names alert rules and dashboards rely on,
//! the per-request counters the HTTP edge uses (by route template), and the gauges sampled
//! at scrape time (queue depth, pool, process memory).
//!
//! Families (all present from start-up):
//! `strata_http_requests_total{route,method,status}`, `strata_http_request_duration_seconds{route,method}`,
//! `strata_http_requests_in_flight`, `strata_ingest_events_total{result}`, `strata_ingest_queue_depth`,
//! `strata_ingest_queue_capacity`, `strata_ingest_rejected_total{reason}`,
//! `strata_ingest_batch_size`, `strata_ingest_flush_duration_seconds`, `strata_ingest_flush_errors_total{kind}`,
//! `strata_db_pool_connections{state}`, `strata_cache_requests_total{tier,result}`,
//! `strata_redis_errors_total`, `strata_partitions_months_ahead`, `strata_partitions_default_rows`,
//! `strata_maintenance_runs_total{result}`, `strata_maintenance_last_success_timestamp_seconds`,
//! `strata_process_resident_memory_bytes`, `strata_ingest_shed_total`, `strata_ingest_body_bytes_in_flight`.
//!
//! Every label value comes from a closed set the server chooses, never from the client: routes are
//! templates (`unmatched` when none matched), methods are the nine standard ones or `other`
//! ([`method_label`]), statuses are the ones the server answers with.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets (seconds): sub-millisecond cache hits up to multi-second outliers.
const LATENCY_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Batch-size buckets (events per flush).
const BATCH_BUCKETS: [f64; 10] = [1.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0];

/// The process-wide recorder's handle (installed on first use; tests run many servers per process).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full("strata_ingest_batch_size".into()), &BATCH_BUCKETS))
            .expect("static buckets are valid")
            .install_recorder()
            .expect("no other metrics recorder is installed");
        register_families();
        handle
    })
}

/// Touches every family once so scrapes show them (at zero) before anything happened.
fn register_families() {
    for result in ["accepted", "rejected", "duplicate"] {
        counter!("strata_ingest_events_total", "result" => result).absolute(0);
    }
    for tier in ["l1", "l2"] {
        for result in ["hit", "miss"] {
            counter!("strata_cache_requests_total", "tier" => tier, "result" => result).absolute(0);
        }
    }
    for result in ["ok", "failed", "skipped"] {
        counter!("strata_maintenance_runs_total", "result" => result).absolute(0);
    }
    for kind in ["unavailable", "rejected"] {
        counter!("strata_ingest_flush_errors_total", "kind" => kind).absolute(0);
    }
    counter!("strata_redis_errors_total").absolute(0);
    counter!("strata_ingest_shed_total").absolute(0);
    gauge!("strata_ingest_body_bytes_in_flight").set(0.0);
    counter!("strata_ingest_rejected_total", "reason" => "missing_event_type").absolute(0);
    counter!("strata_http_requests_total", "route" => "/health", "method" => "GET", "status" => "200").absolute(0);
    // Registering a histogram makes it render (with empty buckets) before its first observation.
    let _ = histogram!("strata_http_request_duration_seconds", "route" => "/health", "method" => "GET");
    let _ = histogram!("strata_ingest_batch_size");
    let _ = histogram!("strata_ingest_flush_duration_seconds");
    gauge!("strata_http_requests_in_flight").set(0.0);
    gauge!("strata_ingest_queue_depth").set(0.0);
    gauge!("strata_partitions_months_ahead").set(0.0);
    gauge!("strata_partitions_default_rows").set(0.0);
    gauge!("strata_maintenance_last_success_timestamp_seconds").set(0.0);
}

/// Handles of the request metrics, so counting a request costs one map lookup instead of building
/// label sets (and their strings) for the recorder's registry four times.
struct RequestHandles {
    in_flight: Gauge,
    /// By route template, then by method and status.
    by_route: Mutex<HashMap<String, Vec<RouteHandles>>>,
}

struct RouteHandles {
    method: &'static str,
    status: u16,
    requests: Counter,
    duration: Histogram,
}

fn request_handles() -> &'static RequestHandles {
    static HANDLES: OnceLock<RequestHandles> = OnceLock::new();
    HANDLES.get_or_init(|| {
        // Handles taken before the recorder exists would count nowhere.
        let _ = handle();
        RequestHandles { in_flight: gauge!("strata_http_requests_in_flight"), by_route: Mutex::new(HashMap::new()) }
    })
}

/// One request being served: in flight until dropped (also when its client went away), then counted
/// and timed under its route template (never the raw path) by [`RequestTimer::finish`].
pub struct RequestTimer {
    started: Instant,
}

impl RequestTimer {
    /// Counts a request in flight from now.
    pub fn start() -> RequestTimer {
        request_handles().in_flight.increment(1.0);
        RequestTimer { started: Instant::now() }
    }

    /// Counts the answered request (`route` is `None` when no route matched) and logs it when slow.
    pub fn finish(self, route: Option<&str>, method: &Method, status: StatusCode, slow: Duration) {
        let elapsed = self.started.elapsed();
        let route = route.unwrap_or("unmatched");
        let method = method_label(method);
        let status = status.as_u16();
        {
            let mut by_route = request_handles().by_route.lock().unwrap_or_else(|e| e.into_inner());
            let handles = match by_route.get_mut(route) {
                Some(handles) => handles,
                None => by_route.entry(route.to_owned()).or_default(),
            };
            let i = match handles.iter().position(|h| h.status == status && h.method == method) {
                Some(i) => i,
                None => {
                    let (r, m) = (route.to_owned(), method);
                    handles.push(RouteHandles {
                        method,
                        status,
                        requests: counter!("strata_http_requests_total", "route" => r.clone(), "method" => m,
                            "status" => status.to_string()),
                        duration: histogram!("strata_http_request_duration_seconds", "route" => r, "method" => m),
                    });
                    handles.len() - 1
                }
            };
            handles[i].requests.increment(1);
            handles[i].duration.record(elapsed.as_secs_f64());
        }
        if elapsed >= slow {
            tracing::warn!(%route, %method, status, elapsed_ms = elapsed.as_millis() as u64, "slow request");
        }
    }
}

impl Drop for RequestTimer {
    fn drop(&mut self) {
        request_handles().in_flight.decrement(1.0);
    }
}

/// The label of a request method: the standard methods by name, any other token `other` (a client
/// may send any token as a method; each would otherwise be a new series kept for the process's life).
pub fn method_label(method: &Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "CONNECT" => "CONNECT",
        "OPTIONS" => "OPTIONS",
        "TRACE" => "TRACE",
        "PATCH" => "PATCH",
        _ => "other",
    }
}

/// Ingest outcomes of one request.
pub fn ingest_events(accepted: usize, rejected: usize, duplicates: usize) {
    counter!("strata_ingest_events_total", "result" => "accepted").increment(accepted as u64);
    counter!("strata_ingest_events_total", "result" => "rejected").increment(rejected as u64);
    counter!("strata_ingest_events_total", "result" => "duplicate").increment(duplicates as u64);
}

/// Queries slower than this are logged (`STRATA_SLOW_QUERY`); set once at start-up. Process-wide like
/// the recorder itself: it only decides what is logged.
static SLOW_QUERY_MICROS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(500_000);

/// Sets the slow-query logging threshold.
pub fn set_slow_query(threshold: Duration) {
    SLOW_QUERY_MICROS.store(threshold.as_micros() as u64, std::sync::atomic::Ordering::Relaxed);
}

/// Logs `what` (a statement or a flush) with its timing when it took longer than the threshold.
pub fn query_timed(what: &str, elapsed: Duration) {
    if elapsed.as_micros() as u64 >= SLOW_QUERY_MICROS.load(std::sync::atomic::Ordering::Relaxed) {
        let statement: String = what.split_whitespace().collect::<Vec<_>>().join(" ").chars().take(200).collect();
        tracing::warn!(%statement, elapsed_ms = elapsed.as_millis() as u64, "slow query");
    }
}

/// A request shed by the in-flight body budget (503 `overloaded`).
pub fn shed() {
    counter!("strata_ingest_shed_total").increment(1);
}

/// Bytes of request bodies held by requests now (the in-flight budget in use).
pub fn body_bytes_in_flight(bytes: usize) {
    gauge!("strata_ingest_body_bytes_in_flight").set(bytes as f64);
}

/// One refused event, by its error code (a fixed set, so the label stays bounded).
pub fn rejected(code: &'static str) {
    counter!("strata_ingest_rejected_total", "reason" => code).increment(1);
}

/// One writer flush.
pub fn flush(events: usize, elapsed: Duration) {
    query_timed(&format!("group commit of {events} events"), elapsed);
    histogram!("strata_ingest_batch_size").record(events as f64);
    histogram!("strata_ingest_flush_duration_seconds").record(elapsed.as_secs_f64());
}

/// A failed flush.
pub fn flush_error(kind: &'static str) {
    counter!("strata_ingest_flush_errors_total", "kind" => kind).increment(1);
}

/// One maintenance run and, when known, the partition coverage it left.
pub fn maintenance(result: &'static str, now_unix: f64) {
    counter!("strata_maintenance_runs_total", "result" => result).increment(1);
    if result == "ok" {
        gauge!("strata_maintenance_last_success_timestamp_seconds").set(now_unix);
    }
}

/// Partition coverage gauges.
pub fn partitions(months_ahead: i32, default_rows: i64) {
    gauge!("strata_partitions_months_ahead").set(f64::from(months_ahead));
    gauge!("strata_partitions_default_rows").set(default_rows as f64);
}

/// Gauges sampled at scrape time.
pub fn sample(queue_depth: usize, queue_capacity: usize, pool: deadpool_postgres::Status) {
    gauge!("strata_ingest_queue_depth").set(queue_depth as f64);
    gauge!("strata_ingest_queue_capacity").set(queue_capacity as f64);
    gauge!("strata_db_pool_connections", "state" => "max").set(pool.max_size as f64);
    gauge!("strata_db_pool_connections", "state" => "open").set(pool.size as f64);
    gauge!("strata_db_pool_connections", "state" => "idle").set(pool.available as f64);
    gauge!("strata_db_pool_connections", "state" => "in_use").set(pool.size.saturating_sub(pool.available) as f64);
    gauge!("strata_db_pool_connections", "state" => "waiting").set(pool.waiting as f64);
    if let Some(rss) = resident_bytes() {
        gauge!("strata_process_resident_memory_bytes").set(rss as f64);
    }
}

/// VmRSS of this process, from /proc (Linux only).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
