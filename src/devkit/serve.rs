//! The HTTPS server plumbing shared by the dev issuer and the echo backend.
//!
//! One accept loop per server; every connection gets its own task (TLS handshake included,
//! so a stalled client never blocks accepting others) held in a `JoinSet`. Shutting down —
//! explicitly or by dropping the [`TlsServer`] — closes the listener and aborts every
//! connection task, so tests never leak sockets into the next test.

use std::convert::Infallible;
use std::future::Future;
use std::io::BufReader;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::pki::CertPair;

/// Why a dev server's streamed response body failed (hyper then aborts the response).
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Response body type of the dev servers: boxed so handlers can mix fixed and streamed
/// bodies; not `Sync` because streamed bodies need not be. A body that fails makes hyper
/// abort the response (the echo backend's `/break`).
pub(crate) type Body = UnsyncBoxBody<Bytes, BoxError>;

/// What the handler learns about the connection a request arrived on.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConnInfo {
    pub peer: Option<SocketAddr>,
    /// DER of the client's end-entity certificate, when it presented one.
    pub client_cert: Option<CertificateDer<'static>>,
    /// The connection's socket, valid while the connection is served (the echo
    /// backend's `/break?how=reset` sets `SO_LINGER` 0 on it to close with a reset).
    pub fd: Option<std::os::fd::RawFd>,
}

pub(crate) type HandlerFuture = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;
pub(crate) type Handler =
    Arc<dyn Fn(Request<Incoming>, Arc<ConnInfo>) -> HandlerFuture + Send + Sync>;

/// A running HTTPS server on a loopback port.
pub(crate) struct TlsServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TlsServer {
    /// Binds `addr` and serves `handler` over TLS with ALPN `h2` and `http/1.1`.
    pub(crate) async fn start(
        addr: SocketAddr,
        tls: Arc<ServerConfig>,
        handler: Handler,
    ) -> anyhow::Result<TlsServer> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let addr = listener.local_addr()?;
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(
            listener,
            TlsAcceptor::from(tls),
            handler,
            stop_rx,
        ));
        Ok(TlsServer {
            addr,
            stop,
            task: Some(task),
        })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, aborts every connection task and waits until they are gone.
    pub(crate) async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        // Dropping without `shutdown` still stops the loop; it just isn't awaited.
        let _ = self.stop.send(true);
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    handler: Handler,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            res = listener.accept() => match res {
                Ok((tcp, peer)) => {
                    conns.spawn(serve_conn(tcp, peer, acceptor.clone(), handler.clone()));
                }
                Err(e) => {
                    // Typically EMFILE; back off instead of spinning.
                    tracing::debug!(error = %e, "devkit accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            // Reap finished connections so the set does not grow without bound.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            res = stop.changed() => {
                if res.is_err() || *stop.borrow() {
                    break;
                }
            }
        }
    }
    drop(listener);
    conns.shutdown().await;
}

async fn serve_conn(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    handler: Handler,
) {
    let _ = tcp.set_nodelay(true);
    let fd = std::os::fd::AsRawFd::as_raw_fd(&tcp);
    let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "devkit TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    let info = Arc::new(ConnInfo {
        peer: Some(peer),
        fd: Some(fd),
        client_cert: tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.clone().into_owned()),
    });
    let service = hyper::service::service_fn(move |req| {
        let fut = handler(req, info.clone());
        async move { Ok::<_, Infallible>(fut.await) }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    if let Err(e) = builder.serve_connection(TokioIo::new(tls), service).await {
        tracing::debug!(%peer, error = %e, "devkit connection ended with error");
    }
}

/// A rustls server config (ring provider, TLS 1.2+1.3, ALPN h2 + http/1.1) for `pair`.
/// With `client_ca_pem`, a client certificate chaining to that CA is required.
pub(crate) fn server_config(
    pair: &CertPair,
    client_ca_pem: Option<&str>,
) -> anyhow::Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in parse_certs(ca)? {
                roots.add(cert)?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config =
        builder.with_single_cert(parse_certs(&pair.cert_pem)?, parse_key(&pair.key_pem)?)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

pub(crate) fn parse_certs(pem: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = rustls_pemfile::certs(&mut BufReader::new(pem.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .context("parsing certificate PEM")?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in PEM");
    Ok(certs)
}

pub(crate) fn parse_key(pem: &str) -> anyhow::Result<PrivateKeyDer<'static>> {
    rustls_pemfile::private_key(&mut BufReader::new(pem.as_bytes()))
        .context("parsing private key PEM")?
        .ok_or_else(|| anyhow::anyhow!("no private key in PEM"))
}

/// A complete response with a fixed body.
pub(crate) fn full(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, content_type)
        .body(
            Full::new(body.into())
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .expect("static response parts are valid")
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    full(status, "application/json", value.to_string())
}

/// Reads a request body to the end, up to `limit` bytes.
pub(crate) async fn read_body(body: Incoming, limit: usize) -> anyhow::Result<Bytes> {
    let limited = http_body_util::Limited::new(body, limit);
    let collected = limited
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading request body: {e}"))?;
    Ok(collected.to_bytes())
}

/// Query parameter `name` of `req`, percent-decoded.
pub(crate) fn query_param<B>(req: &Request<B>, name: &str) -> Option<String> {
    let query = req.uri().query()?;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}
