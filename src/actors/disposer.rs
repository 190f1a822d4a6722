//! The disposer: runs the dispose hook of every instance whose last
//! reference is gone, each in its own task so that one slow hook never delays
//! another, bounded by `dispose_timeout`, with panics contained.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use futures::future::BoxFuture;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::Instrument;

pub(crate) use crate::disposal::{DisposerMsg, DrainReport};
use crate::error::BoxError;
use crate::guard::{Guarded, guarded};
use crate::ids::InstanceId;
use crate::telemetry::Metrics;
use crate::telemetry::Timer;
use crate::telemetry::spans;

/// A dispose hook as the pool stores it.
pub(crate) type DisposeHook<T> = Arc<dyn Fn(String, T) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync>;

/// The disposer actor. It is not linked under the supervisor: it must outlive
/// it, because leases may be dropped after the pool has shut down and their
/// instances still deserve their hook. It stops by itself once the pool has
/// closed and every instance it tracks is disposed.
pub(crate) struct DisposerActor<T>(std::marker::PhantomData<fn() -> T>);

impl<T> DisposerActor<T> {
    pub(crate) fn new() -> Self {
        DisposerActor(std::marker::PhantomData)
    }
}

/// What the disposer starts with.
pub(crate) struct DisposerArgs<T: Send + Sync + 'static> {
    pub(crate) hook: Option<DisposeHook<T>>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) metrics: Arc<Metrics>,
    /// Build tasks whose end this actor has not handled yet: while any is
    /// left, an instance may still reach it (see `DisposerMsg::BuildEnded`).
    /// Its own count, not the exported `builds_in_flight` gauge: it lags that
    /// gauge by a message, on purpose. Key actors count a task up as it
    /// starts (`Shared::build_tasks`, the same counter).
    pub(crate) build_tasks: Arc<AtomicU64>,
}

/// The disposer's state.
pub(crate) struct DisposerState<T: Send + Sync + 'static> {
    args: DisposerArgs<T>,
    /// Instances built and not yet disposed, by id: the shutdown report names
    /// their keys as "still leased".
    live: HashMap<InstanceId, Arc<str>>,
    /// Hooks running now.
    running: u64,
    /// A shutdown waiting for the running hooks to finish.
    drain: Option<RpcReplyPort<DrainReport>>,
    /// The pool is gone: stop once nothing is live or running.
    closing: bool,
}

impl<T: Send + Sync + 'static> DisposerState<T> {
    fn report(&self, deadline_passed: bool) -> DrainReport {
        let mut still_leased: Vec<String> = self.live.values().map(|k| k.to_string()).collect();
        still_leased.sort_unstable();
        DrainReport {
            still_leased,
            pending: self.running,
            deadline_passed,
        }
    }

    fn dispose(&mut self, myself: &ActorRef<DisposerMsg<T>>, key: Arc<str>, value: T) {
        let span = spans::dispose_span(&key);
        let timer = Timer::start();
        let Some(hook) = self.args.hook.clone() else {
            // No hook: dropping is the disposal. A panicking `Drop` must not
            // take the disposer down with it.
            let dropped = span.in_scope(|| std::panic::catch_unwind(AssertUnwindSafe(move || drop(value))));
            self.args.metrics.export.dispose_took(timer);
            let ok = dropped.is_ok();
            if !ok {
                tracing::warn!(key = %key, "dropping a retired instance panicked");
            }
            self.finished(ok);
            return;
        };
        self.running += 1;
        let timeout = self.args.timeout;
        let myself = myself.clone();
        let metrics = self.args.metrics.clone();
        let task = async move {
            let key_text = key.to_string();
            let ok = match guarded(timeout, || hook(key_text, value)).await {
                Guarded::TimedOut => {
                    tracing::warn!(key = %key, timeout = ?timeout, "dispose hook timed out");
                    false
                }
                Guarded::Panicked(panic) => {
                    tracing::warn!(key = %key, panic = %panic, "dispose hook panicked");
                    false
                }
                Guarded::Returned(Err(error)) => {
                    tracing::warn!(key = %key, error = %error, "dispose hook failed");
                    false
                }
                Guarded::Returned(Ok(())) => {
                    tracing::debug!(key = %key, "disposed");
                    true
                }
            };
            metrics.export.dispose_took(timer);
            let _ = myself.send_message(DisposerMsg::Done { ok });
        };
        tokio::spawn(task.instrument(span));
    }

    fn finished(&mut self, ok: bool) {
        Metrics::bump(&self.args.metrics.disposals);
        if !ok {
            Metrics::bump(&self.args.metrics.dispose_failures);
        }
    }
}

impl<T: Send + Sync + 'static> Actor for DisposerActor<T> {
    type Msg = DisposerMsg<T>;
    type State = DisposerState<T>;
    type Arguments = DisposerArgs<T>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(DisposerState {
            args,
            live: HashMap::new(),
            running: 0,
            drain: None,
            closing: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            DisposerMsg::Track { id, key } => {
                state.live.insert(id, key);
            }
            DisposerMsg::Dispose { id, key, value } => {
                state.live.remove(&id);
                state.dispose(&myself, key, value);
            }
            DisposerMsg::Done { ok } => {
                state.running -= 1;
                state.finished(ok);
            }
            DisposerMsg::Drain { deadline, reply } => {
                state.closing = true;
                if state.running == 0 {
                    let _ = reply.send(state.report(false));
                } else {
                    state.drain = Some(reply);
                    myself.send_after(deadline, || DisposerMsg::DrainDeadline);
                }
            }
            DisposerMsg::DrainDeadline => {
                if let Some(reply) = state.drain.take() {
                    let _ = reply.send(state.report(true));
                }
            }
            DisposerMsg::Close => state.closing = true,
            DisposerMsg::BuildEnded => {
                state.args.build_tasks.fetch_sub(1, Relaxed);
            }
        }
        if state.running == 0
            && let Some(reply) = state.drain.take()
        {
            let _ = reply.send(state.report(false));
        }
        // Builds still in flight may yet produce instances to dispose (the
        // supervisor can be gone while their tasks run): wait for them too.
        let building = state.args.build_tasks.load(Relaxed);
        if state.closing && state.running == 0 && state.live.is_empty() && building == 0 {
            myself.stop(None);
        }
        Ok(())
    }
}
