//! Tenant controller: keeps the tenancy record's status true.
//!
//! observe (the Tenant, the Credential cache) -> validate -> build the desired status (pure) ->
//! report (one server-side apply of status, only when it changed, so a steady state costs zero
//! writes; an Event per condition transition).

use std::sync::Arc;

use jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use serde_json::json;

use super::{Context, FIELD_MANAGER, instrumented};
use crate::Result;
use crate::api::conditions::{self, ConditionSet, ConditionStatus, DesiredCondition, Transition};
use crate::api::tenant::{CredentialCounts, TenantStatus, condition};
use crate::api::{Credential, TENANT_NAME, Tenant};

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

/// The conditions a Tenant should have, from its spec alone (the control-plane link adds its
/// own conditions once it exists).
pub fn desired_conditions(tenant: &Tenant, counts: CredentialCounts) -> Vec<DesiredCondition> {
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
    match &tenant.spec.control_plane {
        None => vec![DesiredCondition::new(
            condition::READY,
            ConditionStatus::True,
            "LocalOnly",
            format!("local-only tenant (no spec.controlPlane); {credentials}"),
        )],
        Some(_) => vec![
            DesiredCondition::new(
                condition::CONTROL_PLANE_CONNECTED,
                ConditionStatus::Unknown,
                "NotSupported",
                "this version of Bulkhead does not link to a control plane yet",
            ),
            DesiredCondition::new(
                condition::READY,
                ConditionStatus::False,
                "ControlPlaneNotLinked",
                format!(
                    "spec.controlPlane is set but this version cannot link to a control plane; remove spec.controlPlane for a local-only tenant; {credentials}"
                ),
            ),
        ],
    }
}

/// Build the desired status from the current one: conditions merged with metav1.Condition
/// semantics, counts refreshed. Returns the transitions for Events.
pub fn desired_status(
    tenant: &Tenant,
    counts: CredentialCounts,
    now: Timestamp,
) -> (TenantStatus, Vec<Transition>) {
    let current = tenant.status.clone().unwrap_or_default();
    let generation = tenant.metadata.generation;
    let (conditions, transitions) = conditions::merge(
        &current.conditions,
        &desired_conditions(tenant, counts),
        generation,
        now,
    );
    let status = TenantStatus {
        observed_generation: generation,
        conditions,
        credentials: Some(counts),
        ..current
    };
    (status, transitions)
}

/// Reconcile one Tenant.
pub async fn reconcile(tenant: Arc<Tenant>, ctx: Arc<Context>) -> Result<Action> {
    let span = tracing::info_span!("reconcile", namespace = %ctx.namespace, kind = "Tenant", name = %tenant.name_any());
    tracing::Instrument::instrument(instrumented("tenant", tenant, ctx, reconcile_inner), span)
        .await
}

async fn reconcile_inner(tenant: Arc<Tenant>, ctx: Arc<Context>) -> Result<Action> {
    let credentials = ctx.credentials.state();
    let counts = credential_counts(credentials.iter().map(AsRef::as_ref));
    let (status, transitions) = desired_status(&tenant, counts, Timestamp::now());
    if tenant.status.as_ref() != Some(&status) {
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
            .await?;
        tracing::debug!(?counts, "Tenant status updated");
    }
    ctx.publish_transitions(tenant.as_ref(), &transitions, &[])
        .await;
    // Credential changes trigger a reconcile of every Tenant; nothing else is time-driven yet.
    Ok(Action::await_change())
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
        let (status, _) = desired_status(&t, counts, now);
        t.status = Some(status.clone());
        let later = Timestamp::from_second(1_700_000_600).unwrap();
        let (again, transitions) = desired_status(&t, counts, later);
        assert_eq!(again, status, "a steady state must not produce a write");
        assert!(transitions.is_empty());
    }

    #[test]
    fn misnamed_tenant_is_not_ready_and_says_how_to_fix() {
        let (status, _) = desired_status(
            &tenant("other", false),
            CredentialCounts::default(),
            Timestamp::UNIX_EPOCH,
        );
        let ready = status.conditions.find("Ready").unwrap();
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason, "NotSingleton");
        assert!(ready.message.contains("rename it to 'tenant'"));
    }

    #[test]
    fn control_plane_tenant_reports_the_missing_link() {
        let (status, _) = desired_status(
            &tenant("tenant", true),
            CredentialCounts::default(),
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(status.conditions.find("Ready").unwrap().status, "False");
        assert_eq!(
            status
                .conditions
                .find("ControlPlaneConnected")
                .unwrap()
                .status,
            "Unknown"
        );
    }
}
