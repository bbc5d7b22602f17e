//! The admin listener (plain HTTP, meant for loopback): `GET /healthz`, `GET /readyz`,
//! `GET /metrics`. Served by hyper on the background runtime, never on a proxy worker.
//!
//! Also home of the plaintext redirect listener (`server.redirect_http`), the other small
//! hyper server: it answers 308 to the HTTPS URL and never proxies.

pub mod metrics;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Why the gateway is not ready, or `Ok`.
pub type ReadyCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Most connections served at once per plain listener; more wait in the accept queue.
const MAX_CONNECTIONS: usize = 256;
/// A client must send its request headers within this time (slowloris on port 80).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// No connection lives longer than this; clients reconnect.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);

/// Serves plain HTTP (HTTP/1.1, and h2c for the admin port) on `listener` until `stop`
/// turns true. Bounded: at most [`MAX_CONNECTIONS`] at once, request headers within
/// [`HEADER_READ_TIMEOUT`], each connection at most [`CONNECTION_LIFETIME`].
pub async fn serve_plain<F, Fut>(listener: TcpListener, mut stop: watch::Receiver<bool>, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = stop.changed() => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = stop.changed() => break,
            acc = listener.accept() => match acc {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let h = handler.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc = service_fn(move |req| {
                let h = h.clone();
                async move { Ok::<_, Infallible>(h(req).await) }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = tokio::time::timeout(CONNECTION_LIFETIME, conn) => {}
                _ = stop.changed() => {}
            }
        });
    }
}

fn text(
    status: StatusCode,
    body: impl Into<Bytes>,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}

/// Work done just before `/metrics` renders (gauges read from live state).
pub type ScrapeHook = Arc<dyn Fn() + Send + Sync>;

/// The admin handler.
pub fn admin_handler(
    ready: ReadyCheck,
    on_scrape: ScrapeHook,
) -> impl Fn(Request<Incoming>) -> std::future::Ready<Response<Full<Bytes>>>
       + Clone
       + Send
       + Sync
       + 'static {
    move |req: Request<Incoming>| {
        let resp = if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
            text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n", "text/plain")
        } else {
            match req.uri().path() {
                "/healthz" => text(StatusCode::OK, "ok\n", "text/plain"),
                "/readyz" => match ready() {
                    Ok(()) => text(StatusCode::OK, "ready\n", "text/plain"),
                    Err(why) => text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready: {why}\n"),
                        "text/plain",
                    ),
                },
                "/metrics" => text(
                    StatusCode::OK,
                    {
                        on_scrape();
                        metrics::render()
                    },
                    "text/plain; version=0.0.4",
                ),
                _ => text(
                    StatusCode::NOT_FOUND,
                    "not found: try /healthz, /readyz or /metrics\n",
                    "text/plain",
                ),
            }
        };
        std::future::ready(resp)
    }
}

/// The redirect handler: `308` to `https://HOST[:PORT]/path?query`. No HSTS: it is
/// never sent over plain HTTP (browsers ignore it there, RFC 6797 section 7.2).
pub fn redirect_handler(
    https_port: u16,
) -> impl Fn(Request<Incoming>) -> std::future::Ready<Response<Full<Bytes>>>
       + Clone
       + Send
       + Sync
       + 'static {
    move |req: Request<Incoming>| std::future::ready(redirect_response(&req, https_port))
}

/// Builds the redirect for one request (plain function for unit tests).
pub fn redirect_response<B>(req: &Request<B>, https_port: u16) -> Response<Full<Bytes>> {
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| crate::policy::route::strip_port(h).to_string())
        .filter(|h| valid_host(h));
    let Some(host) = host else {
        return text(
            StatusCode::BAD_REQUEST,
            "a valid Host header is required\n",
            "text/plain",
        );
    };
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let location = if https_port == 443 {
        format!("https://{host}{pq}")
    } else {
        format!("https://{host}:{https_port}{pq}")
    };
    // HSTS is not sent over plain HTTP: browsers ignore it there (RFC 6797 section 7.2).
    Response::builder()
        .status(StatusCode::PERMANENT_REDIRECT)
        .header("location", location)
        .header("content-length", "0")
        .body(Full::new(Bytes::new()))
        .unwrap_or_else(|_| text(StatusCode::BAD_REQUEST, "bad request\n", "text/plain"))
}

/// A DNS name, IPv4 address or bracketed IPv6 address: nothing that could bend the URL.
fn valid_host(h: &str) -> bool {
    if let Some(inner) = h.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !h.is_empty()
        && h.len() <= 253
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Binds a listener, with a message that names the key to change.
pub async fn bind(addr: SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} ({key}): {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(host: Option<&str>, uri: &str) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        if let Some(h) = host {
            b = b.header("host", h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn redirect_keeps_path_and_query_and_uses_https_port() {
        let r = redirect_response(&req(Some("api.example.com:8080"), "/orders/7?x=1"), 8443);
        assert_eq!(r.status(), 308);
        assert_eq!(
            r.headers()["location"],
            "https://api.example.com:8443/orders/7?x=1"
        );
        let r = redirect_response(&req(Some("api.example.com"), "/"), 443);
        assert_eq!(r.headers()["location"], "https://api.example.com/");
        let r = redirect_response(&req(Some("[::1]:8080"), "/a"), 8443);
        assert_eq!(r.headers()["location"], "https://[::1]:8443/a");
    }

    #[test]
    fn redirect_refuses_bad_host() {
        assert_eq!(redirect_response(&req(None, "/"), 8443).status(), 400);
        assert_eq!(
            redirect_response(&req(Some("evil.com/x"), "/"), 8443).status(),
            400
        );
        assert_eq!(
            redirect_response(&req(Some("a@b"), "/"), 8443).status(),
            400
        );
    }
}
