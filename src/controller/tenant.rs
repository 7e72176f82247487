//! Tenant controller: keeps the tenancy record's status true and, with `spec.controlPlane`,
//! the mTLS link: identity from its Secret, settings pushed with If-Match, heartbeats.
//!
//! observe (the Tenant, the Credential cache, the identity Secret from its name-pinned watch)
//! -> validate the identity (pure) -> talk to the control plane (only when something is due)
//! -> build the desired status (pure) -> report (one server-side apply of status, only when it
//! changed, so a steady state costs zero Kubernetes writes; an Event per condition transition).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{Context, FIELD_MANAGER, instrumented};
use crate::Result;
use crate::api::conditions::{self, ConditionSet, ConditionStatus, DesiredCondition, Transition};
use crate::api::tenant::{
    ControlPlaneSpec, CredentialCounts, IdentityStatus, TenantStatus, condition,
};
use crate::api::{Credential, TENANT_NAME, Tenant};
use crate::controlplane::client::ControlPlaneError;
use crate::controlplane::identity::{self, IdentitySummary};
use crate::error::Doing as _;

/// How long a reconcile waits for the identity watch's first list.
const IDENTITY_LIST_WAIT: Duration = Duration::from_secs(10);

/// How long a reconcile waits for the Credential watch's first list before it counts.
const CREDENTIAL_LIST_WAIT: Duration = Duration::from_secs(1);

/// At most one write of changed Credential counts per this interval.
pub const COUNTS_INTERVAL: Duration = Duration::from_secs(1);

/// When the Tenant's status was last written, to coalesce count-only changes.
#[derive(Debug, Default)]
pub struct WriteGate {
    last: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl WriteGate {
    /// How long a count-only write must wait to keep within one per `interval`; `None`: now.
    pub fn wait_before_counts(&self, interval: Duration) -> Option<Duration> {
        let last = *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let next = last? + interval;
        let now = tokio::time::Instant::now();
        (now < next).then(|| next - now)
    }

    /// A status write was sent.
    pub fn wrote(&self) {
        *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(tokio::time::Instant::now());
    }
}

/// Whether the desired status differs from the current one only by the Credential counts
/// (and the messages that quote them): the same status computed with the recorded counts is
/// what the Tenant already has.
fn only_counts_differ(tenant: &Tenant, link: Option<&LinkState>, now: Timestamp) -> bool {
    let Some(current) = tenant.status.as_ref() else {
        return false;
    };
    let Some(recorded) = current.credentials else {
        return false;
    };
    desired_status(tenant, recorded, link, now).0 == *current
}

/// Reason of an identity that is valid but close to expiry.
pub const EXPIRING_SOON: &str = "ExpiringSoon";

/// Count Credentials and those that are Ready.
pub fn credential_counts<'a>(
    credentials: impl IntoIterator<Item = &'a Credential>,
) -> CredentialCounts {
    let mut counts = CredentialCounts::default();
    for c in credentials {
        counts.total = counts.total.saturating_add(1);
        let ready = c
            .status
            .as_ref()
            .is_some_and(|s| s.conditions.is_true(condition::READY));
        if ready {
            counts.ready = counts.ready.saturating_add(1);
        }
    }
    counts
}

/// What this reconcile found out about the control-plane link.
#[derive(Clone, Debug, PartialEq)]
pub enum LinkState {
    /// The identity cannot be used (missing, malformed, expired, ...).
    IdentityInvalid {
        reason: &'static str,
        message: String,
        /// What the certificate says, when it could be parsed at all.
        summary: Option<IdentitySummary>,
    },
    /// A valid identity, but no endpoint to call.
    NoEndpoint { identity: IdentitySummary },
    /// The control plane could not be reached or refused us.
    Disconnected {
        identity: IdentitySummary,
        endpoint: String,
        reason: &'static str,
        message: String,
    },
    /// Connected, but the settings were rejected.
    SyncFailed {
        identity: IdentitySummary,
        endpoint: String,
        reason: &'static str,
        message: String,
    },
    /// Connected and the settings are in sync.
    Synced {
        identity: IdentitySummary,
        endpoint: String,
        revision: String,
        hash: String,
        /// Set when this reconcile pushed the settings.
        pushed_at: Option<Timestamp>,
    },
}

impl LinkState {
    fn identity(&self) -> Option<&IdentitySummary> {
        match self {
            Self::IdentityInvalid { summary, .. } => summary.as_ref(),
            Self::NoEndpoint { identity }
            | Self::Disconnected { identity, .. }
            | Self::SyncFailed { identity, .. }
            | Self::Synced { identity, .. } => Some(identity),
        }
    }

    fn endpoint(&self) -> Option<&str> {
        match self {
            Self::Disconnected { endpoint, .. }
            | Self::SyncFailed { endpoint, .. }
            | Self::Synced { endpoint, .. } => Some(endpoint),
            _ => None,
        }
    }
}

/// The SHA-256 of what was pushed where: endpoint, tenant and the settings in canonical form
/// (object keys sorted). Moving to another control plane or tenant changes it, so the settings
/// are pushed there even if its revision numbers happen to match.
pub fn settings_hash(endpoint: &str, tenant_id: &str, settings: &Value) -> String {
    // serde_json's map is ordered by key, so equal objects serialise identically.
    let mut hasher = Sha256::new();
    for part in [endpoint, tenant_id, &settings.to_string()] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    identity::hex(&hasher.finalize())
}

/// Whether a valid identity is close enough to expiry to warn: the last sixth of its life.
pub fn expiring_soon(identity: &IdentitySummary, now: Timestamp) -> bool {
    let lifetime = identity.not_after.as_second() - identity.not_before.as_second();
    let left = identity.not_after.as_second() - now.as_second();
    left < lifetime / 6
}

fn identity_condition(identity: &IdentitySummary, now: Timestamp) -> DesiredCondition {
    let what = format!(
        "certificate {} for tenant {} (fingerprint {}) is valid until {}",
        identity.subject, identity.tenant_id, identity.fingerprint, identity.not_after
    );
    if expiring_soon(identity, now) {
        DesiredCondition::new(
            condition::IDENTITY_VALID,
            ConditionStatus::True,
            EXPIRING_SOON,
            format!("{what}; renew it before then"),
        )
    } else {
        DesiredCondition::new(
            condition::IDENTITY_VALID,
            ConditionStatus::True,
            "Valid",
            what,
        )
    }
}

/// The conditions a Tenant should have, from its spec, its Credentials and the link.
pub fn desired_conditions(
    tenant: &Tenant,
    counts: CredentialCounts,
    link: Option<&LinkState>,
    now: Timestamp,
) -> Vec<DesiredCondition> {
    if tenant.name_any() != TENANT_NAME {
        return vec![DesiredCondition::new(
            condition::READY,
            ConditionStatus::False,
            "NotSingleton",
            format!(
                "a namespace has one Tenant named '{TENANT_NAME}'; this one is named '{}' and is ignored: rename it to '{TENANT_NAME}'",
                tenant.name_any()
            ),
        )];
    }
    let credentials = format!("{} of {} credentials ready", counts.ready, counts.total);
    let Some(link) = link else {
        return vec![DesiredCondition::new(
            condition::READY,
            ConditionStatus::True,
            "LocalOnly",
            format!("local-only tenant (no spec.controlPlane); {credentials}"),
        )];
    };
    let unknown = |type_: &'static str, reason: &str, message: &str| {
        DesiredCondition::new(type_, ConditionStatus::Unknown, reason, message.to_owned())
    };
    let connected = |endpoint: &str| {
        DesiredCondition::new(
            condition::CONTROL_PLANE_CONNECTED,
            ConditionStatus::True,
            "Connected",
            format!("{endpoint} answers"),
        )
    };
    let not_ready = |reason: &str, message: &str| {
        DesiredCondition::new(
            condition::READY,
            ConditionStatus::False,
            reason,
            format!("{message}; {credentials}"),
        )
    };
    match link {
        LinkState::IdentityInvalid {
            reason, message, ..
        } => vec![
            DesiredCondition::new(
                condition::IDENTITY_VALID,
                ConditionStatus::False,
                *reason,
                message.clone(),
            ),
            unknown(
                condition::CONTROL_PLANE_CONNECTED,
                "NoIdentity",
                "not attempted without a valid identity",
            ),
            unknown(
                condition::SETTINGS_SYNCED,
                "NoIdentity",
                "not attempted without a valid identity",
            ),
            not_ready("IdentityInvalid", message),
        ],
        LinkState::NoEndpoint { identity } => {
            let message = "the certificate has no https:// URI SAN and spec.controlPlane.endpoint is not set; set spec.controlPlane.endpoint";
            vec![
                identity_condition(identity, now),
                DesiredCondition::new(
                    condition::CONTROL_PLANE_CONNECTED,
                    ConditionStatus::False,
                    "NoEndpoint",
                    message,
                ),
                unknown(condition::SETTINGS_SYNCED, "NotConnected", "not connected"),
                not_ready("NoEndpoint", message),
            ]
        }
        LinkState::Disconnected {
            identity,
            endpoint,
            reason,
            message,
        } => {
            let message = format!("{endpoint}: {message}");
            vec![
                identity_condition(identity, now),
                DesiredCondition::new(
                    condition::CONTROL_PLANE_CONNECTED,
                    ConditionStatus::False,
                    *reason,
                    message.clone(),
                ),
                unknown(
                    condition::SETTINGS_SYNCED,
                    "NotConnected",
                    "not connected; the last synced revision stays in status",
                ),
                not_ready("ControlPlaneUnavailable", &message),
            ]
        }
        LinkState::SyncFailed {
            identity,
            endpoint,
            reason,
            message,
        } => vec![
            identity_condition(identity, now),
            connected(endpoint),
            DesiredCondition::new(
                condition::SETTINGS_SYNCED,
                ConditionStatus::False,
                *reason,
                message.clone(),
            ),
            not_ready("SettingsRejected", message),
        ],
        LinkState::Synced {
            identity,
            endpoint,
            revision,
            ..
        } => vec![
            identity_condition(identity, now),
            connected(endpoint),
            DesiredCondition::new(
                condition::SETTINGS_SYNCED,
                ConditionStatus::True,
                "Synced",
                format!("settings accepted as revision {revision}"),
            ),
            DesiredCondition::new(
                condition::READY,
                ConditionStatus::True,
                "Linked",
                format!(
                    "linked to {endpoint} as tenant {}; {credentials}",
                    identity.tenant_id
                ),
            ),
        ],
    }
}

/// Build the desired status from the current one: conditions merged with metav1.Condition
/// semantics, counts and link fields refreshed. Returns the transitions for Events. What the
/// link last achieved (revision, hash, sync time) stays when the control plane is down.
pub fn desired_status(
    tenant: &Tenant,
    counts: CredentialCounts,
    link: Option<&LinkState>,
    now: Timestamp,
) -> (TenantStatus, Vec<Transition>) {
    let current = tenant.status.clone().unwrap_or_default();
    let generation = tenant.metadata.generation;
    let (conditions, transitions) = conditions::merge(
        &current.conditions,
        &desired_conditions(tenant, counts, link, now),
        generation,
        now,
    );
    let mut status = TenantStatus {
        observed_generation: generation,
        conditions,
        credentials: Some(counts),
        ..current
    };
    match link {
        None => {
            status.tenant_id = None;
            status.endpoint = None;
            status.identity = None;
        }
        Some(link) => {
            if let Some(identity) = link.identity() {
                status.tenant_id = Some(identity.tenant_id.clone());
                status.identity = Some(IdentityStatus {
                    subject: identity.subject.clone(),
                    not_after: identity.not_after.to_string(),
                    fingerprint: identity.fingerprint.clone(),
                });
            }
            if let Some(endpoint) = link.endpoint() {
                status.endpoint = Some(endpoint.to_owned());
            }
            if let LinkState::Synced {
                revision,
                hash,
                pushed_at,
                ..
            } = link
            {
                status.settings_revision = Some(revision.clone());
                status.settings_hash = Some(hash.clone());
                if let Some(at) = pushed_at {
                    status.last_sync_time = Some(at.to_string());
                }
            }
        }
    }
    (status, transitions)
}

/// Reconcile one Tenant.
pub async fn reconcile(tenant: Arc<Tenant>, ctx: Arc<Context>) -> Result<Action> {
    let span = tracing::info_span!("reconcile", namespace = %ctx.namespace, kind = "Tenant", name = %tenant.name_any());
    tracing::Instrument::instrument(instrumented("tenant", tenant, ctx, reconcile_inner), span)
        .await
}

async fn reconcile_inner(tenant: Arc<Tenant>, ctx: Arc<Context>) -> Result<Action> {
    // Right after start (or a gain of leadership) the Credential cache may not have listed
    // yet: counting an empty cache would write `{total: 0}` and then the true counts.
    if tokio::time::timeout(CREDENTIAL_LIST_WAIT, ctx.credentials.wait_until_ready())
        .await
        .is_err()
    {
        tracing::warn!("the Credential watch has not listed yet; counting later");
        return Ok(Action::requeue(CREDENTIAL_LIST_WAIT));
    }
    let credentials = ctx.credentials.state();
    let counts = credential_counts(credentials.iter().map(AsRef::as_ref));
    let now = Timestamp::now();
    let (link, failure, action) = match &tenant.spec.control_plane {
        Some(spec) if tenant.name_any() == TENANT_NAME => {
            let interval = crate::api::duration::parse(&spec.sync_interval)
                .unwrap_or(Duration::from_secs(300));
            let (state, failure) = link(&tenant, spec, &ctx, counts, interval, now).await;
            (Some(state), failure, Action::requeue(interval))
        }
        _ => {
            if tenant.name_any() == TENANT_NAME {
                ctx.link.clear();
            }
            // Credential changes trigger a reconcile of every Tenant; nothing else is due.
            (None, None, Action::await_change())
        }
    };
    let (status, transitions) = desired_status(&tenant, counts, link.as_ref(), now);
    // Counts alone change with every Credential: coalesce them to one write per
    // COUNTS_INTERVAL; anything else (a condition, the link) is written at once.
    if tenant.status.as_ref() != Some(&status)
        && only_counts_differ(&tenant, link.as_ref(), now)
        && let Some(wait) = ctx.tenant_writes.wait_before_counts(COUNTS_INTERVAL)
    {
        tracing::debug!(
            ?counts,
            "Credential counts changed; written within a second"
        );
        return match failure {
            Some(err) => Err(err.into()),
            None => Ok(Action::requeue(wait)),
        };
    }
    if tenant.status.as_ref() != Some(&status) {
        ctx.tenant_writes.wrote();
        let patch = json!({
            "apiVersion": "bulkhead.dev/v1alpha1",
            "kind": "Tenant",
            "status": status,
        });
        ctx.api::<Tenant>()
            .patch_status(
                &tenant.name_any(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .doing_as(
                format!(
                    "patch tenants/{}/status in {}",
                    tenant.name_any(),
                    ctx.namespace
                ),
                "bulkhead.dev tenants/status: patch",
                "the chart's Role (helm upgrade the release; see `bulkhead rbac`)",
            )?;
        tracing::debug!(?counts, "Tenant status updated");
    }
    ctx.publish_transitions(tenant.as_ref(), &transitions, &[])
        .await;
    // IdentityValid stays True when it becomes ExpiringSoon, so merge sees no transition.
    let reason_of = |s: Option<&TenantStatus>| {
        s.and_then(|s| s.conditions.find(condition::IDENTITY_VALID))
            .map(|c| c.reason.clone())
    };
    let now_expiring = reason_of(Some(&status)).as_deref() == Some(EXPIRING_SOON);
    let was_expiring = reason_of(tenant.status.as_ref()).as_deref() == Some(EXPIRING_SOON);
    if now_expiring && !was_expiring && !transitions.iter().any(|t| t.reason == EXPIRING_SOON) {
        let message = status
            .conditions
            .find(condition::IDENTITY_VALID)
            .map(|c| c.message.clone())
            .unwrap_or_default();
        ctx.publish(
            tenant.as_ref(),
            kube::runtime::events::EventType::Warning,
            EXPIRING_SOON,
            "Reconcile",
            message,
        )
        .await;
    }
    match failure {
        // The status says what is wrong; the error requeues with backoff (or Retry-After).
        Some(err) => Err(err.into()),
        None => Ok(action),
    }
}

/// Check the identity, (re)build the client, heartbeat when due and push settings when they
/// differ from what the control plane last accepted.
async fn link(
    tenant: &Tenant,
    spec: &ControlPlaneSpec,
    ctx: &Context,
    counts: CredentialCounts,
    interval: Duration,
    now: Timestamp,
) -> (LinkState, Option<ControlPlaneError>) {
    let name = &spec.identity_secret_name;
    if *name != ctx.settings.identity_secret {
        ctx.link.clear();
        return (
            LinkState::IdentityInvalid {
                reason: "SecretNotWatched",
                message: format!(
                    "spec.controlPlane.identitySecretName is {name}, but this instance may read only Secret {} (--identity-secret, chart value identity.secretName); make the two agree",
                    ctx.settings.identity_secret
                ),
                summary: None,
            },
            None,
        );
    }
    // Right after start the identity watch may not have listed yet: an empty store would
    // read as "Secret missing" and flap the conditions on every restart or hand-over.
    if tokio::time::timeout(IDENTITY_LIST_WAIT, ctx.identity.wait_until_ready())
        .await
        .is_err()
    {
        tracing::warn!("the identity Secret's watch has not listed yet; treating it as missing");
    }
    let secret = ctx
        .identity
        .get(&ObjectRef::new(name).within(&ctx.namespace));
    let data: BTreeMap<String, Vec<u8>> = secret
        .as_ref()
        .and_then(|s| s.data.as_ref())
        .map(|d| d.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect())
        .unwrap_or_default();
    let loaded = if secret.is_none() {
        Err(identity::IdentityError::SecretMissing {
            secret: name.clone(),
        })
    } else {
        identity::load(name, &data, now)
    };
    let identity = match loaded {
        Ok(identity) => identity,
        Err(err) => {
            ctx.link.clear();
            let summary = identity::inspect(name, &data);
            ctx.metrics.identity_expiry.set(
                summary
                    .as_ref()
                    .map_or(0.0, |s| s.not_after.as_second() as f64),
            );
            return (
                LinkState::IdentityInvalid {
                    reason: err.reason(),
                    message: err.to_string(),
                    summary,
                },
                None,
            );
        }
    };
    let summary = identity.summary.clone();
    ctx.metrics
        .identity_expiry
        .set(summary.not_after.as_second() as f64);
    let Some(endpoint) = summary.endpoint.clone().or_else(|| spec.endpoint.clone()) else {
        ctx.link.clear();
        return (LinkState::NoEndpoint { identity: summary }, None);
    };
    let endpoint = endpoint.trim_end_matches('/').to_owned();
    let disconnected = |err: &ControlPlaneError| LinkState::Disconnected {
        identity: summary.clone(),
        endpoint: endpoint.clone(),
        reason: err.reason(),
        message: err.to_string(),
    };
    let client = match ctx.link.connect(&identity, &endpoint) {
        Ok(client) => client,
        Err(err) => {
            // Never keep issuing through an older identity or endpoint than the one configured.
            ctx.link.clear();
            return (disconnected(&err), Some(err));
        }
    };

    let settings = tenant.spec.settings.clone().unwrap_or_else(|| json!({}));
    let hash = settings_hash(&endpoint, &summary.tenant_id, &settings);
    let status = tenant.status.clone().unwrap_or_default();
    let mut revision = status.settings_revision.clone();
    let mut in_sync = status.settings_hash.as_deref() == Some(hash.as_str()) && revision.is_some();
    let mut pushed_at = None;
    let outcome: Result<(), ControlPlaneError> = async {
        if !in_sync || ctx.link.heartbeat_due(interval) {
            let reply = client.heartbeat(counts).await?;
            ctx.link.heartbeat_done();
            if revision.as_deref() != Some(reply.revision.as_str()) {
                // Changed on the control plane since we last pushed: ours are the desired ones.
                in_sync = false;
                revision = Some(reply.revision);
            }
        }
        if !in_sync {
            revision = Some(client.sync_settings(&settings, revision.as_deref()).await?);
            pushed_at = Some(now);
            tracing::info!(revision = ?revision, "settings pushed to the control plane");
        }
        Ok(())
    }
    .await;
    match outcome {
        Ok(()) => (
            LinkState::Synced {
                identity: summary,
                endpoint,
                revision: revision.unwrap_or_default(),
                hash,
                pushed_at,
            },
            None,
        ),
        Err(err) => {
            let rejected_settings = matches!(
                &err,
                ControlPlaneError::Rejected { operation: "put_settings", status, .. }
                    if *status != 401 && *status != 403
            );
            let state = if rejected_settings {
                LinkState::SyncFailed {
                    identity: summary,
                    endpoint,
                    reason: "Rejected",
                    message: err.to_string(),
                }
            } else {
                disconnected(&err)
            };
            (state, Some(err))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::credential::{
        CredentialSpec, CredentialStatus, CredentialType, DeletionPolicy,
    };
    use crate::api::tenant::{ControlPlaneSpec, TenantSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn tenant(name: &str, control_plane: bool) -> Tenant {
        let mut t = Tenant::new(
            name,
            TenantSpec {
                control_plane: control_plane.then(|| ControlPlaneSpec {
                    identity_secret_name: "bulkhead-identity".into(),
                    endpoint: None,
                    sync_interval: "5m".into(),
                }),
                ..TenantSpec::default()
            },
        );
        t.metadata.namespace = Some("team-a".into());
        t.metadata.generation = Some(4);
        t
    }

    fn credential(ready: Option<bool>) -> Credential {
        let mut c = Credential::new(
            "c",
            CredentialSpec {
                type_: CredentialType::Random,
                random: Some(Default::default()),
                key_set: None,
                control_plane_token: None,
                registry_credentials: None,
                secret_name: None,
                rotation: None,
                restart_on_rotation: vec![],
                deletion_policy: DeletionPolicy::Delete,
                adopt: false,
            },
        );
        c.status = ready.map(|r| CredentialStatus {
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: if r { "True" } else { "False" }.into(),
                reason: "X".into(),
                message: String::new(),
                last_transition_time: Time(Timestamp::UNIX_EPOCH),
                observed_generation: None,
            }],
            ..CredentialStatus::default()
        });
        c
    }

    #[test]
    fn counts_ready_credentials() {
        let creds = [
            credential(Some(true)),
            credential(Some(false)),
            credential(None),
            credential(Some(true)),
        ];
        assert_eq!(
            credential_counts(creds.iter()),
            CredentialCounts { total: 4, ready: 2 }
        );
        assert_eq!(
            credential_counts([].iter()),
            CredentialCounts { total: 0, ready: 0 }
        );
    }

    #[test]
    fn local_only_tenant_is_ready_with_counts_and_generation() {
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let (status, transitions) = desired_status(
            &tenant("tenant", false),
            CredentialCounts { total: 3, ready: 2 },
            None,
            now,
        );
        assert_eq!(status.observed_generation, Some(4));
        assert_eq!(
            status.credentials,
            Some(CredentialCounts { total: 3, ready: 2 })
        );
        let ready = status.conditions.find("Ready").unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "LocalOnly")
        );
        assert!(ready.message.contains("2 of 3 credentials ready"));
        assert_eq!(ready.observed_generation, Some(4));
        assert_eq!(transitions.len(), 1);
    }

    #[test]
    fn unchanged_tenant_yields_identical_status_and_no_transition() {
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let mut t = tenant("tenant", false);
        let counts = CredentialCounts { total: 1, ready: 1 };
        let (status, _) = desired_status(&t, counts, None, now);
        t.status = Some(status.clone());
        let later = Timestamp::from_second(1_700_000_600).unwrap();
        let (again, transitions) = desired_status(&t, counts, None, later);
        assert_eq!(again, status, "a steady state must not produce a write");
        assert!(transitions.is_empty());
    }

    #[test]
    fn misnamed_tenant_is_not_ready_and_says_how_to_fix() {
        let (status, _) = desired_status(
            &tenant("other", false),
            CredentialCounts::default(),
            None,
            Timestamp::UNIX_EPOCH,
        );
        let ready = status.conditions.find("Ready").unwrap();
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason, "NotSingleton");
        assert!(ready.message.contains("rename it to 'tenant'"));
    }

    fn summary(days_left: i64) -> IdentitySummary {
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        IdentitySummary {
            subject: "CN=bulkhead team-a".into(),
            not_before: Timestamp::from_second(now.as_second() - 60 * 86_400).unwrap(),
            not_after: Timestamp::from_second(now.as_second() + days_left * 86_400).unwrap(),
            fingerprint: "ab".repeat(32),
            trust_domain: "platform.example".into(),
            tenant_id: "team-a".into(),
            endpoint: None,
        }
    }

    fn condition_of(status: &TenantStatus, type_: &str) -> (String, String, String) {
        let c = status.conditions.find(type_).unwrap();
        (c.status.clone(), c.reason.clone(), c.message.clone())
    }

    #[test]
    fn an_invalid_identity_says_why_and_keeps_what_was_synced() {
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let mut t = tenant("tenant", true);
        t.status = Some(TenantStatus {
            settings_revision: Some("7".into()),
            settings_hash: Some("h".into()),
            ..TenantStatus::default()
        });
        let link = LinkState::IdentityInvalid {
            reason: "Expired",
            message: "Secret bulkhead-identity: the certificate expired at X; renew it".into(),
            summary: Some(summary(-1)),
        };
        let (status, _) = desired_status(&t, CredentialCounts::default(), Some(&link), now);
        let (s, r, m) = condition_of(&status, "IdentityValid");
        assert_eq!((s.as_str(), r.as_str()), ("False", "Expired"));
        assert!(m.contains("renew"));
        assert_eq!(condition_of(&status, "Ready").0, "False");
        assert_eq!(condition_of(&status, "ControlPlaneConnected").0, "Unknown");
        assert_eq!(status.settings_revision.as_deref(), Some("7"));
        assert_eq!(status.tenant_id.as_deref(), Some("team-a"));
        assert_eq!(status.identity.unwrap().subject, "CN=bulkhead team-a");
    }

    #[test]
    fn a_synced_link_is_ready_and_stays_identical_at_steady_state() {
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let mut t = tenant("tenant", true);
        let pushed = LinkState::Synced {
            identity: summary(30),
            endpoint: "https://cp.example".into(),
            revision: "3".into(),
            hash: settings_hash("https://cp.example", "team-a", &json!({"tier": "gold"})),
            pushed_at: Some(now),
        };
        let (status, _) = desired_status(&t, CredentialCounts::default(), Some(&pushed), now);
        assert_eq!(condition_of(&status, "Ready").1, "Linked");
        assert_eq!(condition_of(&status, "SettingsSynced").0, "True");
        assert_eq!(condition_of(&status, "IdentityValid").1, "Valid");
        assert_eq!(status.last_sync_time, Some(now.to_string()));
        assert_eq!(status.endpoint.as_deref(), Some("https://cp.example"));
        t.status = Some(status.clone());
        let mut heartbeat_only = pushed.clone();
        if let LinkState::Synced { pushed_at, .. } = &mut heartbeat_only {
            *pushed_at = None;
        }
        let later = Timestamp::from_second(1_700_000_600).unwrap();
        let (again, transitions) = desired_status(
            &t,
            CredentialCounts::default(),
            Some(&heartbeat_only),
            later,
        );
        assert_eq!(again, status, "a heartbeat alone must not write the status");
        assert!(transitions.is_empty());
    }

    #[test]
    fn a_down_control_plane_is_named_and_nothing_synced_is_lost() {
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let mut t = tenant("tenant", true);
        t.status = Some(TenantStatus {
            settings_revision: Some("3".into()),
            last_sync_time: Some("2023-11-14T00:00:00Z".into()),
            ..TenantStatus::default()
        });
        let link = LinkState::Disconnected {
            identity: summary(30),
            endpoint: "https://cp.example".into(),
            reason: "Unreachable",
            message: "cannot reach the control plane after 4 attempts: connection refused".into(),
        };
        let (status, _) = desired_status(&t, CredentialCounts::default(), Some(&link), now);
        let (s, r, m) = condition_of(&status, "ControlPlaneConnected");
        assert_eq!((s.as_str(), r.as_str()), ("False", "Unreachable"));
        assert!(m.contains("https://cp.example") && m.contains("connection refused"));
        assert_eq!(condition_of(&status, "Ready").1, "ControlPlaneUnavailable");
        assert_eq!(status.settings_revision.as_deref(), Some("3"));
        assert_eq!(
            status.last_sync_time.as_deref(),
            Some("2023-11-14T00:00:00Z")
        );
    }

    #[test]
    fn expiry_warning_in_the_last_sixth_of_the_lifetime() {
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        // 60 days lived: 90-day certificate with 30 left is fine, 70-day with 10 left is not.
        assert!(!expiring_soon(&summary(30), now));
        assert!(expiring_soon(&summary(10), now));
        assert_eq!(identity_condition(&summary(10), now).reason, EXPIRING_SOON);
    }

    #[test]
    fn settings_hash_ignores_key_order_but_not_where_they_go() {
        let a: Value = serde_json::from_str(r#"{"a":1,"b":{"c":2,"d":3}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"b":{"d":3,"c":2},"a":1}"#).unwrap();
        let c: Value = serde_json::from_str(r#"{"a":1,"b":{"c":2,"d":4}}"#).unwrap();
        let h = |v: &Value| settings_hash("https://cp", "team-a", v);
        assert_eq!(h(&a), h(&b));
        assert_ne!(h(&a), h(&c));
        assert_ne!(h(&a), settings_hash("https://other-cp", "team-a", &a));
        assert_ne!(h(&a), settings_hash("https://cp", "team-b", &a));
    }
}
