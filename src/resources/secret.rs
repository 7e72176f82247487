//! What a Credential's Secret should hold, decided from the Secret itself.
//!
//! The Secret's own annotations are the rotation journal: the decision to rotate depends only
//! on them, the Credential and the clock, never on the Credential's status. A crash between
//! writing the Secret and writing the status therefore neither rotates twice nor skips one.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use super::keyset::{self, KeySet};
use super::random::{self, Entropy};
use super::schedule;
use super::{
    CREDENTIAL_LABEL, EXPIRES_AT, GENERATOR, HANDLED_REQUEST, KEY_ID, MANAGED_BY, MANAGED_BY_LABEL,
    RESTARTED_FOR, ROTATED_AT,
};
use crate::api::credential::{Credential, CredentialType, DeletionPolicy, ROTATE_REQUESTED_AT};

/// Data key of a Random credential's value.
pub const VALUE: &str = "value";
/// Data key of a Random credential's previous value during the overlap.
pub const VALUE_PREVIOUS: &str = "value.previous";

/// Who the existing Secret belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ownership {
    Missing,
    Managed,
    Foreign,
}

/// Whether the Secret is this Credential's.
pub fn ownership(credential: &Credential, secret: Option<&Secret>) -> Ownership {
    let Some(secret) = secret else {
        return Ownership::Missing;
    };
    let labels = secret.labels();
    let managed = labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)
        && labels.get(CREDENTIAL_LABEL).map(String::as_str) == Some(credential.name_any().as_str());
    if managed {
        Ownership::Managed
    } else {
        Ownership::Foreign
    }
}

/// The rotation journal kept in the Secret's annotations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Journal {
    pub rotated_at: Option<Timestamp>,
    pub key_id: Option<String>,
    pub generator: Option<String>,
    pub handled_request: Option<String>,
    pub restarted_for: Option<String>,
    /// Issued credentials only: when the issued value expires.
    pub expires_at: Option<Timestamp>,
}

impl Journal {
    pub fn read(secret: &Secret) -> Self {
        let a = secret.annotations();
        Self {
            rotated_at: a.get(ROTATED_AT).and_then(|t| t.parse().ok()),
            key_id: a.get(KEY_ID).cloned(),
            generator: a.get(GENERATOR).cloned(),
            handled_request: a.get(HANDLED_REQUEST).cloned(),
            restarted_for: a.get(RESTARTED_FOR).cloned(),
            expires_at: a.get(EXPIRES_AT).and_then(|t| t.parse().ok()),
        }
    }

    fn annotations(&self) -> BTreeMap<String, String> {
        let mut a = BTreeMap::new();
        let mut put = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                a.insert(k.to_owned(), v.clone());
            }
        };
        put(ROTATED_AT, &self.rotated_at.map(|t| t.to_string()));
        put(KEY_ID, &self.key_id);
        put(GENERATOR, &self.generator);
        put(HANDLED_REQUEST, &self.handled_request);
        put(RESTARTED_FOR, &self.restarted_for);
        put(EXPIRES_AT, &self.expires_at.map(|t| t.to_string()));
        a
    }
}

/// Why the value changes in this reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// The Secret did not exist.
    Created,
    /// An existing Secret was taken over (`adopt: true`); its value was kept if usable.
    Adopted,
    /// `rotation.every` or `rotation.schedule` was due.
    Scheduled,
    /// The `bulkhead.dev/rotate-requested-at` annotation asked for it.
    Requested,
    /// The generator settings changed (length, alphabet).
    SpecChanged,
    /// Someone changed or removed the value in the Secret.
    Repaired,
}

impl Change {
    /// Whether workloads must restart to pick up the new value.
    pub fn is_rotation(self) -> bool {
        !matches!(self, Self::Created | Self::Adopted)
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Adopted => "adopted",
            Self::Scheduled => "rotated on schedule",
            Self::Requested => "rotated on request",
            Self::SpecChanged => "rotated because the generator settings changed",
            Self::Repaired => {
                "rotated because the Secret's value was changed or removed outside Bulkhead"
            }
        }
    }
}

/// Why nothing can be written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A Secret of that name exists and is not ours.
    Conflict(String),
    /// The spec cannot be acted on.
    InvalidSpec(String),
    /// This type needs the control-plane link.
    NeedsControlPlane(CredentialType),
    /// The CSPRNG failed.
    Entropy(String),
}

/// The Secret type a Credential's Secret has (immutable once created).
pub fn secret_type(type_: CredentialType) -> &'static str {
    match type_ {
        CredentialType::RegistryCredentials => "kubernetes.io/dockerconfigjson",
        _ => "Opaque",
    }
}

/// Data keys Bulkhead manages in the Secret of a Credential of this type (other keys belong
/// to whoever wrote them).
pub fn is_managed_key(type_: CredentialType, key: &str) -> bool {
    match type_ {
        CredentialType::Random => key == VALUE || key == VALUE_PREVIOUS,
        CredentialType::KeySet => key.parse::<u32>().is_ok(),
        CredentialType::ControlPlaneToken => {
            key == super::issued::TOKEN || key == super::issued::EXPIRES_AT_KEY
        }
        CredentialType::RegistryCredentials => key == super::issued::DOCKER_CONFIG_JSON,
    }
}

/// The prefix of the journal's generator string for each type.
fn generator_family(type_: CredentialType) -> &'static str {
    match type_ {
        CredentialType::Random => "random/",
        CredentialType::KeySet => "keyset",
        CredentialType::ControlPlaneToken => "controlplanetoken/",
        CredentialType::RegistryCredentials => "registrycredentials/",
    }
}

/// A managed Secret written for another type of Credential (a Retain Secret left behind, then
/// a new Credential of the same name and another type) is not silently replaced: the apply
/// would drop the old type's keys.
pub fn check_same_type(credential: &Credential, journal: &Journal) -> Result<(), Refusal> {
    match &journal.generator {
        Some(g) if !g.starts_with(generator_family(credential.spec.type_)) => {
            Err(Refusal::Conflict(format!(
                "Secret {} holds a value written for another type of Credential (generator {g}); a {} Credential would replace it. Delete the Secret if its value is no longer needed, or choose another spec.secretName",
                credential.secret_name(),
                credential.spec.type_.as_str()
            )))
        }
        _ => Ok(()),
    }
}

/// The outcome of planning: the Secret's desired data and journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub data: BTreeMap<String, String>,
    pub journal: Journal,
    /// `None`: the value stays.
    pub change: Option<Change>,
    /// When the next scheduled rotation is due.
    pub next_rotation: Option<Timestamp>,
}

/// A short identifier of a value: the first 16 hex digits of its SHA-256.
pub fn key_id(value: &str) -> String {
    let digest = Sha256::digest(value.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn string_data(secret: Option<&Secret>) -> BTreeMap<String, String> {
    secret
        .and_then(|s| s.data.as_ref())
        .map(|d| {
            d.iter()
                .filter_map(|(k, v)| String::from_utf8(v.0.clone()).ok().map(|v| (k.clone(), v)))
                .collect()
        })
        .unwrap_or_default()
}

fn entropy_err(e: getrandom::Error) -> Refusal {
    Refusal::Entropy(format!(
        "the operating system's random number generator failed: {e}"
    ))
}

/// Decide what the Secret should hold now.
pub fn plan(
    credential: &Credential,
    secret: Option<&Secret>,
    now: Timestamp,
    entropy: &mut dyn Entropy,
) -> Result<Plan, Refusal> {
    let spec = &credential.spec;
    let owned = ownership(credential, secret);
    if owned == Ownership::Foreign && !spec.adopt {
        return Err(Refusal::Conflict(format!(
            "Secret {} exists and is not managed by Bulkhead; it was left untouched. Set spec.adopt: true to take it over (its data is kept), or choose another spec.secretName",
            credential.secret_name()
        )));
    }
    let policy = spec
        .rotation
        .as_ref()
        .map(schedule::policy)
        .transpose()
        .map_err(Refusal::InvalidSpec)?;
    let keep_previous = spec.rotation.as_ref().is_none_or(|r| r.keep_previous);
    let journal = match (owned, secret) {
        (Ownership::Managed, Some(s)) => Journal::read(s),
        _ => Journal::default(),
    };
    check_same_type(credential, &journal)?;
    let current = string_data(secret);
    let request = credential.annotations().get(ROTATE_REQUESTED_AT).cloned();
    let requested =
        request.is_some() && request != journal.handled_request && owned == Ownership::Managed;
    let due = |last: Option<Timestamp>| match (&policy, last) {
        (Some(p), Some(last)) => schedule::next_after(p, last).is_some_and(|next| now >= next),
        _ => false,
    };

    let (data, key, generator, change) = match spec.type_ {
        CredentialType::Random => {
            let r = spec.random.clone().unwrap_or_default();
            let length = usize::try_from(r.length)
                .map_err(|_| Refusal::InvalidSpec("spec.random.length is too large".into()))?;
            if !(8..=4096).contains(&length) {
                return Err(Refusal::InvalidSpec(format!(
                    "spec.random.length must be 8 to 4096, not {length}"
                )));
            }
            let generator = format!("Random/{length}/{:?}", r.alphabet).to_lowercase();
            let existing = current.get(VALUE).cloned();
            let change = match owned {
                Ownership::Missing => Some(Change::Created),
                Ownership::Foreign => Some(Change::Adopted),
                Ownership::Managed => match &existing {
                    None => Some(Change::Repaired),
                    Some(v) if journal.key_id.as_deref() != Some(key_id(v).as_str()) => {
                        Some(Change::Repaired)
                    }
                    Some(_) if journal.generator.as_deref() != Some(generator.as_str()) => {
                        Some(Change::SpecChanged)
                    }
                    Some(_) if requested => Some(Change::Requested),
                    Some(_) if due(journal.rotated_at) => Some(Change::Scheduled),
                    Some(_) => None,
                },
            };
            let mut data = BTreeMap::new();
            let value = match (change, &existing) {
                (None | Some(Change::Adopted), Some(v)) => v.clone(),
                _ => random::random_string(entropy, length, r.alphabet).map_err(entropy_err)?,
            };
            let previous = match change {
                Some(c) if c.is_rotation() => existing.clone(),
                _ => current.get(VALUE_PREVIOUS).cloned(),
            };
            if keep_previous && let Some(p) = previous.filter(|p| *p != value) {
                data.insert(VALUE_PREVIOUS.to_owned(), p);
            }
            let id = key_id(&value);
            data.insert(VALUE.to_owned(), value);
            (data, id, generator, change)
        }
        CredentialType::KeySet => {
            let size = usize::from(spec.key_set.clone().unwrap_or_default().size);
            if !(2..=16).contains(&size) {
                return Err(Refusal::InvalidSpec(format!(
                    "spec.keySet.size must be 2 to 16, not {size}"
                )));
            }
            let generator = "keyset".to_owned();
            let existing: KeySet = keyset::from_data(&current);
            let mut failure = None;
            let mut new_key = || match random::fernet_key(entropy) {
                Ok(k) => k,
                Err(e) => {
                    failure = Some(e);
                    String::new()
                }
            };
            let primary_id = |keys: &KeySet| {
                keyset::primary(keys)
                    .and_then(|i| keys.get(&i))
                    .map(|k| key_id(k))
            };
            let (keys, change) = match owned {
                Ownership::Missing => (keyset::initial(&mut new_key), Some(Change::Created)),
                Ownership::Foreign
                    if existing.contains_key(&0) && keyset::primary(&existing).is_some() =>
                {
                    (existing, Some(Change::Adopted))
                }
                Ownership::Foreign => (keyset::initial(&mut new_key), Some(Change::Adopted)),
                Ownership::Managed => {
                    if existing.is_empty() {
                        (keyset::initial(&mut new_key), Some(Change::Repaired))
                    } else if !existing.contains_key(&0)
                        || keyset::primary(&existing).is_none()
                        || journal.key_id != primary_id(&existing)
                    {
                        (
                            keyset::rotate(&existing, size, &mut new_key),
                            Some(Change::Repaired),
                        )
                    } else if requested {
                        (
                            keyset::rotate(&existing, size, &mut new_key),
                            Some(Change::Requested),
                        )
                    } else if due(journal.rotated_at) {
                        (
                            keyset::rotate(&existing, size, &mut new_key),
                            Some(Change::Scheduled),
                        )
                    } else {
                        (existing, None)
                    }
                }
            };
            if let Some(e) = failure {
                return Err(entropy_err(e));
            }
            // A smaller size trims the oldest secondaries without a rotation.
            let mut keys = keys;
            while keys.len() > size {
                match keys
                    .keys()
                    .copied()
                    .find(|&i| i != 0 && Some(i) != keyset::primary(&keys))
                {
                    Some(i) => {
                        keys.remove(&i);
                    }
                    None => break,
                }
            }
            let id = primary_id(&keys).unwrap_or_default();
            let data = keys.into_iter().map(|(i, k)| (i.to_string(), k)).collect();
            (data, id, generator, change)
        }
        other => return Err(Refusal::NeedsControlPlane(other)),
    };

    let rotated_at = if change.is_some() {
        Some(now)
    } else {
        journal.rotated_at.or(Some(now))
    };
    let next_rotation = match (&policy, rotated_at) {
        (Some(p), Some(last)) => schedule::next_after(p, last),
        _ => None,
    };
    let handled_request = if change.is_some() || requested {
        request.clone()
    } else {
        journal.handled_request.clone()
    };
    let restarted_for = match change {
        // Nothing ran with a value that did not exist before: no restart owed.
        Some(Change::Created | Change::Adopted) => Some(key.clone()),
        _ => journal.restarted_for.clone(),
    };
    Ok(Plan {
        data,
        journal: Journal {
            rotated_at,
            key_id: Some(key),
            generator: Some(generator),
            handled_request,
            restarted_for,
            expires_at: None,
        },
        change,
        next_rotation,
    })
}

/// The Secret to apply for a plan: labels, journal annotations, owner reference (Delete
/// policy only: Retain keeps the Secret when the Credential goes), data.
pub fn desired_secret(credential: &Credential, plan: &Plan) -> Secret {
    let owner = match credential.spec.deletion_policy {
        // blockOwnerDeletion: a foreground deletion of the Credential waits for the Secret.
        DeletionPolicy::Delete => credential.controller_owner_ref(&()).map(|mut o| {
            o.block_owner_deletion = Some(true);
            vec![o]
        }),
        DeletionPolicy::Retain => None,
    };
    Secret {
        metadata: ObjectMeta {
            name: Some(credential.secret_name()),
            namespace: credential.namespace(),
            labels: Some(
                [
                    (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
                    (CREDENTIAL_LABEL.to_owned(), credential.name_any()),
                ]
                .into_iter()
                .collect(),
            ),
            annotations: Some(plan.journal.annotations()),
            owner_references: owner,
            ..ObjectMeta::default()
        },
        type_: Some(secret_type(credential.spec.type_).to_owned()),
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
pub fn differs(type_: CredentialType, current: Option<&Secret>, desired: &Secret) -> bool {
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
            .filter(|(k, _)| is_managed_key(type_, k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    !subset(&desired.metadata.labels, &current.metadata.labels)
        || !subset(&desired.metadata.annotations, &current.metadata.annotations)
        || ours_owner(current) != ours_owner(desired)
        || managed_keys(current) != managed_keys(desired)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::credential::{Alphabet, CredentialSpec, KeySetSpec, RandomSpec, RotationSpec};
    use crate::resources::random::tests::FixedEntropy;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn credential(type_: CredentialType, rotation: Option<RotationSpec>) -> Credential {
        let mut c = Credential::new(
            "db",
            CredentialSpec {
                type_,
                random: (type_ == CredentialType::Random).then_some(RandomSpec {
                    length: 24,
                    alphabet: Alphabet::Hex,
                }),
                key_set: (type_ == CredentialType::KeySet).then_some(KeySetSpec { size: 3 }),
                control_plane_token: None,
                registry_credentials: None,
                secret_name: Some("db-password".into()),
                rotation,
                restart_on_rotation: vec![],
                deletion_policy: DeletionPolicy::Delete,
                adopt: false,
            },
        );
        c.metadata.namespace = Some("team-a".into());
        c.metadata.uid = Some("uid-1".into());
        c
    }

    fn every(d: &str) -> Option<RotationSpec> {
        Some(RotationSpec {
            every: Some(d.into()),
            schedule: None,
            keep_previous: true,
        })
    }

    /// Apply a plan the way the API server would store it.
    fn stored(c: &Credential, plan: &Plan) -> Secret {
        desired_secret(c, plan)
    }

    fn value(s: &Secret, key: &str) -> Option<String> {
        s.data
            .as_ref()?
            .get(key)
            .map(|b| String::from_utf8(b.0.clone()).unwrap())
    }

    #[test]
    fn create_writes_labels_owner_journal_and_value() {
        let c = credential(CredentialType::Random, every("24h"));
        let now = ts("2026-11-22T10:00:00Z");
        let plan = plan(&c, None, now, &mut FixedEntropy(7)).unwrap();
        assert_eq!(plan.change, Some(Change::Created));
        assert_eq!(plan.next_rotation, Some(ts("2026-11-23T10:00:00Z")));
        let s = desired_secret(&c, &plan);
        assert_eq!(s.metadata.name.as_deref(), Some("db-password"));
        assert_eq!(s.labels()[CREDENTIAL_LABEL], "db");
        assert_eq!(s.labels()[MANAGED_BY_LABEL], "bulkhead");
        let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("Credential", "uid-1", Some(true))
        );
        assert_eq!(owner.block_owner_deletion, Some(true));
        let v = value(&s, VALUE).unwrap();
        assert_eq!(v.len(), 24);
        assert!(v.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(value(&s, VALUE_PREVIOUS), None);
        assert_eq!(s.annotations()[KEY_ID], key_id(&v));
        assert_eq!(s.annotations()[ROTATED_AT], "2026-11-22T10:00:00Z");
        assert!(
            !s.annotations().values().any(|a| a.contains(&v)),
            "the journal never holds the value"
        );
    }

    #[test]
    fn retain_policy_has_no_owner_reference() {
        let mut c = credential(CredentialType::Random, None);
        c.spec.deletion_policy = DeletionPolicy::Retain;
        let plan = plan(&c, None, Timestamp::UNIX_EPOCH, &mut FixedEntropy(1)).unwrap();
        assert!(
            desired_secret(&c, &plan)
                .metadata
                .owner_references
                .is_none()
        );
        // Switching Delete -> Retain is a change to apply (the reference is removed).
        let mut d = c.clone();
        d.spec.deletion_policy = DeletionPolicy::Delete;
        let with_owner = desired_secret(&d, &plan);
        assert!(differs(
            c.spec.type_,
            Some(&with_owner),
            &desired_secret(&c, &plan)
        ));
    }

    #[test]
    fn steady_state_changes_nothing_and_needs_no_write() {
        let c = credential(CredentialType::Random, every("24h"));
        let t0 = ts("2026-11-22T10:00:00Z");
        let first = plan(&c, None, t0, &mut FixedEntropy(7)).unwrap();
        let s = stored(&c, &first);
        let later = plan(
            &c,
            Some(&s),
            ts("2026-11-23T09:59:59Z"),
            &mut FixedEntropy(8),
        )
        .unwrap();
        assert_eq!(later.change, None);
        assert_eq!(later.data, first.data);
        assert!(!differs(
            c.spec.type_,
            Some(&s),
            &desired_secret(&c, &later)
        ));
    }

    #[test]
    fn scheduled_rotation_keeps_the_previous_value_and_writes_new_before_old_goes() {
        let c = credential(CredentialType::Random, every("24h"));
        let first = plan(&c, None, ts("2026-11-22T10:00:00Z"), &mut FixedEntropy(7)).unwrap();
        let s1 = stored(&c, &first);
        let second = plan(
            &c,
            Some(&s1),
            ts("2026-11-23T10:00:00Z"),
            &mut FixedEntropy(8),
        )
        .unwrap();
        assert_eq!(second.change, Some(Change::Scheduled));
        assert_eq!(second.data[VALUE_PREVIOUS], first.data[VALUE]);
        assert_ne!(second.data[VALUE], first.data[VALUE]);
        assert_eq!(second.next_rotation, Some(ts("2026-11-24T10:00:00Z")));
        // A second rotation drops the oldest value only now that two newer ones exist.
        let s2 = stored(&c, &second);
        let third = plan(
            &c,
            Some(&s2),
            ts("2026-11-24T10:00:00Z"),
            &mut FixedEntropy(9),
        )
        .unwrap();
        assert_eq!(third.data[VALUE_PREVIOUS], second.data[VALUE]);
        assert!(!third.data.values().any(|v| *v == first.data[VALUE]));
    }

    #[test]
    fn keep_previous_false_drops_the_old_value() {
        let mut c = credential(CredentialType::Random, every("1h"));
        if let Some(r) = c.spec.rotation.as_mut() {
            r.keep_previous = false;
        }
        let first = plan(&c, None, ts("2026-01-01T00:00:00Z"), &mut FixedEntropy(1)).unwrap();
        let second = plan(
            &c,
            Some(&stored(&c, &first)),
            ts("2026-01-01T01:00:00Z"),
            &mut FixedEntropy(2),
        )
        .unwrap();
        assert_eq!(second.change, Some(Change::Scheduled));
        assert!(!second.data.contains_key(VALUE_PREVIOUS));
    }

    #[test]
    fn journal_recovery_status_behind_the_secret_never_rotates_twice() {
        // The Secret was rotated at 10:00 but the status write was lost in a crash: the next
        // reconcile reads the journal from the Secret and does nothing.
        let c = credential(CredentialType::Random, every("24h"));
        let first = plan(&c, None, ts("2026-11-21T10:00:00Z"), &mut FixedEntropy(1)).unwrap();
        let rotated = plan(
            &c,
            Some(&stored(&c, &first)),
            ts("2026-11-22T10:00:00Z"),
            &mut FixedEntropy(2),
        )
        .unwrap();
        assert_eq!(rotated.change, Some(Change::Scheduled));
        let s = stored(&c, &rotated);
        for minutes_later in [0, 1, 60, 23 * 60] {
            let now = ts("2026-11-22T10:00:00Z")
                .checked_add(jiff::SignedDuration::from_mins(minutes_later))
                .unwrap();
            let again = plan(&c, Some(&s), now, &mut FixedEntropy(3)).unwrap();
            assert_eq!(again.change, None, "{minutes_later} min later");
            assert_eq!(again.journal.rotated_at, Some(ts("2026-11-22T10:00:00Z")));
        }
    }

    #[test]
    fn journal_recovery_a_missed_slot_rotates_exactly_once() {
        // Down for three days with a daily rotation: one rotation on return, then the next
        // is a day after that, not three catch-up rotations.
        let c = credential(CredentialType::Random, every("24h"));
        let first = plan(&c, None, ts("2026-11-01T00:00:00Z"), &mut FixedEntropy(1)).unwrap();
        let back = plan(
            &c,
            Some(&stored(&c, &first)),
            ts("2026-11-04T06:00:00Z"),
            &mut FixedEntropy(2),
        )
        .unwrap();
        assert_eq!(back.change, Some(Change::Scheduled));
        assert_eq!(back.next_rotation, Some(ts("2026-11-05T06:00:00Z")));
        let again = plan(
            &c,
            Some(&stored(&c, &back)),
            ts("2026-11-04T06:00:01Z"),
            &mut FixedEntropy(3),
        )
        .unwrap();
        assert_eq!(again.change, None);
    }

    #[test]
    fn manual_request_rotates_once_per_annotation_value() {
        let mut c = credential(CredentialType::Random, None);
        let first = plan(&c, None, ts("2026-01-01T00:00:00Z"), &mut FixedEntropy(1)).unwrap();
        let s = stored(&c, &first);
        c.annotations_mut()
            .insert(ROTATE_REQUESTED_AT.into(), "2026-01-02T00:00:00Z".into());
        let rotated = plan(
            &c,
            Some(&s),
            ts("2026-01-02T00:00:05Z"),
            &mut FixedEntropy(2),
        )
        .unwrap();
        assert_eq!(rotated.change, Some(Change::Requested));
        assert_eq!(rotated.next_rotation, None, "no schedule: no next rotation");
        let s2 = stored(&c, &rotated);
        let again = plan(
            &c,
            Some(&s2),
            ts("2026-01-02T00:01:00Z"),
            &mut FixedEntropy(3),
        )
        .unwrap();
        assert_eq!(again.change, None, "the same request is honoured once");
        c.annotations_mut()
            .insert(ROTATE_REQUESTED_AT.into(), "2026-01-03T00:00:00Z".into());
        let next = plan(
            &c,
            Some(&s2),
            ts("2026-01-03T00:00:05Z"),
            &mut FixedEntropy(4),
        )
        .unwrap();
        assert_eq!(next.change, Some(Change::Requested));
    }

    #[test]
    fn a_request_present_at_creation_is_not_a_second_rotation() {
        let mut c = credential(CredentialType::Random, None);
        c.annotations_mut()
            .insert(ROTATE_REQUESTED_AT.into(), "x".into());
        let first = plan(&c, None, Timestamp::UNIX_EPOCH, &mut FixedEntropy(1)).unwrap();
        let again = plan(
            &c,
            Some(&stored(&c, &first)),
            Timestamp::UNIX_EPOCH,
            &mut FixedEntropy(2),
        )
        .unwrap();
        assert_eq!(again.change, None);
    }

    #[test]
    fn foreign_secret_is_a_conflict_and_never_planned() {
        let c = credential(CredentialType::Random, None);
        let foreign = Secret {
            metadata: ObjectMeta {
                name: Some("db-password".into()),
                ..ObjectMeta::default()
            },
            data: Some(
                [(VALUE.to_owned(), ByteString(b"theirs".to_vec()))]
                    .into_iter()
                    .collect(),
            ),
            ..Secret::default()
        };
        match plan(
            &c,
            Some(&foreign),
            Timestamp::UNIX_EPOCH,
            &mut FixedEntropy(1),
        ) {
            Err(Refusal::Conflict(msg)) => assert!(
                msg.contains("adopt: true") && msg.contains("db-password"),
                "{msg}"
            ),
            other => panic!("expected a conflict, got {other:?}"),
        }
        // A Secret managed for another Credential is foreign too.
        let mut other = credential(CredentialType::Random, None);
        other.metadata.name = Some("other".into());
        let theirs = stored(
            &other,
            &plan(&other, None, Timestamp::UNIX_EPOCH, &mut FixedEntropy(1)).unwrap(),
        );
        assert!(matches!(
            plan(
                &c,
                Some(&theirs),
                Timestamp::UNIX_EPOCH,
                &mut FixedEntropy(1)
            ),
            Err(Refusal::Conflict(_))
        ));
    }

    #[test]
    fn adopt_keeps_the_existing_value() {
        let mut c = credential(CredentialType::Random, None);
        c.spec.adopt = true;
        let foreign = Secret {
            metadata: ObjectMeta {
                name: Some("db-password".into()),
                ..ObjectMeta::default()
            },
            data: Some(
                [(VALUE.to_owned(), ByteString(b"their-value".to_vec()))]
                    .into_iter()
                    .collect(),
            ),
            ..Secret::default()
        };
        let p = plan(
            &c,
            Some(&foreign),
            Timestamp::UNIX_EPOCH,
            &mut FixedEntropy(1),
        )
        .unwrap();
        assert_eq!(p.change, Some(Change::Adopted));
        assert_eq!(p.data[VALUE], "their-value");
        assert_eq!(p.journal.key_id, Some(key_id("their-value")));
    }

    #[test]
    fn tampered_or_removed_value_is_repaired_keeping_what_was_there() {
        let c = credential(CredentialType::Random, None);
        let first = plan(&c, None, Timestamp::UNIX_EPOCH, &mut FixedEntropy(1)).unwrap();
        let mut s = stored(&c, &first);
        s.data
            .as_mut()
            .unwrap()
            .insert(VALUE.into(), ByteString(b"edited-by-hand".to_vec()));
        let repaired = plan(&c, Some(&s), Timestamp::UNIX_EPOCH, &mut FixedEntropy(2)).unwrap();
        assert_eq!(repaired.change, Some(Change::Repaired));
        assert_eq!(repaired.data[VALUE_PREVIOUS], "edited-by-hand");
        s.data.as_mut().unwrap().remove(VALUE);
        let regenerated = plan(&c, Some(&s), Timestamp::UNIX_EPOCH, &mut FixedEntropy(3)).unwrap();
        assert_eq!(regenerated.change, Some(Change::Repaired));
    }

    #[test]
    fn generator_change_rotates() {
        let mut c = credential(CredentialType::Random, None);
        let first = plan(&c, None, Timestamp::UNIX_EPOCH, &mut FixedEntropy(1)).unwrap();
        let s = stored(&c, &first);
        c.spec.random = Some(RandomSpec {
            length: 40,
            alphabet: Alphabet::Alphanumeric,
        });
        let p = plan(&c, Some(&s), Timestamp::UNIX_EPOCH, &mut FixedEntropy(2)).unwrap();
        assert_eq!(p.change, Some(Change::SpecChanged));
        assert_eq!(p.data[VALUE].len(), 40);
    }

    #[test]
    fn key_set_lifecycle() {
        let c = credential(CredentialType::KeySet, every("1h"));
        let t0 = ts("2026-01-01T00:00:00Z");
        let first = plan(&c, None, t0, &mut FixedEntropy(1)).unwrap();
        assert_eq!(first.data.keys().collect::<Vec<_>>(), ["0", "1"]);
        let mut s = stored(&c, &first);
        let mut previous_primary = first.data["1"].clone();
        for hour in 1..=6i64 {
            let now = t0
                .checked_add(jiff::SignedDuration::from_hours(hour))
                .unwrap();
            let p = plan(&c, Some(&s), now, &mut FixedEntropy(10 + hour as u64)).unwrap();
            assert_eq!(p.change, Some(Change::Scheduled));
            assert!(p.data.len() <= 3);
            let keys: KeySet = keyset::from_data(&p.data);
            let primary = keyset::primary(&keys).unwrap();
            assert_eq!(
                p.journal.key_id.as_deref(),
                Some(key_id(&keys[&primary]).as_str())
            );
            assert!(
                p.data.values().any(|v| *v == previous_primary),
                "the previous primary stays as a secondary"
            );
            previous_primary = keys[&primary].clone();
            s = stored(&c, &p);
        }
        let keys: Vec<u32> = keyset::from_data(&string_data(Some(&s)))
            .into_keys()
            .collect();
        assert_eq!(keys, vec![0, 6, 7]);
    }

    #[test]
    fn control_plane_types_need_the_link() {
        let c = credential(CredentialType::ControlPlaneToken, None);
        assert_eq!(
            plan(&c, None, Timestamp::UNIX_EPOCH, &mut FixedEntropy(1)),
            Err(Refusal::NeedsControlPlane(
                CredentialType::ControlPlaneToken
            ))
        );
    }
}
