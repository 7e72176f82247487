//! `Tenant`: the namespace's tenancy record, a singleton named `tenant`.
//!
//! The singleton rule is enforced at admission by CEL on `metadata.name`, so a second Tenant in
//! the namespace is refused by the API server rather than fought over by controllers.

// kube-derive's repeated `printcolumn(type_ = ...)` trips this lint; the attributes differ.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Condition types a Tenant reports.
pub mod condition {
    /// Everything this instance is responsible for in the namespace is in order.
    pub const READY: &str = "Ready";
    /// The mTLS identity Secret holds a usable certificate (control-plane tenants only).
    pub const IDENTITY_VALID: &str = "IdentityValid";
    /// The last call to the control plane succeeded (control-plane tenants only).
    pub const CONTROL_PLANE_CONNECTED: &str = "ControlPlaneConnected";
    /// `spec.settings` has been pushed to the control plane (control-plane tenants only).
    pub const SETTINGS_SYNCED: &str = "SettingsSynced";
}

/// The namespace's tenancy record and, optionally, its link to the platform's control plane.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "bulkhead.dev",
    version = "v1alpha1",
    kind = "Tenant",
    doc = "The tenancy record of one namespace (a singleton named tenant) and its optional link to the platform control plane.",
    namespaced,
    status = "TenantStatus",
    shortname = "bht",
    category = "bulkhead",
    derive = "PartialEq",
    derive = "Default",
    validation = Rule::new("self.metadata.name == 'tenant'").message("a namespace has exactly one Tenant and it must be named 'tenant'; rename metadata.name to tenant"),
    printcolumn(name = "Display Name", type_ = "string", json_path = ".spec.displayName"),
    printcolumn(name = "Tenant ID", type_ = "string", json_path = ".status.tenantId"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Credentials", type_ = "integer", json_path = ".status.credentials.total", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct TenantSpec {
    /// Human-readable name of the team that owns this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub display_name: Option<String>,

    /// Email addresses to contact about this tenant (at most 20, each at most 254 characters).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    // Both bounds keep the CEL rule's estimated cost within the API server's budget: without
    // maxLength on the items a real server rejects the CRD (the e2e suite found it).
    #[schemars(length(max = 20), inner(length(max = 254)))]
    #[x_kube(validation = Rule::new("self.all(c, c.matches('^[^@\\\\s]+@[^@\\\\s]+\\\\.[^@\\\\s]+$'))").message("every entry of spec.contacts must be an email address such as team-a@example.com"))]
    pub contacts: Vec<String>,

    /// Link to the platform's control plane. Without it the tenant is local-only: credentials of
    /// type Random and KeySet work, ControlPlaneToken and RegistryCredentials do not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<ControlPlaneSpec>,

    /// Arbitrary JSON object pushed to the control plane as this tenant's settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::free_form_object")]
    pub settings: Option<serde_json::Value>,
}

/// How to reach the control plane and prove who this tenant is.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlaneSpec {
    /// Name of the `kubernetes.io/tls` Secret in this namespace holding `tls.crt`, `tls.key` and
    /// `ca.crt`. The operator's Role can read only the Secret named at install
    /// (chart value `identity.secretName`), so the two must agree.
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$') && size(self) <= 253").message("spec.controlPlane.identitySecretName must be a Secret name: lowercase letters, digits, '-' and '.', at most 253 characters"))]
    pub identity_secret_name: String,

    /// Control-plane base URL (`https://...`). Overrides nothing when the certificate carries an
    /// `https://` URI SAN; used when it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('https://') && isURL(self)").message("spec.controlPlane.endpoint must be an https:// URL such as https://control.example.com"))]
    pub endpoint: Option<String>,

    /// How often to heartbeat and re-check settings against the control plane (Go duration,
    /// at least 30s).
    #[serde(default = "default_sync_interval")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(ms|s|m|h))+$') && duration(self) >= duration('30s')").message("spec.controlPlane.syncInterval must be a duration of at least 30s, such as 5m"))]
    pub sync_interval: String,
}

fn default_sync_interval() -> String {
    "5m".to_owned()
}

/// Observed state of the tenant.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantStatus {
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Ready, IdentityValid, ControlPlaneConnected, SettingsSynced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::conditions_schema")]
    pub conditions: Vec<Condition>,

    /// Tenant ID taken from the identity certificate's `spiffe://<trust-domain>/tenant/<id>` SAN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,

    /// Control-plane endpoint in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,

    /// The mTLS identity in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityStatus>,

    /// Revision of the settings last accepted by the control plane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings_revision: Option<String>,

    /// SHA-256 of the settings last accepted by the control plane; a Tenant whose
    /// `spec.settings` hash to this value is not pushed again (zero writes at steady state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings_hash: Option<String>,

    /// When the settings were last pushed to the control plane (RFC 3339). Heartbeats do not
    /// change it, so a steady state writes nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<String>,

    /// Credentials in this namespace and how many of them are Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<CredentialCounts>,
}

/// The certificate the tenant authenticates with.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IdentityStatus {
    /// Certificate subject.
    pub subject: String,
    /// Certificate expiry (RFC 3339).
    pub not_after: String,
    /// SHA-256 fingerprint of the DER certificate, hex.
    pub fingerprint: String,
}

/// Credential counts for the tenant's status.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct CredentialCounts {
    /// Credentials in the namespace.
    // Kubernetes knows int32/int64 only; uint formats draw a warning on apply.
    #[schemars(extend("format" = "int32"))]
    pub total: u32,
    /// Credentials whose Ready condition is True.
    // Kubernetes knows int32/int64 only; uint formats draw a warning on apply.
    #[schemars(extend("format" = "int32"))]
    pub ready: u32,
}
