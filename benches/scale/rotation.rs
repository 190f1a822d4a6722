//! Section 4 (`rotation`): rotation under load.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::time::{Duration, Instant};

use warmpool::CredentialsHash;

use crate::instances::{Ledger, counting_pool, factory};
use crate::plan::Plan;
use crate::stats::{ms, ns, percentile};

fn rot_hash(key: usize, version: u32) -> CredentialsHash {
    CredentialsHash::from_u64(((key as u64) << 32) | u64::from(version))
}

pub(crate) async fn section_rotation(plan: &Plan) {
    const KEYS: usize = 1_000;
    const CALLERS: usize = 64;
    let build_delay = Duration::from_millis(1);
    let ledger = Ledger::new(1_000_000);
    let pool = counting_pool(&ledger).max_entries(10_000).spawn().await.unwrap();
    let names: Arc<Vec<String>> = Arc::new((0..KEYS).map(|k| format!("rot{k:04}")).collect());
    let version: Arc<Vec<AtomicU32>> = Arc::new((0..KEYS).map(|_| AtomicU32::new(0)).collect());
    // (version << 40) | serial of the instance the rotator got for it.
    let rotated: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    for (k, name) in names.iter().enumerate() {
        let f = factory(&ledger, k as u32, rot_hash(k, 0), build_delay);
        let lease = pool.get_or_create(name, rot_hash(k, 0), f).await.unwrap();
        rotated[k].store(lease.serial, SeqCst);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let mismatched = Arc::new(AtomicU64::new(0));
    let stale = Arc::new(AtomicU64::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let mut callers = Vec::new();
    for c in 0..CALLERS {
        let (pool, names, version, rotated, ledger) = (
            pool.clone(),
            names.clone(),
            version.clone(),
            rotated.clone(),
            ledger.clone(),
        );
        let (stop, mismatched, stale, calls) = (stop.clone(), mismatched.clone(), stale.clone(), calls.clone());
        callers.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(c as u64);
            // Every 17th call's latency (17 shares no factor with the
            // 1,024-call period of the hits' coop yields), and the slowest
            // of all: 64 tasks
            // that only hit make 100 M+ calls while the rotator runs, and a
            // vector of every latency took gigabytes.
            let mut lat = Vec::with_capacity(100_000);
            let mut slowest = 0u64;
            let mut n = 0u64;
            while !stop.load(Relaxed) {
                let k = rng.usize(0..KEYS);
                let done = rotated[k].load(SeqCst);
                let v = version[k].load(SeqCst);
                let hash = rot_hash(k, v);
                let f = factory(&ledger, k as u32, hash, build_delay);
                let t0 = Instant::now();
                let lease = pool.get_or_create(&names[k], hash, f).await.unwrap();
                let took = t0.elapsed().as_nanos() as u64;
                slowest = slowest.max(took);
                if n.is_multiple_of(17) {
                    lat.push(took);
                }
                n += 1;
                if lease.hash != hash || lease.key != k as u32 {
                    mismatched.fetch_add(1, SeqCst);
                }
                // The rotator finished rotating to `v` before this call began:
                // the instance must be the one it got, or a later one.
                if (done >> 40) as u32 == v && lease.serial < (done & ((1 << 40) - 1)) {
                    stale.fetch_add(1, SeqCst);
                }
                calls.fetch_add(1, Relaxed);
            }
            (lat, slowest)
        }));
    }

    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = Instant::now();
    let mut rotations = 0u64;
    let mut rotator_mismatch = 0u64;
    for _ in 0..plan.rotation_passes {
        for (k, name) in names.iter().enumerate() {
            let v = version[k].fetch_add(1, SeqCst) + 1;
            let hash = rot_hash(k, v);
            let f = factory(&ledger, k as u32, hash, build_delay);
            let lease = pool.get_or_create(name, hash, f).await.unwrap();
            if lease.hash != hash {
                rotator_mismatch += 1;
            }
            rotated[k].store((u64::from(v) << 40) | lease.serial, SeqCst);
            rotations += 1;
        }
    }
    let rotate_time = start.elapsed();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, SeqCst);
    let mut lat = Vec::new();
    let mut slowest = 0;
    for c in callers {
        let (sample, max) = c.await.unwrap();
        lat.extend(sample);
        slowest = slowest.max(max);
    }
    lat.sort_unstable();
    let s = pool.stats().await.unwrap();
    let report = pool.shutdown(Duration::from_secs(60)).await.unwrap();
    let (built, once, never, twice) = ledger.audit();
    let extra = built - KEYS as u64 - rotations;

    println!("## 4. Rotation under load\n");
    println!(
        "{KEYS} keys, each rotated {} time(s) in sequence by one rotator (a call with the new hash; \
         factory takes 1 ms) while {CALLERS} callers hit random keys with the hash current when their call \
         starts. Rotation took {} in all: each rotation's miss waits for its turn on a worker behind the \
         callers, which yield about every 1,000 hits (hits take from tokio's coop budget). Every \
         instance's dispose is counted by its build serial after `shutdown()`.\n",
        plan.rotation_passes,
        ns(ms(rotate_time) * 1e6)
    );
    println!("| figure | value |");
    println!("|---|---|");
    println!("| caller calls | {} |", calls.load(SeqCst));
    println!(
        "| caller latency p50 / p99 (every 17th call) / max (all calls) | {} / {} / {} |",
        ns(percentile(&lat, 50.0) as f64),
        ns(percentile(&lat, 99.0) as f64),
        ns(slowest as f64)
    );
    println!("| rotations | {rotations} |");
    println!(
        "| builds (factory calls) | {built} = {KEYS} initial + {rotations} rotations + {extra} rebuilt for callers still presenting the previous hash |"
    );
    println!(
        "| pool counters: builds / credentials retirements | {} / {} |",
        s.builds, s.retirements.credentials
    );
    println!(
        "| disposals: exactly once / never / twice or more | {once} / {never} / {twice} (shutdown retired {}, still leased {}) |",
        report.retired,
        report.still_leased.len()
    );
    println!(
        "| calls that got an instance for another hash than presented | {} |",
        mismatched.load(SeqCst) + rotator_mismatch
    );
    println!(
        "| calls begun after a rotation that got an instance older than it | {} |",
        stale.load(SeqCst)
    );
    println!();
}
