//! The invalidation bus: one Redis pub/sub channel (`{prefix}bus`) shared by every instance.
//! Messages are `gen:{app}:{instance}`: the app's data changed on `instance`; every other instance
//! bumps its local generation of the app, which drops its L1 entries for it. `key:{hash hex}:{instance}`
//! announces a revoked API key: every other instance evicts it from its key cache at once.
//!
//! [`listen_loop`] subscribes at start and after any disconnect (waiting [`RECONNECT_DELAY`]); on
//! each (re)subscription it drops all of L1, since messages may have been missed meanwhile.

use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Inner;

/// Wait between subscription attempts.
pub const RECONNECT_DELAY: Duration = Duration::from_millis(500);

/// The bus message announcing that `app` changed on `instance`.
pub fn generation_message(app: Uuid, instance: Uuid) -> String {
    format!("gen:{app}:{instance}")
}

/// Applies bus messages to the cache until `stop` is cancelled or the cache is gone.
pub async fn listen_loop(client: redis::Client, channel: String, cache: Weak<Inner>, stop: CancellationToken) {
    loop {
        match subscribe(&client, &channel).await {
            Ok(mut pubsub) => {
                let Some(inner) = cache.upgrade() else { return };
                inner.l1_clear();
                inner.bus_connected.store(true, Ordering::Release);
                drop(inner);
                tracing::debug!(%channel, "subscribed to the cache bus");
                let mut messages = pubsub.on_message();
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        msg = messages.next() => match msg {
                            Some(msg) => {
                                let Some(inner) = cache.upgrade() else { return };
                                if let Ok(text) = msg.get_payload::<String>() {
                                    inner.apply_message(&text);
                                }
                            }
                            None => break,
                        },
                    }
                }
                if let Some(inner) = cache.upgrade() {
                    inner.bus_connected.store(false, Ordering::Release);
                }
                tracing::warn!(%channel, "cache bus disconnected; resubscribing");
            }
            Err(e) => {
                metrics::counter!("strata_redis_errors_total").increment(1);
                tracing::debug!(error = %e, "cache bus subscription failed");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RECONNECT_DELAY) => {}
        }
    }
}

async fn subscribe(client: &redis::Client, channel: &str) -> redis::RedisResult<redis::aio::PubSub> {
    let connect = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        Ok(pubsub)
    };
    match tokio::time::timeout(Duration::from_secs(2), connect).await {
        Ok(r) => r,
        Err(_) => Err(redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))),
    }
}

/// The bus message announcing that the key whose HMAC is `hash` was revoked on `instance`.
pub fn key_message(hash: &[u8], instance: Uuid) -> String {
    format!("key:{}:{instance}", hex::encode(hash))
}

/// `(key hash, instance)` of a key revocation message.
pub fn parse_key(text: &str) -> Option<(Vec<u8>, Uuid)> {
    let rest = text.strip_prefix("key:")?;
    let (hash, instance) = rest.split_once(':')?;
    Some((hex::decode(hash).ok()?, instance.parse().ok()?))
}

/// `(app, instance)` of a generation message.
pub fn parse_generation(text: &str) -> Option<(Uuid, Uuid)> {
    let rest = text.strip_prefix("gen:")?;
    let (app, instance) = rest.split_once(':')?;
    Some((app.parse().ok()?, instance.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_messages_round_trip_and_other_kinds_are_ignored() {
        let (app, instance) = (Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(parse_generation(&generation_message(app, instance)), Some((app, instance)));
        assert_eq!(parse_generation("key:revoked:123"), None);
        assert_eq!(parse_generation("gen:not-a-uuid:x"), None);
        let hash = vec![0xab, 0x01, 0xff];
        assert_eq!(parse_key(&key_message(&hash, instance)), Some((hash, instance)));
        assert_eq!(parse_key(&generation_message(app, instance)), None);
        assert_eq!(parse_key("key:zz:x"), None);
    }
}
