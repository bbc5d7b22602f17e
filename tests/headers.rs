//! Headers gatehouse owns or rewrites, end to end: identity and row-filter headers cannot be
//! spoofed (also not spelled with underscores or nominated by `Connection`), method-override,
//! URL-override and client-certificate headers are stripped, and the forwarding headers
//! (`X-Forwarded-For`, `Forwarded`, `X-Real-IP`...) are never the client's own words.

mod common;

use common::*;
use serde_json::json;

/// Owned headers spelled with underscores (`X_Auth_Roles`, `X_Row_Filter`) are stripped:
/// CGI, WSGI, PHP and Rack backends map them to the same variable as the real header.
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

/// Method-override headers (`X-HTTP-Method-Override`...) are not forwarded, so a caller
/// allowed only GET cannot have a DELETE executed by a backend that honours them.
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

/// Client-sent `Forwarded`, `X-Forwarded-Host` and `X-Real-IP` never reach the backend as
/// the client wrote them (IP allowlists, audit and absolute URLs read them).
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
    // Nominating `X-Forwarded-For` does not remove the one gatehouse sets.
    let raw = raw_get(&env, "/public", None, "Connection: X-Forwarded-For\r\n");
    assert!(
        !raw.contains(r#""x-forwarded-for""#) || raw.contains("127.0.0.1"),
        "{raw}"
    );
}

#[test]
fn url_and_client_certificate_override_headers_are_stripped() {
    let env = Env::start();
    let spoof = [
        ("X-Original-URL", "/admin"),
        ("X-Rewrite-URL", "/admin"),
        ("X_Original_URL", "/admin"),
        ("X_Rewrite_URL", "/admin"),
        (
            "X-Forwarded-Client-Cert",
            "By=spiffe://admin;Hash=00;Subject=\"CN=admin\"",
        ),
        ("X-Client-Cert", "-----BEGIN CERTIFICATE-----"),
        ("X-SSL-Client-Cert", "-----BEGIN CERTIFICATE-----"),
        ("X-SSL-Client-DN", "CN=admin"),
        ("X-SSL-Client-CN", "admin"),
        ("X_Forwarded_Client_Cert", "Subject=\"CN=admin\""),
        ("X_Client_Cert", "x"),
        ("X_SSL_Client_Cert", "x"),
        ("X_SSL_Client_DN", "CN=admin"),
        ("X_SSL_Client_CN", "admin"),
    ];
    let t = env.token(json!({}));
    for (path, token) in [("/public", None), ("/orders/1", Some(t.as_str()))] {
        let r = env.send(reqwest::Method::GET, path, token, &spoof, None, false);
        assert_eq!(r.status, 200, "{path}");
        let leaked: Vec<String> = spoof
            .iter()
            .map(|(k, _)| k.to_ascii_lowercase())
            .filter(|k| !r.echoed(k).is_empty())
            .collect();
        assert!(
            leaked.is_empty(),
            "{path}: override headers reached the backend: {leaked:?}"
        );
    }
}

/// `X-Forwarded-For` from a trusted proxy (here the test client's own address) is kept and
/// extended; from anyone else it is replaced (SPEC section 3 step 7).
#[test]
fn forwarded_for_is_extended_only_from_trusted_proxies() {
    let trusting = Env::with(EnvOptions {
        server_extra: "trusted_proxies = [\"127.0.0.0/8\"]\n".into(),
        ..EnvOptions::default()
    });
    let r = trusting.send(
        reqwest::Method::GET,
        "/public/x",
        None,
        &[("x-forwarded-for", "198.51.100.7, 10.1.1.1")],
        None,
        false,
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.echoed("x-forwarded-for"),
        ["198.51.100.7, 10.1.1.1, 127.0.0.1"]
    );
    let plain = Env::start();
    let r = plain.send(
        reqwest::Method::GET,
        "/public/x",
        None,
        &[("x-forwarded-for", "198.51.100.7")],
        None,
        false,
    );
    assert_eq!(
        r.echoed("x-forwarded-for"),
        ["127.0.0.1"],
        "a spoofed chain is replaced"
    );
}
