//! `server.proxy_protocol`: behind an L4 load balancer every connection starts with a
//! PROXY protocol v2 header, and the source address it carries is the client: it is what
//! `X-Forwarded-For` carries and what `trusted_proxies` is checked against. A connection
//! without a valid v2 header is closed; a `LOCAL` header (the balancer's health check)
//! keeps the socket peer. With the key off (the default) a PROXY header is not consumed.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// A v2 header, written by hand (not by the parser under test): `PROXY` (or `LOCAL`)
/// from `src` to the gateway's address, TCP over the source's family.
fn v2_header(local: bool, src: Option<SocketAddr>) -> Vec<u8> {
    let mut v = SIGNATURE.to_vec();
    v.push(if local { 0x20 } else { 0x21 });
    let addrs: Vec<u8> = match src {
        None => Vec::new(),
        Some(SocketAddr::V4(a)) => {
            let mut b = a.ip().octets().to_vec();
            b.extend([127, 0, 0, 1]);
            b.extend(a.port().to_be_bytes());
            b.extend(443u16.to_be_bytes());
            b
        }
        Some(SocketAddr::V6(a)) => {
            let mut b = a.ip().octets().to_vec();
            b.extend(std::net::Ipv6Addr::LOCALHOST.octets());
            b.extend(a.port().to_be_bytes());
            b.extend(443u16.to_be_bytes());
            b
        }
    };
    v.push(match src {
        None => 0x00,
        Some(SocketAddr::V4(_)) => 0x11,
        Some(SocketAddr::V6(_)) => 0x21,
    });
    // A TLV the gateway ignores (PP2_TYPE_NOOP), as balancers add their own.
    let tlv = [0x04, 0x00, 0x02, 0xab, 0xcd];
    v.extend(((addrs.len() + tlv.len()) as u16).to_be_bytes());
    v.extend(addrs);
    v.extend(tlv);
    v
}

/// Opens a TCP connection, writes `prefix`, then does TLS and one HTTP/1.1 GET of `path`
/// with `headers`. `Ok((status, body as JSON))`, or why the exchange failed.
async fn get_after(
    env: &Env,
    prefix: &[u8],
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, Value), String> {
    let mut tcp = TcpStream::connect(env.https)
        .await
        .map_err(|e| e.to_string())?;
    tcp.write_all(prefix).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tls_connector(env, b"http/1.1")
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = http::Request::get(path).header("host", "localhost");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let json = serde_json::from_slice(&body)
        .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&body)))?;
    Ok((status, json))
}

/// The values of `name` the echo backend received.
fn echoed(body: &Value, name: &str) -> Vec<String> {
    body["headers"]
        .as_array()
        .expect("the echo backend's answer")
        .iter()
        .filter(|p| p[0].as_str() == Some(name))
        .map(|p| p[1].as_str().unwrap().to_string())
        .collect()
}

fn env_with(server_extra: &str) -> Env {
    Env::with(EnvOptions {
        server_extra: server_extra.to_string(),
        ..EnvOptions::default()
    })
}

/// Waits (generously) until the gateway closes `tcp` without answering: read returns end
/// of stream or an error, never data.
async fn closed_without_answer(mut tcp: TcpStream) {
    let mut buf = [0u8; 256];
    match tokio::time::timeout(Duration::from_secs(30), tcp.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!(
            "the gateway answered {n} bytes: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(_) => panic!("the gateway kept the connection open"),
    }
}

#[test]
fn the_proxy_source_is_the_client_for_x_forwarded_for() {
    let env = env_with("proxy_protocol = true");
    env.block_on(async {
        let src: SocketAddr = "203.0.113.7:50123".parse().unwrap();
        let (status, body) = get_after(&env, &v2_header(false, Some(src)), "/public", &[])
            .await
            .unwrap();
        assert_eq!(status, 200);
        assert_eq!(echoed(&body, "x-forwarded-for"), ["203.0.113.7"]);

        let src: SocketAddr = "[2001:db8::7]:4242".parse().unwrap();
        let (status, body) = get_after(&env, &v2_header(false, Some(src)), "/public", &[])
            .await
            .unwrap();
        assert_eq!(status, 200);
        assert_eq!(echoed(&body, "x-forwarded-for"), ["2001:db8::7"]);

        // The balancer's health check: LOCAL, no addresses; the socket peer is the client.
        let (status, body) = get_after(&env, &v2_header(true, None), "/public", &[])
            .await
            .unwrap();
        assert_eq!(status, 200);
        assert_eq!(echoed(&body, "x-forwarded-for"), ["127.0.0.1"]);
    });
}

#[test]
fn authenticated_requests_work_through_the_header() {
    let env = env_with("proxy_protocol = true");
    let token = env.token(serde_json::json!({}));
    let auth = format!("Bearer {token}");
    env.block_on(async {
        let src: SocketAddr = "198.51.100.20:1000".parse().unwrap();
        let (status, body) = get_after(
            &env,
            &v2_header(false, Some(src)),
            "/orders/1",
            &[("authorization", &auth)],
        )
        .await
        .unwrap();
        assert_eq!(status, 200);
        assert_eq!(echoed(&body, "x-forwarded-for"), ["198.51.100.20"]);
        assert_eq!(echoed(&body, "x-row-filter"), ["region=eu-west"]);
    });
}

/// `trusted_proxies` is checked against the address from the PROXY header, not the
/// socket peer (the balancer): the header is trusted because the operator turned it on.
#[test]
fn trusted_proxies_apply_to_the_proxy_source() {
    // The socket peer (127.0.0.1) is "trusted", but it is not what the check sees.
    let env =
        env_with("proxy_protocol = true\ntrusted_proxies = [\"127.0.0.0/8\", \"10.1.0.0/16\"]");
    env.block_on(async {
        // A client straight behind the L4 balancer, spoofing a chain: replaced.
        let client: SocketAddr = "203.0.113.9:40000".parse().unwrap();
        let (_, body) = get_after(
            &env,
            &v2_header(false, Some(client)),
            "/public",
            &[("x-forwarded-for", "1.1.1.1")],
        )
        .await
        .unwrap();
        assert_eq!(echoed(&body, "x-forwarded-for"), ["203.0.113.9"]);

        // An L7 proxy in a trusted block behind the balancer: its chain is extended.
        let l7: SocketAddr = "10.1.2.3:40000".parse().unwrap();
        let (_, body) = get_after(
            &env,
            &v2_header(false, Some(l7)),
            "/public",
            &[("x-forwarded-for", "198.51.100.1")],
        )
        .await
        .unwrap();
        assert_eq!(echoed(&body, "x-forwarded-for"), ["198.51.100.1, 10.1.2.3"]);
    });
}

#[test]
fn a_connection_without_a_valid_header_is_closed() {
    let env = env_with("proxy_protocol = true\nheader_read_timeout_ms = 2000");
    env.block_on(async {
        // Straight TLS: the ClientHello is not a PROXY header.
        let r = get_after(&env, b"", "/public", &[]).await;
        assert!(r.is_err(), "served without a header: {r:?}");

        // The text v1 header is refused.
        let r = get_after(
            &env,
            b"PROXY TCP4 203.0.113.7 127.0.0.1 50000 443\r\n",
            "/public",
            &[],
        )
        .await;
        assert!(r.is_err(), "served after a v1 header: {r:?}");

        // Plain HTTP (no header, no TLS).
        let mut tcp = TcpStream::connect(env.https).await.unwrap();
        tcp.write_all(b"GET /public HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        closed_without_answer(tcp).await;

        // Garbage after a valid signature: an unknown version/command byte.
        let mut bad = v2_header(false, Some("203.0.113.7:1".parse().unwrap()));
        bad[12] = 0x2f;
        let r = get_after(&env, &bad, "/public", &[]).await;
        assert!(r.is_err(), "served after a bad command: {r:?}");

        // Truncated: the announced length never arrives; closed at the read deadline.
        let full = v2_header(false, Some("203.0.113.7:1".parse().unwrap()));
        let mut tcp = TcpStream::connect(env.https).await.unwrap();
        tcp.write_all(&full[..full.len() - 4]).await.unwrap();
        closed_without_answer(tcp).await;

        // An announced length past the bound.
        let mut long = full.clone();
        long[14..16].copy_from_slice(&60000u16.to_be_bytes());
        let mut tcp = TcpStream::connect(env.https).await.unwrap();
        tcp.write_all(&long).await.unwrap();
        closed_without_answer(tcp).await;

        // Still serving properly framed connections.
        let (status, body) = get_after(
            &env,
            &v2_header(false, Some("203.0.113.8:2".parse().unwrap())),
            "/public",
            &[],
        )
        .await
        .unwrap();
        assert_eq!(status, 200);
        assert_eq!(echoed(&body, "x-forwarded-for"), ["203.0.113.8"]);
    });
}

#[test]
fn off_by_default_a_proxy_header_is_not_consumed() {
    let env = Env::start();
    env.block_on(async {
        let (status, body) = get_after(&env, b"", "/public", &[]).await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(echoed(&body, "x-forwarded-for"), ["127.0.0.1"]);
        let r = get_after(
            &env,
            &v2_header(false, Some("203.0.113.7:1".parse().unwrap())),
            "/public",
            &[],
        )
        .await;
        assert!(r.is_err(), "a PROXY header was consumed: {r:?}");
    });
    assert_eq!(env.get("/public", None, true).status, 200);
}
