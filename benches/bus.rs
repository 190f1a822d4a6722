//! Invalidations across service instances: how many messages per second a
//! listening pool applies, and the publish-to-apply lag, over the embedded
//! bus (the in-process baseline), Redis pub/sub, Redis Streams, NATS and NATS
//! JetStream on loopback, in one run. Prints Markdown tables and the load
//! average.
//!
//! Run: `cargo bench --bench bus --features redis,nats` (needs Redis on
//! 127.0.0.1:6379 and NATS with JetStream on 127.0.0.1:4222, and fails
//! loudly without them).
//! `WARMPOOL_BENCH_QUICK=1` runs fewer messages.
//!
//! Each round: a fresh pool with 1,000 resident keys and a listener attached,
//! then (1) a burst of messages published back to back by one publisher,
//! timed from the first publish until the pool has applied the last one;
//! (2) messages at a steady 2,000 per second, whose publish-to-apply lag the
//! pool records (`Stats::bus.lag_p50` / `lag_p99`, histogram buckets within
//! 25%). Transports are interleaved within each round so that machine load
//! hits them alike; ratios are per round against the embedded bus.

use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use warmpool::bus::jetstream::{JetStreamBus, JetStreamPublisher, Retention};
use warmpool::bus::nats::{NatsBus, NatsOptions, NatsPublisher};
use warmpool::bus::redis::{RedisBus, RedisPublisher};
use warmpool::bus::redis_streams::{RedisStreamBus, RedisStreamPublisher};
use warmpool::bus::{ListenOptions, LocalBus, LocalPublisher, Scope, new_origin};
use warmpool::{CredentialsHash, Pool};

const REDIS_URL: &str = "redis://127.0.0.1:6379";
const NATS_URL: &str = "nats://127.0.0.1:4222";
const KEYS: usize = 1_000;
const ROUNDS: usize = 3;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Local,
    Redis,
    RedisStreams,
    Nats,
    JetStream,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Local => "embedded (tokio broadcast)",
            Kind::Redis => "Redis pub/sub",
            Kind::RedisStreams => "Redis Streams (durable)",
            Kind::Nats => "NATS",
            Kind::JetStream => "NATS JetStream (durable)",
        }
    }
}

enum Publisher {
    Local(LocalPublisher),
    Redis(RedisPublisher),
    RedisStreams(RedisStreamPublisher),
    Nats(NatsPublisher),
    JetStream(JetStreamPublisher),
}

impl Publisher {
    async fn publish(&self, scope: Scope) {
        match self {
            Publisher::Local(p) => p.publish(scope).await,
            Publisher::Redis(p) => p.publish(scope).await,
            Publisher::RedisStreams(p) => p.publish(scope).await,
            Publisher::Nats(p) => p.publish(scope).await,
            Publisher::JetStream(p) => p.publish(scope).await,
        }
        .expect("publish")
    }
}

/// A fresh pool with `KEYS` resident keys, listening on a fresh channel of
/// `kind`, and a publisher of another origin on the same channel.
async fn setup(kind: Kind) -> (Pool<u64>, Publisher) {
    let pool: Pool<u64> = Pool::builder().max_entries(10 * KEYS).spawn().await.unwrap();
    for i in 0..KEYS {
        pool.insert(&format!("k{i:04}"), CredentialsHash::from_u64(1), i as u64)
            .await
            .unwrap();
    }
    let channel = format!("warmpool-bench-{:016x}", fastrand::u64(..));
    let options = ListenOptions {
        origin: new_origin("listener"),
        ..Default::default()
    };
    let origin = new_origin("publisher");
    let publisher = match kind {
        Kind::Local => {
            // Room for a whole burst: a lagging receiver would count as a gap.
            let bus = LocalBus::new(64 * 1024);
            bus.attach(&pool, options);
            Publisher::Local(bus.publisher(origin, None))
        }
        Kind::Redis => {
            let bus = RedisBus::new(REDIS_URL, channel).unwrap();
            bus.attach(&pool, options)
                .await
                .unwrap_or_else(|e| panic!("Redis at {REDIS_URL} is needed for this bench: {e}"));
            Publisher::Redis(bus.publisher(origin, None).await.unwrap())
        }
        Kind::RedisStreams => {
            // Left on the server with a small cap: benches do not clean up.
            let bus = RedisStreamBus::new(REDIS_URL, channel, 100_000).unwrap();
            bus.attach(&pool, options)
                .await
                .unwrap_or_else(|e| panic!("Redis at {REDIS_URL} is needed for this bench: {e}"));
            Publisher::RedisStreams(bus.publisher(origin, None).await.unwrap())
        }
        Kind::Nats => {
            let bus = NatsBus::connect(NATS_URL, channel)
                .await
                .unwrap_or_else(|e| panic!("NATS at {NATS_URL} is needed for this bench: {e}"));
            bus.attach(&pool, options).await.unwrap();
            Publisher::Nats(bus.publisher(origin, None))
        }
        Kind::JetStream => {
            let stream = channel.replace('-', "_").to_uppercase();
            let retention = Retention {
                max_messages: 100_000,
                max_age: Duration::from_secs(600),
            };
            let bus = JetStreamBus::connect(NATS_URL, stream, channel, retention, NatsOptions::new())
                .await
                .unwrap_or_else(|e| panic!("NATS with JetStream at {NATS_URL} is needed for this bench: {e}"));
            bus.attach(&pool, options).await.unwrap();
            Publisher::JetStream(bus.publisher(origin, None))
        }
    };
    (pool, publisher)
}

async fn wait_applied(pool: &Pool<u64>, n: u64) {
    let start = Instant::now();
    loop {
        let s = pool.stats().await.unwrap();
        assert_eq!(s.bus.gaps, 0, "a message was lost (sequence gap)");
        if s.bus.applied >= n {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "applied {} of {n}",
            s.bus.applied
        );
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

struct Round {
    burst_per_sec: f64,
    lag_p50: Duration,
    lag_p99: Duration,
}

async fn round(kind: Kind, burst: usize, steady: usize) -> Round {
    let (pool, publisher) = setup(kind).await;
    let start = Instant::now();
    for i in 0..burst {
        publisher.publish(Scope::Key(format!("k{:04}", i % KEYS))).await;
    }
    wait_applied(&pool, burst as u64).await;
    let burst_per_sec = burst as f64 / start.elapsed().as_secs_f64();
    pool.shutdown(Duration::from_secs(5)).await.unwrap();

    // The lag histogram is per pool: a fresh one for the steady phase.
    let (pool, publisher) = setup(kind).await;
    let mut tick = tokio::time::interval(Duration::from_micros(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for i in 0..steady {
        tick.tick().await;
        publisher.publish(Scope::Key(format!("k{:04}", i % KEYS))).await;
    }
    wait_applied(&pool, steady as u64).await;
    let s = pool.stats().await.unwrap();
    pool.shutdown(Duration::from_secs(5)).await.unwrap();
    Round {
        burst_per_sec,
        lag_p50: s.bus.lag_p50.expect("lags recorded"),
        lag_p99: s.bus.lag_p99.expect("lags recorded"),
    }
}

/// Deletes the streams this run left on the servers (pub/sub leaves nothing).
async fn clean_up() {
    let redis = redis::Client::open(REDIS_URL).unwrap();
    let mut redis = redis.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("warmpool-bench-*")
        .query_async(&mut redis)
        .await
        .unwrap();
    for key in keys {
        let _: i64 = redis::cmd("DEL").arg(key).query_async(&mut redis).await.unwrap();
    }
    let jetstream = async_nats::jetstream::new(async_nats::connect(NATS_URL).await.unwrap());
    let mut names = jetstream.stream_names();
    let mut ours = Vec::new();
    while let Some(Ok(name)) = futures::StreamExt::next(&mut names).await {
        if name.starts_with("WARMPOOL_BENCH_") {
            ours.push(name);
        }
    }
    for name in ours {
        let _ = jetstream.delete_stream(&name).await;
    }
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn fmt_us(us: f64) -> String {
    if us >= 1_000.0 {
        format!("{:.2} ms", us / 1_000.0)
    } else {
        format!("{us:.0} us")
    }
}

/// The load average when the run started.
static LOAD_BEFORE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn main() {
    LOAD_BEFORE.get_or_init(|| std::fs::read_to_string("/proc/loadavg").unwrap_or_default());
    let quick = std::env::var("WARMPOOL_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let (burst, steady) = if quick { (2_000, 500) } else { (10_000, 2_000) };
    let rt: Runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let kinds = [
        Kind::Local,
        Kind::Redis,
        Kind::RedisStreams,
        Kind::Nats,
        Kind::JetStream,
    ];
    let mut results: Vec<Vec<Round>> = kinds.iter().map(|_| Vec::new()).collect();
    rt.block_on(async {
        for r in 0..ROUNDS {
            // Rotate who goes first, so drift in machine load is shared.
            for j in 0..kinds.len() {
                let k = (r + j) % kinds.len();
                results[k].push(round(kinds[k], burst, steady).await);
            }
        }
        clean_up().await;
    });

    println!("# warmpool event-bus benchmark\n");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "Load average before/after the run: {} / {}\n",
        LOAD_BEFORE.get().map_or("?", |s| s.trim()),
        load.trim()
    );
    println!(
        "{ROUNDS} rounds, transports interleaved; a fresh pool of {KEYS} keys per phase. Burst: {burst} key \
         invalidations published back to back by one publisher (each publish awaited: a Redis `PUBLISH` or `XADD` \
         round trip, a NATS publish + flush, a JetStream publish + ack), timed until the pool applied the last. Lag: {steady} messages at 2,000/s; \
         p50/p99 from the pool's lag histogram (bucket upper bounds, within 25%). Median [min-max] over rounds.\n"
    );
    println!("| transport | burst: applied/s | lag p50 | lag p99 | burst rate / embedded | lag p50 / embedded |");
    println!("|---|---|---|---|---|---|");
    for (k, kind) in kinds.iter().enumerate() {
        let rate = median(results[k].iter().map(|r| r.burst_per_sec).collect());
        let p50 = median(results[k].iter().map(|r| r.lag_p50.as_micros() as f64).collect());
        let p99 = median(results[k].iter().map(|r| r.lag_p99.as_micros() as f64).collect());
        let rate_ratio = median(
            (0..ROUNDS)
                .map(|r| results[k][r].burst_per_sec / results[0][r].burst_per_sec)
                .collect(),
        );
        let lag_ratio = median(
            (0..ROUNDS)
                .map(|r| results[k][r].lag_p50.as_secs_f64() / results[0][r].lag_p50.as_secs_f64())
                .collect(),
        );
        println!(
            "| {} | {:.0} k [{:.0} k-{:.0} k] | {} [{}-{}] | {} [{}-{}] | {:.2}x [{:.2}x-{:.2}x] | {:.1}x [{:.1}x-{:.1}x] |",
            kind.name(),
            rate.0 / 1e3,
            rate.1 / 1e3,
            rate.2 / 1e3,
            fmt_us(p50.0),
            fmt_us(p50.1),
            fmt_us(p50.2),
            fmt_us(p99.0),
            fmt_us(p99.1),
            fmt_us(p99.2),
            rate_ratio.0,
            rate_ratio.1,
            rate_ratio.2,
            lag_ratio.0,
            lag_ratio.1,
            lag_ratio.2,
        );
    }
}
