//! The supervisor: routes every call to its key actor, keeps LRU order, the
//! prefix index and expiry deadlines, sweeps, enforces capacity, supervises
//! key actors and coordinates shutdown.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::actors::key::{KeyActor, KeyArgs};
use crate::actors::key::{KeyMsg, KeyReport, ReportTo, Request, RetireTarget, Routed};
use crate::actors::lifecycle::Phase;
use crate::actors::{DisposerMsg, Shared};
use crate::error::PoolError;
use crate::ids::Fence;
use crate::ids::RetireCause;
use crate::lease::InstanceId;
use crate::restart::RestartState;
use crate::telemetry::Metrics;

mod counters;
mod protocol;
mod retire;
mod shutdown;

pub use protocol::SupervisorMsg;
pub(crate) use protocol::{Internal, SupervisorInternal};

use shutdown::Life;

/// Most keys an admission passes over (leased or building) to find one to
/// evict (see `evict_one`).
const ADMISSION_SCAN: usize = 64;

/// Up to this many keys, `stats()` copies the key list in the mailbox.
const STATS_INLINE_KEYS: usize = 1024;

/// The pool's supervisor actor (its supervision of key actors is described
/// on [`Pool`](crate::Pool), the only way to start one).
#[derive(Debug)]
pub(crate) struct SupervisorActor<T>(std::marker::PhantomData<fn() -> T>);

impl<T> SupervisorActor<T> {
    pub(crate) fn new() -> Self {
        SupervisorActor(std::marker::PhantomData)
    }
}

/// What the supervisor starts with (built by [`PoolBuilder`](crate::PoolBuilder)).
pub(crate) struct SupervisorArgs<T: Send + Sync + 'static> {
    pub(crate) shared: Arc<Shared<T>>,
}

impl<T: Send + Sync + 'static> std::fmt::Debug for SupervisorArgs<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisorArgs").finish_non_exhaustive()
    }
}

impl<T: Send + Sync + 'static> std::fmt::Debug for SupervisorState<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisorState")
            .field("resident", &self.resident)
            .field("entries", &self.entries.len())
            .field("life", &self.life)
            .finish_non_exhaustive()
    }
}

/// What the supervisor last heard from a key actor.
enum View<T: Send + Sync + 'static> {
    /// Spawned or building: never chosen for eviction.
    Busy,
    /// An instance is resident.
    Ready {
        instance: InstanceId,
        expires_at: Option<Instant>,
        leases: std::sync::Weak<crate::instance::Instance<T>>,
    },
    /// Nothing resident and nothing in flight.
    Idle,
}

/// A recorded use of a key: when (nanoseconds on the read view's clock),
/// then in which order among uses recorded at the same reading (a paused
/// clock, or hits within the view's one-millisecond granularity).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Used {
    at: u64,
    seq: u64,
}

/// Whether a key counts against `max_entries`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// Counted.
    Resident,
    /// Chosen for eviction or invalidated (or not admitted yet): its actor
    /// is retiring it, and a report or a call may make it resident again.
    Leaving,
}

/// A retirement decided but not sent yet (see `Entry::pending`).
#[derive(Debug, Clone, Copy)]
struct Retirement {
    cause: RetireCause,
    target: RetireTarget,
    /// The prefix invalidation's fence number, for the key actor to clear.
    fence: Option<Fence>,
}

/// One resident key.
struct Entry<T: Send + Sync + 'static> {
    actor: ActorRef<KeyMsg<T>>,
    /// Messages sent to the actor (see `KeyReport::Idle`).
    sent: u64,
    /// The key's last use as this actor last recorded it (nanoseconds on the
    /// read view's clock), and its place in `recency`. Hits through the read
    /// view do not come here: they advance the published instance's touch
    /// time, which eviction and the idle sweep read lazily. So this is a lower bound of
    /// the true last use.
    used: Used,
    view: View<T>,
    /// Whether the key counts against `max_entries` (changed only through
    /// `SupervisorState::stand`, which keeps `resident` in step).
    standing: Standing,
    /// A `Retire` decided but not sent yet (see `SupervisorState::paced`).
    /// It is sent before anything else reaches the actor, so a caller never
    /// gets past it.
    pending: Option<Retirement>,
}

impl<T: Send + Sync + 'static> Entry<T> {
    fn send(&mut self, msg: KeyMsg<T>) -> Result<(), KeyMsg<T>> {
        self.sent += 1;
        self.actor.send_message(msg).map_err(|e| match e {
            ractor::MessagingErr::SendErr(msg) => msg,
            other => unreachable!("sending to a local actor fails only with SendErr: {other:?}"),
        })
    }

    /// Sends the pending `Retire`, if any, ahead of whatever comes next.
    fn flush_pending(&mut self) {
        if let Some(Retirement { cause, target, fence }) = self.pending.take() {
            let _ = self.send(KeyMsg::Retire {
                cause,
                target,
                fence,
                reply: None,
            });
        }
    }

    fn evictable(&self) -> bool {
        self.standing == Standing::Resident
            && match &self.view {
                View::Busy => false,
                View::Idle => true,
                // The key actor holds one strong reference; any more are leases
                // (or, for a moment, a read-view lookup checking the hit rule:
                // the skip of leased keys is best effort).
                View::Ready { leases, .. } => leases.strong_count() <= 1,
            }
    }
}

/// The supervisor's state: everything about which keys exist. Owned by the
/// actor and changed only in its mailbox, so no lock guards it.
pub(crate) struct SupervisorState<T: Send + Sync + 'static> {
    shared: Arc<Shared<T>>,
    /// Routing table.
    entries: HashMap<Arc<str>, Entry<T>>,
    /// The keys by recorded last use, oldest first (see `Entry::used`).
    recency: BTreeSet<(Used, Arc<str>)>,
    /// Orders uses recorded within one clock reading (see `Used`).
    next_use: u64,
    /// The same keys, ordered, for prefix invalidation in O(log N + matches).
    ordered: BTreeSet<Arc<str>>,
    /// Key actors by id, to recognise which one stopped.
    by_actor: HashMap<ActorId, Arc<str>>,
    /// TTL deadlines, so a sweep finds expired entries without a scan.
    deadlines: BTreeSet<(Instant, InstanceId, Arc<str>)>,
    /// Failure history of keys whose actor is gone (ordered for prefix
    /// invalidation); cooling keys are answered from here without an actor.
    dormant: BTreeMap<Arc<str>, RestartState>,
    /// Entries whose standing is `Resident`.
    resident: usize,
    /// Keys whose `Retire` is pending, oldest first. A sweep tick or a prefix
    /// invalidation can retire thousands of keys at once; sending all their
    /// `Retire`s in one go makes that many actors (and their disposals)
    /// runnable at once, and every other caller of the pool waits behind
    /// them for milliseconds. So at most `RETIRE_BATCH` are sent per
    /// `RETIRE_PACE`; the rest wait here, each flushed early if its key is
    /// called meanwhile (`Entry::pending`). May hold keys forgotten since.
    paced: VecDeque<Arc<str>>,
    /// A `RetireTick` is scheduled.
    tick_scheduled: bool,
    sweep: Option<JoinHandle<()>>,
    /// Serving, shutting down, or done and draining its mailbox.
    life: Life,
    /// How key actors report to this actor; one for all of them.
    report_to: ReportTo<T>,
}

impl<T: Send + Sync + 'static> SupervisorState<T> {
    fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// A use at `at`, ordered after every use recorded before.
    fn record_use(&mut self, at: u64) -> Used {
        self.next_use += 1;
        Used { at, seq: self.next_use }
    }

    async fn spawn_key(
        &mut self,
        myself: &ActorRef<SupervisorMsg<T>>,
        key: &Arc<str>,
    ) -> Result<(), ActorProcessingErr> {
        let args = KeyArgs {
            key: key.clone(),
            shared: self.shared.clone(),
            report_to: self.report_to.clone(),
            restart: self.dormant.remove(key).unwrap_or_default(),
        };
        let (actor, _) = Actor::spawn_linked(None, KeyActor::new(), args, myself.get_cell()).await?;
        self.by_actor.insert(actor.get_id(), key.clone());
        self.ordered.insert(key.clone());
        let used = self.record_use(self.shared.view.now_nanos());
        self.recency.insert((used, key.clone()));
        self.entries.insert(
            key.clone(),
            Entry {
                actor,
                sent: 0,
                used,
                view: View::Busy,
                // Counted by `admit`, below.
                standing: Standing::Leaving,
                pending: None,
            },
        );
        self.admit(key);
        Ok(())
    }

    /// Counts `key` as resident (a new key, or one being retired that a
    /// call keeps) and trims the pool back to its cap, sparing `key`, which
    /// a call is about to use.
    fn admit(&mut self, key: &Arc<str>) {
        self.stand(key, Standing::Resident);
        self.enforce_capacity(ADMISSION_SCAN, Some(key));
        if self.resident > self.shared.settings.max_entries {
            Metrics::bump(&self.metrics().capacity_overshoot);
            tracing::warn!(
                key = %key,
                resident = self.resident,
                max_entries = self.shared.settings.max_entries,
                "over capacity: every other key is leased or building"
            );
        }
    }

    /// A caller's request (one the read view could not serve): handed to the
    /// key's actor, or answered here when the key has no actor and is
    /// cooling down for the credentials the caller presents.
    async fn get(&mut self, myself: &ActorRef<SupervisorMsg<T>>, key: Arc<str>, request: Request<T>) {
        let request = Routed {
            fence: self.shared.view.fence(),
            request,
        };
        let Err(KeyMsg::Get(request)) = self.send_to_resident(&key, KeyMsg::Get(request)) else {
            return;
        };
        if let Some(retry_after) = self
            .dormant
            .get(&key)
            .and_then(|r| r.cooling(Instant::now(), request.hash))
        {
            request.respond(Err(PoolError::CoolingDown {
                key: key.to_string(),
                retry_after,
            }));
        } else {
            // Boxed so that the routing future stays small: spawning an
            // actor is a big future that most calls never need.
            Box::pin(self.spawn_and_send(myself, key, KeyMsg::Get(request))).await;
        }
    }

    /// Sends `msg` to the key's actor, starting one if there is none.
    async fn route(&mut self, myself: &ActorRef<SupervisorMsg<T>>, key: Arc<str>, msg: KeyMsg<T>) {
        if let Err(msg) = self.send_to_resident(&key, msg) {
            Box::pin(self.spawn_and_send(myself, key, msg)).await;
        }
    }

    /// Sends `msg` to the key's resident actor, recording the use. A
    /// pending `Retire` goes first. Gives `msg` back when the key has no
    /// live actor.
    fn send_to_resident(&mut self, key: &Arc<str>, msg: KeyMsg<T>) -> Result<(), KeyMsg<T>> {
        let Some(entry) = self.entries.get_mut(key) else {
            return Err(msg);
        };
        let used = Used {
            at: self.shared.view.now_nanos(),
            seq: self.next_use,
        };
        self.next_use += 1;
        self.recency.remove(&(entry.used, key.clone()));
        entry.used = used;
        self.recency.insert((used, key.clone()));
        if entry.standing == Standing::Leaving {
            // The actor serves this call after retiring: the key stays, and
            // counts against the cap like a new key.
            self.admit(key);
        }
        let entry = self.entries.get_mut(key).expect("admitting spares the key");
        entry.flush_pending();
        match entry.send(msg) {
            Ok(()) => Ok(()),
            Err(back) => {
                // The actor died and its termination event is still on the
                // way: forget it now so that a fresh one is started.
                self.forget(key);
                Err(back)
            }
        }
    }

    /// Sends `msg` to the key's actor if it has one, after any pending
    /// `Retire`, without counting it as a use of the key (a refresh or a
    /// retirement of one instance is not a use). Gives `msg` back when the
    /// key has no live actor.
    fn send_to_existing(&mut self, key: &Arc<str>, msg: KeyMsg<T>) -> Result<(), KeyMsg<T>> {
        let Some(entry) = self.entries.get_mut(key) else {
            return Err(msg);
        };
        entry.flush_pending();
        entry.send(msg).inspect_err(|_| {
            self.forget(key);
        })
    }

    async fn spawn_and_send(&mut self, myself: &ActorRef<SupervisorMsg<T>>, key: Arc<str>, msg: KeyMsg<T>) {
        if let Err(error) = self.spawn_key(myself, &key).await {
            // Dropping `msg` drops the caller's reply port: the caller gets
            // `ActorStopped` and the pool itself keeps running.
            tracing::error!(key = %key, error = %error, "could not start a key actor");
            return;
        }
        if self.send_to_resident(&key, msg).is_err() {
            tracing::error!(key = %key, "a key actor stopped right after it started");
        }
    }

    /// Removes a key's entry from every index.
    fn forget(&mut self, key: &Arc<str>) -> Option<Entry<T>> {
        let entry = self.entries.remove(key)?;
        self.ordered.remove(key);
        self.recency.remove(&(entry.used, key.clone()));
        self.by_actor.remove(&entry.actor.get_id());
        if let View::Ready {
            instance,
            expires_at: Some(at),
            ..
        } = entry.view
        {
            self.deadlines.remove(&(at, instance, key.clone()));
        }
        if entry.standing == Standing::Resident {
            self.resident -= 1;
        }
        Some(entry)
    }

    /// Sets `key`'s standing, keeping `resident` in step: the one place
    /// that count changes, apart from `forget`.
    fn stand(&mut self, key: &Arc<str>, standing: Standing) {
        let Some(entry) = self.entries.get_mut(key) else { return };
        match (std::mem::replace(&mut entry.standing, standing), standing) {
            (Standing::Leaving, Standing::Resident) => self.resident += 1,
            (Standing::Resident, Standing::Leaving) => self.resident -= 1,
            _ => {}
        }
    }

    fn report(&mut self, key: Arc<str>, actor: ActorId, report: KeyReport<T>) {
        if self.entries.get(&key).is_none_or(|e| e.actor.get_id() != actor) {
            return; // from an actor this key no longer uses
        }
        // Chosen for eviction from a view that was already out of date: the
        // key is busy or has a new instance, so it stays resident.
        if !matches!(report, KeyReport::Idle { .. } | KeyReport::Building { serving: false }) {
            self.stand(&key, Standing::Resident);
        }
        let entry = self.entries.get_mut(&key).expect("checked above");
        if let View::Ready {
            instance,
            expires_at: Some(at),
            ..
        } = entry.view
        {
            self.deadlines.remove(&(at, instance, key.clone()));
        }
        if !matches!(report, KeyReport::Idle { .. }) {
            // The actor started a build or has a new instance that a pending
            // invalidation predates: it must not wait for its turn.
            entry.flush_pending();
        }
        match report {
            KeyReport::Building { .. } => entry.view = View::Busy,
            KeyReport::Ready {
                instance,
                expires_at,
                leases,
                published,
            } => {
                if let Some(at) = expires_at {
                    self.deadlines.insert((at, instance, key.clone()));
                }
                if !published {
                    // Every retirement that predates the instance went out
                    // above (`flush_pending`), ahead of this.
                    let fence = self.shared.view.fence();
                    let _ = entry.send(KeyMsg::Publish { instance, fence });
                }
                entry.view = View::Ready {
                    instance,
                    expires_at,
                    leases,
                };
            }
            KeyReport::Idle { seen, restart } => {
                entry.view = View::Idle;
                if seen == entry.sent {
                    // An invalidation still waiting in the pacing queue never
                    // reached the actor; it still ends the cool-down the
                    // report carries, as it would have there.
                    let invalidated = entry.pending.is_some_and(|p| p.target == RetireTarget::Everything);
                    // A fence whose retirement never went out: nobody else clears it.
                    if let Some(Retirement {
                        fence: Some(number), ..
                    }) = entry.pending
                    {
                        self.shared.view.clear_fence(&self.shared.writer, &key, number);
                    }
                    // Nothing we sent is still in its mailbox, and we will
                    // send it nothing more: stopping it loses no request.
                    if let Some(entry) = self.forget(&key) {
                        entry.actor.stop(None);
                    }
                    if let Some(restart) = restart.filter(|_| !invalidated) {
                        self.dormant.insert(key, restart);
                    }
                }
            }
        }
        // Capacity is not enforced here, only when a key is admitted and at
        // a sweep tick: the key that reports is often the one just admitted
        // over capacity because every other key was leased (an `insert` into
        // a full pool), and it must be served, not retired at once.
    }
}

impl<T: Send + Sync + 'static> Drop for SupervisorState<T> {
    // Not `post_stop`: an actor killed with its parent's subtree (a linked
    // pool whose parent stopped) never runs `post_stop`, and the disposer,
    // which is not linked, would then wait for `Close` forever. The state is
    // dropped however the actor ends.
    fn drop(&mut self) {
        // Wakes every call still waiting on this actor: none can be answered now.
        self.shared.lifecycle.advance(Phase::Stopped);
        // Key actors killed with us could not unpublish; the view must not
        // keep their instances from the disposer for as long as a handle lives.
        self.shared.view.clear(&self.shared.writer);
        if let Some(sweep) = self.sweep.take() {
            sweep.abort();
        }
        // Key actors stop with us (they are linked); their instances reach the
        // disposer, which stops once it has disposed of everything.
        let _ = self.shared.disposer.send_message(DisposerMsg::Close);
    }
}

impl<T: Send + Sync + 'static> Actor for SupervisorActor<T> {
    type Msg = SupervisorMsg<T>;
    type State = SupervisorState<T>;
    type Arguments = SupervisorArgs<T>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let sweep = args
            .shared
            .settings
            .sweep_interval
            // tokio's interval panics (in its own task) once a tick lies past
            // the end of the clock: a period that long means "no sweep".
            .filter(|period| Instant::now().checked_add(period.saturating_mul(2)).is_some())
            .map(|period| myself.send_interval(period, || SupervisorInternal::Sweep.into()));
        Ok(SupervisorState {
            shared: args.shared,
            entries: HashMap::new(),
            recency: BTreeSet::new(),
            next_use: 0,
            ordered: BTreeSet::new(),
            by_actor: HashMap::new(),
            deadlines: BTreeSet::new(),
            dormant: BTreeMap::new(),
            resident: 0,
            paced: VecDeque::new(),
            tick_scheduled: false,
            sweep,
            life: Life::Running,
            report_to: {
                let supervisor = myself.clone();
                Arc::new(move |key, actor, report| {
                    let report = SupervisorInternal::Report { key, actor, report };
                    supervisor.send_message(report.into()).is_ok()
                })
            },
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::Internal(Internal(msg)) => match msg {
                SupervisorInternal::Get { key, request } => {
                    if state.life.refuses_work() {
                        request.respond(Err(PoolError::ShutDown));
                        return Ok(());
                    }
                    state.get(&myself, key, request).await;
                }
                SupervisorInternal::Insert { key, insert } => {
                    if state.life.refuses_work() {
                        if let Some(reply) = insert.reply {
                            let _ = reply.send(Err(PoolError::ShutDown));
                        }
                        return Ok(());
                    }
                    let insert = Routed {
                        fence: state.shared.view.fence(),
                        request: insert,
                    };
                    state.route(&myself, key, KeyMsg::Insert(insert)).await;
                }
                SupervisorInternal::Refresh { key, version, reply } => {
                    if state.life.refuses_work() {
                        let _ = reply.send(Err(PoolError::ShutDown));
                        return Ok(());
                    }
                    let msg = KeyMsg::Refresh {
                        target: None,
                        version,
                        reply: Some(reply),
                    };
                    // No actor: nothing resident to rebuild.
                    if let Err(KeyMsg::Refresh { reply: Some(reply), .. }) = state.send_to_existing(&key, msg) {
                        let _ = reply.send(Ok(false));
                    }
                }
                SupervisorInternal::RefreshDue { key, instance } => {
                    if !state.life.refuses_work() {
                        let msg = KeyMsg::Refresh {
                            target: Some(instance),
                            version: None,
                            reply: None,
                        };
                        let _ = state.send_to_existing(&key, msg);
                    }
                }
                SupervisorInternal::RetireInstance {
                    key,
                    instance,
                    cause,
                    reply,
                } => {
                    if state.life.refuses_work() {
                        // The shutdown retires it (or has).
                        let _ = reply.send(false);
                        return Ok(());
                    }
                    let msg = KeyMsg::Retire {
                        cause,
                        target: RetireTarget::Instance(instance),
                        fence: None,
                        reply: Some(reply),
                    };
                    if let Err(KeyMsg::Retire { reply: Some(reply), .. }) = state.send_to_existing(&key, msg) {
                        let _ = reply.send(false);
                    }
                }
                SupervisorInternal::Report { key, actor, report } => {
                    if !state.life.refuses_work() {
                        state.report(key, actor, report);
                    }
                }
                SupervisorInternal::Sweep => {
                    if !state.life.refuses_work() {
                        state.sweep(&myself);
                    }
                }
                SupervisorInternal::RetireTick => {
                    state.tick_scheduled = false;
                    if !state.life.refuses_work() {
                        state.send_paced(&myself);
                    }
                }
                SupervisorInternal::KeysShutDown { retired, abandoned } => {
                    state.keys_shut_down(&myself, retired, abandoned)
                }
                SupervisorInternal::ShutdownDone { report } => state.shutdown_done(&myself, report),
            },
            SupervisorMsg::Invalidate { key, reply } => state.invalidate(&key, reply),
            SupervisorMsg::InvalidateByPrefix { prefix, reply } => state.invalidate_by_prefix(&myself, &prefix, reply),
            SupervisorMsg::Stats { reply } => {
                let (mut stats, keys) = state.stats();
                let inline = keys.len() <= STATS_INLINE_KEYS;
                let finish = move || {
                    stats.keys = keys.iter().map(|k| k.to_string()).collect();
                    let _ = reply.send(stats);
                };
                // Copying 100,000 keys takes milliseconds; every other caller
                // would wait for it in this mailbox.
                if inline {
                    finish();
                } else {
                    tokio::task::spawn_blocking(finish);
                }
            }
            SupervisorMsg::Shutdown { deadline, reply } => state.shutdown(&myself, deadline, reply),
            SupervisorMsg::Counters { reply } => {
                let _ = reply.send(state.counters());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Deliberately not ractor's default (which would stop the whole pool
        // when one key actor exits): see the type's docs.
        let who = match &event {
            SupervisionEvent::ActorTerminated(cell, _, _) | SupervisionEvent::ActorFailed(cell, _) => cell.get_id(),
            _ => return Ok(()),
        };
        let Some(key) = state.by_actor.get(&who).cloned() else {
            return Ok(()); // an actor we stopped ourselves
        };
        state.forget(&key);
        // A dead actor cannot unpublish: its instance must not be served on.
        state.shared.view.remove_orphan(&state.shared.writer, &key);
        if !state.life.refuses_work() {
            Metrics::bump(&state.metrics().actor_restarts);
            match &event {
                SupervisionEvent::ActorFailed(_, error) => {
                    tracing::error!(key = %key, error = %error, "key actor failed; a fresh one serves the key's next call")
                }
                _ => {
                    tracing::warn!(key = %key, "key actor stopped unexpectedly; a fresh one serves the key's next call")
                }
            }
        }
        Ok(())
    }
}
