//! Hits, misses and singleflight: a warm key presented with the same
//! credentials is served from cache; concurrent callers of a cold key share
//! one build (or one error), and a caller that gives up mid-build cancels
//! nothing; a credentials rotation and different keys never share
//! instances; `insert` primes the pool and replaces what it finds. Paused
//! clock; factory calls and disposals are counted exactly.

mod common;
use common::*;

use std::sync::Arc;
use std::time::Duration;

use warmpool::{Lease, PoolError, RestartPolicy};

const MS10: Duration = Duration::from_millis(10);
const SLOW: Duration = Duration::from_millis(100);

/// A warm key presented with the same hash is served from cache: same instance, one factory call.
#[tokio::test(start_paused = true)]
async fn warm_key_with_matching_hash_is_a_hit() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();

    let first = pool
        .get_or_create("acme:openai", h(7), factory(&c, "acme:openai", h(7), MS10))
        .await
        .unwrap();
    let second = pool
        .get_or_create("acme:openai", h(7), factory(&c, "acme:openai", h(7), Duration::ZERO))
        .await
        .unwrap();
    let third = pool
        .get_or_create("acme:openai", h(7), factory(&c, "acme:openai", h(7), Duration::ZERO))
        .await
        .unwrap();

    assert!(
        Lease::ptr_eq(&first, &second),
        "second call must get the cached instance"
    );
    assert!(Lease::ptr_eq(&first, &third), "third call must get the cached instance");
    assert_eq!(first.instance_id(), third.instance_id());
    assert_eq!(first.serial, 1);
    assert_eq!(first.hash, h(7));
    assert_eq!(c.builds(), 1, "factory called exactly once");

    let s = pool.stats().await.unwrap();
    assert_eq!(s.hits, 2);
    assert_eq!(s.misses, 1);
    assert_eq!(s.builds, 1);
    assert_eq!(s.build_failures, 0);
    assert_eq!(s.live_leases, 3);
    assert_eq!(s.retirements.total(), 0);
    assert_eq!(s.keys, vec!["acme:openai".to_string()]);
    assert_eq!(c.disposed(), 0);
}

/// A second call on a warm key is a hit on the same instance.
#[tokio::test(start_paused = true)]
async fn second_call_hits() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let a = pool
        .get_or_create("t:a", h(1), factory(&c, "t:a", h(1), Duration::from_millis(10)))
        .await
        .unwrap();
    let b = pool
        .get_or_create("t:a", h(1), factory(&c, "t:a", h(1), Duration::ZERO))
        .await
        .unwrap();
    assert!(warmpool::Lease::ptr_eq(&a, &b));
    assert_eq!(c.builds(), 1);
    let s = pool.stats().await.unwrap();
    assert_eq!((s.hits, s.misses, s.builds, s.live_leases), (1, 1, 1, 2));
    drop((a, b));
    let report = pool.shutdown(Duration::from_secs(1)).await.unwrap();
    assert_eq!(report.retired, 1);
    assert_eq!(c.disposed(), 1);
    assert!(report.still_leased.is_empty());
}

/// 1,000 concurrent callers on one cold key share one factory call and one instance.
#[tokio::test(start_paused = true)]
async fn singleflight_1000_callers_one_build() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();

    let tasks: Vec<_> = (0..1_000)
        .map(|_| {
            let pool = pool.clone();
            let c = c.clone();
            tokio::spawn(async move { pool.get_or_create("cold", h(1), factory(&c, "cold", h(1), MS10)).await })
        })
        .collect();
    let mut leases = Vec::with_capacity(tasks.len());
    for task in tasks {
        leases.push(task.await.unwrap().expect("every caller gets the instance"));
    }

    assert_eq!(leases.len(), 1_000);
    assert_eq!(c.builds(), 1, "exactly one factory call for 1,000 callers");
    for lease in &leases {
        assert!(Lease::ptr_eq(&leases[0], lease), "all callers share one instance");
    }
    assert_eq!(leases[0].serial, 1);

    let s = pool.stats().await.unwrap();
    assert_eq!(s.builds, 1);
    assert_eq!(s.hits + s.misses, 1_000);
    assert_eq!(s.misses, 1_000, "all 1,000 arrived while the build was in flight");
    assert_eq!(s.live_leases, 1_000);
    assert_eq!(s.builds_in_flight, 0);
}

/// 1,000 concurrent callers on a failing key: one factory call, all get the same shared error.
#[tokio::test(start_paused = true)]
async fn singleflight_1000_callers_share_one_error() {
    let c = Counters::new();
    let pool = builder(&c)
        .restart_policy(RestartPolicy::never())
        .spawn()
        .await
        .unwrap();

    let tasks: Vec<_> = (0..1_000)
        .map(|_| {
            let pool = pool.clone();
            let c = c.clone();
            tokio::spawn(async move { pool.get_or_create("down", h(1), failing(&c, MS10)).await })
        })
        .collect();
    let mut sources = Vec::with_capacity(tasks.len());
    for task in tasks {
        match task.await.unwrap() {
            Err(PoolError::Factory { key, attempts, source }) => {
                assert_eq!(key, "down");
                assert_eq!(attempts, 1);
                assert_eq!(source.to_string(), "provider down");
                sources.push(source);
            }
            Err(other) => panic!("expected PoolError::Factory, got {other:?}"),
            Ok(lease) => panic!("a failing factory handed out {lease:?}"),
        }
    }

    assert_eq!(sources.len(), 1_000);
    assert_eq!(c.builds(), 1, "exactly one factory call for 1,000 callers");
    for source in &sources {
        assert!(Arc::ptr_eq(&sources[0], source), "all callers share one error value");
    }

    let s = pool.stats().await.unwrap();
    assert_eq!(s.build_failures, 1);
    assert_eq!(s.builds, 0);
    assert_eq!(s.live_leases, 0);
    assert_eq!(s.hits, 0);
}

/// A caller that drops its `get_or_create` mid-build does not cancel it: the other waiter gets the instance, it is cached, and it is disposed exactly once.
#[tokio::test(start_paused = true)]
async fn caller_dropping_its_call_mid_build_does_not_cancel_it() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let quitter = spawn_get(&pool, &c, "t:a", 1, Duration::from_secs(2));
    let stayer = spawn_get(&pool, &c, "t:a", 1, Duration::from_secs(2));
    settle().await;
    assert_eq!(c.builds(), 1);

    tokio::time::advance(Duration::from_secs(1)).await;
    quitter.abort();
    assert!(quitter.await.unwrap_err().is_cancelled());
    tokio::time::advance(Duration::from_secs(1)).await;
    let lease = stayer.await.unwrap().expect("the remaining waiter gets the build");
    assert_eq!((lease.key.as_str(), lease.serial), ("t:a", 1));
    settle().await;
    let s = pool.stats().await.unwrap();
    assert_eq!(s.live_leases, 1, "the abandoned caller's lease was released");
    assert_eq!(s.builds, 1);

    // Cached: a hit on the same instance, no second factory call.
    let again = pool
        .get_or_create("t:a", h(1), factory(&c, "t:a", h(1), Duration::ZERO))
        .await
        .unwrap();
    assert!(Lease::ptr_eq(&lease, &again));
    assert_eq!(c.builds(), 1);
    drop((lease, again));

    assert!(pool.invalidate("t:a").await.unwrap());
    eventually("disposed after invalidation", async || c.disposed() == 1).await;
    let report = pool.shutdown(Duration::from_secs(1)).await.unwrap();
    assert!(report.still_leased.is_empty(), "{:?}", report.still_leased);
    assert_eq!(c.disposed(), 1, "disposed exactly once");
    assert_eq!(c.builds(), 1);
}

/// When the only caller drops its call mid-build, the build still completes and is cached (no lease leaks), and shutdown disposes it exactly once.
#[tokio::test(start_paused = true)]
async fn build_abandoned_by_every_caller_is_cached_without_leaking_a_lease() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let only = spawn_get(&pool, &c, "t:a", 1, Duration::from_secs(2));
    settle().await;
    only.abort();
    assert!(only.await.unwrap_err().is_cancelled());
    assert_eq!(pool.stats().await.unwrap().builds_in_flight, 1);

    tokio::time::advance(Duration::from_secs(2)).await;
    settle().await;
    let s = pool.stats().await.unwrap();
    assert_eq!(s.builds, 1);
    assert_eq!(s.builds_in_flight, 0);
    assert_eq!(s.live_leases, 0, "the lease nobody received is not counted as live");
    assert_eq!(s.keys, vec!["t:a".to_string()], "the finished build is cached");
    assert_eq!(c.disposed(), 0);

    let lease = pool
        .get_or_create("t:a", h(1), factory(&c, "t:a", h(1), Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(lease.serial, 1, "served from the abandoned build");
    assert_eq!(pool.stats().await.unwrap().hits, 1);
    drop(lease);

    let report = pool.shutdown(Duration::from_secs(1)).await.unwrap();
    assert_eq!(report.retired, 1);
    assert!(report.still_leased.is_empty());
    assert_eq!(c.disposed(), 1);
    assert_eq!(c.builds(), 1);
}

/// During a credentials rotation, callers of hash A get only A's instance and callers of B only B's.
#[tokio::test(start_paused = true)]
async fn rotation_in_flight_keeps_hashes_isolated() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let key = "acme:openai";

    let spawn_callers = |hash: u64, n: usize| -> Vec<tokio::task::JoinHandle<Result<Lease<Client>, PoolError>>> {
        (0..n)
            .map(|_| {
                let pool = pool.clone();
                let c = c.clone();
                tokio::spawn(async move { pool.get_or_create(key, h(hash), factory(&c, key, h(hash), SLOW)).await })
            })
            .collect()
    };

    let a_tasks = spawn_callers(0xA, 20);
    eventually("A's build is in flight", async || c.builds() == 1).await;
    let s = pool.stats().await.unwrap();
    assert_eq!(s.builds_in_flight, 1, "A's build must still be running when B arrives");
    let b_tasks = spawn_callers(0xB, 20);

    let mut a_leases = Vec::new();
    for t in a_tasks {
        a_leases.push(t.await.unwrap().unwrap());
    }
    let mut b_leases = Vec::new();
    for t in b_tasks {
        b_leases.push(t.await.unwrap().unwrap());
    }

    for lease in &a_leases {
        assert_eq!(lease.hash, h(0xA), "an A-caller got an instance built for another hash");
        assert_eq!(lease.key, key);
        assert!(Lease::ptr_eq(lease, &a_leases[0]));
    }
    for lease in &b_leases {
        assert_eq!(lease.hash, h(0xB), "a B-caller got an instance built for another hash");
        assert_eq!(lease.key, key);
        assert!(Lease::ptr_eq(lease, &b_leases[0]));
    }
    assert!(!Lease::ptr_eq(&a_leases[0], &b_leases[0]));
    assert_eq!(c.builds(), 2, "one build per hash");

    let s = pool.stats().await.unwrap();
    assert_eq!(s.builds, 2);
    assert_eq!(s.retirements.credentials, 1, "A's instance retired for credentials");
    assert_eq!(s.retirements.total(), 1);

    // A's instance is retired but still leased: not disposed yet.
    for _ in 0..200 {
        tokio::task::yield_now().await;
    }
    assert_eq!(c.disposed(), 0, "disposed while A-leases are still held");

    drop(a_leases);
    eventually("A's instance disposed", async || c.disposed() == 1).await;
    for _ in 0..200 {
        tokio::task::yield_now().await;
    }
    assert_eq!(c.disposed(), 1, "exactly one dispose");
    assert_eq!(pool.stats().await.unwrap().disposals, 1);

    // The current instance is B's: a B-caller hits it.
    let again = pool
        .get_or_create(key, h(0xB), factory(&c, key, h(0xB), SLOW))
        .await
        .unwrap();
    assert!(Lease::ptr_eq(&again, &b_leases[0]));
    assert_eq!(c.builds(), 2);
}

/// Keys that share prefixes never share instances; each lease is for the requested key.
#[tokio::test(start_paused = true)]
async fn different_keys_never_share_instances() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let keys = ["a:x", "ab:x", "a:", "a", "a:x:y", "b:x"];

    let mut leases = Vec::new();
    for key in keys {
        let lease = pool
            .get_or_create(key, h(1), factory(&c, key, h(1), MS10))
            .await
            .unwrap();
        assert_eq!(lease.key, key, "instance built for another key");
        assert_eq!(lease.key(), key);
        leases.push(lease);
    }
    assert_eq!(c.builds(), keys.len(), "one build per distinct key");
    for i in 0..leases.len() {
        for j in (i + 1)..leases.len() {
            assert!(
                !Lease::ptr_eq(&leases[i], &leases[j]),
                "{} and {} share an instance",
                keys[i],
                keys[j]
            );
        }
    }

    // Second round, in another order: every key hits its own instance.
    for (i, key) in keys.iter().enumerate().rev() {
        let lease = pool
            .get_or_create(key, h(1), factory(&c, key, h(1), MS10))
            .await
            .unwrap();
        assert_eq!(lease.key, *key);
        assert!(Lease::ptr_eq(&lease, &leases[i]), "{key} got another instance on a hit");
    }
    assert_eq!(c.builds(), keys.len());

    let s = pool.stats().await.unwrap();
    assert_eq!(s.hits, keys.len() as u64);
    assert_eq!(s.misses, keys.len() as u64);
    let mut expected: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    expected.sort();
    assert_eq!(s.keys, expected);
    assert_eq!(s.size, keys.len());
}

/// `insert` primes the pool (a hit without a factory call); inserting over an instance retires it as `replaced`.
#[tokio::test(start_paused = true)]
async fn insert_primes_and_replaces() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();

    pool.insert("seed", h(3), client("seed", 3, 100)).await.unwrap();
    let first = pool
        .get_or_create("seed", h(3), factory(&c, "seed", h(3), MS10))
        .await
        .unwrap();
    assert_eq!(first.serial, 100, "served the inserted instance");
    assert_eq!(c.builds(), 0, "no factory call after insert");
    let s = pool.stats().await.unwrap();
    assert_eq!((s.hits, s.misses, s.builds), (1, 0, 0));

    pool.insert("seed", h(3), client("seed", 3, 200)).await.unwrap();
    let s = pool.stats().await.unwrap();
    assert_eq!(s.retirements.replaced, 1);
    assert_eq!(s.retirements.total(), 1);

    let second = pool
        .get_or_create("seed", h(3), factory(&c, "seed", h(3), MS10))
        .await
        .unwrap();
    assert_eq!(second.serial, 200, "served the replacing instance");
    assert!(!Lease::ptr_eq(&first, &second));
    assert_eq!(c.builds(), 0);

    // The replaced instance is disposed once its lease is gone.
    for _ in 0..200 {
        tokio::task::yield_now().await;
    }
    assert_eq!(c.disposed(), 0, "replaced instance disposed while leased");
    drop(first);
    eventually("replaced instance disposed", async || c.disposed() == 1).await;

    // An inserted instance is still subject to the hash check.
    let rotated = pool
        .get_or_create("seed", h(4), factory(&c, "seed", h(4), MS10))
        .await
        .unwrap();
    assert_eq!(rotated.hash, h(4));
    assert_eq!(rotated.serial, 1);
    assert_eq!(c.builds(), 1);
    assert_eq!(pool.stats().await.unwrap().retirements.credentials, 1);
}

// A regression found by the model test (`tests/model.rs`) while the hit path
// learned to ask without the factory first (`Answer::NeedFactory`).
/// A build discarded by an `insert` while in flight is rebuilt for its own caller with that caller's factory (it once lost the factory and panicked the caller).
#[tokio::test(start_paused = true)]
async fn build_discarded_by_insert_is_rebuilt_with_the_callers_factory() {
    let c = Counters::new();
    let pool = builder(&c).max_entries(1).spawn().await.unwrap();
    let waiting = spawn_get(&pool, &c, "ab:x", 3, Duration::from_secs(1));
    settle().await;
    assert_eq!(c.builds(), 1);
    let inserted = Client {
        key: "ab:x".into(),
        hash: h(1),
        serial: 1000,
    };
    pool.insert("ab:x", h(1), inserted).await.unwrap();
    tokio::time::advance(Duration::from_secs(3)).await;
    let lease = waiting.await.expect("the caller's task never panics").unwrap();
    assert_eq!((lease.key.as_str(), lease.hash, lease.serial), ("ab:x", h(3), 2));
    assert_eq!(c.builds(), 2, "the discarded build and the caller's fresh one");
    drop(lease);
    let report = pool.shutdown(Duration::from_secs(5)).await.unwrap();
    assert!(report.still_leased.is_empty());
    assert_eq!(
        c.disposed(),
        3,
        "discarded build, inserted instance (credentials), fresh build"
    );
}

/// A task that does nothing but hit a warm key still hands its worker back:
/// calls take from tokio's coop budget (a unit per 8), as a receive on a
/// channel with a message ready does. On this single-threaded runtime the other
/// task runs within a bounded number of hits; without the budget it would
/// run only after the hitter ended (at worst, a starved key actor or timer
/// blocks the hitter's own next miss, and the task never ends).
#[tokio::test(start_paused = true)]
async fn a_task_that_only_hits_lets_the_other_tasks_on_its_worker_run() {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    const LIMIT: u32 = 100_000;
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    drop(get(&pool, &c, "acme:openai").await);

    let other_ran = Arc::new(AtomicBool::new(false));
    let hitter = tokio::spawn({
        let (pool, c, other_ran) = (pool.clone(), c.clone(), other_ran.clone());
        async move {
            for n in 0..LIMIT {
                drop(get(&pool, &c, "acme:openai").await);
                if other_ran.load(SeqCst) {
                    return Some(n);
                }
            }
            None
        }
    });
    tokio::spawn(async move { other_ran.store(true, SeqCst) });

    let hits_before = hitter.await.unwrap();
    assert!(
        hits_before.is_some_and(|n| n < 2_000),
        "the other task must run within 2,000 hits (a unit of coop budget per 8 calls, 128 units per poll); \
         it ran after {hits_before:?} (None: not within {LIMIT})"
    );
    assert_eq!(c.builds(), 1, "every call after the first is a hit");
}
