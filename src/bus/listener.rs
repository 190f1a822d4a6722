//! The one listener loop every transport feeds: a transport turns what its
//! client sees into [`BusEvent`]s, and [`Listener`] decides what each means
//! for the pool (apply, ignore as an echo or replay, reject, or recover).
//!
//! A transport's `attach` spawns one task per listener that runs its
//! *pump* (the client side: subscribe, read, reconnect) and this loop side
//! by side; they meet in a bounded channel, so a slow pool slows the pump
//! rather than growing a buffer. The task ends when the pool shuts down or
//! is dropped (at once: it waits on the pool's supervisor actor), or when
//! the pump ends.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::bus::origins::{Origins, Step};
use crate::bus::window::Link;
use crate::bus::wire::now_us;
use crate::bus::{BusError, Invalidation, ListenOptions, Recovery, Scope, reconnect_delay};
use crate::error::PoolError;
use crate::pool::{Pool, WeakPool};
use crate::telemetry::Metrics;
use crate::telemetry::{BusCount, BusMetrics};

/// How often a listener also checks whether its pool is shut down (a
/// backstop: the supervisor's exit normally ends it first).
const CLOSED_CHECK: Duration = Duration::from_secs(1);

/// Events between a transport's pump and the listener loop.
#[cfg_attr(not(any(feature = "redis", feature = "nats")), allow(dead_code))]
const EVENT_BUFFER: usize = 256;

/// What a transport saw, for the listener loop. Build a stream of these to
/// feed [`Pool::listen`] from a transport of your own.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BusEvent {
    /// A message as received.
    Message {
        /// The wire bytes.
        payload: Vec<u8>,
        /// When a durable transport's server stored it (µs since the Unix
        /// epoch), by the server's own clock, if known. A signed message's
        /// timestamp is checked against this instead of the time of
        /// receipt, so replaying a log after a long disconnect is not
        /// mistaken for a replay attack. Give it only when no writer can
        /// choose it (JetStream's store time, not a Redis Stream entry id);
        /// otherwise give `None`, and send [`Resumed`](BusEvent::Resumed)
        /// and [`CaughtUp`](BusEvent::CaughtUp) around the replay.
        stored_at_us: Option<u64>,
    },
    /// The connection was lost; the transport is reconnecting.
    Disconnected,
    /// An at-most-once transport is receiving again after a lost connection:
    /// messages may have been missed, so the recovery is applied. Send it
    /// once the subscription is in place again: the recovery covers what
    /// was published until then.
    Reconnected,
    /// A durable transport is receiving again and reads on from where it
    /// stopped: nothing was missed, no recovery. Until
    /// [`CaughtUp`](BusEvent::CaughtUp), signed messages without a stored
    /// time may be older than the window, but not stamped more than
    /// `max_age` before the [`Disconnected`](BusEvent::Disconnected).
    Resumed,
    /// A durable transport that [`Resumed`](BusEvent::Resumed) has read
    /// everything it missed: from here on a message's age is judged by the
    /// time it is received again.
    CaughtUp,
    /// The transport lost messages (a slow consumer, a listener that fell
    /// behind, a log that no longer holds the missed range): the recovery
    /// is applied.
    Lost {
        /// Why, for the log.
        reason: String,
    },
}

/// Applies bus messages to one pool.
///
/// Owned by one listener task, so its per-origin table needs no lock. It
/// holds the pool weakly: a listener never keeps a pool alive.
#[derive(Debug)]
pub(crate) struct Listener<T: Send + Sync + 'static> {
    pool: WeakPool<T>,
    metrics: Arc<Metrics>,
    options: ListenOptions,
    /// Whether the transport is durable (reads on after a reconnect, reports
    /// its own losses), so a restarted publisher's fresh stream means nothing
    /// was missed.
    durable: bool,
    /// Where each origin's runs stand.
    origins: Origins,
    /// The connection as the time window sees it (see `window.rs`).
    link: Link,
}

impl<T: Send + Sync + 'static> Listener<T> {
    pub(crate) fn new(pool: &Pool<T>, options: ListenOptions, durable: bool) -> Self {
        Listener {
            pool: pool.downgrade(),
            metrics: pool.metrics().clone(),
            options,
            durable,
            origins: Origins::default(),
            link: Link::Live,
        }
    }

    fn record(&self, kind: BusCount) {
        self.bus().record(kind);
    }

    fn bus(&self) -> &BusMetrics {
        &self.metrics.bus
    }

    /// Whether the pool is gone (its last handle dropped) or shut down.
    fn is_closed(&self) -> bool {
        self.pool.upgrade().is_none_or(|pool| pool.is_shut_down())
    }

    /// Handles one event. Never fails: bad messages are counted and logged.
    pub(crate) async fn on_event(&mut self, event: BusEvent) {
        self.link = self.link.after(&event, now_us());
        match event {
            BusEvent::Message { payload, stored_at_us } => self.on_message(&payload, stored_at_us).await,
            BusEvent::Disconnected => tracing::warn!("event bus connection lost; reconnecting"),
            BusEvent::Reconnected => {
                self.record(BusCount::Reconnect);
                tracing::info!("event bus reconnected; messages may have been missed");
                self.recover("reconnected after a lost connection").await;
            }
            BusEvent::Resumed => {
                self.record(BusCount::Reconnect);
                tracing::info!("event bus reconnected; reading on from the last applied message");
            }
            BusEvent::CaughtUp => tracing::info!("event bus caught up with what was missed"),
            BusEvent::Lost { reason } => {
                self.record(BusCount::Lost);
                tracing::warn!(%reason, "event bus transport lost messages");
                self.recover(&reason).await;
            }
        }
    }

    async fn on_message(&mut self, payload: &[u8], stored_at_us: Option<u64>) {
        let key = self.options.signing_key.as_ref();
        let decoded = Invalidation::decode_with(payload, key, self.options.accept_signed_v1)
            .and_then(|message| self.check_window(message, stored_at_us));
        match decoded {
            Ok(message) => self.on_invalidation(message).await,
            Err(error) => {
                let kind = match &error {
                    BusError::Malformed(_) => BusCount::Malformed,
                    _ => BusCount::Rejected,
                };
                self.record(kind);
                tracing::warn!(error = %error, "invalidation message not applied");
            }
        }
    }

    /// With a signing key, refuses a message whose timestamp is outside the
    /// window (see `window.rs`): a captured message cannot be replayed later
    /// to flush fresh listeners.
    fn check_window(&self, message: Invalidation, stored_at_us: Option<u64>) -> Result<Invalidation, BusError> {
        if self.options.signing_key.is_none() {
            return Ok(message);
        }
        self.link.check(message, stored_at_us, now_us(), self.options.max_age)
    }

    /// Handles one decoded, verified message: ignores echoes and replays,
    /// recovers after a gap or a publisher restart a recovery has not
    /// already covered, applies it (rules in `origins.rs`).
    async fn on_invalidation(&mut self, message: Invalidation) {
        if message.origin == self.options.origin {
            self.record(BusCount::Echo);
            return;
        }
        let (origin, epoch, seq) = (message.origin.as_str(), message.epoch, message.seq);
        match self.origins.step(origin, epoch, seq) {
            Step::First | Step::Next => {}
            Step::Replay { last } => {
                self.record(BusCount::Replayed);
                tracing::warn!(origin, epoch, seq, last, "replayed invalidation message ignored");
                return;
            }
            Step::Restart { covered } => {
                self.record(BusCount::Restart);
                tracing::warn!(
                    origin,
                    epoch,
                    seq,
                    covered,
                    "publisher restarted under a known origin: a new run"
                );
                // Over pub/sub the old run's last messages may have been lost
                // unseen; a durable log delivered them all before this one,
                // so only a new run that does not start at 1 lost some. A
                // recovery since the origin was last heard of covered them.
                if !covered && (!self.durable || seq != 1) {
                    self.recover("a publisher restarted").await;
                }
            }
            Step::Gap { last } => {
                self.record(BusCount::Gap);
                tracing::warn!(origin, epoch, seq, last, "gap in invalidation sequence");
                self.recover("a gap in an origin's sequence").await;
            }
        }
        self.origins.heard(origin, epoch, seq);
        let Some(pool) = self.pool.upgrade() else { return };
        if apply(&pool, &message.scope).await.is_ok() {
            self.record(BusCount::Applied);
            let lag_us = now_us().saturating_sub(message.ts_us);
            self.bus().record_lag(lag_us);
            self.metrics.export.bus_lag(Duration::from_micros(lag_us));
        }
    }

    /// Applies the recovery. Whatever was missed until now is then dealt
    /// with (also under `Recovery::Nothing`, by choice), so the next message
    /// of each origin re-bases its numbers instead of recovering again.
    async fn recover(&mut self, why: &str) {
        self.origins.recovered();
        let scope = match &self.options.recovery {
            Recovery::FlushAll => Scope::All,
            Recovery::FlushPrefix(prefix) => Scope::Prefix(prefix.clone()),
            Recovery::Nothing => return,
        };
        let Some(pool) = self.pool.upgrade() else { return };
        self.record(BusCount::Recovery);
        let retired = apply(&pool, &scope).await.unwrap_or(0);
        tracing::warn!(scope = ?scope, retired, why, "invalidation recovery: flushed what may be stale");
    }
}

/// The sending end of a listener's event channel, given to a transport's pump.
#[derive(Debug)]
#[cfg_attr(not(any(feature = "redis", feature = "nats")), allow(dead_code))]
pub(crate) struct EventSink(mpsc::Sender<BusEvent>);

#[cfg_attr(not(any(feature = "redis", feature = "nats")), allow(dead_code))]
impl EventSink {
    /// Hands `event` to the listener loop; `false` once the loop has ended
    /// (the pump should stop).
    pub(crate) async fn send(&self, event: BusEvent) -> bool {
        self.0.send(event).await.is_ok()
    }

    /// Whether the listener loop has ended.
    pub(crate) fn is_closed(&self) -> bool {
        self.0.is_closed()
    }

    /// Calls `connect` until it succeeds, waiting before each try with
    /// exponential backoff and jitter (100 ms to 10 s); `None` once the
    /// listener loop has ended. `what` names the channel in the warn logs.
    pub(crate) async fn reconnect<C, F, Fut>(&self, what: &str, mut connect: F) -> Option<C>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<C, BusError>>,
    {
        let mut attempt = 0;
        loop {
            tokio::time::sleep(reconnect_delay(attempt)).await;
            if self.is_closed() {
                return None;
            }
            match connect().await {
                Ok(connected) => return Some(connected),
                Err(error) => {
                    tracing::warn!(error = %error, attempt, what, "event bus reconnect failed");
                    attempt += 1;
                }
            }
        }
    }
}

/// Spawns a listener task for `pool`: `pump` (the transport's client side)
/// and the listener loop, side by side in one task. The task ends when the
/// pool shuts down or is dropped, or after the pump ends and its events
/// are handled.
#[cfg_attr(not(any(feature = "redis", feature = "nats")), allow(dead_code))]
pub(crate) fn spawn<T, P, F>(pool: &Pool<T>, options: ListenOptions, durable: bool, pump: P) -> JoinHandle<()>
where
    T: Send + Sync + 'static,
    P: FnOnce(EventSink) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(EVENT_BUFFER);
    let pump = pump(EventSink(tx));
    let events = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|event| (event, rx)) });
    let run = run(Listener::new(pool, options, durable), pool, events);
    tokio::spawn(async move {
        // When the pump ends it drops its sink, and the loop ends after
        // handling what is buffered; when the loop ends, the pump is dropped.
        let pump = async move {
            pump.await;
            std::future::pending::<()>().await
        };
        // The pump first: an event it hands over in this poll is then
        // handled in the same poll (polled the other way round, the loop
        // would wait for the task's next turn: +100 us of lag on a busy
        // machine, measured with the embedded bus).
        tokio::select! {
            biased;
            () = pump => {}
            () = run => {}
        }
    })
}

/// Spawns a listener task for `pool` that handles `events` (a transport
/// that is a plain stream, with no client side to drive).
pub(crate) fn spawn_stream<T, S>(pool: &Pool<T>, options: ListenOptions, durable: bool, events: S) -> JoinHandle<()>
where
    T: Send + Sync + 'static,
    S: Stream<Item = BusEvent> + Send + 'static,
{
    tokio::spawn(run(Listener::new(pool, options, durable), pool, events))
}

/// The listener loop: handles `events` until they end or the pool is gone.
fn run<T, S>(mut listener: Listener<T>, pool: &Pool<T>, events: S) -> impl Future<Output = ()> + Send + 'static
where
    T: Send + Sync + 'static,
    S: Stream<Item = BusEvent> + Send + 'static,
{
    let supervisor = pool.actor().get_cell();
    async move {
        // Ends the loop as soon as the pool's supervisor stops (shutdown, or
        // the last handle dropped), even on a bus where nothing arrives.
        let stopped = async move { supervisor.wait(None).await };
        let mut stopped = std::pin::pin!(stopped);
        let mut events = std::pin::pin!(events);
        let mut check = tokio::time::interval(CLOSED_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = &mut stopped => return,
                event = events.next() => match event {
                    Some(event) => {
                        if listener.is_closed() {
                            return;
                        }
                        listener.on_event(event).await;
                    }
                    None => return,
                },
                _ = check.tick() => {}
            }
            if listener.is_closed() {
                return;
            }
        }
    }
}

/// Joining a fleet. Here, not in `pool/`: the bus is the layer above the
/// pool (it names `Pool`), so the pool's bus methods live with the bus.
impl<T: Send + Sync + 'static> Pool<T> {
    /// Applies one invalidation to this pool at once (no origin, replay or
    /// signature checks: those are for messages from a bus). Returns how many
    /// keys were retired.
    ///
    /// # Errors
    ///
    /// [`PoolError::ShutDown`] once the pool is stopping.
    pub async fn apply(&self, scope: &Scope) -> Result<usize, PoolError> {
        apply(self, scope).await
    }

    /// Applies the [`BusEvent`]s of `events` (a transport of your own) in a
    /// background task, with the same echo, signature, window, replay, gap
    /// and recovery handling as the built-in transports (treated as at most
    /// once: a [`BusEvent::Reconnected`] recovers). The task ends when the
    /// stream ends or the pool shuts down or is dropped; it does not keep the
    /// pool alive.
    pub fn listen<S>(&self, events: S, options: ListenOptions) -> JoinHandle<()>
    where
        S: Stream<Item = BusEvent> + Send + 'static,
    {
        spawn_stream(self, options, false, events)
    }
}

/// Applies one scope to the pool; returns how many keys it retired.
pub(crate) async fn apply<T: Send + Sync + 'static>(pool: &Pool<T>, scope: &Scope) -> Result<usize, PoolError> {
    match scope {
        Scope::Key(key) => pool.invalidate(key).await.map(usize::from),
        Scope::Prefix(prefix) => pool.invalidate_by_prefix(prefix).await,
        Scope::All => pool.invalidate_by_prefix("").await,
    }
}
