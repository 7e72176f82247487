//! ES256 JWTs signed with `ring` (P-256, fixed-width r||s signatures, base64url without padding)
//! and a verifier that needs nothing but the published JWKS, so tests check issued tokens the way
//! a relying party would.

use base64::prelude::{BASE64_URL_SAFE_NO_PAD, Engine as _};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _,
    UnparsedPublicKey,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The control plane's token-signing key, generated at start and never written anywhere.
pub struct Signer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    kid: String,
    jwk: Value,
}

impl Signer {
    pub fn generate() -> Result<Self, String> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| "cannot generate a P-256 key".to_owned())?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|e| format!("cannot load the generated P-256 key: {e}"))?;
        // Uncompressed SEC1 point: 0x04 || X (32 bytes) || Y (32 bytes).
        let point = key.public_key().as_ref();
        let (x, y) = (b64(&point[1..33]), b64(&point[33..65]));
        // RFC 7638 thumbprint: members in lexicographic order, no whitespace.
        let thumbprint_input = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = b64(&Sha256::digest(thumbprint_input.as_bytes()));
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "x": x, "y": y,
            "kid": kid, "use": "sig", "alg": "ES256",
        });
        Ok(Self { key, rng, kid, jwk })
    }

    pub fn sign(&self, claims: &Value) -> Result<String, String> {
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": self.kid});
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signature = self
            .key
            .sign(&self.rng, input.as_bytes())
            .map_err(|_| "ES256 signing failed".to_owned())?;
        Ok(format!("{input}.{}", b64(signature.as_ref())))
    }

    pub fn jwks(&self) -> Value {
        json!({"keys": [self.jwk]})
    }

    /// A fresh random identifier (token ids, generated passwords).
    pub fn random_id(&self, bytes: usize) -> Result<String, String> {
        let mut buf = vec![0u8; bytes];
        self.rng
            .fill(&mut buf)
            .map_err(|_| "the system random source failed".to_owned())?;
        Ok(b64(&buf))
    }
}

/// Checks `token`'s ES256 signature against the key its `kid` names in `jwks` and returns the
/// claims. Claims (exp, aud, sub, ...) are the caller's to check.
pub fn verify_es256(token: &str, jwks: &Value) -> Result<Value, String> {
    let (signed, signature) = token
        .rsplit_once('.')
        .ok_or("not a compact JWS (three dot-separated parts)")?;
    let (header, claims) = signed
        .split_once('.')
        .filter(|(_, claims)| !claims.contains('.'))
        .ok_or("not a compact JWS (three dot-separated parts)")?;
    let header = decode_json(header, "header")?;
    if header["alg"] != "ES256" {
        return Err(format!("alg is {}, not ES256", header["alg"]));
    }
    let kid = header["kid"].as_str().ok_or("the header has no kid")?;
    let jwk = jwks["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["kid"] == kid))
        .ok_or_else(|| format!("no key with kid {kid} in the JWKS"))?;
    if jwk["kty"] != "EC" || jwk["crv"] != "P-256" {
        return Err("the JWK is not an EC P-256 key".to_owned());
    }
    let coordinate = |name: &str| -> Result<Vec<u8>, String> {
        let bytes = jwk[name]
            .as_str()
            .and_then(|s| BASE64_URL_SAFE_NO_PAD.decode(s).ok())
            .ok_or_else(|| format!("the JWK's {name} is not base64url"))?;
        if bytes.len() == 32 {
            Ok(bytes)
        } else {
            Err(format!("the JWK's {name} is not 32 bytes"))
        }
    };
    let mut point = vec![0x04];
    point.extend(coordinate("x")?);
    point.extend(coordinate("y")?);
    let signature = BASE64_URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| "the signature is not base64url".to_owned())?;
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point)
        .verify(signed.as_bytes(), &signature)
        .map_err(|_| "bad signature".to_owned())?;
    let claims = decode_json(claims, "claims")?;
    if claims.is_object() {
        Ok(claims)
    } else {
        Err("the claims are not a JSON object".to_owned())
    }
}

fn decode_json(part: &str, what: &str) -> Result<Value, String> {
    let bytes = BASE64_URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| format!("the {what} is not base64url"))?;
    serde_json::from_slice(&bytes).map_err(|_| format!("the {what} is not JSON"))
}

fn b64(bytes: &[u8]) -> String {
    BASE64_URL_SAFE_NO_PAD.encode(bytes)
}
