//! Data safety against a real API server (SPEC §4, issue #11): what Bulkhead stops writing is
//! really gone despite server-side apply's field ownership, a retained Secret survives the
//! garbage collector, adopting never loses data, and steady state writes nothing (the audit
//! log is the witness). The same scenarios run on the API double in `tests/data_safety.rs`.

use super::*;

use base64::prelude::{BASE64_STANDARD, Engine as _};

/// Data keys of a Secret.
fn keys(secret: &Secret) -> Vec<String> {
    secret
        .data
        .as_ref()
        .map(|d| d.keys().cloned().collect())
        .unwrap_or_default()
}

async fn patch_spec(client: &Client, ns: &str, name: &str, spec: serde_json::Value) {
    Api::<Credential>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "spec": spec })),
        )
        .await
        .unwrap();
}

async fn delete_credential(client: &Client, ns: &str, name: &str) {
    Api::<Credential>::namespaced(client.clone(), ns)
        .delete(name, &DeleteParams::default())
        .await
        .unwrap();
}

/// A Secret as `kubectl create` would make it (manager `kubectl`, operation Update).
async fn foreign(client: &Client, ns: &str, name: &str, type_: &str, data: serde_json::Value) {
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": ns},
        "type": type_,
        "data": data,
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(
            &PostParams {
                field_manager: Some("kubectl".into()),
                ..PostParams::default()
            },
            &secret,
        )
        .await
        .unwrap();
}

/// Wait until the Secret has exactly these data keys.
async fn wait_keys(client: &Client, ns: &str, name: &str, want: &[&str]) -> Secret {
    eventually(
        &format!("Secret {name} with keys {want:?}"),
        WAIT,
        || async {
            secret(client, ns, name)
                .await
                .filter(|s| keys(s) == want.iter().map(|k| (*k).to_owned()).collect::<Vec<_>>())
        },
    )
    .await
}

/// The garbage collector ran: a Delete-policy Credential's Secret is gone after its owner.
async fn garbage_collected(client: &Client, ns: &str, name: &str) {
    delete_credential(client, ns, name).await;
    eventually(
        &format!("Secret {name} garbage-collected"),
        Duration::from_secs(90),
        || async { secret(client, ns, name).await.is_none().then_some(()) },
    )
    .await;
}

/// With re-checks every 3 s: a window in which the operator re-read `name` at least twice (a
/// proof the reconciles ran) and wrote no Secret.
async fn assert_no_secret_writes(cluster: &Cluster, release: &Release, name: &str) {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let from = jiff::Timestamp::now();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let to = jiff::Timestamp::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let audit = cluster.audit();
    let user = release.user();
    let window = audit.by_user_between(&user, from, to);
    let rereads = window
        .iter()
        .filter(|e| e.verb == "get" && e.resource() == "secrets" && e.name() == name)
        .count();
    assert!(rereads >= 2, "{rereads} re-reads of Secret {name} in 8 s");
    let writes: Vec<String> = window
        .iter()
        .filter(|e| e.is_write() && e.resource() == "secrets")
        .map(|e| e.describe())
        .collect();
    assert!(
        writes.is_empty(),
        "Secret writes at steady state: {writes:#?}"
    );
}

fn options(ns: &str) -> OperatorOptions {
    let mut options = OperatorOptions::new(ns, "op-a");
    options.extra_args = vec!["--drift-check-interval=3s".into()];
    options
}

/// A KeySet past its size, Delete → Retain → delete with the garbage collector, keepPrevious
/// true → false, a name longer than a label value: every dropped field is gone, and then
/// nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(bulkhead_e2e),
    ignore = "needs a control plane: set KUBEBUILDER_ASSETS (see README, Testing)"
)]
async fn every_field_bulkhead_drops_is_gone_on_a_real_server() {
    let binaries = Binaries::from_env();
    let cluster = Cluster::start(binaries);
    // CRDs first: the garbage collector discovers a new resource ~30 s late.
    cluster.install_crds();
    let ns = "team-a";
    let admin = cluster.admin_client().await;
    let (release, mut operator) = release_and_operator(&cluster, ns, &[], &options(ns));
    operator.wait_leader(WAIT);

    // A KeySet of size 2 holds exactly 2 keys after each rotation.
    create(
        &admin,
        ns,
        &credential(ns, "keys", json!({"type": "KeySet", "keySet": {"size": 2}})),
    )
    .await;
    wait_keys(&admin, ns, "keys", &["0", "1"]).await;
    for (round, stamp) in ["r1", "r2", "r3"].into_iter().enumerate() {
        request_rotation(&admin, ns, "keys", stamp).await;
        let primary = (round + 2).to_string();
        wait_keys(&admin, ns, "keys", &["0", primary.as_str()]).await;
    }

    // keepPrevious true -> false removes value.previous.
    create(
        &admin,
        ns,
        &credential(
            ns,
            "db",
            json!({"type": "Random", "random": {"length": 32}, "rotation": {"every": "720h", "keepPrevious": true}}),
        ),
    )
    .await;
    wait_value(&admin, ns, "db", WAIT).await;
    request_rotation(&admin, ns, "db", "r1").await;
    wait_keys(&admin, ns, "db", &["value", "value.previous"]).await;
    patch_spec(
        &admin,
        ns,
        "db",
        json!({"rotation": {"keepPrevious": false}}),
    )
    .await;
    wait_keys(&admin, ns, "db", &["value"]).await;

    // Delete -> Retain drops the ownerReference, so the garbage collector keeps the Secret.
    create(&admin, ns, &random_credential(ns, "kept")).await;
    create(&admin, ns, &random_credential(ns, "gone")).await;
    let owned = wait_value(&admin, ns, "kept", WAIT).await;
    assert!(owned.metadata.owner_references.is_some());
    wait_value(&admin, ns, "gone", WAIT).await;
    patch_spec(&admin, ns, "kept", json!({"deletionPolicy": "Retain"})).await;
    let retained = eventually("no ownerReference", WAIT, || async {
        secret(&admin, ns, "kept").await.filter(|s| {
            s.metadata
                .owner_references
                .as_ref()
                .is_none_or(Vec::is_empty)
        })
    })
    .await;

    // A name longer than 63 characters: a label-safe value, and Ready.
    let long = format!("a-credential-name-{}", "x".repeat(60));
    create(&admin, ns, &random_credential(ns, &long)).await;
    let s = wait_value(&admin, ns, &long, WAIT).await;
    let label = &s.labels()["bulkhead.dev/credential"];
    assert!(
        label.len() <= 63 && label.starts_with("a-credential-name-"),
        "{label}"
    );
    wait_condition(&admin, ns, &long, "Ready", "True").await;

    assert_no_secret_writes(&cluster, &release, "keys").await;
    assert_no_secret_writes(&cluster, &release, "db").await;

    delete_credential(&admin, ns, "kept").await;
    garbage_collected(&admin, ns, "gone").await;
    let after = secret(&admin, ns, "kept")
        .await
        .expect("the retained Secret survives");
    assert_eq!(data(&after, "value"), data(&retained, "value"));
}

/// `adopt: true` never loses data: what cannot be adopted without loss is a Conflict naming the
/// cause, and an adopted Secret is not deleted with its Credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(bulkhead_e2e),
    ignore = "needs a control plane: set KUBEBUILDER_ASSETS (see README, Testing)"
)]
async fn adopting_never_loses_data_on_a_real_server() {
    let binaries = Binaries::from_env();
    let cluster = Cluster::start(binaries);
    cluster.install_crds();
    let ns = "team-a";
    let admin = cluster.admin_client().await;
    let (release, mut operator) = release_and_operator(&cluster, ns, &[], &options(ns));
    operator.wait_leader(WAIT);
    let adopting = |name: &str, spec: serde_json::Value| {
        let mut spec = spec;
        spec["adopt"] = true.into();
        credential(ns, name, spec)
    };
    let b64 = |bytes: &[u8]| BASE64_STANDARD.encode(bytes);
    let random = json!({"type": "Random", "random": {"length": 32}});

    // a) a value that is not text
    foreign(
        &admin,
        ns,
        "binary",
        "Opaque",
        json!({"value": b64(&[0xff, 0xfe, 0x00])}),
    )
    .await;
    // b) numbered keys without the staged key 0
    foreign(
        &admin,
        ns,
        "partial",
        "Opaque",
        json!({"1": b64(b"k1"), "2": b64(b"k2")}),
    )
    .await;
    // d) another type
    foreign(
        &admin,
        ns,
        "tls",
        "kubernetes.io/tls",
        json!({"tls.crt": b64(b"crt"), "tls.key": b64(b"key")}),
    )
    .await;
    // e) a plain Secret that is adopted
    foreign(
        &admin,
        ns,
        "adopted",
        "Opaque",
        json!({"value": b64(b"theirs"), "note": b64(b"n")}),
    )
    .await;
    let before: Vec<Secret> = {
        let mut v = Vec::new();
        for name in ["binary", "partial", "tls"] {
            v.push(secret(&admin, ns, name).await.unwrap());
        }
        v
    };
    create(&admin, ns, &adopting("binary", random.clone())).await;
    create(
        &admin,
        ns,
        &adopting("partial", json!({"type": "KeySet", "keySet": {"size": 3}})),
    )
    .await;
    create(&admin, ns, &adopting("tls", random.clone())).await;
    create(&admin, ns, &adopting("adopted", random.clone())).await;
    // c) a second Credential adopting a Secret another Credential manages
    create(&admin, ns, &random_credential(ns, "first")).await;
    let first = wait_value(&admin, ns, "first", WAIT).await;
    create(
        &admin,
        ns,
        &adopting(
            "second",
            json!({"type": "Random", "random": {"length": 32}, "secretName": "first"}),
        ),
    )
    .await;

    for (name, cause) in [
        ("binary", "not UTF-8"),
        ("partial", "key 0"),
        ("tls", "kubernetes.io/tls"),
        ("second", "another Credential"),
    ] {
        let (_, _, message) = wait_condition(&admin, ns, name, "Conflict", "True").await;
        assert!(message.contains(cause), "{name}: {message}");
    }
    for s in before {
        let now = secret(&admin, ns, &s.name_any()).await.unwrap();
        assert_eq!(now.data, s.data, "{} untouched", s.name_any());
        assert_eq!(
            now.metadata.labels,
            s.metadata.labels,
            "{} untouched",
            s.name_any()
        );
    }
    let (_, reason, _) = wait_condition(&admin, ns, "adopted", "Rotated", "True").await;
    assert_eq!(reason, "Adopted");
    let adopted = secret(&admin, ns, "adopted").await.unwrap();
    assert_eq!(data(&adopted, "value").as_deref(), Some("theirs"));
    assert_eq!(data(&adopted, "note").as_deref(), Some("n"));
    assert!(
        adopted.metadata.owner_references.is_none(),
        "an adopted Secret is not deleted with its Credential by default"
    );
    assert_no_secret_writes(&cluster, &release, "first").await;
    let still = secret(&admin, ns, "first").await.unwrap();
    assert_eq!(
        data(&still, "value"),
        data(&first, "value"),
        "the first Credential keeps its Secret"
    );

    // (The second Credential goes first: it would create Secret first again once it is gone.)
    delete_credential(&admin, ns, "second").await;
    delete_credential(&admin, ns, "adopted").await;
    garbage_collected(&admin, ns, "first").await;
    assert!(
        secret(&admin, ns, "adopted").await.is_some(),
        "the adopted Secret survives"
    );
}

/// A restart target the Role does not list is reported from the first reconcile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(bulkhead_e2e),
    ignore = "needs a control plane: set KUBEBUILDER_ASSETS (see README, Testing)"
)]
async fn an_unlisted_restart_target_is_reported_from_creation() {
    let binaries = Binaries::from_env();
    let cluster = Cluster::start(binaries.without_controller_manager());
    cluster.install_crds();
    let ns = "team-a";
    let admin = cluster.admin_client().await;
    let (_release, mut operator) = release_and_operator(&cluster, ns, &[], &options(ns));
    operator.wait_leader(WAIT);
    create(&admin, ns, &deployment(ns, "api")).await;
    create(
        &admin,
        ns,
        &credential(
            ns,
            "db",
            json!({
                "type": "Random",
                "random": {"length": 32},
                "restartOnRotation": [{"kind": "Deployment", "name": "api"}],
            }),
        ),
    )
    .await;
    wait_value(&admin, ns, "db", WAIT).await;
    let (_, reason, message) =
        wait_condition(&admin, ns, "db", "RestartNotPermitted", "True").await;
    assert_eq!(reason, "Forbidden");
    assert!(message.contains("rbac.restartTargets"), "{message}");
    let c = get_credential(&admin, ns, "db").await;
    assert!(c.status.unwrap().last_rotation_time.is_some());
    assert!(
        template_annotations(&admin, ns, "api").await.is_empty(),
        "no restart tried"
    );
}
