//! The `metrics` export (feature `metrics`): the exact figures a recorder
//! receives for builds, hits, misses, retirements by cause, disposals,
//! gauges, histograms and bus messages; labels that name the pool and never
//! a key; publication on demand, on the interval and when the pool ends.
//! A recording recorder of our own, installed once for the whole binary;
//! each test reads only its own pool's series (by the `pool` label).
//! Paused clock: durations are exact.
#![cfg(feature = "metrics")]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::*;
use metrics::{Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, SharedString, Unit};
use warmpool::bus::{ListenOptions, LocalBus, Scope, new_origin};
use warmpool::{Pool, RestartPolicy};

/// A series: its name and its labels, sorted.
type Series = (String, Vec<(String, String)>);

/// One series' recorded state.
#[derive(Debug, Default)]
struct Cell {
    counter: AtomicU64,
    /// A gauge's value, as f64 bits.
    gauge: Mutex<f64>,
    histogram: Mutex<Vec<f64>>,
}

impl CounterFn for Cell {
    fn increment(&self, value: u64) {
        self.counter.fetch_add(value, SeqCst);
    }
    fn absolute(&self, value: u64) {
        self.counter.fetch_max(value, SeqCst);
    }
}

impl GaugeFn for Cell {
    fn increment(&self, value: f64) {
        *self.gauge.lock().unwrap() += value;
    }
    fn decrement(&self, value: f64) {
        *self.gauge.lock().unwrap() -= value;
    }
    fn set(&self, value: f64) {
        *self.gauge.lock().unwrap() = value;
    }
}

impl HistogramFn for Cell {
    fn record(&self, value: f64) {
        self.histogram.lock().unwrap().push(value);
    }
}

/// A recorder that keeps every value it is given.
#[derive(Debug, Default, Clone)]
struct Recording {
    series: Arc<Mutex<BTreeMap<Series, Arc<Cell>>>>,
}

impl Recording {
    fn cell(&self, key: &Key) -> Arc<Cell> {
        let mut labels: Vec<(String, String)> = key
            .labels()
            .map(|l| (l.key().to_string(), l.value().to_string()))
            .collect();
        labels.sort();
        let series = (key.name().to_string(), labels);
        self.series.lock().unwrap().entry(series).or_default().clone()
    }

    /// The cell of `name` with exactly `labels`; panics if it was never registered.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Arc<Cell> {
        let mut labels: Vec<(String, String)> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        labels.sort();
        let series = (name.to_string(), labels);
        let map = self.series.lock().unwrap();
        match map.get(&series) {
            Some(cell) => cell.clone(),
            None => panic!("no series {series:?}"),
        }
    }

    /// Every series labelled `pool = pool`.
    fn of_pool(&self, pool: &str) -> Vec<Series> {
        let map = self.series.lock().unwrap();
        map.keys()
            .filter(|(_, labels)| labels.iter().any(|(k, v)| k == "pool" && v == pool))
            .cloned()
            .collect()
    }
}

impl metrics::Recorder for Recording {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.cell(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.cell(key))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.cell(key))
    }
}

/// The recorder of this test binary, installed on first use (before any
/// pool is built: pools register their series when built).
fn recording() -> &'static Recording {
    static RECORDING: OnceLock<Recording> = OnceLock::new();
    RECORDING.get_or_init(|| {
        let recording = Recording::default();
        metrics::set_global_recorder(recording.clone()).expect("the only recorder of this binary");
        recording
    })
}

/// Reads the series of one pool.
struct Reader {
    pool: &'static str,
}

impl Reader {
    fn new(pool: &'static str) -> Self {
        recording();
        Reader { pool }
    }
    fn counter(&self, name: &str) -> u64 {
        self.counter_with(name, None)
    }
    fn counter_with(&self, name: &str, extra: Option<(&str, &str)>) -> u64 {
        let mut labels = vec![("pool", self.pool)];
        labels.extend(extra);
        recording().get(name, &labels).counter.load(SeqCst)
    }
    fn cause(&self, cause: &str) -> u64 {
        self.counter_with("warmpool_retirements_total", Some(("cause", cause)))
    }
    fn gauge(&self, name: &str) -> f64 {
        *recording().get(name, &[("pool", self.pool)]).gauge.lock().unwrap()
    }
    fn histogram(&self, name: &str, extra: Option<(&str, &str)>) -> Vec<f64> {
        let mut labels = vec![("pool", self.pool)];
        labels.extend(extra);
        recording().get(name, &labels).histogram.lock().unwrap().clone()
    }
}

/// The figures a pool's calls produce reach the recorder exactly: builds,
/// hits, misses, inserts, and retirements by cause.
#[tokio::test(start_paused = true)]
async fn counts_builds_hits_misses_and_retirements_exactly() {
    let m = Reader::new("m-counts");
    let c = Counters::new();
    let pool = builder(&c)
        .name("m-counts")
        .time_to_live(Duration::from_secs(10))
        .spawn()
        .await
        .unwrap();
    drop(
        pool.get_or_create("a", h(1), factory(&c, "a", h(1), Duration::ZERO))
            .await
            .unwrap(),
    );
    for _ in 0..3 {
        drop(
            pool.get_or_create("a", h(1), factory(&c, "a", h(1), Duration::ZERO))
                .await
                .unwrap(),
        );
    }
    drop(
        pool.get_or_create("b", h(1), factory(&c, "b", h(1), Duration::ZERO))
            .await
            .unwrap(),
    );
    assert!(pool.invalidate("b").await.unwrap());
    tokio::time::advance(Duration::from_secs(11)).await;
    // Past its TTL: retired (cause ttl) and built again.
    drop(
        pool.get_or_create("a", h(1), factory(&c, "a", h(1), Duration::ZERO))
            .await
            .unwrap(),
    );
    // Another hash: retired (cause credentials) and built again.
    drop(
        pool.get_or_create("a", h(2), factory(&c, "a", h(2), Duration::ZERO))
            .await
            .unwrap(),
    );
    pool.insert("c", h(1), client("c", 1, 0)).await.unwrap();
    pool.insert("c", h(1), client("c", 1, 0)).await.unwrap();
    assert_eq!(c.builds(), 4);

    let published = pool.publish_metrics().await.unwrap();
    assert_eq!(published, pool.counters().await.unwrap());
    assert_eq!(m.counter("warmpool_builds_total"), 4);
    assert_eq!(m.counter("warmpool_hits_total"), 3);
    assert_eq!(m.counter("warmpool_misses_total"), 4);
    assert_eq!(m.counter("warmpool_build_failures_total"), 0);
    assert_eq!(m.counter("warmpool_inserts_total"), 2);
    assert_eq!(m.cause("ttl"), 1);
    assert_eq!(m.cause("credentials"), 1);
    assert_eq!(m.cause("invalidated"), 1);
    assert_eq!(m.cause("replaced"), 1);
    for cause in ["idle", "capacity", "shutdown"] {
        assert_eq!(m.cause(cause), 0, "cause {cause}");
    }
    // Publishing again without new events adds nothing.
    pool.publish_metrics().await.unwrap();
    assert_eq!(m.counter("warmpool_hits_total"), 3);
    assert_eq!(m.counter("warmpool_builds_total"), 4);
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// The gauges carry what is resident, leased, building and cooling now,
/// and go back to zero once the pool has stopped.
#[tokio::test(start_paused = true)]
async fn gauges_follow_the_pool_and_return_to_zero_when_it_stops() {
    let m = Reader::new("m-gauges");
    let c = Counters::new();
    let pool = builder(&c)
        .name("m-gauges")
        .restart_policy(cool_at_once())
        .spawn()
        .await
        .unwrap();
    let first = pool
        .get_or_create("a", h(1), factory(&c, "a", h(1), Duration::ZERO))
        .await
        .unwrap();
    let second = first.clone();
    let _other = pool
        .get_or_create("b", h(1), factory(&c, "b", h(1), Duration::ZERO))
        .await
        .unwrap();
    // A key whose only attempt fails cools down at once.
    pool.get_or_create("down", h(1), failing(&c, Duration::ZERO))
        .await
        .unwrap_err();
    // A build that takes 20 s is in flight.
    let slow = {
        let pool = pool.clone();
        let f = factory(&c, "slow", h(1), Duration::from_secs(20));
        tokio::spawn(async move { pool.get_or_create("slow", h(1), f).await.map(drop) })
    };
    eventually("the cooling key left its actor", async || {
        pool.counters().await.unwrap().cooling == 1
    })
    .await;
    eventually("the slow build started", async || {
        pool.counters().await.unwrap().builds_in_flight == 1
    })
    .await;

    let counters = pool.publish_metrics().await.unwrap();
    // a, b and slow are resident; the cooling key has no actor.
    assert_eq!(counters.size, 3);
    assert_eq!(m.gauge("warmpool_resident_keys"), 3.0);
    assert_eq!(m.gauge("warmpool_live_leases"), 3.0);
    assert_eq!(m.gauge("warmpool_builds_in_flight"), 1.0);
    assert_eq!(m.gauge("warmpool_cooling_keys"), 1.0);

    drop((first, second));
    pool.publish_metrics().await.unwrap();
    assert_eq!(m.gauge("warmpool_live_leases"), 1.0);

    slow.await.unwrap().unwrap();
    // A lease that outlives the pool is not counted once the pool has stopped.
    let outliving = _other;
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
    // The publisher notices the end at its next round (1 s by default).
    tokio::time::advance(Duration::from_secs(1)).await;
    eventually("the stopped pool's gauges went back to zero", async || {
        m.gauge("warmpool_resident_keys") == 0.0
    })
    .await;
    for gauge in [
        "warmpool_live_leases",
        "warmpool_builds_in_flight",
        "warmpool_cooling_keys",
    ] {
        assert_eq!(m.gauge(gauge), 0.0, "{gauge}");
    }
    // Its last publication has the shutdown's retirements and disposals
    // (all but the instance still leased).
    assert_eq!(m.cause("shutdown"), 3);
    assert_eq!(m.counter("warmpool_disposals_total"), 2);
    drop(outliving);
}

/// Counters are published every `metrics_interval` without being asked:
/// exported values lag by up to one interval.
#[tokio::test(start_paused = true)]
async fn publishes_every_interval_without_being_asked() {
    let m = Reader::new("m-interval");
    let c = Counters::new();
    let pool = builder(&c)
        .name("m-interval")
        .metrics_interval(Duration::from_secs(5))
        .spawn()
        .await
        .unwrap();
    drop(
        pool.get_or_create("a", h(1), factory(&c, "a", h(1), Duration::ZERO))
            .await
            .unwrap(),
    );
    drop(
        pool.get_or_create("a", h(1), factory(&c, "a", h(1), Duration::ZERO))
            .await
            .unwrap(),
    );
    settle().await;
    // Registered when the pool was built, not moved yet.
    assert_eq!(
        (m.counter("warmpool_builds_total"), m.counter("warmpool_hits_total")),
        (0, 0)
    );
    tokio::time::advance(Duration::from_secs(5)).await;
    eventually("the interval published", async || {
        m.counter("warmpool_builds_total") == 1
    })
    .await;
    assert_eq!(m.counter("warmpool_hits_total"), 1);
    assert_eq!(m.gauge("warmpool_resident_keys"), 1.0);
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// Each factory attempt's duration lands in the build histogram, by outcome;
/// each dispose hook's in the dispose histogram. Paused clock: exact values.
#[tokio::test(start_paused = true)]
async fn histograms_record_each_attempt_and_each_dispose() {
    let m = Reader::new("m-durations");
    let c = Counters::new();
    let pool: Pool<Client> = Pool::builder()
        .name("m-durations")
        .restart_policy(RestartPolicy {
            max_retries: 2,
            intensity: 100,
            ..RestartPolicy::default()
        })
        .on_dispose(|_key, _client: Client| async {
            tokio::time::sleep(Duration::from_millis(30)).await;
        })
        .spawn()
        .await
        .unwrap();
    drop(
        pool.get_or_create("a", h(1), factory(&c, "a", h(1), Duration::from_millis(200)))
            .await
            .unwrap(),
    );
    // Three attempts (the first and two retries), 50 ms each.
    pool.get_or_create("down", h(1), failing(&c, Duration::from_millis(50)))
        .await
        .unwrap_err();
    assert_eq!(c.builds(), 4);
    assert!(pool.invalidate("a").await.unwrap());
    tokio::time::sleep(Duration::from_millis(30)).await;
    eventually("the dispose hook finished", async || {
        pool.counters().await.unwrap().disposals == 1
    })
    .await;

    assert_eq!(
        m.histogram("warmpool_build_duration_seconds", Some(("outcome", "ok"))),
        [0.2]
    );
    assert_eq!(
        m.histogram("warmpool_build_duration_seconds", Some(("outcome", "failed"))),
        [0.05, 0.05, 0.05]
    );
    assert_eq!(m.histogram("warmpool_dispose_duration_seconds", None), [0.03]);
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// Every series of a pool is labelled with its name; the only other labels
/// are `cause` and `outcome`; no label holds a key or a credentials hash.
#[tokio::test(start_paused = true)]
async fn labels_name_the_pool_and_never_a_key_or_hash() {
    Reader::new("m-labels");
    let c = Counters::new();
    let pool = builder(&c).name("m-labels").spawn().await.unwrap();
    let hash = h(0xfeed);
    for key in ["acme:openai", "globex:anthropic"] {
        drop(
            pool.get_or_create(key, hash, factory(&c, key, hash, Duration::ZERO))
                .await
                .unwrap(),
        );
    }
    pool.invalidate_by_prefix("acme:").await.unwrap();
    pool.publish_metrics().await.unwrap();
    let series = recording().of_pool("m-labels");
    assert!(series.len() >= 30, "{series:?}");
    for (name, labels) in &series {
        assert!(name.starts_with("warmpool_"), "{name}");
        for (label, value) in labels {
            assert!(
                ["pool", "cause", "outcome"].contains(&label.as_str()),
                "{name}: label {label}"
            );
            assert!(
                !value.contains("acme") && !value.contains("globex"),
                "{name}: {label}={value}"
            );
            assert!(!value.contains(&hash.to_string()), "{name}: {label}={value}");
        }
    }
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// Every retirement cause in `Retirements` and every figure in `Counters`
/// has a series: a counter added to the pool and not to the export fails here.
#[tokio::test(start_paused = true)]
async fn every_counter_and_cause_has_a_series() {
    let m = Reader::new("m-complete");
    let pool: Pool<Client> = Pool::builder().name("m-complete").spawn().await.unwrap();
    let counters = pool.publish_metrics().await.unwrap();
    let json = serde_json::to_value(&counters).unwrap();
    for cause in json["retirements"].as_object().unwrap().keys() {
        m.cause(cause); // panics if there is no such series
    }
    // The figure of `Counters` each series carries.
    let exported: &[(&str, &str)] = &[
        ("size", "warmpool_resident_keys"),
        ("hits", "warmpool_hits_total"),
        ("misses", "warmpool_misses_total"),
        ("builds", "warmpool_builds_total"),
        ("build_failures", "warmpool_build_failures_total"),
        ("builds_in_flight", "warmpool_builds_in_flight"),
        ("disposals", "warmpool_disposals_total"),
        ("dispose_failures", "warmpool_dispose_failures_total"),
        ("live_leases", "warmpool_live_leases"),
        ("capacity_overshoot", "warmpool_capacity_overshoot_total"),
        ("actor_restarts", "warmpool_actor_restarts_total"),
        ("cooling", "warmpool_cooling_keys"),
        ("inserts", "warmpool_inserts_total"),
        ("refreshes", "warmpool_refreshes_total"),
        ("refresh_failures", "warmpool_refresh_failures_total"),
        ("probes", "warmpool_probes_total"),
        ("probe_failures", "warmpool_probe_failures_total"),
        ("bus.applied", "warmpool_bus_messages_total{outcome=applied}"),
        ("bus.echoes_ignored", "warmpool_bus_messages_total{outcome=echo}"),
        ("bus.malformed", "warmpool_bus_messages_total{outcome=malformed}"),
        ("bus.rejected", "warmpool_bus_messages_total{outcome=rejected}"),
        ("bus.replayed", "warmpool_bus_messages_total{outcome=replayed}"),
        ("bus.gaps", "warmpool_bus_gaps_total"),
        ("bus.reconnects", "warmpool_bus_reconnects_total"),
        ("bus.recoveries", "warmpool_bus_recoveries_total"),
        ("bus.publisher_restarts", "warmpool_bus_publisher_restarts_total"),
        ("bus.lost", "warmpool_bus_lost_total"),
        ("bus.lag_p50_us", "warmpool_bus_lag_seconds"),
        ("bus.lag_p99_us", "warmpool_bus_lag_seconds"),
    ];
    let mut fields: Vec<String> = Vec::new();
    for (name, value) in json.as_object().unwrap() {
        match (name.as_str(), value) {
            ("retirements", _) => {}
            ("bus", serde_json::Value::Object(bus)) => fields.extend(bus.keys().map(|k| format!("bus.{k}"))),
            _ => fields.push(name.clone()),
        }
    }
    for field in &fields {
        assert!(
            exported.iter().any(|(f, _)| f == field),
            "`Counters::{field}` is not exported as a metric"
        );
    }
    for (_, series) in exported {
        let (name, outcome) = match series.split_once("{outcome=") {
            Some((name, rest)) => (name, Some(("outcome", rest.trim_end_matches('}')))),
            None => (*series, None),
        };
        let mut labels = vec![("pool", "m-complete")];
        labels.extend(outcome);
        recording().get(name, &labels); // panics if there is no such series
    }
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// Bus messages are counted by outcome, and each applied one records its lag.
#[tokio::test(start_paused = true)]
async fn bus_messages_by_outcome_and_their_lag() {
    let m = Reader::new("m-bus");
    let c = Counters::new();
    let pool = builder(&c).name("m-bus").spawn().await.unwrap();
    let bus = LocalBus::new(64);
    let origin = new_origin("here");
    bus.attach(&pool, ListenOptions::new(&origin));
    drop(
        pool.get_or_create("a", h(1), factory(&c, "a", h(1), Duration::ZERO))
            .await
            .unwrap(),
    );
    bus.publisher(new_origin("there"), None)
        .publish(Scope::Key("a".into()))
        .await
        .unwrap();
    bus.publisher(&origin, None)
        .publish(Scope::Key("a".into()))
        .await
        .unwrap();
    bus.publish_raw(b"not json".to_vec());
    eventually("the listener read all three", async || {
        let bus = pool.counters().await.unwrap().bus;
        (bus.applied, bus.echoes_ignored, bus.malformed) == (1, 1, 1)
    })
    .await;
    pool.publish_metrics().await.unwrap();
    let outcome = |o| m.counter_with("warmpool_bus_messages_total", Some(("outcome", o)));
    assert_eq!(
        [
            outcome("applied"),
            outcome("echo"),
            outcome("malformed"),
            outcome("rejected"),
            outcome("replayed")
        ],
        [1, 1, 1, 0, 0]
    );
    assert_eq!(m.cause("invalidated"), 1);
    assert_eq!(m.histogram("warmpool_bus_lag_seconds", None).len(), 1);
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// A pool without a name exports the same series without a `pool` label.
#[tokio::test(start_paused = true)]
async fn an_unnamed_pool_has_no_pool_label() {
    recording();
    let c = Counters::new();
    // The only unnamed pool of this binary.
    let pool = builder(&c).spawn().await.unwrap();
    drop(
        pool.get_or_create("a", h(1), factory(&c, "a", h(1), Duration::ZERO))
            .await
            .unwrap(),
    );
    pool.publish_metrics().await.unwrap();
    let builds = recording().get("warmpool_builds_total", &[]);
    assert_eq!(builds.counter.load(SeqCst), 1);
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
}
