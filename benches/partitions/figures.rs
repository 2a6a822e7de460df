//! The figures of a run: timing statistics and the summary printed at the end.

use super::*;

// ---------------------------------------------------------------------------------------------------
// Figures
// ---------------------------------------------------------------------------------------------------

pub(crate) struct Stats {
    median: Duration,
    pub(crate) min: Duration,
    pub(crate) max: Duration,
}

impl Stats {
    pub(crate) fn of(mut samples: Vec<Duration>) -> Stats {
        samples.sort_unstable();
        Stats { median: samples[samples.len() / 2], min: samples[0], max: samples[samples.len() - 1] }
    }

    pub(crate) fn line(&self) -> String {
        format!("median {} ms, min {} ms, max {} ms", ms(self.median), ms(self.min), ms(self.max))
    }
}

pub(crate) struct Summary {
    pub(crate) noop: Stats,
    pub(crate) create: Stats,
    pub(crate) alone: Load,
    pub(crate) busy: Load,
    pub(crate) after: Load,
    pub(crate) ratio: f64,
    pub(crate) churn: Churn,
    pub(crate) acked: u64,
    pub(crate) stored: i64,
    pub(crate) drain: Duration,
    pub(crate) drain_ok: bool,
}

impl Summary {
    pub(crate) fn consistent(&self) -> bool {
        self.stored == self.acked as i64 && self.drain_ok
    }

    pub(crate) fn print(&self) {
        let mark = |ok: bool| if ok { "met" } else { "NOT MET" };
        let rows = [
            ("maintenance run with nothing to do (median)", format!("{} ms", ms(self.noop.median)), "no target"),
            ("create one month + parent's indexes (median)", format!("{} ms", ms(self.create.median)), "no target"),
            ("ingestion without maintenance (before)", format!("{} ev/s", fmt_rate(self.alone.events_per_s)), "-"),
            ("ingestion with maintenance", format!("{} ev/s", fmt_rate(self.busy.events_per_s)), "-"),
            ("ingestion without maintenance (after)", format!("{} ev/s", fmt_rate(self.after.events_per_s)), "-"),
            (
                "  (maintenance iterations during the phase)",
                format!("{}", self.churn.iterations),
                if self.churn.iterations > 0 { "-" } else { "NOT MET" },
            ),
            (
                "ratio with / mean without maintenance >= 0.9",
                format!("{:.3}", self.ratio),
                mark(self.ratio >= TARGET_RATIO),
            ),
            ("HTTP errors during ingestion = 0", self.error_count().to_string(), mark(self.error_count() == 0)),
            (
                "count(*) FROM events = acknowledged",
                format!("{} / {}", self.stored, self.acked),
                mark(self.stored == self.acked as i64),
            ),
            (
                "move 100,000 rows out of DEFAULT",
                format!(
                    "{:.2} s ({} rows/s)",
                    self.drain.as_secs_f64(),
                    fmt_rate(DEFAULT_ROWS as f64 / self.drain.as_secs_f64())
                ),
                "no target",
            ),
            ("  all 100,000 in their month, default empty", String::new(), mark(self.drain_ok)),
        ];
        println!("\n=== Summary (issue 3 benchmark) ===");
        for (name, figure, verdict) in rows {
            println!("{name:<48} {figure:>26}  {verdict}");
        }
    }

    fn error_count(&self) -> u64 {
        self.alone.errors.values().chain(self.busy.errors.values()).chain(self.after.errors.values()).sum()
    }
}

pub(crate) fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}
