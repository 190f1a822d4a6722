//! The read view under concurrency (multi-thread runtime, real clock, every
//! wait bounded): readers hammer keys through the lock-free hit path while
//! invalidations, prefix invalidations, credential rotations and capacity
//! evictions run. No call that starts after an invalidation returned gets an
//! instance built before it; nobody gets another key's or another hash's
//! instance; every instance is disposed exactly once.
mod common;
use common::bounded;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use warmpool::{CredentialsHash, Pool, PoolError};

const KEYS: usize = 24;
const BOUND: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Instance {
    key: usize,
    hash: CredentialsHash,
    serial: u64,
}

/// What the test knows, shared by all its tasks.
#[derive(Default)]
struct Books {
    /// Serials handed out by factories (1-based); a factory call takes one.
    serial: AtomicU64,
    /// Per key, the highest serial whose factory call had started.
    started: Vec<AtomicU64>,
    /// Per key, a floor: after an invalidation of the key returned, no call
    /// that starts may get a serial at or below it.
    floor: Vec<AtomicU64>,
    /// Per key, the credentials hash callers present now.
    hash: Vec<AtomicU64>,
    /// Serials disposed, to catch a second disposal.
    disposed: Mutex<HashSet<u64>>,
    twice: AtomicBool,
}

impl Books {
    fn new() -> Arc<Self> {
        Arc::new(Books {
            started: (0..KEYS).map(|_| AtomicU64::new(0)).collect(),
            floor: (0..KEYS).map(|_| AtomicU64::new(0)).collect(),
            hash: (0..KEYS).map(|_| AtomicU64::new(1)).collect(),
            ..Books::default()
        })
    }
}

fn key_name(k: usize) -> String {
    format!("t{}:{k:02}", k % 4)
}

/// Readers, invalidators, a rotator and capacity pressure for a few seconds;
/// then shutdown and exact books.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_never_see_an_invalidated_or_foreign_instance() {
    let books = Books::new();
    let disposed_books = books.clone();
    let pool: Pool<Instance> = Pool::builder()
        .max_entries(KEYS - 6) // evictions all the time
        .time_to_live(Duration::from_millis(300))
        .sweep_interval(Duration::from_millis(50))
        .on_dispose(move |key, instance: Instance| {
            let books = disposed_books.clone();
            async move {
                assert_eq!(key, key_name(instance.key));
                if !books.disposed.lock().unwrap().insert(instance.serial) {
                    books.twice.store(true, SeqCst);
                }
            }
        })
        .spawn()
        .await
        .unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut tasks = Vec::new();
    for r in 0..6u64 {
        let pool = pool.clone();
        let books = books.clone();
        tasks.push(tokio::spawn(async move {
            let mut hits = 0u64;
            let mut i = r;
            while tokio::time::Instant::now() < deadline {
                i = i.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let k = (i >> 33) as usize % KEYS;
                let floor = books.floor[k].load(SeqCst);
                let hash = CredentialsHash::from_u64(books.hash[k].load(SeqCst));
                let b = books.clone();
                let got = bounded(
                    BOUND,
                    "get_or_create",
                    pool.get_or_create(&key_name(k), hash, move || {
                        let serial = b.serial.fetch_add(1, SeqCst) + 1;
                        b.started[k].fetch_max(serial, SeqCst);
                        async move { Ok::<_, std::io::Error>(Instance { key: k, hash, serial }) }
                    }),
                )
                .await;
                match got {
                    Ok(lease) => {
                        assert_eq!(lease.key, k, "another key's instance");
                        assert_eq!(lease.hash, hash, "an instance built from other credentials");
                        assert!(
                            lease.serial > floor,
                            "key {k}: serial {} was invalidated (floor {floor}) before this call started",
                            lease.serial
                        );
                        hits += 1;
                        if hits.is_multiple_of(64) {
                            tokio::task::yield_now().await;
                        }
                    }
                    Err(PoolError::ShutDown) => break,
                    Err(other) => panic!("get_or_create: {other}"),
                }
            }
            hits
        }));
    }
    // Invalidations: one key at a time, then a tenant prefix; each raises
    // the floor of what it named once it has returned.
    {
        let pool = pool.clone();
        let books = books.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0usize;
            while tokio::time::Instant::now() < deadline {
                n += 1;
                if n.is_multiple_of(3) {
                    let tenant = n % 4;
                    let keys: Vec<usize> = (0..KEYS).filter(|k| k % 4 == tenant).collect();
                    let started: Vec<u64> = keys.iter().map(|k| books.started[*k].load(SeqCst)).collect();
                    bounded(
                        BOUND,
                        "invalidate_by_prefix",
                        pool.invalidate_by_prefix(&format!("t{tenant}:")),
                    )
                    .await
                    .unwrap();
                    for (k, s) in keys.into_iter().zip(started) {
                        books.floor[k].fetch_max(s, SeqCst);
                    }
                } else {
                    let k = n * 7 % KEYS;
                    let started = books.started[k].load(SeqCst);
                    bounded(BOUND, "invalidate", pool.invalidate(&key_name(k)))
                        .await
                        .unwrap();
                    books.floor[k].fetch_max(started, SeqCst);
                }
                tokio::time::sleep(Duration::from_micros(300)).await;
            }
            0
        }));
    }
    // Rotations: callers switch a key's credentials.
    {
        let books = books.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0usize;
            while tokio::time::Instant::now() < deadline {
                n += 1;
                books.hash[n * 5 % KEYS].fetch_add(1, SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            0
        }));
    }
    let mut hits = 0;
    for task in tasks {
        hits += bounded(BOUND, "a task", task).await.unwrap();
    }
    assert!(hits > 1_000, "the readers ran ({hits} leases)");

    let report = bounded(BOUND, "shutdown", pool.shutdown(Duration::from_secs(5)))
        .await
        .unwrap();
    assert!(report.still_leased.is_empty(), "{:?}", report.still_leased);
    let built = books.serial.load(SeqCst);
    let disposed = books.disposed.lock().unwrap().len() as u64;
    assert!(!books.twice.load(SeqCst), "an instance was disposed twice");
    assert_eq!(disposed, built, "every instance built is disposed exactly once");
    assert_eq!(report.disposed, built);
}

/// Tasks that do nothing but hit, four per worker, do not stall the pool's
/// actors: rotations (each a miss that needs the key's actor, a 1 ms timer
/// and a worker) still complete while they run, because hits take from the
/// tasks' coop budget and so yield now and then. Without that, the two
/// workers never came back from the hitters and the rotations never ended.
/// The bound is a watchdog on a plain thread: a tokio timeout would need a
/// stalled worker to fire it.
#[test]
fn hitters_that_outnumber_the_workers_do_not_stall_the_actors() {
    const HITTERS: usize = 8;
    const ROTATIONS: u64 = 20;
    const WARM: usize = 100;
    let (done, outcome) = std::sync::mpsc::channel();
    // Set by the watchdog too, so that hitters left spinning after a failure
    // do not take both cores from the tests that run after this one.
    let stop = Arc::new(AtomicBool::new(false));
    let stop_hitters = stop.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let counts = rt.block_on(async {
            let c = common::Counters::new();
            let pool = common::builder(&c).spawn().await.unwrap();
            let names: Arc<Vec<String>> = Arc::new((0..WARM).map(|k| format!("warm{k:03}")).collect());
            common::warm_keys(&pool, &c, &names).await;
            let stop = stop_hitters;
            let hits = Arc::new(AtomicU64::new(0));
            let hitters: Vec<_> = (0..HITTERS)
                .map(|t| {
                    let (pool, c, names, stop, hits) =
                        (pool.clone(), c.clone(), names.clone(), stop.clone(), hits.clone());
                    tokio::spawn(async move {
                        let mut k = t;
                        while !stop.load(SeqCst) {
                            drop(common::get(&pool, &c, &names[k % WARM]).await);
                            hits.fetch_add(1, SeqCst);
                            k += 7;
                        }
                    })
                })
                .collect();
            // The hitters are under way before the first rotation.
            while hits.load(SeqCst) < 10_000 {
                tokio::task::yield_now().await;
            }
            for v in 2..2 + ROTATIONS {
                let lease = pool
                    .get_or_create(
                        "rotated",
                        common::h(v),
                        common::factory(&c, "rotated", common::h(v), Duration::from_millis(1)),
                    )
                    .await
                    .unwrap();
                assert_eq!(lease.hash, common::h(v), "rotation {v} served another hash");
            }
            stop.store(true, SeqCst);
            for h in hitters {
                h.await.unwrap();
            }
            let counted = pool.stats().await.unwrap().builds;
            let report = pool.shutdown(Duration::from_secs(10)).await.unwrap();
            (c.builds(), c.disposed(), report.still_leased.len(), counted)
        });
        let _ = done.send(counts);
    });
    let (builds, disposed, still_leased, counted) = match outcome.recv_timeout(Duration::from_secs(60)) {
        Ok(counts) => counts,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            stop.store(true, SeqCst);
            panic!("20 rotations did not end within 60 s while 8 tasks hit: the hitters starved the actors");
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            stop.store(true, SeqCst);
            panic!("the runtime thread panicked (its message is printed above)");
        }
    };
    assert_eq!(
        builds,
        WARM + ROTATIONS as usize,
        "one build per warm key and per rotation"
    );
    assert_eq!(counted as usize, builds, "the pool counted the same builds");
    assert_eq!(
        disposed, builds,
        "every instance disposed exactly once by the end of shutdown"
    );
    assert_eq!(still_leased, 0);
}
