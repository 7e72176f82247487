//! An in-process Kubernetes API server double: a tower `Service` that a real `kube::Client` (and
//! kube-runtime's watcher) talk to, so controller tests run without a cluster.
//!
//! Models: JSON storage with uid/resourceVersion/generation; get, list, watch, create, update,
//! patch (apply, merge, JSON patch), delete; finalizers; the status subresource; selectors; dryRun;
//! one subject's Role (incl. resourceNames, SSA create needing `create`); self-reviews; faults.
//! For Secrets, server-side apply's field ownership per manager *and* operation for the fields
//! Bulkhead writes (data keys, labels, annotations, ownerReferences by uid, type): an apply
//! removes a field it stops sending only when no other manager owns it, a create or patch owns
//! what it changed, `type` is immutable; label values are validated as the API server does.
//! Cannot prove (the env-gated e2e suite does): SSA ownership of other fields, admission,
//! CEL/schema validation, ownerReference GC, RBAC aggregation, watch bookmarks/timeouts/410 Gone.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::prelude::{BASE64_STANDARD, Engine as _};
use bytes::Bytes;
use futures::channel::mpsc::{self, UnboundedReceiver, UnboundedSender};
use futures::future::{self, BoxFuture};
use futures::{StreamExt, stream};
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use k8s_openapi::api::rbac::v1::PolicyRule;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

/// The body of every response: a whole JSON document, or a watch stream.
pub type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;

/// How long a watch lasts when the client gives no `timeoutSeconds`.
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

const APPLY_PATCH: &str = "application/apply-patch+yaml";
const MERGE_PATCH: &str = "application/merge-patch+json";
const STRATEGIC_MERGE_PATCH: &str = "application/strategic-merge-patch+json";
const JSON_PATCH: &str = "application/json-patch+json";

/// The field manager of writes made with [`ApiDouble::insert_json`] (someone else's, as
/// `kubectl` would be).
pub const EXTERNAL: &str = "external";

const REVIEW_GROUP: &str = "authorization.k8s.io";
const RULES_REVIEW: &str = "selfsubjectrulesreviews";
const ACCESS_REVIEW: &str = "selfsubjectaccessreviews";

/// The API double. Clones share one server state.
#[derive(Clone)]
pub struct ApiDouble {
    state: Arc<Mutex<State>>,
}

/// One request as the double saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    /// HTTP method, e.g. `PATCH`.
    pub method: String,
    /// URL path, e.g. `/api/v1/namespaces/team-a/secrets/db`.
    pub path: String,
    /// Raw (encoded) query string, empty when absent.
    pub query: String,
    /// Kubernetes verb: get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: String,
    /// API group, empty for the core group.
    pub group: String,
    /// Resource as RBAC names it, with the subresource: `credentials/status`.
    pub resource: String,
    pub namespace: Option<String>,
    /// The object name: from the path, a create's body, or a list/watch's
    /// `fieldSelector=metadata.name=X` (RBAC sees the first and the last, not a create's).
    pub name: Option<String>,
}

/// Selects requests for fault injection by verb and resource (`*` matches any) and, optionally,
/// object name. The resource includes the subresource: `credentials/status`.
#[derive(Clone, Debug)]
pub struct Matcher {
    verb: String,
    resource: String,
    name: Option<String>,
}

impl Matcher {
    pub fn new(verb: &str, resource: &str) -> Self {
        Self {
            verb: verb.to_owned(),
            resource: resource.to_owned(),
            name: None,
        }
    }

    /// Match only requests for this object name.
    #[must_use]
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    fn matches(&self, request: &Recorded) -> bool {
        (self.verb == "*" || self.verb == request.verb)
            && (self.resource == "*" || self.resource == request.resource)
            && self
                .name
                .as_ref()
                .is_none_or(|n| request.name.as_ref() == Some(n))
    }
}

impl Default for ApiDouble {
    fn default() -> Self {
        Self::new()
    }
}

impl ApiDouble {
    /// A double that serves every resource, with no Role (everything allowed), and the status
    /// subresource registered for Bulkhead's kinds and the workload kinds.
    pub fn new() -> Self {
        let status_subresources = [
            ("bulkhead.dev", "tenants"),
            ("bulkhead.dev", "credentials"),
            ("apps", "deployments"),
            ("apps", "statefulsets"),
            ("apps", "daemonsets"),
        ]
        .into_iter()
        .map(|(g, r)| (g.to_owned(), r.to_owned()))
        .collect();
        let state = State {
            status_subresources,
            ..State::default()
        };
        Self {
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// A client whose default namespace is `namespace`, talking to this double.
    pub fn client(&self, namespace: &str) -> kube::Client {
        kube::Client::new(self.clone(), namespace)
    }

    /// Register `resource` in `group` as having a status subresource.
    #[must_use]
    pub fn with_status_subresource(self, group: &str, resource: &str) -> Self {
        self.lock()
            .status_subresources
            .insert((group.to_owned(), resource.to_owned()));
        self
    }

    /// Serve `resource` again after [`ApiDouble::unserve`].
    pub fn serve(&self, group: &str, resource: &str) {
        self.lock()
            .unserved
            .remove(&(group.to_owned(), resource.to_owned()));
    }

    /// Answer 404 to every request for `resource`, like a CRD that is not installed.
    pub fn unserve(&self, group: &str, resource: &str) {
        self.lock()
            .unserved
            .insert((group.to_owned(), resource.to_owned()));
    }

    /// Authorize every request against these rules, like a Role bound to the client's subject.
    pub fn set_role(&self, rules: Vec<PolicyRule>) {
        self.lock().role = Some(rules);
    }

    /// Allow everything again.
    pub fn clear_role(&self) {
        self.lock().role = None;
    }

    /// The user named in Forbidden messages (default `system:serviceaccount:<ns>:bulkhead`).
    pub fn set_user(&self, user: &str) {
        self.lock().user = Some(user.to_owned());
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }

    /// Answer the next `times` requests selected by `matcher` with a Status error of `code`.
    pub fn fail_next(&self, matcher: Matcher, code: u16, times: usize) {
        self.lock().faults.push(Fault {
            matcher,
            code,
            remaining: times,
            retry_after: None,
        });
    }

    /// Answer the next `times` requests selected by `matcher` with 429 and `Retry-After`.
    pub fn throttle_next(&self, matcher: Matcher, retry_after_secs: u64, times: usize) {
        self.lock().faults.push(Fault {
            matcher,
            code: 429,
            remaining: times,
            retry_after: Some(retry_after_secs),
        });
    }

    /// The stored object, if any.
    pub fn get_json(
        &self,
        group: &str,
        resource: &str,
        namespace: &str,
        name: &str,
    ) -> Option<Value> {
        let key = CollectionKey::new(group, resource, namespace);
        self.lock().collections.get(&key)?.get(name).cloned()
    }

    /// The stored objects of one collection, ordered by name.
    pub fn list_json(&self, group: &str, resource: &str, namespace: &str) -> Vec<Value> {
        let key = CollectionKey::new(group, resource, namespace);
        self.lock()
            .collections
            .get(&key)
            .map(|objects| objects.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Create or overwrite an object as someone else would (status included, no authorization),
    /// bumping the resourceVersion and notifying watchers. Returns the stored object.
    ///
    /// Panics when the value has no `metadata.name`: that is a mistake in the test.
    pub fn insert_json(
        &self,
        group: &str,
        version: &str,
        resource: &str,
        namespace: &str,
        value: Value,
    ) -> Value {
        let key = CollectionKey::new(group, resource, namespace);
        self.lock()
            .put_external(&key, version, value)
            .unwrap_or_else(|err| panic!("insert_json({group}/{resource}): {err}"))
    }

    /// Delete an object as someone else would: with finalizers it only gets a
    /// deletionTimestamp. Returns the object as it was last stored, `None` when absent.
    pub fn delete_json(
        &self,
        group: &str,
        resource: &str,
        namespace: &str,
        name: &str,
    ) -> Option<Value> {
        let key = CollectionKey::new(group, resource, namespace);
        self.lock().delete_object(&key, name, false)
    }

    /// The stored object decoded as `K`.
    ///
    /// Panics when it does not decode: the test would otherwise mistake it for absent.
    pub fn get<K>(&self, namespace: &str, name: &str) -> Option<K>
    where
        K: kube::Resource<DynamicType = ()> + DeserializeOwned,
    {
        let value = self.get_json(&K::group(&()), &K::plural(&()), namespace, name)?;
        Some(serde_json::from_value(value).unwrap_or_else(|err| {
            panic!(
                "stored {} {namespace}/{name} does not decode: {err}",
                K::kind(&())
            )
        }))
    }

    /// [`ApiDouble::insert_json`] for a typed object; it needs `metadata.namespace`.
    pub fn insert<K>(&self, object: &K) -> Value
    where
        K: kube::Resource<DynamicType = ()> + Serialize,
    {
        let namespace = object
            .meta()
            .namespace
            .clone()
            .unwrap_or_else(|| panic!("insert::<{}> needs metadata.namespace", K::kind(&())));
        let mut value = serde_json::to_value(object)
            .unwrap_or_else(|err| panic!("{} does not serialize: {err}", K::kind(&())));
        let map = object_mut(&mut value);
        map.insert("apiVersion".into(), K::api_version(&()).into());
        map.insert("kind".into(), K::kind(&()).into());
        self.insert_json(
            &K::group(&()),
            &K::version(&()),
            &K::plural(&()),
            &namespace,
            value,
        )
    }

    /// Serve one HTTP request.
    pub async fn handle(&self, request: Request<kube::client::Body>) -> Response<ResponseBody> {
        let (parts, body) = request.into_parts();
        let body = match body.collect_bytes().await {
            Ok(body) => body,
            Err(err) => {
                return error_response(&ApiError::bad_request(format!("unreadable body: {err}")));
            }
        };
        let call = Call::new(&parts, body);
        let outcome = self.lock().serve(&call);
        match outcome {
            Ok(Reply::Object(code, value)) => json_response(code, &value),
            Ok(Reply::Watch(plan)) => watch_response(plan),
            Err(err) => error_response(&err),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl tower::Service<Request<kube::client::Body>> for ApiDouble {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<kube::client::Body>) -> Self::Future {
        let double = self.clone();
        Box::pin(async move { Ok(double.handle(request).await) })
    }
}

// ---------------------------------------------------------------------------------------------
// Server state

#[derive(Default)]
struct State {
    collections: BTreeMap<CollectionKey, BTreeMap<String, Value>>,
    revision: u64,
    uids: u64,
    history: Vec<Change>,
    watchers: Vec<Watcher>,
    unserved: BTreeSet<(String, String)>,
    status_subresources: BTreeSet<(String, String)>,
    kinds: BTreeMap<(String, String), String>,
    role: Option<Vec<PolicyRule>>,
    user: Option<String>,
    requests: Vec<Recorded>,
    faults: Vec<Fault>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct CollectionKey {
    group: String,
    resource: String,
    namespace: String,
}

impl CollectionKey {
    fn new(group: &str, resource: &str, namespace: &str) -> Self {
        Self {
            group: group.to_owned(),
            resource: resource.to_owned(),
            namespace: namespace.to_owned(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One stored write, kept for watches that resume from an older resourceVersion.
#[derive(Clone, Debug)]
struct Change {
    key: CollectionKey,
    revision: u64,
    kind: ChangeKind,
    old: Option<Value>,
    object: Value,
}

struct Watcher {
    key: CollectionKey,
    sender: UnboundedSender<Change>,
}

struct Fault {
    matcher: Matcher,
    code: u16,
    remaining: usize,
    retry_after: Option<u64>,
}

/// Where a request points.
#[derive(Clone, Debug)]
struct Target {
    group: String,
    version: String,
    resource: String,
    subresource: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
}

impl Target {
    fn parse(path: &str) -> Option<Self> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, version, rest) = match segments.as_slice() {
            ["api", version, rest @ ..] => ("", *version, rest),
            ["apis", group, version, rest @ ..] => (*group, *version, rest),
            _ => return None,
        };
        let (namespace, rest) = match rest {
            ["namespaces", namespace, rest @ ..] if !rest.is_empty() => (Some(*namespace), rest),
            _ => (None, rest),
        };
        let (resource, name, subresource) = match rest {
            [resource] => (*resource, None, None),
            [resource, name] => (*resource, Some(*name), None),
            [resource, name, sub] => (*resource, Some(*name), Some(*sub)),
            _ => return None,
        };
        if [version, resource]
            .iter()
            .chain(&name)
            .chain(&namespace)
            .any(|s| s.is_empty())
        {
            return None;
        }
        Some(Self {
            group: group.to_owned(),
            version: version.to_owned(),
            resource: resource.to_owned(),
            subresource: subresource.map(str::to_owned),
            namespace: namespace.map(str::to_owned),
            name: name.map(str::to_owned),
        })
    }

    /// The resource as RBAC names it.
    fn rbac_resource(&self) -> String {
        match &self.subresource {
            Some(sub) => format!("{}/{sub}", self.resource),
            None => self.resource.clone(),
        }
    }

    fn key(&self) -> CollectionKey {
        CollectionKey::new(
            &self.group,
            &self.resource,
            self.namespace.as_deref().unwrap_or_default(),
        )
    }

    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }

    fn api_version(&self) -> String {
        api_version(&self.group, &self.version)
    }
}

/// A request, decoded.
struct Call {
    method: String,
    path: String,
    raw_query: String,
    query: BTreeMap<String, String>,
    content_type: String,
    body: Bytes,
    target: Option<Target>,
    verb: String,
    /// The name RBAC checks: the path's, or a list/watch pinned by field selector.
    rbac_name: Option<String>,
}

impl Call {
    fn new(parts: &http::request::Parts, body: Bytes) -> Self {
        let path = parts.uri.path().to_owned();
        let raw_query = parts.uri.query().unwrap_or_default().to_owned();
        let query = parse_query(&raw_query);
        let target = Target::parse(&path);
        let method = parts.method.as_str().to_owned();
        let named = target.as_ref().is_some_and(|t| t.name.is_some());
        let verb = match method.as_str() {
            "GET" if named => "get".to_owned(),
            "GET" if query.get("watch").is_some_and(|w| w == "true" || w == "1") => {
                "watch".to_owned()
            }
            "GET" => "list".to_owned(),
            "POST" => "create".to_owned(),
            "PUT" => "update".to_owned(),
            "PATCH" => "patch".to_owned(),
            "DELETE" if named => "delete".to_owned(),
            "DELETE" => "deletecollection".to_owned(),
            other => other.to_lowercase(),
        };
        let rbac_name = match verb.as_str() {
            "list" | "watch" => query.get("fieldSelector").and_then(|s| pinned_name(s)),
            _ => target.as_ref().and_then(|t| t.name.clone()),
        };
        let content_type = parts
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .unwrap_or_default()
            .trim()
            .to_owned();
        Self {
            method,
            path,
            raw_query,
            query,
            content_type,
            body,
            target,
            verb,
            rbac_name,
        }
    }

    fn recorded(&self) -> Recorded {
        Recorded {
            method: self.method.clone(),
            path: self.path.clone(),
            query: self.raw_query.clone(),
            verb: self.verb.clone(),
            group: self
                .target
                .as_ref()
                .map(|t| t.group.clone())
                .unwrap_or_default(),
            resource: self
                .target
                .as_ref()
                .map(Target::rbac_resource)
                .unwrap_or_default(),
            namespace: self.target.as_ref().and_then(|t| t.namespace.clone()),
            name: self.rbac_name.clone().or_else(|| {
                let body: Value = serde_json::from_slice(&self.body).ok()?;
                (self.verb == "create").then(|| meta_str(&body, "name").map(str::to_owned))?
            }),
        }
    }

    fn dry_run(&self) -> bool {
        self.query.get("dryRun").is_some_and(|v| v == "All")
    }

    fn field_manager(&self) -> Option<&str> {
        self.query.get("fieldManager").map(String::as_str)
    }

    fn json_body(&self) -> Result<Value, ApiError> {
        serde_json::from_slice(&self.body)
            .map_err(|err| ApiError::bad_request(format!("the request body is not JSON: {err}")))
    }
}

enum Reply {
    Object(StatusCode, Value),
    Watch(WatchPlan),
}

struct WatchPlan {
    replay: Vec<Change>,
    live: UnboundedReceiver<Change>,
    selector: Selector,
    timeout: Duration,
}

/// Who is asking what, for RBAC.
struct Attributes {
    verb: String,
    group: String,
    resource: String,
    namespace: String,
    name: Option<String>,
}

impl State {
    fn serve(&mut self, call: &Call) -> Result<Reply, ApiError> {
        let recorded = call.recorded();
        self.requests.push(recorded.clone());
        if let Some(fault) = self.take_fault(&recorded) {
            return Err(fault);
        }
        let Some(target) = &call.target else {
            return Err(ApiError::not_routed());
        };
        if target.namespace.is_none()
            && target.group == REVIEW_GROUP
            && [RULES_REVIEW, ACCESS_REVIEW].contains(&target.resource.as_str())
            && target.name.is_none()
            && call.verb == "create"
        {
            return self.review(target, call);
        }
        let Some(namespace) = &target.namespace else {
            return Err(ApiError::not_routed());
        };
        self.authorize(&Attributes {
            verb: call.verb.clone(),
            group: target.group.clone(),
            resource: target.rbac_resource(),
            namespace: namespace.clone(),
            name: call.rbac_name.clone(),
        })?;
        if self
            .unserved
            .contains(&(target.group.clone(), target.resource.clone()))
        {
            return Err(ApiError::not_routed());
        }
        match target.subresource.as_deref() {
            None => {}
            Some("status") if self.has_status_subresource(target) => {}
            Some(_) => return Err(ApiError::not_routed()),
        }
        match call.verb.as_str() {
            "get" => self.get(target),
            "list" => self.list(target, call),
            "watch" => self.watch(target, call),
            "create" if target.name.is_none() => self.create(target, call),
            "update" => self.update(target, call),
            "patch" => self.patch(target, call),
            "delete" if target.subresource.is_none() => self.delete(target, call),
            "deletecollection" => self.delete_collection(target, call),
            verb => Err(ApiError::new(
                405,
                "MethodNotAllowed",
                format!("the server does not allow this method on the requested resource ({verb})"),
            )),
        }
    }

    fn take_fault(&mut self, request: &Recorded) -> Option<ApiError> {
        let fault = self
            .faults
            .iter_mut()
            .find(|f| f.remaining > 0 && f.matcher.matches(request))?;
        fault.remaining -= 1;
        let mut err = ApiError::new(
            fault.code,
            reason_for(fault.code),
            format!(
                "injected by the API double: {} {} {}",
                request.verb,
                request.resource,
                request.name.as_deref().unwrap_or_default()
            ),
        );
        err.retry_after = fault.retry_after;
        self.faults.retain(|f| f.remaining > 0);
        Some(err)
    }

    // --- reads ---------------------------------------------------------------------------------

    fn object(&self, target: &Target) -> Option<&Value> {
        self.collections.get(&target.key())?.get(target.name())
    }

    fn get(&self, target: &Target) -> Result<Reply, ApiError> {
        let object = self
            .object(target)
            .ok_or_else(|| ApiError::not_found(target))?;
        Ok(Reply::Object(StatusCode::OK, object.clone()))
    }

    fn list(&self, target: &Target, call: &Call) -> Result<Reply, ApiError> {
        let selector = Selector::from_query(&call.query)?;
        let limit = match call.query.get("limit") {
            Some(limit) => limit
                .parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("invalid limit {limit:?}")))?,
            None => 0,
        };
        let after = call.query.get("continue").filter(|c| !c.is_empty());
        let mut matching = self
            .collections
            .get(&target.key())
            .into_iter()
            .flat_map(|objects| objects.iter())
            .filter(|(name, _)| after.is_none_or(|after| name.as_str() > after.as_str()))
            .filter(|(_, object)| selector.matches(object))
            .map(|(_, object)| object.clone());
        let page_size = if limit == 0 { usize::MAX } else { limit };
        let items: Vec<Value> = matching.by_ref().take(page_size).collect();
        let remaining = matching.count();
        let mut metadata = json!({ "resourceVersion": self.revision.to_string() });
        if remaining > 0
            && let Some(last) = items.last().and_then(|o| meta_str(o, "name"))
        {
            metadata["continue"] = last.into();
            metadata["remainingItemCount"] = remaining.into();
        }
        Ok(Reply::Object(
            StatusCode::OK,
            json!({
                "kind": format!("{}List", self.kind_of(&target.group, &target.resource)),
                "apiVersion": target.api_version(),
                "metadata": metadata,
                "items": items,
            }),
        ))
    }

    fn watch(&mut self, target: &Target, call: &Call) -> Result<Reply, ApiError> {
        if call.query.contains_key("sendInitialEvents") {
            return Err(ApiError::bad_request(
                "the API double does not implement streaming lists (sendInitialEvents)".into(),
            ));
        }
        let selector = Selector::from_query(&call.query)?;
        let timeout =
            match call.query.get("timeoutSeconds") {
                Some(secs) => Duration::from_secs(secs.parse().map_err(|_| {
                    ApiError::bad_request(format!("invalid timeoutSeconds {secs:?}"))
                })?),
                None => DEFAULT_WATCH_TIMEOUT,
            };
        let key = target.key();
        let replay = match call.query.get("resourceVersion").map(String::as_str) {
            None | Some("" | "0") => self
                .collections
                .get(&key)
                .into_iter()
                .flat_map(|objects| objects.values())
                .map(|object| Change {
                    key: key.clone(),
                    revision: 0,
                    kind: ChangeKind::Added,
                    old: None,
                    object: object.clone(),
                })
                .collect(),
            Some(since) => {
                let since: u64 = since.parse().map_err(|_| {
                    ApiError::bad_request(format!("invalid resourceVersion {since:?}"))
                })?;
                self.history
                    .iter()
                    .filter(|c| c.key == key && c.revision > since)
                    .cloned()
                    .collect()
            }
        };
        let (sender, live) = mpsc::unbounded();
        self.watchers.push(Watcher { key, sender });
        Ok(Reply::Watch(WatchPlan {
            replay,
            live,
            selector,
            timeout,
        }))
    }

    // --- writes --------------------------------------------------------------------------------

    fn create(&mut self, target: &Target, call: &Call) -> Result<Reply, ApiError> {
        if target.subresource.is_some() {
            return Err(ApiError::new(
                405,
                "MethodNotAllowed",
                "create on a subresource".into(),
            ));
        }
        let candidate = call.json_body()?;
        let object = self.create_object(
            target,
            candidate,
            call.field_manager(),
            "Update",
            call.dry_run(),
        )?;
        Ok(Reply::Object(StatusCode::CREATED, object))
    }

    fn update(&mut self, target: &Target, call: &Call) -> Result<Reply, ApiError> {
        let candidate = call.json_body()?;
        let old = self
            .object(target)
            .cloned()
            .ok_or_else(|| ApiError::not_found(target))?;
        let mut new =
            self.prepare_update(target, &old, candidate, call.field_manager(), "Update")?;
        if is_secret(&target.group, &target.resource) {
            let manager = call.field_manager().unwrap_or("unknown");
            track_secret_fields(Some(&old), &mut new, manager, "Update", None, true)?;
        }
        let object = self.commit_update(&target.key(), old, new, call.dry_run());
        Ok(Reply::Object(StatusCode::OK, object))
    }

    fn patch(&mut self, target: &Target, call: &Call) -> Result<Reply, ApiError> {
        let operation = match call.content_type.as_str() {
            APPLY_PATCH => "Apply",
            MERGE_PATCH | STRATEGIC_MERGE_PATCH | JSON_PATCH => "Update",
            other => {
                return Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!(
                        "the body of the request was in an unknown format - accepted media types include: {APPLY_PATCH}, {MERGE_PATCH}, {STRATEGIC_MERGE_PATCH}, {JSON_PATCH} (got {other:?})"
                    ),
                ));
            }
        };
        let patch = call.json_body()?;
        let apply = operation == "Apply";
        if apply {
            check_apply_patch(call, &patch)?;
        }
        let Some(old) = self.object(target).cloned() else {
            return if apply {
                self.apply_create(target, call, &patch)
            } else {
                Err(ApiError::not_found(target))
            };
        };
        let mut candidate = old.clone();
        if call.content_type == JSON_PATCH {
            json_patch(&mut candidate, &patch).map_err(|msg| ApiError::new(422, "Invalid", msg))?;
        } else {
            merge(&mut candidate, &patch, &mut Vec::new(), apply);
        }
        let mut new =
            self.prepare_update(target, &old, candidate, call.field_manager(), operation)?;
        if is_secret(&target.group, &target.resource) {
            let manager = call.field_manager().unwrap_or("unknown");
            let force = call.query.get("force").is_some_and(|f| f == "true");
            // What the apply sends, as the server sees it (stringData is data, type defaults).
            let mut applied = patch.clone();
            normalize_secret(&mut applied);
            let applied = apply.then_some(&applied);
            track_secret_fields(Some(&old), &mut new, manager, operation, applied, force)?;
        }
        let object = self.commit_update(&target.key(), old, new, call.dry_run());
        Ok(Reply::Object(StatusCode::OK, object))
    }

    /// Server-side apply of an absent object creates it, and so needs `create` as well.
    fn apply_create(
        &mut self,
        target: &Target,
        call: &Call,
        patch: &Value,
    ) -> Result<Reply, ApiError> {
        if target.subresource.is_some() {
            return Err(ApiError::not_found(target));
        }
        self.authorize(&Attributes {
            verb: "create".into(),
            group: target.group.clone(),
            resource: target.resource.clone(),
            namespace: target.namespace.clone().unwrap_or_default(),
            name: None,
        })?;
        let mut candidate = json!({});
        merge(&mut candidate, patch, &mut Vec::new(), true);
        if meta_str(&candidate, "name").is_some_and(|n| n != target.name()) {
            return Err(name_mismatch(&candidate, target));
        }
        metadata_mut(&mut candidate).insert("name".into(), target.name().into());
        let object = self.create_object(
            target,
            candidate,
            call.field_manager(),
            "Apply",
            call.dry_run(),
        )?;
        Ok(Reply::Object(StatusCode::CREATED, object))
    }

    fn delete(&mut self, target: &Target, call: &Call) -> Result<Reply, ApiError> {
        let old = self
            .object(target)
            .ok_or_else(|| ApiError::not_found(target))?;
        if !call.body.is_empty() {
            let options = call.json_body()?;
            let preconditions = &options["preconditions"];
            for (field, precondition) in [("resourceVersion", "ResourceVersion"), ("uid", "UID")] {
                if let Some(want) = preconditions.get(field).and_then(Value::as_str)
                    && meta_str(old, field) != Some(want)
                {
                    return Err(ApiError::new(
                        409,
                        "Conflict",
                        format!(
                            "Operation cannot be fulfilled on {} \"{}\": Precondition failed: {precondition} in precondition: {want}, {precondition} in object meta: {}",
                            qualified(&target.group, &target.resource),
                            target.name(),
                            meta_str(old, field).unwrap_or_default()
                        ),
                    ));
                }
            }
        }
        let object = self
            .delete_object(&target.key(), target.name(), call.dry_run())
            .ok_or_else(|| ApiError::not_found(target))?;
        let code =
            if meta_str(&object, "deletionTimestamp").is_some() && self.object(target).is_some() {
                StatusCode::ACCEPTED
            } else {
                StatusCode::OK
            };
        Ok(Reply::Object(code, object))
    }

    fn delete_collection(&mut self, target: &Target, call: &Call) -> Result<Reply, ApiError> {
        let selector = Selector::from_query(&call.query)?;
        let key = target.key();
        let names: Vec<String> = self
            .collections
            .get(&key)
            .into_iter()
            .flat_map(|objects| objects.iter())
            .filter(|(_, object)| selector.matches(object))
            .map(|(name, _)| name.clone())
            .collect();
        let items: Vec<Value> = names
            .iter()
            .filter_map(|name| self.delete_object(&key, name, call.dry_run()))
            .collect();
        Ok(Reply::Object(
            StatusCode::OK,
            json!({
                "kind": format!("{}List", self.kind_of(&target.group, &target.resource)),
                "apiVersion": target.api_version(),
                "metadata": { "resourceVersion": self.revision.to_string() },
                "items": items,
            }),
        ))
    }

    fn create_object(
        &mut self,
        target: &Target,
        mut object: Value,
        manager: Option<&str>,
        operation: &str,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        if !object.is_object() {
            return Err(ApiError::bad_request(
                "the object must be a JSON object".into(),
            ));
        }
        self.check_type_meta(target, &mut object)?;
        let namespace = target.namespace.clone().unwrap_or_default();
        if meta_str(&object, "namespace").is_some_and(|ns| !ns.is_empty() && ns != namespace) {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request".into(),
            ));
        }
        let name = match (meta_str(&object, "name"), meta_str(&object, "generateName")) {
            (Some(name), _) if !name.is_empty() => name.to_owned(),
            (_, Some(prefix)) if !prefix.is_empty() => format!("{prefix}{:05x}", self.uids + 1),
            _ => {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    "metadata.name: Required value: name or generateName is required".into(),
                ));
            }
        };
        let key = target.key();
        if self
            .collections
            .get(&key)
            .is_some_and(|objects| objects.contains_key(&name))
        {
            return Err(ApiError::already_exists(
                &target.group,
                &target.resource,
                &name,
            ));
        }
        if self.has_status_subresource(target) {
            object_mut(&mut object).remove("status");
        }
        self.uids += 1;
        let uid = format!("00000000-0000-4000-8000-{:012x}", self.uids);
        let meta = metadata_mut(&mut object);
        meta.insert("name".into(), name.into());
        meta.insert("namespace".into(), namespace.into());
        meta.insert("uid".into(), uid.into());
        meta.insert("creationTimestamp".into(), now().into());
        meta.insert("generation".into(), 1.into());
        for server_owned in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
        ] {
            meta.remove(server_owned);
        }
        record_manager(&mut object, manager, operation);
        validate_labels(&object)?;
        if is_secret(&target.group, &target.resource) {
            let applied = (operation == "Apply").then(|| object.clone());
            track_secret_fields(
                None,
                &mut object,
                manager.unwrap_or("unknown"),
                operation,
                applied.as_ref(),
                true,
            )?;
        }
        if dry_run {
            return Ok(object);
        }
        Ok(self.store(&key, ChangeKind::Added, None, object))
    }

    /// The object a main-resource or status write would store, from the client's candidate.
    fn prepare_update(
        &mut self,
        target: &Target,
        old: &Value,
        mut candidate: Value,
        manager: Option<&str>,
        operation: &str,
    ) -> Result<Value, ApiError> {
        if !candidate.is_object() {
            return Err(ApiError::bad_request(
                "the object must be a JSON object".into(),
            ));
        }
        if meta_str(&candidate, "name").is_some_and(|n| n != target.name()) {
            return Err(name_mismatch(&candidate, target));
        }
        let current = meta_str(old, "resourceVersion").unwrap_or_default();
        if let Some(wanted) = meta_str(&candidate, "resourceVersion").filter(|rv| !rv.is_empty())
            && wanted != current
        {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
                    qualified(&target.group, &target.resource),
                    target.name()
                ),
            ));
        }
        self.check_type_meta(target, &mut candidate)?;
        let mut new = if target.subresource.is_some() {
            let mut new = old.clone();
            match object_mut(&mut candidate).remove("status") {
                Some(status) => object_mut(&mut new).insert("status".into(), status),
                None => object_mut(&mut new).remove("status"),
            };
            new
        } else {
            let mut new = candidate;
            if self.has_status_subresource(target) {
                match old.get("status") {
                    Some(status) => object_mut(&mut new).insert("status".into(), status.clone()),
                    None => object_mut(&mut new).remove("status"),
                };
            }
            let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
            let generation = if old.get("spec") == new.get("spec") {
                generation
            } else {
                generation + 1
            };
            let old_meta = old.get("metadata").and_then(Value::as_object);
            let meta = metadata_mut(&mut new);
            for server_owned in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "managedFields",
            ] {
                match old_meta.and_then(|m| m.get(server_owned)) {
                    Some(value) => meta.insert(server_owned.into(), value.clone()),
                    None => meta.remove(server_owned),
                };
            }
            meta.insert("generation".into(), generation.into());
            meta.insert("name".into(), target.name().into());
            meta.insert(
                "namespace".into(),
                target.namespace.clone().unwrap_or_default().into(),
            );
            new
        };
        metadata_mut(&mut new).insert("resourceVersion".into(), current.into());
        record_manager(&mut new, manager, operation);
        validate_labels(&new)?;
        Ok(new)
    }

    /// Store an update; a no-op write keeps the resourceVersion and notifies nobody, and the
    /// removal of the last finalizer of a deleted object completes its deletion.
    fn commit_update(
        &mut self,
        key: &CollectionKey,
        old: Value,
        new: Value,
        dry_run: bool,
    ) -> Value {
        if new == old || dry_run {
            return new;
        }
        let finalized = meta_str(&new, "deletionTimestamp").is_some()
            && new["metadata"]["finalizers"]
                .as_array()
                .is_none_or(Vec::is_empty);
        let kind = if finalized {
            ChangeKind::Deleted
        } else {
            ChangeKind::Modified
        };
        self.store(key, kind, Some(old), new)
    }

    /// Delete now, or mark for deletion when finalizers remain. Returns the resulting object.
    fn delete_object(&mut self, key: &CollectionKey, name: &str, dry_run: bool) -> Option<Value> {
        let old = self.collections.get(key)?.get(name)?.clone();
        let finalizers = old["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if !finalizers {
            if dry_run {
                return Some(old);
            }
            let gone = old.clone();
            return Some(self.store(key, ChangeKind::Deleted, Some(old), gone));
        }
        if meta_str(&old, "deletionTimestamp").is_some() {
            return Some(old);
        }
        let mut marked = old.clone();
        let meta = metadata_mut(&mut marked);
        meta.insert("deletionTimestamp".into(), now().into());
        meta.insert("deletionGracePeriodSeconds".into(), 0.into());
        if dry_run {
            return Some(marked);
        }
        Some(self.store(key, ChangeKind::Modified, Some(old), marked))
    }

    /// A write by someone other than the client: everything is taken as given except the
    /// server-owned metadata.
    fn put_external(
        &mut self,
        key: &CollectionKey,
        version: &str,
        mut object: Value,
    ) -> Result<Value, String> {
        if !object.is_object() {
            return Err("the object must be a JSON object".into());
        }
        let name = meta_str(&object, "name")
            .filter(|n| !n.is_empty())
            .ok_or("the object has no metadata.name")?
            .to_owned();
        self.learn_kind(&key.group, &key.resource, &object);
        let kind = self.kind_of(&key.group, &key.resource);
        let map = object_mut(&mut object);
        map.entry("apiVersion")
            .or_insert_with(|| api_version(&key.group, version).into());
        map.entry("kind").or_insert_with(|| kind.into());
        metadata_mut(&mut object).insert("namespace".into(), key.namespace.clone().into());
        if key.group.is_empty() && key.resource == "secrets" {
            normalize_secret(&mut object);
        }
        let old = self
            .collections
            .get(key)
            .and_then(|objects| objects.get(&name))
            .cloned();
        let Some(old) = old else {
            self.uids += 1;
            let uid = format!("00000000-0000-4000-8000-{:012x}", self.uids);
            let meta = metadata_mut(&mut object);
            meta.entry("uid").or_insert_with(|| uid.into());
            meta.entry("creationTimestamp")
                .or_insert_with(|| now().into());
            meta.entry("generation").or_insert_with(|| 1.into());
            if is_secret(&key.group, &key.resource) {
                metadata_mut(&mut object).remove("managedFields");
                track_secret_fields(None, &mut object, EXTERNAL, "Update", None, true)
                    .map_err(|e| e.message)?;
            }
            return Ok(self.store(key, ChangeKind::Added, None, object));
        };
        let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
        let generation = generation + i64::from(old.get("spec") != object.get("spec"));
        let meta = metadata_mut(&mut object);
        for server_owned in ["uid", "creationTimestamp", "resourceVersion"] {
            if let Some(value) = old["metadata"].get(server_owned) {
                meta.insert(server_owned.into(), value.clone());
            }
        }
        meta.insert("generation".into(), generation.into());
        if is_secret(&key.group, &key.resource) {
            track_secret_fields(Some(&old), &mut object, EXTERNAL, "Update", None, true)
                .map_err(|e| e.message)?;
        }
        Ok(self.commit_update(key, old, object, false))
    }

    /// Give the object a new resourceVersion, store (or drop) it, and tell the watchers.
    fn store(
        &mut self,
        key: &CollectionKey,
        kind: ChangeKind,
        old: Option<Value>,
        mut object: Value,
    ) -> Value {
        self.revision += 1;
        metadata_mut(&mut object)
            .insert("resourceVersion".into(), self.revision.to_string().into());
        let name = meta_str(&object, "name").unwrap_or_default().to_owned();
        let objects = self.collections.entry(key.clone()).or_default();
        if kind == ChangeKind::Deleted {
            objects.remove(&name);
        } else {
            objects.insert(name, object.clone());
        }
        let change = Change {
            key: key.clone(),
            revision: self.revision,
            kind,
            old,
            object: object.clone(),
        };
        self.watchers
            .retain(|w| w.key != *key || w.sender.unbounded_send(change.clone()).is_ok());
        self.history.push(change);
        object
    }

    // --- types ---------------------------------------------------------------------------------

    /// Fill in apiVersion/kind, and refuse an object of another type than the URL's.
    fn check_type_meta(&mut self, target: &Target, object: &mut Value) -> Result<(), ApiError> {
        let expected = target.api_version();
        if let Some(found) = object.get("apiVersion").and_then(Value::as_str)
            && found != expected
        {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({found}) does not match the expected API version ({expected})"
            )));
        }
        self.learn_kind(&target.group, &target.resource, object);
        let kind = self.kind_of(&target.group, &target.resource);
        let map = object_mut(object);
        map.insert("apiVersion".into(), expected.into());
        map.entry("kind").or_insert_with(|| kind.into());
        if target.group.is_empty() && target.resource == "secrets" {
            normalize_secret(object);
        }
        Ok(())
    }

    fn learn_kind(&mut self, group: &str, resource: &str, object: &Value) {
        if let Some(kind) = object
            .get("kind")
            .and_then(Value::as_str)
            .filter(|k| !k.is_empty())
        {
            self.kinds
                .insert((group.to_owned(), resource.to_owned()), kind.to_owned());
        }
    }

    fn kind_of(&self, group: &str, resource: &str) -> String {
        if let Some(kind) = self.kinds.get(&(group.to_owned(), resource.to_owned())) {
            return kind.clone();
        }
        let known = match resource {
            "secrets" => "Secret",
            "configmaps" => "ConfigMap",
            "events" => "Event",
            "leases" => "Lease",
            "pods" => "Pod",
            "services" => "Service",
            "serviceaccounts" => "ServiceAccount",
            "deployments" => "Deployment",
            "statefulsets" => "StatefulSet",
            "daemonsets" => "DaemonSet",
            "tenants" => "Tenant",
            "credentials" => "Credential",
            _ => "",
        };
        if !known.is_empty() {
            return known.to_owned();
        }
        let singular = resource.strip_suffix('s').unwrap_or(resource);
        let mut chars = singular.chars();
        chars
            .next()
            .map(|first| first.to_uppercase().chain(chars).collect())
            .unwrap_or_default()
    }

    fn has_status_subresource(&self, target: &Target) -> bool {
        self.status_subresources
            .contains(&(target.group.clone(), target.resource.clone()))
    }

    // --- authorization -------------------------------------------------------------------------

    fn authorize(&self, attributes: &Attributes) -> Result<(), ApiError> {
        if self.allows(attributes) {
            return Ok(());
        }
        let Attributes {
            verb,
            group,
            resource,
            namespace,
            name,
        } = attributes;
        let base = resource.split('/').next().unwrap_or_default();
        let subject = match name {
            Some(name) => format!("{} \"{name}\"", qualified(group, base)),
            None => qualified(group, base),
        };
        let user = self
            .user
            .clone()
            .unwrap_or_else(|| format!("system:serviceaccount:{namespace}:bulkhead"));
        let mut err = ApiError::new(
            403,
            "Forbidden",
            format!(
                "{subject} is forbidden: User \"{user}\" cannot {verb} resource \"{resource}\" in API group \"{group}\" in the namespace \"{namespace}\""
            ),
        );
        err.details =
            json!({ "name": name.clone().unwrap_or_default(), "group": group, "kind": base });
        Err(err)
    }

    fn allows(&self, attributes: &Attributes) -> bool {
        self.role
            .as_ref()
            .is_none_or(|rules| rules.iter().any(|rule| rule_allows(rule, attributes)))
    }

    fn review(&self, target: &Target, call: &Call) -> Result<Reply, ApiError> {
        let mut review = call.json_body()?;
        let status = if target.resource == RULES_REVIEW {
            json!({ "resourceRules": self.resource_rules(), "nonResourceRules": [], "incomplete": false })
        } else {
            let spec = &review["spec"];
            let allowed = match spec.get("resourceAttributes") {
                Some(attrs) => {
                    let text = |field: &str| {
                        attrs
                            .get(field)
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned()
                    };
                    let subresource = text("subresource");
                    let resource = if subresource.is_empty() {
                        text("resource")
                    } else {
                        format!("{}/{subresource}", text("resource"))
                    };
                    self.allows(&Attributes {
                        verb: text("verb"),
                        group: text("group"),
                        resource,
                        namespace: text("namespace"),
                        name: Some(text("name")).filter(|n| !n.is_empty()),
                    })
                }
                None => self.role.is_none(),
            };
            json!({ "allowed": allowed })
        };
        let map = object_mut(&mut review);
        map.insert("apiVersion".into(), target.api_version().into());
        let kind = if target.resource == RULES_REVIEW {
            "SelfSubjectRulesReview"
        } else {
            "SelfSubjectAccessReview"
        };
        map.insert("kind".into(), kind.into());
        map.insert("status".into(), status);
        Ok(Reply::Object(StatusCode::CREATED, review))
    }

    fn resource_rules(&self) -> Vec<Value> {
        let Some(rules) = &self.role else {
            return vec![json!({ "verbs": ["*"], "apiGroups": ["*"], "resources": ["*"] })];
        };
        let mut out: Vec<Value> = rules
            .iter()
            .map(|rule| {
                let mut value = json!({ "verbs": rule.verbs });
                for (field, list) in [
                    ("apiGroups", &rule.api_groups),
                    ("resources", &rule.resources),
                    ("resourceNames", &rule.resource_names),
                ] {
                    if let Some(list) = list {
                        value[field] = json!(list);
                    }
                }
                value
            })
            .collect();
        // The basic-user ClusterRole every authenticated user has.
        out.push(json!({
            "verbs": ["create"],
            "apiGroups": [REVIEW_GROUP],
            "resources": [ACCESS_REVIEW, RULES_REVIEW],
        }));
        out
    }
}

fn rule_allows(rule: &PolicyRule, attributes: &Attributes) -> bool {
    let contains = |list: &Option<Vec<String>>, matches: &dyn Fn(&str) -> bool| {
        list.as_ref()
            .is_some_and(|items| items.iter().any(|item| matches(item)))
    };
    rule.verbs.iter().any(|v| v == "*" || *v == attributes.verb)
        && contains(&rule.api_groups, &|g| g == "*" || g == attributes.group)
        && contains(&rule.resources, &|r| {
            resource_matches(r, &attributes.resource)
        })
        && match rule.resource_names.as_deref() {
            None | Some([]) => true,
            Some(names) => attributes
                .name
                .as_ref()
                .is_some_and(|name| names.contains(name)),
        }
}

fn resource_matches(pattern: &str, resource: &str) -> bool {
    if pattern == "*" || pattern == resource {
        return true;
    }
    match (pattern.split_once('/'), resource.split_once('/')) {
        (Some((base, "*")), Some((resource_base, _))) => base == resource_base,
        (Some(("*", sub)), Some((_, resource_sub))) => sub == resource_sub,
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Selectors

#[derive(Clone, Debug, Default)]
struct Selector {
    labels: Vec<LabelRequirement>,
    fields: Vec<FieldRequirement>,
}

#[derive(Clone, Debug)]
enum LabelRequirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

#[derive(Clone, Debug)]
struct FieldRequirement {
    pointer: String,
    value: String,
    equal: bool,
}

impl Selector {
    fn from_query(query: &BTreeMap<String, String>) -> Result<Self, ApiError> {
        let labels = match query.get("labelSelector") {
            Some(selector) => split_top_level(selector)
                .into_iter()
                .map(parse_label_requirement)
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        let fields = match query.get("fieldSelector") {
            Some(selector) => selector
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(parse_field_requirement)
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        Ok(Self { labels, fields })
    }

    fn matches(&self, object: &Value) -> bool {
        let labels = object["metadata"]["labels"].as_object();
        let label = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        let labels_match = self.labels.iter().all(|req| match req {
            LabelRequirement::Equals(key, value) => label(key) == Some(value.as_str()),
            LabelRequirement::NotEquals(key, value) => label(key) != Some(value.as_str()),
            LabelRequirement::In(key, values) => {
                label(key).is_some_and(|v| values.iter().any(|x| x == v))
            }
            LabelRequirement::NotIn(key, values) => {
                label(key).is_none_or(|v| !values.iter().any(|x| x == v))
            }
            LabelRequirement::Exists(key) => label(key).is_some(),
            LabelRequirement::NotExists(key) => label(key).is_none(),
        });
        labels_match
            && self.fields.iter().all(|req| {
                let found = match object.pointer(&req.pointer) {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Null) | None => String::new(),
                    Some(other) => other.to_string(),
                };
                (found == req.value) == req.equal
            })
    }
}

/// Split on the commas that are not inside `( )`.
fn split_top_level(selector: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&selector[start..]);
    parts
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

fn parse_label_requirement(requirement: &str) -> Result<LabelRequirement, ApiError> {
    let invalid = || ApiError::bad_request(format!("unable to parse requirement: {requirement:?}"));
    let valid_key = |key: &str| {
        !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
    };
    if let Some(key) = requirement.strip_prefix('!') {
        let key = key.trim();
        return if valid_key(key) {
            Ok(LabelRequirement::NotExists(key.to_owned()))
        } else {
            Err(invalid())
        };
    }
    let mut words = requirement.splitn(3, char::is_whitespace);
    if let (Some(key), Some(op @ ("in" | "notin")), Some(set)) =
        (words.next(), words.next(), words.next())
    {
        let values = set
            .trim()
            .strip_prefix('(')
            .and_then(|s| s.strip_suffix(')'))
            .ok_or_else(invalid)?
            .split(',')
            .map(|v| v.trim().to_owned())
            .collect();
        return Ok(if op == "in" {
            LabelRequirement::In(key.to_owned(), values)
        } else {
            LabelRequirement::NotIn(key.to_owned(), values)
        });
    }
    for (op, negated) in [("!=", true), ("==", false), ("=", false)] {
        if let Some((key, value)) = requirement.split_once(op) {
            let (key, value) = (key.trim().to_owned(), value.trim().to_owned());
            if !valid_key(&key) {
                return Err(invalid());
            }
            return Ok(if negated {
                LabelRequirement::NotEquals(key, value)
            } else {
                LabelRequirement::Equals(key, value)
            });
        }
    }
    if valid_key(requirement) {
        Ok(LabelRequirement::Exists(requirement.to_owned()))
    } else {
        Err(invalid())
    }
}

fn parse_field_requirement(requirement: &str) -> Result<FieldRequirement, ApiError> {
    for (op, equal) in [("!=", false), ("==", true), ("=", true)] {
        if let Some((field, value)) = requirement.split_once(op) {
            return Ok(FieldRequirement {
                pointer: format!("/{}", field.trim().replace('.', "/")),
                value: value.trim().to_owned(),
                equal,
            });
        }
    }
    Err(ApiError::bad_request(format!(
        "invalid field selector: {requirement:?}"
    )))
}

/// The name a field selector pins a list or watch to, as RBAC's resourceNames sees it.
fn pinned_name(field_selector: &str) -> Option<String> {
    let single = field_selector.trim();
    let value = single
        .strip_prefix("metadata.name==")
        .or_else(|| single.strip_prefix("metadata.name="))?;
    (!value.contains(',')).then(|| value.to_owned())
}

// ---------------------------------------------------------------------------------------------
// Patches

/// RFC 7386 merge; with `keyed_conditions` (server-side apply), `status.conditions` entries are
/// merged by their `type` like a map-list instead of replacing the list.
fn merge(target: &mut Value, patch: &Value, path: &mut Vec<String>, keyed_conditions: bool) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    let target = object_mut(target);
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
            continue;
        }
        path.push(key.clone());
        let slot = target.entry(key.clone()).or_insert(Value::Null);
        let conditions =
            keyed_conditions && path.len() == 2 && path[0] == "status" && path[1] == "conditions";
        match (slot, value) {
            (Value::Array(existing), Value::Array(incoming)) if conditions => {
                merge_by_type(existing, incoming)
            }
            (slot, value) => merge(slot, value, path, keyed_conditions),
        }
        path.pop();
    }
}

fn merge_by_type(existing: &mut Vec<Value>, incoming: &[Value]) {
    for item in incoming {
        let position = item
            .get("type")
            .and_then(|ty| existing.iter().position(|e| e.get("type") == Some(ty)));
        match position {
            Some(i) => merge(&mut existing[i], item, &mut Vec::new(), false),
            None => {
                let mut added = Value::Null;
                merge(&mut added, item, &mut Vec::new(), false);
                existing.push(added);
            }
        }
    }
}

/// RFC 6902.
fn json_patch(document: &mut Value, operations: &Value) -> Result<(), String> {
    let operations = operations
        .as_array()
        .ok_or("a JSON patch must be an array of operations")?;
    for operation in operations {
        let text = |field: &str| {
            operation
                .get(field)
                .and_then(Value::as_str)
                .ok_or_else(|| format!("JSON patch operation without {field}: {operation}"))
        };
        let value = || {
            operation
                .get("value")
                .cloned()
                .ok_or_else(|| format!("JSON patch operation without value: {operation}"))
        };
        let path = text("path")?;
        match text("op")? {
            "add" => pointer_add(document, path, value()?)?,
            "remove" => {
                pointer_remove(document, path)?;
            }
            "replace" => {
                let slot = document
                    .pointer_mut(path)
                    .ok_or_else(|| format!("replace: {path:?} does not exist"))?;
                *slot = value()?;
            }
            "test" => {
                let expected = value()?;
                if document.pointer(path) != Some(&expected) {
                    return Err(format!("test failed: {path:?} is not {expected}"));
                }
            }
            "move" => {
                let moved = pointer_remove(document, text("from")?)?;
                pointer_add(document, path, moved)?;
            }
            "copy" => {
                let from = text("from")?;
                let copied = document
                    .pointer(from)
                    .cloned()
                    .ok_or_else(|| format!("copy: {from:?} does not exist"))?;
                pointer_add(document, path, copied)?;
            }
            other => return Err(format!("unknown JSON patch operation {other:?}")),
        }
    }
    Ok(())
}

fn split_pointer(path: &str) -> Result<(&str, String), String> {
    let (parent, last) = path
        .rsplit_once('/')
        .ok_or_else(|| format!("invalid JSON pointer {path:?}"))?;
    Ok((parent, last.replace("~1", "/").replace("~0", "~")))
}

fn array_index(token: &str, bound: usize) -> Result<usize, String> {
    token
        .parse::<usize>()
        .ok()
        .filter(|i| *i < bound)
        .ok_or_else(|| format!("array index {token:?} out of bounds"))
}

fn pointer_add(document: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *document = value;
        return Ok(());
    }
    let (parent, key) = split_pointer(path)?;
    match document.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.insert(key, value);
        }
        Some(Value::Array(items)) if key == "-" => items.push(value),
        Some(Value::Array(items)) => {
            let index = array_index(&key, items.len() + 1)?;
            items.insert(index, value);
        }
        _ => return Err(format!("add: the parent of {path:?} does not exist")),
    }
    Ok(())
}

fn pointer_remove(document: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, key) = split_pointer(path)?;
    match document.pointer_mut(parent) {
        Some(Value::Object(map)) => map
            .remove(&key)
            .ok_or_else(|| format!("remove: {path:?} does not exist")),
        Some(Value::Array(items)) => {
            let index = array_index(&key, items.len())?;
            Ok(items.remove(index))
        }
        _ => Err(format!("remove: {path:?} does not exist")),
    }
}

// ---------------------------------------------------------------------------------------------
// Responses

/// A failed request, answered as a `Status`.
#[derive(Debug)]
struct ApiError {
    code: u16,
    reason: &'static str,
    message: String,
    details: Value,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: String) -> Self {
        Self {
            code,
            reason,
            message,
            details: json!({}),
            retry_after: None,
        }
    }

    fn bad_request(message: String) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// What the server answers for a path it does not serve.
    fn not_routed() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
        )
    }

    fn not_found(target: &Target) -> Self {
        let mut err = Self::new(
            404,
            "NotFound",
            format!(
                "{} \"{}\" not found",
                qualified(&target.group, &target.resource),
                target.name()
            ),
        );
        err.details =
            json!({ "name": target.name(), "group": target.group, "kind": target.resource });
        err
    }

    fn already_exists(group: &str, resource: &str, name: &str) -> Self {
        let mut err = Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", qualified(group, resource)),
        );
        err.details = json!({ "name": name, "group": group, "kind": resource });
        err
    }

    fn status(&self) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        })
    }
}

fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        410 => "Expired",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "Unknown",
    }
}

fn check_apply_patch(call: &Call, patch: &Value) -> Result<(), ApiError> {
    if call.field_manager().is_none_or(str::is_empty) {
        return Err(ApiError::bad_request(
            "PATCH with application/apply-patch+yaml requires the fieldManager parameter".into(),
        ));
    }
    for field in ["apiVersion", "kind"] {
        if patch
            .get(field)
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(ApiError::bad_request(format!(
                "{field} must be set in an apply patch"
            )));
        }
    }
    Ok(())
}

fn name_mismatch(candidate: &Value, target: &Target) -> ApiError {
    ApiError::bad_request(format!(
        "the name of the object ({}) does not match the name on the URL ({})",
        meta_str(candidate, "name").unwrap_or_default(),
        target.name()
    ))
}

fn json_response(code: StatusCode, body: &Value) -> Response<ResponseBody> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())).boxed_unsync());
    *response.status_mut() = code;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error_response(err: &ApiError) -> Response<ResponseBody> {
    let code = StatusCode::from_u16(err.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = json_response(code, &err.status());
    if let Some(secs) = err.retry_after {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// A newline-delimited stream of watch events that ends after the watch's timeout (tokio time,
/// so paused-clock tests see it end).
fn watch_response(plan: WatchPlan) -> Response<ResponseBody> {
    let WatchPlan {
        replay,
        live,
        selector,
        timeout,
    } = plan;
    let lines = stream::iter(replay)
        .chain(live)
        .filter_map(move |change| future::ready(watch_line(&change, &selector)))
        .take_until(tokio::time::sleep(timeout));
    // Each line becomes the single data frame of a one-shot body, which names no http-body type.
    let frames = lines.filter_map(|line| async move { Full::new(line).frame().await });
    let mut response = Response::new(StreamBody::new(frames).boxed_unsync());
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The event a watcher with this selector sees for a change: an object entering the selection
/// is ADDED and one leaving it is DELETED, as on a real server.
fn watch_line(change: &Change, selector: &Selector) -> Option<Bytes> {
    let was = change.old.as_ref().is_some_and(|old| selector.matches(old));
    let is = selector.matches(&change.object);
    let kind = match (change.kind, was, is) {
        (ChangeKind::Added, _, true) | (ChangeKind::Modified, false, true) => "ADDED",
        (ChangeKind::Modified, true, true) => "MODIFIED",
        (ChangeKind::Deleted, _, true) | (ChangeKind::Modified, true, false) => "DELETED",
        _ => return None,
    };
    let mut line = json!({ "type": kind, "object": change.object }).to_string();
    line.push('\n');
    Some(Bytes::from(line))
}

// ---------------------------------------------------------------------------------------------
// Small helpers

fn api_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    }
}

/// `secrets` or `credentials.bulkhead.dev`, as the API server names a resource in messages.
fn qualified(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_owned()
    } else {
        format!("{resource}.{group}")
    }
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object.get("metadata")?.get(field)?.as_str()
}

/// The value as an object, replacing anything else with `{}`.
fn object_mut(value: &mut Value) -> &mut Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => {
            *other = Value::Object(Map::new());
            object_mut(other)
        }
    }
}

fn metadata_mut(object: &mut Value) -> &mut Map<String, Value> {
    object_mut(object_mut(object).entry("metadata").or_insert(Value::Null))
}

/// What the API server does to every Secret it stores: `stringData` is merged into `data`
/// (base64) and `type` defaults to Opaque.
fn normalize_secret(secret: &mut Value) {
    let map = object_mut(secret);
    if let Some(Value::Object(plain)) = map.remove("stringData") {
        let data = object_mut(map.entry("data").or_insert(Value::Null));
        for (key, value) in plain {
            let text = value
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| value.to_string());
            data.insert(key, BASE64_STANDARD.encode(text).into());
        }
    }
    map.entry("type").or_insert_with(|| "Opaque".into());
}

/// A minimal managedFields entry: who wrote, and how.
fn record_manager(object: &mut Value, manager: Option<&str>, operation: &str) {
    let Some(manager) = manager else { return };
    let api_version = object.get("apiVersion").cloned().unwrap_or(Value::Null);
    let meta = metadata_mut(object);
    let entries = meta.entry("managedFields").or_insert_with(|| json!([]));
    if !entries.is_array() {
        *entries = json!([]);
    }
    if let Value::Array(entries) = entries
        && !entries
            .iter()
            .any(|e| e["manager"] == manager && e["operation"] == operation)
    {
        entries
            .push(json!({ "manager": manager, "operation": operation, "apiVersion": api_version }));
    }
}

fn parse_query(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(byte) = text
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Field ownership (server-side apply), for Secrets

/// One field of a Secret whose ownership the double tracks: the fields Bulkhead writes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum SecretField {
    Data(String),
    Label(String),
    Annotation(String),
    /// An ownerReference, keyed by its uid as the API server's map-list is.
    Owner(String),
    Type,
}

type FieldSet = BTreeSet<SecretField>;

fn is_secret(group: &str, resource: &str) -> bool {
    group.is_empty() && resource == "secrets"
}

fn secret_fields(object: &Value) -> FieldSet {
    let keys = |value: &Value| -> Vec<String> {
        value
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    };
    let meta = &object["metadata"];
    let mut fields = FieldSet::new();
    fields.extend(keys(&object["data"]).into_iter().map(SecretField::Data));
    fields.extend(keys(&meta["labels"]).into_iter().map(SecretField::Label));
    fields.extend(
        keys(&meta["annotations"])
            .into_iter()
            .map(SecretField::Annotation),
    );
    fields.extend(
        meta["ownerReferences"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o["uid"].as_str())
            .map(|uid| SecretField::Owner(uid.to_owned())),
    );
    if object.get("type").is_some_and(|t| !t.is_null()) {
        fields.insert(SecretField::Type);
    }
    fields
}

fn field_value<'a>(object: &'a Value, field: &SecretField) -> Option<&'a Value> {
    let meta = &object["metadata"];
    match field {
        SecretField::Data(k) => object["data"].get(k),
        SecretField::Label(k) => meta["labels"].get(k),
        SecretField::Annotation(k) => meta["annotations"].get(k),
        SecretField::Owner(uid) => meta["ownerReferences"]
            .as_array()?
            .iter()
            .find(|o| o["uid"].as_str() == Some(uid)),
        SecretField::Type => object.get("type"),
    }
}

fn remove_field(object: &mut Value, field: &SecretField) {
    let remove_key = |map: Option<&mut Value>, key: &str| {
        if let Some(Value::Object(map)) = map {
            map.remove(key);
        }
    };
    match field {
        SecretField::Data(k) => remove_key(object.get_mut("data"), k),
        SecretField::Label(k) => remove_key(object.pointer_mut("/metadata/labels"), k),
        SecretField::Annotation(k) => remove_key(object.pointer_mut("/metadata/annotations"), k),
        SecretField::Owner(uid) => {
            if let Some(Value::Array(owners)) = object.pointer_mut("/metadata/ownerReferences") {
                owners.retain(|o| o["uid"].as_str() != Some(uid));
            }
        }
        SecretField::Type => {
            object_mut(object).remove("type");
        }
    }
}

/// The `fieldsV1` form of a field set, as the API server writes it.
fn fields_v1(fields: &FieldSet) -> Value {
    let mut root = json!({});
    for field in fields {
        let (path, leaf): (&[&str], String) = match field {
            SecretField::Data(k) => (&["f:data"], format!("f:{k}")),
            SecretField::Label(k) => (&["f:metadata", "f:labels"], format!("f:{k}")),
            SecretField::Annotation(k) => (&["f:metadata", "f:annotations"], format!("f:{k}")),
            SecretField::Owner(uid) => (
                &["f:metadata", "f:ownerReferences"],
                format!("k:{}", json!({ "uid": uid })),
            ),
            SecretField::Type => (&[], "f:type".to_owned()),
        };
        let mut slot = &mut root;
        for step in path {
            slot = object_mut(slot).entry(*step).or_insert_with(|| json!({}));
        }
        object_mut(slot).insert(leaf, json!({}));
    }
    root
}

/// The field set a `fieldsV1` value names (only the tracked fields).
fn parse_fields_v1(value: &Value) -> FieldSet {
    let keys = |v: &Value, prefix: &str| -> Vec<String> {
        v.as_object()
            .map(|m| {
                m.keys()
                    .filter_map(|k| k.strip_prefix(prefix).map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let meta = &value["f:metadata"];
    let mut fields = FieldSet::new();
    fields.extend(
        keys(&value["f:data"], "f:")
            .into_iter()
            .map(SecretField::Data),
    );
    fields.extend(
        keys(&meta["f:labels"], "f:")
            .into_iter()
            .map(SecretField::Label),
    );
    fields.extend(
        keys(&meta["f:annotations"], "f:")
            .into_iter()
            .map(SecretField::Annotation),
    );
    fields.extend(
        keys(&meta["f:ownerReferences"], "k:")
            .into_iter()
            .filter_map(|k| {
                let key: Value = serde_json::from_str(&k).ok()?;
                key["uid"]
                    .as_str()
                    .map(|u| SecretField::Owner(u.to_owned()))
            }),
    );
    if value.get("f:type").is_some() {
        fields.insert(SecretField::Type);
    }
    fields
}

/// A managedFields entry: manager, operation, and the fields it owns.
struct Owner {
    manager: String,
    operation: String,
    fields: FieldSet,
}

fn owners_of(object: &Value) -> Vec<Owner> {
    object["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            Some(Owner {
                manager: e["manager"].as_str()?.to_owned(),
                operation: e["operation"].as_str()?.to_owned(),
                fields: parse_fields_v1(&e["fieldsV1"]),
            })
        })
        .collect()
}

/// What the API server does to the ownership of a Secret's fields on a write, and what
/// server-side apply removes: a field an applier stops sending is removed unless another
/// manager (a different manager, or the same one with another operation) still owns it.
/// `applied` is the apply patch (`None`: an update, create or patch, which owns what it
/// changed). A forced apply takes conflicting fields; an unforced one fails on them.
fn track_secret_fields(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    operation: &str,
    applied: Option<&Value>,
    force: bool,
) -> Result<(), ApiError> {
    let empty = json!({});
    let old_object = old.unwrap_or(&empty);
    let name = meta_str(new, "name").unwrap_or_default().to_owned();
    if let (Some(was), Some(now)) = (
        old.and_then(|o| o.get("type")),
        new.get("type").filter(|t| !t.is_null()),
    ) && was != now
    {
        return Err(ApiError::new(
            422,
            "Invalid",
            format!("Secret \"{name}\" is invalid: type: Invalid value: {now}: field is immutable"),
        ));
    }
    let mut owners = owners_of(old_object);
    let me = |o: &Owner| o.manager == manager && o.operation == operation;
    if !owners.iter().any(me) {
        owners.push(Owner {
            manager: manager.to_owned(),
            operation: operation.to_owned(),
            fields: FieldSet::new(),
        });
    }
    match applied {
        Some(patch) => {
            // ownerReferences is a list keyed by uid: the apply merges into it.
            let mut refs: Vec<Value> = old_object["metadata"]["ownerReferences"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for r in patch["metadata"]["ownerReferences"]
                .as_array()
                .into_iter()
                .flatten()
            {
                match refs.iter_mut().find(|o| o["uid"] == r["uid"]) {
                    Some(slot) => *slot = r.clone(),
                    None => refs.push(r.clone()),
                }
            }
            if refs.is_empty() {
                metadata_mut(new).remove("ownerReferences");
            } else {
                metadata_mut(new).insert("ownerReferences".into(), refs.into());
            }
            let sent = secret_fields(patch);
            let mut conflicts = Vec::new();
            for field in &sent {
                let changed = field_value(old_object, field)
                    .is_some_and(|v| Some(v) != field_value(patch, field));
                if !changed {
                    continue;
                }
                for other in owners.iter_mut().filter(|o| !me(o)) {
                    if other.fields.contains(field) {
                        if force {
                            other.fields.remove(field);
                        } else {
                            conflicts
                                .push(format!("conflict with \"{}\": {field:?}", other.manager));
                        }
                    }
                }
            }
            if !conflicts.is_empty() {
                return Err(ApiError::new(
                    409,
                    "Conflict",
                    format!(
                        "Apply failed with {} conflicts: {}",
                        conflicts.len(),
                        conflicts.join(", ")
                    ),
                ));
            }
            let previous: FieldSet = owners
                .iter()
                .find(|o| me(o))
                .map(|o| o.fields.clone())
                .unwrap_or_default();
            for field in previous.difference(&sent) {
                let kept = owners.iter().any(|o| !me(o) && o.fields.contains(field));
                if !kept {
                    remove_field(new, field);
                }
            }
            if let Some(mine) = owners.iter_mut().find(|o| me(o)) {
                mine.fields = sent;
            }
        }
        None => {
            let before = secret_fields(old_object);
            let after = secret_fields(new);
            let changed: FieldSet = after
                .iter()
                .filter(|f| field_value(old_object, f) != field_value(new, f))
                .cloned()
                .collect();
            let removed: FieldSet = before.difference(&after).cloned().collect();
            for owner in &mut owners {
                owner.fields.retain(|f| !removed.contains(f));
                if me(owner) {
                    owner.fields.extend(changed.iter().cloned());
                } else {
                    owner.fields.retain(|f| !changed.contains(f));
                }
            }
        }
    }
    let api_version = new.get("apiVersion").cloned().unwrap_or(Value::Null);
    let entries: Vec<Value> = owners
        .iter()
        .filter(|o| !o.fields.is_empty())
        .map(|o| {
            json!({
                "manager": o.manager,
                "operation": o.operation,
                "apiVersion": api_version,
                "fieldsType": "FieldsV1",
                "fieldsV1": fields_v1(&o.fields),
            })
        })
        .collect();
    metadata_mut(new).insert("managedFields".into(), entries.into());
    Ok(())
}

/// The API server's label-value validation (63 characters, alphanumeric at both ends).
fn validate_labels(object: &Value) -> Result<(), ApiError> {
    let labels = object["metadata"]["labels"].as_object();
    for (key, value) in labels.into_iter().flatten() {
        let value = value.as_str().unwrap_or_default();
        let alnum = |c: Option<char>| c.is_none_or(|c| c.is_ascii_alphanumeric());
        let problem = if value.len() > 63 {
            Some("must be no more than 63 characters")
        } else if !(alnum(value.chars().next())
            && alnum(value.chars().last())
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            Some(
                "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
            )
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(ApiError::new(
                422,
                "Invalid",
                format!("metadata.labels: Invalid value: \"{value}\" (label {key}): {problem}"),
            ));
        }
    }
    Ok(())
}
