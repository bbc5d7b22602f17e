//! Security review: attacks against the request path.
//!
//! Tests marked `// CONFIRMED:` demonstrate a real weakness and FAIL until it is fixed.
//! Every other test shows an attack that is correctly refused (regression tests).

mod common;

use common::*;
use gatehouse::devkit::{forge_token, KeyAlg, SigningKey};
use jsonwebtoken::{Algorithm, Header};
use serde_json::json;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A specific admin route, a specific orders route with a row filter, and a catch-all
/// for any authenticated caller: a common layout ("everything else: just be logged in").
const LAYERED_ROUTES: &str = r#"
[roles.data-steward]
groups = ["sg-data-stewards"]
[roles.admin]
groups = ["sg-mdm-admins"]

[[routes]]
name = "admin"
path_prefix = "/admin"
upstream = "echo"
allow_roles = ["admin"]

[[routes]]
name = "orders"
path_prefix = "/orders"
upstream = "echo"
allow_roles = ["data-steward", "admin"]
[[routes.row_filters]]
header = "X-Row-Filter"
value = "region={claims.region}"
except_roles = ["admin"]

[[routes]]
name = "rest"
path_prefix = "/"
upstream = "echo"
allow_roles = []
"#;

fn layered_env() -> Env {
    Env::with(EnvOptions {
        routes: LAYERED_ROUTES.to_string(),
        ..EnvOptions::default()
    })
}

fn raw_get(env: &Env, target: &str, token: Option<&str>, extra: &str) -> String {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    raw_request(
        env,
        &format!(
            "GET {target} HTTP/1.1\r\nHost: localhost\r\n{auth}{extra}Connection: close\r\n\r\n"
        ),
    )
}

fn status_of(raw: &str) -> u16 {
    raw.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// Confirmed issues (these fail until fixed)
// ---------------------------------------------------------------------------------------

// FIXED (regression test): percent-encoded unreserved characters (`/%61dmin`, `/%6Frders`) are routed un-normalised, so they skip the specific route (and its row filter) and land on a catch-all; backends decode them to /admin, /orders.
#[test]
fn percent_encoded_unreserved_chars_do_not_dodge_a_route() {
    let env = layered_env();
    // alice: data-steward, not admin, region eu-west.
    let t = env.token(json!({}));
    let mut failures = Vec::new();
    for p in ["/%61dmin/users", "/%41dmin", "/%6Frders/7", "/o%72ders"] {
        let r = env.get(p, Some(&t), false);
        let echoed_filter = if r.status == 200 {
            r.echoed("x-row-filter")
        } else {
            vec![]
        };
        // Acceptable: 400 (refused), or 403 on the admin route, or 200 *with* the orders
        // row filter. Not acceptable: 200 from the catch-all without the filter.
        // `/%41dmin` is `/Admin`: another path (paths are case-sensitive), and it is
        // forwarded as exactly that, so routing and backend agree.
        let backend_path = if r.status == 200 {
            r.json()["path"].clone()
        } else {
            json!(null)
        };
        let ok = r.status == 400
            || (p.contains("dmin") && r.status == 403)
            || (p == "/%41dmin" && backend_path == json!("/Admin"))
            || (p.contains("ders") && echoed_filter == vec!["region=eu-west".to_string()]);
        if !ok {
            failures.push(format!(
                "{p}: status {} row filter {:?} (backend path {:?})",
                r.status,
                echoed_filter,
                if r.status == 200 {
                    r.json()["path"].clone()
                } else {
                    json!(null)
                }
            ));
        }
    }
    assert!(failures.is_empty(), "routing bypass: {failures:#?}");
}

// FIXED (regression test): path parameters (`/admin;x`, `/orders;jsessionid=1/7`, `/rest/..;/admin`) miss the segment-aware prefix / dot-segment check and fall to the catch-all; Tomcat/Jetty/Spring strip `;...` (and resolve `..;`) and serve /admin, /orders/7 there.
#[test]
fn matrix_parameters_do_not_dodge_a_route() {
    let env = layered_env();
    let t = env.token(json!({}));
    let mut failures = Vec::new();
    for p in [
        "/admin;x=1",
        "/admin;/users",
        "/orders;jsessionid=1/7",
        "/rest/..;/admin",
        "/rest/.;/orders/7",
    ] {
        let r = env.get(p, Some(&t), false);
        if r.status == 200 && r.echoed("x-row-filter").is_empty() {
            failures.push(format!(
                "{p}: 200 from route catch-all, backend path {}",
                r.json()["path"]
            ));
        }
    }
    assert!(failures.is_empty(), "routing bypass: {failures:#?}");
}

// FIXED (regression test): a request-target that is neither origin- nor absolute-form (`x:/admin`, `admin`) is routed as "/" (pingora leaves uri.path() = "/") but forwarded verbatim; java.net.URI / com.sun.net.httpserver (and Python urlsplit) read the path as /admin.
#[test]
fn non_origin_form_targets_are_refused() {
    let env = layered_env();
    let t = env.token(json!({}));
    let mut failures = Vec::new();
    for target in ["x:/admin/users", "foo:/orders/7", "admin"] {
        let raw = raw_get(&env, target, Some(&t), "");
        // Must be the gateway's own 400 (problem+json), not something the backend said
        // after the request was routed and forwarded.
        let own_400 = status_of(&raw) == 400 && raw.contains("urn:gatehouse:problem:");
        if !own_400 {
            let head = raw.lines().next().unwrap_or_default().to_string();
            failures.push(format!("{target}: forwarded, backend answered {head:?}"));
        }
    }
    let routed: Vec<String> = env
        .audit_lines()
        .iter()
        .map(|l| {
            format!(
                "route={} path={} decision={}",
                l["route"], l["path"], l["decision"]
            )
        })
        .collect();
    assert!(
        failures.is_empty(),
        "odd targets routed as '/': {failures:#?}\naudit: {routed:#?}"
    );
}

// FIXED (regression test): owned headers spelled with underscores (`X_Auth_Roles`, `X_Row_Filter`) are not stripped; CGI/WSGI/PHP/Rack backends map them to the same HTTP_X_AUTH_ROLES variable as the real header (spoofed identity on public routes and for filter-exempt callers).
#[test]
fn underscore_variants_of_owned_headers_are_stripped() {
    let env = Env::start();
    let spoof = [
        ("X_Auth_Subject", "root"),
        ("X_Auth_Roles", "admin"),
        ("X_Auth_Client_Id", "billing-sync"),
        ("X_Row_Filter", "1=1"),
    ];
    // Public route: nothing is injected, so the underscore copy is the only one.
    let r = env.send(reqwest::Method::GET, "/public", None, &spoof, None, false);
    assert_eq!(r.status, 200);
    let leaked: Vec<&str> = [
        "x_auth_subject",
        "x_auth_roles",
        "x_auth_client_id",
        "x_row_filter",
    ]
    .into_iter()
    .filter(|h| !r.echoed(h).is_empty())
    .collect();
    assert!(
        leaked.is_empty(),
        "underscore spellings of owned headers reached the backend: {leaked:?}"
    );
}

// FIXED (regression test): method-override headers pass through, so a caller allowed only GET on /orders (orders-read, no MFA) can have a DELETE executed by backends honouring X-HTTP-Method-Override (Express method-override, ASP.NET, Symfony, Laravel...).
#[test]
fn method_override_headers_are_not_forwarded() {
    let env = Env::start();
    // No MFA: orders-update (POST/PUT/PATCH/DELETE) would refuse this token.
    let t = env.token(json!({"amr": ["pwd"]}));
    let r = env.send(
        reqwest::Method::DELETE,
        "/orders/7",
        Some(&t),
        &[],
        None,
        false,
    );
    assert_eq!(r.status, 403, "sanity: DELETE needs MFA");
    let overrides = [
        ("X-HTTP-Method-Override", "DELETE"),
        ("X-HTTP-Method", "DELETE"),
        ("X-Method-Override", "DELETE"),
    ];
    let r = env.send(
        reqwest::Method::GET,
        "/orders/7",
        Some(&t),
        &overrides,
        None,
        false,
    );
    assert_eq!(r.status, 200);
    let passed: Vec<&str> = [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ]
    .into_iter()
    .filter(|h| !r.echoed(h).is_empty())
    .collect();
    assert!(
        passed.is_empty(),
        "method override headers reach the backend after a GET was authorized: {passed:?}"
    );
}

// FIXED (regression test): client-supplied `Forwarded`, `X-Forwarded-Host`, `X-Real-IP` pass through untouched while gatehouse rewrites X-Forwarded-For; backends reading them get an attacker-chosen client IP/host (IP allowlists, audit, absolute-URL generation).
#[test]
fn forwarding_headers_are_not_client_controlled() {
    let env = Env::start();
    let spoof = [
        ("Forwarded", "for=10.0.0.1;proto=https;host=admin.internal"),
        ("X-Forwarded-Host", "admin.internal"),
        ("X-Real-IP", "10.0.0.1"),
        ("X-Forwarded-Port", "443"),
    ];
    let r = env.send(reqwest::Method::GET, "/public", None, &spoof, None, false);
    assert_eq!(r.status, 200);
    let mut bad = Vec::new();
    for h in [
        "forwarded",
        "x-forwarded-host",
        "x-real-ip",
        "x-forwarded-port",
    ] {
        let v = r.echoed(h);
        if v.iter()
            .any(|v| v.contains("10.0.0.1") || v.contains("admin.internal") || v == "443")
        {
            bad.push(format!("{h}: {v:?}"));
        }
    }
    assert!(
        bad.is_empty(),
        "client-controlled forwarding headers: {bad:?}"
    );
}

// FIXED (regression test): 403 details enumerate policy (required role names, missing scopes, row-filter header and claim path) to any holder of a valid token.
#[test]
fn forbidden_details_do_not_enumerate_policy() {
    let env = Env::start();
    let nobody = env.token(json!({"groups": []}));
    let r = env.get("/orders/1", Some(&nobody), false);
    assert_eq!(r.status, 403);
    let no_region = env.token(json!({"region": null}));
    let r2 = env.get("/orders/1", Some(&no_region), false);
    assert_eq!(r2.status, 403);
    let body = format!(
        "{}\n{}",
        String::from_utf8_lossy(&r.body),
        String::from_utf8_lossy(&r2.body)
    );
    for secret in ["data-steward", "integration", "x-row-filter", "region"] {
        assert!(
            !body.to_ascii_lowercase().contains(secret),
            "403 body names {secret:?}: {body}"
        );
    }
}

// FIXED (regression test): the introspection answer cache survives a config reload (Authenticator::with_fetchers reuses `previous.introspector`, keyed by issuer *name*), so an opaque token keeps passing for up to 5 min under issuer settings (audiences, iss, claim mapping) that now reject it.
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

// FIXED (was: an opaque token was POSTed to the introspection endpoint of every issuer the
// route accepts, disclosing a token from IdP B to IdP A): a route that can reach more than
// one issuer with introspection is now a config error.
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

// ---------------------------------------------------------------------------------------
// Attacks that are correctly refused (regression tests; these pass)
// ---------------------------------------------------------------------------------------

/// `Connection: X-Row-Filter, X-Auth-Roles` must not make the proxy drop the headers it
/// injects, nor reach the backend (where a proxy in front of the app would drop them).
#[test]
fn connection_nominated_owned_headers_are_still_injected() {
    let env = Env::start();
    let t = env.token(json!({}));
    let raw = raw_request(
        &env,
        &format!(
            "GET /orders/1 HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {t}\r\n\
             Connection: X-Row-Filter, X-Auth-Roles, X-Auth-Subject\r\n\
             Connection: close\r\n\r\n"
        ),
    );
    // Either refused outright or forwarded with the injected headers and no nomination.
    if status_of(&raw) == 200 {
        assert!(
            raw.contains(r#"["x-row-filter","region=eu-west"]"#),
            "{raw}"
        );
        assert!(raw.contains(r#"["x-auth-roles","data-steward"]"#), "{raw}");
        assert!(raw.contains(r#"["x-auth-subject","alice"]"#), "{raw}");
        assert!(
            !raw.to_ascii_lowercase()
                .contains(r#"["connection","x-row-filter"#),
            "{raw}"
        );
    } else {
        assert_eq!(status_of(&raw), 400, "{raw}");
    }
    // `Connection: Host` / `X-Forwarded-For` are refused by pingora.
    let raw = raw_get(&env, "/public", None, "Connection: X-Forwarded-For\r\n");
    assert!(
        !raw.contains(r#""x-forwarded-for""#) || raw.contains("127.0.0.1"),
        "{raw}"
    );
}

/// An upgrade request the backend does not accept must not turn the connection into a
/// tunnel carrying an unauthenticated second request.
#[test]
fn refused_websocket_upgrade_does_not_tunnel_a_second_request() {
    let env = Env::start();
    let raw = raw_request(
        &env,
        "GET /public/ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n\
         GET /orders/1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert!(!raw.contains(r#""path":"/orders/1""#), "tunnelled: {raw}");
    // h2c upgrade is never forwarded.
    let raw = raw_get(
        &env,
        "/public",
        None,
        "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
    );
    assert!(!raw.contains(r#"["upgrade""#), "{raw}");
    assert!(!raw.contains(r#"["http2-settings""#), "{raw}");
}

/// Absolute-form targets whose authority differs from Host, and duplicate Host headers,
/// are refused before routing (pingora's authority checks).
#[test]
fn host_confusion_is_refused() {
    let env = Env::with(EnvOptions {
        routes: r#"
[[routes]]
name = "pub-localhost"
host = "localhost"
path_prefix = "/"
upstream = "echo"
auth = "none"
"#
        .into(),
        ..EnvOptions::default()
    });
    let before = env.echo().requests();
    for req in [
        "GET https://internal-admin.example/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: localhost\r\nHost: internal-admin.example\r\nConnection: close\r\n\r\n",
        "GET http://localhost@internal-admin.example/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        "GET http:/\\internal-admin.example/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    ] {
        let raw = raw_request(&env, req);
        assert_eq!(status_of(&raw), 400, "{req:?}: {raw}");
    }
    assert_eq!(env.echo().requests(), before);
    // A matching absolute-form target is fine and reaches the backend with that Host.
    let raw = raw_request(
        &env,
        "GET https://localhost/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&raw), 200, "{raw}");
    assert!(raw.contains(r#"["host","localhost"]"#), "{raw}");
}

/// CL.TE / TE.CL / obfuscated TE: the smuggled request never reaches the backend
/// unauthenticated.
#[test]
fn request_smuggling_is_refused() {
    let env = Env::start();
    let smuggled = "GET /orders/1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let cases = [
        format!(
            "POST /public HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\
             Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        format!(
            "POST /public HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\
             Content-Length: 4\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
            smuggled.len()
        ),
        format!(
            "POST /public HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\
             Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        format!(
            "POST /public HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\
             Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        format!(
            "POST /public HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\
             Content-Length: 50\r\n\r\n0\r\n\r\n{smuggled}"
        ),
    ];
    for (i, c) in cases.iter().enumerate() {
        let raw = raw_request(&env, c);
        assert!(
            !raw.contains(r#""path":"/orders/1""#),
            "case {i}: smuggled request reached the backend: {raw}"
        );
    }
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

/// The decision cache is keyed by route and token: an allow on one route is never served
/// for another route or another token.
#[test]
fn decision_cache_does_not_cross_routes_or_tokens() {
    let env = Env::start();
    let no_mfa = env.token(json!({"amr": ["pwd"]}));
    for _ in 0..2 {
        assert_eq!(env.get("/orders/1", Some(&no_mfa), false).status, 200);
    }
    // Same token, update route (needs MFA).
    let r = env.send(
        reqwest::Method::POST,
        "/orders/1",
        Some(&no_mfa),
        &[],
        None,
        false,
    );
    assert_eq!(r.status, 403);
    // Another user whose token differs only in the signature bytes is not served alice's
    // cached grant.
    let other = env.token(json!({"groups": [], "sub": "eve"}));
    let r = env.get("/orders/1", Some(&other), false);
    assert_eq!(r.status, 403);
    // Token with trailing "=" padding or case change in the scheme is the same token to the
    // parser, and still gets the right answer.
    let r = env.send(
        reqwest::Method::GET,
        "/orders/1",
        None,
        &[("authorization", &format!("bEaReR {no_mfa}"))],
        None,
        false,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.echoed("x-auth-subject"), vec!["alice"]);
}

/// Claim values cannot drop or widen the row filter.
#[test]
fn row_filter_cannot_be_dropped_by_claim_values() {
    let env = Env::start();
    for region in [
        json!(null),
        json!(""),
        json!([]),
        json!({"$ne": 1}),
        json!([{"a": 1}]),
        json!([null]),
        json!(["eu-west", ""]),
    ] {
        let r = env.get(
            "/orders/1",
            Some(&env.token(json!({"region": region}))),
            false,
        );
        assert_eq!(r.status, 403, "region {region}");
    }
    // Hostile strings arrive encoded, as one header.
    let r = env.get(
        "/orders/1",
        Some(&env.token(json!({"region": "eu\r\nX-Row-Filter: 1=1, *"}))),
        true,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.echoed("x-row-filter").len(), 1);
    assert!(!r.echoed("x-row-filter")[0].contains(' '));
    // A `roles` claim naming a role is a role (SPEC), but a role whose name merely
    // resembles one ("Admin", "admin ") is not.
    for fake in ["Admin", "admin ", "ADMIN"] {
        let r = env.get(
            "/orders/1",
            Some(&env.token(json!({"roles": [fake]}))),
            false,
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.echoed("x-row-filter"), vec!["region=eu-west"], "{fake}");
    }
}

/// Two Authorization headers over h2 as well as h1; lower-case method tricks; and huge
/// headers do not reach the backend unauthenticated.
#[test]
fn authorization_and_method_tricks_are_refused() {
    let env = Env::start();
    let t = env.token(json!({}));
    let bearer = format!("Bearer {t}");
    let r = env.send(
        reqwest::Method::GET,
        "/orders",
        None,
        &[
            ("authorization", bearer.as_str()),
            ("authorization", "Bearer x"),
        ],
        None,
        true,
    );
    assert_eq!(r.status, 401);
    // Lower-case / odd methods are not routed as GET and never reach the backend
    // without a token.
    for m in ["get", "GeT", "PROPFIND"] {
        let raw = raw_request(
            &env,
            &format!("{m} /orders/1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
        );
        assert_ne!(status_of(&raw), 200, "{m}: {raw}");
    }
    // A 20 KiB token is refused, not parsed.
    let big = format!(
        "{}.{}.{}",
        "a".repeat(7000),
        "b".repeat(7000),
        "c".repeat(7000)
    );
    let r = env.get("/orders", Some(&big), false);
    assert!(
        r.status == 401 || r.status == 431 || r.status == 400,
        "{}",
        r.status
    );
    assert_eq!(env.echo().requests(), 0);
}

/// Encoded separators, NUL, backslash, dot segments in every spelling: refused.
#[test]
fn encoded_path_tricks_are_refused() {
    let env = layered_env();
    let t = env.token(json!({}));
    for p in [
        "/rest/..%2fadmin",
        "/rest/%2e%2e/admin",
        "/rest/%2E./admin",
        "/rest/.%2e/admin",
        "/rest%5c..%5cadmin",
        "/admin%00",
        "/rest/../admin",
        "/rest//admin",
    ] {
        let raw = raw_get(&env, p, Some(&t), "");
        assert_eq!(status_of(&raw), 400, "{p}: {raw}");
    }
}
