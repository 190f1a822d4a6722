//! Model-based property test: random sequences of calls from several callers
//! (gets with factories that succeed, fail, panic or hang; lookups with
//! `Pool::get`; dropped leases; `retire` of a held lease; `refresh` and
//! refresh-ahead; `insert`; `invalidate`; `invalidate_by_prefix`; clock
//! advances across TTL, idle, refresh, sweep and timeout boundaries) on a small, over-full pool with
//! dispose hooks that succeed, fail, panic or hang, checked after every step
//! against the plain sequential model in `common/reference.rs` and against
//! the contract's invariants.
//!
//! # Concurrent readers
//!
//! While a get, insert, invalidation, prefix invalidation, `retire` or
//! `refresh` runs, a reader task looks a key up with `Pool::get` again and
//! again, holding each lease across a scheduler turn (so its reads land
//! between the actors' steps, not only before or after the operation). Its
//! leases must be of the key and credentials asked for and are never
//! disposed while held; a lookup that started after the operation returned
//! never gets an instance the operation retired; its hits and their use of
//! the key go into the model. Readers of every key also race the final
//! shutdown.
//!
//! Cases: 512 by default (about 10 s in debug on 2 cores, up to 59 steps
//! each); set
//! `WARMPOOL_PROPTEST_CASES` for more.
//!
//! # Timing
//!
//! Each case runs on its own current-thread runtime with a paused clock.
//! Every step first moves the clock by 1 ms and a clock advance moves it by
//! whole seconds plus 7 ms, while every duration in the pool and the fakes is
//! a whole number of seconds and the sweep ticks every 2.5 s. So no two
//! timers of different keys, and no timer and a sweep tick, ever fire at the
//! same instant (within the 60 steps of a case the sub-second offsets stay
//! below 500 ms), and no operation lands exactly on a deadline: the model
//! never has to guess in which order the runtime woke two tasks. (Exact
//! boundaries are covered by `tests/expiry.rs`; here deadlines are crossed
//! by 1 ms and more.)
//!
//! # Settling
//!
//! The pool answers a call before it has told the supervisor about the new
//! state, and disposal happens after a message hop to the disposer and a
//! spawned hook task. After every step the test therefore yields to the
//! runtime a few hundred times (no time passes) before comparing, so that
//! every message already sent has been handled; clock advances go through
//! `tokio::time::sleep`, which lets the paused clock stop at every timer in
//! between and run what it woke.

mod common;
#[path = "common/reference.rs"]
mod reference;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Client, h};
use futures::future::BoxFuture;
use proptest::prelude::*;
use reference::{Build, Caller, Config, ErrKind, Hook, Model, Ms, Refresher, Serials};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use warmpool::{Lease, Pool, PoolError, RestartPolicy, Stats};

/// Keys that share prefixes: `a` matches four of them, `a:` three, `a:x` two.
const KEYS: [&str; 6] = ["a:", "a:x", "a:xy", "ab:x", "b:", "b:y"];
/// Prefixes for `invalidate_by_prefix`, including the empty one and one matching nothing.
const PREFIXES: [&str; 7] = ["", "a", "a:", "a:x", "ab", "b:", "c"];
const CALLERS: usize = 4;
const MAX_STEPS: usize = 60;

/// One step of a case. `Debug` is what a shrunk failure prints.
#[derive(Debug, Clone)]
enum Op {
    /// The caller drops any lease it holds, then calls `get_or_create` (skipped while its last call is pending).
    Get {
        caller: usize,
        key: &'static str,
        hash: u64,
        build: Build,
    },
    /// The caller drops its lease, then looks `key` up with `Pool::get` (skipped while its last call is pending).
    Lookup {
        caller: usize,
        key: &'static str,
        hash: u64,
    },
    /// The caller drops its lease (or forgets its error).
    Drop {
        caller: usize,
    },
    /// `Pool::retire` of the caller's lease (skipped unless it holds one).
    Retire {
        caller: usize,
    },
    /// `Pool::refresh(key)` in a task of its own (skipped while the last one is pending).
    Refresh {
        key: &'static str,
    },
    Insert {
        key: &'static str,
        hash: u64,
    },
    Invalidate {
        key: &'static str,
    },
    InvalidatePrefix {
        prefix: &'static str,
    },
    /// Moves the clock by `secs` seconds and 7 ms.
    Advance {
        secs: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let build = prop_oneof![
        4 => Just(Build::Ok),
        2 => Just(Build::OkAfter1s),
        1 => Just(Build::OkAfter2s),
        1 => Just(Build::Err),
        1 => Just(Build::Panic),
        1 => Just(Build::Hang),
    ];
    let key = prop::sample::select(&KEYS[..]);
    prop_oneof![
        8 => (0..CALLERS, key.clone(), 1..=3u64, build).prop_map(|(caller, key, hash, build)| Op::Get {
            caller,
            key,
            hash,
            build
        }),
        3 => (0..CALLERS).prop_map(|caller| Op::Drop { caller }),
        2 => (0..CALLERS, key.clone(), 1..=3u64).prop_map(|(caller, key, hash)| Op::Lookup { caller, key, hash }),
        1 => (0..CALLERS).prop_map(|caller| Op::Retire { caller }),
        1 => key.clone().prop_map(|key| Op::Refresh { key }),
        1 => (key.clone(), 1..=3u64).prop_map(|(key, hash)| Op::Insert { key, hash }),
        1 => key.prop_map(|key| Op::Invalidate { key }),
        1 => prop::sample::select(&PREFIXES[..]).prop_map(|prefix| Op::InvalidatePrefix { prefix }),
        3 => (0..=5u64).prop_map(|secs| Op::Advance { secs }),
    ]
}

fn config() -> impl Strategy<Value = Config> {
    let hook = prop_oneof![
        5 => Just(Hook::Ok),
        1 => Just(Hook::Err),
        1 => Just(Hook::Panic),
        1 => Just(Hook::Hang),
    ];
    (
        1..=4usize,
        prop::sample::select(vec![0u64, 4_000, 9_000]),
        prop::sample::select(vec![0u64, 3_000]),
        prop::sample::select(vec![0u64, 2_500]),
        prop::sample::select(vec![0u64, 2_000]),
        prop::collection::vec(hook, 1..=4),
    )
        .prop_map(|(max_entries, ttl_ms, idle_ms, sweep_ms, refresh_ms, hooks)| Config {
            max_entries,
            ttl_ms,
            idle_ms,
            sweep_ms,
            create_timeout_ms: 3_000,
            dispose_timeout_ms: 2_000,
            refresh_ms,
            hooks,
        })
}

fn cases() -> u32 {
    std::env::var("WARMPOOL_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    /// Any sequence of operations keeps the pool equal to the reference model and within the contract's invariants, and a final shutdown disposes every instance exactly once.
    #[test]
    fn pool_follows_the_reference_model(cfg in config(), ops in prop::collection::vec(op(), 1..MAX_STEPS)) {
        quiet_expected_panics();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(run_case(cfg, ops));
    }
}

// ---- fakes ----------------------------------------------------------------

/// What the fake factories and the dispose hook saw.
#[derive(Debug, Default)]
struct Fake {
    next_serial: AtomicU64,
    /// Serials of each key's factory calls, in call order.
    calls: Mutex<BTreeMap<String, Vec<u64>>>,
    /// Factory calls running now, per key.
    running: Mutex<HashMap<String, u32>>,
    /// Instances returned by factories or inserted: serial -> (key, hash).
    created: Mutex<BTreeMap<u64, (String, u64)>>,
    /// Dispose hook calls: (serial, time it started).
    disposed: Mutex<Vec<(u64, Ms)>>,
    /// Leases the test holds, per serial (kept by the driver).
    held: Mutex<HashMap<u64, usize>>,
    /// Contract violations seen from inside the fakes.
    violations: Mutex<Vec<String>>,
    t0: Mutex<Option<Instant>>,
}

impl Fake {
    fn violation(&self, what: String) {
        self.violations.lock().unwrap().push(what);
    }

    fn now_ms(&self) -> Ms {
        let t0 = self.t0.lock().unwrap().expect("t0 set");
        Instant::now().duration_since(t0).as_millis() as Ms
    }

    fn serial(&self) -> u64 {
        self.next_serial.fetch_add(1, SeqCst) + 1
    }
}

impl Serials for Fake {
    fn serial_of(&self, key: &str, call: usize) -> Option<u64> {
        self.calls.lock().unwrap().get(key).and_then(|c| c.get(call).copied())
    }
}

/// Counts a running factory call for its key until dropped (also when a timeout drops the future).
struct Running {
    fake: Arc<Fake>,
    key: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        *self.fake.running.lock().unwrap().get_mut(&self.key).unwrap() -= 1;
    }
}

type ClientFactory = Box<dyn Fn() -> BoxFuture<'static, Result<Client, std::io::Error>> + Send + Sync>;

/// A factory for `key`/`hash` that behaves as `build`, checking that no other call for the key is running.
fn factory(fake: &Arc<Fake>, key: &'static str, hash: u64, build: Build) -> ClientFactory {
    let fake = fake.clone();
    Box::new(move || {
        let serial = fake.serial();
        fake.calls
            .lock()
            .unwrap()
            .entry(key.to_string())
            .or_default()
            .push(serial);
        {
            let mut running = fake.running.lock().unwrap();
            let n = running.entry(key.to_string()).or_default();
            *n += 1;
            if *n > 1 {
                fake.violation(format!("singleflight: {n} factory calls for `{key}` at once"));
            }
        }
        let guard = Running {
            fake: fake.clone(),
            key: key.to_string(),
        };
        let fake = fake.clone();
        Box::pin(async move {
            let _guard = guard;
            match build {
                Build::Ok => {}
                Build::OkAfter1s => tokio::time::sleep(Duration::from_secs(1)).await,
                Build::OkAfter2s => tokio::time::sleep(Duration::from_secs(2)).await,
                Build::Err => return Err(std::io::Error::other("provider down")),
                Build::Panic => panic!("expected panic: factory"),
                Build::Hang => futures::future::pending::<()>().await,
            }
            fake.created.lock().unwrap().insert(serial, (key.to_string(), hash));
            Ok(Client {
                key: key.to_string(),
                hash: h(hash),
                serial: serial as usize,
            })
        })
    })
}

async fn spawn_pool(cfg: &Config, fake: &Arc<Fake>) -> Pool<Client> {
    let hook_fake = fake.clone();
    let hooks = cfg.clone();
    Pool::builder()
        .max_entries(cfg.max_entries)
        .time_to_live(Duration::from_millis(cfg.ttl_ms))
        .time_to_idle(Duration::from_millis(cfg.idle_ms))
        .sweep_interval(Duration::from_millis(cfg.sweep_ms))
        .create_timeout(Duration::from_millis(cfg.create_timeout_ms))
        .dispose_timeout(Duration::from_millis(cfg.dispose_timeout_ms))
        .refresh_after(Duration::from_millis(cfg.refresh_ms))
        .restart_policy(RestartPolicy::never())
        .on_dispose(move |key: String, client: Client| {
            let fake = hook_fake.clone();
            let serial = client.serial as u64;
            if key != client.key {
                fake.violation(format!(
                    "isolation: serial {serial} of `{}` disposed as `{key}`",
                    client.key
                ));
            }
            if fake.held.lock().unwrap().get(&serial).is_some_and(|n| *n > 0) {
                fake.violation(format!("serial {serial} disposed while the test holds a lease on it"));
            }
            let now = fake.now_ms();
            fake.disposed.lock().unwrap().push((serial, now));
            let mode = hooks.hook_for(serial);
            async move {
                drop(client);
                match mode {
                    Hook::Ok => Ok(()),
                    Hook::Err => Err(std::io::Error::other("logout failed")),
                    Hook::Panic => panic!("expected panic: dispose hook"),
                    Hook::Hang => futures::future::pending().await,
                }
            }
        })
        .spawn()
        .await
        .unwrap()
}

/// Keeps the test's output readable: the panics the fakes raise on purpose are not printed.
fn quiet_expected_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let msg = info
                .payload()
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
                .unwrap_or("");
            if !msg.starts_with("expected panic") {
                default(info);
            }
        }));
    });
}

// ---- the driver -----------------------------------------------------------

/// A caller as the test sees it.
enum Real {
    Idle,
    Pending(JoinHandle<Result<Lease<Client>, PoolError>>),
    Holding(Lease<Client>),
    Failed(PoolError),
}

struct Driver {
    pool: Pool<Client>,
    fake: Arc<Fake>,
    callers: Vec<Real>,
    /// The pending `refresh` call, if any.
    refresher: Option<JoinHandle<Result<bool, PoolError>>>,
}

/// A hot caller that looks one key up with `Pool::get` again and again
/// while an operation runs, holding each lease across a yield: the
/// concurrent reader of the read view, racing invalidation, prefix
/// invalidation, `insert`, `retire`, `refresh`, a credentials rotation and
/// capacity eviction.
struct Reader {
    done: Arc<std::sync::atomic::AtomicBool>,
    task: JoinHandle<Vec<(u64, bool)>>,
    key: &'static str,
}

/// Lookups one reader makes per operation.
const READS: usize = 40;

/// Lets the other ready tasks (the actors handling the operation) run one
/// poll each, then resumes. Not `yield_now`: tokio defers a yielding task
/// until every other task is idle, so a reader would only ever see the
/// state before an operation or after it, never the moments in between.
async fn bounce() {
    let mut bounced = false;
    std::future::poll_fn(|cx| {
        if bounced {
            std::task::Poll::Ready(())
        } else {
            bounced = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await
}

impl Reader {
    /// `hold`: keep each lease across a bounce (while the operation runs).
    /// Not while a new key may be admitted: a lease held during the
    /// eviction walk makes its key unevictable at a moment the model
    /// cannot place.
    fn start(d: &Driver, key: &'static str, hash: u64, hold: bool) -> Reader {
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (pool, fake, flag) = (d.pool.clone(), d.fake.clone(), done.clone());
        let task = tokio::spawn(async move {
            let mut reads = Vec::new();
            for _ in 0..READS {
                let after = flag.load(SeqCst);
                if let Some(lease) = pool.get(key, h(hash)) {
                    let serial = lease.serial as u64;
                    let created = fake.created.lock().unwrap().get(&serial).cloned();
                    if created != Some((key.to_string(), hash)) || lease.hash != h(hash) {
                        fake.violation(format!(
                            "isolation: get({key}, {hash}) served serial {serial}, built as {created:?}"
                        ));
                    }
                    *fake.held.lock().unwrap().entry(serial).or_default() += 1;
                    reads.push((serial, after));
                    if hold {
                        bounce().await;
                    }
                    *fake.held.lock().unwrap().get_mut(&serial).unwrap() -= 1;
                    drop(lease);
                }
                bounce().await;
            }
            reads
        });
        Reader { done, task, key }
    }

    /// Marks the operation as returned: reads from now on start after it.
    fn returned(&self) {
        self.done.store(true, SeqCst);
    }

    /// Waits for the reader (it ends within a `settle`) and tells the model
    /// what it read, before the model runs the operation.
    async fn finish(self, model: &mut Model) -> Vec<(u64, bool)> {
        settle().await;
        assert!(self.task.is_finished(), "the reader never finished");
        let reads = self.task.await.unwrap();
        model.raced_by(self.key, reads.iter().map(|(serial, _)| *serial).collect());
        reads
    }
}

/// After the model ran the operation: a lookup that started after the call
/// returned was not served an instance the call retired (contract 7).
fn check_reads(model: &mut Model, reads: &[(u64, bool)], step: usize, op: &Op) {
    model.settle_race();
    if model.ambiguous.is_some() {
        return;
    }
    for (serial, after) in reads {
        assert!(
            !*after || !model.instances[serial].retired,
            "step {step} {op:?}: a lookup that started after the call returned got retired serial {serial}"
        );
    }
}

/// Yields to the runtime until every message already sent has been handled (no time passes).
async fn settle() {
    for _ in 0..300 {
        tokio::task::yield_now().await;
    }
}

impl Driver {
    fn hold(&mut self, caller: usize, lease: Lease<Client>) {
        *self.fake.held.lock().unwrap().entry(lease.serial as u64).or_default() += 1;
        self.callers[caller] = Real::Holding(lease);
    }

    fn drop_lease(&mut self, caller: usize) {
        if let Real::Holding(lease) = &self.callers[caller] {
            let serial = lease.serial as u64;
            *self.fake.held.lock().unwrap().get_mut(&serial).unwrap() -= 1;
        }
        self.callers[caller] = Real::Idle; // drops the lease, if any
    }

    /// Collects the answers of finished calls.
    async fn collect(&mut self) {
        for caller in &mut self.callers {
            if let Real::Pending(handle) = caller
                && handle.is_finished()
            {
                let result = handle.await.expect("a caller's task never panics");
                *caller = match result {
                    Ok(lease) => {
                        *self.fake.held.lock().unwrap().entry(lease.serial as u64).or_default() += 1;
                        Real::Holding(lease)
                    }
                    Err(error) => Real::Failed(error),
                };
            }
        }
    }
}

fn kind(error: &PoolError) -> Option<ErrKind> {
    match error {
        PoolError::Factory { attempts: 1, .. } => Some(ErrKind::Factory),
        PoolError::FactoryPanicked { .. } => Some(ErrKind::Panicked),
        PoolError::Timeout { .. } => Some(ErrKind::Timeout),
        _ => None,
    }
}

/// Runs one case and checks it; panics (with the step) on the first difference.
async fn run_case(cfg: Config, ops: Vec<Op>) {
    let fake = Arc::new(Fake::default());
    let pool = spawn_pool(&cfg, &fake).await;
    let t0 = Instant::now();
    *fake.t0.lock().unwrap() = Some(t0);
    let mut model = Model::new(cfg.clone(), CALLERS);
    let mut d = Driver {
        pool,
        fake: fake.clone(),
        callers: (0..CALLERS).map(|_| Real::Idle).collect(),
        refresher: None,
    };

    for (step, op) in ops.iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(1)).await;
        model.advance_to(&*fake, model.now + 1);
        let at = model.now;
        assert!(!at.is_multiple_of(500), "step {step} at {at} ms lands on a sweep tick");
        match *op {
            Op::Get {
                caller,
                key,
                hash,
                build,
            } => {
                if matches!(d.callers[caller], Real::Pending(_)) {
                    assert!(matches!(model.callers[caller], Caller::Pending { .. }));
                    continue;
                }
                d.drop_lease(caller);
                // The key itself: a rotation races it. (Not another key: its
                // hits and this call's would be uses at one instant, which
                // the supervisor orders by their earlier recency, not by
                // when they happened, and the model cannot tell which came
                // first. Evictions racing readers are covered by
                // `tests/read_view.rs`.)
                let reader = Reader::start(&d, key, model.current_hash(key).unwrap_or(1), true);
                let pool = d.pool.clone();
                let f = factory(&fake, key, hash, build);
                d.callers[caller] =
                    Real::Pending(tokio::spawn(async move { pool.get_or_create(key, h(hash), f).await }));
                let reads = reader.finish(&mut model).await;
                model.get(&*fake, caller, key, hash, build);
                check_reads(&mut model, &reads, step, op);
            }
            Op::Lookup { caller, key, hash } => {
                if matches!(d.callers[caller], Real::Pending(_)) {
                    continue;
                }
                d.drop_lease(caller);
                let got = d.pool.get(key, h(hash));
                let serial = got.as_ref().map(|lease| lease.serial as u64);
                if let Some(lease) = got {
                    d.hold(caller, lease);
                }
                settle().await;
                let want = model.lookup(caller, key, hash);
                if model.ambiguous.is_none() {
                    assert_eq!(serial, want, "step {step} {op:?}: what get() served");
                }
            }
            Op::Drop { caller } => {
                if matches!(d.callers[caller], Real::Pending(_)) {
                    continue;
                }
                d.drop_lease(caller);
                settle().await;
                model.release(caller);
            }
            Op::Retire { caller } => {
                let Real::Holding(lease) = &d.callers[caller] else {
                    continue;
                };
                let (key, hash) = KEYS
                    .iter()
                    .map(|k| (*k, lease.hash))
                    .find(|(k, _)| *k == lease.key)
                    .expect("a known key");
                let hash = (1..=3).find(|n| h(*n) == hash).expect("a known hash");
                let reader = Reader::start(&d, key, hash, true);
                let got = d.pool.retire(lease).await;
                reader.returned();
                let reads = reader.finish(&mut model).await;
                let want = model.retire_lease(&*fake, caller);
                if model.ambiguous.is_none() {
                    assert_eq!(got, want, "step {step} {op:?}: retire's answer");
                }
                check_reads(&mut model, &reads, step, op);
            }
            Op::Refresh { key } => {
                if d.refresher.is_some() {
                    continue;
                }
                let reader = Reader::start(&d, key, model.current_hash(key).unwrap_or(1), true);
                let pool = d.pool.clone();
                let handle = tokio::spawn(async move { pool.refresh(key).await });
                let reads = reader.finish(&mut model).await;
                let answer = model.refresh(&*fake, key);
                check_reads(&mut model, &reads, step, op);
                match answer {
                    Some(want) => {
                        assert!(
                            handle.is_finished(),
                            "step {step} {op:?}: refresh still waiting, model says {want}"
                        );
                        let got = handle.await.unwrap().expect("refresh");
                        if model.ambiguous.is_none() {
                            assert_eq!(got, want, "step {step} {op:?}: refresh's answer");
                        }
                    }
                    None => d.refresher = Some(handle),
                }
            }
            Op::Insert { key, hash } => {
                let serial = fake.serial();
                fake.created.lock().unwrap().insert(serial, (key.to_string(), hash));
                let client = Client {
                    key: key.to_string(),
                    hash: h(hash),
                    serial: serial as usize,
                };
                let reader = Reader::start(&d, key, model.current_hash(key).unwrap_or(1), true);
                d.pool.insert(key, h(hash), client).await.expect("insert");
                reader.returned();
                let reads = reader.finish(&mut model).await;
                model.insert(&*fake, key, hash, serial);
                check_reads(&mut model, &reads, step, op);
            }
            Op::Invalidate { key } => {
                let reader = Reader::start(&d, key, model.current_hash(key).unwrap_or(1), true);
                let got = d.pool.invalidate(key).await.expect("invalidate");
                reader.returned();
                let reads = reader.finish(&mut model).await;
                let want = model.invalidate(&*fake, key);
                assert_eq!(got, want, "step {step} {op:?}: invalidate's answer");
                check_reads(&mut model, &reads, step, op);
            }
            Op::InvalidatePrefix { prefix } => {
                // Some read key the prefix names, some it does not.
                let key = KEYS[step % KEYS.len()];
                let reader = Reader::start(&d, key, model.current_hash(key).unwrap_or(1), true);
                let got = d.pool.invalidate_by_prefix(prefix).await.expect("invalidate_by_prefix");
                reader.returned();
                let reads = reader.finish(&mut model).await;
                let want = model.invalidate_by_prefix(&*fake, prefix);
                assert_eq!(got, want, "step {step} {op:?}: invalidate_by_prefix's answer");
                check_reads(&mut model, &reads, step, op);
            }
            Op::Advance { secs } => {
                let by = secs * 1_000 + 7;
                tokio::time::sleep(Duration::from_millis(by)).await;
                settle().await;
                model.advance_to(&*fake, model.now + by);
            }
        }
        assert_eq!(fake.now_ms(), model.now, "step {step}: clocks agree");
        d.collect().await;
        match d.refresher.take() {
            Some(handle) if handle.is_finished() => {
                let got = handle.await.unwrap().expect("refresh");
                if model.ambiguous.is_none() {
                    assert_eq!(
                        model.refresher,
                        Refresher::Done(got),
                        "step {step} {op:?}: refresh's answer"
                    );
                }
                model.refresher = Refresher::Idle;
            }
            Some(handle) => {
                if model.ambiguous.is_none() {
                    assert_eq!(
                        model.refresher,
                        Refresher::Pending,
                        "step {step} {op:?}: refresh still waiting"
                    );
                }
                d.refresher = Some(handle);
            }
            None => assert_ne!(model.refresher, Refresher::Pending, "step {step} {op:?}"),
        }
        if model.ambiguous.is_some() {
            // From here the pool may correctly differ from the model; the
            // model-free invariants are still checked, and shutdown below.
            check_invariants(&d, &cfg, step, op).await;
            break;
        }
        check_against_model(&d, &model, step, op).await;
        check_invariants(&d, &cfg, step, op).await;
    }

    shutdown_and_check(d, &cfg).await;
}

/// Invariants that hold whatever the model says.
async fn check_invariants(d: &Driver, cfg: &Config, step: usize, op: &Op) {
    let ctx = || format!("after step {step} {op:?}");
    let violations = d.fake.violations.lock().unwrap().clone();
    assert!(violations.is_empty(), "{}: {violations:?}", ctx());
    let disposed = d.fake.disposed.lock().unwrap().clone();
    let mut once = BTreeSet::new();
    for (serial, _) in &disposed {
        assert!(once.insert(*serial), "{}: serial {serial} disposed twice", ctx());
    }
    let created = d.fake.created.lock().unwrap().clone();
    for caller in &d.callers {
        if let Real::Holding(lease) = caller {
            let serial = lease.serial as u64;
            assert!(
                !once.contains(&serial),
                "{}: serial {serial} is leased but disposed",
                ctx()
            );
            let (key, hash) = &created[&serial];
            assert_eq!((lease.key.as_str(), lease.hash), (key.as_str(), h(*hash)), "{}", ctx());
            assert_eq!(Lease::key(lease), key, "{}", ctx());
        }
    }
    let s = d.pool.stats().await.unwrap();
    assert!(
        s.size as u64 <= cfg.max_entries as u64 + s.capacity_overshoot,
        "{}: size {} over max_entries {} + overshoot {}",
        ctx(),
        s.size,
        cfg.max_entries,
        s.capacity_overshoot
    );
    assert_eq!(s.actor_restarts, 0, "{}", ctx());
}

/// The pool agrees with the model: every caller's state, every counter, and which instances were disposed.
async fn check_against_model(d: &Driver, m: &Model, step: usize, op: &Op) {
    let ctx = || format!("after step {step} {op:?}\nmodel: {:?}", m.callers);
    for (i, (real, want)) in d.callers.iter().zip(&m.callers).enumerate() {
        match (real, want) {
            (Real::Idle, Caller::Idle) | (Real::Pending(_), Caller::Pending { .. }) => {}
            (Real::Holding(lease), Caller::Holding { key, hash, serial }) => {
                assert_eq!(
                    (lease.key.as_str(), lease.hash, lease.serial as u64),
                    (*key, h(*hash), *serial),
                    "caller {i}: {}",
                    ctx()
                );
            }
            (Real::Failed(error), Caller::Failed(kind_wanted)) => {
                assert_eq!(kind(error), Some(*kind_wanted), "caller {i}: got {error:?}; {}", ctx());
            }
            (Real::Holding(lease), want) => panic!("caller {i} holds {lease:?}, model says {want:?}; {}", ctx()),
            (Real::Failed(error), want) => panic!("caller {i} failed with {error:?}, model says {want:?}; {}", ctx()),
            (Real::Pending(_), want) => panic!("caller {i} is still waiting, model says {want:?}; {}", ctx()),
            (Real::Idle, want) => panic!("caller {i} is idle, model says {want:?}; {}", ctx()),
        }
    }
    // No instance handed out after it was retired.
    for want in &m.callers {
        if let Caller::Holding { serial, .. } = want {
            let inst = &m.instances[serial];
            assert!(
                !inst.retired || inst.disposed_at.is_none(),
                "serial {serial} handed out after disposal; {}",
                ctx()
            );
        }
    }

    let calls: BTreeMap<String, usize> = d
        .fake
        .calls
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.len()))
        .collect();
    let want_calls: BTreeMap<String, usize> = m.calls.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    assert_eq!(calls, want_calls, "factory calls per key; {}", ctx());

    let disposed: BTreeSet<u64> = d.fake.disposed.lock().unwrap().iter().map(|(s, _)| *s).collect();
    let want_disposed: BTreeSet<u64> = m
        .instances
        .iter()
        .filter(|(_, i)| i.disposed_at.is_some())
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(disposed, want_disposed, "disposed serials; {}", ctx());

    let s: Stats = d.pool.stats().await.unwrap();
    let c = &m.counts;
    let r = |cause: &str| c.retired.get(cause).copied().unwrap_or(0);
    assert_eq!(s.keys, m.resident(), "resident keys; {}", ctx());
    assert_eq!(s.size, s.keys.len(), "{}", ctx());
    let got = (
        s.hits,
        s.misses,
        s.builds,
        s.build_failures,
        s.inserts,
        s.capacity_overshoot,
        s.live_leases,
        s.builds_in_flight,
        s.refreshes,
    );
    let want = (
        c.hits,
        c.misses,
        c.builds,
        c.build_failures,
        c.inserts,
        c.capacity_overshoot,
        m.live_leases(),
        m.builds_in_flight(),
        c.refreshes,
    );
    assert_eq!(
        got,
        want,
        "(hits, misses, builds, build_failures, inserts, capacity_overshoot, live_leases, builds_in_flight, refreshes); {}",
        ctx()
    );
    let rt = &s.retirements;
    assert_eq!(
        (
            rt.ttl,
            rt.idle,
            rt.capacity,
            rt.credentials,
            rt.invalidated,
            rt.replaced,
            rt.shutdown,
            rt.refreshed
        ),
        (
            r("ttl"),
            r("idle"),
            r("capacity"),
            r("credentials"),
            r("invalidated"),
            r("replaced"),
            0,
            r("refreshed")
        ),
        "retirements (ttl, idle, capacity, credentials, invalidated, replaced, shutdown, refreshed); {}",
        ctx()
    );
    // Disposals count when the hook is done: at once, or after dispose_timeout for a hanging hook.
    let (mut done, mut failed) = (0, 0);
    for (serial, inst) in &m.instances {
        if let Some(at) = inst.disposed_at {
            let hook = m.cfg.hook_for(*serial);
            let finished = hook != Hook::Hang || at + m.cfg.dispose_timeout_ms <= m.now;
            done += u64::from(finished);
            failed += u64::from(finished && hook != Hook::Ok);
        }
    }
    assert_eq!(
        (s.disposals, s.dispose_failures),
        (done, failed),
        "(disposals, dispose_failures); {}",
        ctx()
    );
}

/// Shuts down with builds in flight and leases held, then checks that every
/// instance was disposed or reported, and is disposed exactly once after the
/// leases are dropped.
async fn shutdown_and_check(mut d: Driver, cfg: &Config) {
    // Readers of every key race the shutdown: each lease they get is of its
    // own key and credentials (checked in the reader) and none is disposed
    // while they hold it (checked by the hook).
    let readers: Vec<Reader> = KEYS.iter().map(|key| Reader::start(&d, key, 1, true)).collect();
    let shutdown = {
        let pool = d.pool.clone();
        tokio::spawn(async move { pool.shutdown(Duration::from_secs(1)).await })
    };
    settle().await;
    for reader in readers {
        assert!(reader.task.is_finished(), "a reader never finished");
        reader.task.await.unwrap();
    }
    for key in KEYS {
        assert!(
            d.pool.get(key, h(1)).is_none(),
            "`{key}` served by a pool that is shutting down"
        );
    }
    // Builds in flight finish or time out within create_timeout; then the
    // drain waits up to its 1 s deadline for hanging hooks.
    for _ in 0..10 {
        if shutdown.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(cfg.create_timeout_ms)).await;
        settle().await;
    }
    assert!(shutdown.is_finished(), "shutdown never finished");
    let report = shutdown.await.unwrap().expect("shutdown report");
    d.collect().await;
    if let Some(refresher) = d.refresher.take() {
        assert!(refresher.is_finished(), "a refresh still waiting after shutdown");
        let answer = refresher.await.unwrap();
        assert!(matches!(answer, Ok(_) | Err(PoolError::ShutDown)), "{answer:?}");
    }
    for (i, caller) in d.callers.iter().enumerate() {
        match caller {
            Real::Pending(_) => panic!("caller {i} still waiting after shutdown"),
            Real::Failed(e) => assert!(
                kind(e).is_some() || matches!(e, PoolError::ShutDown),
                "caller {i}: {e:?}"
            ),
            _ => {}
        }
    }
    let violations = d.fake.violations.lock().unwrap().clone();
    assert!(violations.is_empty(), "{violations:?}");

    let created = d.fake.created.lock().unwrap().clone();
    let disposed: BTreeSet<u64> = d.fake.disposed.lock().unwrap().iter().map(|(s, _)| *s).collect();
    let leased: BTreeSet<u64> = d
        .callers
        .iter()
        .filter_map(|c| match c {
            Real::Holding(lease) => Some(lease.serial as u64),
            _ => None,
        })
        .collect();
    for serial in created.keys() {
        assert!(
            disposed.contains(serial) != leased.contains(serial),
            "serial {serial}: after shutdown an instance is either disposed or leased (disposed {}, leased {})",
            disposed.contains(serial),
            leased.contains(serial)
        );
    }
    let mut want_leased: Vec<String> = leased.iter().map(|s| created[s].0.clone()).collect();
    want_leased.sort();
    assert_eq!(
        report.still_leased, want_leased,
        "still_leased names the leased instances' keys"
    );
    assert!(matches!(
        d.pool
            .get_or_create("a:", h(1), factory(&d.fake, "a:", 1, Build::Ok))
            .await,
        Err(PoolError::ShutDown)
    ));

    for caller in 0..CALLERS {
        if !matches!(d.callers[caller], Real::Pending(_)) {
            d.drop_lease(caller);
        }
    }
    settle().await;
    tokio::time::sleep(Duration::from_millis(cfg.dispose_timeout_ms + 1)).await;
    settle().await;
    let disposed = d.fake.disposed.lock().unwrap().clone();
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for (serial, _) in &disposed {
        *counts.entry(*serial).or_default() += 1;
    }
    let once: BTreeMap<u64, usize> = created.keys().map(|s| (*s, 1)).collect();
    assert_eq!(
        counts, once,
        "every instance built or inserted is disposed exactly once"
    );
    let violations = d.fake.violations.lock().unwrap().clone();
    assert!(violations.is_empty(), "{violations:?}");
}
