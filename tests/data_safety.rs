//! Data-safety scenarios (SPEC §4, "nothing is lost") against the API double, which models
//! server-side apply's field ownership per manager and operation: the same scenarios run against
//! a real API server in `tests/e2e/data_safety.rs`, so the double is checked, not assumed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use bulkhead::api::Credential;
use bulkhead::api::credential::{
    Alphabet, CredentialSpec, CredentialType, DeletionPolicy, KeySetSpec, RandomSpec, RotationSpec,
};
use bulkhead::controller::Settings;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;
use support::operator::{NS, eventually, options, role, secret_value, start};
use support::{ApiDouble, Matcher};

fn credential(name: &str, type_: CredentialType) -> Credential {
    let mut c = Credential::new(
        name,
        CredentialSpec {
            type_,
            random: (type_ == CredentialType::Random).then_some(RandomSpec {
                length: 32,
                alphabet: Alphabet::Alphanumeric,
            }),
            key_set: (type_ == CredentialType::KeySet).then_some(KeySetSpec { size: 2 }),
            control_plane_token: None,
            registry_credentials: None,
            secret_name: None,
            rotation: None,
            restart_on_rotation: vec![],
            deletion_policy: DeletionPolicy::Delete,
            adopt: false,
        },
    );
    c.metadata.namespace = Some(NS.into());
    c
}

fn condition(double: &ApiDouble, name: &str, type_: &str) -> Option<(String, String, String)> {
    let c: Credential = double.get(NS, name)?;
    let cond = c
        .status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == type_)?;
    Some((cond.status, cond.reason, cond.message))
}

/// Change a stored Credential as a user would, bumping its generation.
fn edit(double: &ApiDouble, name: &str, change: impl FnOnce(&mut Credential)) {
    let mut c: Credential = double.get(NS, name).unwrap();
    change(&mut c);
    double.insert(&c);
}

fn request_rotation(double: &ApiDouble, name: &str, stamp: &str) {
    edit(double, name, |c| {
        c.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert("bulkhead.dev/rotate-requested-at".into(), stamp.into());
    });
}

fn data_keys(double: &ApiDouble, name: &str) -> BTreeSet<String> {
    let s: Secret = double.get(NS, name).unwrap();
    s.data.unwrap_or_default().into_keys().collect()
}

fn secret_writes(double: &ApiDouble) -> Vec<String> {
    double
        .requests()
        .iter()
        .filter(|r| r.resource == "secrets" && !matches!(r.verb.as_str(), "get" | "list" | "watch"))
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

/// After `proof` shows a reconcile ran after the last change (the drift re-check runs every
/// 100 ms here), no Secret was written in the window.
async fn assert_idle(double: &ApiDouble) {
    double.clear_requests();
    eventually("two reconciles", || {
        let gets = double
            .requests()
            .iter()
            .filter(|r| r.resource == "secrets" && r.verb == "get")
            .count();
        (gets >= 2).then_some(())
    })
    .await;
    assert_eq!(
        secret_writes(double),
        Vec::<String>::new(),
        "steady state writes nothing"
    );
}

fn settings() -> Settings {
    Settings {
        drift_check: Duration::from_millis(100),
        ..Settings::default()
    }
}

fn foreign_secret(name: &str, type_: &str, data: &[(&str, &[u8])]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NS.into()),
            ..ObjectMeta::default()
        },
        type_: Some(type_.into()),
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.to_vec())))
                .collect(),
        ),
        ..Secret::default()
    }
}

#[tokio::test]
async fn a_key_set_never_holds_more_keys_than_its_size() {
    let double = ApiDouble::new();
    double.set_role(role(&options()));
    double.insert(&credential("keys", CredentialType::KeySet));
    let op = start(&double, "a", options(), settings());
    eventually("created", || secret_value(&double, "keys", "1")).await;
    for (round, stamp) in ["r1", "r2", "r3"].into_iter().enumerate() {
        request_rotation(&double, "keys", stamp);
        let primary = (round + 2).to_string();
        eventually("rotated", || secret_value(&double, "keys", &primary)).await;
        let want: BTreeSet<String> = ["0".to_owned(), primary.clone()].into();
        eventually(&format!("keys {want:?}"), || {
            (data_keys(&double, "keys") == want).then_some(())
        })
        .await;
    }
    assert_idle(&double).await;
    op.stop().await;
}

#[tokio::test]
async fn delete_then_retain_drops_the_owner_reference() {
    let double = ApiDouble::new();
    double.set_role(role(&options()));
    double.insert(&credential("db", CredentialType::Random));
    let op = start(&double, "a", options(), settings());
    let owned = |double: &ApiDouble| {
        let s: Secret = double.get(NS, "db")?;
        Some(s.metadata.owner_references.is_some_and(|o| !o.is_empty()))
    };
    eventually("owner reference", || owned(&double).filter(|o| *o)).await;
    edit(&double, "db", |c| {
        c.spec.deletion_policy = DeletionPolicy::Retain
    });
    eventually("no owner reference", || owned(&double).filter(|o| !o)).await;
    assert_idle(&double).await;
    op.stop().await;
}

#[tokio::test]
async fn keep_previous_true_then_false_drops_the_previous_value() {
    let double = ApiDouble::new();
    double.set_role(role(&options()));
    let mut c = credential("db", CredentialType::Random);
    c.spec.rotation = Some(RotationSpec {
        every: Some("720h".into()),
        schedule: None,
        keep_previous: true,
    });
    double.insert(&c);
    let op = start(&double, "a", options(), settings());
    eventually("created", || secret_value(&double, "db", "value")).await;
    request_rotation(&double, "db", "r1");
    eventually("previous", || secret_value(&double, "db", "value.previous")).await;
    edit(&double, "db", |c| {
        if let Some(r) = c.spec.rotation.as_mut() {
            r.keep_previous = false;
        }
    });
    eventually("previous gone", || {
        (!data_keys(&double, "db").contains("value.previous")).then_some(())
    })
    .await;
    assert_idle(&double).await;
    op.stop().await;
}

async fn conflict_message(double: &ApiDouble, name: &str) -> String {
    eventually(&format!("{name}: Conflict"), || {
        condition(double, name, "Conflict").filter(|c| c.0 == "True")
    })
    .await
    .2
}

#[tokio::test]
async fn what_cannot_be_adopted_without_loss_is_a_conflict_and_left_untouched() {
    let double = ApiDouble::new();
    double.set_role(role(&options()));
    let adopting = |name: &str, type_| {
        let mut c = credential(name, type_);
        c.spec.adopt = true;
        c
    };
    let untouched = [
        foreign_secret("binary", "Opaque", &[("value", &[0xff, 0xfe, 0x00])]),
        foreign_secret("partial", "Opaque", &[("1", b"k1"), ("2", b"k2")]),
        foreign_secret(
            "tls",
            "kubernetes.io/tls",
            &[("tls.crt", b"c"), ("tls.key", b"k")],
        ),
    ];
    for s in &untouched {
        double.insert(s);
    }
    let before: Vec<_> = ["binary", "partial", "tls"]
        .iter()
        .map(|n| double.get_json("", "secrets", NS, n).unwrap())
        .collect();
    double.insert(&adopting("binary", CredentialType::Random));
    double.insert(&adopting("partial", CredentialType::KeySet));
    double.insert(&adopting("tls", CredentialType::Random));
    double.insert(&credential("first", CredentialType::Random));
    let op = start(&double, "a", options(), settings());
    let first = eventually("first", || secret_value(&double, "first", "value")).await;
    let mut second = adopting("second", CredentialType::Random);
    second.spec.secret_name = Some("first".into());
    double.insert(&second);
    for (name, cause) in [
        ("binary", "not UTF-8"),
        ("partial", "key 0"),
        ("tls", "kubernetes.io/tls"),
        ("second", "another Credential"),
    ] {
        let message = conflict_message(&double, name).await;
        assert!(message.contains(cause), "{name}: {message}");
    }
    assert_idle(&double).await;
    op.stop().await;
    for (name, was) in ["binary", "partial", "tls"].iter().zip(before) {
        assert_eq!(
            double.get_json("", "secrets", NS, name).unwrap(),
            was,
            "{name} untouched"
        );
    }
    assert_eq!(secret_value(&double, "first", "value"), Some(first));
}

#[tokio::test]
async fn an_adopted_secret_keeps_its_keys_and_gets_no_owner_reference_by_default() {
    let double = ApiDouble::new();
    double.set_role(role(&options()));
    double.insert(&foreign_secret(
        "db",
        "Opaque",
        &[
            ("value", b"theirs"),
            ("value.previous", b"older"),
            ("blob", &[0xff, 0x00]),
        ],
    ));
    double.insert(&foreign_secret(
        "keys",
        "Opaque",
        &[("0", b"k0"), ("1", b"k1"), ("2", b"k2"), ("3", b"k3")],
    ));
    let mut db = credential("db", CredentialType::Random);
    db.spec.adopt = true;
    db.spec.rotation = Some(RotationSpec {
        every: Some("720h".into()),
        schedule: None,
        keep_previous: false,
    });
    double.insert(&db);
    let mut keys = credential("keys", CredentialType::KeySet);
    keys.spec.adopt = true;
    double.insert(&keys);
    let op = start(&double, "a", options(), settings());
    for name in ["db", "keys"] {
        eventually(&format!("{name} adopted"), || {
            condition(&double, name, "Rotated").filter(|c| c.1 == "Adopted")
        })
        .await;
    }
    assert_idle(&double).await;
    op.stop().await;
    let s: Secret = double.get(NS, "db").unwrap();
    let data = s.data.clone().unwrap();
    assert_eq!(data["value"].0, b"theirs");
    assert_eq!(
        data["value.previous"].0, b"older",
        "kept until the first rotation"
    );
    assert_eq!(
        data["blob"].0,
        [0xff, 0x00],
        "binary values stay byte for byte"
    );
    assert!(s.metadata.owner_references.is_none(), "{:?}", s.metadata);
    assert_eq!(
        data_keys(&double, "keys"),
        ["0", "1", "2", "3"].map(String::from).into(),
        "more keys than size: none dropped at adoption"
    );

    // Asked for explicitly, an adopted Secret is deleted with its Credential.
    edit(&double, "db", |c| {
        c.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert("bulkhead.dev/delete-adopted-secret".into(), "true".into());
    });
    let op = start(&double, "a", options(), settings());
    eventually("owner reference", || {
        let s: Secret = double.get(NS, "db")?;
        s.metadata.owner_references.filter(|o| !o.is_empty())
    })
    .await;
    op.stop().await;
}

#[tokio::test]
async fn key_set_repair_never_drops_a_key_bulkhead_wrote() {
    let double = ApiDouble::new();
    double.set_role(role(&options()));
    let mut c = credential("keys", CredentialType::KeySet);
    c.spec.key_set = Some(KeySetSpec { size: 3 });
    double.insert(&c);
    let op = start(&double, "a", options(), settings());
    eventually("created", || secret_value(&double, "keys", "1")).await;
    request_rotation(&double, "keys", "r1");
    eventually("rotated", || secret_value(&double, "keys", "2")).await;
    let before: Secret = double.get(NS, "keys").unwrap();
    let mut tampered = before.clone();
    tampered
        .data
        .as_mut()
        .unwrap()
        .insert("99".into(), ByteString(b"by hand".to_vec()));
    double.insert(&tampered);
    let message = conflict_message(&double, "keys").await;
    assert!(message.contains("key 99"), "{message}");
    op.stop().await;
    let after: Secret = double.get(NS, "keys").unwrap();
    for key in ["0", "1", "2"] {
        assert_eq!(
            after.data.as_ref().unwrap()[key],
            before.data.as_ref().unwrap()[key],
            "key {key} kept"
        );
    }
}

#[tokio::test]
async fn a_name_longer_than_a_label_value_gets_a_label_safe_value() {
    let double = ApiDouble::new();
    double.set_role(role(&options()));
    let name = format!("a-credential-name-{}", "x".repeat(60));
    double.insert(&credential(&name, CredentialType::Random));
    let op = start(&double, "a", options(), settings());
    eventually("created", || secret_value(&double, &name, "value")).await;
    eventually("Ready", || {
        condition(&double, &name, "Ready").filter(|c| c.0 == "True")
    })
    .await;
    assert_idle(&double).await;
    op.stop().await;
}

#[tokio::test]
async fn a_forbidden_secret_call_is_a_condition_naming_the_rule() {
    let double = ApiDouble::new();
    double.set_role(role(&options()));
    // The Role as it would be with the rule missing, for this Secret only (a whole missing
    // rule keeps the operator unready before it reconciles anything).
    double.fail_next(Matcher::new("get", "secrets").name("db"), 403, 10_000);
    double.insert(&credential("db", CredentialType::Random));
    let op = start(&double, "a", options(), settings());
    let (_, reason, message) = eventually("Forbidden", || {
        condition(&double, "db", "Ready").filter(|c| c.1 == "Forbidden")
    })
    .await;
    op.stop().await;
    assert_eq!(reason, "Forbidden");
    assert!(
        message.contains("secrets: get, create, patch") && message.contains("helm upgrade"),
        "{message}"
    );
}
