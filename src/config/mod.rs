//! Typed configuration: documented defaults, overridden by environment variables (`DATABASE_URL`,
//! `REDIS_URL`, `STRATA_*`) and then by command-line flags. [`Config::from_env`] reads and
//! [`Config::validate`] rejects invalid values with a message naming the setting. The types of
//! values are in [`values`] and [`proxies`]: configuration imports nothing else of Strata.

pub mod proxies;
pub mod values;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use proxies::TrustedProxies;
pub use values::{parse_duration, RateLimit, Secret, MAX_BUCKETS};

/// A setting that could not be read; the message names it.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {name}={value:?}: {reason}")]
pub struct ConfigError {
    /// The environment variable or flag.
    pub name: String,
    /// The value given.
    pub value: String,
    /// Why it was refused.
    pub reason: String,
}

/// Every knob of the service. Defaults are the values of [`Config::default`].
#[derive(Clone, Debug)]
pub struct Config {
    /// `STRATA_LISTEN` (default `0.0.0.0:3000`): address of the HTTP server.
    pub listen: SocketAddr,
    /// `DATABASE_URL`: PostgreSQL; when absent the embedded cluster under `data_dir` is used.
    pub database_url: Option<String>,
    /// `STRATA_DATA_DIR` (default `.data`): where the embedded PostgreSQL cluster lives.
    pub data_dir: PathBuf,
    /// `REDIS_URL`: the shared cache tier; optional.
    pub redis_url: Option<String>,
    /// `STRATA_REDIS_PREFIX` (default `strata:`): prefix of every Redis key and channel.
    pub redis_prefix: String,
    /// `STRATA_CACHE` (`on`, `off`, `l1` or `l2`; default `on`): which analytics cache tiers are used.
    pub cache_mode: CacheMode,
    /// `STRATA_FRESHNESS` (default `5s`): an acknowledged event shows in every query covering it
    /// within this time; also the L1 lifetime.
    pub freshness: Duration,
    /// `STRATA_CACHE_TTL_RECENT` (default `300s`): L2 lifetime of answers whose range touches now.
    pub cache_ttl_recent: Duration,
    /// `STRATA_CACHE_TTL_CLOSED` (default `3600s`): L2 lifetime of answers for closed ranges.
    pub cache_ttl_closed: Duration,
    /// `STRATA_L1_MAX_BYTES` (default 64 MiB): bound of the in-process cache (serialised answers).
    pub l1_max_bytes: u64,
    /// `STRATA_REDIS_TIMEOUT` (default `25ms`): longest wait for one Redis command before the
    /// request goes on without it.
    pub redis_timeout: Duration,
    /// `STRATA_CACHE_WARM` (`off`, `on` = 5, or a number of queries 1 to 50; default `off`): remember
    /// the most requested analytics queries of each app and precompute that many per active app after
    /// start and after each hour rollover, in the background.
    pub cache_warm: Option<usize>,
    /// `STRATA_ADMIN_TOKEN`: bearer token of DBA endpoints; generated once and stored in the
    /// database when unset.
    pub admin_token: Option<Secret>,
    /// `STRATA_KEY_SECRET`: HMAC secret of API keys; generated once and stored when unset.
    pub key_secret: Option<Secret>,
    /// `STRATA_JWT_SECRET`: signing secret of owner tokens; generated once and stored when unset.
    pub jwt_secret: Option<Secret>,
    /// `STRATA_TOKEN_TTL` (default `7d`, the original's): lifetime of owner bearer tokens.
    pub token_ttl: Duration,
    /// `STRATA_AUTH_RATE_LIMIT` (default `10/15m`, the original's; `off` disables): register and
    /// login attempts per client IP, shared by the instances through Redis when `REDIS_URL` is set.
    pub auth_rate_limit: Option<RateLimit>,
    /// `STRATA_INGEST_RATE_LIMIT` (default off): ingestion requests per API key.
    pub ingest_rate_limit: Option<RateLimit>,
    /// `STRATA_INGEST_EVENT_RATE_LIMIT` (default off): ingested events per API key (a batch of 100
    /// costs 100).
    pub ingest_event_rate_limit: Option<RateLimit>,
    /// `STRATA_ANALYTICS_RATE_LIMIT` (default off): analytics requests per bearer token (owner token,
    /// or the admin token).
    pub analytics_rate_limit: Option<RateLimit>,
    /// `STRATA_DB_POOL_SIZE` (default 16): PostgreSQL connections per process.
    pub db_pool_size: usize,
    /// `STRATA_DB_TIMEOUT` (default `5s`): longest wait for a pooled connection or a query before
    /// the request is answered 503.
    pub db_timeout: Duration,
    /// `STRATA_INGEST_QUEUE_CAPACITY` (default 100000): events accepted but not yet committed;
    /// beyond it ingestion answers 503 with Retry-After.
    pub ingest_queue_capacity: usize,
    /// `STRATA_BATCH_MAX_EVENTS` (default 10000): most events one request may carry.
    pub batch_max_events: usize,
    /// `STRATA_FLUSH_MAX_EVENTS` (default 5000): most events the writer commits in one transaction.
    pub flush_max_events: usize,
    /// `STRATA_WRITERS` (default 2): concurrent group-commit writers (COPY streams).
    pub writers: usize,
    /// `STRATA_BODY_MAX_BYTES` (default 5 MiB): largest request body, after decompression.
    pub body_max_bytes: usize,
    /// `STRATA_METADATA_MAX_BYTES` (default 32 KiB): largest `metadata` of one event.
    pub metadata_max_bytes: usize,
    /// `STRATA_INGEST_MEMORY_BYTES` (default 64 MiB): bytes of ingestion bodies (raw, decompressed,
    /// parsed) all requests together may hold; beyond it requests are shed with 503 `overloaded`.
    pub ingest_memory_bytes: usize,
    /// `STRATA_FUTURE_SKEW` (default `24h`): how far past now an event time may be.
    pub future_skew: Duration,
    /// `STRATA_ACCEPT_WINDOW` (default `730d`): how old an event may be.
    pub accept_window: Duration,
    /// `STRATA_DEDUPE_WINDOW` (default `7d`): how long an eventId is remembered for idempotency.
    pub dedupe_window: Duration,
    /// `STRATA_TRUSTED_PROXY_HEADER` (e.g. `x-forwarded-for`): header naming the client IP, read only
    /// when the socket peer is one of `trusted_proxies`; unset means the socket peer is the client.
    pub trusted_proxy_header: Option<String>,
    /// `STRATA_TRUSTED_PROXIES` (CIDR list, e.g. `10.0.0.0/8,::1/128`; default none): the proxies
    /// whose `trusted_proxy_header` is believed (required with it).
    pub trusted_proxies: TrustedProxies,
    /// `STRATA_CORS_ORIGINS` (default `*`): comma-separated origins allowed to call ingestion.
    pub cors_origins: Vec<String>,
    /// `STRATA_KEY_CACHE_TTL` (default `30s`, at most 30 s): in-process API key cache lifetime.
    pub key_cache_ttl: Duration,
    /// `STRATA_KEY_CACHE_CAPACITY` (default 100000): keys known to exist kept in the key cache
    /// (unknown keys have a cache of their own, so they never push these out).
    pub key_cache_capacity: u64,
    /// `STRATA_KEY_FAILURE_RATE_LIMIT` (default `20/1m`; `off` disables): unknown API keys per
    /// client address; beyond it keys not already known valid get 429 before any database query.
    pub key_failure_rate_limit: Option<RateLimit>,
    /// `STRATA_USAGE_FLUSH_INTERVAL` (default `5s`): how often key usage counters are written.
    pub usage_flush_interval: Duration,
    /// `STRATA_PREMAKE_MONTHS` (default 3): monthly partitions kept ahead of the current month.
    pub premake_months: u32,
    /// `STRATA_RETENTION_MONTHS` (default off): whole months of raw events kept before the current
    /// one; older months are detached (or dropped). Rollups outlive them.
    pub retention_months: Option<u32>,
    /// `STRATA_RETENTION_MODE` (`detach` or `drop`, default `detach`).
    pub retention_drop: bool,
    /// `STRATA_MAINTENANCE_INTERVAL` (default `10m`): how often the scheduler runs maintenance.
    pub maintenance_interval: Duration,
    /// `STRATA_MAX_BUCKETS` (default 10,000): most buckets one timeline may have (more is a 400 on
    /// `interval`).
    pub max_buckets: usize,
    /// `STRATA_TIER_COMPACT_INTERVAL` (default `2s`): how often writer deltas of the multi-tier rollups
    /// are merged into their hour, day and month rows (queries read the remaining deltas too).
    pub tier_compact_interval: Duration,
    /// `STRATA_PARTITION_LOCK_TIMEOUT` (default `2s`): lock_timeout of partition DDL.
    pub partition_lock_timeout: Duration,
    /// `STRATA_SHUTDOWN_GRACE` (default `30s`): longest drain of accepted events on shutdown.
    pub shutdown_grace: Duration,
    /// `STRATA_REQUEST_TIMEOUT` (default `30s`): longest a request may take end to end.
    pub request_timeout: Duration,
    /// `STRATA_HEADER_TIMEOUT` (default `10s`): a connection that has not sent a complete request head
    /// within this time (slowloris, or an idle keep-alive connection) is closed.
    pub header_timeout: Duration,
    /// `STRATA_METRICS_TOKEN`: when set, `/metrics` needs this bearer token (or the admin token).
    pub metrics_token: Option<Secret>,
    /// `STRATA_SLOW_REQUEST` (default `1s`): requests slower than this are logged with their timing.
    pub slow_request: Duration,
    /// `STRATA_SLOW_QUERY` (default `500ms`): analytics statements and group commits slower than this
    /// are logged with their timing.
    pub slow_query: Duration,
    /// `STRATA_LOG_FORMAT` (`text` or `json`, default `text`).
    pub log_json: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 3000)),
            database_url: None,
            data_dir: PathBuf::from(".data"),
            redis_url: None,
            redis_prefix: "strata:".into(),
            cache_mode: CacheMode::On,
            freshness: Duration::from_secs(5),
            cache_ttl_recent: Duration::from_secs(300),
            cache_ttl_closed: Duration::from_secs(3600),
            l1_max_bytes: 64 * 1024 * 1024,
            redis_timeout: Duration::from_millis(25),
            cache_warm: None,
            admin_token: None,
            key_secret: None,
            jwt_secret: None,
            token_ttl: Duration::from_secs(7 * 86_400),
            auth_rate_limit: Some(RateLimit { requests: 10, window: Duration::from_secs(900) }),
            ingest_rate_limit: None,
            ingest_event_rate_limit: None,
            analytics_rate_limit: None,
            db_pool_size: 16,
            db_timeout: Duration::from_secs(5),
            ingest_queue_capacity: 100_000,
            batch_max_events: 10_000,
            flush_max_events: 5_000,
            writers: 2,
            body_max_bytes: 5 * 1024 * 1024,
            metadata_max_bytes: 32 * 1024,
            ingest_memory_bytes: 64 * 1024 * 1024,
            future_skew: Duration::from_secs(24 * 3600),
            accept_window: Duration::from_secs(730 * 24 * 3600),
            dedupe_window: Duration::from_secs(7 * 24 * 3600),
            trusted_proxy_header: None,
            trusted_proxies: TrustedProxies::default(),
            cors_origins: vec!["*".into()],
            key_cache_ttl: Duration::from_secs(30),
            key_cache_capacity: 100_000,
            key_failure_rate_limit: Some(RateLimit { requests: 20, window: Duration::from_secs(60) }),
            usage_flush_interval: Duration::from_secs(5),
            premake_months: 3,
            retention_months: None,
            retention_drop: false,
            maintenance_interval: Duration::from_secs(600),
            tier_compact_interval: Duration::from_secs(2),
            max_buckets: MAX_BUCKETS,
            partition_lock_timeout: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(30),
            request_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            metrics_token: None,
            slow_request: Duration::from_secs(1),
            slow_query: Duration::from_millis(500),
            log_json: false,
        }
    }
}

/// Which analytics cache tiers are in use (`STRATA_CACHE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    /// L1 (in process) and L2 (Redis, when `REDIS_URL` is set).
    On,
    /// No caching: every query reads the database.
    Off,
    /// Only the in-process tier.
    L1,
    /// Only the Redis tier.
    L2,
}

impl CacheMode {
    /// From `on`, `off`, `l1` or `l2`.
    pub fn parse(v: &str) -> Option<CacheMode> {
        match v.trim() {
            "on" => Some(CacheMode::On),
            "off" => Some(CacheMode::Off),
            "l1" => Some(CacheMode::L1),
            "l2" => Some(CacheMode::L2),
            _ => None,
        }
    }

    /// True when the in-process tier is used.
    pub fn l1(self) -> bool {
        matches!(self, CacheMode::On | CacheMode::L1)
    }

    /// True when the Redis tier is used (if configured).
    pub fn l2(self) -> bool {
        matches!(self, CacheMode::On | CacheMode::L2)
    }
}

/// Queries warmed per active app with `STRATA_CACHE_WARM=on`.
pub const CACHE_WARM_DEFAULT: usize = 5;
/// Most queries warmed per active app.
pub const CACHE_WARM_MAX: usize = 50;

/// Most group-commit writers: each owns a rollup shard (a smallint), and more gain nothing.
const MAX_WRITERS: usize = 64;

/// The longest API-key cache lifetime allowed: revocation must bite within it even without Redis.
/// The in-flight body budget holds at least this many largest bodies: one request holds its raw body,
/// the decompressed body and the rows parsed from it.
pub const INGEST_MEMORY_PER_BODY: usize = 4;
const KEY_CACHE_TTL_MAX: Duration = Duration::from_secs(30);

impl Config {
    /// Defaults overridden by the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_vars(&std::env::vars().collect())
    }

    /// Defaults overridden by `vars` (the environment, or a map in tests).
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Config, ConfigError> {
        let mut c = Config::default();
        let get = |k: &str| vars.get(k).filter(|v| !v.trim().is_empty()).cloned();
        if let Some(v) = get("STRATA_LISTEN") {
            c.listen = parse_with("STRATA_LISTEN", &v, |s| s.parse().ok())?;
        }
        c.database_url = get("DATABASE_URL");
        if let Some(v) = get("STRATA_DATA_DIR") {
            c.data_dir = PathBuf::from(v);
        }
        c.redis_url = get("REDIS_URL");
        if let Some(v) = get("STRATA_REDIS_PREFIX") {
            c.redis_prefix = v;
        }
        if let Some(v) = get("STRATA_CACHE") {
            c.cache_mode =
                CacheMode::parse(&v).ok_or_else(|| invalid("STRATA_CACHE", &v, "expected on, off, l1 or l2"))?;
        }
        c.admin_token = get("STRATA_ADMIN_TOKEN").map(Secret::from);
        c.key_secret = get("STRATA_KEY_SECRET").map(Secret::from);
        c.jwt_secret = get("STRATA_JWT_SECRET").map(Secret::from);
        let count = |k: &str, d: usize| -> Result<usize, ConfigError> {
            get(k).map_or(Ok(d), |v| parse_with(k, &v, |s| s.parse().ok()))
        };
        let dur = |k: &str, d: Duration| -> Result<Duration, ConfigError> {
            get(k).map_or(Ok(d), |v| parse_with(k, &v, parse_duration))
        };
        c.token_ttl = dur("STRATA_TOKEN_TTL", c.token_ttl)?;
        let rate = |k: &str, d: Option<RateLimit>| -> Result<Option<RateLimit>, ConfigError> {
            match get(k) {
                None => Ok(d),
                Some(v) if v.trim() == "off" => Ok(None),
                Some(v) => parse_with(k, &v, RateLimit::parse).map(Some),
            }
        };
        c.auth_rate_limit = rate("STRATA_AUTH_RATE_LIMIT", c.auth_rate_limit)?;
        c.ingest_rate_limit = rate("STRATA_INGEST_RATE_LIMIT", c.ingest_rate_limit)?;
        c.ingest_event_rate_limit = rate("STRATA_INGEST_EVENT_RATE_LIMIT", c.ingest_event_rate_limit)?;
        c.analytics_rate_limit = rate("STRATA_ANALYTICS_RATE_LIMIT", c.analytics_rate_limit)?;
        c.key_failure_rate_limit = rate("STRATA_KEY_FAILURE_RATE_LIMIT", c.key_failure_rate_limit)?;
        c.freshness = dur("STRATA_FRESHNESS", c.freshness)?;
        c.cache_ttl_recent = dur("STRATA_CACHE_TTL_RECENT", c.cache_ttl_recent)?;
        c.cache_ttl_closed = dur("STRATA_CACHE_TTL_CLOSED", c.cache_ttl_closed)?;
        c.l1_max_bytes = count("STRATA_L1_MAX_BYTES", c.l1_max_bytes as usize)? as u64;
        c.redis_timeout = dur("STRATA_REDIS_TIMEOUT", c.redis_timeout)?;
        if let Some(v) = get("STRATA_CACHE_WARM") {
            c.cache_warm = match v.trim() {
                "off" | "0" => None,
                "on" => Some(CACHE_WARM_DEFAULT),
                n => match n.parse::<usize>() {
                    Ok(n) if n <= CACHE_WARM_MAX => Some(n),
                    _ => return Err(invalid("STRATA_CACHE_WARM", &v, "expected off, on or a number from 1 to 50")),
                },
            };
        }
        c.db_pool_size = count("STRATA_DB_POOL_SIZE", c.db_pool_size)?;
        c.db_timeout = dur("STRATA_DB_TIMEOUT", c.db_timeout)?;
        c.ingest_queue_capacity = count("STRATA_INGEST_QUEUE_CAPACITY", c.ingest_queue_capacity)?;
        c.batch_max_events = count("STRATA_BATCH_MAX_EVENTS", c.batch_max_events)?;
        c.flush_max_events = count("STRATA_FLUSH_MAX_EVENTS", c.flush_max_events)?;
        c.writers = count("STRATA_WRITERS", c.writers)?;
        c.body_max_bytes = count("STRATA_BODY_MAX_BYTES", c.body_max_bytes)?;
        c.metadata_max_bytes = count("STRATA_METADATA_MAX_BYTES", c.metadata_max_bytes)?;
        c.ingest_memory_bytes = count("STRATA_INGEST_MEMORY_BYTES", c.ingest_memory_bytes)?;
        c.future_skew = dur("STRATA_FUTURE_SKEW", c.future_skew)?;
        c.accept_window = dur("STRATA_ACCEPT_WINDOW", c.accept_window)?;
        c.dedupe_window = dur("STRATA_DEDUPE_WINDOW", c.dedupe_window)?;
        c.trusted_proxy_header = get("STRATA_TRUSTED_PROXY_HEADER").map(|h| h.to_ascii_lowercase());
        if let Some(v) = get("STRATA_TRUSTED_PROXIES") {
            c.trusted_proxies =
                TrustedProxies::parse(&v).map_err(|e| invalid("STRATA_TRUSTED_PROXIES", &v, &e.to_string()))?;
        }
        if let Some(v) = get("STRATA_CORS_ORIGINS") {
            c.cors_origins = v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
        }
        c.key_cache_ttl = dur("STRATA_KEY_CACHE_TTL", c.key_cache_ttl)?;
        c.key_cache_capacity = count("STRATA_KEY_CACHE_CAPACITY", c.key_cache_capacity as usize)? as u64;
        c.usage_flush_interval = dur("STRATA_USAGE_FLUSH_INTERVAL", c.usage_flush_interval)?;
        if let Some(v) = get("STRATA_PREMAKE_MONTHS") {
            c.premake_months = parse_with("STRATA_PREMAKE_MONTHS", &v, |s| s.parse().ok())?;
        }
        if let Some(v) = get("STRATA_RETENTION_MONTHS") {
            c.retention_months = match v.trim() {
                "off" | "0" => None,
                n => Some(parse_with("STRATA_RETENTION_MONTHS", n, |s| s.parse().ok())?),
            };
        }
        if let Some(v) = get("STRATA_RETENTION_MODE") {
            c.retention_drop = match v.trim() {
                "drop" => true,
                "detach" => false,
                _ => return Err(invalid("STRATA_RETENTION_MODE", &v, "expected detach or drop")),
            };
        }
        c.maintenance_interval = dur("STRATA_MAINTENANCE_INTERVAL", c.maintenance_interval)?;
        c.tier_compact_interval = dur("STRATA_TIER_COMPACT_INTERVAL", c.tier_compact_interval)?;
        c.max_buckets = count("STRATA_MAX_BUCKETS", c.max_buckets)?;
        c.partition_lock_timeout = dur("STRATA_PARTITION_LOCK_TIMEOUT", c.partition_lock_timeout)?;
        c.shutdown_grace = dur("STRATA_SHUTDOWN_GRACE", c.shutdown_grace)?;
        c.request_timeout = dur("STRATA_REQUEST_TIMEOUT", c.request_timeout)?;
        c.header_timeout = dur("STRATA_HEADER_TIMEOUT", c.header_timeout)?;
        c.metrics_token = get("STRATA_METRICS_TOKEN").map(Secret::from);
        c.slow_request = dur("STRATA_SLOW_REQUEST", c.slow_request)?;
        c.slow_query = dur("STRATA_SLOW_QUERY", c.slow_query)?;
        if let Some(v) = get("STRATA_LOG_FORMAT") {
            c.log_json = match v.as_str() {
                "json" => true,
                "text" => false,
                _ => return Err(invalid("STRATA_LOG_FORMAT", &v, "expected text or json")),
            };
        }
        c.validate()?;
        Ok(c)
    }

    /// Rejects values that parse but cannot work together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("STRATA_DB_POOL_SIZE", self.db_pool_size),
            ("STRATA_INGEST_QUEUE_CAPACITY", self.ingest_queue_capacity),
            ("STRATA_BATCH_MAX_EVENTS", self.batch_max_events),
            ("STRATA_FLUSH_MAX_EVENTS", self.flush_max_events),
            ("STRATA_WRITERS", self.writers),
            ("STRATA_BODY_MAX_BYTES", self.body_max_bytes),
            ("STRATA_METADATA_MAX_BYTES", self.metadata_max_bytes),
            ("STRATA_KEY_CACHE_CAPACITY", self.key_cache_capacity as usize),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(invalid(name, "0", "must be at least 1"));
            }
        }
        if self.batch_max_events > self.ingest_queue_capacity {
            return Err(invalid(
                "STRATA_BATCH_MAX_EVENTS",
                &self.batch_max_events.to_string(),
                "must not exceed STRATA_INGEST_QUEUE_CAPACITY, or a full batch could never be queued",
            ));
        }
        if self.ingest_memory_bytes < self.body_max_bytes.saturating_mul(INGEST_MEMORY_PER_BODY) {
            return Err(invalid(
                "STRATA_INGEST_MEMORY_BYTES",
                &self.ingest_memory_bytes.to_string(),
                &format!(
                    "must be at least {INGEST_MEMORY_PER_BODY} times STRATA_BODY_MAX_BYTES ({}), or the largest body \
                     (raw, decompressed and parsed) could never be read",
                    self.body_max_bytes
                ),
            ));
        }
        if self.key_cache_ttl > KEY_CACHE_TTL_MAX {
            return Err(invalid(
                "STRATA_KEY_CACHE_TTL",
                &format!("{:?}", self.key_cache_ttl),
                "must be at most 30s so revoked keys stop working within 30 s",
            ));
        }
        if let (Some(header), true) = (&self.trusted_proxy_header, self.trusted_proxies.is_empty()) {
            return Err(invalid(
                "STRATA_TRUSTED_PROXY_HEADER",
                header,
                "is read only from the proxies named by STRATA_TRUSTED_PROXIES (a CIDR list such as \
                 10.0.0.0/8,::1/128), which is not set",
            ));
        }
        if self.freshness < Duration::from_millis(100) {
            return Err(invalid("STRATA_FRESHNESS", &format!("{:?}", self.freshness), "must be at least 100ms"));
        }
        if self.premake_months > 120 {
            return Err(invalid("STRATA_PREMAKE_MONTHS", &self.premake_months.to_string(), "must be at most 120"));
        }
        if self.token_ttl < Duration::from_secs(1) {
            return Err(invalid("STRATA_TOKEN_TTL", &format!("{:?}", self.token_ttl), "must be at least 1s"));
        }
        if self.header_timeout.is_zero() {
            return Err(invalid("STRATA_HEADER_TIMEOUT", "0", "must be positive"));
        }
        if self.maintenance_interval.is_zero() {
            return Err(invalid("STRATA_MAINTENANCE_INTERVAL", "0", "must be positive"));
        }
        if !(1..=1_000_000).contains(&self.max_buckets) {
            return Err(invalid("STRATA_MAX_BUCKETS", &self.max_buckets.to_string(), "must be from 1 to 1000000"));
        }
        if self.tier_compact_interval.is_zero() {
            return Err(invalid("STRATA_TIER_COMPACT_INTERVAL", "0", "must be positive"));
        }
        if self.writers > MAX_WRITERS {
            return Err(invalid(
                "STRATA_WRITERS",
                &self.writers.to_string(),
                "must be at most 64 (one rollup shard each)",
            ));
        }
        if self.writers > self.db_pool_size {
            return Err(invalid("STRATA_WRITERS", &self.writers.to_string(), "must not exceed STRATA_DB_POOL_SIZE"));
        }
        Ok(())
    }
}

fn invalid(name: &str, value: &str, reason: &str) -> ConfigError {
    ConfigError { name: name.into(), value: value.into(), reason: reason.into() }
}

fn parse_with<T>(name: &str, v: &str, f: impl Fn(&str) -> Option<T>) -> Result<T, ConfigError> {
    f(v.trim()).ok_or_else(|| invalid(name, v, "could not be parsed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn secrets_are_read_but_never_shown_by_debug() {
        let secrets = [
            ("STRATA_ADMIN_TOKEN", "admin-8c1f"),
            ("STRATA_KEY_SECRET", "key-51a0"),
            ("STRATA_JWT_SECRET", "jwt-77e2"),
            ("STRATA_METRICS_TOKEN", "metrics-0d93"),
        ];
        let c = Config::from_vars(&vars(&secrets)).unwrap();
        let read =
            [&c.admin_token, &c.key_secret, &c.jwt_secret, &c.metrics_token].map(|s| s.as_ref().unwrap().expose());
        assert_eq!(read, secrets.map(|(_, v)| v));
        let shown = format!("{c:?}");
        for (_, value) in secrets {
            assert!(!shown.contains(value), "{value} in {shown}");
        }
        assert_eq!(shown.matches("Secret(<redacted>)").count(), 4, "{shown}");
    }

    #[test]
    fn invalid_setting_is_named_in_the_error() {
        let err = Config::from_vars(&vars(&[("STRATA_FUTURE_SKEW", "soon")])).unwrap_err();
        assert_eq!(err.name, "STRATA_FUTURE_SKEW");
        let err = Config::from_vars(&vars(&[("STRATA_KEY_CACHE_TTL", "60s")])).unwrap_err();
        assert_eq!(err.name, "STRATA_KEY_CACHE_TTL");
        let err = Config::from_vars(&vars(&[("STRATA_LISTEN", "nowhere")])).unwrap_err();
        assert!(err.to_string().contains("STRATA_LISTEN"), "{err}");
    }

    #[test]
    fn token_lifetime_and_auth_rate_limit_are_configurable() {
        let c = Config::default();
        assert_eq!(c.token_ttl, Duration::from_secs(7 * 86_400));
        assert_eq!(c.auth_rate_limit.map(|l| (l.requests, l.window)), Some((10, Duration::from_secs(900))));
        let c = Config::from_vars(&vars(&[("STRATA_TOKEN_TTL", "1h"), ("STRATA_AUTH_RATE_LIMIT", "off")])).unwrap();
        assert_eq!((c.token_ttl, c.auth_rate_limit), (Duration::from_secs(3600), None));
        let c = Config::from_vars(&vars(&[("STRATA_AUTH_RATE_LIMIT", "5/1m")])).unwrap();
        assert_eq!(c.auth_rate_limit.map(|l| (l.requests, l.window)), Some((5, Duration::from_secs(60))));
        let err = Config::from_vars(&vars(&[("STRATA_AUTH_RATE_LIMIT", "lots")])).unwrap_err();
        assert_eq!(err.name, "STRATA_AUTH_RATE_LIMIT");
        let err = Config::from_vars(&vars(&[("STRATA_TOKEN_TTL", "0s")])).unwrap_err();
        assert_eq!(err.name, "STRATA_TOKEN_TTL");
    }

    #[test]
    fn ingestion_and_analytics_rate_limits_are_off_by_default_and_configurable() {
        let c = Config::default();
        assert_eq!((c.ingest_rate_limit, c.ingest_event_rate_limit, c.analytics_rate_limit), (None, None, None));
        let c = Config::from_vars(&vars(&[
            ("STRATA_INGEST_RATE_LIMIT", "100/1s"),
            ("STRATA_INGEST_EVENT_RATE_LIMIT", "5000/1s"),
            ("STRATA_ANALYTICS_RATE_LIMIT", "60/1m"),
        ]))
        .unwrap();
        assert_eq!(c.ingest_rate_limit, Some(RateLimit { requests: 100, window: Duration::from_secs(1) }));
        assert_eq!(c.ingest_event_rate_limit, Some(RateLimit { requests: 5000, window: Duration::from_secs(1) }));
        assert_eq!(c.analytics_rate_limit, Some(RateLimit { requests: 60, window: Duration::from_secs(60) }));
        let c = Config::from_vars(&vars(&[("STRATA_INGEST_RATE_LIMIT", "off")])).unwrap();
        assert_eq!(c.ingest_rate_limit, None);
        for name in ["STRATA_INGEST_RATE_LIMIT", "STRATA_INGEST_EVENT_RATE_LIMIT", "STRATA_ANALYTICS_RATE_LIMIT"] {
            let err = Config::from_vars(&vars(&[(name, "100/fortnight")])).unwrap_err();
            assert_eq!(err.name, name);
        }
    }

    #[test]
    fn header_timeout_is_configurable_and_must_be_positive() {
        assert_eq!(Config::default().header_timeout, Duration::from_secs(10));
        let c = Config::from_vars(&vars(&[("STRATA_HEADER_TIMEOUT", "2s")])).unwrap();
        assert_eq!(c.header_timeout, Duration::from_secs(2));
        let err = Config::from_vars(&vars(&[("STRATA_HEADER_TIMEOUT", "0s")])).unwrap_err();
        assert_eq!(err.name, "STRATA_HEADER_TIMEOUT");
    }

    #[test]
    fn the_bucket_cap_is_configurable_within_bounds() {
        assert_eq!(Config::default().max_buckets, 10_000);
        let cap = |v: &str| Config::from_vars(&vars(&[("STRATA_MAX_BUCKETS", v)])).map(|c| c.max_buckets);
        assert_eq!(cap("500").unwrap(), 500);
        assert_eq!(cap("0").unwrap_err().name, "STRATA_MAX_BUCKETS");
        assert_eq!(cap("many").unwrap_err().name, "STRATA_MAX_BUCKETS");
    }

    #[test]
    fn cache_warming_is_off_by_default_and_bounded() {
        assert_eq!(Config::default().cache_warm, None);
        let warm = |v: &str| Config::from_vars(&vars(&[("STRATA_CACHE_WARM", v)])).map(|c| c.cache_warm);
        assert_eq!(warm("off").unwrap(), None);
        assert_eq!(warm("on").unwrap(), Some(5));
        assert_eq!(warm("12").unwrap(), Some(12));
        assert_eq!(warm("51").unwrap_err().name, "STRATA_CACHE_WARM");
        assert_eq!(warm("lots").unwrap_err().name, "STRATA_CACHE_WARM");
    }

    #[test]
    fn env_overrides_defaults() {
        let c = Config::from_vars(&vars(&[
            ("STRATA_LISTEN", "127.0.0.1:0"),
            ("STRATA_CORS_ORIGINS", "https://a.example, https://b.example"),
            ("STRATA_INGEST_QUEUE_CAPACITY", "20000"),
        ]))
        .unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:0");
        assert_eq!(c.cors_origins, vec!["https://a.example", "https://b.example"]);
        assert_eq!(c.ingest_queue_capacity, 20_000);
        assert_eq!(c.batch_max_events, 10_000);
    }
}
