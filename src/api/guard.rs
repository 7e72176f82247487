//! Decoding each object on its own: one object this binary cannot read (written under a newer
//! CRD bundle, say) must not fail the list or watch that carries the others.
//!
//! `Guarded<K>` is kube-core's `DeserializeGuard` idea with the one thing a user needs added:
//! the path of the field that did not decode (`spec.type`), from `serde_path_to_error`.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

/// An object as read from the API: decoded, or the reason it could not be.
#[derive(Clone, Debug)]
pub struct Guarded<K>(pub Result<K, Undecodable>);

/// An object this binary cannot decode.
#[derive(Clone, Debug, PartialEq)]
pub struct Undecodable {
    /// Its metadata (always decodable: the API server validates it).
    pub metadata: ObjectMeta,
    /// The path of the field that failed, e.g. `spec.type` (`.` when it is the object itself).
    pub field: String,
    /// What was wrong with it, e.g. ``unknown variant `Certificate`, expected one of …``.
    pub error: String,
}

impl<'de, K> Deserialize<'de> for Guarded<K>
where
    K: DeserializeOwned + Resource,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        match serde_path_to_error::deserialize::<_, K>(&value) {
            Ok(object) => Ok(Self(Ok(object))),
            Err(err) => {
                // Without readable metadata the object cannot even be named: fail the whole
                // decode as before (the API server never serves such an object).
                let metadata = value
                    .get("metadata")
                    .map(ObjectMeta::deserialize)
                    .transpose()
                    .map_err(serde::de::Error::custom)?
                    .unwrap_or_default();
                Ok(Self(Err(Undecodable {
                    metadata,
                    field: err.path().to_string(),
                    error: err.into_inner().to_string(),
                })))
            }
        }
    }
}

impl<K: Resource> Resource for Guarded<K> {
    type DynamicType = K::DynamicType;
    type Scope = K::Scope;

    fn kind(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::kind(dt)
    }

    fn group(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::group(dt)
    }

    fn version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::version(dt)
    }

    fn plural(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        self.0.as_ref().map_or_else(|bad| &bad.metadata, K::meta)
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        self.0
            .as_mut()
            .map_or_else(|bad| &mut bad.metadata, K::meta_mut)
    }
}

impl Undecodable {
    /// What a user reads: the field, the error, the likely cause and the fix.
    pub fn explain(&self, kind: &str) -> String {
        format!(
            "{kind} {name} cannot be read by this Bulkhead (version {version}): field {field}: {error}. \
             The CRD bundle installed in the cluster is probably newer than this binary; upgrade the \
             operator (helm upgrade) to the version of crds-cluster/, or change the field to a value \
             this version accepts. Until then this object is skipped; every other one is reconciled",
            name = self.metadata.name.as_deref().unwrap_or("?"),
            version = env!("CARGO_PKG_VERSION"),
            field = self.field,
            error = self.error,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Credential;
    use serde_json::json;

    #[test]
    fn a_bad_field_is_named_by_its_path_and_the_object_keeps_its_name() {
        let bad: Guarded<Credential> = serde_json::from_value(json!({
            "apiVersion": "bulkhead.dev/v1alpha1", "kind": "Credential",
            "metadata": {"name": "cert", "namespace": "team-a", "uid": "u1"},
            "spec": {"type": "Certificate"}
        }))
        .unwrap();
        let bad = bad.0.unwrap_err();
        assert_eq!(bad.field, "spec.type");
        assert!(bad.error.contains("Certificate"), "{}", bad.error);
        assert_eq!(bad.metadata.name.as_deref(), Some("cert"));
        let text = bad.explain("Credential");
        assert!(
            text.contains("spec.type") && text.contains("newer than this binary"),
            "{text}"
        );
    }

    #[test]
    fn a_good_object_decodes_as_before() {
        let good: Guarded<Credential> = serde_json::from_value(json!({
            "apiVersion": "bulkhead.dev/v1alpha1", "kind": "Credential",
            "metadata": {"name": "db", "namespace": "team-a"},
            "spec": {"type": "Random", "random": {"length": 32, "alphabet": "alphanumeric"}}
        }))
        .unwrap();
        assert_eq!(good.0.unwrap().metadata.name.as_deref(), Some("db"));
        assert_eq!(Guarded::<Credential>::plural(&()), "credentials");
    }
}
