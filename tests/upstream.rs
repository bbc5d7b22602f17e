//! End to end towards the upstream: large bodies streamed both ways, upstream failures
//! (unreachable, TLS, timeout) as problem responses, round robin and dead-address
//! skipping, status pass-through, and the metrics that traffic leaves behind.

mod common;

use std::time::{Duration, Instant};

use common::*;
use gatehouse::devkit::echo::pattern_byte;
use gatehouse::devkit::{DevPki, EchoBackend, EchoOptions};
use sha2::{Digest, Sha256};

/// Public routes onto the echo backend's special paths.
const PUBLIC_ROUTES: &str = r#"
[[routes]]
name = "status"
path_prefix = "/public"
upstream = "echo"
auth = "none"

[[routes]]
name = "upload"
path_prefix = "/upload"
upstream = "echo"
auth = "none"

[[routes]]
name = "bytes"
path_prefix = "/bytes"
upstream = "echo"
auth = "none"

[[routes]]
name = "slow"
path_prefix = "/slow"
upstream = "echo"
auth = "none"

[[routes]]
name = "backend-status"
path_prefix = "/status"
upstream = "echo"
auth = "none"
"#;

fn public_env() -> Env {
    Env::with(EnvOptions {
        routes: PUBLIC_ROUTES.to_string(),
        ..EnvOptions::default()
    })
}

/// An env whose config is written but whose gateway is not started yet.
fn unstarted(o: EnvOptions) -> Env {
    Env::with(EnvOptions {
        start_gateway: false,
        ..o
    })
}

/// Rewrites the config file of a not-yet-started env.
fn edit_config(env: &Env, f: impl FnOnce(String) -> String) {
    let text = std::fs::read_to_string(&env.config).unwrap();
    let new = f(text.clone());
    assert_ne!(new, text, "the edit changed nothing");
    std::fs::write(&env.config, new).unwrap();
}

fn assert_problem(r: &Resp, status: u16) {
    assert_eq!(
        r.status,
        status,
        "body: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/problem+json")
    );
    let p = r.json();
    assert_eq!(p["status"], status);
    let rid = r.header("x-request-id").expect("X-Request-Id on a problem");
    assert!(!rid.is_empty());
    assert_eq!(p["request_id"].as_str(), Some(rid.as_str()));
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

#[test]
fn large_request_body_streams_intact_h1_and_h2() {
    let env = public_env();
    let body: Vec<u8> = (0..8 * 1024 * 1024u64)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let want = sha256_hex(&body);
    for h2 in [false, true] {
        let r = env.send(
            reqwest::Method::POST,
            "/upload",
            None,
            &[("content-type", "application/octet-stream")],
            Some(body.clone()),
            h2,
        );
        assert_eq!(
            r.status,
            200,
            "h2={h2}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let j = r.json();
        assert_eq!(j["path"], "/upload");
        assert_eq!(j["method"], "POST");
        assert_eq!(j["body_len"], body.len() as u64, "h2={h2}");
        assert_eq!(j["body_sha256"].as_str(), Some(want.as_str()), "h2={h2}");
    }
    assert_eq!(env.echo().requests(), 2);
}

#[test]
fn large_response_body_streams_intact_h1_and_h2() {
    let env = public_env();
    let n: u64 = 8 * 1024 * 1024;
    for h2 in [false, true] {
        let r = env.get(&format!("/bytes?n={n}"), None, h2);
        assert_eq!(r.status, 200, "h2={h2}");
        assert_eq!(
            r.version,
            if h2 {
                reqwest::Version::HTTP_2
            } else {
                reqwest::Version::HTTP_11
            }
        );
        assert_eq!(r.body.len() as u64, n, "h2={h2}");
        if let Some(i) = r
            .body
            .iter()
            .enumerate()
            .position(|(i, b)| *b != pattern_byte(i as u64))
        {
            panic!(
                "h2={h2}: byte {i} is {} not {}",
                r.body[i],
                pattern_byte(i as u64)
            );
        }
    }
}

#[test]
fn unreachable_upstream_is_502_problem_h1_and_h2() {
    let dead = free_port();
    let env = Env::with(EnvOptions {
        routes: PUBLIC_ROUTES.to_string(),
        upstream_addrs: Some(format!("\"127.0.0.1:{dead}\"")),
        ..EnvOptions::default()
    });
    for h2 in [false, true] {
        let r = env.get("/public/x", None, h2);
        assert_problem(&r, 502);
        let text = String::from_utf8_lossy(&r.body);
        assert!(!text.contains(&dead.to_string()), "no address leak: {text}");
    }
    assert_eq!(env.echo().requests(), 0);
}

#[test]
fn upstream_with_untrusted_certificate_is_502() {
    let env = unstarted(EnvOptions {
        routes: PUBLIC_ROUTES.to_string(),
        ..EnvOptions::default()
    });
    // A different CA: the echo backend's certificate does not chain to it.
    let other = DevPki::generate().unwrap();
    std::fs::write(
        env.dir.path().join("certs/other-ca.crt"),
        &other.ca.cert_pem,
    )
    .unwrap();
    edit_config(&env, |t| {
        t.replace(
            "sni = \"localhost\"\nca = \"certs/ca.crt\"",
            "sni = \"localhost\"\nca = \"certs/other-ca.crt\"",
        )
    });
    let mut env = env;
    env.start_gateway();
    for h2 in [false, true] {
        assert_problem(&env.get("/public", None, h2), 502);
    }
    assert_eq!(
        env.echo().requests(),
        0,
        "no request over a failed handshake"
    );
}

#[test]
fn upstream_with_wrong_sni_is_502() {
    let env = unstarted(EnvOptions {
        routes: PUBLIC_ROUTES.to_string(),
        ..EnvOptions::default()
    });
    edit_config(&env, |t| {
        t.replace("sni = \"localhost\"", "sni = \"wrong.example\"")
    });
    let mut env = env;
    env.start_gateway();
    for h2 in [false, true] {
        assert_problem(&env.get("/public", None, h2), 502);
    }
    assert_eq!(env.echo().requests(), 0);
}

#[test]
fn trusted_upstream_after_reload_to_untrusted_ca_fails_new_connections() {
    // Same failure reached through a reload: the route keeps working before, and a
    // reload that points the upstream at a foreign CA makes new requests 502.
    let env = public_env();
    assert_eq!(env.get("/public", None, false).status, 200);
    let other = DevPki::generate().unwrap();
    std::fs::write(
        env.dir.path().join("certs/other-ca.crt"),
        &other.ca.cert_pem,
    )
    .unwrap();
    edit_config(&env, |t| {
        t.replace(
            "sni = \"localhost\"\nca = \"certs/ca.crt\"",
            "sni = \"localhost\"\nca = \"certs/other-ca.crt\"",
        )
    });
    env.gw().reload().expect("reload accepted");
    let r = env.get("/public", None, false);
    assert_problem(&r, 502);
}

#[test]
fn slow_upstream_is_504_problem() {
    let env = public_env();
    // read_timeout_ms = 1500 in the harness; the backend answers after 4 s.
    for h2 in [false, true] {
        let r = env.get("/slow?ms=4000", None, h2);
        assert_problem(&r, 504);
    }
    // The backend did receive the requests: the gateway gave up waiting.
    assert!(env.echo().requests() >= 2);
    // A fast request on the same route still works afterwards.
    let r = env.get("/slow?ms=10", None, false);
    assert_eq!(r.status, 200);
}

fn second_echo(env: &Env) -> EchoBackend {
    env.block_on(EchoBackend::start(
        &env.pki.backend,
        &env.pki.ca.cert_pem,
        EchoOptions::default(),
    ))
    .expect("second echo")
}

fn set_addrs(env: &Env, addrs: &str) {
    let first = format!("addrs = [\"{}\"]", env.echo().addr());
    edit_config(env, |t| t.replace(&first, &format!("addrs = [{addrs}]")));
}

#[test]
fn round_robin_reaches_every_address() {
    let mut env = unstarted(EnvOptions {
        routes: PUBLIC_ROUTES.to_string(),
        ..EnvOptions::default()
    });
    let echo2 = second_echo(&env);
    set_addrs(
        &env,
        &format!("\"{}\", \"{}\"", env.echo().addr(), echo2.addr()),
    );
    env.start_gateway();
    let n = 20;
    for i in 0..n {
        let r = env.get(&format!("/public/{i}"), None, i % 2 == 0);
        assert_eq!(r.status, 200);
    }
    let (a, b) = (env.echo().requests(), echo2.requests());
    assert_eq!(a + b, n, "every request reached exactly one backend");
    assert!(a >= 5 && b >= 5, "both backends get a share: {a} / {b}");
    env.block_on(echo2.shutdown());
}

#[test]
fn dead_address_is_skipped_and_every_request_succeeds() {
    let dead = free_port();
    let mut env = unstarted(EnvOptions {
        routes: PUBLIC_ROUTES.to_string(),
        ..EnvOptions::default()
    });
    // Dead address first, so the first request has to fail over.
    set_addrs(
        &env,
        &format!("\"127.0.0.1:{dead}\", \"{}\"", env.echo().addr()),
    );
    env.start_gateway();
    let n = 12;
    for i in 0..n {
        let r = env.get(&format!("/public/{i}"), None, i % 2 == 1);
        assert_eq!(
            r.status,
            200,
            "request {i}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    assert_eq!(env.echo().requests(), n, "the live backend served them all");
}

#[test]
fn backend_status_codes_pass_through() {
    let env = public_env();
    for (code, h2) in [
        (418, false),
        (418, true),
        (503, false),
        (201, true),
        (404, false),
    ] {
        let r = env.get(&format!("/status?code={code}"), None, h2);
        assert_eq!(r.status, code, "h2={h2}");
        // The backend's own body, not a gateway problem.
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/json"),
            "{code}"
        );
        assert_eq!(r.json()["path"], "/status");
        assert!(r.header("strict-transport-security").is_some());
    }
}

// ---- metrics ------------------------------------------------------------------------

/// Polls `/metrics` until `ok` holds (metrics are recorded after the response is sent).
fn wait_metrics(env: &Env, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = env.metrics();
        if ok(&text) {
            return text;
        }
        if Instant::now() > deadline {
            panic!("metrics never showed {what}:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn metrics_after_traffic() {
    let env = public_env();
    let v = |t: &str, n: &str, l: &[(&str, &str)]| metric_sample(t, n, l).unwrap_or(0.0);
    let before = env.metrics();
    let req_200 = [("method", "GET"), ("route", "bytes"), ("status", "200")];
    let up_200 = [("upstream", "echo"), ("status", "200")];
    let none_404 = [("method", "GET"), ("route", "_none"), ("status", "404")];
    let other = [("method", "OTHER"), ("route", "status"), ("status", "200")];
    let dur_route = [("route", "bytes")];
    let dur_up = [("upstream", "echo")];
    let b_req = v(&before, "gatehouse_requests_total", &req_200);
    let b_up = v(&before, "gatehouse_upstream_requests_total", &up_200);
    let b_none = v(&before, "gatehouse_requests_total", &none_404);
    let b_other = v(&before, "gatehouse_requests_total", &other);
    let b_dur = v(
        &before,
        "gatehouse_request_duration_seconds_count",
        &dur_route,
    );
    let b_udur = v(
        &before,
        "gatehouse_upstream_duration_seconds_count",
        &dur_up,
    );

    for h2 in [false, true] {
        assert_eq!(env.get("/bytes?n=10", None, h2).status, 200);
    }
    assert_eq!(env.get("/no-such-route", None, false).status, 404);
    let propfind = reqwest::Method::from_bytes(b"PROPFIND").unwrap();
    let r = env.send(propfind, "/public/x", None, &[], None, false);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["method"], "PROPFIND");

    let after = wait_metrics(&env, "the traffic", |t| {
        v(t, "gatehouse_requests_total", &req_200) >= b_req + 2.0
            && v(t, "gatehouse_upstream_requests_total", &up_200) >= b_up + 3.0
            && v(t, "gatehouse_requests_total", &none_404) >= b_none + 1.0
            && v(t, "gatehouse_requests_total", &other) >= b_other + 1.0
            && v(t, "gatehouse_request_duration_seconds_count", &dur_route) >= b_dur + 2.0
            && v(t, "gatehouse_upstream_duration_seconds_count", &dur_up) >= b_udur + 3.0
    });
    // Histograms have their buckets and sums.
    assert!(after.contains("# TYPE gatehouse_request_duration_seconds histogram"));
    assert!(after.contains("# TYPE gatehouse_upstream_duration_seconds histogram"));
    assert!(
        metric_sample(
            &after,
            "gatehouse_request_duration_seconds_bucket",
            &[("route", "bytes"), ("le", "+Inf")]
        )
        .unwrap()
            >= 2.0
    );
    assert!(
        metric_sample(&after, "gatehouse_upstream_duration_seconds_sum", &dur_up).unwrap() > 0.0
    );
    // No label value comes from request data.
    for bad in ["PROPFIND", "no-such-route", "/bytes"] {
        assert!(
            !after
                .lines()
                .any(|l| !l.starts_with('#') && l.contains(bad)),
            "{bad} leaked into a label"
        );
    }
}

#[test]
fn upstream_failures_are_counted_as_502_and_504() {
    let dead = free_port();
    let env = Env::with(EnvOptions {
        routes: PUBLIC_ROUTES.to_string(),
        upstream_addrs: Some(format!("\"127.0.0.1:{dead}\"")),
        ..EnvOptions::default()
    });
    let l502 = [("upstream", "echo"), ("status", "502")];
    let r502 = [("method", "GET"), ("route", "status"), ("status", "502")];
    let before = env.metrics();
    let b_up = metric_sample(&before, "gatehouse_upstream_requests_total", &l502).unwrap_or(0.0);
    let b_req = metric_sample(&before, "gatehouse_requests_total", &r502).unwrap_or(0.0);
    assert_eq!(env.get("/public", None, false).status, 502);
    wait_metrics(&env, "a 502", |t| {
        metric_sample(t, "gatehouse_upstream_requests_total", &l502).unwrap_or(0.0) >= b_up + 1.0
            && metric_sample(t, "gatehouse_requests_total", &r502).unwrap_or(0.0) >= b_req + 1.0
    });
}
