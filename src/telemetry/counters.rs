//! The pool's live counters: atomics written from everywhere (key actors,
//! build tasks, lease drops, hits, the disposer) and read for snapshots.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::bus::BusMetrics;
use super::instruments::Instruments;
use super::snapshot::{Counters, Retirements};
use crate::ids::RetireCause;

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
    pub(crate) retired: RetiredCounts,
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
        Self::bump(self.retired.of(cause));
    }

    pub(crate) fn retirements(&self) -> Retirements {
        let count = |cause| self.retired.of(cause).load(Relaxed);
        Retirements {
            ttl: count(RetireCause::Ttl),
            idle: count(RetireCause::Idle),
            capacity: count(RetireCause::Capacity),
            credentials: count(RetireCause::Credentials),
            invalidated: count(RetireCause::Invalidated),
            replaced: count(RetireCause::Replaced),
            shutdown: count(RetireCause::Shutdown),
            refreshed: count(RetireCause::Refreshed),
            stale: count(RetireCause::Stale),
        }
    }

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

/// Retirements by cause, one counter each, reached through an exhaustive
/// match (a new cause cannot be forgotten, nor land on another's counter).
#[derive(Debug, Default)]
pub(crate) struct RetiredCounts {
    ttl: AtomicU64,
    idle: AtomicU64,
    capacity: AtomicU64,
    credentials: AtomicU64,
    invalidated: AtomicU64,
    replaced: AtomicU64,
    shutdown: AtomicU64,
    refreshed: AtomicU64,
    stale: AtomicU64,
}

impl RetiredCounts {
    fn of(&self, cause: RetireCause) -> &AtomicU64 {
        match cause {
            RetireCause::Ttl => &self.ttl,
            RetireCause::Idle => &self.idle,
            RetireCause::Capacity => &self.capacity,
            RetireCause::Credentials => &self.credentials,
            RetireCause::Invalidated => &self.invalidated,
            RetireCause::Replaced => &self.replaced,
            RetireCause::Shutdown => &self.shutdown,
            RetireCause::Refreshed => &self.refreshed,
            RetireCause::Stale => &self.stale,
        }
    }
}
