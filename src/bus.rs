//! The invalidation bus: one Redis pub/sub channel (`{prefix}bus`) shared by every instance of a
//! deployment, carrying typed [`Message`]s to the modules that subscribe ([`Bus::subscribe`]):
//! - [`Message::Generation`]: an app's data changed on another instance; the cache bumps its local
//!   generation of the app, which drops its L1 entries for it (published by the cache's generation
//!   bump script, in the same round trip as the bump: see [`crate::cache::l2`]).
//! - [`Message::KeyRevoked`]: an API key was revoked on another instance; key authentication
//!   evicts it from its key cache at once ([`crate::auth::keys::KeyAuth::follow_revocations`]).
//!
//! # Wire format
//! `gen:{app}:{instance}` and `key:{key HMAC, hex}:{instance}`, where `instance` names the sender,
//! so an instance ignores its own messages. Instances of one deployment must understand each other
//! during a rolling upgrade: change a payload only with a new kind, never an existing one.
//!
//! # Lifetime
//! [`Bus::start`] spawns the listener (`listen_loop`), which subscribes at start and after any disconnect
//! (waiting [`RECONNECT_DELAY`]); each (re)subscription is announced to the subscribers as
//! [`Event::Subscribed`], since messages may have been missed meanwhile (the cache then drops all
//! of L1). The bus runs when Redis is the cache's shared tier (`REDIS_URL` set and
//! `STRATA_CACHE_MODE` with L2); otherwise messages go nowhere and none arrive, and other instances
//! learn of changes within the L1 freshness period F and the key cache TTL.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::config::Config;

/// Wait between subscription attempts.
pub const RECONNECT_DELAY: Duration = Duration::from_millis(500);

/// Longest wait for one subscription attempt.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest wait for a publication: nobody waits for it.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(1);

/// What one instance tells the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// The data of `app` changed: answers cached for it are stale.
    Generation {
        /// The app.
        app: Uuid,
    },
    /// The API key whose HMAC is `hash` was revoked.
    KeyRevoked {
        /// The key's HMAC (as stored in `api_keys.key_hash`).
        hash: Vec<u8>,
    },
}

impl Message {
    /// The payload of this message sent by `instance` (see the module's wire format).
    pub fn encode(&self, instance: Uuid) -> String {
        match self {
            Message::Generation { app } => format!("gen:{app}:{instance}"),
            Message::KeyRevoked { hash } => format!("key:{}:{instance}", hex::encode(hash)),
        }
    }

    /// The message and its sender in `payload`; None for a payload of an unknown kind or malformed.
    pub fn decode(payload: &str) -> Option<(Message, Uuid)> {
        let (kind, rest) = payload.split_once(':')?;
        let (body, instance) = rest.split_once(':')?;
        let message = match kind {
            "gen" => Message::Generation { app: body.parse().ok()? },
            "key" => Message::KeyRevoked { hash: hex::decode(body).ok()? },
            _ => return None,
        };
        Some((message, instance.parse().ok()?))
    }
}

/// What a subscriber is told.
#[derive(Debug)]
pub enum Event<'a> {
    /// The bus (re)subscribed: messages sent while it was not may have been missed.
    Subscribed,
    /// A message from another instance.
    Received(&'a Message),
}

/// A subscriber: called on the bus's listener task for each event, so it must not block (spawn
/// what takes time) nor subscribe.
pub type Subscriber = Box<dyn Fn(&Event<'_>) + Send + Sync>;

/// The bus (cheap to clone).
#[derive(Clone)]
pub struct Bus {
    shared: Arc<Shared>,
}

/// State shared by the handles and the listener.
struct Shared {
    /// None when the bus does not run (no Redis as the shared cache tier).
    redis: Option<Redis>,
    channel: String,
    /// Names this process in its messages, so it ignores its own.
    instance: Uuid,
    /// True while the subscription is live.
    connected: AtomicBool,
    subscribers: RwLock<Vec<Subscriber>>,
}

/// The bus's Redis connections.
struct Redis {
    /// For the pub/sub connection (one per subscription attempt).
    client: redis::Client,
    /// For publications, made lazily, reconnecting by itself.
    publisher: ConnectionManager,
}

impl Bus {
    /// The bus of `cfg`; when it runs, spawns its listener until `stop` is cancelled.
    pub fn start(cfg: &Config, stop: CancellationToken, tracker: &TaskTracker) -> Bus {
        let redis = match (&cfg.redis_url, cfg.cache_mode.l2()) {
            (Some(url), true) => match Redis::new(url, cfg.redis_timeout) {
                Ok(redis) => Some(redis),
                Err(e) => {
                    tracing::warn!(error = %e, "REDIS_URL is unusable; no invalidation bus");
                    None
                }
            },
            _ => None,
        };
        let client = redis.as_ref().map(|r| r.client.clone());
        let bus = Bus::new(redis, &cfg.redis_prefix);
        if let Some(client) = client {
            tracker.spawn(listen_loop(client, Arc::downgrade(&bus.shared), stop));
        }
        bus
    }

    fn new(redis: Option<Redis>, prefix: &str) -> Bus {
        Bus {
            shared: Arc::new(Shared {
                redis,
                channel: format!("{prefix}bus"),
                instance: Uuid::new_v4(),
                connected: AtomicBool::new(false),
                subscribers: RwLock::new(Vec::new()),
            }),
        }
    }

    /// The channel's name, `{prefix}bus` (also where the cache's bump script publishes).
    pub fn channel(&self) -> &str {
        &self.shared.channel
    }

    /// The payload of `message` sent by this instance.
    pub fn encode(&self, message: &Message) -> String {
        message.encode(self.shared.instance)
    }

    /// True while this instance is subscribed.
    pub fn connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    /// Adds a subscriber (at start-up: it misses what arrived before).
    pub fn subscribe(&self, subscriber: Subscriber) {
        self.shared.subscribers.write().expect("subscribers lock").push(subscriber);
    }

    /// Tells every other instance `messages`, in the background. Fire and forget: a lost message
    /// costs what its subscribers' TTLs bound (the key cache's ≤ 30 s for a revocation).
    pub fn publish(&self, messages: Vec<Message>) {
        let Some(redis) = &self.shared.redis else { return };
        let (mut conn, channel) = (redis.publisher.clone(), self.shared.channel.clone());
        let payloads: Vec<String> = messages.iter().map(|m| self.encode(m)).collect();
        tokio::spawn(async move {
            for payload in payloads {
                let mut cmd = redis::cmd("PUBLISH");
                cmd.arg(&channel).arg(&payload);
                let sent = match tokio::time::timeout(PUBLISH_TIMEOUT, cmd.query_async::<i64>(&mut conn)).await {
                    Ok(r) => r.map(drop).map_err(|e| e.to_string()),
                    Err(_) => Err(format!("no answer within {PUBLISH_TIMEOUT:?}")),
                };
                if let Err(e) = sent {
                    metrics::counter!("strata_redis_errors_total").increment(1);
                    tracing::warn!(error = %e, "could not publish on the invalidation bus");
                }
            }
        });
    }
}

impl Shared {
    fn deliver(&self, event: &Event<'_>) {
        for subscriber in self.subscribers.read().expect("subscribers lock").iter() {
            subscriber(event);
        }
    }

    /// A payload from the channel: delivered unless it is this instance's own or unreadable.
    fn receive(&self, payload: &str) {
        match Message::decode(payload) {
            Some((message, from)) if from != self.instance => self.deliver(&Event::Received(&message)),
            Some(_) => {}
            None => tracing::debug!(%payload, "ignoring an unknown bus message"),
        }
    }
}

impl Redis {
    fn new(url: &str, timeout: Duration) -> Result<Redis, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(100))))
            .set_response_timeout(Some(PUBLISH_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let publisher = ConnectionManager::new_lazy_with_config(client.clone(), cfg)?;
        Ok(Redis { client, publisher })
    }
}

/// Delivers the channel's messages to the subscribers until `stop` is cancelled or the bus is gone.
async fn listen_loop(client: redis::Client, bus: Weak<Shared>, stop: CancellationToken) {
    loop {
        let Some(channel) = bus.upgrade().map(|b| b.channel.clone()) else { return };
        match subscribe(&client, &channel).await {
            Ok(mut pubsub) => {
                let Some(shared) = bus.upgrade() else { return };
                shared.deliver(&Event::Subscribed);
                shared.connected.store(true, Ordering::Release);
                drop(shared);
                tracing::debug!(%channel, "subscribed to the invalidation bus");
                let mut messages = pubsub.on_message();
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        msg = messages.next() => match msg {
                            Some(msg) => {
                                let Some(shared) = bus.upgrade() else { return };
                                if let Ok(payload) = msg.get_payload::<String>() {
                                    shared.receive(&payload);
                                }
                            }
                            None => break,
                        },
                    }
                }
                if let Some(shared) = bus.upgrade() {
                    shared.connected.store(false, Ordering::Release);
                }
                tracing::warn!(%channel, "invalidation bus disconnected; resubscribing");
            }
            Err(e) => {
                metrics::counter!("strata_redis_errors_total").increment(1);
                tracing::debug!(error = %e, "invalidation bus subscription failed");
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
    match tokio::time::timeout(SUBSCRIBE_TIMEOUT, connect).await {
        Ok(r) => r,
        Err(_) => Err(redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[test]
    fn generation_messages_round_trip_in_the_wire_format_of_earlier_releases() {
        let (app, instance) = (Uuid::new_v4(), Uuid::new_v4());
        let message = Message::Generation { app };

        let payload = message.encode(instance);

        assert_eq!(payload, format!("gen:{app}:{instance}"));
        assert_eq!(Message::decode(&payload), Some((message, instance)));
    }

    #[test]
    fn key_revocations_round_trip_in_the_wire_format_of_earlier_releases() {
        let instance = Uuid::new_v4();
        let message = Message::KeyRevoked { hash: vec![0xab, 0x01, 0xff] };

        let payload = message.encode(instance);

        assert_eq!(payload, format!("key:ab01ff:{instance}"));
        assert_eq!(Message::decode(&payload), Some((message, instance)));
    }

    #[test]
    fn malformed_payloads_and_unknown_kinds_decode_to_nothing() {
        let (app, instance) = (Uuid::new_v4(), Uuid::new_v4());
        for bad in [
            String::new(),
            "gen".into(),
            format!("gen:{app}"),
            format!("gen:not-a-uuid:{instance}"),
            format!("gen:{app}:not-a-uuid"),
            format!("key:zz:{instance}"),
            format!("key:abc:{instance}"),
            format!("purge:{app}:{instance}"),
            format!("GEN:{app}:{instance}"),
        ] {
            assert_eq!(Message::decode(&bad), None, "{bad}");
        }
    }

    #[test]
    fn subscribers_get_messages_of_other_instances_only() {
        let bus = Bus::new(None, "test:");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        bus.subscribe(Box::new(move |event| {
            let entry = match event {
                Event::Subscribed => None,
                Event::Received(m) => Some((*m).clone()),
            };
            log.lock().unwrap().push(entry);
        }));
        let (app, other) = (Uuid::new_v4(), Uuid::new_v4());

        bus.shared.deliver(&Event::Subscribed);
        bus.shared.receive(&bus.encode(&Message::Generation { app }));
        bus.shared.receive(&Message::Generation { app }.encode(other));
        bus.shared.receive("gen:garbage");
        bus.shared.receive(&Message::KeyRevoked { hash: vec![1] }.encode(other));

        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            [None, Some(Message::Generation { app }), Some(Message::KeyRevoked { hash: vec![1] })],
            "the own message and the garbage were dropped"
        );
        assert_eq!(bus.channel(), "test:bus");
        assert!(!bus.connected());
    }
}
