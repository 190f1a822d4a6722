//! A stand-in for an LLM provider: an HTTPS server on 127.0.0.1 with a
//! self-signed certificate, that checks a bearer API key on every request.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::get;
use axum_server::Handle;
use axum_server::accept::NoDelayAcceptor;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};

/// Each tenant's current API key. In this demo the provider and the
/// gateway read the same vault (a real gateway would read its secret store,
/// and the provider its own records); a rotation changes it for both.
#[derive(Default)]
pub struct Vault {
    /// Tenant -> its one valid API key. A std lock: held for a lookup only,
    /// never across an await.
    keys: RwLock<HashMap<String, String>>,
    /// Tenants the provider refuses (403) whatever key they present.
    suspended: RwLock<HashSet<String>>,
}

// By hand, so that no key is ever printed.
impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tenants = self.keys.read().map(|k| k.len()).unwrap_or(0);
        f.debug_struct("Vault")
            .field("tenants", &tenants)
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// Sets `tenant`'s key; the previous one stops working at once.
    pub fn set(&self, tenant: &str, api_key: String) {
        self.keys.write().unwrap().insert(tenant.to_string(), api_key);
    }

    /// `tenant`'s current key, if it has one.
    pub fn key_of(&self, tenant: &str) -> Option<String> {
        self.keys.read().unwrap().get(tenant).cloned()
    }

    /// Makes the provider refuse `tenant` (its account is suspended).
    pub fn suspend(&self, tenant: &str) {
        self.suspended.write().unwrap().insert(tenant.to_string());
    }

    /// The tenant whose current key is `api_key`.
    fn tenant_with(&self, api_key: &str) -> Option<String> {
        let keys = self.keys.read().unwrap();
        keys.iter().find(|(_, k)| k.as_str() == api_key).map(|(t, _)| t.clone())
    }
}

/// The running provider.
pub struct Provider {
    /// `https://127.0.0.1:{port}`.
    pub base_url: String,
    /// The self-signed certificate, DER: the only root the gateway's clients trust.
    pub certificate_der: Vec<u8>,
    handle: Handle<SocketAddr>,
}

impl Provider {
    /// Generates a certificate for 127.0.0.1 and serves on an ephemeral port.
    pub async fn start(vault: Arc<Vault>) -> Result<Provider, Box<dyn std::error::Error>> {
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])?;
        let certificate_der = cert.cert.der().to_vec();
        let tls = RustlsConfig::from_der(vec![certificate_der.clone()], cert.signing_key.serialize_der()).await?;

        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let base_url = format!("https://{}", listener.local_addr()?);

        let app = Router::new()
            .route("/v1/whoami", get(whoami))
            .route("/v1/{api}", get(complete))
            .with_state(vault);
        let handle = Handle::new();
        // TCP_NODELAY on accepted connections: without it, Nagle's algorithm
        // and the peer's delayed ACK hold back the handshake's last flight
        // about 40 ms on every new connection, which would make a new client
        // per request look far slower than the handshake really is.
        let acceptor = RustlsAcceptor::new(tls).acceptor(NoDelayAcceptor::new());
        let server = axum_server::from_tcp(listener)?
            .acceptor(acceptor)
            .handle(handle.clone());
        tokio::spawn(async move {
            if let Err(error) = server.serve(app.into_make_service()).await {
                tracing::error!(%error, "provider stopped");
            }
        });
        Ok(Provider {
            base_url,
            certificate_der,
            handle,
        })
    }

    /// Stops at once (the gateway has stopped calling it by then).
    pub fn stop(&self) {
        self.handle.shutdown();
    }
}

/// The tenant that `headers` authenticate; 401 for an unknown (or rotated)
/// key, 403 for a suspended tenant.
fn authenticate(vault: &Vault, headers: &HeaderMap) -> Result<String, StatusCode> {
    let tenant = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|key| vault.tenant_with(key))
        .ok_or(StatusCode::UNAUTHORIZED)?;
    if vault.suspended.read().unwrap().contains(&tenant) {
        return Err(StatusCode::FORBIDDEN);
    }
    Ok(tenant)
}

/// The auth round trip a client makes when it is built.
async fn whoami(State(vault): State<Arc<Vault>>, headers: HeaderMap) -> Result<String, StatusCode> {
    authenticate(&vault, &headers).map(|tenant| format!("{{\"tenant\":\"{tenant}\"}}"))
}

/// One API call: a small JSON answer.
async fn complete(
    State(vault): State<Arc<Vault>>,
    Path(api): Path<String>,
    headers: HeaderMap,
) -> Result<String, StatusCode> {
    let tenant = authenticate(&vault, &headers)?;
    Ok(format!("{{\"tenant\":\"{tenant}\",\"api\":\"{api}\",\"text\":\"ok\"}}"))
}
