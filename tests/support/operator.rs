//! Running the whole operator (preflight, leader election, both controllers) against the
//! in-process API double with exactly the Role `bulkhead rbac` prints.

use std::sync::Arc;
use std::time::Duration;

use bulkhead::api::{ConditionSet, Credential, Tenant};
use bulkhead::controller::Settings;
use bulkhead::leader::LeaderConfig;
use bulkhead::operator::{self, RunConfig};
use bulkhead::rbac::{self, RbacOptions};
use bulkhead::telemetry::{ControllerLabels, Metrics, Readiness};
use k8s_openapi::api::rbac::v1::PolicyRule;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use k8s_openapi::api::core::v1::Secret;

use super::ApiDouble;

pub const NS: &str = "team-a";

pub fn role(opts: &RbacOptions) -> Vec<PolicyRule> {
    rbac::required_rules(opts)
        .into_iter()
        .map(|r| PolicyRule {
            api_groups: Some(r.api_groups),
            resources: Some(r.resources),
            resource_names: (!r.resource_names.is_empty()).then_some(r.resource_names),
            verbs: r.verbs,
            non_resource_urls: None,
        })
        .collect()
}

pub fn options() -> RbacOptions {
    RbacOptions {
        lease_name: "bulkhead".into(),
        identity_secret: "bulkhead-identity".into(),
        ..RbacOptions::default()
    }
}

pub struct Running {
    pub task: JoinHandle<bulkhead::Result<()>>,
    pub shutdown: CancellationToken,
    pub metrics: Arc<Metrics>,
    pub readiness: Readiness,
}

impl Running {
    /// Finished reconciles of `controller` (`credential` or `tenant`) in this process: the
    /// `bulkhead_reconcile_total` counter, counted when a reconcile returns.
    pub fn reconciles(&self, controller: &'static str) -> u64 {
        self.metrics
            .reconciles
            .get_or_create(&ControllerLabels { controller })
            .get()
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

pub fn start(double: &ApiDouble, identity: &str, rbac: RbacOptions, settings: Settings) -> Running {
    start_timed(
        double,
        identity,
        rbac,
        settings,
        (Duration::from_secs(30), Duration::from_secs(10)),
    )
}

/// `start` with other Lease timings: (duration, renew grace).
pub fn start_timed(
    double: &ApiDouble,
    identity: &str,
    rbac: RbacOptions,
    settings: Settings,
    timings: (Duration, Duration),
) -> Running {
    start_on(double.client(NS), identity, rbac, settings, timings)
}

/// `start_timed` on any client (the double behind a [`super::gate::Gate`], say).
pub fn start_on(
    client: kube::Client,
    identity: &str,
    rbac: RbacOptions,
    settings: Settings,
    (lease_duration, renew_grace): (Duration, Duration),
) -> Running {
    let shutdown = CancellationToken::new();
    let metrics = Arc::new(Metrics::default());
    let readiness = Readiness::starting();
    let config = RunConfig {
        namespace: NS.into(),
        leader: LeaderConfig {
            enabled: true,
            namespace: NS.into(),
            lease_name: rbac.lease_name.clone(),
            identity: identity.into(),
            lease_duration,
            renew_grace,
            owner: None,
        },
        rbac,
        drain_timeout: Duration::from_secs(5),
        settings,
    };
    let task = tokio::spawn(operator::run(
        client,
        config,
        metrics.clone(),
        readiness.clone(),
        shutdown.clone(),
    ));
    Running {
        task,
        shutdown,
        metrics,
        readiness,
    }
}

/// Polls `probe` every 20 ms until it returns `Some`, for at most 10 s.
pub async fn eventually<T>(what: &str, probe: impl FnMut() -> Option<T>) -> T {
    eventually_within(what, Duration::from_secs(10), probe).await
}

/// [`eventually`] with another bound, when the bound is what the test asserts.
pub async fn eventually_within<T>(
    what: &str,
    within: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One data value of a Secret in the double, as text.
pub fn secret_value(double: &ApiDouble, name: &str, key: &str) -> Option<String> {
    let s: Secret = double.get(NS, name)?;
    s.data?
        .get(key)
        .map(|b| String::from_utf8(b.0.clone()).unwrap())
}

/// Every request so far that wrote a Secret (anything but get, list, watch), as `METHOD path`.
pub fn secret_writes(double: &ApiDouble) -> Vec<String> {
    double
        .requests()
        .iter()
        .filter(|r| r.resource == "secrets" && !matches!(r.verb.as_str(), "get" | "list" | "watch"))
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

/// A Credential's condition `type_` as (status, reason, message).
pub fn condition(double: &ApiDouble, name: &str, type_: &str) -> Option<(String, String, String)> {
    let c: Credential = double.get(NS, name)?;
    let cond = c.status?.conditions.find(type_)?.clone();
    Some((cond.status, cond.reason, cond.message))
}

/// The Tenant `tenant`'s condition `type_` as (status, reason, message).
pub fn tenant_condition(double: &ApiDouble, type_: &str) -> Option<(String, String, String)> {
    let t: Tenant = double.get(NS, "tenant")?;
    let c = t.status?.conditions.find(type_)?.clone();
    Some((c.status, c.reason, c.message))
}

/// Sets a Credential's `bulkhead.dev/rotate-requested-at` annotation, as `kubectl annotate` would.
pub fn request_rotation(double: &ApiDouble, name: &str, stamp: &str) {
    let mut c: Credential = double.get(NS, name).unwrap();
    c.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert("bulkhead.dev/rotate-requested-at".into(), stamp.into());
    double.insert(&c);
}

/// Changes an annotation no one reads: the object's watch event triggers a reconcile (the
/// trigger hashes annotations), and nothing else about the object changes.
fn poke<K>(double: &ApiDouble, name: &str)
where
    K: kube::Resource<DynamicType = ()> + serde::Serialize + serde::de::DeserializeOwned,
{
    let mut object: K = double
        .get(NS, name)
        .unwrap_or_else(|| panic!("poke: no {} {name}", K::kind(&())));
    let annotations = object
        .meta_mut()
        .annotations
        .get_or_insert_with(Default::default);
    let next = annotations
        .get("test.bulkhead.dev/poke")
        .and_then(|n| n.parse::<u64>().ok())
        .map_or(0, |n| n + 1);
    annotations.insert("test.bulkhead.dev/poke".into(), next.to_string());
    double.insert(&object);
}

/// Returns once a reconcile of Credential `name` has run start to finish after this call
/// began: the proof to wait for before asserting that a reconcile changed nothing.
///
/// Each Credential reconcile reads its Secret once, first (the request log's GET), and the
/// reconciles of one object never overlap. So: poke, and wait for a GET after the poke (a
/// reconcile R that read the state as it is now); poke again, and wait for another GET (a
/// reconcile after R, which therefore finished).
pub async fn credential_reconciled(double: &ApiDouble, name: &str) {
    let credential: Credential = double
        .get(NS, name)
        .unwrap_or_else(|| panic!("no Credential {name}"));
    let path = format!("/namespaces/{NS}/secrets/{}", credential.secret_name());
    for _ in 0..2 {
        let mark = double.requests().len();
        poke::<Credential>(double, name);
        eventually(&format!("a reconcile of Credential {name}"), || {
            double.requests()[mark..]
                .iter()
                .any(|r| r.verb == "get" && r.path.ends_with(&path))
                .then_some(())
        })
        .await;
    }
}

/// Returns once a reconcile of the Tenant `tenant` has run start to finish after this call
/// began (the Tenant is the only one in these tests, so the controller's counter is its own).
///
/// A reconcile may be in flight when this starts, so one more finished reconcile proves
/// nothing; but reconciles of one object never overlap, so after two rounds of "poke, wait for
/// the counter to move" the second round's reconcile started after the first poke. (The poke
/// and the read of the counter run with no await between them: on the test's single-threaded
/// runtime no reconcile can finish in between.)
pub async fn tenant_reconciled(op: &Running, double: &ApiDouble) {
    for _ in 0..2 {
        poke::<Tenant>(double, "tenant");
        let before = op.reconciles("tenant");
        eventually("a reconcile of the Tenant", || {
            (op.reconciles("tenant") > before).then_some(())
        })
        .await;
    }
}

/// `bulkhead::api::credential(name)` in the test namespace: finish it with `.build()`.
pub fn credential(name: &str) -> bulkhead::api::CredentialBuilder {
    bulkhead::api::credential(name).namespace(NS)
}
