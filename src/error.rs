//! The one error type of the pool.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

/// An error produced by a factory, shared by every caller that waited on the
/// same build attempt.
pub type SharedError = Arc<dyn StdError + Send + Sync + 'static>;

/// A boxed error, as a factory or a dispose hook may return it.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Everything that can go wrong when asking the pool for an instance.
///
/// One build attempt can fail many waiting callers at once, so the error is
/// `Clone` and the factory's own error travels as an [`Arc`]
/// ([`SharedError`]): every waiter sees the same value, and
/// [`source()`](StdError::source) returns it.
///
/// `Display` says what the pool saw and never repeats the source, so a chain
/// printer prints each cause once (`{:#}` of an `anyhow::Error` gives
/// ``factory for key `acme:openai` failed after 3 attempts: connection
/// refused``). [`factory_error`](PoolError::factory_error) finds the
/// factory's own error by type. No variant holds a credential or a
/// credentials hash: only keys, counts, durations, a panic message and the
/// factory's own error.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum PoolError {
    /// The factory returned an error on its last attempt.
    Factory {
        /// The key whose factory failed.
        key: String,
        /// How many attempts the restart policy made before giving up.
        attempts: u32,
        /// The factory's own error (see [`PoolError::factory_error`]).
        source: SharedError,
    },
    /// The factory panicked; the panic was contained and the pool keeps serving.
    FactoryPanicked {
        /// The key whose factory panicked.
        key: String,
        /// The panic payload, when it was a string.
        message: String,
    },
    /// The factory did not finish within `create_timeout`.
    Timeout {
        /// The key whose factory hung.
        key: String,
        /// The configured `create_timeout`.
        after: Duration,
    },
    /// The key failed too often within the restart policy's window and is
    /// cooling down; no factory is called until `retry_after` has passed.
    CoolingDown {
        /// The cooling key.
        key: String,
        /// How long until the pool will try the factory again.
        retry_after: Duration,
    },
    /// The pool is shutting down or has shut down and takes no new work.
    ShutDown,
    /// The actor that served this call stopped before it answered (for
    /// example it was stopped from outside). The supervisor starts a fresh
    /// actor for the key on the next call, so retrying is safe.
    ActorStopped {
        /// The key whose actor stopped.
        key: String,
    },
}

impl PoolError {
    /// The key this error is about, when it concerns one key.
    pub fn key(&self) -> Option<&str> {
        match self {
            PoolError::Factory { key, .. }
            | PoolError::FactoryPanicked { key, .. }
            | PoolError::Timeout { key, .. }
            | PoolError::CoolingDown { key, .. }
            | PoolError::ActorStopped { key } => Some(key),
            PoolError::ShutDown => None,
        }
    }

    /// For [`PoolError::Factory`], the first error of type `E` in the
    /// factory's error and its chain of sources; `None` for other variants
    /// or when no error in the chain is an `E`.
    ///
    /// The pool keeps the factory's error as the
    /// `Box<dyn Error + Send + Sync>` that `Into` makes of it, so what can be
    /// found is what that conversion keeps:
    ///
    /// - a `std::io::Error`, your own error type, or a boxed error holding
    ///   one: that error, which is also `source()` itself;
    /// - an `anyhow::Error`: anyhow's conversion into a box hides the type
    ///   of the error it wraps (only its text is kept), so nothing is found.
    ///   Box it in the factory with
    ///   `.map_err(anyhow::Error::reallocate_into_boxed_dyn_error_without_backtrace)`
    ///   and the wrapped error is found as above;
    /// - an error given `.context(..)` by anyhow: `source()` is the context
    ///   (text only); the wrapped error is one step down its chain, where
    ///   this method finds it;
    /// - an `anyhow!("message")`: only its text, through `source()`.
    ///
    /// ```
    /// # use warmpool::PoolError;
    /// fn is_refused(err: &PoolError) -> bool {
    ///     err.factory_error::<std::io::Error>()
    ///         .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
    /// }
    /// # assert!(!is_refused(&PoolError::ShutDown));
    /// ```
    pub fn factory_error<E: StdError + 'static>(&self) -> Option<&E> {
        let PoolError::Factory { source, .. } = self else {
            return None;
        };
        let mut next: Option<&(dyn StdError + 'static)> = Some(&**source);
        while let Some(error) = next {
            if let Some(found) = error.downcast_ref::<E>() {
                return Some(found);
            }
            next = error.source();
        }
        None
    }

    /// For [`PoolError::CoolingDown`], how long until the key is tried again.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            PoolError::CoolingDown { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

impl std::fmt::Display for PoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // The factory's error is not repeated here: `source()` returns
            // it, and chain printers (anyhow's `{:#}`, eyre's reports, the
            // `tracing` error field) print every source after this line.
            PoolError::Factory { key, attempts, .. } => {
                let plural = if *attempts == 1 { "" } else { "s" };
                write!(f, "factory for key `{key}` failed after {attempts} attempt{plural}")
            }
            PoolError::FactoryPanicked { key, message } => write!(f, "factory for key `{key}` panicked: {message}"),
            PoolError::Timeout { key, after } => write!(f, "factory for key `{key}` did not finish within {after:?}"),
            PoolError::CoolingDown { key, retry_after } => write!(
                f,
                "key `{key}` is cooling down after repeated failures; retry after {retry_after:?}"
            ),
            PoolError::ShutDown => f.write_str("the pool is shut down and takes no new work"),
            PoolError::ActorStopped { key } => {
                write!(f, "the actor serving key `{key}` stopped before it answered; retry")
            }
        }
    }
}

// Written by hand rather than derived: a derived `source()` would return the
// `Arc` itself, and `downcast_ref::<YourError>()` on it would fail. This one
// returns the factory's own error, so callers can downcast it.
impl StdError for PoolError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            PoolError::Factory { source, .. } => Some(&**source),
            _ => None,
        }
    }
}

/// The pool's actors could not be started ([`PoolBuilder::spawn`](crate::PoolBuilder::spawn)).
#[derive(Debug)]
#[non_exhaustive]
pub enum SpawnError {
    /// The name given with [`PoolBuilder::name`](crate::PoolBuilder::name)
    /// is already registered by another actor in ractor's registry.
    NameTaken {
        /// The name.
        name: String,
    },
    /// An actor failed while starting; `source()` has the actor system's
    /// error.
    Failed {
        /// The actor system's error.
        source: BoxError,
    },
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpawnError::NameTaken { name } => {
                write!(f, "could not start the pool: the actor name `{name}` is already taken")
            }
            SpawnError::Failed { .. } => f.write_str("could not start the pool's actors"),
        }
    }
}

impl StdError for SpawnError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            SpawnError::NameTaken { .. } => None,
            SpawnError::Failed { source } => Some(&**source),
        }
    }
}

impl From<ractor::SpawnErr> for SpawnError {
    fn from(error: ractor::SpawnErr) -> Self {
        match error {
            ractor::SpawnErr::ActorAlreadyRegistered(name) => SpawnError::NameTaken { name },
            other => SpawnError::Failed {
                source: Box::new(other),
            },
        }
    }
}

/// The sources of an error, outermost first, joined by `": "` (empty when
/// it has none): for log lines, since `PoolError`'s own `Display` does not
/// repeat its cause.
pub(crate) struct Causes<'a>(pub(crate) &'a (dyn StdError + 'static));

impl std::fmt::Display for Causes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut next = self.0.source();
        let mut first = true;
        while let Some(cause) = next {
            if !first {
                f.write_str(": ")?;
            }
            write!(f, "{cause}")?;
            first = false;
            next = cause.source();
        }
        Ok(())
    }
}

/// Turns a panic payload into a readable message.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}
