//! The `Pool` handle: the public surface, grouped as the README's API tour
//! groups it (getting instances, changing what the pool holds, observing
//! it, embedding and ending it). The machinery lives beside it: `miss.rs`
//! (the hit and miss paths, following another call's miss, the coop
//! budget), `probe.rs` (the freshness probe on the caller's path),
//! `call.rs` (one round trip to the supervisor and what its outcome means)
//! and `builder.rs` ([`PoolBuilder`], and starting the actors).

mod builder;
mod call;
mod metrics;
mod miss;
mod probe;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ractor::ActorRef;

use crate::actors::Shared;
use crate::actors::lifecycle::Phase;
use crate::actors::supervisor::{SupervisorInternal, SupervisorMsg};
use crate::error::{BoxError, PoolError};
use crate::factory::{Attempts, InitDiscarded};
use crate::hash::CredentialsHash;
use crate::ids::RetireCause;
use crate::lease::Lease;
use crate::telemetry::{Counters, Metrics, ShutdownReport, Stats};

pub use builder::{DisposeOutcome, PoolBuilder};

/// A pool of warm, per-key instances of `T`.
///
/// `Pool` is a cheap `Clone` handle (an `Arc`) to the pool's supervisor actor;
/// clone it into every task that needs instances. Build one with
/// [`Pool::builder`].
///
/// # Concurrent calls on the same key
///
/// A hit is served from the pool's read view without involving any actor
/// (see [`get_or_create`](Pool::get_or_create)). All other calls for one key
/// are handled in order by that key's actor, and at most one factory call
/// per key is in flight:
///
/// - Callers that arrive with the same credentials hash while an instance is
///   being built wait for that one build and all receive the same instance
///   (or all the same error).
/// - A caller with a *different* hash waits until the build in flight is
///   done; then the instance for the old hash is retired (cause
///   `credentials`) and one is built for the new hash. Neither group ever
///   receives the other's instance.
/// - A call that finds an instance whose TTL or idle time has passed, or
///   whose hash differs, retires it and builds a new one; leases already
///   handed out keep the old instance alive until they are dropped.
/// - If the key is invalidated (or replaced by [`insert`](Pool::insert))
///   while a build is in flight, that build's result is never served nor
///   cached: it is disposed, and its waiters are given a fresh build.
///
/// # Supervision
///
/// The pool is a small actor tree: a supervisor actor (the one
/// [`Pool::actor`] returns) and one key actor per key, each spawned linked
/// to the supervisor. ractor's default `handle_supervisor_evt` would stop
/// the supervisor when any child exits; the pool's overrides it on purpose:
/// when a key actor stops unexpectedly
/// (stopped from outside, or a bug), its entry is dropped (its instance goes
/// to the disposer once unleased), the restart is counted in
/// [`Counters::actor_restarts`](crate::Counters::actor_restarts), and the key's next call starts a fresh actor.
/// Callers that were waiting on the dead actor get
/// [`PoolError::ActorStopped`] and may retry at once. Factory failures are
/// not actor failures: they never stop an actor, and follow the
/// [`RestartPolicy`](crate::RestartPolicy) instead.
///
/// # Dropping the last handle
///
/// When the last `Pool` handle is dropped without [`shutdown`](Pool::shutdown),
/// the pool starts the same shutdown in the background (nobody waits for its
/// report): builds in flight finish, everything is retired and disposed, and
/// the actors stop. An application that talks to the pool only through
/// [`Pool::actor`] must keep a handle alive for as long as it uses the pool.
pub struct Pool<T: Send + Sync + 'static> {
    inner: Arc<PoolInner<T>>,
}

pub(crate) struct PoolInner<T: Send + Sync + 'static> {
    supervisor: ActorRef<SupervisorMsg<T>>,
    /// Settings, counters and the pool's phase, shared with the actors.
    shared: Arc<Shared<T>>,
    /// How long the shutdown started by dropping the last handle waits for
    /// dispose hooks.
    drop_deadline: Duration,
}

impl<T: Send + Sync + 'static> Drop for PoolInner<T> {
    fn drop(&mut self) {
        let _ = self.supervisor.send_message(SupervisorMsg::Shutdown {
            deadline: self.drop_deadline,
            reply: None,
        });
    }
}

impl<T: Send + Sync + 'static> Clone for Pool<T> {
    fn clone(&self) -> Self {
        Pool {
            inner: self.inner.clone(),
        }
    }
}

impl<T: Send + Sync + 'static> fmt::Debug for Pool<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("supervisor", &self.inner.supervisor.get_id())
            .finish()
    }
}

/// Getting instances.
impl<T: Send + Sync + 'static> Pool<T> {
    /// A builder with every setting at its default.
    pub fn builder() -> PoolBuilder<T> {
        PoolBuilder::new()
    }

    /// Returns a lease on the instance for `key` built from the credentials
    /// whose hash is `credentials_hash`, calling `factory` to build one if
    /// there is none that may be served.
    ///
    /// An instance is served only while its TTL and idle time have not passed
    /// and its hash equals `credentials_hash`; otherwise it is retired and
    /// `factory` builds a new one. `factory` may be called again for retries
    /// under the [`RestartPolicy`](crate::RestartPolicy), and only one call per key runs at a time
    /// (see the type docs for what concurrent callers see).
    ///
    /// A hit reads the pool's published instances directly: no message to
    /// any actor, no allocation, no lock, nothing to wait for. Like a tokio
    /// channel that has a message ready, calls take from the calling task's
    /// [coop budget](tokio::task::coop) (a unit per 8 calls on a thread), so
    /// a task that only hits still yields to its worker about every 1,000
    /// hits instead of starving the pool's actors and other tasks. So even a
    /// hit may return `Pending` once: do not poll this future only once
    /// (`now_or_never`) expecting a hit to be ready, and do not wrap a loop
    /// of hits in [`unconstrained`](tokio::task::coop::unconstrained) unless
    /// it yields by other means. Anything else (a
    /// miss, another credentials hash, an expired instance, a cooling key)
    /// boxes `factory` and makes one round trip through the supervisor and
    /// the key's actor. Dropping the returned future does not cancel a
    /// build: it finishes, serves the other callers waiting on it, and its
    /// instance is cached.
    ///
    /// With [`refresh_after`](PoolBuilder::refresh_after), the first hit on
    /// an instance older than that asks its key actor for a background
    /// rebuild and is served the old instance at once. With a
    /// [`probe`](PoolBuilder::probe), the first call that finds an instance
    /// unchecked for `probe_interval` runs the probe before it is served
    /// (see there); every other call is served as usual meanwhile.
    ///
    /// # Errors
    ///
    /// [`PoolError::Factory`], [`PoolError::FactoryPanicked`] or
    /// [`PoolError::Timeout`] when the build failed (after retries),
    /// [`PoolError::CoolingDown`] while the key is cooling down,
    /// [`PoolError::ShutDown`] once the pool is shutting down, and
    /// [`PoolError::ActorStopped`] if the key's actor was stopped from outside
    /// mid-call.
    pub async fn get_or_create<F, Fut, E>(
        &self,
        key: &str,
        credentials_hash: CredentialsHash,
        factory: F,
    ) -> Result<Lease<T>, PoolError>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.get_inner(key, credentials_hash, None, factory, Attempts::Repeatable)
            .await
    }

    /// Like [`get_or_create`](Self::get_or_create), but an instance built by
    /// this call lives for `ttl` (from creation) instead of the pool's
    /// `time_to_live`; zero means it never expires by age. When several
    /// callers share one build, the TTL of the call that started it applies.
    pub async fn get_or_create_with_ttl<F, Fut, E>(
        &self,
        key: &str,
        credentials_hash: CredentialsHash,
        ttl: Duration,
        factory: F,
    ) -> Result<Lease<T>, PoolError>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.get_inner(key, credentials_hash, Some(ttl), factory, Attempts::Repeatable)
            .await
    }

    /// Like [`get_or_create`](Self::get_or_create), but `factory` receives
    /// `input` instead of capturing it: the pool clones `input` for each
    /// attempt (the first and every retry), so the call site clones nothing.
    ///
    /// ```no_run
    /// # use warmpool::{Pool, CredentialsHash};
    /// # struct Client;
    /// # async fn connect(api_key: String) -> std::io::Result<Client> { Ok(Client) }
    /// # async fn demo(pool: Pool<Client>, hash: CredentialsHash, api_key: String) -> Result<(), warmpool::PoolError> {
    /// // With `get_or_create`, a closure that captures `api_key` must clone
    /// // it for every call: `move || connect(api_key.clone())`.
    /// let client = pool.get_or_create_from("acme:openai", hash, api_key, connect).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// Use it when the build needs owned data (credentials, a config) and
    /// should be retried under the [`RestartPolicy`](crate::RestartPolicy). On a hit, `input` is
    /// dropped without being cloned.
    pub async fn get_or_create_from<A, F, Fut, E>(
        &self,
        key: &str,
        credentials_hash: CredentialsHash,
        input: A,
        factory: F,
    ) -> Result<Lease<T>, PoolError>
    where
        A: Clone + Send + Sync + 'static,
        F: Fn(A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let factory = move || factory(input.clone());
        self.get_inner(key, credentials_hash, None, factory, Attempts::Repeatable)
            .await
    }

    /// Returns a lease on the instance for `key` and `credentials_hash`,
    /// running `init` to build one if none may be served. Like moka's
    /// `try_get_with`, it takes the future itself rather than a factory, so
    /// `init` can own its captures (`async move { .. }`) and nothing needs
    /// cloning.
    ///
    /// A future can run only once, so this is a **single attempt**: a
    /// failure (error, panic, `create_timeout`) is returned at once, never
    /// retried, whatever the [`RestartPolicy`](crate::RestartPolicy) says. It still counts toward
    /// the key's cool-down. On a hit, or when another call's build for the
    /// same hash is in flight (which this call then shares), `init` is
    /// dropped without being polled. If the key is invalidated (or
    /// replaced by [`insert`](Self::insert)) while `init` runs, its result
    /// is discarded as usual, and since it cannot run again this call gets
    /// [`PoolError::Factory`] whose source is [`InitDiscarded`](crate::InitDiscarded):
    /// call again. (The other callers sharing that build get a fresh one.)
    /// Callers of any form that join a build started by `try_get_with`
    /// share its single attempt, as they share any build's result.
    ///
    /// Which form to use:
    ///
    /// - [`get_or_create`](Self::get_or_create): a factory the pool may call
    ///   again, for retries and for a fresh build after an invalidation. The
    ///   general form.
    /// - [`get_or_create_from`](Self::get_or_create_from): the same, with the
    ///   owned data passed in, so the factory captures nothing.
    /// - `try_get_with`: when a retry would not help or is handled by the
    ///   caller (a request with its own deadline), or the future already
    ///   exists.
    pub async fn try_get_with<Fut, E>(
        &self,
        key: &str,
        credentials_hash: CredentialsHash,
        init: Fut,
    ) -> Result<Lease<T>, PoolError>
    where
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        // A factory that hands out `init` once. A lock because a factory is
        // shared (`Sync`) and a future need not be; it is taken once, by the
        // build task, so it is never contended.
        let slot = std::sync::Mutex::new(Some(init));
        let factory = move || {
            let init = slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
            async move {
                match init {
                    Some(init) => init.await.map_err(Into::into),
                    // Not reached: a single-attempt request starts one build
                    // and is never retried (see `Attempts`).
                    None => Err(BoxError::from(InitDiscarded)),
                }
            }
        };
        self.get_inner(key, credentials_hash, None, factory, Attempts::Once)
            .await
    }

    /// Returns a lease on `key`'s instance if one may be served to a caller
    /// presenting `credentials_hash` right now, without building, waiting
    /// or asking any actor: a read of the pool's published instances, as a
    /// hit of [`get_or_create`](Self::get_or_create) is. `None` when there
    /// is none (not resident, building, expired, other credentials, cooling,
    /// shut down), and also when the instance is due for its freshness
    /// [`probe`](PoolBuilder::probe), which only `get_or_create` runs.
    ///
    /// It never builds, never counts a failure, never starts a cool-down and
    /// never triggers a refresh-ahead rebuild. A hit counts in
    /// [`Counters::hits`](crate::Counters::hits) and as a use of the instance (LRU order, idle time);
    /// a `None` counts as neither a miss nor a use.
    ///
    /// Once any call has returned a lease for `key` and `credentials_hash`,
    /// a `get` for them that starts afterwards finds that instance until
    /// something retires it (the hit rule still applies): a key actor
    /// publishes an instance before it answers anyone waiting on its build.
    /// While a refresh swaps the instance, `get` sees the old one or the
    /// new one, never neither.
    ///
    /// Being a plain function, it never yields: a task that loops over
    /// `get` and nothing else should await
    /// [`consume_budget`](tokio::task::coop::consume_budget) itself, as
    /// `get_or_create` does, so that it cannot starve its worker.
    pub fn get(&self, key: &str, credentials_hash: CredentialsHash) -> Option<Lease<T>> {
        let shared = &self.inner.shared;
        if shared.lifecycle.phase() != Phase::Running {
            return None;
        }
        // An instance due for its probe is refused before the hit would
        // count as a use of it: a `None` is no use (LRU order, idle time).
        let probed = shared.probe.is_some();
        let lease = shared
            .view
            .hit_if(key, credentials_hash, shared.settings.time_to_idle, |instance, now| {
                !(probed && instance.probe_due(now, shared.settings.probe_interval))
            })?;
        shared.metrics.hits.add(1);
        Some(lease)
    }
}

/// Changing what the pool holds.
impl<T: Send + Sync + 'static> Pool<T> {
    /// Puts `instance`, built elsewhere for `credentials_hash`, into the pool
    /// under `key` (warm-up, shadow seeding), with the pool's TTL. An instance
    /// already there is retired (cause `replaced`); a build in flight for the
    /// key is discarded when it finishes and its waiters are served again,
    /// from this instance if their hash matches.
    pub async fn insert(&self, key: &str, credentials_hash: CredentialsHash, instance: T) -> Result<(), PoolError> {
        self.insert_inner(key, credentials_hash, instance, None).await
    }

    /// Like [`insert`](Self::insert), with its own TTL (zero: never expires by age).
    pub async fn insert_with_ttl(
        &self,
        key: &str,
        credentials_hash: CredentialsHash,
        instance: T,
        ttl: Duration,
    ) -> Result<(), PoolError> {
        self.insert_inner(key, credentials_hash, instance, Some(ttl)).await
    }

    /// Retires `key`'s instance (leases keep it alive until dropped). Returns
    /// whether the key had an instance or a build in flight. Once this
    /// returns, no caller gets the old instance; a build in flight is
    /// discarded and its waiters get a fresh one. Also ends a cool-down.
    pub async fn invalidate(&self, key: &str) -> Result<bool, PoolError> {
        let owned = key.to_string();
        self.call(Some(key), |reply| SupervisorMsg::Invalidate { key: owned, reply })
            .await
    }

    /// Retires every key that starts with `prefix` (a plain string prefix:
    /// `"acme:"` matches `"acme:openai"` but not `"acmex:openai"`), in
    /// O(log N + matches). Returns how many resident keys it retired (a key
    /// an earlier invalidation or eviction is still retiring is not counted
    /// again). Once this
    /// returns, no call that starts gets any of their old instances, nor one
    /// from a build that was in flight: the supervisor removes them from the
    /// read view (and fences the keys against late publishes) before it
    /// answers.
    ///
    /// It returns without waiting for the key actors: their retirements are
    /// sent 16 per millisecond so that invalidating a large tenant does not
    /// stall the pool, and a key called in the meantime has its retirement
    /// applied before the call. The old instances are disposed as their
    /// retirements go out (about 60-150 ms for 1,000 keys).
    pub async fn invalidate_by_prefix(&self, prefix: &str) -> Result<usize, PoolError> {
        let prefix = prefix.to_string();
        self.call(None, |reply| SupervisorMsg::InvalidateByPrefix { prefix, reply })
            .await
    }

    /// Rebuilds `key`'s instance with the factory that built it, while
    /// callers keep being served the old one, and swaps the new one in.
    ///
    /// Returns `Ok(true)` once the new instance is published (the old one is
    /// then retired with cause `refreshed` and disposed after its last
    /// lease), and `Ok(false)` without building when there is nothing to
    /// rebuild: the key is not resident, its instance has expired, or it
    /// was put in with [`insert`](Self::insert) (the pool has no factory
    /// for it). Concurrent refreshes of one key share one rebuild. The
    /// rebuild follows the restart policy's retries and `create_timeout`,
    /// never cools the key down, and the new instance's TTL counts from its
    /// creation.
    ///
    /// If the instance is retired while the rebuild runs (invalidated,
    /// evicted, expired, replaced, rotated), the rebuild is dropped and this
    /// returns `Ok(false)`.
    ///
    /// # Errors
    ///
    /// The factory's error ([`PoolError::Factory`], `FactoryPanicked`,
    /// `Timeout`) when the rebuild failed after its retries; the old
    /// instance is then unchanged and keeps serving. [`PoolError::ShutDown`]
    /// once the pool is shutting down.
    pub async fn refresh(&self, key: &str) -> Result<bool, PoolError> {
        self.refresh_inner(key, None).await
    }

    /// Like [`refresh`](Self::refresh), for configuration `version`: the new
    /// instance is built for `version` (see [`Lease::version`]). A refresh
    /// for a version below the current instance's returns `Ok(false)`
    /// without building; one for a version no higher than that of a rebuild
    /// in flight shares it; one for a higher version waits for it, then
    /// builds. So a rebuild for an older version never lands after a newer
    /// one, and versions arriving out of order (say, over an event bus)
    /// never replace a newer instance with an older one. Versions belong
    /// to a resident key: a key not in the pool is not built (`Ok(false)`),
    /// and a key that left it starts again at version 0.
    pub async fn refresh_version(&self, key: &str, version: u64) -> Result<bool, PoolError> {
        self.refresh_inner(key, Some(version)).await
    }

    /// Retires exactly the instance `lease` holds, if it is still its key's
    /// current instance, and returns whether it did. Returns `false`
    /// without touching the key when the key already holds another
    /// instance (say, one another caller rebuilt after a rotation), when
    /// the instance was retired already, when the lease is from another
    /// pool, or once the pool is shutting down.
    ///
    /// The use: a client that just got a 401 retires itself without
    /// discarding a client another caller built meanwhile. Once this
    /// returns, no call that starts gets that instance; the lease itself
    /// (and any other) keeps it alive until dropped. Counted as
    /// `invalidated` in [`Counters::retirements`](crate::Counters::retirements).
    pub async fn retire(&self, lease: &Lease<T>) -> bool {
        let instance = lease.instance();
        if !Arc::ptr_eq(&instance.metrics, &self.inner.shared.metrics) {
            return false;
        }
        let (key, id) = (instance.key.clone(), instance.id);
        self.call(Some(lease.key()), move |reply| {
            SupervisorInternal::RetireInstance {
                key,
                instance: id,
                cause: RetireCause::Invalidated,
                reply,
            }
            .into()
        })
        .await
        .unwrap_or(false)
    }
}

/// Observing the pool.
impl<T: Send + Sync + 'static> Pool<T> {
    /// A snapshot of the pool's counters and resident keys. It copies every
    /// resident key's name; to scrape often, use [`counters`](Self::counters).
    pub async fn stats(&self) -> Result<Stats, PoolError> {
        self.call(None, |reply| SupervisorMsg::Stats { reply }).await
    }

    /// The pool's counters without its key lists: [`Stats`] without `keys`,
    /// and with the cooling keys counted (`cooling`) rather than listed.
    ///
    /// Made for frequent scraping: it costs one round trip through the
    /// supervisor's mailbox and a count of the keys cooling down, nothing
    /// proportional to the number of resident keys, whereas
    /// [`stats`](Self::stats) copies every resident key's name
    /// (milliseconds at 100,000 keys).
    pub async fn counters(&self) -> Result<Counters, PoolError> {
        self.call(None, |reply| SupervisorMsg::Counters { reply }).await
    }

    /// Publishes the pool's counters and gauges to the installed `metrics`
    /// recorder now, and returns them (feature `metrics`).
    ///
    /// They are published every `metrics_interval` anyway (1 s by default),
    /// so exported values lag by up to that; call this in a `/metrics`
    /// handler, before rendering, for figures exact at the scrape.
    #[cfg(feature = "metrics")]
    pub async fn publish_metrics(&self) -> Result<Counters, PoolError> {
        let counters = self.counters().await?;
        self.metrics().export.publish(&counters);
        Ok(counters)
    }

    /// Whether the pool is shutting down or has shut down (calls are then
    /// refused with [`PoolError::ShutDown`]).
    pub fn is_shut_down(&self) -> bool {
        self.inner.shared.lifecycle.phase() != Phase::Running
    }
}

/// Embedding the pool in an actor system, and ending it.
impl<T: Send + Sync + 'static> Pool<T> {
    /// The supervisor actor, for applications that talk to the pool from
    /// their own actors with the public variants of [`SupervisorMsg`], or
    /// that want to monitor it.
    pub fn actor(&self) -> ActorRef<SupervisorMsg<T>> {
        self.inner.supervisor.clone()
    }

    /// Shuts the pool down and reports what happened.
    ///
    /// New calls are refused with [`PoolError::ShutDown`] from now on; the
    /// sweep stops; builds in flight finish (or hit `create_timeout`) and
    /// their waiters are served; every instance is retired; then the pool
    /// waits for dispose hooks to finish. Instances still leased are named
    /// in the report and disposed when their last lease is dropped. Calling
    /// it again (or from another handle) waits for the same shutdown and
    /// gets the same report; a call made after it returned gets
    /// [`PoolError::ShutDown`], as every other call then does.
    ///
    /// It returns by `deadline`, counted from this call (plus scheduling),
    /// whatever user code does: a build still running at the deadline is
    /// dropped (its factory's future with it) and its waiters get
    /// `ShutDown`; a call waiting on its freshness probe gets `ShutDown`
    /// and the probe's future is dropped; dispose hooks get what is left of
    /// the deadline and go on in the background after it
    /// ([`ShutdownReport::disposals_pending`]).
    /// [`ShutdownReport::deadline_passed`] says whether the deadline cut
    /// anything short. A deadline too long for the clock waits for
    /// everything.
    pub async fn shutdown(&self, deadline: Duration) -> Result<ShutdownReport, PoolError> {
        self.call(None, |reply| SupervisorMsg::Shutdown {
            deadline,
            reply: Some(reply),
        })
        .await
    }
}

/// For the rest of the crate.
impl<T: Send + Sync + 'static> Pool<T> {
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.shared.metrics
    }

    /// A handle that does not keep the pool alive (for background listeners,
    /// so that dropping the application's last `Pool` still shuts it down).
    pub(crate) fn downgrade(&self) -> WeakPool<T> {
        WeakPool(Arc::downgrade(&self.inner))
    }
}

/// A [`Pool`] handle that does not keep the pool alive.
pub(crate) struct WeakPool<T: Send + Sync + 'static>(std::sync::Weak<PoolInner<T>>);

impl<T: Send + Sync + 'static> WeakPool<T> {
    pub(crate) fn upgrade(&self) -> Option<Pool<T>> {
        self.0.upgrade().map(|inner| Pool { inner })
    }
}

impl<T: Send + Sync + 'static> fmt::Debug for WeakPool<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WeakPool")
    }
}
