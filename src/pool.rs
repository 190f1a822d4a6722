//! The `Pool` handle and its builder.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorCell, ActorRef, RpcReplyPort};

use crate::actors::disposer::{DisposerActor, DisposerArgs};
use crate::actors::lifecycle::{Lifecycle, Phase};
use crate::actors::supervisor::{SupervisorActor, SupervisorArgs};
use crate::actors::{DisposeHook, ProbeHook, Settings, Shared, nonzero};
use crate::config::{PoolConfig, RestartPolicy};
use crate::error::{BoxError, PoolError, SpawnError, panic_message};
use crate::factory::{Attempts, InitDiscarded};
use crate::hash::CredentialsHash;
use crate::ids::Fence;
use crate::inflight::{Answer, InFlight, Role};
use crate::lease::Lease;
use crate::messages::{Factory, InsertRequest, Request, SupervisorInternal, SupervisorMsg};
use crate::stats::{Counters, Metrics, RetireCause, ShutdownReport, Stats};
use crate::telemetry::{MetricsOptions, start_publisher};
use crate::view::ReadView;

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
/// [`Stats::actor_restarts`], and the key's next call starts a fresh actor.
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
    /// under the [`RestartPolicy`], and only one call per key runs at a time
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

    async fn get_inner<F, Fut, E>(
        &self,
        key: &str,
        hash: CredentialsHash,
        ttl: Option<Duration>,
        factory: F,
        attempts: Attempts,
    ) -> Result<Lease<T>, PoolError>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let shared = &self.inner.shared;
        // First of all: a call dropped at this yield has done nothing, and
        // the phase is read after it, so a call that resumes once shutdown
        // has begun gets `ShutDown`, not a hit.
        cooperate().await;
        if shared.lifecycle.phase() != Phase::Running {
            return Err(PoolError::ShutDown);
        }
        // The hit path: the read view, no actor involved. Counted once
        // served: a call whose probe finds the instance stale is a miss.
        if let Some(lease) = self.view_lease(key, hash).await? {
            shared.metrics.hits.add(1);
            return Ok(lease);
        }
        // A miss. If another call is asking for this key and hash, wait for
        // its answer instead of asking too (see `inflight.rs`).
        let (leader, counted) = match shared.in_flight.join(key, hash, shared.view.fence()) {
            Role::Lead(leader) => (Some(leader), false),
            Role::Alone => (None, false),
            Role::Follow(ask) => {
                // Counted as it arrives, as the key actor counts a waiter.
                Metrics::bump(&shared.metrics.misses);
                // Retirements up to this number happened before this call
                // joined: their instances must not be handed to it.
                let joined = shared.view.retire_seq();
                let answer = tokio::select! {
                    biased;
                    answer = ask.wait() => answer,
                    () = shared.lifecycle.stopped() => return Err(PoolError::ShutDown),
                };
                match answer {
                    Answer::Served(instance) => {
                        // Gone (retired, no lease left), retired before this
                        // call joined, or perhaps fenced by a prefix
                        // invalidation (see `inflight.rs`): ask, alone.
                        let fenced = shared.view.fence() != ask.fence;
                        if let Some(instance) = instance.upgrade().filter(|i| !fenced && !i.retired_by(joined)) {
                            return Ok(Lease::from_arc(instance));
                        }
                        (None, true)
                    }
                    Answer::Failed(error) => return Err(error.clone()),
                    Answer::AskYourself => (None, true),
                }
            }
        };
        let factory: Factory<T> = Arc::new(move || factory().map(|r| r.map_err(Into::into)).boxed());
        let answer = self.ask_actors(key, hash, ttl, factory, attempts, counted).await;
        if let Some(leader) = leader {
            leader.finish(&answer);
        }
        answer
    }

    /// A lease from the read view, if it may serve this call: a hit, with
    /// the refresh-ahead request and the freshness probe it may bring.
    async fn view_lease(&self, key: &str, hash: CredentialsHash) -> Result<Option<Lease<T>>, PoolError> {
        let shared = &self.inner.shared;
        let Some(lease) = shared.view.hit(key, hash, shared.settings.time_to_idle) else {
            return Ok(None);
        };
        match self.hand_out(lease, None) {
            HandOut::Serve(lease) => Ok(Some(lease)),
            HandOut::Probe(lease) => self.run_probe(lease).await,
        }
    }

    /// Asks the actors for `key`: the supervisor routes the request to the
    /// key's actor, which serves, builds, or makes it wait for its build.
    async fn ask_actors(
        &self,
        key: &str,
        hash: CredentialsHash,
        ttl: Option<Duration>,
        factory: Factory<T>,
        attempts: Attempts,
        counted: bool,
    ) -> Result<Lease<T>, PoolError> {
        let shared = &self.inner.shared;
        // Kept only when a stale probe may need a second round trip: the
        // miss path otherwise hands its only reference to the actors.
        let spare = shared.probe.is_some().then(|| factory.clone());
        let asked = tokio::time::Instant::now();
        let lease = self.ask(key, hash, ttl, factory, attempts, counted).await??;
        match self.hand_out(lease, Some(asked)) {
            HandOut::Serve(lease) => Ok(lease),
            HandOut::Probe(lease) => match self.run_probe(lease).await? {
                Some(lease) => Ok(lease),
                // Retired as stale: what the key serves next is a build that
                // starts now (or one a concurrent caller just started), so
                // it is not probed again.
                None => {
                    // A single-attempt future is still unused here: the
                    // first round trip was served an existing instance.
                    self.ask(
                        key,
                        hash,
                        ttl,
                        spare.expect("kept when a probe is set"),
                        attempts,
                        counted,
                    )
                    .await?
                }
            },
        }
    }

    /// What a caller must do before it is served `lease`: nothing, or run
    /// the freshness probe. Asks for a refresh-ahead rebuild on the way.
    /// `asked`: when the caller asked the actors, if it did; an instance
    /// built since then was built for this call (or alongside it), and a
    /// build counts as a check, so it is not probed.
    fn hand_out(&self, lease: Lease<T>, asked: Option<tokio::time::Instant>) -> HandOut<T> {
        let shared = &self.inner.shared;
        let settings = &shared.settings;
        if settings.refresh_after.is_none() && shared.probe.is_none() {
            return HandOut::Serve(lease);
        }
        let now = tokio::time::Instant::now();
        let instance = lease.instance();
        if let Some(after) = settings.refresh_after
            && instance.claim_refresh(now, after)
        {
            // Not awaited: the caller is served the current instance now,
            // and the rebuild happens in the key's actor.
            let _ = self.inner.supervisor.send_message(
                SupervisorInternal::RefreshDue {
                    key: instance.key.clone(),
                    instance: instance.id,
                }
                .into(),
            );
        }
        let built_for_this_call = asked.is_some_and(|asked| instance.created_at >= asked);
        if shared.probe.is_some() && !built_for_this_call && instance.claim_probe(now, settings.probe_interval) {
            HandOut::Probe(lease)
        } else {
            HandOut::Serve(lease)
        }
    }

    /// Runs the freshness probe on `lease`'s instance: `Some(lease)` when it
    /// may be served (fresh, or the probe failed, which counts as fresh),
    /// `None` when it was stale and has been retired; `ShutDown` when the
    /// pool's shutdown ended first.
    async fn run_probe(&self, lease: Lease<T>) -> Result<Option<Lease<T>>, PoolError> {
        let shared = &self.inner.shared;
        let probe = shared.probe.clone().expect("called only with a probe");
        Metrics::bump(&shared.metrics.probes);
        let probed = lease.clone();
        let run = async move {
            match std::panic::catch_unwind(AssertUnwindSafe(|| probe(probed))) {
                Ok(fut) => AssertUnwindSafe(fut).catch_unwind().await,
                Err(panic) => Err(panic),
            }
        };
        let bounded = async {
            match shared.settings.probe_timeout {
                Some(limit) => tokio::time::timeout(limit, run).await.ok(),
                None => Some(run.await),
            }
        };
        // A shutdown does not wait for probes: once it is over, the probe's
        // future is dropped and the call answered `ShutDown`.
        let outcome = tokio::select! {
            outcome = bounded => outcome,
            () = shared.lifecycle.closed() => return Err(PoolError::ShutDown),
        };
        let failure = match outcome {
            Some(Ok(Ok(true))) => return Ok(Some(lease)),
            Some(Ok(Ok(false))) => {
                tracing::debug!(key = %lease.key(), instance = %lease.instance_id(), "freshness probe: stale");
                let instance = lease.instance_id();
                let key = lease.instance().key.clone();
                drop(lease);
                // Out of the read view before this returns, so the next call
                // (this one's included) goes to the key actor and builds.
                let _ = self
                    .call(None, |reply| {
                        SupervisorInternal::RetireInstance {
                            key,
                            instance,
                            cause: RetireCause::Stale,
                            reply,
                        }
                        .into()
                    })
                    .await;
                return Ok(None);
            }
            Some(Ok(Err(error))) => error.to_string(),
            Some(Err(panic)) => format!("panicked: {}", panic_message(&*panic)),
            None => "timed out".to_string(),
        };
        Metrics::bump(&shared.metrics.probe_failures);
        tracing::warn!(key = %lease.key(), failure = %failure, "freshness probe failed; the instance counts as fresh");
        Ok(Some(lease))
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
    /// [`Stats::hits`] and as a use of the instance (LRU order, idle time);
    /// a `None` counts as neither a miss nor a use.
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

    async fn refresh_inner(&self, key: &str, version: Option<u64>) -> Result<bool, PoolError> {
        let sent_key: Arc<str> = Arc::from(key);
        self.call(Some(key), move |reply| {
            SupervisorInternal::Refresh {
                key: sent_key,
                version,
                reply,
            }
            .into()
        })
        .await?
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
    /// `invalidated` in [`Stats::retirements`].
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

    /// One round trip for `key` through the supervisor.
    async fn ask(
        &self,
        key: &str,
        hash: CredentialsHash,
        ttl: Option<Duration>,
        factory: Factory<T>,
        attempts: Attempts,
        counted: bool,
    ) -> Result<Result<Lease<T>, PoolError>, PoolError> {
        // Moved into the message, not shared with this task: its last owner
        // is the actor that keeps it, so no reference count is touched from
        // two threads.
        let sent_key: Arc<str> = Arc::from(key);
        self.call(Some(key), move |reply| {
            SupervisorInternal::Get {
                key: sent_key,
                request: Request {
                    hash,
                    factory,
                    ttl,
                    // Set by the supervisor as it forwards the request.
                    fence: Fence::ZERO,
                    reply,
                    span: tracing::Span::current(),
                    attempts,
                    counted,
                },
            }
            .into()
        })
        .await
    }

    /// Sends the message `msg` builds to the supervisor and waits for its
    /// reply, or for the pool to stop, whichever comes first: a reply that
    /// can no longer come (its message was caught by the supervisor's end)
    /// never leaves the caller waiting.
    async fn call<R: Send + 'static>(
        &self,
        key: Option<&str>,
        msg: impl FnOnce(RpcReplyPort<R>) -> SupervisorMsg<T>,
    ) -> Result<R, PoolError> {
        let call = self.inner.supervisor.call(msg, None);
        let result = tokio::select! {
            // A reply that is there wins over the end that followed it.
            biased;
            result = call => result,
            () = self.inner.shared.lifecycle.stopped() => return Err(PoolError::ShutDown),
        };
        self.answer(result, key)
    }

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

    async fn insert_inner(
        &self,
        key: &str,
        hash: CredentialsHash,
        value: T,
        ttl: Option<Duration>,
    ) -> Result<(), PoolError> {
        let sent_key: Arc<str> = Arc::from(key);
        self.call(Some(key), move |reply| {
            SupervisorInternal::Insert {
                key: sent_key,
                insert: InsertRequest {
                    hash,
                    value,
                    ttl,
                    // Set by the supervisor as it forwards the instance.
                    fence: Fence::ZERO,
                    reply: Some(reply),
                },
            }
            .into()
        })
        .await?
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

    /// A snapshot of the pool's counters and resident keys. It copies every
    /// resident key's name; to scrape often, use [`counters`](Self::counters).
    pub async fn stats(&self) -> Result<Stats, PoolError> {
        self.call(None, |reply| SupervisorMsg::Stats { reply }).await
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

    /// The supervisor actor, for applications that talk to the pool from
    /// their own actors with the public variants of [`SupervisorMsg`], or
    /// that want to monitor it.
    pub fn actor(&self) -> ActorRef<SupervisorMsg<T>> {
        self.inner.supervisor.clone()
    }

    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.shared.metrics
    }

    /// Whether the pool is shutting down or has shut down (calls are then
    /// refused with [`PoolError::ShutDown`]).
    pub fn is_shut_down(&self) -> bool {
        self.inner.shared.lifecycle.phase() != Phase::Running
    }

    /// A handle that does not keep the pool alive (for background listeners,
    /// so that dropping the application's last `Pool` still shuts it down).
    pub(crate) fn downgrade(&self) -> WeakPool<T> {
        WeakPool(Arc::downgrade(&self.inner))
    }

    /// Maps a ractor call's outcome to the pool's error.
    fn answer<R, M>(
        &self,
        result: Result<CallResult<R>, ractor::MessagingErr<M>>,
        key: Option<&str>,
    ) -> Result<R, PoolError> {
        match result {
            Ok(CallResult::Success(value)) => Ok(value),
            // The reply port was dropped: the key's actor stopped mid-call,
            // unless the whole pool is stopping.
            Ok(_) if self.inner.shared.lifecycle.phase() == Phase::Running => match key {
                Some(key) => Err(PoolError::ActorStopped { key: key.to_string() }),
                None => Err(PoolError::ShutDown),
            },
            Ok(_) | Err(_) => Err(PoolError::ShutDown),
        }
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
    /// should be retried under the [`RestartPolicy`]. On a hit, `input` is
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
    /// retried, whatever the [`RestartPolicy`] says. It still counts toward
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
}

/// Calls on one thread that together take one unit of tokio's coop budget
/// (counted before the lookup, so misses count too; they yield anyway).
/// A unit per call, as tokio's own ready operations take, made a task that
/// does nothing but hit yield every 128 hits (about 23 us of work here),
/// and each yield of a task alone on its worker costs a few microseconds of
/// scheduler work (a poll of the I/O driver, a wake): 16-20% more per hit
/// in a tight loop (benches/HISTORY.md, round 7). One unit per 8 calls yields
/// every 1,024 hits, about 150-200 us of work.
const CALLS_PER_BUDGET_UNIT: u8 = 8;

thread_local! {
    /// Calls on this thread since the last one that took a unit of the coop
    /// budget.
    static UNBUDGETED_CALLS: std::cell::Cell<u8> = const { std::cell::Cell::new(0) };
}

/// Takes a unit of the calling task's coop budget every
/// [`CALLS_PER_BUDGET_UNIT`] calls on this thread, which yields once the
/// budget is spent. Outside a tokio runtime there is no budget, and this
/// never yields.
///
/// A hit completes without waiting on anything, so a task that did nothing
/// but hit would never hand its worker back: the key actors, timers and
/// other tasks queued there (the builds its own next miss needs among
/// them) would starve. Seen: 64 such tasks on 2 workers stalled a rotation
/// of 1,000 keys for minutes. Counted per thread, not per task: a thread
/// runs one task at a time, and tasks that share it only make it yield
/// sooner.
async fn cooperate() {
    let due = UNBUDGETED_CALLS.with(|calls| {
        let n = calls.get() + 1;
        let due = n >= CALLS_PER_BUDGET_UNIT;
        calls.set(if due { 0 } else { n });
        due
    });
    if due {
        tokio::task::coop::consume_budget().await;
    }
}

/// What a caller does with a lease before it is served (see `Pool::hand_out`).
enum HandOut<T: Send + Sync + 'static> {
    Serve(Lease<T>),
    Probe(Lease<T>),
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
        let mut builder = PoolBuilder {
            settings: Settings {
                time_to_live: None,
                time_to_idle: None,
                max_entries: 0,
                sweep_interval: None,
                create_timeout: None,
                dispose_timeout: None,
                restart_policy: RestartPolicy::default(),
                refresh_after: None,
                probe_interval: Duration::from_secs(10),
                probe_timeout: Some(Duration::from_secs(5)),
            },
            on_dispose: None,
            probe: None,
            name: None,
            metrics: MetricsOptions::default(),
        };
        builder = builder.config(&PoolConfig::default());
        builder
    }

    /// Applies every value of `config` (for example from
    /// [`PoolConfig::from_env`]). Setters called afterwards override it.
    pub fn config(mut self, config: &PoolConfig) -> Self {
        self.settings.time_to_live = nonzero(config.time_to_live());
        self.settings.time_to_idle = nonzero(Duration::from_secs(config.idle_seconds));
        self.settings.max_entries = unbounded_if_zero(config.max_entries);
        self.settings.sweep_interval = nonzero(Duration::from_secs(config.sweep_seconds));
        self.settings.create_timeout = nonzero(Duration::from_millis(config.create_timeout_ms));
        self.settings.dispose_timeout = nonzero(Duration::from_millis(config.dispose_timeout_ms));
        self.settings.refresh_after = nonzero(Duration::from_secs(config.refresh_seconds));
        self
    }

    /// Most keys resident at once; past it the least recently used key
    /// without a live lease or a build in flight is retired. Defaults to
    /// 1,000; zero means no limit (as zero means "never" for every duration).
    pub fn max_entries(mut self, max_entries: usize) -> Self {
        self.settings.max_entries = unbounded_if_zero(max_entries);
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
    /// [`PoolError::Timeout`]. Defaults to 30 s; zero means unbounded.
    pub fn create_timeout(mut self, timeout: Duration) -> Self {
        self.settings.create_timeout = nonzero(timeout);
        self
    }

    /// Longest a dispose hook may run before it is abandoned and counted as
    /// a failure. Also the deadline of the shutdown that dropping the last
    /// handle starts. Defaults to 10 s; zero means unbounded.
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
    /// in [`Stats::dispose_failures`]. Defaults to none (the instance is
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
    /// `refreshed`, counted in [`Stats::refreshes`]); on failure the old one
    /// keeps serving until its TTL, the failure is logged and counted in
    /// [`Stats::refresh_failures`], and the next hit may ask again once a
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
    ///   warn and counted in [`Stats::probe_failures`].
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
        let disposer_args = DisposerArgs {
            hook: self.on_dispose,
            timeout: self.settings.dispose_timeout,
            metrics: metrics.clone(),
        };
        let (disposer, _) = Actor::spawn(None, DisposerActor::new(), disposer_args).await?;
        let drop_deadline = self.settings.dispose_timeout.unwrap_or(Duration::from_secs(30));
        let shared = Arc::new(Shared {
            settings: self.settings,
            metrics,
            disposer: disposer.clone(),
            lifecycle: Lifecycle::default(),
            view: ReadView::new(),
            in_flight: InFlight::new(),
            probe: self.probe,
        });
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

/// Zero entries means "no limit", like zero for every duration setting.
fn unbounded_if_zero(max_entries: usize) -> usize {
    if max_entries == 0 { usize::MAX } else { max_entries }
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
