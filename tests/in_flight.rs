//! Misses in flight (`src/inflight.rs`): a call that misses while another
//! call of the same key and hash is asking the actors waits for that call's
//! answer instead of asking too. Followers are served the leader's instance
//! or share its error, are counted once as misses, and ask the actors
//! themselves when the leader was cancelled or a prefix invalidation ran
//! meanwhile. Paused clock; factory calls and disposals are counted exactly.

mod common;
use common::*;

use std::sync::Arc;
use std::time::Duration;

use warmpool::{Lease, PoolError};

const SEC: Duration = Duration::from_secs(1);

/// A storm on one cold key: one build, every caller served that instance,
/// each counted once as a miss; the next call is a hit.
#[tokio::test(start_paused = true)]
async fn a_storm_on_one_cold_key_is_one_build_and_one_miss_per_caller() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let callers: Vec<_> = (0..50).map(|_| spawn_get(&pool, &c, "t:a", 1, SEC)).collect();
    settle().await;
    assert_eq!(c.builds(), 1);
    tokio::time::advance(SEC).await;
    let mut leases = Vec::new();
    for caller in callers {
        leases.push(caller.await.unwrap().unwrap());
    }
    assert!(leases.iter().all(|l| Lease::ptr_eq(l, &leases[0])));
    let counters = pool.counters().await.unwrap();
    assert_eq!((counters.misses, counters.hits, counters.builds), (50, 0, 1));
    drop(get(&pool, &c, "t:a").await);
    assert_eq!(pool.counters().await.unwrap().hits, 1);
    drop(leases);
    pool.shutdown(SEC).await.unwrap();
    assert_eq!((c.builds(), c.disposed()), (1, 1));
}

/// Followers of a failing build get the leader's error itself (the same
/// shared source), without a second factory call.
#[tokio::test(start_paused = true)]
async fn followers_share_the_leaders_error() {
    let c = Counters::new();
    let pool = builder(&c).restart_policy(cool_at_once()).spawn().await.unwrap();
    let callers: Vec<_> = (0..5)
        .map(|_| {
            let (pool, f) = (pool.clone(), failing(&c, SEC));
            tokio::spawn(async move { pool.get_or_create("t:a", h(1), f).await })
        })
        .collect();
    settle().await;
    tokio::time::advance(SEC).await;
    let mut sources = Vec::new();
    for caller in callers {
        let err = caller.await.unwrap().unwrap_err();
        sources.push(assert_factory_error(&err, "t:a", 1));
    }
    assert!(sources.iter().all(|s| Arc::ptr_eq(s, &sources[0])), "one shared error");
    assert_eq!(c.builds(), 1);
    let counters = pool.counters().await.unwrap();
    assert_eq!((counters.misses, counters.build_failures), (5, 1));
    pool.shutdown(SEC).await.unwrap();
}

/// A leader cancelled mid-build (its task aborted) leaves its followers to
/// ask the actors themselves: they join the build it started, which serves
/// them all; still one factory call, and no caller counted twice.
#[tokio::test(start_paused = true)]
async fn followers_of_a_cancelled_leader_are_served_by_its_build() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let leader = spawn_get(&pool, &c, "t:a", 1, SEC);
    settle().await;
    assert_eq!(c.builds(), 1);
    let followers: Vec<_> = (0..3).map(|_| spawn_get(&pool, &c, "t:a", 1, SEC)).collect();
    settle().await;
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    settle().await;
    tokio::time::advance(SEC).await;
    let mut leases = Vec::new();
    for follower in followers {
        let lease = bounded(SEC, "a follower", follower).await.unwrap().unwrap();
        leases.push(lease);
    }
    assert!(leases.iter().all(|l| Lease::ptr_eq(l, &leases[0])));
    assert_eq!(c.builds(), 1);
    let counters = pool.counters().await.unwrap();
    assert_eq!((counters.misses, counters.hits), (4, 0));
    drop(leases);
    pool.shutdown(SEC).await.unwrap();
    assert_eq!(c.disposed(), 1);
}

/// A prefix invalidation of another tenant while a follower waits: the
/// follower cannot tell it from one of its own, so it asks the actors
/// itself, and is still served the one build, counted once (its detour is
/// not visible from outside; the reference model checks that it is taken).
#[tokio::test(start_paused = true)]
async fn a_follower_waiting_through_another_tenants_prefix_invalidation_gets_the_one_build() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let leader = spawn_get(&pool, &c, "t:a", 1, SEC);
    settle().await;
    let follower = spawn_get(&pool, &c, "t:a", 1, SEC);
    settle().await;
    assert_eq!(pool.invalidate_by_prefix("u:").await.unwrap(), 0);
    tokio::time::advance(SEC).await;
    let leader = leader.await.unwrap().unwrap();
    let follower = bounded(SEC, "the follower", follower).await.unwrap().unwrap();
    assert!(Lease::ptr_eq(&leader, &follower));
    assert_eq!(c.builds(), 1);
    let counters = pool.counters().await.unwrap();
    assert_eq!((counters.misses, counters.hits), (2, 0));
    drop((leader, follower));
    pool.shutdown(SEC).await.unwrap();
}

/// A call that starts after a prefix invalidation returned, while a call
/// routed before it still waits, is never served the build the
/// invalidation overtook.
#[tokio::test(start_paused = true)]
async fn a_follower_is_not_served_what_a_prefix_invalidation_fenced() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let leader = spawn_get(&pool, &c, "t:a", 1, SEC);
    settle().await;
    assert_eq!(pool.invalidate_by_prefix("t:").await.unwrap(), 1);
    // Starts after the invalidation returned: must not get the first build.
    let follower = spawn_get(&pool, &c, "t:a", 1, SEC);
    settle().await;
    tokio::time::advance(SEC).await;
    settle().await;
    tokio::time::advance(SEC).await;
    let follower = bounded(SEC, "the follower", follower).await.unwrap().unwrap();
    assert_eq!(follower.serial, 2, "built after the invalidation");
    // The leader's first build was overtaken too: it is served the second.
    let leader = leader.await.unwrap().unwrap();
    assert!(Lease::ptr_eq(&leader, &follower));
    assert_eq!(c.builds(), 2);
    drop((leader, follower));
    pool.shutdown(SEC).await.unwrap();
}

/// Followers waiting through a shutdown are answered with their build's
/// outcome (here the leader's timeout, as every waiter of a hanging build
/// is, since the shutdown's deadline is later), never left waiting.
#[tokio::test(start_paused = true)]
async fn followers_waiting_through_a_shutdown_share_the_builds_timeout() {
    let c = Counters::new();
    let pool = builder(&c).create_timeout(2 * SEC).spawn().await.unwrap();
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let (pool, f) = (pool.clone(), hanging(&c));
            tokio::spawn(async move { pool.get_or_create("t:a", h(1), f).await })
        })
        .collect();
    settle().await;
    assert_eq!(c.builds(), 1);
    let shutdown = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.shutdown(5 * SEC).await })
    };
    settle().await;
    tokio::time::advance(2 * SEC).await;
    for caller in callers {
        let got = bounded(SEC, "a caller", caller).await.unwrap();
        assert!(
            matches!(&got, Err(PoolError::Timeout { key, .. }) if key == "t:a"),
            "{got:?}"
        );
    }
    bounded(10 * SEC, "shutdown", shutdown).await.unwrap().unwrap();
    assert_eq!(c.builds(), 1);
}
