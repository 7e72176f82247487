//! Start-up preflight, also run by `bulkhead check`: are the CRDs served, and does the Role
//! give exactly what this version needs?
//!
//! Needs no cluster rights: the CRD check is a `list` with `limit=1` of each kind in the
//! namespace, and the rights check is a `SelfSubjectRulesReview`, allowed to every user.

use std::fmt::Write as _;

use k8s_openapi::api::authorization::v1::{SelfSubjectRulesReview, SelfSubjectRulesReviewSpec};
use kube::api::{ListParams, PostParams};
use kube::core::Request;
use kube::{Api, Client, Resource};

use crate::api::{Credential, Tenant};
use crate::error::is_status;
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
}

impl Preflight {
    /// Ready to reconcile: CRDs served and no needed right missing.
    pub fn is_ok(&self) -> bool {
        self.crd_problems.is_empty()
            && self.review_error.is_none()
            && self.rights.as_ref().is_some_and(RightsReport::is_ok)
    }

    /// One line for `/readyz` and logs.
    pub fn summary(&self) -> String {
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

/// Check that a kind is served by listing one object of it in the namespace.
async fn check_served<K>(client: &Client, namespace: &str) -> Option<String>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let plural = K::plural(&());
    let group = K::group(&());
    match api.list(&ListParams::default().limit(1)).await {
        Ok(_) => None,
        Err(err) if is_status(&err, 404) => Some(format!(
            "CRD {plural}.{group} is not served: a cluster admin must install it with `kubectl apply --server-side -f crds-cluster/`"
        )),
        Err(err) if is_status(&err, 403) => Some(format!(
            "cannot list {plural}.{group} in {namespace}: the Role lacks `list` on {plural} (install the chart's Role)"
        )),
        Err(err) => Some(format!("cannot list {plural}.{group}: {err}")),
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
    preflight
        .crd_problems
        .extend(check_served::<Tenant>(client, namespace).await);
    preflight
        .crd_problems
        .extend(check_served::<Credential>(client, namespace).await);
    match review_rules(client, namespace).await {
        Ok((granted, incomplete)) => {
            preflight.rights = Some(rbac::compare(required, &granted, incomplete))
        }
        Err(err) => preflight.review_error = Some(format!("SelfSubjectRulesReview failed: {err}")),
    }
    preflight
}
