//! The token path before any signature check: `Authorization` header parsing (RFC 6750),
//! JWT shape, header vetting (`alg`, `kid`, `jku`/`x5u`/`crit`), payload decoding, the
//! registered-claim checks and the claim mapping into an identity.
#![no_main]

use gatehouse::auth::{bearer_token, jwt, Identity, IssuerSettings, KeySource, MAX_TOKEN_BYTES};
use libfuzzer_sys::fuzz_target;

fn settings() -> IssuerSettings {
    IssuerSettings {
        name: "corp".into(),
        issuer: "https://login.example.com/tenant".into(),
        keys: KeySource::Discovery,
        audiences: vec!["api://orders".into()],
        algorithms: vec![],
        leeway_s: 30,
        ca_pem: None,
        jwks_refresh_s: 600,
        roles_claim: "realm_access.roles".into(),
        groups_claim: "groups".into(),
        scopes_claim: "scope".into(),
        client_id_claim: "client_id".into(),
        introspection: None,
    }
}

fuzz_target!(|data: &[u8]| {
    // The header value as a client sends it; failing that, the bytes as the token itself
    // (so the fuzzer need not rediscover "Bearer ").
    let token = match bearer_token(Some(data)) {
        Ok(t) => {
            assert!(t.len() <= MAX_TOKEN_BYTES);
            t
        }
        Err(_) => match std::str::from_utf8(data) {
            Ok(t) if t.len() <= MAX_TOKEN_BYTES => t,
            _ => return,
        },
    };
    let Ok(u) = jwt::decode_unverified(token) else {
        return;
    };
    assert!(jwt::looks_like_jwt(token));
    // Symmetric algorithms never get past the header check.
    assert!(!format!("{:?}", u.alg).starts_with("HS"));
    assert_eq!(format!("{}.{}", u.signing_input, u.signature), token);
    assert!(!u.signature.is_empty());
    let iss = u.iss().map(str::to_string);
    let s = settings();
    let exp = jwt::check_claims(&u.payload, &s, 1_700_000_000);
    let id = Identity::from_claims(
        &s,
        iss.unwrap_or_default(),
        exp.unwrap_or(0),
        serde_json::Value::Object(u.payload),
    );
    let _ = id.has_mfa();
    let _ = id.claim("org.region");
    if id.is_client {
        assert!(id.client_id.is_some());
    }
});
