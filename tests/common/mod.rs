//! Fakes and helpers shared by the integration tests, each defined once: a
//! provider client whose builds and disposals are counted, factories that
//! succeed, fail or hang, restart policies, shorthands for getting and
//! warming keys, assertions on `PoolError`, and ways to wait for a condition
//! (on the paused clock: yielding, or advancing 1 ms at a time; on the real
//! clock: with a bound).
#![allow(dead_code, unreachable_pub)]

pub mod bus;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use futures::future::BoxFuture;
use warmpool::{CredentialsHash, Lease, Pool, PoolBuilder, PoolError};

/// A fake provider client: remembers what it was built for.
#[derive(Debug)]
pub struct Client {
    pub key: String,
    pub hash: CredentialsHash,
    /// Sequence number of the build that made it (1-based).
    pub serial: usize,
}

/// Counts factory calls and disposals; the factories below share it.
#[derive(Debug, Default)]
pub struct Counters {
    pub builds: AtomicUsize,
    pub disposed: AtomicUsize,
    /// Keys in dispose order.
    pub disposed_keys: std::sync::Mutex<Vec<String>>,
}

impl Counters {
    pub fn new() -> Arc<Self> {
        Arc::new(Counters::default())
    }
    pub fn builds(&self) -> usize {
        self.builds.load(SeqCst)
    }
    pub fn disposed(&self) -> usize {
        self.disposed.load(SeqCst)
    }
}

/// A builder whose dispose hook counts into `counters`.
pub fn builder(counters: &Arc<Counters>) -> PoolBuilder<Client> {
    let c = counters.clone();
    Pool::builder().on_dispose(move |key, client: Client| {
        let c = c.clone();
        async move {
            assert_eq!(key, client.key, "disposed under the key it was built for");
            c.disposed.fetch_add(1, SeqCst);
            c.disposed_keys.lock().unwrap().push(key);
        }
    })
}

/// A factory that builds a `Client` for `key`/`hash` after `delay`, counting calls.
pub fn factory(
    counters: &Arc<Counters>,
    key: &str,
    hash: CredentialsHash,
    delay: Duration,
) -> impl Fn() -> futures::future::BoxFuture<'static, Result<Client, std::io::Error>> + Send + Sync + 'static {
    let c = counters.clone();
    let key = key.to_string();
    move || {
        let serial = c.builds.fetch_add(1, SeqCst) + 1;
        let key = key.clone();
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok(Client { key, hash, serial })
        })
    }
}

/// A factory that always fails after `delay`, counting calls.
pub fn failing(
    counters: &Arc<Counters>,
    delay: Duration,
) -> impl Fn() -> futures::future::BoxFuture<'static, Result<Client, std::io::Error>> + Send + Sync + 'static {
    let c = counters.clone();
    move || {
        c.builds.fetch_add(1, SeqCst);
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            Err(std::io::Error::other("provider down"))
        })
    }
}

/// A boxed factory, for fakes whose type must be named.
pub type ClientFactory = Box<dyn Fn() -> BoxFuture<'static, Result<Client, std::io::Error>> + Send + Sync>;

/// A factory that never completes, counting calls.
pub fn hanging(counters: &Arc<Counters>) -> ClientFactory {
    let c = counters.clone();
    Box::new(move || {
        c.builds.fetch_add(1, SeqCst);
        Box::pin(futures::future::pending())
    })
}

/// A fixed instance, to prime the pool with via `insert`.
pub fn client(key: &str, hash: u64, serial: usize) -> Client {
    Client {
        key: key.to_string(),
        hash: h(hash),
        serial,
    }
}

/// A restart policy that cools a key down after its first failure, without
/// retries (cool-down 10 s, the default).
pub fn cool_at_once() -> warmpool::RestartPolicy {
    warmpool::RestartPolicy {
        max_retries: 0,
        intensity: 1,
        ..warmpool::RestartPolicy::default()
    }
}

/// The policy of the cool-down tests: no retries, cool after 3 failures in 30 s, first cool-down 10 s.
pub fn cooling_policy() -> warmpool::RestartPolicy {
    warmpool::RestartPolicy {
        max_retries: 0,
        intensity: 3,
        window: Duration::from_secs(30),
        cooldown_initial: Duration::from_secs(10),
        ..Default::default()
    }
}

/// A hash from a small number, for readability.
pub fn h(n: u64) -> CredentialsHash {
    CredentialsHash::from_u64(n)
}

/// Lets every actor and task run to quiescence (paused clock: yields only,
/// no time passes), so that "nothing happened" assertions mean something.
pub async fn settle() {
    for _ in 0..2_000 {
        tokio::task::yield_now().await;
    }
}

/// Yields to the runtime until `cond` holds (paused clock: no real waiting),
/// panicking with `what` if it never does.
pub async fn eventually(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    for _ in 0..10_000 {
        if cond().await {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("condition never held: {what}");
}

/// Advances the paused clock 1 ms at a time (letting everything run between
/// steps) until `cond` holds, for at most `limit`; panics with `what` if it
/// never does.
pub async fn within(limit: Duration, what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while start.elapsed() <= limit {
        settle().await;
        if cond().await {
            return;
        }
        tokio::time::advance(Duration::from_millis(1)).await;
    }
    panic!("not within {limit:?}: {what}");
}

/// Awaits `fut` for at most `limit` (real clock), panicking with `what` if
/// it does not return in time, so that a hang fails the test.
pub async fn bounded<F: std::future::Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not return within {limit:?}"))
}

/// Gets `key` with hash 1 from a factory that builds at once.
pub async fn get(pool: &Pool<Client>, c: &Arc<Counters>, key: &str) -> Lease<Client> {
    pool.get_or_create(key, h(1), factory(c, key, h(1), Duration::ZERO))
        .await
        .expect("the factory never fails here")
}

/// Spawns a `get_or_create` for `key`/`hash` whose factory builds after `delay`.
pub fn spawn_get(
    pool: &Pool<Client>,
    c: &Arc<Counters>,
    key: &'static str,
    hash: u64,
    delay: Duration,
) -> tokio::task::JoinHandle<Result<Lease<Client>, PoolError>> {
    let pool = pool.clone();
    let f = factory(c, key, h(hash), delay);
    tokio::spawn(async move { pool.get_or_create(key, h(hash), f).await })
}

/// `n` keys `{prefix}00`, `{prefix}01`, ...
pub fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:02}")).collect()
}

/// Builds `keys` (zero-delay factories) and drops the leases.
pub async fn warm_keys(pool: &Pool<Client>, c: &Arc<Counters>, keys: &[String]) {
    for key in keys {
        let lease = pool
            .get_or_create(key, h(1), factory(c, key, h(1), Duration::ZERO))
            .await
            .unwrap();
        assert_eq!(&lease.key, key);
    }
}

/// Builds `n` keys `{prefix}{i:03}` and returns each key's serial.
pub async fn fill(pool: &Pool<Client>, c: &Arc<Counters>, prefix: &str, n: usize) -> Vec<(String, usize)> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let key = format!("{prefix}{i:03}");
        let serial = get(pool, c, &key).await.serial;
        out.push((key, serial));
    }
    out
}

/// The key actors currently linked under the pool's supervisor.
pub fn key_actors(pool: &Pool<Client>) -> Vec<ractor::ActorCell> {
    pool.actor().get_cell().get_children()
}

/// Asserts `err` is `PoolError::Factory` for `key` after `attempts` attempts, carrying the
/// factory's `io::Error` saying "provider down"; returns the shared source.
pub fn assert_factory_error(err: &PoolError, key: &str, attempts: u32) -> warmpool::SharedError {
    let PoolError::Factory {
        key: k,
        attempts: a,
        source,
    } = err
    else {
        panic!("expected PoolError::Factory, got {err:?}");
    };
    assert_eq!(k, key);
    assert_eq!(*a, attempts, "attempts");
    let io = (**source)
        .downcast_ref::<std::io::Error>()
        .expect("the shared source is the factory's io::Error");
    assert_eq!(io.to_string(), "provider down");
    assert!(
        !err.to_string().contains("provider down"),
        "Display leaves the cause to source(): {err}"
    );
    source.clone()
}

/// Asserts `err` is `PoolError::CoolingDown` for `key`, with `retry_after()`
/// agreeing; returns the time left.
pub fn assert_cooling(err: &PoolError, key: &str) -> Duration {
    match err {
        PoolError::CoolingDown { key: k, retry_after } => {
            assert_eq!(k, key);
            assert_eq!(err.retry_after(), Some(*retry_after));
            *retry_after
        }
        other => panic!("expected PoolError::CoolingDown, got {other:?}"),
    }
}
