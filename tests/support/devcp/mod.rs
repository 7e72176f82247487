//! The development control plane: the wire contract (docs/control-plane.openapi.yaml) served
//! in memory over real mutual TLS, for the client's tests and the local quickstart. It is test
//! code only; the release binary never contains it.
//!
//! TLS is rustls + ring, TLS 1.2+, with the tenant CA as the only client-certificate root, so a
//! certificate from another CA, an expired one or none at all fails the handshake. Tests drive it
//! through the handle: recorded requests, injected faults, token revocation, remote settings
//! changes, stop and restart on the same port.

pub mod api;
pub mod identity;
pub mod jwt;

use std::convert::Infallible;
use std::error::Error;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::http::header::{AUTHORIZATION, IF_MATCH};
use axum::http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

#[allow(unused_imports)]
pub use api::{AUDIENCE, ISSUER, ROUTES};
#[allow(unused_imports)]
pub use identity::{ClientIdentity, tenant_from_cert_der};
#[allow(unused_imports)]
pub use jwt::verify_es256;

pub type BoxError = Box<dyn Error + Send + Sync>;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct DevConfig {
    /// The tenant CA: the only root client certificates may chain to.
    pub ca_pem: String,
    /// The server's certificate (chaining to the same CA, as the client trusts only it) and key.
    pub server_cert_pem: String,
    pub server_key_pem: String,
    /// Lifetime of access tokens from `POST /v1/auth/token`.
    pub token_ttl: Duration,
    /// Port 0 picks a free port.
    pub bind: SocketAddr,
}

/// One request as the server saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub status: StatusCode,
    /// From the client certificate; `None` when it names no tenant.
    pub tenant_id: Option<String>,
    pub client_cert_sha256_hex: String,
    /// An `Authorization: Bearer ...` header was sent (the token itself is never recorded).
    pub bearer: bool,
    pub if_match: Option<String>,
}

/// Which requests a fault applies to; `None` fields match anything.
#[derive(Clone, Debug, Default)]
pub struct FaultMatch {
    pub method: Option<Method>,
    pub path_suffix: Option<String>,
}

impl FaultMatch {
    pub fn new(method: Method, path_suffix: &str) -> Self {
        Self {
            method: Some(method),
            path_suffix: Some(path_suffix.to_owned()),
        }
    }

    fn matches(&self, method: &Method, path: &str) -> bool {
        self.method.as_ref().is_none_or(|m| m == method)
            && self
                .path_suffix
                .as_deref()
                .is_none_or(|suffix| path.ends_with(suffix))
    }
}

#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this status and an RFC 7807 body instead of handling the request;
    /// `Retry-After: <secs>` when given.
    Status {
        status: StatusCode,
        retry_after: Option<u64>,
    },
    /// This status with a problem whose detail differs on every answer (a request id), as
    /// real servers write them.
    Changing { status: StatusCode },
    /// 429 with `Retry-After` as an HTTP date this many seconds ahead (the form whose
    /// computed wait differs on every answer).
    RetryAtDate { seconds: i64 },
}

struct Running {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

pub struct DevControlPlane {
    shared: Arc<api::Shared>,
    tls: Arc<ServerConfig>,
    addr: SocketAddr,
    running: Mutex<Option<Running>>,
}

impl DevControlPlane {
    /// Binds, generates the token-signing key and serves until `shutdown` (or drop).
    pub async fn start(config: DevConfig) -> Result<Self, BoxError> {
        let tls = Arc::new(tls_config(&config)?);
        let shared = Arc::new(api::Shared {
            signer: jwt::Signer::generate()?,
            token_ttl: config.token_ttl,
            state: Mutex::default(),
            rejected_handshakes: AtomicUsize::new(0),
            clock_offset_secs: std::sync::atomic::AtomicI64::new(0),
        });
        let listener = TcpListener::bind(config.bind).await?;
        let addr = listener.local_addr()?;
        let running = spawn_server(listener, &tls, &shared);
        Ok(Self {
            shared,
            tls,
            addr,
            running: Mutex::new(Some(running)),
        })
    }

    /// `https://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and drops every open connection; when it returns the port is free.
    /// State (tenants, tokens, the signing key) stays with this handle for `restart`.
    pub async fn shutdown(&self) {
        let running = self
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(running) = running {
            running.stop.cancel();
            let _ = running.task.await;
        }
    }

    /// Serves again on the same address with the same state and signing key (a control plane
    /// that was down and is back); issued tokens stay valid. For a fresh control plane, `start`
    /// a new one with `bind` set to the old `addr()`.
    pub async fn restart(&self) -> Result<(), BoxError> {
        self.shutdown().await;
        let listener = TcpListener::bind(self.addr).await?;
        let running = spawn_server(listener, &self.tls, &self.shared);
        *self.running.lock().unwrap_or_else(PoisonError::into_inner) = Some(running);
        Ok(())
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().requests.clone()
    }

    pub fn clear_requests(&self) {
        self.shared.lock().requests.clear();
    }

    /// Moves the server's clock forward (tokens it issued expire, `serverTime` moves): tests
    /// move time instead of sleeping through it. The TLS layer keeps the wall clock.
    pub fn advance_clock(&self, by: Duration) {
        let secs = i64::try_from(by.as_secs()).unwrap_or(i64::MAX);
        self.shared
            .clock_offset_secs
            .fetch_add(secs, Ordering::SeqCst);
    }

    /// TLS handshakes that failed (no, untrusted, expired client certificate; timeouts).
    pub fn rejected_handshakes(&self) -> usize {
        self.shared.rejected_handshakes.load(Ordering::SeqCst)
    }

    /// The next `times` requests matching `on` get `fault` instead of being handled. Faults are
    /// consulted in the order they were added.
    pub fn fail_next(&self, on: FaultMatch, fault: Fault, times: usize) {
        if times > 0 {
            self.shared.lock().faults.push((on, fault, times));
        }
    }

    /// Every access token issued so far is refused (401) from now on; new ones work.
    pub fn revoke_tokens(&self) {
        for revoked in self.shared.lock().access_tokens.values_mut() {
            *revoked = true;
        }
    }

    /// A change made elsewhere: replaces the tenant's settings and bumps the revision, so a PUT
    /// with the previous If-Match gets 412. Creates the tenant if needed.
    pub fn set_settings(&self, tenant: &str, settings: Value) {
        let mut state = self.shared.lock();
        let t = state.tenant(tenant);
        t.settings = settings;
        t.revision += 1;
    }

    /// The tenant's settings and revision, `None` before it first authenticated.
    pub fn settings(&self, tenant: &str) -> Option<(Value, String)> {
        let state = self.shared.lock();
        let t = state.tenants.get(tenant)?;
        Some((t.settings.clone(), t.revision.to_string()))
    }

    /// The bodies of the tenant's accepted heartbeats, oldest first.
    pub fn heartbeats(&self, tenant: &str) -> Vec<Value> {
        let state = self.shared.lock();
        state
            .tenants
            .get(tenant)
            .map(|t| t.heartbeats.clone())
            .unwrap_or_default()
    }

    /// The JWKS `GET /v1/.well-known/jwks.json` serves.
    pub fn jwks(&self) -> Value {
        self.shared.signer.jwks()
    }

    /// Checks a JWT this control plane issued (signature only) and returns its claims.
    pub fn verify_jwt(&self, token: &str) -> Result<Value, String> {
        verify_es256(token, &self.jwks())
    }
}

impl Drop for DevControlPlane {
    fn drop(&mut self) {
        let running = self
            .running
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(running) = running {
            running.stop.cancel();
        }
    }
}

fn tls_config(config: &DevConfig) -> Result<ServerConfig, BoxError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(config.ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let chain = CertificateDer::pem_slice_iter(config.server_cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(config.server_key_pem.as_bytes())?;
    let mut tls = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}

fn spawn_server(
    listener: TcpListener,
    tls: &Arc<ServerConfig>,
    shared: &Arc<api::Shared>,
) -> Running {
    let stop = CancellationToken::new();
    let task = tokio::spawn(accept_loop(
        listener,
        TlsAcceptor::from(tls.clone()),
        api::router(shared.clone()),
        shared.clone(),
        stop.clone(),
    ));
    Running { stop, task }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Router,
    shared: Arc<api::Shared>,
    stop: CancellationToken,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    connections.spawn(serve_connection(
                        tcp,
                        acceptor.clone(),
                        router.clone(),
                        shared.clone(),
                    ));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "dev control plane: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    connections.shutdown().await;
}

async fn serve_connection(
    tcp: TcpStream,
    acceptor: TlsAcceptor,
    router: Router,
    shared: Arc<api::Shared>,
) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            shared.rejected_handshakes.fetch_add(1, Ordering::SeqCst);
            tracing::info!(error = %e, "dev control plane: TLS handshake refused");
            return;
        }
        Err(_) => {
            shared.rejected_handshakes.fetch_add(1, Ordering::SeqCst);
            tracing::info!("dev control plane: TLS handshake timed out");
            return;
        }
    };
    let identity = ClientIdentity::from_peer(tls.get_ref().1.peer_certificates());
    let service = hyper::service::service_fn(move |request| {
        handle(request, router.clone(), shared.clone(), identity.clone())
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(tls), service)
        .await;
    if let Err(e) = served {
        tracing::debug!(error = %e, "dev control plane: connection ended");
    }
}

async fn handle(
    request: Request<Incoming>,
    router: Router,
    shared: Arc<api::Shared>,
    identity: ClientIdentity,
) -> Result<Response<axum::body::Body>, Infallible> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let header = |name| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let bearer = header(AUTHORIZATION).is_some_and(|v| v.starts_with("Bearer "));
    let if_match = header(IF_MATCH);

    let fault = shared.lock().take_fault(&method, &path);
    let response = match fault {
        Some(fault) => api::fault_response(&fault),
        None => {
            let mut request = request.map(axum::body::Body::new);
            request.extensions_mut().insert(identity.clone());
            router.oneshot(request).await?
        }
    };
    let tenant_id = identity.tenant.ok();
    // Never the Authorization header or a body: they carry tokens and passwords.
    tracing::info!(
        %method, %path, status = response.status().as_u16(),
        tenant = tenant_id.as_deref().unwrap_or("-"),
        "dev control plane request"
    );
    shared.lock().requests.push(Recorded {
        method,
        path,
        status: response.status(),
        tenant_id,
        client_cert_sha256_hex: identity.cert_sha256_hex,
        bearer,
        if_match,
    });
    Ok(response)
}
