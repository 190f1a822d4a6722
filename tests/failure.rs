mod common;
use common::*;

use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use futures::future::{BoxFuture, join_all};
use tokio::time::Instant;
use warmpool::{Lease, PoolError, RestartPolicy};

type ClientFactory = Box<dyn Fn() -> BoxFuture<'static, Result<Client, std::io::Error>> + Send + Sync>;

/// The policy of the cool-down tests: no retries, cool after 3 failures in 30 s, first cool-down 10 s.
fn cooling_policy() -> RestartPolicy {
    RestartPolicy {
        max_retries: 0,
        intensity: 3,
        window: Duration::from_secs(30),
        cooldown_initial: Duration::from_secs(10),
        ..Default::default()
    }
}

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

/// A factory that never completes, counting calls.
fn hanging(counters: &Arc<Counters>) -> ClientFactory {
    let c = counters.clone();
    Box::new(move || {
        c.builds.fetch_add(1, SeqCst);
        Box::pin(futures::future::pending())
    })
}

/// A factory that fails its first `fails` calls (counted in `counters.builds`), then builds.
fn flaky(counters: &Arc<Counters>, key: &str, hash: u64, fails: usize) -> ClientFactory {
    let c = counters.clone();
    let key = key.to_string();
    Box::new(move || {
        let serial = c.builds.fetch_add(1, SeqCst) + 1;
        let key = key.clone();
        Box::pin(async move {
            if serial <= fails {
                Err(std::io::Error::other(format!("flaky failure {serial}")))
            } else {
                Ok(Client {
                    key,
                    hash: h(hash),
                    serial,
                })
            }
        })
    })
}

/// Asserts `err` is `PoolError::Factory` for `key` after `attempts` attempts, carrying the
/// factory's `io::Error` saying "provider down"; returns the shared source.
fn assert_factory_error(err: &PoolError, key: &str, attempts: u32) -> warmpool::SharedError {
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

fn assert_cooling(err: &PoolError, key: &str) -> Duration {
    match err {
        PoolError::CoolingDown { key: k, retry_after } => {
            assert_eq!(k, key);
            assert_eq!(err.retry_after(), Some(*retry_after));
            *retry_after
        }
        other => panic!("expected PoolError::CoolingDown, got {other:?}"),
    }
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

/// Default policy: a factory failing twice then succeeding gives one successful call after exactly 3 calls and a jittered backoff.
#[tokio::test(start_paused = true)]
async fn retries_with_backoff_then_success() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let start = Instant::now();
    let lease = pool
        .get_or_create("t:flaky", h(1), flaky(&c, "t:flaky", 1, 2))
        .await
        .expect("the third attempt succeeds");
    let waited = start.elapsed();
    assert_eq!(c.builds(), 3);
    assert_eq!(lease.serial, 3);
    // Backoffs: retry 0 in [50, 100] ms, retry 1 in [100, 200] ms (equal jitter).
    assert!(
        waited >= Duration::from_millis(150) && waited <= Duration::from_millis(302),
        "backoff total {waited:?}"
    );

    let s = pool.stats().await.unwrap();
    assert_eq!(s.build_failures, 2);
    assert_eq!(s.builds, 1);
    assert_eq!(s.misses, 1);
    assert!(s.cooling_keys.is_empty());

    // The success reset the history: a hit now, and no factory call.
    let again = pool
        .get_or_create("t:flaky", h(1), flaky(&c, "t:flaky", 1, 0))
        .await
        .unwrap();
    assert!(Lease::ptr_eq(&lease, &again));
    assert_eq!(c.builds(), 3);
}

/// Default policy: an always-failing factory is called exactly 3 times for one call, which gets `Factory` with attempts == 3.
#[tokio::test(start_paused = true)]
async fn retries_exhausted_give_factory_error_with_attempts() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let start = Instant::now();
    let err = pool
        .get_or_create("t:down", h(1), failing(&c, Duration::ZERO))
        .await
        .unwrap_err();
    assert_factory_error(&err, "t:down", 3);
    assert_eq!(c.builds(), 3);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(150) && waited <= Duration::from_millis(302),
        "backoff total {waited:?}"
    );
    let s = pool.stats().await.unwrap();
    assert_eq!(s.build_failures, 3);
    assert_eq!(s.builds, 0);
    assert_eq!(s.builds_in_flight, 0);
    assert!(
        s.cooling_keys.is_empty(),
        "3 failures are below the default intensity of 5"
    );
}

/// Past the intensity the key cools down: immediate `CoolingDown` without factory calls, listed in stats, served again after 10 s; a success resets the history.
#[tokio::test(start_paused = true)]
async fn cooldown_after_intensity_then_success_resets() {
    let c = Counters::new();
    let pool = builder(&c).restart_policy(cooling_policy()).spawn().await.unwrap();
    let start = Instant::now();

    for n in 1..=3 {
        let err = pool
            .get_or_create("t:cool", h(1), failing(&c, Duration::ZERO))
            .await
            .unwrap_err();
        assert_factory_error(&err, "t:cool", 1);
        assert_eq!(c.builds(), n);
    }

    let before = Instant::now();
    let err = pool
        .get_or_create("t:cool", h(1), failing(&c, Duration::ZERO))
        .await
        .unwrap_err();
    assert_eq!(Instant::now(), before, "CoolingDown must answer at once");
    let retry_after = assert_cooling(&err, "t:cool");
    assert!(
        retry_after <= Duration::from_secs(10) && retry_after > Duration::from_secs(9),
        "{retry_after:?}"
    );
    assert_eq!(c.builds(), 3, "no factory call while cooling");

    let s = pool.stats().await.unwrap();
    assert_eq!(s.build_failures, 3);
    assert_eq!(s.cooling_keys.len(), 1, "{:?}", s.cooling_keys);
    assert_eq!(s.cooling_keys[0].key, "t:cool");
    assert!(s.cooling_keys[0].retry_after <= Duration::from_secs(10));
    assert!(s.cooling_keys[0].retry_after > Duration::ZERO);

    // Other keys are unaffected.
    let other = pool
        .get_or_create("t:other", h(1), factory(&c, "t:other", h(1), Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(other.key, "t:other");
    assert_eq!(c.builds(), 4);

    tokio::time::advance(Duration::from_secs(10) - start.elapsed()).await;
    let lease = pool
        .get_or_create("t:cool", h(1), factory(&c, "t:cool", h(1), Duration::ZERO))
        .await
        .expect("served again once the cool-down is over");
    assert_eq!(lease.serial, 5);
    let s = pool.stats().await.unwrap();
    assert!(s.cooling_keys.is_empty(), "{:?}", s.cooling_keys);
    assert!(s.keys.contains(&"t:cool".to_string()));
    drop(lease);

    // The success reset everything: two failures go to the callers (no probation),
    // and the third cools for the initial 10 s again, not 20 s.
    for n in 6..=8 {
        let err = pool
            .get_or_create("t:cool", h(2), failing(&c, Duration::ZERO))
            .await
            .unwrap_err();
        assert_factory_error(&err, "t:cool", 1);
        assert_eq!(c.builds(), n);
    }
    let err = pool
        .get_or_create("t:cool", h(2), failing(&c, Duration::ZERO))
        .await
        .unwrap_err();
    let retry_after = assert_cooling(&err, "t:cool");
    assert!(
        retry_after <= Duration::from_secs(10) && retry_after > Duration::from_secs(9),
        "after a success the cool-down starts over at 10 s, got {retry_after:?}"
    );
    assert_eq!(c.builds(), 8);
    // The instance built for h(1) was retired by the h(2) call and disposed once.
    eventually("the h(1) instance is disposed", async || c.disposed() == 1).await;
}

/// After a cool-down ends, a single failure cools the key again, for twice as long (20 s).
#[tokio::test(start_paused = true)]
async fn failure_after_cooldown_doubles_it() {
    let c = Counters::new();
    let pool = builder(&c).restart_policy(cooling_policy()).spawn().await.unwrap();
    for _ in 0..3 {
        pool.get_or_create("t:cool", h(1), failing(&c, Duration::ZERO))
            .await
            .unwrap_err();
    }
    let first = assert_cooling(
        &pool
            .get_or_create("t:cool", h(1), failing(&c, Duration::ZERO))
            .await
            .unwrap_err(),
        "t:cool",
    );
    assert!(first <= Duration::from_secs(10));
    assert_eq!(c.builds(), 3);

    tokio::time::advance(first).await;
    // Probation: one failure gives the error to the caller and cools again.
    let err = pool
        .get_or_create("t:cool", h(1), failing(&c, Duration::ZERO))
        .await
        .unwrap_err();
    assert_factory_error(&err, "t:cool", 1);
    assert_eq!(c.builds(), 4);
    let second = assert_cooling(
        &pool
            .get_or_create("t:cool", h(1), failing(&c, Duration::ZERO))
            .await
            .unwrap_err(),
        "t:cool",
    );
    assert!(
        second <= Duration::from_secs(20) && second > Duration::from_secs(19),
        "second cool-down should be 20 s, got {second:?}"
    );
    assert_eq!(c.builds(), 4);
    let s = pool.stats().await.unwrap();
    assert_eq!(s.cooling_keys.len(), 1);
    assert!(s.cooling_keys[0].retry_after > Duration::from_secs(19));

    tokio::time::advance(Duration::from_secs(10)).await;
    assert!(
        pool.get_or_create("t:cool", h(1), failing(&c, Duration::ZERO))
            .await
            .unwrap_err()
            .retry_after()
            .is_some(),
        "still cooling 10 s into a 20 s cool-down"
    );
    assert_eq!(c.builds(), 4);

    tokio::time::advance(second - Duration::from_secs(10)).await;
    let lease = pool
        .get_or_create("t:cool", h(1), factory(&c, "t:cool", h(1), Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(lease.serial, 5);
    assert_eq!(pool.stats().await.unwrap().build_failures, 4);
}

/// `invalidate` ends a cool-down: the next call runs the factory at once.
#[tokio::test(start_paused = true)]
async fn invalidate_ends_cooldown() {
    let c = Counters::new();
    let pool = builder(&c).restart_policy(cooling_policy()).spawn().await.unwrap();
    for _ in 0..3 {
        pool.get_or_create("t:cool", h(1), failing(&c, Duration::ZERO))
            .await
            .unwrap_err();
    }
    assert_cooling(
        &pool
            .get_or_create("t:cool", h(1), failing(&c, Duration::ZERO))
            .await
            .unwrap_err(),
        "t:cool",
    );
    assert_eq!(pool.stats().await.unwrap().cooling_keys.len(), 1);
    let start = Instant::now();

    // Nothing resident and nothing in flight, so `false`; the cool-down ends anyway.
    assert!(!pool.invalidate("t:cool").await.unwrap());
    assert!(pool.stats().await.unwrap().cooling_keys.is_empty());

    let lease = pool
        .get_or_create("t:cool", h(1), factory(&c, "t:cool", h(1), Duration::ZERO))
        .await
        .expect("invalidate ends the cool-down");
    assert_eq!(lease.serial, 4);
    assert_eq!(c.builds(), 4);
    assert_eq!(Instant::now(), start, "no waiting for the cool-down");
}

/// A key actor stopped from outside is replaced: one restart counted, the key keeps working, other keys unaffected, old instance disposed once.
#[tokio::test(start_paused = true)]
async fn key_actor_stopped_from_outside_is_restarted() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let cell = pool.actor().get_cell();

    let old_a = pool
        .get_or_create("t:a", h(1), factory(&c, "t:a", h(1), Duration::ZERO))
        .await
        .unwrap();
    let children = cell.get_children();
    assert_eq!(children.len(), 1, "one key actor");
    let actor_a = children[0].clone();
    let b = pool
        .get_or_create("t:b", h(1), factory(&c, "t:b", h(1), Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(cell.get_children().len(), 2);
    assert!(cell.get_children().iter().any(|ch| ch.get_id() == actor_a.get_id()));

    actor_a.stop(None);
    let p = pool.clone();
    eventually("the supervisor counts the restart", async || {
        p.stats().await.unwrap().actor_restarts == 1
    })
    .await;
    settle().await;
    assert_eq!(c.disposed(), 0, "disposed while still leased");
    assert!(
        cell.get_children().iter().all(|ch| ch.get_id() != actor_a.get_id()),
        "the stopped actor is still a child"
    );

    // The key keeps working with a fresh instance.
    let new_a = pool
        .get_or_create("t:a", h(1), factory(&c, "t:a", h(1), Duration::ZERO))
        .await
        .expect("a fresh key actor serves the key");
    assert!(!Lease::ptr_eq(&old_a, &new_a));
    assert_eq!(new_a.serial, 3);
    assert_eq!(c.builds(), 3);
    assert_eq!(cell.get_children().len(), 2);
    // Another key is unaffected: still a hit on the same instance.
    let b2 = pool
        .get_or_create("t:b", h(1), factory(&c, "t:b", h(1), Duration::ZERO))
        .await
        .unwrap();
    assert!(Lease::ptr_eq(&b, &b2));
    assert_eq!(c.builds(), 3);

    // The old instance is disposed once its last lease goes, exactly once.
    assert_eq!(old_a.key, "t:a");
    drop(old_a);
    eventually("the old instance is disposed", async || c.disposed() == 1).await;
    settle().await;
    tokio::time::advance(Duration::from_secs(30)).await;
    settle().await;
    assert_eq!(c.disposed(), 1);
    assert_eq!(*c.disposed_keys.lock().unwrap(), vec!["t:a".to_string()]);
    let s = pool.stats().await.unwrap();
    assert_eq!(s.actor_restarts, 1);
    assert_eq!(s.disposals, 1);
    assert_eq!(s.builds, 3);
    assert_eq!(s.keys, vec!["t:a".to_string(), "t:b".to_string()]);
}

/// A cool-down belongs to the credentials that failed: while `k` cools down for
/// hash 1, a caller presenting hash 2 (the rotated key) gets one immediate
/// attempt and its instance; hash 1 still cools until it is served again.
#[tokio::test(start_paused = true)]
async fn new_credentials_are_not_refused_by_a_cool_down() {
    let c = Counters::new();
    let pool = builder(&c).restart_policy(cool_at_once()).spawn().await.unwrap();
    let err = pool
        .get_or_create("k", h(1), failing(&c, Duration::ZERO))
        .await
        .unwrap_err();
    assert!(matches!(err, PoolError::Factory { .. }), "{err:?}");
    settle().await; // the idle actor is stopped; the supervisor keeps the history
    let err = pool
        .get_or_create("k", h(1), failing(&c, Duration::ZERO))
        .await
        .unwrap_err();
    assert!(matches!(err, PoolError::CoolingDown { .. }), "{err:?}");
    assert_eq!(c.builds(), 1);

    let lease = pool
        .get_or_create("k", h(2), factory(&c, "k", h(2), Duration::ZERO))
        .await
        .expect("new credentials get an attempt at once");
    assert_eq!(lease.hash, h(2));
    assert_eq!(c.builds(), 2);
    assert!(
        pool.stats().await.unwrap().cooling_keys.is_empty(),
        "the success ends the cool-down"
    );
}

/// While the key actor is alive (a build for other credentials keeps it busy),
/// the cool-down is also per credentials: hash 2 fails and cools, hash 3 is tried.
#[tokio::test(start_paused = true)]
async fn cool_down_of_one_hash_does_not_refuse_another_in_the_actor() {
    let c = Counters::new();
    let pool = builder(&c).restart_policy(cool_at_once()).spawn().await.unwrap();
    let _held = pool
        .get_or_create("k", h(1), factory(&c, "k", h(1), Duration::ZERO))
        .await
        .unwrap();
    let err = pool
        .get_or_create("k", h(2), failing(&c, Duration::ZERO))
        .await
        .unwrap_err();
    assert!(matches!(err, PoolError::Factory { .. }), "{err:?}");
    let err = pool
        .get_or_create("k", h(2), failing(&c, Duration::ZERO))
        .await
        .unwrap_err();
    assert!(matches!(err, PoolError::CoolingDown { .. }), "{err:?}");
    let lease = pool
        .get_or_create("k", h(3), factory(&c, "k", h(3), Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(lease.hash, h(3));
    assert_eq!(c.builds(), 3);
}
