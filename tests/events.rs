//! Events are off the reconcile's critical path: the whole operator runs against the API double
//! behind a gate that holds every Event request until the test opens it. The Secret and the
//! Credential's status must not wait for it, and the held Events must still be published (by
//! kube's Recorder, in order) once the API server takes them again.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use bulkhead::api::{ConditionSet, Credential, credential};
use bulkhead::controller::Settings;

use support::ApiDouble;
use support::gate::Gate;
use support::operator::{NS, eventually, options, role, secret_value, start_on};

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
    let gated = Gate::new(double.clone(), |request| {
        request.uri().path().starts_with("/apis/events.k8s.io/")
    });

    let op = start_on(
        gated.client(NS),
        "a",
        rbac,
        Settings::default(),
        (Duration::from_secs(30), Duration::from_secs(10)),
    );

    // The reconcile ran far enough to write an Event, and that write is stuck...
    eventually("an Event write held at the gate", || {
        (gated.held() > 0).then_some(())
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

    op.stop().await;
}
