//! Data-safety scenarios (SPEC §4, "nothing is lost") against the API double, which models
//! server-side apply's field ownership per manager and operation: the same scenarios run against
//! a real API server in `tests/e2e/data_safety.rs`, so the double is checked, not assumed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use bulkhead::api::Credential;
use bulkhead::api::credential::DeletionPolicy;
use bulkhead::controller::Settings;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;
use support::operator::{
    NS, condition, credential, credential_reconciled, eventually, options, request_rotation, role,
    secret_value, secret_writes, start,
};
use support::{ApiDouble, Matcher};

/// Change a stored Credential as a user would, bumping its generation.
fn edit(double: &ApiDouble, name: &str, change: impl FnOnce(&mut Credential)) {
    let mut c: Credential = double.get(NS, name).unwrap();
    change(&mut c);
    double.insert(&c);
}

fn data_keys(double: &ApiDouble, name: &str) -> BTreeSet<String> {
    let s: Secret = double.get(NS, name).unwrap();
    s.data.unwrap_or_default().into_keys().collect()
}

/// Once a reconcile of each of `credentials` has run start to finish after this call began, no
/// Secret was written in the meantime: the steady state writes nothing.
async fn assert_idle(double: &ApiDouble, credentials: &[&str]) {
    double.clear_requests();
    for name in credentials {
        credential_reconciled(double, name).await;
    }
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
    double.insert(&credential("keys").key_set(2).build());
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
    assert_idle(&double, &["keys"]).await;
    op.stop().await;
}

#[tokio::test]
async fn delete_then_retain_drops_the_owner_reference() {
    let double = ApiDouble::new();
    double.set_role(role(&options()));
    double.insert(&credential("db").build());
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
    assert_idle(&double, &["db"]).await;
    op.stop().await;
}

#[tokio::test]
async fn keep_previous_true_then_false_drops_the_previous_value() {
    let double = ApiDouble::new();
    double.set_role(role(&options()));
    double.insert(&credential("db").every("720h").keep_previous(true).build());
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
    assert_idle(&double, &["db"]).await;
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
    double.insert(&credential("binary").adopt().build());
    double.insert(&credential("partial").key_set(2).adopt().build());
    double.insert(&credential("tls").adopt().build());
    double.insert(&credential("first").build());
    let op = start(&double, "a", options(), settings());
    let first = eventually("first", || secret_value(&double, "first", "value")).await;
    double.insert(&credential("second").adopt().secret_name("first").build());
    for (name, cause) in [
        ("binary", "not UTF-8"),
        ("partial", "key 0"),
        ("tls", "kubernetes.io/tls"),
        ("second", "another Credential"),
    ] {
        let message = conflict_message(&double, name).await;
        assert!(message.contains(cause), "{name}: {message}");
    }
    // "second" shares the Secret "first", whose reads cannot be told apart: its Conflict
    // status above is its proof.
    assert_idle(&double, &["binary", "partial", "tls", "first"]).await;
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
    double.insert(
        &credential("db")
            .adopt()
            .every("720h")
            .keep_previous(false)
            .build(),
    );
    double.insert(&credential("keys").key_set(2).adopt().build());
    let op = start(&double, "a", options(), settings());
    for name in ["db", "keys"] {
        eventually(&format!("{name} adopted"), || {
            condition(&double, name, "Rotated").filter(|c| c.1 == "Adopted")
        })
        .await;
    }
    assert_idle(&double, &["db", "keys"]).await;
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
    double.insert(&credential("keys").key_set(3).build());
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
    double.insert(&credential(&name).build());
    let op = start(&double, "a", options(), settings());
    eventually("created", || secret_value(&double, &name, "value")).await;
    eventually("Ready", || {
        condition(&double, &name, "Ready").filter(|c| c.0 == "True")
    })
    .await;
    assert_idle(&double, &[&name]).await;
    op.stop().await;
}

#[tokio::test]
async fn a_forbidden_secret_call_is_a_condition_naming_the_rule() {
    let double = ApiDouble::new();
    double.set_role(role(&options()));
    // The Role as it would be with the rule missing, for this Secret only (a whole missing
    // rule keeps the operator unready before it reconciles anything).
    double.fail_next(Matcher::new("get", "secrets").name("db"), 403, 10_000);
    double.insert(&credential("db").build());
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
