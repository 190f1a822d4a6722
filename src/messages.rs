//! The messages of the supervisor and the key actors (the disposer's live
//! next to it, in `actors/disposer.rs`, so that leases, which send to the
//! disposer, do not import this module, which names leases).
//!
//! [`SupervisorMsg`] is public: an application's own actors may send the
//! public variants (invalidate, invalidate by prefix, stats, shutdown) to the
//! pool's supervisor (see [`Pool::actor`](crate::Pool::actor)). Everything
//! else is internal to the crate.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use ractor::{ActorId, RpcReplyPort};
use tokio::time::Instant;

use crate::error::{BoxError, PoolError};
use crate::hash::CredentialsHash;
use crate::ids::RetireCause;
use crate::ids::{Fence, InstanceId};
use crate::instance::Instance;
use crate::lease::Lease;
use crate::restart::RestartState;
use crate::telemetry::{Counters, ShutdownReport, Stats};

/// A factory as the pool stores it: callable again for retries.
pub(crate) type Factory<T> = Arc<dyn Fn() -> BoxFuture<'static, Result<T, BoxError>> + Send + Sync>;

/// What a caller gets back for a [`Request`]: the lease, or why there is none.
pub(crate) type LeaseReply<T> = RpcReplyPort<Result<Lease<T>, PoolError>>;

/// What a `Pool::refresh` caller gets back: whether an instance was replaced.
pub(crate) type RefreshReply = RpcReplyPort<Result<bool, PoolError>>;

/// Messages to the pool's supervisor actor.
///
/// Other actors can send the public variants to
/// [`Pool::actor`](crate::Pool::actor) with `ractor::call!` or `cast!`.
pub enum SupervisorMsg<T: Send + Sync + 'static> {
    /// Retire the key's instance at once; replies whether the key was present.
    /// Once the reply is sent, no caller gets the old instance; a build in
    /// flight for the key is discarded when it finishes and its waiters get a
    /// fresh build.
    Invalidate {
        /// The key to retire.
        key: String,
        /// Receives `true` if the key was resident.
        reply: RpcReplyPort<bool>,
    },
    /// Retire every key that starts with `prefix` (a plain string prefix);
    /// replies with how many keys were retired.
    InvalidateByPrefix {
        /// The prefix, e.g. `"acme:"` for one tenant.
        prefix: String,
        /// Receives the number of keys retired.
        reply: RpcReplyPort<usize>,
    },
    /// A snapshot of the pool's counters and resident keys.
    Stats {
        /// Receives the snapshot.
        reply: RpcReplyPort<Stats>,
    },
    /// Shut the pool down: refuse new work, let builds in flight finish or
    /// time out, retire everything, wait up to `deadline` for disposals, then
    /// stop. The reply, if any, carries the report.
    Shutdown {
        /// How long to wait for dispose hooks before reporting.
        deadline: Duration,
        /// Receives the report once the pool has stopped.
        reply: Option<RpcReplyPort<ShutdownReport>>,
    },
    /// Messages only the crate itself can build (a caller's request, a key
    /// actor's report, a sweep tick).
    #[doc(hidden)]
    Internal(Internal<T>),
    /// The pool's counters without its key lists (see
    /// [`Pool::counters`](crate::Pool::counters)).
    Counters {
        /// Receives the counters.
        reply: RpcReplyPort<Counters>,
    },
}

impl<T: Send + Sync + 'static> std::fmt::Debug for SupervisorMsg<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SupervisorMsg::Invalidate { key, .. } => f.debug_struct("Invalidate").field("key", key).finish(),
            SupervisorMsg::InvalidateByPrefix { prefix, .. } => {
                f.debug_struct("InvalidateByPrefix").field("prefix", prefix).finish()
            }
            SupervisorMsg::Stats { .. } => f.write_str("Stats"),
            SupervisorMsg::Shutdown { deadline, .. } => f.debug_struct("Shutdown").field("deadline", deadline).finish(),
            SupervisorMsg::Internal(_) => f.write_str("Internal"),
            SupervisorMsg::Counters { .. } => f.write_str("Counters"),
        }
    }
}

/// A message only the crate can build.
#[doc(hidden)]
pub struct Internal<T: Send + Sync + 'static>(pub(crate) SupervisorInternal<T>);

impl<T: Send + Sync + 'static> std::fmt::Debug for Internal<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Internal")
    }
}

impl<T: Send + Sync + 'static> From<SupervisorInternal<T>> for SupervisorMsg<T> {
    fn from(msg: SupervisorInternal<T>) -> Self {
        SupervisorMsg::Internal(Internal(msg))
    }
}

/// The supervisor's internal messages.
pub(crate) enum SupervisorInternal<T: Send + Sync + 'static> {
    /// A caller wants an instance for `key`; routed to the key's actor.
    Get {
        /// The key.
        key: Arc<str>,
        /// The caller's request, forwarded as is.
        request: Request<T>,
    },
    /// Put an instance built elsewhere into the pool.
    Insert {
        /// The key.
        key: Arc<str>,
        /// The instance and what it is for.
        insert: InsertRequest<T>,
    },
    /// Rebuild the key's instance while it keeps serving (`Pool::refresh`).
    Refresh {
        /// The key.
        key: Arc<str>,
        /// The configuration version to build for; `None` keeps the
        /// current instance's.
        version: Option<u64>,
        /// Answered once the new instance is published, or why not.
        reply: RefreshReply,
    },
    /// A hit found this instance older than `refresh_after` (refresh-ahead).
    RefreshDue {
        /// The key.
        key: Arc<str>,
        /// The instance that is due.
        instance: InstanceId,
    },
    /// Retire exactly this instance, if it is still the key's current one
    /// (`Pool::retire`, a stale probe).
    RetireInstance {
        /// The key.
        key: Arc<str>,
        /// The instance.
        instance: InstanceId,
        /// Why.
        cause: RetireCause,
        /// Receives whether it was retired.
        reply: RpcReplyPort<bool>,
    },
    /// A key actor's state changed.
    Report {
        /// The reporting key.
        key: Arc<str>,
        /// Which actor reports (a stale actor's report is ignored).
        actor: ActorId,
        /// Its new state.
        report: KeyReport<T>,
    },
    /// Time to retire expired and idle entries.
    Sweep,
    /// Time to send the next batch of paced `Retire`s.
    RetireTick,
    /// Every key actor has finished its shutdown; wait for the disposer and
    /// answer the shutdown callers.
    KeysShutDown {
        /// Instances the shutdown retired.
        retired: u64,
        /// Whether a build was dropped at the deadline.
        abandoned: bool,
    },
    /// The disposer has drained: answer every shutdown caller and stop.
    ShutdownDone {
        /// The report for the callers.
        report: ShutdownReport,
    },
}

/// One caller's request for an instance.
pub(crate) struct Request<T: Send + Sync + 'static> {
    /// The hash of the credentials the caller holds.
    pub(crate) hash: CredentialsHash,
    /// Builds an instance when none matches. A caller asks the actors only
    /// when the read view could not serve it, so it always brings one.
    pub(crate) factory: Factory<T>,
    /// The read view's fence when the supervisor forwarded the request (set
    /// there; see `ReadView::fence`).
    pub(crate) fence: Fence,
    /// A TTL for the instance this request builds, instead of the default.
    pub(crate) ttl: Option<Duration>,
    /// Where the lease or error goes.
    pub(crate) reply: LeaseReply<T>,
    /// The caller's span when it called: the parent of the build it starts.
    pub(crate) span: tracing::Span,
    /// Whether `factory` may run again (see `Attempts`).
    pub(crate) attempts: crate::factory::Attempts,
    /// The caller already counted itself as a miss: it waited on another
    /// call's ask first (see `inflight.rs`), so the key actor counts it
    /// neither as a hit nor as a miss again.
    pub(crate) counted: bool,
}

impl<T: Send + Sync + 'static> Request<T> {
    /// Gives the caller its lease or error.
    pub(crate) fn answer(self, result: Result<Lease<T>, PoolError>) {
        // A caller that stopped waiting dropped its receiver; a lease sent to
        // it is dropped here, which is all its release needs.
        let _ = self.reply.send(result);
    }
}

/// An instance built elsewhere, to be put in the pool.
pub(crate) struct InsertRequest<T: Send + Sync + 'static> {
    /// The credentials hash it was built for.
    pub(crate) hash: CredentialsHash,
    /// The instance.
    pub(crate) value: T,
    /// A TTL instead of the default.
    pub(crate) ttl: Option<Duration>,
    /// The read view's fence when the supervisor forwarded it.
    pub(crate) fence: Fence,
    /// Answered once the instance is in place.
    pub(crate) reply: Option<RpcReplyPort<Result<(), PoolError>>>,
}

/// What a key actor tells the supervisor about itself. Sent only when its
/// state changes (never on a hit), so the supervisor's view may lag by a
/// message; every decision the supervisor makes from it is re-checked by the
/// key actor.
pub(crate) enum KeyReport<T: Send + Sync + 'static> {
    /// A factory call or its retries are under way.
    Building {
        /// False when the only build is a refresh that was dropped (its
        /// instance was retired): the key is winding down, not busy, and a
        /// retirement the supervisor chose for it stands.
        serving: bool,
    },
    /// An instance is resident.
    Ready {
        /// The instance, to make a later `Retire` precise.
        instance: InstanceId,
        /// When its TTL runs out, if it has one.
        expires_at: Option<Instant>,
        /// Lets the supervisor see whether the instance is leased
        /// (strong count above the references of the key actor and the
        /// read view).
        probe: std::sync::Weak<Instance<T>>,
        /// False when the actor holds the instance back from the read view
        /// because an invalidation happened since its request passed the
        /// supervisor: the supervisor sends any retirement still pending for
        /// the key, then `KeyMsg::Publish`.
        published: bool,
    },
    /// Nothing resident, nothing in flight. The supervisor may stop the actor
    /// if it has sent it nothing since (`seen` equals what it sent), keeping
    /// its failure history (a cooling key is then answered by the supervisor).
    Idle {
        /// Supervisor messages the actor has processed.
        seen: u64,
        /// Failure history worth keeping after the actor is gone.
        restart: Option<RestartState>,
    },
}

/// A key actor's answer to `KeyMsg::Shutdown`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct KeyShutdown {
    /// Instances it retired for the shutdown.
    pub(crate) retired: u64,
    /// Whether it dropped a build at the deadline.
    pub(crate) abandoned: bool,
}

/// What a `KeyMsg::Retire` retires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RetireTarget {
    /// An invalidation: whatever is resident, and a build in flight is
    /// marked stale (never served; its waiters get a fresh build). Also
    /// ends a cool-down.
    Everything,
    /// This instance, if it is still the current one (expiry, capacity: the
    /// supervisor decided from a view that may lag).
    Instance(InstanceId),
    /// Nothing: the supervisor saw nothing resident and asks the actor to
    /// report whether it is idle (capacity eviction of an empty key).
    Nothing,
}

/// Messages to a key actor.
pub(crate) enum KeyMsg<T: Send + Sync + 'static> {
    /// A caller's request (from the supervisor).
    Get(Request<T>),
    /// An instance built elsewhere (from the supervisor).
    Insert(InsertRequest<T>),
    /// Retire the current instance (from the supervisor).
    Retire {
        /// Why.
        cause: RetireCause,
        /// What to retire.
        target: RetireTarget,
        /// For a prefix invalidation, its number: the key actor clears the
        /// read view's fence up to it (see `ReadView::fence_key`).
        fence: Option<Fence>,
        /// Receives whether an instance or a build was retired.
        reply: Option<RpcReplyPort<bool>>,
    },
    /// Finish builds, retire everything and stop (from the supervisor).
    Shutdown {
        /// The shutdown's deadline: a build still running then is
        /// abandoned (`None`: a deadline too far for the clock, never).
        deadline: Option<Instant>,
        /// Receives what the actor retired and abandoned, when it is done.
        reply: RpcReplyPort<KeyShutdown>,
    },
    /// The shutdown's deadline has passed: drop the build still running,
    /// answer its waiters `ShutDown` and finish (from a timer).
    Abandon,
    /// A build attempt finished (from the build task).
    BuildDone {
        /// Which attempt; an answer to an older attempt is ignored.
        attempt: u64,
        /// The instance, or why there is none.
        outcome: Result<Arc<Instance<T>>, PoolError>,
    },
    /// Backoff over: try the factory again (from a timer).
    Retry {
        /// The attempt this retry belongs to.
        attempt: u64,
    },
    /// Rebuild the current instance in the background while it keeps
    /// serving, and swap the new one in (from the supervisor).
    Refresh {
        /// Only if this is still the current instance (refresh-ahead);
        /// `None`: whatever is current (`Pool::refresh`).
        target: Option<InstanceId>,
        /// The configuration version to build for; `None` keeps the current
        /// instance's.
        version: Option<u64>,
        /// Answered once the new instance is published (`Pool::refresh`).
        reply: Option<RefreshReply>,
    },
    /// A failed refresh's backoff has passed: a hit may ask for the next
    /// one (from a timer).
    Rearm {
        /// The instance whose refresh failed.
        instance: InstanceId,
    },
    /// Every retirement that predates this instance has been sent: publish
    /// it in the read view if it is still current (from the supervisor).
    Publish {
        /// The instance to publish.
        instance: InstanceId,
        /// The read view's fence number when the supervisor sent this.
        fence: Fence,
    },
}

impl<T: Send + Sync + 'static> KeyMsg<T> {
    /// Whether the supervisor sent it (and so counts it in `sent`).
    pub(crate) fn is_from_supervisor(&self) -> bool {
        matches!(
            self,
            KeyMsg::Get(_)
                | KeyMsg::Insert(_)
                | KeyMsg::Retire { .. }
                | KeyMsg::Shutdown { .. }
                | KeyMsg::Publish { .. }
                | KeyMsg::Refresh { .. }
        )
    }
}
