//! The pool's actors: the supervisor, one key actor per key, and the disposer.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use ractor::ActorRef;

use crate::config::RestartPolicy;
use crate::error::BoxError;
use crate::lease::Lease;
use crate::telemetry::Metrics;

pub(crate) mod disposer;

pub(crate) use disposer::{DisposeHook, DisposerMsg};
pub(crate) mod key;
pub(crate) mod lifecycle;
pub(crate) mod supervisor;

/// A freshness probe as the pool stores it (see `PoolBuilder::probe`).
pub(crate) type ProbeHook<T> = Arc<dyn Fn(Lease<T>) -> BoxFuture<'static, Result<bool, BoxError>> + Send + Sync>;

/// The settings every actor reads; fixed when the pool is built. A zero
/// duration in the builder becomes `None` here ("never" / "unbounded").
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) time_to_live: Option<Duration>,
    pub(crate) time_to_idle: Option<Duration>,
    pub(crate) max_entries: usize,
    pub(crate) sweep_interval: Option<Duration>,
    pub(crate) create_timeout: Option<Duration>,
    pub(crate) dispose_timeout: Option<Duration>,
    pub(crate) restart_policy: RestartPolicy,
    /// Refresh-ahead: an instance older than this is rebuilt in the
    /// background on its next hit.
    pub(crate) refresh_after: Option<Duration>,
    /// How long a probed instance counts as fresh.
    pub(crate) probe_interval: Duration,
    /// Longest a probe may run before it counts as fresh anyway.
    pub(crate) probe_timeout: Option<Duration>,
}

/// What the supervisor and all key actors share: settings, counters and the
/// disposer's address. Immutable after start, so sharing needs no lock.
pub(crate) struct Shared<T: Send + Sync + 'static> {
    pub(crate) settings: Settings,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) disposer: ActorRef<DisposerMsg<T>>,
    /// Running, stopping or stopped; advanced by the supervisor, read by
    /// every handle.
    pub(crate) lifecycle: lifecycle::Lifecycle,
    /// What hits read without asking an actor; written only by actors.
    pub(crate) view: crate::view::ReadView<T>,
    /// The misses being asked for, which later misses of the same key and
    /// hash wait on instead of asking too; written by callers, holds no
    /// instance.
    pub(crate) in_flight: crate::inflight::InFlight<T>,
    /// The freshness probe, if the pool has one.
    pub(crate) probe: Option<ProbeHook<T>>,
}

/// Zero means "never" for every duration setting.
pub(crate) fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}
