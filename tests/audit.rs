//! The audit log end to end (SPEC section 5): exact fields for allowed, denied and public
//! requests, pseudonyms stable across restarts with one key and different under another,
//! and nothing secret (token, query string, raw subject) in any log; an unwritable audit
//! directory turns /readyz 503 and loses no line.

mod common;

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

fn expected_pseudonym(key: &[u8], iss: &str, sub: &str) -> String {
    let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
    m.update(format!("{iss}\n{sub}").as_bytes());
    hex::encode(m.finalize().into_bytes())
}

fn line_for<'a>(lines: &'a [serde_json::Value], request_id: &str) -> &'a serde_json::Value {
    lines
        .iter()
        .find(|l| l["request_id"] == request_id)
        .unwrap_or_else(|| panic!("no audit line for {request_id}: {lines:?}"))
}

#[test]
fn exact_fields_for_allowed_denied_and_public_requests() {
    let env = Env::start();
    let iss = env.issuer().issuer_url();
    let token = env.token(json!({}));
    let allowed = env.send(
        reqwest::Method::GET,
        "/orders/7?secret=1",
        Some(&token),
        &[("x-request-id", "req-allow")],
        None,
        false,
    );
    assert_eq!(allowed.status, 200);
    let bob = env.token(json!({"sub": "bob", "groups": ["sg-sales"]}));
    let denied = env.send(
        reqwest::Method::GET,
        "/orders/7",
        Some(&bob),
        &[("x-request-id", "req-deny")],
        None,
        false,
    );
    assert_eq!(denied.status, 403);
    let public = env.send(
        reqwest::Method::GET,
        "/public/x?q=2",
        None,
        &[("x-request-id", "req-public")],
        None,
        true,
    );
    assert_eq!(public.status, 200);
    let anon = env.send(
        reqwest::Method::GET,
        "/orders/7",
        None,
        &[("x-request-id", "req-anon")],
        None,
        false,
    );
    assert_eq!(anon.status, 401);
    let unrouted = env.send(
        reqwest::Method::GET,
        "/nowhere",
        None,
        &[("x-request-id", "req-none")],
        None,
        false,
    );
    assert_eq!(unrouted.status, 404);

    let lines = env.audit_lines_for(&["req-allow", "req-deny", "req-public", "req-anon"]);
    let key = b"test-pseudonym-key";
    let a = line_for(&lines, "req-allow");
    let mut keys: Vec<&String> = a.as_object().unwrap().keys().collect();
    keys.sort();
    let mut want = vec![
        "ts",
        "request_id",
        "route",
        "method",
        "path",
        "decision",
        "reason",
        "subject",
        "client_id",
        "roles",
        "status",
        "upstream",
        "duration_ms",
    ];
    want.sort();
    assert_eq!(keys, want);
    assert_eq!(a["route"], "orders-read");
    assert_eq!(a["method"], "GET");
    assert_eq!(a["path"], "/orders/7", "no query string");
    assert_eq!(a["decision"], "allow");
    assert_eq!(a["reason"], serde_json::Value::Null);
    assert_eq!(a["subject"], expected_pseudonym(key, &iss, "alice"));
    assert_eq!(a["client_id"], serde_json::Value::Null);
    assert_eq!(a["roles"], json!(["data-steward"]));
    assert_eq!(a["status"], 200);
    assert_eq!(a["upstream"], "echo");
    assert!(a["duration_ms"].is_u64());
    assert!(chrono::DateTime::parse_from_rfc3339(a["ts"].as_str().unwrap()).is_ok());

    let d = line_for(&lines, "req-deny");
    assert_eq!(d["decision"], "deny");
    assert_eq!(d["reason"], "insufficient_role");
    assert_eq!(d["status"], 403);
    assert_eq!(d["subject"], expected_pseudonym(key, &iss, "bob"));
    assert_eq!(d["upstream"], serde_json::Value::Null);

    let p = line_for(&lines, "req-public");
    assert_eq!(p["decision"], "public");
    assert_eq!(p["subject"], serde_json::Value::Null);
    assert_eq!(p["path"], "/public/x");
    assert_eq!(p["route"], "status");
    assert_eq!(p["status"], 200);

    let n = line_for(&lines, "req-anon");
    assert_eq!(n["decision"], "deny");
    assert_eq!(n["reason"], "missing_token");
    assert_eq!(n["status"], 401);

    assert!(
        lines.iter().all(|l| l["request_id"] != "req-none"),
        "a request that reached no route has no audit line"
    );
    let all = serde_json::to_string(&lines).unwrap();
    assert!(
        !all.contains("alice") && !all.contains("\"bob\""),
        "raw subjects never reach the audit log"
    );
    assert!(!all.contains("secret=1") && !all.contains("q=2"));
    assert!(!all.contains(token.split('.').nth(2).unwrap()));
}

#[test]
fn pseudonym_is_stable_across_restarts_and_changes_with_the_key() {
    let mut env = Env::start();
    let token = env.token(json!({}));
    let subject_of = |env: &Env, id: &str| -> String {
        let r = env.send(
            reqwest::Method::GET,
            "/orders",
            Some(&token),
            &[("x-request-id", id)],
            None,
            false,
        );
        assert_eq!(r.status, 200);
        line_for(&env.audit_lines_for(&[id]), id)["subject"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let first = subject_of(&env, "run-1");
    env.gw.take().unwrap().stop();
    env.start_gateway();
    let second = subject_of(&env, "run-2");
    assert_eq!(
        first, second,
        "same key, same person: same pseudonym after a restart"
    );
    env.gw.take().unwrap().stop();
    std::fs::write(env.dir.path().join("pseudonym.key"), "another-key").unwrap();
    env.start_gateway();
    let third = subject_of(&env, "run-3");
    assert_ne!(first, third, "another key gives another pseudonym");
    assert_eq!(third.len(), 64);
}

/// Runs the real binary with debug logging, sends requests carrying tokens, cookies and
/// query strings, stops it with SIGTERM and searches every output (stdout, stderr, audit
/// files) for them.
#[test]
fn no_token_cookie_or_query_string_in_any_log() {
    let env = Env::with(EnvOptions {
        start_gateway: false,
        ..EnvOptions::default()
    });
    let mut child = Guarded::spawn(
        serve_command(&env)
            .args(["--log-format", "json"])
            .env("RUST_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    wait_listening(env.https);
    wait_child_ready(&env);
    let good = env.token(json!({}));
    let expired = env.token(json!({"exp": 1_000_000_000}));
    let bad_sig = format!("{}x", &good[..good.len() - 2]);
    let cookie = "session=c00kie-v4lue-123";
    for (tok, path) in [
        (&good, "/orders/1?q=query-s3cret"),
        (&expired, "/orders/2?q=query-s3cret"),
        (&bad_sig, "/orders/3?q=query-s3cret"),
    ] {
        let r = env.send(
            reqwest::Method::GET,
            path,
            Some(tok),
            &[("cookie", cookie)],
            None,
            false,
        );
        assert!(r.status == 200 || r.status == 401, "{}", r.status);
    }
    send_signal(&child, libc::SIGTERM);
    let status = child.wait().unwrap();
    assert!(status.success(), "SIGTERM exits 0, got {status:?}");
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    for f in std::fs::read_dir(env.dir.path().join("audit")).unwrap() {
        out.push_str(&std::fs::read_to_string(f.unwrap().path()).unwrap());
    }
    assert!(
        out.contains("\"decision\":\"allow\""),
        "the audit log was written: {out}"
    );
    for secret in [good.as_str(), expired.as_str(), bad_sig.as_str()] {
        for part in secret.split('.') {
            assert!(!out.contains(part), "a token part reached a log");
        }
    }
    if let Some(i) = out.find("c00kie-v4lue-123") {
        let line_start = out[..i].rfind('\n').map(|x| x + 1).unwrap_or(0);
        panic!(
            "a cookie reached a log: {}",
            &out[line_start..(i + 40).min(out.len())]
        );
    }
    assert!(
        !out.contains("query-s3cret"),
        "a query string reached a log"
    );
    assert!(!out.contains("alice@example.com"));
}

#[test]
fn unwritable_audit_directory_turns_readyz_503_and_loses_no_line() {
    let env = ops_env(true);
    let ready = |env: &Env| {
        env.block_on(async {
            reqwest::get(env.admin_url("/readyz"))
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    assert_eq!(ready(&env), 200);
    let audit = env.dir.path().join("audit");
    std::fs::rename(&audit, env.dir.path().join("audit-moved")).unwrap();
    std::fs::write(&audit, "not a directory").unwrap();
    let before = metric_value(&env.metrics(), "gatehouse_audit_write_errors_total", &[]);
    let ids: Vec<String> = (0..20).map(|i| format!("lost-{i}")).collect();
    for id in &ids {
        let r = env.send(
            reqwest::Method::GET,
            "/slow?ms=1",
            None,
            &[("x-request-id", id)],
            None,
            false,
        );
        assert_eq!(r.status, 200);
    }
    let start = Instant::now();
    while ready(&env) != 503 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "readyz never turned 503; errors={} audit={:?}",
            metric_value(&env.metrics(), "gatehouse_audit_write_errors_total", &[]),
            std::fs::read_dir(env.dir.path().join("audit-moved"))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let body = env.block_on(async {
        reqwest::get(env.admin_url("/readyz"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    assert!(body.contains("audit"), "{body}");
    assert!(metric_value(&env.metrics(), "gatehouse_audit_write_errors_total", &[]) > before);
    std::fs::remove_file(&audit).unwrap();
    std::fs::rename(env.dir.path().join("audit-moved"), &audit).unwrap();
    let start = Instant::now();
    while ready(&env) != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "readyz never recovered"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let lines = env.audit_lines_for(&id_refs);
    let got: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["request_id"].as_str())
        .filter(|id| id.starts_with("lost-"))
        .collect();
    assert_eq!(got, id_refs, "every line arrived, in order");
}
