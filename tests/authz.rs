//! Authorization end to end through the gateway (SPEC sections 2, 3 steps 2 and 5-7): how
//! a caller gets roles, what a route demands, first-match routing, row-filter headers and
//! their encoding, token forwarding, and the decision cache across expiry and reloads.
//!
//! Metrics are process-wide and tests run in parallel, so tests that count
//! `gatehouse_auth_decisions_total` use route names no other test uses.

mod common;

use std::time::Duration;

use common::*;
use gatehouse::devkit::KeyAlg;
use reqwest::Method;
use serde_json::json;

fn env_prefixed(prefix: &str) -> Env {
    Env::with(EnvOptions {
        routes: routes_prefixed(prefix),
        ..EnvOptions::default()
    })
}

fn body(r: &Resp) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

fn post(env: &Env, path: &str, token: &str, h2: bool) -> Resp {
    env.send(
        Method::POST,
        path,
        Some(token),
        &[],
        Some(br#"{"item":1}"#.to_vec()),
        h2,
    )
}

/// A 403 from the gateway: problem+json and the `insufficient_scope` challenge.
fn assert_forbidden(what: &str, r: &Resp) {
    assert_eq!(r.status, 403, "{what}: {}", body(r));
    assert_eq!(
        r.header("www-authenticate").as_deref(),
        Some(r#"Bearer realm="gatehouse", error="insufficient_scope""#),
        "{what}"
    );
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/problem+json"),
        "{what}"
    );
    let p = r.json();
    assert_eq!(p["status"], 403, "{what}: {p}");
    assert!(p["detail"].is_string(), "{what}: {p}");
}

#[test]
fn every_way_of_getting_a_role_reaches_the_backend_sorted() {
    let env = Env::start();
    // Group membership.
    let r = env.get("/orders", Some(&env.token(json!({}))), false);
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(r.echoed("x-auth-roles"), vec!["data-steward"]);

    // The roles claim alone (no groups).
    let t = env.token(json!({"roles": ["admin"], "groups": null}));
    let r = env.get("/orders", Some(&t), false);
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(r.echoed("x-auth-roles"), vec!["admin"]);

    // Claim, two groups and an unknown claimed role together: one sorted list, no dups.
    let t = env.token(json!({
        "roles": ["zeta-team", "data-steward"],
        "groups": ["sg-mdm-admins", "sg-data-stewards", "sg-unrelated"],
    }));
    let r = env.get("/orders", Some(&t), true);
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(
        r.echoed("x-auth-roles"),
        vec!["admin,data-steward,zeta-team"]
    );

    // Client ID: a client-credentials token (sub = client_id, no user claims).
    let t = env.issuer().mint(
        KeyAlg::ES256,
        json!({"sub": "billing-sync", "client_id": "billing-sync", "scope": "orders.read",
               "region": "eu-west"}),
    );
    let r = env.get("/orders", Some(&t), false);
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(r.echoed("x-auth-roles"), vec!["integration"]);
    assert_eq!(r.echoed("x-auth-client-id"), vec!["billing-sync"]);
    assert_eq!(r.echoed("x-auth-subject"), vec!["billing-sync"]);

    // A person signed in through that client app is not the client: no client role.
    let t = env.token(json!({"client_id": "billing-sync", "groups": null}));
    let r = env.get("/orders", Some(&t), false);
    assert_forbidden("user token carrying a client_id", &r);
    let r = env.get("/profile", Some(&t), false);
    assert_eq!(r.status, 200);
    assert!(r.echoed("x-auth-client-id").is_empty(), "alice is a user");
}

#[test]
fn insufficient_role_scope_and_mfa_are_403() {
    let env = env_prefixed("deny403");
    let cases: Vec<(&str, Method, String, &str, &str)> = vec![
        (
            "no matching role",
            Method::GET,
            env.token(json!({"groups": ["sg-somebody-else"]})),
            "deny403-orders-read",
            "insufficient_role",
        ),
        (
            "integration may not update",
            Method::POST,
            env.issuer().mint(
                KeyAlg::ES256,
                json!({"sub": "billing-sync", "client_id": "billing-sync",
                       "scope": "orders.read orders.write", "amr": ["mfa"], "region": "x"}),
            ),
            "deny403-orders-update",
            "insufficient_role",
        ),
        (
            "missing read scope",
            Method::GET,
            env.token(json!({"scope": "orders.write profile"})),
            "deny403-orders-read",
            "insufficient_scope",
        ),
        (
            "scope as a prefix is not the scope",
            Method::GET,
            env.token(json!({"scope": "orders.reader"})),
            "deny403-orders-read",
            "insufficient_scope",
        ),
        (
            "missing write scope",
            Method::POST,
            env.token(json!({"scope": "orders.read"})),
            "deny403-orders-update",
            "insufficient_scope",
        ),
        (
            "no mfa",
            Method::POST,
            env.token(json!({"amr": ["pwd"]})),
            "deny403-orders-update",
            "mfa_required",
        ),
        (
            "no amr at all",
            Method::DELETE,
            env.token(json!({"amr": null})),
            "deny403-orders-update",
            "mfa_required",
        ),
    ];
    for (what, method, token, route, reason) in cases {
        let before = deny_count(&env, route, reason);
        let r = env.send(method, "/orders/5", Some(&token), &[], None, false);
        assert_forbidden(what, &r);
        assert_eq!(
            deny_count(&env, route, reason) - before,
            1.0,
            "{what}: {route} {reason}"
        );
    }
    assert_eq!(
        env.echo().requests(),
        0,
        "nothing denied reached the backend"
    );
    // otp and hwk count as multi-factor too.
    for amr in ["otp", "hwk"] {
        let r = post(&env, "/orders", &env.token(json!({"amr": [amr]})), false);
        assert_eq!(r.status, 200, "{amr}: {}", body(&r));
    }
}

#[test]
fn empty_allow_roles_admits_any_authenticated_caller() {
    let env = Env::start();
    let t = env.token(json!({"groups": null, "scope": null, "roles": null, "amr": null}));
    for h2 in [false, true] {
        let r = env.get("/profile/me", Some(&t), h2);
        assert_eq!(r.status, 200, "{}", body(&r));
        assert_eq!(r.echoed("x-auth-subject"), vec!["alice"]);
        let roles = r.echoed("x-auth-roles");
        assert!(
            roles.iter().all(|v| v.is_empty()),
            "no roles to report: {roles:?}"
        );
    }
    // ...but it is not a public route.
    let r = env.get("/profile/me", None, false);
    assert_eq!(r.status, 401);
    let r = env.get("/profile/me", Some("abc"), false);
    assert_eq!(r.status, 401);
}

#[test]
fn first_matching_route_wins_in_file_order() {
    let routes = r#"
[roles.data-steward]
groups = ["sg-data-stewards"]
[roles.admin]
groups = ["sg-mdm-admins"]

[[routes]]
name = "fm-reports-delete"
path_prefix = "/reports"
methods = ["DELETE"]
upstream = "echo"
allow_roles = ["admin"]
[[routes.row_filters]]
header = "X-Row-Filter"
value = "route=delete"

[[routes]]
name = "fm-reports-special"
path_prefix = "/reports/special"
upstream = "echo"
allow_roles = ["admin"]
[[routes.row_filters]]
header = "X-Row-Filter"
value = "route=special"

[[routes]]
name = "fm-reports"
path_prefix = "/reports"
upstream = "echo"
allow_roles = ["data-steward", "admin"]
[[routes.row_filters]]
header = "X-Row-Filter"
value = "route=general"
"#;
    let env = Env::with(EnvOptions {
        routes: routes.to_string(),
        ..EnvOptions::default()
    });
    let steward = env.token(json!({}));
    let admin = env.token(json!({"groups": ["sg-mdm-admins"]}));

    // The narrower DELETE route comes first: a steward may not delete...
    let before = deny_count(&env, "fm-reports-delete", "insufficient_role");
    let r = env.send(
        Method::DELETE,
        "/reports/1",
        Some(&steward),
        &[],
        None,
        false,
    );
    assert_forbidden("steward DELETE", &r);
    assert_eq!(
        deny_count(&env, "fm-reports-delete", "insufficient_role") - before,
        1.0,
        "the DELETE route decided"
    );
    // ...even though the later, broader route would have let them.
    for m in [Method::GET, Method::POST, Method::PUT] {
        let r = env.send(m.clone(), "/reports/1", Some(&steward), &[], None, false);
        assert_eq!(r.status, 200, "{m}: {}", body(&r));
        assert_eq!(r.echoed("x-row-filter"), vec!["route=general"], "{m}");
    }
    let r = env.send(Method::DELETE, "/reports/1", Some(&admin), &[], None, false);
    assert_eq!(r.status, 200);
    assert_eq!(r.echoed("x-row-filter"), vec!["route=delete"]);

    // The narrower path comes first.
    let r = env.get("/reports/special/7", Some(&steward), false);
    assert_forbidden("steward on /reports/special", &r);
    let r = env.get("/reports/special", Some(&admin), false);
    assert_eq!(r.status, 200);
    assert_eq!(r.echoed("x-row-filter"), vec!["route=special"]);
    // Segment-aware: /reports/specialist is not under /reports/special.
    let r = env.get("/reports/specialist", Some(&steward), false);
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(r.echoed("x-row-filter"), vec!["route=general"]);
}

#[test]
fn path_prefixes_are_segment_aware() {
    let env = Env::start();
    let t = env.token(json!({}));
    for p in ["/orders", "/orders/", "/orders/7", "/orders/7/lines?x=1"] {
        let r = env.get(p, Some(&t), false);
        assert_eq!(r.status, 200, "{p}: {}", body(&r));
    }
    for p in [
        "/ordersX",
        "/orders-archive",
        "/orders.json",
        "/order",
        "/Orders",
    ] {
        let r = env.get(p, Some(&t), false);
        assert_eq!(r.status, 404, "{p}: {}", body(&r));
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/problem+json")
        );
        // Routing comes before authentication: no token, still 404.
        let r = env.get(p, None, false);
        assert_eq!(r.status, 404, "{p} without a token");
    }
    assert_eq!(env.echo().requests(), 4);
}

#[test]
fn admin_gets_no_row_filter_on_read_or_update() {
    let env = Env::start();
    let admin = env.token(json!({"groups": ["sg-mdm-admins"], "region": null}));
    let r = env.get("/orders", Some(&admin), false);
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(r.echoed("x-auth-roles"), vec!["admin"]);
    assert!(r.echoed("x-row-filter").is_empty(), "admin sees every row");
    let r = post(&env, "/orders", &admin, true);
    assert_eq!(r.status, 200, "{}", body(&r));
    assert!(r.echoed("x-row-filter").is_empty(), "admin sees every row");
    // A spoofed filter from an admin client is stripped, not passed on.
    let r = env.send(
        Method::GET,
        "/orders",
        Some(&admin),
        &[("X-Row-Filter", "region=eu-west")],
        None,
        false,
    );
    assert_eq!(r.status, 200);
    assert!(r.echoed("x-row-filter").is_empty());
}

#[test]
fn update_routes_get_their_own_filter() {
    let env = Env::start();
    let t = env.token(json!({}));
    for (m, h2) in [
        (Method::POST, false),
        (Method::PUT, true),
        (Method::PATCH, false),
        (Method::DELETE, true),
    ] {
        let r = env.send(
            m.clone(),
            "/orders/3",
            Some(&t),
            &[],
            Some(b"{}".to_vec()),
            h2,
        );
        assert_eq!(r.status, 200, "{m}: {}", body(&r));
        assert_eq!(
            r.echoed("x-row-filter"),
            vec!["region=eu-west;owner=alice"],
            "{m}"
        );
        assert_eq!(r.json()["method"], m.as_str());
    }
    // The read route keeps its own.
    let r = env.get("/orders/3", Some(&t), false);
    assert_eq!(r.echoed("x-row-filter"), vec!["region=eu-west"]);
}

#[test]
fn hostile_claim_values_arrive_percent_encoded() {
    let env = Env::start();
    let cases = [
        ("eu west\r\nX-Evil: 1", "eu%20west%0D%0AX-Evil%3A%201"),
        ("a,b", "a%2Cb"),
        ("100%", "100%25"),
        ("\"q\"", "%22q%22"),
        ("ü", "%C3%BC"),
        ("a;owner=root", "a%3Bowner%3Droot"),
        ("safe-._~AZaz09", "safe-._~AZaz09"),
    ];
    for (region, encoded) in cases {
        let t = env.token(json!({ "region": region }));
        for h2 in [false, true] {
            let r = env.get("/orders", Some(&t), h2);
            assert_eq!(r.status, 200, "{region:?}: {}", body(&r));
            assert_eq!(
                r.echoed("x-row-filter"),
                vec![format!("region={encoded}")],
                "{region:?}"
            );
            assert!(r.echoed("x-evil").is_empty(), "{region:?}: header injected");
        }
        let r = post(&env, "/orders", &t, false);
        assert_eq!(r.status, 200, "{region:?}: {}", body(&r));
        assert_eq!(
            r.echoed("x-row-filter"),
            vec![format!("region={encoded};owner=alice")]
        );
    }
    // The subject is encoded the same way, in X-Auth-Subject and in {sub}.
    let t = env.token(json!({"sub": "bob\r\nX-Evil: 1"}));
    let r = post(&env, "/orders", &t, false);
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(r.echoed("x-auth-subject"), vec!["bob%0D%0AX-Evil%3A%201"]);
    assert_eq!(
        r.echoed("x-row-filter"),
        vec!["region=eu-west;owner=bob%0D%0AX-Evil%3A%201"]
    );
    assert!(r.echoed("x-evil").is_empty());
}

#[test]
fn array_claims_join_with_commas() {
    let env = Env::start();
    let t = env.token(json!({"region": ["eu-west", "us east", "a,b"]}));
    let r = env.get("/orders", Some(&t), false);
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(
        r.echoed("x-row-filter"),
        vec!["region=eu-west,us%20east,a%2Cb"]
    );
    let r = post(&env, "/orders", &t, true);
    assert_eq!(
        r.echoed("x-row-filter"),
        vec!["region=eu-west,us%20east,a%2Cb;owner=alice"]
    );
}

#[test]
fn missing_claim_denies_with_403() {
    let env = env_prefixed("mc");
    let t = env.token(json!({"region": null}));
    let before = deny_count(&env, "mc-orders-read", "missing_claim");
    let r = env.get("/orders", Some(&t), false);
    assert_forbidden("no region claim", &r);
    assert_eq!(
        deny_count(&env, "mc-orders-read", "missing_claim") - before,
        1.0
    );
    let before = deny_count(&env, "mc-orders-update", "missing_claim");
    let r = post(&env, "/orders", &t, false);
    assert_forbidden("no region claim on update", &r);
    assert_eq!(
        deny_count(&env, "mc-orders-update", "missing_claim") - before,
        1.0
    );
    // A null claim is a missing claim, not the text "null".
    let r = env.get(
        "/orders",
        Some(&env.token(json!({"region": null, "x": 1}))),
        false,
    );
    assert_forbidden("null region", &r);
    assert_eq!(
        env.echo().requests(),
        0,
        "a filter is never silently dropped"
    );
    // Admins are excepted from the filter, so they need no region.
    let admin = env.token(json!({"region": null, "groups": ["sg-mdm-admins"]}));
    let r = env.get("/orders", Some(&admin), false);
    assert_eq!(r.status, 200, "{}", body(&r));
}

#[test]
fn forward_token_keeps_authorization_default_removes_it() {
    let routes = r#"
[[routes]]
name = "fwd-yes"
path_prefix = "/fwd"
upstream = "echo"
allow_roles = []
forward_token = true

[[routes]]
name = "fwd-no"
path_prefix = "/nofwd"
upstream = "echo"
allow_roles = []

[[routes]]
name = "fwd-public"
path_prefix = "/pub"
upstream = "echo"
auth = "none"
"#;
    let env = Env::with(EnvOptions {
        routes: routes.to_string(),
        ..EnvOptions::default()
    });
    let t = env.token(json!({}));
    for h2 in [false, true] {
        let r = env.get("/fwd/x", Some(&t), h2);
        assert_eq!(r.status, 200, "{}", body(&r));
        assert_eq!(r.echoed("authorization"), vec![format!("Bearer {t}")]);
        let r = env.get("/nofwd/x", Some(&t), h2);
        assert_eq!(r.status, 200, "{}", body(&r));
        assert!(r.echoed("authorization").is_empty(), "token removed");
        assert_eq!(r.echoed("x-auth-subject"), vec!["alice"]);
        // A public route forwards no credentials either.
        let r = env.get("/pub", Some(&t), h2);
        assert_eq!(r.status, 200, "{}", body(&r));
        assert!(r.echoed("authorization").is_empty(), "token removed");
    }
}

#[test]
fn decision_cache_hits_and_expiry_still_denies() {
    let env = Env::with(EnvOptions {
        routes: routes_prefixed("cache"),
        issuer_extra: "leeway_s = 0".into(),
        ..EnvOptions::default()
    });
    let hits = |env: &Env| metric_value(&env.metrics(), "gatehouse_decision_cache_hits_total", &[]);
    let exp = now() + 3;
    let t = env.token(json!({"exp": exp}));
    let r = env.get("/orders", Some(&t), false);
    assert_eq!(r.status, 200, "{}", body(&r));
    let before = hits(&env);
    for _ in 0..3 {
        let r = env.get("/orders", Some(&t), false);
        assert_eq!(r.status, 200, "{}", body(&r));
        assert_eq!(r.echoed("x-row-filter"), vec!["region=eu-west"]);
    }
    assert!(
        hits(&env) - before >= 3.0,
        "three repeats were cache hits: {} -> {}",
        before,
        hits(&env)
    );
    assert!(metric_value(&env.metrics(), "gatehouse_decision_cache_misses_total", &[]) >= 1.0);

    // Past exp (no leeway) the cached allow must not answer.
    while now() <= exp {
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = deny_count(&env, "cache-orders-read", "expired");
    let r = env.get("/orders", Some(&t), false);
    assert_eq!(r.status, 401, "{}", body(&r));
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains(r#"error="invalid_token""#));
    assert_eq!(
        deny_count(&env, "cache-orders-read", "expired") - before,
        1.0
    );
    assert_eq!(env.echo().requests(), 4);
}

#[test]
fn reload_discards_cached_decisions() {
    let env = env_prefixed("reload");
    let t = env.token(json!({}));
    for _ in 0..2 {
        let r = env.get("/orders", Some(&t), false);
        assert_eq!(r.status, 200, "{}", body(&r));
    }
    // The route stops admitting data stewards.
    let text = std::fs::read_to_string(&env.config).unwrap();
    let steward_read = r#"allow_roles = ["data-steward", "integration", "admin"]"#;
    assert!(text.contains(steward_read));
    std::fs::write(
        &env.config,
        text.replace(steward_read, r#"allow_roles = ["integration", "admin"]"#),
    )
    .unwrap();
    env.gw().reload().expect("reload accepted");
    let before = deny_count(&env, "reload-orders-read", "insufficient_role");
    let r = env.get("/orders", Some(&t), false);
    assert_eq!(
        r.status,
        403,
        "the cached allow from the old config was used: {}",
        body(&r)
    );
    assert_eq!(
        deny_count(&env, "reload-orders-read", "insufficient_role") - before,
        1.0
    );
    // And back: the cached denial goes with the config too.
    let r = env.get("/orders", Some(&t), false);
    assert_eq!(r.status, 403);
    std::fs::write(&env.config, text).unwrap();
    env.gw().reload().expect("reload accepted");
    let r = env.get("/orders", Some(&t), false);
    assert_eq!(r.status, 200, "{}", body(&r));
}

/// A 403 does not enumerate policy (required roles, missing scopes, row-filter header or
/// claim path) to the holder of a valid token.
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

/// Row filters reading numeric claims: each number goes on exactly as the token's JSON
/// wrote it (no float rounding that makes two tenants one).
#[test]
fn numeric_claims_render_exactly() {
    let env = Env::with(EnvOptions {
        routes: r#"
[roles.data-steward]
groups = ["sg-data-stewards"]

[[routes]]
name = "tenant"
path_prefix = "/tenant"
upstream = "echo"
allow_roles = ["data-steward"]
[[routes.row_filters]]
header = "X-Tenant"
value = "tenant={claims.tenant}"
"#
        .into(),
        ..EnvOptions::default()
    });
    // Signed from JSON text, so the number is spelt in the token exactly as here.
    let key = env.issuer().key(gatehouse::devkit::KeyAlg::RS256);
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let mint = |number: &str| {
        key.sign_raw_payload(&format!(
            r#"{{"iss":"{}","aud":"{AUDIENCE}","sub":"alice","groups":["sg-data-stewards"],"exp":{exp},"tenant":{number}}}"#,
            env.issuer().issuer_url()
        ))
    };
    let cases = [
        ("1180591620717411303424", "tenant=1180591620717411303424"),
        ("1180591620717411303425", "tenant=1180591620717411303425"),
        ("18446744073709551616", "tenant=18446744073709551616"),
        ("42", "tenant=42"),
        ("-7", "tenant=-7"),
        ("0.1", "tenant=0.1"),
        ("2.50", "tenant=2.50"),
        // The one normalisation: an exponent is written `e+N` / `e-N`.
        ("1e3", "tenant=1e%2B3"),
        ("-1.5E+2", "tenant=-1.5e%2B2"),
    ];
    let mut failures = Vec::new();
    for (number, want) in cases {
        let t = mint(number);
        let r = env.get("/tenant/x", Some(&t), false);
        let got = if r.status == 200 {
            r.echoed("x-tenant")
        } else {
            vec![format!("status {}", r.status)]
        };
        if got != vec![want.to_string()] {
            failures.push(format!("{number}: {got:?}, want {want}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
