//! The consistency check of the database against what was acknowledged, and every printed figure.

use super::*;

// ---------------------------------------------------------------------------------------------------
// Consistency check
// ---------------------------------------------------------------------------------------------------

/// The database against what the HTTP phases were told.
pub(crate) struct Check {
    acked: u64,
    raw_rows: i64,
    rollup_sum: i64,
    claimed_ids: i64,
}

impl Check {
    pub(crate) fn consistent(&self) -> bool {
        self.raw_rows == self.acked as i64 && self.rollup_sum == self.raw_rows
    }
}

pub(crate) async fn verify(db: &tokio_postgres::Client, acked: u64) -> Result<Check> {
    let raw_rows: i64 = db.query_one("SELECT count(*) FROM events", &[]).await?.get(0);
    let rollup_sum: i64 = db.query_one("SELECT COALESCE(sum(events), 0)::int8 FROM rollup_hourly", &[]).await?.get(0);
    let claimed_ids: i64 = db.query_one("SELECT count(*) FROM event_ids", &[]).await?.get(0);
    Ok(Check { acked, raw_rows, rollup_sum, claimed_ids })
}

// ---------------------------------------------------------------------------------------------------
// Reporting
// ---------------------------------------------------------------------------------------------------

pub(crate) fn print_header(settings: &Settings, busy_before: CpuUse) {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!("=== Strata ingestion benchmark ===");
    println!("machine: {cores} cores. The load generator (this process, tokio multi-thread), the strata server");
    println!("and PostgreSQL all run on this same machine and share its cores: HTTP figures are lower bounds.");
    println!(
        "COPY rows: {}; HTTP phases: {:.1} s measured after {:.1} s warm-up each; HTTP/1.1, keep-alive.",
        settings.copy_rows,
        settings.seconds.as_secs_f64(),
        settings.warmup.as_secs_f64()
    );
    let inherited: Vec<String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("STRATA_") && !k.starts_with("STRATA_BENCH_"))
        .filter(|(k, _)| !k.contains("SECRET") && !k.contains("TOKEN"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if !inherited.is_empty() {
        println!("server settings inherited from the environment: {}", inherited.join(" "));
    }
    // Rate limits would cap the figures: say which were in force (both are off unless set).
    let limit = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty()).unwrap_or_else(|| "off".into());
    println!(
        "ingestion rate limits per API key: requests {}, events {}",
        limit("STRATA_INGEST_RATE_LIMIT"),
        limit("STRATA_INGEST_EVENT_RATE_LIMIT")
    );
    let busy = busy_before.machine_busy * 100.0;
    if busy >= 15.0 {
        println!("WARNING: the machine was {busy:.0}% busy before the run: other processes compete for the cores;");
        println!("figures will be low and noisy (see the per-phase 'PostgreSQL + rest' CPU figure).");
    } else {
        println!("machine {busy:.0}% busy during the second before the run.");
    }
    println!();
}

pub(crate) fn print_copy(copy: &CopyResult) {
    println!(
        "(a) COPY BINARY, {COPY_BATCH_ROWS} rows/tx, {} connection(s): {} rows in {:.2} s = {} rows/s",
        copy.streams,
        copy.rows,
        copy.elapsed.as_secs_f64(),
        fmt_rate(copy.rows_per_s())
    );
    println!("    {}\n", copy.cpu.describe());
}

pub(crate) fn print_phase(r: &PhaseResult, copy: &Copies) {
    let ratio = match r.spec.shape {
        Shape::Batch(_) => format!(", (b)/(a) = {:.2}", r.events_per_s / copy.one.rows_per_s()),
        Shape::Single => String::new(),
    };
    println!(
        "{} ({} conns): {} events/s, {} req/s, p50 {} p95 {} p99 {}, errors: {}, peak RSS {}{ratio}",
        r.spec.name,
        r.spec.connections,
        fmt_rate(r.events_per_s),
        fmt_rate(r.requests_per_s),
        fmt_ms(r.p50),
        fmt_ms(r.p95),
        fmt_ms(r.p99),
        fmt_errors(&r.errors),
        fmt_mb(r.peak_rss_kb)
    );
    println!("    {}", r.cpu.describe());
}

/// The final table, then the consistency check, then the targets.
pub(crate) fn print_summary(copy: &Copies, results: &[PhaseResult], peak_rss_kb: u64, check: &Check) {
    println!("\n=== Summary ===");
    let head = ["phase", "conns", "events/s", "req/s", "p50", "p95", "p99", "vs COPY", "peak RSS", "cpu gen/srv/rest"];
    print_row(&head.map(String::from), "errors");
    let reference = copy.one.rows_per_s();
    for c in [&copy.one, &copy.two] {
        let dash = || "-".to_string();
        let (rate, ratio) = (fmt_rate(c.rows_per_s()), format!("{:.2}", c.rows_per_s() / reference));
        let cells = [
            "(a) COPY".to_string(),
            c.streams.to_string(),
            rate,
            dash(),
            dash(),
            dash(),
            dash(),
            ratio,
            dash(),
            c.cpu.compact(),
        ];
        print_row(&cells, "-");
    }
    for r in results {
        let kind = if matches!(r.spec.shape, Shape::Batch(_)) { "(b)" } else { "(c)" };
        let row = [
            format!("{kind} {}", r.spec.name),
            r.spec.connections.to_string(),
            fmt_rate(r.events_per_s),
            fmt_rate(r.requests_per_s),
            fmt_ms(r.p50),
            fmt_ms(r.p95),
            fmt_ms(r.p99),
            format!("{:.2}", r.events_per_s / reference),
            fmt_mb(r.peak_rss_kb),
            r.cpu.compact(),
        ];
        print_row(&row, &fmt_errors(&r.errors));
    }
    let window = results.first().map_or(0.0, |r| r.window.as_secs_f64());
    println!("measured window per HTTP phase: {window:.1} s; 'vs COPY' = events/s / one-connection COPY rows/s;");
    println!("cpu in cores: load generator / server / PostgreSQL + anything else on the machine");
    print_check(check);
    print_targets(copy, results, peak_rss_kb);
}

/// One line of the summary table.
fn print_row(cells: &[String; 10], errors: &str) {
    let [phase, conns, events, reqs, p50, p95, p99, ratio, rss, cpu] = cells;
    print!("{phase:<20} {conns:>5} {events:>10} {reqs:>8} {p50:>9} {p95:>9} {p99:>9} ");
    println!("{ratio:>7} {rss:>8} {cpu:>16}  {errors}");
}

fn print_check(check: &Check) {
    println!("\n=== Database check ===");
    println!("events acknowledged (201) over HTTP: {}", check.acked);
    println!("count(*) FROM events:                {}", check.raw_rows);
    println!("sum(events) FROM rollup_hourly:      {}", check.rollup_sum);
    println!("count(*) FROM event_ids:             {}", check.claimed_ids);
    if check.raw_rows != check.acked as i64 {
        println!("!!!!! MISMATCH: raw rows ({}) != acknowledged events ({}) !!!!!", check.raw_rows, check.acked);
    }
    if check.rollup_sum != check.raw_rows {
        println!("!!!!! MISMATCH: rollup sum ({}) != raw rows ({}) !!!!!", check.rollup_sum, check.raw_rows);
    }
    if check.consistent() {
        println!("OK: raw rows = acknowledged events = rollup sum");
    }
}

/// Issue 2's targets next to the figures.
fn print_targets(copy: &Copies, results: &[PhaseResult], peak_rss_kb: u64) {
    println!("\n=== Targets (issue 2) ===");
    for r in results.iter().filter(|r| matches!(r.spec.shape, Shape::Batch(_))) {
        let ratio = r.events_per_s / copy.one.rows_per_s();
        let label = format!("{} >= 50,000 events/s", r.spec.name);
        target_line(&label, fmt_rate(r.events_per_s), Some(r.events_per_s >= TARGET_BATCH_EVENTS_PER_S));
        let label = format!("{} >= 0.5 x COPY (1 connection)", r.spec.name);
        target_line(&label, format!("{ratio:.3}"), Some(ratio >= TARGET_BATCH_COPY_RATIO));
        let label = format!("{} / COPY with 2 connections (= server writers)", r.spec.name);
        target_line(&label, format!("{:.3}", r.events_per_s / copy.two.rows_per_s()), None);
    }
    let single = results.iter().find(|r| matches!(r.spec.shape, Shape::Single) && r.spec.connections == 100);
    if let Some(r) = single {
        let ok = r.events_per_s >= TARGET_SINGLE_EVENTS_PER_S;
        target_line("single @100 conns >= 10,000 events/s", fmt_rate(r.events_per_s), Some(ok));
        target_line("single @100 conns p99 <= 50 ms", fmt_ms(r.p99), Some(r.p99 <= TARGET_SINGLE_P99));
    }
    let ok = peak_rss_kb <= TARGET_RSS_KB;
    target_line("server peak RSS <= 300 MB (sampled max, VmHWM)", fmt_mb(peak_rss_kb), Some(ok));
}

/// One target: what, the measured figure, met / NOT MET (or "info" when not a target).
fn target_line(label: &str, figure: String, met: Option<bool>) {
    let verdict = match met {
        Some(true) => "met",
        Some(false) => "NOT MET",
        None => "(information)",
    };
    println!("{label:<60} {figure:>10}  {verdict}");
}

pub(crate) fn print_server_notes(server: &Server, shutdown: (ExitStatus, Duration)) {
    println!("\nserver stopped by SIGTERM in {:.2} s ({})", shutdown.1.as_secs_f64(), shutdown.0);
    let (notable, samples) = server.notable();
    if notable > 0 {
        println!("server logged {notable} WARN/ERROR/non-JSON lines; first ones:");
        for line in &samples {
            println!("  {line}");
        }
    }
}

fn fmt_ms(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1e3)
}

fn fmt_mb(kb: u64) -> String {
    format!("{:.0}MB", kb as f64 / 1024.0)
}

fn fmt_errors(errors: &BTreeMap<String, u64>) -> String {
    if errors.is_empty() {
        return "0".into();
    }
    errors.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ")
}
