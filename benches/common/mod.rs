//! What the benchmarks share (each declares `mod common;`, or `#[path = "../common/mod.rs"] mod common;`
//! from its own folder, and `use common::*;`):
//! - [`dataset`]: the synthetic dataset of the query and cache benchmarks, loaded by binary COPY;
//! - [`scratch`]: [`ScratchDb`], the database of one run, dropped at its end;
//! - [`server`]: [`Server`], the `strata serve` child process, and `/proc` readings of it;
//! - here: settings from the environment, number formatting and the runtime every bench runs on.
#![allow(dead_code)]

mod dataset;
mod scratch;
mod server;

// Each bench uses a part of what is shared.
#[allow(unused_imports)]
pub(crate) use dataset::*;
#[allow(unused_imports)]
pub(crate) use scratch::*;
#[allow(unused_imports)]
pub(crate) use server::*;

use anyhow::{bail, Result};

/// Where scratch databases are created unless `STRATA_BENCH_DATABASE_URL` says otherwise.
pub(crate) const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// The admin token and key secret of the benchmark servers.
pub(crate) const ADMIN_TOKEN: &str = "bench-admin";
pub(crate) const KEY_SECRET: &str = "bench-secret";
/// Share of the events per app when 10 apps are loaded, biggest first.
pub(crate) const APP_SHARES: [f64; 10] = [0.30, 0.20, 0.15, 0.10, 0.08, 0.06, 0.04, 0.03, 0.02, 0.02];
/// The loaded dataset's event types and user-agent facets.
pub(crate) const EVENT_TYPES: [&str; 20] = [
    "page_view",
    "click",
    "scroll",
    "form_submit",
    "signup",
    "login",
    "logout",
    "add_to_cart",
    "remove_from_cart",
    "checkout",
    "purchase",
    "search",
    "video_play",
    "video_pause",
    "share",
    "download",
    "error",
    "feature_used",
    "notification_open",
    "session_start",
];
pub(crate) const DEVICES: [&str; 3] = ["desktop", "mobile", "tablet"];
pub(crate) const BROWSERS: [&str; 4] = ["Chrome", "Firefox", "Safari", "Edge"];
pub(crate) const OSES: [&str; 4] = ["Windows", "macOS", "Linux", "iOS"];
pub(crate) const USER_AGENT: &str = "Mozilla/5.0 (bench)";
/// Rows per COPY statement (one transaction each).
pub(crate) const COPY_CHUNK: usize = 50_000;
/// Parallel COPY connections.
pub(crate) const COPY_STREAMS: usize = 2;
/// `n` with thousands separators (1,234,567).
pub(crate) fn fmt_int(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `x` rounded, with thousands separators.
pub(crate) fn fmt_rate(x: f64) -> String {
    fmt_int(x.round() as u64)
}

/// A non-negative number from the environment (`_` and `,` separators allowed), or `default`.
pub(crate) fn env_number(name: &str, default: f64) -> Result<f64> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(v) => match v.trim().replace(['_', ','], "").parse::<f64>() {
            Ok(n) if n.is_finite() && n >= 0.0 => Ok(n),
            _ => bail!("{name}={v:?} is not a non-negative number"),
        },
    }
}

/// Like [`env_number`], zero refused.
pub(crate) fn env_positive(name: &str, default: f64) -> Result<f64> {
    let n = env_number(name, default)?;
    if n == 0.0 {
        bail!("{name} must be positive");
    }
    Ok(n)
}

/// Runs a benchmark on a multi-threaded runtime: success, or the error printed and a failure.
pub(crate) fn run_bench(bench: impl std::future::Future<Output = Result<()>>) -> std::process::ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(bench) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nbenchmark failed: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
