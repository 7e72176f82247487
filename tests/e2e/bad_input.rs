//! Bad input on a real API server: what other people write into the namespace never stops
//! Bulkhead for everyone else.

use super::*;

use kube::api::DynamicObject;
use kube::core::ApiResource;

/// An object of a newer CRD bundle: an admin widens `spec.type` on the served CRD (as a newer
/// bundle would), then an editor creates a Credential of a type this binary does not know.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(bulkhead_e2e),
    ignore = "needs a control plane: set KUBEBUILDER_ASSETS (see README, Testing)"
)]
async fn an_object_from_a_newer_crd_bundle_is_reported_and_the_others_still_reconcile() {
    let binaries = Binaries::from_env();
    let cluster = Cluster::start(binaries.without_controller_manager());
    cluster.install_crds();
    let ns = "team-a";
    let admin = cluster.admin_client().await;
    cluster.kubectl_ok(&[
        "patch",
        "crd",
        "credentials.bulkhead.dev",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/type/enum/-","value":"Certificate"}]"#,
    ]);
    let release = cluster.install_release(ns, &[]);
    // Created before the operator starts, so its first list holds it; it sorts first, so the
    // preflight's `list limit=1` meets it too.
    let credentials: Api<DynamicObject> =
        Api::namespaced_with(admin.clone(), ns, &ApiResource::erase::<Credential>(&()));
    let bad: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "bulkhead.dev/v1alpha1", "kind": "Credential",
        "metadata": {"name": "aaa-cert", "namespace": ns},
        "spec": {"type": "Certificate"}
    }))
    .unwrap();
    // The widened schema is served within moments of the patch.
    eventually("the Certificate Credential is admitted", WAIT, || async {
        credentials.create(&PostParams::default(), &bad).await.ok()
    })
    .await;
    create(&admin, ns, &random_credential(ns, "db")).await;

    let kubeconfig = cluster.service_account_kubeconfig(&release);
    let mut operator = Operator::start(&cluster, &kubeconfig, &OperatorOptions::new(ns, "op-a"));
    operator.wait_ready(Duration::from_secs(60));
    operator.wait_leader(WAIT);

    let first = wait_value(&admin, ns, "db", WAIT).await;
    wait_condition(&admin, ns, "db", "Ready", "True").await;

    let events: Api<Event> = Api::namespaced(admin.clone(), ns);
    let event = eventually("a Warning Event about aaa-cert", WAIT, || async {
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("aaa-cert"))
    })
    .await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(event.reason.as_deref(), Some("Undecodable"));
    let note = event.note.unwrap_or_default();
    assert!(
        note.contains("spec.type") && note.contains("Certificate") && note.contains("newer"),
        "{note}"
    );
    assert_eq!(
        operator.metric("bulkhead_undecodable_objects_total{kind=\"Credential\"}"),
        Some(1.0),
        "{}",
        operator.metrics_text()
    );
    assert!(
        operator.process.log_text().contains("aaa-cert"),
        "a log line names the object"
    );

    // Everything else keeps going: a rotation, and a Credential created now.
    request_rotation(&admin, ns, "db", "2026-01-01T00:00:00Z").await;
    eventually("db rotated", WAIT, || async {
        secret(&admin, ns, "db")
            .await
            .filter(|s| data(s, "value") != data(&first, "value"))
    })
    .await;
    create(&admin, ns, &random_credential(ns, "api")).await;
    wait_value(&admin, ns, "api", WAIT).await;
    operator.process.signal("TERM");
}
