//! The disposer's protocol, below the instance: an instance holds the
//! disposer's address and sends itself there from its `Drop`, so this leaf
//! is all it needs of the disposer (the actor itself is in
//! `actors/disposer.rs`).

use std::sync::Arc;
use std::time::Duration;

use ractor::RpcReplyPort;

use crate::ids::InstanceId;

/// Messages to the disposer actor.
pub(crate) enum DisposerMsg<T: Send + Sync + 'static> {
    /// A new instance exists; remember it until it is disposed.
    Track {
        /// Its id.
        id: InstanceId,
        /// Its key, for the shutdown report.
        key: Arc<str>,
    },
    /// An instance's last reference is gone: run the hook.
    Dispose {
        /// Its id.
        id: InstanceId,
        /// Its key, given to the hook.
        key: Arc<str>,
        /// The instance.
        value: T,
    },
    /// A build task ended (from the task, after tracking the instance it
    /// built, if any, or as it is dropped): the disposer decrements
    /// `build_tasks`, so a closing disposer that reads zero has seen every
    /// instance, and re-checks whether it may stop.
    BuildEnded,
    /// A hook finished (from the hook's task).
    Done {
        /// Whether it succeeded.
        ok: bool,
    },
    /// The pool is shutting down: answer once no hook is running, or at the
    /// deadline; afterwards stop as soon as every tracked instance is disposed.
    Drain {
        /// When to answer anyway.
        deadline: Duration,
        /// Receives what is still leased and how many hooks still run.
        reply: RpcReplyPort<DrainReport>,
    },
    /// The drain deadline passed (from a timer).
    DrainDeadline,
    /// The pool stopped without a drain: stop once every tracked instance is disposed.
    Close,
}

/// The disposer's answer to [`DisposerMsg::Drain`].
#[derive(Debug, Clone)]
pub(crate) struct DrainReport {
    /// Keys of instances not yet disposed (so still leased).
    pub(crate) still_leased: Vec<String>,
    /// Hooks still running.
    pub(crate) pending: u64,
    /// Whether the deadline passed first.
    pub(crate) deadline_passed: bool,
}
