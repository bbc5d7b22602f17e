//! The HTTPS listener: accepts connections up to `max_connections` (more wait in the
//! kernel backlog), completes the TLS handshake within `header_read_timeout_ms`, serves
//! HTTP/1.1 or h2 by ALPN with hyper, and enforces the SPEC section 7 timeouts:
//!
//! - with `proxy_protocol`, the PROXY v2 header and the TLS handshake after it must both
//!   arrive within `header_read_timeout_ms` of the accept ([`proxy_protocol`]);
//! - a request head must arrive within `header_read_timeout_ms` of its first byte (of
//!   the handshake, for the first request; h2: only the first request is timed);
//! - a connection with nothing in flight is closed after `idle_timeout_s` (h2: GOAWAY,
//!   and closed anyway if the client does not end it within `header_read_timeout_ms`);
//! - on drain, every connection finishes what it has in flight and closes.
//!
//! The timeouts are watched per connection from an activity record that the socket
//! wrapper ([`Watched`]) and the request path update, so hyper's own header timer (which
//! would also close idle keep-alive connections after the header timeout) is off.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::Shared;
use crate::config::Limits;

mod framing;
pub mod proxy_protocol;

/// One accepted connection, as the request path sees it.
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The peer's address as `X-Forwarded-For` gives it (rendered once per connection).
    pub forwarded: crate::pipeline::Peer,
    /// Negotiated h2 by ALPN.
    pub h2: bool,
    pub activity: Activity,
    /// HSTS for responses hyper writes itself (see [`Watched`]).
    hsts: Option<http::HeaderValue>,
    /// The index of the first request head that carried both `Content-Length` and
    /// `Transfer-Encoding` (`u64::MAX`: none), which hyper's parser hides (see
    /// [`framing`]).
    framing_conflict: AtomicU64,
}

impl ConnInfo {
    /// `Err` when the request being handled (HTTP/1.1) carried both `Content-Length`
    /// and `Transfer-Encoding`: hyper kept the latter and dropped the former.
    pub fn framing(&self) -> Result<(), &'static str> {
        let started = self.activity.started.load(Ordering::Relaxed);
        if started > 0 && self.framing_conflict.load(Ordering::Relaxed) == started - 1 {
            return Err("a request may not carry both Content-Length and Transfer-Encoding");
        }
        Ok(())
    }
}

/// When a connection last did what, for the timeouts (milliseconds since it opened).
pub struct Activity {
    opened: Instant,
    inflight: AtomicU32,
    /// Requests started on this connection.
    started: AtomicU64,
    /// When the bytes of the next request head began to arrive (0: none pending).
    head_since: AtomicU64,
    /// When the last request ended (or the connection opened).
    idle_since: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            opened: Instant::now(),
            inflight: AtomicU32::new(0),
            started: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            idle_since: AtomicU64::new(1),
        }
    }

    fn now(&self) -> u64 {
        (self.opened.elapsed().as_millis() as u64).max(1)
    }

    /// Bytes arrived: with nothing in flight they start a request head.
    fn on_bytes(&self) {
        if self.inflight.load(Ordering::Relaxed) == 0
            && self.head_since.load(Ordering::Relaxed) == 0
        {
            self.head_since.store(self.now(), Ordering::Relaxed);
        }
    }

    /// A request head is complete.
    pub fn request_started(&self) {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        self.started.fetch_add(1, Ordering::Relaxed);
        self.head_since.store(0, Ordering::Relaxed);
    }

    /// Nothing in flight.
    fn is_idle(&self) -> bool {
        self.inflight.load(Ordering::Relaxed) == 0
    }

    /// A response is done (or abandoned).
    pub fn request_finished(&self) {
        self.inflight.fetch_sub(1, Ordering::Relaxed);
        self.idle_since.store(self.now(), Ordering::Relaxed);
    }

    /// How long nothing has been in flight (zero while a request is, or a head arrives).
    fn idle_for(&self) -> Duration {
        if self.inflight.load(Ordering::Relaxed) > 0 || self.head_since.load(Ordering::Relaxed) > 0
        {
            return Duration::ZERO;
        }
        Duration::from_millis(
            self.now()
                .saturating_sub(self.idle_since.load(Ordering::Relaxed)),
        )
    }

    /// What to do now: `Err(why)` closes the connection, `Ok(t)` checks again at `t`.
    fn check(&self, limits: &Limits, h2: bool) -> Result<Duration, &'static str> {
        let now = self.now();
        let head = self.head_since.load(Ordering::Relaxed);
        // h2 frames carry more than heads: only the first request's is timed there.
        if head > 0 && (!h2 || self.started.load(Ordering::Relaxed) == 0) {
            let deadline = head + limits.header_read_timeout.as_millis() as u64;
            if now >= deadline {
                return Err("request head not received within header_read_timeout_ms");
            }
            return Ok(Duration::from_millis(deadline - now));
        }
        if self.inflight.load(Ordering::Relaxed) == 0 {
            let deadline =
                self.idle_since.load(Ordering::Relaxed) + limits.idle_timeout.as_millis() as u64;
            if now >= deadline {
                return Err("idle for idle_timeout_s");
            }
            return Ok(Duration::from_millis(deadline - now));
        }
        Ok(limits.idle_timeout.min(limits.header_read_timeout))
    }
}

/// The TLS stream, telling [`Activity`] when bytes arrive, and replacing the bare error
/// responses hyper writes itself for requests it cannot parse (400, 431, 505...) with
/// gatehouse's problem+json (SPEC section 7: every response the gateway makes itself is
/// a problem with `X-Request-Id` and HSTS). Such a response is told apart by what it
/// lacks: every response that passes through [`super::handle`] carries `x-request-id`.
struct Watched<T> {
    inner: T,
    conn: Arc<ConnInfo>,
    /// A replacement response not yet fully written.
    pending: Option<(bytes::Bytes, usize)>,
    /// HTTP/1.1 request framing, followed to find what hyper hides (not for h2).
    framing: Option<framing::Framing>,
}

impl<T: AsyncWrite + Unpin> Watched<T> {
    /// Writes what is left of a replacement response.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((buf, off)) = self.pending.as_mut() {
            match Pin::new(&mut self.inner).poll_write(cx, &buf[*off..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => {
                    *off += n;
                    if *off >= buf.len() {
                        self.pending = None;
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// hyper's own error response at the start of `buf`, as the problem to send instead.
fn hyper_error_response(buf: &[u8], hsts: Option<&http::HeaderValue>) -> Option<bytes::Bytes> {
    let rest = buf.strip_prefix(b"HTTP/1.1 ")?;
    let code: u16 = std::str::from_utf8(rest.get(..3)?).ok()?.parse().ok()?;
    if code < 400 {
        return None;
    }
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = &buf[..end];
    if head
        .windows(15)
        .any(|w| w.eq_ignore_ascii_case(b"\r\nx-request-id:"))
    {
        return None;
    }
    let p = match code {
        431 => super::problem::Problem::new(
            431,
            "header_too_large",
            "Request header fields too large",
            "the request head is too large",
        ),
        505 => super::problem::Problem::new(
            505,
            "http_version",
            "HTTP version not supported",
            "use HTTP/1.1 or h2",
        ),
        408 => super::problem::Problem::new(
            408,
            "request_timeout",
            "Request timeout",
            "the request head did not arrive in time",
        ),
        400 => super::problem::Problem::bad_request("the request cannot be parsed"),
        c => super::problem::Problem::new(
            c,
            "bad_request",
            "Bad request",
            "the request cannot be handled",
        ),
    };
    let id = super::headers::new_request_id();
    let body = p.body(&id);
    let reason = http::StatusCode::from_u16(code)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\ncontent-type: application/problem+json\r\ncache-control: no-store\r\ncontent-length: {}\r\nx-request-id: {id}\r\nconnection: close\r\n",
        body.len()
    );
    if let Some(h) = hsts.and_then(|h| h.to_str().ok()) {
        out.push_str(&format!("strict-transport-security: {h}\r\n"));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&body);
    Some(bytes::Bytes::from(bytes))
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.conn.activity.on_bytes();
            if let Some(f) = this.framing.as_mut() {
                let conn = &this.conn;
                f.feed(&buf.filled()[before..], |i| {
                    let _ = conn.framing_conflict.compare_exchange(
                        u64::MAX,
                        i,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                });
            }
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending.is_some() {
            // After a replaced error response hyper only closes; swallow anything else.
            return match this.poll_pending(cx) {
                Poll::Ready(Ok(())) => Poll::Ready(Ok(buf.len())),
                other => other.map(|r| r.map(|_| 0)),
            };
        }
        if !this.conn.h2 && this.conn.activity.inflight.load(Ordering::Relaxed) == 0 {
            if let Some(replacement) = hyper_error_response(buf, this.conn.hsts.as_ref()) {
                this.pending = Some((replacement, 0));
                return match this.poll_pending(cx) {
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    _ => Poll::Ready(Ok(buf.len())),
                };
            }
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match this.poll_pending(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.inner).poll_flush(cx),
            other => other,
        }
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match this.poll_pending(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.inner).poll_shutdown(cx),
            other => other,
        }
    }
}

/// The hyper settings for one connection kind, built once per listener.
fn builder(limits: &Limits, h2: bool) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    if h2 {
        b = b.http2_only();
    } else {
        b = b.http1_only();
    }
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true)
        .half_close(false)
        .max_buf_size((limits.max_header_bytes * 2).max(16 * 1024));
    b.http2()
        .timer(TokioTimer::new())
        // Above the limit, so that a header list over it reaches `handle` and gets the
        // 431 problem (the h2 codec's own answer to a list over this is a bare 431).
        .max_header_list_size(((limits.max_header_bytes * 2).max(16 * 1024)) as u32)
        .max_concurrent_streams(256)
        .max_pending_accept_reset_streams(64)
        .max_local_error_reset_streams(256);
    b
}

/// Serves the HTTPS listener until `stop` turns true (then stops accepting; open
/// connections finish on their own, see [`Shared::start_draining`]).
pub async fn serve(
    listener: TcpListener,
    tls: TlsAcceptor,
    shared: Arc<Shared>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    slots: Arc<tokio::sync::Semaphore>,
) {
    let (limits, proxy_protocol) = {
        let live = shared.live.load();
        (live.rt.server.limits, live.rt.server.proxy_protocol)
    };
    let h1 = Arc::new(builder(&limits, false));
    let h2 = Arc::new(builder(&limits, true));
    loop {
        let permit = tokio::select! {
            _ = stop.changed() => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            _ = stop.changed() => break,
            acc = listener.accept() => match acc {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let (tls, shared, h1, h2) = (tls.clone(), shared.clone(), h1.clone(), h2.clone());
        tokio::spawn(async move {
            connection(tcp, peer, proxy_protocol, tls, shared, &h1, &h2).await;
            drop(permit);
        });
    }
}

/// Serves one accepted connection. With `proxy_protocol` it must start with a PROXY v2
/// header, and the source address in it is the client (`peer` from then on); the header
/// and the TLS handshake together must arrive within `header_read_timeout_ms`.
async fn connection(
    mut tcp: TcpStream,
    socket_peer: SocketAddr,
    proxy_protocol: bool,
    tls: TlsAcceptor,
    shared: Arc<Shared>,
    h1: &auto::Builder<TokioExecutor>,
    h2b: &auto::Builder<TokioExecutor>,
) {
    let limits = shared.live.load().rt.server.limits;
    let deadline = tokio::time::Instant::now() + limits.header_read_timeout;
    let peer = if proxy_protocol {
        match tokio::time::timeout_at(deadline, proxy_protocol::read(&mut tcp)).await {
            Ok(Ok(source)) => source.unwrap_or(socket_peer),
            Ok(Err(e)) => {
                tracing::debug!(peer = %socket_peer, error = %e, "closing: no valid PROXY protocol v2 header");
                return;
            }
            Err(_) => {
                tracing::debug!(peer = %socket_peer, "closing: no PROXY protocol v2 header within header_read_timeout_ms");
                return;
            }
        }
    } else {
        socket_peer
    };
    let stream = match tokio::time::timeout_at(deadline, tls.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake not completed within header_read_timeout_ms");
            return;
        }
    };
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    shared.connections.fetch_add(1, Ordering::AcqRel);
    let _open = OpenConnection(&shared);
    let info = Arc::new(ConnInfo {
        peer,
        forwarded: peer.ip().into(),
        h2,
        activity: Activity::new(),
        hsts: super::hsts(&shared.live.load()),
        framing_conflict: AtomicU64::new(u64::MAX),
    });
    // The first request's head is timed from the end of the handshake.
    info.activity.head_since.store(1, Ordering::Relaxed);
    let io = TokioIo::new(Watched {
        inner: stream,
        conn: info.clone(),
        pending: None,
        // As much head as hyper buffers (see `builder`).
        framing: (!h2).then(|| framing::Framing::new((limits.max_header_bytes * 2).max(16 * 1024))),
    });
    let svc_shared = shared.clone();
    let svc_info = info.clone();
    let svc = service_fn(move |req| super::handle(svc_shared.clone(), svc_info.clone(), req));
    let builder = if h2 { h2b } else { h1 };
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    let mut drain = shared.drain_signal();
    // h2: GOAWAY (race-free). HTTP/1.1 while draining: a busy connection answers its
    // request with `Connection: close` (see `proxy::relay`); one that stays idle a moment
    // is closed. Closing an idle keep-alive connection at once would race a request the
    // client is sending on it at that instant.
    let mut draining = false;
    let mut next = Duration::from_millis(1);
    // A graceful h2 shutdown sends GOAWAY and a PING and waits for the PING's answer
    // before it closes: a client that never answers would keep the connection for ever.
    // So once closing, the connection is dropped when nothing is in flight and
    // `header_read_timeout_ms` has passed since the GOAWAY.
    let mut closing_since: Option<Instant> = None;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = drain.changed(), if !draining => {
                draining = true;
                if h2 {
                    closing_since = Some(Instant::now());
                    conn.as_mut().graceful_shutdown();
                } else {
                    next = Duration::from_millis(10);
                }
            }
            _ = tokio::time::sleep(next) => {
                if draining && !h2 && info.activity.idle_for() >= DRAIN_IDLE_CLOSE {
                    return;
                }
                let limits = shared.live.load().rt.server.limits;
                if let Some(since) = closing_since {
                    let grace = limits.header_read_timeout;
                    if info.activity.is_idle() && since.elapsed() >= grace {
                        tracing::debug!(%peer, "closing: still open after the graceful shutdown");
                        return;
                    }
                    next = grace.saturating_sub(since.elapsed()).max(Duration::from_millis(50));
                    continue;
                }
                match info.activity.check(&limits, h2) {
                    Ok(d) if draining => next = d.min(Duration::from_millis(50)),
                    Ok(d) => next = d,
                    Err(why) => {
                        tracing::debug!(%peer, why, "closing the connection");
                        if h2 {
                            closing_since = Some(Instant::now());
                            conn.as_mut().graceful_shutdown();
                        } else {
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// While draining, an HTTP/1.1 connection idle this long is closed.
const DRAIN_IDLE_CLOSE: Duration = Duration::from_millis(250);

/// Counts an open connection in [`Shared::connections`] until dropped.
struct OpenConnection<'a>(&'a Shared);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The rustls server settings of the HTTPS listener: the swappable certificate, ALPN
/// h2 and http/1.1, TLS 1.2+ or 1.3 only, the server's cipher suite order.
pub fn tls_acceptor(
    cert: Arc<crate::tls::SwappableCert>,
    min: crate::tls::TlsMin,
) -> anyhow::Result<TlsAcceptor> {
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let versions: &[&'static rustls::SupportedProtocolVersion] = match min {
        crate::tls::TlsMin::V13 => &[&rustls::version::TLS13],
        crate::tls::TlsMin::V12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // The server's order of cipher suites decides, not the client's (every suite offered
    // is an AEAD one with forward secrecy, strongest first): TLS scanners report a
    // server that follows the client's order (testssl.sh: "NOT a cipher order configured").
    cfg.ignore_client_order = true;
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}
