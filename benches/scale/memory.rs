//! Section 3a (`memory`): memory per entry, measured in child processes.

use std::sync::Arc;
use std::time::Duration;

use ractor::Actor;
use warmpool::Pool;

use crate::floor::Idle;
use crate::instances::{HASH, Inst, Ledger, factory, tenant_key};
use crate::plan::{Plan, runtime};
use crate::stats::{bytes, mmm, ratio, rss_bytes};

pub(crate) fn child(mode: &str) {
    let n: usize = std::env::var("WARMPOOL_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let rt = runtime();
    rt.block_on(async move {
        // Let the runtime's threads and the allocator settle first.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let before = rss_bytes();
        let keep: Box<dyn std::any::Any + Send> = match mode {
            "rss-pool" => {
                let pool: Pool<Inst> = Pool::builder()
                    .max_entries(n * 2)
                    .sweep_interval(Duration::ZERO)
                    .spawn()
                    .await
                    .unwrap();
                fill(&pool, &Ledger::new(0), n, 64).await;
                let s = pool.stats().await.unwrap();
                assert_eq!(s.size, n);
                Box::new(pool)
            }
            "rss-actors" => {
                let mut actors = Vec::with_capacity(n);
                for _ in 0..n {
                    let (a, _) = Actor::spawn(None, Idle, ()).await.unwrap();
                    actors.push(a);
                }
                Box::new(actors)
            }
            "rss-moka" => {
                let cache: moka::future::Cache<Arc<str>, Arc<Inst>> = moka::future::Cache::new(n as u64 * 2);
                for i in 0..n {
                    let key: Arc<str> = Arc::from(tenant_key(i / 1000, i % 1000).as_str());
                    cache
                        .insert(
                            key,
                            Arc::new(Inst {
                                key: 0,
                                hash: HASH,
                                serial: 0,
                            }),
                        )
                        .await;
                }
                cache.run_pending_tasks().await;
                Box::new(cache)
            }
            other => panic!("unknown child mode {other}"),
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = rss_bytes();
        println!("rss_before={before} rss_after={after} n={n}");
        drop(keep);
    });
    std::process::exit(0);
}

fn run_child(mode: &str, n: usize) -> f64 {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .env("WARMPOOL_BENCH_CHILD", mode)
        .env("WARMPOOL_BENCH_N", n.to_string())
        .output()
        .expect("run child");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("rss_before="))
        .unwrap_or_else(|| panic!("child {mode} failed: {text} {}", String::from_utf8_lossy(&out.stderr)));
    let field = |name: &str| -> f64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    (field("rss_after=") - field("rss_before=")) / n as f64
}

pub(crate) fn section_memory(plan: &Plan) {
    let n = plan.resident;
    let mut pool = Vec::new();
    let mut actors = Vec::new();
    let mut moka = Vec::new();
    for _ in 0..plan.rss_runs {
        pool.push(run_child("rss-pool", n));
        actors.push(run_child("rss-actors", n));
        moka.push(run_child("rss-moka", n));
    }
    let ratios: Vec<f64> = pool.iter().zip(&actors).map(|(p, a)| p / a).collect();
    println!("## 3. 100,000 resident keys\n");
    println!("### Memory per entry\n");
    println!(
        "RSS growth (/proc/self/statm, 4 KiB pages) divided by {n}, each measured in a fresh child process; \
         {} run(s): median [min-max]. A pool entry is its key actor plus the supervisor's indexes, the \
         instance wrapper and the disposer's record; the bare actor is `Actor::spawn` of a stateless actor.\n",
        plan.rss_runs
    );
    println!("| what | bytes per entry |");
    println!("|---|---|");
    println!("| warmpool idle entry (key actor + indexes) | {} |", mmm(&pool, bytes));
    println!("| bare idle ractor actor | {} |", mmm(&actors, bytes));
    println!("| moka entry (for scale) | {} |", mmm(&moka, bytes));
    println!("| **ratio warmpool / bare actor** | {} |", mmm(&ratios, ratio));
    println!();
}

/// Fills `pool` with `n` keys `t00:0000`.. using `concurrency` tasks.
pub(crate) async fn fill(pool: &Pool<Inst>, ledger: &Arc<Ledger>, n: usize, concurrency: usize) {
    let mut tasks = Vec::new();
    for c in 0..concurrency {
        let pool = pool.clone();
        let ledger = ledger.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = c;
            while i < n {
                let key = tenant_key(i / 1000, i % 1000);
                let f = factory(&ledger, i as u32, HASH, Duration::ZERO);
                drop(pool.get_or_create(&key, HASH, f).await.unwrap());
                i += concurrency;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}
