//! Ids and small newtypes: the bottom of the house. Every module that
//! names an instance, a retirement cause or a fence imports them from here,
//! so none of them imports another for it. Imports nothing from the crate.

use std::fmt;

use serde::Serialize;

/// Identifies one instance within its pool: two leases with the same id
/// share one instance. Ids are given out in creation order; printed as a
/// number, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceId(u64);

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl InstanceId {
    pub(crate) fn new(n: u64) -> Self {
        InstanceId(n)
    }
}

/// Why an instance stopped being served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RetireCause {
    /// Its time to live, counted from creation, passed.
    Ttl,
    /// Nobody took it for longer than the time to idle.
    Idle,
    /// The pool was over `max_entries` and this was the least recently used key.
    Capacity,
    /// A caller presented a different credentials hash.
    Credentials,
    /// `invalidate` or `invalidate_by_prefix` named it.
    Invalidated,
    /// `insert` put another instance in its place.
    Replaced,
    /// The pool shut down.
    Shutdown,
    /// A rebuild took its place while it was still being served
    /// (refresh-ahead, or `Pool::refresh`).
    Refreshed,
    /// The freshness probe said it is no longer fresh (`PoolBuilder::probe`).
    Stale,
}

impl RetireCause {
    /// Every cause, in the order of [`Retirements`]' fields.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) const ALL: [RetireCause; 9] = [
        RetireCause::Ttl,
        RetireCause::Idle,
        RetireCause::Capacity,
        RetireCause::Credentials,
        RetireCause::Invalidated,
        RetireCause::Replaced,
        RetireCause::Shutdown,
        RetireCause::Refreshed,
        RetireCause::Stale,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RetireCause::Ttl => "ttl",
            RetireCause::Idle => "idle",
            RetireCause::Capacity => "capacity",
            RetireCause::Credentials => "credentials",
            RetireCause::Invalidated => "invalidated",
            RetireCause::Replaced => "replaced",
            RetireCause::Shutdown => "shutdown",
            RetireCause::Refreshed => "refreshed",
            RetireCause::Stale => "stale",
        }
    }
}

/// The number of a prefix invalidation. The supervisor takes the next one
/// for each prefix invalidation and fences the keys it names with it (see
/// `view.rs`); every request it forwards carries the number current then,
/// so that a key actor never publishes an instance built for a request
/// older than a fence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Fence(u64);

impl Fence {
    pub(crate) fn new(n: u64) -> Self {
        Fence(n)
    }
}

/// The number of a retirement from the read view, in the order they
/// happened (0: not retired). An instance is marked with its own as it
/// leaves the view; a call that waits on another call's answer compares
/// numbers to tell an instance retired before it joined from one retired
/// after (see `inflight.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct RetireSeq(u64);

impl RetireSeq {
    pub(crate) fn new(n: u64) -> Self {
        RetireSeq(n)
    }

    pub(crate) fn get(self) -> u64 {
        self.0
    }
}
