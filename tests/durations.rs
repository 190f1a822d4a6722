//! Every `Duration` a user can pass is valid: `Duration::MAX` (or `u64::MAX`
//! seconds in a config) means "practically never" and never panics inside
//! an actor. One test per builder setter, per-call TTL, `RestartPolicy`
//! field and `PoolConfig` field. Paused clock: a year passes at once.
mod common;
use common::*;

use std::sync::Arc;
use std::time::Duration;

use warmpool::{Pool, PoolBuilder, PoolConfig, PoolError, RestartPolicy};

const MAX: Duration = Duration::MAX;
const DAY: Duration = Duration::from_secs(24 * 3600);

/// Gets `key` with hash 1 from a factory that builds at once.
async fn get(pool: &Pool<Client>, c: &Arc<Counters>, key: &str) -> Result<warmpool::Lease<Client>, PoolError> {
    pool.get_or_create(key, h(1), factory(c, key, h(1), Duration::ZERO))
        .await
}

/// Builds `key`, then checks over a year of (paused) time, with sweep ticks
/// in between, that the pool keeps serving the same instance and that
/// `stats` still answers: the actors did not die on an overflowing deadline.
async fn serves_for_a_year(builder: PoolBuilder<Client>, c: &Arc<Counters>) {
    let pool = builder.sweep_interval(Duration::from_secs(60)).spawn().await.unwrap();
    let first = get(&pool, c, "k").await.unwrap();
    let id = first.instance_id();
    drop(first);
    for _ in 0..5 {
        tokio::time::advance(73 * DAY).await;
        settle().await;
        let again = get(&pool, c, "k").await.unwrap();
        assert_eq!(again.instance_id(), id, "the instance is served again, not rebuilt");
    }
    assert_eq!(c.builds(), 1);
    let stats = pool.stats().await.expect("the supervisor is alive");
    assert_eq!(stats.size, 1);
    assert_eq!(stats.actor_restarts, 0);
    let report = pool.shutdown(Duration::from_secs(1)).await.unwrap();
    assert_eq!(report.disposed, 1);
}

/// `time_to_live(Duration::MAX)` never expires and kills no actor.
#[tokio::test(start_paused = true)]
async fn time_to_live_max_never_expires() {
    let c = Counters::new();
    serves_for_a_year(builder(&c).time_to_live(MAX), &c).await;
}

/// `time_to_idle(Duration::MAX)` never expires: hits and sweeps keep working.
#[tokio::test(start_paused = true)]
async fn time_to_idle_max_never_expires() {
    let c = Counters::new();
    serves_for_a_year(builder(&c).time_to_live(Duration::ZERO).time_to_idle(MAX), &c).await;
}

/// `sweep_interval(Duration::MAX)` turns the sweep off without killing anything.
#[tokio::test(start_paused = true)]
async fn sweep_interval_max_is_no_sweep() {
    let c = Counters::new();
    let pool = builder(&c)
        .time_to_live(Duration::from_secs(10))
        .sweep_interval(MAX)
        .spawn()
        .await
        .unwrap();
    drop(get(&pool, &c, "k").await.unwrap());
    tokio::time::advance(DAY).await;
    settle().await;
    // No sweep retired it; the next call finds it expired and rebuilds.
    assert_eq!(pool.stats().await.unwrap().retirements.ttl, 0);
    drop(get(&pool, &c, "k").await.unwrap());
    assert_eq!(c.builds(), 2);
    assert_eq!(pool.stats().await.unwrap().retirements.ttl, 1);
}

/// `create_timeout(Duration::MAX)` is unbounded: a slow build completes.
#[tokio::test(start_paused = true)]
async fn create_timeout_max_is_unbounded() {
    let c = Counters::new();
    let pool = builder(&c).create_timeout(MAX).spawn().await.unwrap();
    let lease = pool
        .get_or_create("k", h(1), factory(&c, "k", h(1), DAY))
        .await
        .unwrap();
    assert_eq!(lease.key, "k");
}

/// `dispose_timeout(Duration::MAX)`: hooks run, and shutdown and the
/// drop-started shutdown (whose deadline it is) both complete.
#[tokio::test(start_paused = true)]
async fn dispose_timeout_max_is_unbounded() {
    let c = Counters::new();
    let pool = builder(&c).dispose_timeout(MAX).spawn().await.unwrap();
    drop(get(&pool, &c, "a").await.unwrap());
    drop(pool);
    eventually("the drop-started shutdown disposes", async || c.disposed() == 1).await;

    let c = Counters::new();
    let pool = builder(&c).dispose_timeout(MAX).spawn().await.unwrap();
    drop(get(&pool, &c, "a").await.unwrap());
    let report = pool.shutdown(MAX).await.unwrap();
    assert_eq!(report.disposed, 1);
    assert!(!report.deadline_passed);
}

/// `get_or_create_with_ttl(.., Duration::MAX, ..)` caches the instance for ever.
#[tokio::test(start_paused = true)]
async fn per_call_ttl_max_is_cached() {
    let c = Counters::new();
    let pool = builder(&c).time_to_live(Duration::from_secs(10)).spawn().await.unwrap();
    for _ in 0..3 {
        let lease = pool
            .get_or_create_with_ttl("k", h(1), MAX, factory(&c, "k", h(1), Duration::ZERO))
            .await
            .unwrap();
        assert_eq!(lease.serial, 1);
        tokio::time::advance(DAY).await;
    }
    assert_eq!(c.builds(), 1);
    assert_eq!(pool.stats().await.unwrap().actor_restarts, 0);
}

/// `insert_with_ttl(.., Duration::MAX)` is served for ever.
#[tokio::test(start_paused = true)]
async fn insert_ttl_max_is_served() {
    let c = Counters::new();
    let pool = builder(&c).time_to_live(Duration::from_secs(10)).spawn().await.unwrap();
    let client = Client {
        key: "k".into(),
        hash: h(1),
        serial: 0,
    };
    pool.insert_with_ttl("k", h(1), client, MAX).await.unwrap();
    tokio::time::advance(DAY).await;
    let lease = get(&pool, &c, "k").await.unwrap();
    assert_eq!(lease.serial, 0, "the inserted instance");
    assert_eq!(c.builds(), 0);
}

/// A factory that always fails, counting calls.
fn down(
    c: &Arc<Counters>,
) -> impl Fn() -> futures::future::BoxFuture<'static, Result<Client, std::io::Error>> + Send + Sync + 'static {
    failing(c, Duration::ZERO)
}

/// Fails `k` once with `policy` and returns what the next call gets.
async fn fail_then_call(policy: RestartPolicy) -> (Result<warmpool::Lease<Client>, PoolError>, Arc<Counters>) {
    let c = Counters::new();
    let pool = builder(&c).restart_policy(policy).spawn().await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(3600), pool.get_or_create("k", h(1), down(&c)))
        .await
        .expect("the first call returns within an hour of paused time");
    assert!(matches!(first, Err(PoolError::Factory { .. })), "{first:?}");
    settle().await;
    let second = pool.get_or_create("k", h(1), down(&c)).await;
    assert_eq!(pool.stats().await.unwrap().actor_restarts, 0);
    (second, c)
}

/// `cooldown_initial: Duration::MAX` cools the key (for ever), answering `CoolingDown`.
#[tokio::test(start_paused = true)]
async fn cooldown_initial_max_cools_for_ever() {
    let (second, c) = fail_then_call(RestartPolicy {
        cooldown_initial: MAX,
        cooldown_max: MAX,
        ..cool_at_once()
    })
    .await;
    match second {
        Err(PoolError::CoolingDown { retry_after, .. }) => assert_eq!(retry_after, MAX),
        other => panic!("expected CoolingDown, got {other:?}"),
    }
    assert_eq!(c.builds(), 1);
}

/// `cooldown_max: Duration::MAX` with a doubling cool-down that saturates: still `CoolingDown`.
#[tokio::test(start_paused = true)]
async fn cooldown_max_max_cools() {
    let (second, _) = fail_then_call(RestartPolicy {
        cooldown_initial: Duration::from_secs(u64::MAX / 2),
        cooldown_max: MAX,
        ..cool_at_once()
    })
    .await;
    assert!(matches!(second, Err(PoolError::CoolingDown { .. })), "{second:?}");
}

/// `window: Duration::MAX`: failures are counted for ever; the third cools the key.
#[tokio::test(start_paused = true)]
async fn window_max_counts_failures() {
    let c = Counters::new();
    let policy = RestartPolicy {
        max_retries: 0,
        intensity: 3,
        window: MAX,
        ..RestartPolicy::default()
    };
    let pool = builder(&c).restart_policy(policy).spawn().await.unwrap();
    for i in 0..3 {
        if i > 0 {
            // Far apart, yet within the (endless) window.
            tokio::time::advance(DAY).await;
        }
        let err = pool.get_or_create("k", h(1), down(&c)).await.unwrap_err();
        assert!(matches!(err, PoolError::Factory { .. }), "{err:?}");
    }
    let err = pool.get_or_create("k", h(1), down(&c)).await.unwrap_err();
    assert!(matches!(err, PoolError::CoolingDown { .. }), "{err:?}");
    assert_eq!(c.builds(), 3);
    // Even long after the cool-down, the key's history is kept without a panic.
    tokio::time::advance(365 * DAY).await;
    settle().await;
    assert!(pool.stats().await.is_ok());
}

/// `backoff_initial`/`backoff_max: Duration::MAX`: a retry the clock cannot
/// reach is not waited for; the callers get the error after one attempt.
#[tokio::test(start_paused = true)]
async fn backoff_max_gives_up_instead_of_waiting_for_ever() {
    for (initial, max) in [(MAX, MAX), (MAX, Duration::from_secs(u64::MAX))] {
        let policy = RestartPolicy {
            backoff_initial: initial,
            backoff_max: max,
            ..RestartPolicy::default()
        };
        let c = Counters::new();
        let pool = builder(&c).restart_policy(policy).spawn().await.unwrap();
        let result = tokio::time::timeout(Duration::from_secs(3600), pool.get_or_create("k", h(1), down(&c)))
            .await
            .expect("the call returns within an hour of paused time");
        match result {
            Err(PoolError::Factory { attempts, .. }) => assert_eq!(attempts, 1),
            other => panic!("expected Factory, got {other:?}"),
        }
        assert_eq!(c.builds(), 1);
    }
}

/// `shutdown(Duration::MAX)` completes as soon as the hooks are done.
#[tokio::test(start_paused = true)]
async fn shutdown_deadline_max_completes() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    drop(get(&pool, &c, "k").await.unwrap());
    let report = pool.shutdown(MAX).await.unwrap();
    assert_eq!(report.disposed, 1);
}

/// A deserialized (not clamped) config with `u64::MAX` in every duration field
/// builds a pool that serves and expires nothing.
#[tokio::test(start_paused = true)]
async fn config_with_u64_max_everywhere_is_valid() {
    for field in [
        "ttl_seconds",
        "ttl_ms",
        "idle_seconds",
        "sweep_seconds",
        "create_timeout_ms",
        "dispose_timeout_ms",
    ] {
        let json = format!("{{\"{field}\": {}}}", u64::MAX);
        let config: PoolConfig = serde_json::from_str(&json).unwrap();
        let c = Counters::new();
        let pool = builder(&c).config(&config).spawn().await.unwrap();
        drop(get(&pool, &c, "k").await.unwrap());
        drop(get(&pool, &c, "k").await.unwrap());
        tokio::time::advance(Duration::from_secs(120)).await;
        settle().await;
        assert!(pool.stats().await.is_ok(), "{field}: the pool is alive");
        assert_eq!(c.builds(), 1, "{field}: served from the first build");
        let report = pool.shutdown(Duration::from_secs(1)).await.unwrap();
        assert_eq!(report.disposed, 1, "{field}");
    }
}
