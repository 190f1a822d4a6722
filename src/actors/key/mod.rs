//! The key actor: owns the current instance of one key, checks every
//! request against it, runs the factory (off its mailbox) and answers
//! everyone waiting on a build. Its protocol is in `protocol.rs`.

mod protocol;

pub(crate) use protocol::{
    Factory, InsertRequest, KeyMsg, KeyReport, KeyShutdown, RefreshReply, ReportTo, Request, RetireTarget, Routed,
};

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::time::Instant;
use tracing::Instrument;

use crate::actors::{DisposerMsg, Settings, Shared, nonzero};
use crate::error::{Causes, PoolError};
use crate::factory::Attempts;
use crate::guard::{Guarded, guarded};
use crate::hash::CredentialsHash;
use crate::ids::RetireCause;
use crate::ids::{Fence, InstanceId};
use crate::instance::Instance;
use crate::lease::Lease;
use crate::restart::{Deadline, RestartState, Verdict};
use crate::telemetry::Metrics;
use crate::telemetry::Timer;

/// One actor per resident key. Its mailbox serialises everything about the
/// key: hit checks, starting builds, collecting waiters, retiring. The
/// factory itself runs in a spawned task whose result comes back as a
/// message, so `invalidate` and `stats` are never stuck behind a slow build.
pub(crate) struct KeyActor<T>(std::marker::PhantomData<fn() -> T>);

impl<T> KeyActor<T> {
    pub(crate) fn new() -> Self {
        KeyActor(std::marker::PhantomData)
    }
}

/// What a key actor starts with.
pub(crate) struct KeyArgs<T: Send + Sync + 'static> {
    pub(crate) key: Arc<str>,
    pub(crate) shared: Arc<Shared<T>>,
    /// Where reports go: the supervisor.
    pub(crate) report_to: ReportTo<T>,
    /// Failure history the supervisor kept from an earlier actor of this key.
    pub(crate) restart: RestartState,
}

/// The instance being served: the one the read view has (or will have, see
/// `published`), so that hits through the view and through this actor
/// share one last-use time (`Instance::published`).
struct Current<T: Send + Sync + 'static> {
    /// The pool's reference to the instance (the read view holds a weak
    /// one): dropped as the instance is retired, so that it is disposed
    /// then, or at its last lease.
    instance: Arc<Instance<T>>,
    /// The credentials hash it was built for.
    hash: CredentialsHash,
    /// Its TTL deadline; `None` never expires by age.
    expires_at: Option<Instant>,
    /// Whether it is in the read view; false while a publish waits for the
    /// supervisor (see `ReadView::fence`).
    published: bool,
    /// The factory that built it, for refreshes; `None` for an inserted
    /// instance, which the pool cannot rebuild. Never another request's
    /// factory: that one may hold other credentials.
    factory: Option<Factory<T>>,
    /// The TTL its build asked for (`None`: the pool's), for its rebuilds.
    ttl: Option<Duration>,
    /// The read view's fence it was built or published under: a rebuild
    /// publishes under it too, so that a prefix invalidation that fenced
    /// the key since is never undone by the rebuild.
    fence: Fence,
}

/// What makes a build a refresh: it replaces an instance that keeps
/// serving until the new one is published.
struct Refreshing {
    /// The instance it replaces.
    replaces: InstanceId,
    /// `Pool::refresh` callers sharing it (none for refresh-ahead).
    callers: Vec<RefreshReply>,
}

/// Counts one factory call as under way for as long as it lives: made as
/// an attempt starts, dropped as its future ends, however it ends (the
/// task may be aborted: see `KeyState::abandon`).
struct BuildInFlight<T: Send + Sync + 'static> {
    shared: Arc<Shared<T>>,
}

impl<T: Send + Sync + 'static> BuildInFlight<T> {
    fn start(shared: &Arc<Shared<T>>) -> Self {
        Metrics::bump(&shared.metrics.builds_in_flight);
        Metrics::bump(&shared.build_tasks);
        BuildInFlight { shared: shared.clone() }
    }
}

impl<T: Send + Sync + 'static> Drop for BuildInFlight<T> {
    fn drop(&mut self) {
        let metrics = &self.shared.metrics;
        metrics
            .builds_in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        // The disposer counts the task as ended when it handles this
        // message, after the `Track` that `Instance::new` sent before it: a
        // closing disposer that reads no build task has therefore seen
        // every instance built, and stops only once they are disposed. If
        // it is gone already, count here.
        if self.shared.disposer.send_message(DisposerMsg::BuildEnded).is_err() {
            self.shared
                .build_tasks
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// A build in flight (or waiting out a retry backoff).
struct Build<T: Send + Sync + 'static> {
    hash: CredentialsHash,
    factory: Factory<T>,
    ttl: Option<Duration>,
    /// The read view's fence when the request that started it passed the
    /// supervisor (see `ReadView::fence`).
    fence: Fence,
    /// Everyone sharing this build's result; all presented `hash`.
    waiters: Vec<Routed<Request<T>>>,
    /// Identifies the current attempt; results of older attempts are ignored.
    attempt: u64,
    retries_done: u32,
    /// Set when the build was invalidated (or superseded by `insert`) while in
    /// flight: its result is never served; its waiters get a fresh build.
    stale: Option<RetireCause>,
    /// False while waiting out a backoff before the next attempt.
    running: bool,
    /// Set for a rebuild of the current instance (refresh-ahead,
    /// `Pool::refresh`). It starts with no waiters; a caller that finds the
    /// current instance expired with the same credentials joins it.
    refresh: Option<Refreshing>,
    /// The configuration version the instance is built for.
    version: u64,
    /// The span of the call that started it: the parent of its attempts' spans.
    span: tracing::Span,
    /// Whether a failed attempt may be retried (`Repeatable`) or not (`Once`).
    attempts: Attempts,
    /// The running attempt's task, to drop its factory future when a
    /// shutdown's deadline passes (see `KeyState::abandon`).
    task: Option<tokio::task::AbortHandle>,
}

impl<T: Send + Sync + 'static> Build<T> {
    /// A refresh nobody waits on: its failures never cool the key down, and
    /// it is dropped when the instance it replaces is retired.
    fn is_background(&self) -> bool {
        self.refresh.is_some() && self.waiters.is_empty()
    }

    /// Answers the `Pool::refresh` callers sharing this build.
    fn answer_refresh(&mut self, result: &Result<bool, PoolError>) {
        if let Some(refresh) = self.refresh.as_mut() {
            for caller in refresh.callers.drain(..) {
                let _ = caller.send(result.clone());
            }
        }
    }
}

/// The last state reported to the supervisor, to report only changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reported {
    Nothing,
    /// Whether the build will serve anyone (see `KeyReport::Building`).
    Building(bool),
    /// The instance's id, and whether it is published.
    Ready(InstanceId, bool),
    Idle(u64),
}

/// Whether a key actor serves, or is shutting down (the words of the
/// pool's `Phase`).
enum KeyPhase {
    Running,
    /// Refusing new work; `reply` (the supervisor's `Shutdown`) is answered
    /// once no build is in flight, and then taken.
    Stopping {
        reply: Option<RpcReplyPort<KeyShutdown>>,
        /// Whether a build was dropped at the deadline.
        abandoned: bool,
    },
}

/// The key actor's state.
pub(crate) struct KeyState<T: Send + Sync + 'static> {
    key: Arc<str>,
    shared: Arc<Shared<T>>,
    report_to: ReportTo<T>,
    current: Option<Current<T>>,
    build: Option<Build<T>>,
    /// Requests that could not join the build in flight (another hash, or the
    /// build went stale); handled in order once it finishes.
    queued: VecDeque<Routed<Request<T>>>,
    restart: RestartState,
    /// Supervisor messages processed: lets the supervisor stop an idle actor
    /// only when nothing it sent is still in the mailbox.
    seen: u64,
    reported: Reported,
    next_attempt: u64,
    phase: KeyPhase,
    retired_by_shutdown: u64,
    /// The configuration version of the key's instances: every build and
    /// insert is made for it, and only a refresh for a version at least as
    /// high changes it (when it is published). So the current instance is
    /// always of this version, and, as one build runs at a time and a
    /// higher version waits for the rebuild in flight, an older rebuild can
    /// never land after a newer one.
    version: u64,
    /// `Pool::refresh` calls that could not share the build in flight (it is
    /// for an older version): handled, in order, once it is done.
    deferred_refreshes: Vec<(u64, RefreshReply)>,
    /// Refreshes in a row that failed after their retries: the next
    /// refresh-ahead waits out the backoff for this many retries.
    refresh_failures: u32,
    /// A hit through the read view that the supervisor had not seen when
    /// its instance was retired while the key stayed (rotated credentials,
    /// a replacing insert, an invalidation with callers waiting), in the
    /// view's units; 0 = none. The supervisor reads uses off the published
    /// instance, so the next instance carries it (`Published::carry_use`):
    /// a key's use must not be lost with the instance it was made on.
    unseen_use: u64,
}

impl<T: Send + Sync + 'static> KeyState<T> {
    fn shutting_down(&self) -> bool {
        matches!(self.phase, KeyPhase::Stopping { .. })
    }

    fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Serves `request` from the current instance, or joins or starts a build.
    fn request(&mut self, myself: &ActorRef<KeyMsg<T>>, request: Routed<Request<T>>) {
        let now = Instant::now();
        if self.shutting_down() {
            request.respond(Err(PoolError::ShutDown));
            return;
        }
        if let Some(retry_after) = self.restart.cooling(now, request.hash) {
            request.respond(Err(self.cooling_error(retry_after)));
            return;
        }
        if let Some(current) = self.current.as_ref() {
            let view = &self.shared.view;
            match current
                .instance
                .published
                .refusal(request.hash, view.nanos(now), self.shared.settings.time_to_idle)
            {
                None => {
                    current.instance.published.handed_out(view.nanos(now));
                    if !request.counted {
                        self.shared.metrics.hits.add(1);
                    }
                    request.respond(Ok(Lease::new(&current.instance)));
                    return;
                }
                Some(cause) => {
                    // A rebuild under way for these credentials becomes this
                    // caller's build instead of being dropped with the
                    // instance it was to replace.
                    let join = self
                        .build
                        .as_ref()
                        .is_some_and(|b| b.hash == request.hash && b.stale.is_none());
                    self.retire_current_keeping(cause, join);
                }
            }
        }
        if !request.counted {
            Metrics::bump(&self.shared.metrics.misses);
        }
        match self.build.as_mut() {
            Some(build) if build.hash == request.hash && build.stale.is_none() => build.waiters.push(request),
            Some(_) => self.queued.push_back(request),
            None => self.start_build(myself, request),
        }
    }

    fn start_build(&mut self, myself: &ActorRef<KeyMsg<T>>, mut request: Routed<Request<T>>) {
        let Some(attempts) = request.attempts.start() else {
            request.respond(Err(crate::factory::discarded(&self.key)));
            return;
        };
        // Cloned, not taken: if this build is discarded, the request is
        // served again and may need its factory for the next build.
        let build = Build {
            hash: request.hash,
            factory: request.factory.clone(),
            span: request.span.clone(),
            ttl: request.ttl,
            fence: request.fence,
            waiters: vec![request],
            attempt: 0,
            retries_done: 0,
            stale: None,
            running: false,
            refresh: None,
            version: self.version,
            attempts,
            task: None,
        };
        self.build = Some(build);
        self.run_attempt(myself);
    }

    /// Calls the factory in its own task, bounded by `create_timeout`, with
    /// panics caught; the outcome comes back as `BuildDone`.
    fn run_attempt(&mut self, myself: &ActorRef<KeyMsg<T>>) {
        let Some(build) = self.build.as_mut() else { return };
        self.next_attempt += 1;
        build.attempt = self.next_attempt;
        build.running = true;
        let attempt = build.attempt;
        let attempts = build.retries_done + 1;
        let version = build.version;
        let span = crate::telemetry::spans::build_span(&build.span, &self.key, attempts);
        let factory = build.factory.clone();
        let key = self.key.clone();
        let shared = self.shared.clone();
        let myself = myself.clone();
        let in_flight = BuildInFlight::start(&shared);
        tracing::debug!(key = %key, attempt = attempts, "building");
        let task = async move {
            let timer = Timer::start();
            let result = guarded(shared.settings.create_timeout, || factory()).await;
            let name = || key.to_string();
            let outcome = match result {
                Guarded::TimedOut => Err(PoolError::Timeout {
                    key: name(),
                    after: shared.settings.create_timeout.unwrap_or_default(),
                }),
                Guarded::Panicked(message) => Err(PoolError::FactoryPanicked { key: name(), message }),
                Guarded::Returned(Err(error)) => Err(PoolError::Factory {
                    key: name(),
                    attempts,
                    source: Arc::from(error),
                }),
                Guarded::Returned(Ok(value)) => Ok(Instance::new(
                    value,
                    key.clone(),
                    version,
                    shared.disposer.clone(),
                    shared.metrics.clone(),
                )),
            };
            shared.metrics.export.build_took(timer, outcome.is_ok());
            // Ended before the actor hears of it, so that whoever its answer
            // reaches reads the gauge without this build.
            drop(in_flight);
            // If the actor is gone the message comes back and is dropped
            // here; a built instance then goes to the disposer via its Drop.
            let _ = myself.send_message(KeyMsg::BuildDone { attempt, outcome });
        };
        build.task = Some(tokio::spawn(task.instrument(span)).abort_handle());
    }

    fn build_done(&mut self, myself: &ActorRef<KeyMsg<T>>, attempt: u64, outcome: Result<Arc<Instance<T>>, PoolError>) {
        if self.build.as_ref().is_none_or(|b| b.attempt != attempt || !b.running) {
            return; // an answer to an attempt that no longer matters
        }
        let mut build = self.build.take().expect("checked above");
        let now = Instant::now();
        match &outcome {
            Ok(_) => Metrics::bump(&self.metrics().builds),
            Err(error) => {
                Metrics::bump(&self.metrics().build_failures);
                tracing::warn!(key = %self.key, error = %error, cause = %Causes(error), "build failed");
            }
        }
        if let Some(cause) = build.stale {
            // Invalidated (or replaced) while in flight: never served or
            // cached, because it may have been built from what the
            // invalidation declared stale. Its waiters get a fresh build. A
            // refresh whose instance was retired meanwhile ends here too.
            if outcome.is_ok() {
                self.metrics().retired(cause);
            }
            drop(outcome);
            build.answer_refresh(&self.refresh_declined());
            self.requeue_front(build.waiters);
            return;
        }
        match outcome {
            Ok(instance) => {
                self.restart.success();
                tracing::debug!(key = %self.key, instance = %instance.id, "built");
                // Answered only once it is published (below): a caller handed
                // it must find it in the read view with its next lookup.
                let leases: Vec<Lease<T>> = build.waiters.iter().map(|_| Lease::new(&instance)).collect();
                let replaced = match (&build.refresh, &self.current) {
                    (Some(refresh), Some(current)) if current.instance.id == refresh.replaces => self.current.take(),
                    _ => None,
                };
                self.version = instance.version;
                let expires_at = self.shared.settings.expiry(build.ttl, now);
                // Published first, retired second: a caller finds either the
                // old instance (still valid) or the new one, never neither.
                // A single-attempt factory (`try_get_with`) cannot run again:
                // such an instance is never refreshed.
                let factory = (build.attempts == Attempts::Repeatable).then(|| build.factory.clone());
                self.set_current(instance, build.hash, expires_at, build.fence, factory, build.ttl);
                if let Some(old) = replaced {
                    if let Some(new) = self.current.as_ref() {
                        new.instance.published.inherit_use(&old.instance.published);
                    }
                    self.retire_entry(old, RetireCause::Refreshed);
                    Metrics::bump(&self.metrics().refreshes);
                }
                for (waiter, lease) in build.waiters.drain(..).zip(leases) {
                    waiter.respond(Ok(lease));
                }
                if build.refresh.is_some() {
                    self.refresh_failures = 0;
                }
                build.answer_refresh(&Ok(true));
                if self.shutting_down() {
                    self.retire_current(RetireCause::Shutdown);
                }
            }
            Err(error) if build.is_background() => self.refresh_failed(myself, build, error, now),
            Err(error) => {
                let verdict = if self.shutting_down() {
                    Verdict::GiveUp
                } else {
                    self.restart.failure(
                        now,
                        &self.shared.settings.restart_policy,
                        build.retries_done,
                        build.hash,
                    )
                };
                let verdict = build.attempts.limit(verdict);
                match verdict {
                    Verdict::Retry(delay) => return self.retry_after(myself, build, delay),
                    Verdict::GiveUp => {}
                    Verdict::CoolDown(cool) => {
                        tracing::warn!(key = %self.key, cool_down = ?cool, "key cooling down after repeated failures");
                    }
                }
                build.answer_refresh(&Err(error.clone()));
                for waiter in build.waiters {
                    waiter.respond(Err(error.clone()));
                }
            }
        }
        self.drain_queue(myself);
    }

    /// A refresh nobody waits on failed: the old instance keeps serving
    /// (until its TTL), the key never cools down for it, and the failure is
    /// retried with the restart policy's backoff. Once the retries are
    /// spent, the next refresh-ahead may start after a backoff that grows
    /// with each refresh that failed in a row.
    fn refresh_failed(&mut self, myself: &ActorRef<KeyMsg<T>>, mut build: Build<T>, error: PoolError, now: Instant) {
        let policy = &self.shared.settings.restart_policy;
        let delay = policy.backoff(build.retries_done);
        if !self.shutting_down()
            && build.retries_done < policy.max_retries
            && Deadline::after(now, delay) != Deadline::Never
        {
            return self.retry_after(myself, build, delay);
        }
        Metrics::bump(&self.metrics().refresh_failures);
        let rearm = policy.backoff(self.refresh_failures);
        self.refresh_failures = self.refresh_failures.saturating_add(1);
        tracing::warn!(
            key = %self.key,
            error = %error,
            cause = %Causes(&error),
            retry_in = ?rearm,
            "refresh failed; the current instance keeps serving"
        );
        build.answer_refresh(&Err(error));
        if let Some(refresh) = build.refresh.as_ref()
            && Deadline::after(now, rearm) != Deadline::Never
        {
            let instance = refresh.replaces;
            myself.send_after(rearm, move || KeyMsg::Rearm { instance });
        }
        self.drain_queue(myself);
    }

    /// Keeps `build` and runs its next attempt after `delay` (its waiters
    /// keep waiting).
    fn retry_after(&mut self, myself: &ActorRef<KeyMsg<T>>, mut build: Build<T>, delay: Duration) {
        build.retries_done += 1;
        build.running = false;
        let attempt = build.attempt;
        self.build = Some(build);
        myself.send_after(delay, move || KeyMsg::Retry { attempt });
    }

    /// What a `Pool::refresh` caller gets when its rebuild was dropped.
    fn refresh_declined(&self) -> Result<bool, PoolError> {
        if self.shutting_down() {
            Err(PoolError::ShutDown)
        } else {
            Ok(false)
        }
    }

    /// Starts (or joins) a rebuild of the current instance that keeps it
    /// serving until the new one is published. `target`: only if that
    /// instance is still current (refresh-ahead). Answers `reply` with
    /// `Ok(false)` at once when there is nothing to rebuild: no instance, an
    /// expired one, an inserted one (no factory), or one built for a
    /// configuration version above `version`.
    fn refresh(
        &mut self,
        myself: &ActorRef<KeyMsg<T>>,
        target: Option<InstanceId>,
        version: Option<u64>,
        reply: Option<RefreshReply>,
    ) {
        let answer = |reply: Option<RefreshReply>, result: Result<bool, PoolError>| {
            if let Some(reply) = reply {
                let _ = reply.send(result);
            }
        };
        if self.shutting_down() {
            return answer(reply, Err(PoolError::ShutDown));
        }
        let Some(current) = self.current.as_ref() else {
            return answer(reply, Ok(false));
        };
        let view = &self.shared.view;
        if target.is_some_and(|id| id != current.instance.id)
            || current
                .instance
                .published
                .refusal(current.hash, view.now_nanos(), self.shared.settings.time_to_idle)
                .is_some()
        {
            return answer(reply, Ok(false));
        }
        let version = version.unwrap_or(self.version);
        let Some(factory) = current.factory.clone().filter(|_| version >= self.version) else {
            return answer(reply, Ok(false));
        };
        let (hash, replaces, ttl, fence) = (current.hash, current.instance.id, current.ttl, current.fence);
        match self.build.as_mut() {
            Some(build) if build.stale.is_none() && build.version >= version => match build.refresh.as_mut() {
                Some(refresh) => refresh.callers.extend(reply),
                // Unreachable while an instance is current (a build then is
                // always a refresh or stale); answered rather than lost.
                None => answer(reply, Ok(false)),
            },
            Some(_) => {
                // A rebuild for an older version (or a dropped one) is under
                // way: this one must start after it, from the factory of
                // whatever is current then.
                if let Some(reply) = reply {
                    self.deferred_refreshes.push((version, reply));
                }
            }
            None => {
                self.build = Some(Build {
                    hash,
                    factory,
                    ttl,
                    fence,
                    waiters: Vec::new(),
                    attempt: 0,
                    retries_done: 0,
                    stale: None,
                    running: false,
                    refresh: Some(Refreshing {
                        replaces,
                        callers: reply.into_iter().collect(),
                    }),
                    version,
                    // A root: refresh-ahead is asked for by whichever hit
                    // found the instance due, on behalf of no one request.
                    span: crate::telemetry::spans::refresh_span(&tracing::Span::none(), &self.key),
                    attempts: Attempts::Repeatable,
                    task: None,
                });
                self.run_attempt(myself);
            }
        }
    }

    /// A failed refresh's backoff is over: the next hit that finds the
    /// instance due may ask for another.
    fn rearm(&self, instance: InstanceId) {
        if let Some(current) = self.current.as_ref()
            && current.instance.id == instance
        {
            current
                .instance
                .refresh_claimed
                .store(false, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Handles the refreshes that waited for the build that just ended.
    fn run_deferred_refreshes(&mut self, myself: &ActorRef<KeyMsg<T>>) {
        if self.build.is_none() && !self.deferred_refreshes.is_empty() {
            for (version, reply) in std::mem::take(&mut self.deferred_refreshes) {
                self.refresh(myself, None, Some(version), Some(reply));
            }
        }
    }

    /// Puts requests back at the head of the queue and handles the queue.
    fn requeue_front(&mut self, requests: Vec<Routed<Request<T>>>) {
        for request in requests.into_iter().rev() {
            self.queued.push_front(request);
        }
    }

    fn drain_queue(&mut self, myself: &ActorRef<KeyMsg<T>>) {
        while self.build.is_none()
            && let Some(request) = self.queued.pop_front()
        {
            self.request(myself, request);
        }
        // Whatever is left could not join the new build: it stays queued.
    }

    fn retry(&mut self, myself: &ActorRef<KeyMsg<T>>, attempt: u64) {
        let shutting_down = self.shutting_down();
        let Some(build) = self.build.as_mut() else { return };
        if build.attempt != attempt || build.running {
            return;
        }
        // A refresh whose instance was retired during the backoff has nothing
        // left to replace.
        let dropped = build.is_background() && build.stale.is_some();
        if shutting_down || dropped {
            let mut build = self.build.take().expect("checked above");
            build.answer_refresh(&self.refresh_declined());
            for waiter in build.waiters {
                waiter.respond(Err(PoolError::ShutDown));
            }
            self.drain_queue(myself);
            return;
        }
        // A new attempt starts after any invalidation, so it is fresh.
        build.stale = None;
        self.run_attempt(myself);
    }

    fn insert(&mut self, Routed { fence, request: insert }: Routed<InsertRequest<T>>) {
        Metrics::bump(&self.metrics().inserts);
        let instance = Instance::new(
            insert.value,
            self.key.clone(),
            self.version,
            self.shared.disposer.clone(),
            self.shared.metrics.clone(),
        );
        if self.shutting_down() {
            drop(instance); // the pool owns it now: it is disposed like any other
        } else {
            self.retire_current(RetireCause::Replaced);
            self.restart.success();
            if let Some(build) = self.build.as_mut() {
                build.stale.get_or_insert(RetireCause::Replaced);
            }
            let expires_at = self.shared.settings.expiry(insert.ttl, Instant::now());
            self.set_current(instance, insert.hash, expires_at, fence, None, insert.ttl);
        }
        if let Some(reply) = insert.reply {
            let result = if self.shutting_down() {
                Err(PoolError::ShutDown)
            } else {
                Ok(())
            };
            let _ = reply.send(result);
        }
    }

    /// Handles the supervisor's `Retire`. Returns whether anything was retired.
    fn retire(&mut self, cause: RetireCause, target: RetireTarget) -> bool {
        let now = Instant::now();
        let mut retired = false;
        if let Some(current) = self.current.as_ref() {
            let same = match target {
                RetireTarget::Everything => true,
                RetireTarget::Instance(id) => id == current.instance.id,
                RetireTarget::Nothing => false,
            };
            // The supervisor judged expiry from a view that may lag; the
            // actor's own clock and data decide.
            let due = match cause {
                RetireCause::Ttl | RetireCause::Idle => {
                    let idle = self.shared.settings.time_to_idle;
                    current
                        .instance
                        .published
                        .refusal(current.hash, self.shared.view.nanos(now), idle)
                        .is_some()
                }
                _ => true,
            };
            if same && due {
                self.retire_current(cause);
                retired = true;
            }
        }
        if target == RetireTarget::Everything {
            if let Some(build) = self.build.as_mut() {
                build.stale.get_or_insert(cause);
                retired = true;
            }
            // An explicit invalidation is a fresh start: it also ends a
            // cool-down, and the key's next instance (a build in flight is
            // discarded) starts again at configuration version 0, as it
            // would with a new actor.
            self.restart.success();
            self.version = 0;
        }
        retired
    }

    /// Makes a new instance current, publishing it in the read view unless
    /// a prefix invalidation fenced the key after its request passed the
    /// supervisor: then the supervisor is asked first
    /// (`KeyReport::Ready::published`).
    fn set_current(
        &mut self,
        instance: Arc<Instance<T>>,
        hash: CredentialsHash,
        expires_at: Option<Instant>,
        fence: Fence,
        factory: Option<Factory<T>>,
        ttl: Option<Duration>,
    ) {
        instance
            .published
            .stamp(hash, expires_at, Instant::now(), self.shared.view.clock());
        instance.published.carry_use(std::mem::take(&mut self.unseen_use));
        let published = !self.shutting_down()
            && self
                .shared
                .view
                .publish(&self.shared.writer, self.key.clone(), &instance, fence);
        self.current = Some(Current {
            instance,
            hash,
            expires_at,
            published,
            factory,
            ttl,
            fence,
        });
    }

    /// The supervisor has sent every retirement that predates it: publish
    /// the instance if it is still current.
    fn publish(&mut self, instance: InstanceId, fence: Fence) {
        let shutting_down = self.shutting_down();
        if let Some(current) = self.current.as_mut()
            && !current.published
            && current.instance.id == instance
            && !shutting_down
        {
            current.published =
                self.shared
                    .view
                    .publish(&self.shared.writer, self.key.clone(), &current.instance, fence);
            if current.published {
                current.fence = fence;
            } else {
                // Fenced again since the supervisor sent this: report again,
                // so that it sends that retirement and another `Publish`.
                self.reported = Reported::Nothing;
            }
        }
    }

    fn retire_current(&mut self, cause: RetireCause) {
        self.retire_current_keeping(cause, false);
    }

    /// Retires the current instance. A refresh of it that nobody waits on
    /// is dropped with it (it has nothing left to replace), unless
    /// `keep_refresh`: the caller that retires it joins that refresh.
    fn retire_current_keeping(&mut self, cause: RetireCause, keep_refresh: bool) {
        if let Some(current) = self.current.take() {
            if !keep_refresh
                && let Some(build) = self.build.as_mut()
                && build.is_background()
                && build
                    .refresh
                    .as_ref()
                    .is_some_and(|r| r.replaces == current.instance.id)
            {
                build.stale.get_or_insert(cause);
            }
            self.retire_entry(current, cause);
        }
    }

    fn retire_entry(&mut self, current: Current<T>, cause: RetireCause) {
        let id = current.instance.id;
        let _span = crate::telemetry::spans::retire_span(&self.key, id, cause).entered();
        // Out of the read view before anything acknowledges the retirement.
        self.shared
            .view
            .unpublish(&self.shared.writer, &self.key, &current.instance);
        // Its hits the supervisor has not seen yet are uses of the key: they
        // go to the instance that serves now (a refresh), else to the next.
        let unseen = current.instance.published.take_use();
        match self.current.as_ref() {
            Some(now_serving) => now_serving.instance.published.carry_use(unseen),
            None => self.unseen_use = self.unseen_use.max(unseen),
        }
        // The pool's reference goes now: disposal follows at once, or at
        // the last lease.
        drop(current.instance);
        self.metrics().retired(cause);
        if cause == RetireCause::Shutdown {
            self.retired_by_shutdown += 1;
        }
        tracing::debug!(key = %self.key, instance = %id, cause = cause.as_str(), "retired");
    }

    fn begin_shutdown(
        &mut self,
        myself: &ActorRef<KeyMsg<T>>,
        deadline: Option<Instant>,
        reply: RpcReplyPort<KeyShutdown>,
    ) {
        self.phase = KeyPhase::Stopping {
            reply: Some(reply),
            abandoned: false,
        };
        self.retire_current(RetireCause::Shutdown);
        for request in self.queued.drain(..) {
            request.respond(Err(PoolError::ShutDown));
        }
        for (_, reply) in self.deferred_refreshes.drain(..) {
            let _ = reply.send(Err(PoolError::ShutDown));
        }
        if self.build.as_ref().is_some_and(|b| !b.running) {
            // Waiting out a backoff: give up now rather than at the timer.
            let mut build = self.build.take().expect("checked above");
            build.answer_refresh(&Err(PoolError::ShutDown));
            for waiter in build.waiters {
                waiter.respond(Err(PoolError::ShutDown));
            }
        }
        // A build that runs past the deadline is dropped then: the shutdown
        // returns by its deadline whatever the factory does.
        if self.build.is_some()
            && let Some(deadline) = deadline
        {
            myself.send_after(deadline.saturating_duration_since(Instant::now()), || KeyMsg::Abandon);
        }
    }

    /// The shutdown's deadline passed with a build still running: its task
    /// is aborted (which drops the factory's future) and everyone waiting
    /// on it is answered `ShutDown`.
    fn abandon(&mut self) {
        let KeyPhase::Stopping { abandoned, .. } = &mut self.phase else {
            return;
        };
        let Some(mut build) = self.build.take() else {
            return;
        };
        *abandoned = true;
        if let Some(task) = build.task.take() {
            task.abort();
        }
        tracing::warn!(key = %self.key, "build still running at the shutdown deadline: abandoned");
        build.answer_refresh(&Err(PoolError::ShutDown));
        for waiter in build.waiters {
            waiter.respond(Err(PoolError::ShutDown));
        }
    }

    fn cooling_error(&self, retry_after: Duration) -> PoolError {
        PoolError::CoolingDown {
            key: self.key.to_string(),
            retry_after,
        }
    }

    /// Tells the supervisor what changed, and finishes a shutdown.
    fn after_message(&mut self, myself: &ActorRef<KeyMsg<T>>) {
        if let KeyPhase::Stopping { reply, abandoned } = &mut self.phase {
            if self.build.is_none()
                && let Some(reply) = reply.take()
            {
                for request in self.queued.drain(..) {
                    request.respond(Err(PoolError::ShutDown));
                }
                let _ = reply.send(KeyShutdown {
                    retired: self.retired_by_shutdown,
                    abandoned: *abandoned,
                });
                // `drain`, not `stop`: whatever is still in the mailbox is
                // handled (and answered `ShutDown`) rather than dropped.
                if myself.drain().is_err() {
                    myself.stop(None);
                }
            }
            return;
        }
        // A key with nothing resident and nothing in flight has left the
        // pool: whatever comes next for it starts at version 0, whether this
        // actor serves it or a new one.
        if self.current.is_none() && self.build.is_none() {
            self.version = 0;
        }
        // An instance that keeps serving while it is rebuilt (a refresh) is
        // reported as ready: it can be evicted or expire like any other
        // (which drops the rebuild). Any other build keeps the key busy.
        let refreshing = self.build.as_ref().is_none_or(|b| b.refresh.is_some());
        let now_state = if let Some(current) = self.current.as_ref().filter(|_| refreshing) {
            Reported::Ready(current.instance.id, current.published)
        } else if let Some(build) = self.build.as_ref() {
            Reported::Building(!(build.is_background() && build.stale.is_some()))
        } else {
            Reported::Idle(self.seen)
        };
        if now_state == self.reported {
            return;
        }
        self.reported = now_state;
        let report = match now_state {
            Reported::Building(serving) => KeyReport::Building { serving },
            Reported::Ready(instance, published) => {
                let current = self.current.as_ref().expect("ready has a current instance");
                KeyReport::Ready {
                    instance,
                    expires_at: current.expires_at,
                    leases: Arc::downgrade(&current.instance),
                    published,
                }
            }
            Reported::Idle(seen) => {
                let now = Instant::now();
                let policy = &self.shared.settings.restart_policy;
                let restart = (!self.restart.is_clear(now, policy)).then(|| self.restart.clone());
                KeyReport::Idle { seen, restart }
            }
            Reported::Nothing => return,
        };
        (self.report_to)(self.key.clone(), myself.get_id(), report);
    }
}

impl<T: Send + Sync + 'static> Actor for KeyActor<T> {
    type Msg = KeyMsg<T>;
    type State = KeyState<T>;
    type Arguments = KeyArgs<T>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(KeyState {
            key: args.key,
            shared: args.shared,
            report_to: args.report_to,
            current: None,
            build: None,
            queued: VecDeque::new(),
            restart: args.restart,
            seen: 0,
            reported: Reported::Nothing,
            next_attempt: 0,
            phase: KeyPhase::Running,
            retired_by_shutdown: 0,
            unseen_use: 0,
            version: 0,
            deferred_refreshes: Vec::new(),
            refresh_failures: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if message.is_from_supervisor() {
            state.seen += 1;
        }
        match message {
            KeyMsg::Get(request) => state.request(&myself, request),
            KeyMsg::Insert(insert) => state.insert(insert),
            KeyMsg::Retire {
                cause,
                target,
                fence,
                reply,
            } => {
                let retired = state.retire(cause, target);
                if let Some(number) = fence {
                    state.shared.view.clear_fence(&state.shared.writer, &state.key, number);
                }
                if let Some(reply) = reply {
                    let _ = reply.send(retired);
                }
            }
            KeyMsg::Shutdown { deadline, reply } => state.begin_shutdown(&myself, deadline, reply),
            KeyMsg::Abandon => state.abandon(),
            KeyMsg::BuildDone { attempt, outcome } => {
                state.build_done(&myself, attempt, outcome);
                // Stale waiters were re-queued; serve them now.
                state.drain_queue(&myself);
                state.run_deferred_refreshes(&myself);
            }
            KeyMsg::Retry { attempt } => {
                state.retry(&myself, attempt);
                state.run_deferred_refreshes(&myself);
            }
            KeyMsg::Refresh { target, version, reply } => state.refresh(&myself, target, version, reply),
            KeyMsg::Rearm { instance } => state.rearm(instance),
            KeyMsg::Publish { instance, fence } => state.publish(instance, fence),
        }
        state.after_message(&myself);
        Ok(())
    }
}

impl Settings {
    /// When an instance created now expires: the per-entry TTL if given
    /// (zero meaning never), else the pool's. A TTL too long for the clock
    /// means never.
    fn expiry(&self, ttl: Option<Duration>, now: Instant) -> Option<Instant> {
        match ttl {
            Some(ttl) => nonzero(ttl),
            None => self.time_to_live,
        }
        .and_then(|ttl| now.checked_add(ttl))
    }
}
