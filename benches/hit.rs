//! Per-operation cost of a hit and of a miss, side by side with the floor of
//! the design (a bare two-hop ractor round trip), moka and a mutexed LRU.
//!
//! Run with `cargo bench --bench hit`. Every figure runs on one tokio
//! multi-thread runtime with 2 workers (the machine has 2 cores).
//!
//! Two caller placements are measured:
//! - `hit/*`: the caller is a task on the runtime (as in a service, where
//!   callers are request handlers); criterion's `to_async` only waits for it.
//! - `hit_block_on/*`: the caller is criterion's own thread blocking on the
//!   runtime (`to_async(..).iter`), so every reply crosses to a third thread.

use std::hint::black_box;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use ractor::Actor;
use tokio::runtime::Runtime;
use warmpool::{CredentialsHash, Pool};

#[path = "common/floor.rs"]
mod floor;
use floor::{Idle, floor_call, spawn_floor};

// ---------------------------------------------------------------------------
// The pool.
// ---------------------------------------------------------------------------

/// The pooled instance: small, so only the pool's own cost is measured.
#[derive(Debug)]
struct Inst(#[allow(dead_code)] u64);

const HASH: CredentialsHash = CredentialsHash::from_u64(0x5eed);

async fn ready() -> Result<Inst, std::io::Error> {
    Ok(Inst(1))
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn hit(c: &mut Criterion) {
    let rt = runtime();
    const KEY: &str = "acme:openai";

    let (router, _holders) = rt.block_on(spawn_floor(1));
    let pool: Pool<Inst> = rt.block_on(async {
        let pool = Pool::builder().spawn().await.unwrap();
        drop(pool.get_or_create(KEY, HASH, ready).await.unwrap());
        pool
    });
    let moka_cache: moka::future::Cache<Arc<str>, Arc<Inst>> = moka::future::Cache::new(1_000);
    let moka_key: Arc<str> = Arc::from(KEY);
    rt.block_on(moka_cache.insert(moka_key.clone(), Arc::new(Inst(1))));
    let lru_cache: Arc<Mutex<lru::LruCache<Arc<str>, Arc<Inst>>>> =
        Arc::new(Mutex::new(lru::LruCache::new(NonZeroUsize::new(1_000).unwrap())));
    lru_cache.lock().unwrap().put(Arc::from(KEY), Arc::new(Inst(1)));

    // Caller as a runtime task: the loop runs in a spawned task that times itself.
    let mut group = c.benchmark_group("hit");
    group.measurement_time(Duration::from_secs(4));
    {
        let router = router.clone();
        group.bench_function("floor_two_hop_ractor", |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let router = router.clone();
                async move {
                    tokio::spawn(async move {
                        let start = Instant::now();
                        for _ in 0..iters {
                            black_box(floor_call(&router, 0).await);
                        }
                        start.elapsed()
                    })
                    .await
                    .unwrap()
                }
            })
        });
    }
    {
        let pool = pool.clone();
        group.bench_function("warmpool_get_or_create", |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let pool = pool.clone();
                async move {
                    tokio::spawn(async move {
                        let start = Instant::now();
                        for _ in 0..iters {
                            black_box(pool.get_or_create(KEY, HASH, ready).await.unwrap());
                        }
                        start.elapsed()
                    })
                    .await
                    .unwrap()
                }
            })
        });
    }
    {
        let cache = moka_cache.clone();
        let key = moka_key.clone();
        group.bench_function("moka_get_with", |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let cache = cache.clone();
                let key = key.clone();
                async move {
                    tokio::spawn(async move {
                        let start = Instant::now();
                        for _ in 0..iters {
                            black_box(cache.get_with(key.clone(), async { Arc::new(Inst(2)) }).await);
                        }
                        start.elapsed()
                    })
                    .await
                    .unwrap()
                }
            })
        });
    }
    {
        let cache = lru_cache.clone();
        group.bench_function("mutex_lru_get", |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let cache = cache.clone();
                async move {
                    tokio::spawn(async move {
                        let start = Instant::now();
                        for _ in 0..iters {
                            black_box(cache.lock().unwrap().get(KEY).cloned());
                        }
                        start.elapsed()
                    })
                    .await
                    .unwrap()
                }
            })
        });
    }
    group.finish();

    // Caller on criterion's thread, blocking on the runtime.
    let mut group = c.benchmark_group("hit_block_on");
    group.measurement_time(Duration::from_secs(4));
    group.bench_function("floor_two_hop_ractor", |b| {
        b.to_async(&rt).iter(|| floor_call(&router, 0))
    });
    group.bench_function("warmpool_get_or_create", |b| {
        b.to_async(&rt)
            .iter(|| async { pool.get_or_create(KEY, HASH, ready).await.unwrap() })
    });
    group.bench_function("moka_get_with", |b| {
        b.to_async(&rt)
            .iter(|| moka_cache.get_with(moka_key.clone(), async { Arc::new(Inst(2)) }))
    });
    group.finish();

    rt.block_on(async {
        pool.shutdown(Duration::from_secs(10)).await.unwrap();
    });
}

/// Keys per pool in the miss benchmark: each batch gets a fresh pool with
/// room for all of them, so no eviction runs while timing.
const MISS_BATCH: u64 = 10_000;

fn miss(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("miss");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));

    group.bench_function("warmpool_miss_ready_factory", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            tokio::spawn(async move {
                let mut total = Duration::ZERO;
                let mut done = 0;
                while done < iters {
                    let batch = (iters - done).min(MISS_BATCH);
                    let pool: Pool<Inst> = Pool::builder()
                        .max_entries(MISS_BATCH as usize)
                        .sweep_interval(Duration::ZERO)
                        .spawn()
                        .await
                        .unwrap();
                    let keys: Vec<String> = (0..batch).map(|i| format!("tenant{i}:openai")).collect();
                    let start = Instant::now();
                    for key in &keys {
                        black_box(pool.get_or_create(key, HASH, ready).await.unwrap());
                    }
                    total += start.elapsed();
                    done += batch;
                    pool.shutdown(Duration::from_secs(30)).await.unwrap();
                }
                total
            })
            .await
            .unwrap()
        })
    });

    group.bench_function("ractor_spawn", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            tokio::spawn(async move {
                let mut total = Duration::ZERO;
                let mut done = 0;
                while done < iters {
                    let batch = (iters - done).min(MISS_BATCH);
                    let mut actors = Vec::with_capacity(batch as usize);
                    let start = Instant::now();
                    for _ in 0..batch {
                        actors.push(Actor::spawn(None, Idle, ()).await.unwrap());
                    }
                    total += start.elapsed();
                    done += batch;
                    for (actor, handle) in actors {
                        actor.stop(None);
                        handle.await.unwrap();
                    }
                }
                total
            })
            .await
            .unwrap()
        })
    });

    group.bench_function("ractor_spawn_stop_join", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            tokio::spawn(async move {
                let start = Instant::now();
                for _ in 0..iters {
                    let (actor, handle) = Actor::spawn(None, Idle, ()).await.unwrap();
                    actor.stop(None);
                    handle.await.unwrap();
                }
                start.elapsed()
            })
            .await
            .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, hit, miss);
criterion_main!(benches);
