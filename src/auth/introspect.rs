//! RFC 7662 token introspection for opaque (non-JWT) tokens.
//!
//! The POST runs on the I/O runtime (the request awaits its join handle). Answers are
//! cached per issuer under the SHA-256 of the token, never the token itself: active
//! answers until the token's `exp` but at most [`MAX_CACHE`], inactive ones for
//! [`INACTIVE_CACHE`] so a client retrying a dead token does not hammer the IdP. Transport
//! failures are not cached.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::http::HttpsClient;
use super::jwt::{audience_ok, now};
use super::{AuthError, DenyReason, Identity, IssuerSettings};

/// Longest time an active answer is reused.
pub const MAX_CACHE: Duration = Duration::from_secs(300);
/// How long an `active: false` answer is reused.
pub const INACTIVE_CACHE: Duration = Duration::from_secs(60);

#[derive(Clone)]
struct Cached {
    answer: Result<Identity, AuthError>,
    until: Instant,
}

/// Introspection client of one issuer plus the shared answer cache.
pub struct Introspector {
    cache: moka::sync::Cache<[u8; 32], Cached>,
}

impl Default for Introspector {
    fn default() -> Self {
        Introspector {
            cache: moka::sync::Cache::builder()
                .max_capacity(50_000)
                .time_to_live(MAX_CACHE)
                .build(),
        }
    }
}

/// Lazily built HTTPS client of an issuer (no I/O in `Authenticator::new`).
pub type LazyClient = OnceLock<Result<HttpsClient, String>>;

fn cache_key(issuer: &str, token: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(issuer.as_bytes());
    h.update([0]);
    h.update(token.as_bytes());
    h.finalize().into()
}

impl Introspector {
    /// Introspects `token` at `settings.introspection` (which must be set).
    pub async fn introspect(
        &self,
        io: &tokio::runtime::Handle,
        settings: &Arc<IssuerSettings>,
        client: &LazyClient,
        token: &str,
    ) -> Result<Identity, AuthError> {
        let key = cache_key(&settings.name, token);
        if let Some(c) = self.cache.get(&key) {
            if c.until > Instant::now() {
                return c.answer;
            }
        }
        let unavailable =
            |detail: &str| AuthError::new(DenyReason::IssuerUnavailable, detail.to_string());
        let conf = settings
            .introspection
            .as_ref()
            .ok_or_else(|| unavailable("no introspection endpoint"))?;
        let client = client
            .get_or_init(|| HttpsClient::new(settings.ca_pem.as_deref()).map_err(|e| e.to_string()))
            .clone()
            .map_err(|e| {
                tracing::warn!(issuer = %settings.name, error = %e, "introspection client");
                unavailable("introspection unavailable")
            })?;
        let (url, id, secret, tok) = (
            conf.url.clone(),
            conf.client_id.clone(),
            conf.client_secret.clone(),
            token.to_string(),
        );
        let call = io.spawn(async move {
            client
                .post_form(
                    &url,
                    (&id, &secret),
                    &[("token", &tok), ("token_type_hint", "access_token")],
                )
                .await
        });
        let resp = match call.await {
            Ok(Ok(r)) if r.status.is_success() => r,
            Ok(Ok(r)) => {
                tracing::warn!(issuer = %settings.name, status = %r.status, "introspection refused");
                return Err(unavailable("introspection failed"));
            }
            Ok(Err(e)) => {
                tracing::warn!(issuer = %settings.name, error = %e, "introspection failed");
                return Err(unavailable("introspection failed"));
            }
            Err(_) => return Err(unavailable("introspection failed")),
        };
        let Ok(body) = serde_json::from_slice::<Value>(&resp.body) else {
            tracing::warn!(issuer = %settings.name, "introspection answer is not JSON");
            return Err(unavailable("introspection failed"));
        };
        let (answer, ttl) = interpret(settings, body, now());
        if let Some(ttl) = ttl {
            self.cache.insert(
                key,
                Cached {
                    answer: answer.clone(),
                    until: Instant::now() + ttl,
                },
            );
        }
        answer
    }
}

/// Turns an introspection answer into an identity or a denial, plus how long the result
/// may be cached (`None`: not at all).
pub fn interpret(
    settings: &IssuerSettings,
    body: Value,
    now: u64,
) -> (Result<Identity, AuthError>, Option<Duration>) {
    let inactive = |d: &str| {
        (
            Err(AuthError::new(DenyReason::IntrospectionInactive, d)),
            Some(INACTIVE_CACHE),
        )
    };
    if body.get("active").and_then(Value::as_bool) != Some(true) {
        return inactive("token is not active");
    }
    let iss = match body.get("iss").and_then(Value::as_str) {
        None => settings.issuer.clone(),
        Some(i) if i == settings.issuer => i.to_string(),
        Some(_) => {
            return (
                Err(AuthError::new(
                    DenyReason::WrongIssuer,
                    "issuer not trusted",
                )),
                Some(INACTIVE_CACHE),
            )
        }
    };
    // `aud` is optional in RFC 7662; when the IdP states it, it must be ours.
    if body.get("aud").is_some() && !audience_ok(body.get("aud"), &settings.audiences) {
        return (
            Err(AuthError::new(
                DenyReason::WrongAudience,
                "token is not meant for this audience",
            )),
            Some(INACTIVE_CACHE),
        );
    }
    let max = now + MAX_CACHE.as_secs();
    let exp = body.get("exp").and_then(Value::as_u64).unwrap_or(max);
    if exp.saturating_add(settings.leeway_s) < now {
        return (
            Err(AuthError::new(DenyReason::Expired, "token expired")),
            Some(INACTIVE_CACHE),
        );
    }
    let ttl = Duration::from_secs(exp.min(max).saturating_sub(now));
    let id = Identity::from_claims(settings, iss, exp, body);
    (Ok(id), (!ttl.is_zero()).then_some(ttl))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::KeySource;
    use serde_json::json;

    fn settings() -> IssuerSettings {
        IssuerSettings {
            name: "corp".into(),
            issuer: "https://idp.example".into(),
            keys: KeySource::Discovery,
            audiences: vec!["api://orders".into()],
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

    #[test]
    fn inactive_answer() {
        let (r, ttl) = interpret(&settings(), json!({"active": false}), 1000);
        assert_eq!(r.unwrap_err().reason, DenyReason::IntrospectionInactive);
        assert_eq!(ttl, Some(INACTIVE_CACHE));
        let (r, _) = interpret(&settings(), json!({"foo": 1}), 1000);
        assert_eq!(r.unwrap_err().reason, DenyReason::IntrospectionInactive);
    }

    #[test]
    fn active_answer_builds_identity_and_caps_ttl() {
        let body = json!({"active": true, "sub": "svc", "client_id": "svc", "scope": "a b",
                          "exp": 1000 + 3600});
        let (r, ttl) = interpret(&settings(), body, 1000);
        let id = r.unwrap();
        assert_eq!(id.iss, "https://idp.example");
        assert_eq!(id.issuer, "corp");
        assert!(id.is_client);
        assert_eq!(id.scopes, ["a", "b"]);
        assert_eq!(ttl, Some(MAX_CACHE));
        let (_, ttl) = interpret(&settings(), json!({"active": true, "exp": 1010}), 1000);
        assert_eq!(ttl, Some(Duration::from_secs(10)));
    }

    #[test]
    fn foreign_issuer_audience_or_expired() {
        let s = settings();
        let r = |b| interpret(&s, b, 1000).0.unwrap_err().reason;
        assert_eq!(
            r(json!({"active": true, "iss": "https://evil"})),
            DenyReason::WrongIssuer
        );
        assert_eq!(
            r(json!({"active": true, "aud": "other"})),
            DenyReason::WrongAudience
        );
        assert_eq!(r(json!({"active": true, "exp": 10})), DenyReason::Expired);
        assert!(interpret(
            &s,
            json!({"active": true, "aud": ["x", "api://orders"]}),
            1000
        )
        .0
        .is_ok());
    }

    #[test]
    fn cache_key_is_a_hash_not_the_token() {
        let k = cache_key("corp", "secret-token");
        assert_ne!(&k[..], b"secret-token");
        assert_ne!(k, cache_key("other", "secret-token"));
    }
}
