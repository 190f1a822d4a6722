//! Expiry: the time to live (absolute from creation, hits do not extend
//! it), the time to idle (from the last hand-out) and per-entry TTLs, zero
//! meaning never; the sweep retiring expired instances without calls (paced
//! when it finds many); leased expired instances retired at once but
//! disposed only after their lease; and the exact boundary: served at the
//! deadline, expired 1 ms after it. Paused clock: every deadline is exact.

mod common;
use common::*;

use std::sync::Arc;
use std::time::Duration;

use warmpool::{Lease, Pool};

const SEC: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

async fn advance(d: Duration) {
    tokio::time::advance(d).await;
}

/// Hits every 3 s do not extend a 10 s TTL: the instance is rebuilt just after 10 s from its creation.
#[tokio::test(start_paused = true)]
async fn ttl_is_absolute_from_creation_and_hits_do_not_extend_it() {
    let c = Counters::new();
    let pool = builder(&c)
        .time_to_live(10 * SEC)
        .sweep_interval(Duration::ZERO)
        .spawn()
        .await
        .unwrap();

    let first = get(&pool, &c, "k").await; // t = 0
    let first_id = first.instance_id();
    assert_eq!(first.serial, 1);
    drop(first);
    for t in [3, 6, 9] {
        advance(3 * SEC).await;
        let lease = get(&pool, &c, "k").await;
        assert_eq!(lease.instance_id(), first_id, "t = {t} s is within the TTL: a hit");
    }
    assert_eq!(c.builds(), 1);

    advance(SEC + Duration::from_millis(1)).await; // just past 10 s since creation
    let second = get(&pool, &c, "k").await;
    assert_ne!(second.instance_id(), first_id, "TTL passed: a fresh instance");
    assert_eq!(second.serial, 2);
    assert_eq!(c.builds(), 2);
    eventually("the expired instance is disposed", async || c.disposed() == 1).await;

    let s = pool.stats().await.unwrap();
    assert_eq!(s.retirements.ttl, 1);
    assert_eq!(s.retirements.idle, 0);
    assert_eq!(s.retirements.total(), 1);
    assert_eq!((s.hits, s.misses, s.builds), (3, 2, 2));
    assert_eq!(s.size, 1);
    settle().await;
    assert_eq!(c.disposed(), 1, "exactly one disposal");
}

/// With a 5 s idle time, a key used every 4 s is never rebuilt, and a key left alone over 5 s is rebuilt on its next call.
#[tokio::test(start_paused = true)]
async fn idle_time_counts_from_last_hand_out() {
    let c = Counters::new();
    let pool = builder(&c)
        .time_to_live(300 * SEC)
        .time_to_idle(5 * SEC)
        .sweep_interval(Duration::ZERO)
        .spawn()
        .await
        .unwrap();

    let busy = get(&pool, &c, "busy").await; // t = 0
    let busy_id = busy.instance_id();
    drop(busy);
    let lonely = get(&pool, &c, "lonely").await; // t = 0
    let lonely_id = lonely.instance_id();
    drop(lonely);
    assert_eq!(c.builds(), 2);

    advance(4 * SEC).await; // t = 4
    assert_eq!(get(&pool, &c, "busy").await.instance_id(), busy_id);

    advance(SEC + Duration::from_millis(1)).await; // t = 5.001: "lonely" untouched for over 5 s
    let rebuilt = get(&pool, &c, "lonely").await;
    assert_ne!(rebuilt.instance_id(), lonely_id, "idle for over 5 s: rebuilt");
    assert_eq!(c.builds(), 3);
    drop(rebuilt);
    eventually("the idle instance is disposed", async || c.disposed() == 1).await;
    assert_eq!(c.disposed_keys.lock().unwrap().as_slice(), ["lonely"]);

    // "busy" keeps being used every 4 s, well past 5 s since creation.
    advance(3 * SEC - Duration::from_millis(1)).await; // t = 8, 4 s after its last use at t = 4
    assert_eq!(
        get(&pool, &c, "busy").await.instance_id(),
        busy_id,
        "used every 4 s: stays"
    );
    for _ in 0..4 {
        advance(4 * SEC).await; // t = 12, 16, 20, 24
        assert_eq!(
            get(&pool, &c, "busy").await.instance_id(),
            busy_id,
            "used every 4 s: stays"
        );
    }
    assert_eq!(c.builds(), 3, "no rebuild of the busy key");

    let s = pool.stats().await.unwrap();
    assert_eq!(s.retirements.idle, 1);
    assert_eq!(s.retirements.ttl, 0);
    assert_eq!(s.retirements.total(), 1);
    settle().await;
    assert_eq!(c.disposed(), 1);
}

/// A TTL of zero means never: the instance is still served after 10 days, sweep running.
#[tokio::test(start_paused = true)]
async fn zero_ttl_means_never_expires() {
    let c = Counters::new();
    let pool = builder(&c)
        .time_to_live(Duration::ZERO)
        .time_to_idle(Duration::ZERO)
        .sweep_interval(Duration::from_secs(3_600))
        .spawn()
        .await
        .unwrap();

    let first = get(&pool, &c, "forever").await;
    let first_id = first.instance_id();
    drop(first);

    for day in 1..=10 {
        advance(Duration::from_secs(86_400)).await;
        settle().await; // let the sweep ticks of that day run
        let lease = get(&pool, &c, "forever").await;
        assert_eq!(lease.instance_id(), first_id, "day {day}: still the first instance");
    }
    assert_eq!(c.builds(), 1);
    assert_eq!(c.disposed(), 0);
    let s = pool.stats().await.unwrap();
    assert_eq!(s.retirements.total(), 0);
    assert_eq!(s.size, 1);
    assert_eq!(s.hits, 10);
}

/// With no calls at all, a sweep tick past the TTL retires and disposes the instance.
#[tokio::test(start_paused = true)]
async fn sweep_retires_ttl_expired_instance_without_calls() {
    let c = Counters::new();
    let pool = builder(&c)
        .time_to_live(10 * SEC)
        .sweep_interval(SEC)
        .spawn()
        .await
        .unwrap();

    drop(get(&pool, &c, "k").await);

    advance(9 * SEC).await;
    settle().await;
    assert_eq!(c.disposed(), 0, "not expired yet at 9 s");
    assert_eq!(pool.stats().await.unwrap().size, 1);

    advance(2 * SEC).await; // past the TTL and at least one tick
    eventually("the sweep disposes the expired instance", async || c.disposed() == 1).await;
    eventually("the key leaves the pool", async || {
        pool.stats().await.unwrap().size == 0
    })
    .await;
    let s = pool.stats().await.unwrap();
    assert_eq!(s.retirements.ttl, 1);
    assert_eq!(s.retirements.total(), 1);
    assert!(s.keys.is_empty());
    assert_eq!(c.builds(), 1, "the sweep itself never builds");
    assert_eq!(c.disposed_keys.lock().unwrap().as_slice(), ["k"]);
}

/// With no calls at all, a sweep tick past the idle time retires and disposes the instance.
#[tokio::test(start_paused = true)]
async fn sweep_retires_idle_instance_without_calls() {
    let c = Counters::new();
    let pool = builder(&c)
        .time_to_live(300 * SEC)
        .time_to_idle(5 * SEC)
        .sweep_interval(SEC)
        .spawn()
        .await
        .unwrap();

    drop(get(&pool, &c, "k").await);

    advance(4 * SEC).await;
    settle().await;
    assert_eq!(c.disposed(), 0, "not idle long enough at 4 s");
    assert_eq!(pool.stats().await.unwrap().size, 1);

    advance(2 * SEC).await; // 6 s idle, ticks at 5 s and 6 s
    eventually("the sweep disposes the idle instance", async || c.disposed() == 1).await;
    eventually("the key leaves the pool", async || {
        pool.stats().await.unwrap().size == 0
    })
    .await;
    let s = pool.stats().await.unwrap();
    assert_eq!(s.retirements.idle, 1);
    assert_eq!(s.retirements.ttl, 0);
    assert_eq!(s.retirements.total(), 1);
    assert!(s.keys.is_empty());
    assert_eq!(c.builds(), 1);
}

/// A sweep interval of zero turns the sweep off: nothing is disposed without calls, but the next call still rebuilds.
#[tokio::test(start_paused = true)]
async fn zero_sweep_interval_disables_active_expiry() {
    let c = Counters::new();
    let pool = builder(&c)
        .time_to_live(10 * SEC)
        .sweep_interval(Duration::ZERO)
        .spawn()
        .await
        .unwrap();

    let first = get(&pool, &c, "k").await;
    let first_id = first.instance_id();
    drop(first);

    for _ in 0..30 {
        advance(SEC).await;
        settle().await;
    }
    assert_eq!(c.disposed(), 0, "no sweep: the expired instance stays until a call");
    let s = pool.stats().await.unwrap();
    assert_eq!(s.size, 1);
    assert_eq!(s.retirements.total(), 0);

    let second = get(&pool, &c, "k").await;
    assert_ne!(second.instance_id(), first_id, "the call finds it expired and rebuilds");
    assert_eq!(c.builds(), 2);
    eventually("the expired instance is disposed", async || c.disposed() == 1).await;
    assert_eq!(pool.stats().await.unwrap().retirements.ttl, 1);
}

/// An expired instance that is leased is not served to new callers (call path), and is disposed only once the lease is dropped.
#[tokio::test(start_paused = true)]
async fn leased_expired_instance_retired_on_call_disposed_after_lease_drop() {
    let c = Counters::new();
    let pool = builder(&c)
        .time_to_live(10 * SEC)
        .sweep_interval(Duration::ZERO)
        .spawn()
        .await
        .unwrap();

    let held = get(&pool, &c, "k").await;
    advance(11 * SEC).await;

    let fresh = get(&pool, &c, "k").await;
    assert!(!Lease::ptr_eq(&held, &fresh), "an expired instance is not handed out");
    assert_eq!((held.serial, fresh.serial), (1, 2));
    assert_eq!(c.builds(), 2);
    let again = get(&pool, &c, "k").await;
    assert!(Lease::ptr_eq(&fresh, &again), "new callers get the new instance");
    let s = pool.stats().await.unwrap();
    assert_eq!(s.retirements.ttl, 1);

    settle().await;
    assert_eq!(c.disposed(), 0, "retired but still leased: not disposed");
    assert_eq!(held.key, "k", "the held lease still works");

    drop(held);
    eventually("disposed once the last lease is gone", async || c.disposed() == 1).await;
    settle().await;
    assert_eq!(c.disposed(), 1);
    assert_eq!(c.builds(), 2);
}

/// An expired instance that is leased is retired by the sweep (not served again), and disposed only once the lease is dropped.
#[tokio::test(start_paused = true)]
async fn leased_expired_instance_retired_by_sweep_disposed_after_lease_drop() {
    let c = Counters::new();
    let pool = builder(&c)
        .time_to_live(10 * SEC)
        .sweep_interval(SEC)
        .spawn()
        .await
        .unwrap();

    let held = get(&pool, &c, "k").await;
    advance(11 * SEC).await;
    eventually("the sweep retires the expired instance", async || {
        pool.stats().await.unwrap().retirements.ttl == 1
    })
    .await;
    settle().await;
    assert_eq!(c.disposed(), 0, "retired but still leased: not disposed");

    let fresh = get(&pool, &c, "k").await;
    assert!(!Lease::ptr_eq(&held, &fresh), "a retired instance is not handed out");
    assert_eq!(fresh.serial, 2);
    assert_eq!(c.builds(), 2);
    assert_eq!(c.disposed(), 0);

    drop(held);
    eventually("disposed once the last lease is gone", async || c.disposed() == 1).await;
    let s = pool.stats().await.unwrap();
    assert_eq!(s.retirements.ttl, 1);
    assert_eq!(s.retirements.total(), 1);
    assert_eq!(s.live_leases, 1);
}

/// Serves `key` once, then checks that it is served again (same instance)
/// `deadline` later, exactly at its deadline, and rebuilt once a further
/// `then` has passed (1 ms past the deadline).
async fn served_at_the_deadline_and_not_after(
    pool: &Pool<Client>,
    c: &Arc<Counters>,
    deadline: Duration,
    then: Duration,
) {
    let first = get(pool, c, "k").await;
    let id = first.instance_id();
    drop(first);
    advance(deadline).await;
    let at = get(pool, c, "k").await;
    assert_eq!(at.instance_id(), id, "served at exactly the deadline");
    drop(at);
    advance(then).await;
    let after = get(pool, c, "k").await;
    assert_ne!(after.instance_id(), id, "expired after the deadline");
}

/// The pool TTL: an instance is served at exactly its TTL and expired 1 ms after it.
#[tokio::test(start_paused = true)]
async fn ttl_boundary_serves_at_the_deadline() {
    let c = Counters::new();
    let pool = builder(&c)
        .time_to_live(10 * SEC)
        .sweep_interval(Duration::ZERO)
        .spawn()
        .await
        .unwrap();
    served_at_the_deadline_and_not_after(&pool, &c, 10 * SEC, Duration::from_millis(1)).await;
    assert_eq!(c.builds(), 2);
}

/// The idle time: served at exactly the idle limit since the last hand-out, expired after it.
#[tokio::test(start_paused = true)]
async fn idle_boundary_serves_at_the_deadline() {
    let c = Counters::new();
    let pool = builder(&c)
        .time_to_live(Duration::ZERO)
        .time_to_idle(10 * SEC)
        .sweep_interval(Duration::ZERO)
        .spawn()
        .await
        .unwrap();
    // The hand-out at the deadline restarts the idle time.
    served_at_the_deadline_and_not_after(&pool, &c, 10 * SEC, 10 * SEC + Duration::from_millis(1)).await;
    assert_eq!(c.builds(), 2);
}

/// A per-entry TTL: served at exactly its TTL, expired after it.
#[tokio::test(start_paused = true)]
async fn per_entry_ttl_boundary_serves_at_the_deadline() {
    let c = Counters::new();
    let pool = builder(&c).sweep_interval(Duration::ZERO).spawn().await.unwrap();
    let get_ttl = || pool.get_or_create_with_ttl("k", h(1), 7 * SEC, factory(&c, "k", h(1), Duration::ZERO));
    let id = get_ttl().await.unwrap().instance_id();
    advance(7 * SEC).await;
    assert_eq!(get_ttl().await.unwrap().instance_id(), id, "served at exactly its TTL");
    advance(Duration::from_millis(1)).await;
    assert_ne!(get_ttl().await.unwrap().instance_id(), id, "expired after it");
}

/// The sweep follows the same rule: a tick at exactly the TTL retires nothing.
#[tokio::test(start_paused = true)]
async fn sweep_at_the_exact_ttl_retires_nothing() {
    let c = Counters::new();
    let pool = builder(&c)
        .time_to_live(10 * SEC)
        .sweep_interval(5 * SEC)
        .spawn()
        .await
        .unwrap();
    drop(get(&pool, &c, "k").await);
    // Ticks at 5 s and 10 s (the deadline): nothing retired.
    advance(10 * SEC).await;
    settle().await;
    assert_eq!(pool.stats().await.unwrap().retirements.ttl, 0);
    // The tick at 15 s retires it.
    advance(5 * SEC).await;
    eventually("retired by the sweep", async || c.disposed() == 1).await;
    assert_eq!(pool.stats().await.unwrap().retirements.ttl, 1);
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
