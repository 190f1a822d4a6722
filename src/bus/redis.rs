//! Invalidation over Redis pub/sub (feature `redis`): at most once, so a
//! reconnect applies the listener's [`Recovery`](crate::bus::Recovery). For
//! replay instead of a flush, use [`redis_streams`](crate::bus::redis_streams).
//!
//! ```no_run
//! # async fn demo(pool: warmpool::Pool<String>) -> Result<(), warmpool::bus::BusError> {
//! use warmpool::bus::{ListenOptions, Scope, new_origin, redis::RedisBus};
//! let origin = new_origin("billing");
//! let bus = RedisBus::new("redis://127.0.0.1:6379", "warmpool:invalidate")?;
//! let _listener = bus.attach(&pool, ListenOptions::new(&origin)).await?;
//! let publisher = bus.publisher(origin, None).await?;
//! // Retire here, and publish for every other instance:
//! publisher.invalidate(&pool, Scope::Prefix("acme:".into())).await?;
//! # Ok(()) }
//! ```

use futures::StreamExt;
use tokio::task::JoinHandle;

use crate::bus::listener::{self, BusEvent, EventSink};
use crate::bus::{BusError, ListenOptions, Outbox, Publisher, SigningKey, Stamper};
use crate::pool::Pool;

/// A Redis server and the channel invalidations travel on.
#[derive(Clone)]
pub struct RedisBus {
    client: redis::Client,
    channel: String,
}

/// Shows the channel only: the client holds the connection info, password included.
impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus").field("channel", &self.channel).finish()
    }
}

/// The sending half of a [`RedisBus`]: `PUBLISH` over a connection manager
/// that reconnects by itself; a publish during an outage fails with
/// [`BusError::Transport`].
#[derive(Clone)]
pub struct RedisOutbox {
    connection: redis::aio::ConnectionManager,
    channel: String,
}

impl std::fmt::Debug for RedisOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOutbox").field("channel", &self.channel).finish()
    }
}

/// Publishes invalidations on a Redis channel.
pub type RedisPublisher = Publisher<RedisOutbox>;

impl Outbox for RedisOutbox {
    async fn send(&self, payload: Vec<u8>) -> Result<(), BusError> {
        let mut connection = self.connection.clone();
        redis::cmd("PUBLISH")
            .arg(&self.channel)
            .arg(payload)
            .query_async::<i64>(&mut connection)
            .await
            .map(drop)
            .map_err(|e| BusError::transport("PUBLISH", e))
    }

    /// One pipeline: the commands reach Redis in order, in one round trip.
    async fn send_batch(&self, payloads: Vec<Vec<u8>>) -> Vec<Result<(), BusError>> {
        let mut pipe = redis::pipe();
        for payload in &payloads {
            pipe.cmd("PUBLISH").arg(&self.channel).arg(payload);
        }
        send_pipeline(&self.connection, &mut pipe, "PUBLISH").await
    }
}

/// Sends `pipe` and returns one result per command: each command's own, or
/// the pipeline's error for all of them. Shared with the streams transport.
pub(crate) async fn send_pipeline(
    connection: &redis::aio::ConnectionManager,
    pipe: &mut redis::Pipeline,
    what: &str,
) -> Vec<Result<(), BusError>> {
    let commands = pipe.len();
    let mut connection = connection.clone();
    match pipe
        .ignore_errors()
        .query_async::<Vec<redis::RedisResult<redis::Value>>>(&mut connection)
        .await
    {
        Ok(replies) => replies
            .into_iter()
            .map(|reply| reply.map(drop).map_err(|e| BusError::transport(what, e)))
            .collect(),
        Err(e) => vec![Err(BusError::transport(what, e)); commands],
    }
}

/// Opens a client for `url`; shared with the streams transport.
pub(crate) fn open(url: &str) -> Result<redis::Client, BusError> {
    redis::Client::open(url).map_err(|e| BusError::transport("opening the Redis URL", e))
}

/// A connection manager for publishing; shared with the streams transport.
pub(crate) async fn manager(client: &redis::Client) -> Result<redis::aio::ConnectionManager, BusError> {
    redis::aio::ConnectionManager::new(client.clone())
        .await
        .map_err(|e| BusError::transport("connecting to Redis", e))
}

impl RedisBus {
    /// A bus on `channel` of the Redis at `url` (e.g. `redis://127.0.0.1:6379`).
    /// Does not connect yet.
    pub fn new(url: &str, channel: impl Into<String>) -> Result<Self, BusError> {
        Ok(RedisBus {
            client: open(url)?,
            channel: channel.into(),
        })
    }

    /// Connects a publisher for `origin`, signing with `signing_key` if given.
    pub async fn publisher(
        &self,
        origin: impl Into<String>,
        signing_key: Option<SigningKey>,
    ) -> Result<RedisPublisher, BusError> {
        let outbox = RedisOutbox {
            connection: manager(&self.client).await?,
            channel: self.channel.clone(),
        };
        Ok(Publisher::new(Stamper::new(origin, signing_key), outbox))
    }

    async fn subscribe(&self) -> Result<redis::aio::PubSub, BusError> {
        let mut pubsub = self
            .client
            .get_async_pubsub()
            .await
            .map_err(|e| BusError::transport("connecting to Redis", e))?;
        pubsub
            .subscribe(&self.channel)
            .await
            .map_err(|e| BusError::transport("SUBSCRIBE", e))?;
        Ok(pubsub)
    }

    /// Subscribes, then applies every message to `pool` in a background task.
    ///
    /// Returns once the subscription is in place, or fails if Redis cannot be
    /// reached now. Afterwards a lost connection is retried with exponential
    /// backoff and jitter (100 ms to 10 s), and once subscribed again the
    /// listener applies its [`Recovery`](crate::bus::Recovery). The task ends
    /// when the pool shuts down or is dropped.
    pub async fn attach<T: Send + Sync + 'static>(
        &self,
        pool: &Pool<T>,
        options: ListenOptions,
    ) -> Result<JoinHandle<()>, BusError> {
        let pubsub = self.subscribe().await?;
        let bus = self.clone();
        Ok(listener::spawn(pool, options, false, |sink| bus.pump(pubsub, sink)))
    }

    async fn pump(self, mut pubsub: redis::aio::PubSub, sink: EventSink) {
        loop {
            {
                let mut messages = pubsub.on_message();
                while let Some(message) = messages.next().await {
                    let event = BusEvent::Message {
                        payload: message.get_payload_bytes().to_vec(),
                        stored_at_us: None,
                    };
                    if !sink.send(event).await {
                        return;
                    }
                }
            }
            if !sink.send(BusEvent::Disconnected).await {
                return;
            }
            let Some(renewed) = sink.reconnect(&self.channel, || self.subscribe()).await else {
                return;
            };
            pubsub = renewed;
            if !sink.send(BusEvent::Reconnected).await {
                return;
            }
        }
    }
}
