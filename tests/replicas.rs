//! Three replicas behind a client that balances like a load balancer: three `gatehouse
//! serve` processes with one config (each its own ports and audit folder), the devkit
//! issuer and mTLS echo backend shared. Under continuous authenticated traffic, replica A
//! reloads (SIGHUP), replica B drains and exits (SIGTERM) and replica C upgrades itself
//! in place (SIGQUIT). The client retries an idempotent GET on another replica when a
//! connection fails (and keeps a failed replica out for a moment, as a balancer's passive
//! health check does). No request may fail after retry, and every answered request must
//! be in exactly one audit line across the three audit folders.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

struct Replica {
    name: &'static str,
    config: PathBuf,
    https: SocketAddr,
    admin: SocketAddr,
    audit: PathBuf,
    log: PathBuf,
}

/// The env's config with this replica's listener, admin port and audit folder; no
/// redirect listener (its port would clash).
fn replica_config(base: &str, https: SocketAddr, admin: SocketAddr, audit: &str) -> String {
    let mut table = String::new();
    let mut out = String::new();
    for line in base.lines() {
        if line.starts_with('[') {
            table = line.to_string();
        }
        let line = match table.as_str() {
            "[server]" if line.starts_with("listen = ") => format!("listen = \"{https}\""),
            "[server]" if line.starts_with("redirect_http = ") => continue,
            "[admin]" if line.starts_with("listen = ") => format!("listen = \"{admin}\""),
            "[audit]" if line.starts_with("path = ") => format!("path = \"{audit}\""),
            _ => line.to_string(),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

fn spawn(r: &Replica, pid_file: Option<&Path>) -> Guarded {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    c.args(["serve", "-c"]).arg(&r.config);
    if let Some(p) = pid_file {
        c.arg("--pid-file").arg(p);
    }
    let log = std::fs::File::create(&r.log).unwrap();
    Guarded::spawn(
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log)),
    )
}

fn log_tail(r: &Replica) -> String {
    let text = std::fs::read_to_string(&r.log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Waits (up to 60 s) until the replica's `/readyz` answers 200.
fn wait_ready(env: &Env, r: &Replica) {
    let url = format!("http://{}/readyz", r.admin);
    let start = Instant::now();
    while env
        .block_on(async { reqwest::get(&url).await.map(|r| r.status().as_u16()) })
        .ok()
        != Some(200)
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "replica {} never became ready:\n{}",
            r.name,
            log_tail(r)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every audit line in `dir`.
fn audit_lines(dir: &Path) -> Vec<Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        for line in std::fs::read_to_string(&f).unwrap().lines() {
            out.push(
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("{}: not a JSON line ({e}): {line}", f.display())),
            );
        }
    }
    out
}

/// Waits (up to 60 s) until `pid` is gone.
fn wait_gone(pid: &Pid, what: &str) {
    let start = Instant::now();
    while pid.alive() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{what} still running"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What the balancing client saw.
#[derive(Default)]
struct Seen {
    /// `x-request-id` of every request answered 200, with the replica that answered.
    answered: Vec<(String, &'static str)>,
    /// Attempts that failed on the connection and were sent again elsewhere.
    retries: usize,
    /// Requests that failed after every retry, or were answered with another status.
    failed: Vec<String>,
}

#[test]
fn three_replicas_reload_drain_and_upgrade_under_load_without_a_failed_request() {
    let env = Env::with(EnvOptions {
        start_gateway: false,
        ..EnvOptions::default()
    });
    // Generous timeouts: on a loaded 2-core machine a slow answer is not a failure.
    let base = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("read_timeout_ms = 1500", "read_timeout_ms = 10000")
        .replace("drain_timeout_s = 5", "drain_timeout_s = 15");
    let ports = free_ports::<6>();
    let names = ["a", "b", "c"];
    let replicas: Vec<Replica> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let https = SocketAddr::from(([127, 0, 0, 1], ports[2 * i]));
            let admin = SocketAddr::from(([127, 0, 0, 1], ports[2 * i + 1]));
            let audit = format!("audit-{name}");
            let config = env.dir.path().join(format!("gatehouse-{name}.toml"));
            std::fs::write(&config, replica_config(&base, https, admin, &audit)).unwrap();
            Replica {
                name,
                config,
                https,
                admin,
                audit: env.dir.path().join(audit),
                log: env.dir.path().join(format!("replica-{name}.log")),
            }
        })
        .collect();
    let (ra, rb, rc) = (&replicas[0], &replicas[1], &replicas[2]);
    let c_pid_file = env.dir.path().join("c.pid");
    let mut a = spawn(ra, None);
    let mut b = spawn(rb, None);
    let mut c_old = spawn(rc, Some(&c_pid_file));
    for r in &replicas {
        wait_ready(&env, r);
    }
    let token = env.token(json!({}));

    // The balancing client: round robin over the replicas; a connection failure marks the
    // replica out for a second and the same GET goes to the next one.
    let targets: Arc<Vec<(&'static str, String)>> = Arc::new(
        replicas
            .iter()
            .map(|r| (r.name, format!("https://{}/orders/1", r.https)))
            .collect(),
    );
    let out_until: Arc<Mutex<Vec<Instant>>> = Arc::new(Mutex::new(vec![Instant::now(); 3]));
    let next = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut workers = Vec::new();
    for w in 0..4 {
        let client = env.client(w % 2 == 1);
        let (targets, out_until, next, stop, seen, token) = (
            targets.clone(),
            out_until.clone(),
            next.clone(),
            stop.clone(),
            seen.clone(),
            token.clone(),
        );
        workers.push(env.rt.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let mut attempt = 0;
                let mut errors = Vec::new();
                loop {
                    attempt += 1;
                    // The next replica in turn that is not marked out (any, if all are).
                    let start = next.fetch_add(1, Ordering::Relaxed);
                    let idx = {
                        let out = out_until.lock().unwrap();
                        let now = Instant::now();
                        (0..3)
                            .map(|k| (start + k) % 3)
                            .find(|&i| out[i] <= now)
                            .unwrap_or(start % 3)
                    };
                    let (name, url) = (targets[idx].0, &targets[idx].1);
                    match client.get(url).bearer_auth(&token).send().await {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let id = r
                                .headers()
                                .get("x-request-id")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string);
                            let body = r.bytes().await;
                            let mut s = seen.lock().unwrap();
                            match (status, id, body) {
                                (200, Some(id), Ok(_)) => s.answered.push((id, name)),
                                (status, id, body) => s.failed.push(format!(
                                    "replica {name}: status {status}, id {id:?}, body {:?}",
                                    body.map(|b| String::from_utf8_lossy(&b).into_owned())
                                )),
                            }
                            break;
                        }
                        Err(e) => {
                            errors.push(format!("replica {name}: {e:?}"));
                            out_until.lock().unwrap()[idx] =
                                Instant::now() + Duration::from_secs(1);
                            if attempt >= 10 {
                                seen.lock().unwrap().failed.push(errors.join("; "));
                                break;
                            }
                            seen.lock().unwrap().retries += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    let answered = |seen: &Mutex<Seen>| seen.lock().unwrap().answered.len();
    let wait_answered = |n: usize| {
        let start = Instant::now();
        while answered(&seen) < n {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "traffic does not flow: {} answered, failures {:?}",
                answered(&seen),
                seen.lock().unwrap().failed
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_answered(30);

    // A: reload with one more route.
    let extra = "\n[[routes]]\nname = \"extra\"\npath_prefix = \"/extra\"\nupstream = \"echo\"\nallow_roles = []\n";
    let a_text = std::fs::read_to_string(&ra.config).unwrap();
    std::fs::write(&ra.config, format!("{a_text}{extra}")).unwrap();
    send_signal(&a, libc::SIGHUP);
    wait_answered(answered(&seen) + 30);

    // B: drain and exit.
    send_signal(&b, libc::SIGTERM);
    let b_exit = b.wait().unwrap();
    wait_answered(answered(&seen) + 30);

    // C: upgrade in place; the old process exits once the new one is ready.
    let c_old_pid = c_old.id() as i32;
    let start = Instant::now();
    while read_pid(&c_pid_file) != Some(c_old_pid) {
        assert!(start.elapsed() < Duration::from_secs(30), "no pid file");
        std::thread::sleep(Duration::from_millis(50));
    }
    send_signal(&c_old, libc::SIGQUIT);
    let c_old_exit = c_old.wait().unwrap();
    let c_new = Pid(read_pid(&c_pid_file).expect("the new process wrote its pid"));
    let by_new_c_before = seen
        .lock()
        .unwrap()
        .answered
        .iter()
        .filter(|(_, n)| *n == "c")
        .count();
    // Traffic on, until the new C has answered some of it.
    let start = Instant::now();
    loop {
        let by_c = seen
            .lock()
            .unwrap()
            .answered
            .iter()
            .filter(|(_, n)| *n == "c")
            .count();
        if by_c >= by_new_c_before + 20 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the new C does not serve:\n{}",
            log_tail(rc)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        env.block_on(w).unwrap();
    }

    assert!(
        b_exit.success(),
        "B exits 0 after its drain: {b_exit:?}\n{}",
        log_tail(rb)
    );
    assert!(
        c_old_exit.success(),
        "the old C exits 0 after the hand-over: {c_old_exit:?}\n{}",
        log_tail(rc)
    );
    assert_ne!(c_new.0, c_old_pid, "a new process took C over");
    assert!(c_new.alive(), "the new C runs");
    // A applied its reload: the new route answers there (and nowhere else).
    let get = |url: String| {
        env.block_on(async {
            let r = env
                .client(false)
                .get(url)
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
            (r.status().as_u16(), id)
        })
    };
    let (status, id) = get(format!("https://{}/extra", ra.https));
    assert_eq!(status, 200, "A serves the reloaded config");
    seen.lock().unwrap().answered.push((id, "a"));
    let (status, id) = get(format!("https://{}/orders/1", rc.https));
    assert_eq!(status, 200, "the new C serves after the old one exited");
    seen.lock().unwrap().answered.push((id, "c"));

    // Stop A and the new C so that every audit line is flushed, then count.
    send_signal(&a, libc::SIGTERM);
    let a_exit = a.wait().unwrap();
    assert!(a_exit.success(), "A exits 0: {a_exit:?}");
    c_new.signal(libc::SIGTERM);
    wait_gone(&c_new, "the new C after SIGTERM");

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let mut ids: HashMap<String, Vec<&'static str>> = HashMap::new();
    let mut lines_per_replica = Vec::new();
    for r in &replicas {
        let lines = audit_lines(&r.audit);
        lines_per_replica.push((r.name, lines.len()));
        for l in lines {
            let id = l["request_id"]
                .as_str()
                .unwrap_or_else(|| panic!("an audit line without request_id: {l}"))
                .to_string();
            ids.entry(id).or_default().push(r.name);
        }
    }
    let audit_total: usize = lines_per_replica.iter().map(|(_, n)| n).sum();
    let mut per_replica: HashMap<&str, usize> = HashMap::new();
    for (_, n) in &seen.answered {
        *per_replica.entry(n).or_default() += 1;
    }
    println!(
        "replicas: {} requests answered (a {}, b {}, c {}), {} retries, {} failed; audit lines {} (a {}, b {}, c {})",
        seen.answered.len(),
        per_replica.get("a").unwrap_or(&0),
        per_replica.get("b").unwrap_or(&0),
        per_replica.get("c").unwrap_or(&0),
        seen.retries,
        seen.failed.len(),
        audit_total,
        lines_per_replica[0].1,
        lines_per_replica[1].1,
        lines_per_replica[2].1,
    );
    assert!(
        seen.failed.is_empty(),
        "requests failed after retry: {:?}",
        seen.failed
    );
    for (id, replica) in &seen.answered {
        let found = ids.get(id).map(Vec::as_slice).unwrap_or(&[]);
        assert_eq!(
            found,
            [*replica],
            "request {id} answered by {replica} is in the audit logs of {found:?}"
        );
    }
    assert!(
        ids.values().all(|v| v.len() == 1),
        "a request id in more than one audit line"
    );
}
