//! Credential controller: generates, rotates and writes each Credential's Secret.
//!
//! observe (GET the Secret by name — never list — and the rules every type shares,
//! `resources::secret::observe`) -> plan (pure, the type's `CredentialKind` in
//! `crate::credentials`; an issued type asks the control plane, then plans what it issued)
//! -> apply (create, or one server-side apply guarded by the Secret's resourceVersion; then the
//! restart targets) -> report (ONE call: the pure `desired_conditions` of the [`Outcome`],
//! status written only when it changed, Events on transitions). Requeues at the next rotation
//! time, capped by the drift re-check interval.

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

use super::restart;
use super::{Context, FIELD_MANAGER, instrumented};
use crate::api::TENANT_NAME;
use crate::api::conditions::{self, ConditionStatus, DesiredCondition, Transition};
use crate::api::credential::{Credential, CredentialStatus, RestartTarget, condition};
use crate::controlplane::client::{ControlPlaneClient, ControlPlaneError};
use crate::credentials::control_plane_token::token_data;
use crate::credentials::issued::MIN_REFRESH;
use crate::credentials::registry_credentials::registry_data;
use crate::credentials::{self};
use crate::error::Doing;
use crate::resources::entropy::OsEntropy;
use crate::resources::plan::{CredentialKind, Issued, Observed, Plan, Refusal, Request, Step};
use crate::resources::secret;
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

/// What one reconcile found and did: all that [`desired_conditions`] needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The Secret holds the plan's value (written now, or already there).
    Current { plan: Plan, restart: Restart },
    /// Nothing was written, and why.
    Refused(Refusal),
    /// The Role does not allow a call the reconcile needs.
    Forbidden {
        action: String,
        rule: String,
        fix: String,
    },
    /// The control plane did not issue a value; `kept`: the Secret keeps its current one.
    NotIssued {
        reason: &'static str,
        problem: String,
        kept: bool,
    },
}

impl Outcome {
    /// The outcome a failed call reports, if it has one to report (a missing permission).
    fn of_error(err: &Error) -> Option<Self> {
        match err {
            Error::Forbidden {
                action, rule, fix, ..
            } => Some(Self::Forbidden {
                action: action.clone(),
                rule: rule.clone(),
                fix: fix.clone(),
            }),
            _ => None,
        }
    }
}

/// Where the restart targets stand after this reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Restart {
    /// `spec.restartOnRotation` is empty.
    NoTargets,
    /// No restart owed: the targets run with the current value.
    Current,
    /// Every target was restarted onto the new value.
    Restarted,
    /// The Role does not allow patching these targets.
    Forbidden(Vec<RestartTarget>),
}

/// A failed reconcile: the error for the backoff, and what the status should say, if anything.
struct Failed {
    error: Error,
    outcome: Option<Outcome>,
}

impl From<Error> for Failed {
    fn from(error: Error) -> Self {
        let outcome = Outcome::of_error(&error);
        Self { error, outcome }
    }
}

async fn reconcile_inner(credential: Arc<Credential>, ctx: Arc<Context>) -> Result<Action> {
    let now = Timestamp::now();
    let converged = converge(&ctx, &credential, now).await;
    let outcome = match &converged {
        Ok(outcome) => Some(outcome),
        Err(failed) => failed.outcome.as_ref(),
    };
    let reported = match outcome {
        Some(outcome) => report(&ctx, &credential, outcome, now).await,
        None => Ok(()),
    };
    match converged {
        Ok(outcome) => {
            reported?;
            next_action(&outcome, now, ctx.settings.drift_check)
        }
        Err(failed) => {
            if let Err(status_err) = reported {
                tracing::warn!(error = %status_err, "could not report the failure in status");
            }
            Err(failed.error)
        }
    }
}

/// observe -> plan -> apply (the Secret, then the restart targets).
async fn converge(
    ctx: &Context,
    credential: &Credential,
    now: Timestamp,
) -> std::result::Result<Outcome, Failed> {
    let kind = credentials::kind(credential.spec.type_);
    let name = credential.secret_name();
    let current = ctx.api::<Secret>().get_opt(&name).await.doing_as(
        format!("get secrets/{name} in {}", ctx.namespace),
        SECRETS_RULE,
        SECRETS_FIX,
    )?;
    let observed = match secret::observe(kind, credential, current.as_ref(), now) {
        Ok(observed) => observed,
        Err(refusal) => return Ok(Outcome::Refused(refusal)),
    };
    let mut plan = match plan_and_issue(ctx, kind, &observed).await? {
        Ok(plan) => plan,
        Err(refusal) => return Ok(Outcome::Refused(refusal)),
    };
    let stored = apply(ctx, kind, credential, current, &plan).await?;
    let restart = restart_if_owed(ctx, kind, credential, &mut plan, stored.as_ref()).await?;
    Ok(Outcome::Current { plan, restart })
}

/// The type's pure plan; for an issued type due a new value, the control plane is asked and
/// what it issued is planned (pure again).
async fn plan_and_issue(
    ctx: &Context,
    kind: &dyn CredentialKind,
    observed: &Observed<'_>,
) -> std::result::Result<std::result::Result<Plan, Refusal>, Failed> {
    let (request, change) = match kind.plan(observed, &mut OsEntropy) {
        Err(refusal) => return Ok(Err(refusal)),
        Ok(Step::Write(plan)) => return Ok(Ok(*plan)),
        Ok(Step::Issue { request, change }) => (request, change),
    };
    // The link belongs to the Tenant: once it is deleted (or drops spec.controlPlane), nothing
    // more is issued through a client it left behind.
    let tenant = ctx
        .tenants
        .get(&ObjectRef::new(TENANT_NAME).within(&ctx.namespace));
    let linked_tenant = tenant.is_some_and(|t| t.spec.control_plane.is_some());
    let Some(client) = ctx.link.current().filter(|_| linked_tenant) else {
        let type_ = observed.credential.spec.type_;
        return Ok(Err(Refusal::NeedsControlPlane(type_)));
    };
    match issue(&client, request, observed.now).await {
        Ok(issued) => Ok(kind.plan_issued(observed, change, issued)),
        Err(err) => Err(Failed {
            outcome: Some(Outcome::NotIssued {
                reason: err.reason(),
                problem: err.to_string(),
                kept: observed.secret.is_some(),
            }),
            error: err.into(),
        }),
    }
}

/// Ask the control plane for a value; one that would expire within [`MIN_REFRESH`] is refused
/// (a skewed clock there must not cause a hot loop here).
async fn issue(
    client: &ControlPlaneClient,
    request: Request,
    now: Timestamp,
) -> std::result::Result<Issued, ControlPlaneError> {
    let value = match request {
        Request::Token { audience, ttl } => {
            let token = client.issue_token(&audience, ttl).await?;
            token_data(&token.token, token.expires_at)
        }
        Request::Registry { server } => {
            let creds = client.issue_registry_credentials(&server).await?;
            registry_data(
                &creds.server,
                &creds.username,
                &creds.password,
                creds.expires_at,
            )
        }
    };
    if now
        .checked_add(MIN_REFRESH)
        .is_ok_and(|floor| value.expires_at < floor)
    {
        return Err(ControlPlaneError::Protocol {
            operation: "issue",
            detail: format!(
                "the issued value expires at {}, less than {}s from now ({now}); check the control plane's clock",
                value.expires_at,
                MIN_REFRESH.as_secs()
            ),
        });
    }
    Ok(value)
}

/// Write the Secret if it differs from the plan; count a rotation and publish the change.
/// Returns the Secret as stored.
async fn apply(
    ctx: &Context,
    kind: &dyn CredentialKind,
    credential: &Credential,
    current: Option<Secret>,
    plan: &Plan,
) -> Result<Option<Secret>> {
    let name = credential.secret_name();
    let desired = secret::desired_secret(kind, credential, plan);
    let mut stored = current;
    if secret::differs(kind, stored.as_ref(), &desired) {
        match write_secret(ctx, kind, stored.as_ref(), desired).await {
            Ok(written) => stored = Some(written),
            Err(err) => {
                if plan.change.is_some_and(|c| c.is_rotation()) {
                    ctx.publish(
                        credential,
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
        let key = plan.journal.key_id.clone().unwrap_or_default();
        ctx.publish(
            credential,
            change.event_type(),
            change.reason(),
            "Rotate",
            format!("Secret {name} {} (key id {key})", change.describe()),
        )
        .await;
    }
    Ok(stored)
}

/// Create the Secret (POST: fails if someone created one meanwhile, so a foreign Secret is
/// never overwritten) or apply it guarded by the resourceVersion we planned from; then remove,
/// guarded by the resourceVersion just written, what the apply could not remove because
/// another field manager owns it too (see `secret::removal_patch`): every field Bulkhead stops
/// writing is really gone.
async fn write_secret(
    ctx: &Context,
    kind: &dyn CredentialKind,
    current: Option<&Secret>,
    desired: Secret,
) -> Result<Secret> {
    let name = desired.name_any();
    let ns = &ctx.namespace;
    let api = ctx.api::<Secret>();
    let written = match current {
        None => {
            let params = PostParams {
                field_manager: Some(FIELD_MANAGER.to_owned()),
                ..PostParams::default()
            };
            api.create(&params, &desired).await.doing_as(
                format!("create secrets/{name} in {ns}"),
                SECRETS_RULE,
                SECRETS_FIX,
            )?
        }
        Some(current) => {
            let mut guarded = desired.clone();
            guarded.metadata.resource_version = current.resource_version();
            // Forcing takes only the fields in this apply: the keys, labels and annotations
            // Bulkhead owns; any other key in the Secret stays with its manager.
            api.patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&guarded),
            )
            .await
            .doing_as(
                format!("apply secrets/{name} in {ns}"),
                SECRETS_RULE,
                SECRETS_FIX,
            )?
        }
    };
    match secret::removal_patch(kind, &written, &desired) {
        None => Ok(written),
        Some(patch) => {
            let params = PatchParams {
                field_manager: Some(FIELD_MANAGER.to_owned()),
                ..PatchParams::default()
            };
            api.patch(&name, &params, &Patch::Merge(&patch))
                .await
                .doing_as(
                    format!("patch secrets/{name} in {ns} (remove what Bulkhead stopped writing)"),
                    SECRETS_RULE,
                    SECRETS_FIX,
                )
        }
    }
}

/// Restart the targets if a rotation has not been followed by one yet (journalled in the
/// Secret, so a crash in between still restarts).
async fn restart_if_owed(
    ctx: &Context,
    kind: &dyn CredentialKind,
    credential: &Credential,
    plan: &mut Plan,
    stored: Option<&Secret>,
) -> Result<Restart> {
    let targets = &credential.spec.restart_on_rotation;
    if targets.is_empty() {
        return Ok(Restart::NoTargets);
    }
    if !plan.journal.restart_owed() {
        // Nothing to restart now; a target the Role does not list is reported from the first
        // reconcile, not only after the first rotation.
        let not_permitted = restart::not_permitted(ctx, targets);
        return Ok(match not_permitted.is_empty() {
            true => Restart::Current,
            false => Restart::Forbidden(not_permitted),
        });
    }
    let key = plan.journal.key_id.clone().unwrap_or_default();
    let outcome = restart::restart_targets(ctx, targets, &key).await;
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
        plan.journal.restarted();
        let desired = secret::desired_secret(kind, credential, plan);
        write_secret(ctx, kind, stored, desired).await?;
    }
    if !outcome.forbidden.is_empty() {
        return Ok(Restart::Forbidden(outcome.forbidden));
    }
    match outcome.failed.into_iter().next() {
        Some((target, err)) => Err(Error::Restart {
            target: format!("{:?}/{}", target.kind, target.name),
            source: Box::new(err),
        }),
        None => Ok(Restart::Restarted),
    }
}

/// The conditions an outcome implies (pure).
pub fn desired_conditions(credential: &Credential, outcome: &Outcome) -> Vec<DesiredCondition> {
    let name = credential.secret_name();
    let not_ready = |reason: &str, message: String| {
        vec![DesiredCondition::new(
            condition::READY,
            ConditionStatus::False,
            reason,
            message,
        )]
    };
    let (plan, restart) = match outcome {
        Outcome::Current { plan, restart } => (plan, restart),
        Outcome::Refused(Refusal::Conflict(msg)) => {
            let mut conds = not_ready("Conflict", msg.clone());
            conds.push(DesiredCondition::new(
                condition::CONFLICT,
                ConditionStatus::True,
                "SecretNotManaged",
                msg.clone(),
            ));
            return conds;
        }
        Outcome::Refused(Refusal::InvalidSpec(msg)) => {
            return not_ready("InvalidSpec", msg.clone());
        }
        Outcome::Refused(Refusal::NeedsControlPlane(t)) => {
            return not_ready(
                "ControlPlaneNotLinked",
                format!(
                    "type {} is issued by the control plane, and the Tenant is not linked to it; see the Tenant's conditions (kubectl get tenant tenant -o yaml)",
                    t.as_str()
                ),
            );
        }
        Outcome::Refused(Refusal::Entropy(err)) => {
            return not_ready(
                "EntropyUnavailable",
                format!("the operating system's random number generator failed: {err}"),
            );
        }
        Outcome::Forbidden { action, rule, fix } => {
            return not_ready(
                "Forbidden",
                format!(
                    "the Role does not allow {action}: it needs the rule {rule}; grant it with {fix}"
                ),
            );
        }
        Outcome::NotIssued {
            reason,
            problem,
            kept,
        } => {
            // The current value (if any) stays in the Secret; only the refresh failed.
            return not_ready(
                reason,
                match kept {
                    true => format!(
                        "the control plane did not issue a new value: {problem}; Secret {name} keeps the current one until it expires"
                    ),
                    false => format!("the control plane did not issue a value: {problem}"),
                },
            );
        }
    };
    let key = plan.journal.key_id.clone().unwrap_or_default();
    let permitted = |message: &str| {
        DesiredCondition::new(
            condition::RESTART_NOT_PERMITTED,
            ConditionStatus::False,
            "Permitted",
            message,
        )
    };
    let mut conds = vec![
        DesiredCondition::new(
            condition::READY,
            ConditionStatus::True,
            "Ready",
            format!("Secret {name} holds the current value (key id {key})"),
        ),
        DesiredCondition::new(
            condition::CONFLICT,
            ConditionStatus::False,
            "Managed",
            format!("Secret {name} is managed by Bulkhead"),
        ),
        match restart {
            Restart::NoTargets => permitted("no restartOnRotation targets"),
            Restart::Current => permitted("every target runs with the current value"),
            Restart::Restarted => permitted("every target was restarted"),
            Restart::Forbidden(targets) => DesiredCondition::new(
                condition::RESTART_NOT_PERMITTED,
                ConditionStatus::True,
                "Forbidden",
                restart::forbidden_message(targets),
            ),
        },
    ];
    if let Some(change) = plan.change {
        let at = plan
            .journal
            .rotated_at
            .map(|t| t.to_string())
            .unwrap_or_default();
        conds.push(DesiredCondition::new(
            condition::ROTATED,
            ConditionStatus::True,
            change.reason(),
            format!("{} at {at}", change.describe()),
        ));
    }
    conds
}

/// The status an outcome implies, merged with the current conditions; the transitions for
/// Events. Only a current Secret moves the rotation fields; any other outcome keeps them.
pub fn desired_status(
    credential: &Credential,
    outcome: &Outcome,
    now: Timestamp,
) -> (CredentialStatus, Vec<Transition>) {
    let current = credential.status.clone().unwrap_or_default();
    let generation = credential.metadata.generation;
    let conds = desired_conditions(credential, outcome);
    let (conditions, transitions) = conditions::merge(&current.conditions, &conds, generation, now);
    let status = match outcome {
        Outcome::Current { plan, .. } => CredentialStatus {
            observed_generation: generation,
            conditions,
            secret_name: Some(credential.secret_name()),
            last_rotation_time: plan.journal.rotated_at.map(|t| t.to_string()),
            next_rotation_time: plan.next_rotation.map(|t| t.to_string()),
            key_id: plan.journal.key_id.clone(),
        },
        _ => CredentialStatus {
            observed_generation: generation,
            conditions,
            secret_name: Some(credential.secret_name()),
            ..current
        },
    };
    (status, transitions)
}

/// When to look again after an outcome that was not an error.
fn next_action(outcome: &Outcome, now: Timestamp, recheck: Duration) -> Result<Action> {
    Ok(match outcome {
        Outcome::Current { plan, .. } => {
            Action::requeue(requeue_after(plan.next_rotation, now, recheck))
        }
        // Waits for the user to change the spec.
        Outcome::Refused(Refusal::InvalidSpec(_)) => Action::await_change(),
        // The link coming up triggers a reconcile; this requeue is only a safety net.
        Outcome::Refused(Refusal::NeedsControlPlane(_)) => Action::requeue(NOT_LINKED_RETRY),
        Outcome::Refused(Refusal::Entropy(source)) => {
            return Err(Error::Entropy {
                doing: "generating a Secret value".to_owned(),
                source: *source,
            });
        }
        // Re-check now and then: the foreign Secret may be removed. Never a hot loop.
        Outcome::Refused(Refusal::Conflict(_))
        | Outcome::Forbidden { .. }
        | Outcome::NotIssued { .. } => Action::requeue(recheck),
    })
}

/// The one place a Credential's status is written: only when it changed (a steady state
/// writes nothing); an Event per actionable transition; the readiness and next-rotation
/// metrics.
async fn report(
    ctx: &Context,
    credential: &Credential,
    outcome: &Outcome,
    now: Timestamp,
) -> Result<()> {
    let (status, transitions) = desired_status(credential, outcome, now);
    let labels = CredentialLabels {
        credential: credential.name_any(),
    };
    // For the chart's CredentialNotReady alert: the readiness this status reports.
    let ready = matches!(outcome, Outcome::Current { .. });
    ctx.metrics
        .credential_ready
        .get_or_create(&labels)
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
            .doing_as(
                format!(
                    "patch credentials/{}/status in {}",
                    credential.name_any(),
                    ctx.namespace
                ),
                "credentials/status: patch",
                SECRETS_FIX,
            )?;
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
    if let Outcome::Current {
        plan: Plan {
            next_rotation: Some(next),
            ..
        },
        ..
    } = outcome
    {
        ctx.metrics
            .next_rotation
            .get_or_create(&labels)
            .set(next.as_millisecond() as f64 / 1000.0);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ConditionSet;
    use crate::api::credential::{CredentialType, RestartKind};
    use crate::resources::journal::Journal;
    use crate::resources::plan::Change;

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

    fn db() -> Credential {
        let mut c = crate::api::credential("db")
            .secret_name("db-password")
            .every("24h")
            .restart(RestartKind::Deployment, "api")
            .build();
        c.metadata.generation = Some(3);
        c
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn current(change: Option<Change>, restart: Restart) -> Outcome {
        Outcome::Current {
            plan: Plan {
                data: Default::default(),
                journal: Journal {
                    rotated_at: Some(at(0)),
                    key_id: Some("k1".into()),
                    ..Journal::default()
                },
                change,
                next_rotation: Some(at(86_400)),
            },
            restart,
        }
    }

    /// (type, status, reason, message) of each desired condition.
    fn conditions(outcome: &Outcome) -> Vec<(&'static str, &'static str, String, String)> {
        desired_conditions(&db(), outcome)
            .into_iter()
            .map(|c| (c.type_, c.status.as_str(), c.reason, c.message))
            .collect()
    }

    #[test]
    fn a_current_secret_is_ready_managed_and_says_where_the_targets_stand() {
        let conds = conditions(&current(None, Restart::Current));
        let types: Vec<_> = conds.iter().map(|c| (c.0, c.1, c.2.as_str())).collect();
        assert_eq!(
            types,
            [
                ("Ready", "True", "Ready"),
                ("Conflict", "False", "Managed"),
                ("RestartNotPermitted", "False", "Permitted"),
            ],
            "no change: no Rotated condition is asserted anew"
        );
        assert!(conds[0].3.contains("db-password") && conds[0].3.contains("k1"));
        let forbidden = Restart::Forbidden(vec![RestartTarget {
            kind: RestartKind::Deployment,
            name: "api".into(),
        }]);
        let conds = conditions(&current(None, forbidden));
        assert_eq!((conds[2].1, conds[2].2.as_str()), ("True", "Forbidden"));
        assert!(conds[2].3.contains("rbac.restartTargets"), "{}", conds[2].3);
        assert!(
            conditions(&current(None, Restart::NoTargets))[2]
                .3
                .contains("no restartOnRotation")
        );
    }

    #[test]
    fn each_change_has_one_reason_in_the_rotated_condition_and_the_event() {
        for (change, reason) in [
            (Change::Created, "Created"),
            (Change::Adopted, "Adopted"),
            (Change::Repaired, "Repaired"),
            (Change::Scheduled, "Rotated"),
            (Change::Requested, "Rotated"),
            (Change::SpecChanged, "Rotated"),
        ] {
            assert_eq!(change.reason(), reason);
            let conds = conditions(&current(Some(change), Restart::Restarted));
            let rotated = conds.iter().find(|c| c.0 == "Rotated").unwrap();
            assert_eq!((rotated.1, rotated.2.as_str()), ("True", reason));
            assert!(rotated.3.contains(change.describe()), "{}", rotated.3);
        }
        assert_eq!(Change::Repaired.event_type(), EventType::Warning);
        assert_eq!(Change::Scheduled.event_type(), EventType::Normal);
    }

    #[test]
    fn a_refusal_is_not_ready_with_a_reason_a_user_can_act_on() {
        let conflict = conditions(&Outcome::Refused(Refusal::Conflict("taken".into())));
        let summary: Vec<_> = conflict.iter().map(|c| (c.0, c.1, c.2.as_str())).collect();
        assert_eq!(
            summary,
            [
                ("Ready", "False", "Conflict"),
                ("Conflict", "True", "SecretNotManaged"),
            ]
        );
        for (refusal, reason, says) in [
            (
                Refusal::InvalidSpec("spec.x".into()),
                "InvalidSpec",
                "spec.x",
            ),
            (
                Refusal::NeedsControlPlane(CredentialType::ControlPlaneToken),
                "ControlPlaneNotLinked",
                "kubectl get tenant",
            ),
            (
                Refusal::Entropy(getrandom::Error::UNSUPPORTED),
                "EntropyUnavailable",
                "random number generator failed",
            ),
        ] {
            let conds = conditions(&Outcome::Refused(refusal));
            assert_eq!(conds.len(), 1);
            assert_eq!(
                (conds[0].0, conds[0].1, conds[0].2.as_str()),
                ("Ready", "False", reason)
            );
            assert!(conds[0].3.contains(says), "{}", conds[0].3);
        }
    }

    #[test]
    fn failed_calls_name_the_missing_rule_or_what_the_secret_keeps() {
        let forbidden = conditions(&Outcome::Forbidden {
            action: "get secrets/db-password".into(),
            rule: "secrets: get, create, patch".into(),
            fix: "helm upgrade".into(),
        });
        assert_eq!(forbidden[0].2, "Forbidden");
        assert!(
            forbidden[0].3.contains("secrets: get, create, patch")
                && forbidden[0].3.contains("helm upgrade")
        );
        let issued = |kept| {
            conditions(&Outcome::NotIssued {
                reason: "Unavailable",
                problem: "503".into(),
                kept,
            })
            .remove(0)
        };
        let (_, status, reason, message) = issued(true);
        assert_eq!((status, reason.as_str()), ("False", "Unavailable"));
        assert!(message.contains("keeps the current one"), "{message}");
        assert!(!issued(false).3.contains("keeps"));
    }

    #[test]
    fn only_a_current_secret_moves_the_rotation_fields_and_a_steady_state_is_identical() {
        let mut c = db();
        let (status, transitions) =
            desired_status(&c, &current(Some(Change::Created), Restart::Current), at(0));
        assert_eq!(status.observed_generation, Some(3));
        assert_eq!(status.key_id.as_deref(), Some("k1"));
        assert_eq!(status.last_rotation_time, Some(at(0).to_string()));
        assert_eq!(status.next_rotation_time, Some(at(86_400).to_string()));
        assert_eq!(transitions.len(), 4, "{transitions:?}");
        c.status = Some(status.clone());
        // Nothing changed an hour later: the same status, no transition, so no write.
        let (again, transitions) = desired_status(
            &c,
            &current(Some(Change::Created), Restart::Current),
            at(3600),
        );
        assert_eq!(again, status);
        assert!(transitions.is_empty());
        // A refusal keeps what the last rotation recorded.
        let (refused, _) = desired_status(
            &c,
            &Outcome::Refused(Refusal::InvalidSpec("spec.random.length".into())),
            at(7200),
        );
        assert_eq!(refused.key_id.as_deref(), Some("k1"));
        assert_eq!(refused.next_rotation_time, status.next_rotation_time);
        assert!(!refused.conditions.is_true("Ready"));
    }

    #[test]
    fn each_outcome_requeues_as_it_should() {
        let recheck = Duration::from_secs(600);
        let now = at(86_000);
        assert_eq!(
            next_action(&current(None, Restart::Current), now, recheck).unwrap(),
            Action::requeue(Duration::from_millis(400_050))
        );
        let refused = |r| next_action(&Outcome::Refused(r), now, recheck);
        assert_eq!(
            refused(Refusal::Conflict(String::new())).unwrap(),
            Action::requeue(recheck)
        );
        assert_eq!(
            refused(Refusal::InvalidSpec(String::new())).unwrap(),
            Action::await_change()
        );
        assert_eq!(
            refused(Refusal::NeedsControlPlane(
                CredentialType::RegistryCredentials
            ))
            .unwrap(),
            Action::requeue(NOT_LINKED_RETRY)
        );
        assert!(matches!(
            refused(Refusal::Entropy(getrandom::Error::UNSUPPORTED)),
            Err(Error::Entropy { .. })
        ));
    }
}
