//! Coordinated shutdown, in one place: refuse new work, let every key actor
//! finish its build and retire its instance, drain the disposer up to the
//! deadline, answer every caller with one report, then drain the mailbox so
//! that every message admitted before the end is answered.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use futures::future::join_all;
use ractor::{ActorRef, RpcReplyPort};
use tokio::time::Instant;

use super::SupervisorState;
use crate::actors::DisposerMsg;
use crate::actors::key::KeyMsg;
use crate::actors::lifecycle::Phase;
use crate::actors::supervisor::{SupervisorInternal, SupervisorMsg};
use crate::telemetry::ShutdownReport;

/// How far the supervisor is in the pool's life (the words of the pool's
/// `Phase`, which it advances).
#[derive(Debug)]
pub(super) enum Life {
    /// Serving calls.
    Running,
    /// `shutdown` has begun: new work is refused; these callers wait for the
    /// report, and the disposer gets `deadline` to finish its hooks.
    Stopping {
        replies: Vec<RpcReplyPort<ShutdownReport>>,
        /// When the shutdown must be over, builds and hooks or not (`None`:
        /// a deadline too far for the clock, never).
        deadline: Option<Instant>,
    },
    /// The report is made. The mailbox drains (ractor admits no new message
    /// once `drain` is called, and every message admitted before it is
    /// handled) and the actor stops; a `Shutdown` still in it gets this report.
    Closed(ShutdownReport),
}

impl Life {
    /// Whether new calls are refused with `ShutDown`.
    pub(super) fn refuses_work(&self) -> bool {
        !matches!(self, Life::Running)
    }
}

impl<T: Send + Sync + 'static> SupervisorState<T> {
    /// A `Shutdown` message: starts the shutdown, or joins the one under way.
    pub(super) fn shutdown(
        &mut self,
        myself: &ActorRef<SupervisorMsg<T>>,
        deadline: Duration,
        reply: Option<RpcReplyPort<ShutdownReport>>,
    ) {
        match &mut self.life {
            Life::Running => {
                let deadline = Instant::now().checked_add(deadline);
                self.life = Life::Stopping {
                    replies: reply.into_iter().collect(),
                    deadline,
                };
                self.begin_shutdown(myself, deadline);
            }
            Life::Stopping { replies, .. } => replies.extend(reply),
            Life::Closed(report) => {
                if let Some(reply) = reply {
                    let _ = reply.send(report.clone());
                }
            }
        }
    }

    fn begin_shutdown(&mut self, myself: &ActorRef<SupervisorMsg<T>>, deadline: Option<Instant>) {
        self.shared.lifecycle.advance(Phase::Stopping);
        if let Some(sweep) = self.sweep.take() {
            sweep.abort();
        }
        let mut acks = Vec::with_capacity(self.entries.len());
        for (_, entry) in self.entries.iter_mut() {
            // A retirement decided before the shutdown keeps its cause, and an
            // invalidation still discards a build in flight.
            entry.flush_pending();
            let (tx, rx) = tokio::sync::oneshot::channel();
            if entry
                .send(KeyMsg::Shutdown {
                    deadline,
                    reply: tx.into(),
                })
                .is_ok()
            {
                acks.push(rx);
            }
        }
        let myself = myself.clone();
        tokio::spawn(async move {
            // An actor that dies instead of answering retired nothing more.
            let acks = join_all(acks).await;
            let (retired, abandoned) = acks
                .into_iter()
                .map(|ack| ack.unwrap_or_default())
                .fold((0, false), |(retired, abandoned), ack| {
                    (retired + ack.retired, abandoned || ack.abandoned)
                });
            let _ = myself.send_message(SupervisorInternal::KeysShutDown { retired, abandoned }.into());
        });
    }

    /// Every key actor is done: drain the disposer (off this mailbox, so that
    /// `stats` and late calls are still answered meanwhile) and make the report.
    pub(super) fn keys_shut_down(&mut self, myself: &ActorRef<SupervisorMsg<T>>, retired: u64, abandoned: bool) {
        let Life::Stopping { deadline, .. } = self.life else {
            return;
        };
        // The hooks get what is left of the deadline (a build abandoned at
        // the deadline leaves them nothing: the report is made at once).
        let deadline = deadline.map_or(Duration::MAX, |at| at.saturating_duration_since(Instant::now()));
        let disposer = self.shared.disposer.clone();
        let metrics = self.shared.metrics.clone();
        let myself = myself.clone();
        tokio::spawn(async move {
            let drain = disposer
                .call(|reply| DisposerMsg::Drain { deadline, reply }, None)
                .await
                .ok()
                .and_then(|r| r.success_or(()).ok());
            let report = ShutdownReport {
                retired,
                disposed: metrics.disposals.load(Relaxed),
                dispose_failures: metrics.dispose_failures.load(Relaxed),
                still_leased: drain.as_ref().map(|d| d.still_leased.clone()).unwrap_or_default(),
                disposals_pending: drain.as_ref().map_or(0, |d| d.pending),
                deadline_passed: abandoned || drain.as_ref().is_some_and(|d| d.deadline_passed),
            };
            let _ = myself.send_message(SupervisorInternal::ShutdownDone { report }.into());
        });
    }

    /// The report is ready: answer every shutdown caller, then drain.
    pub(super) fn shutdown_done(&mut self, myself: &ActorRef<SupervisorMsg<T>>, report: ShutdownReport) {
        let replies = match &mut self.life {
            Life::Stopping { replies, .. } => std::mem::take(replies),
            _ => Vec::new(),
        };
        tracing::info!(
            retired = report.retired,
            disposed = report.disposed,
            still_leased = report.still_leased.len(),
            deadline_passed = report.deadline_passed,
            "pool shut down"
        );
        self.life = Life::Closed(report.clone());
        // Not `stop`: a stop drops what is still in the mailbox, and a call
        // racing it could be left unanswered. `drain` closes admission
        // (later sends fail at once, which callers see as `ShutDown`) and
        // handles everything admitted before stopping.
        if myself.drain().is_err() {
            myself.stop(None);
        }
        // Closed before anyone is told the shutdown is over: a call made
        // after `shutdown` returned can no longer reach this mailbox, and
        // calls still waiting on user code (a probe) give up now.
        self.shared.lifecycle.advance(Phase::Closed);
        for reply in replies {
            let _ = reply.send(report.clone());
        }
    }
}
