//! How many times a request's factory may run, and the error of a
//! single-attempt call whose one attempt was discarded.
//!
//! [`Pool::get_or_create`](crate::Pool::get_or_create) takes a factory it
//! may call again: for each retry under the restart policy, and for a fresh
//! build when the key is invalidated while a build is in flight (whose
//! result is then never served). [`Pool::try_get_with`](crate::Pool::try_get_with)
//! takes the future itself, which can run only once; its request says so,
//! and the key actor then neither retries it nor starts a second build
//! from it.

use std::fmt;
use std::sync::Arc;

use crate::error::PoolError;
use crate::restart::Verdict;

/// How many times a request's factory may be called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempts {
    /// As often as needed: retries, and a fresh build after an invalidation.
    Repeatable,
    /// Once (`Pool::try_get_with`): a failure is not retried.
    Once,
    /// A `Once` request whose factory has started a build already: it can
    /// join another build, but not start one.
    Spent,
}

/// The source of the [`PoolError::Factory`] a
/// [`Pool::try_get_with`](crate::Pool::try_get_with) call gets when its
/// future ran but the key was invalidated (or replaced by `insert`) before
/// it finished: its result is never served, as for any build the
/// invalidation overtook, and a future cannot run twice. Call again.
///
/// Not counted as a build failure, and not held against the key's restart
/// policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct InitDiscarded;

impl fmt::Display for InitDiscarded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "the key was invalidated while this call's init future ran, so its result was discarded; \
             a single-attempt call cannot run it again: call again",
        )
    }
}

impl std::error::Error for InitDiscarded {}

/// The answer to a `Spent` request that would have to start a build.
pub(crate) fn discarded(key: &str) -> PoolError {
    PoolError::Factory {
        key: key.to_string(),
        attempts: 1,
        source: Arc::new(InitDiscarded),
    }
}

impl Attempts {
    /// A request about to start a build: how the build may call its
    /// factory (`Repeatable` or `Once`), with a `Once` request marked
    /// `Spent`; `None` for a `Spent` request, which cannot start one.
    pub(crate) fn start(&mut self) -> Option<Attempts> {
        match *self {
            Attempts::Repeatable => Some(Attempts::Repeatable),
            Attempts::Once => {
                *self = Attempts::Spent;
                Some(Attempts::Once)
            }
            Attempts::Spent => None,
        }
    }

    /// The verdict on a failed attempt of a build started this way: a
    /// single attempt is never retried (its failure still counts toward a
    /// cool-down).
    pub(crate) fn limit(self, verdict: Verdict) -> Verdict {
        match (self, verdict) {
            (Attempts::Once | Attempts::Spent, Verdict::Retry(_)) => Verdict::GiveUp,
            (_, verdict) => verdict,
        }
    }
}
