//! CPU accounting from `/proc`: the load generator, the server and the rest of the machine.

use super::*;

// ---------------------------------------------------------------------------------------------------
// CPU accounting (the load generator, the server and PostgreSQL share the cores)
// ---------------------------------------------------------------------------------------------------

/// Clock ticks per second of `/proc` CPU times (USER_HZ, 100 on Linux).
const TICKS_PER_S: f64 = 100.0;

/// CPU time counters (ticks) at one instant.
#[derive(Clone, Copy, Default)]
pub(crate) struct CpuSnapshot {
    /// All cores: busy (user, nice, system, irq, softirq, steal) and busy + idle + iowait.
    pub(crate) machine_busy: u64,
    machine_total: u64,
    /// This process: the load generator (and, in phase (a), the COPY client).
    load_gen: u64,
    /// The server process, when running.
    pub(crate) server: u64,
}

impl CpuSnapshot {
    pub(crate) fn take(server: Option<u32>) -> CpuSnapshot {
        let (machine_busy, machine_total) = machine_ticks().unwrap_or((0, 0));
        let load_gen = process_ticks("self").unwrap_or(0);
        let server = server.and_then(|pid| process_ticks(&pid.to_string())).unwrap_or(0);
        CpuSnapshot { machine_busy, machine_total, load_gen, server }
    }
}

/// Busy and total ticks of all cores, from the first line of `/proc/stat`.
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    let get = |i: usize| fields.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
    Some((busy, busy + get(3) + get(4)))
}

/// utime + stime of a process (`self` or a pid), from `/proc/<pid>/stat`.
fn process_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is the first, utime the 12th.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// CPU use over an interval, in cores (1.0 = one core fully busy).
#[derive(Clone, Copy, Default)]
pub(crate) struct CpuUse {
    /// Share of all cores that was busy.
    pub(crate) machine_busy: f64,
    load_gen: f64,
    pub(crate) server: f64,
    /// Everything else: PostgreSQL, and any other process on the machine.
    rest: f64,
}

impl CpuUse {
    pub(crate) fn between(before: &CpuSnapshot, after: &CpuSnapshot, wall: Duration) -> CpuUse {
        let secs = wall.as_secs_f64().max(1e-3);
        let cores = |a: u64, b: u64| b.saturating_sub(a) as f64 / TICKS_PER_S / secs;
        let total = after.machine_total.saturating_sub(before.machine_total).max(1) as f64;
        let machine = cores(before.machine_busy, after.machine_busy);
        let load_gen = cores(before.load_gen, after.load_gen);
        let server = cores(before.server, after.server);
        CpuUse {
            machine_busy: after.machine_busy.saturating_sub(before.machine_busy) as f64 / total,
            load_gen,
            server,
            rest: (machine - load_gen - server).max(0.0),
        }
    }

    /// `gen/srv/rest` in cores, e.g. `0.61/0.72/0.55`.
    pub(crate) fn compact(&self) -> String {
        format!("{:.2}/{:.2}/{:.2}", self.load_gen, self.server, self.rest)
    }

    pub(crate) fn describe(&self) -> String {
        format!(
            "cpu: machine {:.0}% busy; cores used by load generator {:.2}, server {:.2}, PostgreSQL + rest {:.2}",
            self.machine_busy * 100.0,
            self.load_gen,
            self.server,
            self.rest
        )
    }
}

/// CPU use during `window` (waits until it has passed).
pub(crate) async fn measure_cpu(window: Window, server: Option<u32>) -> CpuUse {
    tokio::time::sleep_until(window.start.into()).await;
    let before = CpuSnapshot::take(server);
    tokio::time::sleep_until(window.end.into()).await;
    let after = CpuSnapshot::take(server);
    CpuUse::between(&before, &after, window.end - window.start)
}

/// CPU use of the machine during one second, to warn when it is not idle before the run.
pub(crate) async fn idle_check() -> CpuUse {
    let before = CpuSnapshot::take(None);
    tokio::time::sleep(Duration::from_secs(1)).await;
    CpuUse::between(&before, &CpuSnapshot::take(None), Duration::from_secs(1))
}
