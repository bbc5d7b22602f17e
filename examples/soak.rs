//! Soak driver: runs a release `gatehouse serve` for N minutes under mixed traffic and
//! checks correctness and resources at the end. `scripts/soak.sh [minutes]` builds and
//! runs it; it is deliberately not part of `cargo test`.
//!
//! In this process: a dev PKI, the devkit OIDC issuer and the mTLS echo backend (the
//! upstream). The gateway is a child process with a generated config (audit to a
//! directory, `header_read_timeout_ms = 3000`).
//!
//! Traffic, at `--rate` requests per second over `--workers` tasks, each request on one of
//! three clients (HTTP/1.1 keep-alive, h2, HTTP/1.1 with a new connection per request):
//! - valid tokens: a hot set of 20 tokens, a pool of `--tokens` distinct tokens, and a
//!   freshly minted token now and then (GET /orders/N, 200; the backend must see the
//!   caller's own row filter and no Authorization header);
//! - refused: bad signature, expired, wrong audience, no token (401), a valid token
//!   without a role for the route (403);
//! - the public route (GET /health, 200);
//! - slow clients on their own tasks: a head trickled over ~1 s (answered), slowloris
//!   heads that never end (closed by gatehouse after `header_read_timeout_ms`, no
//!   response), TCP connections that never start TLS (closed likewise), and every 60 s a
//!   burst of 300 slowloris connections at once.
//!
//! Events: SIGHUP every 30 s; at 40% of the run the server certificate and key files are
//! replaced by a new leaf and SIGHUP sent (new handshakes must present it); at 60% the
//! echo backend is stopped for 3 s and started again on the same port.
//!
//! Definitions used by the checks:
//! - a request *overlaps the upstream restart* when the interval from sending it to its
//!   outcome intersects [echo shutdown begins, new echo listening]; upstream requests
//!   (valid, public, slow head) that overlap are counted apart and may get 502;
//! - a *valid request* is one with a valid token (hot, pool, fresh) that does not overlap
//!   the restart; it fails unless answered 200 with the caller's row filter;
//! - *answered*: the driver received an HTTP response head from gatehouse. Every request
//!   the driver sends is on a route, so each answered request must have exactly one audit
//!   line; slowloris and no-handshake connections get no response and no line.
//!
//! Exit status 0 when every check passes, 1 otherwise.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gatehouse::devkit::{
    CertPair, DevPki, EchoBackend, EchoOptions, IssuerOptions, KeyAlg, MockIssuer,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

const HEADER_READ_TIMEOUT_MS: u64 = 3000;
const AUDIENCE: &str = "api://orders";
const REGIONS: &[&str] = &["eu-west", "eu-north", "us-east", "ap-south", "sa-east"];
const BURST: usize = 300;

struct Opts {
    minutes: f64,
    gatehouse: PathBuf,
    rate: f64,
    workers: usize,
    slow: usize,
    tokens: usize,
    max_end_rss_mb: u64,
    keep: bool,
    /// Study mode: only rounds of slowloris connections, RSS after each.
    slow_rounds: usize,
    per_round: usize,
    /// A command gatehouse runs under (e.g. `heaptrack -o FILE`), split on spaces.
    wrap: Vec<String>,
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        minutes: 10.0,
        gatehouse: PathBuf::from("target/release/gatehouse"),
        rate: 300.0,
        workers: 16,
        slow: 8,
        tokens: 5000,
        max_end_rss_mb: 96,
        keep: false,
        slow_rounds: 0,
        per_round: 2000,
        wrap: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--minutes" => o.minutes = val().parse().unwrap_or_else(|_| usage("--minutes")),
            "--gatehouse" => o.gatehouse = PathBuf::from(val()),
            "--rate" => o.rate = val().parse().unwrap_or_else(|_| usage("--rate")),
            "--workers" => o.workers = val().parse().unwrap_or_else(|_| usage("--workers")),
            "--slow" => o.slow = val().parse().unwrap_or_else(|_| usage("--slow")),
            "--tokens" => o.tokens = val().parse().unwrap_or_else(|_| usage("--tokens")),
            "--max-end-rss-mb" => {
                o.max_end_rss_mb = val().parse().unwrap_or_else(|_| usage("--max-end-rss-mb"))
            }
            "--keep" => o.keep = true,
            "--slow-rounds" => {
                o.slow_rounds = val().parse().unwrap_or_else(|_| usage("--slow-rounds"))
            }
            "--per-round" => o.per_round = val().parse().unwrap_or_else(|_| usage("--per-round")),
            "--wrap" => o.wrap = val().split_whitespace().map(str::to_string).collect(),
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    // gatehouse runs in the soak's directory.
    o.gatehouse = std::fs::canonicalize(&o.gatehouse).unwrap_or(o.gatehouse);
    if o.minutes <= 0.0 || o.rate <= 0.0 || o.workers == 0 || o.tokens < 20 {
        usage("minutes and rate must be positive, workers ≥ 1, tokens ≥ 20");
    }
    o
}

fn usage(why: &str) -> ! {
    if !why.is_empty() {
        eprintln!("soak: {why}");
    }
    eprintln!(
        "usage: soak [--minutes 10] [--gatehouse target/release/gatehouse] [--rate 300] \
         [--workers 16] [--slow 8] [--tokens 5000] [--max-end-rss-mb 96] [--keep] \
         [--wrap 'heaptrack -o FILE'] [--slow-rounds R --per-round 2000]\n\
         --slow-rounds: no soak; R rounds of N slowloris connections closed by \
         header_read_timeout_ms, RSS after each (the memory retention study)"
    );
    std::process::exit(2)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    ValidHot,
    ValidPool,
    ValidFresh,
    NoRole,
    BadSignature,
    Expired,
    WrongAudience,
    NoToken,
    Public,
    SlowHead,
    Slowloris,
    SlowlorisBurst,
    NoHandshake,
}

impl Class {
    fn name(self) -> &'static str {
        match self {
            Class::ValidHot => "valid token, hot set (20)",
            Class::ValidPool => "valid token, pool",
            Class::ValidFresh => "valid token, newly minted",
            Class::NoRole => "valid token, no role (403)",
            Class::BadSignature => "bad signature",
            Class::Expired => "expired",
            Class::WrongAudience => "wrong audience",
            Class::NoToken => "no token",
            Class::Public => "public route",
            Class::SlowHead => "slow head (~1 s, in time)",
            Class::Slowloris => "slowloris (head never ends)",
            Class::SlowlorisBurst => "slowloris burst (300 at once)",
            Class::NoHandshake => "TCP only, no TLS handshake",
        }
    }
    fn expected(self) -> &'static str {
        match self {
            Class::ValidHot | Class::ValidPool | Class::ValidFresh | Class::Public => "200",
            Class::SlowHead => "200",
            Class::NoRole => "403",
            Class::BadSignature | Class::Expired | Class::WrongAudience | Class::NoToken => "401",
            Class::Slowloris | Class::SlowlorisBurst | Class::NoHandshake => "closed in time",
        }
    }
    fn valid(self) -> bool {
        matches!(self, Class::ValidHot | Class::ValidPool | Class::ValidFresh)
    }
    fn upstream(self) -> bool {
        self.valid() || matches!(self, Class::Public | Class::SlowHead)
    }
}

/// Intervals during which the upstream was (being) restarted.
#[derive(Default)]
struct Windows(Mutex<Vec<(Instant, Option<Instant>)>>);

impl Windows {
    fn overlaps(&self, start: Instant, end: Instant) -> bool {
        self.0
            .lock()
            .unwrap()
            .iter()
            .any(|(a, b)| end >= *a && b.is_none_or(|b| start <= b))
    }
}

#[derive(Default)]
struct Stats {
    /// (class, overlapped the upstream restart) → outcome → count.
    outcomes: Mutex<BTreeMap<(Class, bool), BTreeMap<String, u64>>>,
    /// Answered requests by status, to compare with the audit log.
    answered: Mutex<BTreeMap<u16, u64>>,
    failed_valid: AtomicU64,
    unexpected: AtomicU64,
    examples: Mutex<Vec<String>>,
}

impl Stats {
    fn record(&self, class: Class, overlap: bool, outcome: &str, status: Option<u16>) {
        if let Some(s) = status {
            *self.answered.lock().unwrap().entry(s).or_default() += 1;
        }
        *self
            .outcomes
            .lock()
            .unwrap()
            .entry((class, overlap && class.upstream()))
            .or_default()
            .entry(outcome.to_string())
            .or_default() += 1;
        let ok = outcome == class.expected() || (overlap && class.upstream());
        if !ok {
            if class.valid() {
                self.failed_valid.fetch_add(1, Ordering::Relaxed);
            } else {
                self.unexpected.fetch_add(1, Ordering::Relaxed);
            }
            let mut ex = self.examples.lock().unwrap();
            if ex.len() < 20 {
                ex.push(format!("{}: {outcome}", class.name()));
            }
        }
    }
}

struct User {
    token: String,
    region: &'static str,
}

struct Ctx {
    base: String,
    https: SocketAddr,
    stats: Stats,
    windows: Windows,
    hot: Vec<User>,
    pool: Vec<User>,
    no_role: Vec<String>,
    bad_sig: Vec<String>,
    expired: Vec<String>,
    wrong_aud: Vec<String>,
    issuer: MockIssuer,
    fresh: AtomicU64,
    tls: tokio_rustls::TlsConnector,
    clients: [reqwest::Client; 3],
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn user_claims(sub: &str, region: &str, groups: &[&str]) -> Value {
    json!({"sub": sub, "groups": groups, "region": region, "scope": "orders.read"})
}

/// Changes one character in the middle of the signature (not the last one, whose low
/// bits may be padding).
fn break_signature(token: &str) -> String {
    let dot = token.rfind('.').unwrap();
    let mut bytes = token.as_bytes().to_vec();
    let i = dot + (token.len() - dot) / 2;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

fn reqwest_client(ca_pem: &str, mode: usize) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap();
    let b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30));
    match mode {
        0 => b.http1_only(),
        1 => b.http2_prior_knowledge(),
        _ => b.http1_only().pool_max_idle_per_host(0),
    }
    .build()
    .unwrap()
}

fn tls_connector(ca_pem: &str) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in gatehouse::tls::parse_certs(ca_pem.as_bytes()).unwrap() {
        roots.add(c).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

async fn tls_connect(
    ctx: &Ctx,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(ctx.https).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    ctx.tls.connect(name, tcp).await
}

/// One request of a fast class: (outcome, status when answered).
async fn fast_request(ctx: &Ctx, class: Class, rng: &mut StdRng) -> (String, Option<u16>) {
    // 40% HTTP/1.1 keep-alive, 40% h2, 20% a new connection (and handshake) per request.
    let client = &ctx.clients[match rng.gen_range(0..10) {
        0..=3 => 0,
        4..=7 => 1,
        _ => 2,
    }];
    let n: u32 = rng.gen_range(1..100_000);
    let pick = |v: &[String], rng: &mut StdRng| v[rng.gen_range(0..v.len())].clone();
    let (path, token, region): (String, Option<String>, Option<&str>) = match class {
        Class::ValidHot => {
            let u = &ctx.hot[rng.gen_range(0..ctx.hot.len())];
            (
                format!("/orders/{n}"),
                Some(u.token.clone()),
                Some(u.region),
            )
        }
        Class::ValidPool => {
            let u = &ctx.pool[rng.gen_range(0..ctx.pool.len())];
            (
                format!("/orders/{n}"),
                Some(u.token.clone()),
                Some(u.region),
            )
        }
        Class::ValidFresh => {
            let i = ctx.fresh.fetch_add(1, Ordering::Relaxed);
            let region = REGIONS[i as usize % REGIONS.len()];
            let t = ctx.issuer.mint(
                KeyAlg::ES256,
                user_claims(&format!("fresh-{i}"), region, &["sg-readers"]),
            );
            (format!("/orders/{n}"), Some(t), Some(region))
        }
        Class::NoRole => (format!("/orders/{n}"), Some(pick(&ctx.no_role, rng)), None),
        Class::BadSignature => (format!("/orders/{n}"), Some(pick(&ctx.bad_sig, rng)), None),
        Class::Expired => (format!("/orders/{n}"), Some(pick(&ctx.expired, rng)), None),
        Class::WrongAudience => (
            format!("/orders/{n}"),
            Some(pick(&ctx.wrong_aud, rng)),
            None,
        ),
        Class::NoToken => (format!("/orders/{n}"), None, None),
        Class::Public => ("/health".to_string(), None, None),
        _ => unreachable!("slow classes have their own tasks"),
    };
    let mut req = client.get(format!("{}{path}", ctx.base));
    if let Some(t) = &token {
        req = req.bearer_auth(t);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return (format!("no response ({})", error_kind(&e)), None),
    };
    let status = resp.status().as_u16();
    let body = match resp.bytes().await {
        Ok(b) => b,
        Err(_) => return (format!("{status}, body cut"), Some(status)),
    };
    if status == 200 {
        if let Some(region) = region {
            if let Err(why) = check_echo(&body, region) {
                return (format!("200, {why}"), Some(status));
            }
        }
    }
    (status.to_string(), Some(status))
}

fn error_kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_request() {
        "request"
    } else {
        "other"
    }
}

/// The backend saw exactly the caller's row filter and no token.
fn check_echo(body: &[u8], region: &str) -> Result<(), &'static str> {
    let doc: Value = serde_json::from_slice(body).map_err(|_| "echo body not JSON")?;
    let headers = doc["headers"].as_array().ok_or("no headers in echo")?;
    let values = |name: &str| -> Vec<String> {
        headers
            .iter()
            .filter(|h| h[0].as_str() == Some(name))
            .filter_map(|h| h[1].as_str().map(str::to_string))
            .collect()
    };
    if values("x-row-filter") != vec![format!("region={region}")] {
        return Err("wrong row filter at the backend");
    }
    if !values("authorization").is_empty() {
        return Err("token forwarded to the backend");
    }
    if values("x-auth-subject").len() != 1 {
        return Err("no subject header at the backend");
    }
    Ok(())
}

async fn worker(ctx: Arc<Ctx>, period: Duration, stop: watch::Receiver<bool>) {
    let mut rng = StdRng::from_entropy();
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Spread the workers' ticks over one period.
    tokio::time::sleep(period.mul_f64(rng.gen::<f64>())).await;
    loop {
        tick.tick().await;
        if *stop.borrow() {
            return;
        }
        let class = match rng.gen_range(0..100) {
            0..=29 => Class::ValidHot,
            30..=59 => Class::ValidPool,
            60..=62 => Class::ValidFresh,
            63..=67 => Class::NoRole,
            68..=72 => Class::BadSignature,
            73..=77 => Class::Expired,
            78..=82 => Class::WrongAudience,
            83..=87 => Class::NoToken,
            _ => Class::Public,
        };
        let start = Instant::now();
        let (outcome, status) = fast_request(&ctx, class, &mut rng).await;
        let overlap = ctx.windows.overlaps(start, Instant::now());
        ctx.stats.record(class, overlap, &outcome, status);
    }
}

/// A head trickled in 12 pieces 80 ms apart (about 1 s, within the 3 s deadline).
async fn slow_head(ctx: &Ctx) -> (String, Option<u16>) {
    let mut tls = match tls_connect(ctx).await {
        Ok(t) => t,
        Err(e) => return (format!("connect failed ({})", e.kind()), None),
    };
    let head = b"GET /health/slow HTTP/1.1\r\nHost: localhost\r\nUser-Agent: soak-slow-head\r\nAccept: */*\r\nConnection: close\r\n\r\n";
    for piece in head.chunks(head.len().div_ceil(12)) {
        if tls.write_all(piece).await.is_err() {
            return ("closed while sending".into(), None);
        }
        let _ = tls.flush().await;
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), tls.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    match text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse::<u16>().ok())
    {
        Some(s) => (s.to_string(), Some(s)),
        None => ("no response".into(), None),
    }
}

/// A head that never ends (or, `tls` false, a TCP connection that never starts TLS):
/// gatehouse must close it, with nothing written, after `header_read_timeout_ms`.
async fn never_ending(ctx: &Ctx, tls: bool) -> String {
    let limit = Duration::from_millis(HEADER_READ_TIMEOUT_MS);
    let slack = Duration::from_secs(5);
    let started;
    let mut got = 0usize;
    let closed = if tls {
        let s = match tls_connect(ctx).await {
            Ok(t) => t,
            Err(e) => return format!("connect failed ({})", e.kind()),
        };
        started = Instant::now();
        let (mut rd, mut wr) = tokio::io::split(s);
        let _ = wr
            .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
            .await;
        let _ = wr.flush().await;
        let mut buf = [0u8; 4096];
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            if started.elapsed() > limit + slack {
                break false;
            }
            tokio::select! {
                r = rd.read(&mut buf) => match r {
                    Ok(0) | Err(_) => break true,
                    Ok(n) => got += n,
                },
                _ = tick.tick() => {
                    if wr.write_all(b"a").await.is_err() || wr.flush().await.is_err() {
                        break true;
                    }
                }
            }
        }
    } else {
        let mut s = match tokio::net::TcpStream::connect(ctx.https).await {
            Ok(s) => s,
            Err(e) => return format!("connect failed ({})", e.kind()),
        };
        started = Instant::now();
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(limit + slack, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(n)) => {
                got = n;
                true
            }
            Err(_) => false,
        }
    };
    let took = started.elapsed();
    if !closed {
        "still open after deadline + 5 s".into()
    } else if got > 0 {
        format!("closed, but {got} bytes written")
    } else if took + Duration::from_millis(150) < limit {
        "closed before the deadline".into()
    } else {
        "closed in time".into()
    }
}

async fn slow_worker(ctx: Arc<Ctx>, stop: watch::Receiver<bool>) {
    let mut rng = StdRng::from_entropy();
    while !*stop.borrow() {
        let r: u32 = rng.gen_range(0..100);
        let start = Instant::now();
        let (class, outcome, status) = if r < 50 {
            let (o, s) = slow_head(&ctx).await;
            (Class::SlowHead, o, s)
        } else if r < 85 {
            (Class::Slowloris, never_ending(&ctx, true).await, None)
        } else {
            (Class::NoHandshake, never_ending(&ctx, false).await, None)
        };
        let overlap = ctx.windows.overlaps(start, Instant::now());
        ctx.stats.record(class, overlap, &outcome, status);
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..200))).await;
    }
}

/// RSS in KiB of `pid` (VmRSS).
fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// inode → (local port, remote port, listening) for TCP sockets of this namespace.
fn tcp_sockets() -> BTreeMap<u64, (u16, u16, bool)> {
    let mut map = BTreeMap::new();
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 {
                continue;
            }
            let port = |a: &str| {
                a.rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                    .unwrap_or(0)
            };
            if let Ok(inode) = cols[9].parse::<u64>() {
                map.insert(inode, (port(cols[1]), port(cols[2]), cols[3] == "0A"));
            }
        }
    }
    map
}

struct Ports {
    https: u16,
    admin: u16,
    echo: u16,
    issuer: u16,
}

/// Open fds of `pid` by kind.
fn fds(pid: u32, ports: &Ports) -> BTreeMap<&'static str, usize> {
    let tcp = tcp_sockets();
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out;
    };
    for e in dir.flatten() {
        let link = std::fs::read_link(e.path())
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let kind = if let Some(inode) = link
            .strip_prefix("socket:[")
            .and_then(|s| s.strip_suffix(']'))
            .and_then(|s| s.parse::<u64>().ok())
        {
            match tcp.get(&inode) {
                Some((_, _, true)) => "listening sockets",
                Some((l, _, _)) if *l == ports.https || *l == ports.admin => "client connections",
                Some((_, r, _)) if *r == ports.echo => "upstream connections",
                Some((_, r, _)) if *r == ports.issuer => "issuer connections",
                _ => "other sockets",
            }
        } else if link.starts_with("pipe:") {
            "pipes"
        } else if link.starts_with("anon_inode:") {
            "anon inodes (epoll, eventfd)"
        } else {
            "files"
        };
        *out.entry(kind).or_default() += 1;
    }
    out
}

fn total(m: &BTreeMap<&'static str, usize>) -> usize {
    m.values().sum()
}

fn fds_line(m: &BTreeMap<&'static str, usize>) -> String {
    let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k} {v}")).collect();
    format!("{} ({})", total(m), parts.join(", "))
}

fn write_config(dir: &Path, https: u16, admin: u16, issuer: &str, echo: SocketAddr) -> PathBuf {
    let text = format!(
        r#"# Written by the soak driver.
[server]
listen = "127.0.0.1:{https}"
cert = "certs/server.crt"
key = "certs/server.key"
header_read_timeout_ms = {HEADER_READ_TIMEOUT_MS}
idle_timeout_s = 30

[admin]
listen = "127.0.0.1:{admin}"

[audit]
path = "audit"
pseudonym_key = {{ file = "pseudonym.key" }}

[issuers.dev]
issuer = "{issuer}"
discovery = true
ca = "certs/ca.crt"
audiences = ["{AUDIENCE}"]
algorithms = ["RS256", "ES256"]

[roles.reader]
groups = ["sg-readers"]

[upstreams.echo]
addrs = ["{echo}"]
sni = "localhost"
ca = "certs/ca.crt"
client_cert = "certs/client.crt"
client_key = "certs/client.key"

[[routes]]
name = "health"
path_prefix = "/health"
upstream = "echo"
auth = "none"

[[routes]]
name = "orders-read"
path_prefix = "/orders"
methods = ["GET", "HEAD"]
upstream = "echo"
allow_roles = ["reader"]
require_scopes = ["orders.read"]
[[routes.row_filters]]
header = "X-Row-Filter"
value = "region={{claims.region}}"
"#
    );
    let p = dir.join("gatehouse.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// Replaces a file by rename, so a reader never sees half of it.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The leaf certificate (DER) a new handshake gets.
async fn served_leaf(ctx: &Ctx) -> Option<Vec<u8>> {
    let tls = tls_connect(ctx).await.ok()?;
    let leaf = tls.get_ref().1.peer_certificates()?.first()?.to_vec();
    Some(leaf)
}

fn pem_der(pem: &str) -> Vec<u8> {
    gatehouse::tls::parse_certs(pem.as_bytes()).unwrap()[0].to_vec()
}

fn hup(pid: u32) {
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(pid as i32, libc::SIGHUP);
    }
}

fn metric(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// Rounds of `n` slowloris connections at once; each is closed by gatehouse after
/// `header_read_timeout_ms`. Prints RSS at the round's peak and 3 s after it ended.
async fn slow_study(ctx: &Arc<Ctx>, pid: u32, rounds: usize, n: usize) -> bool {
    let base = rss_kib(pid).unwrap_or(0);
    println!(
        "slow-header study: {rounds} rounds of {n} connections; RSS before {:.1} MiB",
        base as f64 / 1024.0
    );
    for round in 1..=rounds {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..n {
            let ctx = ctx.clone();
            set.spawn(async move { never_ending(&ctx, true).await });
        }
        let mut peak = 0u64;
        let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
        loop {
            tokio::select! {
                r = set.join_next() => match r {
                    Some(Ok(o)) => *outcomes.entry(o).or_default() += 1,
                    Some(Err(_)) => *outcomes.entry("task failed".into()).or_default() += 1,
                    None => break,
                },
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    peak = peak.max(rss_kib(pid).unwrap_or(0));
                }
            }
        }
        peak = peak.max(rss_kib(pid).unwrap_or(0));
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = rss_kib(pid).unwrap_or(0);
        println!(
            "round {round}: peak {:.1} MiB, 3 s after {:.1} MiB, {outcomes:?}",
            peak as f64 / 1024.0,
            after as f64 / 1024.0
        );
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    println!(
        "10 s after the last round: {:.1} MiB",
        rss_kib(pid).unwrap_or(0) as f64 / 1024.0
    );
    true
}

fn main() {
    let opts = parse_opts();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let ok = rt.block_on(run(opts));
    rt.shutdown_timeout(Duration::from_secs(2));
    std::process::exit(if ok { 0 } else { 1 });
}

async fn run(opts: Opts) -> bool {
    let duration = Duration::from_secs_f64(opts.minutes * 60.0);
    let dir = tempfile::Builder::new()
        .prefix("gatehouse-soak-")
        .tempdir()
        .unwrap();
    let root = dir.path().to_path_buf();
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!(
        "soak: {} min, {} req/s over {} workers + {} slow-client tasks, {} tokens; gatehouse {} (commit {commit}); started {}",
        opts.minutes,
        opts.rate,
        opts.workers,
        opts.slow,
        opts.tokens,
        opts.gatehouse.display(),
        chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC")
    );

    let pki = DevPki::generate().unwrap();
    pki.write_to(&root.join("certs")).unwrap();
    std::fs::write(
        root.join("pseudonym.key"),
        "soak-pseudonym-key-0123456789abcdef0123456789",
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            root.join("pseudonym.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
    }
    let issuer = MockIssuer::start(
        &pki.server,
        IssuerOptions {
            audience: AUDIENCE.into(),
            algs: vec![KeyAlg::RS256, KeyAlg::ES256],
            token_ttl_s: 6 * 3600,
            ..IssuerOptions::default()
        },
    )
    .await
    .unwrap();
    let echo_opts = EchoOptions::default();
    let mut echo = Some(
        EchoBackend::start(&pki.backend, &pki.ca.cert_pem, echo_opts)
            .await
            .unwrap(),
    );
    let echo_addr = echo.as_ref().unwrap().addr();
    let [https, admin] = gatehouse::demo::ports_or_free([0, 0]);
    let ports = Ports {
        https,
        admin,
        echo: echo_addr.port(),
        issuer: issuer.addr().port(),
    };
    let config = write_config(&root, https, admin, &issuer.issuer_url(), echo_addr);

    // Tokens: a pool of distinct callers (RS256 and ES256), the first 20 are the hot set.
    let t0 = Instant::now();
    let mint_user = |i: usize| {
        let region = REGIONS[i % REGIONS.len()];
        let alg = if i % 4 == 0 {
            KeyAlg::RS256
        } else {
            KeyAlg::ES256
        };
        User {
            token: issuer.mint(
                alg,
                user_claims(&format!("user-{i}"), region, &["sg-readers"]),
            ),
            region,
        }
    };
    let mut pool: Vec<User> = (0..opts.tokens).map(mint_user).collect();
    let hot: Vec<User> = pool.drain(..20).collect();
    let now = now_s();
    let no_role = (0..50)
        .map(|i| {
            issuer.mint(
                KeyAlg::ES256,
                user_claims(&format!("other-{i}"), "eu-west", &["sg-other"]),
            )
        })
        .collect();
    let bad_sig = hot
        .iter()
        .chain(pool.iter().take(30))
        .map(|u| break_signature(&u.token))
        .collect();
    let expired = (0..50)
        .map(|i| {
            let mut c = user_claims(&format!("late-{i}"), "eu-west", &["sg-readers"]);
            c["iat"] = json!(now - 7200);
            c["exp"] = json!(now - 600);
            issuer.mint(KeyAlg::ES256, c)
        })
        .collect();
    let wrong_aud = (0..50)
        .map(|i| {
            let mut c = user_claims(&format!("elsewhere-{i}"), "eu-west", &["sg-readers"]);
            c["aud"] = json!("api://someone-else");
            issuer.mint(KeyAlg::RS256, c)
        })
        .collect();
    println!(
        "minted {} tokens in {:.1} s",
        opts.tokens + 200,
        t0.elapsed().as_secs_f64()
    );

    // The gateway.
    let log_path = root.join("gatehouse.log");
    let pid_file = root.join("gatehouse.pid");
    let mut cmd = match opts.wrap.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(&opts.gatehouse);
            c
        }
        None => Command::new(&opts.gatehouse),
    };
    let mut child = cmd
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--pid-file")
        .arg(&pid_file)
        .current_dir(&root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| {
            eprintln!("soak: cannot start {}: {e}", opts.gatehouse.display());
            std::process::exit(2)
        });
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let readyz = format!("http://127.0.0.1:{admin}/readyz");
    let mut ready = false;
    for _ in 0..300 {
        if let Ok(r) = plain.get(&readyz).send().await {
            if r.status() == 200 {
                ready = true;
                break;
            }
        }
        if let Ok(Some(st)) = child.try_wait() {
            eprintln!("soak: gatehouse exited at start ({st}); log:");
            eprintln!("{}", std::fs::read_to_string(&log_path).unwrap_or_default());
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !ready {
        eprintln!("soak: gatehouse not ready after 30 s");
        let _ = child.kill();
        return false;
    }
    // The gateway's own pid (the child may be a wrapper such as heaptrack).
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(child.id());
    let ctx = Arc::new(Ctx {
        base: format!("https://localhost:{https}"),
        https: SocketAddr::from(([127, 0, 0, 1], https)),
        stats: Stats::default(),
        windows: Windows::default(),
        hot,
        pool,
        no_role,
        bad_sig,
        expired,
        wrong_aud,
        issuer,
        fresh: AtomicU64::new(0),
        tls: tls_connector(&pki.ca.cert_pem),
        clients: [0, 1, 2].map(|m| reqwest_client(&pki.ca.cert_pem, m)),
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_start = rss_kib(pid).unwrap_or(0);
    let fds_start = fds(pid, &ports);
    println!(
        "gatehouse pid {pid} ready: RSS {:.1} MiB, fds {}",
        rss_start as f64 / 1024.0,
        fds_line(&fds_start)
    );

    if opts.slow_rounds > 0 {
        let ok = slow_study(&ctx, pid, opts.slow_rounds, opts.per_round).await;
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
        let _ = child.wait();
        return ok;
    }

    // Resources, every second.
    let samples = Arc::new(Mutex::new(Vec::<u64>::new()));
    let sampler = {
        let samples = samples.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                match rss_kib(pid) {
                    Some(k) => samples.lock().unwrap().push(k),
                    None => return,
                }
            }
        })
    };

    // Traffic.
    let (stop_tx, stop_rx) = watch::channel(false);
    let period = Duration::from_secs_f64(opts.workers as f64 / opts.rate);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..opts.workers {
        tasks.spawn(worker(ctx.clone(), period, stop_rx.clone()));
    }
    for _ in 0..opts.slow {
        tasks.spawn(slow_worker(ctx.clone(), stop_rx.clone()));
    }

    // Events.
    let started = Instant::now();
    let rotate_at = duration.mul_f64(0.4).as_secs();
    let restart_at = duration.mul_f64(0.6).as_secs();
    let mut reloads = 0u64;
    let mut rotation: Option<Result<Duration, String>> = None;
    let mut restart_window: Option<Duration> = None;
    let initial_leaf = served_leaf(&ctx).await;
    let initial_ok = initial_leaf.as_deref() == Some(pem_der(&pki.server.cert_pem).as_slice());
    let mut bursts = tokio::task::JoinSet::new();
    let mut second = 0u64;
    while started.elapsed() < duration {
        second += 1;
        tokio::time::sleep_until(tokio::time::Instant::from_std(
            started + Duration::from_secs(second),
        ))
        .await;
        if second == rotate_at {
            let leaf: CertPair = pki
                .issue("localhost", gatehouse::devkit::pki::LOCAL_SANS, false)
                .unwrap();
            replace(&root.join("certs/server.crt"), &leaf.cert_pem);
            replace(&root.join("certs/server.key"), &leaf.key_pem);
            hup(pid);
            reloads += 1;
            let want = pem_der(&leaf.cert_pem);
            let t = Instant::now();
            let mut r = Err("the old certificate was still served after 10 s".to_string());
            while t.elapsed() < Duration::from_secs(10) {
                if served_leaf(&ctx).await.as_deref() == Some(want.as_slice()) {
                    r = Ok(t.elapsed());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            println!(
                "[{second:>4} s] server certificate replaced + SIGHUP: {}",
                match &r {
                    Ok(d) => format!(
                        "new handshakes get the new certificate after {} ms",
                        d.as_millis()
                    ),
                    Err(e) => e.clone(),
                }
            );
            rotation = Some(r);
        } else if second % 30 == 0 {
            hup(pid);
            reloads += 1;
        }
        if second == restart_at {
            let from = Instant::now();
            ctx.windows.0.lock().unwrap().push((from, None));
            if let Some(e) = echo.take() {
                e.shutdown().await;
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
            let mut again = None;
            for _ in 0..100 {
                match EchoBackend::start(
                    &pki.backend,
                    &pki.ca.cert_pem,
                    EchoOptions { addr: echo_addr },
                )
                .await
                {
                    Ok(e) => {
                        again = Some(e);
                        break;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
            let Some(e) = again else {
                eprintln!("soak: the echo backend could not listen on {echo_addr} again");
                let _ = child.kill();
                return false;
            };
            echo = Some(e);
            let to = Instant::now();
            ctx.windows.0.lock().unwrap()[0].1 = Some(to);
            restart_window = Some(to - from);
            println!(
                "[{second:>4} s] upstream restarted: down for {} ms",
                (to - from).as_millis()
            );
        }
        if second % 60 == 0 {
            for _ in 0..BURST {
                let ctx = ctx.clone();
                bursts.spawn(async move {
                    let start = Instant::now();
                    let o = never_ending(&ctx, true).await;
                    let overlap = ctx.windows.overlaps(start, Instant::now());
                    ctx.stats.record(Class::SlowlorisBurst, overlap, &o, None);
                });
            }
            let answered: u64 = ctx.stats.answered.lock().unwrap().values().sum();
            let peak = samples.lock().unwrap().iter().copied().max().unwrap_or(0);
            println!(
                "[{second:>4} s] answered {answered}, RSS now {:.1} MiB (peak {:.1}), fds {}, failed valid {}, unexpected {}",
                rss_kib(pid).unwrap_or(0) as f64 / 1024.0,
                peak as f64 / 1024.0,
                total(&fds(pid, &ports)),
                ctx.stats.failed_valid.load(Ordering::Relaxed),
                ctx.stats.unexpected.load(Ordering::Relaxed),
            );
        }
    }
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    while bursts.join_next().await.is_some() {}
    // The driver's own connections go away with its clients.
    let ctx = match Arc::try_unwrap(ctx) {
        Ok(c) => c,
        Err(_) => unreachable!("every task has ended"),
    };
    let Ctx {
        stats,
        clients,
        issuer,
        ..
    } = ctx;
    drop(clients);
    // Let gatehouse notice the closed connections and the allocator settle.
    let mut fds_end = fds(pid, &ports);
    for _ in 0..20 {
        if fds_end.get("client connections").copied().unwrap_or(0) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        fds_end = fds(pid, &ports);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    fds_end = fds(pid, &ports);
    let rss_end = rss_kib(pid).unwrap_or(0);
    sampler.abort();
    let samples = samples.lock().unwrap().clone();
    let rss_peak = samples.iter().copied().max().unwrap_or(0).max(rss_end);
    let metrics_text = match plain
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await
    {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    let reloads_ok = metric(
        &metrics_text,
        "gatehouse_config_reloads_total",
        "result=\"ok\"",
    );
    let reloads_err = metric(
        &metrics_text,
        "gatehouse_config_reloads_total",
        "result=\"error\"",
    );

    // Stop gatehouse (drain flushes the audit log).
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let mut exit = None;
    for _ in 0..300 {
        if let Ok(Some(st)) = child.try_wait() {
            exit = Some(st);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if exit.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    if let Some(e) = echo.take() {
        e.shutdown().await;
    }
    issuer.shutdown().await;

    // Audit lines, by status.
    let mut audit: BTreeMap<u16, u64> = BTreeMap::new();
    let mut audit_lines = 0u64;
    let mut audit_bad = 0u64;
    if let Ok(rd) = std::fs::read_dir(root.join("audit")) {
        for e in rd.flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            for line in text.lines() {
                audit_lines += 1;
                match serde_json::from_str::<Value>(line)
                    .ok()
                    .and_then(|v| v["status"].as_u64())
                {
                    Some(s) => *audit.entry(s as u16).or_default() += 1,
                    None => audit_bad += 1,
                }
            }
        }
    }
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let panics = log.lines().filter(|l| l.contains("panicked")).count();
    let mut levels: BTreeMap<&str, usize> = BTreeMap::new();
    for l in log.lines() {
        for lvl in ["ERROR", "WARN"] {
            if l.contains(lvl) {
                *levels.entry(lvl).or_default() += 1;
            }
        }
    }

    // Report.
    let answered = stats.answered.lock().unwrap().clone();
    let answered_total: u64 = answered.values().sum();
    println!("\n== requests by outcome (class: outcome count ...) ==");
    let outcomes = stats.outcomes.lock().unwrap().clone();
    let mut all = 0u64;
    for ((class, overlap), m) in &outcomes {
        let n: u64 = m.values().sum();
        all += n;
        let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        println!(
            "{:<34} {:>8}  {}{}",
            class.name(),
            n,
            parts.join(", "),
            if *overlap {
                "   [overlapped the upstream restart]"
            } else {
                ""
            }
        );
    }
    println!("{:<34} {:>8}", "all", all);
    let ex = stats.examples.lock().unwrap().clone();
    if !ex.is_empty() {
        println!("first unexpected outcomes: {ex:?}");
    }
    if let Some(w) = restart_window {
        println!(
            "upstream restart window (echo shutdown .. listening again): {} ms",
            w.as_millis()
        );
    }
    println!(
        "RSS (VmRSS, sampled each second): start {:.1} MiB, peak {:.1} MiB, end {:.1} MiB",
        rss_start as f64 / 1024.0,
        rss_peak as f64 / 1024.0,
        rss_end as f64 / 1024.0
    );
    println!("open fds: start {}", fds_line(&fds_start));
    println!("open fds: end   {}", fds_line(&fds_end));
    println!(
        "audit lines {audit_lines} (unparsable {audit_bad}), requests answered by gatehouse {answered_total}"
    );
    println!(
        "reloads: sent {reloads} SIGHUP, gatehouse counted ok {reloads_ok}, error {reloads_err}"
    );
    println!(
        "gatehouse log: {} WARN, {} ERROR, {panics} panics; exit {}",
        levels.get("WARN").unwrap_or(&0),
        levels.get("ERROR").unwrap_or(&0),
        exit.map(|e| e.to_string())
            .unwrap_or_else(|| "none (killed)".into())
    );

    let failed_valid = stats.failed_valid.load(Ordering::Relaxed);
    let unexpected = stats.unexpected.load(Ordering::Relaxed);
    let pool_and_issuer = |m: &BTreeMap<&str, usize>| {
        m.get("upstream connections").unwrap_or(&0) + m.get("issuer connections").unwrap_or(&0)
    };
    let mut checks: Vec<(String, bool)> = vec![
        (
            format!("failed valid requests: {failed_valid}"),
            failed_valid == 0,
        ),
        (
            format!("unexpected outcomes (other classes): {unexpected}"),
            unexpected == 0,
        ),
        (
            format!("audit lines == requests answered: {audit_lines} == {answered_total}"),
            audit_lines == answered_total && audit_bad == 0,
        ),
        (
            "audit lines by status == answers by status".to_string(),
            audit == answered,
        ),
        (
            format!("SIGHUP reloads applied: {reloads_ok} of {reloads}, {reloads_err} failed"),
            reloads_ok as u64 == reloads && reloads_err == 0.0,
        ),
        (
            "certificate rotation served to new handshakes".to_string(),
            (initial_ok && matches!(rotation, Some(Ok(_)))) || rotate_at == 0,
        ),
        (
            format!(
                "no client connection left open at the end: {}",
                fds_end.get("client connections").unwrap_or(&0)
            ),
            fds_end.get("client connections").copied().unwrap_or(0) == 0,
        ),
        (
            format!(
                "fds at end without upstream/issuer pools ({}) <= at start ({})",
                total(&fds_end) - pool_and_issuer(&fds_end),
                total(&fds_start) - pool_and_issuer(&fds_start)
            ),
            total(&fds_end) - pool_and_issuer(&fds_end)
                <= total(&fds_start) - pool_and_issuer(&fds_start),
        ),
        (
            format!(
                "RSS at end {:.1} MiB <= {} MiB",
                rss_end as f64 / 1024.0,
                opts.max_end_rss_mb
            ),
            rss_end <= opts.max_end_rss_mb * 1024,
        ),
        (
            format!("no panics in the gatehouse log: {panics}"),
            panics == 0,
        ),
        (
            "gatehouse exited 0 after SIGTERM".to_string(),
            exit.map(|e| e.success()).unwrap_or(false),
        ),
    ];
    if audit != answered {
        checks.push((
            format!("  audit by status {audit:?}, answered {answered:?}"),
            false,
        ));
    }
    println!("\n== checks ==");
    let mut ok = true;
    for (what, pass) in &checks {
        println!("{} {what}", if *pass { "PASS" } else { "FAIL" });
        ok &= pass;
    }
    println!("soak {}", if ok { "passed" } else { "FAILED" });
    if opts.keep || !ok {
        let kept = dir.keep();
        println!("kept {} (config, gatehouse.log, audit/)", kept.display());
    }
    ok
}
