//! [`PoolBuilder`]: the settings, their defaults, and starting the
//! pool's actors.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use ractor::{Actor, ActorCell};

use super::metrics::start_publisher;
use crate::actors::disposer::{DisposerActor, DisposerArgs};
use crate::actors::supervisor::{SupervisorActor, SupervisorArgs};
use crate::actors::{DisposeHook, ProbeHook, Settings, Shared, nonzero};
use crate::config::{DROP_SHUTDOWN_DEADLINE, PoolConfig, RestartPolicy};
use crate::error::{BoxError, SpawnError};
use crate::lease::Lease;
use crate::telemetry::Metrics;
use crate::telemetry::MetricsOptions;

use super::{Pool, PoolInner};

/// Builds a [`Pool`]. Every setter says its default; a zero duration means
/// "never" (or "unbounded" for timeouts), and so does a duration too long for
/// the clock (`Duration::MAX` is a valid "practically never").
#[must_use = "a builder does nothing until `spawn` is called"]
pub struct PoolBuilder<T: Send + Sync + 'static> {
    settings: Settings,
    on_dispose: Option<DisposeHook<T>>,
    probe: Option<ProbeHook<T>>,
    name: Option<String>,
    /// The `metrics` export's settings (nothing without the feature).
    metrics: MetricsOptions,
}

impl<T: Send + Sync + 'static> fmt::Debug for PoolBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("settings", &self.settings)
            .field("on_dispose", &self.on_dispose.is_some())
            .field("probe", &self.probe.is_some())
            .field("name", &self.name)
            .finish()
    }
}

impl<T: Send + Sync + 'static> Default for PoolBuilder<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Send + Sync + 'static> PoolBuilder<T> {
    /// A builder with every setting at its default.
    pub fn new() -> Self {
        PoolBuilder {
            // One source of defaults: `PoolConfig::default`, and the consts
            // in `config.rs` for what it does not hold.
            settings: Settings::from_config(&PoolConfig::default()),
            on_dispose: None,
            probe: None,
            name: None,
            metrics: MetricsOptions::default(),
        }
    }

    /// Applies every value of `config` (for example from
    /// [`PoolConfig::from_env`]). Setters called afterwards override it.
    pub fn config(mut self, config: &PoolConfig) -> Self {
        self.settings.apply(config);
        self
    }

    /// Most keys resident at once; past it the least recently used key
    /// without a live lease or a build in flight is retired. Defaults to
    /// 1,000; zero means no limit (as zero means "never" for every duration).
    pub fn max_entries(mut self, max_entries: usize) -> Self {
        self.settings.max_entries = crate::actors::unbounded_if_zero(max_entries);
        self
    }

    /// How long an instance is served after its creation. Defaults to 300 s;
    /// zero means forever.
    pub fn time_to_live(mut self, ttl: Duration) -> Self {
        self.settings.time_to_live = nonzero(ttl);
        self
    }

    /// How long an instance may go without being handed out before it is
    /// retired. Defaults to zero (off).
    pub fn time_to_idle(mut self, idle: Duration) -> Self {
        self.settings.time_to_idle = nonzero(idle);
        self
    }

    /// How often the sweep retires expired and idle instances when nobody
    /// calls. Defaults to 60 s; zero turns the sweep off (expiry is then
    /// checked only on calls).
    pub fn sweep_interval(mut self, interval: Duration) -> Self {
        self.settings.sweep_interval = nonzero(interval);
        self
    }

    /// Longest a factory call may run before it fails with
    /// [`PoolError::Timeout`](crate::PoolError::Timeout). Defaults to 30 s; zero means unbounded.
    pub fn create_timeout(mut self, timeout: Duration) -> Self {
        self.settings.create_timeout = nonzero(timeout);
        self
    }

    /// Longest a dispose hook may run before it is abandoned and counted as
    /// a failure. Also the deadline of the shutdown that dropping the last
    /// handle starts (30 s when this is zero: that shutdown is never
    /// unbounded). Defaults to 10 s; zero means unbounded.
    pub fn dispose_timeout(mut self, timeout: Duration) -> Self {
        self.settings.dispose_timeout = nonzero(timeout);
        self
    }

    /// What to do when a factory keeps failing. Defaults to
    /// [`RestartPolicy::default`]: 2 retries with backoff from 100 ms to 2 s,
    /// and a cool-down from 10 s doubling to 5 min after 5 failures within 30 s.
    pub fn restart_policy(mut self, policy: RestartPolicy) -> Self {
        self.settings.restart_policy = policy;
        self
    }

    /// An async hook that runs exactly once per instance, after it is retired
    /// and its last lease is dropped: close connections, flush, log out.
    /// It gets the key and the instance. Each runs in its own task, bounded
    /// by `dispose_timeout`; an error, panic or timeout is logged and counted
    /// in [`Counters::dispose_failures`](crate::Counters::dispose_failures). Defaults to none (the instance is
    /// dropped).
    ///
    /// The hook may return `()` or a `Result<(), E>`.
    pub fn on_dispose<H, Fut>(mut self, hook: H) -> Self
    where
        H: Fn(String, T) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: DisposeOutcome,
    {
        self.on_dispose = Some(Arc::new(move |key, value| {
            hook(key, value).map(DisposeOutcome::into_result).boxed()
        }));
        self
    }

    /// Refresh-ahead: an instance older than `after` (from its creation) is
    /// still served, and the first hit that finds it so asks its key actor
    /// to rebuild it in the background with the factory of its last build
    /// (same restart policy retries and `create_timeout`). On success the
    /// new instance is published atomically and the old one retired (cause
    /// `refreshed`, counted in [`Counters::refreshes`](crate::Counters::refreshes)); on failure the old one
    /// keeps serving until its TTL, the failure is logged and counted in
    /// [`Counters::refresh_failures`](crate::Counters::refresh_failures), and the next hit may ask again once a
    /// backoff has passed (the restart policy's, growing with each refresh
    /// that failed in a row). No caller ever waits for a refresh; the TTL
    /// stays the hard limit, so pick `after` below it. An inserted instance
    /// is never refreshed (the pool has no factory for it).
    ///
    /// Defaults to zero (off). [`Pool::get`] never triggers it.
    pub fn refresh_after(mut self, after: Duration) -> Self {
        self.settings.refresh_after = nonzero(after);
        self
    }

    /// A freshness probe, for instances that can go bad in ways the pool
    /// cannot see (a kernel that died, a session the server dropped).
    ///
    /// An instance not checked for [`probe_interval`](Self::probe_interval)
    /// is probed before it is served again. The probe runs **on the calling
    /// request's path**: the first [`get_or_create`](Pool::get_or_create)
    /// call that finds the instance due awaits `probe(lease)` before it is
    /// served. The check time is set when the probe starts, so calls that
    /// arrive during the probe are served the instance without waiting.
    /// A build (or an insert) counts as a fresh check.
    ///
    /// - `Ok(true)`: fresh; the probing caller is served it.
    /// - `Ok(false)`: stale; the instance is retired (cause `stale`) and the
    ///   probing caller goes on to a rebuild, which later callers share
    ///   (singleflight). The stale instance is never served again, with or
    ///   without `refresh_after`.
    /// - An error, a panic, or no answer within
    ///   [`probe_timeout`](Self::probe_timeout): counted as fresh, logged at
    ///   warn and counted in [`Counters::probe_failures`](crate::Counters::probe_failures).
    ///
    /// [`Pool::get`] never probes: it returns `None` for an instance that is
    /// due. Defaults to none.
    pub fn probe<P, Fut, E>(mut self, probe: P) -> Self
    where
        P: Fn(Lease<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<bool, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.probe = Some(Arc::new(move |lease| {
            probe(lease).map(|r| r.map_err(Into::into)).boxed()
        }));
        self
    }

    /// How long a checked instance counts as fresh before it is probed
    /// again (see [`probe`](Self::probe)). Defaults to 10 s; zero probes
    /// every hand-out of an existing instance, each by its own call (the
    /// calls served by a build are not probed: a build counts as a check).
    pub fn probe_interval(mut self, interval: Duration) -> Self {
        self.settings.probe_interval = interval;
        self
    }

    /// Longest a probe may run before the instance counts as fresh anyway.
    /// Defaults to 5 s; zero means unbounded.
    pub fn probe_timeout(mut self, timeout: Duration) -> Self {
        self.settings.probe_timeout = nonzero(timeout);
        self
    }

    /// A name for the supervisor actor in ractor's registry (so other actors
    /// can find it with `ActorRef::where_is`), also the `pool` label of the
    /// pool's metrics (feature `metrics`). Defaults to none.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Starts the pool's actors and returns its handle.
    ///
    /// # Errors
    ///
    /// [`SpawnError::NameTaken`] when [`name`](Self::name) is already
    /// registered, [`SpawnError::Failed`] when an actor could not start.
    pub async fn spawn(self) -> Result<Pool<T>, SpawnError> {
        self.start(None).await
    }

    /// Starts the pool with its supervisor linked under `parent`, an actor of
    /// the application's own supervision tree: `parent` is notified if the
    /// pool stops or fails, and stopping `parent` stops the pool.
    ///
    /// # Errors
    ///
    /// As [`spawn`](Self::spawn).
    pub async fn spawn_linked(self, parent: ActorCell) -> Result<Pool<T>, SpawnError> {
        self.start(Some(parent)).await
    }

    async fn start(self, parent: Option<ActorCell>) -> Result<Pool<T>, SpawnError> {
        let metrics = Arc::new(Metrics::new(self.name.as_deref()));
        let build_tasks = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let disposer_args = DisposerArgs {
            hook: self.on_dispose,
            timeout: self.settings.dispose_timeout,
            metrics: metrics.clone(),
            build_tasks: build_tasks.clone(),
        };
        let (disposer, _) = Actor::spawn(None, DisposerActor::new(), disposer_args).await?;
        let drop_deadline = self.settings.dispose_timeout.unwrap_or(DROP_SHUTDOWN_DEADLINE);
        let shared = Arc::new(Shared::new(
            self.settings,
            metrics,
            disposer.clone(),
            self.probe,
            build_tasks,
        ));
        let args = SupervisorArgs { shared: shared.clone() };
        let spawned = match parent {
            Some(parent) => Actor::spawn_linked(self.name, SupervisorActor::new(), args, parent).await,
            None => Actor::spawn(self.name, SupervisorActor::new(), args).await,
        };
        let (supervisor, _) = spawned.inspect_err(|_| disposer.stop(None))?;
        let pool = Pool {
            inner: Arc::new(PoolInner {
                supervisor,
                shared,
                drop_deadline,
            }),
        };
        start_publisher(&pool, &self.metrics);
        Ok(pool)
    }

    /// How often the pool's counters and gauges are published to the
    /// `metrics` recorder (feature `metrics`). Defaults to 1 s; zero means
    /// only when [`Pool::publish_metrics`] is called (and once when the pool
    /// has stopped). Each publication is one round trip through the
    /// supervisor; histograms are recorded as events happen, whatever this
    /// says.
    #[cfg(feature = "metrics")]
    pub fn metrics_interval(mut self, interval: Duration) -> Self {
        self.metrics.interval = nonzero(interval);
        self
    }
}

/// What a dispose hook may return: `()` or `Result<(), E>`.
pub trait DisposeOutcome {
    /// The outcome as a `Result`.
    fn into_result(self) -> Result<(), BoxError>;
}

impl DisposeOutcome for () {
    fn into_result(self) -> Result<(), BoxError> {
        Ok(())
    }
}

impl<E: Into<BoxError>> DisposeOutcome for Result<(), E> {
    fn into_result(self) -> Result<(), BoxError> {
        self.map_err(Into::into)
    }
}
