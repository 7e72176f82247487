//! The control-plane link against the development control plane, over real mutual TLS with
//! certificates generated here: first the client alone (handshakes, token lifecycle, retries,
//! If-Match), then the whole operator (API double + dev control plane): Tenant link, issued
//! Credentials, zero writes at steady state, certificate hot reload, control plane down.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bulkhead::api::credential::CredentialType;
use bulkhead::api::tenant::{ControlPlaneSpec, TenantSpec};
use bulkhead::api::{ConditionSet, Credential, Tenant};
use bulkhead::controller::Settings;
use bulkhead::controlplane::client::{ClientSettings, ControlPlaneClient, ControlPlaneError};
use bulkhead::controlplane::identity::{self, Identity, IdentityError};
use http::{Method, StatusCode};
use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use support::ApiDouble;
use support::devcp::{DevConfig, DevControlPlane, Fault, FaultMatch};
use support::operator::{
    NS, condition, credential, credential_reconciled, eventually, options, role, secret_value,
    start, tenant_condition, tenant_reconciled,
};
use support::pki::{self, ClientCert, TestCa};

const TENANT: &str = "team-a";
const TRUST_DOMAIN: &str = "platform.example";

fn fast() -> ClientSettings {
    ClientSettings {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
        max_attempts: 4,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(100),
        max_retry_after: Duration::from_secs(2),
    }
}

struct World {
    ca: TestCa,
    cp: DevControlPlane,
}

async fn world() -> World {
    let ca = TestCa::new("tenant CA").unwrap();
    let server = ca
        .server_cert(&["localhost"], &[IpAddr::V4(Ipv4Addr::LOCALHOST)])
        .unwrap();
    let cp = DevControlPlane::start(DevConfig {
        ca_pem: ca.ca_pem(),
        server_cert_pem: server.cert_pem,
        server_key_pem: server.key_pem,
        token_ttl: Duration::from_secs(600),
        bind: SocketAddr::from(([127, 0, 0, 1], 0)),
    })
    .await
    .unwrap();
    World { ca, cp }
}

fn data(id: &pki::Identity) -> BTreeMap<String, Vec<u8>> {
    [
        ("tls.crt", &id.cert_pem),
        ("tls.key", &id.key_pem),
        ("ca.crt", &id.ca_pem),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.as_bytes().to_vec()))
    .collect()
}

fn load(id: &pki::Identity) -> Result<Identity, IdentityError> {
    identity::load("bulkhead-identity", &data(id), Timestamp::now())
}

/// An identity built without the validity checks, to prove the server refuses it too.
fn unchecked(id: &pki::Identity) -> Identity {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(id.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    let summary = identity::summarize("x", &chain[0]).unwrap();
    Identity {
        roots: CertificateDer::pem_slice_iter(id.ca_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap(),
        key: PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).unwrap(),
        chain,
        summary,
    }
}

/// A valid identity for team-a from the tenant CA.
fn valid_identity(w: &World) -> Identity {
    load(
        &w.ca
            .client_identity(&ClientCert::new(TENANT, TRUST_DOMAIN))
            .unwrap(),
    )
    .unwrap()
}

fn client(w: &World, id: &Identity) -> ControlPlaneClient {
    ControlPlaneClient::new(id, &w.cp.url(), fast(), None).unwrap()
}

fn statuses(cp: &DevControlPlane) -> Vec<(Method, String, u16)> {
    cp.requests()
        .into_iter()
        .map(|r| (r.method, r.path, r.status.as_u16()))
        .collect()
}

// ---- the client alone ------------------------------------------------------------------------

#[tokio::test]
async fn happy_path_over_mutual_tls() {
    let w = world().await;
    let id = valid_identity(&w);
    let c = client(&w, &id);

    let record = c.tenant().await.unwrap();
    assert_eq!(record.id, TENANT);
    let revision = c
        .sync_settings(&json!({"tier": "gold"}), Some(&record.revision))
        .await
        .unwrap();
    assert_eq!(
        w.cp.settings(TENANT),
        Some((json!({"tier": "gold"}), revision.clone()))
    );
    let beat = c
        .heartbeat(bulkhead::api::tenant::CredentialCounts { total: 2, ready: 1 })
        .await
        .unwrap();
    assert_eq!(beat.revision, revision);

    let token = c
        .issue_token("spark-jobs", Duration::from_secs(3600))
        .await
        .unwrap();
    let claims = w.cp.verify_jwt(&token.token).unwrap();
    assert_eq!(claims["sub"], TENANT);
    assert_eq!(claims["aud"], "spark-jobs");
    assert!(token.expires_at > Timestamp::now());
    let registry = c
        .issue_registry_credentials("registry.example.com")
        .await
        .unwrap();
    assert_eq!(registry.server, "registry.example.com");
    assert!(!registry.password.is_empty());

    // One token for all of it: every call after the first carries it, over mTLS as team-a.
    let requests = w.cp.requests();
    assert_eq!(
        requests
            .iter()
            .filter(|r| r.path == "/v1/auth/token")
            .count(),
        1
    );
    assert!(
        requests
            .iter()
            .all(|r| r.tenant_id.as_deref() == Some(TENANT))
    );
    assert!(
        requests
            .iter()
            .filter(|r| r.path != "/v1/auth/token")
            .all(|r| r.bearer)
    );
    assert!(
        requests
            .iter()
            .all(|r| r.client_cert_sha256_hex == id.summary.fingerprint)
    );
}

#[tokio::test]
async fn a_server_from_another_ca_is_not_trusted() {
    let w = world().await;
    let other = TestCa::new("some other CA").unwrap();
    // Our certificate is fine, but we trust only `other`: the server's chain is unknown.
    let mut ours =
        w.ca.client_identity(&ClientCert::new(TENANT, TRUST_DOMAIN))
            .unwrap();
    ours.ca_pem = other.ca_pem();
    let err = client(&w, &load(&ours).unwrap())
        .tenant()
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "HandshakeFailed", "{err}");
    assert!(w.cp.requests().is_empty());
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused_by_the_server() {
    let w = world().await;
    let other = TestCa::new("some other CA").unwrap();
    let mut foreign = other
        .client_identity(&ClientCert::new(TENANT, TRUST_DOMAIN))
        .unwrap();
    foreign.ca_pem = w.ca.ca_pem();
    let err = client(&w, &load(&foreign).unwrap())
        .tenant()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ControlPlaneError::Handshake(_) | ControlPlaneError::Unreachable { .. }
        ),
        "{err}"
    );
    assert!(w.cp.rejected_handshakes() > 0);
    assert!(w.cp.requests().is_empty(), "no request got through");
}

#[tokio::test]
async fn expired_and_not_yet_valid_certificates_are_named_and_refused() {
    let w = world().await;
    let expired =
        w.ca.client_identity(&ClientCert::new(TENANT, TRUST_DOMAIN).expired())
            .unwrap();
    let future =
        w.ca.client_identity(&ClientCert::new(TENANT, TRUST_DOMAIN).not_yet_valid())
            .unwrap();
    assert_eq!(load(&expired).unwrap_err().reason(), "Expired");
    assert_eq!(load(&future).unwrap_err().reason(), "NotYetValid");
    // Used anyway, the server refuses both at the handshake.
    for id in [&expired, &future] {
        let err = client(&w, &unchecked(id)).tenant().await.unwrap_err();
        assert!(
            matches!(
                err,
                ControlPlaneError::Handshake(_) | ControlPlaneError::Unreachable { .. }
            ),
            "{err}"
        );
    }
    assert!(w.cp.requests().is_empty());
}

#[tokio::test]
async fn a_401_fetches_a_new_token_once_and_retries() {
    let w = world().await;
    let id = valid_identity(&w);
    let c = client(&w, &id);
    c.tenant().await.unwrap();
    w.cp.revoke_tokens();
    w.cp.clear_requests();
    c.tenant().await.unwrap();
    assert_eq!(
        statuses(&w.cp),
        [
            (Method::GET, "/v1/tenants/team-a".to_owned(), 401),
            (Method::POST, "/v1/auth/token".to_owned(), 200),
            (Method::GET, "/v1/tenants/team-a".to_owned(), 200),
        ]
    );
}

#[tokio::test]
async fn a_429_is_retried_after_the_time_it_asks_for_or_handed_back() {
    let w = world().await;
    let id = valid_identity(&w);
    let c = client(&w, &id);
    c.tenant().await.unwrap();
    let tenant_get = || FaultMatch::new(Method::GET, "/v1/tenants/team-a");

    w.cp.fail_next(
        tenant_get(),
        Fault::Status {
            status: StatusCode::TOO_MANY_REQUESTS,
            retry_after: Some(1),
        },
        1,
    );
    let started = Instant::now();
    c.tenant().await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 was honoured"
    );

    // Longer than the client may wait in a reconcile: handed back for a requeue.
    w.cp.fail_next(
        tenant_get(),
        Fault::Status {
            status: StatusCode::TOO_MANY_REQUESTS,
            retry_after: Some(120),
        },
        1,
    );
    let err = c.tenant().await.unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(120)), "{err}");
    assert_eq!(err.reason(), "RateLimited");
}

#[tokio::test]
async fn a_5xx_storm_is_retried_a_bounded_number_of_times() {
    let w = world().await;
    let id = valid_identity(&w);
    let c = client(&w, &id);
    c.tenant().await.unwrap();
    w.cp.clear_requests();
    w.cp.fail_next(
        FaultMatch::new(Method::GET, "/v1/tenants/team-a"),
        Fault::Status {
            status: StatusCode::SERVICE_UNAVAILABLE,
            retry_after: None,
        },
        // Exactly the attempts the client may make: a fifth attempt would succeed.
        4,
    );
    let err = c.tenant().await.unwrap_err();
    assert!(
        matches!(
            err,
            ControlPlaneError::Unavailable {
                status: 503,
                attempts: 4,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(w.cp.requests().len(), 4, "exactly max_attempts calls");

    // Two failures then success: the caller does not notice.
    w.cp.fail_next(
        FaultMatch::new(Method::GET, "/v1/tenants/team-a"),
        Fault::Status {
            status: StatusCode::BAD_GATEWAY,
            retry_after: None,
        },
        2,
    );
    w.cp.clear_requests();
    let codes: Vec<u16> = {
        c.tenant().await.unwrap();
        statuses(&w.cp).into_iter().map(|(_, _, s)| s).collect()
    };
    assert_eq!(codes, [502, 502, 200]);
}

#[tokio::test]
async fn a_412_rereads_the_revision_and_retries() {
    let w = world().await;
    let id = valid_identity(&w);
    let c = client(&w, &id);
    let first = c.tenant().await.unwrap().revision;
    // Someone else changes the settings meanwhile: our revision is stale.
    w.cp.set_settings(TENANT, json!({"tier": "silver"}));
    w.cp.clear_requests();
    let revision = c
        .sync_settings(&json!({"tier": "gold"}), Some(&first))
        .await
        .unwrap();
    assert_eq!(
        statuses(&w.cp),
        [
            (Method::PUT, "/v1/tenants/team-a/settings".to_owned(), 412),
            (Method::GET, "/v1/tenants/team-a".to_owned(), 200),
            (Method::PUT, "/v1/tenants/team-a/settings".to_owned(), 200),
        ]
    );
    assert_eq!(
        w.cp.settings(TENANT).unwrap(),
        (json!({"tier": "gold"}), revision)
    );
}

#[tokio::test]
async fn a_control_plane_that_is_down_is_reported_after_bounded_retries() {
    let w = world().await;
    let id = valid_identity(&w);
    let c = client(&w, &id);
    w.cp.shutdown().await;
    let err = c.tenant().await.unwrap_err();
    assert!(
        matches!(err, ControlPlaneError::Unreachable { attempts: 4, .. }),
        "{err}"
    );
    w.cp.restart().await.unwrap();
    c.tenant().await.unwrap();
}

// ---- the whole operator ----------------------------------------------------------------------

fn identity_secret(id: &pki::Identity) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some("bulkhead-identity".into()),
            namespace: Some(NS.into()),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            data(id)
                .into_iter()
                .map(|(k, v)| (k, ByteString(v)))
                .collect(),
        ),
        ..Secret::default()
    }
}

fn linked_tenant(settings: serde_json::Value) -> Tenant {
    let mut t = Tenant::new(
        "tenant",
        TenantSpec {
            control_plane: Some(ControlPlaneSpec {
                identity_secret_name: "bulkhead-identity".into(),
                endpoint: None,
                sync_interval: "5m".into(),
            }),
            settings: Some(settings),
            ..TenantSpec::default()
        },
    );
    t.metadata.namespace = Some(NS.into());
    t
}

/// A Credential the control plane issues: a token for `spark-jobs` or registry credentials.
fn issued(name: &str, type_: CredentialType) -> Credential {
    match type_ {
        CredentialType::ControlPlaneToken => {
            credential(name).control_plane_token("spark-jobs", "1h")
        }
        CredentialType::RegistryCredentials => {
            credential(name).registry_credentials("registry.example.com")
        }
        other => panic!("{other:?} is not issued by the control plane"),
    }
    .build()
}

/// The operator running against the API double with a linked Tenant (identity Secret naming
/// the dev control plane's endpoint) and these issued Credentials.
fn linked_operator(
    w: &World,
    settings_json: serde_json::Value,
    credentials: &[(&str, CredentialType)],
) -> (ApiDouble, pki::Identity, support::operator::Running) {
    let double = ApiDouble::new();
    double.set_role(role(&options()));
    let id =
        w.ca.client_identity(&ClientCert::new(TENANT, TRUST_DOMAIN).with_endpoint(&w.cp.url()))
            .unwrap();
    double.insert(&identity_secret(&id));
    double.insert(&linked_tenant(settings_json));
    for (name, type_) in credentials {
        double.insert(&issued(name, *type_));
    }
    let op = start(&double, "a", options(), settings());
    (double, id, op)
}

fn settings() -> Settings {
    Settings {
        control_plane: fast(),
        ..Settings::default()
    }
}

fn puts(cp: &DevControlPlane) -> usize {
    cp.requests()
        .iter()
        .filter(|r| r.method == Method::PUT)
        .count()
}

#[tokio::test]
async fn the_operator_links_the_tenant_issues_credentials_and_is_quiet_at_steady_state() {
    let w = world().await;
    let (double, _, op) = linked_operator(
        &w,
        json!({"tier": "gold"}),
        &[
            ("jobs", CredentialType::ControlPlaneToken),
            ("pull", CredentialType::RegistryCredentials),
        ],
    );

    let (status, reason, _) = eventually("tenant linked", || {
        tenant_condition(&double, "Ready").filter(|(s, ..)| s == "True")
    })
    .await;
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Linked"));
    let t: Tenant = double.get(NS, "tenant").unwrap();
    let st = t.status.unwrap();
    assert_eq!(st.tenant_id.as_deref(), Some(TENANT));
    assert_eq!(st.endpoint.as_deref(), Some(w.cp.url().as_str()));
    let (remote, revision) = w.cp.settings(TENANT).unwrap();
    assert_eq!(remote, json!({"tier": "gold"}));
    assert_eq!(st.settings_revision, Some(revision));
    assert!(st.identity.unwrap().fingerprint.len() == 64);
    for c in ["IdentityValid", "ControlPlaneConnected", "SettingsSynced"] {
        assert_eq!(tenant_condition(&double, c).unwrap().0, "True", "{c}");
    }

    let token = eventually("token Secret", || secret_value(&double, "jobs", "token")).await;
    let claims = w.cp.verify_jwt(&token).unwrap();
    assert_eq!(claims["aud"], "spark-jobs");
    assert!(secret_value(&double, "jobs", "expiresAt").is_some());
    let docker = eventually("registry Secret", || {
        secret_value(&double, "pull", ".dockerconfigjson")
    })
    .await;
    let doc: serde_json::Value = serde_json::from_str(&docker).unwrap();
    assert!(doc["auths"]["registry.example.com"]["auth"].is_string());
    let pull: Secret = double.get(NS, "pull").unwrap();
    assert_eq!(
        pull.type_.as_deref(),
        Some("kubernetes.io/dockerconfigjson")
    );

    // Steady state: a Credential change re-runs the Tenant reconcile, which pushes nothing
    // and writes no status (the heartbeat is not due yet).
    eventually("credentials counted", || {
        let t: Tenant = double.get(NS, "tenant")?;
        (t.status?.credentials?.ready == 2).then_some(())
    })
    .await;
    tenant_reconciled(&op, &double).await;
    let puts_before = puts(&w.cp);
    let requests_before = double.requests().len();
    let mut touched: Credential = double.get(NS, "jobs").unwrap();
    touched
        .metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert("team".into(), "a".into());
    double.insert(&touched);
    // The Credential's reconcile, then a Tenant reconcile after the change, have finished.
    credential_reconciled(&double, "jobs").await;
    tenant_reconciled(&op, &double).await;
    assert_eq!(
        puts(&w.cp),
        puts_before,
        "unchanged settings are not pushed again"
    );
    let writes: Vec<String> = double.requests()[requests_before..]
        .iter()
        .filter(|r| r.method != "GET" && r.resource == "tenants")
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(
        writes.is_empty(),
        "no Tenant writes at steady state: {writes:?}"
    );
    assert_eq!(
        w.cp.requests()
            .iter()
            .filter(|r| r.path.ends_with("/heartbeat"))
            .count(),
        1,
        "one heartbeat per syncInterval, not per reconcile"
    );
    op.stop().await;
}

#[tokio::test]
async fn a_rotated_certificate_is_used_without_a_restart() {
    let w = world().await;
    let (double, first, op) = linked_operator(
        &w,
        json!({}),
        &[("jobs", CredentialType::ControlPlaneToken)],
    );
    eventually("token", || secret_value(&double, "jobs", "token")).await;
    let old = load(&first).unwrap().summary.fingerprint;

    // cert-manager renews: same tenant, new key and certificate.
    let second =
        w.ca.client_identity(&ClientCert::new(TENANT, TRUST_DOMAIN).with_endpoint(&w.cp.url()))
            .unwrap();
    let new = load(&second).unwrap().summary.fingerprint;
    assert_ne!(old, new);
    double.insert(&identity_secret(&second));
    eventually("status shows the new certificate", || {
        let t: Tenant = double.get(NS, "tenant")?;
        (t.status?.identity?.fingerprint == new).then_some(())
    })
    .await;

    // The next request presents the new certificate: ask for a token refresh.
    w.cp.clear_requests();
    let mut c: Credential = double.get(NS, "jobs").unwrap();
    c.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert("bulkhead.dev/rotate-requested-at".into(), "now".into());
    double.insert(&c);
    eventually("a token issued with the new certificate", || {
        w.cp.requests()
            .iter()
            .find(|r| r.path.ends_with("/tokens"))
            .map(|r| r.client_cert_sha256_hex.clone())
    })
    .await;
    let used: Vec<String> =
        w.cp.requests()
            .iter()
            .map(|r| r.client_cert_sha256_hex.clone())
            .collect();
    assert!(used.iter().all(|f| *f == new), "{used:?}");
    assert!(!op.task.is_finished(), "no restart");
    op.stop().await;
}

#[tokio::test]
async fn a_control_plane_outage_is_reported_and_loses_nothing() {
    let w = world().await;
    let (double, _, op) = linked_operator(
        &w,
        json!({"tier": "gold"}),
        &[("jobs", CredentialType::ControlPlaneToken)],
    );
    let token = eventually("token", || secret_value(&double, "jobs", "token")).await;
    let revision = Some(
        eventually("settings synced", || {
            let t: Tenant = double.get(NS, "tenant")?;
            t.status?.settings_revision
        })
        .await,
    );

    w.cp.shutdown().await;
    // A settings change needs the control plane, which is gone.
    let mut t: Tenant = double.get(NS, "tenant").unwrap();
    t.spec.settings = Some(json!({"tier": "platinum"}));
    t.metadata.generation = Some(t.metadata.generation.unwrap_or(1) + 1);
    double.insert(&t);
    let (status, reason, message) = eventually("disconnected", || {
        tenant_condition(&double, "ControlPlaneConnected").filter(|(s, ..)| s == "False")
    })
    .await;
    assert_eq!(status, "False");
    assert_eq!(reason, "Unreachable", "{message}");
    assert!(message.contains(&w.cp.url()), "{message}");
    assert_eq!(
        tenant_condition(&double, "Ready").unwrap().1,
        "ControlPlaneUnavailable"
    );
    // Nothing local is lost: the token stays, the last synced revision stays.
    assert_eq!(secret_value(&double, "jobs", "token"), Some(token));
    let t: Tenant = double.get(NS, "tenant").unwrap();
    assert_eq!(t.status.unwrap().settings_revision, revision);

    // Back again: the change is pushed.
    w.cp.restart().await.unwrap();
    eventually("settings pushed after the outage", || {
        w.cp.settings(TENANT)
            .filter(|(v, _)| *v == json!({"tier": "platinum"}))
    })
    .await;
    op.stop().await;
}

#[tokio::test]
async fn a_tenant_without_a_usable_identity_says_what_is_wrong() {
    let w = world().await;
    let double = ApiDouble::new();
    double.set_role(role(&options()));
    double.insert(&linked_tenant(json!({})));
    double.insert(&issued("jobs", CredentialType::ControlPlaneToken));
    let op = start(&double, "a", options(), settings());
    let (_, reason, message) = eventually("missing identity", || {
        tenant_condition(&double, "IdentityValid").filter(|(s, ..)| s == "False")
    })
    .await;
    assert_eq!(reason, "SecretNotFound");
    assert!(message.contains("bulkhead-identity"), "{message}");
    let c = eventually("credential waits for the link", || {
        let c: Credential = double.get(NS, "jobs")?;
        let ready = c.status?.conditions.find("Ready")?.clone();
        (ready.reason == "ControlPlaneNotLinked").then_some(ready)
    })
    .await;
    assert_eq!(c.status, "False");
    assert!(double.get::<Secret>(NS, "jobs").is_none());

    // An expired certificate arrives: the condition names it.
    let expired =
        w.ca.client_identity(&ClientCert::new(TENANT, TRUST_DOMAIN).expired())
            .unwrap();
    double.insert(&identity_secret(&expired));
    let (_, reason, message) = eventually("expired identity", || {
        tenant_condition(&double, "IdentityValid").filter(|(_, r, _)| r == "Expired")
    })
    .await;
    assert_eq!(reason, "Expired");
    assert!(message.contains("renew"), "{message}");
    assert!(
        w.cp.requests().is_empty(),
        "nothing was sent with an unusable identity"
    );

    // A valid identity arrives: the waiting Credential is issued at once (its own requeue is
    // a minute away), because the new link triggers it.
    let valid =
        w.ca.client_identity(&ClientCert::new(TENANT, TRUST_DOMAIN).with_endpoint(&w.cp.url()))
            .unwrap();
    double.insert(&identity_secret(&valid));
    let token = eventually("token issued once linked", || {
        secret_value(&double, "jobs", "token")
    })
    .await;
    assert!(w.cp.verify_jwt(&token).is_ok());
    op.stop().await;
}

#[tokio::test]
async fn an_identity_near_expiry_is_warned_about() {
    let w = world().await;
    let (double, _, op) = linked_operator(&w, json!({}), &[]);
    let (_, reason, _) = eventually("valid identity", || {
        tenant_condition(&double, "IdentityValid").filter(|(s, ..)| s == "True")
    })
    .await;
    assert_eq!(reason, "Valid");

    // Renewed by someone who forgot: 5 minutes left of a 65-minute certificate.
    let short =
        w.ca.client_identity(
            &ClientCert::new(TENANT, TRUST_DOMAIN)
                .with_endpoint(&w.cp.url())
                .valid_for(Duration::from_secs(300)),
        )
        .unwrap();
    double.insert(&identity_secret(&short));
    let (status, _, message) = eventually("expiring soon", || {
        tenant_condition(&double, "IdentityValid").filter(|(_, r, _)| r == "ExpiringSoon")
    })
    .await;
    assert_eq!(status, "True", "still usable");
    assert!(message.contains("renew"), "{message}");
    let warning = eventually("a Warning Event", || {
        double
            .list_json("events.k8s.io", "events", NS)
            .into_iter()
            .find(|e| e["reason"] == "ExpiringSoon")
    })
    .await;
    assert_eq!(warning["type"], "Warning");
    let not_after = load(&short).unwrap().summary.not_after.as_second();
    let metrics = op.metrics.encode();
    assert!(
        metrics.contains(&format!(
            "bulkhead_identity_expiry_timestamp_seconds {not_after}"
        )),
        "{metrics}"
    );
    op.stop().await;
}

#[tokio::test]
async fn nothing_is_issued_once_the_tenant_is_gone() {
    let w = world().await;
    let (double, _, op) = linked_operator(
        &w,
        json!({}),
        &[("jobs", CredentialType::ControlPlaneToken)],
    );
    let token = eventually("token", || secret_value(&double, "jobs", "token")).await;
    double
        .delete_json("bulkhead.dev", "tenants", NS, "tenant")
        .unwrap();
    // The proof the operator's cache has dropped the Tenant: a Tenant created after the
    // deletion, on the same watch, has been reconciled (a misnamed one gets a status saying so).
    let mut marker = Tenant::new("marker", TenantSpec::default());
    marker.metadata.namespace = Some(NS.into());
    double.insert(&marker);
    eventually("the Tenant created after the deletion reconciled", || {
        let t: Tenant = double.get(NS, "marker")?;
        t.status.map(|_| ())
    })
    .await;
    w.cp.clear_requests();
    let mut c: Credential = double.get(NS, "jobs").unwrap();
    c.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert("bulkhead.dev/rotate-requested-at".into(), "after".into());
    double.insert(&c);
    eventually("waits for a linked Tenant", || {
        let c: Credential = double.get(NS, "jobs")?;
        let ready = c.status?.conditions.find("Ready")?.clone();
        (ready.reason == "ControlPlaneNotLinked").then_some(())
    })
    .await;
    assert!(
        w.cp.requests().iter().all(|r| !r.path.ends_with("/tokens")),
        "{:?}",
        w.cp.requests()
    );
    assert_eq!(
        secret_value(&double, "jobs", "token"),
        Some(token),
        "the issued value stays"
    );
    op.stop().await;
}

/// Token requests to the control plane so far.
fn token_requests(cp: &DevControlPlane) -> usize {
    cp.requests()
        .iter()
        .filter(|r| r.method == Method::POST && r.path.ends_with("/tokens"))
        .count()
}

/// Status writes of one Credential so far.
fn status_writes(double: &ApiDouble, name: &str) -> usize {
    double
        .requests()
        .iter()
        .filter(|r| r.verb == "patch" && r.path.ends_with(&format!("/credentials/{name}/status")))
        .count()
}

/// A persistent fault on the token call, watched for `window`: the requests made must fit the
/// per-object backoff schedule (1 s doubling) times the client's attempts per call, however the
/// answer's text changes from one attempt to the next.
async fn requests_under_a_persistent_fault(fault: Fault) -> (usize, usize, String) {
    let w = world().await;
    w.cp.fail_next(
        FaultMatch::new(Method::POST, "/v1/tenants/team-a/tokens"),
        fault,
        100_000,
    );
    let (double, _, op) = linked_operator(
        &w,
        json!({}),
        &[("jobs", CredentialType::ControlPlaneToken)],
    );
    let (_, reason, _) = eventually("the failure is reported", || {
        condition(&double, "jobs", "Ready").filter(|(s, ..)| s == "False")
    })
    .await;
    let (before_requests, before_writes) = (token_requests(&w.cp), status_writes(&double, "jobs"));
    let before_reconciles = op.reconciles("credential");
    // A rate, so a window of wall time: reconciles start at about 0, 1, 3 and 7 s after the
    // first failure.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let requests = token_requests(&w.cp) - before_requests;
    let writes = status_writes(&double, "jobs") - before_writes;
    // The bounds below mean something only if the window saw the retries.
    assert!(
        op.reconciles("credential") > before_reconciles && requests > 0,
        "no retry within the window: the operator stalled"
    );
    op.stop().await;
    (requests, writes, reason)
}

#[tokio::test]
async fn a_5xx_with_a_changing_detail_is_retried_on_the_backoff_schedule_only() {
    let (requests, writes, _) = requests_under_a_persistent_fault(Fault::Changing {
        status: StatusCode::SERVICE_UNAVAILABLE,
    })
    .await;
    // Within 6 s of the first failure: reconciles at ~1 s and ~3 s (the one at ~7 s may just
    // start), 4 attempts each. Without the bound this was hundreds.
    assert!(requests <= 3 * 4, "{requests} token requests in 6 s");
    assert!(writes <= 3, "{writes} status writes in 6 s");
}

#[tokio::test]
async fn a_429_with_a_date_retry_after_is_retried_on_the_backoff_schedule_only() {
    // Longer than the client waits within a call: each answer is handed back and requeued
    // at the time it names (3 to 4 s ahead), so about two calls fit in 6 s.
    let (requests, writes, _) =
        requests_under_a_persistent_fault(Fault::RetryAtDate { seconds: 4 }).await;
    assert!(requests <= 3, "{requests} token requests in 6 s");
    assert!(writes <= 3, "{writes} status writes in 6 s");
}
