//! Raw HTTP/1.1 and h2 clients and the gateway setup shared by the SPEC section 7 tests
//! (`protocol.rs`, `aborts.rs`), included by both with `#[path]`.
#![allow(dead_code)]

use std::time::Duration;

use crate::common::*;
use tokio::io::{AsyncRead, AsyncReadExt};

/// How long a test waits for something that should happen (far above every timeout
/// configured here).
pub const BOUND: Duration = Duration::from_secs(10);

pub const ROUTES: &str = r#"
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

pub fn env_with(server_extra: &str) -> Env {
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
pub async fn read_until_closed<R: AsyncRead + Unpin>(r: &mut R) -> (Vec<u8>, bool) {
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
pub fn parse_one(buf: &[u8]) -> Option<(Resp, usize)> {
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
pub fn parse_all(mut buf: &[u8]) -> Vec<Resp> {
    let mut out = Vec::new();
    while let Some((r, used)) = parse_one(buf) {
        out.push(r);
        buf = &buf[used..];
    }
    out
}

/// Reads one response off a keep-alive connection.
pub async fn read_response<R: AsyncRead + Unpin>(r: &mut R) -> Resp {
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
pub fn raw(env: &Env, request: &str) -> Vec<Resp> {
    parse_all(raw_request(env, request).as_bytes())
}

/// A problem the gateway made itself: problem+json, `X-Request-Id` matching the body,
/// HSTS, no `Server`.
pub fn assert_status_problem(r: &Resp, status: u16) {
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
pub mod h2raw {
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
