//! Claim sets and assertions for requests the gateway admits or refuses by token, shared
//! by `auth.rs`, `jwks.rs` and `authz.rs`.

use serde_json::{json, Value};

use super::*;

/// A full, valid claim set for alice (what `env.token` would sign).
pub fn alice_claims(env: &Env) -> Value {
    let n = now();
    json!({
        "iss": env.issuer().issuer_url(),
        "aud": AUDIENCE,
        "sub": "alice",
        "email": "alice@example.com",
        "groups": ["sg-data-stewards"],
        "region": "eu-west",
        "scope": "orders.read orders.write",
        "amr": ["pwd", "mfa"],
        "iat": n,
        "exp": n + 600,
    })
}

/// `Authorization` for a token, as a header pair list.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The part of a token that must never come back: the signature, or the whole token when
/// it has none.
pub fn secret_part(token: &str) -> &str {
    match token.rsplit_once('.') {
        Some((_, sig)) if !sig.is_empty() => sig,
        _ => token,
    }
}

/// No 8-character window of the token's secret part appears in the body or any header.
pub fn assert_no_leak(what: &str, r: &Resp, token: &str) {
    let secret = secret_part(token);
    let body = String::from_utf8_lossy(&r.body).into_owned();
    let headers: Vec<String> = r
        .headers
        .iter()
        .map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v.as_bytes())))
        .collect();
    let w = secret.len().min(8);
    if w == 0 {
        return;
    }
    let bytes = secret.as_bytes();
    for i in 0..=bytes.len() - w {
        let piece = &secret[i..i + w];
        assert!(
            !body.contains(piece),
            "{what}: body echoes the token ({piece:?}): {body}"
        );
        for h in &headers {
            assert!(
                !h.contains(piece),
                "{what}: header echoes the token ({piece:?}): {h}"
            );
        }
    }
}

/// A problem+json response with `status`; returns the parsed body.
pub fn assert_problem(what: &str, r: &Resp, status: u16) -> Value {
    assert_eq!(
        r.status,
        status,
        "{what}: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/problem+json"),
        "{what}"
    );
    let p = r.json();
    assert_eq!(p["status"], status, "{what}: {p}");
    assert!(p["title"].is_string(), "{what}: {p}");
    assert!(p["type"].is_string(), "{what}: {p}");
    assert_eq!(
        p["request_id"].as_str(),
        r.header("x-request-id").as_deref(),
        "{what}: {p}"
    );
    p
}

pub fn assert_invalid_token_challenge(what: &str, r: &Resp) {
    let w = r
        .header("www-authenticate")
        .unwrap_or_else(|| panic!("{what}: no WWW-Authenticate"));
    let prefix = r#"Bearer realm="gatehouse", error="invalid_token", error_description=""#;
    assert!(w.starts_with(prefix), "{what}: {w}");
    assert!(w.ends_with('"'), "{what}: {w}");
    let desc = &w[prefix.len()..w.len() - 1];
    assert!(!desc.is_empty(), "{what}: empty error_description");
    assert!(!desc.contains('"'), "{what}: {w}");
}

pub fn deny_count(env: &Env, route: &str, reason: &str) -> f64 {
    metric_value(
        &env.metrics(),
        "gatehouse_auth_decisions_total",
        &[("route", route), ("result", "deny"), ("reason", reason)],
    )
}

/// Sends GET `path` with a raw `Authorization` value (or none) without reqwest's bearer
/// helper, so malformed values go out as written.
pub fn get_with_authorization(
    env: &Env,
    path: &str,
    authorization: Option<&str>,
    h2: bool,
) -> Resp {
    let headers: Vec<(&str, &str)> = authorization
        .map(|a| vec![("authorization", a)])
        .unwrap_or_default();
    env.send(reqwest::Method::GET, path, None, &headers, None, h2)
}
