//! The public snapshots of the pool's figures: [`Counters`], [`Stats`]
//! (the counters plus the key lists), [`Retirements`], [`CoolingKey`] and
//! [`ShutdownReport`].

use std::time::Duration;

use serde::Serialize;

use super::bus::BusStats;
use crate::ids::RetireCause;

/// The pool's counters without its key lists, from
/// [`Pool::counters`](crate::Pool::counters): for frequent scraping.
///
/// The same figures as [`Stats`] (same field names, same meaning), except
/// that `keys` is left out and the cooling keys are only counted, so taking
/// one copies nothing proportional to the number of keys: it costs one
/// message round trip through the pool's supervisor and a count of the keys
/// cooling down. [`Pool::stats`](crate::Pool::stats) copies every resident
/// key's name (milliseconds at 100,000 keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Counters {
    /// Keys resident now (each with its key actor), not counting keys being retired.
    pub size: usize,
    /// Calls served from a cached instance.
    pub hits: u64,
    /// Calls that had to wait for a build (including those that joined one in flight).
    pub misses: u64,
    /// Instances built successfully by factories.
    pub builds: u64,
    /// Factory attempts that failed (error, panic or timeout), retries included.
    pub build_failures: u64,
    /// Factory calls running now: exact, down as each factory future ends.
    pub builds_in_flight: u64,
    /// Retirements by cause.
    pub retirements: Retirements,
    /// Instances disposed (hook finished, failed, or no hook and dropped).
    pub disposals: u64,
    /// Dispose hooks that returned an error, panicked or timed out (a subset of `disposals`).
    pub dispose_failures: u64,
    /// Leases alive now.
    pub live_leases: u64,
    /// Times a new key was admitted over `max_entries` because every other key was leased or building.
    pub capacity_overshoot: u64,
    /// Key actors that stopped unexpectedly and were replaced.
    pub actor_restarts: u64,
    /// Keys cooling down now (how many [`Stats::cooling_keys`] would list).
    pub cooling: usize,
    /// Instances put in with `insert` (not counted in `builds`).
    pub inserts: u64,
    /// Rebuilds that replaced an instance while it was served (refresh-ahead,
    /// [`Pool::refresh`](crate::Pool::refresh)); also counted in `builds`.
    pub refreshes: u64,
    /// Rebuilds that failed after their retries; the old instance kept
    /// serving. Their attempts are also counted in `build_failures`.
    pub refresh_failures: u64,
    /// Freshness probes run (see [`PoolBuilder::probe`](crate::PoolBuilder::probe)).
    pub probes: u64,
    /// Freshness probes that returned an error, panicked or timed out; each
    /// counted as fresh.
    pub probe_failures: u64,
    /// Invalidations received over an event bus.
    pub bus: BusStats,
}

/// Retirements counted by cause.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Retirements {
    /// Time to live passed.
    pub ttl: u64,
    /// Time to idle passed.
    pub idle: u64,
    /// Least recently used key retired to stay within `max_entries`.
    pub capacity: u64,
    /// A caller presented another credentials hash.
    pub credentials: u64,
    /// Named by `invalidate` or `invalidate_by_prefix` (also builds that were
    /// invalidated while in flight, which are never served). Counted when the
    /// key's actor retires the instance: after `invalidate` returns it is
    /// counted; after `invalidate_by_prefix` returns, retirements are paced
    /// (16 per ms) and the count follows within milliseconds.
    pub invalidated: u64,
    /// Replaced by `insert`.
    pub replaced: u64,
    /// Retired by `shutdown`.
    pub shutdown: u64,
    /// Replaced by a rebuild while still served (refresh-ahead or
    /// [`Pool::refresh`](crate::Pool::refresh)).
    pub refreshed: u64,
    /// Found stale by the freshness probe.
    pub stale: u64,
}

impl Retirements {
    /// Retirements with `cause`.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn count(&self, cause: RetireCause) -> u64 {
        match cause {
            RetireCause::Ttl => self.ttl,
            RetireCause::Idle => self.idle,
            RetireCause::Capacity => self.capacity,
            RetireCause::Credentials => self.credentials,
            RetireCause::Invalidated => self.invalidated,
            RetireCause::Replaced => self.replaced,
            RetireCause::Shutdown => self.shutdown,
            RetireCause::Refreshed => self.refreshed,
            RetireCause::Stale => self.stale,
        }
    }

    /// All retirements, whatever the cause.
    pub fn total(&self) -> u64 {
        self.ttl
            + self.idle
            + self.capacity
            + self.credentials
            + self.invalidated
            + self.replaced
            + self.shutdown
            + self.refreshed
            + self.stale
    }
}

/// A key that is cooling down after repeated factory failures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CoolingKey {
    /// The key.
    pub key: String,
    /// Time left until the factory is tried again. Serialized as
    /// `retry_after_ms`, whole milliseconds rounded up (so that a client
    /// waiting that long is never early).
    #[serde(rename = "retry_after_ms", serialize_with = "millis_rounded_up")]
    pub retry_after: Duration,
}

/// Serializes a duration as whole milliseconds, rounded up; one too long
/// for a `u64` (`Duration::MAX`: "never") as `u64::MAX`.
fn millis_rounded_up<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    let ms = d.as_nanos().div_ceil(1_000_000);
    s.serialize_u64(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// A snapshot of the pool, from [`Pool::stats`](crate::Pool::stats): its
/// [`Counters`] plus the key lists. Every figure of `Counters` reads
/// directly on it (`stats.hits`, `stats.size`: it derefs to them) and
/// serializes at its top level.
///
/// Counters are totals since the pool started. The snapshot is taken in the
/// supervisor's mailbox, so `size` and `keys` agree with each other; counters
/// written by other actors at that very moment may be one event apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Stats {
    /// The figures, as [`Pool::counters`](crate::Pool::counters) gives them.
    #[serde(flatten)]
    pub counters: Counters,
    /// The resident keys, in key order.
    pub keys: Vec<String>,
    /// Keys cooling down now.
    pub cooling_keys: Vec<CoolingKey>,
}

impl std::ops::Deref for Stats {
    type Target = Counters;

    fn deref(&self) -> &Counters {
        &self.counters
    }
}

impl Stats {
    /// `counters` with the key lists (the supervisor, which owns them).
    pub(crate) fn new(counters: Counters, keys: Vec<String>, cooling_keys: Vec<CoolingKey>) -> Self {
        Stats {
            counters,
            keys,
            cooling_keys,
        }
    }
}

/// What [`Pool::shutdown`](crate::Pool::shutdown) did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Instances retired by the shutdown itself.
    pub retired: u64,
    /// Instances disposed over the pool's whole life (hook run or value dropped).
    pub disposed: u64,
    /// Dispose hooks that failed, panicked or timed out, over the pool's whole life.
    pub dispose_failures: u64,
    /// Keys whose instances were still leased when the report was made; each
    /// is disposed when its last lease is dropped (its hook runs only if the
    /// runtime is still alive, otherwise the value is just dropped).
    pub still_leased: Vec<String>,
    /// Dispose hooks still running when the deadline passed.
    pub disposals_pending: u64,
    /// Whether the deadline cut the shutdown short: a build still running
    /// was dropped, or a dispose hook was still running.
    pub deadline_passed: bool,
}
