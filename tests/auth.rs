//! Authentication end to end through the gateway over real sockets (SPEC section 3 step 4,
//! the status table and the deny reasons of section 4): valid tokens, every way a token is
//! refused (the issuer keys themselves: `jwks.rs`), client-credentials tokens
//! from the token endpoint and opaque tokens through introspection.
//!
//! Metrics are process-wide and tests run in parallel, so tests that count
//! `gatehouse_auth_decisions_total` use route names no other test uses.

mod common;

use common::*;
use gatehouse::devkit::{forge_token, KeyAlg, SigningKey};
use jsonwebtoken::{Algorithm, Header};
use serde_json::{json, Value};

#[test]
fn valid_rs256_and_es256_tokens_pass_with_identity_headers() {
    let env = Env::start();
    let rs = env.token(json!({}));
    let mut es_claims = alice_claims(&env);
    es_claims.as_object_mut().unwrap().remove("iss");
    let es = env.issuer().mint(KeyAlg::ES256, es_claims);
    let header_alg = |t: &str| jsonwebtoken::decode_header(t).unwrap().alg;
    assert_eq!(header_alg(&rs), Algorithm::RS256);
    assert_eq!(header_alg(&es), Algorithm::ES256);
    for (token, h2) in [(&rs, false), (&es, false), (&rs, true), (&es, true)] {
        let r = env.get("/orders/42", Some(token), h2);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.echoed("x-auth-subject"), vec!["alice"]);
        assert_eq!(r.echoed("x-auth-roles"), vec!["data-steward"]);
        assert_eq!(r.echoed("x-row-filter"), vec!["region=eu-west"]);
        assert!(
            r.echoed("x-auth-client-id").is_empty(),
            "alice is no client"
        );
        let iss = r.echoed("x-auth-issuer");
        assert_eq!(iss.len(), 1);
        let decoded = percent_decode(&iss[0]);
        assert_eq!(decoded, env.issuer().issuer_url());
        assert!(r.echoed("authorization").is_empty());
    }
    assert_eq!(env.echo().requests(), 4);
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

#[test]
fn every_denial_has_status_challenge_problem_body_and_metric() {
    let env = Env::with(EnvOptions {
        routes: routes_prefixed("deny"),
        ..EnvOptions::default()
    });
    let route = "deny-orders-read";
    let claims = alice_claims(&env);
    let rsa = env.issuer().key(KeyAlg::RS256);
    let known_kid = rsa.kid.clone();
    let n = now();

    // Header variants signed by the issuer's real key.
    let signed_with = |h: Header| rsa.sign_with_header(h, &claims);
    let mut jku = Header::new(Algorithm::RS256);
    jku.kid = Some(known_kid.clone());
    jku.jku = Some(format!("{}/jwks", env.issuer().issuer_url()));
    let mut crit = Header::new(Algorithm::RS256);
    crit.kid = Some(known_kid.clone());
    crit.crit = Some(vec!["exp".into()]);
    let mut x5u = Header::new(Algorithm::RS256);
    x5u.kid = Some(known_kid.clone());
    x5u.x5u = Some("https://evil.example/cert.pem".into());

    // A key the issuer never published, presenting the issuer's kid.
    let impostor = SigningKey::generate(KeyAlg::RS256)
        .unwrap()
        .with_kid(known_kid.clone());
    let stranger = SigningKey::generate(KeyAlg::ES256)
        .unwrap()
        .with_kid("no-such-kid-0001");
    let hs256 = forge_token(
        &json!({"alg": "HS256", "typ": "JWT", "kid": known_kid}),
        &claims,
        Some(rsa.public_key_pem().as_bytes()),
    );
    let oversize = env.token(json!({"padding": "p".repeat(17 * 1024)}));
    assert!(oversize.len() > 16 * 1024);

    struct Case {
        what: &'static str,
        authorization: Option<String>,
        reason: &'static str,
        status: u16,
    }
    let case = |what, token: String, reason| Case {
        what,
        authorization: Some(bearer(&token)),
        reason,
        status: 401,
    };
    let cases = vec![
        Case {
            what: "missing token",
            authorization: None,
            reason: "missing_token",
            status: 401,
        },
        Case {
            what: "garbage",
            authorization: Some("Bearer abc".into()),
            reason: "malformed_token",
            status: 401,
        },
        Case {
            what: "wrong scheme",
            authorization: Some("Basic YWxpY2U6cGFzc3dvcmQ=".into()),
            reason: "malformed_token",
            status: 401,
        },
        case(
            "alg none",
            forge_token(&json!({"alg": "none", "typ": "JWT"}), &claims, None),
            "disallowed_algorithm",
        ),
        case(
            "alg None with a kid",
            forge_token(
                &json!({"alg": "None", "kid": known_kid}),
                &claims,
                Some(b"x"),
            ),
            "disallowed_algorithm",
        ),
        case(
            "HS256 keyed with the RSA public key",
            hs256,
            "disallowed_algorithm",
        ),
        case(
            "valid signature by an unpublished key under a known kid",
            impostor.sign(&claims),
            "bad_signature",
        ),
        case(
            "tampered payload",
            {
                let t = rsa.sign(&claims);
                let mut parts: Vec<&str> = t.split('.').collect();
                let mut evil = claims.clone();
                evil["groups"] = json!(["sg-mdm-admins"]);
                let p = base64_url(&evil.to_string());
                parts[1] = &p;
                parts.join(".")
            },
            "bad_signature",
        ),
        case(
            "ES256 signature under the RSA key's kid",
            SigningKey::generate(KeyAlg::ES256)
                .unwrap()
                .with_kid(known_kid.clone())
                .sign(&claims),
            "disallowed_algorithm",
        ),
        case(
            "PS256 header on a key published for RS256",
            {
                let mut h = Header::new(Algorithm::PS256);
                h.kid = Some(known_kid.clone());
                rsa.sign_with_header(h, &claims)
            },
            "disallowed_algorithm",
        ),
        case("unknown kid", stranger.sign(&claims), "unknown_key"),
        case("jku header", signed_with(jku), "malformed_token"),
        case("x5u header", signed_with(x5u), "malformed_token"),
        case("crit header", signed_with(crit), "malformed_token"),
        case(
            "expired",
            env.token(json!({"iat": n - 7200, "exp": n - 3600})),
            "expired",
        ),
        case("no exp", env.token(json!({"exp": null})), "malformed_token"),
        case(
            "nbf beyond leeway",
            env.token(json!({"nbf": n + 3600})),
            "not_yet_valid",
        ),
        case(
            "wrong iss",
            env.token(json!({"iss": "https://evil.example"})),
            "wrong_issuer",
        ),
        case(
            "iss with a trailing slash",
            env.token(json!({"iss": format!("{}/", env.issuer().issuer_url())})),
            "wrong_issuer",
        ),
        case(
            "wrong aud",
            env.token(json!({"aud": "api://somebody-else"})),
            "wrong_audience",
        ),
        case("oversize token", oversize, "malformed_token"),
    ];

    for c in cases {
        let before = deny_count(&env, route, c.reason);
        let r = get_with_authorization(&env, "/orders/1", c.authorization.as_deref(), false);
        let p = assert_problem(c.what, &r, c.status);
        assert!(
            p["detail"].is_string(),
            "{}: problem has a detail: {p}",
            c.what
        );
        if c.reason == "missing_token" {
            assert_eq!(
                r.header("www-authenticate").as_deref(),
                Some(r#"Bearer realm="gatehouse""#),
                "{}",
                c.what
            );
        } else {
            assert_invalid_token_challenge(c.what, &r);
        }
        if let Some(a) = &c.authorization {
            let token = a.split_once(' ').map_or(a.as_str(), |(_, t)| t);
            assert_no_leak(c.what, &r, token);
        }
        let after = deny_count(&env, route, c.reason);
        assert_eq!(
            after - before,
            1.0,
            "{}: gatehouse_auth_decisions_total{{route={route},reason={}}}",
            c.what,
            c.reason
        );
    }
    assert_eq!(
        env.echo().requests(),
        0,
        "no denied request reached the backend"
    );
    // The same denials over HTTP/2 keep their answers.
    let r = get_with_authorization(&env, "/orders/1", Some("Bearer abc"), true);
    assert_eq!(r.version, reqwest::Version::HTTP_2);
    assert_problem("garbage over h2", &r, 401);
    assert_invalid_token_challenge("garbage over h2", &r);
}

fn base64_url(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

#[test]
fn route_issuers_restrict_which_issuer_config_is_accepted() {
    // `other`: another iss at the same IdP; `partner`: the same iss with another audience.
    let routes = format!(
        r#"
[issuers.other]
issuer = "{{issuer}}/other"
jwks_uri = "{{issuer}}/jwks"
ca = "certs/ca.crt"
audiences = ["{AUDIENCE}"]

[issuers.partner]
issuer = "{{issuer}}"
discovery = true
ca = "certs/ca.crt"
audiences = ["api://partner"]

{default}

[[routes]]
name = "iss-only-other"
path_prefix = "/only-other"
upstream = "echo"
issuers = ["other"]
allow_roles = []

[[routes]]
name = "iss-only-partner"
path_prefix = "/only-partner"
upstream = "echo"
issuers = ["partner"]
allow_roles = []

[[routes]]
name = "iss-only-corp"
path_prefix = "/only-corp"
upstream = "echo"
issuers = ["corp"]
allow_roles = []
"#,
        default = routes_prefixed("iss"),
    );
    let env = Env::with(EnvOptions {
        routes,
        ..EnvOptions::default()
    });
    let url = env.issuer().issuer_url();
    let corp = env.token(json!({}));
    let other = env.token(json!({"iss": format!("{url}/other")}));
    let partner = env.token(json!({"aud": "api://partner"}));

    // A corp token on a route that accepts only `other`: wrong issuer.
    let before = deny_count(&env, "iss-only-other", "wrong_issuer");
    let r = env.get("/only-other", Some(&corp), false);
    assert_problem("corp token on other-only route", &r, 401);
    assert_invalid_token_challenge("corp token on other-only route", &r);
    assert_no_leak("corp token on other-only route", &r, &corp);
    assert_eq!(
        deny_count(&env, "iss-only-other", "wrong_issuer") - before,
        1.0
    );

    // The other issuer's token passes there, and only there.
    let r = env.get("/only-other", Some(&other), false);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        percent_decode(&r.echoed("x-auth-issuer")[0]),
        format!("{url}/other")
    );
    let before = deny_count(&env, "iss-only-corp", "wrong_issuer");
    let r = env.get("/only-corp", Some(&other), false);
    assert_problem("other token on corp-only route", &r, 401);
    assert_eq!(
        deny_count(&env, "iss-only-corp", "wrong_issuer") - before,
        1.0
    );

    // Same iss, other audience: a corp token is not meant for the partner route.
    let before = deny_count(&env, "iss-only-partner", "wrong_audience");
    let r = env.get("/only-partner", Some(&corp), false);
    assert_problem("corp token on partner-only route", &r, 401);
    assert_invalid_token_challenge("corp token on partner-only route", &r);
    assert_eq!(
        deny_count(&env, "iss-only-partner", "wrong_audience") - before,
        1.0
    );
    let r = env.get("/only-partner", Some(&partner), false);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // ...and a partner-audience token is no corp token.
    let r = env.get("/only-corp", Some(&partner), false);
    assert_problem("partner token on corp-only route", &r, 401);
    let r = env.get("/only-corp", Some(&corp), false);
    assert_eq!(r.status, 200);

    // A route without `issuers` accepts every configured issuer, whichever config of a
    // shared `iss` the token fits.
    for (what, t) in [("corp", &corp), ("other", &other), ("partner", &partner)] {
        let r = env.get("/profile", Some(t), false);
        assert_eq!(
            r.status,
            200,
            "{what} token on a route open to all issuers: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
}

#[test]
fn client_credentials_token_from_the_token_endpoint() {
    let env = Env::start();
    let client = env.client(false);
    let (status, body) = env.block_on(async {
        let r = client
            .post(env.issuer().token_endpoint())
            .basic_auth("billing-sync", Some("s3cret"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("scope", "orders.read"),
            ])
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    });
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    let token = body["access_token"].as_str().unwrap().to_string();

    let r = env.get("/orders", Some(&token), false);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.echoed("x-auth-client-id"), vec!["billing-sync"]);
    assert_eq!(r.echoed("x-auth-roles"), vec!["integration"]);
    assert_eq!(r.echoed("x-auth-subject"), vec!["billing-sync"]);
    assert_eq!(r.echoed("x-row-filter"), vec!["region=eu-west"]);

    // The integration role does not grant updates, and the token lacks orders.write.
    let r = env.send(
        reqwest::Method::POST,
        "/orders",
        Some(&token),
        &[],
        Some(b"{}".to_vec()),
        false,
    );
    assert_problem("client on the update route", &r, 403);

    // Wrong client secret: no token at all.
    let status = env.block_on(async {
        client
            .post(env.issuer().token_endpoint())
            .basic_auth("billing-sync", Some("wrong"))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    assert_eq!(status, 401);
}

#[test]
fn opaque_tokens_are_introspected() {
    let (env, opaque) = introspection_env(routes_prefixed("opaque"));
    let calls = env.issuer().introspect_requests();
    let r = env.get("/orders/3", Some(&opaque), false);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.echoed("x-auth-subject"), vec!["bob"]);
    assert_eq!(r.echoed("x-auth-roles"), vec!["data-steward"]);
    assert_eq!(r.echoed("x-row-filter"), vec!["region=us-east"]);
    assert!(
        env.issuer().introspect_requests() > calls,
        "the IdP was asked"
    );

    // An opaque token the IdP does not know.
    let unknown = format!("opq_{}", "0badc0de".repeat(6));
    let before = deny_count(&env, "opaque-orders-read", "introspection_inactive");
    let r = env.get("/orders/3", Some(&unknown), false);
    assert_problem("unknown opaque token", &r, 401);
    assert_invalid_token_challenge("unknown opaque token", &r);
    assert_no_leak("unknown opaque token", &r, &unknown);
    assert_eq!(
        deny_count(&env, "opaque-orders-read", "introspection_inactive") - before,
        1.0
    );
    // JWTs still go through the JWKS path on the same gateway.
    let r = env.get("/orders/3", Some(&env.token(json!({}))), false);
    assert_eq!(r.status, 200);
}

/// A reload discards cached introspection answers: an opaque token is checked again under
/// the new issuer settings (audiences, iss, claim mapping).
#[test]
fn reload_discards_cached_introspection_answers() {
    let (env, opaque) = introspection_env(DEFAULT_ROUTES.to_string());
    let r = env.get("/orders/3", Some(&opaque), false);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // The operator stops accepting tokens for api://orders at this issuer.
    let text = std::fs::read_to_string(&env.config).unwrap();
    let old = format!("audiences = [\"{AUDIENCE}\"]");
    assert!(text.contains(&old));
    std::fs::write(
        &env.config,
        text.replace(&old, "audiences = [\"api://other\"]"),
    )
    .unwrap();
    env.gw().reload().expect("reload accepted");
    // A token with the same answer that was never cached is refused...
    let fresh = format!("opq_{}", "aa11bb22cc33dd44".repeat(3));
    env.issuer().register_opaque(
        &fresh,
        json!({"iss": env.issuer().issuer_url(), "aud": AUDIENCE, "sub": "carol",
               "groups": ["sg-data-stewards"], "scope": "orders.read", "region": "us-east",
               "exp": now() + 600}),
    );
    let r = env.get("/orders/3", Some(&fresh), false);
    assert_eq!(r.status, 401, "sanity: new config refuses aud api://orders");
    // ...and so must the one introspected under the old config.
    let r = env.get("/orders/3", Some(&opaque), false);
    assert_eq!(
        r.status,
        401,
        "introspection answer from the old config still admits the token: {}",
        String::from_utf8_lossy(&r.body)
    );
}

/// A route that can reach more than one issuer with introspection is a config error, so an
/// opaque token is never sent to every introspection endpoint (IdP B's token to IdP A).
#[test]
fn opaque_token_is_not_sprayed_over_every_introspection_endpoint() {
    let partner = r#"
[issuers.partner]
issuer = "https://partner.example/tenant"
jwks_uri = "{issuer}/jwks"
ca = "certs/ca.crt"
audiences = ["api://orders"]
introspection = { url = "{issuer}/introspect", client_id = "gatehouse", client_secret = { env = "GH_REVIEW_PARTNER_SECRET" } }
"#;
    std::env::set_var("GH_REVIEW_PARTNER_SECRET", "intro-s3cret");
    std::env::set_var("GH_REVIEW_CORP_SECRET", "intro-s3cret");
    let env = Env::with(EnvOptions {
        start_gateway: false,
        issuer_extra: "introspection = { url = \"https://127.0.0.1:1/introspect\", client_id = \"gatehouse\", client_secret = { env = \"GH_REVIEW_CORP_SECRET\" } }".into(),
        routes: format!("{}\n{}", partner.replace("{issuer}", "https://127.0.0.1:1"), DEFAULT_ROUTES),
        ..EnvOptions::default()
    });
    let err = gatehouse::config::load(&env.config).err().expect("refused");
    let text = err.to_string();
    assert!(
        text.contains("introspection endpoints (corp, partner)"),
        "{text}"
    );
}

/// Signature-level attacks: embedded `jwk`, attacker key with no kid, RS/ES kid
/// confusion, `alg` case games, unsigned token with trusted `iss`.
#[test]
fn jwt_key_and_algorithm_confusion_is_refused() {
    let env = Env::start();
    let iss = env.issuer().issuer_url();
    let claims = json!({
        "iss": iss, "aud": AUDIENCE, "sub": "mallory", "exp": now() + 600, "iat": now(),
        "groups": ["sg-mdm-admins"], "scope": "orders.read orders.write", "amr": ["mfa"],
        "region": "x",
    });
    let attacker = SigningKey::generate(KeyAlg::RS256).unwrap();
    // 1. Embedded jwk (CVE-2018-0114 style).
    let mut h = Header::new(Algorithm::RS256);
    h.jwk = Some(serde_json::from_value(attacker.jwk()).unwrap());
    let embedded = attacker.sign_with_header(h, &claims);
    // 2. No kid at all: every fitting key is tried; none is the attacker's.
    let no_kid = attacker.sign_with_header(Header::new(Algorithm::RS256), &claims);
    // 3. The ES256 kid with an RS256 signature.
    let es_kid = env.issuer().key(KeyAlg::ES256).kid.clone();
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some(es_kid);
    let kid_confusion = attacker.sign_with_header(h, &claims);
    // 4. alg "None"/"nOnE", HS256 keyed with the JWK's modulus, alg missing.
    let rsa = env.issuer().key(KeyAlg::RS256);
    let mut forged = Vec::new();
    for alg in ["none", "None", "nOnE", "HS256", "HS512", "rs256", ""] {
        forged.push(forge_token(
            &json!({"alg": alg, "kid": rsa.kid}),
            &claims,
            Some(rsa.jwk()["n"].as_str().unwrap().as_bytes()),
        ));
        forged.push(forge_token(
            &json!({"alg": alg, "kid": rsa.kid}),
            &claims,
            None,
        ));
    }
    // 5. A real token with its signature stripped / swapped for another real token's.
    let real = env.token(json!({}));
    let stripped = format!("{}.", real.rsplit_once('.').unwrap().0);
    let admin_payload = forge_token(&json!({"alg": "RS256", "kid": rsa.kid}), &claims, None);
    let spliced = format!(
        "{}.{}",
        admin_payload.rsplit_once('.').unwrap().0,
        real.rsplit_once('.').unwrap().1
    );
    let mut tokens = vec![embedded, no_kid, kid_confusion, stripped, spliced];
    tokens.extend(forged);
    for (i, t) in tokens.iter().enumerate() {
        let r = env.get("/orders/1", Some(t), false);
        assert_eq!(
            r.status,
            401,
            "token #{i} was accepted: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(!String::from_utf8_lossy(&r.body).contains(t.as_str()));
    }
    assert_eq!(env.echo().requests(), 0);
}

/// A token trusted by issuer config A is not verified with keys of config B, and a route
/// limited to B refuses it (no key confusion between issuers).
#[test]
fn token_with_other_issuers_iss_is_refused() {
    let env = Env::start();
    // Validly signed by the one issuer's key, but claiming an iss nobody trusts.
    let t = env.token(json!({"iss": "https://evil.example"}));
    let r = env.get("/orders/1", Some(&t), false);
    assert_eq!(r.status, 401);
    // Trailing slash / case variants of the trusted iss are different issuers.
    let iss = env.issuer().issuer_url();
    for v in [format!("{iss}/"), iss.to_uppercase(), format!(" {iss}")] {
        let r = env.get("/orders/1", Some(&env.token(json!({"iss": v}))), false);
        assert_eq!(r.status, 401, "{v}");
    }
    // Audience tricks.
    for aud in [
        json!("api://orders/"),
        json!(["api://ORDERS"]),
        json!({"0": AUDIENCE}),
        json!(null),
    ] {
        let r = env.get("/orders/1", Some(&env.token(json!({"aud": aud}))), false);
        assert_eq!(r.status, 401, "aud {aud}");
    }
    // exp tricks.
    for exp in [
        json!(null),
        json!("9999999999"),
        json!(-1),
        json!(now() - 3600),
    ] {
        let r = env.get("/orders/1", Some(&env.token(json!({"exp": exp}))), false);
        assert_eq!(r.status, 401, "exp {exp}");
    }
}
