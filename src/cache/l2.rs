//! The shared tier: Redis, configured `maxmemory-policy allkeys-lru`, reached through a
//! [`ConnectionManager`] created lazily (the server starts without Redis) that reconnects by
//! itself. Every command runs under a short timeout; a failure is counted and the caller goes on
//! without Redis.
//!
//! Keys (all under the configured prefix):
//! - `{prefix}gen:{app}`: the app's generation, an integer. When LRU evicted it, the next reader
//!   sets a random 62-bit epoch (`SET NX`), so entries stored under older generations stay
//!   unreachable: a missing counter never brings old answers back.
//! - `{prefix}v3:{app}:{gen}:{query}`: an answer (`{source}\n{data JSON}`, see [`super::Cached`]),
//!   with the TTL of its class.
//! - `{prefix}v3:{app}:user|{hmac}`: one user's activity ([`QueryKey::personal`]), one key per app
//!   and user whatever the generation: `{gen}\n{source}\n{data JSON}`, answered only while `{gen}`
//!   is the app's generation, stored only if it still is, deleted by an erasure in the same script
//!   that bumps the generation ([`L2::bump`]). The user id is in neither key nor value.
//! - `{prefix}bus`: the pub/sub channel of invalidations ([`crate::bus`]), where [`L2::bump`]
//!   publishes.
//! - `{prefix}warm:apps` and `{prefix}warm:q:{app}`: what cache warming remembers (sorted sets of the
//!   recently active apps by last request time, and of each app's queries by request count).
//!
//! One multiplexed connection carries every command: Redis is single-threaded, so more connections
//! would not answer sooner. What made L2 collapse under 100 concurrent identical requests was not the
//! connection but every request doing its own lookup (and, once lookups queued past the timeout, its
//! own computation): [`super::Cache`] now lets identical requests share one lookup.

use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use uuid::Uuid;

use super::keys::QueryKey;

/// Reads the app's generation (setting a fresh epoch when it is missing) and the answer stored
/// under it, in one round trip. KEYS[1] = generation key; ARGV = epoch, answer-key prefix and
/// suffix, generation lifetime (s). Returns `{gen}` or `{gen, answer}`.
const LOOKUP: &str = "local g = redis.call('GET', KEYS[1]) \
    if not g then redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[4]) g = redis.call('GET', KEYS[1]) end \
    return {g, redis.call('GET', ARGV[2] .. g .. ARGV[3])}";

/// Like [`LOOKUP`] for a personal answer: KEYS[1] = generation key, KEYS[2] = answer key; ARGV =
/// epoch, generation lifetime (s). The answer counts only when stored under the current generation.
const LOOKUP_PERSONAL: &str = "local g = redis.call('GET', KEYS[1]) \
    if not g then redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) g = redis.call('GET', KEYS[1]) end \
    local v = redis.call('GET', KEYS[2]) \
    if v and string.sub(v, 1, #g + 1) == g .. '\\n' then return {g, string.sub(v, #g + 2)} end \
    return {g}";

/// Stores a personal answer only while its generation is current (an erasure in between bumped it):
/// KEYS[1] = generation key, KEYS[2] = answer key; ARGV = generation, answer, TTL (s).
const STORE_PERSONAL: &str = "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end \
    redis.call('SET', KEYS[2], ARGV[1] .. '\\n' .. ARGV[2], 'EX', ARGV[3]) return 1";

/// Bumps the app's generation (a fresh epoch when missing: `INCR` would restart at 1 and could
/// revive old entries), deletes KEYS[2..] (an erased user's answers) and publishes the invalidation.
/// KEYS[1] = generation key; ARGV = epoch, channel, message, generation lifetime (s).
const BUMP: &str = "if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SET', KEYS[1], ARGV[1]) \
    else redis.call('INCR', KEYS[1]) end \
    redis.call('EXPIRE', KEYS[1], ARGV[4]) \
    for i = 2, #KEYS do redis.call('DEL', KEYS[i]) end \
    return redis.call('PUBLISH', ARGV[2], ARGV[3])";

/// Retries of one command inside the connection manager: the request's timeout bounds them anyway.
const CONNECT_RETRIES: usize = 1;

/// Longest wait for background commands (generation bumps, warming records, a lookup overtaken by
/// a computation): nobody waits for them, so they get longer than a request's lookup.
pub const BACKGROUND_TIMEOUT: Duration = Duration::from_secs(1);

/// Warming records expire after a week without requests.
const WARM_RECORD_TTL_SECS: u64 = 7 * 86_400;

/// Why Redis did not answer.
#[derive(Debug, thiserror::Error)]
pub enum L2Error {
    /// The command failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// No answer within the configured timeout.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// The answer had an unexpected shape.
    #[error("unexpected redis reply")]
    Reply,
}

/// An answer looked up in Redis.
#[derive(Debug)]
pub struct Lookup {
    /// The generation it was looked up under (store a computed answer under it).
    pub gen: String,
    /// The stored answer, if any.
    pub value: Option<Bytes>,
}

/// What cache warming remembers of one app.
#[derive(Debug, Clone, PartialEq)]
pub struct AppQueries {
    /// The app.
    pub app: Uuid,
    /// Unix seconds of its last request.
    pub last_seen: i64,
    /// Queries ([`super::Recipe`] as JSON) and their request counts.
    pub queries: Vec<(String, u64)>,
}

/// The Redis tier.
#[derive(Clone)]
pub struct L2 {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    /// Lifetime of a generation key: longer than any answer's, so that expiry (like eviction) only
    /// costs misses; refreshed by every bump.
    gen_ttl: Duration,
}

impl L2 {
    /// A tier for `url` (no connection is made yet).
    pub fn new(url: &str, prefix: &str, timeout: Duration, gen_ttl: Duration) -> Result<L2, redis::RedisError> {
        let client = redis::Client::open(url)?;
        // The manager's own response timeout only drops replies that never come; each caller bounds
        // its wait itself ([`L2::run`]), lookups by `timeout`, background commands longer.
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(100))))
            .set_response_timeout(Some(timeout.max(BACKGROUND_TIMEOUT)))
            .set_number_of_retries(CONNECT_RETRIES)
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client, cfg)?;
        Ok(L2 { conn, prefix: prefix.to_owned(), timeout, gen_ttl })
    }

    fn gen_key(&self, app: Uuid) -> String {
        format!("{}gen:{app}", self.prefix)
    }

    async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, L2Error> {
        self.run_within(cmd, self.timeout).await
    }

    async fn run_within<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd, limit: Duration) -> Result<T, L2Error> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(limit, cmd.query_async(&mut conn)).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(L2Error::Timeout(limit)),
        }
    }

    async fn run_pipe<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, L2Error> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(BACKGROUND_TIMEOUT, pipe.query_async(&mut conn)).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(L2Error::Timeout(BACKGROUND_TIMEOUT)),
        }
    }

    /// The request's wait for a lookup (`STRATA_REDIS_TIMEOUT`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The app's generation and the answer stored for `key` under it, within the request's timeout.
    pub async fn lookup(&self, key: &QueryKey) -> Result<Lookup, L2Error> {
        self.lookup_within(key, self.timeout).await
    }

    /// Like [`L2::lookup`], waiting up to `limit`.
    pub async fn lookup_within(&self, key: &QueryKey, limit: Duration) -> Result<Lookup, L2Error> {
        let mut cmd = redis::cmd("EVAL");
        if key.personal {
            cmd.arg(LOOKUP_PERSONAL).arg(2).arg(self.gen_key(key.app)).arg(key.personal_l2_key(&self.prefix));
            cmd.arg(epoch()).arg(self.gen_ttl_secs());
        } else {
            let full = key.l2_key(&self.prefix, "\u{0}");
            let (head, tail) = full.split_once('\u{0}').ok_or(L2Error::Reply)?;
            cmd.arg(LOOKUP).arg(1).arg(self.gen_key(key.app)).arg(epoch()).arg(head).arg(tail).arg(self.gen_ttl_secs());
        }
        let mut parts: Vec<Vec<u8>> = self.run_within(&cmd, limit).await?;
        if parts.is_empty() || parts.len() > 2 {
            return Err(L2Error::Reply);
        }
        let value = if parts.len() == 2 { parts.pop().map(Bytes::from) } else { None };
        let gen = String::from_utf8(parts.pop().ok_or(L2Error::Reply)?).map_err(|_| L2Error::Reply)?;
        Ok(Lookup { gen, value })
    }

    /// Stores `value` for `key` under `gen` for `ttl` (a personal answer only while `gen` is current).
    pub async fn store(&self, key: &QueryKey, gen: &str, value: &[u8], ttl: Duration) -> Result<(), L2Error> {
        if key.personal {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(STORE_PERSONAL).arg(2).arg(self.gen_key(key.app)).arg(key.personal_l2_key(&self.prefix));
            cmd.arg(gen).arg(value).arg(ttl.as_secs().max(1));
            return self.run_within::<i64>(&cmd, BACKGROUND_TIMEOUT).await.map(drop);
        }
        let mut cmd = redis::cmd("SET");
        cmd.arg(key.l2_key(&self.prefix, gen)).arg(value).arg("EX").arg(ttl.as_secs().max(1));
        self.run_within::<()>(&cmd, BACKGROUND_TIMEOUT).await
    }

    /// Bumps `app`'s generation, deletes the personal answers `purge` (keys of `app`) and publishes
    /// `message` on the bus's `channel`, in one script.
    pub async fn bump(&self, app: Uuid, purge: &[QueryKey], channel: &str, message: &str) -> Result<(), L2Error> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(BUMP).arg(1 + purge.len()).arg(self.gen_key(app));
        for key in purge {
            cmd.arg(key.personal_l2_key(&self.prefix));
        }
        cmd.arg(epoch()).arg(channel).arg(message).arg(self.gen_ttl_secs());
        self.run_within::<i64>(&cmd, BACKGROUND_TIMEOUT).await.map(|_| ())
    }

    fn warm_apps_key(&self) -> String {
        format!("{}warm:apps", self.prefix)
    }

    fn warm_queries_key(&self, app: Uuid) -> String {
        format!("{}warm:q:{app}", self.prefix)
    }

    /// Adds request counts to the warming records: per app, its last request time (unix seconds) and
    /// `(query, requests since the last call)`. Keeps at most `max_apps` apps and `max_queries`
    /// queries per app (the most active / most requested).
    pub async fn record_queries(
        &self,
        apps: &[AppQueries],
        max_apps: usize,
        max_queries: usize,
    ) -> Result<(), L2Error> {
        if apps.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        let apps_key = self.warm_apps_key();
        for a in apps {
            let key = self.warm_queries_key(a.app);
            pipe.zadd(&apps_key, a.app.to_string(), a.last_seen).ignore();
            for (query, n) in &a.queries {
                pipe.zincr(&key, query, *n).ignore();
            }
            pipe.zremrangebyrank(&key, 0, -(max_queries as isize) - 1).ignore();
            pipe.expire(&key, WARM_RECORD_TTL_SECS as i64).ignore();
        }
        pipe.zremrangebyrank(&apps_key, 0, -(max_apps as isize) - 1).ignore();
        pipe.expire(&apps_key, WARM_RECORD_TTL_SECS as i64).ignore();
        self.run_pipe::<()>(&pipe).await
    }

    /// The warming records: apps last active at or after `since` (unix seconds; at most `max_apps`,
    /// most recent first) with their last request time and their `top` most requested queries and
    /// counts.
    pub async fn recorded_queries(&self, since: i64, max_apps: usize, top: usize) -> Result<Vec<AppQueries>, L2Error> {
        let mut cmd = redis::cmd("ZRANGE");
        cmd.arg(self.warm_apps_key()).arg("+inf").arg(since).arg("BYSCORE").arg("REV");
        cmd.arg("LIMIT").arg(0).arg(max_apps).arg("WITHSCORES");
        let apps: Vec<(String, f64)> = self.run_within(&cmd, BACKGROUND_TIMEOUT).await?;
        let apps: Vec<(Uuid, i64)> =
            apps.into_iter().filter_map(|(a, seen)| Some((a.parse().ok()?, seen as i64))).collect();
        if apps.is_empty() || top == 0 {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (app, _) in &apps {
            pipe.zrevrange_withscores(self.warm_queries_key(*app), 0, top as isize - 1);
        }
        let queries: Vec<Vec<(String, f64)>> = self.run_pipe(&pipe).await?;
        Ok(apps
            .into_iter()
            .zip(queries)
            .map(|((app, last_seen), qs)| AppQueries {
                app,
                last_seen,
                queries: qs.into_iter().map(|(q, n)| (q, n.max(0.0) as u64)).collect(),
            })
            .collect())
    }

    fn gen_ttl_secs(&self) -> u64 {
        self.gen_ttl.as_secs().max(1)
    }

    /// Warns once when Redis would not evict like a cache.
    pub async fn warn_unless_lru(&self) {
        match self.maxmemory_policy().await {
            Ok(policy) if policy != "allkeys-lru" => {
                tracing::warn!(%policy, "Redis maxmemory-policy is not allkeys-lru; cache entries may fill it up");
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "could not read Redis maxmemory-policy"),
        }
    }

    /// Redis's `maxmemory-policy`.
    pub async fn maxmemory_policy(&self) -> Result<String, L2Error> {
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("GET").arg("maxmemory-policy");
        let reply: Vec<String> = self.run(&cmd).await?;
        reply.into_iter().nth(1).ok_or(L2Error::Reply)
    }
}

/// A random generation epoch: far from any counter an app reached before, with room to `INCR`.
fn epoch() -> u64 {
    rand::random::<u64>() >> 2
}
