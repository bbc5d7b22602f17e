//! The JWT checks as plain functions, in the order the authenticator applies them:
//!
//! 1. [`decode_unverified`]: shape, header (`alg` none/HS* and unknown algs refused as
//!    `DisallowedAlgorithm`; `jku`, `x5u`, `crit` refused as `MalformedToken` because
//!    they ask the verifier to fetch keys or understand extensions we never honour),
//!    payload JSON. We decode the header ourselves rather than trusting a library's
//!    `Header` type so that unknown or dangerous members cannot slip through.
//! 2. The issuer is picked by the unverified `iss` (in `authenticator.rs`).
//! 3. [`pick_keys`] + [`check_signature`]: key by `kid` (or every key that fits), key
//!    type must fit `alg`.
//! 4. [`check_claims`]: `iss`, `aud`, `exp` (required), `nbf`/`iat` with leeway.
//!
//! Error details never quote the token or unverified claim values.

use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use super::jwks::{KeySet, VerifyKey};
use super::{AuthError, DenyReason, IssuerSettings};

/// A token split and decoded, signature not yet checked.
#[derive(Debug)]
pub struct Unverified<'a> {
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub payload: Map<String, Value>,
    /// `header.payload`, the bytes the signature covers.
    pub signing_input: &'a str,
    pub signature: &'a str,
}

impl Unverified<'_> {
    /// The unverified `iss`, used only to choose which issuer's keys to try.
    pub fn iss(&self) -> Option<&str> {
        self.payload.get("iss").and_then(Value::as_str)
    }
}

fn err(reason: DenyReason, detail: &str) -> AuthError {
    AuthError::new(reason, detail)
}

fn is_b64url(s: &str) -> bool {
    super::all_in(s.as_bytes(), super::B64URL)
}

/// Whether the token has the JWS compact shape: three dot-separated base64url parts, the
/// first two non-empty. Anything else is an opaque token (introspection).
pub fn looks_like_jwt(token: &str) -> bool {
    let mut parts = token.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(p), Some(s), None) => {
            !h.is_empty() && !p.is_empty() && is_b64url(h) && is_b64url(p) && is_b64url(s)
        }
        _ => false,
    }
}

fn decode_object(part: &str, what: &str) -> Result<Map<String, Value>, AuthError> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| {
        err(
            DenyReason::MalformedToken,
            &format!("{what} is not base64url"),
        )
    })?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(err(
            DenyReason::MalformedToken,
            &format!("{what} is not a JSON object"),
        )),
    }
}

/// Step 1: split, decode and vet the header, decode the payload. No key involved yet.
pub fn decode_unverified(token: &str) -> Result<Unverified<'_>, AuthError> {
    if !looks_like_jwt(token) {
        return Err(err(DenyReason::MalformedToken, "not a JWT"));
    }
    let (signing_input, signature) = token.rsplit_once('.').expect("three parts");
    let (header_b64, payload_b64) = signing_input.split_once('.').expect("three parts");
    let header = decode_object(header_b64, "JWT header")?;

    let alg_name = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or_else(|| err(DenyReason::MalformedToken, "JWT header has no alg"))?;
    let alg = match Algorithm::from_str(alg_name) {
        Ok(Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) => {
            return Err(err(
                DenyReason::DisallowedAlgorithm,
                "symmetric (HS*) algorithms are not accepted",
            ))
        }
        Ok(a) => a,
        // "none" in any spelling, and anything else we cannot verify.
        Err(_) => {
            return Err(err(
                DenyReason::DisallowedAlgorithm,
                "algorithm not accepted",
            ))
        }
    };
    for forbidden in ["jku", "x5u", "crit"] {
        if header.contains_key(forbidden) {
            return Err(err(
                DenyReason::MalformedToken,
                &format!("JWT header member {forbidden} is not accepted"),
            ));
        }
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(err(DenyReason::MalformedToken, "kid is not a string")),
    };
    if signature.is_empty() {
        return Err(err(DenyReason::BadSignature, "JWT has no signature"));
    }
    let payload = decode_object(payload_b64, "JWT payload")?;
    Ok(Unverified {
        alg,
        kid,
        payload,
        signing_input,
        signature,
    })
}

/// Outcome of looking for keys that may verify a token.
#[derive(Debug)]
pub enum KeyPick<'k> {
    /// Keys to try, in JWKS order.
    Found(Vec<&'k VerifyKey>),
    /// The `kid` exists but none of its keys fits the token's `alg` (alg/kty confusion).
    Misfit,
    /// No key with this `kid` (or, without a kid, no key of a fitting type).
    Unknown,
}

/// Step 3a: candidate keys for `alg` and `kid`.
pub fn pick_keys<'k>(keys: &'k KeySet, alg: Algorithm, kid: Option<&'k str>) -> KeyPick<'k> {
    match kid {
        Some(kid) => {
            let mut any = false;
            let fit: Vec<_> = keys
                .by_kid(kid)
                .inspect(|_| any = true)
                .filter(|k| k.fits(alg))
                .collect();
            match (any, fit.is_empty()) {
                (false, _) => KeyPick::Unknown,
                (true, true) => KeyPick::Misfit,
                (true, false) => KeyPick::Found(fit),
            }
        }
        None => {
            let fit: Vec<_> = keys.keys.iter().filter(|k| k.fits(alg)).collect();
            if fit.is_empty() {
                KeyPick::Unknown
            } else {
                KeyPick::Found(fit)
            }
        }
    }
}

/// Step 3b: the signature must verify under one of `candidates` (all of which fit `alg`).
pub fn check_signature(u: &Unverified<'_>, candidates: &[&VerifyKey]) -> Result<(), AuthError> {
    let signature = URL_SAFE_NO_PAD
        .decode(u.signature)
        .map_err(|_| err(DenyReason::MalformedToken, "signature is not base64url"))?;
    for key in candidates {
        debug_assert!(key.fits(u.alg));
        // A key the backend cannot use, or a signature of the wrong size: no match.
        if key.verifies(u.alg, u.signing_input.as_bytes(), &signature) {
            return Ok(());
        }
    }
    Err(err(DenyReason::BadSignature, "signature does not verify"))
}

/// A NumericDate claim (RFC 7519 section 2): a non-negative number; fractions truncated.
fn numeric_date(payload: &Map<String, Value>, name: &str) -> Result<Option<u64>, AuthError> {
    match payload.get(name) {
        None => Ok(None),
        Some(v) => match (v.as_u64(), v.as_f64()) {
            (Some(n), _) => Ok(Some(n)),
            (None, Some(f)) if f.is_finite() && f >= 0.0 => Ok(Some(f as u64)),
            _ => Err(err(
                DenyReason::MalformedToken,
                &format!("{name} is not a NumericDate"),
            )),
        },
    }
}

/// Whether `aud` (string or array) names one of `audiences`. An empty allowlist accepts
/// nothing: failing closed beats accepting tokens minted for another API.
pub fn audience_ok(aud: Option<&Value>, audiences: &[String]) -> bool {
    let has = |a: &str| audiences.iter().any(|x| x == a);
    match aud {
        Some(Value::String(a)) => has(a),
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(has),
        _ => false,
    }
}

/// Step 4: registered claims after the signature verified. Returns `exp`.
pub fn check_claims(
    payload: &Map<String, Value>,
    settings: &IssuerSettings,
    now: u64,
) -> Result<u64, AuthError> {
    if payload.get("iss").and_then(Value::as_str) != Some(settings.issuer.as_str()) {
        return Err(err(DenyReason::WrongIssuer, "issuer not trusted"));
    }
    if !audience_ok(payload.get("aud"), &settings.audiences) {
        return Err(err(
            DenyReason::WrongAudience,
            "token is not meant for this audience",
        ));
    }
    let leeway = settings.leeway_s;
    let exp = numeric_date(payload, "exp")?
        .ok_or_else(|| err(DenyReason::MalformedToken, "token has no exp"))?;
    if exp.saturating_add(leeway) < now {
        return Err(err(DenyReason::Expired, "token expired"));
    }
    for name in ["nbf", "iat"] {
        if let Some(t) = numeric_date(payload, name)? {
            if t > now.saturating_add(leeway) {
                return Err(err(DenyReason::NotYetValid, "token not valid yet"));
            }
        }
    }
    Ok(exp)
}

/// Current Unix time in seconds.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
