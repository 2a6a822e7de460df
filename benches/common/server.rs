//! The `strata serve` child process every HTTP benchmark measures (or `STRATA_BENCH_SERVER_BIN`, to
//! measure another build the same way), and `/proc` readings of a process.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::{ADMIN_TOKEN, KEY_SECRET};

/// Longest wait for the server's address at start-up, and for its exit after SIGTERM.
const PATIENCE: Duration = Duration::from_secs(60);
/// Notable log lines kept as samples, and last log lines kept for start-up failures.
const SAMPLES: usize = 10;
const LAST_LINES: usize = 30;

/// What the stderr drainer kept of the server's log.
#[derive(Default)]
struct LogTail {
    /// WARN and ERROR lines, and lines that are not JSON (e.g. panics).
    notable: u64,
    /// The first notable lines.
    samples: Vec<String>,
    /// The last lines, for failures at start-up.
    last: VecDeque<String>,
}

/// The server child process; killed on drop unless it was stopped.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) pid: u32,
    pub(crate) addr: SocketAddr,
    logs: Arc<Mutex<LogTail>>,
    stopped: bool,
}

impl Server {
    /// The server of the query, cache, soak and hostile benchmarks: logs at `warn,strata=info`, and
    /// ignores the Redis and cache settings of the environment (each bench passes its own in
    /// `extra_env`).
    pub(crate) async fn start(db_url: &str, extra_env: &[(&str, &str)]) -> Result<Server> {
        Server::spawn(db_url, |cmd| {
            cmd.env("STRATA_LOG", "warn,strata=info")
                .env_remove("REDIS_URL")
                .env_remove("STRATA_CACHE")
                .env_remove("STRATA_REDIS_PREFIX")
                .envs(extra_env.iter().copied());
        })
        .await
    }

    /// Spawns the server on `db_url` and a free port, with the bench's key secret and admin token and
    /// what `configure` adds to its environment (which it otherwise inherits); waits for the address
    /// it logs.
    pub(crate) async fn spawn(db_url: &str, configure: impl FnOnce(&mut Command)) -> Result<Server> {
        let bin = std::env::var("STRATA_BENCH_SERVER_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_strata").into());
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .env("DATABASE_URL", db_url)
            .env("STRATA_LISTEN", "127.0.0.1:0")
            .env("STRATA_LOG_FORMAT", "json")
            .env("STRATA_KEY_SECRET", KEY_SECRET)
            .env("STRATA_ADMIN_TOKEN", ADMIN_TOKEN);
        configure(&mut cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the strata server")?;
        let pid = child.id();
        let stderr = child.stderr.take().expect("stderr is piped");
        let logs = Arc::new(Mutex::new(LogTail::default()));
        let (addr_tx, addr_rx) = mpsc::channel();
        let drain_logs = logs.clone();
        std::thread::spawn(move || drain_stderr(stderr, &drain_logs, addr_tx));
        let mut server = Server { child, pid, addr: SocketAddr::from(([127, 0, 0, 1], 0)), logs, stopped: false };
        server.addr = server.wait_for_addr(addr_rx).await?;
        Ok(server)
    }

    /// The address from the log, or an error with the log's tail if the server exits or stalls.
    async fn wait_for_addr(&mut self, rx: mpsc::Receiver<SocketAddr>) -> Result<SocketAddr> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(addr) = rx.try_recv() {
                return Ok(addr);
            }
            if let Some(status) = self.child.try_wait()? {
                self.stopped = true;
                bail!("the server exited at start-up ({status}); its log ends with:\n{}", self.log_tail());
            }
            if Instant::now() > deadline {
                bail!(
                    "the server did not log its address within {PATIENCE:?}; its log ends with:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_tail(&self) -> String {
        let logs = self.logs.lock().expect("log lock");
        logs.last.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// How many WARN/ERROR/non-JSON lines the server logged, and the first of them.
    pub(crate) fn notable(&self) -> (u64, Vec<String>) {
        let logs = self.logs.lock().expect("log lock");
        (logs.notable, logs.samples.clone())
    }

    /// SIGTERM, then waits for the graceful drain: its exit status and how long it took (after 60 s,
    /// SIGKILL and an error).
    pub(crate) async fn stop(&mut self) -> Result<(ExitStatus, Duration)> {
        let started = Instant::now();
        Command::new("kill").args(["-TERM", &self.pid.to_string()]).status().context("running kill -TERM")?;
        while started.elapsed() < PATIENCE {
            if let Some(status) = self.child.try_wait()? {
                self.stopped = true;
                return Ok((status, started.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.child.kill()?;
        let _ = self.child.wait();
        self.stopped = true;
        bail!("the server did not exit within {PATIENCE:?} of SIGTERM; killed")
    }
}

impl Drop for Server {
    /// On error paths: never leave a server (and its connections to the scratch database) behind.
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Reads the server's stderr to its end: sends the listening address once, keeps notable lines.
fn drain_stderr(stderr: ChildStderr, logs: &Mutex<LogTail>, addr_tx: mpsc::Sender<SocketAddr>) {
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        let parsed: Option<Value> = serde_json::from_str(&line).ok();
        let addr = parsed.as_ref().and_then(|v| v.pointer("/fields/addr")).and_then(Value::as_str);
        if let Some(addr) = addr.and_then(|a| a.parse::<SocketAddr>().ok()) {
            let _ = addr_tx.send(addr);
        }
        let level = parsed.as_ref().and_then(|v| v.get("level")).and_then(Value::as_str);
        let notable = parsed.is_none() || matches!(level, Some("WARN" | "ERROR"));
        let mut logs = logs.lock().expect("log lock");
        if notable {
            logs.notable += 1;
            if logs.samples.len() < SAMPLES {
                logs.samples.push(line.clone());
            }
        }
        if logs.last.len() == LAST_LINES {
            logs.last.pop_front();
        }
        logs.last.push_back(line);
    }
}

/// A `kB` field of `/proc/<pid>/status` (`"VmRSS:"`, `"VmHWM:"`); `None` once the process is gone.
pub(crate) fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].split_whitespace().next()?.parse().ok()
}
