//! JWT signing keys for the dev issuer and the tests.
//!
//! A [`SigningKey`] holds a private key in the form `jsonwebtoken` signs with, plus the
//! public half as a JWK (what the issuer publishes at `/jwks`) and as SPKI PEM (what the
//! "HS256 keyed with the RSA public key" attack test needs). RSA keys come from the `rsa`
//! crate; EC and Ed25519 keys from ring through rcgen, whose PKCS#8 output is exactly what
//! `EncodingKey::from_ec_der` / `from_ed_der` expect.
//!
//! [`forge_token`] builds tokens by hand (unsigned, or HMAC with an arbitrary secret) so
//! tests can feed the gateway things no honest issuer would produce.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};
use sha2::Sha256;

/// The asymmetric JWS algorithms the devkit can sign with.
#[allow(clippy::upper_case_acronyms)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyAlg {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl KeyAlg {
    /// Every variant, for tests that sweep all algorithms.
    pub const ALL: [KeyAlg; 9] = [
        KeyAlg::RS256,
        KeyAlg::RS384,
        KeyAlg::RS512,
        KeyAlg::PS256,
        KeyAlg::PS384,
        KeyAlg::PS512,
        KeyAlg::ES256,
        KeyAlg::ES384,
        KeyAlg::EdDSA,
    ];

    /// The JOSE `alg` name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlg::RS256 => "RS256",
            KeyAlg::RS384 => "RS384",
            KeyAlg::RS512 => "RS512",
            KeyAlg::PS256 => "PS256",
            KeyAlg::PS384 => "PS384",
            KeyAlg::PS512 => "PS512",
            KeyAlg::ES256 => "ES256",
            KeyAlg::ES384 => "ES384",
            KeyAlg::EdDSA => "EdDSA",
        }
    }

    /// The matching `jsonwebtoken` algorithm.
    pub fn jsonwebtoken_alg(self) -> Algorithm {
        match self {
            KeyAlg::RS256 => Algorithm::RS256,
            KeyAlg::RS384 => Algorithm::RS384,
            KeyAlg::RS512 => Algorithm::RS512,
            KeyAlg::PS256 => Algorithm::PS256,
            KeyAlg::PS384 => Algorithm::PS384,
            KeyAlg::PS512 => Algorithm::PS512,
            KeyAlg::ES256 => Algorithm::ES256,
            KeyAlg::ES384 => Algorithm::ES384,
            KeyAlg::EdDSA => Algorithm::EdDSA,
        }
    }
}

impl std::fmt::Display for KeyAlg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for KeyAlg {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<KeyAlg> {
        KeyAlg::ALL
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| anyhow::anyhow!("unknown signing algorithm {s:?}"))
    }
}

/// Public parameters as they appear in the JWK.
#[derive(Clone)]
enum PublicParts {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    Ec {
        crv: &'static str,
        x: Vec<u8>,
        y: Vec<u8>,
    },
    Ed {
        x: Vec<u8>,
    },
}

/// A private signing key with its public JWK.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    pub alg: KeyAlg,
    encoding: EncodingKey,
    public: PublicParts,
    public_pem: String,
}

impl std::fmt::Debug for SigningKey {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh key for `alg` with a random hex `kid`.
    pub fn generate(alg: KeyAlg) -> anyhow::Result<SigningKey> {
        let kid = hex::encode(rand::random::<[u8; 8]>());
        match alg {
            KeyAlg::RS256
            | KeyAlg::RS384
            | KeyAlg::RS512
            | KeyAlg::PS256
            | KeyAlg::PS384
            | KeyAlg::PS512 => {
                let private = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048)?;
                let public = private.to_public_key();
                // jsonwebtoken's RSA signer wants PKCS#1 DER.
                let der = private.to_pkcs1_der()?;
                Ok(SigningKey {
                    kid,
                    alg,
                    encoding: EncodingKey::from_rsa_der(der.as_bytes()),
                    public_pem: public.to_public_key_pem(LineEnding::LF)?,
                    public: PublicParts::Rsa {
                        n: public.n().to_bytes_be(),
                        e: public.e().to_bytes_be(),
                    },
                })
            }
            KeyAlg::ES256 | KeyAlg::ES384 => {
                let (sig_alg, crv, coord) = if alg == KeyAlg::ES256 {
                    (&rcgen::PKCS_ECDSA_P256_SHA256, "P-256", 32)
                } else {
                    (&rcgen::PKCS_ECDSA_P384_SHA384, "P-384", 48)
                };
                let pair = rcgen::KeyPair::generate_for(sig_alg)?;
                // Uncompressed SEC1 point: 0x04 || x || y.
                let raw = pair.public_key_raw();
                anyhow::ensure!(
                    raw.len() == 1 + 2 * coord && raw[0] == 4,
                    "unexpected EC point"
                );
                Ok(SigningKey {
                    kid,
                    alg,
                    encoding: EncodingKey::from_ec_der(&pair.serialize_der()),
                    public_pem: pair.public_key_pem(),
                    public: PublicParts::Ec {
                        crv,
                        x: raw[1..1 + coord].to_vec(),
                        y: raw[1 + coord..].to_vec(),
                    },
                })
            }
            KeyAlg::EdDSA => {
                let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
                Ok(SigningKey {
                    kid,
                    alg,
                    encoding: EncodingKey::from_ed_der(&pair.serialize_der()),
                    public_pem: pair.public_key_pem(),
                    public: PublicParts::Ed {
                        x: pair.public_key_raw().to_vec(),
                    },
                })
            }
        }
    }

    /// The same key material under a different `kid` (kid-confusion tests).
    pub fn with_kid(mut self, kid: impl Into<String>) -> SigningKey {
        self.kid = kid.into();
        self
    }

    /// The public JWK, as an issuer would publish it.
    pub fn jwk(&self) -> Value {
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        let mut jwk = match &self.public {
            PublicParts::Rsa { n, e } => json!({"kty": "RSA", "n": b64(n), "e": b64(e)}),
            PublicParts::Ec { crv, x, y } => {
                json!({"kty": "EC", "crv": crv, "x": b64(x), "y": b64(y)})
            }
            PublicParts::Ed { x } => json!({"kty": "OKP", "crv": "Ed25519", "x": b64(x)}),
        };
        let obj = jwk.as_object_mut().expect("jwk is an object");
        obj.insert("kid".into(), json!(self.kid));
        obj.insert("alg".into(), json!(self.alg.as_str()));
        obj.insert("use".into(), json!("sig"));
        jwk
    }

    /// Signs `claims` with header `{alg, kid, typ: "JWT"}`.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.jsonwebtoken_alg());
        header.kid = Some(self.kid.clone());
        self.sign_with_header(header, claims)
    }

    /// Signs with a caller-built header, taken as is (attack tests set `jku`, `crit`, a
    /// foreign `kid`, or an `alg` that does not match the key family).
    ///
    /// Panics if `jsonwebtoken` refuses, which only happens when `header.alg` belongs to a
    /// different key family than this key: a bug in the test, not a runtime condition.
    pub fn sign_with_header(&self, header: Header, claims: &Value) -> String {
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .unwrap_or_else(|e| panic!("signing with {} key failed: {e}", self.alg))
    }

    /// Signs a payload given as JSON text, byte for byte (header `{alg, kid, typ}`): for
    /// tests that need exact number spellings or duplicate keys, which a `Value` would
    /// normalise away.
    pub fn sign_raw_payload(&self, payload_json: &str) -> String {
        let mut header = Header::new(self.jsonwebtoken_alg());
        header.kid = Some(self.kid.clone());
        let header_json = serde_json::to_string(&header).expect("header serialises");
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header_json),
            URL_SAFE_NO_PAD.encode(payload_json)
        );
        let sig = jsonwebtoken::crypto::sign(
            signing_input.as_bytes(),
            &self.encoding,
            self.jsonwebtoken_alg(),
        )
        .unwrap_or_else(|e| panic!("signing with {} key failed: {e}", self.alg));
        format!("{signing_input}.{sig}")
    }

    /// SPKI PEM of the public key.
    pub fn public_key_pem(&self) -> String {
        self.public_pem.clone()
    }

    /// The `jsonwebtoken` algorithm this key signs with by default.
    pub fn jsonwebtoken_alg(&self) -> Algorithm {
        self.alg.jsonwebtoken_alg()
    }

    /// A decoding key built from the published JWK, i.e. what a verifier would hold.
    #[cfg(test)]
    fn decoding_key(&self) -> jsonwebtoken::DecodingKey {
        let jwk: jsonwebtoken::jwk::Jwk =
            serde_json::from_value(self.jwk()).expect("own JWK deserializes");
        jsonwebtoken::DecodingKey::from_jwk(&jwk).expect("own JWK is a valid decoding key")
    }
}

/// A JWK Set document `{"keys": [...]}`.
pub fn jwks(keys: &[&SigningKey]) -> Value {
    json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() })
}

/// Builds `b64url(header).b64url(claims).sig` by hand.
///
/// With `hmac_secret` `None` the signature part is empty (an `alg: none` style token);
/// otherwise it is HMAC-SHA256 over `header.payload` with that secret, whatever the
/// header claims.
pub fn forge_token(header_json: &Value, claims: &Value, hmac_secret: Option<&[u8]>) -> String {
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header_json.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = match hmac_secret {
        None => String::new(),
        Some(secret) => {
            let mut mac =
                Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
            mac.update(signing_input.as_bytes());
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        }
    };
    format!("{signing_input}.{sig}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{decode, DecodingKey, Validation};

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn every_alg_verifies_through_its_jwk() {
        for alg in KeyAlg::ALL {
            let key = SigningKey::generate(alg).unwrap();
            let claims = json!({"sub": "alice", "aud": "api", "exp": now() + 60});
            let token = key.sign(&claims);

            let set = jwks(&[&key]);
            let jwk: jsonwebtoken::jwk::Jwk =
                serde_json::from_value(set["keys"][0].clone()).unwrap();
            assert_eq!(jwk.common.key_id.as_deref(), Some(key.kid.as_str()));
            let dk = DecodingKey::from_jwk(&jwk).unwrap();
            let mut v = Validation::new(key.jsonwebtoken_alg());
            v.set_audience(&["api"]);
            let data = decode::<Value>(&token, &dk, &v).unwrap_or_else(|e| panic!("{alg}: {e}"));
            assert_eq!(data.claims["sub"], "alice");
            assert_eq!(data.header.kid.as_deref(), Some(key.kid.as_str()));
            assert_eq!(data.header.typ.as_deref(), Some("JWT"));

            // A different key of the same alg must not verify it.
            let other = SigningKey::generate(alg).unwrap();
            assert!(decode::<Value>(&token, &other.decoding_key(), &v).is_err());
        }
    }

    #[test]
    fn public_pem_is_spki() {
        for alg in [KeyAlg::RS256, KeyAlg::ES256, KeyAlg::EdDSA] {
            let pem = SigningKey::generate(alg).unwrap().public_key_pem();
            assert!(
                pem.starts_with("-----BEGIN PUBLIC KEY-----"),
                "{alg}: {pem}"
            );
        }
    }

    #[test]
    fn forged_hs256_verifies_with_the_same_secret() {
        let header = json!({"alg": "HS256", "typ": "JWT"});
        let claims = json!({"sub": "mallory", "exp": now() + 60});
        let token = forge_token(&header, &claims, Some(b"secret"));
        let mut v = Validation::new(Algorithm::HS256);
        v.validate_aud = false;
        let data = decode::<Value>(&token, &DecodingKey::from_secret(b"secret"), &v).unwrap();
        assert_eq!(data.claims["sub"], "mallory");

        let unsigned = forge_token(&json!({"alg": "none"}), &claims, None);
        assert!(unsigned.ends_with('.'));
        assert_eq!(unsigned.split('.').count(), 3);
    }

    #[test]
    fn alg_names_round_trip() {
        for alg in KeyAlg::ALL {
            assert_eq!(alg.as_str().parse::<KeyAlg>().unwrap(), alg);
        }
    }
}
