//! Response bodies and the end of a request.
//!
//! [`Finish`] carries what the request's metrics and audit line need and writes them
//! when it is dropped, which is when the response body is done (or the client went
//! away): every request yields exactly one audit line, with the status the client
//! really got. [`ProxyBody::relay`] streams the upstream's body; when the upstream fails
//! after its head was sent (reset, read timeout, malformed body) it returns an error,
//! which makes hyper abort the client's response (HTTP/1.1: the connection closes before
//! the body is complete; h2: the stream is reset). gatehouse never appends its own error
//! to a started body, and the request is recorded as 502 (504 for a timeout).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::conn::ConnInfo;
use super::problem::Problem;
use super::upstream::UpstreamClient;
use super::Shared;
use crate::admin::metrics;
use crate::audit::AuditRecord;
use crate::gate::{Live, Outcome};
use crate::names::Decision;
use crate::pipeline::Admission;
use crate::policy::rbac::Caller;
use crate::policy::route::Route;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What is known about a request, written out (metrics, audit) when it is dropped.
pub struct Finish {
    shared: Arc<Shared>,
    pub live: Arc<Live>,
    conn: Arc<ConnInfo>,
    start: Instant,
    method: http::Method,
    /// The routed (normalised) path, without the query string.
    path: String,
    pub request_id: String,
    /// `request_id` as a header value, once made for the backend's request.
    pub request_id_value: Option<HeaderValue>,
    route: Option<Arc<Route>>,
    outcome: Option<Outcome>,
    caller: Option<Arc<Caller>>,
    /// The status the client gets (0 until known).
    pub status: u16,
    upstream: Option<(Arc<UpstreamClient>, Instant)>,
    pub upstream_status: Option<u16>,
    /// The client address gatehouse decided on (the peer, or from a trusted proxy's
    /// `X-Forwarded-For`): logs carry it, the audit line does not (personal data).
    pub client: std::net::IpAddr,
    /// One span per request: log lines about it carry `request_id` and `route`.
    pub span: tracing::Span,
    /// The request's OpenTelemetry span, when `[tracing]` exports (None: nothing made).
    pub trace: Option<crate::telemetry::RequestTrace>,
}

impl Finish {
    pub fn new(
        shared: Arc<Shared>,
        live: Arc<Live>,
        conn: Arc<ConnInfo>,
        start: Instant,
        head: &http::request::Parts,
    ) -> Self {
        shared.inflight.fetch_add(1, Ordering::AcqRel);
        conn.activity.request_started();
        let peer = conn.peer.ip();
        let trace = shared
            .tracing
            .as_ref()
            .map(|t| t.request(&head.headers, &head.method));
        Finish {
            shared,
            live,
            conn,
            start,
            method: head.method.clone(),
            path: String::new(),
            request_id: String::new(),
            request_id_value: None,
            route: None,
            outcome: None,
            caller: None,
            status: 0,
            upstream: None,
            upstream_status: None,
            client: peer,
            // Debug level: with the default filter the span is never created (no
            // per-request registry work); warnings name request_id and route themselves.
            span: tracing::debug_span!(
                "request",
                request_id = tracing::field::Empty,
                route = tracing::field::Empty
            ),
            trace,
        }
    }

    /// Takes over what the pipeline decided (the request id moves here).
    pub fn admitted(&mut self, a: &mut Admission, head: &http::request::Parts) {
        self.request_id = std::mem::take(&mut a.request_id);
        self.path = head.uri.path().to_string();
        self.route = a.route.clone();
        self.outcome = a.outcome.clone();
        self.caller = a.caller.clone();
    }

    /// The route's name for log lines (`_none` before routing).
    pub fn route_name(&self) -> &str {
        self.route.as_ref().map(|r| &*r.name).unwrap_or("_none")
    }

    pub fn upstream_started(&mut self, up: Arc<UpstreamClient>) {
        self.upstream = Some((up, Instant::now()));
    }

    /// The gateway's own answer: problem+json with `X-Request-Id`, HSTS, and the
    /// `WWW-Authenticate`, `Retry-After` or `Location` the problem carries.
    pub fn respond(mut self, p: &Problem) -> Response<ProxyBody> {
        if self.request_id.is_empty() {
            self.request_id = super::headers::new_request_id();
        }
        let body = Bytes::from(p.body(&self.request_id));
        let mut resp = Response::new(ProxyBody::Full {
            data: None,
            fin: None,
        });
        *resp.status_mut() =
            http::StatusCode::from_u16(p.status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        h.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
        h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        if let Ok(v) = HeaderValue::from_str(&self.request_id) {
            h.insert(crate::names::header::X_REQUEST_ID, v);
        }
        if let Some(w) = p
            .www_authenticate
            .as_deref()
            .and_then(|w| HeaderValue::from_str(w).ok())
        {
            h.insert(http::header::WWW_AUTHENTICATE, w);
        }
        if let Some(r) = p.retry_after {
            h.insert(http::header::RETRY_AFTER, HeaderValue::from(r));
        }
        if let Some(l) = p
            .location
            .as_deref()
            .and_then(|l| HeaderValue::from_str(l).ok())
        {
            h.insert(http::header::LOCATION, l);
        }
        if let Some(v) = super::hsts(&self.live) {
            h.insert(http::header::STRICT_TRANSPORT_SECURITY, v);
        }
        if self.shared.draining.load(Ordering::Acquire) && !self.conn.h2 {
            h.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        self.status = p.status;
        *resp.body_mut() = ProxyBody::Full {
            data: Some(body),
            fin: Some(Box::new(self)),
        };
        resp
    }

    /// The upstream failed after its head went to the client.
    fn failed(&mut self, status: u16) {
        self.status = status;
        self.upstream_status = Some(status);
    }

    /// The request's audit record; the last use of the request id and path, which move
    /// into it.
    fn audit_record(&mut self, route: &Route, elapsed: Duration) -> AuditRecord {
        let mut rec = AuditRecord::new(
            std::mem::take(&mut self.request_id),
            route.name.clone(),
            method_name(&self.method),
            "",
        );
        // The routed path, which never holds the query string.
        rec.path = std::mem::take(&mut self.path);
        rec.status = self.status;
        rec.duration_ms = elapsed.as_millis() as u64;
        let p = self.shared.audit.pseudonymizer();
        let who = |iss: &str, sub: Option<&str>| sub.map(|s| p.subject(iss, s).into());
        match &self.outcome {
            Some(Outcome::Allow(g)) => {
                rec.decision = Decision::Allow;
                rec.subject = g
                    .subject
                    .as_deref()
                    .map(|s| p.subject_cached(&g.pseudonym, &g.iss, s));
                rec.client_id = g.client_id.as_deref().map(String::from);
                rec.roles = g.roles.clone();
                rec.upstream = Some(route.upstream.clone());
            }
            Some(Outcome::Deny(e)) => {
                rec.decision = Decision::Deny;
                rec.reason = Some(e.reason.as_str());
                if let Some(c) = &self.caller {
                    rec.subject = who(&c.iss, c.sub.as_deref());
                    rec.client_id = c.client_id.clone();
                    rec.roles = c.roles.clone();
                }
            }
            Some(Outcome::Public) | None => {
                rec.decision = Decision::Public;
                rec.upstream = Some(route.upstream.clone());
            }
        }
        rec
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        self.shared.inflight.fetch_sub(1, Ordering::AcqRel);
        self.conn.activity.request_finished();
        let method = metrics::method_label(self.method.as_str());
        let elapsed = self.start.elapsed();
        let rm = match &self.route {
            Some(r) => self
                .live
                .route_metrics
                .get(r.index)
                .unwrap_or(&self.live.unrouted_metrics),
            None => &self.live.unrouted_metrics,
        };
        rm.request(method, self.status, elapsed.as_secs_f64());
        if let Some((up, t)) = &self.upstream {
            up.metrics.request(
                self.upstream_status.unwrap_or(502),
                t.elapsed().as_secs_f64(),
            );
        }
        let reason = match &self.outcome {
            Some(Outcome::Deny(e)) => e.reason.as_str(),
            _ => "",
        };
        let decision = match &self.outcome {
            Some(Outcome::Allow(_)) => Decision::Allow.as_str(),
            Some(Outcome::Deny(_)) => Decision::Deny.as_str(),
            Some(Outcome::Public) => Decision::Public.as_str(),
            None => "",
        };
        tracing::debug!(parent: &self.span, status = self.status, method, decision, reason, client = %self.client, duration_ms = elapsed.as_millis() as u64, "request done");
        if let Some(t) = &self.trace {
            let route = self.route.as_deref();
            t.end(crate::telemetry::RequestEnd {
                request_id: &self.request_id,
                path: &self.path,
                method: self.method.as_str(),
                route: route.map(|r| &*r.name),
                decision,
                reason,
                upstream: route.filter(|_| decision != "deny").map(|r| &*r.upstream),
                status: self.status,
            });
        }
        if let Some(r) = self.route.clone() {
            let rec = self.audit_record(&r, elapsed);
            self.shared.audit.write_now(rec);
        }
    }
}

/// A response body: the gateway's own (one buffer) or the upstream's, relayed.
pub enum ProxyBody {
    Full {
        data: Option<Bytes>,
        fin: Option<Box<Finish>>,
    },
    Relay(Box<Relay>),
}

/// The upstream's body on its way to the client, with a read timeout between frames.
pub struct Relay {
    inner: Incoming,
    timeout: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    fin: Finish,
}

impl ProxyBody {
    pub fn relay(inner: Incoming, timeout: Duration, fin: Finish) -> Self {
        ProxyBody::Relay(Box::new(Relay {
            inner,
            timeout,
            sleep: None,
            fin,
        }))
    }
}

/// Why a relayed body was cut short.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("the upstream failed while sending the body: {0}")]
    Upstream(hyper::Error),
    #[error("the upstream stopped sending the body (read timeout)")]
    Timeout,
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Full { data, .. } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ProxyBody::Relay(r) => {
                let r = &mut **r;
                match Pin::new(&mut r.inner).poll_frame(cx) {
                    Poll::Ready(Some(Ok(f))) => {
                        if let Some(s) = r.sleep.as_mut() {
                            s.as_mut().reset(tokio::time::Instant::now() + r.timeout);
                        }
                        Poll::Ready(Some(Ok(f)))
                    }
                    Poll::Ready(Some(Err(e))) => {
                        tracing::warn!(parent: &r.fin.span, request_id = %r.fin.request_id, route = r.fin.route_name(), error = %e, "upstream failed mid-body; aborting the response");
                        r.fin.failed(502);
                        Poll::Ready(Some(Err(Box::new(RelayError::Upstream(e)))))
                    }
                    Poll::Ready(None) => Poll::Ready(None),
                    Poll::Pending => {
                        let timeout = r.timeout;
                        let s = r
                            .sleep
                            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                        if s.as_mut().poll(cx).is_ready() {
                            tracing::warn!(parent: &r.fin.span, request_id = %r.fin.request_id, route = r.fin.route_name(), "upstream stalled mid-body; aborting the response");
                            r.fin.failed(504);
                            return Poll::Ready(Some(Err(Box::new(RelayError::Timeout))));
                        }
                        Poll::Pending
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full { data, .. } => data.is_none(),
            ProxyBody::Relay(r) => r.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full { data, .. } => {
                SizeHint::with_exact(data.as_ref().map(|d| d.len() as u64).unwrap_or(0))
            }
            ProxyBody::Relay(r) => r.inner.size_hint(),
        }
    }
}

/// The method as the audit record keeps it: the ones with a metrics label as static
/// strings, any other copied.
fn method_name(m: &http::Method) -> std::borrow::Cow<'static, str> {
    match metrics::method_label(m.as_str()) {
        "OTHER" => m.as_str().to_owned().into(),
        label => label.into(),
    }
}
