//! `Pool::get` (a lookup that never builds) and `Pool::retire` (retiring
//! exactly one instance), on the paused clock, with factory calls and
//! disposals counted exactly.

mod common;

use std::time::Duration;

use common::{Client, Counters, builder, eventually, factory, failing, h, settle};
use tokio::time::advance;
use warmpool::{Lease, PoolError, RestartPolicy};

const SEC: Duration = Duration::from_secs(1);

/// 100 `get`s of an absent key build nothing and count no hit, miss or failure; on a cooling key `get` answers `None` and counts nothing either.
#[tokio::test(start_paused = true)]
async fn get_never_builds_never_counts_a_failure_and_never_cools_down() {
    let c = Counters::new();
    let pool = builder(&c)
        .restart_policy(RestartPolicy {
            max_retries: 0,
            intensity: 1,
            ..RestartPolicy::default()
        })
        .spawn()
        .await
        .unwrap();
    for _ in 0..100 {
        assert!(pool.get("k", h(1)).is_none());
    }
    settle().await;
    let s = pool.stats().await.unwrap();
    assert_eq!(
        (c.builds(), s.misses, s.hits, s.build_failures, s.size),
        (0, 0, 0, 0, 0)
    );
    assert!(s.cooling_keys.is_empty());
    // A cooling key: `get` answers None and does not extend or count anything.
    let err = pool.get_or_create("k", h(1), failing(&c, Duration::ZERO)).await;
    assert!(matches!(err, Err(PoolError::Factory { .. })));
    assert!(pool.get("k", h(1)).is_none());
    let s = pool.stats().await.unwrap();
    assert_eq!((c.builds(), s.build_failures, s.cooling_keys.len()), (1, 1, 1));
}

/// `get` returns the instance `get_or_create` built and counts a hit, and answers `None` for other credentials (retiring nothing), another key, an expired instance and a shut-down pool.
#[tokio::test(start_paused = true)]
async fn get_serves_what_get_or_create_would_hit_and_nothing_else() {
    let c = Counters::new();
    let pool = builder(&c).time_to_live(10 * SEC).spawn().await.unwrap();
    let built = pool
        .get_or_create("k", h(1), factory(&c, "k", h(1), SEC))
        .await
        .unwrap();
    let found = pool.get("k", h(1)).expect("a hit");
    assert!(Lease::ptr_eq(&built, &found));
    assert!(pool.get("k", h(2)).is_none(), "other credentials");
    assert!(pool.get("other", h(1)).is_none(), "another key");
    assert_eq!(pool.get("k", h(1)).unwrap().serial, 1, "a wrong hash retired nothing");
    assert_eq!(pool.stats().await.unwrap().hits, 2);
    advance(10 * SEC + Duration::from_millis(1)).await;
    assert!(pool.get("k", h(1)).is_none(), "expired");
    drop((built, found));
    pool.shutdown(SEC).await.unwrap();
    assert!(pool.get("k", h(1)).is_none(), "shut down");
    assert_eq!(c.builds(), 1);
}

/// `retire` takes the leased instance out of the pool once (a second call returns false), it is disposed only when the lease drops, and the next call builds a new one.
#[tokio::test(start_paused = true)]
async fn retire_retires_exactly_the_leased_instance_once() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let lease = pool
        .get_or_create("k", h(1), factory(&c, "k", h(1), Duration::ZERO))
        .await
        .unwrap();
    assert!(pool.retire(&lease).await);
    assert!(pool.get("k", h(1)).is_none(), "no call after retire gets it");
    assert!(!pool.retire(&lease).await, "already retired");
    assert_eq!(lease.serial, 1, "the lease itself keeps it alive");
    settle().await;
    assert_eq!(c.disposed(), 0);
    drop(lease);
    eventually("disposed after the last lease", async || c.disposed() == 1).await;
    let next = pool
        .get_or_create("k", h(1), factory(&c, "k", h(1), Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(next.serial, 2);
    assert_eq!(pool.stats().await.unwrap().retirements.invalidated, 1);
}

/// `retire` of a lease whose instance a credentials rotation replaced returns false and leaves the new instance served.
#[tokio::test(start_paused = true)]
async fn retire_of_an_old_lease_after_a_rotation_leaves_the_new_instance_alone() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let old = pool
        .get_or_create("k", h(1), factory(&c, "k", h(1), Duration::ZERO))
        .await
        .unwrap();
    let new = pool
        .get_or_create("k", h(2), factory(&c, "k", h(2), Duration::ZERO))
        .await
        .unwrap();
    assert!(!pool.retire(&old).await, "the key holds a newer instance");
    assert!(Lease::ptr_eq(&pool.get("k", h(2)).unwrap(), &new));
    let s = pool.stats().await.unwrap();
    assert_eq!((s.retirements.credentials, s.retirements.invalidated), (1, 0));
}

/// `retire` of another pool's lease returns false and leaves this pool's instance (same instance id) served; the lease's own pool retires it.
#[tokio::test(start_paused = true)]
async fn retire_of_a_lease_from_another_pool_does_nothing() {
    let c = Counters::new();
    let (a, b) = (builder(&c).spawn().await.unwrap(), builder(&c).spawn().await.unwrap());
    let from_a = a
        .get_or_create("k", h(1), factory(&c, "k", h(1), Duration::ZERO))
        .await
        .unwrap();
    let in_b = b
        .get_or_create("k", h(1), factory(&c, "k", h(1), Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(
        from_a.instance_id(),
        in_b.instance_id(),
        "ids are per pool: both are the first"
    );
    assert!(!b.retire(&from_a).await);
    assert!(Lease::ptr_eq(&b.get("k", h(1)).unwrap(), &in_b));
    assert!(a.retire(&from_a).await);
}

/// `retire` returns false for an instance a prefix invalidation already marked while its paced retirements are pending, and for one the shutdown retired.
#[tokio::test(start_paused = true)]
async fn retire_during_a_pending_prefix_invalidation_and_after_shutdown() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let leases: Vec<Lease<Client>> = {
        let mut v = Vec::new();
        for i in 0..40 {
            let key = format!("t:{i}");
            v.push(
                pool.get_or_create(&key, h(1), factory(&c, &key, h(1), Duration::ZERO))
                    .await
                    .unwrap(),
            );
        }
        v
    };
    // Retirements of a prefix invalidation are paced; a retire of one of
    // its keys waits for nothing and finds the instance already retired.
    assert_eq!(pool.invalidate_by_prefix("t:").await.unwrap(), 40);
    assert!(!pool.retire(&leases[39]).await);
    let last = pool
        .get_or_create("t:0", h(1), factory(&c, "t:0", h(1), Duration::ZERO))
        .await
        .unwrap();
    pool.shutdown(SEC).await.unwrap();
    assert!(!pool.retire(&last).await, "shut down: the shutdown retired it");
    assert!(matches!(pool.stats().await, Err(PoolError::ShutDown)));
}

/// Once `get_or_create` returned a lease, a `get` for the same key and hash
/// that starts afterwards finds it: the key actor publishes an instance
/// before it answers anyone waiting on its build. Real threads, 2,000 fresh
/// keys, every wait bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_right_after_get_or_create_returns_the_instance_just_handed_out() {
    let c = Counters::new();
    let pool = builder(&c).max_entries(0).spawn().await.unwrap();
    let mut missed = 0;
    for round in 0..2_000 {
        let key = format!("k{round}");
        let lease = common::bounded(
            SEC * 10,
            "get_or_create",
            pool.get_or_create(&key, h(1), factory(&c, &key, h(1), Duration::ZERO)),
        )
        .await
        .unwrap();
        match pool.get(&key, h(1)) {
            Some(found) => assert!(Lease::ptr_eq(&found, &lease), "round {round}: the same instance"),
            None => missed += 1,
        }
    }
    assert_eq!(missed, 0, "get missed an instance a caller had just been handed");
    assert_eq!(c.builds(), 2_000);
}

/// While a resident key is only being refreshed (no retirement), `get`
/// sees the old instance or the new one, never neither. Real threads: a
/// reader loops on `get` while 300 refreshes swap the instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_during_refresh_swaps_sees_the_old_or_the_new_instance() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    drop(
        pool.get_or_create("k", h(1), factory(&c, "k", h(1), Duration::ZERO))
            .await
            .unwrap(),
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (pool, stop) = (pool.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut seen, mut missed) = (0u64, 0u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match pool.get("k", h(1)) {
                    Some(_) => seen += 1,
                    None => missed += 1,
                }
                tokio::task::coop::consume_budget().await;
            }
            (seen, missed)
        })
    };
    for _ in 0..300 {
        assert!(common::bounded(SEC * 10, "refresh", pool.refresh("k")).await.unwrap());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (seen, missed) = common::bounded(SEC * 10, "the reader", reader).await.unwrap();
    assert!(seen > 0, "the reader ran");
    assert_eq!(
        missed,
        0,
        "{missed} of {} lookups found neither instance",
        seen + missed
    );
    assert_eq!(c.builds(), 301);
}
