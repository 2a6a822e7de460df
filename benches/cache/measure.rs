//! Measuring one phase: connections of their own sending the same request back to back, the tier
//! that answered each, and the Redis round trip as the floor.

use super::*;

// ---------------------------------------------------------------------------------------------------
// Measuring
// ---------------------------------------------------------------------------------------------------

/// Which tier answered, from `meta.cache`.
#[derive(Clone, Copy, Default, Debug)]
pub(crate) struct Tiers {
    pub(crate) l1: u64,
    pub(crate) l2: u64,
    pub(crate) miss: u64,
    /// No `meta.cache` (e.g. `/health`).
    none: u64,
}

impl Tiers {
    fn add(&mut self, o: &Tiers) {
        self.l1 += o.l1;
        self.l2 += o.l2;
        self.miss += o.miss;
        self.none += o.none;
    }

    pub(crate) fn describe(&self) -> String {
        format!("l1 {} / l2 {} / miss {} / none {}", self.l1, self.l2, self.miss, self.none)
    }
}

/// `meta.cache` of a response body, looked for near the end first (where `meta` sorts), then anywhere.
fn tier_of(body: &[u8]) -> &'static str {
    fn find(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }
    let tail = &body[body.len().saturating_sub(512)..];
    for part in [tail, body] {
        for (needle, name) in
            [(&b"\"cache\":\"l1\""[..], "l1"), (b"\"cache\":\"l2\"", "l2"), (b"\"cache\":\"miss\"", "miss")]
        {
            if find(part, needle) {
                return name;
            }
        }
    }
    "none"
}

/// One measured phase.
#[derive(Clone, Default)]
pub(crate) struct Phase {
    pub(crate) label: String,
    pub(crate) conns: usize,
    pub(crate) n: usize,
    pub(crate) errors: usize,
    pub(crate) rps: f64,
    pub(crate) p50: Duration,
    pub(crate) p95: Duration,
    pub(crate) p99: Duration,
    pub(crate) tiers: Tiers,
}

impl Phase {
    /// p50, p95 and p99, printed.
    pub(crate) fn percentiles(&self) -> [String; 3] {
        [fmt_ms(self.p50), fmt_ms(self.p95), fmt_ms(self.p99)]
    }
}

fn pick(lat: &[Duration], q: f64) -> Duration {
    if lat.is_empty() {
        return Duration::ZERO;
    }
    lat[((lat.len() as f64 * q).ceil() as usize).clamp(1, lat.len()) - 1]
}

/// One keep-alive HTTP/1.1 connection of the load generator: raw hyper, one connection per task, so
/// the generator spends as little of the shared cores as it can (no pool, no URL parsing per request).
pub(crate) struct Conn {
    send: hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    authority: String,
    pub(crate) path: String,
}

impl Conn {
    async fn open(url: &str) -> Result<Conn> {
        let rest = url.strip_prefix("http://").ok_or_else(|| anyhow!("not an http:// URL: {url}"))?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let stream =
            tokio::net::TcpStream::connect(authority).await.with_context(|| format!("connecting to {authority}"))?;
        stream.set_nodelay(true)?;
        let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Conn { send, authority: authority.to_string(), path: path.to_string() })
    }

    async fn get(&mut self) -> Result<bytes::Bytes> {
        use http_body_util::BodyExt;
        let req = hyper::Request::get(&self.path)
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::AUTHORIZATION, format!("Bearer {ADMIN_TOKEN}"))
            .body(http_body_util::Empty::new())?;
        self.send.ready().await?;
        let resp = self.send.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!("GET {}: {status}: {}", self.path, String::from_utf8_lossy(&body[..body.len().min(300)]));
        }
        Ok(body)
    }
}

/// `conns` connections in a closed loop for warm-up + window; requests started inside the window count.
pub(crate) async fn phase(label: &str, url: &str, conns: usize, s: &Settings) -> Result<Phase> {
    let started = Instant::now();
    let (measure_from, end) = (started + s.warmup, started + s.warmup + s.seconds);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let url = url.to_string();
        let mut conn = Conn::open(&url).await?;
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors, mut tiers) = (Vec::new(), 0usize, Tiers::default());
            let mut first_error: Option<String> = None;
            loop {
                let t = Instant::now();
                if t >= end {
                    break;
                }
                let result = conn.get().await;
                if result.is_err() {
                    // A broken connection is replaced (the error is counted below).
                    if let Ok(fresh) = Conn::open(&url).await {
                        conn = fresh;
                    }
                }
                if t < measure_from {
                    continue;
                }
                match result {
                    Ok(body) => {
                        lat.push(t.elapsed());
                        match tier_of(&body) {
                            "l1" => tiers.l1 += 1,
                            "l2" => tiers.l2 += 1,
                            "miss" => tiers.miss += 1,
                            _ => tiers.none += 1,
                        }
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
            (lat, errors, tiers, first_error)
        }));
    }
    let (mut all, mut errors, mut tiers) = (Vec::new(), 0, Tiers::default());
    let mut first_error: Option<String> = None;
    for t in tasks {
        let (lat, e, tr, fe) = t.await?;
        if first_error.is_none() {
            first_error = fe;
        }
        all.extend(lat);
        errors += e;
        tiers.add(&tr);
    }
    // The window closes when the last request started in it has answered.
    let window = (Instant::now() - measure_from).max(s.seconds);
    all.sort();
    let p = Phase {
        label: label.to_string(),
        conns,
        n: all.len(),
        errors,
        rps: all.len() as f64 / window.as_secs_f64(),
        p50: pick(&all, 0.50),
        p95: pick(&all, 0.95),
        p99: pick(&all, 0.99),
        tiers,
    };
    let [p50, p95, p99] = p.percentiles();
    println!(
        "  {:<14} {:>3} conns: {:>8.0} req/s  p50 {p50} p95 {p95} p99 {p99}  ({} req, {} errors; meta.cache {})",
        p.label,
        p.conns,
        p.rps,
        p.n,
        p.errors,
        p.tiers.describe()
    );
    if let Some(e) = first_error {
        let e: String = e.chars().take(300).collect();
        println!("    first error: {e}");
    }
    Ok(p)
}

/// Sends a few requests and checks the last one was answered by `expected`.
pub(crate) async fn warm_and_check(url: &str, expected: &str) -> Result<(usize, bool)> {
    let mut conn = Conn::open(url).await?;
    let mut body = bytes::Bytes::new();
    for _ in 0..3 {
        body = conn.get().await?;
    }
    let v: Value = serde_json::from_slice(&body)?;
    let tier = v["meta"]["cache"].as_str().unwrap_or("(none)").to_string();
    let ok = tier == expected;
    if ok {
        println!("  after warm-up meta.cache = {tier:?} as expected; response {} bytes", body.len());
    } else {
        println!("  !!!!! after warm-up meta.cache = {tier:?}, expected {expected:?} !!!!!");
    }
    Ok((body.len(), ok))
}

/// Redis GET round trip of a `size`-byte value, one connection: (p50, p99).
pub(crate) async fn redis_floor(redis_url: &str, prefix: &str, size: usize) -> Result<(Duration, Duration)> {
    let client = redis::Client::open(redis_url)?;
    let mut con = client.get_multiplexed_async_connection().await.context("connecting to Redis")?;
    let key = format!("{prefix}bench-payload");
    let payload = vec![b'x'; size];
    redis::cmd("SET").arg(&key).arg(&payload[..]).arg("EX").arg(600).query_async::<()>(&mut con).await?;
    for _ in 0..100 {
        redis::cmd("GET").arg(&key).query_async::<Vec<u8>>(&mut con).await?;
    }
    let mut lat = Vec::with_capacity(REDIS_GETS);
    for _ in 0..REDIS_GETS {
        let t = Instant::now();
        let v = redis::cmd("GET").arg(&key).query_async::<Vec<u8>>(&mut con).await?;
        lat.push(t.elapsed());
        if v.len() != size {
            bail!("Redis returned {} bytes, expected {size}", v.len());
        }
    }
    redis::cmd("DEL").arg(&key).query_async::<()>(&mut con).await?;
    lat.sort();
    Ok((pick(&lat, 0.50), pick(&lat, 0.99)))
}
