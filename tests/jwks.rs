//! The issuer's keys end to end (SPEC section 3 step 4): key rotation, the unknown-`kid`
//! flood, IdP outages at and after start, and the JWKS metrics.
//!
//! Metrics are process-wide and tests run in parallel, so tests that count
//! `gatehouse_auth_decisions_total` use route names no other test uses.

mod common;

use std::time::{Duration, Instant};

use common::*;
use gatehouse::devkit::{KeyAlg, SigningKey};
use serde_json::json;

#[test]
fn key_rotation_is_picked_up_without_restart() {
    let env = Env::start();
    let old_key = env.issuer().key(KeyAlg::RS256);
    let r = env.get("/orders", Some(&env.token(json!({}))), false);
    assert_eq!(r.status, 200);

    let fetches = env.issuer().jwks_requests();
    let new_key = env.issuer().rotate(KeyAlg::RS256);
    assert_ne!(new_key.kid, old_key.kid);
    let fresh = env.token(json!({"jti": "after-rotation"}));
    assert_eq!(
        jsonwebtoken::decode_header(&fresh).unwrap().kid.as_deref(),
        Some(new_key.kid.as_str())
    );
    let r = env.get("/orders", Some(&fresh), false);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.echoed("x-auth-subject"), vec!["alice"]);
    assert!(
        env.issuer().jwks_requests() > fetches,
        "the kid miss refetched the JWKS"
    );

    // A new token from the retired key (no cached decision) is now refused.
    let mut claims = alice_claims(&env);
    claims["jti"] = json!("retired-key");
    let retired = old_key.sign(&claims);
    let r = env.get("/orders", Some(&retired), false);
    assert_problem("token from the retired key", &r, 401);
    assert_invalid_token_challenge("token from the retired key", &r);
    // The ES256 key was not touched.
    let mut es = alice_claims(&env);
    es.as_object_mut().unwrap().remove("iss");
    let r = env.get("/orders", Some(&env.issuer().mint(KeyAlg::ES256, es)), true);
    assert_eq!(r.status, 200);
}

#[test]
fn unknown_kid_flood_causes_at_most_one_or_two_jwks_fetches() {
    let env = Env::with(EnvOptions {
        routes: routes_prefixed("flood"),
        ..EnvOptions::default()
    });
    let claims = alice_claims(&env);
    let key = SigningKey::generate(KeyAlg::ES256).unwrap();
    let tokens = |round: &str| -> Vec<String> {
        (0..50)
            .map(|i| {
                key.clone()
                    .with_kid(format!("flood-{round}-{i}"))
                    .sign(&claims)
            })
            .collect()
    };
    let send_all = |tokens: Vec<String>| -> Vec<u16> {
        let client = env.client(false);
        let url = env.url("/orders");
        env.block_on(async {
            let reqs = tokens.iter().map(|t| {
                let client = client.clone();
                let url = url.clone();
                async move {
                    client
                        .get(url)
                        .bearer_auth(t)
                        .send()
                        .await
                        .unwrap()
                        .status()
                        .as_u16()
                }
            });
            futures::future::join_all(reqs).await
        })
    };
    let fetches = env.issuer().jwks_requests();
    let denied = deny_count(&env, "flood-orders-read", "unknown_key");
    let started = Instant::now();
    let statuses = send_all(tokens("a"));
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    let delta = env.issuer().jwks_requests() - fetches;
    assert!(
        (1..=2).contains(&delta),
        "50 unknown kids caused {delta} JWKS fetches"
    );
    assert_eq!(
        deny_count(&env, "flood-orders-read", "unknown_key") - denied,
        50.0
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the flood was answered promptly: {:?}",
        started.elapsed()
    );
    // A second wave right after is throttled: no fetch at all.
    let statuses = send_all(tokens("b"));
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    assert_eq!(
        env.issuer().jwks_requests() - fetches,
        delta,
        "refetches are throttled"
    );
    // Genuine tokens are still served.
    let r = env.get("/orders", Some(&env.token(json!({}))), false);
    assert_eq!(r.status, 200);
}

#[test]
fn idp_down_after_start_keeps_serving_with_last_keys() {
    let env = Env::start();
    let r = env.get("/orders", Some(&env.token(json!({}))), false);
    assert_eq!(r.status, 200);
    let errors = |env: &Env| {
        metric_value(
            &env.metrics(),
            "gatehouse_jwks_refresh_total",
            &[("issuer", "corp"), ("result", "error")],
        )
    };
    let errors_before = errors(&env);
    env.issuer().set_down(true);

    // A kid miss makes the gateway try to refetch; the fetch fails, the keys stay.
    let stranger = SigningKey::generate(KeyAlg::RS256)
        .unwrap()
        .with_kid("unknown-while-down");
    let r = env.get("/orders", Some(&stranger.sign(&alice_claims(&env))), false);
    assert_problem("unknown kid while the IdP is down", &r, 401);
    assert_invalid_token_challenge("unknown kid while the IdP is down", &r);
    assert!(
        errors(&env) > errors_before,
        "the failed refetch is counted"
    );

    // Fresh tokens (no cached decision) from both published keys still verify.
    for (i, alg) in [KeyAlg::RS256, KeyAlg::ES256].into_iter().enumerate() {
        let mut c = alice_claims(&env);
        c.as_object_mut().unwrap().remove("iss");
        c["jti"] = json!(format!("down-{i}"));
        let t = env.issuer().mint(alg, c);
        let r = env.get("/orders/9", Some(&t), i == 1);
        assert_eq!(r.status, 200, "{alg}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.echoed("x-auth-subject"), vec!["alice"]);
    }
    let ready = env.block_on(async {
        reqwest::get(env.admin_url("/readyz"))
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    assert_eq!(ready, 200, "keys were loaded once: still ready");
}

#[test]
fn idp_down_from_start_is_503_with_retry_after_and_public_routes_still_work() {
    let env = Env::with(EnvOptions {
        routes: routes_prefixed("down"),
        issuer_down_at_start: true,
        ..EnvOptions::default()
    });
    let token = env.token(json!({}));
    let before = deny_count(&env, "down-orders-read", "issuer_unavailable");
    for h2 in [false, true] {
        let r = env.get("/orders", Some(&token), h2);
        assert_problem("IdP down since start", &r, 503);
        let retry = r.header("retry-after").expect("Retry-After");
        assert!(
            retry.parse::<u64>().is_ok_and(|s| s > 0),
            "Retry-After is delta-seconds: {retry}"
        );
        assert_no_leak("IdP down since start", &r, &token);
    }
    assert_eq!(
        deny_count(&env, "down-orders-read", "issuer_unavailable") - before,
        2.0
    );
    // No token is still the caller's problem.
    let r = env.get("/orders", None, false);
    assert_problem("no token while the IdP is down", &r, 401);
    // Public routes do not need the IdP.
    let r = env.get("/public/status", None, false);
    assert_eq!(r.status, 200);
    let readyz = |env: &Env| {
        env.block_on(async {
            let r = reqwest::get(env.admin_url("/readyz")).await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    };
    let (status, body) = readyz(&env);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("corp"), "readyz names the issuer: {body}");
    assert_eq!(
        env.echo().requests(),
        1,
        "only the public request went through"
    );

    // The IdP comes back: the retrying store loads keys and the same token passes.
    env.issuer().set_down(false);
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let r = env.get("/orders", Some(&token), false);
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503);
        assert!(
            Instant::now() < deadline,
            "keys never loaded after the IdP came back"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(readyz(&env).0, 200);
}

#[test]
fn jwks_metrics_are_exported() {
    let env = Env::start();
    // At least one request so the proxy metrics exist too.
    assert_eq!(
        env.get("/orders", Some(&env.token(json!({}))), false)
            .status,
        200
    );
    let m = env.metrics();
    assert!(
        metric_value(
            &m,
            "gatehouse_jwks_refresh_total",
            &[("issuer", "corp"), ("result", "ok")]
        ) >= 1.0,
        "{m}"
    );
    // The registry is process-wide and every test gateway's issuer is called "corp": a
    // parallel test whose IdP is down holds the gauge at 0 until it recovers. Wait for 2.
    let start = std::time::Instant::now();
    loop {
        let m = env.metrics();
        let keys = metric_value(&m, "gatehouse_jwks_keys", &[("issuer", "corp")]);
        if keys == 2.0 {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "RS256 and ES256 keys: {m}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(
        m.contains("# TYPE gatehouse_jwks_refresh_total counter"),
        "{m}"
    );
    assert!(m.contains("# TYPE gatehouse_jwks_keys gauge"), "{m}");
}
