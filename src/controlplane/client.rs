//! The mTLS client of the control-plane API (`docs/control-plane.openapi.yaml`).
//!
//! rustls with the tenant CA as the only trust root and the tenant certificate as client
//! auth; a short-lived bearer token from `POST /v1/auth/token`, refreshed before expiry and once
//! on a 401; timeouts; jittered exponential backoff for 5xx and connection errors (bounded);
//! `Retry-After` on 429. Errors keep the RFC 7807 problem so conditions can say what the
//! control plane said. Tokens and keys never reach a log line or a `Debug` output.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jiff::Timestamp;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::identity::Identity;
use crate::api::conditions::bounded;
use crate::api::tenant::CredentialCounts;
use crate::backoff::{self, Schedule};
use crate::telemetry::{ControlPlaneLabels, Metrics};

/// Largest response body read (problems and records are small).
const MAX_BODY: usize = 1 << 20;

/// The longest `Retry-After` honoured: a longer (or absurd) one waits this long, so heartbeats
/// and token refreshes are never stalled by one answer. Equal to the per-object backoff cap.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Longest problem `title` and `detail` kept (bytes): they reach conditions and Events.
const MAX_PROBLEM_TITLE: usize = 200;
const MAX_PROBLEM_DETAIL: usize = 512;

/// Timeouts and retry bounds.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Attempts per call for 5xx, 429 and connection errors (the first one included).
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// A 429 asking to wait longer than this is returned instead of slept on, so the caller
    /// requeues at that time rather than holding a reconcile.
    pub max_retry_after: Duration,
}

impl ClientSettings {
    /// Retries of one call: `base_delay` doubling up to `max_delay`.
    pub fn retry_schedule(&self) -> Schedule {
        Schedule::new(self.base_delay, self.max_delay)
    }
}

impl Default for ClientSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(15),
            max_attempts: 4,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(5),
        }
    }
}

/// An RFC 7807 problem.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Problem {
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub detail: Option<String>,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.title, &self.detail) {
            (Some(t), Some(d)) => write!(f, "{t}: {d}"),
            (Some(t), None) => f.write_str(t),
            (None, Some(d)) => f.write_str(d),
            (None, None) => f.write_str("no problem details"),
        }
    }
}

/// Why a control-plane call failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error("the control plane's address {0} is not usable: {1}")]
    Endpoint(String, String),
    #[error("TLS setup failed: {0}")]
    TlsConfig(String),
    #[error("TLS handshake with the control plane failed: {0}")]
    Handshake(String),
    #[error("cannot reach the control plane after {attempts} attempts: {detail}")]
    Unreachable { attempts: u32, detail: String },
    #[error("the control plane did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the control plane rejected {operation} with HTTP {status}: {problem}")]
    Rejected {
        operation: &'static str,
        status: u16,
        problem: Problem,
    },
    // No wait in the text: a date-form Retry-After gives a new one on every attempt, and a
    // condition message must not change per attempt.
    #[error("the control plane is rate-limiting {operation} (HTTP 429); retrying when it asked to")]
    RateLimited {
        operation: &'static str,
        retry_after: Duration,
    },
    // The title only: a server error's detail often carries a request id (logged instead).
    #[error(
        "the control plane failed {operation} with HTTP {status} after {attempts} attempts: {}",
        problem.title.as_deref().unwrap_or("no problem details")
    )]
    Unavailable {
        operation: &'static str,
        status: u16,
        attempts: u32,
        problem: Problem,
    },
    #[error("the control plane's answer to {operation} was not understood: {detail}")]
    Protocol {
        operation: &'static str,
        detail: String,
    },
}

impl ControlPlaneError {
    /// A CamelCase reason for conditions.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Endpoint(..) | Self::TlsConfig(_) => "InvalidConfiguration",
            Self::Handshake(_) => "HandshakeFailed",
            Self::Unreachable { .. } => "Unreachable",
            Self::Timeout(_) => "Timeout",
            Self::Rejected { status: 401, .. } => "Unauthorized",
            Self::Rejected { status: 403, .. } => "Forbidden",
            Self::Rejected { .. } => "Rejected",
            Self::RateLimited { .. } => "RateLimited",
            Self::Unavailable { .. } => "ServerError",
            Self::Protocol { .. } => "ProtocolError",
        }
    }

    /// Per-attempt text left out of the message (a server error's detail), for logs.
    pub fn detail(&self) -> Option<&str> {
        match self {
            Self::Unavailable { problem, .. } => problem.detail.as_deref(),
            _ => None,
        }
    }

    /// When the control plane said when to come back.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

type Result<T, E = ControlPlaneError> = std::result::Result<T, E>;

/// A tenant's record on the control plane.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct TenantRecord {
    pub id: String,
    #[serde(default)]
    pub settings: Value,
    pub revision: String,
}

/// Answer to a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatReply {
    pub revision: String,
}

/// A token issued for a workload.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IssuedToken {
    pub token: String,
    pub expires_at: Timestamp,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Registry credentials issued for a workload.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IssuedRegistryCredentials {
    pub server: String,
    pub username: String,
    pub password: String,
    pub expires_at: Timestamp,
}

impl std::fmt::Debug for IssuedRegistryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedRegistryCredentials")
            .field("server", &self.server)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AccessTokenReply {
    access_token: String,
    expires_in: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HeartbeatRequest<'a> {
    operator_version: &'a str,
    credentials: CredentialCounts,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TokenRequest<'a> {
    audience: &'a str,
    ttl_seconds: u64,
}

#[derive(Deserialize)]
struct RevisionReply {
    revision: String,
}

/// The operator's own bearer token and when to replace it.
struct AccessToken {
    value: String,
    refresh_at: tokio::time::Instant,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

/// A client bound to one identity and one endpoint. A rotated certificate gets a new client.
pub struct ControlPlaneClient {
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    base: String,
    tenant_id: String,
    fingerprint: String,
    material: String,
    settings: ClientSettings,
    token: tokio::sync::Mutex<Option<AccessToken>>,
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for ControlPlaneClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlaneClient")
            .field("base", &self.base)
            .field("tenant_id", &self.tenant_id)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// The rustls configuration: TLS 1.2+, the tenant CA as the only root, client auth.
pub fn tls_config(identity: &Identity) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for root in &identity.roots {
        roots
            .add(root.clone())
            .map_err(|e| ControlPlaneError::TlsConfig(format!("ca.crt: {e}")))?;
    }
    rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ControlPlaneError::TlsConfig(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|e| ControlPlaneError::TlsConfig(format!("tls.crt/tls.key: {e}")))
}

impl ControlPlaneClient {
    /// A client for `endpoint` (an `https://` base URL) authenticating as `identity`.
    pub fn new(
        identity: &Identity,
        endpoint: &str,
        settings: ClientSettings,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Self> {
        let base = endpoint.trim_end_matches('/').to_owned();
        let uri: http::Uri = base.parse().map_err(|e: http::uri::InvalidUri| {
            ControlPlaneError::Endpoint(base.clone(), e.to_string())
        })?;
        if uri.scheme_str() != Some("https") || uri.host().is_none() {
            return Err(ControlPlaneError::Endpoint(
                base,
                "it must be an https:// URL with a host".to_owned(),
            ));
        }
        let mut connector = HttpConnector::new();
        connector.enforce_http(false);
        connector.set_connect_timeout(Some(settings.connect_timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(identity)?)
            .https_only()
            .enable_http1()
            .wrap_connector(connector);
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(https);
        Ok(Self {
            http,
            base,
            tenant_id: identity.summary.tenant_id.clone(),
            fingerprint: identity.summary.fingerprint.clone(),
            material: identity.material_digest(),
            settings,
            token: tokio::sync::Mutex::new(None),
            metrics,
        })
    }

    /// The endpoint this client talks to.
    pub fn endpoint(&self) -> &str {
        &self.base
    }

    /// Fingerprint of the certificate this client presents.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Digest of the certificates (client chain and trusted CA) this client was built from.
    pub fn material_digest(&self) -> &str {
        &self.material
    }

    /// `GET /v1/tenants/{id}`.
    pub async fn tenant(&self) -> Result<TenantRecord> {
        let path = format!("/v1/tenants/{}", self.tenant_id);
        let answer = self
            .call("get_tenant", Method::GET, &path, None, None, true)
            .await?;
        json("get_tenant", &answer)
    }

    /// `PUT /v1/tenants/{id}/settings` with `If-Match`; returns the new revision.
    pub async fn put_settings(&self, settings: &Value, revision: &str) -> Result<String> {
        let path = format!("/v1/tenants/{}/settings", self.tenant_id);
        let body = serde_json::json!({ "settings": settings });
        let answer = self
            .call(
                "put_settings",
                Method::PUT,
                &path,
                Some(body),
                Some(&etag(revision)),
                true,
            )
            .await?;
        Ok(json::<RevisionReply>("put_settings", &answer)?.revision)
    }

    /// Push `settings`, starting from `known` (the last revision seen, if any). A 412 means
    /// someone else changed them meanwhile: re-read the revision and try again (bounded).
    pub async fn sync_settings(&self, settings: &Value, known: Option<&str>) -> Result<String> {
        let mut revision = match known {
            Some(r) => r.to_owned(),
            None => self.tenant().await?.revision,
        };
        let mut attempt = 1;
        loop {
            match self.put_settings(settings, &revision).await {
                Err(ControlPlaneError::Rejected { status: 412, .. })
                    if attempt < self.settings.max_attempts =>
                {
                    attempt += 1;
                    revision = self.tenant().await?.revision;
                }
                other => return other,
            }
        }
    }

    /// `POST /v1/tenants/{id}/heartbeat`.
    pub async fn heartbeat(&self, credentials: CredentialCounts) -> Result<HeartbeatReply> {
        let path = format!("/v1/tenants/{}/heartbeat", self.tenant_id);
        let body = serde_json::to_value(HeartbeatRequest {
            operator_version: env!("CARGO_PKG_VERSION"),
            credentials,
        })
        .map_err(|e| protocol("heartbeat", e))?;
        let answer = self
            .call("heartbeat", Method::POST, &path, Some(body), None, true)
            .await?;
        json("heartbeat", &answer)
    }

    /// `POST /v1/tenants/{id}/tokens`.
    pub async fn issue_token(&self, audience: &str, ttl: Duration) -> Result<IssuedToken> {
        let path = format!("/v1/tenants/{}/tokens", self.tenant_id);
        let body = serde_json::to_value(TokenRequest {
            audience,
            ttl_seconds: ttl.as_secs(),
        })
        .map_err(|e| protocol("issue_token", e))?;
        let answer = self
            .call("issue_token", Method::POST, &path, Some(body), None, true)
            .await?;
        json("issue_token", &answer)
    }

    /// `POST /v1/tenants/{id}/registry-credentials`.
    pub async fn issue_registry_credentials(
        &self,
        server: &str,
    ) -> Result<IssuedRegistryCredentials> {
        let path = format!("/v1/tenants/{}/registry-credentials", self.tenant_id);
        let body = serde_json::json!({ "server": server });
        let answer = self
            .call(
                "issue_registry_credentials",
                Method::POST,
                &path,
                Some(body),
                None,
                true,
            )
            .await?;
        json("issue_registry_credentials", &answer)
    }

    /// The operator's bearer token, fetched or refreshed when a third of its life is left.
    async fn access_token(&self) -> Result<String> {
        let mut cached = self.token.lock().await;
        if let Some(token) = cached.as_ref()
            && tokio::time::Instant::now() < token.refresh_at
        {
            return Ok(token.value.clone());
        }
        let answer = self
            .call(
                "auth_token",
                Method::POST,
                "/v1/auth/token",
                None,
                None,
                false,
            )
            .await?;
        let reply: AccessTokenReply = json("auth_token", &answer)?;
        // A nonsensical lifetime must neither overflow nor make every call fetch a token.
        let lifetime = Duration::from_secs(reply.expires_in.clamp(10, 24 * 3600));
        let now = tokio::time::Instant::now();
        let refresh_at = now.checked_add(lifetime.mul_f64(2.0 / 3.0)).unwrap_or(now);
        *cached = Some(AccessToken {
            value: reply.access_token.clone(),
            refresh_at,
        });
        Ok(reply.access_token)
    }

    async fn forget_token(&self) {
        *self.token.lock().await = None;
    }

    fn record(&self, operation: &'static str, code: &str) {
        if let Some(metrics) = &self.metrics {
            metrics
                .control_plane_requests
                .get_or_create(&ControlPlaneLabels {
                    operation,
                    code: code.to_owned(),
                })
                .inc();
        }
    }

    /// One API call with the retry policy.
    async fn call(
        &self,
        operation: &'static str,
        method: Method,
        path: &str,
        body: Option<Value>,
        if_match: Option<&str>,
        bearer: bool,
    ) -> Result<Answer> {
        let body = match body {
            Some(v) => Bytes::from(serde_json::to_vec(&v).map_err(|e| protocol(operation, e))?),
            None => Bytes::new(),
        };
        let mut attempt: u32 = 0;
        let mut refreshed = false;
        loop {
            attempt += 1;
            let last = attempt >= self.settings.max_attempts;
            let mut request = Request::builder()
                .method(method.clone())
                .uri(format!("{}{path}", self.base))
                .header(header::ACCEPT, "application/json, application/problem+json")
                .header(header::CONTENT_TYPE, "application/json");
            if bearer {
                // Boxed: fetching the token is itself a call (without a bearer).
                let token = Box::pin(self.access_token()).await?;
                let value = HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|e| protocol(operation, e))?;
                request = request.header(header::AUTHORIZATION, value);
            }
            if let Some(tag) = if_match {
                request = request.header(header::IF_MATCH, tag);
            }
            let request = request
                .body(Full::new(body.clone()))
                .map_err(|e| ControlPlaneError::Endpoint(self.base.clone(), e.to_string()))?;
            // One deadline for the whole exchange: a server that sends headers and then stalls
            // must not hold the call (and the token lock) forever.
            let exchange = async {
                let response = self.http.request(request).await?;
                let status = response.status();
                let headers = response.headers().clone();
                let body = read_body(operation, response).await;
                Ok::<_, hyper_util::client::legacy::Error>((status, headers, body))
            };
            let sent = tokio::time::timeout(self.settings.request_timeout, exchange).await;
            let (status, headers, body) = match sent {
                Err(_) => {
                    self.record(operation, "timeout");
                    if last {
                        return Err(ControlPlaneError::Timeout(self.settings.request_timeout));
                    }
                    self.pause(attempt).await;
                    continue;
                }
                Ok(Err(err)) => {
                    if let Some(tls) = tls_failure(&err) {
                        self.record(operation, "tls");
                        return Err(ControlPlaneError::Handshake(tls));
                    }
                    self.record(operation, "connect");
                    if last {
                        return Err(ControlPlaneError::Unreachable {
                            attempts: attempt,
                            detail: chain(&err),
                        });
                    }
                    self.pause(attempt).await;
                    continue;
                }
                Ok(Ok(exchanged)) => exchanged,
            };
            self.record(operation, status.as_str());
            let body = body?;
            let answer = Answer {
                status,
                headers,
                body,
            };
            if status.is_success() {
                return Ok(answer);
            }
            match status.as_u16() {
                401 if bearer && !refreshed => {
                    // An expired or revoked token: fetch a new one once.
                    refreshed = true;
                    self.forget_token().await;
                    attempt -= 1;
                }
                429 => {
                    let wait = retry_after(&answer.headers, Timestamp::now())
                        .unwrap_or(self.settings.base_delay);
                    if last || wait > self.settings.max_retry_after {
                        return Err(ControlPlaneError::RateLimited {
                            operation,
                            retry_after: wait,
                        });
                    }
                    tokio::time::sleep(wait).await;
                }
                code if status.is_server_error() => {
                    if last {
                        return Err(ControlPlaneError::Unavailable {
                            operation,
                            status: code,
                            attempts: attempt,
                            problem: problem(&answer),
                        });
                    }
                    self.pause(attempt).await;
                }
                code => {
                    return Err(ControlPlaneError::Rejected {
                        operation,
                        status: code,
                        problem: problem(&answer),
                    });
                }
            }
        }
    }

    /// Jittered exponential backoff before attempt `attempt + 1`; the random factor in
    /// [0.5, 1.0] keeps many instances from retrying in step.
    async fn pause(&self, attempt: u32) {
        self.settings
            .retry_schedule()
            .sleep(attempt, backoff::random_factor())
            .await;
    }
}

/// `Retry-After` as seconds or an HTTP date, relative to `now`, at most [`MAX_RETRY_AFTER`].
pub fn retry_after(headers: &HeaderMap, now: Timestamp) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = if let Ok(seconds) = value.parse::<u64>() {
        Duration::from_secs(seconds)
    } else {
        let at = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
        Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO)
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// An ETag for a revision (quoted, as `If-Match` expects).
pub fn etag(revision: &str) -> String {
    if revision.starts_with('"') {
        revision.to_owned()
    } else {
        format!("\"{revision}\"")
    }
}

/// The answer's RFC 7807 problem, its texts cut to a size a condition or Event can carry.
fn problem(answer: &Answer) -> Problem {
    let mut problem: Problem = serde_json::from_slice(&answer.body).unwrap_or_else(|_| Problem {
        status: Some(answer.status.as_u16()),
        title: answer.status.canonical_reason().map(str::to_owned),
        ..Problem::default()
    });
    problem.title = problem.title.map(|t| bounded(t, MAX_PROBLEM_TITLE));
    problem.detail = problem.detail.map(|d| bounded(d, MAX_PROBLEM_DETAIL));
    problem
}

fn json<T: DeserializeOwned>(operation: &'static str, answer: &Answer) -> Result<T> {
    serde_json::from_slice(&answer.body).map_err(|e| protocol(operation, e))
}

fn protocol(operation: &'static str, e: impl std::fmt::Display) -> ControlPlaneError {
    ControlPlaneError::Protocol {
        operation,
        detail: e.to_string(),
    }
}

async fn read_body(
    operation: &'static str,
    response: http::Response<hyper::body::Incoming>,
) -> Result<Bytes> {
    Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .map_err(|e| protocol(operation, e))
}

/// The rustls error behind a connection failure, if the handshake is what failed: retrying a
/// wrong CA or a rejected certificate cannot help.
fn tls_failure(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        // io::Error hides its payload from source(): unwrap (possibly nested) payloads here.
        let mut io = e.downcast_ref::<std::io::Error>();
        while let Some(inner) = io.and_then(std::io::Error::get_ref) {
            if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
                return Some(tls.to_string());
            }
            io = inner.downcast_ref::<std::io::Error>();
        }
        current = e.source();
    }
    None
}

fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut current = err.source();
    while let Some(e) = current {
        parts.push(e.to_string());
        current = e.source();
    }
    parts.dedup();
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_double_from_250ms_to_5s_by_default() {
        let s = ClientSettings::default().retry_schedule();
        assert_eq!(s.delay(1), Duration::from_millis(250));
        assert_eq!(s.delay(2), Duration::from_millis(500));
        assert_eq!(s.delay(3), Duration::from_secs(1));
        assert_eq!(s.delay(30), Duration::from_secs(5));
    }

    #[test]
    fn retry_after_is_capped() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            header::RETRY_AFTER,
            HeaderValue::from_static("18446744073709551615"),
        );
        assert_eq!(retry_after(&h, now), Some(MAX_RETRY_AFTER));
        h.insert(
            header::RETRY_AFTER,
            HeaderValue::from_static("Fri, 01 Jan 2100 00:00:00 GMT"),
        );
        assert_eq!(retry_after(&h, now), Some(MAX_RETRY_AFTER));
    }

    #[test]
    fn problem_texts_are_cut_and_server_error_details_stay_out_of_the_message() {
        let body = serde_json::json!({"title": "t".repeat(5000), "detail": "d".repeat(1 << 19)});
        let answer = Answer {
            status: StatusCode::SERVICE_UNAVAILABLE,
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_string()),
        };
        let p = problem(&answer);
        assert!(p.title.as_ref().unwrap().len() <= MAX_PROBLEM_TITLE);
        assert!(p.detail.as_ref().unwrap().len() <= MAX_PROBLEM_DETAIL);
        let err = ControlPlaneError::Unavailable {
            operation: "token",
            status: 503,
            attempts: 4,
            problem: Problem {
                title: Some("Service Unavailable".into()),
                detail: Some("request id 1234".into()),
                ..Problem::default()
            },
        };
        assert!(!err.to_string().contains("1234"), "{err}");
        assert_eq!(err.detail(), Some("request id 1234"));
        let limited = ControlPlaneError::RateLimited {
            operation: "token",
            retry_after: Duration::from_millis(1234),
        };
        assert!(!limited.to_string().contains("1.2"), "{limited}");
    }

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        let now: Timestamp = "2026-11-22T10:00:00Z".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(7)));
        h.insert(
            header::RETRY_AFTER,
            HeaderValue::from_static("Sun, 22 Nov 2026 10:00:30 GMT"),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(30)));
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h, now), None);
    }

    #[test]
    fn etags_are_quoted_once() {
        assert_eq!(etag("7"), "\"7\"");
        assert_eq!(etag("\"7\""), "\"7\"");
    }

    #[test]
    fn issued_secrets_are_not_printed() {
        let t = IssuedToken {
            token: "eyJsecret".into(),
            expires_at: Timestamp::UNIX_EPOCH,
        };
        assert!(!format!("{t:?}").contains("eyJsecret"));
        let r = IssuedRegistryCredentials {
            server: "r.example".into(),
            username: "u".into(),
            password: "hunter2".into(),
            expires_at: Timestamp::UNIX_EPOCH,
        };
        assert!(!format!("{r:?}").contains("hunter2"));
    }
}
