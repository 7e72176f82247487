//! Fixtures for the planning unit tests (compiled for tests only): the Credential most tests
//! start from, and a plan run through the shared rules exactly as the controller runs it.

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;

pub use super::entropy::tests::FixedEntropy;
use super::plan::{CredentialKind, Plan, Refusal, Step};
use super::secret;
use crate::api::builder::{CredentialBuilder, credential};
use crate::api::credential::Credential;

pub fn ts(s: &str) -> Timestamp {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// `db` in `team-a`, writing Secret `db-password` (still a Random of 32 by default).
pub fn db() -> CredentialBuilder {
    credential("db")
        .secret_name("db-password")
        .namespace("team-a")
}

/// The Credential as the API server returns it: with a uid (owner references need one).
pub fn with_uid(builder: CredentialBuilder) -> Credential {
    let mut c = builder.build();
    c.metadata.uid = Some("uid-1".into());
    c
}

/// [`with_uid`], rotated `every` when given.
pub fn rotating(builder: CredentialBuilder, every: Option<&str>) -> Credential {
    with_uid(match every {
        Some(every) => builder.every(every),
        None => builder,
    })
}

/// The shared rules, then the type's plan, as the controller runs them.
pub fn step(
    kind: &dyn CredentialKind,
    c: &Credential,
    s: Option<&Secret>,
    now: Timestamp,
    entropy: &mut FixedEntropy,
) -> Result<Step, Refusal> {
    secret::plan(kind, c, s, now, entropy)
}

/// [`step`] of a type that plans locally: its plan.
pub fn plan(
    kind: &dyn CredentialKind,
    c: &Credential,
    s: Option<&Secret>,
    now: Timestamp,
    entropy: &mut FixedEntropy,
) -> Result<Plan, Refusal> {
    match step(kind, c, s, now, entropy)? {
        Step::Write(plan) => Ok(*plan),
        Step::Issue { .. } => panic!("a local type never asks the control plane"),
    }
}

/// A data value of a Secret, as text.
pub fn value(s: &Secret, key: &str) -> Option<String> {
    s.data
        .as_ref()?
        .get(key)
        .map(|b| String::from_utf8(b.0.clone()).unwrap_or_else(|e| panic!("{key}: {e}")))
}

/// A Secret Bulkhead did not write: `name`, of `type_` (`None`: no type given), holding `data`.
pub fn foreign_secret(name: &str, type_: Option<&str>, data: &[(&str, &[u8])]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        type_: type_.map(Into::into),
        data: (!data.is_empty()).then(|| {
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.to_vec())))
                .collect()
        }),
        ..Secret::default()
    }
}
