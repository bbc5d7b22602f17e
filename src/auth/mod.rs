//! Token authentication: JWT verification, JWKS lifecycle, introspection.
//!
//! The request path calls [`bearer_token`] on the `Authorization` header, then
//! [`Authenticator::verify`], which yields an [`Identity`] or an [`AuthError`] whose
//! [`DenyReason`] is the metric label and decides status and `WWW-Authenticate`.
//!
//! - `jwt.rs`: the token checks, in order, as plain functions;
//! - `jwks.rs`: per-issuer key stores, fetching (file, `jwks_uri`, discovery), refresh,
//!   throttled refetch on unknown `kid`, stale-on-error;
//! - `introspect.rs`: RFC 7662 for opaque tokens, with a cache keyed by token hash;
//! - `http.rs`: the HTTPS-only client both of the latter use;
//! - `authenticator.rs`: ties issuers, stores and the background runtime together.
//!
//! All network I/O runs on the `io` runtime handed to [`Authenticator::new`]; a request
//! only awaits channels, so a slow IdP never blocks a proxy worker thread.

mod authenticator;
pub mod error;
pub mod http;
mod introspect;
pub mod jwks;
/// Public so fuzz targets and tools can run the pre-signature parsing on their own.
pub mod jwt;

use std::sync::Arc;

use serde_json::Value;

pub use authenticator::Authenticator;
pub use error::{AuthError, DenyReason};
pub use jwks::JwksFetcher;

/// Tokens longer than this are refused before any parsing (no IdP issues such tokens, and
/// parsing attacker-sized input is the risk).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Where an issuer's verification keys come from (exactly one per issuer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// `{issuer}/.well-known/openid-configuration` -> `jwks_uri`.
    Discovery,
    JwksUri(String),
    JwksFile(std::path::PathBuf),
}

/// RFC 7662 token introspection endpoint of an issuer.
#[derive(Clone, PartialEq, Eq)]
pub struct Introspection {
    pub url: String,
    pub client_id: String,
    pub client_secret: String,
}

impl std::fmt::Debug for Introspection {
    // The secret must not reach logs through a `{:?}` of the settings.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspection")
            .field("url", &self.url)
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .finish()
    }
}

/// One trusted issuer, as built by the config layer.
#[derive(Clone, Debug, PartialEq)]
pub struct IssuerSettings {
    /// Config name, e.g. "corp" (metric label, route `issuers` entries).
    pub name: String,
    /// Exact `iss`.
    pub issuer: String,
    pub keys: KeySource,
    pub audiences: Vec<String>,
    /// Allowlist, already validated as asymmetric by the config layer.
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    pub leeway_s: u64,
    /// Extra trust root (PEM) for HTTPS to the issuer, besides the system roots.
    pub ca_pem: Option<Vec<u8>>,
    pub jwks_refresh_s: u64,
    /// Dotted claim paths.
    pub roles_claim: String,
    pub groups_claim: String,
    pub scopes_claim: String,
    pub client_id_claim: String,
    pub introspection: Option<Introspection>,
}

/// Who the verified token says the caller is.
#[derive(Clone, Debug)]
pub struct Identity {
    /// Config name of the issuer.
    pub issuer: String,
    pub iss: String,
    pub sub: Option<String>,
    /// Value of the issuer's `client_id_claim` (only that claim).
    pub client_id: Option<String>,
    /// Client-credentials token: the subject is a client, not a user (see
    /// [`is_client_token`]).
    pub is_client: bool,
    pub roles: Vec<String>,
    pub groups: Vec<String>,
    pub scopes: Vec<String>,
    pub amr: Vec<String>,
    /// Unix seconds.
    pub exp: u64,
    /// The full payload, for `{claims.PATH}` row filters.
    pub claims: Arc<Value>,
}

impl Identity {
    /// Whether the token records a multi-factor login (`amr` holds `mfa`, `otp` or `hwk`).
    pub fn has_mfa(&self) -> bool {
        self.amr
            .iter()
            .any(|m| matches!(m.as_str(), "mfa" | "otp" | "hwk"))
    }

    /// A claim by dotted path (`realm_access.roles`); see [`claim_path`].
    pub fn claim(&self, dotted: &str) -> Option<&Value> {
        claim_path(&self.claims, dotted)
    }

    /// Builds the identity from verified claims with the issuer's claim mapping. The
    /// claims must already be verified: this checks nothing (public for fuzzing and tools).
    pub fn from_claims(settings: &IssuerSettings, iss: String, exp: u64, claims: Value) -> Self {
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .map(str::to_string);
        let client_id = claim_path(&claims, &settings.client_id_claim)
            .and_then(Value::as_str)
            .map(str::to_string);
        let is_client = is_client_token(&claims, sub.as_deref(), client_id.as_deref());
        let strings = |path: &str| string_list(claim_path(&claims, path), false);
        Identity {
            issuer: settings.name.clone(),
            iss,
            roles: strings(&settings.roles_claim),
            groups: strings(&settings.groups_claim),
            scopes: string_list(claim_path(&claims, &settings.scopes_claim), true),
            amr: strings("amr"),
            sub,
            client_id,
            is_client,
            exp,
            claims: Arc::new(claims),
        }
    }
}

/// Looks a claim up by dotted path. A key that itself contains dots (namespaced claims
/// such as `https://example.com/roles`) is matched whole before the path is split, so both
/// forms work.
pub fn claim_path<'a>(claims: &'a Value, dotted: &str) -> Option<&'a Value> {
    let obj = claims.as_object()?;
    if let Some(v) = obj.get(dotted) {
        return Some(v);
    }
    for (i, _) in dotted.match_indices('.') {
        if let Some(inner) = obj.get(&dotted[..i]) {
            if let Some(v) = claim_path(inner, &dotted[i + 1..]) {
                return Some(v);
            }
        }
    }
    None
}

/// A string or an array of strings as a list; with `split_spaces`, a string is a
/// space-separated list (OAuth `scope`). Non-string array items are ignored.
fn string_list(v: Option<&Value>, split_spaces: bool) -> Vec<String> {
    match v {
        Some(Value::String(s)) if split_spaces => {
            s.split_ascii_whitespace().map(str::to_string).collect()
        }
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

/// A client-credentials token is one whose subject is a client: `sub`
/// equals its client ID, or the client ID claim is present without a user claim.
///
/// A `sub` that names anyone but the client counts as a user claim unless the IdP marks
/// the token as an application's: Auth0 (`gty = "client-credentials"`, `sub =
/// "<client>@clients"`), Entra ID (`idtyp = "app"`), Keycloak (`preferred_username =
/// "service-account-<client>"`). Guessing from absent profile claims would be fail-open:
/// an access token for a person often carries no email or name, and would then inherit
/// the roles granted to the client ID of the app the person signed in through.
pub fn is_client_token(claims: &Value, sub: Option<&str>, client_id: Option<&str>) -> bool {
    let Some(client_id) = client_id else {
        return false;
    };
    let Some(sub) = sub else {
        return true;
    };
    let s = |k: &str| claims.get(k).and_then(Value::as_str);
    sub == client_id
        || sub.strip_suffix("@clients") == Some(client_id)
        || s("gty") == Some("client-credentials")
        || s("idtyp") == Some("app")
        || s("preferred_username").is_some_and(|u| u.starts_with("service-account-"))
}

/// Byte classes of token syntax: a bit per class, one table lookup per byte.
pub(crate) const B64URL: u8 = 1;
/// RFC 6750 `token68` without its trailing `=`.
pub(crate) const TOKEN68: u8 = 2;
static CLASSES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            t[i] = B64URL | TOKEN68;
        } else if b == b'.' || b == b'~' || b == b'+' || b == b'/' {
            t[i] = TOKEN68;
        }
        i += 1;
    }
    t
};

/// Whether every byte of `s` is in `class`. Branch-free over the bytes (a token is
/// checked on every request, up to 8 KiB of it), so it costs about a cycle per byte.
pub(crate) fn all_in(s: &[u8], class: u8) -> bool {
    s.iter().fold(class, |acc, &b| acc & CLASSES[b as usize]) != 0
}

/// Extracts the token from an `Authorization` header (RFC 6750 section 2.1): scheme
/// `Bearer` in any case, one space, a token68. No header: `MissingToken`; anything else
/// (other scheme, extra spaces, bad characters, over [`MAX_TOKEN_BYTES`]): `MalformedToken`.
pub fn bearer_token(authorization: Option<&[u8]>) -> Result<&str, AuthError> {
    token68(bearer_bytes(authorization)?)
}

/// The first half of [`bearer_token`]: the scheme and the size, not the characters. The
/// gateway looks a token up in its caches between the two halves: bytes equal to a
/// token already decided passed [`token68`] then, so a cache hit skips the scan.
pub fn bearer_bytes(authorization: Option<&[u8]>) -> Result<&[u8], AuthError> {
    let Some(h) = authorization else {
        return Err(AuthError::new(DenyReason::MissingToken, "no bearer token"));
    };
    // Checked before looking at the content, so oversized input costs nothing more.
    if h.len() > MAX_TOKEN_BYTES + "Bearer ".len() {
        return Err(AuthError::new(
            DenyReason::MalformedToken,
            "token too large",
        ));
    }
    let malformed = || {
        AuthError::new(
            DenyReason::MalformedToken,
            "Authorization is not 'Bearer <token>'",
        )
    };
    if h.len() < 8 || !h[..6].eq_ignore_ascii_case(b"bearer") || h[6] != b' ' {
        return Err(malformed());
    }
    let token = &h[7..];
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::new(
            DenyReason::MalformedToken,
            "token too large",
        ));
    }
    Ok(token)
}

/// The second half of [`bearer_token`]: the token's characters.
pub fn token68(token: &[u8]) -> Result<&str, AuthError> {
    let malformed = || {
        AuthError::new(
            DenyReason::MalformedToken,
            "Authorization is not 'Bearer <token>'",
        )
    };
    // token68 = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
    let body_end = token.iter().rposition(|b| *b != b'=').map_or(0, |i| i + 1);
    let ok_body = body_end > 0 && all_in(&token[..body_end], TOKEN68);
    if !ok_body {
        return Err(malformed());
    }
    std::str::from_utf8(token).map_err(|_| malformed())
}

#[cfg(test)]
mod e2e_tests;

/// An issuer `corp` (`https://idp`) with the default claim mapping, for unit tests that
/// build an [`Identity`] from claims.
#[cfg(test)]
pub(crate) fn test_settings() -> IssuerSettings {
    IssuerSettings {
        name: "corp".into(),
        issuer: "https://idp".into(),
        keys: KeySource::Discovery,
        audiences: vec![],
        algorithms: vec![],
        leeway_s: 0,
        ca_pem: None,
        jwks_refresh_s: 600,
        roles_claim: "roles".into(),
        groups_claim: "groups".into(),
        scopes_claim: "scope".into(),
        client_id_claim: "client_id".into(),
        introspection: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn byte_classes_match_the_grammar() {
        for b in 0..=255u8 {
            let b64url = b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
            let token68 = b64url || b"._~+/".contains(&b);
            assert_eq!(all_in(&[b], B64URL), b64url, "byte {b}");
            assert_eq!(all_in(&[b], TOKEN68), token68, "byte {b}");
            assert_eq!(all_in(&[b'a', b, b'z'], TOKEN68), token68, "byte {b}");
        }
        assert!(all_in(b"", TOKEN68));
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(
            bearer_token(Some(b"Bearer abc.def-_~+/=")).unwrap(),
            "abc.def-_~+/="
        );
        assert_eq!(bearer_token(Some(b"bEaReR abc")).unwrap(), "abc");
        let reason = |h: Option<&[u8]>| bearer_token(h).unwrap_err().reason;
        assert_eq!(reason(None), DenyReason::MissingToken);
        for bad in [
            &b"Basic dXNlcjpwYXNz"[..],
            b"Bearer",
            b"Bearer ",
            b"Bearer  abc",
            b"Bearer abc def",
            b"Bearer a\"b",
            b"Bearerabc",
            b"Bearer ==",
            b"Bearer a=b",
            b"Bearer \xff\xfe",
            b"garbage",
        ] {
            assert_eq!(reason(Some(bad)), DenyReason::MalformedToken, "{bad:?}");
        }
    }

    #[test]
    fn oversize_token_refused_before_parsing() {
        let mut h = b"Bearer ".to_vec();
        h.extend(std::iter::repeat_n(b'a', MAX_TOKEN_BYTES));
        assert!(bearer_token(Some(&h)).is_ok());
        h.push(b'a');
        let e = bearer_token(Some(&h)).unwrap_err();
        assert_eq!(e.reason, DenyReason::MalformedToken);
        assert_eq!(e.detail, "token too large");
        // Far too large and not even a Bearer header: still the size answer.
        let huge = vec![0u8; 100_000];
        assert_eq!(
            bearer_token(Some(&huge)).unwrap_err().detail,
            "token too large"
        );
    }

    #[test]
    fn claims_by_dotted_path() {
        let c = json!({
            "realm_access": {"roles": ["a", "b"]},
            "https://example.com/roles": ["x"],
            "ns": {"a.b": {"c": 1}},
        });
        assert_eq!(
            claim_path(&c, "realm_access.roles"),
            Some(&json!(["a", "b"]))
        );
        assert_eq!(
            claim_path(&c, "https://example.com/roles"),
            Some(&json!(["x"]))
        );
        assert_eq!(claim_path(&c, "ns.a.b.c"), Some(&json!(1)));
        assert_eq!(claim_path(&c, "realm_access.nope"), None);
        assert_eq!(claim_path(&c, "realm_access.roles.x"), None);
    }

    #[test]
    fn string_lists() {
        assert_eq!(string_list(Some(&json!("a b  c")), true), ["a", "b", "c"]);
        assert_eq!(string_list(Some(&json!(["a", 1, "b"])), true), ["a", "b"]);
        assert_eq!(string_list(Some(&json!("a b")), false), ["a b"]);
        assert!(string_list(Some(&json!(3)), false).is_empty());
        assert!(string_list(None, false).is_empty());
    }

    #[test]
    fn client_credentials_detection() {
        let c = |v: Value| {
            let sub = v.get("sub").and_then(Value::as_str).map(str::to_string);
            let cid = v
                .get("client_id")
                .and_then(Value::as_str)
                .map(str::to_string);
            is_client_token(&v, sub.as_deref(), cid.as_deref())
        };
        // sub equals the client id (Okta, devkit).
        assert!(c(
            json!({"sub": "billing-sync", "client_id": "billing-sync"})
        ));
        // No sub at all.
        assert!(c(json!({"client_id": "billing-sync"})));
        // Service principal: own sub, marked as an app (Entra ID), Auth0's form of sub.
        assert!(c(
            json!({"sub": "9f1c", "client_id": "billing-sync", "idtyp": "app"})
        ));
        assert!(c(
            json!({"sub": "billing-sync@clients", "client_id": "billing-sync"})
        ));
        // A person's access token with no profile claims is still a person's.
        assert!(!c(json!({"sub": "auth0|u1", "client_id": "billing-sync"})));
        assert!(c(
            json!({"sub": "9f1c", "client_id": "x", "preferred_username": "service-account-x"})
        ));
        assert!(c(
            json!({"sub": "u1", "client_id": "x", "email": "a@b", "gty": "client-credentials"})
        ));
        // A person using a client app.
        assert!(!c(
            json!({"sub": "alice", "client_id": "web", "preferred_username": "alice"})
        ));
        assert!(!c(
            json!({"sub": "alice", "client_id": "web", "email": "alice@example.com"})
        ));
        // No client id: never a client.
        assert!(!c(json!({"sub": "alice"})));
    }

    #[test]
    fn mfa_markers() {
        let s = test_settings();
        let id =
            |amr: Value| Identity::from_claims(&s, "https://idp".into(), 1, json!({ "amr": amr }));
        assert!(id(json!(["pwd", "mfa"])).has_mfa());
        assert!(id(json!(["hwk"])).has_mfa());
        assert!(id(json!("otp")).has_mfa());
        assert!(!id(json!(["pwd"])).has_mfa());
        let dbg = format!(
            "{:?}",
            Introspection {
                url: "u".into(),
                client_id: "c".into(),
                client_secret: "s3cr3t".into()
            }
        );
        assert!(!dbg.contains("s3cr3t"));
    }
}
