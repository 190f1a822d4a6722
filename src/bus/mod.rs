//! Invalidation across service instances.
//!
//! Every instance publishes what it invalidates (a key, a prefix, or
//! everything) and listens for what the others publish. The parts:
//!
//! - [`wire`]: the message ([`Invalidation`]), its version-2 JSON form, HMAC
//!   signing ([`SigningKey`]) and the per-origin [`Stamper`].
//! - `listener.rs`: the one loop every transport feeds with [`BusEvent`]s
//!   (messages, disconnects, reconnects, losses): echo, replay, window,
//!   gap and publisher-restart handling, and [`Recovery`]; `origins.rs`:
//!   each origin's runs, and what a message is (next, copy, gap, restart);
//!   `window.rs`: which clock a signed message's age is judged by; also
//!   [`Pool::apply`](crate::Pool::apply) and [`Pool::listen`](crate::Pool::listen).
//! - `publisher.rs`: [`Publisher`], the one publishing shape every
//!   transport shares, and [`Outbox`], a transport's sending half: one task
//!   per publisher stamps and sends in one order, in batches.
//! - One file per transport, each giving a [`Publisher`] and an `attach`:
//!   [`LocalBus`] (in process), and behind features `redis::RedisBus`
//!   (pub/sub), `redis_streams::RedisStreamBus` (durable), `nats::NatsBus`
//!   and `jetstream::JetStreamBus` (durable).
//!
//! # Delivery
//!
//! Pub/sub (the embedded bus, Redis pub/sub, core NATS) is at most once: a
//! listener treats a reconnect, a gap in an origin's sequence numbers, a
//! restarted publisher and any drop the client reports as "something may
//! have been missed" and applies its [`Recovery`] (by default it flushes
//! everything). The durable transports (Redis Streams, NATS JetStream)
//! keep a log: a listener that reconnects reads on from where it stopped
//! and applies exactly what it missed, and flushes only when the log no
//! longer holds that range (counted in `BusStats::lost`, logged at warn).
//!
//! Listeners ignore their own origin's echoes, and count and log (never
//! apply) malformed messages, unsigned, badly signed, version-1 or
//! out-of-window ones when a signing key is set, and replays.
//!
//! # Runs and replays
//!
//! A message's origin and epoch name its publisher's run, numbered 1, 2,
//! 3, …; within a run, a number not above the last one heard is a replay.
//! An epoch not heard before under a known origin is a restarted publisher,
//! whether it is above the epochs heard or below them (a publisher with a
//! stable origin restarting on a clock stepped back). Listeners remember
//! the last 8 runs of each origin, so copies from any of them stay replays;
//! a copy from a run a listener never heard, or forgot, is refused only by
//! the time window of signed messages (`max_age`). After a recovery, the
//! next message of each origin re-bases its numbers: one loss, one
//! recovery.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::PoolError;

#[cfg(feature = "nats")]
pub mod jetstream;
mod listener;
mod local;
#[cfg(feature = "nats")]
pub mod nats;
mod origins;
mod publisher;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "redis")]
pub mod redis_streams;
mod window;
pub mod wire;

pub use crate::telemetry::BusStats;
pub use listener::BusEvent;
pub use local::{LocalBus, LocalOutbox, LocalPublisher};
pub use publisher::{Outbox, Publisher};
pub use wire::{Invalidation, MIN_KEY_LEN, Scope, SigningKey, Stamper, WIRE_VERSION, new_origin};

/// How far a signed message's timestamp may be from the time it was
/// received (or stored, on JetStream), by default.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(300);

/// A shared, type-erased error from a transport's client.
pub type TransportSource = Arc<dyn std::error::Error + Send + Sync>;

/// What went wrong with a bus message or a transport.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum BusError {
    /// Not a valid invalidation: bad JSON, unknown version or scope, a
    /// key/prefix scope without a target, or an unknown field.
    Malformed(String),
    /// A signing key is set and the message (from this origin) has no signature.
    Unsigned(String),
    /// The signature does not match.
    BadSignature(String),
    /// A version-1 message reached a listener with a signing key; version-1
    /// signatures are forgeable, so they are refused unless
    /// [`ListenOptions::accept_signed_v1`] is set for a migration.
    Legacy(String),
    /// A signed message whose timestamp is further than
    /// [`ListenOptions::max_age`] from the time it was received or stored: a
    /// replay of a captured message, or a clock far off.
    Stale {
        /// The origin the message claims.
        origin: String,
        /// How far outside the window it is.
        skew: Duration,
    },
    /// A signing key shorter than [`MIN_KEY_LEN`] bytes.
    WeakKey {
        /// The length given.
        len: usize,
    },
    /// A server URL with a user, password or token in it: the client logs
    /// URLs, so credentials go in the transport's options instead.
    CredentialsInUrl,
    /// The transport failed (connect, subscribe, read or publish).
    Transport {
        /// What was being done.
        context: String,
        /// The client's error.
        source: TransportSource,
    },
    /// Applying an invalidation to this instance's own pool failed (it is
    /// shutting down).
    Pool(PoolError),
}

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BusError::Malformed(why) => write!(f, "malformed invalidation message: {why}"),
            BusError::Unsigned(origin) => write!(f, "unsigned invalidation message from origin `{origin}` rejected"),
            BusError::BadSignature(origin) => {
                write!(f, "badly signed invalidation message from origin `{origin}` rejected")
            }
            BusError::Legacy(origin) => write!(
                f,
                "version-1 invalidation message from origin `{origin}` rejected: its signature format is forgeable"
            ),
            BusError::Stale { origin, skew } => write!(
                f,
                "invalidation message from origin `{origin}` rejected: its timestamp is {skew:?} outside the window"
            ),
            BusError::WeakKey { len } => write!(
                f,
                "signing key of {len} bytes refused: a signing key must be at least 32 bytes (random)"
            ),
            BusError::CredentialsInUrl => f.write_str(
                "the server URL carries credentials, which the client would log; pass them in the options \
                 (user and password, token or credentials file) and give the URL without them",
            ),
            BusError::Transport { context, source } => write!(f, "event bus transport error: {context}: {source}"),
            BusError::Pool(error) => write!(f, "applying the invalidation to this pool failed: {error}"),
        }
    }
}

/// Written by hand rather than derived: `source()` must return the client's
/// own error (so callers can downcast it), not the `Arc` that shares it.
impl std::error::Error for BusError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BusError::Transport { source, .. } => Some(&**source),
            BusError::Pool(error) => Some(error),
            _ => None,
        }
    }
}

impl From<PoolError> for BusError {
    fn from(error: PoolError) -> Self {
        BusError::Pool(error)
    }
}

impl BusError {
    /// A transport error: `context` says what was being done.
    pub(crate) fn transport(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        BusError::Transport {
            context: context.into(),
            source: Arc::from(source.into()),
        }
    }
}

/// What a listener does when messages may have been missed (after a
/// reconnect of an at-most-once transport, a gap in an origin's sequence
/// numbers, a restarted publisher, or messages the transport lost).
///
/// One loss, one recovery: a recovery covers whatever was published before
/// it, so afterwards the next message of each origin re-bases its sequence
/// numbers without recovering again (also under [`Recovery::Nothing`]: the
/// loss was dealt with, by choice).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Recovery {
    /// Retire everything. The safe default.
    #[default]
    FlushAll,
    /// Retire every key under this prefix (the part of the key space that
    /// other instances invalidate).
    FlushPrefix(String),
    /// Do nothing (only for pools whose instances can safely be stale).
    Nothing,
}

/// How a listener treats messages.
#[derive(Debug, Clone)]
pub struct ListenOptions {
    /// This instance's origin id: messages from it (echoes of its own
    /// publications) are ignored. Use the same id for its publisher.
    /// Defaults to empty (no echo is recognised).
    pub origin: String,
    /// When set, only version-2 messages signed with this key, whose
    /// timestamp is within `max_age`, are applied. Defaults to none.
    pub signing_key: Option<SigningKey>,
    /// What to do when messages may have been missed. Defaults to
    /// [`Recovery::FlushAll`].
    pub recovery: Recovery,
    /// With a signing key: how far a message's timestamp may be from the
    /// time it was received. On JetStream it is the time the server stored
    /// it instead, and a Redis Streams listener reading what it missed after
    /// its own disconnect also accepts messages stamped up to `max_age`
    /// before it lost its connection, so that replaying a log is not
    /// mistaken for an attack. Outside it, the message is rejected, so a
    /// captured message cannot be replayed later. Defaults to
    /// [`DEFAULT_MAX_AGE`] (5 minutes); zero turns the check off.
    pub max_age: Duration,
    /// With a signing key: also accept signed version-1 messages. Only for
    /// the migration from version 1 (turn it on in listeners, upgrade the
    /// publishers, turn it off): version-1 signatures are forgeable.
    /// Defaults to `false`.
    pub accept_signed_v1: bool,
}

impl Default for ListenOptions {
    fn default() -> Self {
        ListenOptions {
            origin: String::new(),
            signing_key: None,
            recovery: Recovery::default(),
            max_age: DEFAULT_MAX_AGE,
            accept_signed_v1: false,
        }
    }
}

impl ListenOptions {
    /// Options for an instance whose origin is `origin`, everything else at
    /// its default.
    pub fn new(origin: impl Into<String>) -> Self {
        ListenOptions {
            origin: origin.into(),
            ..Default::default()
        }
    }
}

/// Exponential backoff with jitter for reconnects: 100 ms doubling to 10 s.
#[cfg_attr(not(any(feature = "redis", feature = "nats")), allow(dead_code))]
pub(crate) fn reconnect_delay(attempt: u32) -> Duration {
    let base = Duration::from_millis(100)
        .saturating_mul(1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX))
        .min(Duration::from_secs(10));
    base / 2 + (base / 2).mul_f64(fastrand::f64())
}
