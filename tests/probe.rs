//! The freshness probe (`PoolBuilder::probe`): its throttle after a build and
//! after a check, fresh, stale, error, panic and timeout verdicts, callers
//! served during a probe, and `Pool::get` with a probe due. Paused clock;
//! probe calls, factory calls and disposals counted exactly.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use common::{Client, Counters, builder, eventually, factory, h, settle};
use tokio::time::{Instant, advance};
use warmpool::{Lease, Pool};

const SEC: Duration = Duration::from_secs(1);

/// What the probe answers.
#[derive(Clone, Copy)]
enum Verdict {
    Fresh,
    Stale,
    Fails,
    Panics,
    Hangs,
}

/// A pool whose probe answers `verdict` after `delay`, counting calls in `probes`.
async fn probed_pool(c: &Arc<Counters>, probes: &Arc<AtomicUsize>, verdict: Verdict, delay: Duration) -> Pool<Client> {
    let probes = probes.clone();
    builder(c)
        .probe_interval(10 * SEC)
        .probe_timeout(3 * SEC)
        .probe(move |lease: Lease<Client>| {
            probes.fetch_add(1, SeqCst);
            async move {
                assert_eq!(lease.key, Lease::key(&lease), "the probe gets the instance's own lease");
                tokio::time::sleep(delay).await;
                match verdict {
                    Verdict::Fresh => Ok(true),
                    Verdict::Stale => Ok(false),
                    Verdict::Fails => Err(std::io::Error::other("health endpoint down")),
                    Verdict::Panics => panic!("probe panicked"),
                    Verdict::Hangs => futures::future::pending().await,
                }
            }
        })
        .spawn()
        .await
        .unwrap()
}

/// Gets key `k` (hash 1) through `get_or_create`, with a factory that builds at once.
async fn get(pool: &Pool<Client>, c: &Arc<Counters>) -> Lease<Client> {
    pool.get_or_create("k", h(1), factory(c, "k", h(1), Duration::ZERO))
        .await
        .unwrap()
}

/// No probe within `probe_interval` of the build; past it, one probe before the hand-out, and a fresh verdict holds off the next probe for another interval.
#[tokio::test(start_paused = true)]
async fn a_build_counts_as_a_check_and_a_fresh_probe_is_throttled_for_the_interval() {
    let (c, probes) = (Counters::new(), Arc::new(AtomicUsize::new(0)));
    let pool = probed_pool(&c, &probes, Verdict::Fresh, Duration::ZERO).await;
    assert_eq!(get(&pool, &c).await.serial, 1);
    advance(10 * SEC).await;
    assert_eq!(get(&pool, &c).await.serial, 1);
    assert_eq!(probes.load(SeqCst), 0, "within the interval of the build: no probe");
    advance(Duration::from_millis(1)).await;
    assert_eq!(get(&pool, &c).await.serial, 1);
    assert_eq!(probes.load(SeqCst), 1, "past it: probed before served");
    for _ in 0..5 {
        get(&pool, &c).await;
    }
    advance(5 * SEC).await;
    get(&pool, &c).await;
    assert_eq!(probes.load(SeqCst), 1, "a fresh verdict counts as a check");
    advance(6 * SEC).await;
    get(&pool, &c).await;
    assert_eq!(probes.load(SeqCst), 2);
    let s = pool.stats().await.unwrap();
    assert_eq!((s.probes, s.probe_failures, c.builds()), (2, 0, 1));
}

/// A stale verdict retires the instance (disposed after its last lease) and the probing call gets a rebuild, counted as a miss, not a hit.
#[tokio::test(start_paused = true)]
async fn a_stale_instance_is_retired_and_the_caller_gets_a_rebuild() {
    let (c, probes) = (Counters::new(), Arc::new(AtomicUsize::new(0)));
    let pool = probed_pool(&c, &probes, Verdict::Stale, Duration::ZERO).await;
    let old = get(&pool, &c).await;
    advance(11 * SEC).await;
    let new = get(&pool, &c).await;
    assert_eq!((old.serial, new.serial), (1, 2));
    assert_eq!(probes.load(SeqCst), 1, "the rebuilt instance counts as checked");
    drop(old);
    eventually("the stale instance is disposed", async || c.disposed() == 1).await;
    let s = pool.stats().await.unwrap();
    assert_eq!(
        (s.retirements.stale, s.builds, s.misses, s.hits),
        (1, 2, 2, 0),
        "the probing call is a miss, not a hit"
    );
}

/// While a 2 s probe runs, another caller is served the current instance at once; after the stale verdict, the prober and a later caller share one rebuild.
#[tokio::test(start_paused = true)]
async fn callers_during_a_probe_are_served_at_once_and_one_rebuild_follows_a_stale_verdict() {
    let (c, probes) = (Counters::new(), Arc::new(AtomicUsize::new(0)));
    let pool = probed_pool(&c, &probes, Verdict::Stale, 2 * SEC).await;
    drop(get(&pool, &c).await);
    advance(11 * SEC).await;
    let prober = tokio::spawn({
        let (pool, c) = (pool.clone(), c.clone());
        async move {
            pool.get_or_create("k", h(1), factory(&c, "k", h(1), SEC))
                .await
                .unwrap()
                .serial
        }
    });
    settle().await;
    assert_eq!(probes.load(SeqCst), 1);
    let before = Instant::now();
    let during = get(&pool, &c).await;
    assert_eq!(
        (during.serial, Instant::now()),
        (1, before),
        "served the current instance without waiting"
    );
    drop(during);
    advance(2 * SEC).await; // the probe says stale; the rebuild takes 1 s
    settle().await;
    let joiner = tokio::spawn({
        let (pool, c) = (pool.clone(), c.clone());
        async move {
            pool.get_or_create("k", h(1), factory(&c, "k", h(1), SEC))
                .await
                .unwrap()
                .serial
        }
    });
    advance(SEC).await;
    assert_eq!(prober.await.unwrap(), 2);
    assert_eq!(joiner.await.unwrap(), 2, "shared the rebuild");
    assert_eq!((c.builds(), probes.load(SeqCst)), (2, 1));
}

/// A probe that fails, panics or hangs (cut off at `probe_timeout`) counts as a fresh check: the instance is served, a probe failure counted, nothing retired.
#[tokio::test(start_paused = true)]
async fn a_failing_panicking_or_hanging_probe_counts_as_fresh() {
    for (verdict, delay) in [
        (Verdict::Fails, Duration::ZERO),
        (Verdict::Panics, Duration::ZERO),
        (Verdict::Hangs, Duration::ZERO),
    ] {
        let (c, probes) = (Counters::new(), Arc::new(AtomicUsize::new(0)));
        let pool = probed_pool(&c, &probes, verdict, delay).await;
        drop(get(&pool, &c).await);
        advance(11 * SEC).await;
        let before = Instant::now();
        assert_eq!(get(&pool, &c).await.serial, 1, "served the probed instance");
        let waited = Instant::now() - before;
        let timed_out = matches!(verdict, Verdict::Hangs);
        assert_eq!(
            waited,
            if timed_out { 3 * SEC } else { Duration::ZERO },
            "bounded by probe_timeout"
        );
        let s = pool.stats().await.unwrap();
        assert_eq!(
            (s.probes, s.probe_failures, s.retirements.total(), c.builds()),
            (1, 1, 0, 1)
        );
        // Counted as a check: not probed again within the interval.
        get(&pool, &c).await;
        assert_eq!(probes.load(SeqCst), 1);
        pool.shutdown(SEC).await.unwrap();
    }
}

/// `get` answers `None` for an instance due for its probe and never probes it; once `get_or_create` has probed it, `get` serves it again.
#[tokio::test(start_paused = true)]
async fn get_returns_none_for_an_instance_due_for_its_probe_and_never_probes() {
    let (c, probes) = (Counters::new(), Arc::new(AtomicUsize::new(0)));
    let pool = probed_pool(&c, &probes, Verdict::Fresh, Duration::ZERO).await;
    drop(get(&pool, &c).await);
    assert_eq!(pool.get("k", h(1)).unwrap().serial, 1);
    advance(11 * SEC).await;
    assert!(pool.get("k", h(1)).is_none(), "due: only get_or_create may serve it");
    assert_eq!(probes.load(SeqCst), 0);
    assert_eq!(get(&pool, &c).await.serial, 1);
    assert_eq!(pool.get("k", h(1)).unwrap().serial, 1, "checked again");
    assert_eq!(probes.load(SeqCst), 1);
}

/// A `get` refused because the instance is due for its probe is no use of
/// the instance: LRU order still ranks it by its last real use. Keys "a"
/// (built first, due) and "b" (built later, not due) fill a cap of 2; after
/// a refused `get("a")`, a third key evicts "a", not "b".
#[tokio::test(start_paused = true)]
async fn a_get_refused_for_a_due_probe_is_not_a_use_for_lru() {
    let c = Counters::new();
    let probes = Arc::new(AtomicUsize::new(0));
    let counted = probes.clone();
    let pool = builder(&c)
        .max_entries(2)
        .probe_interval(10 * SEC)
        .probe(move |_: Lease<Client>| {
            counted.fetch_add(1, SeqCst);
            async { Ok::<_, std::io::Error>(true) }
        })
        .spawn()
        .await
        .unwrap();
    let build = |key: &'static str| pool.get_or_create(key, h(1), factory(&c, key, h(1), Duration::ZERO));
    drop(build("a").await.unwrap());
    advance(5 * SEC).await;
    drop(build("b").await.unwrap());
    advance(6 * SEC).await;

    assert!(pool.get("a", h(1)).is_none(), "\"a\" is due for its probe");
    drop(build("c").await.unwrap());

    eventually("the least recently used key disposed", async || c.disposed() == 1).await;
    assert_eq!(
        *c.disposed_keys.lock().unwrap(),
        vec!["a".to_string()],
        "\"a\" was last used at its build, before \"b\""
    );
    let mut keys = pool.stats().await.unwrap().keys;
    keys.sort();
    assert_eq!(keys, vec!["b".to_string(), "c".to_string()]);
    assert_eq!((c.builds(), probes.load(SeqCst)), (3, 0));
}

/// A pool whose probe answers `fresh` at once, probing before every
/// hand-out (`probe_interval(0)`), counting calls in `probes`.
async fn probe_every_hand_out(c: &Arc<Counters>, probes: &Arc<AtomicUsize>, fresh: bool) -> Pool<Client> {
    let probes = probes.clone();
    builder(c)
        .probe_interval(Duration::ZERO)
        .probe(move |_lease: Lease<Client>| {
            probes.fetch_add(1, SeqCst);
            async move { Ok::<_, std::io::Error>(fresh) }
        })
        .spawn()
        .await
        .unwrap()
}

/// With `probe_interval(0)`, every hand-out of an existing instance is
/// probed, also two at the same clock reading as the last check.
#[tokio::test(start_paused = true)]
async fn a_zero_probe_interval_probes_every_hand_out() {
    let (c, probes) = (Counters::new(), Arc::new(AtomicUsize::new(0)));
    let pool = probe_every_hand_out(&c, &probes, true).await;
    assert_eq!(get(&pool, &c).await.serial, 1);
    assert_eq!(
        probes.load(SeqCst),
        0,
        "a build counts as the check of its own hand-out"
    );
    for n in 1..=3 {
        assert_eq!(get(&pool, &c).await.serial, 1);
        assert_eq!(
            probes.load(SeqCst),
            n,
            "hand-out {n} at the same clock reading is probed"
        );
    }
    assert_eq!(c.builds(), 1);
}

/// `try_get_with` with `probe_interval(0)` and a probe that answers stale
/// is served the instance its own build just made (a build counts as a
/// check), on the real clock where time passes between build and hand-out.
#[tokio::test]
async fn try_get_with_is_served_its_own_build_under_a_zero_probe_interval() {
    let (c, probes) = (Counters::new(), Arc::new(AtomicUsize::new(0)));
    let pool = probe_every_hand_out(&c, &probes, false).await;
    for round in 1..=20 {
        let f = factory(&c, "k", h(1), Duration::from_millis(1));
        let lease = pool.try_get_with("k", h(1), f()).await;
        let lease = lease.unwrap_or_else(|e| panic!("round {round}: {e:?}"));
        assert_eq!(lease.serial, round, "its own build");
        // Retire it so that the next round builds again.
        assert!(pool.retire(&lease).await);
    }
    assert_eq!(probes.load(SeqCst), 0, "no instance was probed on its builder's call");
}
