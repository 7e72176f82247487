//! Start-up preflight, also run by `bulkhead check`: are the CRDs served, and does the Role
//! give exactly what this version needs?
//!
//! Needs no cluster rights: the CRD check is a `list` with `limit=1` of each kind in the
//! namespace, and the rights check is a `SelfSubjectRulesReview`, allowed to every user. A CRD
//! bundle older than the binary is found by a server-side dry-run status apply on an existing
//! object: fields the served schema would prune come back missing.

use std::fmt::Write as _;

use k8s_openapi::api::authorization::v1::{SelfSubjectRulesReview, SelfSubjectRulesReviewSpec};
use kube::api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::Request;
use kube::{Api, Client, Resource};

use crate::api::credential::CredentialStatus;
use crate::api::tenant::{CredentialCounts, IdentityStatus, TenantStatus};
use crate::api::{Credential, Tenant};
use crate::error::{describe_kube, is_status, is_unreachable};
use crate::rbac::{self, GrantedRule, RightsReport, RoleRule};

/// The outcome of the preflight.
#[derive(Clone, Debug, Default)]
pub struct Preflight {
    /// CRDs that are not served, with the reason.
    pub crd_problems: Vec<String>,
    /// Rights compared with need; `None` when the review itself failed.
    pub rights: Option<RightsReport>,
    /// The review could not be made.
    pub review_error: Option<String>,
    /// The API server could not be reached or refused our credentials: nothing was checked.
    pub cannot_check: Option<String>,
}

impl Preflight {
    /// Ready to reconcile: CRDs served and no needed right missing.
    pub fn is_ok(&self) -> bool {
        self.cannot_check.is_none()
            && self.crd_problems.is_empty()
            && self.review_error.is_none()
            && self.rights.as_ref().is_some_and(RightsReport::is_ok)
    }

    /// One line for `/readyz` and logs.
    pub fn summary(&self) -> String {
        if let Some(why) = &self.cannot_check {
            return why.clone();
        }
        let mut parts = self.crd_problems.clone();
        if let Some(err) = &self.review_error {
            parts.push(err.clone());
        }
        if let Some(rights) = &self.rights {
            for (grant, value) in &rights.missing {
                parts.push(format!("missing right: {grant} (chart value: {value})"));
            }
        }
        if parts.is_empty() {
            "ok".to_owned()
        } else {
            parts.join("; ")
        }
    }

    /// A multi-line report for `bulkhead check`.
    pub fn report(&self, namespace: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "namespace {namespace}:");
        if let Some(why) = &self.cannot_check {
            let _ = writeln!(out, "  FAIL  {why}");
            return out;
        }
        if self.crd_problems.is_empty() {
            let _ = writeln!(
                out,
                "  ok    CRDs tenants.bulkhead.dev and credentials.bulkhead.dev are served"
            );
        }
        for p in &self.crd_problems {
            let _ = writeln!(out, "  FAIL  {p}");
        }
        if let Some(err) = &self.review_error {
            let _ = writeln!(out, "  FAIL  {err}");
        }
        if let Some(rights) = &self.rights {
            if rights.missing.is_empty() {
                let _ = writeln!(out, "  ok    every needed right is granted");
            }
            for (grant, value) in &rights.missing {
                let _ = writeln!(
                    out,
                    "  FAIL  missing right: {grant} (granted by chart value: {value})"
                );
            }
            for extra in &rights.excess {
                let _ = writeln!(out, "  WARN  granted beyond need: {extra}");
            }
            if rights.incomplete {
                let _ = writeln!(
                    out,
                    "  WARN  the API server could not list every rule (another authorizer is in use); the rights check may be incomplete"
                );
            }
        }
        out
    }
}

/// A kind whose status this version writes, with a probe that sets every status field.
pub trait StatusProbe:
    Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + serde::Serialize
{
    /// A status with every field this version writes set (conditions aside: they are a
    /// standard schema that has not changed).
    fn full_status() -> serde_json::Value;
}

impl StatusProbe for Tenant {
    fn full_status() -> serde_json::Value {
        serde_json::to_value(TenantStatus {
            observed_generation: Some(1),
            conditions: Vec::new(),
            tenant_id: Some("probe".into()),
            endpoint: Some("https://probe.invalid".into()),
            identity: Some(IdentityStatus {
                subject: "CN=probe".into(),
                not_after: "2000-01-01T00:00:00Z".into(),
                fingerprint: "00".into(),
            }),
            settings_revision: Some("probe".into()),
            settings_hash: Some("probe".into()),
            last_sync_time: Some("2000-01-01T00:00:00Z".into()),
            credentials: Some(CredentialCounts { total: 0, ready: 0 }),
        })
        .unwrap_or_default()
    }
}

impl StatusProbe for Credential {
    fn full_status() -> serde_json::Value {
        serde_json::to_value(CredentialStatus {
            observed_generation: Some(1),
            conditions: Vec::new(),
            secret_name: Some("probe".into()),
            last_rotation_time: Some("2000-01-01T00:00:00Z".into()),
            next_rotation_time: Some("2000-01-01T00:00:00Z".into()),
            key_id: Some("probe".into()),
        })
        .unwrap_or_default()
    }
}

/// Paths (`status.a.b`) set in `sent` but absent from `returned`: what the server pruned.
pub fn pruned_paths(
    prefix: &str,
    sent: &serde_json::Value,
    returned: &serde_json::Value,
) -> Vec<String> {
    let mut out = Vec::new();
    if let (Some(sent), returned) = (sent.as_object(), returned.as_object()) {
        for (key, value) in sent {
            let path = format!("{prefix}.{key}");
            match returned.and_then(|r| r.get(key)) {
                None | Some(serde_json::Value::Null) => out.push(path),
                Some(back) => out.extend(pruned_paths(&path, value, back)),
            }
        }
    }
    out
}

/// Check that a kind is served by listing one object of it in the namespace, and that its
/// schema keeps every status field this version writes.
/// `Err`: nothing could be checked (see [`cannot_check`]).
async fn check_served<K: StatusProbe>(
    client: &Client,
    namespace: &str,
) -> Result<Option<String>, String> {
    // Untyped: an object this binary cannot decode (written under a newer CRD bundle) must
    // not fail the check; only its name and its status are read.
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &ApiResource::erase::<K>(&()));
    let plural = K::plural(&());
    let group = K::group(&());
    let existing = match api.list(&ListParams::default().limit(1)).await {
        Ok(list) => list.items.into_iter().next(),
        Err(err) if cannot_check(&err).is_some() => {
            return Err(cannot_check(&err).unwrap_or_default());
        }
        Err(err) if is_status(&err, 404) => {
            return Ok(Some(format!(
                "CRD {plural}.{group} is not served: a cluster admin must install it with `kubectl apply --server-side -f crds-cluster/`"
            )));
        }
        Err(err) if is_status(&err, 403) => {
            return Ok(Some(format!(
                "cannot list {plural}.{group} in {namespace}: the Role lacks `list` on {plural} (install the chart's Role)"
            )));
        }
        Err(err) => {
            return Ok(Some(format!(
                "cannot list {plural}.{group}: {}",
                describe_kube(&err)
            )));
        }
    };
    // Without an object there is nothing to dry-run against (creating one needs rights the
    // operator does not have); the check runs again on the next start.
    let Some(name) = existing.as_ref().and_then(|o| o.meta().name.clone()) else {
        return Ok(None);
    };
    let sent = K::full_status();
    let probe = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": sent,
    });
    let params = PatchParams::apply("bulkhead-preflight").force().dry_run();
    match api
        .patch_status(&name, &params, &Patch::Apply(&probe))
        .await
    {
        Ok(returned) => {
            let status = returned.data.get("status").cloned().unwrap_or_default();
            let pruned = pruned_paths("status", &sent, &status);
            Ok((!pruned.is_empty()).then(|| format!(
                "CRD {plural}.{group} is older than this binary (version {}): it would drop {}; a cluster admin must apply crds-cluster/ of this version with `kubectl apply --server-side -f crds-cluster/`",
                env!("CARGO_PKG_VERSION"),
                pruned.join(", ")
            )))
        }
        // The rights check reports a missing `patch` on the status; other failures of this
        // probe must not block the operator on their own.
        Err(err) => {
            tracing::warn!(error = %describe_kube(&err), kind = %K::kind(&()), "the dry-run that detects an outdated CRD failed; skipping that check");
            Ok(None)
        }
    }
}

/// Ask the API server which rules apply to us in the namespace.
pub async fn review_rules(
    client: &Client,
    namespace: &str,
) -> Result<(Vec<GrantedRule>, bool), kube::Error> {
    let review = SelfSubjectRulesReview {
        spec: SelfSubjectRulesReviewSpec {
            namespace: Some(namespace.to_owned()),
        },
        ..SelfSubjectRulesReview::default()
    };
    // A self-review is one of the two cluster-level calls Bulkhead makes; it reveals only the
    // caller's own rights and is allowed to every authenticated user.
    let request = Request::new("/apis/authorization.k8s.io/v1/selfsubjectrulesreviews")
        .create(
            &PostParams::default(),
            serde_json::to_vec(&review).map_err(kube::Error::SerdeError)?,
        )
        .map_err(kube::Error::BuildRequest)?;
    let answer: SelfSubjectRulesReview = client.request(request).await?;
    let status = answer.status.unwrap_or_default();
    let rules = status
        .resource_rules
        .into_iter()
        .map(|r| GrantedRule {
            api_groups: r.api_groups.unwrap_or_default(),
            resources: r.resources.unwrap_or_default(),
            resource_names: r.resource_names.unwrap_or_default(),
            verbs: r.verbs,
        })
        .collect();
    Ok((rules, status.incomplete))
}

/// Run every preflight check.
pub async fn run(client: &Client, namespace: &str, required: &[RoleRule]) -> Preflight {
    let mut preflight = Preflight::default();
    // The checks are independent: asked at once, they cost one round trip of start-up, not
    // three (or four with a dry-run).
    let (tenants, credentials, review) = futures::join!(
        check_served::<Tenant>(client, namespace),
        check_served::<Credential>(client, namespace),
        review_rules(client, namespace),
    );
    // One line when the server cannot be asked at all, not one per check.
    for problem in [tenants, credentials] {
        match problem {
            Ok(problem) => preflight.crd_problems.extend(problem),
            Err(why) => {
                preflight.cannot_check = Some(why);
                return preflight;
            }
        }
    }
    match review {
        Ok((granted, incomplete)) => {
            preflight.rights = Some(rbac::compare(required, &granted, incomplete))
        }
        Err(err) => match cannot_check(&err) {
            Some(why) => preflight.cannot_check = Some(why),
            None => {
                preflight.review_error = Some(format!(
                    "SelfSubjectRulesReview failed: {}",
                    describe_kube(&err)
                ))
            }
        },
    }
    preflight
}

/// Why nothing can be checked with this client: the API server is unreachable, or it refuses
/// the credentials (401). `None` for an answer that is about one check.
pub fn cannot_check(err: &kube::Error) -> Option<String> {
    if is_unreachable(err) {
        Some(format!(
            "cannot reach the Kubernetes API server: {}",
            describe_kube(err)
        ))
    } else if is_status(err, 401) {
        Some(format!(
            "the Kubernetes API server refused the credentials ({}); check the user and token of the kubeconfig context, or the ServiceAccount token",
            describe_kube(err)
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;
    use serde_json::json;

    #[test]
    fn pruned_fields_are_named_by_path() {
        let sent = json!({"a": 1, "b": {"c": 2, "d": 3}, "e": "x"});
        let returned = json!({"a": 1, "b": {"c": 2}, "e": null});
        assert_eq!(
            pruned_paths("status", &sent, &returned),
            ["status.b.d", "status.e"]
        );
        assert!(pruned_paths("status", &sent, &sent).is_empty());
    }

    /// Every status property of the served schema, recursively (conditions aside).
    fn schema_paths(prefix: &str, schema: &serde_json::Value, out: &mut Vec<String>) {
        for (key, property) in schema["properties"].as_object().into_iter().flatten() {
            if key == "conditions" {
                continue;
            }
            let path = format!("{prefix}.{key}");
            if property["properties"].is_object() {
                schema_paths(&path, property, out);
            } else {
                out.push(path);
            }
        }
    }

    fn probe_paths(prefix: &str, value: &serde_json::Value, out: &mut Vec<String>) {
        for (key, v) in value.as_object().into_iter().flatten() {
            let path = format!("{prefix}.{key}");
            if v.is_object() {
                probe_paths(&path, v, out);
            } else {
                out.push(path);
            }
        }
    }

    fn covers<K: StatusProbe + CustomResourceExt>() {
        let crd = serde_json::to_value(K::crd()).unwrap();
        let status =
            &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"];
        let (mut want, mut have) = (Vec::new(), Vec::new());
        schema_paths("status", status, &mut want);
        probe_paths("status", &K::full_status(), &mut have);
        want.sort();
        have.sort();
        assert_eq!(
            have, want,
            "the probe must set every status field the schema has"
        );
    }

    #[test]
    fn the_probe_sets_every_status_field_this_version_writes() {
        covers::<Tenant>();
        covers::<Credential>();
    }
}
