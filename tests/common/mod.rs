//! Shared harness for the end-to-end tests: a dev PKI, the devkit OIDC issuer, the mTLS
//! echo backend and the gateway in-process on ephemeral loopback ports, driven by reqwest
//! over real TLS. Every `Env` stops what it started when dropped.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gatehouse::devkit::{DevPki, EchoBackend, EchoOptions, IssuerOptions, KeyAlg, MockIssuer};
use gatehouse::server::{Gatehouse, Options};
use serde_json::{json, Value};

mod denials;
mod process;
#[allow(unused_imports)]
pub use denials::*;
#[allow(unused_imports)]
pub use process::*;

pub const AUDIENCE: &str = "api://orders";

/// The example policy (tests/fixtures/policy.toml): roles, a public status route on
/// `/public`, an orders read route with a row filter and an orders update route that
/// needs MFA.
pub const POLICY: &str = include_str!("../fixtures/policy.toml");

/// Default routes: the example policy and a route for any authenticated caller.
pub const DEFAULT_ROUTES: &str = concat!(
    include_str!("../fixtures/policy.toml"),
    r#"
[[routes]]
name = "anyone"
path_prefix = "/profile"
upstream = "echo"
allow_roles = []
"#
);

/// Minimal routes for operations tests: a public `/slow` (the echo backend's delay path)
/// and `/orders` for the data-steward role.
pub const OPS_ROUTES: &str = r#"
[roles.data-steward]
groups = ["sg-data-stewards"]

[[routes]]
name = "slow"
path_prefix = "/slow"
upstream = "echo"
auth = "none"

[[routes]]
name = "orders"
path_prefix = "/orders"
upstream = "echo"
allow_roles = ["data-steward"]
"#;

/// A specific admin route, a specific orders route with a row filter, and a catch-all
/// for any authenticated caller: a common layout ("everything else: just be logged in").
pub const LAYERED_ROUTES: &str = r#"
[roles.data-steward]
groups = ["sg-data-stewards"]
[roles.admin]
groups = ["sg-mdm-admins"]

[[routes]]
name = "admin"
path_prefix = "/admin"
upstream = "echo"
allow_roles = ["admin"]

[[routes]]
name = "orders"
path_prefix = "/orders"
upstream = "echo"
allow_roles = ["data-steward", "admin"]
[[routes.row_filters]]
header = "X-Row-Filter"
value = "region={claims.region}"
except_roles = ["admin"]

[[routes]]
name = "rest"
path_prefix = "/"
upstream = "echo"
allow_roles = []
"#;

/// `DEFAULT_ROUTES` with every route name prefixed, so metric labels are the test's own
/// (metrics are process-wide and tests run in parallel).
pub fn routes_prefixed(prefix: &str) -> String {
    DEFAULT_ROUTES.replace("name = \"", &format!("name = \"{prefix}-"))
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub pki: DevPki,
    pub rt: tokio::runtime::Runtime,
    pub issuer: Option<MockIssuer>,
    pub echo: Option<EchoBackend>,
    pub gw: Option<Gatehouse>,
    pub config: PathBuf,
    pub https: SocketAddr,
}

/// What to vary when building an `Env`.
pub struct EnvOptions {
    /// Everything after `[server]`/`[admin]`/`[issuers.corp]`/`[upstreams.echo]`: roles
    /// and routes (TOML). `{echo}` and `{issuer}` are replaced.
    pub routes: String,
    /// Extra lines for `[server]`.
    pub server_extra: String,
    /// Extra lines for `[issuers.corp]`; `{issuer}` is replaced by the issuer's URL.
    pub issuer_extra: String,
    /// Extra lines for `[upstreams.echo]`.
    pub upstream_extra: String,
    /// Override the upstream address list (TOML array body), e.g. a dead port.
    pub upstream_addrs: Option<String>,
    pub issuer_down_at_start: bool,
    pub start_gateway: bool,
    /// `server.watch_files`: off unless a test is about the file watch, so that tests
    /// that edit the file and reload count exactly their own reloads.
    pub watch_files: bool,
}

impl Default for EnvOptions {
    fn default() -> Self {
        EnvOptions {
            routes: DEFAULT_ROUTES.to_string(),
            server_extra: String::new(),
            issuer_extra: String::new(),
            upstream_extra: String::new(),
            upstream_addrs: None,
            issuer_down_at_start: false,
            start_gateway: true,
            watch_files: false,
        }
    }
}

/// `N` distinct ports that were free a moment ago on 127.0.0.1.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind(("127.0.0.1", 0)).expect("a free port"))
        .collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}

pub fn free_port() -> u16 {
    gatehouse::demo::free_port()
}

/// Gateway logs on stderr only when asked for (`GATEHOUSE_TEST_LOG=1 cargo test ...`):
/// the test harness does not capture them, and they would bury the results.
pub fn init_logs() {
    if std::env::var_os("GATEHOUSE_TEST_LOG").is_some() {
        gatehouse::logging::init(gatehouse::logging::LogFormat::Pretty);
    }
}

impl Env {
    pub fn start() -> Env {
        Env::with(EnvOptions::default())
    }

    pub fn with(o: EnvOptions) -> Env {
        init_logs();
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = DevPki::generate().expect("pki");
        pki.write_to(&dir.path().join("certs"))
            .expect("write certs");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let issuer = rt
            .block_on(MockIssuer::start(
                &pki.server,
                IssuerOptions {
                    audience: AUDIENCE.into(),
                    algs: vec![KeyAlg::RS256, KeyAlg::ES256],
                    ..IssuerOptions::default()
                },
            ))
            .expect("issuer");
        issuer.register_client(
            "billing-sync",
            "s3cret",
            KeyAlg::ES256,
            json!({"region": "eu-west"}),
        );
        if o.issuer_down_at_start {
            issuer.set_down(true);
        }
        let echo = rt
            .block_on(EchoBackend::start(
                &pki.backend,
                &pki.ca.cert_pem,
                EchoOptions::default(),
            ))
            .expect("echo");
        // Held together so that the three are distinct (the config refuses a clash).
        let [https_port, admin_port, redirect_port] = free_ports::<3>();
        let addrs = o
            .upstream_addrs
            .clone()
            .unwrap_or_else(|| format!("\"{}\"", echo.addr()));
        let text = format!(
            r#"[server]
listen = "127.0.0.1:{https_port}"
redirect_http = "127.0.0.1:{redirect_port}"
cert = "certs/server.crt"
key = "certs/server.key"
drain_timeout_s = 5
threads = 2
{server_extra}
watch_files = {watch_files}

[admin]
listen = "127.0.0.1:{admin_port}"

[audit]
path = "audit"
pseudonym_key = {{ file = "pseudonym.key" }}

[issuers.corp]
issuer = "{issuer}"
discovery = true
ca = "certs/ca.crt"
audiences = ["{AUDIENCE}"]
{issuer_extra}

[upstreams.echo]
addrs = [{addrs}]
sni = "localhost"
ca = "certs/ca.crt"
client_cert = "certs/client.crt"
client_key = "certs/client.key"
connect_timeout_ms = 1000
read_timeout_ms = 1500
{upstream_extra}

{routes}
"#,
            server_extra = o.server_extra,
            watch_files = o.watch_files,
            issuer = issuer.issuer_url(),
            issuer_extra = o.issuer_extra.replace("{issuer}", &issuer.issuer_url()),
            upstream_extra = o.upstream_extra,
            routes = o
                .routes
                .replace("{echo}", &echo.addr().to_string())
                .replace("{issuer}", &issuer.issuer_url()),
        );
        let config = dir.path().join("gatehouse.toml");
        std::fs::write(&config, text).unwrap();
        std::fs::write(dir.path().join("pseudonym.key"), "test-pseudonym-key").unwrap();
        let mut env = Env {
            dir,
            pki,
            rt,
            issuer: Some(issuer),
            echo: Some(echo),
            gw: None,
            config,
            https: SocketAddr::from(([127, 0, 0, 1], https_port)),
        };
        if o.start_gateway {
            env.start_gateway();
        }
        env
    }

    pub fn start_gateway(&mut self) {
        let mut opts = Options::new(&self.config);
        opts.wait_ready = Duration::from_secs(5);
        self.gw = Some(Gatehouse::start(opts).expect("gateway starts"));
    }

    pub fn gw(&self) -> &Gatehouse {
        self.gw.as_ref().expect("gateway running")
    }

    pub fn issuer(&self) -> &MockIssuer {
        self.issuer.as_ref().unwrap()
    }

    pub fn echo(&self) -> &EchoBackend {
        self.echo.as_ref().unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{}", self.https.port(), path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.gw().admin_addr.unwrap(), path)
    }

    /// A client trusting the dev CA. `h2`: HTTP/2 only (ALPN h2), else HTTP/1.1 only.
    pub fn client(&self, h2: bool) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(self.pki.ca.cert_pem.as_bytes()).unwrap();
        let b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(20));
        let b = if h2 {
            b.http2_prior_knowledge()
        } else {
            b.http1_only()
        };
        b.build().unwrap()
    }

    /// A token from the issuer with sensible defaults for alice, merged with `claims`.
    pub fn token(&self, claims: Value) -> String {
        let mut base = json!({
            "sub": "alice",
            "email": "alice@example.com",
            "groups": ["sg-data-stewards"],
            "region": "eu-west",
            "scope": "orders.read orders.write",
            "amr": ["pwd", "mfa"],
        });
        if let (Some(b), Some(c)) = (base.as_object_mut(), claims.as_object()) {
            for (k, v) in c {
                b.insert(k.clone(), v.clone());
            }
        }
        self.issuer().mint(KeyAlg::RS256, base)
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// GET through the gateway; returns (status, headers, body).
    pub fn get(&self, path: &str, token: Option<&str>, h2: bool) -> Resp {
        self.send(reqwest::Method::GET, path, token, &[], None, h2)
    }

    pub fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
        h2: bool,
    ) -> Resp {
        let client = self.client(h2);
        self.block_on(async {
            let mut req = client.request(method, self.url(path));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            if let Some(b) = body {
                req = req.body(b);
            }
            let resp = req.send().await.expect("request goes through");
            let status = resp.status().as_u16();
            let version = resp.version();
            let headers = resp.headers().clone();
            let body = resp.bytes().await.unwrap().to_vec();
            Resp {
                status,
                version,
                headers,
                body,
            }
        })
    }

    /// Every audit line written so far, waiting (up to 5 s) until one carries each of
    /// `request_ids`: the line is written after the response has gone out.
    pub fn audit_lines_for(&self, request_ids: &[&str]) -> Vec<Value> {
        let start = std::time::Instant::now();
        loop {
            let lines = self.audit_lines();
            let all = request_ids
                .iter()
                .all(|id| lines.iter().any(|l| l["request_id"] == *id));
            if all || start.elapsed() > Duration::from_secs(5) {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every audit line written so far (flushes first).
    pub fn audit_lines(&self) -> Vec<Value> {
        let audit = self.gw().shared.audit.clone();
        self.gw().io().block_on(audit.flush());
        let mut out = Vec::new();
        let mut files: Vec<_> = std::fs::read_dir(self.dir.path().join("audit"))
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        for f in files {
            for line in std::fs::read_to_string(f).unwrap().lines() {
                out.push(serde_json::from_str(line).expect("audit lines are JSON"));
            }
        }
        out
    }

    pub fn metrics(&self) -> String {
        self.block_on(async {
            reqwest::get(self.admin_url("/metrics"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        })
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(gw) = self.gw.take() {
            gw.stop();
        }
        let issuer = self.issuer.take();
        let echo = self.echo.take();
        self.rt.block_on(async {
            if let Some(i) = issuer {
                i.shutdown().await;
            }
            if let Some(e) = echo {
                e.shutdown().await;
            }
        });
    }
}

pub struct Resp {
    pub status: u16,
    pub version: reqwest::Version,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl std::fmt::Debug for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body = String::from_utf8_lossy(&self.body);
        write!(f, "{} {:?} {body}", self.status, self.headers)
    }
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }

    /// Values of a header the echo backend received (lower-case name).
    pub fn echoed(&self, name: &str) -> Vec<String> {
        let v = self.json();
        v["headers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p[0].as_str() == Some(name))
            .map(|p| p[1].as_str().unwrap().to_string())
            .collect()
    }
}

pub fn shared<T>(t: T) -> Arc<T> {
    Arc::new(t)
}

/// A TLS client trusting the dev CA, offering ALPN `alpn` (`http/1.1` or `h2`) only.
pub fn tls_connector(env: &Env, alpn: &[u8]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in gatehouse::tls::parse_certs(env.pki.ca.cert_pem.as_bytes()).unwrap() {
        roots.add(c).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// A TLS connection to the gateway that negotiated ALPN `alpn`.
pub async fn tls_connect(
    env: &Env,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(env.https).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tls_connector(env, alpn).connect(name, tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
    tls
}

/// Sends raw bytes over TLS (HTTP/1.1) and returns the raw response text: for requests a
/// well-behaved client would normalise (dot segments) or refuse to send.
pub fn raw_request(env: &Env, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    env.block_on(async {
        let mut tls = tls_connect(env, b"http/1.1").await;
        tls.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    })
}

/// `GET target` over raw TLS (HTTP/1.1, `Connection: close`) with an optional bearer
/// token and `extra` header lines (each ending in CRLF); the raw response text.
pub fn raw_get(env: &Env, target: &str, token: Option<&str>, extra: &str) -> String {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    raw_request(
        env,
        &format!(
            "GET {target} HTTP/1.1\r\nHost: localhost\r\n{auth}{extra}Connection: close\r\n\r\n"
        ),
    )
}

/// The status code of a raw HTTP/1 response; 0 when there is no status line.
pub fn status_of(raw: &str) -> u16 {
    raw.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The samples of Prometheus text `text`: (series name, labels, value).
fn samples(text: &str) -> impl Iterator<Item = (&str, Vec<(&str, &str)>, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (name, label_text) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = label_text
                .split("\",")
                .filter(|p| !p.is_empty())
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| (k.trim(), v.trim_matches('"')))
                .collect();
            Some((name, labels, value.parse::<f64>().unwrap_or(0.0)))
        })
}

/// Sum of the samples of metric `name` (exact series name, e.g.
/// `gatehouse_auth_decisions_total`) in Prometheus text `text` whose labels include every
/// `(key, value)` pair of `labels`; 0 when none matches.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(text)
        .filter(|(n, pairs, _)| *n == name && labels.iter().all(|want| pairs.contains(want)))
        .map(|(_, _, v)| v)
        .sum()
}

/// The value of the one sample `name{labels}` whose label set is exactly `labels` (in any
/// order); `None` when there is no such series.
pub fn metric_sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(text)
        .find(|(n, pairs, _)| {
            *n == name && pairs.len() == labels.len() && labels.iter().all(|l| pairs.contains(l))
        })
        .map(|(_, _, v)| v)
}

/// `gatehouse serve -c CONFIG` for this env, to run as a child process (set stdio, spawn).
pub fn serve_command(env: &Env) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    c.args(["serve", "-c"])
        .arg(&env.config)
        .stdin(std::process::Stdio::null());
    c
}

/// Waits (up to 20 s) until something accepts TCP connections on `addr`.
pub fn wait_listening(addr: SocketAddr) {
    let start = std::time::Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "nothing listening on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends a Unix signal to a child process.
pub fn send_signal(child: &std::process::Child, sig: i32) {
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

/// An env whose issuer `corp` also introspects opaque tokens (RFC 7662 at the devkit
/// issuer), with one active opaque token registered for bob (group sg-data-stewards,
/// scope orders.read, region us-east); returns the env and that token.
pub fn introspection_env(routes: String) -> (Env, String) {
    let var = format!("GH_TEST_INTROSPECTION_SECRET_{}", std::process::id());
    std::env::set_var(&var, "intro-s3cret");
    let mut env = Env::with(EnvOptions {
        routes,
        issuer_extra: format!(
            "introspection = {{ url = \"{{issuer}}/introspect\", client_id = \"gatehouse\", client_secret = {{ env = \"{var}\" }} }}"
        ),
        start_gateway: false,
        ..EnvOptions::default()
    });
    env.issuer().register_client(
        "gatehouse",
        "intro-s3cret",
        gatehouse::devkit::KeyAlg::RS256,
        serde_json::json!({}),
    );
    env.start_gateway();
    let opaque = format!("opq_{}", "7f3a9c2e5b8d1046".repeat(3));
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    env.issuer().register_opaque(
        &opaque,
        serde_json::json!({
            "iss": env.issuer().issuer_url(),
            "aud": AUDIENCE,
            "sub": "bob",
            "email": "bob@example.com",
            "groups": ["sg-data-stewards"],
            "scope": "orders.read",
            "region": "us-east",
            "exp": exp,
        }),
    );
    (env, opaque)
}

/// The admin listener's address as written in the env's config file (for a gateway run
/// as a child process).
pub fn admin_addr_in_config(env: &Env) -> String {
    std::fs::read_to_string(&env.config)
        .unwrap()
        .lines()
        .skip_while(|l| *l != "[admin]")
        .nth(1)
        .and_then(|l| l.split('"').nth(1))
        .expect("an [admin] listen line")
        .to_string()
}

/// Waits (up to 20 s) until a child-process gateway's `/readyz` answers 200: it listens
/// before its issuer keys are in, and a request in between would get a 503.
pub fn wait_child_ready(env: &Env) {
    let ready = format!("http://{}/readyz", admin_addr_in_config(env));
    let start = std::time::Instant::now();
    while env
        .block_on(async { reqwest::get(&ready).await.map(|r| r.status().as_u16()) })
        .ok()
        != Some(200)
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the gateway never became ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed (and reaped) when dropped, so a failing test does not leave a
/// gateway running. Derefs to the `Child`.
pub struct Guarded(pub std::process::Child);

impl Guarded {
    pub fn spawn(cmd: &mut std::process::Command) -> Guarded {
        Guarded(cmd.spawn().expect("spawn gatehouse"))
    }
}

impl std::ops::Deref for Guarded {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Guarded {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A process that is not our child (a gateway started by an upgrade): killed when
/// dropped, so a failing test leaves nothing running.
pub struct Pid(pub i32);

impl Pid {
    pub fn alive(&self) -> bool {
        // SAFETY: signal 0 only checks that the process exists.
        unsafe { libc::kill(self.0, 0) == 0 }
    }
    pub fn signal(&self, sig: i32) {
        // SAFETY: sends a signal to a process this test started (indirectly).
        unsafe {
            libc::kill(self.0, sig);
        }
    }
}

impl Drop for Pid {
    fn drop(&mut self) {
        if self.alive() {
            self.signal(libc::SIGKILL);
        }
    }
}

/// The pid a `--pid-file` holds, once written.
pub fn read_pid(path: &std::path::Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}
