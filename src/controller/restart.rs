//! Restart-on-rotation: patch each listed workload's pod template with the new key id, so its
//! pods roll onto the new value. A 403 means the chart's Role does not list the workload.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use kube::api::{Patch, PatchParams};
use serde_json::json;

use super::{Context, FIELD_MANAGER};
use crate::api::credential::{RestartKind, RestartTarget};
use crate::error::is_status;
use crate::resources::RESTARTED_AT;

/// What happened to the restart targets.
#[derive(Debug, Default)]
pub struct RestartOutcome {
    /// Targets the Role does not allow patching.
    pub forbidden: Vec<RestartTarget>,
    /// Targets that do not exist.
    pub missing: Vec<RestartTarget>,
    /// Other failures (retried later).
    pub failed: Vec<(RestartTarget, kube::Error)>,
}

impl RestartOutcome {
    /// Whether every restart that can ever succeed did.
    pub fn settled(&self) -> bool {
        self.forbidden.is_empty() && self.failed.is_empty()
    }
}

/// The condition message for forbidden targets: the rule and the chart value that grants it.
pub fn forbidden_message(forbidden: &[RestartTarget]) -> String {
    let names: Vec<String> = forbidden
        .iter()
        .map(|t| format!("{:?}/{}", t.kind, t.name))
        .collect();
    let values: Vec<String> = forbidden
        .iter()
        .map(|t| format!("{{kind: {:?}, name: {}}}", t.kind, t.name))
        .collect();
    format!(
        "the Role does not allow patch on {}; add {} to the chart value rbac.restartTargets",
        names.join(", "),
        values.join(", ")
    )
}

/// Whether `--restart-target` (the list the Role was rendered from) grants this target; without
/// the flag it is unknown, and the API answers.
fn permitted(ctx: &Context, target: &RestartTarget) -> bool {
    ctx.settings
        .permitted_restarts
        .as_ref()
        .is_none_or(|granted| {
            granted
                .iter()
                .any(|(kind, name)| *kind == target.kind && *name == target.name)
        })
}

/// The targets `--restart-target` does not grant.
pub fn not_permitted(ctx: &Context, targets: &[RestartTarget]) -> Vec<RestartTarget> {
    targets
        .iter()
        .filter(|t| !permitted(ctx, t))
        .cloned()
        .collect()
}

/// Patch every target with `restarted-at = stamp`.
pub async fn restart_targets(
    ctx: &Context,
    targets: &[RestartTarget],
    stamp: &str,
) -> RestartOutcome {
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: stamp}}}}});
    // A merge patch never creates a missing workload (server-side apply would try to).
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    let mut outcome = RestartOutcome::default();
    for target in targets {
        if !permitted(ctx, target) {
            // The Role is built from the same list: the request could only be refused.
            outcome.forbidden.push(target.clone());
            continue;
        }
        let result = match target.kind {
            RestartKind::Deployment => ctx
                .api::<Deployment>()
                .patch(&target.name, &params, &Patch::Merge(&patch))
                .await
                .map(drop),
            RestartKind::StatefulSet => ctx
                .api::<StatefulSet>()
                .patch(&target.name, &params, &Patch::Merge(&patch))
                .await
                .map(drop),
            RestartKind::DaemonSet => ctx
                .api::<DaemonSet>()
                .patch(&target.name, &params, &Patch::Merge(&patch))
                .await
                .map(drop),
        };
        match result {
            Ok(()) => {
                tracing::info!(kind = ?target.kind, name = %target.name, "restarted after rotation")
            }
            Err(err) if is_status(&err, 403) => outcome.forbidden.push(target.clone()),
            Err(err) if is_status(&err, 404) => outcome.missing.push(target.clone()),
            Err(err) => outcome.failed.push((target.clone(), err)),
        }
    }
    outcome
}
