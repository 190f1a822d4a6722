//! Fault injection: callers that give up mid-build, key actors and parents
//! stopped from outside, shutdown in the middle of builds and leases, and
//! hanging or failing factories combined with invalidation and rotation.
//! Factory calls and disposals are counted exactly. (Single faults already
//! covered by `failure.rs`, `shutdown.rs` and `leases.rs` are not repeated.)

mod common;
use common::*;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use futures::future::BoxFuture;
use ractor::{Actor, ActorProcessingErr, ActorRef, ActorStatus};
use warmpool::{Lease, Pool, PoolError, RestartPolicy};

type ClientFactory = Box<dyn Fn() -> BoxFuture<'static, Result<Client, std::io::Error>> + Send + Sync>;

/// A factory that never completes, counting calls.
fn hanging(counters: &Arc<Counters>) -> ClientFactory {
    let c = counters.clone();
    Box::new(move || {
        c.builds.fetch_add(1, SeqCst);
        Box::pin(futures::future::pending())
    })
}

/// Spawns a `get_or_create` for `key`/`hash` whose factory builds after `delay`.
fn spawn_get(
    pool: &Pool<Client>,
    c: &Arc<Counters>,
    key: &'static str,
    hash: u64,
    delay: Duration,
) -> tokio::task::JoinHandle<Result<Lease<Client>, PoolError>> {
    let pool = pool.clone();
    let f = factory(c, key, h(hash), delay);
    tokio::spawn(async move { pool.get_or_create(key, h(hash), f).await })
}

/// The key actors currently linked under the pool's supervisor.
fn key_actors(pool: &Pool<Client>) -> Vec<ractor::ActorCell> {
    pool.actor().get_cell().get_children()
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

/// Shutdown with two leases held, a slow build in flight and a hanging one: the slow waiter gets its lease, the hanging one times out, the report names every leased key, and each instance is disposed exactly once after the leases drop.
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
        tokio::spawn(async move { pool.shutdown(Duration::from_secs(1)).await })
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

/// A key actor stopped from outside mid-build: its waiters get `ActorStopped`, a restart is counted, the orphaned build's instance is disposed exactly once, and the key keeps working.
#[tokio::test(start_paused = true)]
async fn key_actor_stopped_mid_build_disposes_the_orphaned_instance() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let waiters: Vec<_> = (0..3)
        .map(|_| spawn_get(&pool, &c, "t:a", 1, Duration::from_secs(2)))
        .collect();
    settle().await;
    assert_eq!(c.builds(), 1);
    let children = key_actors(&pool);
    assert_eq!(children.len(), 1);

    children[0].stop(None);
    for waiter in waiters {
        match waiter.await.unwrap() {
            Err(PoolError::ActorStopped { key }) => assert_eq!(key, "t:a"),
            other => panic!("expected ActorStopped, got {other:?}"),
        }
    }
    let p = pool.clone();
    eventually("a restart is counted", async || {
        p.stats().await.unwrap().actor_restarts == 1
    })
    .await;

    // The build finishes after its actor died: nobody gets it, and it is disposed once.
    tokio::time::advance(Duration::from_secs(2)).await;
    eventually("the orphaned instance is disposed", async || c.disposed() == 1).await;
    let s = pool.stats().await.unwrap();
    assert_eq!(s.builds_in_flight, 0);
    assert_eq!(s.live_leases, 0);

    let lease = pool
        .get_or_create("t:a", h(1), factory(&c, "t:a", h(1), Duration::ZERO))
        .await
        .expect("a fresh actor serves the key");
    assert_eq!(lease.serial, 2, "the orphaned build was not served");
    drop(lease);
    let report = pool.shutdown(Duration::from_secs(1)).await.unwrap();
    assert!(report.still_leased.is_empty());
    assert_eq!(c.disposed(), 2);
    assert_eq!(c.builds(), 2);
}

/// A key actor stopped from outside while its instance is resident and unleased: the instance is disposed exactly once at once, and only one restart is counted.
#[tokio::test(start_paused = true)]
async fn key_actor_stopped_while_idle_disposes_its_instance_once() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    drop(
        pool.get_or_create("t:a", h(1), factory(&c, "t:a", h(1), Duration::ZERO))
            .await
            .unwrap(),
    );
    key_actors(&pool)[0].stop(None);
    eventually("the resident instance is disposed", async || c.disposed() == 1).await;
    let p = pool.clone();
    eventually("a restart is counted", async || {
        p.stats().await.unwrap().actor_restarts == 1
    })
    .await;
    assert!(pool.stats().await.unwrap().keys.is_empty());
    let lease = pool
        .get_or_create("t:a", h(1), factory(&c, "t:a", h(1), Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(lease.serial, 2);
    drop(lease);
    assert_eq!(pool.stats().await.unwrap().actor_restarts, 1);
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
    assert_eq!(c.disposed(), 2);
    assert_eq!(c.builds(), 2);
}

/// A hanging build invalidated while in flight is never served: when it times out, its waiters get a fresh build (exactly two factory calls) instead of the timeout.
#[tokio::test(start_paused = true)]
async fn invalidated_hanging_build_gives_waiters_a_fresh_build() {
    let c = Counters::new();
    let pool = builder(&c)
        .create_timeout(Duration::from_secs(3))
        .restart_policy(RestartPolicy::never())
        .spawn()
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    // First call hangs; the second builds at once.
    let f = {
        let calls = calls.clone();
        let c = c.clone();
        move || -> BoxFuture<'static, Result<Client, std::io::Error>> {
            let n = calls.fetch_add(1, SeqCst);
            let c = c.clone();
            Box::pin(async move {
                if n == 0 {
                    futures::future::pending::<()>().await;
                }
                let serial = c.builds.fetch_add(1, SeqCst) + 1;
                Ok(Client {
                    key: "t:a".into(),
                    hash: h(1),
                    serial,
                })
            })
        }
    };
    let f = Arc::new(f);
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let pool = pool.clone();
            let f = f.clone();
            tokio::spawn(async move { pool.get_or_create("t:a", h(1), move || f()).await })
        })
        .collect();
    settle().await;
    assert_eq!(calls.load(SeqCst), 1);
    assert!(
        pool.invalidate("t:a").await.unwrap(),
        "a build in flight counts as present"
    );

    tokio::time::advance(Duration::from_secs(3)).await;
    for waiter in waiters {
        let lease = waiter
            .await
            .unwrap()
            .expect("a fresh build after the stale one timed out");
        assert_eq!(lease.serial, 1);
    }
    assert_eq!(calls.load(SeqCst), 2, "exactly one fresh factory call");
    let s = pool.stats().await.unwrap();
    assert_eq!((s.builds, s.build_failures), (1, 1));
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
    assert_eq!(c.disposed(), 1);
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

/// A parent that does nothing: the pool is linked under it.
struct Parent;

impl Actor for Parent {
    type Msg = ();
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _myself: ActorRef<()>, _args: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}

/// Stopping the parent while a lease is held and a build is in flight: calls fail with `ShutDown`, and every instance (the leased one, the resident one and the one whose build finishes after the stop) has its dispose hook run exactly once.
#[tokio::test(start_paused = true)]
async fn parent_stopped_amid_build_and_lease_disposes_every_instance() {
    let (parent, _handle) = Actor::spawn(None, Parent, ()).await.unwrap();
    let c = Counters::new();
    let pool = builder(&c).spawn_linked(parent.get_cell()).await.unwrap();
    let held = pool
        .get_or_create("t:held", h(1), factory(&c, "t:held", h(1), Duration::ZERO))
        .await
        .unwrap();
    drop(
        pool.get_or_create("t:idle", h(1), factory(&c, "t:idle", h(1), Duration::ZERO))
            .await
            .unwrap(),
    );
    let building = spawn_get(&pool, &c, "t:slow", 1, Duration::from_secs(2));
    settle().await;
    assert_eq!(c.builds(), 3);

    parent.stop(None);
    eventually("the pool stops with its parent", async || pool.is_shut_down()).await;
    match building.await.unwrap() {
        Err(PoolError::ShutDown) => {}
        other => panic!("the waiter of a build cut off by the stop gets ShutDown, got {other:?}"),
    }
    let err = pool
        .get_or_create("t:new", h(1), factory(&c, "t:new", h(1), Duration::ZERO))
        .await
        .unwrap_err();
    assert!(matches!(err, PoolError::ShutDown), "{err:?}");
    eventually("the resident unleased instance is disposed", async || c.disposed() >= 1).await;

    tokio::time::advance(Duration::from_secs(2)).await;
    settle().await;
    assert_eq!(held.key, "t:held", "a lease stays usable after the pool stopped");
    drop(held);
    settle().await;
    tokio::time::advance(Duration::from_secs(30)).await;
    settle().await;
    let mut keys = c.disposed_keys.lock().unwrap().clone();
    keys.sort();
    assert_eq!(
        keys,
        ["t:held", "t:idle", "t:slow"],
        "every built instance goes through the dispose hook exactly once"
    );
    assert_eq!(c.builds(), 3);
    assert_eq!(parent.get_status(), ActorStatus::Stopped);
}

/// Stopping the parent while a build is in flight and nothing is leased: the instance that build returns after the stop still has its dispose hook run, exactly once.
#[tokio::test(start_paused = true)]
async fn instance_built_after_parent_stopped_is_disposed_by_the_hook() {
    let (parent, _handle) = Actor::spawn(None, Parent, ()).await.unwrap();
    let c = Counters::new();
    let pool = builder(&c).spawn_linked(parent.get_cell()).await.unwrap();
    let building = spawn_get(&pool, &c, "t:slow", 1, Duration::from_secs(2));
    settle().await;
    assert_eq!(c.builds(), 1);

    parent.stop(None);
    eventually("the pool stops with its parent", async || pool.is_shut_down()).await;
    assert!(matches!(building.await.unwrap(), Err(PoolError::ShutDown)));
    tokio::time::advance(Duration::from_secs(2)).await;
    settle().await;
    tokio::time::advance(Duration::from_secs(30)).await;
    settle().await;
    assert_eq!(
        *c.disposed_keys.lock().unwrap(),
        ["t:slow"],
        "the instance built after the stop must reach the dispose hook"
    );
}

/// Tasks alive on the current runtime (actors, timers, hook tasks).
fn alive_tasks() -> usize {
    tokio::runtime::Handle::current().metrics().num_alive_tasks()
}

/// Stopping the parent stops every task the pool started, the disposer included, once every instance is disposed (as `shutdown()` does).
#[tokio::test(start_paused = true)]
async fn parent_stop_leaves_no_pool_task_running() {
    let baseline = alive_tasks();
    let (parent, parent_task) = Actor::spawn(None, Parent, ()).await.unwrap();
    let c = Counters::new();
    let pool = builder(&c).spawn_linked(parent.get_cell()).await.unwrap();
    drop(
        pool.get_or_create("t:a", h(1), factory(&c, "t:a", h(1), Duration::ZERO))
            .await
            .unwrap(),
    );
    parent.stop(None);
    parent_task.await.unwrap();
    eventually("the instance is disposed", async || c.disposed() == 1).await;
    drop(pool);
    settle().await;
    tokio::time::advance(Duration::from_secs(60)).await;
    settle().await;
    assert_eq!(
        alive_tasks(),
        baseline,
        "a task of the pool outlives it (the disposer never got DisposerMsg::Close)"
    );
}

/// Control for the test above: after `shutdown()` no task of the pool is left running.
#[tokio::test(start_paused = true)]
async fn shutdown_leaves_no_pool_task_running() {
    let baseline = alive_tasks();
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    drop(
        pool.get_or_create("t:a", h(1), factory(&c, "t:a", h(1), Duration::ZERO))
            .await
            .unwrap(),
    );
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
    drop(pool);
    settle().await;
    tokio::time::advance(Duration::from_secs(60)).await;
    settle().await;
    assert_eq!(alive_tasks(), baseline);
}

// Regressions found by the model test (`tests/model.rs`) while the hit path
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

/// A credential rotation at capacity rebuilds in the same key actor: no second overshoot, no actor churn (the first ask once retired the old instance and let the supervisor stop the idle actor before the second ask).
#[tokio::test(start_paused = true)]
async fn rotation_at_capacity_counts_one_overshoot_and_keeps_the_actor() {
    let c = Counters::new();
    let pool = builder(&c).max_entries(1).spawn().await.unwrap();
    let b = pool
        .get_or_create("b:", h(3), factory(&c, "b:", h(3), Duration::ZERO))
        .await
        .unwrap();
    let a = pool
        .get_or_create("a:", h(1), factory(&c, "a:", h(1), Duration::ZERO))
        .await
        .unwrap();
    settle().await;
    assert_eq!(
        pool.stats().await.unwrap().capacity_overshoot,
        1,
        "b is leased: a overshoots"
    );
    let ids = || {
        let mut ids: Vec<_> = key_actors(&pool).iter().map(|a| a.get_id()).collect();
        ids.sort();
        ids
    };
    let before = ids();
    let b2 = pool
        .get_or_create("b:", h(1), factory(&c, "b:", h(1), Duration::ZERO))
        .await
        .unwrap();
    settle().await;
    assert_eq!(b2.serial, 3);
    let s = pool.stats().await.unwrap();
    assert_eq!(s.capacity_overshoot, 1, "the rotation admitted no new key");
    assert_eq!(s.retirements.credentials, 1);
    assert_eq!(ids(), before, "b's actor served the rotation itself");
    drop((a, b, b2));
}
