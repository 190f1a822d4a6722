//! Helpers shared by the event-bus suites against real servers
//! (`bus_redis.rs`, `bus_nats.rs`): polling on the real clock with a bound,
//! and a pool's listener ending after shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use warmpool::bus::ListenOptions;
use warmpool::{Pool, Stats};

use super::{Client, Counters, factory, h};

/// The default bound for a condition to become true.
pub const WAIT: Duration = Duration::from_secs(10);

/// Listen options for an instance whose origin is `origin`.
pub fn options(origin: &str) -> ListenOptions {
    ListenOptions {
        origin: origin.to_string(),
        ..Default::default()
    }
}

/// Builds (or hits) `key` and drops the lease at once.
pub async fn warm(pool: &Pool<Client>, c: &Arc<Counters>, key: &str) {
    let lease = pool
        .get_or_create(key, h(1), factory(c, key, h(1), Duration::ZERO))
        .await
        .unwrap();
    drop(lease);
}

/// Polls the pool's stats every 10 ms until `cond` holds, for at most
/// `limit`; returns the stats that satisfied it, or panics with `what` and
/// the last stats seen.
///
/// `Stats::keys` still lists an invalidated key until its key actor has
/// reported idle to the supervisor, a moment after the instance was retired,
/// so conditions on `keys` are waited for here rather than asserted once.
pub async fn wait_stats(pool: &Pool<Client>, what: &str, limit: Duration, cond: impl Fn(&Stats) -> bool) -> Stats {
    let start = Instant::now();
    loop {
        let stats = pool.stats().await.expect("pool is running");
        if cond(&stats) {
            return stats;
        }
        if start.elapsed() > limit {
            panic!("within {limit:?}: {what} never held; last stats: {stats:#?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls `cond` every 10 ms for at most `limit`, panicking with `what`.
pub async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > limit {
            panic!("within {limit:?}: {what} never held");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Shuts the pool down and checks that its listener task ends (it checks
/// every second whether its pool is gone).
pub async fn shutdown_and_join(pool: &Pool<Client>, listener: JoinHandle<()>) {
    pool.shutdown(Duration::from_secs(5)).await.expect("shutdown");
    wait_until("the listener task ended after shutdown", WAIT, || {
        listener.is_finished()
    })
    .await;
    listener.await.expect("listener task did not panic");
}

/// Waits (up to `WAIT`) until at least `n` invalidated retirements are
/// counted, and returns that count. Prefix and flush-all invalidations are
/// paced: their keys leave `Stats::keys` at once, but each retirement is
/// counted when its key actor handles it, a moment later.
pub async fn invalidated(pool: &Pool<Client>, n: u64) -> u64 {
    let what = format!("{n} invalidated retirement(s) counted");
    wait_stats(pool, &what, WAIT, |s| s.retirements.invalidated >= n)
        .await
        .retirements
        .invalidated
}
