//! Every public call returns promptly around a shutdown: many rounds of
//! concurrent gets, invalidations, racing shutdowns and handle drops on a
//! multi-thread runtime (real clock, every wait bounded so a hang fails).
mod common;
use common::*;

use std::time::Duration;

use warmpool::{PoolError, SupervisorMsg};

/// The longest any single call may take in this test; a build takes 0-2 ms.
const BOUND: Duration = Duration::from_secs(5);

/// 300 rounds: 8 tasks get and invalidate 12 keys while three handles shut
/// the pool down at once and a fourth is dropped; every call (including the
/// public messages sent through `Pool::actor`) returns a result or
/// `ShutDown`, never hangs, and every instance built is disposed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_racing_shutdowns_and_drops_always_return() {
    let rounds: usize = std::env::var("WARMPOOL_STORM_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    for round in 0..rounds {
        let c = Counters::new();
        let pool = builder(&c).spawn().await.unwrap();
        let keys: Vec<String> = (0..12).map(|i| format!("t{}:{i}", i % 3)).collect();
        let mut tasks = Vec::new();
        for t in 0..8usize {
            let pool = pool.clone();
            let c = c.clone();
            let keys = keys.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..20usize {
                    let key = &keys[(t * 7 + i) % keys.len()];
                    let delay = Duration::from_millis(((t + i) % 3) as u64);
                    if (t + i) % 5 == 0 {
                        let prefix = &key[..3];
                        match bounded(BOUND, "invalidate_by_prefix", pool.invalidate_by_prefix(prefix)).await {
                            Ok(_) | Err(PoolError::ShutDown) => {}
                            Err(other) => panic!("invalidate_by_prefix: {other}"),
                        }
                    } else if (t + i) % 7 == 0 {
                        let actor = pool.actor();
                        let asked = ractor::call!(actor, |reply| SupervisorMsg::Invalidate {
                            key: key.clone(),
                            reply
                        });
                        // The actor may be gone: ractor's error, never a hang.
                        let _ = bounded(BOUND, "Invalidate through Pool::actor", async { asked }).await;
                    } else {
                        match bounded(
                            BOUND,
                            "get_or_create",
                            pool.get_or_create(key, h(1), factory(&c, key, h(1), delay)),
                        )
                        .await
                        {
                            Ok(lease) => assert_eq!(lease.key, *key),
                            Err(PoolError::ShutDown) => {}
                            Err(other) => panic!("get_or_create: {other}"),
                        }
                    }
                }
            }));
        }
        let shutters: Vec<_> = (0..3)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_micros(fastrand::u64(0..3_000))).await;
                    match bounded(BOUND, "shutdown", pool.shutdown(Duration::from_secs(2))).await {
                        Ok(_) | Err(PoolError::ShutDown) => {}
                        Err(other) => panic!("shutdown: {other}"),
                    }
                })
            })
            .collect();
        let stats_pool = pool.clone();
        let stats = tokio::spawn(async move {
            for _ in 0..10 {
                match bounded(BOUND, "stats", stats_pool.stats()).await {
                    Ok(_) | Err(PoolError::ShutDown) => {}
                    Err(other) => panic!("stats: {other}"),
                }
            }
        });
        drop(pool);
        for task in tasks.into_iter().chain(shutters).chain([stats]) {
            bounded(BOUND, "a caller task", task)
                .await
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
        // Every instance built is disposed exactly once (all leases are gone).
        let c2 = c.clone();
        bounded(BOUND, "disposal of every build", async move {
            while c2.disposed() < c2.builds() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
        assert_eq!(c.disposed(), c.builds(), "round {round}: disposed once each");
    }
}
