//! The tenant's mTLS identity, read from its `kubernetes.io/tls` Secret and checked.
//!
//! Pure: bytes in, a validated [`Identity`] (or an [`IdentityError`] saying what is wrong and how
//! to fix it) out. The tenant ID and the endpoint come from the certificate's URI SANs, so the
//! certificate is the only thing a team has to provision.

use std::collections::BTreeMap;

use jiff::Timestamp;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Data key of the client certificate (chain, leaf first).
pub const TLS_CRT: &str = "tls.crt";
/// Data key of the client private key.
pub const TLS_KEY: &str = "tls.key";
/// Data key of the tenant CA, the only trust root for the control plane's certificate.
pub const CA_CRT: &str = "ca.crt";

/// What is wrong with an identity Secret. Messages name the key and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "Secret {secret} does not exist; create it (type kubernetes.io/tls with tls.crt, tls.key and ca.crt), e.g. with cert-manager"
    )]
    SecretMissing { secret: String },
    #[error("Secret {secret} has no {key}; it must hold tls.crt, tls.key and ca.crt")]
    KeyMissing { secret: String, key: &'static str },
    #[error("Secret {secret} key {key} is not valid PEM ({detail}); {fix}")]
    BadPem {
        secret: String,
        key: &'static str,
        detail: String,
        fix: &'static str,
    },
    #[error("Secret {secret} key tls.crt is not a parsable X.509 certificate: {detail}")]
    BadCertificate { secret: String, detail: String },
    #[error(
        "Secret {secret}: tls.key does not belong to the certificate in tls.crt; write the matching pair"
    )]
    KeyMismatch { secret: String },
    #[error(
        "Secret {secret}: the certificate expired at {not_after}; renew it (cert-manager renews before expiry when the Certificate exists)"
    )]
    Expired {
        secret: String,
        not_after: Timestamp,
    },
    #[error(
        "Secret {secret}: the certificate is not valid before {not_before}; check the issuer's clock or wait"
    )]
    NotYetValid {
        secret: String,
        not_before: Timestamp,
    },
    #[error(
        "Secret {secret}: the certificate has no URI SAN spiffe://<trust-domain>/tenant/<id>; issue it with the tenant's SPIFFE ID"
    )]
    NoTenantId { secret: String },
    #[error(
        "Secret {secret}: the certificate names more than one tenant ({first}, {second}); issue it with exactly one spiffe://<trust-domain>/tenant/<id> URI SAN"
    )]
    AmbiguousTenant {
        secret: String,
        first: String,
        second: String,
    },
}

impl IdentityError {
    /// A CamelCase reason for conditions.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::SecretMissing { .. } => "SecretNotFound",
            Self::KeyMissing { .. } => "KeyMissing",
            Self::BadPem { .. } | Self::BadCertificate { .. } => "InvalidPEM",
            Self::KeyMismatch { .. } => "KeyMismatch",
            Self::Expired { .. } => "Expired",
            Self::NotYetValid { .. } => "NotYetValid",
            Self::NoTenantId { .. } | Self::AmbiguousTenant { .. } => "NoTenantID",
        }
    }
}

/// What a valid identity says, for status and for the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentitySummary {
    pub subject: String,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    /// SHA-256 of the leaf certificate's DER, lowercase hex.
    pub fingerprint: String,
    pub trust_domain: String,
    pub tenant_id: String,
    /// The first `https://` URI SAN, if any.
    pub endpoint: Option<String>,
}

/// A validated identity: the key material and what the certificate says.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub roots: Vec<CertificateDer<'static>>,
    pub summary: IdentitySummary,
}

impl Identity {
    /// SHA-256 over every certificate (chain and roots): changes when either the client
    /// certificate or the tenant CA is rotated, so the client is rebuilt for both.
    pub fn material_digest(&self) -> String {
        let mut hasher = Sha256::new();
        for cert in self.chain.iter().chain(&self.roots) {
            hasher.update((cert.as_ref().len() as u64).to_be_bytes());
            hasher.update(cert.as_ref());
        }
        hex(&hasher.finalize())
    }
}

impl std::fmt::Debug for Identity {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}

/// Parse and check an identity from a Secret's data at time `now`.
pub fn load(
    secret: &str,
    data: &BTreeMap<String, Vec<u8>>,
    now: Timestamp,
) -> Result<Identity, IdentityError> {
    let get = |key: &'static str| {
        data.get(key)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| IdentityError::KeyMissing {
                secret: secret.to_owned(),
                key,
            })
    };
    let bad_pem = |key: &'static str, detail: String, fix: &'static str| IdentityError::BadPem {
        secret: secret.to_owned(),
        key,
        detail,
        fix,
    };
    let chain = certificates(get(TLS_CRT)?).map_err(|d| {
        bad_pem(
            TLS_CRT,
            d,
            "it must hold PEM CERTIFICATE blocks, leaf first",
        )
    })?;
    let roots = certificates(get(CA_CRT)?).map_err(|d| {
        bad_pem(
            CA_CRT,
            d,
            "it must hold the tenant CA as PEM CERTIFICATE blocks",
        )
    })?;
    let key = PrivateKeyDer::from_pem_slice(get(TLS_KEY)?).map_err(|e| {
        bad_pem(
            TLS_KEY,
            e.to_string(),
            "it must hold one PEM private key (PKCS#8, PKCS#1 or SEC1)",
        )
    })?;
    let leaf = chain.first().ok_or_else(|| {
        bad_pem(
            TLS_CRT,
            "no certificate".to_owned(),
            "it must hold PEM CERTIFICATE blocks, leaf first",
        )
    })?;
    let summary = summarize(secret, leaf)?;
    check_key_matches(secret, leaf, &key)?;
    if now < summary.not_before {
        return Err(IdentityError::NotYetValid {
            secret: secret.to_owned(),
            not_before: summary.not_before,
        });
    }
    if now >= summary.not_after {
        return Err(IdentityError::Expired {
            secret: secret.to_owned(),
            not_after: summary.not_after,
        });
    }
    Ok(Identity {
        chain,
        key,
        roots,
        summary,
    })
}

/// What the certificate in `tls.crt` says, even when the identity is unusable (expired, wrong
/// key): status shows it so the fix is obvious.
pub fn inspect(secret: &str, data: &BTreeMap<String, Vec<u8>>) -> Option<IdentitySummary> {
    let chain = certificates(data.get(TLS_CRT)?).ok()?;
    summarize(secret, chain.first()?).ok()
}

fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block found".to_owned());
    }
    Ok(certs)
}

fn timestamp(t: x509_parser::time::ASN1Time) -> Timestamp {
    Timestamp::from_second(t.timestamp()).unwrap_or(Timestamp::MIN)
}

/// What the leaf certificate says: subject, validity, fingerprint, tenant and endpoint.
pub fn summarize(
    secret: &str,
    leaf: &CertificateDer<'_>,
) -> Result<IdentitySummary, IdentityError> {
    let bad = |detail: String| IdentityError::BadCertificate {
        secret: secret.to_owned(),
        detail,
    };
    let (_, cert) = X509Certificate::from_der(leaf.as_ref()).map_err(|e| bad(e.to_string()))?;
    let mut tenants = Vec::new();
    let mut endpoint = None;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name {
                if let Some((domain, id)) = spiffe_tenant(uri) {
                    tenants.push((domain, id));
                } else if uri.starts_with("https://") && endpoint.is_none() {
                    endpoint = Some(uri.trim_end_matches('/').to_owned());
                }
            }
        }
    }
    let (trust_domain, tenant_id) = match tenants.as_slice() {
        [] => {
            return Err(IdentityError::NoTenantId {
                secret: secret.to_owned(),
            });
        }
        [one] => one.clone(),
        [first, second, ..] => {
            return Err(IdentityError::AmbiguousTenant {
                secret: secret.to_owned(),
                first: first.1.clone(),
                second: second.1.clone(),
            });
        }
    };
    let validity = cert.validity();
    Ok(IdentitySummary {
        subject: cert.subject().to_string(),
        not_before: timestamp(validity.not_before),
        not_after: timestamp(validity.not_after),
        fingerprint: hex(&Sha256::digest(leaf.as_ref())),
        trust_domain,
        tenant_id,
        endpoint,
    })
}

/// `spiffe://<trust-domain>/tenant/<id>` -> (trust domain, id), for a DNS-label id.
pub fn spiffe_tenant(uri: &str) -> Option<(String, String)> {
    let rest = uri.strip_prefix("spiffe://")?;
    let (domain, path) = rest.split_once('/')?;
    let id = path.strip_prefix("tenant/")?;
    let label_ok = !id.is_empty()
        && id.len() <= 63
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
        && !id.ends_with('-');
    (!domain.is_empty() && label_ok).then(|| (domain.to_owned(), id.to_owned()))
}

fn check_key_matches(
    secret: &str,
    leaf: &CertificateDer<'static>,
    key: &PrivateKeyDer<'static>,
) -> Result<(), IdentityError> {
    let mismatch = || IdentityError::KeyMismatch {
        secret: secret.to_owned(),
    };
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|_| mismatch())?;
    let certified = rustls::sign::CertifiedKey::new(vec![leaf.clone()], signing);
    match certified.keys_match() {
        Ok(()) => Ok(()),
        // A key type whose public half ring cannot derive is accepted here; the handshake
        // still proves possession.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(()),
        Err(_) => Err(mismatch()),
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};

    struct Ca {
        issuer: Issuer<'static, KeyPair>,
        pem: String,
    }

    fn ca() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "tenant CA");
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    fn leaf(ca: &Ca, uris: &[&str], days: (i64, i64)) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "bulkhead team-a");
        params.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI((*u).try_into().unwrap()))
            .collect();
        let now = ::time::OffsetDateTime::now_utc();
        params.not_before = now + ::time::Duration::days(days.0);
        params.not_after = now + ::time::Duration::days(days.1);
        let cert = params.signed_by(&key, &ca.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn data(cert: &str, key: &str, ca: &str) -> BTreeMap<String, Vec<u8>> {
        [
            (TLS_CRT.to_owned(), cert.as_bytes().to_vec()),
            (TLS_KEY.to_owned(), key.as_bytes().to_vec()),
            (CA_CRT.to_owned(), ca.as_bytes().to_vec()),
        ]
        .into_iter()
        .collect()
    }

    const TENANT: &str = "spiffe://platform.example/tenant/team-a";

    #[test]
    fn tenant_and_endpoint_come_from_the_uri_sans() {
        let ca = ca();
        let (cert, key) = leaf(&ca, &[TENANT, "https://cp.example.com:8443/"], (-1, 30));
        let id = load("id", &data(&cert, &key, &ca.pem), Timestamp::now()).unwrap();
        assert_eq!(id.summary.tenant_id, "team-a");
        assert_eq!(id.summary.trust_domain, "platform.example");
        assert_eq!(
            id.summary.endpoint.as_deref(),
            Some("https://cp.example.com:8443")
        );
        assert!(id.summary.subject.contains("bulkhead team-a"));
        assert_eq!(id.summary.fingerprint.len(), 64);
        assert!(!format!("{id:?}").contains("PRIVATE"));
    }

    #[test]
    fn each_defect_is_named() {
        let ca = ca();
        let now = Timestamp::now();
        let (cert, key) = leaf(&ca, &[TENANT], (-1, 30));
        let (other_cert, _) = leaf(&ca, &[TENANT], (-1, 30));
        let (expired, expired_key) = leaf(&ca, &[TENANT], (-30, -1));
        let (future, future_key) = leaf(&ca, &[TENANT], (2, 30));
        let (no_tenant, no_tenant_key) = leaf(&ca, &["https://cp.example.com"], (-1, 30));
        let (two, two_key) = leaf(
            &ca,
            &[TENANT, "spiffe://platform.example/tenant/team-b"],
            (-1, 30),
        );
        let reason = |d: BTreeMap<String, Vec<u8>>| load("id", &d, now).unwrap_err();

        let mut missing = data(&cert, &key, &ca.pem);
        missing.remove(CA_CRT);
        let err = reason(missing);
        assert_eq!(err.reason(), "KeyMissing");
        assert!(err.to_string().contains("ca.crt"), "{err}");

        let err = reason(data("not pem", &key, &ca.pem));
        assert_eq!(err.reason(), "InvalidPEM");
        assert!(err.to_string().contains("tls.crt"), "{err}");

        let err = reason(data(&other_cert, &key, &ca.pem));
        assert_eq!(
            err,
            IdentityError::KeyMismatch {
                secret: "id".into()
            }
        );

        let err = reason(data(&expired, &expired_key, &ca.pem));
        assert_eq!(err.reason(), "Expired");
        assert!(err.to_string().contains("renew"), "{err}");

        assert_eq!(
            reason(data(&future, &future_key, &ca.pem)).reason(),
            "NotYetValid"
        );

        let err = reason(data(&no_tenant, &no_tenant_key, &ca.pem));
        assert_eq!(err.reason(), "NoTenantID");
        assert!(err.to_string().contains("spiffe://"), "{err}");

        let err = reason(data(&two, &two_key, &ca.pem));
        assert!(err.to_string().contains("team-b"), "{err}");
    }

    #[test]
    fn a_rotated_ca_changes_the_material_but_not_the_fingerprint() {
        let ca1 = ca();
        let ca2 = ca();
        let (cert, key) = leaf(&ca1, &[TENANT], (-1, 30));
        let now = Timestamp::now();
        let a = load("id", &data(&cert, &key, &ca1.pem), now).unwrap();
        let b = load("id", &data(&cert, &key, &ca2.pem), now).unwrap();
        assert_eq!(a.summary.fingerprint, b.summary.fingerprint);
        assert_ne!(a.material_digest(), b.material_digest());
        let again = load("id", &data(&cert, &key, &ca1.pem), now).unwrap();
        assert_eq!(a.material_digest(), again.material_digest());
    }

    #[test]
    fn spiffe_ids_are_strict() {
        assert_eq!(
            spiffe_tenant("spiffe://td/tenant/a-1"),
            Some(("td".into(), "a-1".into()))
        );
        for bad in [
            "spiffe://td/tenant/",
            "spiffe://td/tenant/A",
            "spiffe://td/tenant/-a",
            "spiffe://td/other/a",
            "spiffe:///tenant/a",
            "https://td/tenant/a",
            "spiffe://td/tenant/a/b",
        ] {
            assert_eq!(spiffe_tenant(bad), None, "{bad}");
        }
    }
}
