//! Which months' rollups are complete, in `rollup_months`: the query planner reads rollups only for
//! months marked complete (and with tiers, and quarter hours), and raw rows elsewhere. Rebuilds mark
//! the months they recompute whole ([`super::rebuild`]); the maintenance scheduler marks months again
//! after rebuilding the hours of rows it moved ([`mark_month_complete`]); [`health_check`] reports the
//! months still answered from raw rows.

use std::collections::HashMap;

use chrono::NaiveDate;
use partition_jobs::health::{Check, Status};
use partition_jobs::{Catalog, Month};
use tokio_postgres::Client;

const MARK_COMPLETE: &str = "INSERT INTO rollup_months (month, complete, rebuilt_at) VALUES ($1, true, now()) \
     ON CONFLICT (month) DO UPDATE SET complete = true, rebuilt_at = now()";

const ROLLUP_MONTHS: &str = "SELECT month, complete, tiers, quarters FROM rollup_months";

/// Marks `month`'s rollups complete (after its affected hours were rebuilt).
pub async fn mark_month_complete(client: &Client, month: Month) -> Result<(), tokio_postgres::Error> {
    client.execute(MARK_COMPLETE, &[&month.start().date_naive()]).await?;
    Ok(())
}

/// The `rollups` check of the partition health report: months of `catalog`'s partitions whose
/// rollups the planner does not trust.
pub async fn health_check(client: &Client, catalog: &Catalog) -> Result<Check, tokio_postgres::Error> {
    let rows = client.query(ROLLUP_MONTHS, &[]).await?;
    let trusted: HashMap<NaiveDate, (bool, bool, bool)> =
        rows.iter().map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3)))).collect();
    Ok(rollups_check(catalog, &trusted))
}

/// The `rollups` check: months with a partition whose rollups the planner does not trust (answered
/// from raw rows, slowly, until `strata rollups rebuild` or the scheduler's repair completes them).
fn rollups_check(catalog: &Catalog, trusted: &HashMap<NaiveDate, (bool, bool, bool)>) -> Check {
    let mut problems = Vec::new();
    for month in catalog.partitions.iter().filter_map(|p| p.month) {
        match trusted.get(&month.first_day()) {
            None => problems.push(format!("{month} (not recorded)")),
            Some((false, _, _)) => problems.push(format!("{month} (rows moved in, rollups not rebuilt yet)")),
            Some((true, false, _)) => problems.push(format!("{month} (rollup tiers not built)")),
            Some((true, true, false)) => {
                problems.push(format!("{month} (no quarter hours: +5:30/+5:45 zones read its bucket edges raw)"))
            }
            Some((true, true, true)) => {}
        }
    }
    if problems.is_empty() {
        return Check { name: "rollups", status: Status::Ok, detail: "every month's rollups are complete".into() };
    }
    let detail = format!(
        "months answered (partly) from raw rows until `strata rollups rebuild` completes them: {}",
        problems.join(", ")
    );
    Check { name: "rollups", status: Status::Warning, detail }
}
