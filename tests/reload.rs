//! Reload end to end (SIGHUP and `Gatehouse::reload`): route changes under traffic, a
//! request in flight finishing under its own config, broken reloads keeping the old config,
//! settings that need a restart, issuers and their key stores (kept, refetched, removed),
//! certificate pairs and rotation, and concurrent reloads.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// A new server certificate and key for localhost from the env's dev CA.
fn reissued_server_cert(env: &Env) -> gatehouse::devkit::CertPair {
    env.pki
        .issue("localhost", &["localhost", "127.0.0.1"], false)
        .unwrap()
}

/// A reload that changes an issuer's non-key settings (audiences, leeway_s, claims, ca)
/// keeps its live keys: with the IdP unreachable, tokens still pass and /readyz stays 200.
#[test]
fn reload_changing_an_issuer_audience_keeps_its_keys_while_the_idp_is_down() {
    let env = ops_env(true);
    let token = env.token(json!({}));
    assert_eq!(env.get("/orders/1", Some(&token), false).status, 200);
    // The IdP has a blip; meanwhile ops add a second audience to the issuer.
    env.issuer().set_down(true);
    edit_config(
        &env,
        &format!("audiences = [\"{AUDIENCE}\"]"),
        &format!("audiences = [\"{AUDIENCE}\", \"api://also-accepted\"]"),
    );
    env.gw().reload().expect("valid config");
    let r = env.get("/orders/1", Some(&env.token(json!({"n": 1}))), false);
    let (ready, why) = plain_get(env.gw().admin_addr.unwrap(), "/readyz");
    assert_eq!(
        (r.status, ready),
        (200, 200),
        "SPEC 3.4: a failed refresh keeps serving with the last good keys; got {} {} / readyz {ready} {why}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
}

/// A reload that leaves an issuer unchanged reuses its key store: no refetch.
#[test]
fn reload_without_issuer_change_reuses_the_live_key_store() {
    let env = ops_env(true);
    let token = env.token(json!({}));
    assert_eq!(env.get("/orders/1", Some(&token), false).status, 200);
    let before = (
        env.issuer().jwks_requests(),
        env.issuer().discovery_requests(),
    );
    edit_config(&env, "name = \"slow\"", "name = \"slow2\"");
    env.gw().reload().expect("valid");
    env.issuer().set_down(true);
    // Keys survive the reload and the IdP being down.
    assert_eq!(
        env.get("/orders/1", Some(&env.token(json!({"n": 2}))), false)
            .status,
        200
    );
    assert_eq!(
        (
            env.issuer().jwks_requests(),
            env.issuer().discovery_requests()
        ),
        before,
        "no refetch for an unchanged issuer"
    );
}

/// `gatehouse_jwks_keys` of an issuer removed by a reload is no longer exported.
#[test]
fn jwks_keys_gauge_of_a_removed_issuer_disappears_after_reload() {
    use gatehouse::devkit::{jwks, KeyAlg, SigningKey};
    let env = ops_env(true);
    let k = SigningKey::generate(KeyAlg::ES256).unwrap();
    std::fs::write(
        env.dir.path().join("ghost.jwks.json"),
        jwks(&[&k]).to_string(),
    )
    .unwrap();
    let base = config_text(&env);
    edit_config(&env,
        "[upstreams.echo]",
        &format!("[issuers.review-ghost]\nissuer = \"https://ghost.example\"\njwks_file = \"ghost.jwks.json\"\naudiences = [\"{AUDIENCE}\"]\n\n[upstreams.echo]"),
    );
    env.gw().reload().expect("valid");
    let label = "issuer=\"review-ghost\"";
    assert!(has_series(&env.metrics(), "gatehouse_jwks_keys", label));
    std::fs::write(&env.config, base).unwrap();
    env.gw().reload().expect("valid");
    assert!(
        !has_series(&env.metrics(), "gatehouse_jwks_keys", label),
        "the removed issuer is still exported as holding keys"
    );
}

/// An issuer whose keys never loaded is exported as `gatehouse_jwks_keys` 0, so the
/// "no keys" alert can fire for it.
#[test]
fn jwks_keys_gauge_is_zero_for_an_issuer_that_never_loaded() {
    let mut env = Env::with(EnvOptions {
        routes: OPS_ROUTES.to_string(),
        start_gateway: false,
        issuer_down_at_start: true,
        ..EnvOptions::default()
    });
    edit_config(&env, "[issuers.corp]", "[issuers.review-never]");
    let mut opts = gatehouse::server::Options::new(&env.config);
    opts.wait_ready = Duration::from_millis(500);
    env.gw = Some(gatehouse::server::Gatehouse::start(opts).unwrap());
    let (ready, _) = plain_get(env.gw().admin_addr.unwrap(), "/readyz");
    assert_eq!(ready, 503);
    let m = env.metrics();
    assert!(
        has_series(&m, "gatehouse_jwks_keys", "issuer=\"review-never\""),
        "no gatehouse_jwks_keys series for an issuer without keys"
    );
}

/// A removed issuer's refresh loop stops.
#[test]
fn removed_issuer_stops_refreshing_its_keys() {
    let env = ops_env(true);
    let uri = env.issuer().jwks_uri();
    let base = config_text(&env);
    edit_config(&env,
        "[upstreams.echo]",
        &format!("[issuers.review-tmp]\nissuer = \"https://tmp.example\"\njwks_uri = \"{uri}\"\nca = \"certs/ca.crt\"\njwks_refresh_s = 30\naudiences = [\"{AUDIENCE}\"]\n\n[upstreams.echo]"),
    );
    let before = env.issuer().jwks_requests();
    env.gw().reload().expect("valid");
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.issuer().jwks_requests() == before {
        assert!(Instant::now() < deadline, "the new issuer never fetched");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::write(&env.config, base).unwrap();
    env.gw().reload().expect("valid");
    let after_removal = env.issuer().jwks_requests();
    // A leaked refresh loop would fetch again 30 s after its first fetch.
    std::thread::sleep(Duration::from_secs(38));
    assert_eq!(env.issuer().jwks_requests(), after_removal);
}

/// A key replaced before its certificate (non-atomic renewal) is refused as a pair and the
/// old pair kept; once both are in place the next reload serves them.
#[test]
fn key_written_before_certificate_is_refused_then_the_pair_applies() {
    let env = ops_env(true);
    let old = served_cert(&env);
    let new = reissued_server_cert(&env);
    // certbot-style non-atomic replace: the key lands first, SIGHUP arrives in between.
    std::fs::write(env.dir.path().join("certs/server.key"), &new.key_pem).unwrap();
    let err = env.gw().reload().expect_err("mismatched pair refused");
    assert!(err.to_string().contains("server.key"), "{err}");
    assert_eq!(served_cert(&env), old, "old pair still served");
    assert_eq!(env.get("/slow?ms=1", None, false).status, 200);
    std::fs::write(env.dir.path().join("certs/server.crt"), &new.cert_pem).unwrap();
    env.gw().reload().expect("matching pair");
    let want = gatehouse::tls::parse_certs(new.cert_pem.as_bytes()).unwrap()[0].to_vec();
    assert_eq!(served_cert(&env), want);
}

/// The certificate expiry gauge follows a rotated server certificate and drops the
/// certificates of a removed upstream.
#[test]
fn certificate_expiry_gauge_follows_rotation_and_upstream_removal() {
    // A child process: the gauge is process-global and reset on every (in-process) start.
    let env = ops_env(false);
    let base = config_text(&env);
    // A second upstream whose certificates must vanish from the gauge once removed.
    std::fs::write(
        &env.config,
        base.replacen(
            "[[routes]]",
            "[upstreams.extra]\naddrs = [\"127.0.0.1:9\"]\nsni = \"localhost\"\nca = \"certs/ca.crt\"\nclient_cert = \"certs/client.crt\"\nclient_key = \"certs/client.key\"\n\n[[routes]]",
            1,
        ),
    )
    .unwrap();
    let admin = admin_addr_of(&env);
    let mut p = Proc::serve(&env, "expiry");
    p.wait_listening(env.https);
    let m = plain_get(admin, "/metrics").1;
    let name = "gatehouse_certificate_expiry_timestamp_seconds";
    assert!(
        has_series(&m, name, "name=\"upstream.extra.client\""),
        "{m}"
    );
    let now = std::time::SystemTime::now();
    let not_after = now + Duration::from_secs(200 * 86400);
    let new = env
        .pki
        .issue_with_validity(
            "localhost",
            &["localhost", "127.0.0.1"],
            false,
            now - Duration::from_secs(86400),
            not_after,
        )
        .unwrap();
    std::fs::write(env.dir.path().join("certs/server.crt"), &new.cert_pem).unwrap();
    std::fs::write(env.dir.path().join("certs/server.key"), &new.key_pem).unwrap();
    std::fs::write(&env.config, &base).unwrap();
    p.signal(libc::SIGHUP);
    wait_reloads(admin, 1.0);
    let m = plain_get(admin, "/metrics").1;
    let want = gatehouse::tls::not_after(
        &gatehouse::tls::parse_certs(new.cert_pem.as_bytes()).unwrap()[0],
    )
    .unwrap() as f64;
    assert_eq!(metric_value(&m, name, &[("name", "server")]), want);
    assert!(
        !has_series(&m, name, "name=\"upstream.extra.client\""),
        "{m}"
    );
    p.signal(libc::SIGTERM);
    assert!(p.wait_exit(Duration::from_secs(20)).unwrap().success());
}

/// Concurrent reloads are serialised and each sees a valid file.
#[test]
fn concurrent_reloads_are_serialised_and_all_apply() {
    let env = ops_env(true);
    let token = env.token(json!({}));
    let base = config_text(&env);
    std::thread::scope(|s| {
        for i in 0..6 {
            let env = &env;
            let base = &base;
            s.spawn(move || {
                for j in 0..3 {
                    // Every writer replaces the file atomically with a valid one.
                    let tmp = env.dir.path().join(format!("cfg-{i}.tmp"));
                    std::fs::write(&tmp, format!("{base}\n# writer {i} pass {j}\n")).unwrap();
                    std::fs::rename(&tmp, &env.config).unwrap();
                    env.gw().reload().expect("every reload sees a valid file");
                }
            });
        }
    });
    assert_eq!(env.get("/orders/1", Some(&token), false).status, 200);
    assert_eq!(env.get("/slow?ms=1", None, true).status, 200);
}

/// `drain_timeout_s` is applied by a reload (the drain reads the live value), so it is not
/// reported as needing a restart.
#[test]
fn reload_reports_or_applies_a_changed_drain_timeout() {
    let env = ops_env(false);
    let old = gatehouse::config::load(&env.config).unwrap();
    edit_config(&env, "drain_timeout_s = 5", "drain_timeout_s = 60");
    let new = gatehouse::config::load(&env.config).unwrap();
    assert_eq!(new.server.drain_timeout_s, 60);
    let restart = gatehouse::reload::needs_restart(&old, &new);
    assert!(
        !restart.iter().any(|s| s.contains("drain_timeout_s")),
        "applied live, not a restart item: {restart:?}"
    );
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
    let env = ops_env(true);
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
    let env = ops_env(true);
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
    let env = ops_env(true);
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
    // A rotated pseudonym key is no restart setting: it applies with the reload.
    std::fs::write(env.dir.path().join("pseudonym.key"), "a-new-key").unwrap();
    let restart = env.gw().reload().expect("valid");
    assert!(
        !restart.iter().any(|s| s.starts_with("audit.pseudonym_key")),
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

#[test]
fn rotated_server_certificate_is_served_to_new_connections_without_restart() {
    let env = ops_env(true);
    let old = served_cert(&env);
    let new = reissued_server_cert(&env);
    std::fs::write(env.dir.path().join("certs/server.crt"), &new.cert_pem).unwrap();
    std::fs::write(env.dir.path().join("certs/server.key"), &new.key_pem).unwrap();
    env.gw().reload().expect("rotated cert reloads");
    let now = served_cert(&env);
    assert_ne!(old, now, "a new connection gets the new certificate");
    let want = gatehouse::tls::parse_certs(new.cert_pem.as_bytes()).unwrap()[0].to_vec();
    assert_eq!(now, want);
    assert_eq!(env.get("/slow?ms=1", None, true).status, 200);
}
