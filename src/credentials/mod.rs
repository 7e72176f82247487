//! The credential types, one file each, behind one interface
//! ([`CredentialKind`](crate::resources::plan::CredentialKind)): its Secret type, the keys it
//! manages, its pure plan. Adding a type is a file here and one arm in [`kind`].

pub mod control_plane_token;
pub mod issued;
pub mod key_set;
pub mod random;
pub mod registry_credentials;

use crate::api::credential::CredentialType;
use crate::resources::plan::CredentialKind;

/// The implementation of a `spec.type`.
pub fn kind(type_: CredentialType) -> &'static dyn CredentialKind {
    match type_ {
        CredentialType::Random => &random::Random,
        CredentialType::KeySet => &key_set::KeySetKind,
        CredentialType::ControlPlaneToken => &control_plane_token::ControlPlaneToken,
        CredentialType::RegistryCredentials => &registry_credentials::RegistryCredentials,
    }
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;
    use kube::ResourceExt;

    use super::*;
    use crate::api::credential::{Credential, DeletionPolicy};
    use crate::credentials::random::{VALUE, VALUE_PREVIOUS};
    use crate::resources::plan::Ownership;
    use crate::resources::plan::{Change, Plan, Refusal, Step};
    use crate::resources::secret::{self, credential_label, ownership};
    use crate::resources::testing::{self, FixedEntropy, db, foreign_secret, rotating, with_uid};
    use crate::resources::{CREDENTIAL_LABEL, DELETE_ADOPTED};

    fn random(every: Option<&str>) -> Credential {
        rotating(db().random(24), every)
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn plan(
        c: &Credential,
        s: Option<&Secret>,
        now: Timestamp,
        entropy: &mut FixedEntropy,
    ) -> Result<Plan, Refusal> {
        testing::plan(kind(c.spec.type_), c, s, now, entropy)
    }

    fn decide(c: &Credential, s: Option<&Secret>, now: Timestamp) -> Result<Step, Refusal> {
        testing::step(kind(c.spec.type_), c, s, now, &mut FixedEntropy(1))
    }

    fn desired_secret(c: &Credential, p: &Plan) -> Secret {
        secret::desired_secret(kind(c.spec.type_), c, p)
    }

    fn secret_type(c: &Credential) -> &'static str {
        match c.spec.registry_credentials {
            Some(_) => "kubernetes.io/dockerconfigjson",
            None => "Opaque",
        }
    }

    /// Apply a plan the way the API server would store it.
    fn stored(c: &Credential, p: &Plan) -> Secret {
        desired_secret(c, p)
    }

    #[test]
    fn foreign_secret_is_a_conflict_and_never_planned() {
        let c = random(None);
        let foreign = foreign_secret("db-password", None, &[(VALUE, b"theirs")]);
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
        let mut other = random(None);
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
        let mut c = random(None);
        c.metadata.name = Some(long.clone());
        let p = plan(&c, None, Timestamp::UNIX_EPOCH, &mut FixedEntropy(1)).unwrap();
        let s = desired_secret(&c, &p);
        assert_eq!(s.labels()[CREDENTIAL_LABEL], label);
        assert_eq!(ownership(&c, Some(&s)), Ownership::Managed);
    }

    #[test]
    fn removal_patch_names_only_what_bulkhead_dropped_and_is_guarded() {
        let mut c = random(Some("1h"));
        let p = plan(&c, None, Timestamp::UNIX_EPOCH, &mut FixedEntropy(1)).unwrap();
        let mut current = desired_secret(&c, &p);
        current.metadata.resource_version = Some("42".into());
        let data = current.data.as_mut().unwrap();
        data.insert(VALUE_PREVIOUS.into(), ByteString(b"old".to_vec()));
        data.insert("theirs".into(), ByteString(b"kept".to_vec()));
        assert!(
            secret::removal_patch(
                kind(c.spec.type_),
                &desired_secret(&c, &p),
                &desired_secret(&c, &p)
            )
            .is_none()
        );
        c.spec.deletion_policy = DeletionPolicy::Retain;
        let patch =
            secret::removal_patch(kind(c.spec.type_), &current, &desired_secret(&c, &p)).unwrap();
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
        let mut c = random(None);
        c.spec.adopt = true;
        let foreign =
            |type_: &str, data: &[(&str, &[u8])]| foreign_secret("db-password", Some(type_), data);
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
        let k = with_uid(db().key_set(3).adopt());
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

    #[test]
    fn foreign_secrets_are_left_alone_and_types_never_change() {
        let token = crate::api::credential("jobs").control_plane_token("spark-jobs", "1h");
        let c = with_uid(token.clone());
        let foreign = foreign_secret("jobs", Some("Opaque"), &[]);
        assert!(matches!(
            decide(&c, Some(&foreign), at(0)),
            Err(Refusal::Conflict(_))
        ));
        let c = with_uid(token.adopt());
        assert!(matches!(
            decide(&c, Some(&foreign), at(0)).unwrap(),
            Step::Issue {
                change: Change::Adopted,
                ..
            }
        ));

        let c = with_uid(
            crate::api::credential("jobs")
                .registry_credentials("registry.example.com")
                .adopt(),
        );
        let Err(Refusal::Conflict(msg)) = decide(&c, Some(&foreign), at(0)) else {
            panic!("an Opaque Secret cannot become a dockerconfigjson one")
        };
        assert!(msg.contains("kubernetes.io/dockerconfigjson"), "{msg}");
    }

    #[test]
    fn only_the_issued_types_ask_the_control_plane() {
        let now = Timestamp::UNIX_EPOCH;
        for c in [db().random(24), db().key_set(3)] {
            let c = with_uid(c);
            assert!(
                matches!(decide(&c, None, now), Ok(Step::Write(_))),
                "{:?}",
                c.spec.type_
            );
        }
        let token = with_uid(db().control_plane_token("jobs", "1h"));
        let registry = with_uid(db().registry_credentials("registry.example.com"));
        for c in [token, registry] {
            assert!(
                matches!(
                    decide(&c, None, now),
                    Ok(Step::Issue {
                        change: Change::Created,
                        ..
                    })
                ),
                "{:?}",
                c.spec.type_
            );
            assert_eq!(kind(c.spec.type_).secret_type(), secret_type(&c));
        }
    }
}
