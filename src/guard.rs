//! Calling user code (a factory, a freshness probe, a dispose hook), in one
//! place: a panic in the call or in its future is caught, and an optional
//! timeout bounds the future. Every caller then only says what each outcome
//! means for it.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;

use crate::error::panic_message;

/// How a guarded call of user code ended.
#[derive(Debug)]
pub(crate) enum Guarded<R> {
    /// It returned `R`.
    Returned(R),
    /// It panicked (building its future, or polling it), with this message.
    Panicked(String),
    /// Its future did not finish within the timeout; it was dropped.
    TimedOut,
}

/// Calls `call` and awaits the future it returns, with panics caught and,
/// if `timeout` is set, the future dropped once it has run that long.
pub(crate) async fn guarded<F, Fut>(timeout: Option<Duration>, call: F) -> Guarded<Fut::Output>
where
    F: FnOnce() -> Fut,
    Fut: Future,
{
    let run = async {
        match std::panic::catch_unwind(AssertUnwindSafe(call)) {
            Ok(fut) => AssertUnwindSafe(fut).catch_unwind().await,
            Err(panic) => Err(panic),
        }
    };
    let outcome = match timeout {
        Some(limit) => tokio::time::timeout(limit, run).await.ok(),
        None => Some(run.await),
    };
    match outcome {
        None => Guarded::TimedOut,
        Some(Err(panic)) => Guarded::Panicked(panic_message(&*panic)),
        Some(Ok(returned)) => Guarded::Returned(returned),
    }
}
