//! Pure, type-agnostic building blocks of a Credential's Secret: the rotation journal, the
//! plan vocabulary and the interface every type implements (`plan`), the Secret's shape and the
//! rules every type shares (`secret`), rotation time math, key material. No API client here,
//! so every decision is testable with a fixture. The types themselves are `crate::credentials`.

pub mod entropy;
pub mod journal;
pub mod keyset;
pub mod plan;
pub mod schedule;
pub mod secret;
#[cfg(test)]
pub mod testing;

/// `app.kubernetes.io/managed-by` on every Secret Bulkhead manages.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Its value.
pub const MANAGED_BY: &str = "bulkhead";
/// The Credential a managed Secret belongs to.
pub const CREDENTIAL_LABEL: &str = "bulkhead.dev/credential";
/// Journal: when the value last changed (RFC 3339).
pub const ROTATED_AT: &str = "bulkhead.dev/rotated-at";
/// Journal: identifier of the current value (a hash prefix, never the value).
pub const KEY_ID: &str = "bulkhead.dev/key-id";
/// Journal: the generator parameters that produced the value.
pub const GENERATOR: &str = "bulkhead.dev/generator";
/// Journal: the last `rotate-requested-at` value that was honoured.
pub const HANDLED_REQUEST: &str = "bulkhead.dev/rotate-request-handled";
/// Journal: when an issued credential (token, registry credentials) expires (RFC 3339).
pub const EXPIRES_AT: &str = "bulkhead.dev/expires-at";
/// Journal: the key id the restart targets were last restarted for.
pub const RESTARTED_FOR: &str = "bulkhead.dev/restarted-for";
/// Pod-template annotation that restarts a workload after a rotation.
pub const RESTARTED_AT: &str = "bulkhead.dev/restarted-at";
/// Journal: the random salt of the keyed key id (HMAC-SHA-256), per Secret.
pub const KEY_ID_SALT: &str = "bulkhead.dev/key-id-salt";
/// Journal: when an existing Secret was adopted (it existed before Bulkhead).
pub const ADOPTED_AT: &str = "bulkhead.dev/adopted-at";
/// Credential annotation: `"true"` lets `deletionPolicy: Delete` delete an adopted Secret with
/// its Credential (without it an adopted Secret is never deleted with its Credential).
pub const DELETE_ADOPTED: &str = "bulkhead.dev/delete-adopted-secret";
