//! The restart policy of a failing factory (`RestartPolicy`): retries with
//! a jittered backoff within one call, then a cool-down past the intensity
//! (answered at once with `CoolingDown`, doubling on a failure after it, reset
//! by a success), kept per credentials so that a rotated key is tried at
//! once. Paused clock: backoffs and cool-downs take no real time; factory
//! calls are counted exactly.

mod common;
use common::*;

use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use tokio::time::Instant;
use warmpool::{Lease, PoolError};

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
