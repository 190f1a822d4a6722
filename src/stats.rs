//! Counters shared by the pool's actors, and the snapshots built from them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::Serialize;

use crate::bus_stats::{BusMetrics, BusStats};
pub(crate) use crate::ids::RetireCause;
use crate::telemetry::Instruments;

/// Event counters. Atomics rather than actor state because they are written
/// from many places at once (key actors, build tasks, lease drops, the
/// disposer) and read only for snapshots; no pool *state* lives here.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    /// Bumped by every hit, on the caller's thread.
    pub(crate) hits: Striped,
    /// Changed by every hand-out and every lease drop, on whichever thread.
    pub(crate) live_leases: Striped,
    pub(crate) misses: AtomicU64,
    pub(crate) builds: AtomicU64,
    pub(crate) build_failures: AtomicU64,
    /// Factory calls under way: up as an attempt starts, down as its
    /// future ends (returns, times out, panics or is dropped), before the
    /// key actor hears of it. Exact, so exported as a gauge.
    pub(crate) builds_in_flight: AtomicU64,
    /// Build tasks whose end the disposer has not handled yet: while any
    /// is left, an instance may still reach it (see
    /// `DisposerMsg::BuildEnded`). Lags `builds_in_flight` by a message.
    pub(crate) build_tasks: AtomicU64,
    pub(crate) retired: [AtomicU64; 9],
    pub(crate) disposals: AtomicU64,
    pub(crate) dispose_failures: AtomicU64,
    pub(crate) capacity_overshoot: AtomicU64,
    pub(crate) actor_restarts: AtomicU64,
    /// Source of instance ids, unique within the pool.
    pub(crate) next_instance_id: AtomicU64,
    /// Instances put in with `insert`.
    pub(crate) inserts: AtomicU64,
    /// Rebuilds that replaced a served instance (refresh-ahead, `refresh`).
    pub(crate) refreshes: AtomicU64,
    /// Rebuilds that failed after their retries (the old instance kept serving).
    pub(crate) refresh_failures: AtomicU64,
    /// Freshness probes run.
    pub(crate) probes: AtomicU64,
    /// Freshness probes that failed, panicked or timed out (counted as fresh).
    pub(crate) probe_failures: AtomicU64,
    /// Event-bus counters.
    pub(crate) bus: BusMetrics,
    /// Handles of the `metrics` export (nothing without the feature).
    pub(crate) export: Instruments,
}

/// A counter written from every core (each hit, each lease taken and
/// dropped), split into cache-line-sized stripes so that cores do not take
/// the line from one another on every write; a reader sums the stripes.
/// Each thread writes the stripe it was given on first use. A stripe may
/// wrap below zero (a lease taken on one thread and dropped on another);
/// the wrapping sum is still exact.
#[derive(Debug, Default)]
pub(crate) struct Striped([Stripe; STRIPES]);

const STRIPES: usize = 16;

#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe(AtomicU64);

thread_local! {
    /// This thread's stripe, handed out round-robin on first use
    /// (`usize::MAX` until then). Const-initialised, so that the hit path's
    /// access is a plain thread-local read with no lazy-init check.
    static STRIPE: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}

fn stripe() -> usize {
    STRIPE.with(|stripe| {
        let i = stripe.get();
        if i != usize::MAX {
            return i;
        }
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let i = (NEXT.fetch_add(1, Relaxed) as usize) % STRIPES;
        stripe.set(i);
        i
    })
}

impl Striped {
    pub(crate) fn add(&self, n: u64) {
        self.0[stripe()].0.fetch_add(n, Relaxed);
    }

    pub(crate) fn sub(&self, n: u64) {
        self.0[stripe()].0.fetch_sub(n, Relaxed);
    }

    pub(crate) fn sum(&self) -> u64 {
        self.0.iter().fold(0u64, |sum, s| sum.wrapping_add(s.0.load(Relaxed)))
    }
}

impl Metrics {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    pub(crate) fn retired(&self, cause: RetireCause) {
        Self::bump(&self.retired[cause as usize]);
    }

    fn retired_count(&self, cause: RetireCause) -> u64 {
        self.retired[cause as usize].load(Relaxed)
    }

    pub(crate) fn retirements(&self) -> Retirements {
        Retirements {
            ttl: self.retired_count(RetireCause::Ttl),
            idle: self.retired_count(RetireCause::Idle),
            capacity: self.retired_count(RetireCause::Capacity),
            credentials: self.retired_count(RetireCause::Credentials),
            invalidated: self.retired_count(RetireCause::Invalidated),
            replaced: self.retired_count(RetireCause::Replaced),
            shutdown: self.retired_count(RetireCause::Shutdown),
            refreshed: self.retired_count(RetireCause::Refreshed),
            stale: self.retired_count(RetireCause::Stale),
        }
    }

    /// A snapshot of the counters; the supervisor fills in what it owns.
    pub(crate) fn snapshot(&self) -> Stats {
        Stats {
            size: 0,
            keys: Vec::new(),
            hits: self.hits.sum(),
            misses: self.misses.load(Relaxed),
            builds: self.builds.load(Relaxed),
            build_failures: self.build_failures.load(Relaxed),
            builds_in_flight: self.builds_in_flight.load(Relaxed),
            retirements: self.retirements(),
            disposals: self.disposals.load(Relaxed),
            dispose_failures: self.dispose_failures.load(Relaxed),
            live_leases: self.live_leases.sum(),
            capacity_overshoot: self.capacity_overshoot.load(Relaxed),
            actor_restarts: self.actor_restarts.load(Relaxed),
            cooling_keys: Vec::new(),
            inserts: self.inserts.load(Relaxed),
            refreshes: self.refreshes.load(Relaxed),
            refresh_failures: self.refresh_failures.load(Relaxed),
            probes: self.probes.load(Relaxed),
            probe_failures: self.probe_failures.load(Relaxed),
            bus: self.bus.snapshot(),
        }
    }
}

impl Metrics {
    /// Counters for a pool named `name` (the label of its exported metrics).
    pub(crate) fn new(name: Option<&str>) -> Self {
        Metrics {
            export: Instruments::register(name),
            ..Metrics::default()
        }
    }

    /// The counters-only snapshot; the supervisor fills in `size` and
    /// `cooling` (zero here: what the pool reports once it has stopped).
    pub(crate) fn counters(&self) -> Counters {
        Counters {
            size: 0,
            hits: self.hits.sum(),
            misses: self.misses.load(Relaxed),
            builds: self.builds.load(Relaxed),
            build_failures: self.build_failures.load(Relaxed),
            builds_in_flight: self.builds_in_flight.load(Relaxed),
            retirements: self.retirements(),
            disposals: self.disposals.load(Relaxed),
            dispose_failures: self.dispose_failures.load(Relaxed),
            live_leases: self.live_leases.sum(),
            capacity_overshoot: self.capacity_overshoot.load(Relaxed),
            actor_restarts: self.actor_restarts.load(Relaxed),
            cooling: 0,
            inserts: self.inserts.load(Relaxed),
            refreshes: self.refreshes.load(Relaxed),
            refresh_failures: self.refresh_failures.load(Relaxed),
            probes: self.probes.load(Relaxed),
            probe_failures: self.probe_failures.load(Relaxed),
            bus: self.bus.snapshot(),
        }
    }
}

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
    /// Keys resident now, as [`Stats::size`].
    pub size: usize,
    /// Calls served from a cached instance.
    pub hits: u64,
    /// Calls that had to wait for a build (including those that joined one in flight).
    pub misses: u64,
    /// Instances built successfully by factories.
    pub builds: u64,
    /// Factory attempts that failed (error, panic or timeout), retries included.
    pub build_failures: u64,
    /// Factory calls running now.
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
    /// As [`Stats::refreshes`].
    pub refreshes: u64,
    /// As [`Stats::refresh_failures`].
    pub refresh_failures: u64,
    /// As [`Stats::probes`].
    pub probes: u64,
    /// As [`Stats::probe_failures`].
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

/// A snapshot of the pool, from [`Pool::stats`](crate::Pool::stats).
/// [`Counters`] has the same figures without the key lists.
///
/// Counters are totals since the pool started. The snapshot is taken in the
/// supervisor's mailbox, so `size` and `keys` agree with each other; counters
/// written by other actors at that very moment may be one event apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Stats {
    /// Keys resident now (each with its key actor), not counting keys being retired.
    pub size: usize,
    /// The resident keys, in key order.
    pub keys: Vec<String>,
    /// Calls served from a cached instance.
    pub hits: u64,
    /// Calls that had to wait for a build (including those that joined one in flight).
    pub misses: u64,
    /// Instances built successfully by factories.
    pub builds: u64,
    /// Factory attempts that failed (error, panic or timeout), retries included.
    pub build_failures: u64,
    /// Factory calls running now (a call that has just ended is counted
    /// until the disposer has noted it, a message later).
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
    /// Keys cooling down now.
    pub cooling_keys: Vec<CoolingKey>,
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
