//! The development control plane against a plain mTLS client (tokio-rustls + hyper, no Bulkhead
//! code): if these pass, the client's tests against it exercise the wire contract in
//! /docs/control-plane.openapi.yaml, including the TLS refusals a real control plane makes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    AUTHORIZATION, CONTENT_TYPE, ETAG, HOST, IF_MATCH, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{AlertDescription, ClientConfig, RootCertStore};
use serde_json::{Value, json};
use support::devcp::{self, DevConfig, DevControlPlane, Fault, FaultMatch};
use support::pki::{ClientCert, Identity, TestCa};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

const TRUST_DOMAIN: &str = "bulkhead.test";
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

struct Fixture {
    ca: TestCa,
    cp: DevControlPlane,
}

async fn fixture(token_ttl: Duration) -> Fixture {
    let ca = TestCa::new("team CA").unwrap();
    let cp = start(&ca, token_ttl, SocketAddr::new(LOCALHOST, 0)).await;
    Fixture { ca, cp }
}

async fn start(ca: &TestCa, token_ttl: Duration, bind: SocketAddr) -> DevControlPlane {
    let server = ca.server_cert(&["localhost"], &[LOCALHOST]).unwrap();
    DevControlPlane::start(DevConfig {
        ca_pem: ca.ca_pem(),
        server_cert_pem: server.cert_pem,
        server_key_pem: server.key_pem,
        token_ttl,
        bind,
    })
    .await
    .unwrap()
}

impl Fixture {
    fn identity(&self, tenant: &str) -> Identity {
        self.ca
            .client_identity(&ClientCert::new(tenant, TRUST_DOMAIN))
            .unwrap()
    }

    fn client(&self, tenant: &str) -> Client {
        let identity = self.identity(tenant);
        Client {
            addr: self.cp.addr(),
            tls: client_config(&identity.ca_pem, Some(&identity), false),
        }
    }
}

/// TLS 1.3 and 1.2 (or 1.2 only), the CA as the only root, ring, and the identity if any.
fn client_config(ca_pem: &str, identity: Option<&Identity>, tls12_only: bool) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots);
    let mut config = match identity {
        Some(id) => {
            let chain = CertificateDer::pem_slice_iter(id.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

async fn tls_connect(
    addr: SocketAddr,
    tls: &Arc<ClientConfig>,
) -> io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    // The URL is https://127.0.0.1:PORT: the server certificate must carry the IP SAN.
    TlsConnector::from(tls.clone())
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
}

struct Client {
    addr: SocketAddr,
    tls: Arc<ClientConfig>,
}

#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Reply {
    fn header(&self, name: http::header::HeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts an RFC 7807 problem with this status.
    fn assert_problem(&self, status: StatusCode) {
        assert_eq!(self.status, status, "{:?}", self.body);
        assert_eq!(self.header(CONTENT_TYPE), Some("application/problem+json"));
        assert_eq!(self.body["status"], status.as_u16());
        assert!(self.body["type"].as_str().is_some_and(|t| t.contains(':')));
        assert!(self.body["title"].is_string() && self.body["detail"].is_string());
        if status == StatusCode::UNAUTHORIZED {
            assert_eq!(
                self.header(WWW_AUTHENTICATE),
                Some(r#"Bearer error="invalid_token""#)
            );
        }
    }
}

#[derive(Default)]
struct Call<'a> {
    bearer: Option<&'a str>,
    if_match: Option<&'a str>,
    body: Option<Value>,
}

impl Client {
    /// One request on a fresh connection.
    async fn send(
        &self,
        method: Method,
        path: &str,
        call: Call<'_>,
    ) -> Result<Reply, devcp::BoxError> {
        let tls = tls_connect(self.addr, &self.tls).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.addr.to_string());
        if let Some(token) = call.bearer {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(if_match) = call.if_match {
            request = request.header(IF_MATCH, if_match);
        }
        let body = match call.body {
            Some(body) => {
                request = request.header(CONTENT_TYPE, "application/json");
                Bytes::from(body.to_string())
            }
            None => Bytes::new(),
        };
        let response = sender.send_request(request.body(Full::new(body))?).await?;
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await?.to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)?
        };
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    async fn call(&self, method: Method, path: &str, call: Call<'_>) -> Reply {
        self.send(method, path, call).await.unwrap()
    }

    async fn token(&self) -> String {
        let reply = self
            .call(Method::POST, "/v1/auth/token", Call::default())
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        reply.body["accessToken"].as_str().unwrap().to_owned()
    }

    async fn get_tenant(&self, tenant: &str, token: &str) -> Reply {
        let path = format!("/v1/tenants/{tenant}");
        self.call(
            Method::GET,
            &path,
            Call {
                bearer: Some(token),
                ..Call::default()
            },
        )
        .await
    }

    async fn put_settings(&self, token: &str, if_match: Option<&str>, settings: Value) -> Reply {
        let call = Call {
            bearer: Some(token),
            if_match,
            body: Some(json!({"settings": settings})),
        };
        self.call(Method::PUT, "/v1/tenants/team-a/settings", call)
            .await
    }

    async fn heartbeat(&self, token: &str) -> Reply {
        let call = Call {
            bearer: Some(token),
            body: Some(
                json!({"operatorVersion": "0.1.0", "credentials": {"total": 3, "ready": 2}}),
            ),
            ..Call::default()
        };
        self.call(Method::POST, "/v1/tenants/team-a/heartbeat", call)
            .await
    }
}

/// The server refuses the handshake with `alert`: the client sees it at the handshake (TLS 1.2)
/// or on its first read (TLS 1.3 sends the client's certificate after the server's Finished).
async fn assert_refused(fx: &Fixture, tls: &Arc<ClientConfig>, alert: AlertDescription) {
    let before = fx.cp.rejected_handshakes();
    let client = Client {
        addr: fx.cp.addr(),
        tls: tls.clone(),
    };
    let err = client
        .send(Method::GET, "/v1/.well-known/jwks.json", Call::default())
        .await
        .expect_err("the server answered a client it must refuse");
    assert_eq!(
        tls_error(&*err),
        Some(&rustls::Error::AlertReceived(alert)),
        "{err:?}"
    );
    assert_eq!(fx.cp.rejected_handshakes(), before + 1);
    assert!(fx.cp.requests().is_empty(), "no request may reach the API");
}

/// The rustls error somewhere in `err`'s source chain (hyper and tokio-rustls wrap it in io errors).
fn tls_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(tls) = e
            .downcast_ref::<io::Error>()
            .and_then(io::Error::get_ref)
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        current = e.source();
    }
    None
}

#[tokio::test]
async fn mtls_with_the_tenant_identity_succeeds_over_tls13_and_tls12() {
    let fx = fixture(Duration::from_secs(300)).await;
    assert!(fx.cp.url().starts_with("https://127.0.0.1:"));
    let identity = fx.identity("team-a");
    for tls12_only in [false, true] {
        let client = Client {
            addr: fx.cp.addr(),
            tls: client_config(&identity.ca_pem, Some(&identity), tls12_only),
        };
        let reply = client
            .call(Method::GET, "/v1/.well-known/jwks.json", Call::default())
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header(CONTENT_TYPE), Some("application/json"));
    }
    let requests = fx.cp.requests();
    assert_eq!(requests.len(), 2);
    let cert_der = CertificateDer::from_pem_slice(identity.cert_pem.as_bytes()).unwrap();
    let fingerprint = devcp::identity::hex(&<sha2::Sha256 as sha2::Digest>::digest(&cert_der));
    for r in requests {
        assert_eq!(
            (r.method, r.path.as_str()),
            (Method::GET, "/v1/.well-known/jwks.json")
        );
        assert_eq!(r.tenant_id.as_deref(), Some("team-a"));
        assert_eq!(r.client_cert_sha256_hex, fingerprint);
        assert!(!r.bearer);
    }
    assert_eq!(fx.cp.rejected_handshakes(), 0);
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused_at_the_handshake() {
    let fx = fixture(Duration::from_secs(300)).await;
    let other = TestCa::new("someone else's CA").unwrap();
    let stranger = other
        .client_identity(&ClientCert::new("team-a", TRUST_DOMAIN))
        .unwrap();
    // It trusts our server (same CA as root) but presents a certificate we did not issue.
    for tls12_only in [false, true] {
        let tls = client_config(&fx.cp_ca_pem(), Some(&stranger), tls12_only);
        assert_refused(&fx, &tls, AlertDescription::UnknownCA).await;
    }
}

impl Fixture {
    fn cp_ca_pem(&self) -> String {
        self.ca.ca_pem()
    }
}

#[tokio::test]
async fn no_client_certificate_is_refused_at_the_handshake() {
    let fx = fixture(Duration::from_secs(300)).await;
    let tls = client_config(&fx.cp_ca_pem(), None, false);
    assert_refused(&fx, &tls, AlertDescription::CertificateRequired).await;
}

#[tokio::test]
async fn expired_and_not_yet_valid_client_certificates_are_refused() {
    let fx = fixture(Duration::from_secs(300)).await;
    for spec in [
        ClientCert::new("team-a", TRUST_DOMAIN).expired(),
        ClientCert::new("team-a", TRUST_DOMAIN).not_yet_valid(),
    ] {
        let identity = fx.ca.client_identity(&spec).unwrap();
        let tls = client_config(&identity.ca_pem, Some(&identity), false);
        assert_refused(&fx, &tls, AlertDescription::CertificateExpired).await;
    }
}

#[tokio::test]
async fn issued_tokens_are_es256_jwts_that_verify_against_the_jwks() {
    let fx = fixture(Duration::from_secs(600)).await;
    let client = fx.client("team-a");
    assert_eq!(fx.cp.settings("team-a"), None);

    let reply = client
        .call(Method::POST, "/v1/auth/token", Call::default())
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["tokenType"], "Bearer");
    assert_eq!(reply.body["expiresIn"], 600);
    let token = reply.body["accessToken"].as_str().unwrap();
    // The tenant exists, empty, from its first authentication on.
    assert_eq!(fx.cp.settings("team-a"), Some((json!({}), "0".to_owned())));

    let jwks = client
        .call(Method::GET, "/v1/.well-known/jwks.json", Call::default())
        .await
        .body;
    let key = &jwks["keys"][0];
    assert_eq!(
        (key["kty"].as_str(), key["crv"].as_str()),
        (Some("EC"), Some("P-256"))
    );
    let claims = devcp::verify_es256(token, &jwks).unwrap();
    assert_eq!(claims["sub"], "team-a");
    assert_eq!(claims["aud"], devcp::AUDIENCE);
    assert_eq!(claims["iss"], devcp::ISSUER);
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        600
    );
    let now = jiff::Timestamp::now().as_second();
    assert!((claims["iat"].as_i64().unwrap() - now).abs() <= 5);
    assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()));

    // The header names the key; a tampered token does not verify.
    let header: Value = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::prelude::BASE64_URL_SAFE_NO_PAD,
            token.split('.').next().unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        header,
        json!({"alg": "ES256", "typ": "JWT", "kid": key["kid"]})
    );
    let mut parts: Vec<&str> = token.split('.').collect();
    let forged_claims = base64::Engine::encode(
        &base64::prelude::BASE64_URL_SAFE_NO_PAD,
        json!({"sub": "team-b", "aud": devcp::AUDIENCE, "exp": now + 600}).to_string(),
    );
    parts[1] = &forged_claims;
    assert!(devcp::verify_es256(&parts.join("."), &jwks).is_err());
    assert_eq!(fx.cp.verify_jwt(token).unwrap(), claims);

    // Workload tokens: the requested audience and lifetime, same key.
    let call = Call {
        bearer: Some(token),
        body: Some(json!({"audience": "vault.example.com", "ttlSeconds": 120})),
        ..Call::default()
    };
    let reply = client
        .call(Method::POST, "/v1/tenants/team-a/tokens", call)
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    let workload = devcp::verify_es256(reply.body["token"].as_str().unwrap(), &jwks).unwrap();
    assert_eq!(
        (workload["sub"].as_str(), workload["aud"].as_str()),
        (Some("team-a"), Some("vault.example.com"))
    );
    let exp = workload["exp"].as_i64().unwrap();
    assert_eq!(exp - workload["iat"].as_i64().unwrap(), 120);
    let expires_at: jiff::Timestamp = reply.body["expiresAt"].as_str().unwrap().parse().unwrap();
    assert_eq!(expires_at.as_second(), exp);
    // A workload token is not an access token.
    let workload_token = reply.body["token"].as_str().unwrap();
    client
        .get_tenant("team-a", workload_token)
        .await
        .assert_problem(StatusCode::UNAUTHORIZED);

    for bad in [
        json!({"audience": "", "ttlSeconds": 120}),
        json!({"audience": "x", "ttlSeconds": 59}),
    ] {
        let call = Call {
            bearer: Some(token),
            body: Some(bad),
            ..Call::default()
        };
        let reply = client
            .call(Method::POST, "/v1/tenants/team-a/tokens", call)
            .await;
        reply.assert_problem(StatusCode::BAD_REQUEST);
    }
}

#[tokio::test]
async fn bearer_missing_expired_or_revoked_is_401() {
    let fx = fixture(Duration::from_secs(60)).await;
    let client = fx.client("team-a");

    client
        .get_tenant("team-a", "")
        .await
        .assert_problem(StatusCode::UNAUTHORIZED);
    let reply = client
        .call(Method::GET, "/v1/tenants/team-a", Call::default())
        .await;
    reply.assert_problem(StatusCode::UNAUTHORIZED);
    client
        .get_tenant("team-a", "not.a.jwt")
        .await
        .assert_problem(StatusCode::UNAUTHORIZED);

    let token = client.token().await;
    assert_eq!(
        client.get_tenant("team-a", &token).await.status,
        StatusCode::OK
    );
    // The token lives 60 s: move the server's clock to its expiry instead of sleeping.
    fx.cp.advance_clock(Duration::from_secs(60));
    client
        .get_tenant("team-a", &token)
        .await
        .assert_problem(StatusCode::UNAUTHORIZED);

    let fx = fixture(Duration::from_secs(300)).await;
    let client = fx.client("team-a");
    let old = client.token().await;
    assert_eq!(
        client.get_tenant("team-a", &old).await.status,
        StatusCode::OK
    );
    fx.cp.revoke_tokens();
    let reply = client.get_tenant("team-a", &old).await;
    reply.assert_problem(StatusCode::UNAUTHORIZED);
    assert_eq!(reply.body["detail"], "the token has been revoked");
    let new = client.token().await;
    assert_eq!(
        client.get_tenant("team-a", &new).await.status,
        StatusCode::OK
    );

    let recorded: Vec<(bool, u16)> = fx
        .cp
        .requests()
        .iter()
        .map(|r| (r.bearer, r.status.as_u16()))
        .collect();
    assert_eq!(
        recorded,
        [
            (false, 200),
            (true, 200),
            (true, 401),
            (false, 200),
            (true, 200)
        ]
    );
}

#[tokio::test]
async fn another_tenants_path_is_403_and_another_tenants_token_is_401() {
    let fx = fixture(Duration::from_secs(300)).await;
    let team_a = fx.client("team-a");
    let team_b = fx.client("team-b");
    let token_a = team_a.token().await;
    let token_b = team_b.token().await;

    team_a
        .get_tenant("team-b", &token_a)
        .await
        .assert_problem(StatusCode::FORBIDDEN);
    // team-b's token presented with team-a's certificate.
    team_a
        .get_tenant("team-a", &token_b)
        .await
        .assert_problem(StatusCode::UNAUTHORIZED);
    assert_eq!(
        team_b.get_tenant("team-b", &token_b).await.status,
        StatusCode::OK
    );

    // A certificate from our CA that names no tenant authenticates TLS but nothing else.
    let nameless = fx
        .ca
        .client_identity(&ClientCert::new("Team_A", TRUST_DOMAIN))
        .unwrap();
    let client = Client {
        addr: fx.cp.addr(),
        tls: client_config(&nameless.ca_pem, Some(&nameless), false),
    };
    let reply = client
        .call(Method::POST, "/v1/auth/token", Call::default())
        .await;
    reply.assert_problem(StatusCode::FORBIDDEN);
    assert_eq!(fx.cp.requests().last().unwrap().tenant_id, None);
}

#[tokio::test]
async fn settings_revisions_follow_if_match() {
    let fx = fixture(Duration::from_secs(300)).await;
    let client = fx.client("team-a");
    let token = client.token().await;

    let reply = client.get_tenant("team-a", &token).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.body,
        json!({"id": "team-a", "settings": {}, "revision": "0"})
    );
    assert_eq!(reply.header(ETAG), Some("\"0\""));

    let reply = client.put_settings(&token, None, json!({"a": 1})).await;
    reply.assert_problem(StatusCode::PRECONDITION_REQUIRED);

    let reply = client
        .put_settings(&token, Some("\"0\""), json!({"a": 1}))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.body, json!({"revision": "1"}));
    assert_eq!(reply.header(ETAG), Some("\"1\""));

    // A stale revision, and an unquoted one, lose.
    client
        .put_settings(&token, Some("\"0\""), json!({"a": 2}))
        .await
        .assert_problem(StatusCode::PRECONDITION_FAILED);
    client
        .put_settings(&token, Some("1"), json!({"a": 2}))
        .await
        .assert_problem(StatusCode::PRECONDITION_FAILED);
    client
        .put_settings(&token, Some("\"1\""), json!([1]))
        .await
        .assert_problem(StatusCode::BAD_REQUEST);
    assert_eq!(
        fx.cp.settings("team-a"),
        Some((json!({"a": 1}), "1".to_owned()))
    );

    // Someone else changes the settings: our next write based on "1" must re-read first.
    fx.cp.set_settings("team-a", json!({"remote": true}));
    client
        .put_settings(&token, Some("\"1\""), json!({"a": 3}))
        .await
        .assert_problem(StatusCode::PRECONDITION_FAILED);
    let reply = client.get_tenant("team-a", &token).await;
    assert_eq!(reply.body["settings"], json!({"remote": true}));
    assert_eq!(reply.body["revision"], "2");
    let reply = client
        .put_settings(&token, Some("\"2\""), json!({"a": 3}))
        .await;
    assert_eq!(reply.body, json!({"revision": "3"}));

    let reply = client.heartbeat(&token).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["revision"], "3");
    let server_time: jiff::Timestamp = reply.body["serverTime"].as_str().unwrap().parse().unwrap();
    assert!((server_time.as_second() - jiff::Timestamp::now().as_second()).abs() <= 5);
    assert_eq!(
        fx.cp.heartbeats("team-a")[0]["credentials"],
        json!({"total": 3, "ready": 2})
    );

    let if_matches: Vec<Option<String>> = fx
        .cp
        .requests()
        .into_iter()
        .filter(|r| r.method == Method::PUT)
        .map(|r| r.if_match)
        .collect();
    assert_eq!(if_matches[0], None);
    assert_eq!(if_matches[1].as_deref(), Some("\"0\""));

    let call = Call {
        bearer: Some(&token),
        body: Some(json!({"server": "registry.example.com"})),
        ..Call::default()
    };
    let reply = client
        .call(
            Method::POST,
            "/v1/tenants/team-a/registry-credentials",
            call,
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(reply.body["server"], "registry.example.com");
    assert!(
        reply.body["username"].is_string()
            && reply.body["password"]
                .as_str()
                .is_some_and(|p| p.len() >= 32)
    );
    let call = Call {
        bearer: Some(&token),
        body: Some(json!({"server": "https://registry.example.com/v2"})),
        ..Call::default()
    };
    let reply = client
        .call(
            Method::POST,
            "/v1/tenants/team-a/registry-credentials",
            call,
        )
        .await;
    reply.assert_problem(StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn injected_faults_answer_429_with_retry_after_and_503() {
    let fx = fixture(Duration::from_secs(300)).await;
    let client = fx.client("team-a");
    let token = client.token().await;

    fx.cp.fail_next(
        FaultMatch::new(Method::POST, "/heartbeat"),
        Fault::Status {
            status: StatusCode::TOO_MANY_REQUESTS,
            retry_after: Some(7),
        },
        1,
    );
    fx.cp.fail_next(
        FaultMatch {
            method: Some(Method::GET),
            path_suffix: None,
        },
        Fault::Status {
            status: StatusCode::SERVICE_UNAVAILABLE,
            retry_after: None,
        },
        2,
    );
    // Faults match by method and path suffix only.
    assert!(!client.token().await.is_empty());

    let reply = client.heartbeat(&token).await;
    reply.assert_problem(StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.header(RETRY_AFTER), Some("7"));
    assert_eq!(client.heartbeat(&token).await.status, StatusCode::OK);

    for _ in 0..2 {
        let reply = client.get_tenant("team-a", &token).await;
        reply.assert_problem(StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reply.header(RETRY_AFTER), None);
    }
    assert_eq!(
        client.get_tenant("team-a", &token).await.status,
        StatusCode::OK
    );

    let statuses: Vec<u16> = fx.cp.requests().iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(statuses, [200, 200, 429, 200, 503, 503, 200]);
    fx.cp.clear_requests();
    assert!(fx.cp.requests().is_empty());
}

#[tokio::test]
async fn shutdown_drops_connections_and_a_new_start_on_the_same_port_serves() {
    let fx = fixture(Duration::from_secs(300)).await;
    let client = fx.client("team-a");
    let token = client.token().await;
    let addr = fx.cp.addr();

    // An idle keep-alive connection opened before the shutdown dies with it.
    let tls = tls_connect(addr, &client.tls).await.unwrap();
    let (mut idle, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let request = || {
        Request::get("/v1/.well-known/jwks.json")
            .header(HOST, "x")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    assert_eq!(
        idle.send_request(request()).await.unwrap().status(),
        StatusCode::OK
    );

    fx.cp.shutdown().await;
    let refused = TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
    tokio::time::timeout(Duration::from_secs(5), connection)
        .await
        .unwrap()
        .unwrap()
        .ok();
    assert!(idle.send_request(request()).await.is_err());

    // Back with the same state and key: the old token still works.
    fx.cp.restart().await.unwrap();
    assert_eq!(
        client.get_tenant("team-a", &token).await.status,
        StatusCode::OK
    );
    fx.cp.shutdown().await;
    fx.cp.shutdown().await;

    // A fresh control plane on the same port: new key, so the old token is refused.
    let fresh = start(&fx.ca, Duration::from_secs(300), addr).await;
    assert_eq!(fresh.addr(), addr);
    client
        .get_tenant("team-a", &token)
        .await
        .assert_problem(StatusCode::UNAUTHORIZED);
    let token = client.token().await;
    assert_eq!(
        client.get_tenant("team-a", &token).await.status,
        StatusCode::OK
    );
    fresh.shutdown().await;
}

#[test]
fn the_openapi_document_describes_exactly_the_served_routes() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/control-plane.openapi.yaml"
    );
    let doc: Value = serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1"))
    );
    let methods = [
        "get", "put", "post", "delete", "patch", "head", "options", "trace",
    ];
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            let item = item.as_object().unwrap();
            methods
                .iter()
                .filter(|m| item.contains_key(**m))
                .map(|m| (m.to_uppercase(), path.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    let served: BTreeSet<(String, String)> = devcp::ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(documented, served);

    // Both credentials the contract requires are declared, and bearer routes ask for both.
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["mutualTLS"]["type"], "mutualTLS");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    for (method, path) in &served {
        let op = &doc["paths"][path][method.to_lowercase()];
        // An operation's own requirement, else the document's.
        let security = op.get("security").unwrap_or(&doc["security"]);
        let mtls_only = path == "/v1/auth/token" || path.ends_with("jwks.json");
        let expected = if mtls_only {
            json!([{"mutualTLS": []}])
        } else {
            json!([{"mutualTLS": [], "bearer": []}])
        };
        assert_eq!(security, &expected, "{method} {path}");
        if !mtls_only {
            for status in ["401", "403", "429", "503"] {
                assert!(
                    op["responses"][status].is_object(),
                    "{method} {path} documents no {status}"
                );
            }
        }
    }
}

#[tokio::test]
async fn every_listed_route_is_served() {
    let fx = fixture(Duration::from_secs(300)).await;
    let client = fx.client("team-a");
    for (method, path) in devcp::ROUTES {
        let path = path.replace("{id}", "team-a");
        let reply = client
            .call(method.parse().unwrap(), &path, Call::default())
            .await;
        assert_ne!(reply.status, StatusCode::NOT_FOUND, "{method} {path}");
        assert_ne!(
            reply.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
    }
    let reply = client
        .call(Method::GET, "/v1/nothing", Call::default())
        .await;
    reply.assert_problem(StatusCode::NOT_FOUND);
}
