//! Invalidation over a core NATS subject (feature `nats`): at most once, so
//! a reconnect, or messages the client drops for a slow consumer, apply the
//! listener's [`Recovery`](crate::bus::Recovery). For replay instead of a
//! flush, use [`jetstream`](crate::bus::jetstream).
//!
//! ```no_run
//! # async fn demo(pool: warmpool::Pool<String>, password: String) -> Result<(), warmpool::bus::BusError> {
//! use warmpool::bus::{ListenOptions, Scope, new_origin};
//! use warmpool::bus::nats::{NatsBus, NatsOptions};
//! let origin = new_origin("billing");
//! // Credentials go in the options, never in the URL (the client logs URLs).
//! let options = NatsOptions::new().user_and_password("billing", password);
//! let bus = NatsBus::connect_with("nats://127.0.0.1:4222", "warmpool.invalidate", options).await?;
//! let _listener = bus.attach(&pool, ListenOptions::new(&origin)).await?;
//! bus.publisher(origin, None).publish(Scope::Key("acme:openai".into())).await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::bus::listener::{self, BusEvent, EventSink};
use crate::bus::{BusError, ListenOptions, Outbox, Publisher, SigningKey, Stamper, reconnect_delay};
use crate::pool::Pool;

/// How long `attach` waits for the server to confirm its subscription.
const SUBSCRIBE_CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// How a client proves who it is to the server.
#[derive(Clone, Default)]
enum Auth {
    #[default]
    None,
    UserPassword {
        user: String,
        password: String,
    },
    Token(String),
    CredentialsFile(PathBuf),
}

/// Connection settings for [`NatsBus`] and
/// [`JetStreamBus`](crate::bus::jetstream::JetStreamBus): credentials and
/// buffer sizes.
///
/// Credentials are given here, never in the URL: `async-nats` logs the
/// server URL (at debug level, on every connection attempt), so a password
/// in it would end up in logs. `connect_with` refuses a URL that carries
/// one. `Debug` prints no secret.
#[derive(Clone, Default)]
#[must_use]
pub struct NatsOptions {
    auth: Auth,
    subscription_capacity: Option<usize>,
}

impl fmt::Debug for NatsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auth = match &self.auth {
            Auth::None => "none".to_string(),
            Auth::UserPassword { user, .. } => format!("user `{user}` with a password"),
            Auth::Token(_) => "a token".to_string(),
            Auth::CredentialsFile(path) => format!("credentials file {}", path.display()),
        };
        f.debug_struct("NatsOptions")
            .field("auth", &auth)
            .field("subscription_capacity", &self.subscription_capacity)
            .finish()
    }
}

impl NatsOptions {
    /// No credentials, the client's default buffers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Authenticate with a user and password. Defaults to no credentials.
    pub fn user_and_password(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.auth = Auth::UserPassword {
            user: user.into(),
            password: password.into(),
        };
        self
    }

    /// Authenticate with a token. Defaults to no credentials.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.auth = Auth::Token(token.into());
        self
    }

    /// Authenticate with a `.creds` file (a JWT and an NKey seed), read when
    /// connecting. Defaults to no credentials.
    pub fn credentials_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.auth = Auth::CredentialsFile(path.into());
        self
    }

    /// How many messages the client buffers per subscription before it drops
    /// (a "slow consumer", which listeners treat as lost messages and
    /// recover from). Defaults to the client's default (65,536).
    pub fn subscription_capacity(mut self, capacity: usize) -> Self {
        self.subscription_capacity = Some(capacity.max(1));
        self
    }
}

/// What the client reported about its connection, for listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnEvent {
    Connected,
    Disconnected,
    /// The client dropped messages of a subscription that was not read fast enough.
    SlowConsumer,
}

/// Whether a server URL (or a comma-separated list) has a user, password or
/// token in it.
fn has_credentials(url: &str) -> bool {
    url.split(',').any(|server| {
        let rest = server.trim().split_once("://").map_or(server.trim(), |(_, rest)| rest);
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        authority.contains('@')
    })
}

/// Connects a client to `url` with `options`, reporting connection events
/// on `events`; shared with the JetStream transport.
pub(crate) async fn connect_client(
    url: &str,
    options: NatsOptions,
    events: broadcast::Sender<ConnEvent>,
) -> Result<async_nats::Client, BusError> {
    if has_credentials(url) {
        return Err(BusError::CredentialsInUrl);
    }
    let mut connect = async_nats::ConnectOptions::new();
    connect = match options.auth {
        Auth::None => connect,
        Auth::UserPassword { user, password } => connect.user_and_password(user, password),
        Auth::Token(token) => connect.token(token),
        Auth::CredentialsFile(path) => connect
            .credentials_file(&path)
            .await
            .map_err(|e| BusError::transport(format!("reading the NATS credentials file {}", path.display()), e))?,
    };
    if let Some(capacity) = options.subscription_capacity {
        connect = connect.subscription_capacity(capacity);
    }
    connect
        .event_callback(move |event| {
            let events = events.clone();
            async move {
                let event = match event {
                    async_nats::Event::Connected => ConnEvent::Connected,
                    async_nats::Event::Disconnected => ConnEvent::Disconnected,
                    async_nats::Event::SlowConsumer(sid) => {
                        tracing::warn!(sid, "nats client dropped messages for a slow consumer");
                        ConnEvent::SlowConsumer
                    }
                    other => {
                        tracing::debug!(event = %other, "nats event");
                        return;
                    }
                };
                let _ = events.send(event);
            }
        })
        .reconnect_delay_callback(|attempts| reconnect_delay(u32::try_from(attempts).unwrap_or(u32::MAX)))
        .connect(url)
        .await
        .map_err(|e| BusError::transport("connecting to NATS", e))
}

/// Turns a client's connection event into a listener event, or `None` when
/// there is nothing to tell. `lost` remembers a disconnect until the
/// reconnect; `reconnected` is the event a reconnect means for the transport.
pub(crate) fn conn_event(
    event: Result<ConnEvent, broadcast::error::RecvError>,
    lost: &mut bool,
    reconnected: BusEvent,
) -> Option<Option<BusEvent>> {
    Some(match event {
        Ok(ConnEvent::Disconnected) => {
            *lost = true;
            Some(BusEvent::Disconnected)
        }
        Ok(ConnEvent::Connected) if *lost => {
            *lost = false;
            Some(reconnected)
        }
        Ok(ConnEvent::Connected) => None,
        Ok(ConnEvent::SlowConsumer) => Some(BusEvent::Lost {
            reason: "the NATS client dropped messages for a slow consumer".into(),
        }),
        // Missed connection events: a drop or a reconnect may be among them.
        Err(broadcast::error::RecvError::Lagged(_)) => Some(BusEvent::Lost {
            reason: "missed NATS connection events".into(),
        }),
        Err(broadcast::error::RecvError::Closed) => return None,
    })
}

/// A connection to NATS and the subject invalidations travel on.
///
/// The `async-nats` client reconnects by itself (here with exponential
/// backoff and jitter, 100 ms to 10 s) and renews subscriptions; listeners
/// watch its connection events and apply their
/// [`Recovery`](crate::bus::Recovery) after every reconnect and every drop
/// the client reports.
#[derive(Debug, Clone)]
pub struct NatsBus {
    client: async_nats::Client,
    subject: String,
    events: broadcast::Sender<ConnEvent>,
}

/// The sending half of a [`NatsBus`]: publish, then flush to the server.
#[derive(Debug, Clone)]
pub struct NatsOutbox {
    client: async_nats::Client,
    subject: String,
}

/// Publishes invalidations on a NATS subject.
pub type NatsPublisher = Publisher<NatsOutbox>;

impl Outbox for NatsOutbox {
    async fn send(&self, payload: Vec<u8>) -> Result<(), BusError> {
        self.client
            .publish(self.subject.clone(), payload.into())
            .await
            .map_err(|e| BusError::transport("publishing to NATS", e))?;
        self.client
            .flush()
            .await
            .map_err(|e| BusError::transport("flushing to NATS", e))
    }

    /// Every message into the client's queue in turn (one connection keeps
    /// their order), then one flush for them all.
    async fn send_batch(&self, payloads: Vec<Vec<u8>>) -> Vec<Result<(), BusError>> {
        let mut results = Vec::with_capacity(payloads.len());
        for payload in payloads {
            let sent = self.client.publish(self.subject.clone(), payload.into()).await;
            results.push(sent.map_err(|e| BusError::transport("publishing to NATS", e)));
        }
        if let Err(e) = self.client.flush().await {
            let error = BusError::transport("flushing to NATS", e);
            for result in results.iter_mut().filter(|result| result.is_ok()) {
                *result = Err(error.clone());
            }
        }
        results
    }
}

impl NatsBus {
    /// Connects to the NATS server at `url` (e.g. `nats://127.0.0.1:4222`)
    /// without credentials; fails if it cannot be reached now.
    pub async fn connect(url: &str, subject: impl Into<String>) -> Result<Self, BusError> {
        Self::connect_with(url, subject, NatsOptions::new()).await
    }

    /// Connects with `options` (credentials, buffers).
    ///
    /// # Errors
    ///
    /// [`BusError::CredentialsInUrl`] if `url` carries a user, password or
    /// token; [`BusError::Transport`] if the server cannot be reached now.
    pub async fn connect_with(url: &str, subject: impl Into<String>, options: NatsOptions) -> Result<Self, BusError> {
        let (events, _) = broadcast::channel(64);
        let client = connect_client(url, options, events.clone()).await?;
        Ok(NatsBus {
            client,
            subject: subject.into(),
            events,
        })
    }

    /// A publisher for `origin`, signing with `signing_key` if given.
    pub fn publisher(&self, origin: impl Into<String>, signing_key: Option<SigningKey>) -> NatsPublisher {
        let outbox = NatsOutbox {
            client: self.client.clone(),
            subject: self.subject.clone(),
        };
        Publisher::new(Stamper::new(origin, signing_key), outbox)
    }

    /// Subscribes, then applies every message to `pool` in a background
    /// task. Returns once the server has the subscription. The task ends
    /// when the pool shuts down or is dropped.
    pub async fn attach<T: Send + Sync + 'static>(
        &self,
        pool: &Pool<T>,
        options: ListenOptions,
    ) -> Result<JoinHandle<()>, BusError> {
        let events = self.events.subscribe();
        let subscriber = self
            .client
            .subscribe(self.subject.clone())
            .await
            .map_err(|e| BusError::transport("subscribing on NATS", e))?;
        confirm_subscriptions(&self.client).await?;
        let client = self.client.clone();
        Ok(listener::spawn(pool, options, false, |sink| {
            pump(client, subscriber, events, sink)
        }))
    }
}

/// Returns once the server has processed every subscription `client` sent
/// so far. `Client::flush` only writes the socket (it does not wait for the
/// server), so a message published from another connection right after it
/// could still miss the subscription. The server handles one connection's
/// operations in order, so receiving a message we sent ourselves on a fresh
/// inbox proves the earlier `SUB`s are in place (after a reconnect, the
/// client re-sends its subscriptions before anything else).
async fn confirm_subscriptions(client: &async_nats::Client) -> Result<(), BusError> {
    let inbox = client.new_inbox();
    let transport =
        |e: Box<dyn std::error::Error + Send + Sync>| BusError::transport("confirming the NATS subscription", e);
    let mut probe = client.subscribe(inbox.clone()).await.map_err(|e| transport(e.into()))?;
    client
        .publish(inbox, Vec::new().into())
        .await
        .map_err(|e| transport(e.into()))?;
    client.flush().await.map_err(|e| transport(e.into()))?;
    match tokio::time::timeout(SUBSCRIBE_CONFIRM_TIMEOUT, probe.next()).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(transport("the connection closed while subscribing".into())),
        Err(_) => Err(transport(
            format!("the server did not confirm within {SUBSCRIBE_CONFIRM_TIMEOUT:?}").into(),
        )),
    }
}

async fn pump(
    client: async_nats::Client,
    mut subscriber: async_nats::Subscriber,
    mut events: broadcast::Receiver<ConnEvent>,
    sink: EventSink,
) {
    let mut lost = false;
    // An event read while coalescing slow-consumer reports, handled next.
    let mut pending = None;
    loop {
        let event = tokio::select! {
            biased;
            event = async { pending.take() }, if pending.is_some() => event,
            message = subscriber.next() => match message {
                Some(message) => {
                    let event = BusEvent::Message { payload: message.payload.to_vec(), stored_at_us: None };
                    if !sink.send(event).await {
                        return;
                    }
                    continue;
                }
                None => return, // the client was closed
            },
            event = events.recv() => Some(event),
        };
        let Some(event) = event else { continue };
        if event == Ok(ConnEvent::SlowConsumer) {
            // Drops already reported are all covered by one recovery applied
            // after them: coalesce them (a flood reports thousands).
            pending = loop {
                match events.try_recv() {
                    Ok(ConnEvent::SlowConsumer) => {}
                    Err(broadcast::error::TryRecvError::Empty) => break None,
                    Ok(other) => break Some(Ok(other)),
                    Err(broadcast::error::TryRecvError::Lagged(n)) => {
                        break Some(Err(broadcast::error::RecvError::Lagged(n)));
                    }
                    Err(broadcast::error::TryRecvError::Closed) => {
                        break Some(Err(broadcast::error::RecvError::Closed));
                    }
                }
            };
        }
        match conn_event(event, &mut lost, BusEvent::Reconnected) {
            Some(Some(event)) => {
                // The client reports `Connected` before it has re-sent its
                // subscriptions: recover only once they are in place, so the
                // recovery covers every message this listener missed and a
                // message published after it is delivered (one loss, one
                // recovery). Messages arriving meanwhile wait in the
                // subscription, and are applied after the recovery.
                if event == BusEvent::Reconnected
                    && let Err(error) = confirm_subscriptions(&client).await
                {
                    tracing::warn!(error = %error, "nats resubscription not confirmed; recovering anyway");
                }
                if !sink.send(event).await {
                    return;
                }
            }
            Some(None) => {}
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::has_credentials;

    /// URLs with a user, password or token are recognised; others are not.
    #[test]
    fn credentials_in_urls_are_recognised() {
        for url in [
            "nats://u:p@127.0.0.1:4222",
            "nats://token@127.0.0.1",
            "127.0.0.1:4222,nats://u:secret@10.0.0.1:4222",
            "tls://a:b@host/path",
        ] {
            assert!(has_credentials(url), "{url}");
        }
        for url in ["nats://127.0.0.1:4222", "127.0.0.1:4222", "nats://host/p@th"] {
            assert!(!has_credentials(url), "{url}");
        }
    }
}
