//! warmpool keeps expensive per-key instances warm: SDK and LLM clients per
//! tenant and provider, agent runtimes per agent, kernels per project.
//!
//! Each instance is built once per key and credentials hash, handed out to
//! many callers as a [`Lease`], and retired when its credentials change, its
//! TTL or idle time runs out, it is invalidated, the pool is over capacity,
//! or the pool shuts down. A retired instance is disposed (by an optional
//! async hook) exactly once, after its last lease is dropped.
//!
//! ```no_run
//! use std::time::Duration;
//! use warmpool::{Pool, hash_credentials};
//!
//! # struct Client;
//! # async fn connect(_: &str) -> Result<Client, std::io::Error> { Ok(Client) }
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let pool: Pool<Client> = Pool::builder()
//!     .time_to_live(Duration::from_secs(300))
//!     .max_entries(1_000)
//!     .spawn()
//!     .await?;
//!
//! let creds = serde_json::json!({"api_key": "sk-...", "org": "acme"});
//! let hash = hash_credentials(&creds)?;
//! let client = pool
//!     .get_or_create("acme:openai", hash, move || connect("sk-..."))
//!     .await?;
//! // use `*client` ...
//! drop(client);
//! pool.shutdown(Duration::from_secs(5)).await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - [`Pool`] (`pool.rs`): the cheap `Clone` handle, and [`PoolBuilder`].
//! - `actors/`: the supervisor actor (routing, LRU order, prefix index,
//!   sweep, capacity, supervision, shutdown), one key actor per key (owns the
//!   instance, runs the factory off its mailbox, answers waiters) and the
//!   disposer (runs dispose hooks).
//! - [`messages`]: the supervisor's and key actors' messages; [`SupervisorMsg`] is
//!   public so other actors can invalidate, read stats or shut down.
//! - [`bus`]: invalidation across service instances: the version-2 wire
//!   message with HMAC signing ([`bus::wire`]), one listener loop every
//!   transport feeds with [`bus::BusEvent`]s (echoes, replays, the
//!   timestamp window, sequence gaps, restarted publishers, recovery), one
//!   [`bus::Publisher`] shape, and one file per transport: the embedded
//!   [`bus::LocalBus`], and behind the `redis` and `nats` features Redis
//!   pub/sub, Redis Streams, core NATS and NATS JetStream.
//! - [`bus::BusStats`] (`bus_stats.rs`): the bus counters, imported by both
//!   `stats.rs` and `bus/`.
//! - `view.rs`: the read view every hit reads without asking an actor (a
//!   lock-free map of published instances; only actors write it).
//! - `inflight.rs`: misses in flight, so that a call that misses while
//!   another call of the same key and hash is asking the actors waits for
//!   that answer instead of sending a message of its own.
//! - [`Lease`] (`lease.rs`): shared ownership whose last drop disposes.
//! - `factory.rs`: how often a request's factory may run (retried, or the
//!   single attempt of [`Pool::try_get_with`]) and [`InitDiscarded`].
//! - `telemetry/`: the export of the pool's figures through the `metrics`
//!   facade (feature `metrics`): counters and gauges published from the
//!   pool's own atomics on an interval, histograms recorded per event.
//! - `trace.rs`: the pool's `tracing` spans (`build`, `dispose`, `retire`,
//!   `refresh`), their names and fields in one place.
//! - [`hash_credentials`] (`hash.rs`), [`PoolConfig`] and
//!   [`RestartPolicy`] (`config.rs`), [`Stats`] and [`Counters`] (`stats.rs`), [`PoolError`]
//!   (`error.rs`).
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]

mod actors;
pub mod bus;
mod config;
mod disposal;
mod error;
mod factory;
mod hash;
mod ids;
mod inflight;
mod instance;
mod lease;
pub mod messages;
mod pool;
mod restart;
mod telemetry;
mod view;

// The README's Rust blocks are compiled as doctests; this item exists only
// while rustdoc collects doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use config::{ConfigCaps, ConfigError, DEFAULT_ENV_PREFIX, PoolConfig, RestartPolicy};
pub use error::{BoxError, PoolError, SharedError, SpawnError};
pub use factory::InitDiscarded;
pub use hash::{CredentialsHash, HashError, ParseHashError, hash_credentials};
pub use lease::{InstanceId, Lease};
pub use messages::SupervisorMsg;
pub use pool::{DisposeOutcome, Pool, PoolBuilder};
pub use telemetry::{CoolingKey, Counters, Retirements, ShutdownReport, Stats};
