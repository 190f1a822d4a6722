//! Invalidation over Redis pub/sub (feature `redis`).
//!
//! ```no_run
//! # async fn demo(pool: warmpool::Pool<String>) -> Result<(), warmpool::bus::BusError> {
//! use warmpool::bus::{ListenOptions, Scope, new_origin, redis::RedisBus};
//! let origin = new_origin("billing");
//! let bus = RedisBus::new("redis://127.0.0.1:6379", "warmpool:invalidate")?;
//! let _listener = bus
//!     .attach(&pool, ListenOptions { origin: origin.clone(), ..Default::default() })
//!     .await?;
//! let publisher = bus.publisher(origin, None).await?;
//! publisher.publish(Scope::Prefix("acme:".into())).await?;
//! # Ok(()) }
//! ```

use std::time::Duration;

use futures::StreamExt;
use redis::AsyncCommands;
use tokio::task::JoinHandle;

use crate::bus::{BusError, ListenOptions, Listener, Scope, SigningKey, Stamper, reconnect_delay};
use crate::pool::Pool;

/// How often an idle listener checks whether its pool is gone.
const CLOSED_CHECK: Duration = Duration::from_secs(1);

/// A Redis server and the channel invalidations travel on.
#[derive(Debug, Clone)]
pub struct RedisBus {
    client: redis::Client,
    channel: String,
}

/// Publishes invalidations on a Redis channel. Reconnects by itself (a
/// `redis` connection manager); a publish during an outage fails with
/// [`BusError::Transport`].
pub struct RedisPublisher {
    stamper: Stamper,
    connection: redis::aio::ConnectionManager,
    channel: String,
}

impl std::fmt::Debug for RedisPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPublisher")
            .field("origin", &self.stamper.origin())
            .field("channel", &self.channel)
            .finish()
    }
}

fn transport(error: redis::RedisError) -> BusError {
    BusError::Transport(error.to_string())
}

impl RedisBus {
    /// A bus on `channel` of the Redis at `url` (e.g. `redis://127.0.0.1:6379`).
    /// Does not connect yet.
    pub fn new(url: &str, channel: impl Into<String>) -> Result<Self, BusError> {
        Ok(RedisBus {
            client: redis::Client::open(url).map_err(transport)?,
            channel: channel.into(),
        })
    }

    /// Connects a publisher for `origin`, signing with `signing_key` if given.
    pub async fn publisher(
        &self,
        origin: impl Into<String>,
        signing_key: Option<SigningKey>,
    ) -> Result<RedisPublisher, BusError> {
        let connection = redis::aio::ConnectionManager::new(self.client.clone())
            .await
            .map_err(transport)?;
        Ok(RedisPublisher {
            stamper: Stamper::new(origin, signing_key),
            connection,
            channel: self.channel.clone(),
        })
    }

    async fn subscribe(&self) -> Result<redis::aio::PubSub, BusError> {
        let mut pubsub = self.client.get_async_pubsub().await.map_err(transport)?;
        pubsub.subscribe(&self.channel).await.map_err(transport)?;
        Ok(pubsub)
    }

    /// Subscribes, then applies every message to `pool` in a background task.
    ///
    /// Returns once the subscription is in place, or fails if Redis cannot be
    /// reached now. Afterwards a lost connection is retried with exponential
    /// backoff and jitter (100 ms to 10 s), and once subscribed again the
    /// listener applies its [`Recovery`](crate::bus::Recovery). The task ends
    /// when the pool is gone or shut down.
    pub async fn attach<T: Send + Sync + 'static>(
        &self,
        pool: &Pool<T>,
        options: ListenOptions,
    ) -> Result<JoinHandle<()>, BusError> {
        let mut pubsub = self.subscribe().await?;
        let mut listener = Listener::new(pool, options);
        let bus = self.clone();
        Ok(tokio::spawn(async move {
            loop {
                {
                    let mut messages = pubsub.on_message();
                    let mut check = tokio::time::interval(CLOSED_CHECK);
                    loop {
                        tokio::select! {
                            message = messages.next() => match message {
                                Some(message) => {
                                    listener.handle(message.get_payload_bytes()).await;
                                }
                                None => break,
                            },
                            _ = check.tick() => {}
                        }
                        if listener.is_closed() {
                            return;
                        }
                    }
                }
                tracing::warn!(channel = %bus.channel, "redis pub/sub connection lost; reconnecting");
                let mut attempt = 0;
                pubsub = loop {
                    tokio::time::sleep(reconnect_delay(attempt)).await;
                    if listener.is_closed() {
                        return;
                    }
                    match bus.subscribe().await {
                        Ok(pubsub) => break pubsub,
                        Err(error) => {
                            tracing::warn!(error = %error, attempt, "redis reconnect failed");
                            attempt += 1;
                        }
                    }
                };
                tracing::info!(channel = %bus.channel, "redis pub/sub reconnected");
                listener.reconnected().await;
            }
        }))
    }
}

impl RedisPublisher {
    /// The origin id stamped on every message.
    pub fn origin(&self) -> &str {
        self.stamper.origin()
    }

    /// Publishes an invalidation of `scope`; returns how many subscribers
    /// Redis delivered it to.
    pub async fn publish(&self, scope: Scope) -> Result<usize, BusError> {
        self.publish_raw(self.stamper.stamp(scope)).await
    }

    /// Publishes raw bytes on the channel, as any other publisher could.
    pub async fn publish_raw(&self, bytes: Vec<u8>) -> Result<usize, BusError> {
        let mut connection = self.connection.clone();
        connection.publish(&self.channel, bytes).await.map_err(transport)
    }
}
