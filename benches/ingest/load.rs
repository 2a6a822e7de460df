//! Phases (b) and (c): connections sending requests back to back over HTTP, and the server's memory
//! sampled meanwhile.

use super::*;

// ---------------------------------------------------------------------------------------------------
// Server memory
// ---------------------------------------------------------------------------------------------------

/// Samples the server's VmRSS every 100 ms: overall peak and the peak of the current phase.
pub(crate) struct RssSampler {
    peak_kb: Arc<AtomicU64>,
    phase_peak_kb: Arc<AtomicU64>,
    pub(crate) task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    pub(crate) fn start(pid: u32) -> RssSampler {
        let peak_kb = Arc::new(AtomicU64::new(0));
        let phase_peak_kb = Arc::new(AtomicU64::new(0));
        let (peak, phase) = (peak_kb.clone(), phase_peak_kb.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                let Some(kb) = proc_status_kb(pid, "VmRSS:") else { break };
                peak.fetch_max(kb, Ordering::Relaxed);
                phase.fetch_max(kb, Ordering::Relaxed);
            }
        });
        RssSampler { peak_kb, phase_peak_kb, task }
    }

    /// Starts a new phase's peak.
    fn reset_phase(&self) {
        self.phase_peak_kb.store(0, Ordering::Relaxed);
    }

    fn phase_peak_kb(&self) -> u64 {
        self.phase_peak_kb.load(Ordering::Relaxed)
    }

    /// Stops sampling; the peak is the larger of the samples and the kernel's high-water mark.
    pub(crate) fn finish(self, pid: u32) -> u64 {
        self.task.abort();
        let hwm = proc_status_kb(pid, "VmHWM:").unwrap_or(0);
        hwm.max(self.peak_kb.load(Ordering::Relaxed))
    }
}

// ---------------------------------------------------------------------------------------------------
// (b), (c) HTTP load
// ---------------------------------------------------------------------------------------------------

/// How many events a request carries.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Shape {
    /// `POST /api/events/track/batch` with this many events.
    Batch(usize),
    /// `POST /api/events/track`.
    Single,
}

impl Shape {
    pub(crate) fn path(self) -> &'static str {
        match self {
            Shape::Batch(_) => "/api/events/track/batch",
            Shape::Single => "/api/events/track",
        }
    }

    pub(crate) fn events(self) -> u64 {
        match self {
            Shape::Batch(n) => n as u64,
            Shape::Single => 1,
        }
    }

    /// A fresh request body: new eventIds every time.
    fn body(self) -> String {
        let mut rng = rand::rng();
        match self {
            Shape::Single => {
                let mut out = String::with_capacity(256);
                Synthetic::random(&mut rng).write_json(&mut out);
                out
            }
            Shape::Batch(n) => {
                let mut out = String::with_capacity(16 + n * 260);
                out.push_str(r#"{"events":["#);
                for i in 0..n {
                    if i > 0 {
                        out.push(',');
                    }
                    Synthetic::random(&mut rng).write_json(&mut out);
                }
                out.push_str("]}");
                out
            }
        }
    }
}

/// One HTTP phase.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PhaseSpec {
    pub(crate) name: &'static str,
    pub(crate) shape: Shape,
    pub(crate) connections: usize,
}

/// Where the load goes.
pub(crate) struct Target {
    pub(crate) url: String,
    pub(crate) api_key: String,
    /// The server's pid, for its CPU time.
    pub(crate) pid: u32,
}

/// What one connection's task saw.
#[derive(Default)]
pub(crate) struct WorkerStats {
    /// Latencies (µs) of 201 answers completed inside the window.
    latencies_us: Vec<u32>,
    /// Events of 201 answers completed inside the window.
    window_events: u64,
    /// Events of every 201 answer, warm-up and tail included (for the database check).
    pub(crate) acked_events: u64,
    /// Non-201 outcomes by status (or transport error kind), warm-up included.
    pub(crate) errors: BTreeMap<String, u64>,
}

/// The figures of one phase.
pub(crate) struct PhaseResult {
    pub(crate) spec: PhaseSpec,
    pub(crate) window: Duration,
    pub(crate) events_per_s: f64,
    pub(crate) requests_per_s: f64,
    pub(crate) p50: Duration,
    pub(crate) p95: Duration,
    pub(crate) p99: Duration,
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) acked_events: u64,
    pub(crate) peak_rss_kb: u64,
    /// CPU use during the measured window.
    pub(crate) cpu: CpuUse,
}

/// Runs `spec.connections` request loops for warm-up + window and merges their figures.
pub(crate) async fn run_phase(
    spec: PhaseSpec,
    target: &Target,
    settings: &Settings,
    rss: &RssSampler,
) -> Result<PhaseResult> {
    let client = reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .pool_max_idle_per_host(spec.connections * 2)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(60))
        .build()?;
    rss.reset_phase();
    let window_start = Instant::now() + settings.warmup;
    let window = Window { start: window_start, end: window_start + settings.seconds };
    let url = format!("{}{}", target.url, spec.shape.path());
    let workers: Vec<_> = (0..spec.connections)
        .map(|_| tokio::spawn(worker(client.clone(), url.clone(), target.api_key.clone(), spec.shape, window)))
        .collect();
    let cpu = measure_cpu(window, Some(target.pid)).await;
    let mut merged = WorkerStats::default();
    for w in workers {
        let stats = w.await.context("load task")?;
        merged.latencies_us.extend(stats.latencies_us);
        merged.window_events += stats.window_events;
        merged.acked_events += stats.acked_events;
        for (k, v) in stats.errors {
            *merged.errors.entry(k).or_default() += v;
        }
    }
    let mut result = summarise(spec, settings.seconds, merged, rss.phase_peak_kb());
    result.cpu = cpu;
    Ok(result)
}

/// Turns merged worker figures into rates and percentiles.
fn summarise(spec: PhaseSpec, window: Duration, mut stats: WorkerStats, peak_rss_kb: u64) -> PhaseResult {
    stats.latencies_us.sort_unstable();
    let secs = window.as_secs_f64();
    PhaseResult {
        spec,
        window,
        events_per_s: stats.window_events as f64 / secs,
        requests_per_s: stats.latencies_us.len() as f64 / secs,
        p50: percentile(&stats.latencies_us, 0.50),
        p95: percentile(&stats.latencies_us, 0.95),
        p99: percentile(&stats.latencies_us, 0.99),
        errors: stats.errors,
        acked_events: stats.acked_events,
        peak_rss_kb,
        cpu: CpuUse::default(),
    }
}

/// Nearest-rank percentile of sorted microseconds.
fn percentile(sorted_us: &[u32], p: f64) -> Duration {
    if sorted_us.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
    Duration::from_micros(u64::from(sorted_us[rank - 1]))
}

/// The measured interval; requests completing inside it count.
#[derive(Clone, Copy)]
pub(crate) struct Window {
    pub(crate) start: Instant,
    pub(crate) end: Instant,
}

/// One connection: send, wait for the answer, record, repeat until the window closes.
async fn worker(client: reqwest::Client, url: String, key: String, shape: Shape, window: Window) -> WorkerStats {
    let mut stats = WorkerStats::default();
    while Instant::now() < window.end {
        let body = shape.body();
        let sent = Instant::now();
        let outcome = send(&client, &url, &key, body).await;
        let done = Instant::now();
        let status = match outcome {
            Ok(201) => {
                stats.acked_events += shape.events();
                if done >= window.start && done <= window.end {
                    stats.window_events += shape.events();
                    stats.latencies_us.push((done - sent).as_micros().min(u128::from(u32::MAX)) as u32);
                }
                continue;
            }
            Ok(status) => status.to_string(),
            Err(kind) => kind,
        };
        *stats.errors.entry(status).or_default() += 1;
        // Do not spin on a failing server (queue full, refused connections).
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stats
}

/// One request, body read to the end (so the connection is reused); the status or an error kind.
async fn send(client: &reqwest::Client, url: &str, key: &str, body: String) -> Result<u16, String> {
    let response = client
        .post(url)
        .header("X-API-Key", key)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| transport_error_kind(&e))?;
    let status = response.status().as_u16();
    response.bytes().await.map_err(|e| transport_error_kind(&e))?;
    Ok(status)
}

fn transport_error_kind(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "client timeout".into()
    } else if e.is_connect() {
        "connect error".into()
    } else {
        "transport error".into()
    }
}
