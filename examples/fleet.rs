//! A fleet: two service instances, each with its own pool, keep each other's
//! cached clients fresh over an event bus: a credential rotation published
//! by one invalidates the other's copy.
//!
//! Run with the embedded bus (no server needed):
//!
//! ```text
//! cargo run --example fleet
//! ```
//!
//! or over a durable Redis Stream on a Redis 7 at 127.0.0.1:6379:
//!
//! ```text
//! cargo run --example fleet --features redis
//! ```
//!
//! Instance A rotates a key with one call, `Publisher::invalidate`: it
//! retires A's own copy at once and publishes to every other instance. Every
//! transport's publisher has that same shape.

use std::time::Duration;

use warmpool::bus::{ListenOptions, Scope, new_origin};
use warmpool::{CredentialsHash, Pool, hash_credentials};

/// A stand-in for an SDK client.
#[derive(Debug)]
struct ProviderClient {
    /// The hash of the credentials it was built from: shows which key a
    /// client holds without printing any of the key.
    credentials: CredentialsHash,
}

async fn connect(credentials: CredentialsHash) -> Result<ProviderClient, std::io::Error> {
    tokio::time::sleep(Duration::from_millis(100)).await; // TLS + auth
    Ok(ProviderClient { credentials })
}

async fn client_for(pool: &Pool<ProviderClient>, api_key: &str) -> Result<String, Box<dyn std::error::Error>> {
    let hash = hash_credentials(&serde_json::json!({ "api_key": api_key }))?;
    let lease = pool.get_or_create("acme:openai", hash, move || connect(hash)).await?;
    Ok(format!(
        "client #{} (credentials {})",
        lease.instance_id(),
        lease.credentials
    ))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (origin_a, origin_b) = (new_origin("instance-a"), new_origin("instance-b"));
    let pool_a: Pool<ProviderClient> = Pool::builder().spawn().await?;
    let pool_b: Pool<ProviderClient> = Pool::builder().spawn().await?;
    let listen = |origin: &str| ListenOptions {
        origin: origin.to_string(),
        ..Default::default()
    };

    println!(
        "instance A warms its client: {}",
        client_for(&pool_a, "sk-old-1111").await?
    );
    println!(
        "instance B warms its client: {}",
        client_for(&pool_b, "sk-old-1111").await?
    );

    #[cfg(not(feature = "redis"))]
    let publisher = {
        println!("transport: embedded bus (in process)");
        let bus = warmpool::bus::LocalBus::new(1024);
        bus.attach(&pool_a, listen(&origin_a));
        bus.attach(&pool_b, listen(&origin_b));
        bus.publisher(&origin_a, None)
    };
    #[cfg(feature = "redis")]
    let publisher = {
        println!("transport: Redis Stream on 127.0.0.1:6379 (durable: a listener that reconnects replays)");
        let bus = warmpool::bus::redis_streams::RedisStreamBus::new(
            "redis://127.0.0.1:6379",
            "warmpool:example-fleet",
            10_000,
        )?;
        bus.attach(&pool_a, listen(&origin_a)).await?;
        bus.attach(&pool_b, listen(&origin_b)).await?;
        bus.publisher(&origin_a, None).await?
    };

    println!("instance A rotates acme's key: retires its own copy and publishes an invalidation");
    let retired_here = publisher.invalidate(&pool_a, Scope::Prefix("acme:".into())).await?;
    println!("instance A retired {retired_here} key(s) itself");

    for _ in 0..100 {
        if pool_b.stats().await?.bus.applied == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = pool_b.stats().await?;
    println!(
        "instance B applied {} invalidation(s); resident keys now: {:?}",
        stats.bus.applied, stats.keys
    );
    println!(
        "instance B builds a fresh client: {}",
        client_for(&pool_b, "sk-new-2222").await?
    );

    pool_a.shutdown(Duration::from_secs(1)).await?;
    pool_b.shutdown(Duration::from_secs(1)).await?;
    Ok(())
}
