mod common;
use common::*;

use std::sync::Arc;
use std::time::Duration;

use warmpool::{Lease, PoolError, RestartPolicy};

const MS10: Duration = Duration::from_millis(10);
const SLOW: Duration = Duration::from_millis(100);

/// A fixed instance to prime the pool with via `insert`.
fn client(key: &str, hash: u64, serial: usize) -> Client {
    Client {
        key: key.to_string(),
        hash: h(hash),
        serial,
    }
}

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

/// Invalidating a key mid-build discards that build: its waiters get a fresh (serial 2) instance.
#[tokio::test(start_paused = true)]
async fn invalidate_during_build_serves_fresh_build() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let key = "t:k";

    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let pool = pool.clone();
            let c = c.clone();
            tokio::spawn(async move { pool.get_or_create(key, h(1), factory(&c, key, h(1), SLOW)).await })
        })
        .collect();
    eventually("first build in flight", async || c.builds() == 1).await;
    assert_eq!(pool.stats().await.unwrap().builds_in_flight, 1);

    assert!(
        pool.invalidate(key).await.unwrap(),
        "a build in flight counts as something to invalidate"
    );

    let mut leases = Vec::new();
    for t in tasks {
        leases.push(t.await.unwrap().unwrap());
    }
    for lease in &leases {
        assert_eq!(lease.serial, 2, "the stale build's instance was handed out");
        assert!(Lease::ptr_eq(lease, &leases[0]));
    }
    assert_eq!(c.builds(), 2);

    eventually("stale instance disposed", async || c.disposed() == 1).await;
    for _ in 0..200 {
        tokio::task::yield_now().await;
    }
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(c.disposed(), 1, "stale instance disposed exactly once; fresh one kept");

    let s = pool.stats().await.unwrap();
    assert_eq!(s.builds, 2);
    assert_eq!(s.retirements.invalidated, 1);
    assert_eq!(s.disposals, 1);
    assert_eq!(s.live_leases, 5);
}

/// `invalidate` on a warm key returns true and forces a rebuild; on an unknown key it returns false.
#[tokio::test(start_paused = true)]
async fn invalidate_warm_and_unknown_keys() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();

    let old = pool
        .get_or_create("warm", h(1), factory(&c, "warm", h(1), MS10))
        .await
        .unwrap();
    assert!(pool.invalidate("warm").await.unwrap());
    let new = pool
        .get_or_create("warm", h(1), factory(&c, "warm", h(1), MS10))
        .await
        .unwrap();
    assert!(!Lease::ptr_eq(&old, &new), "invalidated instance served again");
    assert_eq!(old.serial, 1);
    assert_eq!(new.serial, 2);
    assert_eq!(c.builds(), 2);

    assert!(!pool.invalidate("never-seen").await.unwrap());
    assert!(
        !pool.invalidate("war").await.unwrap(),
        "invalidate is exact, not a prefix"
    );

    let s = pool.stats().await.unwrap();
    assert_eq!(s.retirements.invalidated, 1);
    assert_eq!(s.misses, 2);
    assert_eq!(s.hits, 0);

    drop(old);
    eventually("old instance disposed", async || c.disposed() == 1).await;
    assert_eq!(pool.stats().await.unwrap().disposals, 1);
}

/// `invalidate_by_prefix("acme:")` retires exactly the keys starting with "acme:" and returns their count.
#[tokio::test(start_paused = true)]
async fn invalidate_by_prefix_is_exact() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let matching = ["acme:", "acme:anthropic", "acme:openai"];
    let others = ["acme", "acmex:openai", "acm:e", "zeta:acme:x", "acme-openai"];

    let mut before = Vec::new();
    for key in matching.iter().chain(others.iter()) {
        let lease = pool
            .get_or_create(key, h(1), factory(&c, key, h(1), MS10))
            .await
            .unwrap();
        before.push((key.to_string(), lease));
    }
    let total = matching.len() + others.len();
    assert_eq!(c.builds(), total);

    let count = pool.invalidate_by_prefix("acme:").await.unwrap();
    assert_eq!(count, matching.len(), "count of keys matching the prefix");

    let s = pool.stats().await.unwrap();
    assert_eq!(s.retirements.invalidated, matching.len() as u64);
    assert_eq!(s.retirements.total(), matching.len() as u64);

    for (key, old) in &before {
        let lease = pool
            .get_or_create(key, h(1), factory(&c, key, h(1), MS10))
            .await
            .unwrap();
        assert_eq!(lease.key, *key);
        if key.starts_with("acme:") {
            assert!(
                !Lease::ptr_eq(&lease, old),
                "{key} kept its instance after prefix invalidation"
            );
        } else {
            assert!(
                Lease::ptr_eq(&lease, old),
                "{key} lost its instance to prefix invalidation"
            );
        }
    }
    assert_eq!(c.builds(), total + matching.len());
    let s = pool.stats().await.unwrap();
    assert_eq!(s.hits, others.len() as u64);

    drop(before);
    eventually("invalidated instances disposed", async || {
        c.disposed() == matching.len()
    })
    .await;
    for _ in 0..200 {
        tokio::task::yield_now().await;
    }
    assert_eq!(c.disposed(), matching.len());
    let mut disposed = c.disposed_keys.lock().unwrap().clone();
    disposed.sort();
    assert_eq!(disposed, matching.to_vec());

    // A prefix that matches nothing.
    assert_eq!(pool.invalidate_by_prefix("nomatch:").await.unwrap(), 0);
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

/// A per-entry TTL overrides the pool's TTL; a per-entry TTL of zero never expires by age.
#[tokio::test(start_paused = true)]
async fn per_entry_ttl_overrides_default() {
    let c = Counters::new();
    let pool = builder(&c)
        .time_to_live(Duration::from_secs(300))
        .spawn()
        .await
        .unwrap();

    let short = pool
        .get_or_create_with_ttl(
            "short",
            h(1),
            Duration::from_secs(10),
            factory(&c, "short", h(1), Duration::ZERO),
        )
        .await
        .unwrap();
    let default = pool
        .get_or_create("default", h(1), factory(&c, "default", h(1), Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(c.builds(), 2);

    tokio::time::advance(Duration::from_secs(9)).await;
    let still = pool
        .get_or_create("short", h(1), factory(&c, "short", h(1), Duration::ZERO))
        .await
        .unwrap();
    assert!(Lease::ptr_eq(&short, &still), "expired before its 10 s TTL");

    tokio::time::advance(Duration::from_secs(2)).await;
    let rebuilt = pool
        .get_or_create("short", h(1), factory(&c, "short", h(1), Duration::ZERO))
        .await
        .unwrap();
    assert!(!Lease::ptr_eq(&short, &rebuilt), "served past its 10 s TTL");
    assert_eq!(rebuilt.serial, 3);
    let kept = pool
        .get_or_create("default", h(1), factory(&c, "default", h(1), Duration::ZERO))
        .await
        .unwrap();
    assert!(
        Lease::ptr_eq(&default, &kept),
        "the pool TTL (300 s) entry expired at 11 s"
    );
    assert_eq!(c.builds(), 3);
    assert_eq!(pool.stats().await.unwrap().retirements.ttl, 1);
}

/// A per-entry TTL of zero means the instance never expires by age, even past the pool's TTL.
#[tokio::test(start_paused = true)]
async fn per_entry_ttl_zero_never_expires() {
    let c = Counters::new();
    let pool = builder(&c)
        .time_to_live(Duration::from_secs(300))
        .spawn()
        .await
        .unwrap();

    let forever = pool
        .get_or_create_with_ttl(
            "forever",
            h(1),
            Duration::ZERO,
            factory(&c, "forever", h(1), Duration::ZERO),
        )
        .await
        .unwrap();
    let default = pool
        .get_or_create("default", h(1), factory(&c, "default", h(1), Duration::ZERO))
        .await
        .unwrap();
    drop(default);

    // Step through several sweeps, well past the pool TTL.
    for _ in 0..20 {
        tokio::time::advance(Duration::from_secs(60)).await;
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    let again = pool
        .get_or_create("forever", h(1), factory(&c, "forever", h(1), Duration::ZERO))
        .await
        .unwrap();
    assert!(Lease::ptr_eq(&forever, &again), "a zero per-entry TTL expired by age");
    let default_again = pool
        .get_or_create("default", h(1), factory(&c, "default", h(1), Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(default_again.serial, 3, "control: the pool-TTL entry must have expired");
    assert_eq!(c.builds(), 3);
    let s = pool.stats().await.unwrap();
    assert_eq!(s.retirements.ttl, 1);
    assert_eq!(s.hits, 1);
}

/// After `shutdown`, `get_or_create` fails with `PoolError::ShutDown` and calls no factory.
#[tokio::test(start_paused = true)]
async fn get_after_shutdown_is_refused() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let other_handle = pool.clone();

    let lease = pool
        .get_or_create("k", h(1), factory(&c, "k", h(1), MS10))
        .await
        .unwrap();
    drop(lease);
    let report = pool.shutdown(Duration::from_secs(1)).await.unwrap();
    assert_eq!(report.retired, 1);
    assert_eq!(c.disposed(), 1);

    let err = pool
        .get_or_create("k", h(1), factory(&c, "k", h(1), MS10))
        .await
        .expect_err("served after shutdown");
    assert!(matches!(err, PoolError::ShutDown), "expected ShutDown, got {err:?}");
    let err = other_handle
        .get_or_create("new", h(1), factory(&c, "new", h(1), MS10))
        .await
        .expect_err("served after shutdown");
    assert!(matches!(err, PoolError::ShutDown), "expected ShutDown, got {err:?}");
    assert_eq!(c.builds(), 1, "no factory call after shutdown");
}
