//! The pingora `ProxyHttp` implementation: thin, it calls the request-path steps and
//! carries per-request state in [`Ctx`].
//!
//! ```text
//! client ──TLS (rustls, ALPN h2/http1.1)──▶ pingora listener
//!   request_filter
//!      request id (kept if well-formed, else generated)       proxy/headers.rs
//!      path check (dot segments, '//', encoded separators → 400) policy/route.rs
//!      route = first match on host, path, method (none → 404)  policy/route.rs
//!      strip every header gatehouse owns                       proxy/headers.rs
//!      outcome = Live::decide(route, Authorization)            gate.rs
//!         └─ cache → verify (auth/) → authorize (policy/rbac.rs)
//!      deny → problem+json + WWW-Authenticate, done            proxy/problem.rs
//!   upstream_peer          round robin over healthy addrs, HttpPeer with mTLS
//!   upstream_request_filter inject identity/row-filter/forwarded headers
//!   response_filter        HSTS, X-Request-Id
//!   fail_to_connect        mark the address down, retry another
//!   fail_to_proxy          502/504 problem+json
//!   logging                metrics (admin/metrics.rs)
//! ```

pub mod headers;
pub mod problem;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::protocols::ALPN;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::admin::metrics;
use crate::audit::{AuditLog, AuditRecord};
use crate::auth::{AuthError, DenyReason};
use crate::config::Upstream;
use crate::gate::{Live, Outcome};
use crate::policy::rbac::Caller;
use crate::policy::route::{self, AuthMode, Route};
use problem::Problem;

/// State shared by every request; `live` is swapped on reload.
pub struct Shared {
    pub live: ArcSwap<Live>,
    /// Requests in flight (for draining on SIGTERM).
    pub inflight: AtomicUsize,
    /// One line per request that reached a route (SPEC section 5).
    pub audit: AuditLog,
    /// Set by SIGTERM/SIGINT/SIGQUIT: `/readyz` answers 503 from then on.
    pub draining: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub fn new(live: Live, audit: AuditLog) -> Arc<Self> {
        Arc::new(Shared {
            live: ArcSwap::from_pointee(live),
            inflight: AtomicUsize::new(0),
            audit,
            draining: std::sync::atomic::AtomicBool::new(false),
        })
    }
}

/// The gateway's `ProxyHttp`.
pub struct Gateway {
    pub shared: Arc<Shared>,
}

/// Decrements the in-flight count however a request ends.
pub struct InflightGuard(Arc<Shared>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Per-request state.
pub struct Ctx {
    start: Instant,
    pub live: Arc<Live>,
    pub route: Option<Arc<Route>>,
    pub request_id: String,
    pub outcome: Option<Outcome>,
    /// A verified caller that was denied (for the audit line).
    caller: Option<Arc<Caller>>,
    upstream: Option<Arc<Upstream>>,
    addr_index: usize,
    tries: usize,
    upstream_start: Option<Instant>,
    upstream_status: Option<u16>,
    /// Status of a response the gateway made itself.
    own_status: Option<u16>,
    /// One span per request: every gatehouse log line about it carries `request_id`.
    span: tracing::Span,
    _inflight: InflightGuard,
}

/// Seconds an address that refused a connection is skipped.
const DOWN_FOR_MS: u64 = 10_000;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Round robin over the addresses not marked down; when all are down, plain round robin
/// (better to try than to refuse outright).
fn pick(up: &Upstream) -> usize {
    let n = up.addrs.len();
    let start = up.next.fetch_add(1, Ordering::Relaxed);
    let now = now_ms();
    for i in 0..n {
        let idx = (start + i) % n;
        if up.down_until[idx].load(Ordering::Relaxed) <= now {
            return idx;
        }
    }
    start % n
}

/// A stable key for an upstream's trust root (pool separation across reloads).
fn ca_key(ca: &[pingora::utils::tls::WrappedX509]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for c in ca {
        c.borrow_raw_cert().hash(&mut h);
    }
    h.finish()
}

/// The normalised host to route on (SPEC section 3 step 2); `Err` is a 400.
fn host_of(req: &RequestHeader) -> Result<Option<String>, &'static str> {
    let hosts: Vec<&[u8]> = req
        .headers
        .get_all(http::header::HOST)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    let authority = req.uri.authority().map(|a| a.as_str());
    route::request_host(&hosts, authority, req.version == http::Version::HTTP_11)
}

impl Gateway {
    /// The audit line of a request that reached a route. The subject is pseudonymised;
    /// the path loses its query string.
    fn audit_record(
        &self,
        session: &Session,
        ctx: &Ctx,
        route: &Route,
        status: u16,
    ) -> AuditRecord {
        let req = session.req_header();
        let mut rec = AuditRecord::new(
            ctx.request_id.clone(),
            route.name.clone(),
            req.method.as_str().to_string(),
            req.uri.path(),
        );
        rec.status = status;
        rec.duration_ms = ctx.start.elapsed().as_millis() as u64;
        let who = |iss: &str, sub: Option<&String>| {
            sub.map(|s| self.shared.audit.pseudonymizer().subject(iss, s))
        };
        match &ctx.outcome {
            Some(Outcome::Allow(g)) => {
                rec.decision = "allow";
                rec.subject = who(&g.iss, g.subject.as_ref());
                rec.client_id = g.client_id.clone();
                rec.roles = g.roles.clone();
                rec.upstream = Some(route.upstream.clone());
            }
            Some(Outcome::Deny(e)) => {
                rec.decision = "deny";
                rec.reason = Some(e.reason.as_str());
                if let Some(c) = &ctx.caller {
                    rec.subject = who(&c.iss, c.sub.as_ref());
                    rec.client_id = c.client_id.clone();
                    rec.roles = c.roles.clone();
                }
            }
            Some(Outcome::Public) | None => {
                rec.decision = "public";
                rec.upstream = Some(route.upstream.clone());
            }
        }
        rec
    }

    async fn respond(&self, session: &mut Session, ctx: &mut Ctx, p: &Problem) -> Result<()> {
        let body = p.body(&ctx.request_id);
        let mut resp = ResponseHeader::build(p.status, Some(8))?;
        resp.insert_header("content-type", "application/problem+json")?;
        resp.insert_header("content-length", body.len().to_string())?;
        resp.insert_header("cache-control", "no-store")?;
        resp.insert_header("x-request-id", ctx.request_id.as_str())?;
        if let Some(w) = &p.www_authenticate {
            resp.insert_header("www-authenticate", w.as_str())?;
        }
        if let Some(r) = p.retry_after {
            resp.insert_header("retry-after", r.to_string())?;
        }
        if let Some(l) = &p.location {
            resp.insert_header("location", l.as_str())?;
        }
        let hsts = ctx.live.rt.server.hsts_max_age_s;
        if hsts > 0 {
            resp.insert_header("strict-transport-security", format!("max-age={hsts}"))?;
        }
        ctx.own_status = Some(p.status);
        if self.shared.draining.load(Ordering::Acquire) {
            session.set_keepalive(None);
        }
        let head = session.req_header().method == http::Method::HEAD;
        session.write_response_header(Box::new(resp), head).await?;
        if !head {
            session
                .write_response_body(Some(Bytes::from(body)), true)
                .await?;
        }
        Ok(())
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        self.shared.inflight.fetch_add(1, Ordering::AcqRel);
        Ctx {
            start: Instant::now(),
            live: self.shared.live.load_full(),
            route: None,
            request_id: String::new(),
            outcome: None,
            caller: None,
            upstream: None,
            addr_index: 0,
            tries: 0,
            upstream_start: None,
            upstream_status: None,
            own_status: None,
            span: tracing::info_span!(
                "request",
                request_id = tracing::field::Empty,
                route = tracing::field::Empty
            ),
            _inflight: InflightGuard(self.shared.clone()),
        }
    }

    /// Returns `Ok(true)` when the gateway answered itself (denied, no route, bad path),
    /// `Ok(false)` to go on to the upstream.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let live = ctx.live.clone();
        let req = session.req_header();
        ctx.request_id = headers::request_id(req.headers.get("x-request-id").map(|v| v.as_bytes()));
        ctx.span.record("request_id", ctx.request_id.as_str());
        // Only origin-form (`/path`) and absolute-form (`https://host/path`) targets: for
        // anything else (`x:/admin`, `admin`, `*`) the parsed path is not what a backend
        // would read.
        let raw = req.raw_path();
        let origin_form = raw.starts_with(b"/");
        let absolute_form = !origin_form
            && http::Uri::try_from(raw).is_ok_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https"))
                    && u.authority().is_some()
                    && u.path().starts_with('/')
            });
        if !origin_form && !absolute_form {
            let p = Problem::bad_path("the request target must be a path starting with '/'");
            self.respond(session, ctx, &p).await?;
            return Ok(true);
        }
        let path = match route::normalize_path(req.uri.path()) {
            Ok(p) => p.into_owned(),
            Err(why) => {
                self.respond(session, ctx, &Problem::bad_path(why)).await?;
                return Ok(true);
            }
        };
        if path != req.uri.path() {
            // Route and forward the same path: `/%61dmin` goes on as `/admin`.
            let pq = match req.uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path.clone(),
            };
            // Keep scheme and authority (HTTP/2 carries the host there, not in Host).
            let mut parts = req.uri.clone().into_parts();
            let rebuilt = pq.parse().ok().and_then(|p| {
                parts.path_and_query = Some(p);
                http::Uri::from_parts(parts).ok()
            });
            let uri = match rebuilt {
                Some(u) => u,
                None => {
                    self.respond(
                        session,
                        ctx,
                        &Problem::bad_path("the path cannot be normalised"),
                    )
                    .await?;
                    return Ok(true);
                }
            };
            session.req_header_mut().set_uri(uri);
        }
        let req = session.req_header();
        let host = match host_of(req) {
            Ok(h) => h,
            Err(why) => {
                let p = Problem::new(400, "bad_host", "Bad request host", why);
                self.respond(session, ctx, &p).await?;
                return Ok(true);
            }
        };
        let method = req.method.as_str().to_string();
        let Some(route) = route::find(&live.rt.routes, host.as_deref(), &path, &method).cloned()
        else {
            self.respond(session, ctx, &Problem::not_found()).await?;
            return Ok(true);
        };
        ctx.route = Some(route.clone());
        ctx.span.record("route", route.name.as_str());
        headers::strip(session.req_header_mut(), &live.rt.owned_headers);
        let mut all = session
            .req_header()
            .headers
            .get_all(http::header::AUTHORIZATION)
            .iter();
        let authz = all.next().map(|v| v.as_bytes().to_vec());
        // Two Authorization headers: which one a backend reads is anyone's guess, so the
        // one gatehouse verified might not be the one that counts. Refuse.
        let (outcome, caller) = if all.next().is_some() && route.auth == AuthMode::Required {
            let e = AuthError::new(
                DenyReason::MalformedToken,
                "more than one Authorization header",
            );
            (Outcome::Deny(e), None)
        } else {
            live.decide_with_caller(&route, authz.as_deref()).await
        };
        ctx.outcome = Some(outcome.clone());
        ctx.caller = caller;
        match outcome {
            Outcome::Deny(e) => {
                metrics::AUTH_DECISIONS_TOTAL
                    .with_label_values(&[route.name.as_str(), "deny", e.reason.as_str()])
                    .inc();
                self.respond(session, ctx, &Problem::from_auth(&e)).await?;
                Ok(true)
            }
            Outcome::Allow(_) => {
                metrics::AUTH_DECISIONS_TOTAL
                    .with_label_values(&[route.name.as_str(), "allow", ""])
                    .inc();
                Ok(false)
            }
            Outcome::Public => Ok(false),
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let route = ctx
            .route
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route"))?;
        let up = ctx
            .live
            .rt
            .upstreams
            .get(&route.upstream)
            .cloned()
            .ok_or_else(|| {
                Error::explain(ErrorType::InternalError, "route names no known upstream")
            })?;
        let idx = pick(&up);
        ctx.addr_index = idx;
        ctx.tries += 1;
        let mut peer = HttpPeer::new_mtls(up.addrs[idx], up.sni.clone(), up.client.clone());
        peer.options.ca = Some(up.ca.clone());
        // pingora's pool key covers address, SNI and client cert but not the trust root:
        // without this a reload that changes `ca` would keep reusing connections that
        // were verified against the old root.
        peer.group_key = ca_key(&up.ca);
        peer.options.connection_timeout = Some(up.connect_timeout);
        peer.options.total_connection_timeout = Some(up.connect_timeout);
        peer.options.read_timeout = Some(up.read_timeout);
        peer.options.write_timeout = Some(up.read_timeout);
        peer.options.alpn = ALPN::H1;
        if ctx.upstream_start.is_none() {
            ctx.upstream_start = Some(Instant::now());
        }
        ctx.upstream = Some(up);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(up) = &ctx.upstream {
            up.down_until[ctx.addr_index].store(now_ms() + DOWN_FOR_MS, Ordering::Relaxed);
            if ctx.tries < up.addrs.len() {
                e.set_retry(true);
            }
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let forward_token = ctx.route.as_ref().is_some_and(|r| r.forward_token);
        if !forward_token {
            req.remove_header(&http::header::AUTHORIZATION);
        }
        if let Some(Outcome::Allow(g)) = &ctx.outcome {
            for (name, value) in &g.headers {
                req.insert_header(name.clone(), value.clone())?;
            }
        }
        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a: &SocketAddr| a.ip().to_string());
        match client_ip {
            Some(ip) => req.insert_header("x-forwarded-for", ip)?,
            None => {
                req.remove_header("x-forwarded-for");
            }
        }
        req.insert_header("x-forwarded-proto", "https")?;
        req.insert_header("x-request-id", ctx.request_id.as_str())?;
        if req.headers.get(http::header::HOST).is_none() {
            if let Some(a) = req.uri.authority().map(|a| a.as_str().to_string()) {
                req.insert_header(http::header::HOST, a)?;
            }
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.upstream_status = Some(resp.status.as_u16());
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if self.shared.draining.load(Ordering::Acquire) {
            // Draining (SIGTERM, or a hand-over to a new process): tell HTTP/1.1 clients
            // this connection ends with this response, so they open a new one (to the
            // new process) instead of racing a request against the close.
            session.set_keepalive(None);
        }
        let hsts = ctx.live.rt.server.hsts_max_age_s;
        if hsts > 0 {
            resp.insert_header("strict-transport-security", format!("max-age={hsts}"))?;
        }
        resp.insert_header("x-request-id", ctx.request_id.as_str())?;
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let problem = match e.etype() {
            ErrorType::ConnectTimedout
            | ErrorType::ReadTimedout
            | ErrorType::WriteTimedout
            | ErrorType::TLSHandshakeTimedout => Some(Problem::gateway_timeout(
                "the upstream did not answer in time",
            )),
            ErrorType::HTTPStatus(code) if *code >= 400 => Some(Problem::new(
                *code,
                "error",
                "Error",
                "the request could not be handled",
            )),
            _ => match e.esource() {
                ErrorSource::Upstream => Some(Problem::bad_gateway(
                    "the upstream refused the connection, failed TLS or closed it",
                )),
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => {
                        None
                    }
                    _ => Some(Problem::new(
                        400,
                        "bad_request",
                        "Bad request",
                        "the request could not be read",
                    )),
                },
                ErrorSource::Internal | ErrorSource::Unset => match e.etype() {
                    ErrorType::ConnectRefused
                    | ErrorType::ConnectNoRoute
                    | ErrorType::ConnectError
                    | ErrorType::TLSHandshakeFailure
                    | ErrorType::InvalidCert
                    | ErrorType::HandshakeError => Some(Problem::bad_gateway(
                        "the upstream refused the connection or failed TLS",
                    )),
                    _ => Some(Problem::new(
                        500,
                        "internal",
                        "Internal error",
                        "the gateway failed",
                    )),
                },
            },
        };
        let code = match problem {
            Some(p) => {
                tracing::warn!(parent: &ctx.span, request_id = %ctx.request_id, status = p.status, error = %e.etype().as_str(), "proxy failure");
                if self.respond(session, ctx, &p).await.is_err() {
                    0
                } else {
                    p.status
                }
            }
            None => 0,
        };
        if ctx.upstream.is_some() && ctx.upstream_status.is_none() && code > 0 {
            ctx.upstream_status = Some(code);
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// pingora's error lines describe a request with this: method, path and route only,
    /// never the query string, a header or a token.
    fn request_summary(&self, session: &Session, ctx: &Ctx) -> String {
        let req = session.req_header();
        format!(
            "{} {} route={} request_id={}",
            req.method,
            req.uri.path(),
            ctx.route
                .as_ref()
                .map(|r| r.name.as_str())
                .unwrap_or("_none"),
            ctx.request_id
        )
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .or(ctx.own_status)
            .unwrap_or(0);
        let route = ctx
            .route
            .as_ref()
            .map(|r| r.name.as_str())
            .unwrap_or("_none");
        let method = metrics::method_label(session.req_header().method.as_str());
        metrics::REQUESTS_TOTAL
            .with_label_values(&[route, method, &status.to_string()])
            .inc();
        metrics::REQUEST_DURATION
            .with_label_values(&[route])
            .observe(ctx.start.elapsed().as_secs_f64());
        tracing::debug!(parent: &ctx.span, status, method, duration_ms = ctx.start.elapsed().as_millis() as u64, "request done");
        if let Some(r) = &ctx.route {
            let rec = self.audit_record(session, ctx, r, status);
            self.shared.audit.write(rec).await;
        }
        if let (Some(up), Some(t)) = (&ctx.upstream, ctx.upstream_start) {
            let ustatus = ctx.upstream_status.unwrap_or(502);
            metrics::UPSTREAM_REQUESTS_TOTAL
                .with_label_values(&[up.name.as_str(), &ustatus.to_string()])
                .inc();
            metrics::UPSTREAM_DURATION
                .with_label_values(&[up.name.as_str()])
                .observe(t.elapsed().as_secs_f64());
        }
    }
}
