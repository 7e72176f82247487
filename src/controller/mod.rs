//! The controllers and what they share: the client, the Credential cache, metrics, Events and
//! per-object backoff.
//!
//! Controllers run only while this instance holds the Lease (see `crate::operator`). One
//! Credential watch feeds both controllers through a shared reflector, so the namespace is
//! watched once per kind.

pub mod backoff;
pub mod credential;
pub mod restart;
pub mod tenant;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, future};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, controller::Action, watcher};
use kube::{Client, Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::api::conditions::{ConditionStatus, Transition};
use crate::api::{Credential, Tenant};
use crate::resources;
use crate::telemetry::Metrics;
use crate::{Error, Result};
pub use backoff::Backoff;

/// Reconciles in flight per controller.
pub const RECONCILE_CONCURRENCY: u16 = 8;

/// The field manager of every server-side apply Bulkhead makes.
pub const FIELD_MANAGER: &str = "bulkhead";

/// The `reportingController` of Bulkhead's Events.
pub const EVENT_CONTROLLER: &str = "bulkhead.dev/operator";

/// Everything a reconcile needs.
pub struct Context {
    pub client: Client,
    pub namespace: String,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
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
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            drift_check: Duration::from_secs(10 * 60),
            watch_managed_secrets: false,
            identity_secret: "bulkhead-identity".to_owned(),
            control_plane: crate::controlplane::client::ClientSettings::default(),
            permitted_restarts: None,
        }
    }
}

impl Context {
    pub fn new(
        client: Client,
        namespace: String,
        metrics: Arc<Metrics>,
        instance: String,
        stores: Stores,
        settings: Settings,
    ) -> Self {
        let reporter = Reporter {
            controller: EVENT_CONTROLLER.to_owned(),
            instance: Some(instance),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
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
        }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Publish an Event about an object; failures are logged, never fatal (Events are advisory).
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
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(err) = self.recorder.publish(&event, &object.object_ref(&())).await {
            tracing::warn!(error = %err, reason, "cannot publish Event");
        }
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
    tracing::warn!(
        object = %key,
        error = %error,
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
    let credentials_api: Api<Credential> = Api::namespaced(client.clone(), &namespace);
    let tenants_api: Api<Tenant> = Api::namespaced(client.clone(), &namespace);

    let (reader, writer) = reflector::store_shared::<Credential>(256);
    let subscribe = |w: &reflector::store::Writer<Credential>| {
        w.subscribe().ok_or_else(|| {
            Error::Config("shared Credential store has no subscriber handle".to_owned())
        })
    };
    let credential_changes = subscribe(&writer)?;
    let credentials_to_reconcile = subscribe(&writer)?;
    // Drives the one Credential watch of this instance; subscribers see every applied object.
    let credential_watch = watcher(credentials_api, watcher::Config::default().any_semantic())
        .default_backoff()
        // managedFields are most of an object's size and nothing here reads them.
        .modify(|credential| credential.managed_fields_mut().clear())
        .reflect_shared(writer)
        .for_each(|event| {
            if let Err(err) = event {
                tracing::warn!(error = %err, "Credential watch error; retrying with backoff");
            }
            future::ready(())
        });

    let watch_secrets = settings.watch_managed_secrets;
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
    let tenant_base = Controller::new(tenants_api, watcher::Config::default().any_semantic());
    let ctx = Arc::new(Context::new(
        client.clone(),
        namespace.clone(),
        metrics,
        instance,
        Stores {
            credentials: reader.clone(),
            tenants: tenant_base.store(),
            identity: identity_reader,
        },
        settings,
    ));

    let mut credential_controller = Controller::for_shared_stream(credentials_to_reconcile, reader)
        // A cold start with many Credentials must not run them all at once: memory (and the
        // API server's load) stays bounded by this many reconciles in flight.
        .with_config(
            kube::runtime::controller::Config::default().concurrency(RECONCILE_CONCURRENCY),
        );
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
    let link_changes = futures::stream::unfold(ctx.link.subscribe(), |mut rx| async move {
        rx.changed().await.ok().map(|()| ((), rx))
    });
    let credential_controller = credential_controller
        .reconcile_all_on(link_changes)
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(credential::reconcile, error_policy, ctx.clone())
        .for_each(|_| future::ready(()));

    let tenant_ns = namespace.clone();
    let tenant_controller = tenant_base
        .reconcile_all_on(credential_changes.map(|_| ()))
        // A new or rotated identity is used at once: the Tenant reconcile swaps the client.
        .watches_stream(identity_watch, move |_secret| {
            Some(ObjectRef::new(crate::api::TENANT_NAME).within(&tenant_ns))
        })
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(tenant::reconcile, error_policy, ctx.clone())
        .for_each(|_| future::ready(()));

    tokio::select! {
        () = tenant_controller => {}
        () = credential_controller => {}
        () = credential_watch => {}
        () = shutdown.cancelled() => {}
    }
    Ok(())
}
