//! The file watch (issue 12): the config file and every file it names are watched, and a
//! change reloads exactly as SIGHUP does — a Kubernetes ConfigMap or Secret volume's
//! atomic `..data` symlink swap, an in-place write, an editor's write-and-rename. No
//! SIGHUP and no `reload()` call in these tests: only files change, and each test polls
//! (with a deadline) for what a real client sees.
//!
//! The tests run one at a time: the reload counters are per process, and the last test
//! counts the watcher threads of the process.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Polls `f` until it holds, failing after 20 s (a loaded 2-core machine is slow; the
/// watcher itself reacts in well under a second, or within its 5 s poll).
fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

static GENERATION: AtomicU32 = AtomicU32::new(0);

/// What kubelet's atomic writer does to a ConfigMap or Secret volume: the files in a new
/// timestamped folder, a `..data_tmp` symlink to it renamed over `..data`, a
/// `name -> ..data/name` symlink per file (made once), then the old folder deleted.
fn publish(dir: &Path, files: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).unwrap();
    let n = GENERATION.fetch_add(1, Ordering::SeqCst);
    let ts = format!("..2026_12_06_01_00_00.{n:09}");
    std::fs::create_dir(dir.join(&ts)).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(&ts).join(name), text).unwrap();
    }
    let old = std::fs::read_link(dir.join("..data")).ok();
    std::os::unix::fs::symlink(&ts, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    for (name, _) in files {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(name), &link).unwrap();
        }
    }
    if let Some(old) = old {
        std::fs::remove_dir_all(dir.join(old)).unwrap();
    }
}

/// An editor's save: a new file written next to it, renamed over it.
fn save_by_rename(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.swp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn watched_env(routes: &str, issuer_extra: &str) -> Env {
    Env::with(EnvOptions {
        routes: routes.to_string(),
        issuer_extra: issuer_extra.to_string(),
        watch_files: true,
        start_gateway: false,
        ..EnvOptions::default()
    })
}

fn config_text(env: &Env) -> String {
    std::fs::read_to_string(&env.config).unwrap()
}

const EXTRA_ROUTE: &str =
    "\n[[routes]]\nname = \"extra\"\npath_prefix = \"/extra\"\nupstream = \"echo\"\nallow_roles = [\"data-steward\"]\n";

fn reloads(env: &Env, result: &str) -> f64 {
    metric_value(
        &env.metrics(),
        "gatehouse_config_reloads_total",
        &[("result", result)],
    )
}

/// The leaf certificate a new TLS connection is served.
fn served_cert(env: &Env) -> Vec<u8> {
    env.block_on(async {
        let tls = tls_connect(env, b"http/1.1").await;
        tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    })
}

fn der(pem: &str) -> Vec<u8> {
    gatehouse::tls::parse_certs(pem.as_bytes()).unwrap()[0].to_vec()
}

#[test]
fn configmap_symlink_swap_changes_routes_without_sighup() {
    let _one = serial();
    let mut env = watched_env(OPS_ROUTES, "");
    // The config as a mounted ConfigMap: `gatehouse.toml -> ..data/gatehouse.toml`. Its
    // relative paths resolve next to the path as given (the volume), so the
    // certificates and keys the config names are made reachable there.
    let cm = env.dir.path().join("configmap");
    let base = config_text(&env)
        .replace("\"audit\"", &format!("{:?}", env.dir.path().join("audit")))
        .replace(
            "\"pseudonym.key\"",
            &format!("{:?}", env.dir.path().join("pseudonym.key")),
        );
    publish(&cm, &[("gatehouse.toml", &base)]);
    std::os::unix::fs::symlink(env.dir.path().join("certs"), cm.join("certs")).unwrap();
    env.config = cm.join("gatehouse.toml");
    env.start_gateway();
    let token = env.token(json!({}));
    assert_eq!(env.get("/extra/1", Some(&token), false).status, 404);
    assert_eq!(env.get("/orders/1", Some(&token), false).status, 200);

    // A route added.
    publish(&cm, &[("gatehouse.toml", &format!("{base}{EXTRA_ROUTE}"))]);
    wait_for("the added route serves", || {
        env.get("/extra/1", Some(&token), false).status == 200
    });

    // Swapped again: the watch follows `..data` to its new folder. The role that may
    // call /orders changes, so alice (sg-data-stewards) is refused there now.
    let other_role = format!("{base}{EXTRA_ROUTE}").replace(
        "[roles.data-steward]\ngroups = [\"sg-data-stewards\"]",
        "[roles.data-steward]\ngroups = [\"sg-somebody-else\"]",
    );
    assert!(other_role.contains("sg-somebody-else"));
    publish(&cm, &[("gatehouse.toml", &other_role)]);
    wait_for("the changed role applies", || {
        env.get("/orders/1", Some(&token), false).status == 403
    });
    assert_eq!(env.get("/extra/1", Some(&token), false).status, 403);
}

#[test]
fn secret_symlink_swap_rotates_the_server_certificate_for_new_connections() {
    let _one = serial();
    let mut env = watched_env(OPS_ROUTES, "");
    // The server certificate and key as a mounted Secret (kubernetes.io/tls).
    let tls_dir = env.dir.path().join("tls");
    publish(
        &tls_dir,
        &[
            ("tls.crt", &env.pki.server.cert_pem),
            ("tls.key", &env.pki.server.key_pem),
        ],
    );
    let text = config_text(&env)
        .replace("\"certs/server.crt\"", "\"tls/tls.crt\"")
        .replace("\"certs/server.key\"", "\"tls/tls.key\"");
    std::fs::write(&env.config, text).unwrap();
    env.start_gateway();
    assert_eq!(served_cert(&env), der(&env.pki.server.cert_pem));

    let new = env
        .pki
        .issue("localhost", &["localhost", "127.0.0.1"], false)
        .unwrap();
    publish(
        &tls_dir,
        &[("tls.crt", &new.cert_pem), ("tls.key", &new.key_pem)],
    );
    wait_for("new connections get the new certificate", || {
        served_cert(&env) == der(&new.cert_pem)
    });
    assert_eq!(env.get("/slow?ms=1", None, true).status, 200);
}

#[test]
fn a_secret_file_written_in_place_takes_effect() {
    let _one = serial();
    // The introspection client secret is `{ file = "intro.secret" }`.
    let env = {
        let mut env = watched_env(
            OPS_ROUTES,
            "introspection = { url = \"{issuer}/introspect\", client_id = \"gatehouse\", client_secret = { file = \"intro.secret\" } }",
        );
        std::fs::write(env.dir.path().join("intro.secret"), "first-s3cret\n").unwrap();
        env.issuer().register_client(
            "gatehouse",
            "first-s3cret",
            gatehouse::devkit::KeyAlg::RS256,
            json!({}),
        );
        env.start_gateway();
        env
    };
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let opaque = |n: u32| {
        let token = format!("opq_{n}_{}", "7f3a9c2e5b8d1046".repeat(3));
        env.issuer().register_opaque(
            &token,
            json!({
                "iss": env.issuer().issuer_url(),
                "aud": AUDIENCE,
                "sub": "bob",
                "groups": ["sg-data-stewards"],
                "exp": exp,
            }),
        );
        token
    };
    let first = opaque(1);
    assert_eq!(env.get("/orders/1", Some(&first), false).status, 200);

    // The IdP rotates the client secret: gatehouse's is refused (an outage: 503).
    env.issuer().register_client(
        "gatehouse",
        "second-s3cret",
        gatehouse::devkit::KeyAlg::RS256,
        json!({}),
    );
    let second = opaque(2);
    assert_eq!(env.get("/orders/1", Some(&second), false).status, 503);

    // The secret file is rewritten in place (same inode): the next introspection uses it.
    std::fs::write(env.dir.path().join("intro.secret"), "second-s3cret\n").unwrap();
    wait_for("the rotated client secret is used", || {
        env.get("/orders/1", Some(&second), false).status == 200
    });
}

#[test]
fn a_broken_config_keeps_the_old_one_and_counts_one_failure_then_a_fix_applies() {
    let _one = serial();
    let mut env = watched_env(OPS_ROUTES, "");
    env.start_gateway();
    let token = env.token(json!({}));
    let good = config_text(&env);
    let failures = reloads(&env, "error");

    let broken = good.replace("upstream = \"echo\"", "upstream = \"ecko\"");
    assert_ne!(good, broken);
    save_by_rename(&env.config, &broken);
    wait_for("the broken config is refused and counted", || {
        reloads(&env, "error") == failures + 1.0
    });
    assert_eq!(
        env.get("/orders/1", Some(&token), false).status,
        200,
        "the old config still serves"
    );
    assert_eq!(env.get("/extra/1", Some(&token), false).status, 404);

    save_by_rename(&env.config, &format!("{good}{EXTRA_ROUTE}"));
    wait_for("the fixed config applies", || {
        env.get("/extra/1", Some(&token), false).status == 200
    });
    assert_eq!(
        reloads(&env, "error"),
        failures + 1.0,
        "one failure for one broken save: a refused file is not retried until it changes"
    );
}

#[test]
fn a_missing_file_the_new_config_names_is_waited_for() {
    let _one = serial();
    let mut env = watched_env(OPS_ROUTES, "");
    env.start_gateway();
    let failures = reloads(&env, "error");
    // The config now names a certificate and key that are not there yet: refused.
    let text = config_text(&env)
        .replace("\"certs/server.crt\"", "\"certs/next.crt\"")
        .replace("\"certs/server.key\"", "\"certs/next.key\"");
    save_by_rename(&env.config, &text);
    wait_for("the config naming missing files is refused", || {
        reloads(&env, "error") > failures
    });
    assert_eq!(served_cert(&env), der(&env.pki.server.cert_pem));
    // They appear (key first, then the certificate): the reload is tried again and
    // succeeds.
    let next = env
        .pki
        .issue("localhost", &["localhost", "127.0.0.1"], false)
        .unwrap();
    std::fs::write(env.dir.path().join("certs/next.key"), &next.key_pem).unwrap();
    std::fs::write(env.dir.path().join("certs/next.crt"), &next.cert_pem).unwrap();
    wait_for("the new certificate is served", || {
        served_cert(&env) == der(&next.cert_pem)
    });
}

#[test]
fn watch_files_false_waits_for_sighup_which_can_turn_it_on() {
    let _one = serial();
    let mut env = Env::with(EnvOptions {
        routes: OPS_ROUTES.to_string(),
        watch_files: false,
        ..EnvOptions::default()
    });
    let token = env.token(json!({}));
    let good = config_text(&env);
    // Turned on by a reload, as SIGHUP does (and a route added with it).
    std::fs::write(
        &env.config,
        format!("{good}{EXTRA_ROUTE}").replace("watch_files = false", "watch_files = true"),
    )
    .unwrap();
    env.gw().reload().expect("valid");
    assert_eq!(env.get("/extra/1", Some(&token), false).status, 200);
    // From now on a change applies by itself.
    std::fs::write(
        &env.config,
        good.replace("watch_files = false", "watch_files = true"),
    )
    .unwrap();
    wait_for("the removed route is gone", || {
        env.get("/extra/1", Some(&token), false).status == 404
    });
    env.gw.take().unwrap().stop();
}

/// Threads of this process whose name starts with `prefix`.
fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| t.ok())
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}

#[test]
fn stopping_the_gateway_stops_the_watcher() {
    let _one = serial();
    // The inotify thread `notify` runs for a watcher ("notify-rs inotify loop", cut to
    // 15 characters by the kernel) and the background runtime the watcher task runs on.
    const WATCHER: &str = "notify-rs inoti";
    const BACKGROUND: &str = "gatehouse-bg";
    wait_for("nothing left by an earlier test", || {
        threads_named(WATCHER) + threads_named(BACKGROUND) == 0
    });
    for _ in 0..3 {
        let mut env = watched_env(OPS_ROUTES, "");
        env.start_gateway();
        wait_for("the watcher runs", || threads_named(WATCHER) == 1);
        env.gw.take().unwrap().stop();
        wait_for("the watcher and background threads are gone", || {
            threads_named(WATCHER) + threads_named(BACKGROUND) == 0
        });
    }
}

#[test]
fn a_rotated_pseudonym_key_file_applies_to_later_audit_lines() {
    let _one = serial();
    let mut env = watched_env(OPS_ROUTES, "");
    env.start_gateway();
    let token = env.token(json!({}));
    let subject_of = |env: &Env, id: &str| -> String {
        let r = env.send(
            reqwest::Method::GET,
            "/orders/1",
            Some(&token),
            &[("x-request-id", id)],
            None,
            false,
        );
        assert_eq!(r.status, 200);
        let lines = env.audit_lines_for(&[id]);
        let line = lines
            .iter()
            .find(|l| l["request_id"] == id)
            .unwrap_or_else(|| panic!("no audit line for {id}"));
        line["subject"].as_str().unwrap().to_string()
    };
    let before = subject_of(&env, "before-rotation");
    let ok = reloads(&env, "ok");
    std::fs::write(
        env.dir.path().join("pseudonym.key"),
        "another-pseudonym-key-of-32-bytes",
    )
    .unwrap();
    // The change is seen and reloads, and later lines carry pseudonyms under the new
    // key (a rotated Kubernetes Secret takes effect in running pods) ...
    wait_for("the key file change reloads", || reloads(&env, "ok") > ok);
    let after = subject_of(&env, "after-rotation");
    assert_ne!(after, before);
    // ... stable under it, and the same as a fresh process with that key gives.
    assert_eq!(subject_of(&env, "after-rotation-2"), after);
    env.gw.take().unwrap().stop();
    env.start_gateway();
    assert_eq!(subject_of(&env, "after-restart"), after);
}
