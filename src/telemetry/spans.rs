//! The pool's `tracing` spans, made in one place so that their names,
//! targets and fields stay what the docs promise. Every span has target
//! `warmpool`. No field ever holds a credential or a credentials hash: keys
//! and instance ids only.
//!
//! | span | level | fields | parent |
//! |---|---|---|---|
//! | `build` | info | `key`, `attempt` (1 for the first call, 2 for the first retry, ...) | the span current in the call that started the build |
//! | `refresh` | info | `key` | whatever the refresh names |
//! | `dispose` | info | `key` | none (a root: a dispose happens when the last lease drops, not within any request) |
//! | `retire` | debug | `key`, `instance`, `cause` | the key actor's (ractor's `Actor` span, which its message loop runs in) |

use tracing::Span;

use crate::ids::{InstanceId, RetireCause};

/// The span a factory attempt runs in (the factory's own future included),
/// a child of `caller`: the span that was current in the `Pool` call that
/// started the build, so request context (a trace id, a tenant field)
/// reaches the factory. Callers that join a build in flight share it: its
/// parent is the first caller's span.
///
/// If the `build` span is filtered out, the factory runs in `caller`
/// itself, which keeps the request context all the same.
pub(crate) fn build_span(caller: &Span, key: &str, attempt: u32) -> Span {
    let span = tracing::info_span!(target: "warmpool", parent: caller, "build", key, attempt);
    if span.is_disabled() { caller.clone() } else { span }
}

/// The span a background refresh of `key` runs in, a child of `parent`
/// (`Span::none()` for a root).
pub(crate) fn refresh_span(parent: &Span, key: &str) -> Span {
    tracing::info_span!(target: "warmpool", parent: parent, "refresh", key)
}

/// The span a dispose hook (or the drop of an instance without one) runs
/// in. A root: a disposal follows the last lease's drop, not any request.
pub(crate) fn dispose_span(key: &str) -> Span {
    tracing::info_span!(target: "warmpool", parent: None, "dispose", key)
}

/// The span of one retirement (leaving the read view, being counted, and
/// the drop of the pool's reference that may hand the instance to the
/// disposer). Debug level: a sweep or a prefix invalidation retires
/// thousands at once.
pub(crate) fn retire_span(key: &str, instance: InstanceId, cause: RetireCause) -> Span {
    tracing::debug_span!(target: "warmpool", "retire", key, instance = %instance, cause = cause.as_str())
}
