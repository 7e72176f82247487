//! The contract's routes (docs/control-plane.openapi.yaml) as axum handlers over in-memory state.
//! Every bearer route authenticates (signature, exp, aud, revocation, sub == certificate tenant;
//! else 401) before it authorises (path tenant == certificate tenant; else 403).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::header::{
    AUTHORIZATION, CONTENT_TYPE, ETAG, IF_MATCH, RETRY_AFTER, WWW_AUTHENTICATE,
};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post, put};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::identity::ClientIdentity;
use super::jwt::{Signer, verify_es256};
use super::{Fault, FaultMatch, Recorded};

pub const ISSUER: &str = "bulkhead-dev-control-plane";
pub const AUDIENCE: &str = "bulkhead-control-plane";
/// How long a generated registry password is valid.
const REGISTRY_CREDENTIAL_TTL_SECS: i64 = 3600;

/// Every (method, path template) the dev control plane serves; the router is built from this
/// list, and a test checks it against the OpenAPI document.
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/auth/token"),
    ("GET", "/v1/tenants/{id}"),
    ("PUT", "/v1/tenants/{id}/settings"),
    ("POST", "/v1/tenants/{id}/heartbeat"),
    ("POST", "/v1/tenants/{id}/tokens"),
    ("POST", "/v1/tenants/{id}/registry-credentials"),
    ("GET", "/v1/.well-known/jwks.json"),
];

pub struct Shared {
    pub signer: Signer,
    pub token_ttl: Duration,
    pub state: Mutex<DevState>,
    pub rejected_handshakes: AtomicUsize,
    /// Seconds added to the wall clock wherever the server reads the time (token `iat`/`exp`
    /// and their check, `serverTime`, expiries): a test moves it instead of sleeping.
    pub clock_offset_secs: AtomicI64,
}

#[derive(Default)]
pub struct DevState {
    pub tenants: BTreeMap<String, TenantState>,
    /// Access tokens issued by /v1/auth/token: jti -> revoked.
    pub access_tokens: HashMap<String, bool>,
    pub faults: Vec<(FaultMatch, Fault, usize)>,
    pub requests: Vec<Recorded>,
}

pub struct TenantState {
    pub settings: Value,
    pub revision: u64,
    pub heartbeats: Vec<Value>,
}

impl TenantState {
    fn new() -> Self {
        Self {
            settings: json!({}),
            revision: 0,
            heartbeats: Vec::new(),
        }
    }
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, DevState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The server's clock: the wall clock moved by `clock_offset_secs`.
    pub fn now_secs(&self) -> i64 {
        jiff::Timestamp::now().as_second() + self.clock_offset_secs.load(Ordering::SeqCst)
    }
}

impl DevState {
    pub fn tenant(&mut self, id: &str) -> &mut TenantState {
        self.tenants
            .entry(id.to_owned())
            .or_insert_with(TenantState::new)
    }

    /// Consumes one use of the first fault that matches this request.
    pub fn take_fault(&mut self, method: &Method, path: &str) -> Option<Fault> {
        let index = self
            .faults
            .iter()
            .position(|(m, _, left)| *left > 0 && m.matches(method, path))?;
        let (_, fault, left) = &mut self.faults[index];
        let fault = fault.clone();
        *left -= 1;
        if *left == 0 {
            self.faults.remove(index);
        }
        Some(fault)
    }
}

pub fn router(shared: Arc<Shared>) -> Router {
    let mut router = Router::new();
    for &(method, path) in ROUTES {
        let handler: MethodRouter<Arc<Shared>> = match (method, path) {
            ("POST", "/v1/auth/token") => post(auth_token),
            ("GET", "/v1/tenants/{id}") => get(get_tenant),
            ("PUT", "/v1/tenants/{id}/settings") => put(put_settings),
            ("POST", "/v1/tenants/{id}/heartbeat") => post(heartbeat),
            ("POST", "/v1/tenants/{id}/tokens") => post(issue_token),
            ("POST", "/v1/tenants/{id}/registry-credentials") => post(registry_credentials),
            ("GET", "/v1/.well-known/jwks.json") => get(jwks),
            other => unreachable!("ROUTES lists {other:?} without a handler"),
        };
        router = router.route(path, handler);
    }
    router
        .fallback(|| async {
            problem(
                StatusCode::NOT_FOUND,
                "not-found",
                "Not found",
                "no such route",
            )
        })
        .method_not_allowed_fallback(|| async {
            problem(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
                "this route does not take this method",
            )
        })
        .with_state(shared)
}

/// An RFC 7807 problem; as a response, 401s carry the contract's `WWW-Authenticate` challenge.
pub struct Problem {
    pub status: StatusCode,
    pub kind: &'static str,
    pub title: &'static str,
    pub detail: String,
}

pub fn problem(
    status: StatusCode,
    kind: &'static str,
    title: &'static str,
    detail: &str,
) -> Problem {
    Problem {
        status,
        kind,
        title,
        detail: detail.to_owned(),
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = json!({
            "type": format!("https://bulkhead.dev/problems/{}", self.kind),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        let mut response = (
            self.status,
            [(CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Bearer error="invalid_token""#),
            );
        }
        response
    }
}

/// The response an injected fault produces.
pub fn fault_response(fault: &Fault) -> Response {
    match fault {
        Fault::Status {
            status,
            retry_after,
        } => {
            let title = status.canonical_reason().unwrap_or("Injected fault");
            let mut response =
                problem(*status, "injected-fault", title, "injected by the test").into_response();
            if let Some(secs) = retry_after {
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(*secs));
            }
            response
        }
        Fault::Changing { status } => {
            static ANSWERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let id = ANSWERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let title = status.canonical_reason().unwrap_or("Injected fault");
            problem(
                *status,
                "injected-fault",
                title,
                &format!("request id {id:08x} failed"),
            )
            .into_response()
        }
        Fault::RetryAtDate { seconds } => {
            let mut response = problem(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too Many Requests",
                "slow down",
            )
            .into_response();
            let at = jiff::Timestamp::now()
                .checked_add(jiff::SignedDuration::from_secs(*seconds))
                .unwrap_or_else(|_| jiff::Timestamp::now());
            let date = jiff::fmt::rfc2822::DateTimePrinter::new().timestamp_to_rfc9110_string(&at);
            if let Ok(value) = date
                .map_err(|_| ())
                .and_then(|d| HeaderValue::from_str(&d).map_err(|_| ()))
            {
                response.headers_mut().insert(RETRY_AFTER, value);
            }
            response
        }
    }
}

fn json_response(status: StatusCode, body: &Value, revision: Option<u64>) -> Response {
    let mut response = (
        status,
        [(CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    if let Some(revision) = revision
        && let Ok(etag) = HeaderValue::from_str(&format!("\"{revision}\""))
    {
        response.headers_mut().insert(ETAG, etag);
    }
    response
}

fn rfc3339(secs: i64) -> String {
    jiff::Timestamp::from_second(secs)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn bad_request(detail: &str) -> Problem {
    problem(
        StatusCode::BAD_REQUEST,
        "bad-request",
        "Bad request",
        detail,
    )
}

fn internal(detail: &str) -> Problem {
    problem(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "Internal error",
        detail,
    )
}

fn parse_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, Problem> {
    serde_json::from_slice(body).map_err(|e| bad_request(&format!("invalid request body: {e}")))
}

/// The certificate's tenant, or 403 when the certificate names none.
fn cert_tenant(identity: &ClientIdentity) -> Result<String, Problem> {
    identity.tenant.clone().map_err(|why| {
        problem(
            StatusCode::FORBIDDEN,
            "no-tenant-identity",
            "The client certificate names no tenant",
            &why,
        )
    })
}

/// mTLS + bearer: 401 unless the token is ours, current, unrevoked and for the certificate's
/// tenant; then 403 unless the path names that tenant.
fn authorize(
    shared: &Shared,
    identity: &ClientIdentity,
    headers: &HeaderMap,
    path_tenant: &str,
) -> Result<String, Problem> {
    let tenant = cert_tenant(identity)?;
    let unauthorized = |detail: &str| {
        problem(
            StatusCode::UNAUTHORIZED,
            "invalid-token",
            "Invalid token",
            detail,
        )
    };
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| unauthorized("missing bearer token"))?;
    let claims = verify_es256(token.trim(), &shared.signer.jwks()).map_err(|e| unauthorized(&e))?;
    if claims["iss"] != ISSUER || claims["aud"] != AUDIENCE {
        return Err(unauthorized(
            "the token is not an access token for this control plane",
        ));
    }
    if claims["exp"]
        .as_i64()
        .is_none_or(|exp| shared.now_secs() >= exp)
    {
        return Err(unauthorized("the token has expired"));
    }
    let jti = claims["jti"].as_str().unwrap_or_default();
    match shared.lock().access_tokens.get(jti) {
        Some(false) => {}
        Some(true) => return Err(unauthorized("the token has been revoked")),
        None => return Err(unauthorized("unknown token")),
    }
    if claims["sub"] != tenant.as_str() {
        return Err(unauthorized(
            "the token was issued to another tenant than the client certificate's",
        ));
    }
    if path_tenant != tenant {
        return Err(problem(
            StatusCode::FORBIDDEN,
            "tenant-mismatch",
            "Forbidden",
            "the path names another tenant than the client certificate's",
        ));
    }
    Ok(tenant)
}

async fn auth_token(
    State(shared): State<Arc<Shared>>,
    Extension(identity): Extension<ClientIdentity>,
    body: Bytes,
) -> Result<Response, Problem> {
    let tenant = cert_tenant(&identity)?;
    if !body.iter().all(u8::is_ascii_whitespace)
        && !matches!(serde_json::from_slice(&body), Ok(Value::Object(_)))
    {
        return Err(bad_request("the body must be empty or a JSON object"));
    }
    let jti = shared.signer.random_id(16).map_err(|e| internal(&e))?;
    let iat = shared.now_secs();
    let ttl = i64::try_from(shared.token_ttl.as_secs()).unwrap_or(i64::MAX / 2);
    let claims = json!({
        "iss": ISSUER, "sub": tenant, "aud": AUDIENCE,
        "iat": iat, "exp": iat + ttl, "jti": jti,
    });
    let token = shared.signer.sign(&claims).map_err(|e| internal(&e))?;
    {
        let mut state = shared.lock();
        state.tenant(&tenant);
        state.access_tokens.insert(jti, false);
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"accessToken": token, "tokenType": "Bearer", "expiresIn": ttl}),
        None,
    ))
}

async fn get_tenant(
    State(shared): State<Arc<Shared>>,
    Extension(identity): Extension<ClientIdentity>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let tenant = authorize(&shared, &identity, &headers, &id)?;
    let mut state = shared.lock();
    let t = state.tenant(&tenant);
    Ok(json_response(
        StatusCode::OK,
        &json!({"id": tenant, "settings": t.settings, "revision": t.revision.to_string()}),
        Some(t.revision),
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SettingsBody {
    settings: Value,
}

async fn put_settings(
    State(shared): State<Arc<Shared>>,
    Extension(identity): Extension<ClientIdentity>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let tenant = authorize(&shared, &identity, &headers, &id)?;
    let if_match = headers.get(IF_MATCH).ok_or_else(|| {
        problem(
            StatusCode::PRECONDITION_REQUIRED,
            "precondition-required",
            "If-Match required",
            "send If-Match with the revision the change is based on",
        )
    })?;
    // Preconditions come before the body (RFC 9110 §13.2.2).
    let mut state = shared.lock();
    let current = state.tenant(&tenant).revision;
    if if_match.to_str().ok().map(str::trim) != Some(format!("\"{current}\"").as_str()) {
        return Err(problem(
            StatusCode::PRECONDITION_FAILED,
            "revision-mismatch",
            "Precondition failed",
            &format!("the settings are at revision {current}; read them again"),
        ));
    }
    let SettingsBody { settings } = parse_body(&body)?;
    if !settings.is_object() {
        return Err(bad_request("settings must be a JSON object"));
    }
    let t = state.tenant(&tenant);
    t.settings = settings;
    t.revision += 1;
    Ok(json_response(
        StatusCode::OK,
        &json!({"revision": t.revision.to_string()}),
        Some(t.revision),
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HeartbeatBody {
    operator_version: String,
    credentials: CredentialCounts,
}

#[derive(Deserialize)]
struct CredentialCounts {
    #[allow(dead_code)]
    total: u64,
    #[allow(dead_code)]
    ready: u64,
}

fn is_semver(version: &str) -> bool {
    let core = version.split(['-', '+']).next().unwrap_or_default();
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()))
}

async fn heartbeat(
    State(shared): State<Arc<Shared>>,
    Extension(identity): Extension<ClientIdentity>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let tenant = authorize(&shared, &identity, &headers, &id)?;
    let parsed: HeartbeatBody = parse_body(&body)?;
    if !is_semver(&parsed.operator_version) {
        return Err(bad_request("operatorVersion must be a semantic version"));
    }
    let mut state = shared.lock();
    let t = state.tenant(&tenant);
    t.heartbeats.push(parse_body(&body)?);
    Ok(json_response(
        StatusCode::OK,
        &json!({"revision": t.revision.to_string(), "serverTime": rfc3339(shared.now_secs())}),
        None,
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenBody {
    audience: String,
    ttl_seconds: i64,
}

async fn issue_token(
    State(shared): State<Arc<Shared>>,
    Extension(identity): Extension<ClientIdentity>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let tenant = authorize(&shared, &identity, &headers, &id)?;
    let TokenBody {
        audience,
        ttl_seconds,
    } = parse_body(&body)?;
    if !(1..=253).contains(&audience.len()) {
        return Err(bad_request("audience must be 1 to 253 characters"));
    }
    if !(60..=86_400).contains(&ttl_seconds) {
        return Err(bad_request("ttlSeconds must be between 60 and 86400"));
    }
    let jti = shared.signer.random_id(16).map_err(|e| internal(&e))?;
    let iat = shared.now_secs();
    let exp = iat + ttl_seconds;
    let claims = json!({
        "iss": ISSUER, "sub": tenant, "aud": audience,
        "iat": iat, "exp": exp, "jti": jti,
    });
    let token = shared.signer.sign(&claims).map_err(|e| internal(&e))?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"token": token, "expiresAt": rfc3339(exp)}),
        None,
    ))
}

#[derive(Deserialize)]
struct RegistryBody {
    server: String,
}

fn is_registry_host(server: &str) -> bool {
    (1..=253).contains(&server.len())
        && server
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b':' | b'[' | b']'))
}

async fn registry_credentials(
    State(shared): State<Arc<Shared>>,
    Extension(identity): Extension<ClientIdentity>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let tenant = authorize(&shared, &identity, &headers, &id)?;
    let RegistryBody { server } = parse_body(&body)?;
    if !is_registry_host(&server) {
        return Err(bad_request(
            "server must be a registry host[:port], without scheme or path",
        ));
    }
    let password = shared.signer.random_id(32).map_err(|e| internal(&e))?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({
            "server": server,
            "username": format!("bulkhead-{tenant}"),
            "password": password,
            "expiresAt": rfc3339(shared.now_secs() + REGISTRY_CREDENTIAL_TTL_SECS),
        }),
        None,
    ))
}

async fn jwks(State(shared): State<Arc<Shared>>) -> Response {
    json_response(StatusCode::OK, &shared.signer.jwks(), None)
}
