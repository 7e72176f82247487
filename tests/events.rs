//! Events are off the reconcile's critical path: the whole operator runs against the API double
//! behind a gate that holds every Event request until the test opens it. The Secret and the
//! Credential's status must not wait for it, and the held Events must still be published (by
//! kube's Recorder, in order) once the API server takes them again.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bulkhead::api::{ConditionSet, Credential, credential};
use bulkhead::controller::Settings;
use bulkhead::leader::LeaderConfig;
use bulkhead::operator::{self, RunConfig};
use bulkhead::telemetry::{Metrics, Readiness};
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use support::ApiDouble;
use support::operator::{NS, eventually, options, role, secret_value};

/// The double, with Event writes (events.k8s.io) held until `open` is called.
#[derive(Clone)]
struct EventGate {
    double: ApiDouble,
    gate: Arc<Semaphore>,
    /// Event requests that reached the gate.
    held: Arc<AtomicUsize>,
}

impl EventGate {
    fn new(double: ApiDouble) -> Self {
        Self {
            double,
            gate: Arc::new(Semaphore::new(0)),
            held: Arc::default(),
        }
    }

    fn open(&self) {
        self.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    }
}

impl tower::Service<http::Request<kube::client::Body>> for EventGate {
    type Response = http::Response<support::apidouble::ResponseBody>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<kube::client::Body>) -> Self::Future {
        let this = self.clone();
        async move {
            let is_event = request.uri().path().starts_with("/apis/events.k8s.io/");
            if is_event {
                this.held.fetch_add(1, Ordering::SeqCst);
                let _permit = this.gate.acquire().await.unwrap();
            }
            Ok(this.double.handle(request).await)
        }
        .boxed()
    }
}

fn ready(double: &ApiDouble, name: &str) -> Option<String> {
    let c: Credential = double.get(NS, name)?;
    let ready = c.status?.conditions.find("Ready")?.clone();
    (ready.status == "True").then_some(ready.reason)
}

fn event_reasons(double: &ApiDouble, regarding: &str) -> Vec<String> {
    double
        .list_json("events.k8s.io", "events", NS)
        .into_iter()
        .filter(|e| e["regarding"]["name"] == regarding)
        .map(|e| e["reason"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn an_event_write_that_hangs_delays_neither_the_secret_nor_the_status() {
    let double = ApiDouble::new();
    let rbac = options();
    double.set_role(role(&rbac));
    double.insert(&credential("db").namespace(NS).random(32).build());
    let gated = EventGate::new(double.clone());

    let shutdown = CancellationToken::new();
    let config = RunConfig {
        namespace: NS.into(),
        leader: LeaderConfig {
            enabled: true,
            namespace: NS.into(),
            lease_name: rbac.lease_name.clone(),
            identity: "a".into(),
            lease_duration: Duration::from_secs(30),
            renew_grace: Duration::from_secs(10),
        },
        rbac,
        drain_timeout: Duration::from_secs(5),
        settings: Settings::default(),
    };
    let task = tokio::spawn(operator::run(
        kube::Client::new(gated.clone(), NS),
        config,
        Arc::new(Metrics::default()),
        Readiness::starting(),
        shutdown.clone(),
    ));

    // The reconcile ran far enough to write an Event, and that write is stuck...
    eventually("an Event write held at the gate", || {
        (gated.held.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    // ...yet the Secret is written and the status says Ready.
    let value = eventually("db's Secret", || secret_value(&double, "db", "value")).await;
    assert_eq!(value.len(), 32);
    eventually("db Ready while its Events are held", || {
        ready(&double, "db")
    })
    .await;
    assert!(
        event_reasons(&double, "db").is_empty(),
        "no Event can have been written through the closed gate"
    );

    // Once the API server takes Events again, the held ones are published.
    gated.open();
    let mut reasons = eventually("db's Events published", || {
        let reasons = event_reasons(&double, "db");
        (reasons.len() >= 2).then_some(reasons)
    })
    .await;
    reasons.sort();
    assert_eq!(reasons, ["Created", "Ready"]);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
