//! Coordinated shutdown, in one place: refuse new work, let every key actor
//! finish its build and retire its instance, drain the disposer up to the
//! deadline, answer every caller with one report, then drain the mailbox so
//! that every message admitted before the end is answered.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use futures::future::join_all;
use ractor::{ActorRef, RpcReplyPort};

use super::SupervisorState;
use crate::actors::DisposerMsg;
use crate::actors::lifecycle::Phase;
use crate::messages::{KeyMsg, SupervisorInternal, SupervisorMsg};
use crate::stats::ShutdownReport;

/// How far the supervisor is in the pool's life.
#[derive(Debug)]
pub(super) enum Life {
    /// Serving calls.
    Serving,
    /// `shutdown` has begun: new work is refused; these callers wait for the
    /// report, and the disposer gets `deadline` to finish its hooks.
    ShuttingDown {
        replies: Vec<RpcReplyPort<ShutdownReport>>,
        deadline: Duration,
    },
    /// The report is made. The mailbox drains (ractor admits no new message
    /// once `drain` is called, and every message admitted before it is
    /// handled) and the actor stops; a `Shutdown` still in it gets this report.
    Done(ShutdownReport),
}

impl Life {
    /// Whether new calls are refused with `ShutDown`.
    pub(super) fn refuses_work(&self) -> bool {
        !matches!(self, Life::Serving)
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
            Life::Serving => {
                self.life = Life::ShuttingDown {
                    replies: reply.into_iter().collect(),
                    deadline,
                };
                self.begin_shutdown(myself);
            }
            Life::ShuttingDown { replies, .. } => replies.extend(reply),
            Life::Done(report) => {
                if let Some(reply) = reply {
                    let _ = reply.send(report.clone());
                }
            }
        }
    }

    fn begin_shutdown(&mut self, myself: &ActorRef<SupervisorMsg<T>>) {
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
            if entry.send(KeyMsg::Shutdown { reply: tx.into() }).is_ok() {
                acks.push(rx);
            }
        }
        let myself = myself.clone();
        tokio::spawn(async move {
            // An actor that dies instead of answering retired nothing more.
            let retired = join_all(acks).await.into_iter().map(|r| r.unwrap_or(0)).sum();
            let _ = myself.send_message(SupervisorInternal::KeysShutDown { retired }.into());
        });
    }

    /// Every key actor is done: drain the disposer (off this mailbox, so that
    /// `stats` and late calls are still answered meanwhile) and make the report.
    pub(super) fn keys_shut_down(&mut self, myself: &ActorRef<SupervisorMsg<T>>, retired: u64) {
        let Life::ShuttingDown { deadline, .. } = self.life else {
            return;
        };
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
                deadline_passed: drain.as_ref().is_some_and(|d| d.deadline_passed),
            };
            let _ = myself.send_message(SupervisorInternal::ShutdownDone { report }.into());
        });
    }

    /// The report is ready: answer every shutdown caller, then drain.
    pub(super) fn shutdown_done(&mut self, myself: &ActorRef<SupervisorMsg<T>>, report: ShutdownReport) {
        if let Life::ShuttingDown { replies, .. } = &mut self.life {
            for reply in replies.drain(..) {
                let _ = reply.send(report.clone());
            }
        }
        tracing::info!(
            retired = report.retired,
            disposed = report.disposed,
            still_leased = report.still_leased.len(),
            "pool shut down"
        );
        self.life = Life::Done(report);
        // Not `stop`: a stop drops what is still in the mailbox, and a call
        // racing it could be left unanswered. `drain` closes admission first
        // (later sends fail at once, which callers see as `ShutDown`) and
        // handles everything admitted before stopping.
        if myself.drain().is_err() {
            myself.stop(None);
        }
    }
}
