//! `Credential`: one Secret Bulkhead generates, fetches, rotates and hands out.
//!
//! The spec is a discriminated union: `type` names the one source block that must be set.
//! Identity fields (`type`, `secretName`) are immutable so a spec edit can never orphan a Secret.

// kube-derive's repeated `printcolumn(type_ = ...)` trips this lint; the attributes differ.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Condition types a Credential reports.
pub mod condition {
    /// The Secret holds a current value.
    pub const READY: &str = "Ready";
    /// The last rotation outcome.
    pub const ROTATED: &str = "Rotated";
    /// The Secret exists but Bulkhead does not manage it (set `adopt: true` to take it over).
    pub const CONFLICT: &str = "Conflict";
    /// A restart target could not be patched because the Role does not allow it.
    pub const RESTART_NOT_PERMITTED: &str = "RestartNotPermitted";
}

/// Annotation that requests a rotation now: set it to any new value (a timestamp by convention).
pub const ROTATE_REQUESTED_AT: &str = "bulkhead.dev/rotate-requested-at";

/// A credential the team's workloads use, kept in a Secret of the same namespace.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "bulkhead.dev",
    version = "v1alpha1",
    kind = "Credential",
    doc = "A credential Bulkhead generates or fetches, rotates and writes to a Secret in the same namespace.",
    namespaced,
    status = "CredentialStatus",
    shortname = "bhc",
    category = "bulkhead",
    derive = "PartialEq",
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.type"),
    printcolumn(name = "Secret", type_ = "string", json_path = ".status.secretName"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Last Rotation",
        type_ = "date",
        json_path = ".status.lastRotationTime"
    ),
    printcolumn(
        name = "Next Rotation",
        type_ = "string",
        json_path = ".status.nextRotationTime",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = Rule::new("has(self.random) == (self.type == 'Random')").message("spec.random must be set when spec.type is Random, and only then"),
    validation = Rule::new("has(self.keySet) == (self.type == 'KeySet')").message("spec.keySet must be set when spec.type is KeySet, and only then"),
    validation = Rule::new("has(self.controlPlaneToken) == (self.type == 'ControlPlaneToken')").message("spec.controlPlaneToken must be set when spec.type is ControlPlaneToken, and only then"),
    validation = Rule::new("has(self.registryCredentials) == (self.type == 'RegistryCredentials')").message("spec.registryCredentials must be set when spec.type is RegistryCredentials, and only then"),
    validation = Rule::new("self.type != 'ControlPlaneToken' || !has(self.rotation)").message("a ControlPlaneToken is refreshed at 2/3 of its ttl; remove spec.rotation"),
    validation = Rule::new("self.type == oldSelf.type").message("spec.type is immutable; create a new Credential instead"),
    validation = Rule::new("has(self.secretName) == has(oldSelf.secretName) && (!has(self.secretName) || self.secretName == oldSelf.secretName)").message("spec.secretName is immutable; create a new Credential instead")
)]
#[serde(rename_all = "camelCase")]
pub struct CredentialSpec {
    /// Where the value comes from: Random and KeySet are generated locally; ControlPlaneToken and
    /// RegistryCredentials are issued by the control plane (they need a Tenant with controlPlane).
    #[serde(rename = "type")]
    pub type_: CredentialType,

    /// Settings for type Random.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random: Option<RandomSpec>,

    /// Settings for type KeySet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_set: Option<KeySetSpec>,

    /// Settings for type ControlPlaneToken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane_token: Option<ControlPlaneTokenSpec>,

    /// Settings for type RegistryCredentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_credentials: Option<RegistryCredentialsSpec>,

    /// Name of the Secret to write (default: the Credential's name). Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$') && size(self) <= 253").message("spec.secretName must be a Secret name: lowercase letters, digits, '-' and '.', at most 253 characters"))]
    pub secret_name: Option<String>,

    /// When to rotate. Absent: never rotate automatically (the rotate-requested-at annotation
    /// still works).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<RotationSpec>,

    /// Workloads whose pods are restarted (pod-template annotation) after each rotation. The
    /// chart's Role must list each one (value `rbac.restartTargets`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub restart_on_rotation: Vec<RestartTarget>,

    /// What happens to the Secret when the Credential is deleted: Delete removes it (garbage
    /// collection through the ownerReference), Retain keeps it.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// Take over an existing Secret of that name that Bulkhead does not manage. Without it such
    /// a Secret is never touched and the Credential reports Conflict.
    #[serde(default)]
    pub adopt: bool,
}

/// Where a credential's value comes from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum CredentialType {
    /// A random string from a CSPRNG.
    Random,
    /// A Fernet-style rotating key repository.
    KeySet,
    /// A JWT issued by the control plane.
    ControlPlaneToken,
    /// Image-pull credentials issued by the control plane.
    RegistryCredentials,
}

impl CredentialType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Random => "Random",
            Self::KeySet => "KeySet",
            Self::ControlPlaneToken => "ControlPlaneToken",
            Self::RegistryCredentials => "RegistryCredentials",
        }
    }

    /// Issued by the control plane (as opposed to generated locally).
    pub fn is_issued(self) -> bool {
        matches!(self, Self::ControlPlaneToken | Self::RegistryCredentials)
    }
}

/// A random string.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RandomSpec {
    /// Number of characters, 8 to 4096.
    #[serde(default = "default_random_length")]
    #[schemars(range(min = 8, max = 4096))]
    // Kubernetes knows int32/int64 only; uint formats draw a warning on apply.
    #[schemars(extend("format" = "int32"))]
    pub length: u32,
    /// Characters to draw from.
    #[serde(default)]
    pub alphabet: Alphabet,
}

fn default_random_length() -> u32 {
    32
}

impl Default for RandomSpec {
    fn default() -> Self {
        Self {
            length: default_random_length(),
            alphabet: Alphabet::default(),
        }
    }
}

/// Alphabet of a Random credential.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Alphabet {
    /// A-Z, a-z, 0-9.
    #[default]
    Alphanumeric,
    /// A-Z, a-z, 0-9, '-' and '_'.
    Base64url,
    /// 0-9, a-f.
    Hex,
}

/// A rotating key repository.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeySetSpec {
    /// Keys retained, 2 to 16: one staged, one primary, the rest secondary.
    #[serde(default = "default_key_set_size")]
    #[schemars(range(min = 2, max = 16))]
    // Kubernetes knows int32/int64 only; uint formats draw a warning on apply.
    #[schemars(extend("format" = "int32"))]
    pub size: u8,
}

fn default_key_set_size() -> u8 {
    3
}

impl Default for KeySetSpec {
    fn default() -> Self {
        Self {
            size: default_key_set_size(),
        }
    }
}

/// A JWT issued by the control plane.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlaneTokenSpec {
    /// Audience (`aud` claim) the token is issued for.
    #[schemars(length(min = 1, max = 253))]
    pub audience: String,
    /// Lifetime of each token (Go duration, 5m to 24h); refreshed at 2/3 of it.
    #[serde(default = "default_token_ttl")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(ms|s|m|h))+$') && duration(self) >= duration('5m') && duration(self) <= duration('24h')").message("spec.controlPlaneToken.ttl must be a duration between 5m and 24h, such as 1h"))]
    pub ttl: String,
}

fn default_token_ttl() -> String {
    "1h".to_owned()
}

/// Image-pull credentials issued by the control plane.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegistryCredentialsSpec {
    /// Registry host the credentials are for, e.g. registry.example.com.
    #[schemars(length(min = 1, max = 253))]
    pub server: String,
}

/// When to rotate: either a fixed period or a cron schedule.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.every) != has(self.schedule)").message("spec.rotation needs exactly one of every (a duration such as 720h) or schedule (a cron expression such as '0 3 * * 1')"))]
pub struct RotationSpec {
    /// Rotate this long after the previous rotation (Go duration, at least 1m), e.g. 720h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(ms|s|m|h))+$') && duration(self) >= duration('1m')").message("spec.rotation.every must be a duration of at least 1m, such as 720h"))]
    pub every: Option<String>,

    /// Rotate at these times: a 5-field cron expression in UTC (minute hour day-of-month month
    /// day-of-week), e.g. "0 3 * * 1" for Mondays at 03:00.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^\\\\s*[0-9*,/-]+\\\\s+[0-9*,/-]+\\\\s+[0-9*,/?LW-]+\\\\s+([0-9*,/-]+|[A-Za-z]{3})\\\\s+([0-9*,/?L#-]+|[A-Za-z]{3}(-[A-Za-z]{3})?)\\\\s*$')").message("spec.rotation.schedule must be a 5-field cron expression (minute hour day-of-month month day-of-week), such as '0 3 * * 1'"))]
    #[x_kube(validation = Rule::new("!self.matches('(^|[\\\\s,]),|,($|[\\\\s,])')").message("spec.rotation.schedule has an empty list item (a ',' with nothing before or after it): that field selects nothing, so the schedule never fires; write e.g. '0,30 3 * * 1'"))]
    #[x_kube(validation = Rule::new("!self.matches('^\\\\s*\\\\S+\\\\s+\\\\S+\\\\s+(30|31)\\\\s+(0?2|(?i:feb))\\\\s+[*?]\\\\s*$') && !self.matches('^\\\\s*\\\\S+\\\\s+\\\\S+\\\\s+31\\\\s+(0?[469]|11|(?i:apr|jun|sep|nov))\\\\s+[*?]\\\\s*$')").message("spec.rotation.schedule names a day that month never has (February 30 or 31, or the 31st of April, June, September or November), so it never fires; use e.g. 'L' for the last day of the month"))]
    pub schedule: Option<String>,

    /// Keep the previous value next to the new one after a rotation (`value.previous` for
    /// Random), so clients can overlap.
    #[serde(default = "default_true")]
    pub keep_previous: bool,
}

fn default_true() -> bool {
    true
}

/// A workload restarted after a rotation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestartTarget {
    /// Deployment, StatefulSet or DaemonSet.
    pub kind: RestartKind,
    /// Name of the workload in this namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Kinds of workload that can be restarted.
#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    schemars::JsonSchema,
)]
pub enum RestartKind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

impl RestartKind {
    /// The plural resource name in `apps/v1`.
    pub fn resource(self) -> &'static str {
        match self {
            Self::Deployment => "deployments",
            Self::StatefulSet => "statefulsets",
            Self::DaemonSet => "daemonsets",
        }
    }
}

/// What happens to the Secret when its Credential is deleted.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum DeletionPolicy {
    /// The Secret is garbage-collected with the Credential.
    #[default]
    Delete,
    /// The Secret stays; its ownerReference is removed first.
    Retain,
}

/// Observed state of the credential.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialStatus {
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Ready, Rotated, Conflict, RestartNotPermitted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::conditions_schema")]
    pub conditions: Vec<Condition>,

    /// The Secret this credential is written to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,

    /// When the value last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation_time: Option<String>,

    /// When the next scheduled rotation is due (RFC 3339); absent when none is scheduled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation_time: Option<String>,

    /// Identifier of the current value (never the value itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

impl Credential {
    /// The Secret this credential writes: `spec.secretName`, else the Credential's name.
    pub fn secret_name(&self) -> String {
        self.spec
            .secret_name
            .clone()
            .unwrap_or_else(|| kube::ResourceExt::name_any(self))
    }
}
