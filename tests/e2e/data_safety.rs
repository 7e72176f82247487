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

/// With re-checks every 3 s: the window from the operator's next re-read of Secret `name` to
/// the one after next (two whole reconciles, both begun after what the caller waited for), in
/// which it wrote no Secret.
async fn assert_no_secret_writes(cluster: &Cluster, release: &Release, name: &str) {
    let user = release.user();
    let window = cluster
        .between_rereads(&user, NS, name, 3, Duration::from_secs(20))
        .await;
    let rereads = window
        .iter()
        .filter(|e| e.verb == "get" && e.resource() == "secrets" && e.name() == name)
        .count();
    assert!(rereads >= 2, "{rereads} re-reads of Secret {name}");
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

const NS: &str = "team-a";

/// A control plane, the chart installed in `NS`, and the operator leading there (re-checks
/// every 3 s).
struct Env {
    cluster: Cluster,
    release: Release,
    admin: Client,
    _operator: Operator,
}

impl Env {
    async fn start(binaries: Binaries) -> Self {
        let cluster = Cluster::start(binaries);
        // CRDs first: the garbage collector discovers a new resource ~30 s late.
        cluster.install_crds();
        let admin = cluster.admin_client().await;
        let (release, mut operator) = release_and_operator(&cluster, NS, &[], &options(NS));
        operator.wait_leader(WAIT);
        Self {
            cluster,
            release,
            admin,
            _operator: operator,
        }
    }

    async fn assert_no_secret_writes(&self, name: &str) {
        assert_no_secret_writes(&self.cluster, &self.release, name).await;
    }
}

/// A KeySet of size 2 holds exactly 2 keys after each rotation (the create's key `1` is owned by
/// another field manager than the applies); its key id is keyed; a key added by hand is
/// reported and no key is "repaired" away; then nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(bulkhead_e2e),
    ignore = "needs a control plane: set KUBEBUILDER_ASSETS (see README, Testing)"
)]
async fn a_key_set_holds_size_keys_and_repair_keeps_every_key() {
    let binaries = Binaries::from_env();
    let env = Env::start(binaries.without_controller_manager()).await;
    let (ns, admin) = (NS, &env.admin);
    create(admin, ns, &credential(ns, "keys").key_set(2).build()).await;
    wait_keys(admin, ns, "keys", &["0", "1"]).await;
    for (round, stamp) in ["r1", "r2", "r3"].into_iter().enumerate() {
        request_rotation(admin, ns, "keys", stamp).await;
        let primary = (round + 2).to_string();
        wait_keys(admin, ns, "keys", &["0", primary.as_str()]).await;
    }

    // The key id is keyed with the Secret's own salt: not the unkeyed hash of the primary.
    let s = secret(admin, ns, "keys").await.unwrap();
    let salt = annotation(&s, "bulkhead.dev/key-id-salt").expect("a key-id salt");
    let primary = data(&s, "4").unwrap();
    let keyed = bulkhead::resources::secret::key_id(&salt, &primary);
    assert_ne!(keyed, bulkhead::resources::secret::unkeyed_key_id(&primary));
    eventually("status key id", WAIT, || async {
        let c = get_credential(admin, ns, "keys").await;
        (c.status?.key_id.as_deref() == Some(keyed.as_str())).then_some(())
    })
    .await;

    // A key added by hand above the primary is reported, and no key is "repaired" away.
    let secrets = Api::<Secret>::namespaced(admin.clone(), ns);
    let by_hand = json!({"data": {"99": BASE64_STANDARD.encode(b"by hand")}});
    secrets
        .patch("keys", &PatchParams::default(), &Patch::Merge(&by_hand))
        .await
        .unwrap();
    let (_, _, message) = wait_condition(admin, ns, "keys", "Conflict", "True").await;
    assert!(message.contains("key 99"), "{message}");
    let kept = secret(admin, ns, "keys").await.unwrap();
    assert_eq!(keys(&kept), ["0", "4", "99"]);
    assert_eq!(data(&kept, "0"), data(&s, "0"));
    assert_eq!(data(&kept, "4"), data(&s, "4"));
    let removed = json!({"data": {"99": null}});
    secrets
        .patch("keys", &PatchParams::default(), &Patch::Merge(&removed))
        .await
        .unwrap();
    wait_condition(admin, ns, "keys", "Conflict", "False").await;
    env.assert_no_secret_writes("keys").await;
    assert_eq!(secret(admin, ns, "keys").await.unwrap().data, s.data);
}

/// Delete -> Retain removes the ownerReference (owned by the create), so deleting the
/// Credential leaves the Secret to the garbage collector's mercy no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(bulkhead_e2e),
    ignore = "needs a control plane: set KUBEBUILDER_ASSETS (see README, Testing)"
)]
async fn delete_then_retain_keeps_the_secret_from_the_garbage_collector() {
    let binaries = Binaries::from_env();
    let env = Env::start(binaries).await;
    let (ns, admin) = (NS, &env.admin);
    create(admin, ns, &random_credential(ns, "kept")).await;
    create(admin, ns, &random_credential(ns, "gone")).await;
    let owned = wait_value(admin, ns, "kept", WAIT).await;
    assert!(owned.metadata.owner_references.is_some());
    wait_value(admin, ns, "gone", WAIT).await;
    patch_spec(admin, ns, "kept", json!({"deletionPolicy": "Retain"})).await;
    let retained = eventually("no ownerReference", WAIT, || async {
        secret(admin, ns, "kept").await.filter(|s| {
            s.metadata
                .owner_references
                .as_ref()
                .is_none_or(Vec::is_empty)
        })
    })
    .await;
    env.assert_no_secret_writes("kept").await;
    delete_credential(admin, ns, "kept").await;
    garbage_collected(admin, ns, "gone").await;
    let after = secret(admin, ns, "kept")
        .await
        .expect("the retained Secret survives");
    assert_eq!(data(&after, "value"), data(&retained, "value"));
}

/// keepPrevious true -> false removes value.previous; then nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(bulkhead_e2e),
    ignore = "needs a control plane: set KUBEBUILDER_ASSETS (see README, Testing)"
)]
async fn keep_previous_true_then_false_drops_the_previous_value() {
    let binaries = Binaries::from_env();
    let env = Env::start(binaries.without_controller_manager()).await;
    let (ns, admin) = (NS, &env.admin);
    let db = credential(ns, "db")
        .every("720h")
        .keep_previous(true)
        .build();
    create(admin, ns, &db).await;
    wait_value(admin, ns, "db", WAIT).await;
    request_rotation(admin, ns, "db", "r1").await;
    wait_keys(admin, ns, "db", &["value", "value.previous"]).await;
    patch_spec(
        admin,
        ns,
        "db",
        json!({"rotation": {"keepPrevious": false}}),
    )
    .await;
    wait_keys(admin, ns, "db", &["value"]).await;
    env.assert_no_secret_writes("db").await;
}

/// A Credential name longer than a label value (63) gets a label-safe value and is Ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(bulkhead_e2e),
    ignore = "needs a control plane: set KUBEBUILDER_ASSETS (see README, Testing)"
)]
async fn a_name_longer_than_a_label_value_is_served() {
    let binaries = Binaries::from_env();
    let env = Env::start(binaries.without_controller_manager()).await;
    let (ns, admin) = (NS, &env.admin);
    let long = format!("a-credential-name-{}", "x".repeat(60));
    create(admin, ns, &random_credential(ns, &long)).await;
    let s = wait_value(admin, ns, &long, WAIT).await;
    let label = &s.labels()["bulkhead.dev/credential"];
    assert!(
        label.len() <= 63 && label.starts_with("a-credential-name-"),
        "{label}"
    );
    wait_condition(admin, ns, &long, "Ready", "True").await;
    env.assert_no_secret_writes(&long).await;
}

fn b64(bytes: &[u8]) -> String {
    BASE64_STANDARD.encode(bytes)
}

/// What cannot be adopted without loss is a Conflict naming the cause, and the Secret is left
/// untouched: a non-text value, numbered keys without key 0, another type, a Secret another
/// Credential manages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(bulkhead_e2e),
    ignore = "needs a control plane: set KUBEBUILDER_ASSETS (see README, Testing)"
)]
async fn what_cannot_be_adopted_without_loss_is_a_conflict() {
    let binaries = Binaries::from_env();
    let env = Env::start(binaries.without_controller_manager()).await;
    let (ns, admin) = (NS, &env.admin);
    foreign(
        admin,
        ns,
        "binary",
        "Opaque",
        json!({"value": b64(&[0xff, 0xfe, 0x00])}),
    )
    .await;
    foreign(
        admin,
        ns,
        "partial",
        "Opaque",
        json!({"1": b64(b"k1"), "2": b64(b"k2")}),
    )
    .await;
    let tls = json!({"tls.crt": b64(b"crt"), "tls.key": b64(b"key")});
    foreign(admin, ns, "tls", "kubernetes.io/tls", tls).await;
    let mut before = Vec::new();
    for name in ["binary", "partial", "tls"] {
        before.push(secret(admin, ns, name).await.unwrap());
    }
    create(admin, ns, &credential(ns, "binary").adopt().build()).await;
    let partial = credential(ns, "partial").key_set(3).adopt().build();
    create(admin, ns, &partial).await;
    create(admin, ns, &credential(ns, "tls").adopt().build()).await;
    create(admin, ns, &random_credential(ns, "first")).await;
    let first = wait_value(admin, ns, "first", WAIT).await;
    let second = credential(ns, "second").adopt().secret_name("first");
    create(admin, ns, &second.build()).await;

    for (name, cause) in [
        ("binary", "not UTF-8"),
        ("partial", "key 0"),
        ("tls", "kubernetes.io/tls"),
        ("second", "another Credential"),
    ] {
        let (_, _, message) = wait_condition(admin, ns, name, "Conflict", "True").await;
        assert!(message.contains(cause), "{name}: {message}");
    }
    env.assert_no_secret_writes("first").await;
    for s in before {
        let now = secret(admin, ns, &s.name_any()).await.unwrap();
        assert_eq!(now.data, s.data, "{} untouched", s.name_any());
        assert_eq!(
            now.metadata.labels,
            s.metadata.labels,
            "{} untouched",
            s.name_any()
        );
    }
    let still = secret(admin, ns, "first").await.unwrap();
    assert_eq!(
        still.data, first.data,
        "the first Credential keeps its Secret"
    );
}

/// An adopted Secret keeps its keys and is not deleted with its Credential (default Delete).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(bulkhead_e2e),
    ignore = "needs a control plane: set KUBEBUILDER_ASSETS (see README, Testing)"
)]
async fn an_adopted_secret_survives_its_credential() {
    let binaries = Binaries::from_env();
    let env = Env::start(binaries).await;
    let (ns, admin) = (NS, &env.admin);
    let data_in = json!({"value": b64(b"theirs"), "note": b64(&[0xff, 0x00])});
    foreign(admin, ns, "adopted", "Opaque", data_in).await;
    create(admin, ns, &credential(ns, "adopted").adopt().build()).await;
    create(admin, ns, &random_credential(ns, "gone")).await;
    let (_, reason, _) = wait_condition(admin, ns, "adopted", "Rotated", "True").await;
    assert_eq!(reason, "Adopted");
    let adopted = secret(admin, ns, "adopted").await.unwrap();
    assert_eq!(data(&adopted, "value").as_deref(), Some("theirs"));
    assert_eq!(adopted.data.as_ref().unwrap()["note"].0, [0xff, 0x00]);
    assert!(
        adopted.metadata.owner_references.is_none(),
        "an adopted Secret is not deleted with its Credential by default"
    );
    env.assert_no_secret_writes("adopted").await;
    delete_credential(admin, ns, "adopted").await;
    wait_value(admin, ns, "gone", WAIT).await;
    garbage_collected(admin, ns, "gone").await;
    let after = secret(admin, ns, "adopted")
        .await
        .expect("the adopted Secret survives");
    assert_eq!(after.data, adopted.data);
}

/// A restart target the Role does not list is reported from the first reconcile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(bulkhead_e2e),
    ignore = "needs a control plane: set KUBEBUILDER_ASSETS (see README, Testing)"
)]
async fn an_unlisted_restart_target_is_reported_from_creation() {
    let binaries = Binaries::from_env();
    let env = Env::start(binaries.without_controller_manager()).await;
    let (ns, admin) = (NS, &env.admin);
    create(admin, ns, &deployment(ns, "api")).await;
    create(
        admin,
        ns,
        &credential(ns, "db")
            .restart(RestartKind::Deployment, "api")
            .build(),
    )
    .await;
    wait_value(admin, ns, "db", WAIT).await;
    let (_, reason, message) = wait_condition(admin, ns, "db", "RestartNotPermitted", "True").await;
    assert_eq!(reason, "Forbidden");
    assert!(message.contains("rbac.restartTargets"), "{message}");
    let c = get_credential(admin, ns, "db").await;
    assert!(c.status.unwrap().last_rotation_time.is_some());
    assert!(
        template_annotations(admin, ns, "api").await.is_empty(),
        "no restart tried"
    );
}
