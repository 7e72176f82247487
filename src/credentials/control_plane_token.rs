//! `ControlPlaneToken`: a JWT the control plane issues for `audience`, living `ttl`; the Secret
//! holds `token` and `expiresAt`, replaced at 2/3 of the token's lifetime (`super::issued`).

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;

use super::issued::{self, IssuedKind};
use crate::api::credential::Credential;
use crate::resources::entropy::Entropy;
use crate::resources::plan::{
    Change, CredentialKind, Issued, Observed, Plan, Refusal, Request, Step,
};

/// Data key of a ControlPlaneToken's JWT.
pub const TOKEN: &str = "token";
/// Data key of a ControlPlaneToken's expiry (RFC 3339).
pub const EXPIRES_AT_KEY: &str = "expiresAt";

/// The `ControlPlaneToken` type.
pub struct ControlPlaneToken;

impl CredentialKind for ControlPlaneToken {
    fn manages_key(&self, key: &str) -> bool {
        key == TOKEN || key == EXPIRES_AT_KEY
    }

    /// An adopted token is replaced by an issued one: nothing to keep as text.
    fn check_adoptable(&self, _: &Credential, _: &Secret) -> Result<(), Refusal> {
        Ok(())
    }

    fn plan(&self, o: &Observed<'_>, _: &mut dyn Entropy) -> Result<Step, Refusal> {
        issued::decide(self, o)
    }

    fn plan_issued(
        &self,
        o: &Observed<'_>,
        change: Change,
        value: Issued,
    ) -> Result<Plan, Refusal> {
        issued::plan(self, o, change, value)
    }
}

impl IssuedKind for ControlPlaneToken {
    fn value_key(&self) -> &'static str {
        TOKEN
    }

    fn request(&self, credential: &Credential) -> Result<(Request, String), Refusal> {
        let t = credential
            .spec
            .control_plane_token
            .as_ref()
            .ok_or_else(|| {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::api::credential::ROTATE_REQUESTED_AT;
    use crate::resources::plan::Plan;
    use crate::resources::secret;
    use crate::resources::testing::{self, FixedEntropy, with_uid};

    fn token_credential() -> Credential {
        with_uid(
            crate::api::credential("jobs")
                .control_plane_token("spark-jobs", "1h")
                .namespace("team-a"),
        )
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn decide(c: &Credential, s: Option<&Secret>, now: Timestamp) -> Result<Step, Refusal> {
        testing::step(&ControlPlaneToken, c, s, now, &mut FixedEntropy(1))
    }

    fn plan_issued(
        c: &Credential,
        s: Option<&Secret>,
        change: Change,
        issued: Issued,
        now: Timestamp,
    ) -> Result<Plan, Refusal> {
        let observed = secret::observe(&ControlPlaneToken, c, s, now)?;
        ControlPlaneToken.plan_issued(&observed, change, issued)
    }

    fn written(c: &Credential, plan: &Plan) -> Secret {
        secret::desired_secret(&ControlPlaneToken, c, plan)
    }

    #[test]
    fn a_token_is_issued_then_kept_until_two_thirds_of_its_life() {
        let c = token_credential();
        let d = decide(&c, None, at(0)).unwrap();
        let Step::Issue { request, change } = d else {
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
            Step::Write(kept) => {
                assert_eq!(kept.data.get(TOKEN).map(String::as_str), Some("jwt-1"));
                assert!(
                    !secret::differs(&ControlPlaneToken, Some(&s), &written(&c, &kept)),
                    "no write while valid"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decide(&c, Some(&s), at(2400)).unwrap(),
            Step::Issue {
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
            Step::Issue {
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
            Step::Issue {
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
            Step::Write(_)
        ));

        c.spec.control_plane_token.as_mut().unwrap().audience = "other".into();
        assert!(matches!(
            decide(&c, Some(&s2), at(120)).unwrap(),
            Step::Issue {
                change: Change::SpecChanged,
                ..
            }
        ));
    }

    #[test]
    fn an_almost_expired_value_is_not_refreshed_in_a_loop() {
        let c = token_credential();
        let plan = plan_issued(&c, None, Change::Created, token_data("jwt", at(1)), at(0)).unwrap();
        assert_eq!(plan.next_rotation, Some(at(60)));
    }
}
