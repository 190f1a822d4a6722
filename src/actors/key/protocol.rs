//! The key actor's protocol: what the supervisor, build tasks and timers
//! send it ([`KeyMsg`]), what it tells the supervisor ([`KeyReport`]), and
//! the requests it answers.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use ractor::RpcReplyPort;
use tokio::time::Instant;

use crate::error::{BoxError, PoolError};
use crate::hash::CredentialsHash;
use crate::ids::RetireCause;
use crate::ids::{Fence, InstanceId};
use crate::instance::Instance;
use crate::lease::Lease;
use crate::restart::RestartState;

/// A factory as the pool stores it: callable again for retries.
pub(crate) type Factory<T> = Arc<dyn Fn() -> BoxFuture<'static, Result<T, BoxError>> + Send + Sync>;

/// What a caller gets back for a [`Request`]: the lease, or why there is none.
pub(crate) type LeaseReply<T> = RpcReplyPort<Result<Lease<T>, PoolError>>;

/// What a `Pool::refresh` caller gets back: whether an instance was replaced.
pub(crate) type RefreshReply = RpcReplyPort<Result<bool, PoolError>>;

/// One caller's request for an instance.
pub(crate) struct Request<T: Send + Sync + 'static> {
    /// The hash of the credentials the caller holds.
    pub(crate) hash: CredentialsHash,
    /// Builds an instance when none matches. A caller asks the actors only
    /// when the read view could not serve it, so it always brings one.
    pub(crate) factory: Factory<T>,
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
    pub(crate) fn respond(self, result: Result<Lease<T>, PoolError>) {
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
    /// Answered once the instance is in place.
    pub(crate) reply: Option<RpcReplyPort<Result<(), PoolError>>>,
}

/// Where a key actor sends its reports: the supervisor, behind a function
/// the supervisor gives each key actor it starts, so that the key actor's
/// module does not name the supervisor's protocol (the supervisor names
/// the key actor's: one direction only). Returns false when the supervisor
/// is gone.
pub(crate) type ReportTo<T> = Arc<dyn Fn(Arc<str>, ractor::ActorId, KeyReport<T>) -> bool + Send + Sync>;

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
        leases: std::sync::Weak<Instance<T>>,
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
    Get(Routed<Request<T>>),
    /// An instance built elsewhere (from the supervisor).
    Insert(Routed<InsertRequest<T>>),
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
    /// Whether the supervisor sent it, and so counts it in `Entry::sent`:
    /// the supervisor stops an idle actor only when the actor has seen all
    /// it sent (`KeyReport::Idle::seen`). Exhaustive on purpose: a new
    /// message must say where it comes from, or that handshake breaks.
    pub(crate) fn is_from_supervisor(&self) -> bool {
        match self {
            KeyMsg::Get(_)
            | KeyMsg::Insert(_)
            | KeyMsg::Retire { .. }
            | KeyMsg::Shutdown { .. }
            | KeyMsg::Publish { .. }
            | KeyMsg::Refresh { .. } => true,
            KeyMsg::BuildDone { .. } | KeyMsg::Retry { .. } | KeyMsg::Rearm { .. } | KeyMsg::Abandon => false,
        }
    }
}

/// What the supervisor forwards to a key actor: a caller's request or an
/// insert, with the read view's fence as the supervisor passed it on (see
/// `ReadView::fence`): an instance made for it is never published over a
/// newer fence. Derefs to what the caller sent.
pub(crate) struct Routed<R> {
    /// The fence when the supervisor forwarded it.
    pub(crate) fence: Fence,
    /// What the caller sent.
    pub(crate) request: R,
}

impl<R> std::ops::Deref for Routed<R> {
    type Target = R;

    fn deref(&self) -> &R {
        &self.request
    }
}

impl<R> std::ops::DerefMut for Routed<R> {
    fn deref_mut(&mut self) -> &mut R {
        &mut self.request
    }
}

impl<T: Send + Sync + 'static> Routed<Request<T>> {
    /// Gives the caller its lease or error.
    pub(crate) fn respond(self, result: Result<Lease<T>, PoolError>) {
        self.request.respond(result);
    }
}
