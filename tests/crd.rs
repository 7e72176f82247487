//! The CRD schema as the API server sees it: every CEL rule accepts what it should and rejects
//! what it should with its human message (kube's client-side CEL evaluation), schema defaults,
//! printer-column paths against a fixture, and the committed bundle matching the binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bulkhead::api::{Credential, Tenant};
use kube::CustomResourceExt;
use kube::core::cel::{Validator, apply_defaults, compile_schema};
use serde_json::{Value, json};

fn schema<K: CustomResourceExt>() -> Value {
    let crd = K::crd();
    serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap()
}

/// Validate `object` (and `old` for updates); returns the failure messages.
fn messages<K: CustomResourceExt>(object: &Value, old: Option<&Value>) -> Vec<String> {
    match Validator::new().validate(&schema::<K>(), object, old) {
        Ok(()) => vec![],
        Err(errors) => errors.iter().map(|e| e.message.clone()).collect(),
    }
}

fn tenant(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "bulkhead.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": name, "namespace": "team-a"}, "spec": spec})
}

fn credential(spec: Value) -> Value {
    json!({"apiVersion": "bulkhead.dev/v1alpha1", "kind": "Credential", "metadata": {"name": "db", "namespace": "team-a"}, "spec": spec})
}

fn assert_rejected<K: CustomResourceExt>(object: &Value, old: Option<&Value>, expected: &str) {
    let msgs = messages::<K>(object, old);
    assert!(
        msgs.iter().any(|m| m.contains(expected)),
        "expected a failure containing {expected:?}, got {msgs:?} for {object}"
    );
}

fn assert_accepted<K: CustomResourceExt>(object: &Value, old: Option<&Value>) {
    let msgs = messages::<K>(object, old);
    assert!(
        msgs.is_empty(),
        "expected acceptance, got {msgs:?} for {object}"
    );
}

#[test]
fn every_cel_rule_compiles() {
    for (kind, schema) in [
        ("Tenant", schema::<Tenant>()),
        ("Credential", schema::<Credential>()),
    ] {
        let compiled = compile_schema(&schema);
        assert!(
            !compiled.has_errors(),
            "{kind}: {:?}",
            compiled.compilation_errors()
        );
    }
}

#[test]
fn every_cel_rule_has_a_message() {
    fn walk(schema: &Value, rules: &mut usize) {
        match schema {
            Value::Object(map) => {
                if let Some(Value::Array(validations)) = map.get("x-kubernetes-validations") {
                    for v in validations {
                        *rules += 1;
                        let message = v["message"].as_str().unwrap_or_default();
                        assert!(
                            message.len() > 20 && !message.contains('\n'),
                            "rule {} needs a human message",
                            v["rule"]
                        );
                    }
                }
                map.values().for_each(|child| walk(child, rules));
            }
            Value::Array(items) => items.iter().for_each(|child| walk(child, rules)),
            _ => {}
        }
    }
    let mut rules = 0;
    walk(&schema::<Tenant>(), &mut rules);
    walk(&schema::<Credential>(), &mut rules);
    assert_eq!(
        rules, 19,
        "a new rule needs accepting and rejecting cases in this file"
    );
}

#[test]
fn tenant_must_be_named_tenant() {
    assert_accepted::<Tenant>(&tenant("tenant", json!({})), None);
    assert_rejected::<Tenant>(&tenant("second", json!({})), None, "must be named 'tenant'");
}

#[test]
fn tenant_contacts_must_be_email_addresses() {
    assert_accepted::<Tenant>(
        &tenant(
            "tenant",
            json!({"contacts": ["team-a@example.com", "oncall@corp.example.org"]}),
        ),
        None,
    );
    assert_rejected::<Tenant>(
        &tenant(
            "tenant",
            json!({"contacts": ["team-a@example.com", "not an email"]}),
        ),
        None,
        "spec.contacts must be an email address",
    );
    assert_rejected::<Tenant>(
        &tenant("tenant", json!({"contacts": ["a@b"]})),
        None,
        "spec.contacts",
    );
}

#[test]
fn tenant_control_plane_fields() {
    let ok = json!({"controlPlane": {"identitySecretName": "bulkhead-identity", "endpoint": "https://cp.example.com/api", "syncInterval": "1m"}});
    assert_accepted::<Tenant>(&tenant("tenant", ok), None);
    assert_rejected::<Tenant>(
        &tenant(
            "tenant",
            json!({"controlPlane": {"identitySecretName": "Bad_Name"}}),
        ),
        None,
        "identitySecretName must be a Secret name",
    );
    assert_rejected::<Tenant>(
        &tenant(
            "tenant",
            json!({"controlPlane": {"identitySecretName": "id", "endpoint": "http://cp.example.com"}}),
        ),
        None,
        "endpoint must be an https:// URL",
    );
    assert_rejected::<Tenant>(
        &tenant(
            "tenant",
            json!({"controlPlane": {"identitySecretName": "id", "syncInterval": "10s"}}),
        ),
        None,
        "syncInterval must be a duration of at least 30s",
    );
    assert_rejected::<Tenant>(
        &tenant(
            "tenant",
            json!({"controlPlane": {"identitySecretName": "id", "syncInterval": "five minutes"}}),
        ),
        None,
        "syncInterval must be a duration",
    );
}

#[test]
fn tenant_defaults() {
    let defaulted = apply_defaults(
        &schema::<Tenant>(),
        &tenant(
            "tenant",
            json!({"controlPlane": {"identitySecretName": "id"}}),
        ),
    );
    assert_eq!(defaulted["spec"]["controlPlane"]["syncInterval"], "5m");
}

fn random(extra: Value) -> Value {
    let mut spec = json!({"type": "Random", "random": {"length": 32}});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    credential(spec)
}

#[test]
fn credential_union_needs_exactly_the_block_named_by_type() {
    assert_accepted::<Credential>(&random(json!({})), None);
    assert_accepted::<Credential>(
        &credential(json!({"type": "KeySet", "keySet": {"size": 4}})),
        None,
    );
    assert_accepted::<Credential>(
        &credential(
            json!({"type": "ControlPlaneToken", "controlPlaneToken": {"audience": "spark"}}),
        ),
        None,
    );
    assert_accepted::<Credential>(
        &credential(
            json!({"type": "RegistryCredentials", "registryCredentials": {"server": "r.example.com"}}),
        ),
        None,
    );

    assert_rejected::<Credential>(
        &credential(json!({"type": "Random"})),
        None,
        "spec.random must be set when spec.type is Random",
    );
    assert_rejected::<Credential>(
        &credential(json!({"type": "KeySet", "random": {}})),
        None,
        "spec.random must be set when spec.type is Random, and only then",
    );
    assert_rejected::<Credential>(
        &credential(json!({"type": "KeySet"})),
        None,
        "spec.keySet must be set when spec.type is KeySet",
    );
    assert_rejected::<Credential>(
        &credential(json!({"type": "Random", "random": {}, "keySet": {}})),
        None,
        "spec.keySet must be set when spec.type is KeySet",
    );
    assert_rejected::<Credential>(
        &credential(json!({"type": "ControlPlaneToken"})),
        None,
        "spec.controlPlaneToken must be set",
    );
    assert_rejected::<Credential>(
        &credential(json!({"type": "RegistryCredentials"})),
        None,
        "spec.registryCredentials must be set",
    );
}

#[test]
fn credential_rotation_needs_exactly_one_of_every_or_schedule() {
    assert_accepted::<Credential>(&random(json!({"rotation": {"every": "720h"}})), None);
    assert_accepted::<Credential>(
        &random(json!({"rotation": {"schedule": "0 3 * * 1"}})),
        None,
    );
    assert_accepted::<Credential>(
        &random(json!({"rotation": {"schedule": "*/15 0-6 1,15 * MON-FRI"}})),
        None,
    );
    assert_rejected::<Credential>(
        &random(json!({"rotation": {}})),
        None,
        "needs exactly one of every",
    );
    assert_rejected::<Credential>(
        &random(json!({"rotation": {"every": "1h", "schedule": "0 3 * * 1"}})),
        None,
        "needs exactly one of every",
    );
    assert_rejected::<Credential>(
        &random(json!({"rotation": {"every": "30s"}})),
        None,
        "every must be a duration of at least 1m",
    );
    assert_rejected::<Credential>(
        &random(json!({"rotation": {"every": "1 day"}})),
        None,
        "every must be a duration",
    );
    assert_rejected::<Credential>(
        &random(json!({"rotation": {"schedule": "0 3 * *"}})),
        None,
        "5-field cron expression",
    );
    assert_rejected::<Credential>(
        &random(json!({"rotation": {"schedule": "@daily"}})),
        None,
        "5-field cron expression",
    );
}

#[test]
fn credential_schedules_that_never_fire_are_refused_at_admission() {
    for never in [
        ", * * * *",
        "0,,5 * * * *",
        "0 3, * * *",
        "0 0 31 2 *",
        "0 0 30 FEB ?",
        "0 0 31 4 *",
        "0 0 31 nov *",
    ] {
        assert_rejected::<Credential>(
            &random(json!({"rotation": {"schedule": never}})),
            None,
            "never fires",
        );
    }
    // Close, but they fire: the leap day, the 31st of a long month, a weekday in February,
    // and lists written properly.
    for fires in [
        "0 0 29 2 *",
        "0 0 31 12 *",
        "0 0 31 2 1",
        "0,30 3 * * 1",
        "0 0 L 2 *",
    ] {
        assert_accepted::<Credential>(&random(json!({"rotation": {"schedule": fires}})), None);
    }
}

#[test]
fn control_plane_token_bounds_and_no_rotation() {
    let token = |ttl: &str| {
        credential(
            json!({"type": "ControlPlaneToken", "controlPlaneToken": {"audience": "a", "ttl": ttl}}),
        )
    };
    assert_accepted::<Credential>(&token("5m"), None);
    assert_accepted::<Credential>(&token("24h"), None);
    assert_rejected::<Credential>(
        &token("1m"),
        None,
        "ttl must be a duration between 5m and 24h",
    );
    assert_rejected::<Credential>(
        &token("25h"),
        None,
        "ttl must be a duration between 5m and 24h",
    );
    assert_rejected::<Credential>(
        &credential(
            json!({"type": "ControlPlaneToken", "controlPlaneToken": {"audience": "a"}, "rotation": {"every": "1h"}}),
        ),
        None,
        "remove spec.rotation",
    );
}

#[test]
fn credential_secret_name_must_be_a_secret_name() {
    assert_accepted::<Credential>(&random(json!({"secretName": "db-password.v1"})), None);
    assert_rejected::<Credential>(
        &random(json!({"secretName": "DB_Password"})),
        None,
        "spec.secretName must be a Secret name",
    );
}

#[test]
fn type_and_secret_name_are_immutable() {
    let old = random(json!({"secretName": "a"}));
    assert_accepted::<Credential>(
        &random(json!({"secretName": "a", "rotation": {"every": "1h"}})),
        Some(&old),
    );
    assert_rejected::<Credential>(
        &credential(json!({"type": "KeySet", "keySet": {}, "secretName": "a"})),
        Some(&old),
        "spec.type is immutable",
    );
    assert_rejected::<Credential>(
        &random(json!({"secretName": "b"})),
        Some(&old),
        "spec.secretName is immutable",
    );
    assert_rejected::<Credential>(
        &random(json!({})),
        Some(&old),
        "spec.secretName is immutable",
    );
    assert_rejected::<Credential>(
        &random(json!({"secretName": "a"})),
        Some(&random(json!({}))),
        "spec.secretName is immutable",
    );
}

#[test]
fn credential_defaults() {
    let s = schema::<Credential>();
    let d = apply_defaults(
        &s,
        &credential(json!({"type": "Random", "random": {}, "rotation": {"every": "720h"}})),
    );
    assert_eq!(d["spec"]["random"]["length"], 32);
    assert_eq!(d["spec"]["random"]["alphabet"], "alphanumeric");
    assert_eq!(d["spec"]["rotation"]["keepPrevious"], true);
    assert_eq!(d["spec"]["deletionPolicy"], "Delete");
    assert_eq!(d["spec"]["adopt"], false);
    let k = apply_defaults(&s, &credential(json!({"type": "KeySet", "keySet": {}})));
    assert_eq!(k["spec"]["keySet"]["size"], 3);
    let t = apply_defaults(
        &s,
        &credential(json!({"type": "ControlPlaneToken", "controlPlaneToken": {"audience": "a"}})),
    );
    assert_eq!(t["spec"]["controlPlaneToken"]["ttl"], "1h");
}

#[test]
fn structural_bounds_are_in_the_schema() {
    let s = schema::<Credential>();
    let random = &s["properties"]["spec"]["properties"]["random"]["properties"];
    assert_eq!(random["length"]["minimum"].as_f64(), Some(8.0));
    assert_eq!(random["length"]["maximum"].as_f64(), Some(4096.0));
    assert_eq!(
        random["alphabet"]["enum"],
        json!(["alphanumeric", "base64url", "hex"])
    );
    let size = &s["properties"]["spec"]["properties"]["keySet"]["properties"]["size"];
    assert_eq!(
        (size["minimum"].as_f64(), size["maximum"].as_f64()),
        (Some(2.0), Some(16.0))
    );
    assert_eq!(
        s["properties"]["spec"]["properties"]["type"]["enum"],
        json!([
            "Random",
            "KeySet",
            "ControlPlaneToken",
            "RegistryCredentials"
        ])
    );
    assert_eq!(
        s["properties"]["spec"]["properties"]["deletionPolicy"]["enum"],
        json!(["Delete", "Retain"])
    );
}

#[test]
fn condition_messages_are_bounded_in_the_schema() {
    for (kind, s) in [
        ("Tenant", schema::<Tenant>()),
        ("Credential", schema::<Credential>()),
    ] {
        let message = &s["properties"]["status"]["properties"]["conditions"]["items"]["properties"]
            ["message"];
        assert_eq!(message["maxLength"].as_u64(), Some(32768), "{kind}");
    }
}

/// A tiny evaluator for the JSONPath forms printer columns use: `.a.b` and
/// `.a[?(@.k=="v")].b`.
fn json_path<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    let mut current = root;
    let mut rest = path.strip_prefix('.')?;
    while !rest.is_empty() {
        let end = rest.find(['.', '[']).unwrap_or(rest.len());
        let (key, tail) = rest.split_at(end);
        if !key.is_empty() {
            current = current.get(key)?;
        }
        rest = tail;
        if let Some(filter) = rest.strip_prefix("[?(@.") {
            let close = filter.find(")]")?;
            let (cond, tail) = filter.split_at(close);
            let (field, value) = cond.split_once("==")?;
            let value = value.trim_matches('"');
            current = current
                .as_array()?
                .iter()
                .find(|item| item.get(field).and_then(Value::as_str) == Some(value))?;
            rest = &tail[2..];
        }
        rest = rest.strip_prefix('.').unwrap_or(rest);
    }
    Some(current)
}

fn printer_values<K: CustomResourceExt>(fixture: &Value) -> Vec<(String, Option<Value>)> {
    K::crd().spec.versions[0]
        .additional_printer_columns
        .clone()
        .unwrap()
        .into_iter()
        .map(|c| (c.name, json_path(fixture, &c.json_path).cloned()))
        .collect()
}

#[test]
fn printer_columns_resolve_against_fixtures() {
    let fixture: Value =
        serde_saphyr::from_str(include_str!("fixtures/credential-with-status.yaml")).unwrap();
    let values = printer_values::<Credential>(&fixture);
    let expect = |name: &str| {
        values
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.clone())
    };
    assert_eq!(expect("Type"), Some(json!("Random")));
    assert_eq!(expect("Secret"), Some(json!("db-password")));
    assert_eq!(expect("Ready"), Some(json!("True")));
    assert_eq!(expect("Last Rotation"), Some(json!("2026-11-01T03:00:00Z")));
    assert_eq!(expect("Next Rotation"), Some(json!("2026-12-01T03:00:00Z")));
    assert_eq!(expect("Age"), Some(json!("2026-10-01T00:00:00Z")));

    let fixture: Value =
        serde_saphyr::from_str(include_str!("fixtures/tenant-with-status.yaml")).unwrap();
    let values = printer_values::<Tenant>(&fixture);
    let expect = |name: &str| {
        values
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.clone())
    };
    assert_eq!(expect("Display Name"), Some(json!("Team A")));
    assert_eq!(expect("Tenant ID"), Some(json!("t-123")));
    assert_eq!(expect("Ready"), Some(json!("True")));
    assert_eq!(expect("Credentials"), Some(json!(3)));
}

#[test]
fn names_short_names_and_category() {
    for (crd, short) in [(Tenant::crd(), "bht"), (Credential::crd(), "bhc")] {
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.short_names, Some(vec![short.to_owned()]));
        assert_eq!(crd.spec.names.categories, Some(vec!["bulkhead".to_owned()]));
        let version = &crd.spec.versions[0];
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some()
        );
    }
}

#[test]
fn every_spec_field_has_a_description() {
    fn walk(path: &str, schema: &Value, missing: &mut Vec<String>) {
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (name, child) in props {
                let p = format!("{path}.{name}");
                if child.get("description").is_none() {
                    missing.push(p.clone());
                }
                walk(&p, child, missing);
            }
        }
        if let Some(items) = schema.get("items") {
            walk(&format!("{path}[]"), items, missing);
        }
    }
    for (kind, s) in [
        ("Tenant", schema::<Tenant>()),
        ("Credential", schema::<Credential>()),
    ] {
        let mut missing = vec![];
        walk(kind, &s["properties"]["spec"], &mut missing);
        walk(kind, &s["properties"]["status"], &mut missing);
        assert!(
            missing.is_empty(),
            "fields without kubectl explain text: {missing:?}"
        );
    }
}

#[test]
fn committed_bundle_matches_the_binary() {
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds-cluster/bulkhead.yaml"
    ))
    .unwrap();
    let generated = bulkhead::cli::crd_bundle().unwrap();
    assert!(
        committed == generated,
        "crds-cluster/bulkhead.yaml is stale: run hack/generate.sh and commit the result"
    );
}

#[test]
fn bundle_parses_and_holds_only_crds_and_aggregated_cluster_roles() {
    let bundle = bulkhead::cli::crd_bundle().unwrap();
    let docs: Vec<Value> = bundle
        .split("\n---\n")
        .skip(1)
        .map(|d| serde_saphyr::from_str(d).unwrap())
        .collect();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "CustomResourceDefinition",
            "CustomResourceDefinition",
            "ClusterRole",
            "ClusterRole"
        ]
    );
    let labels: Vec<&Value> = docs[2..].iter().map(|d| &d["metadata"]["labels"]).collect();
    assert_eq!(
        labels[0]["rbac.authorization.k8s.io/aggregate-to-edit"],
        "true"
    );
    assert_eq!(
        labels[1]["rbac.authorization.k8s.io/aggregate-to-view"],
        "true"
    );
    let view_verbs = &docs[3]["rules"][0]["verbs"];
    assert_eq!(view_verbs, &json!(["get", "list", "watch"]));
}

#[test]
fn integer_formats_are_ones_kubernetes_knows() {
    // An API server warns on every apply about formats it does not recognise (uint8, uint32).
    let bundle = bulkhead::cli::crd_bundle().unwrap();
    let unknown: Vec<&str> = bundle
        .lines()
        .filter(|l| l.trim_start().starts_with("format:"))
        .filter(|l| {
            !matches!(
                l.trim(),
                "format: int32" | "format: int64" | "format: date-time"
            )
        })
        .collect();
    assert!(unknown.is_empty(), "{unknown:?}");
}
