//! A builder for `Credential`s, so a spec is written in one line wherever one is needed (tests,
//! benches, library users): `credential("db").random(32).retain().build()`.
//!
//! It starts from the CRD's defaults (type Random, 32 alphanumeric characters, no rotation,
//! deletionPolicy Delete, no adopt); each method changes one thing.

use super::credential::{
    Alphabet, ControlPlaneTokenSpec, Credential, CredentialSpec, CredentialType, DeletionPolicy,
    KeySetSpec, RandomSpec, RegistryCredentialsSpec, RestartKind, RestartTarget, RotationSpec,
};

/// Start a Credential named `name` with the CRD's defaults (a Random of 32 characters).
pub fn credential(name: &str) -> CredentialBuilder {
    CredentialBuilder {
        name: name.to_owned(),
        namespace: None,
        annotations: Vec::new(),
        spec: CredentialSpec {
            type_: CredentialType::Random,
            random: Some(RandomSpec::default()),
            key_set: None,
            control_plane_token: None,
            registry_credentials: None,
            secret_name: None,
            rotation: None,
            restart_on_rotation: Vec::new(),
            deletion_policy: DeletionPolicy::default(),
            adopt: false,
        },
    }
}

/// A Credential being written; [`CredentialBuilder::build`] returns it.
#[derive(Clone, Debug)]
#[must_use]
pub struct CredentialBuilder {
    name: String,
    namespace: Option<String>,
    annotations: Vec<(String, String)>,
    spec: CredentialSpec,
}

impl CredentialBuilder {
    /// Sets `spec.type` and clears every type's settings block (the CRD allows only one).
    fn of_type(mut self, type_: CredentialType) -> Self {
        self.spec.type_ = type_;
        self.spec.random = None;
        self.spec.key_set = None;
        self.spec.control_plane_token = None;
        self.spec.registry_credentials = None;
        self
    }

    /// Type Random with `length` characters (alphabet unchanged, alphanumeric by default).
    pub fn random(self, length: u32) -> Self {
        let alphabet = self
            .spec
            .random
            .as_ref()
            .map(|r| r.alphabet)
            .unwrap_or_default();
        let mut b = self.of_type(CredentialType::Random);
        b.spec.random = Some(RandomSpec { length, alphabet });
        b
    }

    /// The alphabet of a Random credential.
    pub fn alphabet(mut self, alphabet: Alphabet) -> Self {
        let length = self.spec.random.as_ref().map_or(32, |r| r.length);
        self = self.of_type(CredentialType::Random);
        self.spec.random = Some(RandomSpec { length, alphabet });
        self
    }

    /// Type KeySet keeping `size` keys.
    pub fn key_set(self, size: u8) -> Self {
        let mut b = self.of_type(CredentialType::KeySet);
        b.spec.key_set = Some(KeySetSpec { size });
        b
    }

    /// Type ControlPlaneToken for `audience`, each token living `ttl` (a Go duration).
    pub fn control_plane_token(self, audience: &str, ttl: &str) -> Self {
        let mut b = self.of_type(CredentialType::ControlPlaneToken);
        b.spec.control_plane_token = Some(ControlPlaneTokenSpec {
            audience: audience.to_owned(),
            ttl: ttl.to_owned(),
        });
        b
    }

    /// Type RegistryCredentials for the registry host `server`.
    pub fn registry_credentials(self, server: &str) -> Self {
        let mut b = self.of_type(CredentialType::RegistryCredentials);
        b.spec.registry_credentials = Some(RegistryCredentialsSpec {
            server: server.to_owned(),
        });
        b
    }

    /// `spec.secretName`.
    pub fn secret_name(mut self, name: &str) -> Self {
        self.spec.secret_name = Some(name.to_owned());
        self
    }

    /// `spec.rotation.every` (a Go duration such as `720h`), replacing any schedule.
    pub fn every(mut self, every: &str) -> Self {
        let keep_previous = self.keeps_previous();
        self.spec.rotation = Some(RotationSpec {
            every: Some(every.to_owned()),
            schedule: None,
            keep_previous,
        });
        self
    }

    /// `spec.rotation.schedule` (5-field cron, UTC), replacing any period.
    pub fn schedule(mut self, cron: &str) -> Self {
        let keep_previous = self.keeps_previous();
        self.spec.rotation = Some(RotationSpec {
            every: None,
            schedule: Some(cron.to_owned()),
            keep_previous,
        });
        self
    }

    /// `spec.rotation.keepPrevious` (true by default); needs `every` or `schedule` first.
    pub fn keep_previous(mut self, keep: bool) -> Self {
        if let Some(rotation) = self.spec.rotation.as_mut() {
            rotation.keep_previous = keep;
        }
        self
    }

    fn keeps_previous(&self) -> bool {
        self.spec.rotation.as_ref().is_none_or(|r| r.keep_previous)
    }

    /// Adds a workload to `spec.restartOnRotation`.
    pub fn restart(mut self, kind: RestartKind, name: &str) -> Self {
        self.spec.restart_on_rotation.push(RestartTarget {
            kind,
            name: name.to_owned(),
        });
        self
    }

    /// `spec.deletionPolicy: Retain`.
    pub fn retain(mut self) -> Self {
        self.spec.deletion_policy = DeletionPolicy::Retain;
        self
    }

    /// `spec.adopt: true`.
    pub fn adopt(mut self) -> Self {
        self.spec.adopt = true;
        self
    }

    /// `metadata.namespace`.
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = Some(namespace.to_owned());
        self
    }

    /// Adds a `metadata.annotations` entry.
    pub fn annotate(mut self, key: &str, value: &str) -> Self {
        self.annotations.push((key.to_owned(), value.to_owned()));
        self
    }

    /// The spec alone.
    pub fn spec(self) -> CredentialSpec {
        self.spec
    }

    /// The Credential.
    pub fn build(self) -> Credential {
        let mut c = Credential::new(&self.name, self.spec);
        c.metadata.namespace = self.namespace;
        if !self.annotations.is_empty() {
            c.metadata.annotations = Some(self.annotations.into_iter().collect());
        }
        c
    }
}

impl From<CredentialBuilder> for Credential {
    fn from(b: CredentialBuilder) -> Self {
        b.build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_crds() {
        let c = credential("db").build();
        assert_eq!(c.metadata.name.as_deref(), Some("db"));
        assert_eq!(c.spec.type_, CredentialType::Random);
        assert_eq!(c.spec.random, Some(RandomSpec::default()));
        assert_eq!(c.spec.deletion_policy, DeletionPolicy::Delete);
        assert!(!c.spec.adopt && c.spec.rotation.is_none());
        // The same spec the API server would default from an empty random block.
        let decoded: CredentialSpec =
            serde_json::from_value(serde_json::json!({"type": "Random", "random": {}}))
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.spec, decoded);
    }

    #[test]
    fn a_type_clears_the_other_blocks() {
        let c = credential("k").random(64).key_set(4).build();
        assert_eq!(c.spec.type_, CredentialType::KeySet);
        assert_eq!(c.spec.random, None);
        assert_eq!(c.spec.key_set, Some(KeySetSpec { size: 4 }));
        let t = credential("t").control_plane_token("jobs", "2h").spec();
        assert_eq!(t.type_, CredentialType::ControlPlaneToken);
        assert_eq!(t.random, None);
        assert_eq!(
            t.control_plane_token.map(|s| (s.audience, s.ttl)),
            Some(("jobs".into(), "2h".into()))
        );
    }

    #[test]
    fn rotation_retain_adopt_namespace_annotations() {
        let c = credential("db")
            .random(16)
            .alphabet(Alphabet::Hex)
            .every("720h")
            .keep_previous(false)
            .restart(RestartKind::Deployment, "api")
            .retain()
            .adopt()
            .secret_name("db-secret")
            .namespace("team-a")
            .annotate("a", "b")
            .build();
        assert_eq!(
            c.spec.random,
            Some(RandomSpec {
                length: 16,
                alphabet: Alphabet::Hex
            })
        );
        let rotation = c
            .spec
            .rotation
            .clone()
            .unwrap_or_else(|| panic!("rotation"));
        assert_eq!(rotation.every.as_deref(), Some("720h"));
        assert!(!rotation.keep_previous);
        assert_eq!(c.spec.deletion_policy, DeletionPolicy::Retain);
        assert!(c.spec.adopt);
        assert_eq!(c.secret_name(), "db-secret");
        assert_eq!(c.metadata.namespace.as_deref(), Some("team-a"));
        assert_eq!(
            c.metadata.annotations.and_then(|a| a.get("a").cloned()),
            Some("b".to_owned())
        );
        // A schedule replaces the period and keeps keepPrevious.
        let s = credential("s")
            .every("1h")
            .keep_previous(false)
            .schedule("0 3 * * 1")
            .spec();
        let r = s.rotation.unwrap_or_else(|| panic!("rotation"));
        assert_eq!(
            (r.every, r.schedule.as_deref(), r.keep_previous),
            (None, Some("0 3 * * 1"), false)
        );
    }
}
