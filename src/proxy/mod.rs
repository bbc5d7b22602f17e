//! The data plane: hyper 1 + tokio-rustls. This module turns one request into one
//! response; [`conn`] accepts connections and enforces the protocol limits; [`upstream`]
//! holds the pooled mTLS clients; [`body`] relays response bodies and writes the
//! request's metrics and audit line when it ends.
//!
//! ```text
//! client ──TLS (rustls, ALPN h2/http1.1)──▶ conn::serve (limits, timeouts, drain)
//!   handle
//!      head size (431), framing (400)                          here
//!      pipeline::admit: request id, target, path, Host, route,  pipeline.rs
//!                       strip owned headers, decide (cache → verify → authorize)
//!      refused → problem+json (+ WWW-Authenticate)             proxy/problem.rs
//!      hop-by-hop headers out, identity/row-filter/forwarded in
//!      upstream: round robin, skip down addresses, pooled mTLS  proxy/upstream.rs
//!      response head → client (HSTS, X-Request-Id)
//!   body::Relay   streams the body; an upstream failure after the head aborts the
//!                 client's response (never a spliced error); metrics + audit at the end
//! ```

pub mod body;
pub mod conn;
pub mod headers;
pub mod problem;
pub mod upstream;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{Either, Empty};
use hyper::body::{Body, Incoming};
use tracing::Instrument;

use crate::admin::metrics;
use crate::audit::AuditLog;
use crate::gate::{Live, Outcome};
use crate::names::{header, Decision};
use crate::pipeline;
use body::{Finish, ProxyBody};
use problem::Problem;

/// State shared by every request; `live` is swapped on reload.
pub struct Shared {
    pub live: ArcSwap<Live>,
    /// Requests in flight (for draining on SIGTERM).
    pub inflight: AtomicUsize,
    /// Open client connections past their TLS handshake (a drain waits for them too).
    pub connections: AtomicUsize,
    /// One line per request that reached a route (SPEC section 5).
    pub audit: AuditLog,
    /// Set by SIGTERM/SIGINT/SIGQUIT: `/readyz` answers 503 from then on, and every
    /// connection finishes what it has in flight and closes.
    pub draining: AtomicBool,
    drain: tokio::sync::watch::Sender<bool>,
    /// The span exporter (`[tracing]`, restart-only); `None`: no request makes a span.
    pub tracing: Option<crate::telemetry::Tracing>,
}

impl Shared {
    pub fn new(live: Live, audit: AuditLog) -> Arc<Self> {
        Self::with_tracing(live, audit, None)
    }

    /// [`Shared::new`] with a span exporter.
    pub fn with_tracing(
        live: Live,
        audit: AuditLog,
        tracing: Option<crate::telemetry::Tracing>,
    ) -> Arc<Self> {
        Arc::new(Shared {
            live: ArcSwap::from_pointee(live),
            inflight: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            audit,
            draining: AtomicBool::new(false),
            drain: tokio::sync::watch::channel(false).0,
            tracing,
        })
    }

    /// Starts draining: readiness fails, connections close once idle.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
        self.drain.send_replace(true);
    }

    /// Turns true when draining starts.
    pub fn drain_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.drain.subscribe()
    }
}

/// Answers one request. Never fails: every failure is a response (a problem) or an
/// aborted body.
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<conn::ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    let live = shared.live.load_full();
    let (mut head, body) = req.into_parts();
    let mut fin = Finish::new(shared.clone(), live.clone(), conn.clone(), start, &head);
    let limits = live.rt.server.limits;
    if head_size(&head) > limits.max_header_bytes {
        fin.request_id = headers::new_request_id();
        return Ok(fin.respond(&Problem::new(
            431,
            "header_too_large",
            "Request header fields too large",
            format!(
                "the request head is larger than {} bytes",
                limits.max_header_bytes
            ),
        )));
    }
    if let Err(why) = conn
        .framing()
        .and_then(|()| check_framing(&mut head.headers))
    {
        fin.request_id = headers::new_request_id();
        return Ok(fin.respond(&Problem::bad_request(why)));
    }
    let request_id =
        headers::request_id(head.headers.get(header::X_REQUEST_ID).map(|v| v.as_bytes()));
    fin.span.record("request_id", request_id.as_str());
    // Log lines the decision causes (token checks, JWKS fetches) carry the request's id
    // and route.
    // (With the default log filter the span is disabled: no wrapper is polled then.)
    let admit = pipeline::admit_with_id(&live, &mut head, request_id);
    let mut adm = match (&fin.trace, fin.span.is_disabled()) {
        (Some(t), _) => t.scope(admit.instrument(fin.span.clone())).await,
        (None, false) => admit.instrument(fin.span.clone()).await,
        (None, true) => admit.await,
    };
    fin.admitted(&mut adm, &head);
    if let (Some(route), Some(outcome)) = (&adm.route, &adm.outcome) {
        match outcome {
            Outcome::Deny(e) => metrics::AUTH_DECISIONS_TOTAL
                .with_label_values(&[&*route.name, Decision::Deny.as_str(), e.reason.as_str()])
                .inc(),
            Outcome::Allow(_) => match live.route_metrics.get(route.index) {
                Some(m) => m.allowed(),
                None => metrics::AUTH_DECISIONS_TOTAL
                    .with_label_values(&[&*route.name, Decision::Allow.as_str(), ""])
                    .inc(),
            },
            Outcome::Public => {}
        }
    }
    if let Err(p) = &adm.verdict {
        return Ok(fin.respond(p));
    }
    let (Some(route), Some(outcome)) = (adm.route, adm.outcome) else {
        return Ok(fin.respond(&Problem::internal("admitted without a route")));
    };
    let Some(up) = live.upstreams.get(&*route.upstream).cloned() else {
        return Ok(fin.respond(&Problem::internal("the route names no known upstream")));
    };
    headers::remove_hop_by_hop(&mut head.headers);
    // Made once: the backend's request and the client's response both carry it.
    let request_id = HeaderValue::from_str(&fin.request_id)
        .unwrap_or_else(|_| HeaderValue::from_static("invalid"));
    fin.client = pipeline::forward_headers(
        &mut head.headers,
        &head.uri,
        &route,
        &outcome,
        request_id.clone(),
        &conn.forwarded,
        &live.rt.server.trusted_proxies,
    );
    let pq = head
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let read_timeout = up.upstream.read_timeout;
    // A request without a body can be sent again to another address when the first
    // refuses the connection; one with a body cannot (it is streamed, not buffered).
    let replayable = body.is_end_stream() && up.upstream.addrs.len() > 1;
    let mut body = Some(body);
    fin.request_id_value = Some(request_id);
    fin.upstream_started(up.clone());
    let mut tries = 0;
    loop {
        tries += 1;
        let idx = up.pick();
        let uri = match up.uri(idx, pq.clone()) {
            Ok(u) => u,
            Err(_) => return Ok(fin.respond(&Problem::bad_path("the path cannot be forwarded"))),
        };
        let mut b = Request::builder()
            .method(head.method.clone())
            .uri(uri)
            .version(http::Version::HTTP_11);
        let last_try = tries >= up.upstream.addrs.len() || !replayable;
        let req = if last_try {
            *b.headers_mut().expect("builder is valid") = std::mem::take(&mut head.headers);
            b.body(match body.take() {
                Some(inc) => Either::Left(inc),
                None => Either::Right(Empty::new()),
            })
        } else {
            *b.headers_mut().expect("builder is valid") = head.headers.clone();
            b.body(Either::Right(Empty::new()))
        };
        let Ok(mut req) = req else {
            return Ok(fin.respond(&Problem::internal("the upstream request cannot be built")));
        };
        // Tracing on: this attempt's span, and its `traceparent` for the backend.
        let span = fin.trace.as_ref().map(|t| {
            t.upstream(
                &up.upstream.name,
                up.addr(idx),
                &head.method,
                req.headers_mut(),
            )
        });
        let sent = tokio::time::timeout(read_timeout, up.send(req)).await;
        if let Some(span) = span {
            span.end(match &sent {
                Ok(Ok(resp)) => Ok(resp.status().as_u16()),
                Ok(Err(e)) if e.is_connect() => Err("connection failed"),
                Ok(Err(_)) => Err("request failed"),
                Err(_) => Err("timed out before the response head"),
            });
        }
        match sent {
            Ok(Ok(resp)) => return Ok(relay(&shared, &conn, fin, resp, read_timeout)),
            Ok(Err(e)) => {
                let timed_out = caused_by_timeout(&e);
                if e.is_connect() {
                    up.mark_down(idx);
                    tracing::warn!(parent: &fin.span, request_id = %fin.request_id, route = fin.route_name(), upstream = %up.upstream.name, addr = %up.addr(idx), error = %error_chain(&e), "upstream connection failed");
                    if !last_try {
                        continue;
                    }
                } else {
                    tracing::warn!(parent: &fin.span, request_id = %fin.request_id, route = fin.route_name(), upstream = %up.upstream.name, addr = %up.addr(idx), error = %error_chain(&e), "upstream request failed");
                }
                let p = if timed_out {
                    Problem::gateway_timeout("the upstream did not answer in time")
                } else if let upstream::SendError::TooManyInformational = e {
                    Problem::bad_gateway("the upstream sent too many informational responses")
                } else {
                    Problem::bad_gateway(
                        "the upstream refused the connection, failed TLS or closed it",
                    )
                };
                fin.upstream_status = Some(p.status);
                return Ok(fin.respond(&p));
            }
            Err(_) => {
                tracing::warn!(parent: &fin.span, request_id = %fin.request_id, route = fin.route_name(), upstream = %up.upstream.name, addr = %up.addr(idx), "upstream timed out before its response head");
                let p = Problem::gateway_timeout("the upstream did not answer in time");
                fin.upstream_status = Some(p.status);
                return Ok(fin.respond(&p));
            }
        }
    }
}

/// Hands the upstream's response to the client: hop-by-hop headers out, HSTS and
/// `X-Request-Id` in, the body relayed by [`body::ProxyBody::relay`].
fn relay(
    shared: &Shared,
    conn: &conn::ConnInfo,
    mut fin: Finish,
    resp: Response<Incoming>,
    read_timeout: std::time::Duration,
) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    fin.upstream_status = Some(parts.status.as_u16());
    if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        // gatehouse never forwards an upgrade request, so a 101 is a backend error.
        fin.upstream_status = Some(502);
        return fin.respond(&Problem::bad_gateway(
            "the upstream switched protocols without being asked",
        ));
    }
    headers::remove_hop_by_hop(&mut parts.headers);
    if let Some(v) = hsts(&fin.live) {
        parts
            .headers
            .insert(http::header::STRICT_TRANSPORT_SECURITY, v);
    }
    match fin.request_id_value.take() {
        Some(v) => {
            parts.headers.insert(header::X_REQUEST_ID, v);
        }
        None => {
            if let Ok(v) = HeaderValue::from_str(&fin.request_id) {
                parts.headers.insert(header::X_REQUEST_ID, v);
            }
        }
    }
    if shared.draining.load(Ordering::Acquire) && !conn.h2 {
        parts
            .headers
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    fin.status = parts.status.as_u16();
    Response::from_parts(parts, ProxyBody::relay(body, read_timeout, fin))
}

/// `Strict-Transport-Security` for this config, if on (rendered once per loaded config).
pub fn hsts(live: &Live) -> Option<HeaderValue> {
    live.hsts.clone()
}

/// The request head's size as received, near enough: request line plus each header
/// line (`name: value\r\n`). For h2 this is the RFC 7541 header list size (32 bytes per
/// entry) plus the pseudo-headers.
fn head_size(head: &http::request::Parts) -> usize {
    let per = if head.version == http::Version::HTTP_2 {
        32
    } else {
        4
    };
    let line = head.method.as_str().len()
        + head
            .uri
            .path_and_query()
            .map(|p| p.as_str().len())
            .unwrap_or(1)
        + 12;
    line + head
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + per)
        .sum::<usize>()
}

/// Request framing a backend could read differently from the gateway (request
/// smuggling): both `Content-Length` and `Transfer-Encoding`, differing
/// `Content-Length` values, or a `Transfer-Encoding` other than `chunked`. Identical
/// repeated `Content-Length` values are folded into one.
fn check_framing(h: &mut http::HeaderMap) -> Result<(), &'static str> {
    let te: Vec<&HeaderValue> = h.get_all(http::header::TRANSFER_ENCODING).iter().collect();
    let has_cl = h.contains_key(http::header::CONTENT_LENGTH);
    if !te.is_empty() {
        if has_cl {
            return Err("a request may not carry both Content-Length and Transfer-Encoding");
        }
        let chunked_only = te.len() == 1
            && te[0]
                .to_str()
                .is_ok_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
        if !chunked_only {
            return Err("the only Transfer-Encoding accepted is chunked");
        }
    }
    let all = h.get_all(http::header::CONTENT_LENGTH);
    let mut cls = all.iter();
    if let Some(first) = cls.next() {
        let mut repeated = false;
        for v in cls {
            if v != first {
                return Err("the request carries differing Content-Length values");
            }
            repeated = true;
        }
        if repeated {
            let first = first.clone();
            h.insert(http::header::CONTENT_LENGTH, first);
        }
    }
    Ok(())
}

fn caused_by_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        if err.to_string().contains("timed out") {
            return true;
        }
        cur = err.source();
    }
    false
}

/// An error and its causes on one line (no request data is in them).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        s.push_str(": ");
        s.push_str(&err.to_string());
        cur = err.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn future_size<A, B, C, F: std::future::Future>(_: fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every request's future is moved into hyper's dispatcher: the token verification's
    /// state (kilobytes: JWKS fetch, introspection) is boxed on the miss path instead of
    /// riding along inline (6 120 bytes before, 2 864 after, release build).
    #[test]
    fn a_request_future_does_not_carry_the_verification_inline() {
        let size = future_size(handle);
        assert!(size < 4096, "the request future is {size} bytes");
    }

    #[test]
    fn framing_rules() {
        assert!(check_framing(&mut headers(&[("content-length", "3")])).is_ok());
        assert!(check_framing(&mut headers(&[("transfer-encoding", "chunked")])).is_ok());
        assert!(check_framing(&mut headers(&[
            ("content-length", "3"),
            ("transfer-encoding", "chunked")
        ]))
        .is_err());
        assert!(check_framing(&mut headers(&[("transfer-encoding", "gzip, chunked")])).is_err());
        assert!(check_framing(&mut headers(&[
            ("content-length", "3"),
            ("content-length", "4")
        ]))
        .is_err());
        let mut same = headers(&[("content-length", "3"), ("content-length", "3")]);
        assert!(check_framing(&mut same).is_ok());
        assert_eq!(same.get_all("content-length").iter().count(), 1);
    }
}
