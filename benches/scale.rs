//! Scale harness: prints Markdown tables of hit-latency distributions,
//! cold-key storms, 100,000 resident keys, and rotation under load; writes
//! `benches/hit_latency.svg` (full runs only).
//!
//! `cargo bench --bench scale` (about 3-4 minutes on 2 cores);
//! `WARMPOOL_BENCH_QUICK=1 cargo bench --bench scale` for a short run;
//! `WARMPOOL_BENCH_ONLY=hits,storms,memory,resident,rotation` (any subset)
//! runs only those sections (the chart is written by full runs only).
//!
//! Everything runs on one tokio multi-thread runtime with 2 workers; callers
//! are tasks on it. Memory per entry is measured in child processes (this
//! same binary re-run with `WARMPOOL_BENCH_CHILD` set), so that one
//! measurement's freed memory cannot hide the next one's growth.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorRef};
use warmpool::{CredentialsHash, Pool};

#[path = "common/floor.rs"]
mod floor;
use floor::{Idle, RouterMsg, spawn_floor};

// ---------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------

#[derive(Clone)]
struct Plan {
    quick: bool,
    /// Measured rounds per hit configuration (systems interleaved per round).
    hit_rounds: usize,
    hit_ops_one: usize,
    hit_ops_per_caller_64: usize,
    storm_rounds: usize,
    resident: usize,
    rss_runs: usize,
    tick_rounds: usize,
    prefix_rounds: usize,
    sweep_interval: Duration,
    quiet_window: Duration,
    rotation_passes: usize,
}

impl Plan {
    fn new() -> Plan {
        let quick = std::env::var("WARMPOOL_BENCH_QUICK").is_ok_and(|v| v != "0" && !v.is_empty());
        if quick {
            Plan {
                quick,
                hit_rounds: 2,
                hit_ops_one: 20_000,
                hit_ops_per_caller_64: 500,
                storm_rounds: 1,
                resident: 100_000,
                rss_runs: 1,
                tick_rounds: 2,
                prefix_rounds: 2,
                sweep_interval: Duration::from_millis(500),
                quiet_window: Duration::from_millis(150),
                rotation_passes: 1,
            }
        } else {
            Plan {
                quick,
                hit_rounds: 5,
                hit_ops_one: 200_000,
                hit_ops_per_caller_64: 5_000,
                storm_rounds: 3,
                resident: 100_000,
                rss_runs: 3,
                tick_rounds: 6,
                prefix_rounds: 6,
                sweep_interval: Duration::from_millis(1_000),
                quiet_window: Duration::from_millis(400),
                rotation_passes: 3,
            }
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------
// Small statistics helpers
// ---------------------------------------------------------------------------

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// "median [min-max]" of several runs, or the single value.
fn mmm(values: &[f64], fmt: fn(f64) -> String) -> String {
    if values.len() == 1 {
        return fmt(values[0]);
    }
    let min = values.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = values.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    format!("{} [{}-{}]", fmt(median(values)), fmt(min), fmt(max))
}

fn ns(v: f64) -> String {
    if v >= 1e9 {
        format!("{:.2} s", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.2} ms", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1} us", v / 1e3)
    } else if v >= 1e3 {
        format!("{:.2} us", v / 1e3)
    } else {
        format!("{v:.0} ns")
    }
}

fn ops(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0} k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn ratio(v: f64) -> String {
    format!("{v:.2}x")
}

fn bytes(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1} MB", v / 1e6)
    } else {
        format!("{:.0} B", v)
    }
}

fn int(v: f64) -> String {
    format!("{v:.0}")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Resident set size of this process, from /proc/self/statm (page size 4096).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Nanoseconds since the harness started: timestamps comparable across tasks.
fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

// ---------------------------------------------------------------------------
// Pooled instances
// ---------------------------------------------------------------------------

/// What the pool holds in these benchmarks: small, so the pool's own cost is
/// what is measured. `serial` is unique per build.
#[derive(Debug)]
struct Inst {
    key: u32,
    hash: CredentialsHash,
    serial: u64,
}

const HASH: CredentialsHash = CredentialsHash::from_u64(0x5eed);

async fn ready() -> Result<Inst, std::io::Error> {
    Ok(Inst {
        key: 0,
        hash: HASH,
        serial: 0,
    })
}

/// Counts builds and disposals per build serial, with dispose timestamps.
struct Ledger {
    next_serial: AtomicU64,
    disposed: AtomicU64,
    per_serial: Vec<AtomicU8>,
    overflow: AtomicU64,
    stamps: Mutex<Vec<u64>>,
    stamping: AtomicBool,
}

impl Ledger {
    fn new(capacity: usize) -> Arc<Ledger> {
        Arc::new(Ledger {
            next_serial: AtomicU64::new(0),
            disposed: AtomicU64::new(0),
            per_serial: (0..capacity).map(|_| AtomicU8::new(0)).collect(),
            overflow: AtomicU64::new(0),
            stamps: Mutex::new(Vec::new()),
            stamping: AtomicBool::new(false),
        })
    }

    fn serial(&self) -> u64 {
        self.next_serial.fetch_add(1, SeqCst)
    }

    fn on_dispose(&self, inst: &Inst) {
        match self.per_serial.get(inst.serial as usize) {
            Some(c) => {
                c.fetch_add(1, SeqCst);
            }
            None => {
                self.overflow.fetch_add(1, SeqCst);
            }
        }
        if self.stamping.load(Relaxed) {
            self.stamps.lock().unwrap().push(now_ns());
        }
        self.disposed.fetch_add(1, SeqCst);
    }

    fn take_stamps(&self) -> Vec<u64> {
        std::mem::take(&mut *self.stamps.lock().unwrap())
    }

    /// (built, disposed exactly once, never disposed, disposed more than once)
    fn audit(&self) -> (u64, u64, u64, u64) {
        let built = self.next_serial.load(SeqCst);
        let (mut once, mut never, mut twice) = (0, 0, 0);
        for c in self.per_serial.iter().take(built as usize) {
            match c.load(SeqCst) {
                0 => never += 1,
                1 => once += 1,
                _ => twice += 1,
            }
        }
        (built, once, never, twice + self.overflow.load(SeqCst))
    }
}

fn counting_pool(ledger: &Arc<Ledger>) -> warmpool::PoolBuilder<Inst> {
    let ledger = ledger.clone();
    Pool::builder().on_dispose(move |_key, inst: Inst| {
        ledger.on_dispose(&inst);
        async {}
    })
}

/// A factory that builds an `Inst` for `key`/`hash` after `delay`, with a
/// fresh serial from `ledger`.
fn factory(
    ledger: &Arc<Ledger>,
    key: u32,
    hash: CredentialsHash,
    delay: Duration,
) -> impl Fn() -> futures::future::BoxFuture<'static, Result<Inst, std::io::Error>> + Send + Sync + 'static {
    let ledger = ledger.clone();
    move || {
        let serial = ledger.serial();
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok(Inst { key, hash, serial })
        })
    }
}

fn tenant_key(tenant: usize, k: usize) -> String {
    format!("t{tenant:02}:{k:04}")
}

// ---------------------------------------------------------------------------
// 1. Hit latency distributions
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Sys {
    Pool,
    Floor,
    Moka,
    Quick,
    Lru,
}

impl Sys {
    const ALL: [Sys; 5] = [Sys::Pool, Sys::Floor, Sys::Moka, Sys::Quick, Sys::Lru];

    fn name(self) -> &'static str {
        match self {
            Sys::Pool => "warmpool `get_or_create`",
            Sys::Floor => "floor: ractor two-hop round trip",
            Sys::Moka => "moka `get_with`",
            Sys::Quick => "quick_cache sync `get`",
            Sys::Lru => "`Mutex<LruCache>` get",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Sys::Pool => "warmpool",
            Sys::Floor => "floor (ractor 2-hop)",
            Sys::Moka => "moka get_with",
            Sys::Quick => "quick_cache get",
            Sys::Lru => "Mutex<LruCache>",
        }
    }
}

#[derive(Clone)]
struct Targets {
    keys: Arc<Vec<String>>,
    arc_keys: Arc<Vec<Arc<str>>>,
    order: Arc<Vec<u16>>,
    pool: Pool<Inst>,
    router: ActorRef<RouterMsg>,
    moka: moka::future::Cache<Arc<str>, Arc<Inst>>,
    quick: Arc<quick_cache::sync::Cache<Arc<str>, Arc<Inst>>>,
    lru: Arc<Mutex<lru::LruCache<Arc<str>, Arc<Inst>>>>,
}

impl Targets {
    /// One hit on key number `i`.
    async fn hit(&self, sys: Sys, i: usize) {
        match sys {
            Sys::Pool => {
                let lease = self.pool.get_or_create(&self.keys[i], HASH, ready).await.unwrap();
                std::hint::black_box(&lease);
            }
            Sys::Floor => match self.router.call(|reply| RouterMsg::Get(i, reply), None).await {
                Ok(ractor::rpc::CallResult::Success(v)) => {
                    std::hint::black_box(&v);
                }
                _ => panic!("floor call failed"),
            },
            Sys::Moka => {
                let v = self
                    .moka
                    .get_with(self.arc_keys[i].clone(), async { unreachable!("warm") })
                    .await;
                std::hint::black_box(&v);
            }
            Sys::Quick => {
                let v = self.quick.get(&self.arc_keys[i]);
                std::hint::black_box(&v.expect("warm"));
            }
            Sys::Lru => {
                let v = self.lru.lock().unwrap().get(&*self.arc_keys[i]).cloned();
                std::hint::black_box(&v.expect("warm"));
            }
        }
    }
}

/// `callers` tasks doing `per_caller` hits each; returns (wall time, per-op latencies in ns).
async fn hit_run(t: &Targets, sys: Sys, callers: usize, per_caller: usize) -> (Duration, Vec<u64>) {
    let gate = Arc::new(tokio::sync::Barrier::new(callers + 1));
    let mut tasks = Vec::with_capacity(callers);
    for c in 0..callers {
        let t = t.clone();
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_caller);
            let order = t.order.clone();
            let mut pos = (c * 7919) % order.len();
            gate.wait().await;
            let first = Instant::now();
            for _ in 0..per_caller {
                let i = order[pos] as usize;
                pos = (pos + 1) % order.len();
                let start = Instant::now();
                t.hit(sys, i).await;
                lat.push(start.elapsed().as_nanos() as u64);
            }
            (first, Instant::now(), lat)
        }));
    }
    gate.wait().await;
    let mut all = Vec::with_capacity(callers * per_caller);
    let (mut first, mut last) = (None::<Instant>, None::<Instant>);
    for task in tasks {
        let (a, b, lat) = task.await.unwrap();
        first = Some(first.map_or(a, |f| f.min(a)));
        last = Some(last.map_or(b, |l| l.max(b)));
        all.extend(lat);
    }
    (last.unwrap() - first.unwrap(), all)
}

struct HitFigures {
    /// Per run: ns/op (wall / ops), ops/s, p50, p99, p99.9.
    runs: Vec<[f64; 5]>,
    /// Every latency of every run, sorted (for the chart).
    all: Vec<u64>,
}

async fn section_hits(plan: &Plan) -> HashMap<(usize, Sys), HitFigures> {
    const KEYS: usize = 1_000;
    let keys: Vec<String> = (0..KEYS).map(|i| format!("tenant{i:04}:openai")).collect();
    let arc_keys: Vec<Arc<str>> = keys.iter().map(|k| Arc::from(k.as_str())).collect();
    let mut rng = fastrand::Rng::with_seed(42);
    let order: Vec<u16> = (0..65_536).map(|_| rng.u16(0..KEYS as u16)).collect();

    let pool: Pool<Inst> = Pool::builder().max_entries(10_000).spawn().await.unwrap();
    for k in &keys {
        drop(pool.get_or_create(k, HASH, ready).await.unwrap());
    }
    let (router, _holders) = spawn_floor(KEYS).await;
    let moka = moka::future::Cache::new(10_000);
    let lru = Arc::new(Mutex::new(lru::LruCache::new(NonZeroUsize::new(10_000).unwrap())));
    let quick = Arc::new(quick_cache::sync::Cache::new(10_000));
    for k in &arc_keys {
        let inst = Arc::new(Inst {
            key: 0,
            hash: HASH,
            serial: 0,
        });
        moka.insert(k.clone(), inst.clone()).await;
        quick.insert(k.clone(), inst.clone());
        lru.lock().unwrap().put(k.clone(), inst);
    }
    let t = Targets {
        keys: Arc::new(keys),
        arc_keys: Arc::new(arc_keys),
        order: Arc::new(order),
        pool: pool.clone(),
        router,
        moka,
        quick,
        lru,
    };

    // Warm-up: every system, a little, both caller counts.
    for sys in Sys::ALL {
        hit_run(&t, sys, 1, 5_000).await;
        hit_run(&t, sys, 64, 100).await;
    }

    let mut figures: HashMap<(usize, Sys), HitFigures> = HashMap::new();
    for callers in [1usize, 2, 8, 64] {
        let per_caller = if callers == 1 {
            plan.hit_ops_one
        } else {
            plan.hit_ops_per_caller_64 * 64 / callers
        };
        for round in 0..plan.hit_rounds {
            // Interleave the systems, rotating who goes first, so drifting
            // machine load hits all of them alike.
            for j in 0..Sys::ALL.len() {
                let sys = Sys::ALL[(j + round) % Sys::ALL.len()];
                let (wall, mut lat) = hit_run(&t, sys, callers, per_caller).await;
                lat.sort_unstable();
                let n = lat.len() as f64;
                let nsop = wall.as_nanos() as f64 / n;
                let row = [
                    nsop,
                    n / wall.as_secs_f64(),
                    percentile(&lat, 50.0) as f64,
                    percentile(&lat, 99.0) as f64,
                    percentile(&lat, 99.9) as f64,
                ];
                let f = figures.entry((callers, sys)).or_insert_with(|| HitFigures {
                    runs: Vec::new(),
                    all: Vec::new(),
                });
                f.runs.push(row);
                f.all.extend(lat);
            }
        }
    }
    for f in figures.values_mut() {
        f.all.sort_unstable();
    }

    let s = pool.stats().await.unwrap();
    pool.shutdown(Duration::from_secs(30)).await.unwrap();

    println!("## 1. Hit latency: warmpool against the floor, moka and a mutexed LRU\n");
    println!(
        "1,000 warm keys, keys drawn from a fixed pseudo-random sequence; each caller is a task on a 2-worker \
         tokio runtime and times every call with `Instant`. {} runs per row, systems interleaved; \
         each cell is median [min-max] over the runs. ns/op = wall time / ops (for 64 callers: the inverse \
         of throughput); p50/p99/p99.9 = per-call latency.\n",
        plan.hit_rounds
    );
    for callers in [1usize, 2, 8, 64] {
        let per = if callers == 1 {
            plan.hit_ops_one
        } else {
            plan.hit_ops_per_caller_64 * 64
        };
        println!(
            "### {callers} caller{} ({per} hits per run)\n",
            if callers == 1 { "" } else { "s" }
        );
        println!("| system | ns/op | ops/s | p50 | p99 | p99.9 |");
        println!("|---|---|---|---|---|---|");
        for sys in Sys::ALL {
            let f = &figures[&(callers, sys)];
            let col = |i: usize| f.runs.iter().map(|r| r[i]).collect::<Vec<_>>();
            println!(
                "| {} | {} | {} | {} | {} | {} |",
                sys.name(),
                mmm(&col(0), ns),
                mmm(&col(1), ops),
                mmm(&col(2), ns),
                mmm(&col(3), ns),
                mmm(&col(4), ns)
            );
        }
        println!();
        println!("| ratio (per run, same round) | ns/op | p50 | p99 |");
        println!("|---|---|---|---|");
        for other in [Sys::Floor, Sys::Moka, Sys::Quick] {
            let p = &figures[&(callers, Sys::Pool)].runs;
            let o = &figures[&(callers, other)].runs;
            let r = |i: usize| p.iter().zip(o).map(|(a, b)| a[i] / b[i]).collect::<Vec<_>>();
            println!(
                "| warmpool / {} | {} | {} | {} |",
                other.short(),
                mmm(&r(0), ratio),
                mmm(&r(2), ratio),
                mmm(&r(3), ratio)
            );
        }
        println!();
    }
    println!(
        "Pool counters after the runs: {} hits, {} misses, {} builds (the 1,000 warm-up builds).\n",
        s.hits, s.misses, s.builds
    );
    figures
}

// ---------------------------------------------------------------------------
// 2. Cold-key storms
// ---------------------------------------------------------------------------

const FACTORY_DELAY: Duration = Duration::from_millis(10);

/// `callers` concurrent callers on each of `keys` cold keys, 10 ms factory.
/// Returns (factory calls, time until all served, distinct instances per key ok).
async fn pool_storm(keys: usize, callers: usize) -> (u64, Duration, bool) {
    let ledger = Ledger::new(keys * 2 + 16);
    let pool = counting_pool(&ledger)
        .max_entries(100_000)
        .sweep_interval(Duration::ZERO)
        .spawn()
        .await
        .unwrap();
    let names: Vec<String> = (0..keys).map(|k| format!("cold{k:05}")).collect();
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(keys * callers);
    for (k, name) in names.iter().enumerate() {
        for _ in 0..callers {
            let pool = pool.clone();
            let name = name.clone();
            let f = factory(&ledger, k as u32, HASH, FACTORY_DELAY);
            tasks.push(tokio::spawn(async move {
                let lease = pool.get_or_create(&name, HASH, f).await.unwrap();
                (lease.key, lease.serial)
            }));
        }
    }
    let mut served: HashMap<u32, u64> = HashMap::new();
    let mut consistent = true;
    for task in tasks {
        let (key, serial) = task.await.unwrap();
        if *served.entry(key).or_insert(serial) != serial {
            consistent = false;
        }
    }
    let elapsed = start.elapsed();
    let builds = ledger.next_serial.load(SeqCst);
    pool.shutdown(Duration::from_secs(30)).await.unwrap();
    (builds, elapsed, consistent && served.len() == keys)
}

async fn moka_storm(keys: usize, callers: usize) -> (u64, Duration) {
    let cache: moka::future::Cache<u32, Arc<u64>> = moka::future::Cache::new(100_000);
    let inits = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(keys * callers);
    for k in 0..keys as u32 {
        for _ in 0..callers {
            let cache = cache.clone();
            let inits = inits.clone();
            tasks.push(tokio::spawn(async move {
                cache
                    .get_with(k, async move {
                        inits.fetch_add(1, SeqCst);
                        tokio::time::sleep(FACTORY_DELAY).await;
                        Arc::new(u64::from(k))
                    })
                    .await
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    (inits.load(SeqCst), start.elapsed())
}

async fn section_storms(plan: &Plan) {
    println!("## 2. Cold-key storms (factory takes 10 ms)\n");
    println!(
        "All callers are spawned at once; time runs from the first spawn until every caller holds its \
         lease. {} run(s) per row: median [min-max]. \"one instance per key\" checks that every caller \
         of a key got the same instance. moka's `get_with` (which also coalesces) on the same storms \
         for comparison.\n",
        plan.storm_rounds
    );
    println!(
        "| storm | warmpool factory calls | warmpool time until all served | one instance per key | moka init calls | moka time |"
    );
    println!("|---|---|---|---|---|---|");
    for (keys, callers) in [(1usize, 1_000usize), (1, 10_000), (1_000, 10)] {
        let mut calls = Vec::new();
        let mut times = Vec::new();
        let mut ok = true;
        let mut mcalls = Vec::new();
        let mut mtimes = Vec::new();
        for _ in 0..plan.storm_rounds {
            let (b, t, c) = pool_storm(keys, callers).await;
            calls.push(b as f64);
            times.push(ms(t) * 1e6);
            ok &= c;
            let (b, t) = moka_storm(keys, callers).await;
            mcalls.push(b as f64);
            mtimes.push(ms(t) * 1e6);
        }
        let label = if keys == 1 {
            format!("{callers} callers on 1 cold key")
        } else {
            format!("{keys} cold keys x {callers} callers")
        };
        println!(
            "| {label} | {} (must be {keys}) | {} | {} | {} | {} |",
            mmm(&calls, int),
            mmm(&times, ns),
            if ok { "yes" } else { "**NO**" },
            mmm(&mcalls, int),
            mmm(&mtimes, ns)
        );
    }
    println!();
}

// ---------------------------------------------------------------------------
// 3a. Memory per entry (child processes)
// ---------------------------------------------------------------------------

fn child(mode: &str) {
    let n: usize = std::env::var("WARMPOOL_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let rt = runtime();
    rt.block_on(async move {
        // Let the runtime's threads and the allocator settle first.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let before = rss_bytes();
        let keep: Box<dyn std::any::Any + Send> = match mode {
            "rss-pool" => {
                let pool: Pool<Inst> = Pool::builder()
                    .max_entries(n * 2)
                    .sweep_interval(Duration::ZERO)
                    .spawn()
                    .await
                    .unwrap();
                fill(&pool, &Ledger::new(0), n, 64).await;
                let s = pool.stats().await.unwrap();
                assert_eq!(s.size, n);
                Box::new(pool)
            }
            "rss-actors" => {
                let mut actors = Vec::with_capacity(n);
                for _ in 0..n {
                    let (a, _) = Actor::spawn(None, Idle, ()).await.unwrap();
                    actors.push(a);
                }
                Box::new(actors)
            }
            "rss-moka" => {
                let cache: moka::future::Cache<Arc<str>, Arc<Inst>> = moka::future::Cache::new(n as u64 * 2);
                for i in 0..n {
                    let key: Arc<str> = Arc::from(tenant_key(i / 1000, i % 1000).as_str());
                    cache
                        .insert(
                            key,
                            Arc::new(Inst {
                                key: 0,
                                hash: HASH,
                                serial: 0,
                            }),
                        )
                        .await;
                }
                cache.run_pending_tasks().await;
                Box::new(cache)
            }
            other => panic!("unknown child mode {other}"),
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = rss_bytes();
        println!("rss_before={before} rss_after={after} n={n}");
        drop(keep);
    });
    std::process::exit(0);
}

fn run_child(mode: &str, n: usize) -> f64 {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .env("WARMPOOL_BENCH_CHILD", mode)
        .env("WARMPOOL_BENCH_N", n.to_string())
        .output()
        .expect("run child");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("rss_before="))
        .unwrap_or_else(|| panic!("child {mode} failed: {text} {}", String::from_utf8_lossy(&out.stderr)));
    let field = |name: &str| -> f64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    (field("rss_after=") - field("rss_before=")) / n as f64
}

fn section_memory(plan: &Plan) {
    let n = plan.resident;
    let mut pool = Vec::new();
    let mut actors = Vec::new();
    let mut moka = Vec::new();
    for _ in 0..plan.rss_runs {
        pool.push(run_child("rss-pool", n));
        actors.push(run_child("rss-actors", n));
        moka.push(run_child("rss-moka", n));
    }
    let ratios: Vec<f64> = pool.iter().zip(&actors).map(|(p, a)| p / a).collect();
    println!("## 3. 100,000 resident keys\n");
    println!("### Memory per entry\n");
    println!(
        "RSS growth (/proc/self/statm, 4 KiB pages) divided by {n}, each measured in a fresh child process; \
         {} run(s): median [min-max]. A pool entry is its key actor plus the supervisor's indexes, the \
         instance wrapper and the disposer's record; the bare actor is `Actor::spawn` of a stateless actor.\n",
        plan.rss_runs
    );
    println!("| what | bytes per entry |");
    println!("|---|---|");
    println!("| warmpool idle entry (key actor + indexes) | {} |", mmm(&pool, bytes));
    println!("| bare idle ractor actor | {} |", mmm(&actors, bytes));
    println!("| moka entry (for scale) | {} |", mmm(&moka, bytes));
    println!("| **ratio warmpool / bare actor** | {} |", mmm(&ratios, ratio));
    println!();
}

/// Fills `pool` with `n` keys `t00:0000`.. using `concurrency` tasks.
async fn fill(pool: &Pool<Inst>, ledger: &Arc<Ledger>, n: usize, concurrency: usize) {
    let mut tasks = Vec::new();
    for c in 0..concurrency {
        let pool = pool.clone();
        let ledger = ledger.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = c;
            while i < n {
                let key = tenant_key(i / 1000, i % 1000);
                let f = factory(&ledger, i as u32, HASH, Duration::ZERO);
                drop(pool.get_or_create(&key, HASH, f).await.unwrap());
                i += concurrency;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

// ---------------------------------------------------------------------------
// 3b. Sweep, prefix invalidation and shutdown at 100,000 keys
// ---------------------------------------------------------------------------

/// One caller hitting random keys of tenants 50..99 for `span`; returns
/// (start time in `now_ns`, latency in ns) per call.
async fn probe(pool: Pool<Inst>, span: Duration, seed: u64) -> Vec<(u64, u64)> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let keys: Vec<String> = (0..65_536)
        .map(|_| tenant_key(rng.usize(50..100), rng.usize(0..1000)))
        .collect();
    let mut out = Vec::with_capacity(200_000);
    let end = Instant::now() + span;
    let mut i = 0;
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        let start = now_ns();
        let lease = pool.get_or_create(&keys[i % keys.len()], HASH, ready).await.unwrap();
        drop(lease);
        out.push((start, t0.elapsed().as_nanos() as u64));
        i += 1;
    }
    out
}

/// The floor's counterpart of `probe`: the same key choice, over one holder
/// actor per key; returns latencies in ns.
async fn probe_floor(router: ActorRef<RouterMsg>, span: Duration, seed: u64) -> Vec<u64> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let keys: Vec<usize> = (0..65_536)
        .map(|_| rng.usize(50..100) * 1000 + rng.usize(0..1000))
        .collect();
    let mut out = Vec::with_capacity(200_000);
    let end = Instant::now() + span;
    let mut i = 0;
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        let k = keys[i % keys.len()];
        match router.call(|reply| RouterMsg::Get(k, reply), None).await {
            Ok(ractor::rpc::CallResult::Success(v)) => drop(std::hint::black_box(v)),
            _ => panic!("floor call failed"),
        }
        out.push(t0.elapsed().as_nanos() as u64);
        i += 1;
    }
    out
}

/// Groups dispose timestamps into bursts separated by more than 50 ms.
fn bursts(mut stamps: Vec<u64>) -> Vec<(u64, u64, usize)> {
    stamps.sort_unstable();
    let mut out: Vec<(u64, u64, usize)> = Vec::new();
    for s in stamps {
        match out.last_mut() {
            Some(last) if s - last.1 <= 50_000_000 => {
                last.1 = s;
                last.2 += 1;
            }
            _ => out.push((s, s, 1)),
        }
    }
    out
}

struct Disturbance {
    name: &'static str,
    quiet: Vec<u64>,
    during: Vec<u64>,
    /// Per round: how long the disturbance lasted, in ns.
    spans: Vec<f64>,
    /// Per round: how many instances it retired.
    retired: Vec<f64>,
    /// Per round: the p99 of the calls overlapping it, and the quiet p99 before it.
    round_ratio: Vec<f64>,
}

fn p99_of(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    percentile(v, 99.0)
}

async fn section_resident(plan: &Plan) {
    let n = plan.resident;
    let capacity = n + 4 * 1000 * (plan.tick_rounds + plan.prefix_rounds) + 16;
    let ledger = Ledger::new(capacity);
    let pool = counting_pool(&ledger)
        .max_entries(n * 10)
        .time_to_live(Duration::ZERO)
        .sweep_interval(plan.sweep_interval)
        .dispose_timeout(Duration::from_secs(60))
        .spawn()
        .await
        .unwrap();

    let t = Instant::now();
    fill(&pool, &ledger, n, 64).await;
    let fill_time = t.elapsed();
    let t = Instant::now();
    let s = pool.stats().await.unwrap();
    let stats_time = t.elapsed();
    assert_eq!(s.size, n);

    // Hits at this scale, against the floor with one holder actor per key.
    let (router, holders) = spawn_floor(n).await;
    probe(pool.clone(), Duration::from_millis(200), 1).await;
    probe_floor(router.clone(), Duration::from_millis(200), 1).await;
    let (mut pool_rows, mut floor_rows, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..plan.tick_rounds.max(3) {
        let mut p: Vec<u64> = probe(pool.clone(), plan.quiet_window, 500 + round as u64)
            .await
            .into_iter()
            .map(|(_, l)| l)
            .collect();
        let mut f = probe_floor(router.clone(), plan.quiet_window, 500 + round as u64).await;
        p.sort_unstable();
        f.sort_unstable();
        let row = |v: &[u64]| [percentile(v, 50.0) as f64, percentile(v, 99.0) as f64];
        let (pr, fr) = (row(&p), row(&f));
        ratios.push([pr[0] / fr[0], pr[1] / fr[1]]);
        pool_rows.push(pr);
        floor_rows.push(fr);
    }
    router.stop(None);
    for h in holders {
        h.stop(None);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Sweep ticks: 1,000 keys (1%) get a 1 ms TTL; the next tick retires them.
    let mut tick = Disturbance {
        name: "sweep tick retiring 1,000 TTL keys (1%)",
        quiet: Vec::new(),
        during: Vec::new(),
        spans: Vec::new(),
        retired: Vec::new(),
        round_ratio: Vec::new(),
    };
    let mut split_ticks = 0;
    for round in 0..plan.tick_rounds {
        let mut quiet: Vec<u64> = probe(pool.clone(), plan.quiet_window, 10 + round as u64)
            .await
            .into_iter()
            .map(|(_, l)| l)
            .collect();
        let before = ledger.disposed.load(SeqCst);
        ledger.stamping.store(true, SeqCst);
        let mut creators = Vec::new();
        for c in 0..8 {
            let pool = pool.clone();
            let ledger = ledger.clone();
            creators.push(tokio::spawn(async move {
                for i in (c..1000).step_by(8) {
                    let key = format!("ttl{round:02}:{i:04}");
                    let f = factory(&ledger, i as u32, HASH, Duration::ZERO);
                    let lease = pool
                        .get_or_create_with_ttl(&key, HASH, Duration::from_millis(1), f)
                        .await
                        .unwrap();
                    drop(lease);
                }
            }));
        }
        for c in creators {
            c.await.unwrap();
        }
        // Probe across at least one full tick after every TTL has passed.
        let samples = probe(
            pool.clone(),
            plan.sweep_interval + Duration::from_millis(250),
            100 + round as u64,
        )
        .await;
        // Wait until all 1,000 are disposed (the tick may come late).
        let deadline = Instant::now() + plan.sweep_interval * 3;
        while ledger.disposed.load(SeqCst) < before + 1000 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        ledger.stamping.store(false, SeqCst);
        let b = bursts(ledger.take_stamps());
        if b.len() > 1 {
            split_ticks += 1;
        }
        let mut during = Vec::new();
        for &(first, last, _) in &b {
            // The tick starts just before its first disposal: allow 2 ms.
            let (lo, hi) = (first.saturating_sub(2_000_000), last + 1_000_000);
            during.extend(
                samples
                    .iter()
                    .filter(|(s, l)| *s + *l >= lo && *s <= hi)
                    .map(|(_, l)| *l),
            );
            tick.spans.push((last - first) as f64);
        }
        tick.retired.push((ledger.disposed.load(SeqCst) - before) as f64);
        let qp = p99_of(&mut quiet) as f64;
        let dp = p99_of(&mut during.clone()) as f64;
        if !during.is_empty() {
            tick.round_ratio.push(dp / qp);
        }
        tick.quiet.extend(quiet);
        tick.during.extend(during);
    }

    // Prefix invalidations: one tenant of 100 (1,000 keys), then refill it.
    let mut prefix = Disturbance {
        name: "`invalidate_by_prefix` retiring 1,000 of 100,000",
        quiet: Vec::new(),
        during: Vec::new(),
        spans: Vec::new(),
        retired: Vec::new(),
        round_ratio: Vec::new(),
    };
    let mut call_times = Vec::new();
    let mut matched_ok = true;
    for round in 0..plan.prefix_rounds {
        let mut quiet: Vec<u64> = probe(pool.clone(), plan.quiet_window, 200 + round as u64)
            .await
            .into_iter()
            .map(|(_, l)| l)
            .collect();
        let before = ledger.disposed.load(SeqCst);
        ledger.stamping.store(true, SeqCst);
        let prober = tokio::spawn(probe(pool.clone(), Duration::from_millis(400), 300 + round as u64));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t0 = now_ns();
        let start = Instant::now();
        let matched = pool.invalidate_by_prefix(&format!("t{round:02}:")).await.unwrap();
        let took = start.elapsed();
        let t1 = now_ns();
        matched_ok &= matched == 1000;
        call_times.push(ms(took) * 1e6);
        let samples = prober.await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while ledger.disposed.load(SeqCst) < before + 1000 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        ledger.stamping.store(false, SeqCst);
        let stamps = ledger.take_stamps();
        let last = stamps.iter().copied().max().unwrap_or(t1).max(t1);
        prefix.spans.push((last - t0) as f64);
        prefix.retired.push((ledger.disposed.load(SeqCst) - before) as f64);
        let during: Vec<u64> = samples
            .iter()
            .filter(|(s, l)| *s + *l >= t0 && *s <= last)
            .map(|(_, l)| *l)
            .collect();
        let qp = p99_of(&mut quiet) as f64;
        let dp = p99_of(&mut during.clone()) as f64;
        if !during.is_empty() {
            prefix.round_ratio.push(dp / qp);
        }
        prefix.quiet.extend(quiet);
        prefix.during.extend(during);
        // Refill the tenant so the pool is back at 100,000 keys.
        let mut refill = Vec::new();
        for c in 0..8 {
            let pool = pool.clone();
            let ledger = ledger.clone();
            refill.push(tokio::spawn(async move {
                for k in (c..1000).step_by(8) {
                    let f = factory(&ledger, k as u32, HASH, Duration::ZERO);
                    drop(pool.get_or_create(&tenant_key(round, k), HASH, f).await.unwrap());
                }
            }));
        }
        for r in refill {
            r.await.unwrap();
        }
    }

    // Shutdown with every dispose counted.
    let s = pool.stats().await.unwrap();
    let resident = s.size;
    let before = ledger.disposed.load(SeqCst);
    let start = Instant::now();
    let report = pool.shutdown(Duration::from_secs(120)).await.unwrap();
    let shutdown_time = start.elapsed();
    let during_shutdown = ledger.disposed.load(SeqCst) - before;
    let (built, once, never, twice) = ledger.audit();

    println!("### Hits with {n} resident keys\n");
    println!(
        "One caller, random keys of 50 of the 100 tenants; the floor has one holder actor per key ({n} actors) \
         behind its router. {} interleaved rounds of {} ms each: median [min-max].\n",
        pool_rows.len(),
        plan.quiet_window.as_millis()
    );
    println!("| system | p50 | p99 |");
    println!("|---|---|---|");
    for (name, rows) in [
        ("warmpool", &pool_rows),
        ("floor (ractor 2-hop, 1 actor per key)", &floor_rows),
    ] {
        let c = |i: usize| rows.iter().map(|r| r[i]).collect::<Vec<_>>();
        println!("| {name} | {} | {} |", mmm(&c(0), ns), mmm(&c(1), ns));
    }
    let c = |i: usize| ratios.iter().map(|r| r[i]).collect::<Vec<_>>();
    println!(
        "| ratio warmpool / floor | {} | {} |",
        mmm(&c(0), ratio),
        mmm(&c(1), ratio)
    );
    println!();
    println!("### Sweep, prefix invalidation and hit p99\n");
    println!(
        "One pool of {n} keys (`t00:0000`..`t99:0999`, TTL off, sweep every {} ms), filled by 64 tasks in {} \
         ({} keys/s). `stats()` with {n} keys took {} (the key list is taken in the supervisor's mailbox as `Arc<str>` clones and copied to `String`s on a blocking thread).\n",
        plan.sweep_interval.as_millis(),
        ns(ms(fill_time) * 1e6),
        ops(n as f64 / fill_time.as_secs_f64()),
        ns(ms(stats_time) * 1e6)
    );
    println!(
        "Hit p99 is measured by one caller hitting random keys of the 50 tenants that are never touched. \
         \"during\" = calls that overlap the disturbance (for a sweep tick: from 2 ms before its first \
         disposal to 1 ms after its last; for a prefix invalidation: from the call to the last disposal); \
         \"quiet\" = a {} ms probe just before each round. Sweep rounds: {}, prefix rounds: {}.\n",
        plan.quiet_window.as_millis(),
        plan.tick_rounds,
        plan.prefix_rounds
    );
    println!(
        "| disturbance | retired per round | lasted (first to last disposal) | calls during | quiet p50 / p99 | during p50 / p99 / max | p99 ratio (pooled) | p99 ratio per round |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for d in [&mut tick, &mut prefix] {
        d.quiet.sort_unstable();
        d.during.sort_unstable();
        let qp = percentile(&d.quiet, 99.0) as f64;
        let dp = percentile(&d.during, 99.0) as f64;
        println!(
            "| {} | {} | {} | {} | {} / {} | {} / {} / {} | {} | {} |",
            d.name,
            mmm(&d.retired, int),
            mmm(&d.spans, ns),
            d.during.len(),
            ns(percentile(&d.quiet, 50.0) as f64),
            ns(qp),
            ns(percentile(&d.during, 50.0) as f64),
            ns(dp),
            ns(d.during.last().copied().unwrap_or(0) as f64),
            ratio(dp / qp),
            if d.round_ratio.is_empty() {
                "-".to_string()
            } else {
                mmm(&d.round_ratio, ratio)
            }
        );
    }
    println!();
    println!(
        "`invalidate_by_prefix` call (returns once every matching key is marked; the retirements themselves are paced, 16 per ms): {}; matched 1,000 every \
         time: {}.{}\n",
        mmm(&call_times, ns),
        if matched_ok { "yes" } else { "**NO**" },
        if split_ticks > 0 {
            format!(" ({split_ticks} sweep round(s) were split over two ticks; each tick counted separately.)")
        } else {
            String::new()
        }
    );
    println!("### Shutdown\n");
    println!(
        "| resident | `shutdown()` time | retired (report) | disposed during shutdown | still leased | builds over the pool's life | disposed exactly once | never disposed | disposed twice+ |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {resident} | {} | {} | {} {} | {} | {built} | {once} | {never} | {twice} |",
        ns(ms(shutdown_time) * 1e6),
        report.retired,
        during_shutdown,
        if during_shutdown == resident as u64 {
            "(= resident)"
        } else {
            "(**≠ resident**)"
        },
        report.still_leased.len()
    );
    println!();
}

// ---------------------------------------------------------------------------
// 4. Rotation under load
// ---------------------------------------------------------------------------

fn rot_hash(key: usize, version: u32) -> CredentialsHash {
    CredentialsHash::from_u64(((key as u64) << 32) | u64::from(version))
}

async fn section_rotation(plan: &Plan) {
    const KEYS: usize = 1_000;
    const CALLERS: usize = 64;
    let build_delay = Duration::from_millis(1);
    let ledger = Ledger::new(1_000_000);
    let pool = counting_pool(&ledger).max_entries(10_000).spawn().await.unwrap();
    let names: Arc<Vec<String>> = Arc::new((0..KEYS).map(|k| format!("rot{k:04}")).collect());
    let version: Arc<Vec<AtomicU32>> = Arc::new((0..KEYS).map(|_| AtomicU32::new(0)).collect());
    // (version << 40) | serial of the instance the rotator got for it.
    let rotated: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    for (k, name) in names.iter().enumerate() {
        let f = factory(&ledger, k as u32, rot_hash(k, 0), build_delay);
        let lease = pool.get_or_create(name, rot_hash(k, 0), f).await.unwrap();
        rotated[k].store(lease.serial, SeqCst);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let mismatched = Arc::new(AtomicU64::new(0));
    let stale = Arc::new(AtomicU64::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let mut callers = Vec::new();
    for c in 0..CALLERS {
        let (pool, names, version, rotated, ledger) = (
            pool.clone(),
            names.clone(),
            version.clone(),
            rotated.clone(),
            ledger.clone(),
        );
        let (stop, mismatched, stale, calls) = (stop.clone(), mismatched.clone(), stale.clone(), calls.clone());
        callers.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(c as u64);
            let mut lat = Vec::with_capacity(100_000);
            while !stop.load(Relaxed) {
                let k = rng.usize(0..KEYS);
                let done = rotated[k].load(SeqCst);
                let v = version[k].load(SeqCst);
                let hash = rot_hash(k, v);
                let f = factory(&ledger, k as u32, hash, build_delay);
                let t0 = Instant::now();
                let lease = pool.get_or_create(&names[k], hash, f).await.unwrap();
                lat.push(t0.elapsed().as_nanos() as u64);
                if lease.hash != hash || lease.key != k as u32 {
                    mismatched.fetch_add(1, SeqCst);
                }
                // The rotator finished rotating to `v` before this call began:
                // the instance must be the one it got, or a later one.
                if (done >> 40) as u32 == v && lease.serial < (done & ((1 << 40) - 1)) {
                    stale.fetch_add(1, SeqCst);
                }
                calls.fetch_add(1, Relaxed);
            }
            lat
        }));
    }

    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = Instant::now();
    let mut rotations = 0u64;
    let mut rotator_mismatch = 0u64;
    for _ in 0..plan.rotation_passes {
        for (k, name) in names.iter().enumerate() {
            let v = version[k].fetch_add(1, SeqCst) + 1;
            let hash = rot_hash(k, v);
            let f = factory(&ledger, k as u32, hash, build_delay);
            let lease = pool.get_or_create(name, hash, f).await.unwrap();
            if lease.hash != hash {
                rotator_mismatch += 1;
            }
            rotated[k].store((u64::from(v) << 40) | lease.serial, SeqCst);
            rotations += 1;
        }
    }
    let rotate_time = start.elapsed();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, SeqCst);
    let mut lat = Vec::new();
    for c in callers {
        lat.extend(c.await.unwrap());
    }
    lat.sort_unstable();
    let s = pool.stats().await.unwrap();
    let report = pool.shutdown(Duration::from_secs(60)).await.unwrap();
    let (built, once, never, twice) = ledger.audit();
    let extra = built - KEYS as u64 - rotations;

    println!("## 4. Rotation under load\n");
    println!(
        "{KEYS} keys, each rotated {} time(s) in sequence by one rotator (a call with the new hash; \
         factory takes 1 ms) while {CALLERS} callers hit random keys with the hash current when their call \
         starts. Rotation took {} in all. Every instance's dispose is counted by its build serial after \
         `shutdown()`.\n",
        plan.rotation_passes,
        ns(ms(rotate_time) * 1e6)
    );
    println!("| figure | value |");
    println!("|---|---|");
    println!("| caller calls | {} |", calls.load(SeqCst));
    println!(
        "| caller latency p50 / p99 / max | {} / {} / {} |",
        ns(percentile(&lat, 50.0) as f64),
        ns(percentile(&lat, 99.0) as f64),
        ns(*lat.last().unwrap_or(&0) as f64)
    );
    println!("| rotations | {rotations} |");
    println!(
        "| builds (factory calls) | {built} = {KEYS} initial + {rotations} rotations + {extra} rebuilt for callers still presenting the previous hash |"
    );
    println!(
        "| pool counters: builds / credentials retirements | {} / {} |",
        s.builds, s.retirements.credentials
    );
    println!(
        "| disposals: exactly once / never / twice or more | {once} / {never} / {twice} (shutdown retired {}, still leased {}) |",
        report.retired,
        report.still_leased.len()
    );
    println!(
        "| calls that got an instance for another hash than presented | {} |",
        mismatched.load(SeqCst) + rotator_mismatch
    );
    println!(
        "| calls begun after a rotation that got an instance older than it | {} |",
        stale.load(SeqCst)
    );
    println!();
}

// ---------------------------------------------------------------------------
// The chart
// ---------------------------------------------------------------------------

fn write_svg(figures: &HashMap<(usize, Sys), HitFigures>, path: &std::path::Path) -> std::io::Result<()> {
    let (w, h) = (900.0, 380.0);
    let (pw, ph) = (380.0, 260.0);
    let series = [
        (Sys::Pool, "#d62728", "warmpool get_or_create"),
        (Sys::Floor, "#1f77b4", "floor: ractor 2-hop"),
        (Sys::Moka, "#2ca02c", "moka get_with"),
    ];
    let (lo, hi) = (50f64.log10(), 1e6f64.log10()); // 50 ns .. 1 ms
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(svg, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="18" text-anchor="middle" font-size="14">Hit latency by percentile, 1,000 warm keys, 2-core machine (both axes log: y in nines)</text>"#,
        w / 2.0
    );
    for (panel, callers) in [1usize, 64].into_iter().enumerate() {
        let x0 = 60.0 + panel as f64 * (pw + 70.0);
        let y0 = 40.0;
        let xs = |v: f64| x0 + (v.max(1.0).log10() - lo) / (hi - lo) * pw;
        // y in "nines": p0 at the bottom, p90 a third up, p99 two thirds, p99.9 at the top.
        let ys = |q: f64| y0 + ph - (-(1.0 - q).max(1e-3).log10()) / 3.0 * ph;
        let _ = writeln!(
            svg,
            r##"<rect x="{x0}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>"##
        );
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle" font-size="12">{callers} caller{}</text>"#,
            x0 + pw / 2.0,
            y0 - 6.0,
            if callers == 1 { "" } else { "s" }
        );
        for (v, label) in [
            (100.0, "100 ns"),
            (1e3, "1 us"),
            (1e4, "10 us"),
            (1e5, "100 us"),
            (1e6, "1 ms"),
        ] {
            let x = xs(v);
            let _ = writeln!(
                svg,
                r##"<line x1="{x:.1}" y1="{y0}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
                y0 + ph,
                y0 + ph + 14.0
            );
        }
        for (q, label) in [(0.0, "p0"), (0.5, "p50"), (0.9, "p90"), (0.99, "p99"), (0.999, "p99.9")] {
            let y = ys(q);
            let _ = writeln!(
                svg,
                r##"<line x1="{x0}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"##,
                x0 + pw,
                x0 - 4.0,
                y + 4.0
            );
        }
        for (i, (sys, color, label)) in series.iter().enumerate() {
            let Some(f) = figures.get(&(callers, *sys)) else {
                continue;
            };
            let mut pts = String::new();
            for step in 0..=600 {
                let q = 1.0 - 10f64.powf(-(step as f64) / 200.0);
                let v = percentile(&f.all, (q * 100.0).max(0.01)) as f64;
                let _ = write!(pts, "{:.1},{:.1} ", xs(v), ys(q));
            }
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{pts}"/>"#
            );
            let p50 = percentile(&f.all, 50.0) as f64;
            let p99 = percentile(&f.all, 99.0) as f64;
            let ly = y0 + ph + 32.0 + i as f64 * 14.0;
            let _ = writeln!(
                svg,
                r#"<line x1="{x0}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{color}" stroke-width="2"/><text x="{:.1}" y="{ly:.1}">{label}: p50 {}, p99 {}</text>"#,
                ly - 4.0,
                x0 + 18.0,
                ly - 4.0,
                x0 + 24.0,
                ns(p50),
                ns(p99)
            );
        }
    }
    let _ = writeln!(svg, "</svg>");
    std::fs::write(path, svg)
}

// ---------------------------------------------------------------------------

fn main() {
    if let Ok(mode) = std::env::var("WARMPOOL_BENCH_CHILD") {
        child(&mode);
        return;
    }
    let plan = Plan::new();
    now_ns();
    let loadavg = || {
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let started = Instant::now();
    println!(
        "# warmpool scale benchmarks{}\n",
        if plan.quick {
            " (QUICK run: fewer rounds and samples)"
        } else {
            ""
        }
    );
    println!(
        "{} CPUs available; load average at start: {}\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        loadavg()
    );
    // WARMPOOL_BENCH_ONLY=hits,storms,memory,resident,rotation runs only those sections.
    let only = std::env::var("WARMPOOL_BENCH_ONLY").unwrap_or_default();
    let run = |name: &str| only.is_empty() || only.split(',').any(|s| s.trim() == name);
    let rt = runtime();
    // Every section runs as a task on the runtime's workers (never on the
    // thread blocked in `block_on`), like request handlers in a service.
    let on_workers = |f: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>| {
        rt.block_on(async { tokio::spawn(f).await.unwrap() })
    };
    if run("hits") {
        let p = plan.clone();
        let figures = rt.block_on(async { tokio::spawn(async move { section_hits(&p).await }).await.unwrap() });
        if !plan.quick && only.is_empty() {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/hit_latency.svg");
            match write_svg(&figures, &path) {
                Ok(()) => println!("Chart written to `benches/hit_latency.svg`.\n"),
                Err(e) => println!("Could not write the chart: {e}\n"),
            }
        }
    }
    if run("storms") {
        let p = plan.clone();
        on_workers(Box::pin(async move { section_storms(&p).await }));
    }
    if run("memory") {
        section_memory(&plan);
    }
    if run("resident") {
        let p = plan.clone();
        on_workers(Box::pin(async move { section_resident(&p).await }));
    }
    if run("rotation") {
        let p = plan.clone();
        on_workers(Box::pin(async move { section_rotation(&p).await }));
    }
    println!(
        "Total run time {:.0} s; load average at end: {}",
        started.elapsed().as_secs_f64(),
        loadavg()
    );
}
