//! Races between paced retirement, key actors' reports, shutdown and the
//! disposer, found by a review of the two-ask / paced-retirement change.
//! Each test failed before its fix; each is named after the behaviour it
//! protects.

mod common;
use common::*;

use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use warmpool::{Lease, Pool, PoolError};

const SEC: Duration = Duration::from_secs(1);

/// Gets `key` with hash 1 from a factory that builds at once.
async fn get(pool: &Pool<Client>, c: &Arc<Counters>, key: &str) -> Lease<Client> {
    pool.get_or_create(key, h(1), factory(c, key, h(1), Duration::ZERO))
        .await
        .expect("the factory never fails here")
}

/// A shutdown right after a prefix invalidation of 40 keys: the invalidation
/// said it retired 40 keys, so stats must count 40 `invalidated` retirements
/// and the shutdown report must not claim it retired them again.
#[tokio::test(start_paused = true)]
async fn shutdown_right_after_prefix_invalidation_keeps_the_invalidated_count() {
    let c = Counters::new();
    let pool = builder(&c).sweep_interval(Duration::ZERO).spawn().await.unwrap();
    for i in 0..40 {
        drop(get(&pool, &c, &format!("acme:{i:02}")).await);
    }
    assert_eq!(pool.invalidate_by_prefix("acme:").await.unwrap(), 40);
    let report = pool.shutdown(10 * SEC).await.unwrap();
    assert_eq!(c.disposed(), 40, "each instance disposed exactly once");
    assert_eq!(
        report.retired, 0,
        "the shutdown found nothing left to retire (all 40 were invalidated before it)"
    );
}

/// A prefix invalidation "also ends a cool-down": a key that started cooling
/// just before `invalidate_by_prefix` (its actor's final idle report still on
/// the way, and its pending `Retire` queued behind 16 others) must be built
/// again by the next call, not answered `CoolingDown`.
#[tokio::test(start_paused = true)]
async fn prefix_invalidation_ends_a_cool_down_whose_idle_report_is_in_flight() {
    let c = Counters::new();
    let pool = builder(&c)
        .sweep_interval(Duration::ZERO)
        .restart_policy(cool_at_once())
        .spawn()
        .await
        .unwrap();
    // 16 warm keys sorted before "t:z": they take the first paced batch.
    for i in 0..16 {
        drop(get(&pool, &c, &format!("t:a{i:02}")).await);
    }
    // The failing factory, as its build ends, starts another caller's first
    // ask for the same key (so the supervisor routes it to the actor after
    // the failure, before the actor's idle report arrives).
    let failing_factory = {
        let pool = pool.clone();
        let c = c.clone();
        move || -> BoxFuture<'static, Result<Client, std::io::Error>> {
            let pool = pool.clone();
            let c = c.clone();
            Box::pin(async move {
                tokio::time::sleep(SEC).await;
                let f = factory(&c, "t:z", h(1), Duration::ZERO);
                tokio::spawn(async move {
                    let _ = pool.get_or_create("t:z", h(1), f).await;
                });
                Err(std::io::Error::other("provider down"))
            })
        }
    };
    let caller = {
        let pool = pool.clone();
        let c = c.clone();
        tokio::spawn(async move {
            let err = pool.get_or_create("t:z", h(1), failing_factory).await.unwrap_err();
            assert!(matches!(err, PoolError::Factory { .. }), "{err:?}");
            // The moment the failure is known: invalidate the tenant.
            let n = pool.invalidate_by_prefix("t:").await.unwrap();
            // The invalidation has returned: the cool-down is over.
            let after = pool
                .get_or_create("t:z", h(1), factory(&c, "t:z", h(1), Duration::ZERO))
                .await;
            (n, after)
        })
    };
    settle().await;
    tokio::time::advance(SEC).await;
    for _ in 0..50 {
        settle().await;
        tokio::time::advance(Duration::from_millis(1)).await;
    }
    let (n, after) = caller.await.unwrap();
    assert_eq!(n, 17);
    match after {
        Ok(lease) => assert_eq!(lease.key, "t:z"),
        Err(e) => panic!("a call after invalidate_by_prefix returned was refused: {e:?}"),
    }
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
