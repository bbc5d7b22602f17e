//! SPEC section 7, the upstream side, end to end over real TLS: an upstream that fails or
//! stalls after its response head has been relayed aborts the response (never a gateway
//! error spliced into a started body), and informational (1xx) responses are bounded.
//!
//! Waits are bounded (`BOUND`) and generous: a test asserts that something happens
//! before the bound, never how fast.

mod common;
#[path = "protocol/support.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use gatehouse::devkit::echo::pattern_byte;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------------------------------
// Upstream failures after the head, informational responses
// ---------------------------------------------------------------------------------------

/// Reads a response through reqwest chunk by chunk: (status, X-Request-Id, body so far,
/// whether the body ended in an error).
async fn read_aborted(client: &reqwest::Client, url: String) -> (u16, String, Vec<u8>, bool) {
    let mut resp = client.get(url).send().await.expect("the head arrives");
    let status = resp.status().as_u16();
    let id = resp
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => body.extend_from_slice(&c),
            Ok(None) => return (status, id, body, false),
            Err(_) => return (status, id, body, true),
        }
    }
}

/// Runs every `/break` query in `queries` over HTTP/1.1 and h2 at once and checks that
/// each response starts as the upstream's 200 and is then aborted, with no gateway error
/// spliced in; returns the request ids.
fn assert_aborted(env: &Env, queries: &[&str], after: usize) -> Vec<String> {
    let (h1, h2) = (env.client(false), env.client(true));
    let runs = queries
        .iter()
        .flat_map(|q| [(&h1, q.to_string(), false), (&h2, q.to_string(), true)]);
    let results = env.block_on(futures::future::join_all(runs.map(
        |(c, q, h2)| async move {
            (
                q.clone(),
                h2,
                read_aborted(c, env.url(&format!("/break?{q}"))).await,
            )
        },
    )));
    let mut ids = Vec::new();
    for (q, h2, (status, id, body, aborted)) in results {
        let what = format!("{q} h2={h2}");
        assert_eq!(status, 200, "{what}: the upstream's head is relayed");
        assert!(
            aborted,
            "{what}: the body ended cleanly ({} bytes)",
            body.len()
        );
        assert!(body.len() <= after, "{what}: {} bytes", body.len());
        let expected: Vec<u8> = (0..body.len() as u64).map(pattern_byte).collect();
        assert!(
            body == expected,
            "{what}: not the upstream's bytes: {}",
            String::from_utf8_lossy(&body)
        );
        assert!(!id.is_empty(), "{what}: X-Request-Id");
        ids.push(id);
    }
    ids
}

/// Waits until every id has an audit line, and returns their statuses.
fn audit_statuses(env: &Env, ids: &[String]) -> Vec<u64> {
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let lines = env.audit_lines_for(&refs);
    ids.iter()
        .map(|id| {
            let l = lines
                .iter()
                .find(|l| l["request_id"] == id.as_str())
                .unwrap_or_else(|| panic!("no audit line for {id}"));
            l["status"].as_u64().unwrap()
        })
        .collect()
}

fn wait_metric(env: &Env, labels: &[(&str, &str)], at_least: f64) {
    let start = Instant::now();
    loop {
        let v = metric_value(&env.metrics(), "gatehouse_requests_total", labels);
        if v >= at_least {
            return;
        }
        assert!(start.elapsed() < BOUND, "{labels:?}: {v} < {at_least}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An upstream that resets or closes after its head aborts the client's response
/// (HTTP/1.1: no terminating chunk or fewer bytes than announced, then close; h2: stream
/// reset), never a clean-looking 200 with an error spliced into its body; audit and
/// metrics say 502.
#[test]
fn upstream_failing_after_its_head_aborts_the_response() {
    let env = env_with("");
    let queries = [
        "after=1000&how=reset",
        "after=1000&how=reset&framing=chunked",
        "after=1000&how=short",
        "after=1000&how=short&framing=chunked",
    ];
    let ids = assert_aborted(&env, &queries, 1000);
    assert!(
        audit_statuses(&env, &ids).iter().all(|s| *s == 502),
        "{ids:?}"
    );
    let l502 = [("route", "break"), ("status", "502")];
    wait_metric(&env, &l502, ids.len() as f64);
    let m = env.metrics();
    assert_eq!(
        metric_value(
            &m,
            "gatehouse_requests_total",
            &[("route", "break"), ("status", "200")]
        ),
        0.0
    );
}

/// An upstream that stalls after its head (past `read_timeout_ms`) aborts the response
/// the same way, recorded as 504.
#[test]
fn upstream_stalling_after_its_head_aborts_the_response_as_504() {
    let env = env_with("");
    let queries = ["after=500&how=stall", "after=500&how=stall&framing=chunked"];
    let ids = assert_aborted(&env, &queries, 500);
    assert!(
        audit_statuses(&env, &ids).iter().all(|s| *s == 504),
        "{ids:?}"
    );
    wait_metric(
        &env,
        &[("route", "break"), ("status", "504")],
        ids.len() as f64,
    );
}

/// A TLS backend (HTTP/1.1, one request per connection) abusing informational
/// responses: `/raw/switch` answers a 101 nobody asked for; `/raw/early/N` N 103
/// responses then a 200; anything else informational responses without end (until the
/// gateway gives up, or `BOUND`).
fn informational_backend(env: &Env) -> std::net::SocketAddr {
    let certs = gatehouse::tls::parse_certs(env.pki.backend.cert_pem.as_bytes()).unwrap();
    let key = rustls_pemfile::private_key(&mut env.pki.backend.key_pem.as_bytes())
        .unwrap()
        .unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = env
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    env.rt.spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(tokio::time::timeout(BOUND, async move {
                let mut tls = acceptor.accept(tcp).await.ok()?;
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let mut b = [0u8; 1];
                    tls.read_exact(&mut b).await.ok()?;
                    head.push(b[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let path = head.split(' ').nth(1)?;
                if path == "/raw/switch" {
                    tls.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n").await.ok()?;
                } else if let Some(n) = path.strip_prefix("/raw/early/") {
                    for _ in 0..n.parse::<usize>().ok()? {
                        tls.write_all(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n").await.ok()?;
                    }
                    tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok").await.ok()?;
                } else {
                    loop {
                        tls.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.ok()?;
                    }
                }
                tls.shutdown().await.ok()
            }));
        }
    });
    addr
}

/// A `101` the client did not ask for, and more than 10 informational responses, are
/// 502 problems (a flood of them too, not a wait for the read timeout); 10 are fine.
#[test]
fn upstream_informational_abuse_is_502() {
    let mut env = Env::with(EnvOptions {
        routes: r#"
[[routes]]
name = "raw"
path_prefix = "/raw"
upstream = "raw"
auth = "none"
"#
        .into(),
        start_gateway: false,
        ..EnvOptions::default()
    });
    let addr = informational_backend(&env);
    let mut text = std::fs::read_to_string(&env.config).unwrap();
    text.push_str(&format!(
        "\n[upstreams.raw]\naddrs = [\"{addr}\"]\nsni = \"localhost\"\nca = \"certs/ca.crt\"\n\
         client_cert = \"certs/client.crt\"\nclient_key = \"certs/client.key\"\n\
         read_timeout_ms = 5000\n"
    ));
    std::fs::write(&env.config, text).unwrap();
    env.start_gateway();
    for h2 in [false, true] {
        let r = env.get("/raw/early/10", None, h2);
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
        assert_status_problem(&env.get("/raw/early/11", None, h2), 502);
        assert_status_problem(&env.get("/raw/switch", None, h2), 502);
        assert_status_problem(&env.get("/raw/flood", None, h2), 502);
    }
}
