//! Helpers for tests that edit the config file, run `gatehouse` as a child process, signal
//! it and read its admin listener over plain HTTP.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::*;

/// An env with the operations routes (`OPS_ROUTES`), with the gateway started in-process
/// or only its config written.
pub fn ops_env(start_gateway: bool) -> Env {
    Env::with(EnvOptions {
        routes: OPS_ROUTES.to_string(),
        start_gateway,
        ..EnvOptions::default()
    })
}

/// The ops routes with the gateway as a child process (`serve`), listening and ready;
/// `edit` changes the config text first.
pub fn ops_process(edit: impl FnOnce(String) -> String) -> (Env, Guarded) {
    let env = ops_env(false);
    std::fs::write(&env.config, edit(config_text(&env))).unwrap();
    let child = Guarded::spawn(
        serve_command(&env)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_listening(env.https);
    wait_child_ready(&env);
    (env, child)
}

/// The env's config file as it is on disk.
pub fn config_text(env: &Env) -> String {
    std::fs::read_to_string(&env.config).unwrap()
}

/// Replaces the first `from` by `to` in the env's config file (which must contain `from`).
pub fn edit_config(env: &Env, from: &str, to: &str) {
    let t = config_text(env);
    assert!(t.contains(from), "config lacks {from:?}");
    std::fs::write(&env.config, t.replacen(from, to, 1)).unwrap();
}

/// The admin listener's address in the env's config file.
pub fn admin_addr_of(env: &Env) -> SocketAddr {
    admin_addr_in_config(env).parse().unwrap()
}

/// The redirect listener's address in the env's config file.
pub fn redirect_addr_of(env: &Env) -> SocketAddr {
    config_text(env)
        .lines()
        .find(|l| l.starts_with("redirect_http"))
        .and_then(|l| l.split('"').nth(1))
        .unwrap()
        .parse()
        .unwrap()
}

/// Plain HTTP/1.1 GET; (status, body). Status 0 when nothing answered.
pub fn plain_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let raw = String::from_utf8_lossy(&out).into_owned();
    let body = raw
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    (status_of(&raw), body)
}

/// Whether Prometheus text `metrics` has a series of `name` whose labels contain `label`
/// (`issuer="corp"`).
pub fn has_series(metrics: &str, name: &str, label: &str) -> bool {
    metrics
        .lines()
        .any(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
}

/// Successful reloads counted on the admin listener at `admin`.
pub fn reloads_ok(admin: SocketAddr) -> f64 {
    metric_value(
        &plain_get(admin, "/metrics").1,
        "gatehouse_config_reloads_total",
        &[("result", "ok")],
    )
}

/// Waits (up to 10 s) until `n` reloads succeeded.
pub fn wait_reloads(admin: SocketAddr, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while reloads_ok(admin) < n {
        assert!(Instant::now() < deadline, "reload {n} never applied");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The leaf certificate a fresh TLS connection to the env's HTTPS listener is served.
pub fn served_cert(env: &Env) -> Vec<u8> {
    let connector = tls_connector(env, b"http/1.1");
    env.block_on(async {
        let tcp = tokio::net::TcpStream::connect(env.https).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = connector.connect(name, tcp).await.unwrap();
        tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    })
}

/// Runs `gatehouse CMD -c CONFIG` (killed after 30 s); (exit code, stdout and stderr).
pub fn run_cli(env: &Env, cmd: &str) -> (Option<i32>, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    c.args([cmd, "-c"]).arg(&env.config).stdin(Stdio::null());
    // `serve` must not run forever if it unexpectedly starts.
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), all)
}

/// A `gatehouse serve` child process whose stderr goes to `NAME.stderr` in the env's
/// folder, killed if the test ends without reaping it.
pub struct Proc {
    child: Option<Child>,
    stderr_path: std::path::PathBuf,
}

impl Proc {
    pub fn serve(env: &Env, name: &str) -> Proc {
        let stderr_path = env.dir.path().join(format!("{name}.stderr"));
        let child = serve_command(env)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .expect("spawn gatehouse");
        Proc {
            child: Some(child),
            stderr_path,
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn signal(&self, sig: i32) {
        send_signal(self.child.as_ref().unwrap(), sig);
    }

    /// Waits (up to 30 s) until the listener at `addr` accepts; panics if the process
    /// exits first.
    pub fn wait_listening(&mut self, addr: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("gatehouse exited early ({st}); stderr:\n{}", self.stderr());
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "gatehouse never listened on {addr}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The exit status, if the process exited within `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit code, if the process exited within `within`.
    pub fn wait_code(&mut self, within: Duration) -> Option<i32> {
        self.wait_exit(within).and_then(|s| s.code())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
