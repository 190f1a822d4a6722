//! Mass retirements (a prefix invalidation or a sweep tick over many keys)
//! are sent to the key actors in paced batches so that they do not stall
//! every other caller; these tests prove that pacing never weakens the
//! contract: once `invalidate_by_prefix` returns, no caller gets an old
//! instance, and every instance is still disposed exactly once.

mod common;
use common::*;

use std::sync::Arc;
use std::time::Duration;

use warmpool::{Lease, Pool};

const SEC: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

/// Gets `key` with hash 1 from a factory that builds at once.
async fn get(pool: &Pool<Client>, c: &Arc<Counters>, key: &str) -> Lease<Client> {
    pool.get_or_create(key, h(1), factory(c, key, h(1), Duration::ZERO))
        .await
        .expect("the factory never fails here")
}

/// Advances the paused clock 1 ms at a time (letting everything run between
/// steps) until `cond` holds, for at most `limit`; panics with `what` if it
/// never does.
async fn within(limit: Duration, what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while start.elapsed() <= limit {
        settle().await;
        if cond().await {
            return;
        }
        tokio::time::advance(MS).await;
    }
    panic!("not within {limit:?}: {what}");
}

/// Builds `n` keys `{prefix}{i}` and returns each key's serial.
async fn fill(pool: &Pool<Client>, c: &Arc<Counters>, prefix: &str, n: usize) -> Vec<(String, usize)> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let key = format!("{prefix}{i:03}");
        let serial = get(pool, c, &key).await.serial;
        out.push((key, serial));
    }
    out
}

/// Right after a prefix invalidation of 200 keys returns (most of their retires still queued), every key gets a fresh instance and leaves `keys`.
#[tokio::test(start_paused = true)]
async fn prefix_invalidation_is_immediate_for_callers_while_paced() {
    let c = Counters::new();
    let pool = builder(&c).sweep_interval(Duration::ZERO).spawn().await.unwrap();
    let acme = fill(&pool, &c, "acme:", 200).await;
    let other = fill(&pool, &c, "other:", 5).await;
    assert_eq!(c.builds(), 205);

    assert_eq!(pool.invalidate_by_prefix("acme:").await.unwrap(), 200);
    // No time has passed: at most one batch can have been retired yet.
    let s = pool.stats().await.unwrap();
    assert_eq!(s.size, 5, "invalidated keys are no longer counted as resident");
    assert_eq!(s.keys, other.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>());

    // Every invalidated key now builds anew, even those whose retire is still queued.
    for (key, old) in acme.iter().rev() {
        let lease = get(&pool, &c, key).await;
        assert_ne!(lease.serial, *old, "{key} served its invalidated instance");
        assert_eq!(lease.key, *key);
    }
    // The untouched tenant still hits.
    for (key, old) in &other {
        assert_eq!(get(&pool, &c, key).await.serial, *old, "{key} was not invalidated");
    }
    assert_eq!(c.builds(), 405);
    within(20 * MS, "all 200 old instances disposed", async || c.disposed() == 200).await;
    settle().await;
    assert_eq!(c.disposed(), 200, "each old instance disposed exactly once");
    let s = pool.stats().await.unwrap();
    assert_eq!(s.retirements.invalidated, 200);
    assert_eq!(s.size, 205);
}

/// With no calls after it, a prefix invalidation of 200 keys retires them in batches over a few milliseconds, each exactly once.
#[tokio::test(start_paused = true)]
async fn prefix_invalidation_drains_in_batches_without_calls() {
    let c = Counters::new();
    let pool = builder(&c).sweep_interval(Duration::ZERO).spawn().await.unwrap();
    fill(&pool, &c, "acme:", 200).await;

    assert_eq!(pool.invalidate_by_prefix("acme:").await.unwrap(), 200);
    settle().await;
    let first = c.disposed();
    assert!(
        first > 0 && first < 200,
        "the first batch is retired at once and the rest later; disposed {first}"
    );
    // 16 per millisecond: 200 take 13 ms.
    within(20 * MS, "every invalidated instance disposed", async || {
        c.disposed() == 200
    })
    .await;
    eventually("every invalidated key left the pool", async || {
        pool.stats().await.unwrap().keys.is_empty()
    })
    .await;
    settle().await;
    assert_eq!(c.disposed(), 200);
    assert_eq!(pool.stats().await.unwrap().retirements.invalidated, 200);
    assert_eq!(c.builds(), 200, "retiring never builds");
}

/// A sweep tick that finds 300 expired keys retires all of them (paced), each disposed exactly once, and a key called meanwhile is rebuilt, never served expired.
#[tokio::test(start_paused = true)]
async fn sweep_of_many_expired_keys_retires_each_once() {
    let c = Counters::new();
    let pool = builder(&c)
        .time_to_live(10 * SEC)
        .sweep_interval(SEC)
        .spawn()
        .await
        .unwrap();
    let keys = fill(&pool, &c, "k", 300).await;

    // Past the 10 s TTL (served at exactly 10 s): the tick at 11 s retires all.
    tokio::time::advance(11 * SEC).await;
    // A call right at the tick: the key actor's own check rebuilds it.
    let (key, old) = &keys[299];
    let fresh = get(&pool, &c, key).await;
    assert_ne!(fresh.serial, *old, "an expired instance was served");
    drop(fresh);

    within(30 * MS, "all 300 expired instances disposed", async || {
        c.disposed() == 300
    })
    .await;
    settle().await;
    assert_eq!(c.disposed(), 300, "each expired instance disposed exactly once");
    let s = pool.stats().await.unwrap();
    assert_eq!(s.retirements.ttl, 300);
    assert_eq!(s.size, 1, "only the key called after expiry is resident");
    assert_eq!(c.builds(), 301);
}

/// A key invalidated by prefix while its build is in flight: the build's waiters get a fresh build, never the one that predates the invalidation.
#[tokio::test(start_paused = true)]
async fn prefix_invalidation_during_build_serves_fresh_build() {
    let c = Counters::new();
    let pool = builder(&c).sweep_interval(Duration::ZERO).spawn().await.unwrap();
    fill(&pool, &c, "acme:", 50).await;
    let slow = {
        let pool = pool.clone();
        let c = c.clone();
        tokio::spawn(async move {
            pool.get_or_create("acme:slow", h(1), factory(&c, "acme:slow", h(1), SEC))
                .await
                .unwrap()
        })
    };
    eventually("the slow build started", async || c.builds() == 51).await;
    assert_eq!(pool.invalidate_by_prefix("acme:").await.unwrap(), 51);
    tokio::time::advance(3 * SEC).await;
    let lease = slow.await.unwrap();
    assert_eq!(
        lease.serial, 52,
        "the waiter got the build that started after the invalidation"
    );
    assert_eq!(c.builds(), 52);
    drop(lease);
    eventually("the 50 warm and the discarded build disposed", async || {
        c.disposed() == 51
    })
    .await;
}
