//! End to end through the gateway: HTTPS in (HTTP/1.1 and HTTP/2), mTLS out to the echo
//! backend, header hygiene, problem responses.

mod common;

use common::*;
use serde_json::json;

#[test]
fn allowed_request_reaches_backend_over_mtls_h1_and_h2() {
    let env = Env::start();
    let token = env.token(json!({}));
    for h2 in [false, true] {
        let r = env.get("/orders/7?x=1", Some(&token), h2);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(
            r.version,
            if h2 {
                reqwest::Version::HTTP_2
            } else {
                reqwest::Version::HTTP_11
            }
        );
        let body = r.json();
        assert_eq!(body["path"], "/orders/7");
        assert_eq!(body["query"], "x=1");
        assert_eq!(
            body["client_cn"], "gatehouse-gateway",
            "backend saw the gateway's client cert"
        );
        assert_eq!(r.echoed("x-auth-subject"), vec!["alice"]);
        assert_eq!(r.echoed("x-auth-roles"), vec!["data-steward"]);
        assert_eq!(r.echoed("x-row-filter"), vec!["region=eu-west"]);
        assert_eq!(
            r.echoed("x-auth-issuer"),
            vec![env.issuer().issuer_url()],
            "iss verbatim"
        );
        assert_eq!(r.echoed("x-forwarded-proto"), vec!["https"]);
        assert_eq!(r.echoed("x-forwarded-for"), vec!["127.0.0.1"]);
        assert!(
            r.echoed("authorization").is_empty(),
            "token is not forwarded by default"
        );
        assert_eq!(r.echoed("x-request-id").len(), 1);
        assert!(r
            .header("strict-transport-security")
            .unwrap()
            .starts_with("max-age="));
    }
}

#[test]
fn protected_route_without_token_is_401_problem() {
    let env = Env::start();
    let r = env.get("/orders/7", None, false);
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/problem+json")
    );
    assert_eq!(
        r.header("www-authenticate").as_deref(),
        Some("Bearer realm=\"gatehouse\"")
    );
    let p = r.json();
    assert_eq!(p["status"], 401);
    assert_eq!(
        p["request_id"].as_str().unwrap(),
        r.header("x-request-id").unwrap()
    );
    assert_eq!(env.echo().requests(), 0, "nothing reached the backend");
}

#[test]
fn no_route_is_404_problem() {
    let env = Env::start();
    for path in ["/nothing", "/ordersX", "/publicfoo"] {
        let r = env.get(path, None, false);
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/problem+json")
        );
        assert_eq!(r.json()["status"], 404);
    }
}

#[test]
fn public_route_forwards_and_strips_spoofed_headers() {
    let env = Env::start();
    let spoof = [
        ("X-Auth-Subject", "root"),
        ("X-Auth-Roles", "admin"),
        ("X-Auth-Client-Id", "evil"),
        ("X-Auth-Issuer", "https://evil"),
        ("X-Row-Filter", "1=1"),
        ("X-Forwarded-For", "10.0.0.1"),
        ("X-Forwarded-Proto", "http"),
    ];
    for h2 in [false, true] {
        let r = env.send(reqwest::Method::GET, "/public", None, &spoof, None, h2);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        for h in [
            "x-auth-subject",
            "x-auth-roles",
            "x-auth-client-id",
            "x-auth-issuer",
            "x-row-filter",
        ] {
            assert!(
                r.echoed(h).is_empty(),
                "{h} must be stripped on a public route"
            );
        }
        assert_eq!(r.echoed("x-forwarded-for"), vec!["127.0.0.1"]);
        assert_eq!(r.echoed("x-forwarded-proto"), vec!["https"]);
    }
}

#[test]
fn protected_route_strips_spoofed_headers_and_sets_real_ones() {
    let env = Env::start();
    let token = env.token(json!({}));
    let spoof = [
        ("X-Auth-Roles", "admin"),
        ("X-Row-Filter", "1=1"),
        ("x-auth-subject", "root"),
    ];
    let r = env.send(
        reqwest::Method::GET,
        "/orders",
        Some(&token),
        &spoof,
        None,
        false,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.echoed("x-auth-roles"), vec!["data-steward"]);
    assert_eq!(r.echoed("x-row-filter"), vec!["region=eu-west"]);
    assert_eq!(r.echoed("x-auth-subject"), vec!["alice"]);
}

#[test]
fn request_id_kept_when_well_formed_else_replaced() {
    let env = Env::start();
    let r = env.send(
        reqwest::Method::GET,
        "/public",
        None,
        &[("X-Request-Id", "abc-123_x.y")],
        None,
        false,
    );
    assert_eq!(r.echoed("x-request-id"), vec!["abc-123_x.y"]);
    assert_eq!(r.header("x-request-id").as_deref(), Some("abc-123_x.y"));
    let r = env.send(
        reqwest::Method::GET,
        "/public",
        None,
        &[("X-Request-Id", "bad id!")],
        None,
        false,
    );
    let id = r.echoed("x-request-id");
    assert_eq!(id.len(), 1);
    assert_ne!(id[0], "bad id!");
    assert_eq!(id[0].len(), 32);
}

#[test]
fn ambiguous_paths_are_refused_before_routing() {
    let env = Env::start();
    for p in [
        "/public/../orders",
        "/public/./x",
        "/public/%2e%2e/orders",
        "//orders",
        "/public/%2F",
    ] {
        let raw = raw_request(
            &env,
            &format!("GET {p} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
        );
        assert!(raw.starts_with("HTTP/1.1 400"), "{p}: {raw}");
        assert!(raw.contains("application/problem+json"), "{p}: {raw}");
    }
    assert_eq!(env.echo().requests(), 0);
}

#[test]
fn two_authorization_headers_are_refused() {
    let env = Env::start();
    let token = env.token(json!({}));
    let bearer = format!("Bearer {token}");
    let r = env.send(
        reqwest::Method::GET,
        "/orders",
        None,
        &[
            ("authorization", bearer.as_str()),
            ("authorization", "Bearer forged"),
        ],
        None,
        false,
    );
    assert_eq!(r.status, 401);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("error=\"invalid_token\""));
    assert_eq!(r.json()["type"], "urn:gatehouse:problem:malformed_token");
    assert_eq!(env.echo().requests(), 0, "nothing reached the backend");
}

#[test]
fn traceparent_passes_through_and_upstream_connections_are_reused() {
    let env = Env::start();
    let tp = "00-4bf92f3577b34da6a3ef4ad9a33ce2ba-00f067aa0ba902b7-01";
    let a = env.send(
        reqwest::Method::GET,
        "/public/a",
        None,
        &[("traceparent", tp)],
        None,
        false,
    );
    assert_eq!(a.echoed("traceparent"), vec![tp]);
    // The echo backend reports the gateway's source address: fewer distinct addresses
    // than requests means requests rode pooled keep-alive connections. (A connection goes
    // back to the pool just after its response, so sequential requests are spaced a
    // little.)
    let mut peers = std::collections::HashSet::new();
    peers.insert(a.json()["peer"].to_string());
    for i in 0..5 {
        std::thread::sleep(std::time::Duration::from_millis(50));
        let b = env.get(&format!("/public/{i}"), None, i % 2 == 0);
        peers.insert(b.json()["peer"].to_string());
    }
    assert!(
        peers.len() < 6,
        "6 requests, {} upstream connections: none reused",
        peers.len()
    );
    assert_eq!(a.json()["version"], "HTTP/1.1", "HTTP/1.1 upstream");
}

#[test]
fn decision_cache_entries_gauge_follows_the_cache() {
    let env = Env::start();
    let token = env.token(serde_json::json!({}));
    assert_eq!(env.get("/orders/1", Some(&token), false).status, 200);
    let v = metric_value(&env.metrics(), "gatehouse_decision_cache_entries", &[]);
    assert!(v >= 1.0, "{v}");
}
