//! What a Credential's Secret should hold, decided from the Secret itself.
//!
//! The Secret's own annotations are the rotation journal: the decision to rotate depends only
//! on them, the Credential and the clock, never on the Credential's status. A crash between
//! writing the Secret and writing the status therefore neither rotates twice nor skips one.

use std::collections::BTreeMap;

use hmac::{Hmac, KeyInit, Mac};
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
    ADOPTED_AT, CREDENTIAL_LABEL, DELETE_ADOPTED, EXPIRES_AT, GENERATOR, HANDLED_REQUEST, KEY_ID,
    KEY_ID_SALT, MANAGED_BY, MANAGED_BY_LABEL, RESTARTED_FOR, ROTATED_AT,
};
use crate::api::credential::{
    Alphabet, Credential, CredentialType, DeletionPolicy, ROTATE_REQUESTED_AT,
};

/// Data key of a Random credential's value.
pub const VALUE: &str = "value";
/// Data key of a Random credential's previous value during the overlap.
pub const VALUE_PREVIOUS: &str = "value.previous";

/// Who the existing Secret belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ownership {
    Missing,
    Managed,
    /// Managed by Bulkhead for another Credential: never taken over, adopt or not.
    OtherCredential,
    Foreign,
}

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

/// The refusal for a Secret that another Credential manages.
pub fn other_credential_conflict(credential: &Credential, secret: &Secret) -> Refusal {
    let other = secret
        .labels()
        .get(CREDENTIAL_LABEL)
        .cloned()
        .unwrap_or_default();
    Refusal::Conflict(format!(
        "Secret {} is managed by Bulkhead for another Credential ({CREDENTIAL_LABEL}={other}); a Secret belongs to one Credential, adopt or not, and it was left untouched. Choose another spec.secretName; if Credential {other} no longer exists, remove the label {CREDENTIAL_LABEL} from the Secret and set spec.adopt: true",
        credential.secret_name()
    ))
}

/// What cannot be adopted without loss (SPEC §4): a Secret of another type (a type cannot
/// change), a non-text value under a key the Credential manages as text, a key repository
/// without its staged key 0 or its primary.
pub fn check_adoptable(credential: &Credential, secret: &Secret) -> Result<(), Refusal> {
    let name = credential.secret_name();
    let type_ = credential.spec.type_;
    let wanted = secret_type(type_);
    let existing = secret.type_.as_deref().unwrap_or("Opaque");
    if existing != wanted {
        return Err(Refusal::Conflict(format!(
            "Secret {name} has type {existing}, and a {} Credential needs type {wanted}; a Secret's type cannot change, so it cannot be adopted and was left untouched. Choose another spec.secretName, or move the data to a Secret of type {wanted}",
            type_.as_str()
        )));
    }
    let data = secret.data.clone().unwrap_or_default();
    let binary: Vec<&str> = data
        .iter()
        .filter(|(k, v)| is_managed_key(type_, k) && std::str::from_utf8(&v.0).is_err())
        .map(|(k, _)| k.as_str())
        .collect();
    if !binary.is_empty() {
        return Err(Refusal::Conflict(format!(
            "Secret {name}: key {} is not UTF-8 text, and a {} Credential manages that key as text; adopting would replace it, so the Secret was left untouched. Move the value to another key or Secret, or choose another spec.secretName",
            binary.join(", "),
            type_.as_str()
        )));
    }
    if type_ == CredentialType::KeySet {
        let keys = keyset::from_data(&string_data(Some(secret)));
        if !keys.is_empty() && (!keys.contains_key(&0) || keyset::primary(&keys).is_none()) {
            let indices: Vec<String> = keys.keys().map(u32::to_string).collect();
            return Err(Refusal::Conflict(format!(
                "Secret {name} holds numbered keys {} but not a complete key repository (key 0 staged and a primary above it); adopting would overwrite a key, so the Secret was left untouched. Add the missing key, or choose another spec.secretName",
                indices.join(", ")
            )));
        }
    }
    Ok(())
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
    /// The random salt of the keyed key id (absent in Secrets written before key ids were
    /// keyed, whose key id is an unkeyed hash).
    pub key_id_salt: Option<String>,
    /// When the Secret was adopted: it existed before Bulkhead.
    pub adopted_at: Option<Timestamp>,
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
            key_id_salt: a.get(KEY_ID_SALT).cloned(),
            adopted_at: a.get(ADOPTED_AT).and_then(|t| t.parse().ok()),
        }
    }

    /// Whether the journal's key id is the id of `value`.
    pub fn identifies(&self, value: &str) -> bool {
        let id = match &self.key_id_salt {
            Some(salt) => key_id(salt, value),
            None => unkeyed_key_id(value),
        };
        self.key_id.as_deref() == Some(id.as_str())
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
        put(KEY_ID_SALT, &self.key_id_salt);
        put(ADOPTED_AT, &self.adopted_at.map(|t| t.to_string()));
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
    Entropy(getrandom::Error),
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

/// A short identifier of a value: the first 16 hex digits of HMAC-SHA-256 keyed with the
/// Secret's random salt. The id is shown in status and Events, which more people may read than
/// the Secret: without the salt (kept in the Secret) a guess of the value cannot be checked.
pub fn key_id(salt: &str, value: &str) -> String {
    // HMAC accepts a key of any length: this cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(salt.as_bytes()) else {
        return String::new();
    };
    mac.update(value.as_bytes());
    let digest = mac.finalize().into_bytes();
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The unkeyed id (the first 16 hex digits of SHA-256): issued values (random tokens, not
/// guessable), and the journal of Secrets written before key ids were keyed.
pub fn unkeyed_key_id(value: &str) -> String {
    let digest = Sha256::digest(value.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// A new random salt for the keyed key id.
fn new_salt(entropy: &mut dyn Entropy) -> Result<String, Refusal> {
    random::random_string(entropy, 32, Alphabet::Hex).map_err(entropy_err)
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
    Refusal::Entropy(e)
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
    if let Some(s) = secret {
        match owned {
            Ownership::OtherCredential => return Err(other_credential_conflict(credential, s)),
            Ownership::Foreign if !spec.adopt => {
                return Err(Refusal::Conflict(format!(
                    "Secret {} exists and is not managed by Bulkhead; it was left untouched. Set spec.adopt: true to take it over (its data is kept), or choose another spec.secretName",
                    credential.secret_name()
                )));
            }
            Ownership::Foreign => check_adoptable(credential, s)?,
            Ownership::Missing | Ownership::Managed => {}
        }
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
    let salt = match &journal.key_id_salt {
        Some(salt) => salt.clone(),
        None => new_salt(entropy)?,
    };
    let current = string_data(secret);
    let request = credential.annotations().get(ROTATE_REQUESTED_AT).cloned();
    let requested =
        request.is_some() && request != journal.handled_request && owned == Ownership::Managed;
    let due = |last: Option<Timestamp>| match (&policy, last) {
        (Some(p), Some(last)) => schedule::next_after(p, last).is_some_and(|next| now >= next),
        _ => false,
    };
    // An adopted Secret's keys stay as they were until its first rotation.
    let untouched_since_adoption =
        journal.adopted_at.is_some() && journal.adopted_at == journal.rotated_at;

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
                Ownership::Foreign | Ownership::OtherCredential => Some(Change::Adopted),
                Ownership::Managed => match &existing {
                    None => Some(Change::Repaired),
                    Some(v) if !journal.identifies(v) => Some(Change::Repaired),
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
            let adopted_previous =
                change == Some(Change::Adopted) || (change.is_none() && untouched_since_adoption);
            if let Some(p) = previous.filter(|p| *p != value || adopted_previous)
                && (keep_previous || adopted_previous)
            {
                data.insert(VALUE_PREVIOUS.to_owned(), p);
            }
            let id = key_id(&salt, &value);
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
            let (keys, change) = match owned {
                Ownership::Missing => (keyset::initial(&mut new_key), Some(Change::Created)),
                // check_adoptable let through only a complete repository or none at all.
                Ownership::Foreign | Ownership::OtherCredential if existing.is_empty() => {
                    (keyset::initial(&mut new_key), Some(Change::Adopted))
                }
                Ownership::Foreign | Ownership::OtherCredential => {
                    (existing, Some(Change::Adopted))
                }
                Ownership::Managed => plan_managed_key_set(
                    credential,
                    &journal,
                    existing,
                    requested,
                    due(journal.rotated_at),
                    &mut new_key,
                )?,
            };
            if let Some(e) = failure {
                return Err(entropy_err(e));
            }
            // A smaller size trims the oldest secondaries, at a rotation: never a key that
            // was just adopted or a repair.
            let mut keys = keys;
            let trims = matches!(
                change,
                Some(Change::Scheduled | Change::Requested | Change::SpecChanged)
            );
            while trims && keys.len() > size {
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
            let id = keyset::primary(&keys)
                .and_then(|i| keys.get(&i))
                .map(|k| key_id(&salt, k))
                .unwrap_or_default();
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
        // Re-keyed (salt added): the same value under its new id.
        None if journal.key_id_salt.is_none() && journal.restarted_for == journal.key_id => {
            Some(key.clone())
        }
        _ => journal.restarted_for.clone(),
    };
    let adopted_at = match change {
        Some(Change::Adopted) => Some(now),
        _ => journal.adopted_at,
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
            key_id_salt: Some(salt),
            adopted_at,
        },
        change,
        next_rotation,
    })
}

/// A managed key repository: keep it, rotate it, or repair it without dropping a key Bulkhead
/// wrote. The journal's key id names the primary Bulkhead wrote; a numbered key above it was
/// not written by Bulkhead and is reported, never "repaired" away.
fn plan_managed_key_set(
    credential: &Credential,
    journal: &Journal,
    existing: KeySet,
    requested: bool,
    due: bool,
    mut new_key: impl FnMut() -> String,
) -> Result<(KeySet, Option<Change>), Refusal> {
    let size = usize::from(credential.spec.key_set.clone().unwrap_or_default().size);
    let primary = existing
        .iter()
        .filter(|(i, _)| **i != 0)
        .find(|(_, k)| journal.identifies(k))
        .map(|(i, _)| *i);
    if let Some(primary) = primary {
        let unknown: Vec<String> = existing
            .keys()
            .filter(|i| **i > primary)
            .map(u32::to_string)
            .collect();
        if !unknown.is_empty() {
            return Err(Refusal::Conflict(format!(
                "Secret {}: key {} was not written by Bulkhead (the primary it wrote is key {primary}); it was left untouched, and the key set is not rotated while it is there. Remove the key, or move it to another Secret",
                credential.secret_name(),
                unknown.join(", ")
            )));
        }
    }
    Ok(match primary {
        _ if existing.is_empty() => (keyset::initial(&mut new_key), Some(Change::Repaired)),
        // The primary Bulkhead wrote was changed or removed: promote the staged key to a new
        // primary; every other key stays.
        None => (
            keyset::rotate(&existing, existing.len() + 1, &mut new_key),
            Some(Change::Repaired),
        ),
        Some(_) if !existing.contains_key(&0) => {
            let mut keys = existing;
            keys.insert(0, new_key());
            (keys, Some(Change::Repaired))
        }
        Some(_) if requested => (
            keyset::rotate(&existing, size, &mut new_key),
            Some(Change::Requested),
        ),
        Some(_) if due => (
            keyset::rotate(&existing, size, &mut new_key),
            Some(Change::Scheduled),
        ),
        Some(_) => (existing, None),
    })
}

/// The Secret to apply for a plan: labels, journal annotations, owner reference (Delete
/// policy only: Retain keeps the Secret when the Credential goes; an adopted Secret existed
/// before Bulkhead, so it is deleted with its Credential only if the Credential says so
/// explicitly with the annotation `bulkhead.dev/delete-adopted-secret: "true"`), data.
pub fn desired_secret(credential: &Credential, plan: &Plan) -> Secret {
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

/// The journal annotations Bulkhead writes (and so removes when it stops writing them).
const JOURNAL_ANNOTATIONS: [&str; 8] = [
    ROTATED_AT,
    KEY_ID,
    GENERATOR,
    HANDLED_REQUEST,
    RESTARTED_FOR,
    EXPIRES_AT,
    KEY_ID_SALT,
    ADOPTED_AT,
];

/// A merge patch removing what Bulkhead stopped writing but an apply could not remove, because
/// another field manager still owns it too: the create (a `POST` is manager `bulkhead`,
/// operation `Update`, not the applier), an earlier version of Bulkhead, or an adopted Secret's
/// previous owner. Guarded by the resourceVersion of `current` (the object as just written),
/// so a concurrent change is never overwritten. `None` when nothing is left over.
pub fn removal_patch(
    type_: CredentialType,
    current: &Secret,
    desired: &Secret,
) -> Option<serde_json::Value> {
    let mut data = serde_json::Map::new();
    let wanted_data = desired.data.clone().unwrap_or_default();
    for key in current.data.iter().flatten().map(|(k, _)| k) {
        if is_managed_key(type_, key) && !wanted_data.contains_key(key) {
            data.insert(key.clone(), serde_json::Value::Null);
        }
    }
    let mut annotations = serde_json::Map::new();
    let wanted_annotations = desired.metadata.annotations.clone().unwrap_or_default();
    for key in current.annotations().keys() {
        if JOURNAL_ANNOTATIONS.contains(&key.as_str()) && !wanted_annotations.contains_key(key) {
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
        assert_eq!(
            s.annotations()[KEY_ID],
            key_id(&s.annotations()[KEY_ID_SALT], &v)
        );
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
        let salt = p.journal.key_id_salt.clone().unwrap();
        assert_eq!(p.journal.key_id, Some(key_id(&salt, "their-value")));
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
                Some(key_id(p.journal.key_id_salt.as_deref().unwrap(), &keys[&primary]).as_str())
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

    #[test]
    fn long_names_get_a_label_safe_unique_value() {
        assert_eq!(credential_label("db"), "db");
        let long = format!("a-{}", "x".repeat(80));
        let label = credential_label(&long);
        assert_eq!(label.len(), 63);
        assert!(label.starts_with("a-xxx") && label.chars().last().unwrap().is_ascii_hexdigit());
        let other = format!("a-{}y", "x".repeat(80));
        assert_ne!(
            credential_label(&other),
            label,
            "the hash keeps names apart"
        );
        let mut c = credential(CredentialType::Random, None);
        c.metadata.name = Some(long.clone());
        let p = plan(&c, None, Timestamp::UNIX_EPOCH, &mut FixedEntropy(1)).unwrap();
        let s = desired_secret(&c, &p);
        assert_eq!(s.labels()[CREDENTIAL_LABEL], label);
        assert_eq!(ownership(&c, Some(&s)), Ownership::Managed);
    }

    #[test]
    fn key_ids_are_keyed_by_a_salt_kept_in_the_secret_and_stable() {
        let c = credential(CredentialType::Random, None);
        let first = plan(&c, None, Timestamp::UNIX_EPOCH, &mut FixedEntropy(1)).unwrap();
        let salt = first.journal.key_id_salt.clone().unwrap();
        assert_eq!(salt.len(), 32);
        let value = &first.data[VALUE];
        assert_ne!(first.journal.key_id, Some(unkeyed_key_id(value)));
        let again = plan(
            &c,
            Some(&stored(&c, &first)),
            Timestamp::UNIX_EPOCH,
            &mut FixedEntropy(2),
        )
        .unwrap();
        assert_eq!(again.change, None);
        assert_eq!(again.journal.key_id, first.journal.key_id, "stable");
        // Another Secret with the same value has another id.
        let other = plan(&c, None, Timestamp::UNIX_EPOCH, &mut FixedEntropy(9)).unwrap();
        assert_ne!(
            key_id(&other.journal.key_id_salt.unwrap(), value),
            first.journal.key_id.unwrap()
        );
    }

    #[test]
    fn a_secret_journalled_with_an_unkeyed_id_is_rekeyed_without_a_rotation() {
        let c = credential(CredentialType::Random, None);
        let first = plan(&c, None, Timestamp::UNIX_EPOCH, &mut FixedEntropy(1)).unwrap();
        let mut s = stored(&c, &first);
        let value = first.data[VALUE].clone();
        let a = s.metadata.annotations.as_mut().unwrap();
        a.remove(KEY_ID_SALT);
        a.insert(KEY_ID.into(), unkeyed_key_id(&value));
        a.insert(RESTARTED_FOR.into(), unkeyed_key_id(&value));
        let p = plan(&c, Some(&s), Timestamp::UNIX_EPOCH, &mut FixedEntropy(2)).unwrap();
        assert_eq!(p.change, None);
        assert_eq!(p.data[VALUE], value);
        assert!(p.journal.key_id_salt.is_some());
        assert_eq!(p.journal.restarted_for, p.journal.key_id, "no restart owed");
        assert!(differs(c.spec.type_, Some(&s), &desired_secret(&c, &p)));
    }

    #[test]
    fn key_set_repair_keeps_every_key_bulkhead_wrote() {
        let c = credential(CredentialType::KeySet, every("1h"));
        let t0 = ts("2026-01-01T00:00:00Z");
        let mut s = stored(&c, &plan(&c, None, t0, &mut FixedEntropy(1)).unwrap());
        for hour in 1..=2i64 {
            let now = t0
                .checked_add(jiff::SignedDuration::from_hours(hour))
                .unwrap();
            s = stored(
                &c,
                &plan(&c, Some(&s), now, &mut FixedEntropy(10 + hour as u64)).unwrap(),
            );
        }
        let written: KeySet = keyset::from_data(&string_data(Some(&s)));
        assert_eq!(written.keys().copied().collect::<Vec<_>>(), [0, 2, 3]);
        // A hand-added key above the primary: reported, nothing dropped.
        let mut tampered = s.clone();
        tampered
            .data
            .as_mut()
            .unwrap()
            .insert("99".into(), ByteString(b"by-hand".to_vec()));
        match plan(&c, Some(&tampered), t0, &mut FixedEntropy(3)) {
            Err(Refusal::Conflict(msg)) => assert!(msg.contains("key 99"), "{msg}"),
            other => panic!("expected a conflict, got {other:?}"),
        }
        // The staged key removed: re-staged, every other key kept.
        let mut unstaged = s.clone();
        unstaged.data.as_mut().unwrap().remove("0");
        let p = plan(&c, Some(&unstaged), t0, &mut FixedEntropy(4)).unwrap();
        assert_eq!(p.change, Some(Change::Repaired));
        for i in ["2", "3"] {
            assert_eq!(p.data[i], written[&i.parse::<u32>().unwrap()]);
        }
        // The primary removed: the staged key is promoted, the secondary stays.
        let mut unprimed = s.clone();
        unprimed.data.as_mut().unwrap().remove("3");
        let p = plan(&c, Some(&unprimed), t0, &mut FixedEntropy(5)).unwrap();
        assert_eq!(p.change, Some(Change::Repaired));
        assert_eq!(p.data["2"], written[&2]);
        assert_eq!(
            p.data["3"], written[&0],
            "the staged key is the new primary"
        );
    }

    #[test]
    fn removal_patch_names_only_what_bulkhead_dropped_and_is_guarded() {
        let mut c = credential(CredentialType::Random, every("1h"));
        let p = plan(&c, None, Timestamp::UNIX_EPOCH, &mut FixedEntropy(1)).unwrap();
        let mut current = desired_secret(&c, &p);
        current.metadata.resource_version = Some("42".into());
        let data = current.data.as_mut().unwrap();
        data.insert(VALUE_PREVIOUS.into(), ByteString(b"old".to_vec()));
        data.insert("theirs".into(), ByteString(b"kept".to_vec()));
        assert!(
            removal_patch(
                c.spec.type_,
                &desired_secret(&c, &p),
                &desired_secret(&c, &p)
            )
            .is_none()
        );
        c.spec.deletion_policy = DeletionPolicy::Retain;
        let patch = removal_patch(c.spec.type_, &current, &desired_secret(&c, &p)).unwrap();
        assert_eq!(
            patch,
            serde_json::json!({
                "metadata": {"resourceVersion": "42", "ownerReferences": null},
                "data": {VALUE_PREVIOUS: null},
            })
        );
    }

    #[test]
    fn adopting_what_would_lose_data_is_a_conflict_naming_the_cause() {
        let mut c = credential(CredentialType::Random, None);
        c.spec.adopt = true;
        let foreign = |type_: &str, data: &[(&str, &[u8])]| Secret {
            metadata: ObjectMeta {
                name: Some("db-password".into()),
                ..ObjectMeta::default()
            },
            type_: Some(type_.into()),
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        };
        let conflict = |c: &Credential, s: &Secret| match plan(
            c,
            Some(s),
            Timestamp::UNIX_EPOCH,
            &mut FixedEntropy(1),
        ) {
            Err(Refusal::Conflict(msg)) => msg,
            other => panic!("expected a conflict, got {other:?}"),
        };
        assert!(conflict(&c, &foreign("Opaque", &[(VALUE, &[0xff])])).contains("not UTF-8"));
        assert!(
            conflict(&c, &foreign("kubernetes.io/tls", &[])).contains("type kubernetes.io/tls")
        );
        let mut k = credential(CredentialType::KeySet, None);
        k.spec.adopt = true;
        assert!(conflict(&k, &foreign("Opaque", &[("1", b"a"), ("2", b"b")])).contains("key 0"));
        // Binary values under other keys are fine: they are not written at all.
        let p = plan(
            &c,
            Some(&foreign("Opaque", &[(VALUE, b"v"), ("blob", &[0xff])])),
            Timestamp::UNIX_EPOCH,
            &mut FixedEntropy(1),
        )
        .unwrap();
        assert!(!p.data.contains_key("blob"));
        let s = desired_secret(&c, &p);
        assert!(
            s.metadata.owner_references.is_none(),
            "adopted: not deleted with the Credential"
        );
        c.annotations_mut()
            .insert(DELETE_ADOPTED.into(), "true".into());
        assert!(desired_secret(&c, &p).metadata.owner_references.is_some());
    }
}
