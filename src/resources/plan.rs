//! The vocabulary of planning, and the interface every credential type implements.
//!
//! A plan is pure: what the Secret holds (`Observed`, after the rules every type shares, see
//! `super::secret::observe`) and the clock in, a [`Step`] or a [`Refusal`] out. Each type
//! (`crate::credentials`) only decides its own data; the rules shared by all of them — the
//! rotation policy, the request annotation, when a restart is owed — are written here once.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::events::EventType;

use super::entropy::{self, Entropy};
use super::journal::Journal;
use super::schedule::{self, Policy};
use crate::api::credential::{Alphabet, Credential, CredentialType};

/// Who the existing Secret belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ownership {
    Missing,
    Managed,
    /// Managed by Bulkhead for another Credential: never taken over, adopt or not.
    OtherCredential,
    Foreign,
}

/// Why the value changes in this reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// The Secret did not exist.
    Created,
    /// An existing Secret was taken over (`adopt: true`); its value was kept if usable.
    Adopted,
    /// `rotation.every` or `rotation.schedule` was due (or an issued value's refresh time).
    Scheduled,
    /// The `bulkhead.dev/rotate-requested-at` annotation asked for it.
    Requested,
    /// The generator settings changed (length, alphabet, audience, ...).
    SpecChanged,
    /// Someone changed or removed the value in the Secret.
    Repaired,
}

impl Change {
    /// Whether workloads must restart to pick up the new value.
    pub fn is_rotation(self) -> bool {
        !matches!(self, Self::Created | Self::Adopted)
    }

    /// The reason of the `Rotated` condition and of the Event: the one change → reason table.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Created => "Created",
            Self::Adopted => "Adopted",
            Self::Repaired => "Repaired",
            Self::Scheduled | Self::Requested | Self::SpecChanged => "Rotated",
        }
    }

    /// A repair means someone changed a managed value: a Warning; everything else is Normal.
    pub fn event_type(self) -> EventType {
        match self {
            Self::Repaired => EventType::Warning,
            _ => EventType::Normal,
        }
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
    /// A Secret of that name exists and is not ours (or cannot be adopted without loss).
    Conflict(String),
    /// The spec cannot be acted on.
    InvalidSpec(String),
    /// This type needs the control-plane link.
    NeedsControlPlane(CredentialType),
    /// The CSPRNG failed.
    Entropy(getrandom::Error),
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

/// What to ask the control plane for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Token { audience: String, ttl: Duration },
    Registry { server: String },
}

/// What the control plane issued, as Secret data.
#[derive(Clone, PartialEq, Eq)]
pub struct Issued {
    pub data: BTreeMap<String, String>,
    pub expires_at: Timestamp,
}

impl std::fmt::Debug for Issued {
    // The values are credentials: only the keys are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// What a type's plan decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Write (or keep) this.
    Write(Box<Plan>),
    /// Ask the control plane for a new value, then plan what it issued with
    /// [`CredentialKind::plan_issued`].
    Issue { request: Request, change: Change },
}

/// What a plan starts from: the Secret as the shared rules let it through (never another
/// Credential's, never a foreign one without `adopt`, never one of the wrong type).
#[derive(Clone, Debug)]
pub struct Observed<'a> {
    pub credential: &'a Credential,
    pub secret: Option<&'a Secret>,
    /// `Missing`, `Managed` or `Foreign` (being adopted).
    pub ownership: Ownership,
    /// The Secret's journal when it is managed, else empty.
    pub journal: Journal,
    /// The Secret's text values.
    pub data: BTreeMap<String, String>,
    /// `spec.rotation`, parsed.
    pub policy: Option<Policy>,
    /// The `rotate-requested-at` annotation.
    pub request: Option<String>,
    pub now: Timestamp,
}

impl Observed<'_> {
    /// Whether a manual rotation was asked for and not honoured yet.
    pub fn requested(&self) -> bool {
        self.ownership == Ownership::Managed
            && self.request.is_some()
            && self.request != self.journal.handled_request
    }

    /// When the rotation after `last` is due, if the policy has one.
    pub fn next_after(&self, last: Timestamp) -> Option<Timestamp> {
        self.policy
            .as_ref()
            .and_then(|p| schedule::next_after(p, last))
    }

    /// Whether a scheduled rotation is due for a value written at `last`.
    pub fn due(&self, last: Option<Timestamp>) -> bool {
        last.and_then(|l| self.next_after(l))
            .is_some_and(|next| self.now >= next)
    }

    /// The change a Secret that is not (yet) managed needs: `None` when it is managed.
    pub fn first_change(&self) -> Option<Change> {
        match self.ownership {
            Ownership::Missing => Some(Change::Created),
            Ownership::Foreign | Ownership::OtherCredential => Some(Change::Adopted),
            Ownership::Managed => None,
        }
    }

    /// `restarted-for` after this change: nothing ran with a value that did not exist before
    /// (created, adopted), so no restart is owed for it; a re-keyed journal (salt added, same
    /// value) keeps "restarted" under the new id; anything else keeps what was recorded.
    pub fn restarted_for(&self, change: Option<Change>, key: &str) -> Option<String> {
        let journal = &self.journal;
        match change {
            Some(Change::Created | Change::Adopted) => Some(key.to_owned()),
            None if journal.key_id_salt.is_none() && journal.restarted_for == journal.key_id => {
                Some(key.to_owned())
            }
            _ => journal.restarted_for.clone(),
        }
    }

    /// The plan of a generated value (Random, KeySet): the journal after `change`, the next
    /// rotation counted from it.
    pub fn generated(
        &self,
        data: BTreeMap<String, String>,
        key: String,
        generator: String,
        change: Option<Change>,
        salt: String,
    ) -> Plan {
        let journal = &self.journal;
        let rotated_at = match change {
            Some(_) => Some(self.now),
            None => journal.rotated_at.or(Some(self.now)),
        };
        let handled_request = if change.is_some() || self.requested() {
            self.request.clone()
        } else {
            journal.handled_request.clone()
        };
        Plan {
            data,
            journal: Journal {
                rotated_at,
                restarted_for: self.restarted_for(change, &key),
                key_id: Some(key),
                generator: Some(generator),
                handled_request,
                expires_at: None,
                key_id_salt: Some(salt),
                adopted_at: self.adopted_at(change),
            },
            change,
            next_rotation: rotated_at.and_then(|last| self.next_after(last)),
        }
    }

    /// `adopted-at` after this change.
    pub fn adopted_at(&self, change: Option<Change>) -> Option<Timestamp> {
        match change {
            Some(Change::Adopted) => Some(self.now),
            _ => self.journal.adopted_at,
        }
    }
}

/// A credential type: what its Secret looks like and how its value is planned.
pub trait CredentialKind: Sync {
    /// The Secret type (immutable once the Secret exists).
    fn secret_type(&self) -> &'static str {
        "Opaque"
    }

    /// Whether Bulkhead manages this data key (every other key belongs to whoever wrote it).
    fn manages_key(&self, key: &str) -> bool;

    /// What must hold for an existing Secret to be adopted without loss, beyond its type.
    /// By default: every managed key holds UTF-8 text (see [`check_text`]).
    fn check_adoptable(&self, credential: &Credential, secret: &Secret) -> Result<(), Refusal> {
        check_text(self, credential, secret)
    }

    /// What the Secret should hold now (pure).
    fn plan(&self, observed: &Observed<'_>, entropy: &mut dyn Entropy) -> Result<Step, Refusal>;

    /// The plan for what the control plane issued after a [`Step::Issue`] (pure). Types
    /// generated locally never ask.
    fn plan_issued(
        &self,
        observed: &Observed<'_>,
        change: Change,
        issued: Issued,
    ) -> Result<Plan, Refusal> {
        let _ = (change, issued);
        Err(Refusal::InvalidSpec(format!(
            "type {} is generated locally, not issued",
            observed.credential.spec.type_.as_str()
        )))
    }
}

/// Parse `spec.rotation` (absent: never rotated on a schedule).
pub fn rotation_policy(credential: &Credential) -> Result<Option<Policy>, Refusal> {
    credential
        .spec
        .rotation
        .as_ref()
        .map(schedule::policy)
        .transpose()
        .map_err(Refusal::InvalidSpec)
}

/// The refusal for a failed CSPRNG.
pub fn entropy_failed(e: getrandom::Error) -> Refusal {
    Refusal::Entropy(e)
}

/// The journal's salt: the one it has, or a new random one for the keyed key id.
pub fn salt(journal: &Journal, entropy: &mut dyn Entropy) -> Result<String, Refusal> {
    match &journal.key_id_salt {
        Some(salt) => Ok(salt.clone()),
        None => entropy::random_string(entropy, 32, Alphabet::Hex).map_err(entropy_failed),
    }
}

/// A generated value is kept as text: a managed key holding anything else cannot be adopted
/// without replacing it.
pub fn check_text<K: CredentialKind + ?Sized>(
    kind: &K,
    credential: &Credential,
    secret: &Secret,
) -> Result<(), Refusal> {
    let binary: Vec<&str> = secret
        .data
        .iter()
        .flatten()
        .filter(|(k, v)| kind.manages_key(k) && std::str::from_utf8(&v.0).is_err())
        .map(|(k, _)| k.as_str())
        .collect();
    if binary.is_empty() {
        return Ok(());
    }
    Err(Refusal::Conflict(format!(
        "Secret {}: key {} is not UTF-8 text, and a {} Credential manages that key as text; adopting would replace it, so the Secret was left untouched. Move the value to another key or Secret, or choose another spec.secretName",
        credential.secret_name(),
        binary.join(", "),
        credential.spec.type_.as_str()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed<'a>(c: &'a Credential, ownership: Ownership, journal: Journal) -> Observed<'a> {
        Observed {
            credential: c,
            secret: None,
            ownership,
            journal,
            data: BTreeMap::new(),
            policy: rotation_policy(c).unwrap_or_else(|e| panic!("{e:?}")),
            request: c
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(crate::api::credential::ROTATE_REQUESTED_AT).cloned()),
            now: Timestamp::UNIX_EPOCH,
        }
    }

    #[test]
    fn a_request_counts_once_and_only_for_a_managed_secret() {
        let c = crate::api::credential("db")
            .annotate(crate::api::credential::ROTATE_REQUESTED_AT, "r1")
            .build();
        let handled = |h: Option<&str>| Journal {
            handled_request: h.map(str::to_owned),
            ..Journal::default()
        };
        assert!(observed(&c, Ownership::Managed, handled(None)).requested());
        assert!(observed(&c, Ownership::Managed, handled(Some("r0"))).requested());
        assert!(!observed(&c, Ownership::Managed, handled(Some("r1"))).requested());
        assert!(!observed(&c, Ownership::Missing, handled(None)).requested());
        assert!(!observed(&c, Ownership::Foreign, handled(None)).requested());
    }

    #[test]
    fn a_restart_is_owed_only_for_a_value_something_ran_with() {
        let c = crate::api::credential("db").build();
        let journal = Journal {
            key_id: Some("k1".into()),
            restarted_for: Some("k0".into()),
            key_id_salt: Some("salt".into()),
            ..Journal::default()
        };
        let o = observed(&c, Ownership::Managed, journal.clone());
        for change in [Change::Created, Change::Adopted] {
            assert_eq!(o.restarted_for(Some(change), "k2").as_deref(), Some("k2"));
        }
        for change in [
            Some(Change::Scheduled),
            Some(Change::Requested),
            Some(Change::SpecChanged),
            Some(Change::Repaired),
            None,
        ] {
            assert_eq!(o.restarted_for(change, "k2").as_deref(), Some("k0"));
        }
        // Re-keyed (no salt before, restarted for the old id): still restarted.
        let unkeyed = Journal {
            key_id: Some("old".into()),
            restarted_for: Some("old".into()),
            ..Journal::default()
        };
        let o = observed(&c, Ownership::Managed, unkeyed);
        assert_eq!(o.restarted_for(None, "new").as_deref(), Some("new"));
        assert_eq!(
            observed(&c, Ownership::Missing, journal).first_change(),
            Some(Change::Created)
        );
    }

    #[test]
    fn a_bad_rotation_policy_is_an_invalid_spec_naming_the_field() {
        let c = crate::api::credential("db").every("30s").build();
        match rotation_policy(&c) {
            Err(Refusal::InvalidSpec(msg)) => assert!(msg.contains("spec.rotation.every"), "{msg}"),
            other => panic!("{other:?}"),
        }
        let c = crate::api::credential("db").every("1h").build();
        let o = observed(&c, Ownership::Managed, Journal::default());
        let hour = Timestamp::from_second(3600).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(o.next_after(Timestamp::UNIX_EPOCH), Some(hour));
        assert!(
            !o.due(Some(Timestamp::UNIX_EPOCH)),
            "now is the epoch: not yet"
        );
        assert!(!o.due(None));
    }
}
