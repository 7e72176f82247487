//! Key material from the operating system's CSPRNG (the `Entropy` every generated type draws from).
//!
//! Characters are drawn by rejection sampling, so every character of the alphabet is exactly
//! equally likely (no modulo bias).

use base64::Engine as _;

use crate::api::credential::Alphabet;

/// A source of random bytes. Production uses the OS CSPRNG; tests may use a fixed stream.
pub trait Entropy {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), getrandom::Error>;
}

/// The operating system's CSPRNG.
pub struct OsEntropy;

impl Entropy for OsEntropy {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), getrandom::Error> {
        getrandom::fill(buf)
    }
}

const ALPHANUMERIC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const BASE64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const HEX: &[u8] = b"0123456789abcdef";

/// The characters of an alphabet.
pub fn characters(alphabet: Alphabet) -> &'static [u8] {
    match alphabet {
        Alphabet::Alphanumeric => ALPHANUMERIC,
        Alphabet::Base64url => BASE64URL,
        Alphabet::Hex => HEX,
    }
}

/// A random string of `length` characters from `alphabet`.
pub fn random_string(
    entropy: &mut dyn Entropy,
    length: usize,
    alphabet: Alphabet,
) -> Result<String, getrandom::Error> {
    let chars = characters(alphabet);
    let n = chars.len();
    // Accept a byte only below the largest multiple of n that fits in a byte: uniform.
    let limit = 256 - (256 % n);
    let mut out = String::with_capacity(length);
    let mut buf = [0u8; 64];
    while out.len() < length {
        entropy.fill(&mut buf)?;
        for &b in &buf {
            if usize::from(b) < limit {
                out.push(char::from(chars[usize::from(b) % n]));
                if out.len() == length {
                    break;
                }
            }
        }
    }
    Ok(out)
}

/// A Fernet key: 32 random bytes, URL-safe base64 with padding (what Fernet libraries load).
pub fn fernet_key(entropy: &mut dyn Entropy) -> Result<String, getrandom::Error> {
    let mut key = [0u8; 32];
    entropy.fill(&mut key)?;
    Ok(base64::engine::general_purpose::URL_SAFE.encode(key))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A deterministic byte stream for tests (xorshift), never for production.
    pub struct FixedEntropy(pub u64);

    impl Entropy for FixedEntropy {
        fn fill(&mut self, buf: &mut [u8]) -> Result<(), getrandom::Error> {
            for b in buf {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                *b = (self.0 >> 24) as u8;
            }
            Ok(())
        }
    }

    /// Always the same byte: exercises the rejection path.
    struct Constant(u8);

    impl Entropy for Constant {
        fn fill(&mut self, buf: &mut [u8]) -> Result<(), getrandom::Error> {
            buf.fill(self.0);
            Ok(())
        }
    }

    #[test]
    fn lengths_and_alphabets_are_respected() {
        for alphabet in [Alphabet::Alphanumeric, Alphabet::Base64url, Alphabet::Hex] {
            for length in [8, 9, 63, 64, 65, 4096] {
                let s = random_string(&mut OsEntropy, length, alphabet).unwrap();
                assert_eq!(s.len(), length);
                assert!(
                    s.bytes().all(|c| characters(alphabet).contains(&c)),
                    "{alphabet:?}: {s}"
                );
            }
        }
    }

    #[test]
    fn bytes_above_the_uniform_limit_are_rejected() {
        // 62 characters: bytes 248..=255 would bias the first 8 characters; they must be skipped.
        let mut biased = Constant(250);
        let mut once = [0u8; 1];
        biased.fill(&mut once).unwrap();
        assert!(usize::from(once[0]) >= 256 - 256 % 62);
        // A stream mixing a rejected byte and an accepted one yields only the accepted one.
        struct Alternating(bool);
        impl Entropy for Alternating {
            fn fill(&mut self, buf: &mut [u8]) -> Result<(), getrandom::Error> {
                for b in buf {
                    self.0 = !self.0;
                    *b = if self.0 { 255 } else { 1 };
                }
                Ok(())
            }
        }
        let s = random_string(&mut Alternating(false), 16, Alphabet::Alphanumeric).unwrap();
        assert_eq!(s, "B".repeat(16));
    }

    #[test]
    fn every_character_is_equally_likely() {
        // Chi-squared over 620,000 draws of the 62-character alphabet with the real CSPRNG.
        // 61 degrees of freedom: the 99.99th percentile is about 118; a modulo bias of
        // 8/256 on the first 8 characters would push it into the thousands.
        let draws = 620_000;
        let s = random_string(&mut OsEntropy, draws, Alphabet::Alphanumeric).unwrap();
        let mut counts = [0u64; 256];
        for b in s.bytes() {
            counts[usize::from(b)] += 1;
        }
        let expected = draws as f64 / 62.0;
        let chi2: f64 = ALPHANUMERIC
            .iter()
            .map(|&c| {
                let d = counts[usize::from(c)] as f64 - expected;
                d * d / expected
            })
            .sum();
        assert!(
            chi2 < 118.0,
            "chi-squared {chi2} says the characters are not uniform"
        );
    }

    #[test]
    fn a_biased_sampler_would_fail_the_same_check() {
        // Guard for the test above: naive `byte % 62` over the same number of draws.
        let mut bytes = vec![0u8; 620_000];
        OsEntropy.fill(&mut bytes).unwrap();
        let mut counts = [0u64; 62];
        for b in bytes {
            counts[usize::from(b) % 62] += 1;
        }
        let expected = 620_000.0 / 62.0;
        let chi2: f64 = counts
            .iter()
            .map(|&c| (c as f64 - expected).powi(2) / expected)
            .sum();
        assert!(
            chi2 > 118.0,
            "the chi-squared check must be able to see modulo bias ({chi2})"
        );
    }

    #[test]
    fn fernet_keys_are_32_bytes_url_safe() {
        let key = fernet_key(&mut OsEntropy).unwrap();
        assert_eq!(key.len(), 44);
        let raw = base64::engine::general_purpose::URL_SAFE
            .decode(&key)
            .unwrap();
        assert_eq!(raw.len(), 32);
        assert!(!key.contains('+') && !key.contains('/'));
        assert_ne!(key, fernet_key(&mut OsEntropy).unwrap());
    }
}
