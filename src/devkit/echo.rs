//! mTLS echo backend: the upstream the gateway proxies to in the demo and the tests.
//!
//! It refuses any TLS client without a certificate chaining to the configured CA, so a
//! test that reaches it proves the gateway presented its upstream identity. Every answer
//! describes the request as the backend saw it (method, path, query, version, headers,
//! client certificate subject, body length and SHA-256), which is how tests check header
//! stripping and injection. Bodies are hashed while streaming, never buffered.
//!
//! Special paths: `/slow?ms=N` (delay), `/bytes?n=N` (stream N pattern bytes, see
//! [`pattern_byte`]), `/upload` (same JSON, body read in full), `/status?code=N`, and
//! `/break?after=N&how=reset|stall|short&framing=length|chunked`: a 200 head, N pattern
//! bytes, a pause, then a failure: `reset` closes the connection with a TCP reset,
//! `short` closes it cleanly before the body is complete, `stall` sends nothing more (for
//! up to a minute). With `framing=length` (the default) the head announces a
//! `Content-Length` [`BREAK_MISSING`] bytes larger than what is sent; with `chunked` the
//! terminating chunk never comes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::pki::CertPair;
use super::serve::{self, Body, BoxError, ConnInfo, Handler, TlsServer};

/// Where the echo backend listens.
#[derive(Debug, Clone)]
pub struct EchoOptions {
    pub addr: SocketAddr,
}

impl Default for EchoOptions {
    fn default() -> Self {
        EchoOptions {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }
}

/// Largest `/slow` delay honoured, so a typo cannot hang a test run.
const MAX_SLOW_MS: u64 = 60_000;
/// Chunk size for `/bytes`; small enough that a large answer really streams.
const CHUNK: usize = 16 * 1024;
/// Largest `after` honoured by `/break`.
const MAX_BREAK_AFTER: u64 = 1 << 20;
/// How many bytes more than it sends `/break` announces in its `Content-Length`.
pub const BREAK_MISSING: u64 = 4096;
/// How long `/break` waits after its first bytes before failing, so that the head and
/// those bytes have gone out (and through a proxy) before the connection breaks.
const BREAK_PAUSE: Duration = Duration::from_millis(300);

/// A running echo backend.
pub struct EchoBackend {
    server: TlsServer,
    requests: Arc<AtomicUsize>,
}

impl EchoBackend {
    /// Serves on `opts.addr` with `tls` as server identity, requiring client certificates
    /// issued by `client_ca_pem`.
    pub async fn start(
        tls: &CertPair,
        client_ca_pem: &str,
        opts: EchoOptions,
    ) -> anyhow::Result<EchoBackend> {
        let config = serve::server_config(tls, Some(client_ca_pem))?;
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let handler: Handler = Arc::new(move |req, info| {
            counter.fetch_add(1, Ordering::SeqCst);
            Box::pin(handle(req, info))
        });
        let server = TlsServer::start(opts.addr, config, handler).await?;
        Ok(EchoBackend { server, requests })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `https://127.0.0.1:PORT`, handy for upstream config.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr())
    }

    /// Requests received so far (counted when they arrive, before any `/slow` delay).
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Closes the listener and every open connection.
    pub async fn shutdown(self) {
        self.server.shutdown().await
    }
}

/// Byte `i` of the `/bytes` stream. A prime modulus makes offset errors visible.
pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

async fn handle(req: Request<Incoming>, info: Arc<ConnInfo>) -> Response<Body> {
    let path = req.uri().path().to_string();
    match path.as_str() {
        "/bytes" => {
            let n = serve::query_param(&req, "n")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            stream_pattern(n)
        }
        "/slow" => {
            let ms = serve::query_param(&req, "ms")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(1000)
                .min(MAX_SLOW_MS);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            echo(req, &info, StatusCode::OK).await
        }
        "/break" => break_after(&req, &info),
        "/status" => {
            let status = serve::query_param(&req, "code")
                .and_then(|v| v.parse::<u16>().ok())
                .filter(|c| (200..=599).contains(c))
                .and_then(|c| StatusCode::from_u16(c).ok());
            match status {
                Some(s) => echo(req, &info, s).await,
                None => serve::json(
                    StatusCode::BAD_REQUEST,
                    &json!({"error": "code must be 200..=599"}),
                ),
            }
        }
        // `/upload` and everything else: describe the request.
        _ => echo(req, &info, StatusCode::OK).await,
    }
}

/// The echo JSON, with the body consumed frame by frame for its length and hash.
async fn echo(req: Request<Incoming>, info: &ConnInfo, status: StatusCode) -> Response<Body> {
    let (parts, mut body) = req.into_parts();
    let mut hasher = Sha256::new();
    let mut len: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    hasher.update(data);
                    len += data.len() as u64;
                }
            }
            Err(e) => {
                return serve::json(
                    StatusCode::BAD_REQUEST,
                    &json!({"error": format!("reading body: {e}")}),
                )
            }
        }
    }
    // HeaderMap yields names in first-seen order with repeated values kept together;
    // exact interleaving across names is not observable through hyper.
    let headers: Vec<Value> = parts
        .headers
        .iter()
        .map(|(k, v)| json!([k.as_str(), String::from_utf8_lossy(v.as_bytes())]))
        .collect();
    let (subject, cn) = match &info.client_cert {
        Some(der) => cert_subject(der),
        None => (None, None),
    };
    let doc = json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "client_subject": subject,
        "client_cn": cn,
        "peer": info.peer.map(|p| p.to_string()),
        "body_len": len,
        "body_sha256": hex::encode(hasher.finalize()),
    });
    // 204/304 must not carry a body.
    if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        let mut resp = serve::full(status, "application/json", Bytes::new());
        resp.headers_mut().remove(hyper::header::CONTENT_TYPE);
        return resp;
    }
    serve::json(status, &doc)
}

/// Subject DN (RFC 4514-style string) and common name of a DER certificate.
fn cert_subject(der: &[u8]) -> (Option<String>, Option<String>) {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => {
            let subject = cert.subject();
            let cn = subject
                .iter_common_name()
                .next()
                .and_then(|a| a.as_str().ok())
                .map(str::to_string);
            (Some(subject.to_string()), cn)
        }
        Err(_) => (None, None),
    }
}

/// `n` pattern bytes, generated chunk by chunk as the client reads.
fn stream_pattern(n: u64) -> Response<Body> {
    let stream = futures::stream::unfold(0u64, move |offset| async move {
        if offset >= n {
            return None;
        }
        let len = (n - offset).min(CHUNK as u64);
        let chunk: Vec<u8> = (offset..offset + len).map(pattern_byte).collect();
        Some((
            Ok::<_, BoxError>(Frame::data(Bytes::from(chunk))),
            offset + len,
        ))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(hyper::header::CONTENT_TYPE, "application/octet-stream")
        .header(hyper::header::CONTENT_LENGTH, n)
        .body(StreamBody::new(stream).boxed_unsync())
        .expect("static response parts are valid")
}

/// How `/break` fails after its first bytes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Break {
    Reset,
    Stall,
    Short,
}

/// `/break`: a 200 head and `after` pattern bytes, then the connection breaks (see the
/// module docs). The failure is an error from the body stream, which makes hyper drop
/// the connection without finishing the response.
fn break_after(req: &Request<Incoming>, info: &ConnInfo) -> Response<Body> {
    let after = serve::query_param(req, "after")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(1024)
        .min(MAX_BREAK_AFTER);
    let how = match serve::query_param(req, "how").as_deref() {
        Some("reset") => Break::Reset,
        Some("stall") => Break::Stall,
        _ => Break::Short,
    };
    let chunked = serve::query_param(req, "framing").as_deref() == Some("chunked");
    let fd = info.fd;
    let first = Bytes::from((0..after).map(pattern_byte).collect::<Vec<u8>>());
    // Step 0: the first bytes; step 1: the pause and the failure; then nothing.
    let stream = futures::stream::unfold(0u8, move |step| {
        let first = first.clone();
        async move {
            match step {
                0 => Some((Ok(Frame::data(first)), 1)),
                1 => {
                    tokio::time::sleep(BREAK_PAUSE).await;
                    let why: BoxError = match how {
                        Break::Stall => {
                            tokio::time::sleep(Duration::from_millis(MAX_SLOW_MS)).await;
                            "stalled for a minute".into()
                        }
                        Break::Reset => {
                            if let Some(fd) = fd {
                                // SAFETY: the body is polled by the task that owns the
                                // connection, so its socket is open here.
                                let sock = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
                                let _ =
                                    socket2::SockRef::from(&sock).set_linger(Some(Duration::ZERO));
                            }
                            "reset on request".into()
                        }
                        Break::Short => "closed short on request".into(),
                    };
                    Some((Err(why), 2))
                }
                _ => None,
            }
        }
    });
    let mut resp = Response::builder()
        .status(StatusCode::OK)
        .header(hyper::header::CONTENT_TYPE, "application/octet-stream");
    if !chunked {
        resp = resp.header(hyper::header::CONTENT_LENGTH, after + BREAK_MISSING);
    }
    resp.body(StreamBody::new(stream).boxed_unsync())
        .expect("static response parts are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_of_dev_client_cert() {
        let pki = crate::devkit::DevPki::generate().unwrap();
        let der = serve::parse_certs(&pki.client.cert_pem).unwrap().remove(0);
        let (subject, cn) = cert_subject(&der);
        assert_eq!(cn.as_deref(), Some("gatehouse-gateway"));
        assert!(subject.unwrap().contains("CN=gatehouse-gateway"));
    }

    #[test]
    fn pattern_wraps_at_251() {
        assert_eq!(pattern_byte(0), 0);
        assert_eq!(pattern_byte(250), 250);
        assert_eq!(pattern_byte(251), 0);
    }
}
