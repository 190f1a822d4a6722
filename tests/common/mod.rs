//! Fakes shared by the integration tests: a provider client whose builds
//! and disposals are counted, and factories that succeed, fail, panic or hang.
#![allow(dead_code, unreachable_pub)]

pub mod bus;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use warmpool::{CredentialsHash, Pool, PoolBuilder};

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

/// A restart policy that cools a key down after its first failure, without
/// retries (cool-down 10 s, the default).
pub fn cool_at_once() -> warmpool::RestartPolicy {
    warmpool::RestartPolicy {
        max_retries: 0,
        intensity: 1,
        ..warmpool::RestartPolicy::default()
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
