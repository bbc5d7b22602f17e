//! mTLS clients to the upstreams: one pooled hyper client per upstream, built once per
//! loaded config (its rustls settings come ready from the config), so a reload that
//! changes a CA, client certificate or address gets fresh connections and an unchanged
//! request path never builds TLS settings.
//!
//! Each address is its own pool, so round robin picks the address per request and reuses
//! that address's idle connections. The pool knows an address by a one-digit authority,
//! its index (`https://0`), which [`AddrConnector`] turns back into the socket address
//! when it connects: hyper-util hashes the pool key byte by byte with SipHash twice a
//! request, and `127.0.0.1:19443` cost about 2 000 instructions a request where `0`
//! costs a tenth. The Host the backend sees never comes from this URI: the request
//! always carries one (the client's, or the address, set in [`UpstreamClient::send`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Either;
use hyper::body::Incoming;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use indexmap::IndexMap;

use crate::config::Upstream;

/// What goes to the upstream: the client's body, or none (a retried body-less request).
pub type ReqBody = Either<Incoming, http_body_util::Empty<Bytes>>;

type Https = Client<HttpsConnector<AddrConnector>, ReqBody>;

/// How long an address that refused a connection is skipped.
const DOWN_FOR_MS: u64 = 10_000;
/// Idle pooled connections are closed after this (below common backend keep-alive
/// timeouts, so gatehouse closes first and never writes into a closing connection).
const POOL_IDLE: Duration = Duration::from_secs(50);

/// One upstream's pooled client.
pub struct UpstreamClient {
    pub upstream: Arc<Upstream>,
    pub metrics: crate::admin::metrics::UpstreamMetrics,
    client: Https,
    /// The pool's name of each address (its index), in `upstream.addrs` order.
    keys: Vec<http::uri::Authority>,
    /// `ADDR` per address, for a request that reaches the upstream without a Host.
    hosts: Vec<http::HeaderValue>,
}

/// Every upstream's client, by name.
pub type Clients = IndexMap<String, Arc<UpstreamClient>>;

/// Builds one client per upstream of a loaded config.
pub fn clients(upstreams: &IndexMap<String, Arc<Upstream>>) -> Clients {
    upstreams
        .iter()
        .map(|(name, up)| (name.clone(), Arc::new(UpstreamClient::new(up.clone()))))
        .collect()
}

impl UpstreamClient {
    pub fn new(up: Arc<Upstream>) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(up.connect_timeout));
        let sni =
            rustls::pki_types::ServerName::try_from(up.sni.clone()).expect("validated at load");
        let https = HttpsConnectorBuilder::new()
            .with_tls_config((*up.tls).clone())
            .https_only()
            .with_server_name_resolver(FixedServerNameResolver::new(sni))
            .enable_http1()
            .wrap_connector(AddrConnector {
                inner: http,
                addrs: up.addrs.clone().into(),
            });
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(1024)
            .retry_canceled_requests(false)
            .http1_preserve_header_case(false)
            .build(https);
        let keys = (0..up.addrs.len())
            .map(|i| http::uri::Authority::try_from(i.to_string()).expect("digits are a host"))
            .collect();
        let hosts = up
            .addrs
            .iter()
            .map(|a| http::HeaderValue::try_from(a.to_string()).expect("an address is ASCII"))
            .collect();
        UpstreamClient {
            metrics: crate::admin::metrics::UpstreamMetrics::new(&up.name),
            upstream: up,
            client,
            keys,
            hosts,
        }
    }

    /// Round robin over the addresses not marked down; when all are down, plain round
    /// robin (better to try than to refuse outright).
    pub fn pick(&self) -> usize {
        let up = &self.upstream;
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

    /// Skips address `idx` for a while (it refused a connection or failed TLS).
    pub fn mark_down(&self, idx: usize) {
        self.upstream.down_until[idx].store(now_ms() + DOWN_FOR_MS, Ordering::Relaxed);
    }

    pub fn addr(&self, idx: usize) -> SocketAddr {
        self.upstream.addrs[idx]
    }

    /// The URI for `path_and_query` at address `idx` (from parts: nothing is parsed
    /// again), naming the address by its pool key.
    pub fn uri(
        &self,
        idx: usize,
        path_and_query: http::uri::PathAndQuery,
    ) -> Result<http::Uri, http::Error> {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(http::uri::Scheme::HTTPS);
        parts.authority = Some(self.keys[idx].clone());
        parts.path_and_query = Some(path_and_query);
        Ok(http::Uri::from_parts(parts)?)
    }

    /// Sends one request; the future resolves with the response head. More than
    /// [`MAX_INFORMATIONAL`] informational responses before it (hyper skips them) fail
    /// the request as soon as the one too many arrives.
    pub async fn send(
        &self,
        mut req: http::Request<ReqBody>,
    ) -> Result<http::Response<Incoming>, SendError> {
        // (Only an HTTP/1.0 request or an h2 one without `:authority` comes without one.)
        if !req.headers().contains_key(http::header::HOST) {
            let idx = req
                .uri()
                .host()
                .and_then(|h| h.parse::<usize>().ok())
                .and_then(|i| self.hosts.get(i));
            if let Some(host) = idx {
                req.headers_mut().insert(http::header::HOST, host.clone());
            }
        }
        let seen = Arc::new(Informational::default());
        let counter = seen.clone();
        hyper::ext::on_informational(&mut req, move |_| counter.saw());
        tokio::select! {
            r = self.client.request(req) => {
                let resp = r.map_err(SendError::Upstream)?;
                if seen.count.load(Ordering::Relaxed) > MAX_INFORMATIONAL {
                    return Err(SendError::TooManyInformational);
                }
                Ok(resp)
            }
            _ = seen.too_many.notified() => Err(SendError::TooManyInformational),
        }
    }
}

/// The TCP connector of an upstream's pool: the URI names an address by its index in
/// `addrs` (see the module notes); anything else is refused, never resolved.
#[derive(Clone)]
pub struct AddrConnector {
    inner: HttpConnector,
    addrs: Arc<[SocketAddr]>,
}

impl AddrConnector {
    /// `https://IDX` as the address it names.
    fn target(&self, dst: &http::Uri) -> Option<http::Uri> {
        let idx: usize = dst.host()?.parse().ok()?;
        let addr = self.addrs.get(idx)?;
        http::Uri::builder()
            .scheme(http::uri::Scheme::HTTPS)
            .authority(addr.to_string())
            .path_and_query("/")
            .build()
            .ok()
    }
}

impl tower_service::Service<http::Uri> for AddrConnector {
    type Response = <HttpConnector as tower_service::Service<http::Uri>>::Response;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: http::Uri) -> Self::Future {
        match self.target(&dst) {
            Some(uri) => {
                let fut = self.inner.call(uri);
                Box::pin(async move { fut.await.map_err(Into::into) })
            }
            None => Box::pin(std::future::ready(Err(format!(
                "no upstream address is named {dst}"
            )
            .into()))),
        }
    }
}

/// More informational (1xx) responses than this for one request: `502` (SPEC section 7).
pub const MAX_INFORMATIONAL: usize = 10;

/// The informational responses one request has seen.
#[derive(Default)]
struct Informational {
    count: AtomicUsize,
    too_many: tokio::sync::Notify,
}

impl Informational {
    fn saw(&self) {
        if self.count.fetch_add(1, Ordering::Relaxed) == MAX_INFORMATIONAL {
            self.too_many.notify_one();
        }
    }
}

/// Why an upstream request has no response head.
#[derive(Debug)]
pub enum SendError {
    Upstream(hyper_util::client::legacy::Error),
    TooManyInformational,
}

impl SendError {
    /// The connection could not be made (the address may be tried again).
    pub fn is_connect(&self) -> bool {
        matches!(self, SendError::Upstream(e) if e.is_connect())
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Upstream(e) => e.fmt(f),
            SendError::TooManyInformational => {
                write!(f, "more than {MAX_INFORMATIONAL} informational responses")
            }
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::Upstream(e) => e.source(),
            SendError::TooManyInformational => None,
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_name_of_an_address_is_its_index_and_nothing_else_connects() {
        let addrs: Vec<SocketAddr> = vec![
            "127.0.0.1:19443".parse().unwrap(),
            "[::1]:8443".parse().unwrap(),
        ];
        let c = AddrConnector {
            inner: HttpConnector::new(),
            addrs: addrs.into(),
        };
        let target = |u: &str| c.target(&u.parse().unwrap()).map(|t| t.to_string());
        assert_eq!(
            target("https://0/x?y").as_deref(),
            Some("https://127.0.0.1:19443/")
        );
        assert_eq!(target("https://1").as_deref(), Some("https://[::1]:8443/"));
        // Never resolved: an index out of range or a name is refused.
        assert_eq!(target("https://2"), None);
        assert_eq!(target("https://example.com"), None);
        assert_eq!(target("https://127.0.0.1:19443"), None);
    }
}
