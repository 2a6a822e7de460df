//! The Redis side of the limiters: one key per limited key, `{prefix}rl:{limiter}:{hash}`, holding
//! the shared bucket's full-again time in Redis-clock microseconds (expiring when the bucket is full
//! again). Instances report the tokens they took with `SYNC`, which pushes the time forward and
//! answers how far ahead of now it is; a report of zero only reads. Redis's own clock is used, so
//! instances' clocks need not agree.
//!
//! `{hash}` is a keyed hash of the limited key ([`redis_key`]): limited keys are client addresses
//! and token ids, which Redis (a shared, often less guarded store) never sees in clear.
//!
//! Nothing here runs on the request path except [`Shared::fetch`], once per key an instance has
//! not seen recently, and only while Redis answers ([`Shared::healthy`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hmac::{Hmac, Mac};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sha2::Sha256;

/// KEYS[1] = the bucket; ARGV[1] = microseconds of tokens taken since the last report. Returns the
/// microseconds the shared bucket is ahead of full (0 when full).
const SYNC: &str = "local t = redis.call('TIME') \
    local now = tonumber(t[1]) * 1000000 + tonumber(t[2]) \
    local tat = tonumber(redis.call('GET', KEYS[1]) or '0') \
    local cost = tonumber(ARGV[1]) \
    if cost > 0 then \
      if tat < now then tat = now end \
      tat = tat + cost \
      redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000) + 1) \
    end \
    if tat < now then return 0 end \
    return tat - now";

/// Hex digits of the keyed hash kept in a Redis key (128 bits).
const HASH_HEX: usize = 32;

/// The Redis key of the bucket of `key` in limiter `limit`: HMAC-SHA256 under `secret` of
/// `limit:key`, so the key name holds no client address or token id.
pub fn redis_key(prefix: &str, secret: &[u8], limit: &str, key: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(limit.as_bytes());
    mac.update(b":");
    mac.update(key.as_bytes());
    let hash = hex::encode(mac.finalize().into_bytes());
    format!("{prefix}rl:{limit}:{}", &hash[..HASH_HEX])
}

/// Reports sent in one pipeline at most.
const PIPELINE_MAX: usize = 1000;

/// Longest wait for one pipeline of reports (off the request path, so longer than a request's).
const SYNC_TIMEOUT_MIN: Duration = Duration::from_millis(500);

/// The connection to Redis shared by every limiter of the process.
pub struct Shared {
    conn: ConnectionManager,
    prefix: String,
    /// Key of the hash of limited keys in Redis key names.
    secret: Vec<u8>,
    /// SHA1 of [`SYNC`], learnt from Redis by the first report (the `script` feature of the
    /// redis crate, which would compute it, is not enabled).
    sha: std::sync::OnceLock<String>,
    /// Longest wait of a request-path fetch.
    timeout: Duration,
    /// False after a failed command, until a report or ping succeeds: requests then limit locally
    /// instead of waiting for Redis.
    healthy: AtomicBool,
}

impl Shared {
    /// A lazy connection to `url` (nothing is sent yet); limited keys are hashed under `secret`.
    pub fn new(url: &str, prefix: &str, timeout: Duration, secret: &[u8]) -> Result<Shared, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(100))))
            .set_response_timeout(Some(timeout.max(SYNC_TIMEOUT_MIN)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client, cfg)?;
        Ok(Shared {
            conn,
            prefix: prefix.to_owned(),
            secret: secret.to_owned(),
            sha: std::sync::OnceLock::new(),
            timeout,
            healthy: AtomicBool::new(true),
        })
    }

    /// True unless the last command failed.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    fn mark(&self, ok: bool) {
        if self.healthy.swap(ok, Ordering::Relaxed) != ok {
            if ok {
                tracing::info!("rate limits are shared through Redis again");
            } else {
                tracing::warn!("Redis is unreachable; each instance applies the rate limits alone");
            }
        }
        if !ok {
            metrics::counter!("strata_rate_limit_redis_errors_total").increment(1);
        }
    }

    /// The Redis key of `key` in limiter `name`.
    pub fn key(&self, name: &str, key: &str) -> String {
        redis_key(&self.prefix, &self.secret, name, key)
    }

    /// How far ahead of full the shared bucket `redis_key` is, or `None` when Redis did not answer
    /// within the request timeout.
    pub async fn fetch(&self, redis_key: &str) -> Option<Duration> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(SYNC).arg(1).arg(redis_key).arg(0u64);
        let reply = tokio::time::timeout(self.timeout, cmd.query_async::<u64>(&mut conn)).await;
        match reply {
            Ok(Ok(us)) => {
                self.mark(true);
                Some(Duration::from_micros(us))
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "rate limit fetch failed");
                self.mark(false);
                None
            }
            Err(_) => {
                self.mark(false);
                None
            }
        }
    }

    /// Reports `(redis key, microseconds taken)` pairs; returns each bucket's distance from full, in
    /// order, or `None` when Redis failed (the reports are then lost: the local buckets keep them).
    pub async fn report(&self, reports: &[(String, u64)]) -> Option<Vec<Duration>> {
        if reports.is_empty() {
            if !self.healthy() {
                let mut conn = self.conn.clone();
                let ping = redis::cmd("PING");
                let reply = tokio::time::timeout(self.sync_timeout(), ping.query_async::<String>(&mut conn)).await;
                let ok = matches!(reply, Ok(Ok(_)));
                self.mark(ok);
            }
            return Some(Vec::new());
        }
        let mut out = Vec::with_capacity(reports.len());
        for chunk in reports.chunks(PIPELINE_MAX) {
            match self.report_chunk(chunk).await {
                Ok(aheads) => out.extend(aheads.into_iter().map(Duration::from_micros)),
                Err(e) => {
                    tracing::debug!(error = %e, "rate limit report failed");
                    self.mark(false);
                    return None;
                }
            }
        }
        self.mark(true);
        Some(out)
    }

    /// One pipeline: the script is loaded first each time (cheap, and Redis may have restarted
    /// since the last report), then one `EVALSHA` per report.
    async fn report_chunk(&self, chunk: &[(String, u64)]) -> Result<Vec<u64>, String> {
        let mut conn = self.conn.clone();
        let sha = match self.sha.get() {
            Some(sha) => sha.clone(),
            None => {
                let mut load = redis::cmd("SCRIPT");
                load.arg("LOAD").arg(SYNC);
                match tokio::time::timeout(self.sync_timeout(), load.query_async::<String>(&mut conn)).await {
                    Ok(Ok(sha)) => self.sha.get_or_init(|| sha).clone(),
                    Ok(Err(e)) => return Err(e.to_string()),
                    Err(_) => return Err(format!("no answer within {:?}", self.sync_timeout())),
                }
            }
        };
        let mut p = redis::pipe();
        p.cmd("SCRIPT").arg("LOAD").arg(SYNC).ignore();
        for (key, us) in chunk {
            p.cmd("EVALSHA").arg(&sha).arg(1).arg(key).arg(*us);
        }
        match tokio::time::timeout(self.sync_timeout(), p.query_async::<Vec<u64>>(&mut conn)).await {
            Ok(Ok(v)) if v.len() == chunk.len() => Ok(v),
            Ok(Ok(_)) => Err("unexpected reply".to_owned()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.sync_timeout())),
        }
    }

    fn sync_timeout(&self) -> Duration {
        self.timeout.max(SYNC_TIMEOUT_MIN)
    }
}
