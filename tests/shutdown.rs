//! Shutdown: `shutdown` disposes every instance exactly once and reports
//! it, names the leases still held (their instances disposed when they
//! drop), lets builds in flight finish for their waiters, bounds hanging or
//! failing dispose hooks, and gives concurrent callers one report;
//! afterwards every call is refused with `ShutDown`. Dropping the last
//! handle shuts the pool down too. (A pool stopped by its parent actor:
//! `supervision.rs`.) Paused clock; factory calls and disposals are counted
//! exactly.

mod common;
use common::*;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use ractor::ActorStatus;
use warmpool::{Pool, PoolError, RestartPolicy};

const MS10: Duration = Duration::from_millis(10);

/// Shutdown disposes all 20 instances exactly once, reports them, and afterwards every call fails with `ShutDown`.
#[tokio::test(start_paused = true)]
async fn shutdown_disposes_everything_once_then_refuses_work() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let keys = keys("t:", 20);
    warm_keys(&pool, &c, &keys).await;
    assert_eq!(c.builds(), 20);
    assert_eq!(pool.stats().await.unwrap().size, 20);

    let report = pool.shutdown(Duration::from_secs(1)).await.unwrap();
    assert_eq!(report.retired, 20);
    assert_eq!(report.disposed, 20);
    assert_eq!(report.dispose_failures, 0);
    assert!(report.still_leased.is_empty(), "{:?}", report.still_leased);
    assert_eq!(report.disposals_pending, 0);
    assert!(!report.deadline_passed);
    assert_eq!(c.disposed(), 20);
    let mut disposed = c.disposed_keys.lock().unwrap().clone();
    disposed.sort();
    assert_eq!(disposed, keys, "each key's instance disposed once");

    let err = pool
        .get_or_create("t:00", h(1), factory(&c, "t:00", h(1), Duration::ZERO))
        .await
        .unwrap_err();
    assert!(matches!(err, PoolError::ShutDown), "{err:?}");
    let err = pool
        .get_or_create("t:new", h(1), factory(&c, "t:new", h(1), Duration::ZERO))
        .await
        .unwrap_err();
    assert!(matches!(err, PoolError::ShutDown), "{err:?}");
    let err = pool.insert("t:new", h(1), client("t:new", 1, 0)).await.unwrap_err();
    assert!(matches!(err, PoolError::ShutDown), "{err:?}");
    assert!(matches!(pool.stats().await, Err(PoolError::ShutDown)));
    assert!(matches!(pool.invalidate("t:00").await, Err(PoolError::ShutDown)));
    eventually("the pool reports it is shut down", async || pool.is_shut_down()).await;

    settle().await;
    tokio::time::advance(Duration::from_secs(600)).await;
    settle().await;
    assert_eq!(c.builds(), 20, "no factory call after shutdown");
    assert_eq!(c.disposed(), 20, "disposed more than once");
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

/// Leases held at shutdown are named in `still_leased`; each instance is disposed once its lease is dropped, after the supervisor has stopped.
#[tokio::test(start_paused = true)]
async fn leases_held_at_shutdown_are_reported_and_disposed_later() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let a = pool
        .get_or_create("t:a", h(1), factory(&c, "t:a", h(1), Duration::ZERO))
        .await
        .unwrap();
    let b = pool
        .get_or_create("t:b", h(1), factory(&c, "t:b", h(1), Duration::ZERO))
        .await
        .unwrap();
    let b2 = b.clone();
    warm_keys(&pool, &c, &["t:c".to_string()]).await;

    let report = pool.shutdown(Duration::from_secs(1)).await.unwrap();
    assert_eq!(report.retired, 3);
    assert_eq!(report.still_leased, vec!["t:a".to_string(), "t:b".to_string()]);
    assert_eq!(report.disposed, 1);
    assert!(!report.deadline_passed);
    assert_eq!(c.disposed(), 1);
    assert_eq!(*c.disposed_keys.lock().unwrap(), vec!["t:c".to_string()]);

    eventually("the supervisor has stopped", async || {
        pool.actor().get_status() == ActorStatus::Stopped
    })
    .await;
    // Leases stay usable after shutdown.
    assert_eq!(a.key, "t:a");
    assert_eq!(b2.key, "t:b");

    drop(a);
    eventually("t:a disposed after its lease dropped", async || c.disposed() == 2).await;
    drop(b);
    settle().await;
    tokio::time::advance(Duration::from_secs(30)).await;
    settle().await;
    assert_eq!(c.disposed(), 2, "t:b disposed while a clone of its lease was alive");
    drop(b2);
    eventually("t:b disposed after its last lease dropped", async || c.disposed() == 3).await;
    settle().await;
    assert_eq!(c.disposed(), 3);
    assert_eq!(
        *c.disposed_keys.lock().unwrap(),
        vec!["t:c".to_string(), "t:a".to_string(), "t:b".to_string()]
    );
}

/// A build in flight at shutdown finishes within the deadline and its waiter gets the lease (retired at once, disposed on drop); callers arriving meanwhile get `ShutDown`.
#[tokio::test(start_paused = true)]
async fn build_in_flight_finishes_during_shutdown() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let slow = {
        let pool = pool.clone();
        let c = c.clone();
        tokio::spawn(async move {
            pool.get_or_create("t:slow", h(1), factory(&c, "t:slow", h(1), Duration::from_secs(5)))
                .await
        })
    };
    settle().await;
    assert_eq!(pool.stats().await.unwrap().builds_in_flight, 1);

    let shutdown = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.shutdown(Duration::from_secs(10)).await })
    };
    settle().await;
    assert!(!shutdown.is_finished(), "shutdown did not wait for the build in flight");

    // Callers arriving after shutdown started are refused, and no factory runs for them.
    let err = pool
        .get_or_create("t:late", h(1), factory(&c, "t:late", h(1), Duration::ZERO))
        .await
        .unwrap_err();
    assert!(matches!(err, PoolError::ShutDown), "{err:?}");
    let err = pool
        .get_or_create("t:slow", h(1), factory(&c, "t:slow", h(1), Duration::ZERO))
        .await
        .unwrap_err();
    assert!(matches!(err, PoolError::ShutDown), "{err:?}");
    let err = pool.insert("t:late", h(1), client("t:late", 1, 0)).await.unwrap_err();
    assert!(matches!(err, PoolError::ShutDown), "{err:?}");
    assert_eq!(c.builds(), 1);

    tokio::time::advance(Duration::from_secs(5)).await;
    let lease = slow
        .await
        .unwrap()
        .expect("the waiter of the build in flight gets its lease");
    assert_eq!(lease.key, "t:slow");
    assert_eq!(lease.serial, 1);
    let report = shutdown.await.unwrap().unwrap();
    assert_eq!(report.retired, 1);
    assert_eq!(report.still_leased, vec!["t:slow".to_string()]);
    assert_eq!(c.disposed(), 0);

    drop(lease);
    eventually("disposed once the lease drops", async || c.disposed() == 1).await;
    settle().await;
    assert_eq!(c.disposed(), 1);
    assert_eq!(c.builds(), 1);
}

/// Shutdown with two leases held, a slow build in flight and a hanging one, within a deadline longer than `create_timeout`: the slow waiter gets its lease, the hanging one times out, the report names every leased key, and each instance is disposed exactly once after the leases drop.
#[tokio::test(start_paused = true)]
async fn shutdown_amid_builds_and_leases_accounts_for_every_instance() {
    let c = Counters::new();
    let pool = builder(&c)
        .create_timeout(Duration::from_secs(4))
        .restart_policy(RestartPolicy::never())
        .spawn()
        .await
        .unwrap();
    let held_a = pool
        .get_or_create("t:a", h(1), factory(&c, "t:a", h(1), Duration::ZERO))
        .await
        .unwrap();
    let held_b = pool
        .get_or_create("t:b", h(1), factory(&c, "t:b", h(1), Duration::ZERO))
        .await
        .unwrap();
    drop(
        pool.get_or_create("t:c", h(1), factory(&c, "t:c", h(1), Duration::ZERO))
            .await
            .unwrap(),
    );
    let slow = spawn_get(&pool, &c, "t:slow", 1, Duration::from_secs(2));
    let hang = {
        let pool = pool.clone();
        let c = c.clone();
        tokio::spawn(async move { pool.get_or_create("t:hang", h(1), hanging(&c)).await })
    };
    settle().await;
    assert_eq!(c.builds(), 5);
    assert_eq!(pool.stats().await.unwrap().builds_in_flight, 2);

    let shutdown = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.shutdown(Duration::from_secs(10)).await })
    };
    settle().await;
    assert_eq!(c.disposed(), 1, "the unleased t:c is disposed at once");
    tokio::time::advance(Duration::from_secs(2)).await;
    let slow = slow
        .await
        .unwrap()
        .expect("the build in flight finishes for its waiter");
    settle().await;
    assert!(!shutdown.is_finished(), "shutdown must wait for the hanging build");
    tokio::time::advance(Duration::from_secs(2)).await;
    match hang.await.unwrap() {
        Err(PoolError::Timeout { key, .. }) => assert_eq!(key, "t:hang"),
        other => panic!("expected Timeout, got {other:?}"),
    }
    let report = shutdown.await.unwrap().unwrap();
    assert_eq!(report.retired, 4, "t:a, t:b, t:c and t:slow");
    assert_eq!(
        report.still_leased,
        vec!["t:a".to_string(), "t:b".to_string(), "t:slow".to_string()]
    );
    assert_eq!(c.disposed(), 1);

    drop((held_a, held_b, slow));
    eventually("every instance disposed", async || c.disposed() == 4).await;
    settle().await;
    tokio::time::advance(Duration::from_secs(30)).await;
    settle().await;
    assert_eq!(c.disposed(), 4, "exactly once each");
    let mut keys = c.disposed_keys.lock().unwrap().clone();
    keys.sort();
    assert_eq!(keys, ["t:a", "t:b", "t:c", "t:slow"]);
    assert_eq!(c.builds(), 5, "no factory call after shutdown started");
}

/// A dispose hook that hangs: `dispose_timeout` abandons it, and a shutdown with a 1 s deadline reports `deadline_passed` with the hooks pending.
#[tokio::test(start_paused = true)]
async fn hanging_dispose_hook_is_bounded() {
    struct OnDrop(Arc<AtomicUsize>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            self.0.fetch_add(1, SeqCst);
        }
    }
    let started = Arc::new(AtomicUsize::new(0));
    let abandoned = Arc::new(AtomicUsize::new(0));
    let c = Counters::new();
    let pool: Pool<Client> = {
        let started = started.clone();
        let abandoned = abandoned.clone();
        Pool::builder()
            .dispose_timeout(Duration::from_secs(5))
            .on_dispose(move |_key, _client: Client| {
                started.fetch_add(1, SeqCst);
                let guard = OnDrop(abandoned.clone());
                async move {
                    let _guard = guard;
                    futures::future::pending::<()>().await
                }
            })
            .spawn()
            .await
            .unwrap()
    };
    warm_keys(&pool, &c, &keys("t:", 3)).await;

    // Before shutdown: an invalidated instance's hook hangs and is abandoned after dispose_timeout.
    assert!(pool.invalidate("t:00").await.unwrap());
    eventually("the hook started", async || started.load(SeqCst) == 1).await;
    tokio::time::advance(Duration::from_millis(4_999)).await;
    settle().await;
    assert_eq!(abandoned.load(SeqCst), 0, "hook abandoned before dispose_timeout");
    assert_eq!(pool.stats().await.unwrap().disposals, 0);
    tokio::time::advance(Duration::from_millis(1)).await;
    eventually("dispose_timeout abandons the hook", async || {
        abandoned.load(SeqCst) == 1
    })
    .await;
    let p = pool.clone();
    eventually("counted as a failed disposal", async || {
        let s = p.stats().await.unwrap();
        s.disposals == 1 && s.dispose_failures == 1
    })
    .await;

    // Shutdown with a 1 s deadline returns after 1 s, with the two hooks still running.
    let shutdown = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.shutdown(Duration::from_secs(1)).await })
    };
    eventually("the shutdown's hooks started", async || started.load(SeqCst) == 3).await;
    settle().await;
    assert!(!shutdown.is_finished(), "shutdown did not wait for the hooks");
    tokio::time::advance(Duration::from_millis(999)).await;
    settle().await;
    assert!(!shutdown.is_finished(), "shutdown returned before its deadline");
    tokio::time::advance(Duration::from_millis(1)).await;
    settle().await;
    assert!(shutdown.is_finished(), "shutdown did not return at its deadline");
    let report = shutdown.await.unwrap().unwrap();
    assert!(report.deadline_passed);
    assert_eq!(report.disposals_pending, 2);
    assert_eq!(report.retired, 2);
    assert_eq!(report.disposed, 1);
    assert_eq!(report.dispose_failures, 1);
    assert!(report.still_leased.is_empty(), "{:?}", report.still_leased);
    assert_eq!(abandoned.load(SeqCst), 1);

    // dispose_timeout still bounds the hooks the report left running.
    tokio::time::advance(Duration::from_millis(3_999)).await;
    settle().await;
    assert_eq!(abandoned.load(SeqCst), 1);
    tokio::time::advance(Duration::from_millis(1)).await;
    eventually("dispose_timeout abandons the shutdown's hooks", async || {
        abandoned.load(SeqCst) == 3
    })
    .await;
    assert_eq!(started.load(SeqCst), 3, "each instance's hook ran once");
}

/// Dispose hooks that panic and hang during shutdown are each called exactly once, counted as failures, and do not stop the other disposals.
#[tokio::test(start_paused = true)]
async fn panicking_and_hanging_hooks_at_shutdown_are_each_called_once() {
    let calls = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let c = Counters::new();
    let pool: Pool<Client> = {
        let calls = calls.clone();
        Pool::builder()
            .dispose_timeout(Duration::from_secs(2))
            .on_dispose(move |key: String, _client: Client| {
                calls.lock().unwrap().push(key.clone());
                async move {
                    match key.as_str() {
                        "t:panic" => panic!("hook exploded"),
                        "t:hang" => futures::future::pending::<Result<(), std::io::Error>>().await,
                        "t:err" => Err(std::io::Error::other("logout failed")),
                        _ => Ok(()),
                    }
                }
            })
            .spawn()
            .await
            .unwrap()
    };
    for key in ["t:ok", "t:panic", "t:hang", "t:err", "t:ok2"] {
        drop(
            pool.get_or_create(key, h(1), factory(&c, key, h(1), Duration::ZERO))
                .await
                .unwrap(),
        );
    }
    let shutdown = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.shutdown(Duration::from_secs(5)).await })
    };
    settle().await;
    tokio::time::advance(Duration::from_secs(2)).await;
    let report = shutdown.await.unwrap().unwrap();
    assert_eq!(report.retired, 5);
    assert_eq!(report.disposed, 5, "the hanging hook was abandoned at dispose_timeout");
    assert_eq!(report.dispose_failures, 3);
    assert!(!report.deadline_passed);
    let mut seen = calls.lock().unwrap().clone();
    seen.sort();
    assert_eq!(seen, ["t:err", "t:hang", "t:ok", "t:ok2", "t:panic"]);
    tokio::time::advance(Duration::from_secs(30)).await;
    settle().await;
    assert_eq!(calls.lock().unwrap().len(), 5, "no hook called twice");
}

/// Two concurrent `shutdown` calls both wait for the same shutdown and get the same report.
#[tokio::test(start_paused = true)]
async fn concurrent_shutdowns_both_get_the_report() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    warm_keys(&pool, &c, &keys("t:", 3)).await;
    let slow = {
        let pool = pool.clone();
        let c = c.clone();
        tokio::spawn(async move {
            pool.get_or_create("t:slow", h(1), factory(&c, "t:slow", h(1), Duration::from_secs(2)))
                .await
        })
    };
    settle().await;

    let first = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.shutdown(Duration::from_secs(5)).await })
    };
    let second = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.shutdown(Duration::from_secs(5)).await })
    };
    settle().await;
    assert!(
        !first.is_finished() && !second.is_finished(),
        "the build in flight was not awaited"
    );

    tokio::time::advance(Duration::from_secs(2)).await;
    let lease = slow.await.unwrap().unwrap();
    let first = first.await.unwrap().expect("first shutdown gets a report");
    let second = second.await.unwrap().expect("second shutdown gets a report");
    assert_eq!(first, second);
    assert_eq!(first.retired, 4);
    assert_eq!(first.disposed, 3);
    assert_eq!(first.still_leased, vec!["t:slow".to_string()]);
    assert_eq!(c.disposed(), 3);

    drop(lease);
    eventually("the last instance is disposed", async || c.disposed() == 4).await;
    settle().await;
    assert_eq!(c.disposed(), 4);
    assert_eq!(c.builds(), 4);
}

/// Dropping the last `Pool` handle without `shutdown` still disposes every instance (a leased one when its lease drops) and stops the actors.
#[tokio::test(start_paused = true)]
async fn dropping_last_handle_disposes_everything() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let keys = keys("t:", 5);
    warm_keys(&pool, &c, &keys[1..]).await;
    let kept = pool
        .get_or_create(&keys[0], h(1), factory(&c, &keys[0], h(1), Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(c.builds(), 5);
    let supervisor = pool.actor();
    let clone = pool.clone();
    drop(pool);
    settle().await;
    assert_eq!(
        supervisor.get_status(),
        ActorStatus::Running,
        "a clone still holds the pool"
    );
    assert_eq!(c.disposed(), 0);

    drop(clone);
    eventually("every unleased instance is disposed", async || c.disposed() == 4).await;
    eventually("the supervisor stops", async || {
        supervisor.get_status() == ActorStatus::Stopped
    })
    .await;
    assert_eq!(kept.key, keys[0]);
    drop(kept);
    eventually("the leased instance is disposed when its lease drops", async || {
        c.disposed() == 5
    })
    .await;
    settle().await;
    tokio::time::advance(Duration::from_secs(60)).await;
    settle().await;
    assert_eq!(c.disposed(), 5, "disposed exactly once each");
    let mut disposed = c.disposed_keys.lock().unwrap().clone();
    disposed.sort();
    assert_eq!(disposed, keys);
}

/// Sets a flag when dropped: tells that the pool dropped a future it abandoned.
struct DropFlag(Arc<std::sync::atomic::AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, SeqCst);
    }
}

/// A factory that never returns, counting calls; its future sets `dropped`
/// when the pool drops it.
fn hanging_flagged(c: &Arc<Counters>, dropped: &Arc<std::sync::atomic::AtomicBool>) -> ClientFactory {
    let (c, dropped) = (c.clone(), dropped.clone());
    Box::new(move || {
        c.builds.fetch_add(1, SeqCst);
        let flag = DropFlag(dropped.clone());
        Box::pin(async move {
            let _flag = flag;
            futures::future::pending::<Result<Client, std::io::Error>>().await
        })
    })
}

/// A pool with `create_timeout`, a caller waiting on a factory that never
/// returns, then `shutdown(deadline)`: asserts the shutdown returned at its
/// deadline of paused time and said the deadline passed, that the waiter
/// got `ShutDown` and that the factory's future was dropped.
async fn shutdown_past_a_hanging_build(create_timeout: Duration, deadline: Duration) -> Pool<Client> {
    let c = Counters::new();
    let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pool = builder(&c).create_timeout(create_timeout).spawn().await.unwrap();
    let waiter = {
        let (pool, f) = (pool.clone(), hanging_flagged(&c, &dropped));
        tokio::spawn(async move { pool.get_or_create("k", h(1), f).await })
    };
    settle().await;
    let started = tokio::time::Instant::now();
    let report = bounded(Duration::from_secs(60), "shutdown", pool.shutdown(deadline))
        .await
        .unwrap();
    assert_eq!(started.elapsed(), deadline, "returned at its deadline");
    assert!(report.deadline_passed, "{report:?}");
    assert_eq!(report.retired, 0, "nothing was built");
    let err = bounded(Duration::from_secs(1), "the waiter", waiter)
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, PoolError::ShutDown), "{err:?}");
    eventually("the abandoned factory future is dropped", async || dropped.load(SeqCst)).await;
    assert_eq!(c.builds(), 1);
    pool
}

/// With `create_timeout(0)` (unbounded) and a factory that never returns,
/// `shutdown(1 s)` returns at its deadline and says so; the waiting caller
/// gets `ShutDown`, the factory's future is dropped, and later calls are
/// refused.
#[tokio::test(start_paused = true)]
async fn shutdown_returns_by_its_deadline_past_a_factory_that_never_returns() {
    let pool = shutdown_past_a_hanging_build(Duration::ZERO, Duration::from_secs(1)).await;
    let s = pool.counters().await;
    assert!(matches!(s, Err(PoolError::ShutDown)), "{s:?}");
}

/// With `create_timeout(3 s)`, `shutdown(200 ms)` returns after 200 ms, not
/// 3 s, and reports that the deadline passed; the waiter gets `ShutDown`.
#[tokio::test(start_paused = true)]
async fn shutdown_does_not_wait_for_create_timeout_past_its_deadline() {
    shutdown_past_a_hanging_build(Duration::from_secs(3), Duration::from_millis(200)).await;
}

/// With `probe_timeout(0)` and a probe that never ends, the probed call
/// is answered `ShutDown` once `shutdown` has returned, and the probe's
/// future is dropped.
#[tokio::test(start_paused = true)]
async fn a_probe_that_never_ends_does_not_outlive_shutdown() {
    let c = Counters::new();
    let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = dropped.clone();
    let pool = builder(&c)
        .probe(move |_lease| {
            let flag = DropFlag(flag.clone());
            async move {
                let _flag = flag;
                futures::future::pending::<Result<bool, std::io::Error>>().await
            }
        })
        .probe_interval(Duration::from_secs(1))
        .probe_timeout(Duration::ZERO)
        .spawn()
        .await
        .unwrap();
    drop(get(&pool, &c, "k").await);
    tokio::time::advance(Duration::from_secs(2)).await;
    let probed = {
        let (pool, c) = (pool.clone(), c.clone());
        tokio::spawn(async move {
            pool.get_or_create("k", h(1), factory(&c, "k", h(1), Duration::ZERO))
                .await
        })
    };
    settle().await;
    assert!(!probed.is_finished(), "the call waits on its probe");
    let report = bounded(
        Duration::from_secs(60),
        "shutdown",
        pool.shutdown(Duration::from_secs(1)),
    )
    .await
    .unwrap();
    assert_eq!(report.retired, 1);
    let err = bounded(Duration::from_millis(10), "the probed call", probed)
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, PoolError::ShutDown), "{err:?}");
    assert!(dropped.load(SeqCst), "the probe's future was dropped");
    eventually("the instance is disposed once the probe let go of it", async || {
        c.disposed() == 1
    })
    .await;
}

/// `stats()` and `counters()` called after `shutdown()` returned get
/// `ShutDown` (contract 9), on real threads with 48 tasks calling `stats`
/// throughout; 100 rounds, every wait bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_after_shutdown_returned_is_refused() {
    for round in 0..100 {
        let c = Counters::new();
        let pool = builder(&c).spawn().await.unwrap();
        drop(get(&pool, &c, "k").await);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let storm: Vec<_> = (0..48)
            .map(|_| {
                let (pool, stop) = (pool.clone(), stop.clone());
                tokio::spawn(async move { while !stop.load(SeqCst) && pool.stats().await.is_ok() {} })
            })
            .collect();
        bounded(
            Duration::from_secs(10),
            "shutdown",
            pool.shutdown(Duration::from_secs(1)),
        )
        .await
        .unwrap();
        let stats = bounded(Duration::from_secs(10), "stats", pool.stats()).await;
        assert!(matches!(stats, Err(PoolError::ShutDown)), "round {round}: {stats:?}");
        let counters = bounded(Duration::from_secs(10), "counters", pool.counters()).await;
        assert!(
            matches!(counters, Err(PoolError::ShutDown)),
            "round {round}: {counters:?}"
        );
        stop.store(true, SeqCst);
        for task in storm {
            bounded(Duration::from_secs(10), "a stats task", task).await.unwrap();
        }
    }
}
