//! The gateway: one warm `reqwest::Client` per tenant and API in a
//! `warmpool::Pool`, its HTTP routes, and the one function that turns a
//! `PoolError` into an HTTP answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::header::{AUTHORIZATION, HeaderValue, RETRY_AFTER};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use warmpool::{Lease, Pool, PoolError, hash_credentials};

use crate::provider::Vault;

/// Which client a provider call used, for the load run and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// The tenant's warm client from the pool.
    Pooled,
    /// A client built for this one request, as code without a pool does.
    Fresh,
}

impl ClientKind {
    fn label(self) -> &'static str {
        match self {
            ClientKind::Pooled => "pooled",
            ClientKind::Fresh => "fresh",
        }
    }
}

/// Why a provider call failed.
#[derive(Debug)]
pub enum CallError {
    /// The tenant has no API key.
    UnknownTenant,
    /// The pool could not give a client.
    Pool(PoolError),
    /// The provider call itself failed.
    Upstream(reqwest::Error),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::UnknownTenant => f.write_str("unknown tenant"),
            CallError::Pool(e) => write!(f, "{e}"),
            CallError::Upstream(e) => write!(f, "provider call failed: {e}"),
        }
    }
}

/// The gateway's state, shared by every route and by the load run.
#[derive(Debug, Clone)]
pub struct Gateway {
    /// One client per `{tenant}:{api}` key, built for the tenant's current key.
    pub pool: Pool<reqwest::Client>,
    vault: Arc<Vault>,
    provider_url: Arc<str>,
    /// The provider's self-signed certificate, the only root our clients trust.
    provider_root: reqwest::Certificate,
    prometheus: PrometheusHandle,
}

impl Gateway {
    /// A gateway in front of the provider at `provider_url`.
    pub fn new(
        pool: Pool<reqwest::Client>,
        vault: Arc<Vault>,
        provider_url: &str,
        certificate_der: &[u8],
        prometheus: PrometheusHandle,
    ) -> reqwest::Result<Gateway> {
        Ok(Gateway {
            pool,
            vault,
            provider_url: provider_url.into(),
            provider_root: reqwest::Certificate::from_der(certificate_der)?,
            prometheus,
        })
    }

    /// The routes: `/v1/{tenant}/{api}`, `/stats`, `/metrics`, `/healthz`.
    pub fn router(self) -> Router {
        Router::new()
            .route("/v1/{tenant}/{api}", get(call_route))
            .route("/stats", get(stats_route))
            .route("/metrics", get(metrics_route))
            .route("/healthz", get(|| async { "ok" }))
            .with_state(self)
    }

    /// A new TLS client that sends `api_key` on every request and trusts
    /// only the provider's certificate. Building one is cheap-ish; its first
    /// request pays the TCP and TLS handshakes, which the pool keeps paid.
    fn new_client(&self, api_key: &str) -> reqwest::Result<reqwest::Client> {
        let mut auth = HeaderValue::from_str(&format!("Bearer {api_key}")).expect("API keys are ASCII");
        // Keeps the key out of every `Debug` of the headers.
        auth.set_sensitive(true);
        reqwest::Client::builder()
            .tls_certs_only([self.provider_root.clone()])
            .default_headers([(AUTHORIZATION, auth)].into_iter().collect())
            .timeout(Duration::from_secs(10))
            .build()
    }

    /// The tenant's warm client for `api`: built (a new client, then the auth
    /// round trip) when there is none for the tenant's current key.
    pub async fn client(&self, tenant: &str, api: &str) -> Result<Lease<reqwest::Client>, CallError> {
        let api_key = self.vault.key_of(tenant).ok_or(CallError::UnknownTenant)?;
        // The pool compares hashes, never keys: a rotated key is a new hash.
        let hash = hash_credentials(&serde_json::json!({ "tenant": tenant, "api_key": api_key }))
            .expect("a JSON object always hashes");
        let key = format!("{tenant}:{api}");
        let (gateway, whoami) = (self.clone(), format!("{}/v1/whoami", self.provider_url));
        let lease = self
            .pool
            .get_or_create(&key, hash, move || {
                let (gateway, whoami, api_key) = (gateway.clone(), whoami.clone(), api_key.clone());
                async move {
                    let client = gateway.new_client(&api_key)?;
                    client.get(&whoami).send().await?.error_for_status()?;
                    Ok::<_, reqwest::Error>(client)
                }
            })
            .await
            .map_err(CallError::Pool)?;
        Ok(lease)
    }

    /// One provider call for `tenant` on `api`, with a pooled or a fresh client.
    pub async fn call(&self, tenant: &str, api: &str, kind: ClientKind) -> Result<String, CallError> {
        let started = Instant::now();
        let result = self.call_inner(tenant, api, kind).await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!("gateway_provider_calls_total", "client" => kind.label(), "outcome" => outcome).increment(1);
        metrics::histogram!("gateway_provider_call_seconds", "client" => kind.label())
            .record(started.elapsed().as_secs_f64());
        result
    }

    async fn call_inner(&self, tenant: &str, api: &str, kind: ClientKind) -> Result<String, CallError> {
        let url = format!("{}/v1/{api}", self.provider_url);
        let response = match kind {
            ClientKind::Pooled => self.client(tenant, api).await?.get(&url).send().await,
            ClientKind::Fresh => {
                let api_key = self.vault.key_of(tenant).ok_or(CallError::UnknownTenant)?;
                let client = self.new_client(&api_key).map_err(CallError::Upstream)?;
                client.get(&url).send().await
            }
        };
        let response = response
            .and_then(|r| r.error_for_status())
            .map_err(CallError::Upstream)?;
        response.text().await.map_err(CallError::Upstream)
    }
}

/// `GET /v1/{tenant}/{api}`: one provider call through the tenant's pooled
/// client. The answer carries `x-client-id`, the id of the client instance
/// that served it, so a rotation can be seen from outside.
async fn call_route(State(gateway): State<Gateway>, Path((tenant, api)): Path<(String, String)>) -> Response {
    let client = match gateway.client(&tenant, &api).await {
        Ok(client) => client,
        Err(CallError::Pool(error)) => return pool_error_response(&error),
        Err(other) => return (StatusCode::NOT_FOUND, other.to_string()).into_response(),
    };
    let id = client.instance_id().to_string();
    let url = format!("{}/v1/{api}", gateway.provider_url);
    match client.get(&url).send().await.and_then(|r| r.error_for_status()) {
        Ok(answer) => {
            let body = answer.text().await.unwrap_or_default();
            (
                [("content-type", "application/json".to_string()), ("x-client-id", id)],
                body,
            )
                .into_response()
        }
        Err(error) => {
            if error.status().is_some_and(|status| status.as_u16() == 401) {
                // The provider stopped accepting this client's key (revoked
                // upstream). Retire exactly this client: not the one another
                // request may have rebuilt meanwhile. The next call builds anew.
                let retired = gateway.pool.retire(&client).await;
                tracing::warn!(key = %client.key(), retired, "provider answered 401; client retired");
            }
            (StatusCode::BAD_GATEWAY, format!("provider call failed: {error}")).into_response()
        }
    }
}

/// `GET /stats`: the pool's `Stats` as JSON.
async fn stats_route(State(gateway): State<Gateway>) -> Response {
    match gateway.pool.stats().await {
        Ok(stats) => Json(stats).into_response(),
        Err(error) => pool_error_response(&error),
    }
}

/// `GET /metrics`: everything recorded through the `metrics` facade (the
/// pool's `warmpool_*` series and the gateway's own), in the Prometheus text
/// format.
async fn metrics_route(State(gateway): State<Gateway>) -> String {
    // The pool publishes its counters every second; publishing now makes
    // this scrape current. A pool shutting down has published its last.
    let _ = gateway.pool.publish_metrics().await;
    gateway.prometheus.render()
}

/// The HTTP answer for a `PoolError`, in one place. The body is the error's
/// `Display`, which names the key and never a credential; the factory's own
/// error (here a `reqwest::Error`, which names the URL) is logged, not sent.
pub fn pool_error_response(error: &PoolError) -> Response {
    let status = match error {
        // The provider refused or failed while building the tenant's client.
        PoolError::Factory { .. } | PoolError::FactoryPanicked { .. } => StatusCode::BAD_GATEWAY,
        PoolError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        // The key failed repeatedly: tell the caller when to come back.
        PoolError::CoolingDown { .. } => StatusCode::SERVICE_UNAVAILABLE,
        // Shutting down: a load balancer should try another instance.
        PoolError::ShutDown => StatusCode::SERVICE_UNAVAILABLE,
        // The key's actor was stopped mid-call; retrying at once is safe.
        PoolError::ActorStopped { .. } => StatusCode::SERVICE_UNAVAILABLE,
        // `PoolError` is non-exhaustive: a variant added later is a 500
        // until this function learns it.
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if let PoolError::Factory { .. } = error {
        let cause = std::error::Error::source(error)
            .map(ToString::to_string)
            .unwrap_or_default();
        tracing::warn!(key = error.key().unwrap_or(""), %cause, "building a client failed");
    }
    let mut response = (status, error.to_string()).into_response();
    if let Some(wait) = error.retry_after() {
        // Whole seconds, rounded up: `Retry-After: 0` would invite a retry
        // that is certain to fail.
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    }
    response
}
