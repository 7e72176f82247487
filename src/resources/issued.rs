//! What the Secret of an issued Credential (ControlPlaneToken, RegistryCredentials) should
//! hold: when to ask the control plane for a new value, and the Secret data for what it issued.
//!
//! Same journal and safety rules as the generated types (`super::secret`): the decision
//! depends only on the Secret's annotations, the Credential and the clock; a foreign Secret is
//! never touched without `adopt: true`; a value is replaced at 2/3 of its lifetime, never after.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use serde_json::json;

use super::schedule;
use super::secret::{self, Change, Journal, Ownership, Plan, Refusal};
use crate::api::credential::{Credential, CredentialType, ROTATE_REQUESTED_AT};

/// Data key of a ControlPlaneToken's JWT.
pub const TOKEN: &str = "token";
/// Data key of a ControlPlaneToken's expiry (RFC 3339).
pub const EXPIRES_AT_KEY: &str = "expiresAt";
/// Data key of a RegistryCredentials Secret (type `kubernetes.io/dockerconfigjson`).
pub const DOCKER_CONFIG_JSON: &str = ".dockerconfigjson";

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
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// The decision for an issued Credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The value in the Secret stays; the plan re-applies labels and journal if needed.
    Keep(Box<Plan>),
    /// Ask the control plane, then build the plan with [`plan_issued`].
    Issue { request: Request, change: Change },
}

/// The request a Credential makes and the generator string that identifies it.
pub fn request(credential: &Credential) -> Result<(Request, String), Refusal> {
    let spec = &credential.spec;
    match spec.type_ {
        CredentialType::ControlPlaneToken => {
            let t = spec.control_plane_token.as_ref().ok_or_else(|| {
                Refusal::InvalidSpec(
                    "spec.controlPlaneToken must be set when spec.type is ControlPlaneToken".into(),
                )
            })?;
            let ttl = crate::api::duration::parse(&t.ttl)
                .map_err(|e| Refusal::InvalidSpec(format!("spec.controlPlaneToken.ttl: {e}")))?;
            let generator = format!("controlplanetoken/{}/{}", t.audience, t.ttl);
            Ok((
                Request::Token {
                    audience: t.audience.clone(),
                    ttl,
                },
                generator,
            ))
        }
        CredentialType::RegistryCredentials => {
            let r = spec.registry_credentials.as_ref().ok_or_else(|| {
                Refusal::InvalidSpec(
                    "spec.registryCredentials must be set when spec.type is RegistryCredentials"
                        .into(),
                )
            })?;
            Ok((
                Request::Registry {
                    server: r.server.clone(),
                },
                format!("registrycredentials/{}", r.server),
            ))
        }
        other => Err(Refusal::InvalidSpec(format!(
            "type {} is generated locally, not issued",
            other.as_str()
        ))),
    }
}

/// The data key whose value identifies the issued credential.
fn value_key(type_: CredentialType) -> &'static str {
    match type_ {
        CredentialType::RegistryCredentials => DOCKER_CONFIG_JSON,
        _ => TOKEN,
    }
}

/// The earliest an issued value is replaced after it was written, whatever its lifetime: a
/// control plane (or a clock) that hands out nearly expired values must not cause a hot loop.
pub const MIN_REFRESH: Duration = Duration::from_secs(60);

/// When an issued value should be replaced: at 2/3 of its lifetime.
pub fn refresh_at(issued_at: Timestamp, expires_at: Timestamp) -> Timestamp {
    let life = expires_at.as_millisecond() - issued_at.as_millisecond();
    Timestamp::from_millisecond(issued_at.as_millisecond() + life * 2 / 3).unwrap_or(expires_at)
}

/// Decide whether the control plane must issue a new value now.
pub fn decide(
    credential: &Credential,
    secret: Option<&Secret>,
    now: Timestamp,
) -> Result<Decision, Refusal> {
    let spec = &credential.spec;
    let owned = secret::ownership(credential, secret);
    if let (Ownership::OtherCredential, Some(s)) = (owned, secret) {
        return Err(secret::other_credential_conflict(credential, s));
    }
    if owned == Ownership::Foreign && !spec.adopt {
        return Err(Refusal::Conflict(format!(
            "Secret {} exists and is not managed by Bulkhead; it was left untouched. Set spec.adopt: true to take it over (its other keys are kept), or choose another spec.secretName",
            credential.secret_name()
        )));
    }
    let wanted_type = secret::secret_type(spec.type_);
    if let Some(existing) = secret.and_then(|s| s.type_.as_deref())
        && existing != wanted_type
    {
        return Err(Refusal::Conflict(format!(
            "Secret {} has type {existing}, and a {} Credential needs type {wanted_type}; a Secret's type cannot change. Delete the Secret (its data is lost) or choose another spec.secretName",
            credential.secret_name(),
            spec.type_.as_str()
        )));
    }
    let (request, generator) = request(credential)?;
    let policy = spec
        .rotation
        .as_ref()
        .map(schedule::policy)
        .transpose()
        .map_err(Refusal::InvalidSpec)?;
    let issue = |change| {
        Ok(Decision::Issue {
            request: request.clone(),
            change,
        })
    };
    let (journal, secret) = match (owned, secret) {
        (Ownership::Missing, _) | (_, None) => return issue(Change::Created),
        (Ownership::Foreign | Ownership::OtherCredential, Some(_)) => {
            return issue(Change::Adopted);
        }
        (Ownership::Managed, Some(s)) => (Journal::read(s), s),
    };
    secret::check_same_type(credential, &journal)?;
    let data = secret::string_data(Some(secret));
    let request_annotation = credential.annotations().get(ROTATE_REQUESTED_AT).cloned();
    let requested = request_annotation.is_some() && request_annotation != journal.handled_request;
    let value = data.get(value_key(spec.type_));
    let (Some(value), Some(rotated_at), Some(expires_at)) =
        (value, journal.rotated_at, journal.expires_at)
    else {
        return issue(Change::Repaired);
    };
    if journal.key_id.as_deref() != Some(secret::unkeyed_key_id(value).as_str()) {
        return issue(Change::Repaired);
    }
    if journal.generator.as_deref() != Some(generator.as_str()) {
        return issue(Change::SpecChanged);
    }
    if requested {
        return issue(Change::Requested);
    }
    let refresh = refresh_at(rotated_at, expires_at);
    let scheduled = policy
        .as_ref()
        .and_then(|p| schedule::next_after(p, rotated_at));
    let next = scheduled.map_or(refresh, |s| s.min(refresh));
    if now >= next {
        return issue(Change::Scheduled);
    }
    let mut kept: BTreeMap<String, String> = data
        .into_iter()
        .filter(|(k, _)| secret::is_managed_key(spec.type_, k))
        .collect();
    kept.retain(|_, v| !v.is_empty());
    Ok(Decision::Keep(Box::new(Plan {
        data: kept,
        journal,
        change: None,
        next_rotation: Some(next),
    })))
}

/// The plan for a freshly issued value.
pub fn plan_issued(
    credential: &Credential,
    secret: Option<&Secret>,
    change: Change,
    issued: Issued,
    now: Timestamp,
) -> Result<Plan, Refusal> {
    let (_, generator) = request(credential)?;
    let previous = match (secret::ownership(credential, secret), secret) {
        (Ownership::Managed, Some(s)) => Journal::read(s),
        _ => Journal::default(),
    };
    let key = issued
        .data
        .get(value_key(credential.spec.type_))
        .map(|v| secret::unkeyed_key_id(v))
        .unwrap_or_default();
    let request_annotation = credential.annotations().get(ROTATE_REQUESTED_AT).cloned();
    let restarted_for = match change {
        // Nothing ran with a value that did not exist before: no restart owed.
        Change::Created | Change::Adopted => Some(key.clone()),
        _ => previous.restarted_for.clone(),
    };
    let policy = credential
        .spec
        .rotation
        .as_ref()
        .map(schedule::policy)
        .transpose()
        .map_err(Refusal::InvalidSpec)?;
    let floor = now.checked_add(MIN_REFRESH).unwrap_or(now);
    let refresh = refresh_at(now, issued.expires_at).max(floor);
    let next = policy
        .as_ref()
        .and_then(|p| schedule::next_after(p, now))
        .map_or(refresh, |s| s.min(refresh));
    let mut data = issued.data;
    if credential.spec.type_ == CredentialType::RegistryCredentials {
        merge_other_registries(&mut data, secret);
    }
    Ok(Plan {
        data,
        journal: Journal {
            rotated_at: Some(now),
            key_id: Some(key),
            generator: Some(generator),
            handled_request: request_annotation.or(previous.handled_request),
            restarted_for,
            expires_at: Some(issued.expires_at),
            // Issued values are random tokens from the control plane: an unkeyed id reveals
            // nothing a guess could confirm.
            key_id_salt: None,
            adopted_at: match change {
                Change::Adopted => Some(now),
                _ => previous.adopted_at,
            },
        },
        change: Some(change),
        next_rotation: Some(next),
    })
}

/// An adopted (or hand-extended) `.dockerconfigjson` may hold other registries' entries: they
/// are kept, and only the issued server's entry is replaced.
fn merge_other_registries(data: &mut BTreeMap<String, String>, secret: Option<&Secret>) {
    let existing = secret::string_data(secret);
    let Some(Ok(serde_json::Value::Object(mut old))) = existing
        .get(DOCKER_CONFIG_JSON)
        .map(|d| serde_json::from_str::<serde_json::Value>(d))
    else {
        return;
    };
    let Some(Ok(serde_json::Value::Object(new))) = data
        .get(DOCKER_CONFIG_JSON)
        .map(|d| serde_json::from_str::<serde_json::Value>(d))
    else {
        return;
    };
    let Some(serde_json::Value::Object(old_auths)) = old.get_mut("auths") else {
        return;
    };
    if let Some(serde_json::Value::Object(new_auths)) = new.get("auths") {
        for (server, entry) in new_auths {
            old_auths.insert(server.clone(), entry.clone());
        }
    }
    data.insert(
        DOCKER_CONFIG_JSON.to_owned(),
        serde_json::Value::Object(old).to_string(),
    );
}

/// Secret data for an issued token.
pub fn token_data(token: &str, expires_at: Timestamp) -> Issued {
    Issued {
        data: [
            (TOKEN.to_owned(), token.to_owned()),
            (EXPIRES_AT_KEY.to_owned(), expires_at.to_string()),
        ]
        .into_iter()
        .collect(),
        expires_at,
    }
}

/// Secret data for issued registry credentials: a `.dockerconfigjson` document.
pub fn registry_data(
    server: &str,
    username: &str,
    password: &str,
    expires_at: Timestamp,
) -> Issued {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    let config = json!({
        "auths": {
            server: { "username": username, "password": password, "auth": auth }
        }
    });
    Issued {
        data: [(DOCKER_CONFIG_JSON.to_owned(), config.to_string())]
            .into_iter()
            .collect(),
        expires_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::credential::{
        ControlPlaneTokenSpec, CredentialSpec, DeletionPolicy, RegistryCredentialsSpec,
    };

    fn token_credential() -> Credential {
        let mut c = Credential::new(
            "jobs",
            CredentialSpec {
                type_: CredentialType::ControlPlaneToken,
                random: None,
                key_set: None,
                control_plane_token: Some(ControlPlaneTokenSpec {
                    audience: "spark-jobs".into(),
                    ttl: "1h".into(),
                }),
                registry_credentials: None,
                secret_name: None,
                rotation: None,
                restart_on_rotation: vec![],
                deletion_policy: DeletionPolicy::Delete,
                adopt: false,
            },
        );
        c.metadata.namespace = Some("team-a".into());
        c.metadata.uid = Some("uid-1".into());
        c
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn written(c: &Credential, plan: &Plan) -> Secret {
        secret::desired_secret(c, plan)
    }

    #[test]
    fn a_token_is_issued_then_kept_until_two_thirds_of_its_life() {
        let c = token_credential();
        let d = decide(&c, None, at(0)).unwrap();
        let Decision::Issue { request, change } = d else {
            panic!("{d:?}")
        };
        assert_eq!(change, Change::Created);
        assert_eq!(
            request,
            Request::Token {
                audience: "spark-jobs".into(),
                ttl: Duration::from_secs(3600)
            }
        );
        let plan = plan_issued(&c, None, change, token_data("jwt-1", at(3600)), at(0)).unwrap();
        assert_eq!(plan.next_rotation, Some(at(2400)));
        let s = written(&c, &plan);
        assert_eq!(s.type_.as_deref(), Some("Opaque"));

        match decide(&c, Some(&s), at(2399)).unwrap() {
            Decision::Keep(kept) => {
                assert_eq!(kept.data.get(TOKEN).map(String::as_str), Some("jwt-1"));
                assert!(
                    !secret::differs(c.spec.type_, Some(&s), &written(&c, &kept)),
                    "no write while valid"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decide(&c, Some(&s), at(2400)).unwrap(),
            Decision::Issue {
                change: Change::Scheduled,
                ..
            }
        ));
    }

    #[test]
    fn tampering_spec_changes_and_requests_issue_anew() {
        let mut c = token_credential();
        let plan = plan_issued(
            &c,
            None,
            Change::Created,
            token_data("jwt-1", at(3600)),
            at(0),
        )
        .unwrap();
        let s = written(&c, &plan);

        let mut edited = s.clone();
        edited
            .data
            .as_mut()
            .unwrap()
            .insert(TOKEN.into(), k8s_openapi::ByteString(b"forged".to_vec()));
        assert!(matches!(
            decide(&c, Some(&edited), at(10)).unwrap(),
            Decision::Issue {
                change: Change::Repaired,
                ..
            }
        ));

        c.metadata.annotations = Some(
            [(
                ROTATE_REQUESTED_AT.to_owned(),
                "2026-11-22T10:00:00Z".to_owned(),
            )]
            .into_iter()
            .collect(),
        );
        assert!(matches!(
            decide(&c, Some(&s), at(10)).unwrap(),
            Decision::Issue {
                change: Change::Requested,
                ..
            }
        ));
        let handled = plan_issued(
            &c,
            Some(&s),
            Change::Requested,
            token_data("jwt-2", at(3700)),
            at(100),
        )
        .unwrap();
        let s2 = written(&c, &handled);
        assert!(matches!(
            decide(&c, Some(&s2), at(110)).unwrap(),
            Decision::Keep(_)
        ));

        c.spec.control_plane_token.as_mut().unwrap().audience = "other".into();
        assert!(matches!(
            decide(&c, Some(&s2), at(120)).unwrap(),
            Decision::Issue {
                change: Change::SpecChanged,
                ..
            }
        ));
    }

    #[test]
    fn foreign_secrets_are_left_alone_and_types_never_change() {
        let mut c = token_credential();
        let foreign = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some("jobs".into()),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            ..Secret::default()
        };
        assert!(matches!(
            decide(&c, Some(&foreign), at(0)),
            Err(Refusal::Conflict(_))
        ));
        c.spec.adopt = true;
        assert!(matches!(
            decide(&c, Some(&foreign), at(0)).unwrap(),
            Decision::Issue {
                change: Change::Adopted,
                ..
            }
        ));

        c.spec.type_ = CredentialType::RegistryCredentials;
        c.spec.control_plane_token = None;
        c.spec.registry_credentials = Some(RegistryCredentialsSpec {
            server: "registry.example.com".into(),
        });
        let Err(Refusal::Conflict(msg)) = decide(&c, Some(&foreign), at(0)) else {
            panic!("an Opaque Secret cannot become a dockerconfigjson one")
        };
        assert!(msg.contains("kubernetes.io/dockerconfigjson"), "{msg}");
    }

    #[test]
    fn an_almost_expired_value_is_not_refreshed_in_a_loop() {
        let c = token_credential();
        let plan = plan_issued(&c, None, Change::Created, token_data("jwt", at(1)), at(0)).unwrap();
        assert_eq!(plan.next_rotation, Some(at(60)));
    }

    #[test]
    fn adopting_a_pull_secret_keeps_other_registries() {
        let mut c = token_credential();
        c.spec.type_ = CredentialType::RegistryCredentials;
        c.spec.control_plane_token = None;
        c.spec.registry_credentials = Some(RegistryCredentialsSpec {
            server: "registry.example.com".into(),
        });
        c.spec.adopt = true;
        let theirs = r#"{"auths":{"ghcr.io":{"auth":"dXNlcjpwdw=="},"registry.example.com":{"auth":"b2xk"}}}"#;
        let foreign = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some("jobs".into()),
                ..Default::default()
            },
            type_: Some("kubernetes.io/dockerconfigjson".into()),
            data: Some(
                [(
                    DOCKER_CONFIG_JSON.to_owned(),
                    k8s_openapi::ByteString(theirs.as_bytes().to_vec()),
                )]
                .into_iter()
                .collect(),
            ),
            ..Secret::default()
        };
        let issued = registry_data("registry.example.com", "robot", "new", at(3600));
        let plan = plan_issued(&c, Some(&foreign), Change::Adopted, issued, at(0)).unwrap();
        let doc: serde_json::Value = serde_json::from_str(&plan.data[DOCKER_CONFIG_JSON]).unwrap();
        assert_eq!(doc["auths"]["ghcr.io"]["auth"], "dXNlcjpwdw==");
        assert_eq!(doc["auths"]["registry.example.com"]["username"], "robot");
    }

    #[test]
    fn a_secret_left_by_another_type_is_a_conflict() {
        let random_journal = Journal {
            generator: Some("random/32/alphanumeric".into()),
            ..Journal::default()
        };
        let c = token_credential();
        let Err(Refusal::Conflict(msg)) = secret::check_same_type(&c, &random_journal) else {
            panic!("a Random value must not be replaced by a token")
        };
        assert!(msg.contains("random/32/alphanumeric"), "{msg}");
        let token_journal = Journal {
            generator: Some("controlplanetoken/spark-jobs/1h".into()),
            ..Journal::default()
        };
        assert!(secret::check_same_type(&c, &token_journal).is_ok());
    }

    #[test]
    fn registry_credentials_are_a_dockerconfigjson() {
        let issued = registry_data("registry.example.com", "robot", "s3cret", at(3600));
        let doc: serde_json::Value =
            serde_json::from_str(&issued.data[DOCKER_CONFIG_JSON]).unwrap();
        let entry = &doc["auths"]["registry.example.com"];
        assert_eq!(entry["username"], "robot");
        assert_eq!(entry["auth"], "cm9ib3Q6czNjcmV0");
        assert!(!format!("{issued:?}").contains("s3cret"));
    }
}
