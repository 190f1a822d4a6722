//! The real job: an HTTP gateway that keeps one warm `reqwest::Client` per
//! tenant and API in a `warmpool::Pool`, in front of a local HTTPS provider
//! with a self-signed certificate. All traffic stays on 127.0.0.1.
//!
//! ```text
//! cargo run -p gateway --release             # the run below, then a graceful shutdown
//! cargo run -p gateway --release -- --serve  # the same, then serves until Ctrl-C
//! ```
//!
//! In one command it:
//!
//! 1. starts the provider (HTTPS, ephemeral port, a certificate made by
//!    rcgen that only the gateway's clients trust) and the gateway (HTTP);
//! 2. makes one bounded load run of provider calls (default 2,000 over 32
//!    tasks, 8 tenants x 2 APIs), once with the pooled clients and once
//!    with a new client per request, and prints p50, p99, requests per
//!    second and the ratios;
//! 3. rotates a tenant's API key: the next call presents a new credentials
//!    hash, so the pool builds a new client and retires the old one;
//! 4. invalidates a tenant by prefix (`invalidate_by_prefix("tenant-a:")`);
//! 5. shows the `PoolError` to HTTP mapping on a suspended tenant: 502
//!    while its client cannot be built, then 503 with `Retry-After` while the
//!    key cools down;
//! 6. reads its own `/stats` (the pool's `Stats` as JSON) and `/metrics`
//!    (Prometheus text from the `metrics` facade) and prints excerpts;
//! 7. shuts down in order: stop accepting, let requests in flight finish,
//!    `pool.shutdown(deadline)`, print the report.
//!
//! Options: `--requests N`, `--tasks C`, `--serve`. No API key is ever
//! printed or logged: the pool sees only credentials hashes, the
//! `Authorization` header is marked sensitive, and error bodies carry the
//! `PoolError`'s `Display`, which names keys, never credentials.

mod gateway;
mod load;
mod provider;

use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::sync::oneshot;
use warmpool::{Pool, RestartPolicy};

use crate::gateway::{ClientKind, Gateway};
use crate::load::Summary;
use crate::provider::{Provider, Vault};

/// The tenants of the load run; each has a `chat` and an `embed` client.
const TENANTS: [&str; 8] = [
    "tenant-a", "tenant-b", "tenant-c", "tenant-d", "tenant-e", "tenant-f", "tenant-g", "tenant-h",
];
const APIS: [&str; 2] = ["chat", "embed"];

/// What the command line asked for.
struct Args {
    requests: usize,
    tasks: usize,
    serve: bool,
}

impl Args {
    fn parse() -> Result<Args, String> {
        let mut args = Args {
            requests: 2_000,
            tasks: 32,
            serve: false,
        };
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            let mut number = |name: &str| -> Result<usize, String> {
                let value = it.next().ok_or(format!("{name} needs a number"))?;
                value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or(format!("{name}: `{value}` is not a positive number"))
            };
            match arg.as_str() {
                "--requests" => args.requests = number("--requests")?,
                "--tasks" => args.tasks = number("--tasks")?,
                "--serve" => args.serve = true,
                other => {
                    return Err(format!(
                        "unknown argument `{other}`; try --requests N, --tasks C, --serve"
                    ));
                }
            }
        }
        Ok(args)
    }
}

/// A fresh API key. Not secret-grade randomness: a demo key for a demo
/// provider, never printed.
fn new_api_key(tenant: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("sk-{tenant}-{nanos:x}")
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn print_load(requests: usize, tasks: usize, pooled: &Summary, fresh: &Summary) {
    println!(
        "\nload: {requests} provider calls over {tasks} tasks, {} tenants x {} APIs, HTTPS on loopback",
        TENANTS.len(),
        APIS.len()
    );
    println!(
        "  {:<26} {:>10} {:>10} {:>10} {:>7}",
        "", "p50", "p99", "req/s", "errors"
    );
    for (name, s) in [("with the pool", pooled), ("new client per request", fresh)] {
        println!(
            "  {name:<26} {:>10} {:>10} {:>10.0} {:>7}",
            ms(s.p50),
            ms(s.p99),
            s.per_second,
            s.errors
        );
    }
    println!(
        "  with/without the pool: p50 {:.2}x, p99 {:.2}x, requests/s {:.1}x",
        pooled.p50.as_secs_f64() / fresh.p50.as_secs_f64(),
        pooled.p99.as_secs_f64() / fresh.p99.as_secs_f64(),
        pooled.per_second / fresh.per_second
    );
}

/// `GET url` on the gateway: the status line, `x-client-id` and `Retry-After`.
async fn get(http: &reqwest::Client, url: &str) -> Result<(u16, String, String), reqwest::Error> {
    let response = http.get(url).send().await?;
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (client_id, retry_after) = (header("x-client-id"), header("retry-after"));
    let body = response.text().await?;
    let detail = if status == 200 {
        format!("client #{client_id}")
    } else if retry_after.is_empty() {
        body
    } else {
        format!("Retry-After: {retry_after}; {body}")
    };
    Ok((status, client_id, detail))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse()?;
    // Info and above only: the HTTP and TLS crates log connection details
    // at debug and trace.
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_target(false)
        .init();
    // One crypto provider for rustls (ring), for the provider's server and
    // every reqwest client.
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| "a rustls crypto provider was already installed")?;
    let prometheus = PrometheusBuilder::new().install_recorder()?;

    let vault = Arc::new(Vault::default());
    for tenant in TENANTS.iter().chain(&["tenant-z"]) {
        vault.set(tenant, new_api_key(tenant));
    }
    let provider = Provider::start(vault.clone()).await?;
    println!("provider: {} (self-signed certificate)", provider.base_url);

    let pool: Pool<reqwest::Client> = Pool::builder()
        .name("tenant-clients")
        .time_to_live(Duration::from_secs(300))
        .max_entries(1_000)
        .create_timeout(Duration::from_secs(5))
        // A tenant whose client cannot be built cools down after two
        // failures in 30 s, so a dead account is not hammered.
        .restart_policy(RestartPolicy {
            max_retries: 0,
            intensity: 2,
            window: Duration::from_secs(30),
            cooldown_initial: Duration::from_secs(5),
            cooldown_max: Duration::from_secs(60),
            ..RestartPolicy::default()
        })
        .on_dispose(|key, _client: reqwest::Client| async move { tracing::debug!(%key, "client disposed") })
        .spawn()
        .await?;
    let gateway = Gateway::new(
        pool.clone(),
        vault.clone(),
        &provider.base_url,
        &provider.certificate_der,
        prometheus,
    )?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = oneshot::channel::<()>();
    let app = gateway.clone().router();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    println!("gateway:  {base}");

    // 2. The load run: the same calls, pooled clients, then a new client
    //    each. The pool is warmed first (one call per key, timed apart), so
    //    that its run measures what a running service sees.
    let warm_up = std::time::Instant::now();
    let keys = TENANTS.iter().flat_map(|t| APIS.iter().map(move |a| (*t, *a)));
    for result in futures::future::join_all(keys.map(|(t, a)| gateway.client(t, a))).await {
        result.map_err(|e| format!("warming the pool: {e}"))?;
    }
    println!(
        "warm-up: {} clients built concurrently (TLS client, handshake, auth round trip) in {}",
        TENANTS.len() * APIS.len(),
        ms(warm_up.elapsed())
    );
    let run = |kind: ClientKind| {
        let gateway = gateway.clone();
        load::run(args.requests, args.tasks, move |i| {
            let gateway = gateway.clone();
            async move {
                let (tenant, api) = (TENANTS[i % TENANTS.len()], APIS[(i / TENANTS.len()) % APIS.len()]);
                gateway.call(tenant, api, kind).await.map(drop)
            }
        })
    };
    let pooled = run(ClientKind::Pooled).await;
    let fresh = run(ClientKind::Fresh).await;
    print_load(args.requests, args.tasks, &pooled, &fresh);

    // 3. A rotation: tenant-a gets a new key; the provider refuses the old one.
    let http = reqwest::Client::new();
    println!();
    let (_, before, _) = get(&http, &format!("{base}/v1/tenant-a/chat")).await?;
    vault.set("tenant-a", new_api_key("tenant-a"));
    let (status, after, _) = get(&http, &format!("{base}/v1/tenant-a/chat")).await?;
    println!(
        "rotation: tenant-a's key rotated -> {status}, client #{before} replaced by #{after} \
         (retired for credentials: {})",
        pool.stats().await?.retirements.credentials
    );

    // 4. A prefix invalidation: every client of tenant-a.
    let retired = pool.invalidate_by_prefix("tenant-a:").await?;
    let (status, rebuilt, _) = get(&http, &format!("{base}/v1/tenant-a/embed")).await?;
    println!(
        "invalidate_by_prefix(\"tenant-a:\") -> {retired} keys retired; next call {status}, new client #{rebuilt}"
    );

    // 5. PoolError -> HTTP: the provider refuses tenant-z (suspended).
    vault.suspend("tenant-z");
    for _ in 0..3 {
        let (status, _, detail) = get(&http, &format!("{base}/v1/tenant-z/chat")).await?;
        println!("GET /v1/tenant-z/chat -> {status}: {detail}");
    }

    // 6. The gateway's own /stats and /metrics.
    let stats: serde_json::Value =
        serde_json::from_str(&http.get(format!("{base}/stats")).send().await?.text().await?)?;
    let pick = |name: &str| stats.get(name).cloned().unwrap_or_default();
    println!(
        "\nGET /stats (excerpt): {}",
        serde_json::json!({
            "size": pick("size"), "hits": pick("hits"), "misses": pick("misses"),
            "builds": pick("builds"), "build_failures": pick("build_failures"),
            "retirements": pick("retirements"), "cooling_keys": pick("cooling_keys"),
        })
    );
    let metrics = http.get(format!("{base}/metrics")).send().await?.text().await?;
    println!("GET /metrics (excerpt):");
    metrics
        .lines()
        .filter(|l| !l.starts_with('#') && (l.contains("_total") || l.contains("_count") || l.contains("_sum")))
        .take(16)
        .for_each(|l| println!("  {l}"));

    if args.serve {
        println!("\nserving until Ctrl-C: curl {base}/v1/tenant-b/chat, curl {base}/stats, curl {base}/metrics");
        tokio::signal::ctrl_c().await?;
    }

    // 7. Shutdown, in order: stop accepting and finish requests in flight
    //    (which may hold leases), then retire and dispose every client.
    let _ = stop.send(());
    server.await??;
    let report = pool.shutdown(Duration::from_secs(10)).await?;
    println!(
        "\nshutdown: stopped accepting; retired {}, disposed {}, still leased {:?}, deadline passed: {}",
        report.retired, report.disposed, report.still_leased, report.deadline_passed
    );
    provider.stop();
    Ok(())
}
