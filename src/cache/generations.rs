//! App generations: what makes cached answers of an app unreachable when its data changes, without
//! scanning a key.
//!
//! - Local ([`Generations::local`]): a counter per app in this process, part of every L1 key,
//!   bumped at once by a commit here or a [`Message::Generation`] from another instance.
//! - Shared ([`Generations::bump_remote`]): the app's generation in Redis, part of every L2 key,
//!   bumped by one script that also deletes the personal answers listed with it and publishes the
//!   bump on the bus. A bump Redis did not take is kept and retried by [`retry_bumps_loop`] until it
//!   does, so a lost bump cannot leave old L2 answers reachable for their whole TTL.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use metrics::counter;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::keys::QueryKey;
use super::l2::L2;
use crate::bus::{Bus, Message};
use crate::config::Config;

/// Wait between retries of failed generation bumps.
const BUMP_RETRY_DELAY: Duration = Duration::from_millis(250);

/// The lifetime of generation keys in Redis: they outlive every answer stored under them.
pub(super) fn key_ttl(cfg: &Config) -> Duration {
    cfg.cache_ttl_recent.max(cfg.cache_ttl_closed).saturating_mul(2)
}

/// The generations of every app this process has seen change.
pub(super) struct Generations {
    /// Per-app local generations. A plain mutex: held for a map lookup only, never across an await.
    local: Mutex<HashMap<Uuid, u64>>,
    /// Where the shared generations live (none without Redis).
    l2: Option<L2>,
    /// Where bumps are announced (by the bump script).
    bus: Bus,
    /// Apps whose Redis generation bump failed, with the personal answers to delete with it.
    pending: Mutex<HashMap<Uuid, Vec<QueryKey>>>,
}

impl Generations {
    pub(super) fn new(l2: Option<L2>, bus: Bus) -> Generations {
        Generations { local: Mutex::new(HashMap::new()), l2, bus, pending: Mutex::new(HashMap::new()) }
    }

    /// The local generation of `app` (0 until it first changes).
    pub(super) fn local(&self, app: Uuid) -> u64 {
        *self.local.lock().expect("gens lock").get(&app).unwrap_or(&0)
    }

    /// Makes the L1 entries of `app` unreachable in this process.
    pub(super) fn bump_local(&self, app: Uuid) {
        *self.local.lock().expect("gens lock").entry(app).or_insert(0) += 1;
    }

    /// Bumps the Redis generations of `apps` (deleting the personal answers listed with each) and
    /// tells the other instances; failures are retried.
    pub(super) async fn bump_remote(self: Arc<Self>, apps: Vec<(Uuid, Vec<QueryKey>)>) {
        let Some(l2) = &self.l2 else { return };
        for (app, purge) in apps {
            let message = self.bus.encode(&Message::Generation { app });
            if let Err(e) = l2.bump(app, &purge, self.bus.channel(), &message).await {
                counter!("strata_redis_errors_total").increment(1);
                tracing::debug!(error = %e, %app, "could not bump the app's cache generation; will retry");
                self.pending.lock().expect("pending lock").entry(app).or_default().extend(purge);
            }
        }
    }
}

/// Retries failed generation bumps until they succeed, `stop` is cancelled or the cache is gone.
pub(super) async fn retry_bumps_loop(gens: Weak<Generations>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(BUMP_RETRY_DELAY) => {}
        }
        let Some(gens) = gens.upgrade() else { return };
        let apps: Vec<(Uuid, Vec<QueryKey>)> = gens.pending.lock().expect("pending lock").drain().collect();
        if !apps.is_empty() {
            gens.bump_remote(apps).await;
        }
    }
}
