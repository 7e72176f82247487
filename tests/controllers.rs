//! Controller scenarios against the in-process API double: the whole operator (preflight,
//! leader election, both controllers) runs as in production, with exactly the Role
//! `bulkhead rbac` prints, and every request it makes is recorded.
//!
//! What the double cannot prove (SSA ownership beyond the Secret fields Bulkhead writes,
//! admission/CEL, garbage collection, RBAC as the API server evaluates it) is for the
//! env-gated end-to-end suite. Data-safety scenarios are in `tests/data_safety.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use bulkhead::api::credential::RestartKind;
use bulkhead::api::tenant::TenantSpec;
use bulkhead::api::{ConditionSet, Credential, Tenant};
use bulkhead::controller::Settings;
use bulkhead::rbac::RbacOptions;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::rbac::v1::PolicyRule;
use kube::api::ObjectMeta;
use serde_json::json;
use support::ApiDouble;
use support::operator::{
    NS, condition, credential, credential_reconciled, eventually, eventually_within, options,
    request_rotation, role, secret_value, secret_writes, start, tenant_reconciled,
};

fn tenant() -> Tenant {
    let mut t = Tenant::new(
        "tenant",
        TenantSpec {
            display_name: Some("Team A".into()),
            ..TenantSpec::default()
        },
    );
    t.metadata.namespace = Some(NS.into());
    t
}

fn deployment(name: &str) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"selector": {"matchLabels": {"app": name}}, "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}
    }))
    .unwrap()
}

/// A Secret someone else created, not managed by Bulkhead.
fn foreign_secret(data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some("db".into()),
            namespace: Some(NS.into()),
            ..ObjectMeta::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Secret::default()
    }
}

fn assert_confined(double: &ApiDouble) {
    let requests = double.requests();
    assert!(!requests.is_empty());
    for r in &requests {
        let namespaced = r.path.contains(&format!("/namespaces/{NS}/"));
        let self_review = r.path.ends_with("/selfsubjectrulesreviews")
            || r.path.ends_with("/selfsubjectaccessreviews");
        assert!(
            namespaced || self_review,
            "request outside the namespace: {} {}",
            r.method,
            r.path
        );
    }
}

fn assert_no_secret_enumeration(double: &ApiDouble) {
    let enumerations: Vec<String> = double
        .requests()
        .iter()
        .filter(|r| r.resource == "secrets" && (r.verb == "list" || r.verb == "watch"))
        // The identity Secret's watch is pinned to its name: that is not an enumeration.
        .filter(|r| {
            !r.query
                .contains("fieldSelector=metadata.name%3Dbulkhead-identity")
        })
        .map(|r| format!("{} {}?{}", r.method, r.path, r.query))
        .collect();
    assert!(
        enumerations.is_empty(),
        "Secrets were listed or watched beyond the identity Secret: {enumerations:?}"
    );
    assert!(
        double.requests().iter().any(|r| r.resource == "secrets"
            && r.verb == "list"
            && r.query
                .contains("fieldSelector=metadata.name%3Dbulkhead-identity")),
        "the identity Secret is watched by name"
    );
}

#[tokio::test]
async fn full_cycle_creates_rotates_restarts_and_stays_in_the_namespace() {
    let double = ApiDouble::new();
    let rbac = RbacOptions {
        restart_targets: vec![(RestartKind::Deployment, "api".into())],
        ..options()
    };
    double.set_role(role(&rbac));
    double.insert(&tenant());
    double.insert(&deployment("api"));
    double.insert(
        &credential("db")
            .secret_name("db-password")
            .restart(RestartKind::Deployment, "api")
            .build(),
    );
    double.insert(&credential("keys").key_set(3).retain().build());

    let op = start(&double, "a", rbac, Settings::default());

    // Create: a Secret with the value, labels and an owner reference.
    let first = eventually("db-password value", || {
        secret_value(&double, "db-password", "value")
    })
    .await;
    assert_eq!(first.len(), 32);
    let s: Secret = double.get(NS, "db-password").unwrap();
    let labels = s.metadata.labels.clone().unwrap();
    assert_eq!(labels["app.kubernetes.io/managed-by"], "bulkhead");
    assert_eq!(labels["bulkhead.dev/credential"], "db");
    let owner = &s.metadata.owner_references.clone().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("Credential", "db", Some(true))
    );
    eventually("db Ready", || {
        condition(&double, "db", "Ready").filter(|c| c.0 == "True")
    })
    .await;

    // KeySet with Retain: staged + primary, no owner reference.
    let ks: Secret = eventually("keys Secret", || double.get(NS, "keys")).await;
    let mut data_keys: Vec<String> = ks.data.clone().unwrap().into_keys().collect();
    data_keys.sort();
    assert_eq!(data_keys, ["0", "1"]);
    assert!(ks.metadata.owner_references.is_none());

    // The Tenant counts both Credentials once they are Ready.
    eventually("tenant counts", || {
        let t: Tenant = double.get(NS, "tenant")?;
        let counts = t.status?.credentials?;
        (counts.total == 2 && counts.ready == 2).then_some(())
    })
    .await;
    let t: Tenant = double.get(NS, "tenant").unwrap();
    assert_eq!(
        t.status.unwrap().conditions.find("Ready").unwrap().status,
        "True"
    );

    // Manual rotation: new value, the old one kept, the Deployment restarted.
    request_rotation(&double, "db", "2026-11-22T12:00:00Z");
    let second = eventually("rotated value", || {
        secret_value(&double, "db-password", "value").filter(|v| *v != first)
    })
    .await;
    assert_eq!(
        secret_value(&double, "db-password", "value.previous").as_deref(),
        Some(first.as_str())
    );
    let restarted = eventually("restart annotation", || {
        let d: Deployment = double.get(NS, "api")?;
        d.spec
            .template
            .metadata?
            .annotations?
            .get("bulkhead.dev/restarted-at")
            .cloned()
    })
    .await;
    let c: Credential = eventually("status key id", || {
        let c: Credential = double.get(NS, "db")?;
        (c.status.as_ref()?.key_id.as_deref() == Some(restarted.as_str())).then_some(c)
    })
    .await;
    assert_eq!(
        c.status
            .as_ref()
            .unwrap()
            .conditions
            .find("Rotated")
            .unwrap()
            .reason,
        "Rotated"
    );
    assert_eq!(
        condition(&double, "db", "RestartNotPermitted").unwrap().0,
        "False",
        "the restart was permitted"
    );
    let rotations = op.metrics.encode();
    assert!(
        rotations.contains("bulkhead_credential_rotations_total{type=\"Random\"} 1"),
        "{rotations}"
    );

    // Settled: the same request never rotates twice, not even in a reconcile that ran after it.
    credential_reconciled(&double, "db").await;
    assert_eq!(
        secret_value(&double, "db-password", "value").as_deref(),
        Some(second.as_str())
    );

    // Events were published for what a user acts on.
    let events = double.list_json("events.k8s.io", "events", NS);
    let reasons: Vec<&str> = events.iter().filter_map(|e| e["reason"].as_str()).collect();
    assert!(
        reasons.contains(&"Created") && reasons.contains(&"Rotated"),
        "{reasons:?}"
    );

    op.stop().await;
    assert_confined(&double);
    assert_no_secret_enumeration(&double);
    // The Lease was released on shutdown.
    let lease = double
        .get_json("coordination.k8s.io", "leases", NS, "bulkhead")
        .unwrap();
    assert!(lease["spec"]["holderIdentity"].is_null(), "{lease}");
}

#[tokio::test]
async fn a_foreign_secret_is_never_modified() {
    let double = ApiDouble::new();
    double.set_role(role(&options()));
    let foreign = foreign_secret(&[("value", "theirs")]);
    double.insert(&foreign);
    let before = double.get_json("", "secrets", NS, "db").unwrap();
    double.insert(&credential("db").build());

    let op = start(&double, "a", options(), Settings::default());
    let (_, reason, message) = eventually("Conflict", || {
        condition(&double, "db", "Conflict").filter(|c| c.0 == "True")
    })
    .await;
    assert_eq!(reason, "SecretNotManaged");
    assert!(message.contains("adopt: true"), "{message}");
    assert_eq!(condition(&double, "db", "Ready").unwrap().0, "False");
    // Not on a later reconcile either.
    credential_reconciled(&double, "db").await;
    op.stop().await;

    assert_eq!(
        double.get_json("", "secrets", NS, "db").unwrap(),
        before,
        "the foreign Secret is untouched"
    );
    let writes = secret_writes(&double);
    assert!(
        writes.is_empty(),
        "no write may reach a foreign Secret: {writes:?}"
    );
}

#[tokio::test]
async fn adopt_takes_over_and_keeps_the_value() {
    let double = ApiDouble::new();
    double.set_role(role(&options()));
    let foreign = foreign_secret(&[("value", "theirs"), ("note", "kept")]);
    double.insert(&foreign);
    double.insert(&credential("db").adopt().build());
    let op = start(&double, "a", options(), Settings::default());
    eventually("adopted", || {
        condition(&double, "db", "Rotated").filter(|c| c.1 == "Adopted")
    })
    .await;
    op.stop().await;
    assert_eq!(
        secret_value(&double, "db", "value").as_deref(),
        Some("theirs")
    );
    assert_eq!(
        secret_value(&double, "db", "note").as_deref(),
        Some("kept"),
        "other keys stay"
    );
    let s: Secret = double.get(NS, "db").unwrap();
    assert_eq!(s.metadata.labels.unwrap()["bulkhead.dev/credential"], "db");
}

/// A Random Credential restarting Deployment/api, with a Role that lists no restart targets.
fn restart_target_not_in_the_role() -> ApiDouble {
    let double = ApiDouble::new();
    double.set_role(role(&options()));
    double.insert(&deployment("api"));
    double.insert(
        &credential("db")
            .restart(RestartKind::Deployment, "api")
            .build(),
    );
    double
}

#[tokio::test]
async fn a_forbidden_restart_yields_the_condition_naming_the_chart_value() {
    let double = restart_target_not_in_the_role();
    let op = start(&double, "a", options(), Settings::default());
    eventually("created", || secret_value(&double, "db", "value")).await;
    request_rotation(&double, "db", "now");
    let (_, reason, message) = eventually("RestartNotPermitted", || {
        condition(&double, "db", "RestartNotPermitted").filter(|c| c.0 == "True")
    })
    .await;
    assert_eq!(reason, "Forbidden");
    assert!(
        message.contains("rbac.restartTargets") && message.contains("Deployment/api"),
        "{message}"
    );
    // The rotation itself happened and is Ready.
    assert_eq!(condition(&double, "db", "Ready").unwrap().0, "True");
    assert!(secret_value(&double, "db", "value.previous").is_some());
    op.stop().await;
    let d: Deployment = double.get(NS, "api").unwrap();
    assert!(
        d.spec.template.metadata.unwrap().annotations.is_none(),
        "the Deployment was not touched"
    );
}

#[tokio::test]
async fn a_target_not_granted_by_the_flags_is_not_even_tried() {
    let double = restart_target_not_in_the_role();
    // As `bulkhead run` sets it: the Role was rendered from the same (empty) target list.
    let settings = Settings {
        permitted_restarts: Some(vec![]),
        ..Settings::default()
    };
    let op = start(&double, "a", options(), settings);
    eventually("created", || secret_value(&double, "db", "value")).await;
    request_rotation(&double, "db", "now");
    let (_, reason, _) = eventually("RestartNotPermitted", || {
        condition(&double, "db", "RestartNotPermitted").filter(|c| c.0 == "True")
    })
    .await;
    assert_eq!(reason, "Forbidden");
    op.stop().await;
    let patches: Vec<String> = double
        .requests()
        .iter()
        .filter(|r| r.resource == "deployments")
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(
        patches.is_empty(),
        "no request that can only be refused: {patches:?}"
    );
}

#[tokio::test]
async fn drift_is_repaired_by_the_watch_only_when_it_is_enabled() {
    let double = ApiDouble::new();
    let rbac = RbacOptions {
        watch_managed_secrets: true,
        ..options()
    };
    double.set_role(role(&rbac));
    double.insert(&credential("db").build());
    let settings = Settings {
        drift_check: Duration::from_secs(3600),
        watch_managed_secrets: true,
        ..Settings::default()
    };
    let op = start(&double, "a", rbac, settings);
    let original = eventually("created", || secret_value(&double, "db", "value")).await;
    // Someone edits the managed value by hand: the label-selected watch repairs it at once.
    let mut s: Secret = double.get(NS, "db").unwrap();
    s.data
        .as_mut()
        .unwrap()
        .insert("value".into(), ByteString(b"edited".to_vec()));
    double.insert(&s);
    let repaired = eventually("repaired", || {
        secret_value(&double, "db", "value").filter(|v| v != "edited" && *v != original)
    })
    .await;
    assert_eq!(
        secret_value(&double, "db", "value.previous").as_deref(),
        Some("edited"),
        "nothing is lost"
    );
    assert_ne!(repaired, original);
    op.stop().await;
    let watched = double
        .requests()
        .iter()
        .any(|r| r.resource == "secrets" && r.verb == "watch" && r.query.contains("labelSelector"));
    assert!(watched, "the opt-in mode watches managed Secrets by label");
}

#[tokio::test]
async fn missing_rights_keep_it_unready_and_writing_nothing() {
    let double = ApiDouble::new();
    // A Role without the leader-election rules.
    let rules: Vec<PolicyRule> = role(&options())
        .into_iter()
        .filter(|r| {
            r.resources
                .as_ref()
                .is_none_or(|res| !res.contains(&"leases".to_owned()))
        })
        .collect();
    double.set_role(rules);
    double.insert(&credential("db").build());
    let op = start(&double, "a", options(), Settings::default());
    let reason = eventually("not ready", || {
        op.readiness.reason().filter(|r| r.contains("leases"))
    })
    .await;
    assert!(reason.contains("leaderElection.leaseName"), "{reason}");
    assert!(op.metrics.encode().contains("bulkhead_preflight_ok 0"));
    // The proof the process went on running: the preflight is retried (after its backoff)
    // and refuses again. Controllers would have started right after the first one.
    let reviews = || {
        double
            .requests()
            .iter()
            .filter(|r| r.path.ends_with("/selfsubjectrulesreviews"))
            .count()
    };
    eventually("the preflight retried", || (reviews() >= 2).then_some(())).await;
    assert_eq!(op.reconciles("credential"), 0);
    let readiness = op.readiness.clone();
    op.stop().await;
    assert!(readiness.reason().is_some());
    assert!(
        double.get_json("", "secrets", NS, "db").is_none(),
        "nothing is reconciled before the preflight passes"
    );
}

#[tokio::test]
async fn a_missing_crd_is_reported_not_crashed_on() {
    let double = ApiDouble::new();
    double.set_role(role(&options()));
    double.unserve("bulkhead.dev", "credentials");
    let op = start(&double, "a", options(), Settings::default());
    let reason = eventually("not ready", || {
        op.readiness
            .reason()
            .filter(|r| r.contains("credentials.bulkhead.dev"))
    })
    .await;
    assert!(
        reason.contains("kubectl apply --server-side -f crds-cluster/"),
        "{reason}"
    );
    assert!(
        !op.task.is_finished(),
        "no crash loop: the process stays up and retries"
    );
    op.stop().await;
}

#[tokio::test]
async fn a_second_instance_stands_by_then_takes_over_at_once_when_the_leader_shuts_down() {
    let double = ApiDouble::new();
    double.set_role(role(&options()));
    double.insert(&credential("db").build());
    let leader = start(&double, "first", options(), Settings::default());
    eventually("leader reconciles", || secret_value(&double, "db", "value")).await;
    let mark = double.requests().len();
    let standby = start(&double, "second", options(), Settings::default());
    eventually("standby ready", || {
        standby.readiness.reason().is_none().then_some(())
    })
    .await;
    // The standby read the Lease and went on to watch it: it has decided not to lead.
    eventually("the standby watches the Lease", || {
        double.requests()[mark..]
            .iter()
            .any(|r| r.resource == "leases" && r.verb == "watch")
            .then_some(())
    })
    .await;
    assert!(leader_value(&leader));
    assert!(!leader_value(&standby));
    let lease = double
        .get_json("coordination.k8s.io", "leases", NS, "bulkhead")
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "first");

    leader.stop().await;
    // The Lease lasts 30 s; waiting for expiry would blow far past this bound.
    let holder = eventually_within(
        "the standby takes the released Lease within 5 s, not at its 30 s expiry",
        Duration::from_secs(5),
        || {
            let lease = double.get_json("coordination.k8s.io", "leases", NS, "bulkhead")?;
            (lease["spec"]["holderIdentity"] == "second" && leader_value(&standby)).then_some(lease)
        },
    )
    .await;
    assert_eq!(holder["spec"]["leaseDurationSeconds"], 30);

    // The new leader reconciles: a new Credential gets its Secret.
    double.insert(&credential("api").build());
    eventually("new leader reconciles", || {
        secret_value(&double, "api", "value")
    })
    .await;
    standby.stop().await;
}

// ---- leadership -------------------------------------------------------------------------------

/// Short Lease timings for the leadership scenarios: (duration, renew grace).
const SHORT_LEASE: (Duration, Duration) = (Duration::from_secs(5), Duration::from_secs(2));

/// The `bulkhead_leader` sample (the whole line: the HELP text starts with "1 while").
fn leader_value(op: &support::operator::Running) -> bool {
    op.metrics
        .encode()
        .lines()
        .any(|l| l == "bulkhead_leader 1")
}

/// One process on the double (with exactly its Role) that has taken the Lease (`SHORT_LEASE`).
async fn leading_with_short_lease(double: &ApiDouble) -> support::operator::Running {
    double.set_role(role(&options()));
    let op =
        support::operator::start_timed(double, "a", options(), Settings::default(), SHORT_LEASE);
    eventually("leads", || leader_value(&op).then_some(())).await;
    op
}

/// A Lease someone else held and stopped renewing long ago.
fn stale_lease(holder: &str) -> k8s_openapi::api::coordination::v1::Lease {
    serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "bulkhead", "namespace": NS},
        "spec": {
            "holderIdentity": holder, "leaseDurationSeconds": 5,
            "acquireTime": "2020-01-01T00:00:00.000000Z", "renewTime": "2020-01-01T00:00:00.000000Z",
        },
    }))
    .unwrap()
}

/// Sample both processes' `bulkhead_leader` every 20 ms for `span`; panics on a sample where
/// both lead. Returns how many samples had a leader.
async fn at_most_one_leader(
    a: &support::operator::Running,
    b: &support::operator::Running,
    span: Duration,
) -> usize {
    let mut led = 0;
    let end = tokio::time::Instant::now() + span;
    while tokio::time::Instant::now() < end {
        let (x, y) = (leader_value(a), leader_value(b));
        assert!(!(x && y), "two leaders at once");
        led += usize::from(x || y);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    led
}

/// Two processes start together against a Lease whose holder died: exactly one takes it over
/// (every write is guarded by the resourceVersion it was computed from), and the loser never
/// reports leadership, not even for a moment.
#[tokio::test]
async fn two_instances_racing_for_an_expired_lease_never_lead_together() {
    let double = ApiDouble::new();
    double.set_role(role(&options()));
    double.insert(&stale_lease("ghost"));
    let a =
        support::operator::start_timed(&double, "a", options(), Settings::default(), SHORT_LEASE);
    let b =
        support::operator::start_timed(&double, "b", options(), Settings::default(), SHORT_LEASE);
    // The ghost's Lease expires 5 s after each process first saw it; then one takes it and
    // renews it (every 3 s) through the rest of the span.
    let led = at_most_one_leader(&a, &b, Duration::from_secs(10)).await;
    assert!(led > 0, "one of them took the expired Lease over");
    let lease = double
        .get_json("coordination.k8s.io", "leases", NS, "bulkhead")
        .unwrap();
    let holder = lease["spec"]["holderIdentity"].as_str().unwrap().to_owned();
    assert!(holder == "a" || holder == "b", "{lease}");
    assert_eq!(
        lease["spec"]["leaseTransitions"], 1,
        "taken over once: {lease}"
    );
    assert!(
        leader_value(if holder == "a" { &a } else { &b }),
        "the holder on record is the one that leads"
    );
    a.stop().await;
    b.stop().await;
}

/// A leader whose renewals fail stops writing at its renew deadline (D − G/2 after its last
/// renewal), before any other process could take the Lease (D after it last saw a renewal).
#[tokio::test]
async fn a_leader_that_cannot_renew_stops_before_the_lease_could_pass() {
    let double = ApiDouble::new();
    let op = leading_with_short_lease(&double).await;
    let renewals = || {
        double
            .requests()
            .iter()
            .filter(|r| r.resource == "leases" && r.verb == "patch")
            .count()
    };
    // Wait for a renewal, so the last successful write is known to within a poll.
    let before = renewals();
    eventually("a renewal", || (renewals() > before).then_some(())).await;
    let renewed = tokio::time::Instant::now();
    double.fail_next(
        support::apidouble::Matcher::new("patch", "leases"),
        500,
        1000,
    );
    eventually("steps down", || (!leader_value(&op)).then_some(())).await;
    let stepped_down = renewed.elapsed();
    assert!(
        stepped_down >= Duration::from_secs(3),
        "renewal is due 3 s after the last one; stepped down after {stepped_down:?}"
    );
    assert!(
        stepped_down < Duration::from_secs(5),
        "stopped writing before the 5 s Lease could pass to another: {stepped_down:?}"
    );
    assert!(
        renewals() > before + 2,
        "the renewal was retried before giving up"
    );
    op.stop().await;
}

/// Renewing the Lease costs one request: a guarded patch, no read before it.
#[tokio::test]
async fn a_renewal_is_one_request() {
    let double = ApiDouble::new();
    let op = leading_with_short_lease(&double).await;
    double.clear_requests();
    // Two renewals (every 3 s): every Lease request up to the second renewal's patch.
    let lease_requests = || -> Vec<String> {
        double
            .requests()
            .iter()
            .filter(|r| r.resource == "leases" && r.verb != "watch")
            .map(|r| format!("{} {}", r.verb, r.path))
            .collect()
    };
    eventually("two renewals", || {
        (lease_requests()
            .iter()
            .filter(|r| r.starts_with("patch "))
            .count()
            >= 2)
            .then_some(())
    })
    .await;
    let lease_requests = lease_requests();
    assert_eq!(
        lease_requests.len(),
        2,
        "two renewals, one request each: {lease_requests:?}"
    );
    assert!(lease_requests.iter().all(|r| r.starts_with("patch ")));
    assert!(leader_value(&op));
    op.stop().await;
}

// ---- the Tenant's counters --------------------------------------------------------------------

/// The Tenant's recorded `status.credentials` as (total, ready).
fn tenant_counts(double: &ApiDouble) -> Option<(u64, u64)> {
    let t = double.get_json("bulkhead.dev", "tenants", NS, "tenant")?;
    let c = &t["status"]["credentials"];
    Some((c["total"].as_u64()?, c["ready"].as_u64()?))
}

fn tenant_status_writes(double: &ApiDouble) -> usize {
    double
        .requests()
        .iter()
        .filter(|r| r.resource == "tenants/status" && r.verb == "patch")
        .count()
}

/// A restart with settled Credentials re-reads everything and writes nothing but the Lease:
/// in particular the Tenant's counts are not first rewritten from a cache still listing.
#[tokio::test]
async fn a_restart_with_settled_credentials_writes_nothing_but_the_lease() {
    let double = ApiDouble::new();
    double.set_role(role(&options()));
    double.insert(&tenant());
    for i in 0..20 {
        double.insert(&credential(&format!("c{i}")).build());
    }
    let op = start(&double, "a", options(), Settings::default());
    eventually("all counted Ready", || {
        (tenant_counts(&double) == Some((20, 20))).then_some(())
    })
    .await;
    op.stop().await;
    double.clear_requests();

    let op = start(&double, "b", options(), Settings::default());
    // The signal that the work ran: every Credential and the Tenant reconciled.
    eventually("every object reconciled", || {
        (op.reconciles("credential") >= 20 && op.reconciles("tenant") >= 1).then_some(())
    })
    .await;
    // Anything still queued (a Tenant count write is deferred up to a second) has landed or
    // been superseded once a Tenant reconcile that started after those has finished.
    tenant_reconciled(&op, &double).await;
    let writes: Vec<String> = double
        .requests()
        .iter()
        .filter(|r| !matches!(r.verb.as_str(), "get" | "list" | "watch"))
        // Preflight's probes persist nothing: dry runs and the self-review.
        .filter(|r| !r.query.contains("dryRun=All") && !r.path.ends_with("selfsubjectrulesreviews"))
        .filter(|r| r.resource != "leases")
        .map(|r| format!("{} {}", r.verb, r.path))
        .collect();
    assert!(writes.is_empty(), "a restart wrote: {writes:?}");
    assert_eq!(tenant_counts(&double), Some((20, 20)));
    op.stop().await;
}

/// A burst of Credentials moves the Tenant's counts at most once a second, and the last write
/// has the final counts.
#[tokio::test]
async fn the_tenants_counts_are_written_at_most_once_a_second() {
    let double = ApiDouble::new();
    double.set_role(role(&options()));
    double.insert(&tenant());
    let op = start(&double, "a", options(), Settings::default());
    eventually("the Tenant counted", || {
        (tenant_counts(&double) == Some((0, 0))).then_some(())
    })
    .await;
    let before = tenant_status_writes(&double);
    let started = tokio::time::Instant::now();
    for i in 0..40 {
        double.insert(&credential(&format!("c{i}")).build());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    eventually("all counted Ready", || {
        (tenant_counts(&double) == Some((40, 40))).then_some(())
    })
    .await;
    let seconds = started.elapsed().as_secs();
    let writes = tenant_status_writes(&double) - before;
    assert!(
        writes as u64 <= seconds + 1,
        "{writes} status writes in {seconds} s of burst"
    );
    op.stop().await;
}

#[tokio::test]
async fn a_target_not_granted_is_reported_from_the_first_reconcile() {
    let double = restart_target_not_in_the_role();
    let settings = Settings {
        permitted_restarts: Some(vec![]),
        ..Settings::default()
    };
    let op = start(&double, "a", options(), settings);
    eventually("created", || secret_value(&double, "db", "value")).await;
    // No rotation yet: nothing was owed a restart, and still the target is reported.
    let (_, reason, message) = eventually("RestartNotPermitted", || {
        condition(&double, "db", "RestartNotPermitted").filter(|c| c.0 == "True")
    })
    .await;
    op.stop().await;
    assert_eq!(reason, "Forbidden");
    assert!(message.contains("Deployment/api"), "{message}");
}

/// A Credential as a newer CRD bundle could allow it: a `spec.type` this binary does not know.
fn undecodable_credential(name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "bulkhead.dev/v1alpha1", "kind": "Credential",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"type": "Certificate", "certificate": {"commonName": "api"}}
    })
}

#[tokio::test]
async fn an_undecodable_credential_is_reported_and_the_others_still_reconcile() {
    let double = ApiDouble::new();
    double.set_role(role(&options()));
    double.insert(&tenant());
    // Sorts first, so preflight's `list limit=1` meets it.
    double.insert_json(
        "bulkhead.dev",
        "v1alpha1",
        "credentials",
        NS,
        undecodable_credential("aaa-cert"),
    );
    double.insert(&credential("db").build());
    let op = start(&double, "a", options(), Settings::default());

    eventually("ready despite the undecodable object", || {
        op.readiness.reason().is_none().then_some(())
    })
    .await;
    let first = eventually("db created", || secret_value(&double, "db", "value")).await;

    let event = eventually("a Warning Event about aaa-cert", || {
        double
            .list_json("events.k8s.io", "events", NS)
            .into_iter()
            .find(|e| e["regarding"]["name"] == "aaa-cert")
    })
    .await;
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "Undecodable");
    assert_eq!(event["regarding"]["kind"], "Credential");
    let note = event["note"].as_str().unwrap();
    assert!(
        note.contains("spec.type") && note.contains("Certificate") && note.contains("newer"),
        "{note}"
    );
    assert!(
        op.metrics
            .encode()
            .contains("bulkhead_undecodable_objects_total{kind=\"Credential\"} 1"),
        "{}",
        op.metrics.encode()
    );

    // The others keep reconciling: a rotation and a new Credential go through.
    request_rotation(&double, "db", "2026-01-01T00:00:00Z");
    eventually("db rotated", || {
        secret_value(&double, "db", "value").filter(|v| *v != first)
    })
    .await;
    double.insert(&credential("api").key_set(3).build());
    eventually("api created", || double.get::<Secret>(NS, "api")).await;

    // A decodable Credential edited into an undecodable one leaves the cache: nothing acts
    // on its outdated spec, and it is reported once more.
    double.insert_json(
        "bulkhead.dev",
        "v1alpha1",
        "credentials",
        NS,
        undecodable_credential("db"),
    );
    eventually("db reported", || {
        double
            .list_json("events.k8s.io", "events", NS)
            .into_iter()
            .find(|e| e["regarding"]["name"] == "db" && e["reason"] == "Undecodable")
    })
    .await;
    op.stop().await;
}

#[tokio::test]
async fn an_undecodable_tenant_is_reported_and_credentials_still_reconcile() {
    let double = ApiDouble::new();
    double.set_role(role(&options()));
    // contacts as a string: what a later schema could allow, this binary cannot decode.
    double.insert_json(
        "bulkhead.dev",
        "v1alpha1",
        "tenants",
        NS,
        json!({
            "apiVersion": "bulkhead.dev/v1alpha1", "kind": "Tenant",
            "metadata": {"name": "tenant", "namespace": NS},
            "spec": {"contacts": "team-a@example.com"}
        }),
    );
    double.insert(&credential("db").build());
    let op = start(&double, "a", options(), Settings::default());
    eventually("db created", || secret_value(&double, "db", "value")).await;
    let event = eventually("a Warning Event about the Tenant", || {
        double
            .list_json("events.k8s.io", "events", NS)
            .into_iter()
            .find(|e| e["regarding"]["kind"] == "Tenant" && e["reason"] == "Undecodable")
    })
    .await;
    let note = event["note"].as_str().unwrap();
    assert!(note.contains("spec.contacts"), "{note}");
    assert!(
        op.metrics
            .encode()
            .contains("bulkhead_undecodable_objects_total{kind=\"Tenant\"} 1")
    );
    op.stop().await;
}

/// A deleted Credential leaves nothing behind that still speaks of it: the Tenant's counts drop
/// at once (not at its next periodic reconcile), and its per-Credential series
/// (`bulkhead_credential_ready`, `bulkhead_credential_next_rotation_timestamp_seconds`) are gone, so no
/// alert fires for a Credential that no longer exists.
#[tokio::test]
async fn a_deleted_credential_leaves_the_counts_and_its_metric_series() {
    let double = ApiDouble::new();
    double.set_role(role(&options()));
    double.insert(&tenant());
    for name in ["keep", "gone"] {
        double.insert(&credential(name).every("24h").build());
    }
    let op = start(&double, "a", options(), Settings::default());
    eventually("both counted Ready", || {
        (tenant_counts(&double) == Some((2, 2))).then_some(())
    })
    .await;
    let series = |name: &str| {
        op.metrics
            .encode()
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains(&format!("credential=\"{name}\"")))
            .count()
    };
    // The signal that the series exist before the deletion: both Credentials have theirs.
    assert!(
        series("gone") >= 2 && series("keep") >= 2,
        "{}",
        op.metrics.encode()
    );

    double.delete_json("bulkhead.dev", "credentials", NS, "gone");
    eventually("the Tenant counts one Credential", || {
        (tenant_counts(&double) == Some((1, 1))).then_some(())
    })
    .await;
    eventually("the deleted Credential's series are gone", || {
        (series("gone") == 0).then_some(())
    })
    .await;
    assert!(series("keep") >= 2, "the other Credential keeps its series");
    op.stop().await;
}
