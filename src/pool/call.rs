//! One round trip through the supervisor, and what its outcome means for
//! the caller: a reply, or `ShutDown` / `ActorStopped` when none can come.

use std::sync::Arc;
use std::time::Duration;

use ractor::RpcReplyPort;
use ractor::rpc::CallResult;

use crate::actors::key::{Factory, InsertRequest, Request};
use crate::actors::lifecycle::Phase;
use crate::actors::supervisor::{SupervisorInternal, SupervisorMsg};
use crate::error::PoolError;
use crate::factory::Attempts;
use crate::hash::CredentialsHash;
use crate::lease::Lease;

use super::Pool;

impl<T: Send + Sync + 'static> Pool<T> {
    /// One round trip for `key` through the supervisor.
    pub(super) async fn ask(
        &self,
        key: &str,
        hash: CredentialsHash,
        ttl: Option<Duration>,
        factory: Factory<T>,
        attempts: Attempts,
        counted: bool,
    ) -> Result<Result<Lease<T>, PoolError>, PoolError> {
        // Moved into the message, not shared with this task: its last owner
        // is the actor that keeps it, so no reference count is touched from
        // two threads.
        let sent_key: Arc<str> = Arc::from(key);
        self.call(Some(key), move |reply| {
            SupervisorInternal::Get {
                key: sent_key,
                request: Request {
                    hash,
                    factory,
                    ttl,
                    reply,
                    span: tracing::Span::current(),
                    attempts,
                    counted,
                },
            }
            .into()
        })
        .await
    }

    /// Sends the message `msg` builds to the supervisor and waits for its
    /// reply, or for the pool to stop, whichever comes first: a reply that
    /// can no longer come (its message was caught by the supervisor's end)
    /// never leaves the caller waiting.
    pub(super) async fn call<R: Send + 'static>(
        &self,
        key: Option<&str>,
        msg: impl FnOnce(RpcReplyPort<R>) -> SupervisorMsg<T>,
    ) -> Result<R, PoolError> {
        let call = self.inner.supervisor.call(msg, None);
        let result = tokio::select! {
            // A reply that is there wins over the end that followed it.
            biased;
            result = call => result,
            () = self.inner.shared.lifecycle.stopped() => return Err(PoolError::ShutDown),
        };
        self.outcome(result, key)
    }

    /// Maps a ractor call's outcome to the pool's error.
    pub(super) fn outcome<R, M>(
        &self,
        result: Result<CallResult<R>, ractor::MessagingErr<M>>,
        key: Option<&str>,
    ) -> Result<R, PoolError> {
        match result {
            Ok(CallResult::Success(value)) => Ok(value),
            // The reply port was dropped: the key's actor stopped mid-call,
            // unless the whole pool is stopping.
            Ok(_) if self.inner.shared.lifecycle.phase() == Phase::Running => match key {
                Some(key) => Err(PoolError::ActorStopped { key: key.to_string() }),
                None => Err(PoolError::ShutDown),
            },
            Ok(_) | Err(_) => Err(PoolError::ShutDown),
        }
    }

    pub(super) async fn insert_inner(
        &self,
        key: &str,
        hash: CredentialsHash,
        value: T,
        ttl: Option<Duration>,
    ) -> Result<(), PoolError> {
        let sent_key: Arc<str> = Arc::from(key);
        self.call(Some(key), move |reply| {
            SupervisorInternal::Insert {
                key: sent_key,
                insert: InsertRequest {
                    hash,
                    value,
                    ttl,
                    reply: Some(reply),
                },
            }
            .into()
        })
        .await?
    }

    pub(super) async fn refresh_inner(&self, key: &str, version: Option<u64>) -> Result<bool, PoolError> {
        let sent_key: Arc<str> = Arc::from(key);
        self.call(Some(key), move |reply| {
            SupervisorInternal::Refresh {
                key: sent_key,
                version,
                reply,
            }
            .into()
        })
        .await?
    }
}
