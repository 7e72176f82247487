//! Tests of the API double itself, through a real `kube::Client`: if these pass, controller
//! tests built on the double exercise the same requests a real API server would answer.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    SelfSubjectRulesReview, SelfSubjectRulesReviewSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::rbac::v1::PolicyRule;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
    WatchEvent, WatchParams,
};
use kube::runtime::watcher;
use kube::{Api, Client, CustomResource, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tower::ServiceExt;

use support::{ApiDouble, Matcher, Recorded};

const NS: &str = "team-a";

/// A kind of our own, so these tests do not move with Bulkhead's CRDs.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "example.dev",
    version = "v1",
    kind = "Widget",
    namespaced,
    status = "WidgetStatus",
    schema = "disabled"
)]
struct WidgetSpec {
    size: u32,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
struct WidgetStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    phase: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    conditions: Vec<Condition>,
}

fn secret(name: &str, labels: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(NS.to_owned()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            "k".to_owned(),
            ByteString(b"v0".to_vec()),
        )])),
        ..Secret::default()
    }
}

fn widget(name: &str, size: u32) -> Widget {
    let mut widget = Widget::new(name, WidgetSpec { size });
    widget.metadata.namespace = Some(NS.to_owned());
    widget
}

fn rule(group: &str, resources: &[&str], verbs: &[&str], names: &[&str]) -> PolicyRule {
    let strings = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    PolicyRule {
        api_groups: Some(vec![group.to_owned()]),
        resources: Some(strings(resources)),
        verbs: strings(verbs),
        resource_names: (!names.is_empty()).then(|| strings(names)),
        non_resource_urls: None,
    }
}

fn api_status(err: &kube::Error) -> (u16, String, String) {
    match err {
        kube::Error::Api(status) => (status.code, status.reason.clone(), status.message.clone()),
        other => panic!("expected an API status, got {other}"),
    }
}

fn rv(meta: &ObjectMeta) -> u64 {
    meta.resource_version.as_deref().unwrap().parse().unwrap()
}

fn names<K: ResourceExt>(items: &[K]) -> Vec<String> {
    items.iter().map(ResourceExt::name_any).collect()
}

fn condition(type_: &str, status: &str) -> Value {
    json!({ "type": type_, "status": status, "reason": "Test", "message": "", "lastTransitionTime": "2025-01-01T00:00:00Z" })
}

/// Send a JSON patch by hand: kube's `Patch::Json` needs a feature this crate does not enable.
async fn json_patch<K>(client: &Client, path: &str, ops: Value) -> Result<K, kube::Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let request = http::Request::patch(path)
        .header(http::header::CONTENT_TYPE, "application/json-patch+json")
        .body(serde_json::to_vec(&ops).unwrap())
        .unwrap();
    client.request::<K>(request).await
}

async fn next<S, T>(stream: &mut S) -> T
where
    S: Stream<Item = T> + Unpin,
{
    tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("no event within 5s")
        .expect("stream ended")
}

#[tokio::test]
async fn crud_round_trips_through_a_real_client() {
    let double = ApiDouble::new();
    let client = double.client(NS);
    let api: Api<Secret> = Api::namespaced(client.clone(), NS);

    let created = api
        .create(&PostParams::default(), &secret("db", &[("app", "web")]))
        .await
        .unwrap();
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(created.metadata.generation, Some(1));
    assert_eq!(created.metadata.namespace.as_deref(), Some(NS));
    let (code, reason, message) = api_status(
        &api.create(&PostParams::default(), &secret("db", &[]))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code, reason.as_str(), message.as_str()),
        (409, "AlreadyExists", "secrets \"db\" already exists")
    );

    assert_eq!(
        api.get("db").await.unwrap().metadata.uid,
        created.metadata.uid
    );
    assert_eq!(api_status(&api.get("missing").await.unwrap_err()).0, 404);
    assert!(api.get_opt("missing").await.unwrap().is_none());
    assert_eq!(
        names(&api.list(&ListParams::default()).await.unwrap().items),
        ["db"]
    );

    let apply = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": "db", "annotations": { "owner": "test" } },
        "data": { "k": "djE=" },
    });
    let applied = api
        // Forced: `k` was written by the create, another manager (as on a real server).
        .patch(
            "db",
            &PatchParams::apply("bulkhead").force(),
            &Patch::Apply(&apply),
        )
        .await
        .unwrap();
    assert_eq!(applied.data.unwrap()["k"], ByteString(b"v1".to_vec()));
    assert_eq!(
        applied.metadata.labels.as_ref().unwrap()["app"],
        "web",
        "apply keeps fields it does not mention"
    );
    assert!(rv(&applied.metadata) > rv(&created.metadata));
    let managers = applied.metadata.managed_fields.unwrap();
    assert!(
        managers
            .iter()
            .any(|m| m.manager.as_deref() == Some("bulkhead")
                && m.operation.as_deref() == Some("Apply")),
        "{managers:?}"
    );

    let merged = api
        .patch(
            "db",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "labels": { "app": null, "tier": "db" } } })),
        )
        .await
        .unwrap();
    assert_eq!(
        merged.metadata.labels.unwrap(),
        BTreeMap::from([("tier".to_owned(), "db".to_owned())])
    );

    let path = format!("/api/v1/namespaces/{NS}/secrets/db");
    let patched: Secret = json_patch(
        &client,
        &path,
        json!([
            { "op": "test", "path": "/metadata/labels/tier", "value": "db" },
            { "op": "add", "path": "/metadata/labels/zone", "value": "a" },
            { "op": "replace", "path": "/data/k", "value": "djI=" },
            { "op": "remove", "path": "/metadata/annotations/owner" },
        ]),
    )
    .await
    .unwrap();
    assert_eq!(patched.metadata.labels.as_ref().unwrap()["zone"], "a");
    assert_eq!(
        patched.data.as_ref().unwrap()["k"],
        ByteString(b"v2".to_vec())
    );
    assert!(patched.metadata.annotations.unwrap_or_default().is_empty());
    let failed_test = json_patch::<Secret>(
        &client,
        &path,
        json!([{ "op": "test", "path": "/metadata/labels/tier", "value": "web" }]),
    );
    assert_eq!(api_status(&failed_test.await.unwrap_err()).0, 422);

    let mut replacement = api.get("db").await.unwrap();
    replacement.data = Some(BTreeMap::from([(
        "k".to_owned(),
        ByteString(b"v3".to_vec()),
    )]));
    let replaced = api
        .replace("db", &PostParams::default(), &replacement)
        .await
        .unwrap();
    assert_eq!(replaced.data.unwrap()["k"], ByteString(b"v3".to_vec()));
    let (code, reason, _) = api_status(
        &api.replace("db", &PostParams::default(), &replacement)
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code, reason.as_str()),
        (409, "Conflict"),
        "a stale resourceVersion conflicts"
    );

    let deleted = api.delete("db", &DeleteParams::default()).await.unwrap();
    assert_eq!(deleted.left().unwrap().name_any(), "db");
    assert!(api.get_opt("db").await.unwrap().is_none());
    assert_eq!(
        api_status(
            &api.delete("db", &DeleteParams::default())
                .await
                .unwrap_err()
        )
        .0,
        404
    );
}

#[tokio::test]
async fn status_subresource_isolates_status_and_generation_follows_spec() {
    let double = ApiDouble::new().with_status_subresource("example.dev", "widgets");
    let api: Api<Widget> = Api::namespaced(double.client(NS), NS);

    let mut with_status = widget("w", 1);
    with_status.status = Some(WidgetStatus {
        phase: Some("Smuggled".into()),
        ..WidgetStatus::default()
    });
    let created = api
        .create(&PostParams::default(), &with_status)
        .await
        .unwrap();
    assert_eq!(
        created.status, None,
        "create ignores status behind a status subresource"
    );

    let status =
        json!({ "apiVersion": "example.dev/v1", "kind": "Widget", "status": { "phase": "Ready" } });
    let reported = api
        .patch_status("w", &PatchParams::apply("ctl"), &Patch::Apply(&status))
        .await
        .unwrap();
    assert_eq!(reported.status.unwrap().phase.as_deref(), Some("Ready"));
    assert_eq!(
        reported.metadata.generation,
        Some(1),
        "a status write is not a spec change"
    );

    let spec_and_status = json!({ "spec": { "size": 2 }, "status": { "phase": "Hacked" } });
    let edited = api
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(&spec_and_status),
        )
        .await
        .unwrap();
    assert_eq!(edited.spec.size, 2);
    assert_eq!(
        edited.status.unwrap().phase.as_deref(),
        Some("Ready"),
        "the main resource cannot write status"
    );
    assert_eq!(edited.metadata.generation, Some(2));

    let relabelled = api
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "labels": { "x": "y" } } })),
        )
        .await
        .unwrap();
    assert_eq!(
        relabelled.metadata.generation,
        Some(2),
        "metadata changes keep the generation"
    );

    let mut sneaky = relabelled.clone();
    sneaky.spec.size = 99;
    sneaky.status = Some(WidgetStatus {
        phase: Some("Done".into()),
        ..WidgetStatus::default()
    });
    let replaced = api
        .replace_status("w", &PostParams::default(), &sneaky)
        .await
        .unwrap();
    assert_eq!(
        replaced.spec.size, 2,
        "the status subresource cannot write spec"
    );
    assert_eq!(replaced.status.unwrap().phase.as_deref(), Some("Done"));

    // Bulkhead's own kinds have the subresource without registration.
    let credentials = ApiResource {
        group: "bulkhead.dev".into(),
        version: "v1alpha1".into(),
        api_version: "bulkhead.dev/v1alpha1".into(),
        kind: "Credential".into(),
        plural: "credentials".into(),
    };
    let dynamic: Api<DynamicObject> = Api::namespaced_with(double.client(NS), NS, &credentials);
    let mut object = DynamicObject::new("c", &credentials).within(NS);
    object.data = json!({ "spec": { "type": "Random" }, "status": { "secretName": "x" } });
    let created = dynamic
        .create(&PostParams::default(), &object)
        .await
        .unwrap();
    assert!(created.data.get("status").is_none());
}

#[tokio::test]
async fn apply_merges_conditions_by_type_and_a_no_op_keeps_the_resource_version() {
    let double = ApiDouble::new().with_status_subresource("example.dev", "widgets");
    let api: Api<Widget> = Api::namespaced(double.client(NS), NS);
    api.create(&PostParams::default(), &widget("w", 1))
        .await
        .unwrap();

    let apply = |conditions: Vec<Value>| json!({ "apiVersion": "example.dev/v1", "kind": "Widget", "status": { "conditions": conditions } });
    let pp = PatchParams::apply("ctl");
    api.patch_status(
        "w",
        &pp,
        &Patch::Apply(apply(vec![condition("Ready", "True")])),
    )
    .await
    .unwrap();
    api.patch_status(
        "w",
        &pp,
        &Patch::Apply(apply(vec![condition("Rotated", "True")])),
    )
    .await
    .unwrap();
    let updated = api
        .patch_status(
            "w",
            &pp,
            &Patch::Apply(apply(vec![condition("Ready", "False")])),
        )
        .await
        .unwrap();
    let conditions: Vec<(String, String)> = updated
        .status
        .unwrap()
        .conditions
        .into_iter()
        .map(|c| (c.type_, c.status))
        .collect();
    assert_eq!(
        conditions,
        [
            ("Ready".into(), "False".into()),
            ("Rotated".into(), "True".into())
        ]
    );

    let again = api
        .patch_status(
            "w",
            &pp,
            &Patch::Apply(apply(vec![condition("Ready", "False")])),
        )
        .await
        .unwrap();
    assert_eq!(
        again.metadata.resource_version,
        updated.metadata.resource_version
    );
}

#[tokio::test]
async fn list_honours_label_and_field_selectors_and_limit() {
    let double = ApiDouble::new();
    double.insert(&secret("a", &[("app", "web"), ("tier", "fe")]));
    double.insert(&secret("b", &[("app", "web")]));
    double.insert(&secret("c", &[("app", "db"), ("tier", "be")]));
    let api: Api<Secret> = Api::namespaced(double.client(NS), NS);

    for (selector, expected) in [
        ("app=web", vec!["a", "b"]),
        ("app==web", vec!["a", "b"]),
        ("app!=web", vec!["c"]),
        ("app in (web, db)", vec!["a", "b", "c"]),
        ("app notin (web)", vec!["c"]),
        ("tier", vec!["a", "c"]),
        ("!tier", vec!["b"]),
        ("app=web,tier", vec!["a"]),
    ] {
        let list = api
            .list(&ListParams::default().labels(selector))
            .await
            .unwrap();
        assert_eq!(names(&list.items), expected, "labelSelector {selector}");
    }
    for (selector, expected) in [
        ("metadata.name=b", vec!["b"]),
        ("metadata.name!=b", vec!["a", "c"]),
    ] {
        let list = api
            .list(&ListParams::default().fields(selector))
            .await
            .unwrap();
        assert_eq!(names(&list.items), expected, "fieldSelector {selector}");
    }

    let first = api.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(names(&first.items), ["a", "b"]);
    assert!(first.metadata.resource_version.is_some());
    let token = first.metadata.continue_.expect("a continue token");
    let second = api
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(names(&second.items), ["c"]);
    assert!(second.metadata.continue_.is_none());

    let raw: Value = double
        .client(NS)
        .request(
            http::Request::get(format!("/api/v1/namespaces/{NS}/secrets"))
                .body(vec![])
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(raw["kind"], "SecretList");
    assert_eq!(raw["items"][0]["kind"], "Secret");
    assert_eq!(raw["items"][0]["apiVersion"], "v1");
}

#[tokio::test]
async fn a_runtime_watcher_sees_writes_made_through_the_helpers() {
    let double = ApiDouble::new();
    double.insert(&secret("before", &[]));
    let api: Api<Secret> = Api::namespaced(double.client(NS), NS);
    let mut events = watcher(api, watcher::Config::default()).boxed();

    assert!(matches!(
        next(&mut events).await.unwrap(),
        watcher::Event::Init
    ));
    match next(&mut events).await.unwrap() {
        watcher::Event::InitApply(s) => assert_eq!(s.name_any(), "before"),
        other => panic!("expected InitApply, got {other:?}"),
    }
    assert!(matches!(
        next(&mut events).await.unwrap(),
        watcher::Event::InitDone
    ));

    double.insert(&secret("new", &[]));
    match next(&mut events).await.unwrap() {
        watcher::Event::Apply(s) => assert_eq!(s.name_any(), "new"),
        other => panic!("expected Apply, got {other:?}"),
    }
    double.insert(&secret("new", &[("edited", "yes")]));
    match next(&mut events).await.unwrap() {
        watcher::Event::Apply(s) => assert_eq!(s.labels()["edited"], "yes"),
        other => panic!("expected Apply, got {other:?}"),
    }
    double.delete_json("", "secrets", NS, "new").unwrap();
    match next(&mut events).await.unwrap() {
        watcher::Event::Delete(s) => assert_eq!(s.name_any(), "new"),
        other => panic!("expected Delete, got {other:?}"),
    }
}

#[tokio::test]
async fn a_selected_watch_sees_objects_enter_and_leave_and_resumes_from_a_version() {
    let double = ApiDouble::new();
    let api: Api<Secret> = Api::namespaced(double.client(NS), NS);
    let mut stream = api
        .watch(&WatchParams::default().labels("app=web"), "0")
        .await
        .unwrap()
        .boxed();
    double.insert(&secret("other", &[("app", "db")]));
    double.insert(&secret("s", &[("app", "web")]));
    assert!(
        matches!(next(&mut stream).await.unwrap(), WatchEvent::Added(s) if s.name_any() == "s")
    );
    double.insert(&secret("s", &[("app", "web"), ("v", "2")]));
    assert!(
        matches!(next(&mut stream).await.unwrap(), WatchEvent::Modified(s) if s.labels()["v"] == "2")
    );
    double.insert(&secret("s", &[("app", "db")]));
    assert!(
        matches!(next(&mut stream).await.unwrap(), WatchEvent::Deleted(s) if s.name_any() == "s")
    );

    let listed = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    double.insert(&secret("late", &[]));
    double.delete_json("", "secrets", NS, "other").unwrap();
    let mut resumed = api
        .watch(&WatchParams::default(), &listed)
        .await
        .unwrap()
        .boxed();
    assert!(
        matches!(next(&mut resumed).await.unwrap(), WatchEvent::Added(s) if s.name_any() == "late")
    );
    assert!(
        matches!(next(&mut resumed).await.unwrap(), WatchEvent::Deleted(s) if s.name_any() == "other")
    );
}

#[tokio::test(start_paused = true)]
async fn a_watch_ends_after_its_timeout_on_the_tokio_clock() {
    let double = ApiDouble::new();
    let api: Api<Secret> = Api::namespaced(double.client(NS), NS);
    let started = tokio::time::Instant::now();
    let mut stream = api
        .watch(&WatchParams::default().timeout(30), "0")
        .await
        .unwrap()
        .boxed();
    assert!(stream.try_next().await.unwrap().is_none());
    assert!(started.elapsed() >= Duration::from_secs(30));
}

#[tokio::test]
async fn rbac_forbids_a_list_but_allows_a_watch_pinned_to_a_granted_name() {
    let double = ApiDouble::new();
    double.insert(&secret("pinned", &[]));
    double.insert(&secret("other", &[]));
    double.set_role(vec![
        rule("", &["secrets"], &["get", "patch"], &[]),
        rule("", &["secrets"], &["list", "watch"], &["pinned"]),
        rule("bulkhead.dev", &["credentials"], &["get"], &[]),
    ]);
    let api: Api<Secret> = Api::namespaced(double.client(NS), NS);

    let (code, reason, message) = api_status(&api.list(&ListParams::default()).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        message,
        "secrets is forbidden: User \"system:serviceaccount:team-a:bulkhead\" cannot list resource \"secrets\" in API group \"\" in the namespace \"team-a\""
    );
    let pinned = api
        .list(&ListParams::default().fields("metadata.name=pinned"))
        .await
        .unwrap();
    assert_eq!(names(&pinned.items), ["pinned"]);
    let mut watch = api
        .watch(&WatchParams::default().fields("metadata.name=pinned"), "0")
        .await
        .unwrap()
        .boxed();
    assert!(
        matches!(next(&mut watch).await.unwrap(), WatchEvent::Added(s) if s.name_any() == "pinned")
    );
    let other_watch = api
        .watch(&WatchParams::default().fields("metadata.name=other"), "0")
        .await;
    assert_eq!(api_status(&other_watch.err().unwrap()).0, 403);

    let create = api
        .create(&PostParams::default(), &secret("new", &[]))
        .await
        .unwrap_err();
    assert!(
        api_status(&create)
            .2
            .contains("cannot create resource \"secrets\"")
    );

    let configmaps: Api<ConfigMap> = Api::namespaced(double.client(NS), NS);
    let patch = configmaps
        .patch("cm", &PatchParams::default(), &Patch::Merge(json!({})))
        .await;
    assert_eq!(
        api_status(&patch.unwrap_err()).2,
        "configmaps \"cm\" is forbidden: User \"system:serviceaccount:team-a:bulkhead\" cannot patch resource \"configmaps\" in API group \"\" in the namespace \"team-a\""
    );

    let status_patch = json_patch::<Value>(
        &double.client(NS),
        &format!("/apis/bulkhead.dev/v1alpha1/namespaces/{NS}/credentials/c/status"),
        json!([]),
    )
    .await;
    assert!(
        api_status(&status_patch.unwrap_err())
            .2
            .starts_with("credentials.bulkhead.dev \"c\" is forbidden: User \"system:serviceaccount:team-a:bulkhead\" cannot patch resource \"credentials/status\" in API group \"bulkhead.dev\"")
    );
}

#[tokio::test]
async fn server_side_apply_of_an_absent_object_needs_create() {
    let double = ApiDouble::new();
    let api: Api<Secret> = Api::namespaced(double.client(NS), NS);
    let apply =
        Patch::Apply(json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "s" } }));
    let pp = PatchParams::apply("bulkhead");

    double.set_role(vec![rule("", &["secrets"], &["patch"], &["s"])]);
    let (code, _, message) = api_status(&api.patch("s", &pp, &apply).await.unwrap_err());
    assert_eq!(code, 403);
    assert!(
        message.contains("cannot create resource \"secrets\""),
        "{message}"
    );
    assert!(double.get_json("", "secrets", NS, "s").is_none());

    double.set_role(vec![
        rule("", &["secrets"], &["patch"], &["s"]),
        rule("", &["secrets"], &["create"], &[]),
    ]);
    let created = api.patch("s", &pp, &apply).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));

    double.set_role(vec![rule("", &["secrets"], &["patch"], &["s"])]);
    api.patch("s", &pp, &apply).await.unwrap();

    let missing_manager = api
        .patch("s", &PatchParams::default(), &apply)
        .await
        .unwrap_err();
    assert_eq!(api_status(&missing_manager).0, 400);
}

#[tokio::test]
async fn self_reviews_report_the_role_and_are_always_allowed() {
    let double = ApiDouble::new();
    let client = double.client(NS);
    let rules_review = || async {
        let review = SelfSubjectRulesReview {
            spec: SelfSubjectRulesReviewSpec {
                namespace: Some(NS.to_owned()),
            },
            ..SelfSubjectRulesReview::default()
        };
        let request = http::Request::post("/apis/authorization.k8s.io/v1/selfsubjectrulesreviews")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&review).unwrap())
            .unwrap();
        client
            .request::<SelfSubjectRulesReview>(request)
            .await
            .unwrap()
            .status
            .unwrap()
    };

    let open = rules_review().await;
    assert!(!open.incomplete);
    assert_eq!(open.resource_rules.len(), 1);
    assert_eq!(open.resource_rules[0].verbs, ["*"]);
    assert_eq!(
        open.resource_rules[0].resources.as_deref(),
        Some(&["*".to_owned()][..])
    );

    double.set_role(vec![rule("", &["secrets"], &["get"], &["db"])]);
    let granted = rules_review().await;
    assert_eq!(granted.resource_rules.len(), 2);
    assert_eq!(
        granted.resource_rules[0].resource_names.as_deref(),
        Some(&["db".to_owned()][..])
    );
    assert_eq!(granted.resource_rules[1].verbs, ["create"]);
    assert_eq!(
        granted.resource_rules[1].api_groups.as_deref(),
        Some(&["authorization.k8s.io".to_owned()][..])
    );

    let access_review = |name: &str| {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(NS.to_owned()),
                    verb: Some("get".to_owned()),
                    resource: Some("secrets".to_owned()),
                    name: Some(name.to_owned()),
                    ..ResourceAttributes::default()
                }),
                ..SelfSubjectAccessReviewSpec::default()
            },
            ..SelfSubjectAccessReview::default()
        };
        let request = http::Request::post("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&review).unwrap())
            .unwrap();
        let client = client.clone();
        async move {
            client
                .request::<SelfSubjectAccessReview>(request)
                .await
                .unwrap()
                .status
                .unwrap()
                .allowed
        }
    };
    assert!(access_review("db").await);
    assert!(!access_review("other").await);
}

#[tokio::test]
async fn faults_are_injected_for_matching_requests_only() {
    let double = ApiDouble::new();
    double.insert(&secret("db", &[]));
    double.insert(&secret("other", &[]));
    let api: Api<Secret> = Api::namespaced(double.client(NS), NS);
    let merge = Patch::Merge(json!({ "metadata": { "labels": { "x": "y" } } }));
    let pp = PatchParams::default();

    double.fail_next(Matcher::new("patch", "secrets").name("db"), 409, 2);
    assert_eq!(
        api_status(&api.patch("db", &pp, &merge).await.unwrap_err()).0,
        409
    );
    api.patch("other", &pp, &merge).await.unwrap();
    api.get("db").await.unwrap();
    assert_eq!(
        api_status(&api.patch("db", &pp, &merge).await.unwrap_err()).0,
        409
    );
    api.patch("db", &pp, &merge).await.unwrap();

    double.fail_next(Matcher::new("create", "secrets").name("new"), 409, 1);
    let (code, _, _) = api_status(
        &api.create(&PostParams::default(), &secret("new", &[]))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 409, "a create is matched by the name in its body");
    api.create(&PostParams::default(), &secret("new", &[]))
        .await
        .unwrap();

    double.fail_next(Matcher::new("*", "*"), 500, 1);
    let (code, reason, _) = api_status(&api.get("db").await.unwrap_err());
    assert_eq!((code, reason.as_str()), (500, "InternalError"));

    double.throttle_next(Matcher::new("list", "secrets"), 7, 1);
    let request = http::Request::get(format!("/api/v1/namespaces/{NS}/secrets"))
        .body(kube::client::Body::empty())
        .unwrap();
    let response = double.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), http::StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()[http::header::RETRY_AFTER], "7");
    api.list(&ListParams::default()).await.unwrap();
}

#[tokio::test]
async fn every_request_is_recorded_and_paths_outside_a_namespace_are_not_found() {
    let double = ApiDouble::new();
    let client = double.client(NS);
    let api: Api<Secret> = Api::namespaced(client.clone(), NS);
    api.create(&PostParams::default(), &secret("db", &[]))
        .await
        .unwrap();
    api.patch(
        "db",
        &PatchParams::apply("bulkhead"),
        &Patch::Apply(json!({ "apiVersion": "v1", "kind": "Secret" })),
    )
    .await
    .unwrap();
    let all: Api<Secret> = Api::all(client.clone());
    assert_eq!(
        api_status(&all.list(&ListParams::default()).await.unwrap_err()).0,
        404
    );

    let seen: Vec<(String, String, Option<String>)> = double
        .requests()
        .into_iter()
        .map(|r| (r.verb, r.path, r.namespace))
        .collect();
    let secrets = format!("/api/v1/namespaces/{NS}/secrets");
    assert_eq!(
        seen,
        [
            ("create".to_owned(), secrets.clone(), Some(NS.to_owned())),
            (
                "patch".to_owned(),
                format!("{secrets}/db"),
                Some(NS.to_owned())
            ),
            ("list".to_owned(), "/api/v1/secrets".to_owned(), None),
        ]
    );
    let patch = double.requests()[1].clone();
    assert!(
        patch
            .query
            .split('&')
            .any(|pair| pair == "fieldManager=bulkhead"),
        "{}",
        patch.query
    );
    assert_eq!(
        patch,
        Recorded {
            method: "PATCH".into(),
            path: format!("{secrets}/db"),
            verb: "patch".into(),
            group: String::new(),
            resource: "secrets".into(),
            namespace: Some(NS.into()),
            name: Some("db".into()),
            query: patch.query.clone(),
        }
    );
    double.clear_requests();
    assert!(double.requests().is_empty());
}

#[tokio::test]
async fn an_unserved_resource_answers_not_found_like_a_missing_crd() {
    let double = ApiDouble::new();
    let api: Api<Widget> = Api::namespaced(double.client(NS), NS);
    double.unserve("example.dev", "widgets");
    let (code, _, message) =
        api_status(&api.list(&ListParams::default().limit(1)).await.unwrap_err());
    assert_eq!(
        (code, message.as_str()),
        (404, "the server could not find the requested resource")
    );
    double.serve("example.dev", "widgets");
    assert!(
        api.list(&ListParams::default().limit(1))
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn dry_run_validates_without_persisting() {
    let double = ApiDouble::new();
    let api: Api<Secret> = Api::namespaced(double.client(NS), NS);
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let would_be = api.create(&dry, &secret("db", &[])).await.unwrap();
    assert_eq!(would_be.name_any(), "db");
    assert!(double.get_json("", "secrets", NS, "db").is_none());

    double.insert(&secret("db", &[]));
    let before = double.get::<Secret>(NS, "db").unwrap();
    let apply = Patch::Apply(
        json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "labels": { "a": "b" } } }),
    );
    let would_be = api
        .patch("db", &PatchParams::apply("t").dry_run(), &apply)
        .await
        .unwrap();
    assert_eq!(would_be.labels()["a"], "b");
    assert_eq!(double.get::<Secret>(NS, "db").unwrap(), before);
    assert_eq!(
        api_status(&api.create(&dry, &secret("db", &[])).await.unwrap_err()).0,
        409
    );
}

#[tokio::test]
async fn finalizers_hold_a_deleted_object_until_they_are_removed() {
    let double = ApiDouble::new();
    let client = double.client(NS);
    let api: Api<Secret> = Api::namespaced(client.clone(), NS);
    let mut held = secret("held", &[]);
    held.metadata.finalizers = Some(vec!["bulkhead.dev/cleanup".into()]);
    api.create(&PostParams::default(), &held).await.unwrap();

    api.delete("held", &DeleteParams::default()).await.unwrap();
    let marked = api.get("held").await.unwrap();
    assert!(marked.metadata.deletion_timestamp.is_some());

    let _: Secret = json_patch(
        &client,
        &format!("/api/v1/namespaces/{NS}/secrets/held"),
        json!([{ "op": "remove", "path": "/metadata/finalizers" }]),
    )
    .await
    .unwrap();
    assert!(api.get_opt("held").await.unwrap().is_none());
}

#[tokio::test]
async fn typed_helpers_set_type_meta_and_server_fields() {
    let double = ApiDouble::new();
    let mut w = widget("w", 3);
    w.status = Some(WidgetStatus {
        phase: Some("Seeded".into()),
        ..WidgetStatus::default()
    });
    let stored = double.insert(&w);
    assert_eq!(stored["apiVersion"], "example.dev/v1");
    assert_eq!(stored["kind"], "Widget");
    assert_eq!(stored["metadata"]["generation"], 1);
    let read = double.get::<Widget>(NS, "w").unwrap();
    assert_eq!(read.spec.size, 3);
    assert_eq!(
        read.status.unwrap().phase.as_deref(),
        Some("Seeded"),
        "helpers write status as given"
    );

    w.spec.size = 4;
    let updated = double.insert(&w);
    assert_eq!(updated["metadata"]["generation"], 2);
    assert_eq!(updated["metadata"]["uid"], stored["metadata"]["uid"]);
    assert_eq!(double.list_json("example.dev", "widgets", NS).len(), 1);
    assert!(double.get::<Widget>("elsewhere", "w").is_none());

    let _: Time = serde_json::from_value(updated["metadata"]["creationTimestamp"].clone())
        .expect("creationTimestamp is an RFC 3339 time");
}

#[tokio::test]
async fn secrets_are_stored_as_the_api_server_stores_them() {
    let double = ApiDouble::new();
    let api: Api<Secret> = Api::namespaced(double.client(NS), NS);
    let apply = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": "s" },
        "stringData": { "password": "hunter2" },
    });
    let stored = api
        .patch("s", &PatchParams::apply("bulkhead"), &Patch::Apply(&apply))
        .await
        .unwrap();
    assert_eq!(
        stored.data.unwrap()["password"],
        ByteString(b"hunter2".to_vec())
    );
    assert_eq!(stored.string_data, None);
    assert_eq!(stored.type_.as_deref(), Some("Opaque"));
    let again = api
        .patch("s", &PatchParams::apply("bulkhead"), &Patch::Apply(&apply))
        .await
        .unwrap();
    assert_eq!(
        again.metadata.resource_version, stored.metadata.resource_version,
        "re-applying is a no-op"
    );
}

/// Server-side apply's field ownership for Secrets, as a real API server (v1.36) does it: the
/// scenarios of issue #11, checked against the real server in `tests/e2e/data_safety.rs`.
#[tokio::test]
async fn secret_fields_are_owned_per_manager_and_operation() {
    let double = ApiDouble::new();
    let api: Api<Secret> = Api::namespaced(double.client(NS), NS);
    let post = PostParams {
        field_manager: Some("bulkhead".into()),
        ..PostParams::default()
    };
    let mut created = secret("s", &[]);
    created.data = Some(BTreeMap::from([
        ("a".to_owned(), ByteString(b"1".to_vec())),
        ("b".to_owned(), ByteString(b"2".to_vec())),
    ]));
    api.create(&post, &created).await.unwrap();
    let apply = |data: Value| json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": data});
    let forced = PatchParams::apply("bulkhead").force();
    // The create is bulkhead/Update; the apply is bulkhead/Apply: another owner.
    api.patch(
        "s",
        &forced,
        &Patch::Apply(apply(json!({"a": "MQ==", "c": "Mw=="}))),
    )
    .await
    .unwrap();
    let s = api
        .patch("s", &forced, &Patch::Apply(apply(json!({"a": "MQ=="}))))
        .await
        .unwrap();
    let keys: Vec<String> = s.data.unwrap().into_keys().collect();
    assert_eq!(
        keys,
        ["a", "b"],
        "c (only the applier's) is removed; b (the create's) stays"
    );
    // An unforced apply of a value another manager owns conflicts.
    let err = api
        .patch(
            "s",
            &PatchParams::apply("other"),
            &Patch::Apply(apply(json!({"a": "OQ=="}))),
        )
        .await
        .unwrap_err();
    assert_eq!(api_status(&err).0, 409);
    // A merge patch removes a key whoever owns it.
    let s = api
        .patch(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"b": null}})),
        )
        .await
        .unwrap();
    assert_eq!(s.data.unwrap().into_keys().collect::<Vec<_>>(), ["a"]);
    // type is immutable; label values are validated.
    let tls = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "type": "kubernetes.io/tls"});
    let err = api
        .patch("s", &forced, &Patch::Apply(tls))
        .await
        .unwrap_err();
    assert_eq!(api_status(&err).0, 422);
    let long = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "labels": {"l": "x".repeat(64)}}});
    let err = api
        .patch("s", &forced, &Patch::Apply(long))
        .await
        .unwrap_err();
    let (code, _, message) = api_status(&err);
    assert_eq!(code, 422);
    assert!(message.contains("63 characters"), "{message}");
}
