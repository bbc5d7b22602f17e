//! SPEC section 7 (limits and protocol hygiene), end to end over real TLS: one test per
//! rule. Slow and idle clients, the connection limit, oversized and unparseable heads,
//! request framing, Host, pipelining, the `Server` header, and h2 streams reset by the
//! client (upstreams failing after their head and informational responses: `aborts.rs`).
//!
//! Waits are bounded (`BOUND`) and generous: a test asserts that something happens
//! before the bound, never how fast.

mod common;
#[path = "protocol/support.rs"]
mod support;

use std::time::Duration;

use common::*;
use serde_json::Value;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

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
                assert_status_problem(&parse_one(&got).expect("a whole response").0, 408);
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
        assert_status_problem(&r[0], 431);
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
    assert_status_problem(&r, 431);
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
        assert_status_problem(&r[0], 400);
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
        assert_status_problem(&r[0], 400);
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
    assert_status_problem(&r[0], 400);
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
    assert_status_problem(&r[1], 401);
    assert_eq!(r[2].json()["path"], "/public/3");
    assert_eq!(r[3].json()["path"], "/public/4");
    // A request that cannot be parsed after a good one: its 400 is a problem too, and a
    // CL+TE request after a good one is refused.
    let bad = "GET /public HTTP/1.1\r\nNo colon\r\n\r\n";
    let r = raw(&env, &[get("/public/5", false), bad.into()].concat());
    assert_eq!(r.len(), 2, "{r:?}");
    assert_status_problem(&r[1], 400);
    let clte = "POST /public/7 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\
                Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let r = raw(&env, &[get("/public/6", false), clte.into()].concat());
    assert_eq!(r.len(), 2, "{r:?}");
    assert_eq!(r[0].json()["path"], "/public/6");
    assert_status_problem(&r[1], 400);
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
        assert_status_problem(&env.get("/orders/1", None, h2), 401);
        assert_status_problem(&env.get("/nothing", None, h2), 404);
        let ok = env.get("/public/1", None, h2);
        assert_eq!(ok.status, 200);
        assert_eq!(ok.header("server"), None);
    }
    let r = raw(
        &env,
        "GET /public HTTP/1.1\r\nHost: localhost\r\nNo colon\r\n\r\n",
    );
    assert_status_problem(&r[0], 400);
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
