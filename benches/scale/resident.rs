//! Section 3b (`resident`): sweep, prefix invalidation and shutdown at
//! 100,000 keys.

use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use ractor::ActorRef;
use warmpool::Pool;

use crate::floor::{RouterMsg, spawn_floor};
use crate::instances::{HASH, Inst, Ledger, counting_pool, factory, ready, tenant_key};
use crate::memory::fill;
use crate::plan::Plan;
use crate::stats::{int, mmm, ms, now_ns, ns, ops, percentile, ratio};

/// One caller hitting random keys of tenants 50..99 for `span`; returns
/// (start time in `now_ns`, latency in ns) per call.
async fn probe(pool: Pool<Inst>, span: Duration, seed: u64) -> Vec<(u64, u64)> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let keys: Vec<String> = (0..65_536)
        .map(|_| tenant_key(rng.usize(50..100), rng.usize(0..1000)))
        .collect();
    let mut out = Vec::with_capacity(200_000);
    let end = Instant::now() + span;
    let mut i = 0;
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        let start = now_ns();
        let lease = pool.get_or_create(&keys[i % keys.len()], HASH, ready).await.unwrap();
        drop(lease);
        out.push((start, t0.elapsed().as_nanos() as u64));
        i += 1;
    }
    out
}

/// The floor's counterpart of `probe`: the same key choice, over one holder
/// actor per key; returns latencies in ns.
async fn probe_floor(router: ActorRef<RouterMsg>, span: Duration, seed: u64) -> Vec<u64> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let keys: Vec<usize> = (0..65_536)
        .map(|_| rng.usize(50..100) * 1000 + rng.usize(0..1000))
        .collect();
    let mut out = Vec::with_capacity(200_000);
    let end = Instant::now() + span;
    let mut i = 0;
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        let k = keys[i % keys.len()];
        match router.call(|reply| RouterMsg::Get(k, reply), None).await {
            Ok(ractor::rpc::CallResult::Success(v)) => drop(std::hint::black_box(v)),
            _ => panic!("floor call failed"),
        }
        out.push(t0.elapsed().as_nanos() as u64);
        i += 1;
    }
    out
}

/// Groups dispose timestamps into bursts separated by more than 50 ms.
fn bursts(mut stamps: Vec<u64>) -> Vec<(u64, u64, usize)> {
    stamps.sort_unstable();
    let mut out: Vec<(u64, u64, usize)> = Vec::new();
    for s in stamps {
        match out.last_mut() {
            Some(last) if s - last.1 <= 50_000_000 => {
                last.1 = s;
                last.2 += 1;
            }
            _ => out.push((s, s, 1)),
        }
    }
    out
}

struct Disturbance {
    name: &'static str,
    quiet: Vec<u64>,
    during: Vec<u64>,
    /// Per round: how long the disturbance lasted, in ns.
    spans: Vec<f64>,
    /// Per round: how many instances it retired.
    retired: Vec<f64>,
    /// Per round: the p99 of the calls overlapping it, and the quiet p99 before it.
    round_ratio: Vec<f64>,
}

fn p99_of(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    percentile(v, 99.0)
}

pub(crate) async fn section_resident(plan: &Plan) {
    let n = plan.resident;
    let capacity = n + 4 * 1000 * (plan.tick_rounds + plan.prefix_rounds) + 16;
    let ledger = Ledger::new(capacity);
    let pool = counting_pool(&ledger)
        .max_entries(n * 10)
        .time_to_live(Duration::ZERO)
        .sweep_interval(plan.sweep_interval)
        .dispose_timeout(Duration::from_secs(60))
        .spawn()
        .await
        .unwrap();

    let t = Instant::now();
    fill(&pool, &ledger, n, 64).await;
    let fill_time = t.elapsed();
    let t = Instant::now();
    let s = pool.stats().await.unwrap();
    let stats_time = t.elapsed();
    assert_eq!(s.size, n);

    // Hits at this scale, against the floor with one holder actor per key.
    let (router, holders) = spawn_floor(n).await;
    probe(pool.clone(), Duration::from_millis(200), 1).await;
    probe_floor(router.clone(), Duration::from_millis(200), 1).await;
    let (mut pool_rows, mut floor_rows, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..plan.tick_rounds.max(3) {
        let mut p: Vec<u64> = probe(pool.clone(), plan.quiet_window, 500 + round as u64)
            .await
            .into_iter()
            .map(|(_, l)| l)
            .collect();
        let mut f = probe_floor(router.clone(), plan.quiet_window, 500 + round as u64).await;
        p.sort_unstable();
        f.sort_unstable();
        let row = |v: &[u64]| [percentile(v, 50.0) as f64, percentile(v, 99.0) as f64];
        let (pr, fr) = (row(&p), row(&f));
        ratios.push([pr[0] / fr[0], pr[1] / fr[1]]);
        pool_rows.push(pr);
        floor_rows.push(fr);
    }
    router.stop(None);
    for h in holders {
        h.stop(None);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Sweep ticks: 1,000 keys (1%) get a 1 ms TTL; the next tick retires them.
    let mut tick = Disturbance {
        name: "sweep tick retiring 1,000 TTL keys (1%)",
        quiet: Vec::new(),
        during: Vec::new(),
        spans: Vec::new(),
        retired: Vec::new(),
        round_ratio: Vec::new(),
    };
    let mut split_ticks = 0;
    for round in 0..plan.tick_rounds {
        let mut quiet: Vec<u64> = probe(pool.clone(), plan.quiet_window, 10 + round as u64)
            .await
            .into_iter()
            .map(|(_, l)| l)
            .collect();
        let before = ledger.disposed.load(SeqCst);
        ledger.stamping.store(true, SeqCst);
        let mut creators = Vec::new();
        for c in 0..8 {
            let pool = pool.clone();
            let ledger = ledger.clone();
            creators.push(tokio::spawn(async move {
                for i in (c..1000).step_by(8) {
                    let key = format!("ttl{round:02}:{i:04}");
                    let f = factory(&ledger, i as u32, HASH, Duration::ZERO);
                    let lease = pool
                        .get_or_create_with_ttl(&key, HASH, Duration::from_millis(1), f)
                        .await
                        .unwrap();
                    drop(lease);
                }
            }));
        }
        for c in creators {
            c.await.unwrap();
        }
        // Probe across at least one full tick after every TTL has passed.
        let samples = probe(
            pool.clone(),
            plan.sweep_interval + Duration::from_millis(250),
            100 + round as u64,
        )
        .await;
        // Wait until all 1,000 are disposed (the tick may come late).
        let deadline = Instant::now() + plan.sweep_interval * 3;
        while ledger.disposed.load(SeqCst) < before + 1000 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        ledger.stamping.store(false, SeqCst);
        let b = bursts(ledger.take_stamps());
        if b.len() > 1 {
            split_ticks += 1;
        }
        let mut during = Vec::new();
        for &(first, last, _) in &b {
            // The tick starts just before its first disposal: allow 2 ms.
            let (lo, hi) = (first.saturating_sub(2_000_000), last + 1_000_000);
            during.extend(
                samples
                    .iter()
                    .filter(|(s, l)| *s + *l >= lo && *s <= hi)
                    .map(|(_, l)| *l),
            );
            tick.spans.push((last - first) as f64);
        }
        tick.retired.push((ledger.disposed.load(SeqCst) - before) as f64);
        let qp = p99_of(&mut quiet) as f64;
        let dp = p99_of(&mut during.clone()) as f64;
        if !during.is_empty() {
            tick.round_ratio.push(dp / qp);
        }
        tick.quiet.extend(quiet);
        tick.during.extend(during);
    }

    // Prefix invalidations: one tenant of 100 (1,000 keys), then refill it.
    let mut prefix = Disturbance {
        name: "`invalidate_by_prefix` retiring 1,000 of 100,000",
        quiet: Vec::new(),
        during: Vec::new(),
        spans: Vec::new(),
        retired: Vec::new(),
        round_ratio: Vec::new(),
    };
    let mut call_times = Vec::new();
    let mut matched_ok = true;
    for round in 0..plan.prefix_rounds {
        let mut quiet: Vec<u64> = probe(pool.clone(), plan.quiet_window, 200 + round as u64)
            .await
            .into_iter()
            .map(|(_, l)| l)
            .collect();
        let before = ledger.disposed.load(SeqCst);
        ledger.stamping.store(true, SeqCst);
        let prober = tokio::spawn(probe(pool.clone(), Duration::from_millis(400), 300 + round as u64));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t0 = now_ns();
        let start = Instant::now();
        let matched = pool.invalidate_by_prefix(&format!("t{round:02}:")).await.unwrap();
        let took = start.elapsed();
        let t1 = now_ns();
        matched_ok &= matched == 1000;
        call_times.push(ms(took) * 1e6);
        let samples = prober.await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while ledger.disposed.load(SeqCst) < before + 1000 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        ledger.stamping.store(false, SeqCst);
        let stamps = ledger.take_stamps();
        let last = stamps.iter().copied().max().unwrap_or(t1).max(t1);
        prefix.spans.push((last - t0) as f64);
        prefix.retired.push((ledger.disposed.load(SeqCst) - before) as f64);
        let during: Vec<u64> = samples
            .iter()
            .filter(|(s, l)| *s + *l >= t0 && *s <= last)
            .map(|(_, l)| *l)
            .collect();
        let qp = p99_of(&mut quiet) as f64;
        let dp = p99_of(&mut during.clone()) as f64;
        if !during.is_empty() {
            prefix.round_ratio.push(dp / qp);
        }
        prefix.quiet.extend(quiet);
        prefix.during.extend(during);
        // Refill the tenant so the pool is back at 100,000 keys.
        let mut refill = Vec::new();
        for c in 0..8 {
            let pool = pool.clone();
            let ledger = ledger.clone();
            refill.push(tokio::spawn(async move {
                for k in (c..1000).step_by(8) {
                    let f = factory(&ledger, k as u32, HASH, Duration::ZERO);
                    drop(pool.get_or_create(&tenant_key(round, k), HASH, f).await.unwrap());
                }
            }));
        }
        for r in refill {
            r.await.unwrap();
        }
    }

    // Shutdown with every dispose counted.
    let s = pool.stats().await.unwrap();
    let resident = s.size;
    let before = ledger.disposed.load(SeqCst);
    let start = Instant::now();
    let report = pool.shutdown(Duration::from_secs(120)).await.unwrap();
    let shutdown_time = start.elapsed();
    let during_shutdown = ledger.disposed.load(SeqCst) - before;
    let (built, once, never, twice) = ledger.audit();

    println!("### Hits with {n} resident keys\n");
    println!(
        "One caller, random keys of 50 of the 100 tenants; the floor has one holder actor per key ({n} actors) \
         behind its router. {} interleaved rounds of {} ms each: median [min-max].\n",
        pool_rows.len(),
        plan.quiet_window.as_millis()
    );
    println!("| system | p50 | p99 |");
    println!("|---|---|---|");
    for (name, rows) in [
        ("warmpool", &pool_rows),
        ("floor (ractor 2-hop, 1 actor per key)", &floor_rows),
    ] {
        let c = |i: usize| rows.iter().map(|r| r[i]).collect::<Vec<_>>();
        println!("| {name} | {} | {} |", mmm(&c(0), ns), mmm(&c(1), ns));
    }
    let c = |i: usize| ratios.iter().map(|r| r[i]).collect::<Vec<_>>();
    println!(
        "| ratio warmpool / floor | {} | {} |",
        mmm(&c(0), ratio),
        mmm(&c(1), ratio)
    );
    println!();
    println!("### Sweep, prefix invalidation and hit p99\n");
    println!(
        "One pool of {n} keys (`t00:0000`..`t99:0999`, TTL off, sweep every {} ms), filled by 64 tasks in {} \
         ({} keys/s). `stats()` with {n} keys took {} (the key list is taken in the supervisor's mailbox as `Arc<str>` clones and copied to `String`s on a blocking thread).\n",
        plan.sweep_interval.as_millis(),
        ns(ms(fill_time) * 1e6),
        ops(n as f64 / fill_time.as_secs_f64()),
        ns(ms(stats_time) * 1e6)
    );
    println!(
        "Hit p99 is measured by one caller hitting random keys of the 50 tenants that are never touched. \
         \"during\" = calls that overlap the disturbance (for a sweep tick: from 2 ms before its first \
         disposal to 1 ms after its last; for a prefix invalidation: from the call to the last disposal); \
         \"quiet\" = a {} ms probe just before each round. Sweep rounds: {}, prefix rounds: {}.\n",
        plan.quiet_window.as_millis(),
        plan.tick_rounds,
        plan.prefix_rounds
    );
    println!(
        "| disturbance | retired per round | lasted (first to last disposal) | calls during | quiet p50 / p99 | during p50 / p99 / max | p99 ratio (pooled) | p99 ratio per round |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for d in [&mut tick, &mut prefix] {
        d.quiet.sort_unstable();
        d.during.sort_unstable();
        let qp = percentile(&d.quiet, 99.0) as f64;
        let dp = percentile(&d.during, 99.0) as f64;
        println!(
            "| {} | {} | {} | {} | {} / {} | {} / {} / {} | {} | {} |",
            d.name,
            mmm(&d.retired, int),
            mmm(&d.spans, ns),
            d.during.len(),
            ns(percentile(&d.quiet, 50.0) as f64),
            ns(qp),
            ns(percentile(&d.during, 50.0) as f64),
            ns(dp),
            ns(d.during.last().copied().unwrap_or(0) as f64),
            ratio(dp / qp),
            if d.round_ratio.is_empty() {
                "-".to_string()
            } else {
                mmm(&d.round_ratio, ratio)
            }
        );
    }
    println!();
    println!(
        "`invalidate_by_prefix` call (returns once every matching key is marked; the retirements themselves are paced, 16 per ms): {}; matched 1,000 every \
         time: {}.{}\n",
        mmm(&call_times, ns),
        if matched_ok { "yes" } else { "**NO**" },
        if split_ticks > 0 {
            format!(" ({split_ticks} sweep round(s) were split over two ticks; each tick counted separately.)")
        } else {
            String::new()
        }
    );
    println!("### Shutdown\n");
    println!(
        "| resident | `shutdown()` time | retired (report) | disposed during shutdown | still leased | builds over the pool's life | disposed exactly once | never disposed | disposed twice+ |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {resident} | {} | {} | {} {} | {} | {built} | {once} | {never} | {twice} |",
        ns(ms(shutdown_time) * 1e6),
        report.retired,
        during_shutdown,
        if during_shutdown == resident as u64 {
            "(= resident)"
        } else {
            "(**≠ resident**)"
        },
        report.still_leased.len()
    );
    println!();
}
