//! A throw-away PKI for tests and the local quickstart: a tenant CA, client identities carrying
//! the contract's URI SANs, and server certificates. Everything is generated at run time
//! (rcgen, ECDSA P-256, PKCS#8 keys); no key material is ever committed.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use time::OffsetDateTime;

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// A PEM certificate (leaf only) and its PKCS#8 private key.
#[derive(Clone)]
pub struct CertPem {
    pub cert_pem: String,
    pub key_pem: String,
}

/// What a tenant's identity Secret holds: `tls.crt`, `tls.key`, `ca.crt`.
#[derive(Clone)]
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

// Key material stays out of Debug output (test failures print values).
impl std::fmt::Debug for CertPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertPem").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").finish_non_exhaustive()
    }
}

/// The parameters of a client (tenant) certificate.
#[derive(Clone, Debug)]
pub struct ClientCert {
    /// Goes into `spiffe://<trust_domain>/tenant/<tenant_id>`; not validated here, so tests can
    /// issue malformed identities.
    pub tenant_id: String,
    pub trust_domain: String,
    /// The control-plane endpoint, an `https://host[:port]` URI SAN.
    pub endpoint: Option<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// More URI SANs, added after the spiffe and https ones.
    pub extra_uri_sans: Vec<String>,
}

impl ClientCert {
    /// Valid from an hour ago for a day, no endpoint SAN.
    pub fn new(tenant_id: &str, trust_domain: &str) -> Self {
        let now = SystemTime::now();
        Self {
            tenant_id: tenant_id.to_owned(),
            trust_domain: trust_domain.to_owned(),
            endpoint: None,
            not_before: now - HOUR,
            not_after: now + DAY,
            extra_uri_sans: Vec::new(),
        }
    }

    pub fn with_endpoint(mut self, endpoint: &str) -> Self {
        self.endpoint = Some(endpoint.to_owned());
        self
    }

    /// Expired yesterday.
    pub fn expired(mut self) -> Self {
        let now = SystemTime::now();
        self.not_before = now - 2 * DAY;
        self.not_after = now - DAY;
        self
    }

    /// Becomes valid tomorrow.
    pub fn not_yet_valid(mut self) -> Self {
        let now = SystemTime::now();
        self.not_before = now + DAY;
        self.not_after = now + 2 * DAY;
        self
    }

    pub fn valid_for(mut self, lifetime: Duration) -> Self {
        let now = SystemTime::now();
        self.not_before = now - HOUR;
        self.not_after = now + lifetime;
        self
    }

    /// The spiffe URI this certificate carries.
    pub fn spiffe_id(&self) -> String {
        format!("spiffe://{}/tenant/{}", self.trust_domain, self.tenant_id)
    }
}

/// A self-signed CA that issues client and server certificates.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    /// A CA valid from an hour ago for a year.
    pub fn new(common_name: &str) -> Result<Self, rcgen::Error> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = OffsetDateTime::from(now - HOUR);
        params.not_after = OffsetDateTime::from(now + 365 * DAY);
        Ok(Self {
            issuer: CertifiedIssuer::self_signed(params, key)?,
        })
    }

    pub fn ca_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A tenant identity: the certificate, its key and this CA, as the identity Secret holds them.
    pub fn client_identity(&self, spec: &ClientCert) -> Result<Identity, rcgen::Error> {
        let mut sans = vec![SanType::URI(spec.spiffe_id().try_into()?)];
        if let Some(endpoint) = &spec.endpoint {
            sans.push(SanType::URI(endpoint.as_str().try_into()?));
        }
        for uri in &spec.extra_uri_sans {
            sans.push(SanType::URI(uri.as_str().try_into()?));
        }
        let leaf = self.leaf(
            &spec.tenant_id,
            sans,
            ExtendedKeyUsagePurpose::ClientAuth,
            spec.not_before,
            spec.not_after,
        )?;
        Ok(Identity {
            cert_pem: leaf.cert_pem,
            key_pem: leaf.key_pem,
            ca_pem: self.ca_pem(),
        })
    }

    /// A server certificate for these DNS names and IP addresses, valid from an hour ago for
    /// 90 days.
    pub fn server_cert(&self, dns_names: &[&str], ips: &[IpAddr]) -> Result<CertPem, rcgen::Error> {
        let mut sans = Vec::new();
        for dns in dns_names {
            sans.push(SanType::DnsName((*dns).try_into()?));
        }
        sans.extend(ips.iter().copied().map(SanType::IpAddress));
        let cn = dns_names
            .first()
            .copied()
            .unwrap_or("bulkhead-dev-control-plane");
        let now = SystemTime::now();
        self.leaf(
            cn,
            sans,
            ExtendedKeyUsagePurpose::ServerAuth,
            now - HOUR,
            now + 90 * DAY,
        )
    }

    fn leaf(
        &self,
        common_name: &str,
        sans: Vec<SanType>,
        usage: ExtendedKeyUsagePurpose,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<CertPem, rcgen::Error> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name);
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        params.not_before = OffsetDateTime::from(not_before);
        params.not_after = OffsetDateTime::from(not_after);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertPem {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}
