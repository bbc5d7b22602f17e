//! SPEC section 7 (limits and protocol hygiene), end to end over real TLS: one test per
//! rule. Slow and idle clients, the connection limit, oversized and unparseable heads,
//! request framing, Host, pipelining, upstreams failing after their head, informational
//! responses, the `Server` header, and h2 streams reset by the client.
//!
//! Waits are bounded (`BOUND`) and generous: a test asserts that something happens
//! before the bound, never how fast.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use gatehouse::devkit::echo::pattern_byte;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a test waits for something that should happen (far above every timeout
/// configured here).
const BOUND: Duration = Duration::from_secs(10);

const ROUTES: &str = r#"
[roles.data-steward]
groups = ["sg-data-stewards"]

[[routes]]
name = "orders"
path_prefix = "/orders"
upstream = "echo"
allow_roles = ["data-steward"]

[[routes]]
name = "public"
path_prefix = "/public"
upstream = "echo"
auth = "none"

[[routes]]
name = "slow"
path_prefix = "/slow"
upstream = "echo"
auth = "none"

[[routes]]
name = "break"
path_prefix = "/break"
upstream = "echo"
auth = "none"
"#;

fn env_with(server_extra: &str) -> Env {
    Env::with(EnvOptions {
        routes: ROUTES.into(),
        server_extra: server_extra.into(),
        ..EnvOptions::default()
    })
}

// ---------------------------------------------------------------------------------------
// Raw clients
// ---------------------------------------------------------------------------------------

/// Reads until the peer closes the connection (EOF or error) or `BOUND` passes:
/// (what was read, whether the peer closed).
async fn read_until_closed<R: AsyncRead + Unpin>(r: &mut R) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let closed = tokio::time::timeout(BOUND, async {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (out, closed)
}

/// The first complete response in `buf` and the bytes after it.
fn parse_one(buf: &[u8]) -> Option<(Resp, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).expect("response head is text");
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let mut headers = reqwest::header::HeaderMap::new();
    for (k, v) in lines.filter_map(|l| l.split_once(':')) {
        let k = reqwest::header::HeaderName::from_bytes(k.trim().as_bytes()).unwrap();
        headers.append(k, v.trim().parse().unwrap());
    }
    let len: usize = headers
        .get("content-length")
        .map(|v| v.to_str().unwrap().parse().unwrap())
        .unwrap_or(0);
    let start = end + 4;
    let body = buf.get(start..start + len)?.to_vec();
    let version = reqwest::Version::HTTP_11;
    let r = Resp {
        status,
        version,
        headers,
        body,
    };
    Some((r, start + len))
}

/// Every complete response in `buf`, in order.
fn parse_all(mut buf: &[u8]) -> Vec<Resp> {
    let mut out = Vec::new();
    while let Some((r, used)) = parse_one(buf) {
        out.push(r);
        buf = &buf[used..];
    }
    out
}

/// Reads one response off a keep-alive connection.
async fn read_response<R: AsyncRead + Unpin>(r: &mut R) -> Resp {
    let mut buf = Vec::new();
    tokio::time::timeout(BOUND, async {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some((resp, _)) = parse_one(&buf) {
                return resp;
            }
            let n = r.read(&mut chunk).await.expect("reading a response");
            assert!(
                n > 0,
                "closed mid-response: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("a response within the bound")
}

/// `request` over a fresh HTTP/1.1 connection; every response until the gateway closes.
fn raw(env: &Env, request: &str) -> Vec<Resp> {
    parse_all(raw_request(env, request).as_bytes())
}

/// A problem the gateway made itself: problem+json, `X-Request-Id` matching the body,
/// HSTS, no `Server`.
fn assert_problem(r: &Resp, status: u16) {
    assert_eq!(r.status, status, "{r:?}");
    let ct = r.header("content-type");
    assert_eq!(ct.as_deref(), Some("application/problem+json"), "{r:?}");
    let id = r.header("x-request-id").expect("X-Request-Id");
    assert_eq!(
        (r.json()["status"].as_u64(), r.json()["request_id"].as_str()),
        (Some(status.into()), Some(id.as_str()))
    );
    let hsts = r.header("strict-transport-security").unwrap_or_default();
    assert!(hsts.starts_with("max-age="), "HSTS: {r:?}");
    assert_eq!(r.header("server"), None, "Server header: {r:?}");
}

/// Minimal HTTP/2 framing for a client that does only what a test needs (and, like a
/// hostile client, never answers a PING).
mod h2raw {
    use super::*;

    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    pub const HEADERS: u8 = 1;
    pub const SETTINGS: u8 = 4;
    pub const GOAWAY: u8 = 7;
    pub const END_STREAM: u8 = 1;

    pub fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[ty, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// HPACK for `GET https://localhost{path}`, literals without indexing.
    pub fn get(path: &str) -> Vec<u8> {
        assert!(path.len() < 127);
        let mut b = vec![0x82, 0x87, 0x04, path.len() as u8];
        b.extend_from_slice(path.as_bytes());
        b.extend_from_slice(&[0x01, 9]);
        b.extend_from_slice(b"localhost");
        b
    }

    /// The next frame (type, flags, stream), or `None` once the connection is closed.
    pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> Option<(u8, u8, u32)> {
        let mut h = [0u8; 9];
        r.read_exact(&mut h).await.ok()?;
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
        let mut payload = vec![0u8; len];
        r.read_exact(&mut payload).await.ok()?;
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        Some((h[3], h[4], stream))
    }
}

// ---------------------------------------------------------------------------------------
// Slow and idle clients, the connection limit
// ---------------------------------------------------------------------------------------

/// A TLS handshake or request head not complete within `header_read_timeout_ms` ends the
/// connection, also when it trickles in at 1 byte/s.
#[test]
fn slow_handshakes_and_request_heads_are_cut_off() {
    let env = env_with("header_read_timeout_ms = 500\n");
    env.block_on(async {
        // TCP only, no ClientHello; then half a ClientHello.
        for hello in [&b""[..], &b"\x16\x03\x01\x00\xc8\x01\x00"[..]] {
            let mut tcp = TcpStream::connect(env.https).await.unwrap();
            tcp.write_all(hello).await.unwrap();
            let (got, closed) = read_until_closed(&mut tcp).await;
            assert!(closed, "handshake {hello:?} left open");
            assert!(got.is_empty(), "{got:?}");
        }
        // Handshake done, no request; h2: a preface and SETTINGS, no request.
        let mut tls = tls_connect(&env, b"http/1.1").await;
        assert!(
            read_until_closed(&mut tls).await.1,
            "silent connection left open"
        );
        let mut tls = tls_connect(&env, b"h2").await;
        let mut hello = h2raw::PREFACE.to_vec();
        hello.extend(h2raw::frame(h2raw::SETTINGS, 0, 0, &[]));
        tls.write_all(&hello).await.unwrap();
        assert!(
            read_until_closed(&mut tls).await.1,
            "silent h2 connection left open"
        );

        // A head trickled a byte at a time, as the first request and after a complete one.
        for first in [
            None,
            Some("GET /public/first HTTP/1.1\r\nHost: localhost\r\n\r\n"),
        ] {
            let tls = tls_connect(&env, b"http/1.1").await;
            let (mut rd, mut wr) = tokio::io::split(tls);
            if let Some(req) = first {
                wr.write_all(req.as_bytes()).await.unwrap();
                assert_eq!(read_response(&mut rd).await.status, 200);
            }
            let trickle = tokio::spawn(async move {
                let head = format!(
                    "GET /public/slow HTTP/1.1\r\nHost: localhost\r\nX-Pad: {}\r\n\r\n",
                    "a".repeat(200)
                );
                for b in head.bytes() {
                    if wr.write_all(&[b]).await.is_err() || wr.flush().await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
            let (got, closed) = read_until_closed(&mut rd).await;
            trickle.abort();
            assert!(closed, "trickled head (after {first:?}) left open");
            if !got.is_empty() {
                assert_problem(&parse_one(&got).expect("a whole response").0, 408);
            }
        }
    });
    assert_eq!(
        env.echo().requests(),
        1,
        "only the complete request was forwarded"
    );
}

/// An idle keep-alive connection is closed after `idle_timeout_s`; h2 gets a GOAWAY
/// first. Between requests the idle timeout governs, not the head timeout.
#[test]
fn idle_connections_are_closed_after_idle_timeout() {
    let env = env_with("header_read_timeout_ms = 500\nidle_timeout_s = 3\n");
    env.block_on(async {
        let h1 = async {
            let mut tls = tls_connect(&env, b"http/1.1").await;
            for i in 0..2 {
                let req = format!("GET /public/{i} HTTP/1.1\r\nHost: localhost\r\n\r\n");
                tls.write_all(req.as_bytes()).await.unwrap();
                assert_eq!(read_response(&mut tls).await.status, 200);
                // Longer than header_read_timeout_ms, well within idle_timeout_s.
                if i == 0 {
                    tokio::time::sleep(Duration::from_millis(1000)).await;
                }
            }
            let (got, closed) = read_until_closed(&mut tls).await;
            assert!(closed, "idle HTTP/1.1 connection left open");
            assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
        };
        let h2 = async {
            let mut tls = tls_connect(&env, b"h2").await;
            let mut out = h2raw::PREFACE.to_vec();
            out.extend(h2raw::frame(h2raw::SETTINGS, 0, 0, &[]));
            out.extend(h2raw::frame(
                h2raw::HEADERS,
                0x5,
                1,
                &h2raw::get("/public/h2"),
            ));
            tls.write_all(&out).await.unwrap();
            let (mut answered, mut goaway) = (false, false);
            let closed = tokio::time::timeout(BOUND, async {
                while let Some((ty, flags, stream)) = h2raw::read(&mut tls).await {
                    if ty == h2raw::SETTINGS && flags & 1 == 0 {
                        let ack = h2raw::frame(h2raw::SETTINGS, 1, 0, &[]);
                        let _ = tls.write_all(&ack).await;
                    }
                    answered |= stream == 1 && flags & h2raw::END_STREAM != 0;
                    if ty == h2raw::GOAWAY {
                        assert!(answered, "GOAWAY before the response");
                        goaway = true;
                    }
                }
            })
            .await
            .is_ok();
            assert!(answered, "no response on stream 1");
            assert!(goaway, "no GOAWAY");
            assert!(closed, "idle h2 connection left open after GOAWAY");
        };
        tokio::join!(h1, h2);
    });
}

/// With `max_connections = 2` a third connection waits (its handshake does not complete)
/// until one of the first two closes; the first two keep being served.
#[test]
fn connection_limit_queues_new_connections_and_serves_existing_ones() {
    let env = env_with("max_connections = 2\n");
    env.block_on(async {
        let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        let mut c1 = tls_connect(&env, b"http/1.1").await;
        let mut c2 = tls_connect(&env, b"http/1.1").await;
        for c in [&mut c1, &mut c2] {
            c.write_all(get("/public/1").as_bytes()).await.unwrap();
            assert_eq!(read_response(c).await.status, 200);
        }
        let connector = tls_connector(&env, b"http/1.1");
        let addr = env.https;
        let third = tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            connector.connect(name, tcp).await
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!third.is_finished(), "a third connection was served");
        for c in [&mut c1, &mut c2] {
            c.write_all(get("/public/2").as_bytes()).await.unwrap();
            assert_eq!(read_response(c).await.status, 200);
        }
        assert!(!third.is_finished(), "a third connection was served");
        drop(c1);
        let mut c3 = tokio::time::timeout(BOUND, third)
            .await
            .expect("the third connection is served once one closes")
            .unwrap()
            .expect("handshake");
        c3.write_all(get("/public/3").as_bytes()).await.unwrap();
        assert_eq!(read_response(&mut c3).await.status, 200);
        c2.write_all(get("/public/4").as_bytes()).await.unwrap();
        assert_eq!(read_response(&mut c2).await.status, 200);
    });
}

// ---------------------------------------------------------------------------------------
// Heads: size, parse errors, framing, Host, pipelining
// ---------------------------------------------------------------------------------------

/// A head over `max_header_bytes` is a 431 problem (HTTP/1.1 and h2), and nothing is
/// forwarded.
#[test]
fn oversized_heads_are_431_problems_and_not_forwarded() {
    let env = env_with("max_header_bytes = 4096\n");
    let head = |pad: usize| {
        format!(
            "GET /public/big HTTP/1.1\r\nHost: localhost\r\nX-Pad: {}\r\nConnection: close\r\n\r\n",
            "a".repeat(pad)
        )
    };
    // Within the limit: forwarded.
    assert_eq!(raw(&env, &head(3000))[0].status, 200);
    assert_eq!(env.echo().requests(), 1);
    // Over it, and far over it (past what the parser buffers).
    for pad in [5000, 40_000] {
        let r = raw(&env, &head(pad));
        assert_eq!(r.len(), 1, "pad {pad}: {r:?}");
        assert_problem(&r[0], 431);
    }
    let pad = "a".repeat(6000);
    let r = env.send(
        reqwest::Method::GET,
        "/public/big",
        None,
        &[("x-pad", &pad)],
        None,
        true,
    );
    assert_problem(&r, 431);
    // Far over it on h2: refused one way or another, never forwarded.
    let pad = "a".repeat(40_000);
    let client = env.client(true);
    let far = env.block_on(async {
        let r = client
            .get(env.url("/public/big"))
            .header("x-pad", &pad)
            .send()
            .await;
        r.map(|r| r.status().as_u16())
    });
    assert!(!matches!(far, Ok(s) if s != 431), "{far:?}");
    assert_eq!(env.echo().requests(), 1, "an oversized head was forwarded");
}

/// A request that cannot be parsed is a 400 problem, not a bare engine response.
#[test]
fn unparseable_requests_are_400_problems() {
    let env = env_with("");
    for req in [
        "GET /public HTTP/1.1\r\nHost: localhost\r\nNo colon here\r\n\r\n",
        "GET /public HTTP/1.1\r\nHost: localhost\r\nBad\u{1}Name: x\r\n\r\n",
        "\u{1}\u{2}\u{3} garbage\r\n\r\n",
        "GET /public HTTP/1.1\r\nHost: localhost\r\nContent-Length: abc\r\n\r\n",
    ] {
        let r = raw(&env, req);
        assert_eq!(r.len(), 1, "{req:?}: {r:?}");
        assert_problem(&r[0], 400);
    }
    assert_eq!(env.echo().requests(), 0);
}

/// Ambiguous framing is a 400 problem; identical repeated `Content-Length` values are
/// forwarded as one.
#[test]
fn ambiguous_framing_is_refused_and_repeated_length_folded() {
    let env = env_with("");
    let post = |framing: &str, body: &str| {
        format!(
            "POST /public/f HTTP/1.1\r\nHost: localhost\r\n{framing}Connection: close\r\n\r\n{body}"
        )
    };
    for (framing, body) in [
        (
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            "0\r\n\r\n",
        ),
        (
            "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
            "0\r\n\r\n",
        ),
        ("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"),
        ("Transfer-Encoding: gzip\r\n", "hello"),
        ("Transfer-Encoding: gzip, chunked\r\n", "0\r\n\r\n"),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            "0\r\n\r\n",
        ),
    ] {
        let r = raw(&env, &post(framing, body));
        assert_eq!(r.len(), 1, "{framing:?}: {r:?}");
        assert_problem(&r[0], 400);
    }
    assert_eq!(env.echo().requests(), 0, "ambiguous framing was forwarded");
    let r = raw(
        &env,
        &post("Content-Length: 5\r\nContent-Length: 5\r\n", "hello"),
    );
    assert_eq!(r[0].status, 200, "{r:?}");
    assert_eq!(r[0].echoed("content-length"), vec!["5"]);
    assert_eq!(r[0].json()["body_len"], 5);
}

/// HTTP/1.1 without Host is a 400 problem; HTTP/1.0 needs none.
#[test]
fn http11_request_without_host_is_refused() {
    let env = env_with("");
    let r = raw(
        &env,
        "GET /public/nohost HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.len(), 1, "{r:?}");
    assert_problem(&r[0], 400);
    assert_eq!(env.echo().requests(), 0);
    let r = raw(&env, "GET /public/old HTTP/1.0\r\n\r\n");
    assert_eq!(r[0].status, 200, "{r:?}");
}

/// Pipelined requests in one write are all answered, in order, refusals included.
#[test]
fn pipelined_requests_are_answered_in_order() {
    let env = env_with("");
    let get = |path: &str, last: bool| {
        let close = if last { "Connection: close\r\n" } else { "" };
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{close}\r\n")
    };
    let batch = [
        get("/slow?ms=300", false),
        get("/orders/1", false),
        get("/public/3", false),
        get("/public/4", true),
    ]
    .concat();
    let r = raw(&env, &batch);
    let statuses: Vec<u16> = r.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![200, 401, 200, 200], "{r:?}");
    assert_eq!(r[0].json()["path"], "/slow");
    assert_problem(&r[1], 401);
    assert_eq!(r[2].json()["path"], "/public/3");
    assert_eq!(r[3].json()["path"], "/public/4");
    // A request that cannot be parsed after a good one: its 400 is a problem too, and a
    // CL+TE request after a good one is refused.
    let bad = "GET /public HTTP/1.1\r\nNo colon\r\n\r\n";
    let r = raw(&env, &[get("/public/5", false), bad.into()].concat());
    assert_eq!(r.len(), 2, "{r:?}");
    assert_problem(&r[1], 400);
    let clte = "POST /public/7 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\
                Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let r = raw(&env, &[get("/public/6", false), clte.into()].concat());
    assert_eq!(r.len(), 2, "{r:?}");
    assert_eq!(r[0].json()["path"], "/public/6");
    assert_problem(&r[1], 400);
}

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
        assert_problem(&env.get("/raw/early/11", None, h2), 502);
        assert_problem(&env.get("/raw/switch", None, h2), 502);
        assert_problem(&env.get("/raw/flood", None, h2), 502);
    }
}

// ---------------------------------------------------------------------------------------
// Every response the gateway makes, h2 client resets
// ---------------------------------------------------------------------------------------

/// Responses the gateway makes itself carry no `Server` header that names the engine,
/// over HTTP/1.1 and h2, and neither do relayed ones.
#[test]
fn gateway_responses_name_no_engine() {
    let env = env_with("");
    for h2 in [false, true] {
        assert_problem(&env.get("/orders/1", None, h2), 401);
        assert_problem(&env.get("/nothing", None, h2), 404);
        let ok = env.get("/public/1", None, h2);
        assert_eq!(ok.status, 200);
        assert_eq!(ok.header("server"), None);
    }
    let r = raw(
        &env,
        "GET /public HTTP/1.1\r\nHost: localhost\r\nNo colon\r\n\r\n",
    );
    assert_problem(&r[0], 400);
}

/// An h2 stream the client resets cancels its upstream request, and the pooled upstream
/// connection another stream is using survives (it serves the next request).
#[test]
fn client_reset_h2_stream_spares_other_upstream_connections() {
    let env = env_with("");
    let client = env.client(true);
    env.block_on(async {
        let get = |path: &str| client.get(env.url(path)).send();
        let long = async {
            let r = get("/slow?ms=1000").await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        };
        let reset = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let cancelled = tokio::time::timeout(Duration::from_millis(300), get("/slow?ms=5000"));
            assert!(cancelled.await.is_err(), "the cancelled request finished");
        };
        let (long, ()) = tokio::join!(long, reset);
        // The connection goes back to the pool just after its response.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let next = get("/public/next").await.unwrap();
        assert_eq!(next.status(), 200);
        let next = next.json::<Value>().await.unwrap();
        assert_eq!(
            next["peer"], long["peer"],
            "the upstream connection of the other stream was not reused"
        );
    });
}

/// An upgrade request the backend does not accept must not turn the connection into a
/// tunnel carrying an unauthenticated second request.
#[test]
fn refused_websocket_upgrade_does_not_tunnel_a_second_request() {
    let env = Env::start();
    let raw = raw_request(
        &env,
        "GET /public/ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n\
         GET /orders/1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert!(!raw.contains(r#""path":"/orders/1""#), "tunnelled: {raw}");
    // h2c upgrade is never forwarded.
    let raw = raw_get(
        &env,
        "/public",
        None,
        "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
    );
    assert!(!raw.contains(r#"["upgrade""#), "{raw}");
    assert!(!raw.contains(r#"["http2-settings""#), "{raw}");
}

/// CL.TE / TE.CL / obfuscated TE: the smuggled request never reaches the backend
/// unauthenticated.
#[test]
fn request_smuggling_is_refused() {
    let env = Env::start();
    let smuggled = "GET /orders/1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let cases = [
        format!(
            "POST /public HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\
             Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        format!(
            "POST /public HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\
             Content-Length: 4\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
            smuggled.len()
        ),
        format!(
            "POST /public HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\
             Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        format!(
            "POST /public HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\
             Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        format!(
            "POST /public HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\
             Content-Length: 50\r\n\r\n0\r\n\r\n{smuggled}"
        ),
    ];
    for (i, c) in cases.iter().enumerate() {
        let raw = raw_request(&env, c);
        assert!(
            !raw.contains(r#""path":"/orders/1""#),
            "case {i}: smuggled request reached the backend: {raw}"
        );
    }
}
