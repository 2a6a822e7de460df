//! API keys: generation (`ak_` + 64 hex, shown once), HMAC-SHA256 hashing with the server secret,
//! the in-process lookup caches that keep authentication off the database on the ingest path, and
//! batched usage counters (`last_used_at`, `usage_count`).
//!
//! Guessing keys costs the guesser, not the server ([`KeyAuth::authenticate`]):
//! - keys that exist (valid, revoked or expired) and keys that do not live in two caches of their
//!   own, so a flood of random keys can never push a real key out (`STRATA_KEY_CACHE_CAPACITY`
//!   bounds the first, [`UNKNOWN_CACHE_CAPACITY`] the second);
//! - unknown keys are counted per client address (`STRATA_KEY_FAILURE_RATE_LIMIT`); past the limit,
//!   a key that is not already cached as existing is refused before any database query;
//! - at most [`KeyAuth::lookups_max`] lookups hold a pooled connection at once, so keys never seen
//!   before cannot take every connection from ingestion and analytics.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::ratelimit::{Decision, Limiter};
use crate::bus::{Bus, Event, Message};
use crate::config::Config;

/// Characters of the key kept in clear to tell keys apart ("ak_" + 9 hex).
pub const KEY_PREFIX_CHARS: usize = 12;
/// Unknown keys remembered at most (32-byte hashes: a few MiB), apart from the keys that exist.
pub const UNKNOWN_CACHE_CAPACITY: u64 = 100_000;
/// How long an unknown key is remembered. A key that does not exist never comes to exist (new keys
/// are random), so this only trades memory against repeated lookups of the same wrong key (a typo
/// deployed on a busy site).
const UNKNOWN_CACHE_TTL: Duration = Duration::from_secs(60);
/// Share of the pool that key lookups may hold at once: a quarter, at least one connection.
const LOOKUP_POOL_SHARE: usize = 4;

/// A freshly generated key: `secret` is shown once and never stored.
pub struct NewKey {
    /// The full key, `ak_` + 64 lowercase hex.
    pub secret: String,
    /// Its HMAC-SHA256.
    pub hash: Vec<u8>,
    /// Its first [`KEY_PREFIX_CHARS`] characters.
    pub prefix: String,
}

/// Makes a random key and its stored forms.
pub fn generate(secret: &[u8]) -> NewKey {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let key = format!("ak_{}", hex::encode(bytes));
    NewKey { hash: hash_key(secret, &key), prefix: key[..KEY_PREFIX_CHARS].to_string(), secret: key }
}

/// HMAC-SHA256 of `key` under the server secret.
pub fn hash_key(secret: &[u8], key: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(key.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// True when `key` has the shape of a key, so malformed ones never reach the database.
pub fn well_formed(key: &str) -> bool {
    key.len() == 67 && key.starts_with("ak_") && key[3..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// What a valid key grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    /// The key's id.
    pub key_id: Uuid,
    /// The app it writes to.
    pub app_id: Uuid,
    revoked: bool,
    expires_at: Option<DateTime<Utc>>,
    hash: Vec<u8>,
}

/// Why a key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyRejection {
    /// No key was sent.
    #[error("an API key is required (X-API-Key header or apiKey body field)")]
    Missing,
    /// Unknown or malformed key.
    #[error("invalid API key")]
    Invalid,
    /// The key was revoked (or its app deleted).
    #[error("API key has been revoked")]
    Revoked,
    /// The key is past its expiry.
    #[error("API key has expired")]
    Expired,
    /// Too many unknown keys came from this client address (`STRATA_KEY_FAILURE_RATE_LIMIT`), and
    /// this key is not known to exist: refused without a lookup.
    #[error("too many invalid API keys from this address")]
    TooManyFailures {
        /// When the address may try an unknown key again.
        retry_after: Duration,
    },
}

/// Authentication failed for a reason other than the key itself.
#[derive(Debug, thiserror::Error)]
#[error("key lookup failed: {0}")]
pub struct LookupError(pub String);

/// Key authentication with in-process caches (TTL ≤ 30 s for keys that exist), a per-address limit
/// on unknown keys, and batched usage counting.
#[derive(Clone)]
pub struct KeyAuth {
    pool: Pool,
    secret: Arc<Vec<u8>>,
    /// Keys that exist, by HMAC: valid, revoked or expired (revocation evicts them).
    known: moka::future::Cache<Vec<u8>, KeyInfo>,
    /// Keys that do not exist, by HMAC: a separate cache, so they never evict `known` entries.
    unknown: moka::future::Cache<Vec<u8>, ()>,
    /// Unknown keys per client address (`None`: no limit).
    failures: Option<Arc<Limiter>>,
    /// Lookups allowed to hold a pooled connection at once.
    lookups: Arc<Semaphore>,
    /// Longest wait for a lookup slot (`STRATA_DB_TIMEOUT`, as for a pooled connection).
    lookup_wait: Duration,
    usage: Arc<Mutex<UsageCounts>>,
}

/// Why a lookup gave no key.
#[derive(Debug)]
enum Miss {
    /// No such key (cached as unknown).
    NotFound,
    /// The database failed (nothing cached).
    Failed(LookupError),
}

/// Per key: uses since the last flush and the latest use.
type UsageCounts = HashMap<Uuid, (i64, DateTime<Utc>)>;

const LOOKUP: &str =
    "SELECT k.id, k.app_id, k.status = 'revoked' OR a.deleted_at IS NOT NULL, k.expires_at, k.key_hash \
     FROM api_keys k JOIN apps a ON a.id = k.app_id WHERE k.key_hash = $1";

impl KeyAuth {
    /// A key authenticator with the key cache settings of `cfg` (`STRATA_KEY_CACHE_TTL`,
    /// `STRATA_KEY_CACHE_CAPACITY`), counting unknown keys per address in `failures`.
    pub fn new(pool: Pool, secret: Vec<u8>, cfg: &Config, failures: Option<Arc<Limiter>>) -> KeyAuth {
        let known =
            moka::future::Cache::builder().max_capacity(cfg.key_cache_capacity).time_to_live(cfg.key_cache_ttl).build();
        let unknown =
            moka::future::Cache::builder().max_capacity(UNKNOWN_CACHE_CAPACITY).time_to_live(UNKNOWN_CACHE_TTL).build();
        let lookups = Arc::new(Semaphore::new(Self::lookups_max(cfg.db_pool_size)));
        KeyAuth {
            pool,
            secret: Arc::new(secret),
            known,
            unknown,
            failures,
            lookups,
            lookup_wait: cfg.db_timeout,
            usage: Arc::default(),
        }
    }

    /// Key lookups holding a pooled connection at once, for a pool of `pool_size`.
    pub fn lookups_max(pool_size: usize) -> usize {
        (pool_size / LOOKUP_POOL_SHARE).max(1)
    }

    /// Checks `key`, sent from `client`, at instant `now`; counts the use when it is valid. A key
    /// cached as existing is answered from the cache; any other key from an address over
    /// `STRATA_KEY_FAILURE_RATE_LIMIT` is refused before the database is asked.
    pub async fn authenticate(
        &self,
        client: IpAddr,
        key: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Result<KeyInfo, KeyRejection>, LookupError> {
        let Some(key) = key.map(str::trim) else { return Ok(Err(KeyRejection::Missing)) };
        if !well_formed(key) {
            return Ok(Err(KeyRejection::Invalid));
        }
        let hash = hash_key(&self.secret, key);
        let info = match self.known.get(&hash).await {
            Some(info) => info,
            None => match self.find(client, hash.clone()).await? {
                Ok(info) => info,
                Err(rejection) => return Ok(Err(rejection)),
            },
        };
        // Compared again in constant time: the cache's and the index's equality checks are not.
        if !bool::from(info.hash.ct_eq(&hash)) {
            return Ok(Err(KeyRejection::Invalid));
        }
        if info.revoked {
            return Ok(Err(KeyRejection::Revoked));
        }
        if info.expires_at.is_some_and(|e| e <= now) {
            return Ok(Err(KeyRejection::Expired));
        }
        self.count_use(info.key_id, now);
        Ok(Ok(info))
    }

    /// A key not cached as existing: refused when `client` is over its unknown-key limit, else
    /// looked up (one lookup per key at a time, at most [`KeyAuth::lookups_max`] at once) unless
    /// cached as unknown. An unknown key takes one token of the client's limit.
    async fn find(&self, client: IpAddr, hash: Vec<u8>) -> Result<Result<KeyInfo, KeyRejection>, LookupError> {
        let address = client.to_string();
        if let Some(limiter) = &self.failures {
            if let Decision::Limited { retry_after } = limiter.peek(&address, 1).await {
                return Ok(Err(KeyRejection::TooManyFailures { retry_after }));
            }
        }
        if self.unknown.get(&hash).await.is_none() {
            let (pool, lookups, wait, lookup_hash) =
                (self.pool.clone(), self.lookups.clone(), self.lookup_wait, hash.clone());
            let found = self
                .known
                .try_get_with(hash.clone(), async move {
                    let busy = || Miss::Failed(LookupError("every key lookup slot stayed busy".to_owned()));
                    let _slot = tokio::time::timeout(wait, lookups.acquire_owned())
                        .await
                        .map_err(|_| busy())?
                        .map_err(|_| busy())?;
                    lookup(&pool, &lookup_hash).await.map_err(Miss::Failed)?.ok_or(Miss::NotFound)
                })
                .await;
            match found {
                Ok(info) => return Ok(Ok(info)),
                Err(miss) => match &*miss {
                    Miss::Failed(e) => return Err(LookupError(e.0.clone())),
                    Miss::NotFound => self.unknown.insert(hash, ()).await,
                },
            }
        }
        if let Some(limiter) = &self.failures {
            // Refused or not, this answer is given: the next request from the address is the one
            // the limit stops.
            limiter.check(&address, 1).await;
        }
        Ok(Err(KeyRejection::Invalid))
    }

    /// Drops the cached answer for the key whose HMAC is `hash`, so its revocation bites at once in
    /// this process (other processes: the cache bus, or the cache TTL at worst).
    pub async fn evict(&self, hash: &[u8]) {
        self.known.invalidate(hash).await;
    }

    /// Evicts the keys other instances revoke, as their revocations arrive on `bus`.
    pub fn follow_revocations(&self, bus: &Bus) {
        let keys = self.clone();
        bus.subscribe(Box::new(move |event| {
            if let Event::Received(Message::KeyRevoked { hash }) = event {
                let (keys, hash) = (keys.clone(), hash.clone());
                tokio::spawn(async move { keys.evict(&hash).await });
            }
        }));
    }

    /// Drops every cached answer (used by revocation in this process).
    pub fn evict_all(&self) {
        self.known.invalidate_all();
    }

    fn count_use(&self, key_id: Uuid, now: DateTime<Utc>) {
        let mut usage = self.usage.lock().expect("usage lock");
        let entry = usage.entry(key_id).or_insert((0, now));
        entry.0 += 1;
        entry.1 = entry.1.max(now);
    }

    /// Writes the accumulated usage counters in one statement; returns how many keys were updated.
    pub async fn flush_usage(&self) -> Result<usize, LookupError> {
        const SQL: &str = "UPDATE api_keys SET usage_count = usage_count + d.n, \
             last_used_at = GREATEST(last_used_at, d.t) \
             FROM unnest($1::uuid[], $2::int8[], $3::timestamptz[]) AS d(id, n, t) WHERE api_keys.id = d.id";
        let drained: Vec<(Uuid, (i64, DateTime<Utc>))> = self.usage.lock().expect("usage lock").drain().collect();
        if drained.is_empty() {
            return Ok(0);
        }
        let ids: Vec<Uuid> = drained.iter().map(|(id, _)| *id).collect();
        let counts: Vec<i64> = drained.iter().map(|(_, (n, _))| *n).collect();
        let times: Vec<DateTime<Utc>> = drained.iter().map(|(_, (_, t))| *t).collect();
        let result = async {
            let client = self.pool.get().await.map_err(|e| LookupError(e.to_string()))?;
            client.execute(SQL, &[&ids, &counts, &times]).await.map_err(|e| LookupError(e.to_string()))
        }
        .await;
        if let Err(e) = result {
            // Put the counts back so they are written by a later flush.
            let mut usage = self.usage.lock().expect("usage lock");
            for (id, (n, t)) in drained {
                let entry = usage.entry(id).or_insert((0, t));
                entry.0 += n;
                entry.1 = entry.1.max(t);
            }
            return Err(e);
        }
        Ok(ids.len())
    }

    /// Flushes usage every `interval` until `stop`, then once more.
    pub async fn usage_flush_loop(self, interval: Duration, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(interval) => {}
            }
            if let Err(e) = self.flush_usage().await {
                tracing::warn!(error = %e, "could not write key usage counters");
            }
        }
        if let Err(e) = self.flush_usage().await {
            tracing::warn!(error = %e, "could not write key usage counters at shutdown");
        }
    }
}

async fn lookup(pool: &Pool, hash: &[u8]) -> Result<Option<KeyInfo>, LookupError> {
    let client = pool.get().await.map_err(|e| LookupError(e.to_string()))?;
    let row = client.query_opt(LOOKUP, &[&hash]).await.map_err(|e| LookupError(e.to_string()))?;
    Ok(row.map(|r| KeyInfo {
        key_id: r.get(0),
        app_id: r.get(1),
        revoked: r.get(2),
        expires_at: r.get(3),
        hash: r.get(4),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_original_shape_and_hash_reproducibly() {
        let k = generate(b"secret");
        assert!(well_formed(&k.secret), "{}", k.secret);
        assert_eq!(k.prefix, &k.secret[..12]);
        assert_eq!(k.hash, hash_key(b"secret", &k.secret));
        assert_ne!(k.hash, hash_key(b"other secret", &k.secret));
        assert_eq!(k.hash.len(), 32);
    }

    #[test]
    fn key_cache_capacity_and_the_unknown_key_limit_are_configurable() {
        use crate::config::RateLimit;
        let vars = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let c = Config::default();
        assert_eq!(c.key_cache_capacity, 100_000);
        assert_eq!(c.key_failure_rate_limit, Some(RateLimit { requests: 20, window: Duration::from_secs(60) }));
        let c =
            Config::from_vars(&vars(&[("STRATA_KEY_CACHE_CAPACITY", "500"), ("STRATA_KEY_FAILURE_RATE_LIMIT", "off")]))
                .unwrap();
        assert_eq!((c.key_cache_capacity, c.key_failure_rate_limit), (500, None));
        for (name, bad) in [("STRATA_KEY_CACHE_CAPACITY", "0"), ("STRATA_KEY_FAILURE_RATE_LIMIT", "many")] {
            assert_eq!(Config::from_vars(&vars(&[(name, bad)])).unwrap_err().name, name);
        }
        assert_eq!((KeyAuth::lookups_max(16), KeyAuth::lookups_max(2)), (4, 1));
    }

    #[test]
    fn malformed_keys_are_refused_without_lookup() {
        assert!(!well_formed("ak_123"));
        assert!(!well_formed(&format!("xx_{}", "a".repeat(64))));
        assert!(!well_formed(&format!("ak_{}", "g".repeat(64))));
        assert!(well_formed(&format!("ak_{}", "A1".repeat(32))));
    }
}
