//! `partition-jobs`: run Strata's partition maintenance from cron, without the server.
//!
//! `partition-jobs plan|run|status --database-url URL` (or `DATABASE_URL`); `--json` prints the
//! same JSON the server's admin endpoints return. Exit status: 0 ok, 1 error, 2 when `run` failed
//! or `status` is critical (so cron and monitoring notice).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use clap::{Parser, Subcommand};
use partition_jobs::{health, load_policy, plan, read_catalog, run_once_as, OutcomeStatus, RunStatus, Status};
use tokio_postgres::NoTls;

/// Partition maintenance for Strata's `events` table.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// PostgreSQL connection string (TLS is not supported by this binary).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// How long each DDL statement may wait for locks, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    lock_timeout_ms: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show what a run would do now, without doing it.
    Plan,
    /// Run maintenance once (skipped if another process is running it).
    Run,
    /// Show the health report and the partitions.
    Status,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let (client, connection) =
        tokio_postgres::connect(&cli.database_url, NoTls).await.context("connecting to the database")?;
    let conn = tokio::spawn(connection);
    let now = Utc::now();
    let code = match cli.command {
        Command::Plan => {
            let policy = load_policy(&client).await.context("loading the policy")?;
            let catalog = read_catalog(&client).await.context("reading the catalog")?;
            let actions = plan(now, &catalog, &policy);
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&actions)?);
            } else if actions.is_empty() {
                println!("nothing to do");
            } else {
                actions.iter().for_each(|a| println!("{a}"));
            }
            ExitCode::SUCCESS
        }
        Command::Run => {
            let timeout = Duration::from_millis(cli.lock_timeout_ms);
            let report = run_once_as(&client, now, timeout, "cli").await.context("running")?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_report(&report);
            }
            exit_code(report.status == RunStatus::Failed)
        }
        Command::Status => {
            let policy = load_policy(&client).await.context("loading the policy")?;
            let report = health(&client, now, &policy).await.context("reading health")?;
            let catalog = read_catalog(&client).await.context("reading the catalog")?;
            if cli.json {
                let value = serde_json::json!({ "health": report, "catalog": catalog });
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                println!("status: {:?}", report.status);
                for c in &report.checks {
                    println!("  {:<17} {:<8} {}", c.name, format!("{:?}", c.status), c.detail);
                }
                println!("partitions:");
                for p in &catalog.partitions {
                    let rows = p.stats.row_estimate.unwrap_or(p.stats.live_rows);
                    println!("  {:<16} ~{rows} rows  {} bytes", p.name, p.stats.total_bytes);
                }
            }
            exit_code(report.status == Status::Critical)
        }
    };
    drop(client);
    let _ = conn.await;
    Ok(code)
}

fn print_report(report: &partition_jobs::RunReport) {
    match report.run_id {
        Some(id) => println!("run {id}: {:?}", report.status),
        None => println!("{}", report.detail.as_deref().unwrap_or("skipped")),
    }
    for o in &report.outcomes {
        let detail = o.detail.as_deref().unwrap_or("");
        println!("  {} {:?} ({} ms) {detail}", o.action, o.status, o.elapsed_ms);
        if o.status == OutcomeStatus::Done && o.moved_rows > 0 {
            println!("    moved {} rows; rebuild rollups for {} hours", o.moved_rows, o.affected_hours.len());
        }
    }
    if let Some(e) = &report.error {
        println!("error: {e}");
    }
}

fn exit_code(bad: bool) -> ExitCode {
    if bad {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}
