//! The factory forms: `try_get_with` (one future, one attempt: shared by
//! concurrent callers, dropped unpolled on a hit, never retried, and
//! reported as `InitDiscarded` when an invalidation overtakes it) and
//! `get_or_create_from` (the pool clones the input for each attempt).
//! Factory calls and polls are counted exactly. Paused clock.

mod common;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use common::*;
use warmpool::{CredentialsHash, InitDiscarded, Lease, PoolError};

/// A future that counts its first poll in `polled`, then builds a client
/// for `key` after `delay` (or fails).
fn init(
    polled: &Arc<AtomicUsize>,
    key: &str,
    hash: CredentialsHash,
    delay: Duration,
    fail: bool,
) -> impl Future<Output = Result<Client, std::io::Error>> + Send + 'static {
    let (polled, key) = (polled.clone(), key.to_string());
    async move {
        let serial = polled.fetch_add(1, SeqCst) + 1;
        tokio::time::sleep(delay).await;
        if fail {
            return Err(std::io::Error::other("provider down"));
        }
        Ok(Client { key, hash, serial })
    }
}

/// Ten concurrent `try_get_with` calls on a cold key poll exactly one of
/// their futures and all get its instance.
#[tokio::test(start_paused = true)]
async fn try_get_with_runs_one_future_for_concurrent_callers() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let polled = Arc::new(AtomicUsize::new(0));
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let (pool, fut) = (
                pool.clone(),
                init(&polled, "k", h(1), Duration::from_millis(100), false),
            );
            tokio::spawn(async move { pool.try_get_with("k", h(1), fut).await })
        })
        .collect();
    let mut leases: Vec<Lease<Client>> = Vec::new();
    for call in calls {
        leases.push(call.await.unwrap().unwrap());
    }
    assert_eq!(polled.load(SeqCst), 1);
    assert!(leases.iter().all(|l| Lease::ptr_eq(l, &leases[0])));
    assert_eq!(pool.counters().await.unwrap().builds, 1);
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// On a hit the future is dropped without being polled.
#[tokio::test(start_paused = true)]
async fn try_get_with_on_a_hit_does_not_poll_the_future() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let polled = Arc::new(AtomicUsize::new(0));
    let first = pool
        .try_get_with("k", h(1), init(&polled, "k", h(1), Duration::ZERO, false))
        .await
        .unwrap();
    let second = pool
        .try_get_with("k", h(1), init(&polled, "k", h(1), Duration::ZERO, false))
        .await
        .unwrap();
    assert_eq!(polled.load(SeqCst), 1);
    assert!(Lease::ptr_eq(&first, &second));
    let counters = pool.counters().await.unwrap();
    assert_eq!((counters.hits, counters.builds), (1, 1));
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// A failed single attempt is returned at once and never retried, where
/// the same policy retries a factory twice; the factory's own error is the
/// source.
#[tokio::test(start_paused = true)]
async fn try_get_with_is_a_single_attempt() {
    let c = Counters::new();
    // The default policy: 2 retries.
    let pool = builder(&c).spawn().await.unwrap();
    let polled = Arc::new(AtomicUsize::new(0));
    let err = pool
        .try_get_with("k", h(1), init(&polled, "k", h(1), Duration::from_millis(10), true))
        .await
        .unwrap_err();
    assert!(matches!(err, PoolError::Factory { attempts: 1, .. }), "{err:?}");
    let source = std::error::Error::source(&err).unwrap();
    assert!(source.downcast_ref::<std::io::Error>().is_some(), "{source:?}");
    tokio::time::advance(Duration::from_secs(10)).await;
    settle().await;
    assert_eq!(polled.load(SeqCst), 1);
    assert_eq!(pool.counters().await.unwrap().build_failures, 1);

    // The same policy retries a factory: three attempts.
    let calls = Arc::new(AtomicUsize::new(0));
    let err = pool
        .get_or_create_from("j", h(1), calls.clone(), |calls| {
            calls.fetch_add(1, SeqCst);
            async { Err::<Client, _>(std::io::Error::other("provider down")) }
        })
        .await
        .unwrap_err();
    assert!(matches!(err, PoolError::Factory { attempts: 3, .. }), "{err:?}");
    assert_eq!(calls.load(SeqCst), 3);
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// An invalidation while a `try_get_with` future runs discards its result;
/// that call gets `InitDiscarded` (no second poll, no failure counted) and a
/// caller that joined the build gets a fresh one from its own factory.
#[tokio::test(start_paused = true)]
async fn an_invalidation_discards_a_single_attempt() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let polled = Arc::new(AtomicUsize::new(0));
    let single = {
        let (pool, fut) = (pool.clone(), init(&polled, "k", h(1), Duration::from_secs(1), false));
        tokio::spawn(async move { pool.try_get_with("k", h(1), fut).await })
    };
    settle().await;
    let joined = {
        let (pool, f) = (pool.clone(), factory(&c, "k", h(1), Duration::from_secs(1)));
        tokio::spawn(async move { pool.get_or_create("k", h(1), f).await })
    };
    settle().await;
    assert!(pool.invalidate("k").await.unwrap(), "a build was in flight");

    let err = single.await.unwrap().unwrap_err();
    assert!(matches!(&err, PoolError::Factory { attempts: 1, .. }), "{err:?}");
    let source = std::error::Error::source(&err).unwrap();
    assert!(source.downcast_ref::<InitDiscarded>().is_some(), "{source:?}");
    let lease = joined.await.unwrap().unwrap();
    assert_eq!(lease.serial, 1, "built by the joined caller's factory");
    assert_eq!((polled.load(SeqCst), c.builds()), (1, 1));
    let counters = pool.counters().await.unwrap();
    assert_eq!(counters.build_failures, 0);
    assert_eq!(counters.retirements.invalidated, 1, "the discarded instance");
    drop(lease);
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// A value that counts its clones.
#[derive(Debug)]
struct Creds(Arc<AtomicUsize>);

impl Clone for Creds {
    fn clone(&self) -> Self {
        self.0.fetch_add(1, SeqCst);
        Creds(self.0.clone())
    }
}

/// `get_or_create_from` clones its input once per attempt (none on a hit)
/// and hands it to the factory.
#[tokio::test(start_paused = true)]
async fn get_or_create_from_clones_the_input_per_attempt() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let clones = Arc::new(AtomicUsize::new(0));
    let connect = |creds: Creds| async move {
        drop(creds);
        Ok::<_, std::io::Error>(Client {
            key: "k".into(),
            hash: h(1),
            serial: 1,
        })
    };
    let first = pool
        .get_or_create_from("k", h(1), Creds(clones.clone()), connect)
        .await
        .unwrap();
    assert_eq!(clones.load(SeqCst), 1);
    let second = pool
        .get_or_create_from("k", h(1), Creds(clones.clone()), connect)
        .await
        .unwrap();
    assert_eq!(clones.load(SeqCst), 1, "a hit clones nothing");
    assert!(Lease::ptr_eq(&first, &second));

    let failing_clones = Arc::new(AtomicUsize::new(0));
    pool.get_or_create_from("down", h(1), Creds(failing_clones.clone()), |_creds: Creds| async {
        Err::<Client, _>(std::io::Error::other("provider down"))
    })
    .await
    .unwrap_err();
    assert_eq!(failing_clones.load(SeqCst), 3, "the first attempt and two retries");
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// The new forms' futures are `Send` (so they run in `tokio::spawn` and web
/// handlers), and `InitDiscarded` is an error that crosses threads
/// (checked at compile time).
#[tokio::test(start_paused = true)]
async fn futures_and_errors_are_send() {
    fn assert_send<X: Send>(_: &X) {}
    fn assert_error<E: std::error::Error + Send + Sync + 'static>() {}
    assert_error::<InitDiscarded>();
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let polled = Arc::new(AtomicUsize::new(0));
    let single = pool.try_get_with("k", h(1), init(&polled, "k", h(1), Duration::ZERO, false));
    assert_send(&single);
    drop(single.await.unwrap());
    let from = pool.get_or_create_from("k", h(1), String::from("input"), |_input: String| async {
        Ok::<_, std::io::Error>(Client {
            key: "k".into(),
            hash: h(1),
            serial: 0,
        })
    });
    assert_send(&from);
    drop(from.await.unwrap());
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
}
