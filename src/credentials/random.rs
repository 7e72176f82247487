//! `Random`: a random string from the CSPRNG under `value`; after a rotation the old one stays
//! under `value.previous` (unless `keepPrevious: false`), written in the same apply as the new.

use std::collections::BTreeMap;

use crate::resources::entropy::{self, Entropy};
use crate::resources::journal::key_id;
use crate::resources::plan::{self, Change, CredentialKind, Observed, Ownership, Refusal, Step};

/// Data key of a Random credential's value.
pub const VALUE: &str = "value";
/// Data key of a Random credential's previous value during the overlap.
pub const VALUE_PREVIOUS: &str = "value.previous";

/// The `Random` type.
pub struct Random;

impl CredentialKind for Random {
    fn manages_key(&self, key: &str) -> bool {
        key == VALUE || key == VALUE_PREVIOUS
    }

    fn plan(&self, o: &Observed<'_>, entropy: &mut dyn Entropy) -> Result<Step, Refusal> {
        let spec = &o.credential.spec;
        let r = spec.random.clone().unwrap_or_default();
        let length = usize::try_from(r.length)
            .map_err(|_| Refusal::InvalidSpec("spec.random.length is too large".into()))?;
        if !(8..=4096).contains(&length) {
            return Err(Refusal::InvalidSpec(format!(
                "spec.random.length must be 8 to 4096, not {length}"
            )));
        }
        let generator = format!("Random/{length}/{:?}", r.alphabet).to_lowercase();
        let salt = plan::salt(&o.journal, entropy)?;
        let journal = &o.journal;
        let keep_previous = spec.rotation.as_ref().is_none_or(|r| r.keep_previous);
        // An adopted Secret's keys stay as they were until its first rotation.
        let untouched_since_adoption =
            journal.adopted_at.is_some() && journal.adopted_at == journal.rotated_at;
        let existing = o.data.get(VALUE).cloned();
        let change = match (o.ownership, &existing) {
            (Ownership::Managed, None) => Some(Change::Repaired),
            (Ownership::Managed, Some(v)) if !journal.identifies(v) => Some(Change::Repaired),
            (Ownership::Managed, Some(_))
                if journal.generator.as_deref() != Some(generator.as_str()) =>
            {
                Some(Change::SpecChanged)
            }
            (Ownership::Managed, Some(_)) if o.requested() => Some(Change::Requested),
            (Ownership::Managed, Some(_)) if o.due(journal.rotated_at) => Some(Change::Scheduled),
            _ => o.first_change(),
        };
        let value = match (change, &existing) {
            (None | Some(Change::Adopted), Some(v)) => v.clone(),
            _ => {
                entropy::random_string(entropy, length, r.alphabet).map_err(plan::entropy_failed)?
            }
        };
        let previous = match change {
            Some(c) if c.is_rotation() => existing.clone(),
            _ => o.data.get(VALUE_PREVIOUS).cloned(),
        };
        let adopted_previous =
            change == Some(Change::Adopted) || (change.is_none() && untouched_since_adoption);
        let mut data = BTreeMap::new();
        if let Some(p) = previous.filter(|p| *p != value || adopted_previous)
            && (keep_previous || adopted_previous)
        {
            data.insert(VALUE_PREVIOUS.to_owned(), p);
        }
        let id = key_id(&salt, &value);
        data.insert(VALUE.to_owned(), value);
        Ok(Step::Write(Box::new(
            o.generated(data, id, generator, change, salt),
        )))
    }
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;
    use kube::ResourceExt;

    use super::*;
    use crate::api::credential::{
        Alphabet, Credential, DeletionPolicy, ROTATE_REQUESTED_AT, RandomSpec,
    };
    use crate::resources::journal::{key_id, unkeyed_key_id};
    use crate::resources::plan::Plan;
    use crate::resources::secret;
    use crate::resources::testing::{self, FixedEntropy, db, foreign_secret, rotating, ts, value};
    use crate::resources::{
        CREDENTIAL_LABEL, KEY_ID, KEY_ID_SALT, MANAGED_BY_LABEL, RESTARTED_FOR, ROTATED_AT,
    };

    /// `db`: 24 hex characters, optionally rotated `every`.
    fn random(every: Option<&str>) -> Credential {
        rotating(db().random(24).alphabet(Alphabet::Hex), every)
    }

    fn plan(
        c: &Credential,
        s: Option<&Secret>,
        now: Timestamp,
        entropy: &mut FixedEntropy,
    ) -> Result<Plan, Refusal> {
        testing::plan(&Random, c, s, now, entropy)
    }

    fn desired_secret(c: &Credential, p: &Plan) -> Secret {
        secret::desired_secret(&Random, c, p)
    }

    /// Apply a plan the way the API server would store it.
    fn stored(c: &Credential, p: &Plan) -> Secret {
        desired_secret(c, p)
    }

    #[test]
    fn create_writes_labels_owner_journal_and_value() {
        let c = random(Some("24h"));
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
        let mut c = random(None);
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
        assert!(secret::differs(
            &Random,
            Some(&with_owner),
            &desired_secret(&c, &plan)
        ));
    }

    #[test]
    fn steady_state_changes_nothing_and_needs_no_write() {
        let c = random(Some("24h"));
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
        assert!(!secret::differs(
            &Random,
            Some(&s),
            &desired_secret(&c, &later)
        ));
    }

    #[test]
    fn scheduled_rotation_keeps_the_previous_value_and_writes_new_before_old_goes() {
        let c = random(Some("24h"));
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
        let mut c = random(Some("1h"));
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
        let c = random(Some("24h"));
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
        let c = random(Some("24h"));
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
        let mut c = random(None);
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
        let mut c = random(None);
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
    fn adopt_keeps_the_existing_value() {
        let mut c = random(None);
        c.spec.adopt = true;
        let foreign = foreign_secret("db-password", None, &[(VALUE, b"their-value")]);
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
        let c = random(None);
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
        let mut c = random(None);
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
    fn key_ids_are_keyed_by_a_salt_kept_in_the_secret_and_stable() {
        let c = random(None);
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
        let c = random(None);
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
        assert!(secret::differs(&Random, Some(&s), &desired_secret(&c, &p)));
    }
}
