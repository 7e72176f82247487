//! Credential controller: generates, rotates and writes each Credential's Secret.
//!
//! observe (GET the Secret by name — never list) -> plan (pure, `resources::secret`) -> apply
//! (create, or one server-side apply guarded by the Secret's resourceVersion) -> restart
//! targets -> report (status only when changed, Events on changes). Requeues at the next
//! rotation time, capped by the drift re-check interval.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

use super::restart::{self, RestartOutcome};
use super::{Context, FIELD_MANAGER, instrumented};
use crate::api::TENANT_NAME;
use crate::api::conditions::{self, ConditionStatus, DesiredCondition, Transition};
use crate::api::credential::{Credential, CredentialStatus, CredentialType, condition};
use crate::controlplane::client::ControlPlaneError;
use crate::error::forbidden_as;
use crate::resources::issued::{self, Decision};
use crate::resources::random::OsEntropy;
use crate::resources::secret::{self, Change, Plan, Refusal};
use crate::telemetry::{CredentialLabels, TypeLabels};
use crate::{Error, Result};

const SECRETS_RULE: &str = "secrets: get, create, patch";
/// How soon an issued Credential checks again for the control-plane link (a safety net: a new
/// link triggers every Credential at once).
const NOT_LINKED_RETRY: Duration = Duration::from_secs(60);
const SECRETS_FIX: &str = "the chart's Role (helm upgrade the release; see `bulkhead rbac`)";

/// Reconcile one Credential.
pub async fn reconcile(credential: Arc<Credential>, ctx: Arc<Context>) -> Result<Action> {
    let span = tracing::info_span!("reconcile", namespace = %ctx.namespace, kind = "Credential", name = %credential.name_any());
    tracing::Instrument::instrument(
        instrumented("credential", credential, ctx, reconcile_inner),
        span,
    )
    .await
}

/// How long to sleep: until the next rotation, but never longer than the drift re-check.
pub fn requeue_after(
    next_rotation: Option<Timestamp>,
    now: Timestamp,
    recheck: Duration,
) -> Duration {
    match next_rotation {
        Some(next) => {
            let until = next.duration_since(now);
            let until = Duration::try_from(until).unwrap_or(Duration::ZERO);
            // Wake just after the due time so the rotation is not a few milliseconds early.
            (until + Duration::from_millis(50)).min(recheck)
        }
        None => recheck,
    }
}

async fn reconcile_inner(credential: Arc<Credential>, ctx: Arc<Context>) -> Result<Action> {
    let name = credential.secret_name();
    let secrets = ctx.api::<Secret>();
    let now = Timestamp::now();
    let current = match secrets.get_opt(&name).await {
        Ok(current) => current,
        Err(e) => {
            let err = forbidden_as(e, format!("get secrets/{name}"), SECRETS_RULE, SECRETS_FIX);
            return Err(report_forbidden(&ctx, &credential, err, now).await);
        }
    };
    let recheck = ctx.settings.drift_check;

    let planned = if credential.spec.type_.is_issued() {
        match plan_issued(&ctx, &credential, current.as_ref(), now).await {
            Ok(planned) => planned,
            Err(err) => {
                // The current value (if any) stays in the Secret; only the refresh failed.
                let message = match current.as_ref() {
                    Some(_) => format!(
                        "the control plane did not issue a new value: {err}; Secret {name} keeps the current one until it expires"
                    ),
                    None => format!("the control plane did not issue a value: {err}"),
                };
                let conds = vec![DesiredCondition::new(
                    condition::READY,
                    ConditionStatus::False,
                    err.reason(),
                    message,
                )];
                report(&ctx, &credential, conds, None, now).await?;
                return Err(err.into());
            }
        }
    } else {
        secret::plan(&credential, current.as_ref(), now, &mut OsEntropy)
    };
    let plan = match planned {
        Ok(plan) => plan,
        Err(refusal) => {
            let (conds, action) = refusal_conditions(refusal, recheck)?;
            report(&ctx, &credential, conds, None, now).await?;
            return Ok(action);
        }
    };

    let mut plan = plan;
    let desired = secret::desired_secret(&credential, &plan);
    let mut stored = current.clone();
    if secret::differs(credential.spec.type_, current.as_ref(), &desired) {
        match write_secret(&ctx, credential.spec.type_, current.as_ref(), desired).await {
            Ok(written) => stored = Some(written),
            Err(err) => {
                let err = report_forbidden(&ctx, &credential, err, now).await;
                if plan.change.is_some_and(Change::is_rotation) {
                    ctx.publish(
                        credential.as_ref(),
                        EventType::Warning,
                        "RotationFailed",
                        "Rotate",
                        format!("writing Secret {name} failed: {err}"),
                    )
                    .await;
                }
                return Err(err);
            }
        }
    }
    if let Some(change) = plan.change {
        if change.is_rotation() {
            ctx.metrics
                .rotations
                .get_or_create(&TypeLabels {
                    r#type: credential.spec.type_.as_str(),
                })
                .inc();
        }
        let (reason, type_) = match change {
            Change::Created => ("Created", EventType::Normal),
            Change::Adopted => ("Adopted", EventType::Normal),
            Change::Repaired => ("Repaired", EventType::Warning),
            _ => ("Rotated", EventType::Normal),
        };
        let key = plan.journal.key_id.clone().unwrap_or_default();
        ctx.publish(
            credential.as_ref(),
            type_,
            reason,
            "Rotate",
            format!("Secret {name} {} (key id {key})", change.describe()),
        )
        .await;
    }

    let restart_condition = restart_if_owed(&ctx, &credential, &mut plan, stored.as_ref()).await?;

    let mut conds = vec![
        DesiredCondition::new(
            condition::READY,
            ConditionStatus::True,
            "Ready",
            format!(
                "Secret {name} holds the current value (key id {})",
                plan.journal.key_id.clone().unwrap_or_default()
            ),
        ),
        DesiredCondition::new(
            condition::CONFLICT,
            ConditionStatus::False,
            "Managed",
            format!("Secret {name} is managed by Bulkhead"),
        ),
        restart_condition,
    ];
    if let Some(change) = plan.change {
        let at = plan
            .journal
            .rotated_at
            .map(|t| t.to_string())
            .unwrap_or_default();
        let reason = match change {
            Change::Created => "Created",
            Change::Adopted => "Adopted",
            Change::Repaired => "Repaired",
            _ => "Rotated",
        };
        conds.push(DesiredCondition::new(
            condition::ROTATED,
            ConditionStatus::True,
            reason,
            format!("{} at {at}", change.describe()),
        ));
    }
    report(&ctx, &credential, conds, Some(&plan), now).await?;
    if let Some(next) = plan.next_rotation {
        ctx.metrics
            .next_rotation
            .get_or_create(&CredentialLabels {
                credential: credential.name_any(),
            })
            .set(next.as_millisecond() as f64 / 1000.0);
    }
    Ok(Action::requeue(requeue_after(
        plan.next_rotation,
        now,
        recheck,
    )))
}

/// The plan of an issued Credential: keep the value, or ask the control plane for a new one.
/// `Ok(Err(_))` is a refusal (conflict, not linked); `Err` is a failed control-plane call.
async fn plan_issued(
    ctx: &Context,
    credential: &Credential,
    current: Option<&Secret>,
    now: Timestamp,
) -> std::result::Result<std::result::Result<Plan, Refusal>, ControlPlaneError> {
    let (request, change) = match issued::decide(credential, current, now) {
        Err(refusal) => return Ok(Err(refusal)),
        Ok(Decision::Keep(plan)) => return Ok(Ok(*plan)),
        Ok(Decision::Issue { request, change }) => (request, change),
    };
    // The link belongs to the Tenant: once it is deleted (or drops spec.controlPlane), nothing
    // more is issued through a client it left behind.
    let tenant = ctx
        .tenants
        .get(&ObjectRef::new(TENANT_NAME).within(&ctx.namespace));
    let linked_tenant = tenant.is_some_and(|t| t.spec.control_plane.is_some());
    let client = ctx.link.current().filter(|_| linked_tenant);
    let Some(client) = client else {
        return Ok(Err(Refusal::NeedsControlPlane(credential.spec.type_)));
    };
    let value = match request {
        issued::Request::Token { audience, ttl } => {
            let token = client.issue_token(&audience, ttl).await?;
            issued::token_data(&token.token, token.expires_at)
        }
        issued::Request::Registry { server } => {
            let creds = client.issue_registry_credentials(&server).await?;
            issued::registry_data(
                &creds.server,
                &creds.username,
                &creds.password,
                creds.expires_at,
            )
        }
    };
    if now
        .checked_add(issued::MIN_REFRESH)
        .is_ok_and(|floor| value.expires_at < floor)
    {
        return Err(ControlPlaneError::Protocol {
            operation: "issue",
            detail: format!(
                "the issued value expires at {}, less than {}s from now ({now}); check the control plane's clock",
                value.expires_at,
                issued::MIN_REFRESH.as_secs()
            ),
        });
    }
    Ok(issued::plan_issued(credential, current, change, value, now))
}

/// Conditions for a plan that cannot be carried out; a CSPRNG failure is an error to retry.
fn refusal_conditions(
    refusal: Refusal,
    recheck: Duration,
) -> Result<(Vec<DesiredCondition>, Action)> {
    Ok(match refusal {
        Refusal::Conflict(msg) => (
            vec![
                DesiredCondition::new(
                    condition::READY,
                    ConditionStatus::False,
                    "Conflict",
                    msg.clone(),
                ),
                DesiredCondition::new(
                    condition::CONFLICT,
                    ConditionStatus::True,
                    "SecretNotManaged",
                    msg.clone(),
                ),
            ],
            // Re-check now and then: the foreign Secret may be removed. Never a hot loop.
            Action::requeue(recheck),
        ),
        Refusal::InvalidSpec(msg) => (
            vec![DesiredCondition::new(
                condition::READY,
                ConditionStatus::False,
                "InvalidSpec",
                msg.clone(),
            )],
            Action::await_change(),
        ),
        Refusal::NeedsControlPlane(t) => (
            vec![DesiredCondition::new(
                condition::READY,
                ConditionStatus::False,
                "ControlPlaneNotLinked",
                format!(
                    "type {} is issued by the control plane, and the Tenant is not linked to it; see the Tenant's conditions (kubectl get tenant tenant -o yaml)",
                    t.as_str()
                ),
            )],
            // The link coming up triggers a reconcile; this requeue is only a safety net.
            Action::requeue(NOT_LINKED_RETRY),
        ),
        Refusal::Entropy(source) => {
            return Err(Error::Entropy {
                doing: "generating a Secret value".to_owned(),
                source,
            });
        }
    })
}

/// A 403 on a Secret call becomes the Ready condition naming the missing rule and how to
/// grant it (SPEC §5); the error is returned for the backoff either way.
async fn report_forbidden(
    ctx: &Context,
    credential: &Credential,
    err: Error,
    now: Timestamp,
) -> Error {
    if let Error::Forbidden {
        action, rule, fix, ..
    } = &err
    {
        let conds = vec![DesiredCondition::new(
            condition::READY,
            ConditionStatus::False,
            "Forbidden",
            format!(
                "the Role does not allow {action}: it needs the rule {rule}; grant it with {fix}"
            ),
        )];
        if let Err(status_err) = report(ctx, credential, conds, None, now).await {
            tracing::warn!(error = %status_err, "could not report the missing permission");
        }
    }
    err
}

/// Create the Secret (POST: fails if someone created one meanwhile, so a foreign Secret is
/// never overwritten) or apply it guarded by the resourceVersion we planned from; then remove,
/// guarded by the resourceVersion just written, what the apply could not remove because
/// another field manager owns it too (see `secret::removal_patch`): every field Bulkhead stops
/// writing is really gone.
async fn write_secret(
    ctx: &Context,
    type_: CredentialType,
    current: Option<&Secret>,
    desired: Secret,
) -> Result<Secret> {
    let name = desired.name_any();
    let forbidden = |e| {
        forbidden_as(
            e,
            format!("write secrets/{name}"),
            SECRETS_RULE,
            SECRETS_FIX,
        )
    };
    let written = apply_secret(ctx, current, desired.clone())
        .await
        .map_err(forbidden)?;
    match secret::removal_patch(type_, &written, &desired) {
        None => Ok(written),
        Some(patch) => ctx
            .api::<Secret>()
            .patch(
                &name,
                &PatchParams {
                    field_manager: Some(FIELD_MANAGER.to_owned()),
                    ..PatchParams::default()
                },
                &Patch::Merge(&patch),
            )
            .await
            .map_err(forbidden),
    }
}

async fn apply_secret(
    ctx: &Context,
    current: Option<&Secret>,
    mut desired: Secret,
) -> kube::Result<Secret> {
    let name = desired.name_any();
    let api = ctx.api::<Secret>();
    match current {
        None => {
            let params = PostParams {
                field_manager: Some(FIELD_MANAGER.to_owned()),
                ..PostParams::default()
            };
            api.create(&params, &desired).await
        }
        Some(current) => {
            desired.metadata.resource_version = current.resource_version();
            // Forcing takes only the fields in this apply: the keys, labels and annotations
            // Bulkhead owns; any other key in the Secret stays with its manager.
            api.patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&desired),
            )
            .await
        }
    }
}

/// Restart the targets if a rotation has not been followed by one yet (journalled in the
/// Secret, so a crash in between still restarts). Returns the RestartNotPermitted condition.
async fn restart_if_owed(
    ctx: &Context,
    credential: &Credential,
    plan: &mut Plan,
    stored: Option<&Secret>,
) -> Result<DesiredCondition> {
    let targets = &credential.spec.restart_on_rotation;
    let permitted = |msg: &str| {
        DesiredCondition::new(
            condition::RESTART_NOT_PERMITTED,
            ConditionStatus::False,
            "Permitted",
            msg.to_owned(),
        )
    };
    if targets.is_empty() {
        return Ok(permitted("no restartOnRotation targets"));
    }
    let key = plan.journal.key_id.clone().unwrap_or_default();
    if plan.journal.restarted_for.as_deref() == Some(key.as_str()) {
        // Nothing to restart now; a target the Role does not list is reported from the first
        // reconcile, not only after the first rotation.
        let not_permitted = restart::not_permitted(ctx, targets);
        return Ok(if not_permitted.is_empty() {
            permitted("every target runs with the current value")
        } else {
            DesiredCondition::new(
                condition::RESTART_NOT_PERMITTED,
                ConditionStatus::True,
                "Forbidden",
                restart::forbidden_message(&not_permitted),
            )
        });
    }
    let outcome: RestartOutcome = restart::restart_targets(ctx, targets, &key).await;
    for missing in &outcome.missing {
        ctx.publish(
            credential,
            EventType::Warning,
            "RestartTargetNotFound",
            "Restart",
            format!(
                "{:?}/{} does not exist; nothing to restart",
                missing.kind, missing.name
            ),
        )
        .await;
    }
    if outcome.settled() {
        plan.journal.restarted_for = Some(key);
        let desired = secret::desired_secret(credential, plan);
        write_secret(ctx, credential.spec.type_, stored, desired).await?;
    }
    if outcome.forbidden.is_empty() {
        if let Some((target, err)) = outcome.failed.into_iter().next() {
            return Err(Error::Restart {
                target: format!("{:?}/{}", target.kind, target.name),
                source: Box::new(err),
            });
        }
        Ok(permitted("every target was restarted"))
    } else {
        Ok(DesiredCondition::new(
            condition::RESTART_NOT_PERMITTED,
            ConditionStatus::True,
            "Forbidden",
            restart::forbidden_message(&outcome.forbidden),
        ))
    }
}

/// The status a plan (or a refusal) implies, merged with the current conditions.
pub fn desired_status(
    credential: &Credential,
    conds: &[DesiredCondition],
    plan: Option<&Plan>,
    now: Timestamp,
) -> (CredentialStatus, Vec<Transition>) {
    let current = credential.status.clone().unwrap_or_default();
    let generation = credential.metadata.generation;
    let (conditions, transitions) = conditions::merge(&current.conditions, conds, generation, now);
    let status = match plan {
        Some(plan) => CredentialStatus {
            observed_generation: generation,
            conditions,
            secret_name: Some(credential.secret_name()),
            last_rotation_time: plan.journal.rotated_at.map(|t| t.to_string()),
            next_rotation_time: plan.next_rotation.map(|t| t.to_string()),
            key_id: plan.journal.key_id.clone(),
        },
        None => CredentialStatus {
            observed_generation: generation,
            conditions,
            secret_name: Some(credential.secret_name()),
            ..current
        },
    };
    (status, transitions)
}

async fn report(
    ctx: &Context,
    credential: &Credential,
    conds: Vec<DesiredCondition>,
    plan: Option<&Plan>,
    now: Timestamp,
) -> Result<()> {
    let (status, transitions) = desired_status(credential, &conds, plan, now);
    // For the chart's CredentialNotReady alert: the readiness this status reports.
    let ready = conds
        .iter()
        .any(|c| c.type_ == condition::READY && c.status == ConditionStatus::True);
    ctx.metrics
        .credential_ready
        .get_or_create(&CredentialLabels {
            credential: credential.name_any(),
        })
        .set(i64::from(ready));
    if credential.status.as_ref() != Some(&status) {
        let patch = json!({
            "apiVersion": "bulkhead.dev/v1alpha1",
            "kind": "Credential",
            "status": status,
        });
        ctx.api::<Credential>()
            .patch_status(
                &credential.name_any(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .map_err(|e| {
                forbidden_as(
                    e,
                    format!("patch credentials/{}/status", credential.name_any()),
                    "credentials/status: patch",
                    SECRETS_FIX,
                )
            })?;
    }
    // Rotations have their own Events; transitions of Conflict and RestartNotPermitted are
    // the ones a user acts on.
    let actionable: Vec<Transition> = transitions
        .into_iter()
        .filter(|t| {
            t.type_ != condition::ROTATED && !(t.from.is_none() && t.to == ConditionStatus::False)
        })
        .collect();
    ctx.publish_transitions(
        credential,
        &actionable,
        &[condition::CONFLICT, condition::RESTART_NOT_PERMITTED],
    )
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleeps_until_the_next_rotation_capped_by_the_recheck() {
        let now: Timestamp = "2026-11-22T10:00:00Z".parse().unwrap();
        let recheck = Duration::from_secs(600);
        let soon: Timestamp = "2026-11-22T10:01:00Z".parse().unwrap();
        assert_eq!(
            requeue_after(Some(soon), now, recheck),
            Duration::from_millis(60_050)
        );
        let late: Timestamp = "2026-12-22T10:00:00Z".parse().unwrap();
        assert_eq!(requeue_after(Some(late), now, recheck), recheck);
        let past: Timestamp = "2026-11-22T09:00:00Z".parse().unwrap();
        assert_eq!(
            requeue_after(Some(past), now, recheck),
            Duration::from_millis(50)
        );
        assert_eq!(requeue_after(None, now, recheck), recheck);
    }
}
