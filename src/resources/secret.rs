//! The Secret a Credential owns: whose it is, the rules every type shares before it plans
//! (never another Credential's Secret, never a foreign one without `adopt: true`, never one of
//! another type), and the Secret to apply for a plan.
//!
//! The per-type facts (Secret type, managed keys, the plan) come from the type's
//! [`CredentialKind`] (see `crate::credentials`); nothing here depends on a particular type.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use super::entropy::Entropy;
use super::journal::{self, Journal};
/// Key ids live with the journal; re-exported for the callers that check a Secret's key id.
pub use super::journal::{key_id, unkeyed_key_id};
use super::plan::{self, CredentialKind, Observed, Ownership, Plan, Refusal, Step};
use super::{CREDENTIAL_LABEL, DELETE_ADOPTED, MANAGED_BY, MANAGED_BY_LABEL};
use crate::api::credential::{Credential, DeletionPolicy, ROTATE_REQUESTED_AT};

/// The longest label value the API server accepts.
const LABEL_VALUE_MAX: usize = 63;

/// The `bulkhead.dev/credential` label value of a Credential: its name, or for a name longer
/// than a label value may be, a prefix and a hash of the whole name (still unique).
pub fn credential_label(name: &str) -> String {
    if name.len() <= LABEL_VALUE_MAX {
        return name.to_owned();
    }
    let digest = Sha256::digest(name.as_bytes());
    let hash: String = digest.iter().take(5).map(|b| format!("{b:02x}")).collect();
    // Names are DNS subdomains (ASCII), so any byte index is a character boundary.
    let keep = LABEL_VALUE_MAX - hash.len() - 1;
    format!("{}-{hash}", &name[..keep])
}

/// Whether the Secret is this Credential's.
pub fn ownership(credential: &Credential, secret: Option<&Secret>) -> Ownership {
    let Some(secret) = secret else {
        return Ownership::Missing;
    };
    let labels = secret.labels();
    if labels.get(MANAGED_BY_LABEL).map(String::as_str) != Some(MANAGED_BY) {
        return Ownership::Foreign;
    }
    match labels.get(CREDENTIAL_LABEL) {
        Some(label) if *label == credential_label(&credential.name_any()) => Ownership::Managed,
        Some(_) => Ownership::OtherCredential,
        None => Ownership::Foreign,
    }
}

/// The Secret's values that are UTF-8 text (the only ones a plan reads).
pub fn string_data(secret: Option<&Secret>) -> BTreeMap<String, String> {
    secret
        .and_then(|s| s.data.as_ref())
        .map(|d| {
            d.iter()
                .filter_map(|(k, v)| String::from_utf8(v.0.clone()).ok().map(|v| (k.clone(), v)))
                .collect()
        })
        .unwrap_or_default()
}

/// The rules every type shares, applied to the Secret as read: the refusals for a Secret that
/// is not ours to write, the rotation policy and the request annotation, parsed once.
pub fn observe<'a>(
    kind: &dyn CredentialKind,
    credential: &'a Credential,
    secret: Option<&'a Secret>,
    now: Timestamp,
) -> Result<Observed<'a>, Refusal> {
    let owned = ownership(credential, secret);
    let name = credential.secret_name();
    if let Some(s) = secret {
        match owned {
            Ownership::OtherCredential => {
                let other = s
                    .labels()
                    .get(CREDENTIAL_LABEL)
                    .cloned()
                    .unwrap_or_default();
                return Err(Refusal::Conflict(format!(
                    "Secret {name} is managed by Bulkhead for another Credential ({CREDENTIAL_LABEL}={other}); a Secret belongs to one Credential, adopt or not, and it was left untouched. Choose another spec.secretName; if Credential {other} no longer exists, remove the label {CREDENTIAL_LABEL} from the Secret and set spec.adopt: true"
                )));
            }
            Ownership::Foreign if !credential.spec.adopt => {
                return Err(Refusal::Conflict(format!(
                    "Secret {name} exists and is not managed by Bulkhead; it was left untouched. Set spec.adopt: true to take it over (no key it holds is dropped), or choose another spec.secretName"
                )));
            }
            _ => {}
        }
        let wanted = kind.secret_type();
        let existing = s.type_.as_deref().unwrap_or("Opaque");
        if existing != wanted {
            return Err(Refusal::Conflict(format!(
                "Secret {name} has type {existing}, and a {} Credential needs type {wanted}; a Secret's type cannot change, so it was left untouched. Choose another spec.secretName, or move the data to a Secret of type {wanted}",
                credential.spec.type_.as_str()
            )));
        }
        if owned == Ownership::Foreign {
            kind.check_adoptable(credential, s)?;
        }
    }
    let journal = match (owned, secret) {
        (Ownership::Managed, Some(s)) => Journal::read(s),
        _ => Journal::default(),
    };
    check_same_type(credential, &journal)?;
    Ok(Observed {
        credential,
        secret,
        ownership: owned,
        journal,
        data: string_data(secret),
        policy: plan::rotation_policy(credential)?,
        request: credential.annotations().get(ROTATE_REQUESTED_AT).cloned(),
        now,
    })
}

/// A managed Secret written for another type of Credential (a Retain Secret left behind, then
/// a new Credential of the same name and another type) is not silently replaced: the apply
/// would drop the old type's keys. Every generator string starts with its type's name.
pub fn check_same_type(credential: &Credential, journal: &Journal) -> Result<(), Refusal> {
    let family = credential.spec.type_.as_str().to_lowercase();
    match &journal.generator {
        Some(g) if !g.starts_with(&family) => Err(Refusal::Conflict(format!(
            "Secret {} holds a value written for another type of Credential (generator {g}); a {} Credential would replace it. Delete the Secret if its value is no longer needed, or choose another spec.secretName",
            credential.secret_name(),
            credential.spec.type_.as_str()
        ))),
        _ => Ok(()),
    }
}

/// The shared rules, then the type's plan.
pub fn plan(
    kind: &dyn CredentialKind,
    credential: &Credential,
    secret: Option<&Secret>,
    now: Timestamp,
    entropy: &mut dyn Entropy,
) -> Result<Step, Refusal> {
    kind.plan(&observe(kind, credential, secret, now)?, entropy)
}

/// The Secret to apply for a plan: labels, journal annotations, owner reference (Delete
/// policy only: Retain keeps the Secret when the Credential goes; an adopted Secret existed
/// before Bulkhead, so it is deleted with its Credential only if the Credential says so
/// explicitly with the annotation `bulkhead.dev/delete-adopted-secret: "true"`), data.
pub fn desired_secret(kind: &dyn CredentialKind, credential: &Credential, plan: &Plan) -> Secret {
    let deletes_adopted = credential
        .annotations()
        .get(DELETE_ADOPTED)
        .map(String::as_str)
        == Some("true");
    let deletes = match credential.spec.deletion_policy {
        DeletionPolicy::Delete => plan.journal.adopted_at.is_none() || deletes_adopted,
        DeletionPolicy::Retain => false,
    };
    let owner = match deletes {
        // blockOwnerDeletion: a foreground deletion of the Credential waits for the Secret.
        true => credential.controller_owner_ref(&()).map(|mut o| {
            o.block_owner_deletion = Some(true);
            vec![o]
        }),
        false => None,
    };
    Secret {
        metadata: ObjectMeta {
            name: Some(credential.secret_name()),
            namespace: credential.namespace(),
            labels: Some(
                [
                    (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
                    (
                        CREDENTIAL_LABEL.to_owned(),
                        credential_label(&credential.name_any()),
                    ),
                ]
                .into_iter()
                .collect(),
            ),
            annotations: Some(plan.journal.annotations()),
            owner_references: owner,
            ..ObjectMeta::default()
        },
        type_: Some(kind.secret_type().to_owned()),
        data: Some(
            plan.data
                .iter()
                .map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// Whether applying `desired` would change anything Bulkhead owns in `current`.
pub fn differs(kind: &dyn CredentialKind, current: Option<&Secret>, desired: &Secret) -> bool {
    let Some(current) = current else { return true };
    let subset = |want: &Option<BTreeMap<String, String>>,
                  have: &Option<BTreeMap<String, String>>| {
        want.iter()
            .flatten()
            .all(|(k, v)| have.as_ref().and_then(|h| h.get(k)) == Some(v))
    };
    let ours_owner = |s: &Secret| {
        s.metadata
            .owner_references
            .iter()
            .flatten()
            .filter(|o| o.kind == Credential::kind(&()))
            .cloned()
            .collect::<Vec<_>>()
    };
    // Data keys we manage must match exactly (a key we no longer want must go).
    let managed_keys = |s: &Secret| -> BTreeMap<String, ByteString> {
        s.data
            .iter()
            .flatten()
            .filter(|(k, _)| kind.manages_key(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    !subset(&desired.metadata.labels, &current.metadata.labels)
        || !subset(&desired.metadata.annotations, &current.metadata.annotations)
        || ours_owner(current) != ours_owner(desired)
        || managed_keys(current) != managed_keys(desired)
}

/// A merge patch removing what Bulkhead stopped writing but an apply could not remove, because
/// another field manager still owns it too: the create (a `POST` is manager `bulkhead`,
/// operation `Update`, not the applier), an earlier version of Bulkhead, or an adopted Secret's
/// previous owner. Guarded by the resourceVersion of `current` (the object as just written),
/// so a concurrent change is never overwritten. `None` when nothing is left over.
pub fn removal_patch(
    kind: &dyn CredentialKind,
    current: &Secret,
    desired: &Secret,
) -> Option<serde_json::Value> {
    let mut data = serde_json::Map::new();
    let wanted_data = desired.data.clone().unwrap_or_default();
    for key in current.data.iter().flatten().map(|(k, _)| k) {
        if kind.manages_key(key) && !wanted_data.contains_key(key) {
            data.insert(key.clone(), serde_json::Value::Null);
        }
    }
    let mut annotations = serde_json::Map::new();
    let wanted_annotations = desired.metadata.annotations.clone().unwrap_or_default();
    for key in current.annotations().keys() {
        if journal::ANNOTATIONS.contains(&key.as_str()) && !wanted_annotations.contains_key(key) {
            annotations.insert(key.clone(), serde_json::Value::Null);
        }
    }
    let wanted_owners = desired
        .metadata
        .owner_references
        .clone()
        .unwrap_or_default();
    let owners = current
        .metadata
        .owner_references
        .clone()
        .unwrap_or_default();
    let kept: Vec<_> = owners
        .iter()
        .filter(|o| o.kind != Credential::kind(&()) || wanted_owners.iter().any(|w| w.uid == o.uid))
        .cloned()
        .collect();
    if data.is_empty() && annotations.is_empty() && kept.len() == owners.len() {
        return None;
    }
    let mut metadata = serde_json::json!({ "resourceVersion": current.resource_version() });
    if !annotations.is_empty() {
        metadata["annotations"] = annotations.into();
    }
    if kept.len() != owners.len() {
        // A merge patch replaces the list: the other owners stay, checked by resourceVersion.
        metadata["ownerReferences"] = if kept.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::to_value(&kept).ok()?
        };
    }
    let mut patch = serde_json::json!({ "metadata": metadata });
    if !data.is_empty() {
        patch["data"] = data.into();
    }
    Some(patch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_left_by_another_type_is_a_conflict() {
        let random_journal = Journal {
            generator: Some("random/32/alphanumeric".into()),
            ..Journal::default()
        };
        let c = crate::api::credential("jobs")
            .control_plane_token("spark-jobs", "1h")
            .build();
        let Err(Refusal::Conflict(msg)) = check_same_type(&c, &random_journal) else {
            panic!("a Random value must not be replaced by a token")
        };
        assert!(msg.contains("random/32/alphanumeric"), "{msg}");
        let token_journal = Journal {
            generator: Some("controlplanetoken/spark-jobs/1h".into()),
            ..Journal::default()
        };
        assert!(check_same_type(&c, &token_journal).is_ok());
    }
}
