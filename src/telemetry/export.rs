//! The `metrics` export itself (feature `metrics`; see the parent module
//! for what leaves how).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Label, Unit};

use super::instruments::Timer;
use super::snapshot::Counters;
use crate::ids::RetireCause;

/// How often counters and gauges are published unless the builder says
/// otherwise (`PoolBuilder::metrics_interval`).
pub(crate) const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

// The exported series. Counters end in `_total`, durations are in seconds
// (Prometheus' conventions, which OpenTelemetry bridges map as well).
const HITS: &str = "warmpool_hits_total";
const MISSES: &str = "warmpool_misses_total";
const BUILDS: &str = "warmpool_builds_total";
const BUILD_FAILURES: &str = "warmpool_build_failures_total";
const RETIREMENTS: &str = "warmpool_retirements_total";
const DISPOSALS: &str = "warmpool_disposals_total";
const DISPOSE_FAILURES: &str = "warmpool_dispose_failures_total";
const INSERTS: &str = "warmpool_inserts_total";
const REFRESHES: &str = "warmpool_refreshes_total";
const REFRESH_FAILURES: &str = "warmpool_refresh_failures_total";
const PROBES: &str = "warmpool_probes_total";
const PROBE_FAILURES: &str = "warmpool_probe_failures_total";
const CAPACITY_OVERSHOOT: &str = "warmpool_capacity_overshoot_total";
const ACTOR_RESTARTS: &str = "warmpool_actor_restarts_total";
const BUS_MESSAGES: &str = "warmpool_bus_messages_total";
const BUS_GAPS: &str = "warmpool_bus_gaps_total";
const BUS_RECONNECTS: &str = "warmpool_bus_reconnects_total";
const BUS_RECOVERIES: &str = "warmpool_bus_recoveries_total";
const BUS_PUBLISHER_RESTARTS: &str = "warmpool_bus_publisher_restarts_total";
const BUS_LOST: &str = "warmpool_bus_lost_total";
const RESIDENT_KEYS: &str = "warmpool_resident_keys";
const LIVE_LEASES: &str = "warmpool_live_leases";
const BUILDS_IN_FLIGHT: &str = "warmpool_builds_in_flight";
const COOLING_KEYS: &str = "warmpool_cooling_keys";
const BUILD_DURATION: &str = "warmpool_build_duration_seconds";
const DISPOSE_DURATION: &str = "warmpool_dispose_duration_seconds";
const BUS_LAG: &str = "warmpool_bus_lag_seconds";

/// The `outcome` label of [`BUS_MESSAGES`], in the order `publish` reads
/// them from [`BusStats`](crate::bus::BusStats).
const BUS_OUTCOMES: [&str; 5] = ["applied", "echo", "malformed", "rejected", "replayed"];

/// The export's settings, from the builder.
#[derive(Debug, Clone)]
pub(crate) struct MetricsOptions {
    /// How often counters and gauges are published; `None`: only by
    /// `Pool::publish_metrics` and when the pool ends.
    pub(crate) interval: Option<Duration>,
}

impl Default for MetricsOptions {
    fn default() -> Self {
        MetricsOptions {
            interval: Some(DEFAULT_INTERVAL),
        }
    }
}

/// A counter series fed from one of the pool's running totals.
struct Monotonic {
    counter: Counter,
    /// The total the series has been moved up to.
    published: AtomicU64,
}

impl Monotonic {
    fn new(counter: Counter) -> Self {
        Monotonic {
            counter,
            published: AtomicU64::new(0),
        }
    }

    /// Moves the series up to `total`. By `fetch_max`: of two publications
    /// racing (the task and a `publish_metrics` call), each difference is
    /// added once, and one that read an older total adds nothing.
    fn to(&self, total: u64) {
        let before = self.published.fetch_max(total, Relaxed);
        if total > before {
            self.counter.increment(total - before);
        }
    }
}

/// This pool's share of a gauge series. Moved by differences rather than
/// set, so that pools sharing a label (unnamed ones) add up, and a pool
/// that ends takes its share back.
struct Level {
    gauge: Gauge,
    /// This pool's share now.
    published: AtomicU64,
}

impl Level {
    fn new(gauge: Gauge) -> Self {
        Level {
            gauge,
            published: AtomicU64::new(0),
        }
    }

    /// Moves this pool's share to `now`. By `swap`: whatever the order of
    /// racing publications, the differences added sum to the last value
    /// swapped in.
    fn to(&self, now: u64) {
        let before = self.published.swap(now, Relaxed);
        if now > before {
            self.gauge.increment((now - before) as f64);
        } else if before > now {
            self.gauge.decrement((before - now) as f64);
        }
    }
}

/// One pool's handles in the installed recorder, registered once when the
/// pool is built (so no recorder lookup ever happens per event).
pub(crate) struct Instruments {
    hits: Monotonic,
    misses: Monotonic,
    builds: Monotonic,
    build_failures: Monotonic,
    /// In the order of `RetireCause::ALL`.
    retirements: Vec<Monotonic>,
    disposals: Monotonic,
    dispose_failures: Monotonic,
    inserts: Monotonic,
    refreshes: Monotonic,
    refresh_failures: Monotonic,
    probes: Monotonic,
    probe_failures: Monotonic,
    capacity_overshoot: Monotonic,
    actor_restarts: Monotonic,
    /// In the order of `BUS_OUTCOMES`.
    bus_messages: Vec<Monotonic>,
    bus_gaps: Monotonic,
    bus_reconnects: Monotonic,
    bus_recoveries: Monotonic,
    bus_publisher_restarts: Monotonic,
    bus_lost: Monotonic,
    resident_keys: Level,
    live_leases: Level,
    builds_in_flight: Level,
    cooling_keys: Level,
    build_ok: Histogram,
    build_failed: Histogram,
    dispose: Histogram,
    bus_lag: Histogram,
}

impl fmt::Debug for Instruments {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instruments").finish_non_exhaustive()
    }
}

impl Default for Instruments {
    /// Handles that record nothing (counters not made by a pool's builder).
    fn default() -> Self {
        Instruments::with(|_, _| Counter::noop(), |_| Gauge::noop(), |_, _| Histogram::noop())
    }
}

impl Instruments {
    /// Registers a pool's series with the recorder installed now (so the
    /// application installs its recorder before it builds the pool).
    pub(crate) fn register(pool: Option<&str>) -> Self {
        describe();
        let labels = |extra: Option<(&'static str, &'static str)>| {
            let mut labels: Vec<Label> = pool.map(|p| Label::new("pool", p.to_owned())).into_iter().collect();
            labels.extend(extra.map(|(name, value)| Label::new(name, value)));
            labels
        };
        Instruments::with(
            |name, extra| metrics::counter!(name, labels(extra)),
            |name| metrics::gauge!(name, labels(None)),
            |name, extra| metrics::histogram!(name, labels(extra)),
        )
    }

    /// Builds every series with the given makers (a name and an optional
    /// extra label each).
    fn with(
        counter: impl Fn(&'static str, Option<(&'static str, &'static str)>) -> Counter,
        gauge: impl Fn(&'static str) -> Gauge,
        histogram: impl Fn(&'static str, Option<(&'static str, &'static str)>) -> Histogram,
    ) -> Self {
        let total = |name| Monotonic::new(counter(name, None));
        Instruments {
            hits: total(HITS),
            misses: total(MISSES),
            builds: total(BUILDS),
            build_failures: total(BUILD_FAILURES),
            retirements: RetireCause::ALL
                .iter()
                .map(|cause| Monotonic::new(counter(RETIREMENTS, Some(("cause", cause.as_str())))))
                .collect(),
            disposals: total(DISPOSALS),
            dispose_failures: total(DISPOSE_FAILURES),
            inserts: total(INSERTS),
            refreshes: total(REFRESHES),
            refresh_failures: total(REFRESH_FAILURES),
            probes: total(PROBES),
            probe_failures: total(PROBE_FAILURES),
            capacity_overshoot: total(CAPACITY_OVERSHOOT),
            actor_restarts: total(ACTOR_RESTARTS),
            bus_messages: BUS_OUTCOMES
                .iter()
                .map(|outcome| Monotonic::new(counter(BUS_MESSAGES, Some(("outcome", outcome)))))
                .collect(),
            bus_gaps: total(BUS_GAPS),
            bus_reconnects: total(BUS_RECONNECTS),
            bus_recoveries: total(BUS_RECOVERIES),
            bus_publisher_restarts: total(BUS_PUBLISHER_RESTARTS),
            bus_lost: total(BUS_LOST),
            resident_keys: Level::new(gauge(RESIDENT_KEYS)),
            live_leases: Level::new(gauge(LIVE_LEASES)),
            builds_in_flight: Level::new(gauge(BUILDS_IN_FLIGHT)),
            cooling_keys: Level::new(gauge(COOLING_KEYS)),
            build_ok: histogram(BUILD_DURATION, Some(("outcome", "ok"))),
            build_failed: histogram(BUILD_DURATION, Some(("outcome", "failed"))),
            dispose: histogram(DISPOSE_DURATION, None),
            bus_lag: histogram(BUS_LAG, None),
        }
    }

    /// Moves every counter and gauge series to the figures in `c`.
    pub(crate) fn publish(&self, c: &Counters) {
        self.hits.to(c.hits);
        self.misses.to(c.misses);
        self.builds.to(c.builds);
        self.build_failures.to(c.build_failures);
        for (cause, series) in RetireCause::ALL.iter().zip(&self.retirements) {
            series.to(c.retirements.count(*cause));
        }
        self.disposals.to(c.disposals);
        self.dispose_failures.to(c.dispose_failures);
        self.inserts.to(c.inserts);
        self.refreshes.to(c.refreshes);
        self.refresh_failures.to(c.refresh_failures);
        self.probes.to(c.probes);
        self.probe_failures.to(c.probe_failures);
        self.capacity_overshoot.to(c.capacity_overshoot);
        self.actor_restarts.to(c.actor_restarts);
        let bus = &c.bus;
        let outcomes = [
            bus.applied,
            bus.echoes_ignored,
            bus.malformed,
            bus.rejected,
            bus.replayed,
        ];
        for (count, series) in outcomes.into_iter().zip(&self.bus_messages) {
            series.to(count);
        }
        self.bus_gaps.to(bus.gaps);
        self.bus_reconnects.to(bus.reconnects);
        self.bus_recoveries.to(bus.recoveries);
        self.bus_publisher_restarts.to(bus.publisher_restarts);
        self.bus_lost.to(bus.lost);
        self.resident_keys.to(c.size as u64);
        self.live_leases.to(c.live_leases);
        self.builds_in_flight.to(c.builds_in_flight);
        self.cooling_keys.to(c.cooling as u64);
    }

    /// The pool has stopped: a last publication of its counters, and its
    /// share of every gauge back to zero (a stopped pool holds nothing the
    /// gauges should count, and reports nothing more).
    pub(crate) fn end(&self, c: &Counters) {
        self.publish(c);
        for level in [
            &self.resident_keys,
            &self.live_leases,
            &self.builds_in_flight,
            &self.cooling_keys,
        ] {
            level.to(0);
        }
    }

    /// A factory attempt ended, successfully or not, `timer` after it started.
    pub(crate) fn build_took(&self, timer: Timer, ok: bool) {
        let histogram = if ok { &self.build_ok } else { &self.build_failed };
        histogram.record(timer.elapsed().as_secs_f64());
    }

    /// A dispose (the hook, or the drop when there is none) ended.
    pub(crate) fn dispose_took(&self, timer: Timer) {
        self.dispose.record(timer.elapsed().as_secs_f64());
    }

    /// A bus message was applied `lag` after it was published.
    pub(crate) fn bus_lag(&self, lag: Duration) {
        self.bus_lag.record(lag.as_secs_f64());
    }
}

/// Tells the recorder each series' unit and meaning (exporters show them as
/// help text). Describing again is harmless, so every pool does it.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(HITS, Unit::Count, "Calls served from a cached instance.");
    describe_counter!(MISSES, Unit::Count, "Calls that waited for a build.");
    describe_counter!(BUILDS, Unit::Count, "Instances built by factories.");
    describe_counter!(
        BUILD_FAILURES,
        Unit::Count,
        "Factory attempts that failed, panicked or timed out."
    );
    describe_counter!(RETIREMENTS, Unit::Count, "Instances retired, by cause.");
    describe_counter!(DISPOSALS, Unit::Count, "Instances disposed.");
    describe_counter!(
        DISPOSE_FAILURES,
        Unit::Count,
        "Dispose hooks that failed, panicked or timed out."
    );
    describe_counter!(INSERTS, Unit::Count, "Instances put in with insert.");
    describe_counter!(CAPACITY_OVERSHOOT, Unit::Count, "Keys admitted over max_entries.");
    describe_counter!(ACTOR_RESTARTS, Unit::Count, "Key actors that stopped unexpectedly.");
    describe_counter!(BUS_MESSAGES, Unit::Count, "Event-bus messages received, by outcome.");
    describe_counter!(BUS_GAPS, Unit::Count, "Gaps in an origin's sequence numbers.");
    describe_counter!(BUS_RECONNECTS, Unit::Count, "Event-bus reconnections.");
    describe_counter!(
        BUS_RECOVERIES,
        Unit::Count,
        "Recovery flushes after possible message loss."
    );
    describe_counter!(BUS_PUBLISHER_RESTARTS, Unit::Count, "Publishers seen restarting.");
    describe_counter!(BUS_LOST, Unit::Count, "Times the transport reported lost messages.");
    describe_gauge!(RESIDENT_KEYS, Unit::Count, "Keys resident now.");
    describe_gauge!(LIVE_LEASES, Unit::Count, "Leases alive now.");
    describe_gauge!(BUILDS_IN_FLIGHT, Unit::Count, "Factory calls running now.");
    describe_gauge!(COOLING_KEYS, Unit::Count, "Keys cooling down after repeated failures.");
    describe_histogram!(BUILD_DURATION, Unit::Seconds, "Factory attempts' duration, by outcome.");
    describe_histogram!(DISPOSE_DURATION, Unit::Seconds, "Disposals' duration.");
    describe_histogram!(BUS_LAG, Unit::Seconds, "Event-bus publish-to-apply lag (wall clocks).");
}
