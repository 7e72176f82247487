//! The caller's identity, taken from the client certificate rustls has already verified against
//! the tenant CA: the tenant id from its `spiffe://<trust-domain>/tenant/<id>` URI SAN.

use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;

/// Attached to every request (an axum `Extension`) by the connection it arrived on.
#[derive(Clone, Debug)]
pub struct ClientIdentity {
    /// The tenant id, or why the certificate names none.
    pub tenant: Result<String, String>,
    /// Lowercase hex SHA-256 of the leaf certificate's DER, to tell identities apart in tests.
    pub cert_sha256_hex: String,
}

impl ClientIdentity {
    pub fn from_peer(chain: Option<&[CertificateDer<'_>]>) -> Self {
        match chain.and_then(<[_]>::first) {
            Some(leaf) => Self {
                tenant: tenant_from_cert_der(leaf),
                cert_sha256_hex: hex(&Sha256::digest(leaf.as_ref())),
            },
            // Unreachable with a verifier that requires client certificates; kept total.
            None => Self {
                tenant: Err("no client certificate".to_owned()),
                cert_sha256_hex: String::new(),
            },
        }
    }
}

/// The tenant id in a DER certificate's single spiffe URI SAN.
pub fn tenant_from_cert_der(der: &[u8]) -> Result<String, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("unparsable client certificate: {e}"))?;
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| format!("bad subjectAltName extension: {e}"))?;
    let spiffe: Vec<&str> = sans
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some(*uri),
            _ => None,
        })
        .collect();
    match spiffe.as_slice() {
        [uri] => tenant_from_spiffe(uri),
        [] => Err("the client certificate has no spiffe:// URI SAN".to_owned()),
        _ => Err("the client certificate has more than one spiffe:// URI SAN".to_owned()),
    }
}

fn tenant_from_spiffe(uri: &str) -> Result<String, String> {
    let rest = uri.strip_prefix("spiffe://").unwrap_or(uri);
    let wrong = || format!("{uri} is not spiffe://<trust-domain>/tenant/<tenant-id>");
    let (trust_domain, path) = rest.split_once('/').ok_or_else(wrong)?;
    let id = path.strip_prefix("tenant/").ok_or_else(wrong)?;
    if trust_domain.is_empty() || !valid_tenant_id(id) {
        return Err(wrong());
    }
    Ok(id.to_owned())
}

/// `[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?`
pub fn valid_tenant_id(id: &str) -> bool {
    let b = id.as_bytes();
    let edge = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    (1..=63).contains(&b.len())
        && b.first().is_some_and(edge)
        && b.last().is_some_and(edge)
        && b.iter().all(|c| edge(c) || *c == b'-')
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
