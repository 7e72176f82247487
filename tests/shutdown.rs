//! A shutdown lets in-flight reconciles finish (within `--drain-timeout`) before the process
//! gives up the Lease: a Secret write that was on its way lands, and the Credential's status says
//! so, instead of the reconcile being dropped halfway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use bulkhead::api::credential;
use bulkhead::controller::Settings;

use support::ApiDouble;
use support::gate::Gate;
use support::operator::{NS, condition, eventually, options, role, secret_value, start_on};

#[tokio::test]
async fn a_shutdown_lets_the_reconcile_in_flight_finish_its_write_and_status() {
    let double = ApiDouble::new();
    let rbac = options();
    double.set_role(role(&rbac));
    double.insert(&credential("db").namespace(NS).build());
    // The API server is slow to take the Secret's create: it is in flight when the stop comes.
    let secrets = format!("/api/v1/namespaces/{NS}/secrets");
    let gated = Gate::new(double.clone(), move |request| {
        request.method() == http::Method::POST && request.uri().path() == secrets
    });
    let mut op = start_on(
        gated.client(NS),
        "a",
        rbac,
        Settings::default(),
        (Duration::from_secs(30), Duration::from_secs(10)),
    );
    eventually("the Secret's create in flight", || {
        (gated.held() > 0).then_some(())
    })
    .await;

    op.shutdown.cancel();
    // A run that drops its reconciles on shutdown is done well within this; one that drains
    // waits for the write (up to the 5 s drain timeout of the test's config).
    let stopped_at_once = tokio::time::timeout(Duration::from_millis(500), &mut op.task)
        .await
        .is_ok();
    gated.open();
    if !stopped_at_once {
        tokio::time::timeout(Duration::from_secs(20), &mut op.task)
            .await
            .expect("the run ends once the write landed")
            .unwrap()
            .unwrap();
    }
    assert!(
        secret_value(&double, "db", "value").is_some(),
        "the Secret write in flight at shutdown was dropped (stopped at once: {stopped_at_once})"
    );
    let ready = condition(&double, "db", "Ready");
    assert_eq!(
        ready.as_ref().map(|(status, _, _)| status.as_str()),
        Some("True"),
        "the status reports the write: {ready:?}"
    );
}
