//! The supervisor's protocol. [`SupervisorMsg`] is public (re-exported as
//! `warmpool::SupervisorMsg`): an application's own actors may send its
//! public variants (invalidate, invalidate by prefix, stats, counters,
//! shutdown) to the pool's supervisor (see [`Pool::actor`](crate::Pool::actor)).
//! Everything else is internal to the crate.

use std::sync::Arc;
use std::time::Duration;

use ractor::{ActorId, RpcReplyPort};

use crate::actors::key::{InsertRequest, KeyReport, RefreshReply, Request};
use crate::ids::{InstanceId, RetireCause};
use crate::telemetry::{Counters, ShutdownReport, Stats};

/// Messages to the pool's supervisor actor.
///
/// Other actors can send the public variants to
/// [`Pool::actor`](crate::Pool::actor) with `ractor::call!` or `cast!`.
/// Non-exhaustive: a later version may add variants, so a `match` on it
/// needs a wildcard arm.
#[non_exhaustive]
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
