//! `KeySet`: a Fernet-style key repository (`crate::resources::keyset` holds the repository
//! math). Key `0` is staged, the highest index is primary; a rotation writes the new
//! staged key before the oldest secondary goes, and a repair never drops a key Bulkhead wrote.

use k8s_openapi::api::core::v1::Secret;

use crate::api::credential::Credential;
use crate::resources::entropy::{self, Entropy};
use crate::resources::journal::{Journal, key_id};
use crate::resources::keyset::{self, KeySet};
use crate::resources::plan::{self, Change, CredentialKind, Observed, Ownership, Refusal, Step};
use crate::resources::secret::string_data;

/// The `KeySet` type.
pub struct KeySetKind;

impl CredentialKind for KeySetKind {
    fn manages_key(&self, key: &str) -> bool {
        key.parse::<u32>().is_ok()
    }

    /// A key repository is adopted whole: with its staged key 0 and a primary, or empty.
    fn check_adoptable(&self, credential: &Credential, secret: &Secret) -> Result<(), Refusal> {
        plan::check_text(self, credential, secret)?;
        let keys = keyset::from_data(&string_data(Some(secret)));
        if !keys.is_empty() && (!keys.contains_key(&0) || keyset::primary(&keys).is_none()) {
            let indices: Vec<String> = keys.keys().map(u32::to_string).collect();
            return Err(Refusal::Conflict(format!(
                "Secret {} holds numbered keys {} but not a complete key repository (key 0 staged and a primary above it); adopting would overwrite a key, so the Secret was left untouched. Add the missing key, or choose another spec.secretName",
                credential.secret_name(),
                indices.join(", ")
            )));
        }
        Ok(())
    }

    fn plan(&self, o: &Observed<'_>, entropy: &mut dyn Entropy) -> Result<Step, Refusal> {
        let size = usize::from(o.credential.spec.key_set.clone().unwrap_or_default().size);
        if !(2..=16).contains(&size) {
            return Err(Refusal::InvalidSpec(format!(
                "spec.keySet.size must be 2 to 16, not {size}"
            )));
        }
        let generator = "keyset".to_owned();
        let salt = plan::salt(&o.journal, entropy)?;
        let existing: KeySet = keyset::from_data(&o.data);
        let mut failure = None;
        let mut new_key = || match entropy::fernet_key(entropy) {
            Ok(k) => k,
            Err(e) => {
                failure = Some(e);
                String::new()
            }
        };
        let (keys, change) = match o.ownership {
            Ownership::Managed => plan_managed(
                o.credential,
                &o.journal,
                existing,
                size,
                o.requested(),
                o.due(o.journal.rotated_at),
                &mut new_key,
            )?,
            // check_adoptable let through only a complete repository or none at all.
            _ if existing.is_empty() => (keyset::initial(&mut new_key), o.first_change()),
            _ => (existing, o.first_change()),
        };
        if let Some(e) = failure {
            return Err(plan::entropy_failed(e));
        }
        // A smaller size trims the oldest secondaries, at a rotation: never a key that was
        // just adopted or a repair.
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
        Ok(Step::Write(Box::new(
            o.generated(data, id, generator, change, salt),
        )))
    }
}

/// A managed key repository: keep it, rotate it, or repair it without dropping a key Bulkhead
/// wrote. The journal's key id names the primary Bulkhead wrote; a numbered key above it was
/// not written by Bulkhead and is reported, never "repaired" away.
fn plan_managed(
    credential: &Credential,
    journal: &Journal,
    existing: KeySet,
    size: usize,
    requested: bool,
    due: bool,
    mut new_key: impl FnMut() -> String,
) -> Result<(KeySet, Option<Change>), Refusal> {
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

#[cfg(test)]
mod tests {
    use jiff::Timestamp;
    use k8s_openapi::ByteString;

    use super::*;
    use crate::resources::journal::key_id;
    use crate::resources::plan::Plan;
    use crate::resources::secret;
    use crate::resources::testing::{self, FixedEntropy, db, rotating, ts};

    /// `db`: a key set of 3, optionally rotated `every`.
    fn key_set(every: Option<&str>) -> Credential {
        rotating(db().key_set(3), every)
    }

    fn plan(
        c: &Credential,
        s: Option<&Secret>,
        now: Timestamp,
        entropy: &mut FixedEntropy,
    ) -> Result<Plan, Refusal> {
        testing::plan(&KeySetKind, c, s, now, entropy)
    }

    /// Apply a plan the way the API server would store it.
    fn stored(c: &Credential, p: &Plan) -> Secret {
        secret::desired_secret(&KeySetKind, c, p)
    }

    #[test]
    fn key_set_lifecycle() {
        let c = key_set(Some("1h"));
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
    fn key_set_repair_keeps_every_key_bulkhead_wrote() {
        let c = key_set(Some("1h"));
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
}
