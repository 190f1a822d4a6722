//! The pool's actors: the supervisor, one key actor per key, and the disposer.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use ractor::ActorRef;

use crate::config::{DEFAULT_PROBE_INTERVAL, DEFAULT_PROBE_TIMEOUT, PoolConfig, RestartPolicy};
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
    /// Leave to write `view`. Private to `actors/` (no `pub`): only the
    /// actors' modules can reach it, so no other code can write the view.
    writer: crate::view::ViewWriter,
    /// The misses being asked for, which later misses of the same key and
    /// hash wait on instead of asking too; written by callers, holds no
    /// instance.
    pub(crate) in_flight: crate::inflight::InFlight<T>,
    /// The freshness probe, if the pool has one.
    pub(crate) probe: Option<ProbeHook<T>>,
    /// The disposer's count of build tasks (see `DisposerArgs::build_tasks`).
    pub(crate) build_tasks: Arc<std::sync::atomic::AtomicU64>,
}

impl<T: Send + Sync + 'static> Shared<T> {
    /// What a new pool's actors share, with a fresh read view whose writer
    /// stays here.
    pub(crate) fn new(
        settings: Settings,
        metrics: Arc<Metrics>,
        disposer: ActorRef<DisposerMsg<T>>,
        probe: Option<ProbeHook<T>>,
        build_tasks: Arc<std::sync::atomic::AtomicU64>,
    ) -> Self {
        let (view, writer) = crate::view::ReadView::new();
        Shared {
            settings,
            metrics,
            disposer,
            lifecycle: lifecycle::Lifecycle::default(),
            view,
            writer,
            in_flight: crate::inflight::InFlight::new(),
            probe,
            build_tasks,
        }
    }
}

impl Settings {
    /// The settings `config` gives, with the defaults of what it does not
    /// hold (`config.rs`).
    pub(crate) fn from_config(config: &PoolConfig) -> Self {
        let mut settings = Settings {
            time_to_live: None,
            time_to_idle: None,
            max_entries: usize::MAX,
            sweep_interval: None,
            create_timeout: None,
            dispose_timeout: None,
            restart_policy: RestartPolicy::default(),
            refresh_after: None,
            probe_interval: DEFAULT_PROBE_INTERVAL,
            probe_timeout: nonzero(DEFAULT_PROBE_TIMEOUT),
        };
        settings.apply(config);
        settings
    }

    /// Takes every value `config` holds; zero means "never" (or "no
    /// limit", "unbounded") for each.
    pub(crate) fn apply(&mut self, config: &PoolConfig) {
        self.time_to_live = nonzero(config.time_to_live());
        self.time_to_idle = nonzero(Duration::from_secs(config.idle_seconds));
        self.max_entries = unbounded_if_zero(config.max_entries);
        self.sweep_interval = nonzero(Duration::from_secs(config.sweep_seconds));
        self.create_timeout = nonzero(Duration::from_millis(config.create_timeout_ms));
        self.dispose_timeout = nonzero(Duration::from_millis(config.dispose_timeout_ms));
        self.refresh_after = nonzero(Duration::from_secs(config.refresh_seconds));
    }
}

/// Zero entries means "no limit", as zero means "never" for every duration.
pub(crate) fn unbounded_if_zero(max_entries: usize) -> usize {
    if max_entries == 0 { usize::MAX } else { max_entries }
}

/// Zero means "never" for every duration setting.
pub(crate) fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}
