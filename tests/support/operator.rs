//! Running the whole operator (preflight, leader election, both controllers) against the
//! in-process API double with exactly the Role `bulkhead rbac` prints.

use std::sync::Arc;
use std::time::Duration;

use bulkhead::controller::Settings;
use bulkhead::leader::LeaderConfig;
use bulkhead::operator::{self, RunConfig};
use bulkhead::rbac::{self, RbacOptions};
use bulkhead::telemetry::{Metrics, Readiness};
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
        },
        rbac,
        drain_timeout: Duration::from_secs(5),
        settings,
    };
    let task = tokio::spawn(operator::run(
        double.client(NS),
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

pub async fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    for _ in 0..500 {
        if let Some(v) = probe() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

/// One data value of a Secret in the double, as text.
pub fn secret_value(double: &ApiDouble, name: &str, key: &str) -> Option<String> {
    let s: Secret = double.get(NS, name)?;
    s.data?
        .get(key)
        .map(|b| String::from_utf8(b.0.clone()).unwrap())
}
