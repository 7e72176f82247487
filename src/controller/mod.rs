//! The controllers and what they share: the client, the Credential cache, metrics, Events and
//! per-object backoff.
//!
//! Controllers run only while this instance holds the Lease (see `crate::operator`). One
//! Credential watch feeds both controllers through a shared reflector, so the namespace is
//! watched once per kind.

pub mod credential;
pub mod events;
pub mod restart;
pub mod tenant;

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt, TryStreamExt, future};
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use kube::api::Api;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, PredicateConfig, WatchStreamExt, controller::Action, watcher};
use kube::{Client, Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::api::conditions::{ConditionStatus, Transition};
use crate::api::{Credential, Guarded, Tenant, Undecodable};
use crate::backoff::Backoff;
use crate::resources;
use crate::telemetry::Metrics;
use crate::{Error, Result};

/// Credential reconciles in flight, unless `--max-concurrent-reconciles` says otherwise.
/// Chosen by measurement (`hack/bench.sh concurrency`; the table is in the commit that set it):
/// a burst is bound by the API server beyond this, and a cold start with 1000 Credentials
/// peaks at about 25 MiB, far inside the chart's 64 Mi limit.
pub const RECONCILE_CONCURRENCY: u16 = 64;

/// The field manager of every server-side apply Bulkhead makes.
pub const FIELD_MANAGER: &str = "bulkhead";

/// The `reportingController` of Bulkhead's Events.
pub const EVENT_CONTROLLER: &str = "bulkhead.dev/operator";

/// Everything a reconcile needs.
pub struct Context {
    pub client: Client,
    pub namespace: String,
    pub metrics: Arc<Metrics>,
    /// Events to publish, off the reconcile's path (see [`events`]).
    pub events: events::EventQueue,
    pub credentials: Store<Credential>,
    /// The Tenant controller's cache (issued Credentials need a linked Tenant).
    pub tenants: Store<Tenant>,
    pub backoff: Backoff,
    pub settings: Settings,
    /// The control-plane client in use (built by the Tenant controller).
    pub link: Arc<crate::controlplane::Link>,
    /// The identity Secret, from a watch on exactly that name.
    pub identity: Store<Secret>,
    /// Coalesces the Tenant's count-only status writes.
    pub tenant_writes: tenant::WriteGate,
}

/// The caches a reconcile reads.
pub struct Stores {
    pub credentials: Store<Credential>,
    pub tenants: Store<Tenant>,
    /// The identity Secret, from a watch on exactly that name.
    pub identity: Store<Secret>,
}

/// Controller settings from the command line.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How often a managed Secret is re-read to repair drift (without a Secret watch).
    pub drift_check: Duration,
    /// Watch managed Secrets (label-selected) to repair drift at once.
    pub watch_managed_secrets: bool,
    /// The mTLS identity Secret (the only one watched by name).
    pub identity_secret: String,
    /// Timeouts and retry bounds of control-plane calls.
    pub control_plane: crate::controlplane::client::ClientSettings,
    /// The restart targets the Role grants (`--restart-target`): others are reported as not
    /// permitted without a request that can only be refused. `None`: unknown, ask the API.
    pub permitted_restarts: Option<Vec<(crate::api::credential::RestartKind, String)>>,
    /// Credential reconciles in flight at once (`--max-concurrent-reconciles`).
    pub reconcile_concurrency: u16,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            drift_check: Duration::from_secs(10 * 60),
            watch_managed_secrets: false,
            identity_secret: "bulkhead-identity".to_owned(),
            control_plane: crate::controlplane::client::ClientSettings::default(),
            permitted_restarts: None,
            reconcile_concurrency: RECONCILE_CONCURRENCY,
        }
    }
}

impl Context {
    /// The context, and the Event publisher to run beside the controllers.
    pub fn new(
        client: Client,
        namespace: String,
        metrics: Arc<Metrics>,
        instance: String,
        stores: Stores,
        settings: Settings,
    ) -> (Self, events::EventPublisher) {
        let reporter = Reporter {
            controller: EVENT_CONTROLLER.to_owned(),
            instance: Some(instance),
        };
        let (events, publisher) = events::queue(
            Recorder::new(client.clone(), reporter),
            events::EVENT_QUEUE_CAPACITY,
            metrics.events_dropped.clone(),
        );
        let ctx = Self {
            events,
            client,
            namespace,
            credentials: stores.credentials,
            tenants: stores.tenants,
            backoff: Backoff::default(),
            link: Arc::new(crate::controlplane::Link::new(
                settings.control_plane.clone(),
                Some(metrics.clone()),
            )),
            metrics,
            identity: stores.identity,
            tenant_writes: tenant::WriteGate::default(),
            settings,
        };
        (ctx, publisher)
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Publish an Event about an object: queued for the background publisher, never awaited
    /// here; failures and drops are logged and counted, never fatal (Events are advisory).
    pub async fn publish<K>(
        &self,
        object: &K,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) where
        K: Resource<DynamicType = ()>,
    {
        self.publish_to(&object.object_ref(&()), type_, reason, action, note)
            .await;
    }

    /// Publish an Event about the object `regarding` names.
    pub async fn publish_to(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            // events.k8s.io refuses a note over 1 kB.
            note: Some(crate::api::conditions::bounded(note, 1024)),
            action: action.to_owned(),
            secondary: None,
        };
        self.events.send(event, regarding.clone());
    }

    /// One Event per condition transition. `Ready` going False and problems going True are
    /// Warnings; everything else is Normal.
    pub async fn publish_transitions<K>(
        &self,
        object: &K,
        transitions: &[Transition],
        problems: &[&str],
    ) where
        K: Resource<DynamicType = ()>,
    {
        for t in transitions {
            let warning = (t.type_ == "Ready" && t.to == ConditionStatus::False)
                || (problems.contains(&t.type_) && t.to == ConditionStatus::True)
                || t.reason == tenant::EXPIRING_SOON;
            let type_ = if warning {
                EventType::Warning
            } else {
                EventType::Normal
            };
            let note = format!("{} is {}: {}", t.type_, t.to.as_str(), t.message);
            self.publish(object, type_, &t.reason, "Reconcile", note)
                .await;
        }
    }
}

/// Wrap a reconcile with metrics, span fields and the per-object backoff bookkeeping.
pub async fn instrumented<K, F, Fut>(
    controller: &'static str,
    object: Arc<K>,
    ctx: Arc<Context>,
    reconcile: F,
) -> Result<Action>
where
    K: Resource<DynamicType = ()>,
    F: FnOnce(Arc<K>, Arc<Context>) -> Fut,
    Fut: std::future::Future<Output = Result<Action>>,
{
    let key = ObjectRef::from_obj(object.as_ref()).erase();
    let started = Instant::now();
    let outcome = reconcile(object, ctx.clone()).await;
    ctx.metrics.observe_reconcile(
        controller,
        started.elapsed(),
        outcome.as_ref().err().map(Error::metric_label),
    );
    if outcome.is_ok() {
        ctx.backoff.reset(&key);
    }
    outcome
}

/// Error policy shared by the controllers: exponential backoff per object (1 s doubling to
/// 5 min, reset on success). kube-runtime does not back off per object by itself.
pub fn error_policy<K>(object: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action
where
    K: Resource<DynamicType = ()>,
{
    let key = ObjectRef::from_obj(object.as_ref()).erase();
    let backoff = ctx.backoff.next_delay(&key);
    // A 429's Retry-After wins over our own backoff when it asks for longer.
    let delay = error
        .retry_after()
        .map_or(backoff, |wait| wait.max(backoff));
    let detail = match error {
        Error::ControlPlane(e) => e.detail(),
        _ => None,
    };
    tracing::warn!(
        object = %key,
        error = %error,
        detail,
        retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
        "reconcile failed"
    );
    Action::requeue(delay)
}

/// Run every controller until `shutdown` is cancelled.
pub async fn run(
    client: Client,
    namespace: String,
    metrics: Arc<Metrics>,
    instance: String,
    settings: Settings,
    shutdown: CancellationToken,
) -> Result<()> {
    let (undecodable_tx, undecodable_rx) = tokio::sync::mpsc::unbounded_channel();

    let (reader, writer) = reflector::store_shared::<Credential>(256);
    let credential_changes = writer
        .subscribe()
        .ok_or_else(|| Error::config("shared Credential store has no subscriber handle"))?;
    // The store's subscribers see applied objects only: a deletion is told here, so the
    // Tenant recounts at once and the deleted Credential's metric series go.
    let (deleted_tx, deleted_rx) = tokio::sync::watch::channel(());
    let forget = metrics.clone();
    // The one Credential watch of this instance: it fills the shared cache (whose subscriber
    // drives the Tenant's counts) and triggers the Credential controller.
    let credential_sift = Sift::new(reader.clone(), metrics.clone(), undecodable_tx.clone());
    let credential_triggers =
        guarded_watch::<Credential>(Api::namespaced(client.clone(), &namespace), credential_sift)
            .reflect_shared(writer)
            .inspect_ok(move |event| {
                if let watcher::Event::Delete(credential) = event {
                    forget.forget_credential(&credential.name_any());
                    deleted_tx.send_replace(());
                }
            })
            .touched_objects()
            .predicate_filter(reconcile_trigger, PredicateConfig::default())
            .inspect_err(
                |err| tracing::warn!(error = %err, "Credential watch error; retrying with backoff"),
            );

    let (tenant_reader, tenant_writer) = reflector::store::<Tenant>();
    let tenant_sift = Sift::new(tenant_reader.clone(), metrics.clone(), undecodable_tx);
    let tenant_triggers =
        guarded_watch::<Tenant>(Api::namespaced(client.clone(), &namespace), tenant_sift)
            .reflect(tenant_writer)
            .touched_objects()
            .predicate_filter(reconcile_trigger, PredicateConfig::default())
            .inspect_err(
                |err| tracing::warn!(error = %err, "Tenant watch error; retrying with backoff"),
            );

    let watch_secrets = settings.watch_managed_secrets;
    let concurrency = settings.reconcile_concurrency.max(1);
    // The identity Secret, watched by name: the Role grants list/watch on this one only.
    let (identity_reader, identity_writer) = reflector::store::<Secret>();
    let identity_watch = watcher(
        Api::<Secret>::namespaced(client.clone(), &namespace),
        watcher::Config::default().fields(&format!("metadata.name={}", settings.identity_secret)),
    )
    .default_backoff()
    .reflect(identity_writer)
    // Deletions count too (touched_objects drops them): a removed identity unlinks at once.
    .filter_map(|event| {
        future::ready(match event {
            Ok(
                watcher::Event::Apply(s) | watcher::Event::InitApply(s) | watcher::Event::Delete(s),
            ) => Some(Ok(s)),
            Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
            Err(err) => Some(Err(err)),
        })
    });
    let tenant_base = Controller::for_stream(tenant_triggers, tenant_reader.clone());
    let (ctx, event_publisher) = Context::new(
        client.clone(),
        namespace.clone(),
        metrics,
        instance,
        Stores {
            credentials: reader.clone(),
            tenants: tenant_reader,
            identity: identity_reader,
        },
        settings,
    );
    let ctx = Arc::new(ctx);

    let mut credential_controller = Controller::for_stream(credential_triggers, reader)
        // A cold start with many Credentials must not run them all at once: memory (and the
        // API server's load) stays bounded by this many reconciles in flight.
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency));
    if watch_secrets {
        // Opt-in: needs list/watch on Secrets (rbac.watchManagedSecrets).
        let secrets: Api<Secret> = Api::namespaced(client, &namespace);
        let selector = format!("{}={}", resources::MANAGED_BY_LABEL, resources::MANAGED_BY);
        let ns = namespace.clone();
        credential_controller = credential_controller.watches(
            secrets,
            watcher::Config::default().labels(&selector),
            move |secret| {
                secret
                    .labels()
                    .get(resources::CREDENTIAL_LABEL)
                    .map(|name| ObjectRef::new(name).within(&ns))
            },
        );
    }
    // Credentials issued by the control plane wait for the Tenant's link: retry them the
    // moment it comes up (or its identity rotates) instead of at their next requeue.
    let link_changes = changes(ctx.link.subscribe());
    let credential_controller = credential_controller
        .reconcile_all_on(link_changes)
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(credential::reconcile, error_policy, ctx.clone())
        .for_each(|_| future::ready(()));

    let tenant_ns = namespace.clone();
    let tenant_controller = tenant_base
        .reconcile_all_on(futures::stream::select(
            credential_changes.map(|_| ()),
            changes(deleted_rx),
        ))
        // A new or rotated identity is used at once: the Tenant reconcile swaps the client.
        .watches_stream(identity_watch, move |_secret| {
            Some(ObjectRef::new(crate::api::TENANT_NAME).within(&tenant_ns))
        })
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(tenant::reconcile, error_policy, ctx.clone())
        .for_each(|_| future::ready(()));

    let undecodable_reports = report_undecodable(ctx.clone(), undecodable_rx);
    // Ends only when every queue handle is gone, i.e. with the controllers.
    let events = async move {
        event_publisher.run().await;
        future::pending::<()>().await;
    };

    // Both controllers stop on `shutdown` through `graceful_shutdown_on`: no new reconcile
    // starts and the ones in flight finish (the caller bounds that by `--drain-timeout`). So
    // this waits for both, never for the token itself: returning at the token dropped the
    // reconciles in flight halfway (tests/shutdown.rs).
    tokio::select! {
        ((), ()) = future::join(tenant_controller, credential_controller) => {}
        () = events => {}
        () = undecodable_reports => {}
    }
    Ok(())
}

/// One item per change of a watch channel's value, until its sender is gone.
fn changes<T: Send + Sync + 'static>(
    rx: tokio::sync::watch::Receiver<T>,
) -> impl Stream<Item = ()> {
    futures::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok().map(|()| ((), rx))
    })
}

/// What triggers a reconcile from an object's own watch: a change of its spec (generation), its
/// labels or annotations (the rotate annotation among them), or its deletion being requested.
/// Status-only changes, such as a reconcile's own status write, do not: a failing reconcile is
/// retried on its backoff schedule, not at once because it wrote its status.
pub fn reconcile_trigger<K: Resource>(object: &K) -> Option<u64> {
    let meta = object.meta();
    let mut hasher = DefaultHasher::new();
    (
        meta.generation,
        &meta.labels,
        &meta.annotations,
        meta.deletion_timestamp.is_some(),
    )
        .hash(&mut hasher);
    Some(hasher.finish())
}

/// A watch of `K` that decodes each object on its own: the undecodable ones are reported
/// (see [`Sift`]) and left out, every other one flows on.
fn guarded_watch<K>(
    api: Api<Guarded<K>>,
    mut sift: Sift<K>,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .filter_map(move |event| {
            future::ready(match event {
                Ok(event) => sift.event(event).map(Ok),
                Err(err) => Some(Err(err)),
            })
        })
        // managedFields are most of an object's size and nothing here reads them.
        .modify(|object| object.managed_fields_mut().clear())
}

/// Separates the objects this binary can decode from those it cannot. Each undecodable object
/// version gets one log line, one count in `bulkhead_undecodable_objects_total` and one Warning
/// Event; a decoded version that turns undecodable leaves the cache, so nothing acts on its
/// outdated spec.
struct Sift<K: Resource<DynamicType = ()> + Clone + 'static> {
    cache: Store<K>,
    metrics: Arc<Metrics>,
    events: tokio::sync::mpsc::UnboundedSender<(ObjectReference, String)>,
    /// uid -> resourceVersion already reported.
    reported: HashMap<String, String>,
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> Sift<K> {
    fn new(
        cache: Store<K>,
        metrics: Arc<Metrics>,
        events: tokio::sync::mpsc::UnboundedSender<(ObjectReference, String)>,
    ) -> Self {
        Self {
            cache,
            metrics,
            events,
            reported: HashMap::new(),
        }
    }

    fn event(&mut self, event: watcher::Event<Guarded<K>>) -> Option<watcher::Event<K>> {
        use watcher::Event as E;
        match event {
            E::Init => Some(E::Init),
            E::InitDone => Some(E::InitDone),
            // Left out of a re-list, it leaves the cache when the re-list completes.
            E::InitApply(Guarded(object)) => object
                .map_err(|bad| self.report(&bad))
                .ok()
                .map(E::InitApply),
            E::Apply(Guarded(Ok(object))) => Some(E::Apply(object)),
            E::Apply(Guarded(Err(bad))) => {
                self.report(&bad);
                self.cached(&bad).map(E::Delete)
            }
            E::Delete(Guarded(Ok(object))) => Some(E::Delete(object)),
            E::Delete(Guarded(Err(bad))) => {
                if let Some(uid) = &bad.metadata.uid {
                    self.reported.remove(uid);
                }
                self.cached(&bad).map(E::Delete)
            }
        }
    }

    /// The cached (decodable) version of an object that is now undecodable.
    fn cached(&self, bad: &Undecodable) -> Option<K> {
        let name = bad.metadata.name.as_deref()?;
        let mut key = ObjectRef::<K>::new(name);
        if let Some(ns) = &bad.metadata.namespace {
            key = key.within(ns);
        }
        self.cache.get(&key).map(|object| object.as_ref().clone())
    }

    fn report(&mut self, bad: &Undecodable) {
        let version = bad.metadata.resource_version.clone().unwrap_or_default();
        let uid = bad.metadata.uid.clone().unwrap_or_default();
        if self.reported.get(&uid) == Some(&version) {
            return;
        }
        self.reported.insert(uid, version);
        let kind = K::kind(&());
        tracing::warn!(
            kind = %kind,
            name = bad.metadata.name.as_deref().unwrap_or("?"),
            field = %bad.field,
            error = %bad.error,
            "cannot decode this object (CRD bundle newer than the binary?); skipping it, every other object is reconciled"
        );
        self.metrics
            .undecodable
            .get_or_create(&crate::telemetry::KindLabels {
                kind: kind.to_string(),
            })
            .inc();
        let regarding = Guarded::<K>(Err(bad.clone())).object_ref(&());
        // The receiver lives as long as the controllers; a closed one means shutdown.
        let _ = self.events.send((regarding, bad.explain(&kind)));
    }
}

/// Publish the Warning Event of each undecodable object (Events are written by the leader,
/// which is the only one running controllers).
async fn report_undecodable(
    ctx: Arc<Context>,
    mut reports: tokio::sync::mpsc::UnboundedReceiver<(ObjectReference, String)>,
) {
    while let Some((regarding, note)) = reports.recv().await {
        ctx.publish_to(&regarding, EventType::Warning, UNDECODABLE, "Decode", note)
            .await;
    }
    // Every sender is gone only when both watches are: park, the controllers end the run.
    future::pending::<()>().await;
}

/// The reason of the Event about an object this binary cannot decode.
pub const UNDECODABLE: &str = "Undecodable";
