//! `RegistryCredentials`: image-pull credentials the control plane issues for one registry, as
//! a `kubernetes.io/dockerconfigjson` Secret; other registries' entries in it are kept.

use std::collections::BTreeMap;

use base64::Engine as _;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use serde_json::json;

use super::issued::{self, IssuedKind};
use crate::api::credential::Credential;
use crate::resources::entropy::Entropy;
use crate::resources::plan::{
    Change, CredentialKind, Issued, Observed, Plan, Refusal, Request, Step,
};
use crate::resources::secret::string_data;

/// Data key of a RegistryCredentials Secret (type `kubernetes.io/dockerconfigjson`).
pub const DOCKER_CONFIG_JSON: &str = ".dockerconfigjson";

/// The `RegistryCredentials` type.
pub struct RegistryCredentials;

impl CredentialKind for RegistryCredentials {
    fn secret_type(&self) -> &'static str {
        "kubernetes.io/dockerconfigjson"
    }

    fn manages_key(&self, key: &str) -> bool {
        key == DOCKER_CONFIG_JSON
    }

    /// Other registries' entries are merged into the issued document (see `merge`).
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

impl IssuedKind for RegistryCredentials {
    fn value_key(&self) -> &'static str {
        DOCKER_CONFIG_JSON
    }

    fn request(&self, credential: &Credential) -> Result<(Request, String), Refusal> {
        let r = credential
            .spec
            .registry_credentials
            .as_ref()
            .ok_or_else(|| {
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

    /// An adopted (or hand-extended) `.dockerconfigjson` may hold other registries' entries:
    /// they are kept, and only the issued server's entry is replaced.
    fn merge(&self, data: &mut BTreeMap<String, String>, secret: Option<&Secret>) {
        let existing = string_data(secret);
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
    use crate::resources::secret;
    use crate::resources::testing::{foreign_secret, with_uid};

    fn plan_issued(
        c: &Credential,
        s: Option<&Secret>,
        change: Change,
        issued: Issued,
        now: Timestamp,
    ) -> Result<Plan, Refusal> {
        let observed = secret::observe(&RegistryCredentials, c, s, now)?;
        RegistryCredentials.plan_issued(&observed, change, issued)
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    #[test]
    fn adopting_a_pull_secret_keeps_other_registries() {
        let c = with_uid(
            crate::api::credential("jobs")
                .registry_credentials("registry.example.com")
                .adopt(),
        );
        let theirs = r#"{"auths":{"ghcr.io":{"auth":"dXNlcjpwdw=="},"registry.example.com":{"auth":"b2xk"}}}"#;
        let foreign = foreign_secret(
            "jobs",
            Some("kubernetes.io/dockerconfigjson"),
            &[(DOCKER_CONFIG_JSON, theirs.as_bytes())],
        );
        let issued = registry_data("registry.example.com", "robot", "new", at(3600));
        let plan = plan_issued(&c, Some(&foreign), Change::Adopted, issued, at(0)).unwrap();
        let doc: serde_json::Value = serde_json::from_str(&plan.data[DOCKER_CONFIG_JSON]).unwrap();
        assert_eq!(doc["auths"]["ghcr.io"]["auth"], "dXNlcjpwdw==");
        assert_eq!(doc["auths"]["registry.example.com"]["username"], "robot");
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
