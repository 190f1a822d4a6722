//! The hit and miss paths of `get_or_create` and its siblings: the coop
//! budget, the read view, following another call's miss of the same key
//! and hash (see `inflight.rs`), and asking the actors.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;

use crate::actors::key::Factory;
use crate::actors::lifecycle::Phase;
use crate::actors::supervisor::SupervisorInternal;
use crate::error::{BoxError, PoolError};
use crate::factory::Attempts;
use crate::hash::CredentialsHash;
use crate::inflight::{Answer, Role};
use crate::lease::Lease;
use crate::telemetry::Metrics;

use super::Pool;

impl<T: Send + Sync + 'static> Pool<T> {
    pub(super) async fn get_inner<F, Fut, E>(
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
                        if let Some(instance) = ask.for_follower(instance, shared.view.fence(), joined) {
                            return Ok(Lease::from_arc(instance));
                        }
                        // Not to be handed to this call (see `for_follower`): ask, alone.
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
    pub(super) async fn view_lease(&self, key: &str, hash: CredentialsHash) -> Result<Option<Lease<T>>, PoolError> {
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
    pub(super) async fn ask_actors(
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
    pub(super) fn hand_out(&self, lease: Lease<T>, asked: Option<tokio::time::Instant>) -> HandOut<T> {
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
pub(super) enum HandOut<T: Send + Sync + 'static> {
    Serve(Lease<T>),
    Probe(Lease<T>),
}
