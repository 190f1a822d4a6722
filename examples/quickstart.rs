//! A multi-tenant service that keeps one warm provider client per tenant and
//! provider: the first call pays the build, the next one is a hit, concurrent
//! callers on a cold key share one build, a credential rotation replaces the
//! client (the old one is disposed), one tenant is invalidated by prefix, a
//! failing provider cools down instead of being hammered, and the pool shuts
//! down with a report.
//!
//! ```text
//! cargo run --example quickstart
//! ```

use std::collections::BTreeSet;
use std::error::Error;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use warmpool::{Lease, Pool, PoolError, RestartPolicy, hash_credentials};

/// A stand-in for an SDK client (an HTTP client with a TLS session and a token).
#[derive(Debug)]
struct ProviderClient {
    provider: String,
}

/// Factory calls so far, to show that concurrent callers share one build.
static FACTORY_CALLS: AtomicUsize = AtomicUsize::new(0);
/// Whether the "flaky" provider answers; it is down until the cool-down demo ends.
static FLAKY_IS_UP: AtomicBool = AtomicBool::new(false);

/// Connecting costs a TLS handshake and an auth round trip: about 200 ms here.
async fn connect(provider: String, _api_key: String) -> Result<ProviderClient, std::io::Error> {
    FACTORY_CALLS.fetch_add(1, SeqCst);
    if provider == "flaky" && !FLAKY_IS_UP.load(SeqCst) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        ));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(ProviderClient { provider })
}

/// What a request handler does: hash the tenant's current credentials and ask
/// the pool for the client of `tenant:provider`.
async fn client_for(
    pool: &Pool<ProviderClient>,
    tenant: &str,
    provider: &str,
    api_key: &str,
) -> Result<Lease<ProviderClient>, Box<dyn Error>> {
    let hash = hash_credentials(&serde_json::json!({ "tenant": tenant, "api_key": api_key }))?;
    let (provider, api_key) = (provider.to_string(), api_key.to_string());
    let key = format!("{tenant}:{provider}");
    let lease = pool
        .get_or_create(&key, hash, move || connect(provider.clone(), api_key.clone()))
        .await?;
    Ok(lease)
}

/// Waits until the pool has disposed `n` instances in all, so that the
/// dispose hook's lines appear next to what caused them.
async fn wait_for_disposals(pool: &Pool<ProviderClient>, n: u64) -> Result<(), PoolError> {
    while pool.stats().await?.disposals < n {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

fn ms(since: Instant) -> u128 {
    since.elapsed().as_millis()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let pool: Pool<ProviderClient> = Pool::builder()
        .time_to_live(Duration::from_secs(300))
        .max_entries(1_000)
        // Small values so that the cool-down below is over in half a second.
        .restart_policy(RestartPolicy {
            max_retries: 1,
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_millis(50),
            intensity: 2,
            window: Duration::from_secs(10),
            cooldown_initial: Duration::from_millis(500),
            cooldown_max: Duration::from_secs(5),
        })
        .on_dispose(|key, _client: ProviderClient| async move { println!("    disposed {key}") })
        .spawn()
        .await?;

    // 1. The first call builds; the second is a hit on the same instance.
    let t = Instant::now();
    let first = client_for(&pool, "acme", "openai", "sk-acme-1").await?;
    println!(
        "first call   acme:openai       -> built {} client #{} in {} ms",
        first.provider,
        first.instance_id(),
        ms(t)
    );
    let t = Instant::now();
    let second = client_for(&pool, "acme", "openai", "sk-acme-1").await?;
    println!(
        "second call  acme:openai       -> hit, same client #{} in {} ms",
        second.instance_id(),
        ms(t)
    );
    drop(first);

    // 2. Ten callers arrive at once on a cold key: one factory call for all.
    let calls_before = FACTORY_CALLS.load(SeqCst);
    let t = Instant::now();
    let leases =
        futures::future::join_all((0..10).map(|_| client_for(&pool, "globex", "anthropic", "sk-globex"))).await;
    let ids = leases
        .into_iter()
        .map(|lease| lease.map(|l| l.instance_id()))
        .collect::<Result<BTreeSet<_>, _>>()?;
    println!(
        "10 at once   globex:anthropic  -> {} factory call, client ids {ids:?}, {} ms",
        FACTORY_CALLS.load(SeqCst) - calls_before,
        ms(t)
    );

    // 3. acme rotates its API key: a new hash, so a new client. The old one
    //    is retired at once, and disposed when its last lease is dropped.
    let rotated = client_for(&pool, "acme", "openai", "sk-acme-2").await?;
    println!(
        "rotated key  acme:openai       -> new client #{}; old #{} goes when its lease drops",
        rotated.instance_id(),
        second.instance_id()
    );
    let disposed = pool.stats().await?.disposals;
    drop(second);
    wait_for_disposals(&pool, disposed + 1).await?;

    // 4. Retire every key of one tenant.
    let other = client_for(&pool, "acme", "anthropic", "sk-acme-2").await?;
    let retired = pool.invalidate_by_prefix("acme:").await?;
    println!("invalidate_by_prefix(\"acme:\")  -> {retired} keys retired");
    let disposed = pool.stats().await?.disposals;
    drop((rotated, other));
    wait_for_disposals(&pool, disposed + 2).await?;

    // 5. A provider that is down: a retry, then the key cools down and is
    //    answered at once, without calling the factory.
    let error = client_for(&pool, "initech", "flaky", "sk-initech")
        .await
        .err()
        .ok_or("the flaky provider should be down")?;
    // `Display` says what the pool saw; the provider's own error is its `source()`.
    let cause = error.source().map(|c| format!(": {c}")).unwrap_or_default();
    println!("initech:flaky  -> {error}{cause}");
    let t = Instant::now();
    let error = client_for(&pool, "initech", "flaky", "sk-initech")
        .await
        .err()
        .ok_or("the key should be cooling down")?;
    let retry_after = error
        .downcast_ref::<PoolError>()
        .and_then(PoolError::retry_after)
        .ok_or_else(|| format!("expected a cool-down, got: {error}"))?;
    println!(
        "initech:flaky  -> cooling down, retry_after {} ms (answered in {} ms)",
        retry_after.as_millis(),
        ms(t)
    );
    FLAKY_IS_UP.store(true, SeqCst);
    tokio::time::sleep(retry_after).await;
    let recovered = client_for(&pool, "initech", "flaky", "sk-initech").await?;
    println!(
        "initech:flaky  -> back after the cool-down: client #{}",
        recovered.instance_id()
    );
    drop(recovered);

    // 6. What the pool knows, and an orderly shutdown.
    let stats = pool.stats().await?;
    println!(
        "stats: {}",
        serde_json::json!({
            "keys": stats.keys,
            "hits": stats.hits,
            "misses": stats.misses,
            "builds": stats.builds,
            "build_failures": stats.build_failures,
            "retirements": stats.retirements,
            "disposals": stats.disposals,
        })
    );
    let report = pool.shutdown(Duration::from_secs(5)).await?;
    println!(
        "shutdown: retired {}, disposed {} in all, still leased {:?}",
        report.retired, report.disposed, report.still_leased
    );
    Ok(())
}
