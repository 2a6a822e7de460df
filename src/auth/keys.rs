//! API keys: generation (`ak_` + 64 hex, shown once), HMAC-SHA256 hashing with the server secret,
//! the in-process lookup cache that keeps authentication off the database on the ingest path, and
//! batched usage counters (`last_used_at`, `usage_count`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Characters of the key kept in clear to tell keys apart ("ak_" + 9 hex).
pub const KEY_PREFIX_CHARS: usize = 12;
/// Keys cached in process at most; negative answers are cached too, so random keys cost one query each.
const KEY_CACHE_CAPACITY: u64 = 100_000;

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
}

/// Authentication failed for a reason other than the key itself.
#[derive(Debug, thiserror::Error)]
#[error("key lookup failed: {0}")]
pub struct LookupError(pub String);

/// Key authentication with an in-process cache (TTL ≤ 30 s) and batched usage counting.
#[derive(Clone)]
pub struct KeyAuth {
    pool: Pool,
    secret: Arc<Vec<u8>>,
    cache: moka::future::Cache<Vec<u8>, Option<KeyInfo>>,
    usage: Arc<Mutex<UsageCounts>>,
}

/// Per key: uses since the last flush and the latest use.
type UsageCounts = HashMap<Uuid, (i64, DateTime<Utc>)>;

const LOOKUP: &str =
    "SELECT k.id, k.app_id, k.status = 'revoked' OR a.deleted_at IS NOT NULL, k.expires_at, k.key_hash \
     FROM api_keys k JOIN apps a ON a.id = k.app_id WHERE k.key_hash = $1";

impl KeyAuth {
    /// A key authenticator whose cache entries live `ttl`.
    pub fn new(pool: Pool, secret: Vec<u8>, ttl: Duration) -> KeyAuth {
        let cache = moka::future::Cache::builder().max_capacity(KEY_CACHE_CAPACITY).time_to_live(ttl).build();
        KeyAuth { pool, secret: Arc::new(secret), cache, usage: Arc::default() }
    }

    /// Checks `key` at instant `now`; counts the use when it is valid.
    pub async fn authenticate(
        &self,
        key: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Result<KeyInfo, KeyRejection>, LookupError> {
        let Some(key) = key.map(str::trim) else { return Ok(Err(KeyRejection::Missing)) };
        if !well_formed(key) {
            return Ok(Err(KeyRejection::Invalid));
        }
        let hash = hash_key(&self.secret, key);
        let pool = self.pool.clone();
        let lookup_hash = hash.clone();
        let found = self
            .cache
            .try_get_with(hash.clone(), async move { lookup(&pool, &lookup_hash).await })
            .await
            .map_err(|e| LookupError(e.to_string()))?;
        let Some(info) = found else { return Ok(Err(KeyRejection::Invalid)) };
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

    /// Drops the cached answer for the key whose HMAC is `hash`, so its revocation bites at once in
    /// this process (other processes: the cache bus, or the cache TTL at worst).
    pub async fn evict(&self, hash: &[u8]) {
        self.cache.invalidate(hash).await;
    }

    /// Drops every cached answer (used by revocation in this process).
    pub fn evict_all(&self) {
        self.cache.invalidate_all();
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
    fn malformed_keys_are_refused_without_lookup() {
        assert!(!well_formed("ak_123"));
        assert!(!well_formed(&format!("xx_{}", "a".repeat(64))));
        assert!(!well_formed(&format!("ak_{}", "g".repeat(64))));
        assert!(well_formed(&format!("ak_{}", "A1".repeat(32))));
    }
}
