//! Leases and disposal: `Lease` is `Send + Sync + Clone`; an instance is
//! disposed exactly once, after both its retirement and its last lease (in
//! either order), also when the task holding it panics, and dropped when
//! there is no dispose hook; dispose hooks that panic, fail or hang are
//! contained and counted; `live_leases` counts every hand-out, clone and
//! drop. Paused clock; disposals are counted exactly.

mod common;
use common::*;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use warmpool::{Lease, Pool};

const MS10: Duration = Duration::from_millis(10);

fn assert_send_sync<X: Send + Sync>() {}
fn assert_clone<X: Clone>() {}

/// `Lease<T>` is Send + Sync + Clone (checked at compile time) and derefs to `T`.
#[tokio::test(start_paused = true)]
async fn lease_is_send_sync_clone_and_derefs() {
    assert_send_sync::<Lease<Client>>();
    assert_clone::<Lease<Client>>();

    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let lease = pool
        .get_or_create("t:a", h(5), factory(&c, "t:a", h(5), MS10))
        .await
        .unwrap();
    let copy = lease.clone();
    assert!(Lease::ptr_eq(&lease, &copy), "a clone is the same instance");
    assert_eq!(lease.instance_id(), copy.instance_id());

    let client: &Client = &lease;
    assert_eq!(client.key, "t:a");
    assert_eq!(client.hash, h(5));
    assert_eq!(copy.serial, 1);
    assert_eq!(lease.as_ref().key, "t:a");

    // A lease can move to another task and be used there.
    let moved = copy.clone();
    let key = tokio::spawn(async move { moved.key.clone() }).await.unwrap();
    assert_eq!(key, "t:a");
    assert_eq!(pool.stats().await.unwrap().live_leases, 2);
}

/// Retire first while two leases are held: disposed exactly once, only after the last lease drops.
#[tokio::test(start_paused = true)]
async fn dispose_after_retire_then_last_drop() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let lease = pool
        .get_or_create("k", h(1), factory(&c, "k", h(1), MS10))
        .await
        .unwrap();
    let clone = lease.clone();

    assert!(pool.invalidate("k").await.unwrap());
    settle().await;
    tokio::time::advance(Duration::from_secs(1)).await;
    settle().await;
    assert_eq!(c.disposed(), 0, "disposed while two leases were held");

    drop(lease);
    settle().await;
    assert_eq!(c.disposed(), 0, "disposed while a clone was still held");
    assert_eq!(pool.stats().await.unwrap().disposals, 0);

    drop(clone);
    eventually("disposed after the last lease", async || c.disposed() == 1).await;
    settle().await;
    tokio::time::advance(Duration::from_secs(120)).await;
    settle().await;
    assert_eq!(c.disposed(), 1, "disposed more than once");
    let s = pool.stats().await.unwrap();
    assert_eq!(s.disposals, 1);
    assert_eq!(s.dispose_failures, 0);
    assert_eq!(s.live_leases, 0);
    assert_eq!(s.retirements.invalidated, 1);
}

/// Drop every lease first, then retire: disposed exactly once, and not before retirement.
#[tokio::test(start_paused = true)]
async fn dispose_after_last_drop_then_retire() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let lease = pool
        .get_or_create("k", h(1), factory(&c, "k", h(1), MS10))
        .await
        .unwrap();
    let clone = lease.clone();
    drop(lease);
    drop(clone);
    settle().await;
    assert_eq!(c.disposed(), 0, "an unleased but resident instance was disposed");
    assert_eq!(pool.stats().await.unwrap().live_leases, 0);

    // Still resident: a hit.
    let hit = pool
        .get_or_create("k", h(1), factory(&c, "k", h(1), MS10))
        .await
        .unwrap();
    assert_eq!(hit.serial, 1);
    drop(hit);

    assert!(pool.invalidate("k").await.unwrap());
    eventually("disposed after retirement", async || c.disposed() == 1).await;
    settle().await;
    tokio::time::advance(Duration::from_secs(120)).await;
    settle().await;
    assert_eq!(c.disposed(), 1, "disposed more than once");
    assert_eq!(c.builds(), 1);
    assert_eq!(pool.stats().await.unwrap().disposals, 1);
}

/// A lease held by a task that panics is released: live_leases returns to 0 and the instance is disposed.
#[tokio::test(start_paused = true)]
async fn lease_dropped_by_panicking_task_is_released() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();

    let task = {
        let pool = pool.clone();
        let c = c.clone();
        tokio::spawn(async move {
            let lease = pool
                .get_or_create("k", h(1), factory(&c, "k", h(1), MS10))
                .await
                .unwrap();
            let live = pool.stats().await.unwrap().live_leases;
            assert_eq!(live, 1, "the task holds one lease");
            if lease.serial == 1 {
                panic!("caller panics while holding a lease");
            }
            drop(lease);
        })
    };
    let err = task.await.expect_err("the task panicked");
    assert!(err.is_panic());
    assert_eq!(
        pool.stats().await.unwrap().live_leases,
        0,
        "the panicking task's lease leaked"
    );
    settle().await;
    assert_eq!(c.disposed(), 0, "disposed before retirement");

    assert!(pool.invalidate("k").await.unwrap());
    eventually("disposed after invalidation", async || c.disposed() == 1).await;
    settle().await;
    assert_eq!(c.disposed(), 1);
    let s = pool.stats().await.unwrap();
    assert_eq!(s.disposals, 1);
    assert_eq!(s.live_leases, 0);
}

/// A `T` whose `Drop` is counted.
struct Dropper {
    drops: Arc<AtomicUsize>,
}

impl Drop for Dropper {
    fn drop(&mut self) {
        self.drops.fetch_add(1, SeqCst);
    }
}

/// Without an on_dispose hook, a retired instance is dropped exactly once after its last lease.
#[tokio::test(start_paused = true)]
async fn no_hook_drops_retired_instance() {
    let drops = Arc::new(AtomicUsize::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let pool: Pool<Dropper> = Pool::builder().spawn().await.unwrap();
    let make = {
        let drops = drops.clone();
        let calls = calls.clone();
        move || {
            calls.fetch_add(1, SeqCst);
            let drops = drops.clone();
            async move { Ok::<_, std::io::Error>(Dropper { drops }) }
        }
    };

    let lease = pool.get_or_create("k", h(1), make.clone()).await.unwrap();
    assert!(pool.invalidate("k").await.unwrap());
    settle().await;
    assert_eq!(drops.load(SeqCst), 0, "dropped while leased");

    drop(lease);
    eventually("dropped after last lease", async || drops.load(SeqCst) == 1).await;
    settle().await;
    assert_eq!(drops.load(SeqCst), 1, "dropped more than once");
    assert_eq!(calls.load(SeqCst), 1);
    let s = pool.stats().await.unwrap();
    assert_eq!(s.disposals, 1);
    assert_eq!(s.dispose_failures, 0);

    // The pool keeps working: a new instance for the key.
    let fresh = pool.get_or_create("k", h(1), make).await.unwrap();
    assert_eq!(calls.load(SeqCst), 2);
    assert_eq!(drops.load(SeqCst), 1);
    drop(fresh);
}

/// Keys whose dispose hook finished successfully, in order.
type Finished = Arc<Mutex<Vec<String>>>;

fn finished_has(finished: &Finished, key: &str) -> bool {
    finished.lock().unwrap().iter().any(|k| k == key)
}

/// A pool whose dispose hook fails for keys "panic", "panic-sync", "err" and
/// "hang", counts its calls, and records the keys it disposed successfully.
fn failing_hook_pool(calls: &Arc<AtomicUsize>, ok: &Finished) -> warmpool::PoolBuilder<Client> {
    let calls = calls.clone();
    let ok = ok.clone();
    Pool::builder()
        .dispose_timeout(Duration::from_secs(1))
        .on_dispose(move |key: String, client: Client| {
            calls.fetch_add(1, SeqCst);
            assert_eq!(key, client.key);
            if key == "panic-sync" {
                panic!("dispose hook panics before returning a future");
            }
            let ok = ok.clone();
            async move {
                match key.as_str() {
                    "panic" => panic!("dispose hook panics"),
                    "err" => Err(std::io::Error::other("logout failed")),
                    "hang" => {
                        tokio::time::sleep(Duration::from_secs(3_600)).await;
                        ok.lock().unwrap().push(key);
                        Ok(())
                    }
                    _ => {
                        ok.lock().unwrap().push(key);
                        Ok(())
                    }
                }
            }
        })
}

/// Gets an instance for `key`, drops the lease and invalidates the key.
async fn build_and_retire(pool: &Pool<Client>, c: &Arc<Counters>, key: &str) {
    let lease = pool
        .get_or_create(key, h(1), factory(c, key, h(1), MS10))
        .await
        .unwrap();
    drop(lease);
    assert!(pool.invalidate(key).await.unwrap());
}

/// After a failed dispose, the pool still serves and disposes another key normally.
async fn pool_keeps_serving(pool: &Pool<Client>, c: &Arc<Counters>, ok: &Finished, disposals_before: u64) {
    let lease = pool
        .get_or_create("healthy", h(2), factory(c, "healthy", h(2), MS10))
        .await
        .expect("another key is served after a failed dispose");
    assert_eq!(lease.key, "healthy");
    assert_eq!(lease.hash, h(2));
    drop(lease);
    assert!(pool.invalidate("healthy").await.unwrap());
    eventually("healthy instance disposed", async || finished_has(ok, "healthy")).await;
    eventually("healthy disposal counted", async || {
        pool.stats().await.unwrap().disposals == disposals_before + 1
    })
    .await;
}

/// A dispose hook that panics inside its future is contained and counted as a disposal and a failure.
#[tokio::test(start_paused = true)]
async fn dispose_hook_panic_is_counted() {
    let (c, calls, ok) = (Counters::new(), Arc::new(AtomicUsize::new(0)), Finished::default());
    let pool = failing_hook_pool(&calls, &ok).spawn().await.unwrap();

    build_and_retire(&pool, &c, "panic").await;
    eventually("failure counted", async || {
        pool.stats().await.unwrap().dispose_failures == 1
    })
    .await;
    let s = pool.stats().await.unwrap();
    assert_eq!(s.disposals, 1);
    assert_eq!(s.dispose_failures, 1);
    assert_eq!(calls.load(SeqCst), 1);

    pool_keeps_serving(&pool, &c, &ok, 1).await;
    let s = pool.stats().await.unwrap();
    assert_eq!((s.disposals, s.dispose_failures), (2, 1));
}

/// A dispose hook that panics before returning its future is contained and counted too.
#[tokio::test(start_paused = true)]
async fn dispose_hook_sync_panic_is_counted() {
    let (c, calls, ok) = (Counters::new(), Arc::new(AtomicUsize::new(0)), Finished::default());
    let pool = failing_hook_pool(&calls, &ok).spawn().await.unwrap();

    build_and_retire(&pool, &c, "panic-sync").await;
    eventually("failure counted", async || {
        pool.stats().await.unwrap().dispose_failures == 1
    })
    .await;
    let s = pool.stats().await.unwrap();
    assert_eq!(s.disposals, 1);
    assert_eq!(s.dispose_failures, 1);
    assert_eq!(calls.load(SeqCst), 1);

    pool_keeps_serving(&pool, &c, &ok, 1).await;
    let s = pool.stats().await.unwrap();
    assert_eq!((s.disposals, s.dispose_failures), (2, 1));
}

/// A dispose hook that returns Err is counted as a disposal and a failure.
#[tokio::test(start_paused = true)]
async fn dispose_hook_error_is_counted() {
    let (c, calls, ok) = (Counters::new(), Arc::new(AtomicUsize::new(0)), Finished::default());
    let pool = failing_hook_pool(&calls, &ok).spawn().await.unwrap();

    build_and_retire(&pool, &c, "err").await;
    eventually("failure counted", async || {
        pool.stats().await.unwrap().dispose_failures == 1
    })
    .await;
    let s = pool.stats().await.unwrap();
    assert_eq!(s.disposals, 1);
    assert_eq!(s.dispose_failures, 1);
    assert_eq!(calls.load(SeqCst), 1);

    pool_keeps_serving(&pool, &c, &ok, 1).await;
    let s = pool.stats().await.unwrap();
    assert_eq!((s.disposals, s.dispose_failures), (2, 1));
}

/// A dispose hook that hangs past `dispose_timeout` is abandoned at the timeout and counted as a failure.
#[tokio::test(start_paused = true)]
async fn dispose_hook_timeout_is_counted() {
    let (c, calls, ok) = (Counters::new(), Arc::new(AtomicUsize::new(0)), Finished::default());
    let pool = failing_hook_pool(&calls, &ok).spawn().await.unwrap();

    build_and_retire(&pool, &c, "hang").await;
    eventually("hook started", async || calls.load(SeqCst) == 1).await;
    settle().await;
    let s = pool.stats().await.unwrap();
    assert_eq!(
        (s.disposals, s.dispose_failures),
        (0, 0),
        "a running hook counted as finished"
    );

    // While the hook hangs, other keys are served.
    let other = pool
        .get_or_create("other", h(3), factory(&c, "other", h(3), Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(other.key, "other");
    drop(other);

    tokio::time::advance(Duration::from_millis(1_100)).await;
    eventually("timeout counted", async || {
        pool.stats().await.unwrap().dispose_failures == 1
    })
    .await;
    let s = pool.stats().await.unwrap();
    assert_eq!(s.disposals, 1);
    assert_eq!(s.dispose_failures, 1);
    assert!(!finished_has(&ok, "hang"), "the hung hook was not abandoned");

    pool_keeps_serving(&pool, &c, &ok, 1).await;
    let s = pool.stats().await.unwrap();
    assert_eq!((s.disposals, s.dispose_failures), (2, 1));
    // The abandoned hook never completes later.
    tokio::time::advance(Duration::from_secs(3_600)).await;
    settle().await;
    assert!(!finished_has(&ok, "hang"), "the abandoned hook ran to completion");
    assert_eq!(pool.stats().await.unwrap().dispose_failures, 1);
}

/// stats.live_leases counts every hand-out and clone, and every drop, exactly.
#[tokio::test(start_paused = true)]
async fn live_leases_counts_clones_and_drops() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let live = async || pool.stats().await.unwrap().live_leases;

    assert_eq!(live().await, 0);
    let l1 = pool
        .get_or_create("a", h(1), factory(&c, "a", h(1), MS10))
        .await
        .unwrap();
    assert_eq!(live().await, 1);
    let l2 = l1.clone();
    assert_eq!(live().await, 2);
    let l3 = l2.clone();
    assert_eq!(live().await, 3);
    let l4 = pool
        .get_or_create("a", h(1), factory(&c, "a", h(1), MS10))
        .await
        .unwrap();
    assert_eq!(live().await, 4);
    let l5 = pool
        .get_or_create("b", h(1), factory(&c, "b", h(1), MS10))
        .await
        .unwrap();
    assert_eq!(live().await, 5);

    drop(l2);
    assert_eq!(live().await, 4);
    drop(l1);
    drop(l3);
    assert_eq!(live().await, 2);
    let l6 = l5.clone();
    assert_eq!(live().await, 3);
    // Retirement does not change the count; only drops do.
    assert!(pool.invalidate("b").await.unwrap());
    assert_eq!(live().await, 3);
    drop(l5);
    drop(l6);
    assert_eq!(live().await, 1);
    drop(l4);
    assert_eq!(live().await, 0);
    assert_eq!(c.builds(), 2);
}
