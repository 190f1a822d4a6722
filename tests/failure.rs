//! Failed builds: a factory error reaches every waiter as one shared
//! `PoolError::Factory` and is not cached; a panicking factory is contained
//! (`FactoryPanicked`) and the pool keeps serving; a hanging one fails at
//! `create_timeout` without slowing other keys; a build that fails during a
//! credentials rotation fails only its own waiters. (Retries and cool-downs:
//! `restart_policy.rs`.) Paused clock; factory calls are counted exactly.

mod common;
use common::*;

use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use futures::future::join_all;
use tokio::time::Instant;
use warmpool::{Lease, PoolError, RestartPolicy};

/// Panics inside the factory's future (after it was created).
fn explode() -> Result<Client, std::io::Error> {
    panic!("provider exploded")
}

/// A factory whose future panics with "provider exploded", counting calls.
fn panicking(counters: &Arc<Counters>) -> ClientFactory {
    let c = counters.clone();
    Box::new(move || {
        c.builds.fetch_add(1, SeqCst);
        Box::pin(async move { explode() })
    })
}

/// A factory that panics synchronously, before returning a future, counting calls.
fn panicking_sync(counters: &Arc<Counters>) -> ClientFactory {
    let c = counters.clone();
    Box::new(move || {
        c.builds.fetch_add(1, SeqCst);
        panic!("factory blew up before returning a future")
    })
}

/// A factory error reaches all 50 concurrent waiters as one shared `PoolError::Factory`, from one factory call, and is not cached.
#[tokio::test(start_paused = true)]
async fn factory_error_reaches_every_waiter_and_is_not_cached() {
    let c = Counters::new();
    let pool = builder(&c)
        .restart_policy(RestartPolicy::never())
        .spawn()
        .await
        .unwrap();

    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let pool = pool.clone();
            let c = c.clone();
            tokio::spawn(async move {
                pool.get_or_create("t:down", h(1), failing(&c, Duration::from_millis(10)))
                    .await
            })
        })
        .collect();
    let results = join_all(tasks).await;

    assert_eq!(c.builds(), 1, "exactly one factory call for 50 waiters");
    let mut sources = Vec::new();
    let mut errors = Vec::new();
    for result in results {
        let err = result.unwrap().expect_err("a failed build must not produce a lease");
        sources.push(assert_factory_error(&err, "t:down", 1));
        errors.push(err);
    }
    assert!(
        sources.iter().all(|s| Arc::ptr_eq(s, &sources[0])),
        "every waiter shares the one error of the one attempt"
    );

    let s = pool.stats().await.unwrap();
    assert_eq!(s.builds, 0);
    assert_eq!(s.build_failures, 1);
    assert_eq!(s.misses, 50);
    assert_eq!(s.hits, 0);
    assert_eq!(s.live_leases, 0);
    assert_eq!(s.builds_in_flight, 0);
    assert!(s.cooling_keys.is_empty(), "RestartPolicy::never() never cools");

    // Nothing was cached: the next call runs the factory again.
    let err = pool
        .get_or_create("t:down", h(1), failing(&c, Duration::ZERO))
        .await
        .unwrap_err();
    assert_factory_error(&err, "t:down", 1);
    assert_eq!(c.builds(), 2);
    let lease = pool
        .get_or_create("t:down", h(1), factory(&c, "t:down", h(1), Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(lease.serial, 3);
    assert_eq!(c.builds(), 3);
    assert_eq!(c.disposed(), 0);

    // Every waiter's `std::error::Error::source()` is the factory's own error.
    for err in &errors {
        let src = std::error::Error::source(err).expect("PoolError::Factory has a source");
        let io = src
            .downcast_ref::<std::io::Error>()
            .unwrap_or_else(|| panic!("source() should downcast to the factory's io::Error; got {src:?}"));
        assert_eq!(io.to_string(), "provider down");
    }
}

/// A panicking factory (in its future or synchronously) gives every waiter `FactoryPanicked` with the message; the pool keeps serving.
#[tokio::test(start_paused = true)]
async fn factory_panic_is_contained() {
    let c = Counters::new();
    let pool = builder(&c)
        .restart_policy(RestartPolicy::never())
        .spawn()
        .await
        .unwrap();
    let warm = pool
        .get_or_create("t:warm", h(1), factory(&c, "t:warm", h(1), Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(c.builds(), 1);

    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let pool = pool.clone();
            let c = c.clone();
            tokio::spawn(async move { pool.get_or_create("t:boom", h(1), panicking(&c)).await })
        })
        .collect();
    for result in join_all(tasks).await {
        match result.expect("the caller's task must not panic") {
            Err(PoolError::FactoryPanicked { key, message }) => {
                assert_eq!(key, "t:boom");
                assert_eq!(message, "provider exploded");
            }
            other => panic!("expected FactoryPanicked, got {other:?}"),
        }
    }
    assert_eq!(c.builds(), 2, "one factory call shared by the 5 waiters");

    // A factory that panics before returning a future is contained too.
    match pool.get_or_create("t:sync", h(1), panicking_sync(&c)).await {
        Err(PoolError::FactoryPanicked { key, message }) => {
            assert_eq!(key, "t:sync");
            assert_eq!(message, "factory blew up before returning a future");
        }
        other => panic!("expected FactoryPanicked, got {other:?}"),
    }
    assert_eq!(c.builds(), 3);

    // The pool keeps serving: the warm key hits, a new key builds, the panicked key can succeed.
    let again = pool
        .get_or_create("t:warm", h(1), factory(&c, "t:warm", h(1), Duration::ZERO))
        .await
        .unwrap();
    assert!(Lease::ptr_eq(&warm, &again));
    let other = pool
        .get_or_create("t:other", h(1), factory(&c, "t:other", h(1), Duration::from_millis(10)))
        .await
        .unwrap();
    assert_eq!(other.key, "t:other");
    let boom = pool
        .get_or_create("t:boom", h(1), factory(&c, "t:boom", h(1), Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(boom.key, "t:boom");
    assert_eq!(c.builds(), 5);

    let s = pool.stats().await.unwrap();
    assert_eq!(s.builds, 3);
    assert_eq!(s.build_failures, 2);
    assert_eq!(s.hits, 1);
    assert_eq!(s.actor_restarts, 0, "a factory panic is not an actor failure");
    assert_eq!(s.builds_in_flight, 0);
    assert!(s.keys.contains(&"t:boom".to_string()));
    assert!(pool.actor().get_status() == ractor::ActorStatus::Running);
}

/// A factory that never completes fails with `Timeout` exactly at `create_timeout` (2 s of paused time), and the in-flight gauge returns to 0.
#[tokio::test(start_paused = true)]
async fn create_timeout_fails_a_hanging_factory() {
    let c = Counters::new();
    let pool = builder(&c)
        .restart_policy(RestartPolicy::never())
        .create_timeout(Duration::from_secs(2))
        .spawn()
        .await
        .unwrap();

    let start = Instant::now();
    let call = {
        let pool = pool.clone();
        let c = c.clone();
        tokio::spawn(async move { pool.get_or_create("t:hang", h(1), hanging(&c)).await })
    };
    settle().await;
    assert_eq!(c.builds(), 1);
    assert_eq!(pool.stats().await.unwrap().builds_in_flight, 1);

    tokio::time::advance(Duration::from_millis(1_999)).await;
    settle().await;
    assert!(!call.is_finished(), "timed out before create_timeout");

    tokio::time::advance(Duration::from_millis(1)).await;
    settle().await;
    assert!(call.is_finished(), "still waiting after create_timeout");
    match call.await.unwrap() {
        Err(PoolError::Timeout { key, after }) => {
            assert_eq!(key, "t:hang");
            assert_eq!(after, Duration::from_secs(2));
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert_eq!(start.elapsed(), Duration::from_secs(2));

    let s = pool.stats().await.unwrap();
    assert_eq!(s.builds_in_flight, 0);
    assert_eq!(s.build_failures, 1);
    assert_eq!(s.builds, 0);
    assert_eq!(c.builds(), 1, "RestartPolicy::never(): no retry");
}

/// While one key's factory hangs, 100 gets on other warm keys (and a cold build) complete without the clock moving.
#[tokio::test(start_paused = true)]
async fn hanging_factory_does_not_slow_other_keys() {
    let c = Counters::new();
    let pool = builder(&c)
        .create_timeout(Duration::from_secs(3_600))
        .spawn()
        .await
        .unwrap();
    let keys: Vec<String> = (0..10).map(|i| format!("t:warm{i}")).collect();
    for key in &keys {
        drop(
            pool.get_or_create(key, h(1), factory(&c, key, h(1), Duration::ZERO))
                .await
                .unwrap(),
        );
    }
    assert_eq!(c.builds(), 10);

    let slow = {
        let pool = pool.clone();
        let c = c.clone();
        tokio::spawn(async move { pool.get_or_create("t:slow", h(1), hanging(&c)).await })
    };
    settle().await;
    assert_eq!(c.builds(), 11);
    assert_eq!(pool.stats().await.unwrap().builds_in_flight, 1);

    let t0 = Instant::now();
    let calls = (0..100).map(|i| {
        let key = &keys[i % keys.len()];
        pool.get_or_create(key, h(1), factory(&c, key, h(1), Duration::ZERO))
    });
    let leases = join_all(calls).await;
    for (i, lease) in leases.into_iter().enumerate() {
        assert_eq!(lease.unwrap().key, keys[i % keys.len()]);
    }
    // A cold key builds meanwhile too.
    let cold = pool
        .get_or_create("t:cold", h(1), factory(&c, "t:cold", h(1), Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(cold.serial, 12);
    assert_eq!(Instant::now(), t0, "the fast calls needed the clock to move");
    assert!(!slow.is_finished(), "the slow build finished: the test proves nothing");

    let s = pool.stats().await.unwrap();
    assert_eq!(s.hits, 100);
    assert_eq!(s.builds, 11);
    assert_eq!(s.builds_in_flight, 1);
    assert_eq!(c.builds(), 12, "warm keys must not call their factory");
}

/// A build for one hash that fails while callers with a rotated hash wait: the old-hash waiters get the error, the new-hash callers get their own build; never the other's result.
#[tokio::test(start_paused = true)]
async fn failed_build_during_rotation_fails_only_its_own_waiters() {
    let c = Counters::new();
    let pool = builder(&c)
        .restart_policy(RestartPolicy::never())
        .spawn()
        .await
        .unwrap();
    let old: Vec<_> = (0..3)
        .map(|_| {
            let pool = pool.clone();
            let f = failing(&c, Duration::from_secs(1));
            tokio::spawn(async move { pool.get_or_create("t:a", h(1), f).await })
        })
        .collect();
    settle().await;
    let new: Vec<_> = (0..3)
        .map(|_| spawn_get(&pool, &c, "t:a", 2, Duration::from_secs(1)))
        .collect();
    settle().await;
    assert_eq!(c.builds(), 1, "the rotated callers wait for the build in flight");

    tokio::time::advance(Duration::from_secs(1)).await;
    for call in old {
        assert!(matches!(call.await.unwrap(), Err(PoolError::Factory { .. })));
    }
    settle().await;
    assert_eq!(c.builds(), 2);
    tokio::time::advance(Duration::from_secs(1)).await;
    let leases: Vec<_> = futures::future::join_all(new).await;
    for lease in &leases {
        let lease = lease.as_ref().unwrap().as_ref().expect("the new hash builds");
        assert_eq!((lease.hash, lease.serial), (h(2), 2));
    }
    assert_eq!(c.builds(), 2);
    drop(leases);
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
    assert_eq!(c.disposed(), 1);
}
