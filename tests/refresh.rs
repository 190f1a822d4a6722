//! Serving while rebuilding: refresh-ahead (`refresh_after`), `Pool::refresh`
//! and `Pool::refresh_version`, and how a rebuild in flight meets
//! invalidation, `insert`, a credentials rotation, capacity eviction, expiry
//! and shutdown. Paused clock throughout; factory calls and disposals are
//! counted exactly.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::Duration;

use common::{Client, Counters, builder, eventually, factory, h, settle};
use futures::future::BoxFuture;
use tokio::time::{Instant, advance};
use warmpool::{ConfigCaps, Pool, PoolConfig, PoolError, RestartPolicy};

const SEC: Duration = Duration::from_secs(1);

/// A factory that builds after `delay` while `ok` is set and fails otherwise, counting calls.
fn switchable(
    counters: &Arc<Counters>,
    key: &str,
    delay: Duration,
    ok: &Arc<AtomicBool>,
) -> impl Fn() -> BoxFuture<'static, Result<Client, std::io::Error>> + Send + Sync + 'static {
    let (c, ok, key) = (counters.clone(), ok.clone(), key.to_string());
    move || {
        let serial = c.builds.fetch_add(1, SeqCst) + 1;
        let (ok, key) = (ok.load(SeqCst), key.clone());
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            if ok {
                Ok(Client {
                    key,
                    hash: h(1),
                    serial,
                })
            } else {
                Err(std::io::Error::other("provider down"))
            }
        })
    }
}

/// A pool with refresh-ahead after 10 s and a 60 s TTL, no sweep, no retries.
async fn refreshing_pool(counters: &Arc<Counters>) -> Pool<Client> {
    builder(counters)
        .time_to_live(60 * SEC)
        .refresh_after(10 * SEC)
        .sweep_interval(Duration::ZERO)
        .restart_policy(RestartPolicy::never())
        .spawn()
        .await
        .unwrap()
}

/// Builds `k`'s instance (the factory takes `delay`, and so will its
/// rebuilds) and drops the lease.
async fn warm(pool: &Pool<Client>, c: &Arc<Counters>, delay: Duration) {
    drop(
        pool.get_or_create("k", h(1), factory(c, "k", h(1), delay))
            .await
            .unwrap(),
    );
}

/// Gets `key` and asserts that no time passed: the call did not wait for a build.
async fn get_at_once(pool: &Pool<Client>, c: &Arc<Counters>, key: &str) -> usize {
    let before = Instant::now();
    let lease = pool.get_or_create(key, h(1), factory(c, key, h(1), SEC)).await.unwrap();
    assert_eq!(Instant::now(), before, "the call waited");
    lease.serial
}

/// Hits past `refresh_after` get the old instance at once and start one background rebuild, which is then published and the old instance disposed.
#[tokio::test(start_paused = true)]
async fn a_hit_past_refresh_after_is_served_at_once_and_one_rebuild_swaps_in() {
    let c = Counters::new();
    let pool = refreshing_pool(&c).await;
    let first = pool
        .get_or_create("k", h(1), factory(&c, "k", h(1), SEC))
        .await
        .unwrap();
    assert_eq!(first.serial, 1);
    let built_at = first.created_at();
    drop(first);
    advance(9 * SEC).await;
    assert_eq!(get_at_once(&pool, &c, "k").await, 1);
    settle().await;
    assert_eq!(c.builds(), 1, "younger than refresh_after: no rebuild");

    advance(2 * SEC).await;
    // Many hits past refresh_after: each served the old instance at once, one rebuild.
    for _ in 0..10 {
        assert_eq!(get_at_once(&pool, &c, "k").await, 1);
    }
    settle().await;
    assert_eq!(c.builds(), 2, "one background rebuild");
    assert_eq!(c.disposed(), 0);

    advance(SEC).await; // the rebuild's 1 s
    settle().await;
    let new = pool
        .get_or_create("k", h(1), factory(&c, "k", h(1), SEC))
        .await
        .unwrap();
    assert_eq!(new.serial, 2, "the rebuilt instance is published");
    assert!(new.created_at() > built_at);
    eventually("the old instance is disposed", async || c.disposed() == 1).await;
    let s = pool.stats().await.unwrap();
    assert_eq!((s.refreshes, s.retirements.refreshed, s.builds, s.misses), (1, 1, 2, 1));
    assert_eq!(s.refresh_failures, 0);
}

/// Once a refresh-ahead rebuild is published, the old instance, still leased, is disposed only when that lease drops.
#[tokio::test(start_paused = true)]
async fn a_leased_old_instance_is_disposed_only_after_its_last_lease() {
    let c = Counters::new();
    let pool = refreshing_pool(&c).await;
    warm(&pool, &c, SEC).await;
    advance(11 * SEC).await;
    let old = pool
        .get_or_create("k", h(1), factory(&c, "k", h(1), SEC))
        .await
        .unwrap();
    settle().await;
    advance(SEC).await;
    settle().await;
    assert_eq!(pool.get("k", h(1)).unwrap().serial, 2);
    assert_eq!(c.disposed(), 0, "the old instance is still leased");
    assert_eq!(old.serial, 1);
    drop(old);
    eventually("disposed after the last lease", async || c.disposed() == 1).await;
}

/// A failed refresh-ahead keeps serving the old instance until its TTL, never cools the key, and tries again only after a backoff.
#[tokio::test(start_paused = true)]
async fn a_failed_refresh_keeps_serving_the_old_instance_until_its_ttl_and_never_cools_the_key() {
    let c = Counters::new();
    let ok = Arc::new(AtomicBool::new(true));
    let pool = builder(&c)
        .time_to_live(30 * SEC)
        .refresh_after(10 * SEC)
        .sweep_interval(Duration::ZERO)
        .restart_policy(warmpool::RestartPolicy {
            max_retries: 0,
            intensity: 1, // a failing *call* would cool the key at once
            ..RestartPolicy::default()
        })
        .spawn()
        .await
        .unwrap();
    let f = || switchable(&c, "k", Duration::ZERO, &ok);
    assert_eq!(pool.get_or_create("k", h(1), f()).await.unwrap().serial, 1);
    ok.store(false, SeqCst);
    advance(11 * SEC).await;
    assert_eq!(pool.get_or_create("k", h(1), f()).await.unwrap().serial, 1);
    settle().await;
    let s = pool.stats().await.unwrap();
    assert_eq!((c.builds(), s.refresh_failures, s.build_failures), (2, 1, 1));
    assert!(s.cooling_keys.is_empty(), "a failed refresh never cools the key");
    // Within the backoff (at most 100 ms): served, no new attempt.
    for _ in 0..5 {
        assert_eq!(pool.get_or_create("k", h(1), f()).await.unwrap().serial, 1);
    }
    settle().await;
    assert_eq!(c.builds(), 2, "no attempt before the backoff has passed");
    // After it, the next hit asks again.
    advance(SEC).await;
    settle().await;
    assert_eq!(pool.get_or_create("k", h(1), f()).await.unwrap().serial, 1);
    settle().await;
    assert_eq!(c.builds(), 3);
    assert_eq!(pool.stats().await.unwrap().refresh_failures, 2);
    assert_eq!(c.disposed(), 0, "the old instance was never retired");
    // The TTL stays the hard limit: past it the call builds (and fails).
    advance(18 * SEC + Duration::from_millis(1)).await;
    let past_ttl = pool.get_or_create("k", h(1), f()).await;
    assert!(matches!(past_ttl, Err(PoolError::Factory { .. })), "{past_ttl:?}");
    eventually("the expired instance is disposed", async || c.disposed() == 1).await;
    assert_eq!(pool.stats().await.unwrap().retirements.ttl, 1);
}

/// A caller that finds the instance expired while its refresh-ahead rebuild runs waits for that rebuild instead of building its own.
#[tokio::test(start_paused = true)]
async fn a_caller_finding_the_instance_expired_during_its_refresh_joins_that_rebuild() {
    let c = Counters::new();
    let pool = builder(&c)
        .time_to_live(10 * SEC)
        .refresh_after(5 * SEC)
        .sweep_interval(Duration::ZERO)
        .spawn()
        .await
        .unwrap();
    let slow = || factory(&c, "k", h(1), 6 * SEC);
    assert_eq!(pool.get_or_create("k", h(1), slow()).await.unwrap().serial, 1); // built at t=6
    advance(6 * SEC).await; // t=12: age 6 s
    assert_eq!(pool.get_or_create("k", h(1), slow()).await.unwrap().serial, 1); // rebuild until t=18
    settle().await;
    assert_eq!(c.builds(), 2);
    advance(5 * SEC).await; // t=17: the old instance expired at t=16
    let start = Instant::now();
    let joined = pool.get_or_create("k", h(1), slow()).await.unwrap();
    assert_eq!(joined.serial, 2, "served by the rebuild in flight");
    assert_eq!(Instant::now() - start, SEC, "waited only for the rest of the rebuild");
    assert_eq!(c.builds(), 2, "no build of its own");
    let s = pool.stats().await.unwrap();
    assert_eq!((s.retirements.ttl, s.retirements.refreshed, s.refreshes), (1, 0, 0));
}

/// `refresh` rebuilds with the stored factory while callers get the old instance at once, and returns once the new one is published.
#[tokio::test(start_paused = true)]
async fn refresh_rebuilds_while_callers_are_served_and_returns_once_published() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    warm(&pool, &c, 2 * SEC).await;
    let refresh = tokio::spawn({
        let pool = pool.clone();
        async move { pool.refresh("k").await }
    });
    settle().await;
    assert_eq!(c.builds(), 2);
    advance(SEC).await;
    assert_eq!(
        get_at_once(&pool, &c, "k").await,
        1,
        "served the old instance meanwhile"
    );
    assert!(!refresh.is_finished());
    advance(SEC).await;
    assert!(refresh.await.unwrap().unwrap());
    assert_eq!(pool.get("k", h(1)).unwrap().serial, 2, "published when it returned");
    eventually("the old instance is disposed", async || c.disposed() == 1).await;
    assert_eq!(
        c.builds(),
        2,
        "the refresh used the stored factory; callers built nothing"
    );
}

/// `refresh` returns false and builds nothing for an absent key, an inserted instance (no factory) and an expired one.
#[tokio::test(start_paused = true)]
async fn refresh_of_a_key_with_nothing_to_rebuild_returns_false_without_building() {
    let c = Counters::new();
    let pool = builder(&c).time_to_live(10 * SEC).spawn().await.unwrap();
    assert!(!pool.refresh("absent").await.unwrap());
    pool.insert(
        "inserted",
        h(1),
        Client {
            key: "inserted".into(),
            hash: h(1),
            serial: 0,
        },
    )
    .await
    .unwrap();
    assert!(
        !pool.refresh("inserted").await.unwrap(),
        "no factory for an inserted instance"
    );
    warm(&pool, &c, Duration::ZERO).await;
    advance(11 * SEC).await;
    assert!(!pool.refresh("k").await.unwrap(), "expired");
    settle().await;
    assert_eq!(c.builds(), 1);
}

/// Five concurrent `refresh` calls on one key share one rebuild, and each returns true.
#[tokio::test(start_paused = true)]
async fn concurrent_refreshes_of_one_key_share_one_rebuild() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    warm(&pool, &c, SEC).await;
    let calls: Vec<_> = (0..5)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.refresh("k").await })
        })
        .collect();
    for call in calls {
        assert!(call.await.unwrap().unwrap());
    }
    assert_eq!(c.builds(), 2);
    assert_eq!(pool.stats().await.unwrap().refreshes, 1);
}

/// A `refresh` whose factory fails returns `PoolError::Factory` and leaves the old instance served: nothing retired, the key not cooling.
#[tokio::test(start_paused = true)]
async fn a_failed_refresh_returns_the_factory_error_and_leaves_the_entry_unchanged() {
    let c = Counters::new();
    let ok = Arc::new(AtomicBool::new(true));
    let pool = builder(&c)
        .restart_policy(RestartPolicy::never())
        .spawn()
        .await
        .unwrap();
    let old = pool
        .get_or_create("k", h(1), switchable(&c, "k", SEC, &ok))
        .await
        .unwrap();
    ok.store(false, SeqCst);
    let err = pool.refresh("k").await.unwrap_err();
    assert!(matches!(err, PoolError::Factory { .. }), "{err:?}");
    let now = pool.get("k", h(1)).expect("still served");
    assert!(warmpool::Lease::ptr_eq(&now, &old));
    let s = pool.stats().await.unwrap();
    assert_eq!(
        (s.refresh_failures, s.retirements.total(), s.cooling_keys.len()),
        (1, 0, 0)
    );
}

/// `refresh_version` rebuilds only for a newer version than the one served, a plain `refresh` keeps the version, and an invalidated key starts again at version 0.
#[tokio::test(start_paused = true)]
async fn versions_never_go_back() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let first = pool
        .get_or_create("k", h(1), factory(&c, "k", h(1), SEC))
        .await
        .unwrap();
    assert_eq!(first.version(), 0);
    assert!(pool.refresh_version("k", 3).await.unwrap());
    let v3 = pool.get("k", h(1)).unwrap();
    assert_eq!((v3.version(), v3.serial), (3, 2));
    assert!(
        !pool.refresh_version("k", 2).await.unwrap(),
        "older than what is served"
    );
    settle().await;
    assert_eq!(c.builds(), 2, "no build for an older version");
    // A plain refresh keeps the version.
    assert!(pool.refresh("k").await.unwrap());
    assert_eq!(pool.get("k", h(1)).unwrap().version(), 3);
    // A key that leaves the pool forgets its version.
    pool.invalidate("k").await.unwrap();
    settle().await;
    let rebuilt = pool
        .get_or_create("k", h(1), factory(&c, "k", h(1), SEC))
        .await
        .unwrap();
    assert_eq!(rebuilt.version(), 0);
}

/// While `refresh_version(5)` rebuilds, version 4 shares that rebuild, and version 7 waits for it and then rebuilds once more.
#[tokio::test(start_paused = true)]
async fn a_newer_version_waits_for_the_rebuild_in_flight_and_an_older_one_shares_it() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    warm(&pool, &c, SEC).await;
    let spawn = |v: u64| {
        let pool = pool.clone();
        tokio::spawn(async move { pool.refresh_version("k", v).await })
    };
    let v5 = spawn(5);
    settle().await;
    let v4 = spawn(4);
    let v7 = spawn(7);
    settle().await;
    assert_eq!(c.builds(), 2, "v4 shares v5's rebuild; v7 waits for it");
    assert!(v5.await.unwrap().unwrap());
    assert!(v4.await.unwrap().unwrap());
    assert_eq!(pool.get("k", h(1)).unwrap().version(), 5);
    assert!(v7.await.unwrap().unwrap());
    assert_eq!(c.builds(), 3);
    let last = pool.get("k", h(1)).unwrap();
    assert_eq!((last.version(), last.serial), (7, 3));
}

/// Starts `pool.refresh("k")` with a 2 s factory already stored and returns it once its rebuild runs.
async fn refresh_in_flight(pool: &Pool<Client>, c: &Arc<Counters>) -> tokio::task::JoinHandle<Result<bool, PoolError>> {
    warm(pool, c, 2 * SEC).await;
    let refresh = tokio::spawn({
        let pool = pool.clone();
        async move { pool.refresh("k").await }
    });
    settle().await;
    assert_eq!(c.builds(), 2, "the rebuild runs");
    refresh
}

/// `invalidate` during a `refresh` retires the old instance and the rebuild is never served (`refresh` returns false); both are disposed.
#[tokio::test(start_paused = true)]
async fn invalidate_during_a_refresh_drops_the_rebuild() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let refresh = refresh_in_flight(&pool, &c).await;
    assert!(pool.invalidate("k").await.unwrap());
    assert!(pool.get("k", h(1)).is_none(), "the old instance is gone");
    advance(2 * SEC).await;
    assert!(!refresh.await.unwrap().unwrap());
    assert!(pool.get("k", h(1)).is_none(), "the rebuild is never served");
    eventually("both instances disposed", async || c.disposed() == 2).await;
    let fresh = pool
        .get_or_create("k", h(1), factory(&c, "k", h(1), SEC))
        .await
        .unwrap();
    assert_eq!(fresh.serial, 3);
}

/// An instance inserted during a `refresh` stays served; the rebuild is dropped (`refresh` returns false) and both built instances are disposed.
#[tokio::test(start_paused = true)]
async fn insert_during_a_refresh_wins() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let refresh = refresh_in_flight(&pool, &c).await;
    let inserted = Client {
        key: "k".into(),
        hash: h(1),
        serial: 100,
    };
    pool.insert("k", h(1), inserted).await.unwrap();
    advance(2 * SEC).await;
    assert!(!refresh.await.unwrap().unwrap());
    assert_eq!(pool.get("k", h(1)).unwrap().serial, 100);
    eventually("the old and the rebuilt instance disposed", async || c.disposed() == 2).await;
}

/// A credentials rotation during a `refresh` drops the rebuild for the old credentials: only the new credentials' instance is served, and the old instance and the dropped rebuild are disposed.
#[tokio::test(start_paused = true)]
async fn a_rotation_during_a_refresh_drops_the_rebuild_for_the_old_credentials() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let refresh = refresh_in_flight(&pool, &c).await;
    let rotated = pool
        .get_or_create("k", h(2), factory(&c, "k", h(2), SEC))
        .await
        .unwrap();
    assert_eq!(rotated.hash, h(2), "never the old credentials' instance");
    assert!(!refresh.await.unwrap().unwrap());
    assert!(pool.get("k", h(1)).is_none());
    assert_eq!(pool.get("k", h(2)).unwrap().serial, rotated.serial);
    assert_eq!(c.builds(), 3);
    eventually("the old and the dropped rebuild disposed", async || c.disposed() == 2).await;
    let s = pool.stats().await.unwrap();
    assert_eq!(
        s.retirements.credentials, 2,
        "the old instance, and the rebuild it made useless"
    );
}

/// A capacity eviction of the key during its `refresh` (cap 1, another key built) drops the rebuild; the evicted instance and the rebuild are disposed.
#[tokio::test(start_paused = true)]
async fn capacity_eviction_during_a_refresh_drops_the_rebuild() {
    let c = Counters::new();
    let pool = builder(&c).max_entries(1).spawn().await.unwrap();
    let refresh = refresh_in_flight(&pool, &c).await;
    drop(
        pool.get_or_create("other", h(1), factory(&c, "other", h(1), Duration::ZERO))
            .await
            .unwrap(),
    );
    assert!(!refresh.await.unwrap().unwrap());
    assert!(pool.get("k", h(1)).is_none());
    let s = pool.stats().await.unwrap();
    assert_eq!(s.keys, vec!["other".to_string()]);
    eventually("the evicted instance and the dropped rebuild disposed", async || {
        c.disposed() == 2
    })
    .await;
}

/// `shutdown` during a `refresh` makes it fail with `ShutDown` and disposes the old instance and the rebuild exactly once.
#[tokio::test(start_paused = true)]
async fn shutdown_during_a_refresh_disposes_everything_exactly_once() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let refresh = refresh_in_flight(&pool, &c).await;
    let report = pool.shutdown(10 * SEC).await.unwrap();
    assert!(matches!(refresh.await.unwrap(), Err(PoolError::ShutDown)));
    assert_eq!(c.disposed(), 2, "the old instance and the rebuild");
    assert!(report.still_leased.is_empty());
    assert!(matches!(pool.refresh("k").await, Err(PoolError::ShutDown)));
}

/// `P_REFRESH_SECONDS` sets refresh-ahead through `PoolConfig` (a hit past it rebuilds in the background); a value that is not a number is refused, naming the variable and the value.
#[tokio::test(start_paused = true)]
async fn refresh_ahead_is_read_from_config() {
    let vars = |name: &str| (name == "P_REFRESH_SECONDS").then(|| Ok("10".to_string()));
    let config = PoolConfig::from_lookup("P", &ConfigCaps::default(), vars).unwrap();
    assert_eq!(config.refresh_seconds, 10);
    let c = Counters::new();
    let pool = builder(&c).config(&config).spawn().await.unwrap();
    warm(&pool, &c, Duration::ZERO).await;
    advance(11 * SEC).await;
    warm(&pool, &c, Duration::ZERO).await;
    eventually("rebuilt in the background", async || c.builds() == 2).await;
    let bad = PoolConfig::from_lookup("P", &ConfigCaps::default(), |name: &str| {
        (name == "P_REFRESH_SECONDS").then(|| Ok("soon".to_string()))
    });
    let err = bad.unwrap_err().to_string();
    assert!(err.contains("P_REFRESH_SECONDS") && err.contains("soon"), "{err}");
}

/// A `refresh` is not a use for LRU: with a cap of 2, the refreshed key, used before the other, is the one evicted.
#[tokio::test(start_paused = true)]
async fn a_refresh_is_not_a_use_of_the_key() {
    // LRU: a, then b; refreshing `a` must not make it more recent than `b`.
    let c = Counters::new();
    let pool = builder(&c).max_entries(2).spawn().await.unwrap();
    for key in ["a", "b"] {
        drop(
            pool.get_or_create(key, h(1), factory(&c, key, h(1), Duration::ZERO))
                .await
                .unwrap(),
        );
        advance(SEC).await;
    }
    assert!(pool.refresh("a").await.unwrap());
    advance(SEC).await;
    drop(
        pool.get_or_create("c", h(1), factory(&c, "c", h(1), Duration::ZERO))
            .await
            .unwrap(),
    );
    settle().await;
    let s = pool.stats().await.unwrap();
    assert_eq!(s.keys, vec!["b".to_string(), "c".to_string()]);
}

/// A key invalidated after `refresh_version(k, 5)` starts again at version
/// 0, also for a call that reaches its actor before the actor stops: a
/// later `refresh_version(k, 3)` rebuilds.
#[tokio::test(start_paused = true)]
async fn an_invalidated_key_starts_again_at_version_zero_even_before_its_actor_stops() {
    let c = Counters::new();
    let pool = builder(&c).sweep_interval(Duration::ZERO).spawn().await.unwrap();
    drop(
        pool.get_or_create("k", h(1), factory(&c, "k", h(1), Duration::ZERO))
            .await
            .unwrap(),
    );
    assert!(pool.refresh_version("k", 5).await.unwrap());
    assert_eq!(pool.get("k", h(1)).unwrap().version(), 5);

    // The call is sent right behind the invalidation (with other
    // credentials, so that it misses the read view, which still holds the
    // instance until the invalidation reaches the actor), so it reaches
    // the key actor before that actor reports itself idle and is stopped.
    let (invalidated, lease) = tokio::join!(
        pool.invalidate("k"),
        pool.get_or_create("k", h(2), factory(&c, "k", h(2), Duration::ZERO))
    );
    assert!(invalidated.unwrap());
    let lease = lease.unwrap();
    assert_eq!(lease.version(), 0, "the key left the pool: version 0 again");
    drop(lease);
    assert!(pool.refresh_version("k", 3).await.unwrap(), "3 is newer than 0");
    assert_eq!(pool.get("k", h(2)).unwrap().version(), 3);
    assert_eq!(c.builds(), 4);
}
