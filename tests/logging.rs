//! Log lines about a request carry its `request_id` and route, and at debug level the
//! line that ends a request names its decision and deny reason, so
//! `RUST_LOG=gatehouse=debug` answers "why was this 401?" without the audit file. No
//! token reaches a log line.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use gatehouse::devkit::{KeyAlg, SigningKey};
use serde_json::{json, Value};

#[test]
fn request_log_lines_carry_request_id_route_and_deny_reason() {
    let env = Env::with(EnvOptions {
        start_gateway: false,
        ..EnvOptions::default()
    });
    let stderr_path = env.dir.path().join("serve.stderr");
    let mut child = Guarded::spawn(
        serve_command(&env)
            .args(["--log-format", "json"])
            .env("RUST_LOG", "gatehouse=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap()),
    );
    wait_listening(env.https);
    wait_child_ready(&env);
    // A token whose signature does not verify (the payload of another token).
    let good = env.token(json!({}));
    let other = env.token(json!({"sub": "mallory"}));
    let mut parts: Vec<&str> = good.split('.').collect();
    parts[1] = other.split('.').nth(1).unwrap();
    let forged = parts.join(".");
    let r = env.send(
        reqwest::Method::GET,
        "/orders/1",
        Some(&forged),
        &[("x-request-id", "why-was-this-401")],
        None,
        false,
    );
    assert_eq!(r.status, 401);
    let r = env.send(
        reqwest::Method::GET,
        "/orders/1",
        Some(&good),
        &[("x-request-id", "and-this-200")],
        None,
        false,
    );
    assert_eq!(r.status, 200);
    // A key id the issuer never published: the JWKS refetch it causes is logged in the
    // request's span.
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let stranger = SigningKey::generate(KeyAlg::ES256)
        .unwrap()
        .with_kid("no-such-kid-0001");
    let unknown = stranger.sign(&json!({
        "iss": env.issuer().issuer_url(), "aud": AUDIENCE, "sub": "alice",
        "groups": ["sg-data-stewards"], "region": "eu-west", "scope": "orders.read",
        "iat": n, "exp": n + 600,
    }));
    let r = env.send(
        reqwest::Method::GET,
        "/orders/1",
        Some(&unknown),
        &[("x-request-id", "unknown-kid-1")],
        None,
        false,
    );
    assert_eq!(r.status, 401);

    let start = Instant::now();
    let lines = loop {
        let text = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let done = lines
            .iter()
            .filter(|l| l.to_string().contains("request done"))
            .count();
        if done >= 3 || start.elapsed() > Duration::from_secs(10) {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    send_signal(&child, libc::SIGTERM);
    let _ = child.wait();
    let text = std::fs::read_to_string(&stderr_path).unwrap();
    for secret in [&good, &forged] {
        assert!(!text.contains(secret.as_str()), "a token reached the log");
        let sig = secret.rsplit('.').next().unwrap();
        assert!(!text.contains(sig), "a token signature reached the log");
    }
    let done_for = |id: &str| {
        lines
            .iter()
            .find(|l| {
                l["message"] == "request done"
                    && l.to_string().contains(&format!("\"request_id\":\"{id}\""))
            })
            .cloned()
            .unwrap_or_else(|| panic!("no 'request done' line for {id}:\n{text}"))
    };
    let denied = done_for("why-was-this-401");
    assert_eq!(denied["decision"], "deny", "{denied}");
    assert_eq!(denied["reason"], "bad_signature", "{denied}");
    assert_eq!(denied["status"], 401, "{denied}");
    assert!(
        denied.to_string().contains("\"route\":\"orders-read\""),
        "{denied}"
    );
    let refetch = lines
        .iter()
        .find(|l| l["message"] == "unknown key id: refetching JWKS")
        .unwrap_or_else(|| panic!("no refetch line:\n{text}"));
    assert!(
        refetch
            .to_string()
            .contains("\"request_id\":\"unknown-kid-1\""),
        "the JWKS refetch names the request that caused it: {refetch}"
    );
    assert_eq!(done_for("unknown-kid-1")["reason"], "unknown_key");
    let allowed = done_for("and-this-200");
    assert_eq!(allowed["decision"], "allow", "{allowed}");
    assert_eq!(allowed["status"], 200, "{allowed}");
}
