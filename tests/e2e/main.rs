//! End-to-end against a real kube-apiserver + etcd (+ kube-controller-manager for garbage
//! collection), started by `support/cluster.rs` from the binaries named by `BULKHEAD_E2E_*`.
//!
//! The CRD bundle is applied with `kubectl apply --server-side`, the chart rendered by the real
//! `helm` and applied into a team namespace; the operator runs as a local process with a token
//! of the chart's ServiceAccount, so it has exactly the chart's Role, and the API server's audit
//! log shows every request it made. Without a control plane (`KUBEBUILDER_ASSETS`, or the
//! `BULKHEAD_E2E_*` binaries) every test is compiled as ignored with the reason (`build.rs`).
//! Each test starts its own control plane, one at a time (`Cluster::start` takes a lock).
//!
//! Scenarios live in modules by subject; this file holds the first ones and the shared helpers
//! (private items here are visible to the modules: `use super::*`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../support/cluster.rs"]
mod cluster;

mod as_users_run_it;
mod bad_input;
mod chaos;
mod data_safety;
mod demo;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use bulkhead::api::credential::{Alphabet, RestartKind};
use bulkhead::api::{ConditionSet, Credential, Tenant};
use cluster::{
    AuditLog, Binaries, Cluster, Operator, OperatorOptions, Release, credential, eventually,
    random_credential, repo,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

const ROTATED_AT: &str = "bulkhead.dev/rotated-at";
const ROTATE_REQUESTED_AT: &str = "bulkhead.dev/rotate-requested-at";
const WAIT: Duration = Duration::from_secs(30);

// ---- helpers -----------------------------------------------------------------------------------

async fn create<K>(client: &Client, ns: &str, object: &K) -> K
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), object)
        .await
        .unwrap_or_else(|e| panic!("create {}: {e}", object.name_any()))
}

async fn secret(client: &Client, ns: &str, name: &str) -> Option<Secret> {
    Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .unwrap()
}

fn data(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(key)
        .map(|b| String::from_utf8(b.0.clone()).unwrap())
}

fn annotation(secret: &Secret, key: &str) -> Option<String> {
    secret.annotations().get(key).cloned()
}

/// Wait for the Secret to exist with a `value`.
async fn wait_value(client: &Client, ns: &str, name: &str, timeout: Duration) -> Secret {
    eventually(
        &format!("Secret {ns}/{name} with a value"),
        timeout,
        || async {
            secret(client, ns, name)
                .await
                .filter(|s| data(s, "value").is_some())
        },
    )
    .await
}

async fn get_credential(client: &Client, ns: &str, name: &str) -> Credential {
    Api::<Credential>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .unwrap()
}

/// (status, reason, message) of a Credential condition.
async fn condition(
    client: &Client,
    ns: &str,
    name: &str,
    type_: &str,
) -> Option<(String, String, String)> {
    let c = get_credential(client, ns, name).await;
    let cond = c.status?.conditions.find(type_)?.clone();
    Some((cond.status, cond.reason, cond.message))
}

async fn wait_condition(
    client: &Client,
    ns: &str,
    name: &str,
    type_: &str,
    status: &str,
) -> (String, String, String) {
    eventually(&format!("{name}: {type_}={status}"), WAIT, || async {
        condition(client, ns, name, type_)
            .await
            .filter(|c| c.0 == status)
    })
    .await
}

/// A process of `release` started at `since` has read the Lease and gone on to watch it: it has
/// decided whether to lead. (The leader never reads the Lease: a renewal is one guarded patch.)
async fn standing_by(cluster: &Cluster, release: &Release, since: jiff::Timestamp) {
    let user = release.user();
    let read = cluster
        .wait_audit("the new process's read of the Lease", WAIT, |e| {
            e.user.username == user
                && e.resource() == "leases"
                && e.verb == "get"
                && e.request_received_timestamp >= since
        })
        .await;
    cluster
        .wait_audit("the new process's watch of the Lease", WAIT, |e| {
            e.user.username == user
                && e.resource() == "leases"
                && e.verb == "watch"
                && e.request_received_timestamp >= read.request_received_timestamp
        })
        .await;
}

async fn request_rotation(client: &Client, ns: &str, name: &str, stamp: &str) {
    let patch = json!({"metadata": {"annotations": {ROTATE_REQUESTED_AT: stamp}}});
    Api::<Credential>::namespaced(client.clone(), ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

async fn lease_holder(client: &Client, ns: &str) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), ns)
        .get_opt("bulkhead")
        .await
        .unwrap()?
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

fn deployment(ns: &str, name: &str) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]}
            }
        }
    }))
    .unwrap()
}

async fn template_annotations(client: &Client, ns: &str, name: &str) -> BTreeMap<String, String> {
    let d = Api::<Deployment>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .unwrap();
    d.spec
        .template
        .metadata
        .and_then(|m| m.annotations)
        .unwrap_or_default()
}

/// Install CRDs, the chart into `ns`, and start one operator process for it.
fn release_and_operator(
    cluster: &Cluster,
    ns: &str,
    set: &[&str],
    options: &OperatorOptions,
) -> (Release, Operator) {
    let release = cluster.install_release(ns, set);
    let kubeconfig = cluster.service_account_kubeconfig(&release);
    let mut operator = Operator::start(cluster, &kubeconfig, options);
    operator.wait_ready(Duration::from_secs(60));
    (release, operator)
}

/// Every request the ServiceAccount made stays in its namespace (or is discovery or a
/// self-review, SPEC §2), none lists or watches Secrets, and the Role refused nothing but
/// patches of the Deployments named in `refused_restarts` (restart targets the chart does not
/// list: the operator learns it from the 403 and reports it) — and those not in a loop.
fn assert_confined(audit: &AuditLog, release: &Release, refused_restarts: &[&str]) {
    let user = release.user();
    let requests: Vec<_> = audit.by_user(&user).collect();
    assert!(
        requests.len() > 10,
        "the audit log has {} requests by {user}: is the audit user right?",
        requests.len()
    );
    let outside: Vec<String> = requests
        .iter()
        .filter(|e| !e.is_within(&release.namespace) && !e.is_discovery_or_self_review())
        .map(|e| e.describe())
        .collect();
    assert!(
        outside.is_empty(),
        "{user} made requests outside namespace {}: {outside:#?}",
        release.namespace
    );
    // The one Secret list/watch is pinned to the identity Secret's name (and the real API
    // server authorizes it against the Role's resourceNames): no enumeration.
    let pinned = |e: &&cluster::AuditEvent| {
        e.request_uri
            .contains("fieldSelector=metadata.name%3Dbulkhead-identity")
    };
    let enumerations: Vec<String> = requests
        .iter()
        .filter(|e| e.resource() == "secrets" && matches!(e.verb.as_str(), "list" | "watch"))
        .filter(|e| !pinned(e))
        .map(|e| e.describe())
        .collect();
    assert!(
        enumerations.is_empty(),
        "{user} listed or watched Secrets beyond the identity Secret in default mode: {enumerations:#?}"
    );
    assert!(
        requests.iter().any(|e| e.resource() == "secrets"
            && e.verb == "watch"
            && pinned(e)
            && e.code() == 200),
        "{user} watches the identity Secret by name, allowed by the Role"
    );
    let refused: Vec<String> = requests
        .iter()
        .filter(|e| e.code() == 403)
        .filter(|e| {
            !(e.verb == "patch"
                && e.resource() == "deployments"
                && refused_restarts.contains(&e.name()))
        })
        .map(|e| e.describe())
        .collect();
    assert!(
        refused.is_empty(),
        "the chart's Role refused requests the operator made: {refused:#?}"
    );
    let restarts_refused = requests.iter().filter(|e| e.code() == 403).count();
    assert!(
        restarts_refused <= 3 * refused_restarts.len(),
        "{restarts_refused} refused restarts: a 403 loop"
    );
}

// ---- scenarios ---------------------------------------------------------------------------------

/// One release in one namespace, with nothing but the chart's Role: Tenant, Random and KeySet
/// Credentials, manual rotation, a permitted and a forbidden restart target, a foreign Secret,
/// Retain and Delete, `hack/verify-rbac.sh`, and the audit log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(bulkhead_e2e),
    ignore = "needs a control plane: set KUBEBUILDER_ASSETS (see README, Testing)"
)]
async fn one_release_manages_credentials_with_only_its_role() {
    let binaries = Binaries::from_env();
    let cluster = Cluster::start(binaries);
    // CRDs first: the garbage collector discovers a new resource ~30 s late.
    cluster.install_crds();
    let crds_installed = Instant::now();
    let ns = "team-a";
    let admin = cluster.admin_client().await;
    let mut options = OperatorOptions::new(ns, "op-a");
    options.restart_targets = vec!["Deployment/api".into()];
    let (release, mut operator) = release_and_operator(
        &cluster,
        ns,
        &[
            "rbac.restartTargets[0].kind=Deployment",
            "rbac.restartTargets[0].name=api",
        ],
        &options,
    );
    operator.wait_leader(WAIT);

    create(&admin, ns, &deployment(ns, "api")).await;
    create(&admin, ns, &deployment(ns, "worker")).await;
    let theirs: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "theirs", "namespace": ns},
        "stringData": {"value": "not-bulkheads"}
    }))
    .unwrap();
    let theirs = create(&admin, ns, &theirs).await;

    let tenant: Tenant = serde_json::from_value(json!({
        "apiVersion": "bulkhead.dev/v1alpha1", "kind": "Tenant",
        "metadata": {"name": "tenant", "namespace": ns},
        "spec": {"displayName": "Team A", "contacts": ["team-a@example.com"]}
    }))
    .unwrap();
    create(&admin, ns, &tenant).await;
    let db = credential(ns, "db")
        .random(40)
        .alphabet(Alphabet::Hex)
        .secret_name("db-password")
        .restart(RestartKind::Deployment, "api")
        .build();
    create(&admin, ns, &db).await;
    let keys = credential(ns, "keys").key_set(3).retain().build();
    create(&admin, ns, &keys).await;
    let batch = credential(ns, "batch")
        .restart(RestartKind::Deployment, "worker")
        .build();
    create(&admin, ns, &batch).await;
    create(
        &admin,
        ns,
        &credential(ns, "clash").secret_name("theirs").build(),
    )
    .await;
    create(&admin, ns, &random_credential(ns, "scratch")).await;

    // Random: the value, labels, owner, and real server-side apply ownership.
    let s = wait_value(&admin, ns, "db-password", WAIT).await;
    let value = data(&s, "value").unwrap();
    assert_eq!(value.len(), 40);
    assert!(value.chars().all(|c| c.is_ascii_hexdigit()), "{value}");
    assert_eq!(s.labels()["app.kubernetes.io/managed-by"], "bulkhead");
    assert_eq!(s.labels()["bulkhead.dev/credential"], "db");
    let owner = &s.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("Credential", "db", Some(true))
    );
    let managers: Vec<String> = s
        .managed_fields()
        .iter()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(managers.contains(&"bulkhead".to_owned()), "{managers:?}");
    let first_rotated_at = annotation(&s, ROTATED_AT).expect("the journal annotation");
    let (_, reason, _) = wait_condition(&admin, ns, "db", "Ready", "True").await;
    assert_eq!(reason, "Ready");
    let c = get_credential(&admin, ns, "db").await;
    let status = c.status.clone().unwrap();
    assert_eq!(status.secret_name.as_deref(), Some("db-password"));
    assert_eq!(status.observed_generation, c.metadata.generation);
    assert!(status.key_id.is_some() && status.last_rotation_time.is_some());

    // KeySet with Retain: staged key 0 and primary key 1, 32 random bytes each, no owner.
    let ks = eventually("keys Secret", WAIT, || secret(&admin, ns, "keys")).await;
    let ks_data = ks.data.clone().unwrap();
    assert_eq!(ks_data.keys().cloned().collect::<Vec<_>>(), ["0", "1"]);
    for key in ks_data.values() {
        let text = String::from_utf8(key.0.clone()).unwrap();
        assert_eq!(text.len(), 44, "32 bytes, URL-safe base64: {text}");
    }
    assert!(
        ks.owner_references().is_empty(),
        "Retain: no ownerReference"
    );
    wait_condition(&admin, ns, "keys", "Ready", "True").await;

    // A foreign Secret is never overwritten: Conflict, and the Secret is byte-for-byte the same.
    let (_, reason, message) = wait_condition(&admin, ns, "clash", "Conflict", "True").await;
    assert_eq!(reason, "SecretNotManaged");
    assert!(message.contains("adopt: true"), "{message}");
    assert_eq!(
        condition(&admin, ns, "clash", "Ready").await.unwrap().0,
        "False"
    );

    // The Tenant counts the Credentials; every one but the conflicting one is Ready.
    let counts = eventually("tenant counts", WAIT, || async {
        let t = Api::<Tenant>::namespaced(admin.clone(), ns)
            .get("tenant")
            .await
            .ok()?;
        let status = t.status?;
        let counts = status.credentials?;
        (counts.total == 5 && counts.ready == 4).then_some((status, t.metadata.generation))
    })
    .await;
    let (tenant_status, generation) = counts;
    let ready = tenant_status
        .conditions
        .find("Ready")
        .expect("Tenant Ready");
    assert_eq!(
        (ready.status.as_str(), ready.observed_generation),
        ("True", generation)
    );
    assert_eq!(tenant_status.observed_generation, generation);
    assert_eq!(ready.reason, "LocalOnly");
    assert!(
        ready.message.contains("4 of 5 credentials ready"),
        "{}",
        ready.message
    );

    // Manual rotation: a new value, the old one kept, the permitted Deployment restarted.
    request_rotation(&admin, ns, "db", "2026-11-22T12:00:00Z").await;
    let rotated = eventually("db rotated", WAIT, || async {
        secret(&admin, ns, "db-password")
            .await
            .filter(|s| data(s, "value").is_some_and(|v| v != value))
    })
    .await;
    assert_eq!(
        data(&rotated, "value.previous").as_deref(),
        Some(value.as_str())
    );
    let second_rotated_at = annotation(&rotated, ROTATED_AT).unwrap();
    assert_ne!(second_rotated_at, first_rotated_at);
    eventually("api restarted", WAIT, || async {
        template_annotations(&admin, ns, "api")
            .await
            .get("bulkhead.dev/restarted-at")
            .cloned()
    })
    .await;
    // Rotated is True from creation (reason Created): wait for the rotation's own reason, which
    // the status write after the Secret's brings (a poll between the two saw Created).
    eventually("db: Rotated=True, reason Rotated", WAIT, || async {
        condition(&admin, ns, "db", "Rotated")
            .await
            .filter(|c| c.0 == "True" && c.1 == "Rotated")
    })
    .await;
    assert_eq!(
        condition(&admin, ns, "db", "RestartNotPermitted")
            .await
            .unwrap()
            .0,
        "False"
    );

    // A restart target the chart does not list: a condition naming the value (from creation,
    // see data_safety), and the rotation itself happens.
    let batch_value = data(&wait_value(&admin, ns, "batch", WAIT).await, "value").unwrap();
    request_rotation(&admin, ns, "batch", "2026-11-22T12:00:00Z").await;
    eventually("batch rotated", WAIT, || async {
        secret(&admin, ns, "batch")
            .await
            .filter(|b| data(b, "value.previous").as_deref() == Some(batch_value.as_str()))
    })
    .await;
    let (_, reason, message) =
        wait_condition(&admin, ns, "batch", "RestartNotPermitted", "True").await;
    assert_eq!(reason, "Forbidden");
    assert!(
        message.contains("rbac.restartTargets") && message.contains("Deployment/worker"),
        "{message}"
    );
    assert!(
        !template_annotations(&admin, ns, "worker")
            .await
            .contains_key("bulkhead.dev/restarted-at"),
        "the non-permitted Deployment was not touched"
    );

    // Settled: the one request rotated once, not again in a reconcile after it.
    cluster
        .wait_reconciled(&admin, &release.user(), ns, "db", "db-password")
        .await;
    let settled = secret(&admin, ns, "db-password").await.unwrap();
    assert_eq!(data(&settled, "value"), data(&rotated, "value"));
    assert_eq!(
        annotation(&settled, ROTATED_AT).as_deref(),
        Some(second_rotated_at.as_str())
    );
    let rotations = operator.metrics_text();
    assert!(
        rotations.contains("bulkhead_credential_rotations_total{type=\"Random\"} 2"),
        "{rotations}"
    );

    // Events a user can see, from this instance.
    let events = Api::<Event>::namespaced(admin.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    let reasons: Vec<(String, String)> = events
        .items
        .iter()
        .filter(|e| e.reporting_controller.as_deref() == Some("bulkhead.dev/operator"))
        .map(|e| {
            let regarding = e
                .regarding
                .as_ref()
                .and_then(|r| r.name.clone())
                .unwrap_or_default();
            (regarding, e.reason.clone().unwrap_or_default())
        })
        .collect();
    for expected in [
        ("db", "Created"),
        ("db", "Rotated"),
        ("keys", "Created"),
        ("clash", "SecretNotManaged"),
    ] {
        assert!(
            reasons
                .iter()
                .any(|(n, r)| n == expected.0 && r == expected.1),
            "no Event {expected:?} in {reasons:?}"
        );
    }

    // Retain and Delete. Deleting both: the Delete Secret is garbage-collected through its
    // ownerReference (the controller manager), the Retain one stays.
    let credentials = Api::<Credential>::namespaced(admin.clone(), ns);
    wait_value(&admin, ns, "scratch", WAIT).await;
    credentials
        .delete("keys", &DeleteParams::default())
        .await
        .unwrap();
    credentials
        .delete("scratch", &DeleteParams::default())
        .await
        .unwrap();
    eventually("Credentials gone", WAIT, || async {
        (credentials.get_opt("keys").await.unwrap().is_none()
            && credentials.get_opt("scratch").await.unwrap().is_none())
        .then_some(())
    })
    .await;
    if cluster.has_controller_manager() {
        let age = crds_installed.elapsed();
        eventually(
            &format!(
                "garbage collection of Secret scratch (CRDs {}s old)",
                age.as_secs()
            ),
            Duration::from_secs(90),
            || async { secret(&admin, ns, "scratch").await.is_none().then_some(()) },
        )
        .await;
    } else {
        println!("garbage collection not checked: set BULKHEAD_E2E_KUBE_CONTROLLER_MANAGER");
    }
    let kept = secret(&admin, ns, "keys")
        .await
        .expect("Retain keeps the Secret");
    assert_eq!(kept.data, ks.data, "with its keys");

    // The foreign Secret: unchanged, and no write of the operator ever reached it.
    let now = secret(&admin, ns, "theirs").await.unwrap();
    assert_eq!(
        now.metadata.resource_version,
        theirs.metadata.resource_version
    );
    assert_eq!(now.data, theirs.data);

    // hack/verify-rbac.sh against the real authorizer.
    let tools = cluster::tool("kubectl").parent().unwrap().to_owned();
    let path = format!(
        "{}:{}",
        tools.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = cluster::run(
        Command::new(repo().join("hack/verify-rbac.sh"))
            .args([ns, "bulkhead"])
            .env("KUBECONFIG", cluster.admin_kubeconfig())
            .env("PATH", path),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("every right as expected"),
        "verify-rbac.sh failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("restart targets: Deployment/api"),
        "{stdout}"
    );

    // SIGTERM: exits cleanly and releases the Lease.
    operator.process.signal("TERM");
    let status = operator
        .process
        .wait_exit(Duration::from_secs(20))
        .expect("exits on SIGTERM");
    assert!(status.success(), "{status}");
    assert_eq!(
        lease_holder(&admin, ns).await,
        None,
        "the Lease is released"
    );

    let audit = cluster.audit();
    assert_confined(&audit, &release, &["worker"]);
    let user = release.user();
    let foreign_writes: Vec<String> = audit
        .by_user(&user)
        .filter(|e| e.resource() == "secrets" && e.name() == "theirs" && e.is_write())
        .map(|e| e.describe())
        .collect();
    assert!(
        foreign_writes.is_empty(),
        "writes to the foreign Secret: {foreign_writes:?}"
    );
}

/// Two operator processes for one release: one leads, one stands by. SIGTERM the leader: the
/// standby reconciles within seconds; SIGKILL it: the next takes over within the lease
/// duration. No Credential is rotated twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(bulkhead_e2e),
    ignore = "needs a control plane: set KUBEBUILDER_ASSETS (see README, Testing)"
)]
async fn a_standby_takes_over_without_rotating_twice() {
    let binaries = Binaries::from_env();
    let cluster = Cluster::start(binaries.without_controller_manager());
    cluster.install_crds();
    let ns = "team-a";
    let admin = cluster.admin_client().await;
    let release = cluster.install_release(ns, &[]);
    let kubeconfig = cluster.service_account_kubeconfig(&release);
    let lease_duration = Duration::from_secs(10);

    let mut a = Operator::start(&cluster, &kubeconfig, &OperatorOptions::new(ns, "op-a"));
    a.wait_ready(WAIT);
    a.wait_leader(WAIT);
    create(&admin, ns, &random_credential(ns, "c1")).await;
    let original = wait_value(&admin, ns, "c1", WAIT).await;
    let original_value = data(&original, "value").unwrap();
    let original_rotated_at = annotation(&original, ROTATED_AT).unwrap();

    let b_started = jiff::Timestamp::now();
    let mut b = Operator::start(&cluster, &kubeconfig, &OperatorOptions::new(ns, "op-b"));
    b.wait_ready(WAIT);
    standing_by(&cluster, &release, b_started).await;
    assert!(a.is_leader() && !b.is_leader(), "one leads, one stands by");
    assert!(lease_holder(&admin, ns).await.unwrap().starts_with("op-a_"));

    // Graceful: the leader releases the Lease on SIGTERM, the standby takes it at once.
    a.process.signal("TERM");
    let released = Instant::now();
    let status = a
        .process
        .wait_exit(Duration::from_secs(20))
        .expect("op-a exits on SIGTERM");
    assert!(status.success(), "{status}");
    let holder = eventually("op-b holds the Lease", Duration::from_secs(5), || async {
        lease_holder(&admin, ns)
            .await
            .filter(|h| h.starts_with("op-b_"))
    })
    .await;
    create(&admin, ns, &random_credential(ns, "c2")).await;
    wait_value(&admin, ns, "c2", Duration::from_secs(5)).await;
    let takeover = released.elapsed();
    assert!(
        takeover < Duration::from_secs(8),
        "SIGTERM to reconciling standby took {takeover:?} ({holder})"
    );
    assert!(b.is_leader());

    // A new standby, then a crash of the leader: taken over when the Lease expires.
    let c_started = jiff::Timestamp::now();
    let mut c = Operator::start(&cluster, &kubeconfig, &OperatorOptions::new(ns, "op-c"));
    c.wait_ready(WAIT);
    standing_by(&cluster, &release, c_started).await;
    assert!(!c.is_leader());
    b.process.signal("KILL");
    let killed = Instant::now();
    b.process
        .wait_exit(Duration::from_secs(5))
        .expect("op-b is killed");
    create(&admin, ns, &random_credential(ns, "c3")).await;
    wait_value(&admin, ns, "c3", lease_duration + Duration::from_secs(10)).await;
    let crash_takeover = killed.elapsed();
    assert!(c.is_leader(), "op-c leads");
    assert!(lease_holder(&admin, ns).await.unwrap().starts_with("op-c_"));
    assert!(
        crash_takeover <= lease_duration + Duration::from_secs(6),
        "crash takeover took {crash_takeover:?} with a {lease_duration:?} Lease"
    );
    eprintln!("takeover after SIGTERM: {takeover:?}; after SIGKILL: {crash_takeover:?}");

    // Neither takeover rotated c1.
    let now = secret(&admin, ns, "c1").await.unwrap();
    assert_eq!(
        data(&now, "value").as_deref(),
        Some(original_value.as_str())
    );
    assert_eq!(
        annotation(&now, ROTATED_AT).as_deref(),
        Some(original_rotated_at.as_str())
    );
    assert_eq!(data(&now, "value.previous"), None);

    // One request, one rotation, on the third leader.
    request_rotation(&admin, ns, "c1", "once").await;
    let rotated = eventually("c1 rotated", WAIT, || async {
        secret(&admin, ns, "c1")
            .await
            .filter(|s| data(s, "value").is_some_and(|v| v != original_value))
    })
    .await;
    cluster
        .wait_reconciled(&admin, &release.user(), ns, "c1", "c1")
        .await;
    let settled = secret(&admin, ns, "c1").await.unwrap();
    assert_eq!(data(&settled, "value"), data(&rotated, "value"));
    assert_eq!(
        data(&settled, "value.previous").as_deref(),
        Some(original_value.as_str())
    );
    assert!(
        c.metrics_text()
            .contains("bulkhead_credential_rotations_total{type=\"Random\"} 1")
    );
}

/// The API server goes away and comes back mid-run: the operator recovers by itself, nothing
/// is lost (every Secret keeps its value) and nothing is duplicated (no extra rotation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(bulkhead_e2e),
    ignore = "needs a control plane: set KUBEBUILDER_ASSETS (see README, Testing)"
)]
async fn the_operator_recovers_from_an_api_server_restart() {
    let binaries = Binaries::from_env();
    let mut cluster = Cluster::start(binaries.without_controller_manager());
    cluster.install_crds();
    let ns = "team-a";
    let admin = cluster.admin_client().await;
    let (release, mut operator) =
        release_and_operator(&cluster, ns, &[], &OperatorOptions::new(ns, "op-a"));
    operator.wait_leader(WAIT);
    let names: Vec<String> = (1..=5).map(|i| format!("c{i}")).collect();
    for name in &names {
        create(&admin, ns, &random_credential(ns, name)).await;
    }
    let mut before = BTreeMap::new();
    for name in &names {
        let s = wait_value(&admin, ns, name, WAIT).await;
        before.insert(
            name.clone(),
            (s.uid(), data(&s, "value"), annotation(&s, ROTATED_AT)),
        );
    }

    // Longer than a lease renewal period: the leader loses the Lease while the server is away.
    cluster.stop_apiserver("KILL");
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(
        operator.process.is_running(),
        "no crash while the API server is away"
    );
    cluster.start_apiserver();
    let admin = cluster.admin_client().await;

    // It recovers by itself: a new Credential gets its Secret, a rotation request is honoured.
    create(&admin, ns, &random_credential(ns, "after")).await;
    wait_value(&admin, ns, "after", Duration::from_secs(90)).await;
    operator.wait_ready(WAIT);
    assert!(operator.is_leader());
    request_rotation(&admin, ns, "c1", "after-restart").await;
    eventually("c1 rotated", WAIT, || async {
        secret(&admin, ns, "c1")
            .await
            .filter(|s| data(s, "value.previous").is_some())
    })
    .await;
    cluster
        .wait_reconciled(&admin, &release.user(), ns, "c1", "c1")
        .await;

    let c1 = secret(&admin, ns, "c1").await.unwrap();
    assert_eq!(
        data(&c1, "value.previous"),
        before["c1"].1,
        "the old value is kept"
    );
    for name in &names[1..] {
        let s = secret(&admin, ns, name).await.unwrap();
        assert_eq!(
            (s.uid(), data(&s, "value"), annotation(&s, ROTATED_AT)),
            before[name],
            "{name}: neither recreated nor rotated"
        );
    }
    let managed = Api::<Secret>::namespaced(admin.clone(), ns)
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=bulkhead"))
        .await
        .unwrap();
    assert_eq!(managed.items.len(), 6, "one Secret per Credential");
    let metrics = operator.metrics_text();
    assert!(
        metrics.contains("bulkhead_credential_rotations_total{type=\"Random\"} 1"),
        "{metrics}"
    );
}

/// Two namespaces, one release each: each instance sees and touches only its own objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(bulkhead_e2e),
    ignore = "needs a control plane: set KUBEBUILDER_ASSETS (see README, Testing)"
)]
async fn two_releases_in_two_namespaces_stay_apart() {
    let binaries = Binaries::from_env();
    let cluster = Cluster::start(binaries.without_controller_manager());
    cluster.install_crds();
    let admin = cluster.admin_client().await;
    let (release_a, mut op_a) = release_and_operator(
        &cluster,
        "team-a",
        &[],
        &OperatorOptions::new("team-a", "op-a"),
    );
    let (release_b, mut op_b) = release_and_operator(
        &cluster,
        "team-b",
        &[],
        &OperatorOptions::new("team-b", "op-b"),
    );
    op_a.wait_leader(WAIT);
    op_b.wait_leader(WAIT);

    // The same names in both namespaces, plus one of each's own.
    for ns in ["team-a", "team-b"] {
        create(&admin, ns, &random_credential(ns, "shared")).await;
        create(&admin, ns, &random_credential(ns, &format!("only-{ns}"))).await;
    }
    for ns in ["team-a", "team-b"] {
        wait_value(&admin, ns, "shared", WAIT).await;
        wait_value(&admin, ns, &format!("only-{ns}"), WAIT).await;
        assert!(
            secret(
                &admin,
                ns,
                &format!("only-{}", if ns == "team-a" { "team-b" } else { "team-a" })
            )
            .await
            .is_none(),
            "nothing crosses into {ns}"
        );
    }
    let a = secret(&admin, "team-a", "shared").await.unwrap();
    let b = secret(&admin, "team-b", "shared").await.unwrap();
    assert_ne!(data(&a, "value"), data(&b, "value"));
    assert!(
        lease_holder(&admin, "team-a")
            .await
            .unwrap()
            .starts_with("op-a_")
    );
    assert!(
        lease_holder(&admin, "team-b")
            .await
            .unwrap()
            .starts_with("op-b_")
    );

    // Events about team-b's objects come from team-b's instance only.
    for (ns, pod) in [("team-a", "op-a_"), ("team-b", "op-b_")] {
        let events = Api::<Event>::namespaced(admin.clone(), ns)
            .list(&ListParams::default())
            .await
            .unwrap();
        let ours: Vec<&Event> = events
            .items
            .iter()
            .filter(|e| e.reporting_controller.as_deref() == Some("bulkhead.dev/operator"))
            .collect();
        assert!(!ours.is_empty(), "{ns} has Events");
        for e in ours {
            assert!(
                e.reporting_instance
                    .as_deref()
                    .is_some_and(|i| i.starts_with(pod)),
                "{ns}: Event from {:?}",
                e.reporting_instance
            );
        }
    }

    op_a.process.signal("TERM");
    op_b.process.signal("TERM");
    assert!(op_a.process.wait_exit(WAIT).unwrap().success());
    assert!(op_b.process.wait_exit(WAIT).unwrap().success());
    let audit = cluster.audit();
    assert_confined(&audit, &release_a, &[]);
    assert_confined(&audit, &release_b, &[]);
    for (release, other) in [(&release_a, "team-b"), (&release_b, "team-a")] {
        let crossed: Vec<String> = audit
            .by_user(&release.user())
            .filter(|e| {
                e.namespace() == other || e.request_uri.contains(&format!("/namespaces/{other}/"))
            })
            .map(|e| e.describe())
            .collect();
        assert!(
            crossed.is_empty(),
            "{} touched {other}: {crossed:?}",
            release.user()
        );
    }

    // And team-a's token could not even if it tried: the real authorizer refuses.
    let a_client = Cluster::client_from(&cluster.service_account_kubeconfig(&release_a)).await;
    let err = Api::<Secret>::namespaced(a_client, "team-b")
        .get("shared")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 403),
        "{err}"
    );
}

/// The audit classifier the scenarios rely on (runs without the binaries, so CI checks it).
#[test]
fn audit_requests_are_classified_by_namespace_and_kind() {
    let event = |verb: &str, uri: &str| -> cluster::AuditEvent {
        serde_json::from_value(json!({
            "auditID": "x", "stage": "ResponseComplete", "requestURI": uri, "verb": verb,
            "user": {"username": "system:serviceaccount:team-a:bulkhead"},
            "requestReceivedTimestamp": "2026-11-22T12:00:00.000000Z"
        }))
        .unwrap()
    };
    let inside = [
        "/api/v1/namespaces/team-a/secrets/db?fieldManager=bulkhead",
        "/apis/bulkhead.dev/v1alpha1/namespaces/team-a/credentials?watch=true",
        "/apis/coordination.k8s.io/v1/namespaces/team-a/leases/bulkhead",
    ];
    for uri in inside {
        assert!(event("get", uri).is_within("team-a"), "{uri}");
        assert!(!event("get", uri).is_within("team-b"), "{uri}");
    }
    let outside = [
        "/api/v1/namespaces/team-a",
        "/api/v1/namespaces/team-ab/secrets/db",
        "/api/v1/secrets",
        "/apis/bulkhead.dev/v1alpha1/credentials",
        "/apis/apps/v1/namespaces/kube-system/deployments/x",
        "/api/v1/nodes",
    ];
    for uri in outside {
        let e = event("list", uri);
        assert!(
            !e.is_within("team-a") && !e.is_discovery_or_self_review(),
            "{uri}"
        );
    }
    for uri in [
        "/api",
        "/apis",
        "/api/v1",
        "/apis/bulkhead.dev/v1alpha1",
        "/version",
        "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
    ] {
        assert!(event("get", uri).is_discovery_or_self_review(), "{uri}");
    }
    assert!(
        !event(
            "create",
            "/apis/authorization.k8s.io/v1/subjectaccessreviews"
        )
        .is_discovery_or_self_review()
    );
}

/// Without a Secret watch (the default Role cannot list or watch Secrets), drift is repaired by
/// the periodic re-read by name; a re-check that finds nothing to repair writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(bulkhead_e2e),
    ignore = "needs a control plane: set KUBEBUILDER_ASSETS (see README, Testing)"
)]
async fn drift_is_repaired_by_the_periodic_recheck_which_otherwise_writes_nothing() {
    let binaries = Binaries::from_env();
    let cluster = Cluster::start(binaries.without_controller_manager());
    cluster.install_crds();
    let ns = "team-a";
    let admin = cluster.admin_client().await;
    let mut options = OperatorOptions::new(ns, "op-a");
    options.extra_args = vec!["--drift-check-interval=3s".into()];
    let (release, mut operator) = release_and_operator(&cluster, ns, &[], &options);
    operator.wait_leader(WAIT);
    create(&admin, ns, &random_credential(ns, "edited")).await;
    create(&admin, ns, &random_credential(ns, "deleted")).await;
    let original = wait_value(&admin, ns, "edited", WAIT).await;
    wait_value(&admin, ns, "deleted", WAIT).await;
    wait_condition(&admin, ns, "edited", "Ready", "True").await;
    wait_condition(&admin, ns, "deleted", "Ready", "True").await;

    // Quiet re-checks: reads by name, no write at all, from the next re-read of Secret edited
    // (a reconcile begun after both were Ready) to the one after next.
    let user = release.user();
    let window = cluster
        .between_rereads(&user, ns, "edited", 3, Duration::from_secs(20))
        .await;
    let rereads = window
        .iter()
        .filter(|e| e.verb == "get" && e.resource() == "secrets" && e.name() == "edited")
        .count();
    assert!(
        rereads >= 2,
        "{rereads} re-reads of Secret edited with a 3 s interval"
    );
    let writes: Vec<String> = window
        .iter()
        .filter(|e| e.is_write() && e.resource() != "leases")
        .map(|e| e.describe())
        .collect();
    assert!(
        writes.is_empty(),
        "writes while nothing drifted: {writes:#?}"
    );

    // Someone edits a value: replaced by a fresh one, the edited one kept as previous.
    let patch = json!({"stringData": {"value": "edited-by-hand"}});
    Api::<Secret>::namespaced(admin.clone(), ns)
        .patch("edited", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let repaired = eventually("edited value repaired", Duration::from_secs(20), || async {
        secret(&admin, ns, "edited")
            .await
            .filter(|s| data(s, "value").is_some_and(|v| v != "edited-by-hand"))
    })
    .await;
    assert_eq!(
        data(&repaired, "value.previous").as_deref(),
        Some("edited-by-hand")
    );
    assert_ne!(data(&repaired, "value"), data(&original, "value"));

    // Someone deletes a managed Secret: it comes back.
    Api::<Secret>::namespaced(admin.clone(), ns)
        .delete("deleted", &DeleteParams::default())
        .await
        .unwrap();
    wait_value(&admin, ns, "deleted", Duration::from_secs(20)).await;
    assert_confined(&cluster.audit(), &release, &[]);
}
