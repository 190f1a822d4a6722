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
//! `ARCHITECTURE.md`, at the root of the repository, is the codemap: each file, the layers (no file imports
//! a higher one) and the route of every operation. In short, bottom up:
//!
//! 1. `ids.rs`, `error.rs`, `config.rs`, `hash.rs`, `restart.rs`,
//!    `factory.rs`, `guard.rs`: ids and newtypes ([`InstanceId`]),
//!    [`PoolError`], [`PoolConfig`], [`hash_credentials`], the restart
//!    policy's bookkeeping, calling user code.
//! 2. `instance.rs` (an instance and the hit rule), `disposal.rs` (the
//!    disposer's protocol, which an instance sends itself to), `telemetry/`
//!    (every figure: [`Stats`], [`Counters`], the bus counters, the
//!    `metrics` export, the `tracing` spans).
//! 3. [`Lease`] (`lease.rs`), the read view (`view.rs`), misses in flight
//!    (`inflight.rs`).
//! 4. `actors/`: the supervisor, the key actors and the disposer, each with
//!    its protocol in its folder; [`SupervisorMsg`] is the public one.
//! 5. [`Pool`] and [`PoolBuilder`] (`pool/`), and [`bus`], invalidation
//!    across service instances.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]

mod actors;
pub mod bus;
mod config;
mod disposal;
mod error;
mod factory;
mod guard;
mod hash;
mod ids;
mod inflight;
mod instance;
mod lease;
mod messages;
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
