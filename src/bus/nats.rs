//! Invalidation over a NATS subject (feature `nats`).
//!
//! ```no_run
//! # async fn demo(pool: warmpool::Pool<String>) -> Result<(), warmpool::bus::BusError> {
//! use warmpool::bus::{ListenOptions, Scope, new_origin, nats::NatsBus};
//! let origin = new_origin("billing");
//! let bus = NatsBus::connect("nats://127.0.0.1:4222", "warmpool.invalidate").await?;
//! let _listener = bus
//!     .attach(&pool, ListenOptions { origin: origin.clone(), ..Default::default() })
//!     .await?;
//! bus.publisher(origin, None).publish(Scope::Key("acme:openai".into())).await?;
//! # Ok(()) }
//! ```

use std::time::Duration;

use futures::StreamExt;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::bus::{BusError, ListenOptions, Listener, Scope, SigningKey, Stamper, reconnect_delay};
use crate::pool::Pool;

/// How often an idle listener checks whether its pool is gone.
const CLOSED_CHECK: Duration = Duration::from_secs(1);

/// How long `attach` waits for the server to confirm its subscription.
const SUBSCRIBE_CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to NATS and the subject invalidations travel on.
///
/// The `async-nats` client reconnects by itself (here with exponential
/// backoff and jitter, 100 ms to 10 s) and renews subscriptions; this type
/// watches its connection events so that listeners apply their
/// [`Recovery`](crate::bus::Recovery) after every reconnect.
#[derive(Debug, Clone)]
pub struct NatsBus {
    client: async_nats::Client,
    subject: String,
    /// Connection events, for listeners: `true` connected, `false` lost.
    events: broadcast::Sender<bool>,
}

/// Publishes invalidations on a NATS subject.
#[derive(Debug)]
pub struct NatsPublisher {
    stamper: Stamper,
    client: async_nats::Client,
    subject: String,
}

fn transport(error: impl std::fmt::Display) -> BusError {
    BusError::Transport(error.to_string())
}

impl NatsBus {
    /// Connects to the NATS server at `url` (e.g. `nats://127.0.0.1:4222`);
    /// fails if it cannot be reached now.
    pub async fn connect(url: &str, subject: impl Into<String>) -> Result<Self, BusError> {
        let (events, _) = broadcast::channel(64);
        let sender = events.clone();
        let client = async_nats::ConnectOptions::new()
            .event_callback(move |event| {
                let sender = sender.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            let _ = sender.send(true);
                        }
                        async_nats::Event::Disconnected => {
                            let _ = sender.send(false);
                        }
                        other => tracing::debug!(event = %other, "nats event"),
                    }
                }
            })
            .reconnect_delay_callback(|attempts| reconnect_delay(u32::try_from(attempts).unwrap_or(u32::MAX)))
            .connect(url)
            .await
            .map_err(transport)?;
        Ok(NatsBus {
            client,
            subject: subject.into(),
            events,
        })
    }

    /// A publisher for `origin`, signing with `signing_key` if given.
    pub fn publisher(&self, origin: impl Into<String>, signing_key: Option<SigningKey>) -> NatsPublisher {
        NatsPublisher {
            stamper: Stamper::new(origin, signing_key),
            client: self.client.clone(),
            subject: self.subject.clone(),
        }
    }

    /// Returns once the server has processed every subscription this client
    /// sent so far. `Client::flush` only writes the socket (it does not wait
    /// for the server), so a message published from another connection right
    /// after it could still miss the subscription. The server handles one
    /// connection's operations in order, so receiving a message we sent
    /// ourselves on a fresh inbox proves the earlier `SUB` is in place.
    async fn confirm_subscriptions(&self) -> Result<(), BusError> {
        let inbox = self.client.new_inbox();
        let mut probe = self.client.subscribe(inbox.clone()).await.map_err(transport)?;
        self.client.publish(inbox, Vec::new().into()).await.map_err(transport)?;
        self.client.flush().await.map_err(transport)?;
        match tokio::time::timeout(SUBSCRIBE_CONFIRM_TIMEOUT, probe.next()).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(transport("the connection closed while subscribing")),
            Err(_) => Err(transport(format!(
                "the server did not confirm the subscription within {SUBSCRIBE_CONFIRM_TIMEOUT:?}"
            ))),
        }
    }

    /// Subscribes, then applies every message to `pool` in a background
    /// task. Returns once the server has the subscription. The task ends
    /// when the pool is gone or shut down.
    pub async fn attach<T: Send + Sync + 'static>(
        &self,
        pool: &Pool<T>,
        options: ListenOptions,
    ) -> Result<JoinHandle<()>, BusError> {
        let mut events = self.events.subscribe();
        let mut subscriber = self.client.subscribe(self.subject.clone()).await.map_err(transport)?;
        self.confirm_subscriptions().await?;
        let mut listener = Listener::new(pool, options);
        Ok(tokio::spawn(async move {
            let mut check = tokio::time::interval(CLOSED_CHECK);
            let mut lost = false;
            loop {
                tokio::select! {
                    message = subscriber.next() => match message {
                        Some(message) => {
                            listener.handle(&message.payload).await;
                        }
                        None => return, // the client was closed
                    },
                    event = events.recv() => match event {
                        Ok(false) => {
                            lost = true;
                            tracing::warn!("nats connection lost; the client reconnects");
                        }
                        Ok(true) if lost => {
                            lost = false;
                            tracing::info!("nats reconnected");
                            listener.reconnected().await;
                        }
                        Ok(true) => {}
                        // Missed events: a reconnect may be among them.
                        Err(broadcast::error::RecvError::Lagged(_)) => listener.reconnected().await,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    _ = check.tick() => {}
                }
                if listener.is_closed() {
                    return;
                }
            }
        }))
    }
}

impl NatsPublisher {
    /// The origin id stamped on every message.
    pub fn origin(&self) -> &str {
        self.stamper.origin()
    }

    /// Publishes an invalidation of `scope` and flushes it to the server.
    pub async fn publish(&self, scope: Scope) -> Result<(), BusError> {
        self.publish_raw(self.stamper.stamp(scope)).await
    }

    /// Publishes raw bytes on the subject, as any other publisher could.
    pub async fn publish_raw(&self, bytes: Vec<u8>) -> Result<(), BusError> {
        self.client
            .publish(self.subject.clone(), bytes.into())
            .await
            .map_err(transport)?;
        self.client.flush().await.map_err(transport)
    }
}
