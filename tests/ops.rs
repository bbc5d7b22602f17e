//! Operations end to end (issue 6): reload under traffic, broken reloads, certificate
//! rotation, draining on SIGTERM, an unwritable audit directory, certificate metrics.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn ops_env() -> Env {
    Env::with(EnvOptions {
        routes: OPS_ROUTES.to_string(),
        ..EnvOptions::default()
    })
}

/// The ops routes with the gateway as a child process (`serve`), listening.
fn ops_process(edit: impl FnOnce(String) -> String) -> (Env, Guarded) {
    let env = Env::with(EnvOptions {
        routes: OPS_ROUTES.to_string(),
        start_gateway: false,
        ..EnvOptions::default()
    });
    std::fs::write(&env.config, edit(config_text(&env))).unwrap();
    let child = Guarded::spawn(
        serve_command(&env)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    wait_listening(env.https);
    wait_child_ready(&env);
    (env, child)
}

fn config_text(env: &Env) -> String {
    std::fs::read_to_string(&env.config).unwrap()
}

#[test]
fn route_change_by_sighup_under_concurrent_traffic_fails_no_request() {
    // A generous upstream read timeout: on a loaded 2-core machine a slow answer must not
    // count as a reload failure (504).
    let (env, mut child) =
        ops_process(|text| text.replace("read_timeout_ms = 1500", "read_timeout_ms = 10000"));
    let token = env.token(json!({}));
    assert_eq!(env.get("/extra", Some(&token), false).status, 404);
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for i in 0..8 {
        let client = env.client(i % 2 == 0);
        let url = env.url("/orders/1");
        let (ok, failed, stop, token) = (ok.clone(), failed.clone(), stop.clone(), token.clone());
        workers.push(env.rt.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match client.get(&url).bearer_auth(&token).send().await {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.bytes().await;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        let what = match other {
                            Ok(r) => format!("status {}", r.status()),
                            Err(e) => format!("error {e:?}"),
                        };
                        eprintln!("failed request: {what}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let base = config_text(&env);
    for n in 0..5 {
        std::thread::sleep(Duration::from_millis(300));
        let text = format!(
            "{base}\n[[routes]]\nname = \"extra\"\npath_prefix = \"/extra\"\nupstream = \"echo\"\nallow_roles = []\n# reload {n}\n"
        );
        std::fs::write(&env.config, text).unwrap();
        send_signal(&child, libc::SIGHUP);
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        env.block_on(w).unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("SIGHUP under traffic: {ok} requests succeeded, {failed} failed, 5 reloads");
    assert!(ok > 50, "traffic flowed: {ok}");
    assert_eq!(failed, 0, "no request failed across 5 reloads");
    assert_eq!(
        env.get("/extra", Some(&token), false).status,
        200,
        "the new route serves"
    );
    let admin = admin_addr_in_config(&env);
    let m = env.block_on(async {
        reqwest::get(format!("http://{admin}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    assert_eq!(
        metric_value(&m, "gatehouse_config_reloads_total", &[("result", "ok")]),
        5.0
    );
    send_signal(&child, libc::SIGTERM);
    assert!(child.wait().unwrap().success());
}

#[test]
fn in_flight_request_finishes_under_the_config_it_started_with() {
    let env = ops_env();
    let client = env.client(false);
    let url = env.url("/slow?ms=1000");
    let inflight = env
        .rt
        .spawn(async move { client.get(url).send().await.map(|r| r.status().as_u16()) });
    std::thread::sleep(Duration::from_millis(300));
    let without_slow = config_text(&env).replace(
        "name = \"slow\"\npath_prefix = \"/slow\"",
        "name = \"slow\"\npath_prefix = \"/gone\"",
    );
    std::fs::write(&env.config, without_slow).unwrap();
    env.gw().reload().expect("valid");
    assert_eq!(
        env.block_on(inflight).unwrap().expect("completes"),
        200,
        "the old route finished it"
    );
    assert_eq!(
        env.get("/slow?ms=1", None, false).status,
        404,
        "new requests see the new config"
    );
}

#[test]
fn jwks_file_is_reread_on_reload() {
    use gatehouse::devkit::{jwks, KeyAlg, SigningKey};
    let env = Env::with(EnvOptions {
        routes: OPS_ROUTES.to_string(),
        start_gateway: false,
        ..EnvOptions::default()
    });
    let iss = "https://static.example";
    let k1 = SigningKey::generate(KeyAlg::ES256).unwrap();
    let k2 = SigningKey::generate(KeyAlg::ES256).unwrap();
    let file = env.dir.path().join("static.jwks.json");
    std::fs::write(&file, jwks(&[&k1]).to_string()).unwrap();
    let text = config_text(&env).replace(
        "[upstreams.echo]",
        &format!("[issuers.static]\nissuer = \"{iss}\"\njwks_file = \"static.jwks.json\"\naudiences = [\"{AUDIENCE}\"]\n\n[upstreams.echo]"),
    );
    std::fs::write(&env.config, text).unwrap();
    let mut env = env;
    env.start_gateway();
    let now = chrono::Utc::now().timestamp();
    let claims = json!({"iss": iss, "aud": AUDIENCE, "sub": "svc", "exp": now + 600, "groups": ["sg-data-stewards"]});
    let t1 = k1.sign(&claims);
    let t2 = k2.sign(&claims);
    assert_eq!(env.get("/orders", Some(&t1), false).status, 200);
    assert_eq!(
        env.get("/orders", Some(&t2), false).status,
        401,
        "k2 is not published yet"
    );
    std::fs::write(&file, jwks(&[&k2]).to_string()).unwrap();
    env.gw().reload().expect("valid");
    assert_eq!(
        env.get("/orders", Some(&t2), false).status,
        200,
        "the new file's key is used"
    );
    assert_eq!(
        env.get("/orders", Some(&t1), false).status,
        401,
        "the removed key is gone"
    );
    std::fs::write(&file, "{\"keys\": []}").unwrap();
    let err = env
        .gw()
        .reload()
        .expect_err("a JWKS file without usable keys is refused");
    assert!(err.to_string().contains("jwks_file"), "{err}");
    assert_eq!(
        env.get("/orders", Some(&t2), false).status,
        200,
        "still the last good keys"
    );
}

#[test]
fn broken_reload_keeps_the_old_config_and_counts_the_error() {
    let env = ops_env();
    let token = env.token(json!({}));
    let before = metric_value(
        &env.metrics(),
        "gatehouse_config_reloads_total",
        &[("result", "error")],
    );
    let good = config_text(&env);
    let broken = good.replace(
        "upstream = \"echo\"\nallow_roles",
        "upstream = \"ecko\"\nallow_roles",
    );
    assert_ne!(good, broken);
    std::fs::write(&env.config, &broken).unwrap();
    let err = env
        .gw()
        .reload()
        .expect_err("an unknown upstream is refused");
    let text = err.to_string();
    assert!(text.contains("unknown upstream \"ecko\""), "{text}");
    assert!(
        text.contains("gatehouse.toml:"),
        "errors name the file as check does: {text}"
    );
    assert_eq!(
        env.get("/orders/1", Some(&token), false).status,
        200,
        "old config still serves"
    );
    let after = metric_value(
        &env.metrics(),
        "gatehouse_config_reloads_total",
        &[("result", "error")],
    );
    assert_eq!(after, before + 1.0);
}

#[test]
fn reload_reports_settings_that_need_a_restart() {
    let env = ops_env();
    let text = config_text(&env);
    let port = env.https.port();
    let moved = text.replace(
        &format!("listen = \"127.0.0.1:{port}\""),
        &format!("listen = \"127.0.0.1:{}\"", free_port()),
    );
    std::fs::write(&env.config, moved).unwrap();
    let restart = env.gw().reload().expect("valid");
    assert!(
        restart.iter().any(|s| s.starts_with("server.listen")),
        "{restart:?}"
    );
    std::fs::write(env.dir.path().join("pseudonym.key"), "a-new-key").unwrap();
    let restart = env.gw().reload().expect("valid");
    assert!(
        restart.iter().any(|s| s.starts_with("audit.pseudonym_key")),
        "{restart:?}"
    );
    assert_eq!(
        env.get("/slow?ms=1", None, false).status,
        200,
        "still serving on the old address"
    );
    // Back to what the process runs with: nothing to restart for any more.
    std::fs::write(&env.config, &text).unwrap();
    std::fs::write(env.dir.path().join("pseudonym.key"), "test-pseudonym-key").unwrap();
    let restart = env.gw().reload().expect("valid");
    assert!(restart.is_empty(), "{restart:?}");
}

/// The leaf certificate a fresh TLS connection is served.
fn served_cert(env: &Env) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    for c in gatehouse::tls::parse_certs(env.pki.ca.cert_pem.as_bytes()).unwrap() {
        roots.add(c).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    env.block_on(async {
        let tcp = tokio::net::TcpStream::connect(env.https).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = connector.connect(name, tcp).await.unwrap();
        tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    })
}

#[test]
fn rotated_server_certificate_is_served_to_new_connections_without_restart() {
    let env = ops_env();
    let old = served_cert(&env);
    let new = env
        .pki
        .issue("localhost", &["localhost", "127.0.0.1"], false)
        .unwrap();
    std::fs::write(env.dir.path().join("certs/server.crt"), &new.cert_pem).unwrap();
    std::fs::write(env.dir.path().join("certs/server.key"), &new.key_pem).unwrap();
    env.gw().reload().expect("rotated cert reloads");
    let now = served_cert(&env);
    assert_ne!(old, now, "a new connection gets the new certificate");
    let want = gatehouse::tls::parse_certs(new.cert_pem.as_bytes()).unwrap()[0].to_vec();
    assert_eq!(now, want);
    assert_eq!(env.get("/slow?ms=1", None, true).status, 200);
}

#[test]
fn certificate_expiry_is_exported_for_every_loaded_certificate() {
    let env = ops_env();
    let m = env.metrics();
    for name in [
        "server",
        "upstream.echo.client",
        "upstream.echo.ca",
        "issuer.corp.ca",
    ] {
        let v = metric_value(
            &m,
            "gatehouse_certificate_expiry_timestamp_seconds",
            &[("name", name)],
        );
        assert!(v > chrono::Utc::now().timestamp() as f64, "{name}: {v}");
    }
}

#[test]
fn unwritable_audit_directory_turns_readyz_503_and_loses_no_line() {
    let env = ops_env();
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

#[test]
fn sigterm_lets_a_slow_in_flight_request_finish_then_exits_0() {
    // A longer read timeout and drain window than the harness default.
    let (env, mut child) = ops_process(|text| {
        text.replace("read_timeout_ms = 1500", "read_timeout_ms = 10000")
            .replace("drain_timeout_s = 5", "drain_timeout_s = 30")
    });
    let client = env.client(false);
    let url = env.url("/slow?ms=2000");
    let inflight = env
        .rt
        .spawn(async move { client.get(url).send().await.map(|r| r.status().as_u16()) });
    std::thread::sleep(Duration::from_millis(500));
    let signalled = Instant::now();
    send_signal(&child, libc::SIGTERM);
    let status = env
        .block_on(inflight)
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(status, 200);
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    // Exits once the request is done, not after the 30 s drain window.
    assert!(
        signalled.elapsed() < Duration::from_secs(15),
        "exited after {:?}",
        signalled.elapsed()
    );
    assert!(
        std::net::TcpStream::connect(env.https).is_err(),
        "no longer listening"
    );
}
