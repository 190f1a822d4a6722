//! Where the pool is in its life, readable by every handle without asking
//! an actor: so that a call can tell "the pool is stopping" from "one key's
//! actor stopped", and so that no call waits on an actor that can no longer
//! answer.

use std::sync::atomic::{AtomicU8, Ordering};

use tokio::sync::Notify;

/// The pool's phase. It only ever moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(crate) enum Phase {
    /// Serving calls.
    Running = 0,
    /// `shutdown` has begun: new work is refused with `ShutDown`.
    Stopping = 1,
    /// The shutdown is over: its report is made (and is about to reach its
    /// callers), the supervisor admits no more messages, and calls still
    /// waiting on user code (a freshness probe) give up with `ShutDown`.
    Closed = 2,
    /// The supervisor has ended (shut down, or killed with its parent): no
    /// message sent to it will be answered any more.
    Stopped = 3,
}

/// The pool's phase and a signal for each step of its end.
///
/// A call that sends a message to the supervisor waits for the reply *or*
/// for [`Phase::Stopped`], whichever comes first. That covers every way a
/// reply can be lost: a message that slips into the mailbox of an actor that
/// is being killed (ractor flushes the mailbox when the actor ends, but a
/// sender racing that flush can leave its message in the channel for as long
/// as any `ActorRef` lives, and the `Pool` handle holds one).
#[derive(Debug)]
pub(crate) struct Lifecycle {
    phase: AtomicU8,
    /// Woken at every change of phase.
    changed: Notify,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            phase: AtomicU8::new(Phase::Running as u8),
            changed: Notify::new(),
        }
    }
}

impl Lifecycle {
    pub(crate) fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Running,
            1 => Phase::Stopping,
            2 => Phase::Closed,
            _ => Phase::Stopped,
        }
    }

    /// Moves to `phase` unless the pool is already past it.
    pub(crate) fn advance(&self, phase: Phase) {
        let previous = self.phase.fetch_max(phase as u8, Ordering::AcqRel);
        if previous < phase as u8 {
            self.changed.notify_waiters();
        }
    }

    /// Resolves once the pool has reached `phase` (or gone past it).
    async fn reached(&self, phase: Phase) {
        loop {
            // Registered before the check: `notify_waiters` wakes every
            // `Notified` created before it, polled or not, so no wake-up is
            // lost.
            let notified = self.changed.notified();
            if self.phase() >= phase {
                return;
            }
            notified.await;
        }
    }

    /// Resolves once the pool has stopped.
    pub(crate) async fn stopped(&self) {
        self.reached(Phase::Stopped).await;
    }

    /// Resolves once the shutdown is over (or the pool stopped otherwise).
    pub(crate) async fn closed(&self) {
        self.reached(Phase::Closed).await;
    }
}
