//! Durable invalidation over NATS JetStream (feature `nats`).
//!
//! Publishers publish to a subject captured by a stream with limits (the
//! last `max_messages` messages, none older than `max_age`), and wait for
//! the server's acknowledgement. Each listener reads the stream through its
//! own ephemeral ordered consumer and remembers the stream sequence of the
//! last message it applied; after a lost connection (or a consumer the
//! server dropped) it reads on from there, so it applies exactly what it
//! missed. Stream sequences have no holes, so a jump means the stream no
//! longer held what the listener missed: only then does it apply its
//! [`Recovery`](crate::bus::Recovery), counted in `BusStats::lost` and
//! logged at warn. The server must run with JetStream (`nats-server -js`).
//!
//! ```no_run
//! # async fn demo(pool: warmpool::Pool<String>) -> Result<(), warmpool::bus::BusError> {
//! use warmpool::bus::{ListenOptions, Scope, new_origin};
//! use warmpool::bus::jetstream::{JetStreamBus, Retention};
//! use warmpool::bus::nats::NatsOptions;
//! let origin = new_origin("billing");
//! let bus = JetStreamBus::connect(
//!     "nats://127.0.0.1:4222",
//!     "WARMPOOL_INVALIDATIONS",
//!     "warmpool.invalidate",
//!     Retention::default(),
//!     NatsOptions::new(),
//! )
//! .await?;
//! let _listener = bus.attach(&pool, ListenOptions::new(&origin)).await?;
//! bus.publisher(origin, None).invalidate(&pool, Scope::Key("acme:openai".into())).await?;
//! # Ok(()) }
//! ```

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::bus::listener::{self, BusEvent, EventSink};
use crate::bus::nats::{ConnEvent, NatsOptions, conn_event, connect_client};
use crate::bus::{BusError, ListenOptions, Outbox, Publisher, SigningKey, Stamper};
use crate::pool::Pool;

/// What the stream keeps: a listener away for longer than this holds
/// (in messages or in time) flushes when it is back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// The most messages kept; older ones are discarded first. Defaults to 100,000.
    pub max_messages: i64,
    /// The oldest message kept. Defaults to 24 hours.
    pub max_age: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_messages: 100_000,
            max_age: Duration::from_secs(24 * 3600),
        }
    }
}

/// A connection to a NATS server with JetStream, and the stream and subject
/// invalidations travel on.
#[derive(Debug, Clone)]
pub struct JetStreamBus {
    context: jetstream::Context,
    stream: String,
    subject: String,
    events: broadcast::Sender<ConnEvent>,
}

/// The sending half of a [`JetStreamBus`]: publish and wait for the
/// server's acknowledgement (the message is stored).
#[derive(Debug, Clone)]
pub struct JetStreamOutbox {
    context: jetstream::Context,
    subject: String,
}

/// Publishes invalidations to a JetStream stream.
pub type JetStreamPublisher = Publisher<JetStreamOutbox>;

impl Outbox for JetStreamOutbox {
    async fn send(&self, payload: Vec<u8>) -> Result<(), BusError> {
        let ack = self
            .context
            .publish(self.subject.clone(), payload.into())
            .await
            .map_err(|e| BusError::transport("publishing to JetStream", e))?;
        ack.await
            .map(drop)
            .map_err(|e| BusError::transport("waiting for JetStream's acknowledgement", e))
    }

    /// Every message to the server in turn (one connection keeps their
    /// order, so the stream stores them in it), then their acknowledgements
    /// awaited together.
    async fn send_batch(&self, payloads: Vec<Vec<u8>>) -> Vec<Result<(), BusError>> {
        let mut acks = Vec::with_capacity(payloads.len());
        for payload in payloads {
            let sent = self.context.publish(self.subject.clone(), payload.into()).await;
            acks.push(sent.map_err(|e| BusError::transport("publishing to JetStream", e)));
        }
        futures::future::join_all(acks.into_iter().map(|ack| async move {
            ack?.await
                .map(drop)
                .map_err(|e| BusError::transport("waiting for JetStream's acknowledgement", e))
        }))
        .await
    }
}

impl JetStreamBus {
    /// Connects to the NATS server at `url` with `options` (credentials go
    /// there, never in the URL) and creates stream `stream` capturing
    /// `subject` with `retention`, or uses it if it exists.
    ///
    /// # Errors
    ///
    /// [`BusError::CredentialsInUrl`] if `url` carries credentials;
    /// [`BusError::Transport`] if the server cannot be reached, has no
    /// JetStream, or has a stream of that name with another configuration.
    pub async fn connect(
        url: &str,
        stream: impl Into<String>,
        subject: impl Into<String>,
        retention: Retention,
        options: NatsOptions,
    ) -> Result<Self, BusError> {
        let (events, _) = broadcast::channel(64);
        let client = connect_client(url, options, events.clone()).await?;
        let context = jetstream::new(client);
        let (stream, subject) = (stream.into(), subject.into());
        context
            .get_or_create_stream(stream::Config {
                name: stream.clone(),
                subjects: vec![subject.clone()],
                max_messages: retention.max_messages,
                max_age: retention.max_age,
                discard: stream::DiscardPolicy::Old,
                ..Default::default()
            })
            .await
            .map_err(|e| BusError::transport(format!("creating the JetStream stream `{stream}`"), e))?;
        Ok(JetStreamBus {
            context,
            stream,
            subject,
            events,
        })
    }

    /// A publisher for `origin`, signing with `signing_key` if given.
    pub fn publisher(&self, origin: impl Into<String>, signing_key: Option<SigningKey>) -> JetStreamPublisher {
        let outbox = JetStreamOutbox {
            context: self.context.clone(),
            subject: self.subject.clone(),
        };
        Publisher::new(Stamper::new(origin, signing_key), outbox)
    }

    /// An ordered consumer reading the stream from sequence `next` on.
    async fn messages(&self, next: u64) -> Result<consumer::pull::Ordered, BusError> {
        let stream = self
            .context
            .get_stream(&self.stream)
            .await
            .map_err(|e| BusError::transport("looking up the JetStream stream", e))?;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: self.subject.clone(),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: next },
                ..Default::default()
            })
            .await
            .map_err(|e| BusError::transport("creating a JetStream consumer", e))?;
        consumer
            .messages()
            .await
            .map_err(|e| BusError::transport("reading from a JetStream consumer", e))
    }

    /// Fixes the listener's position at the end of the stream, then applies
    /// every later message to `pool` in a background task.
    ///
    /// Returns once the position is fixed (nothing published afterwards is
    /// missed). The task ends when the pool shuts down or is dropped.
    pub async fn attach<T: Send + Sync + 'static>(
        &self,
        pool: &Pool<T>,
        options: ListenOptions,
    ) -> Result<JoinHandle<()>, BusError> {
        let events = self.events.subscribe();
        let mut stream = self
            .context
            .get_stream(&self.stream)
            .await
            .map_err(|e| BusError::transport("looking up the JetStream stream", e))?;
        let last = stream
            .info()
            .await
            .map_err(|e| BusError::transport("reading the JetStream stream's state", e))?
            .state
            .last_sequence;
        let messages = self.messages(last + 1).await?;
        let bus = self.clone();
        Ok(listener::spawn(pool, options, true, |sink| {
            bus.pump(messages, last, events, sink)
        }))
    }

    async fn pump(
        self,
        mut messages: consumer::pull::Ordered,
        mut last: u64,
        mut events: broadcast::Receiver<ConnEvent>,
        sink: EventSink,
    ) {
        let mut lost_connection = false;
        loop {
            let event = tokio::select! {
                message = messages.next() => match message {
                    Some(Ok(message)) => {
                        let Ok(info) = message.info() else { continue };
                        let seq = info.stream_sequence;
                        if seq <= last {
                            continue; // delivered again by a recreated consumer
                        }
                        if seq > last + 1 {
                            let reason = format!(
                                "messages {}..{} of stream `{}` were discarded before this listener read them; raise its limits",
                                last + 1, seq - 1, self.stream
                            );
                            if !sink.send(BusEvent::Lost { reason }).await {
                                return;
                            }
                        }
                        last = seq;
                        // The server's clock: it sets a message's store time,
                        // and no publish option does. (It reaches us in the
                        // delivery's reply subject, so it is as trustworthy
                        // as the rule that only the server publishes to this
                        // client's inbox.) With it on every message, the
                        // listener needs no `CaughtUp` after a `Resumed`.
                        let stored_at_us = u64::try_from(info.published.unix_timestamp_nanos() / 1_000).ok();
                        BusEvent::Message { payload: message.payload.to_vec(), stored_at_us }
                    }
                    Some(Err(error)) => {
                        // The ordered consumer recreates itself on most
                        // errors; it keeps being polled.
                        tracing::warn!(error = %error, stream = %self.stream, "jetstream consumer error");
                        continue;
                    }
                    None => match self.recreate(last, &sink).await {
                        Some(recreated) => {
                            messages = recreated;
                            continue;
                        }
                        None => return,
                    },
                },
                event = events.recv() => match event {
                    // A durable consumer re-reads whatever the client dropped.
                    Ok(ConnEvent::SlowConsumer) => continue,
                    event => match conn_event(event, &mut lost_connection, BusEvent::Resumed) {
                        Some(Some(event)) => event,
                        Some(None) => continue,
                        None => return,
                    },
                },
            };
            if !sink.send(event).await {
                return;
            }
        }
    }

    /// A new consumer from `last + 1`, retried with backoff; `None` once the
    /// listener has ended.
    async fn recreate(&self, last: u64, sink: &EventSink) -> Option<consumer::pull::Ordered> {
        sink.reconnect(&self.stream, || self.messages(last + 1)).await
    }
}
