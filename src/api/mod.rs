//! The `bulkhead.dev/v1alpha1` API: the `Tenant` singleton and `Credential`.
//!
//! Validation lives in the CRD schema (OpenAPI + CEL) because tenant installs have no webhooks;
//! defaults live in the schema for the same reason. The Rust types are the single source of the
//! generated CRD bundle (`bulkhead crds`).

pub mod builder;
pub mod conditions;
pub mod credential;
pub mod duration;
pub mod guard;
pub mod tenant;

pub use builder::{CredentialBuilder, credential};
pub use conditions::{ConditionSet, ConditionStatus};
pub use credential::{Credential, CredentialSpec, CredentialStatus, CredentialType};
pub use guard::{Guarded, Undecodable};
pub use tenant::{Tenant, TenantSpec, TenantStatus};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// API group of every Bulkhead kind.
pub const GROUP: &str = "bulkhead.dev";
/// The one served version.
pub const VERSION: &str = "v1alpha1";
/// The only accepted name of a `Tenant`: one per namespace.
pub const TENANT_NAME: &str = "tenant";

/// Every CRD this version of Bulkhead serves, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![Tenant::crd(), Credential::crd()]
}

/// Schema for a free-form JSON object (`x-kubernetes-preserve-unknown-fields`).
pub(crate) fn free_form_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// Schema for `status.conditions`: metav1.Condition list keyed by `type`.
pub(crate) fn conditions_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "description": "Latest observations of the object's state (metav1.Condition semantics).",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "required": ["type", "status", "reason", "message", "lastTransitionTime"],
            "properties": {
                "type": {"type": "string", "description": "Type of condition in CamelCase."},
                "status": {"type": "string", "enum": ["True", "False", "Unknown"], "description": "Status of the condition."},
                "reason": {"type": "string", "description": "Machine-readable CamelCase reason for the last transition."},
                "message": {"type": "string", "maxLength": 32768, "description": "Human-readable details about the last transition."},
                "lastTransitionTime": {"type": "string", "format": "date-time", "description": "When the condition last changed status."},
                "observedGeneration": {"type": "integer", "format": "int64", "description": "metadata.generation the condition was computed from."}
            }
        }
    })
}

/// ClusterRoles that aggregate into the built-in `edit` and `view` roles, so namespace editors
/// may manage Tenants and Credentials and viewers may read them.
pub fn aggregated_cluster_roles() -> Vec<k8s_openapi::api::rbac::v1::ClusterRole> {
    use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
    use kube::api::ObjectMeta;
    let role = |name: &str, aggregate_to: &str, verbs: &[&str]| ClusterRole {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(
                [
                    (
                        format!("rbac.authorization.k8s.io/{aggregate_to}"),
                        "true".to_owned(),
                    ),
                    ("app.kubernetes.io/name".to_owned(), "bulkhead".to_owned()),
                ]
                .into_iter()
                .collect(),
            ),
            ..ObjectMeta::default()
        },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![GROUP.to_owned()]),
            resources: Some(vec!["tenants".to_owned(), "credentials".to_owned()]),
            verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
            ..PolicyRule::default()
        }]),
        ..ClusterRole::default()
    };
    vec![
        role(
            "bulkhead-edit",
            "aggregate-to-edit",
            &[
                "get",
                "list",
                "watch",
                "create",
                "update",
                "patch",
                "delete",
                "deletecollection",
            ],
        ),
        role(
            "bulkhead-view",
            "aggregate-to-view",
            &["get", "list", "watch"],
        ),
    ]
}
