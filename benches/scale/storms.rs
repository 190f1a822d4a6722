//! Section 2 (`storms`): cold-key storms.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use crate::instances::{HASH, Ledger, counting_pool, factory};
use crate::plan::Plan;
use crate::stats::{int, mmm, ms, ns};

const FACTORY_DELAY: Duration = Duration::from_millis(10);

/// `callers` concurrent callers on each of `keys` cold keys, 10 ms factory.
/// Returns (factory calls, time until all served, distinct instances per key ok).
async fn pool_storm(keys: usize, callers: usize) -> (u64, Duration, bool) {
    let ledger = Ledger::new(keys * 2 + 16);
    let pool = counting_pool(&ledger)
        .max_entries(100_000)
        .sweep_interval(Duration::ZERO)
        .spawn()
        .await
        .unwrap();
    let names: Vec<String> = (0..keys).map(|k| format!("cold{k:05}")).collect();
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(keys * callers);
    for (k, name) in names.iter().enumerate() {
        for _ in 0..callers {
            let pool = pool.clone();
            let name = name.clone();
            let f = factory(&ledger, k as u32, HASH, FACTORY_DELAY);
            tasks.push(tokio::spawn(async move {
                let lease = pool.get_or_create(&name, HASH, f).await.unwrap();
                (lease.key, lease.serial)
            }));
        }
    }
    let mut served: HashMap<u32, u64> = HashMap::new();
    let mut consistent = true;
    for task in tasks {
        let (key, serial) = task.await.unwrap();
        if *served.entry(key).or_insert(serial) != serial {
            consistent = false;
        }
    }
    let elapsed = start.elapsed();
    let builds = ledger.next_serial.load(SeqCst);
    pool.shutdown(Duration::from_secs(30)).await.unwrap();
    (builds, elapsed, consistent && served.len() == keys)
}

async fn moka_storm(keys: usize, callers: usize) -> (u64, Duration) {
    let cache: moka::future::Cache<u32, Arc<u64>> = moka::future::Cache::new(100_000);
    let inits = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(keys * callers);
    for k in 0..keys as u32 {
        for _ in 0..callers {
            let cache = cache.clone();
            let inits = inits.clone();
            tasks.push(tokio::spawn(async move {
                cache
                    .get_with(k, async move {
                        inits.fetch_add(1, SeqCst);
                        tokio::time::sleep(FACTORY_DELAY).await;
                        Arc::new(u64::from(k))
                    })
                    .await
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    (inits.load(SeqCst), start.elapsed())
}

pub(crate) async fn section_storms(plan: &Plan) {
    println!("## 2. Cold-key storms (factory takes 10 ms)\n");
    println!(
        "All callers are spawned at once; time runs from the first spawn until every caller holds its \
         lease. {} run(s) per row: median [min-max]. \"one instance per key\" checks that every caller \
         of a key got the same instance. moka's `get_with` (which also coalesces) on the same storms \
         for comparison.\n",
        plan.storm_rounds
    );
    println!(
        "| storm | warmpool factory calls | warmpool time until all served | one instance per key | moka init calls | moka time |"
    );
    println!("|---|---|---|---|---|---|");
    for (keys, callers) in [(1usize, 1_000usize), (1, 10_000), (1_000, 10)] {
        let mut calls = Vec::new();
        let mut times = Vec::new();
        let mut ok = true;
        let mut mcalls = Vec::new();
        let mut mtimes = Vec::new();
        for _ in 0..plan.storm_rounds {
            let (b, t, c) = pool_storm(keys, callers).await;
            calls.push(b as f64);
            times.push(ms(t) * 1e6);
            ok &= c;
            let (b, t) = moka_storm(keys, callers).await;
            mcalls.push(b as f64);
            mtimes.push(ms(t) * 1e6);
        }
        let label = if keys == 1 {
            format!("{callers} callers on 1 cold key")
        } else {
            format!("{keys} cold keys x {callers} callers")
        };
        println!(
            "| {label} | {} (must be {keys}) | {} | {} | {} | {} |",
            mmm(&calls, int),
            mmm(&times, ns),
            if ok { "yes" } else { "**NO**" },
            mmm(&mcalls, int),
            mmm(&mtimes, ns)
        );
    }
    println!();
}
