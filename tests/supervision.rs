//! Supervision: key actors stopped from outside are replaced (a restart is
//! counted, waiters get `ActorStopped`, every instance is still disposed
//! exactly once, other keys are unaffected), and a pool spawned linked under
//! an application actor serves, answers the parent's own `SupervisorMsg`
//! calls, stops with its parent and still disposes every instance, leaving
//! no task behind. Paused clock; factory calls and disposals are counted
//! exactly.

mod common;
use common::*;

use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, ActorStatus, RpcReplyPort, SupervisionEvent};
use warmpool::{Lease, PoolError, Stats, SupervisorMsg};

const SEC: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------
// Key actors stopped from outside
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// A pool linked under an application actor
// ---------------------------------------------------------------------------

/// A tiny application supervisor: talks to the pool with `SupervisorMsg` and records its children's exits.
struct Parent;

enum ParentMsg {
    /// Reads the pool's stats through `ractor::call!`.
    Stats(ActorRef<SupervisorMsg<Client>>, RpcReplyPort<Option<Stats>>),
    /// Invalidates a key through `ActorRef::call`.
    Invalidate(ActorRef<SupervisorMsg<Client>>, String, RpcReplyPort<Option<bool>>),
    /// Children that terminated so far.
    Exits(RpcReplyPort<Vec<ActorId>>),
}

impl Actor for Parent {
    type Msg = ParentMsg;
    type State = Vec<ActorId>;
    type Arguments = ();

    async fn pre_start(&self, _myself: ActorRef<Self::Msg>, _args: ()) -> Result<Self::State, ActorProcessingErr> {
        Ok(Vec::new())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ParentMsg::Stats(pool, reply) => {
                let stats = ractor::call!(pool, |reply| SupervisorMsg::Stats { reply }).ok();
                let _ = reply.send(stats);
            }
            ParentMsg::Invalidate(pool, key, reply) => {
                let answer = pool
                    .call(|reply| SupervisorMsg::Invalidate { key, reply }, None)
                    .await
                    .ok()
                    .and_then(|r| r.success_or(()).ok());
                let _ = reply.send(answer);
            }
            ParentMsg::Exits(reply) => {
                let _ = reply.send(state.clone());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorTerminated(cell, _, _) | SupervisionEvent::ActorFailed(cell, _) = event {
            state.push(cell.get_id());
        }
        Ok(())
    }
}

/// A pool spawned linked under an application actor serves, is its child, answers the parent's own `SupervisorMsg` calls, and the parent hears when it stops.
#[tokio::test(start_paused = true)]
async fn spawn_linked_under_parent_actor() {
    let (parent, _handle) = Actor::spawn(None, Parent, ()).await.unwrap();
    let c = Counters::new();
    let pool = builder(&c).spawn_linked(parent.get_cell()).await.unwrap();
    let supervisor_id = pool.actor().get_id();
    assert!(
        parent.get_children().iter().any(|ch| ch.get_id() == supervisor_id),
        "the pool's supervisor is a child of the parent"
    );

    let lease = pool
        .get_or_create("t:a", h(1), factory(&c, "t:a", h(1), Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(lease.key, "t:a");
    drop(lease);

    let stats = ractor::call!(parent, ParentMsg::Stats, pool.actor())
        .unwrap()
        .expect("the pool answers Stats sent by the parent");
    assert_eq!(stats.keys, vec!["t:a".to_string()]);
    assert_eq!(stats.builds, 1);

    let invalidated = ractor::call!(parent, ParentMsg::Invalidate, pool.actor(), "t:a".to_string())
        .unwrap()
        .expect("the pool answers Invalidate sent by the parent");
    assert!(invalidated);
    eventually("the invalidated instance is disposed", async || c.disposed() == 1).await;
    let lease = pool
        .get_or_create("t:a", h(1), factory(&c, "t:a", h(1), Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(lease.serial, 2, "invalidate from the parent retired the old instance");
    drop(lease);
    let stats = ractor::call!(parent, ParentMsg::Stats, pool.actor()).unwrap().unwrap();
    assert_eq!(stats.retirements.invalidated, 1);
    assert_eq!(stats.builds, 2);

    let report = pool.shutdown(Duration::from_secs(1)).await.unwrap();
    assert_eq!(report.retired, 1);
    assert_eq!(c.disposed(), 2);
    let p = parent.clone();
    eventually("the parent is told the pool stopped", async || {
        ractor::call!(p, ParentMsg::Exits).unwrap().contains(&supervisor_id)
    })
    .await;
    assert_eq!(
        parent.get_status(),
        ActorStatus::Running,
        "the parent outlives the pool"
    );
    parent.stop(None);
}

/// Stopping the parent actor stops a pool linked under it, and its instances are still disposed.
#[tokio::test(start_paused = true)]
async fn stopping_parent_stops_linked_pool() {
    let (parent, _handle) = Actor::spawn(None, Parent, ()).await.unwrap();
    let c = Counters::new();
    let pool = builder(&c).spawn_linked(parent.get_cell()).await.unwrap();
    warm_keys(&pool, &c, &keys("t:", 3)).await;

    parent.stop(None);
    eventually("the pool stops with its parent", async || pool.is_shut_down()).await;
    let err = pool
        .get_or_create("t:00", h(1), factory(&c, "t:00", h(1), Duration::ZERO))
        .await
        .unwrap_err();
    assert!(matches!(err, PoolError::ShutDown), "{err:?}");
    eventually("every instance is disposed", async || c.disposed() == 3).await;
    assert_eq!(c.builds(), 3);
}

/// A parent that does nothing: the pool is linked under it.
struct BareParent;

impl Actor for BareParent {
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
    let (parent, _handle) = Actor::spawn(None, BareParent, ()).await.unwrap();
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
    let (parent, _handle) = Actor::spawn(None, BareParent, ()).await.unwrap();
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
    let (parent, parent_task) = Actor::spawn(None, BareParent, ()).await.unwrap();
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

/// A parent whose state, when dropped (after it has killed its children,
/// the pool's supervisor among them), lets a factory finish.
struct ReleasingParent;

struct Release(Mutex<Option<tokio::sync::oneshot::Sender<()>>>);

impl Drop for Release {
    fn drop(&mut self) {
        if let Some(tx) = self.0.lock().unwrap().take() {
            let _ = tx.send(());
        }
    }
}

impl Actor for ReleasingParent {
    type Msg = ();
    type State = Release;
    type Arguments = tokio::sync::oneshot::Sender<()>;

    async fn pre_start(
        &self,
        _myself: ActorRef<()>,
        tx: tokio::sync::oneshot::Sender<()>,
    ) -> Result<Release, ActorProcessingErr> {
        Ok(Release(Mutex::new(Some(tx))))
    }
}

// Found by a review of the two-ask / paced-retirement change; failed before its fix.
/// A build that ends just after the supervisor is gone (its `DisposerMsg::Close`
/// already queued, the build's `Track` queued behind it) must still have its
/// instance disposed through the hook: the disposer must not stop on `Close`
/// because `builds_in_flight` already reads 0.
#[tokio::test(start_paused = true)]
async fn build_ending_right_after_close_still_reaches_the_hook() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (parent, _handle) = Actor::spawn(None, ReleasingParent, tx).await.unwrap();
    let c = Counters::new();
    let pool = builder(&c).spawn_linked(parent.get_cell()).await.unwrap();
    let rx = Arc::new(Mutex::new(Some(rx)));
    let gated = {
        let c = c.clone();
        move || -> BoxFuture<'static, Result<Client, std::io::Error>> {
            let rx = rx.lock().unwrap().take().expect("one build");
            let c = c.clone();
            Box::pin(async move {
                let serial = c.builds.fetch_add(1, SeqCst) + 1;
                let _ = rx.await;
                Ok(Client {
                    key: "t:slow".into(),
                    hash: h(1),
                    serial,
                })
            })
        }
    };
    let building = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.get_or_create("t:slow", h(1), gated).await })
    };
    settle().await;
    assert_eq!(c.builds(), 1, "the build is in flight");

    parent.stop(None);
    settle().await;
    assert!(pool.is_shut_down());
    assert!(building.await.unwrap().is_err());
    tokio::time::advance(30 * SEC).await;
    settle().await;
    assert_eq!(
        *c.disposed_keys.lock().unwrap(),
        ["t:slow"],
        "the instance built as the pool stopped never reached the dispose hook"
    );
}
