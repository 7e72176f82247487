//! The rotation journal: what Bulkhead records about a value in its Secret's own annotations.
//!
//! Every decision to rotate reads only this journal, the Credential and the clock, never the
//! Credential's status, so a crash between writing the Secret and writing the status neither
//! rotates twice nor skips a rotation.

use std::collections::BTreeMap;

use hmac::{Hmac, KeyInit, Mac};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use sha2::{Digest, Sha256};

use super::{
    ADOPTED_AT, EXPIRES_AT, GENERATOR, HANDLED_REQUEST, KEY_ID, KEY_ID_SALT, RESTARTED_FOR,
    ROTATED_AT,
};

/// The journal annotations Bulkhead writes (and so removes when it stops writing them).
pub const ANNOTATIONS: [&str; 8] = [
    ROTATED_AT,
    KEY_ID,
    GENERATOR,
    HANDLED_REQUEST,
    RESTARTED_FOR,
    EXPIRES_AT,
    KEY_ID_SALT,
    ADOPTED_AT,
];

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
    /// keyed, whose key id is an unkeyed hash, and for issued values).
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

    /// Whether the restart targets still run with an older value than the journal's: a
    /// rotation was written and not yet followed by a restart (a crash in between included).
    pub fn restart_owed(&self) -> bool {
        self.restarted_for != self.key_id
    }

    /// Record that the restart targets now run with the journal's value.
    pub fn restarted(&mut self) {
        self.restarted_for = self.key_id.clone();
    }

    /// The journal as annotations.
    pub fn annotations(&self) -> BTreeMap<String, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_round_trips_through_annotations() {
        let journal = Journal {
            rotated_at: Some(Timestamp::UNIX_EPOCH),
            key_id: Some("k1".into()),
            generator: Some("keyset".into()),
            handled_request: Some("r".into()),
            restarted_for: Some("k0".into()),
            expires_at: Some(Timestamp::UNIX_EPOCH),
            key_id_salt: Some("s".into()),
            adopted_at: Some(Timestamp::UNIX_EPOCH),
        };
        let mut secret = Secret::default();
        secret.metadata.annotations = Some(journal.annotations());
        assert_eq!(Journal::read(&secret), journal);
        assert_eq!(journal.annotations().len(), ANNOTATIONS.len());
        assert!(journal.restart_owed(), "restarted for k0, current k1");
        let mut settled = journal;
        settled.restarted();
        assert_eq!(settled.restarted_for.as_deref(), Some("k1"));
        assert!(!settled.restart_owed());
    }

    #[test]
    fn a_keyed_id_needs_the_salt_and_an_unkeyed_one_does_not() {
        let keyed = Journal {
            key_id: Some(key_id("salt", "v")),
            key_id_salt: Some("salt".into()),
            ..Journal::default()
        };
        assert!(keyed.identifies("v") && !keyed.identifies("w"));
        assert_ne!(key_id("salt", "v"), key_id("pepper", "v"));
        let unkeyed = Journal {
            key_id: Some(unkeyed_key_id("v")),
            ..Journal::default()
        };
        assert!(unkeyed.identifies("v"));
    }
}
