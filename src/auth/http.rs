//! The HTTPS client gatehouse uses to talk to token issuers (discovery, JWKS,
//! introspection).
//!
//! HTTPS only: a plain `http://` URL is refused before any connection, because keys or
//! introspection answers fetched in clear text could be swapped by anyone on the path.
//! Trust roots are the system roots plus the issuer's optional `ca` PEM. Every exchange is
//! bounded: 5 s for connect and the whole exchange, 1 MiB of response body.
//!
//! The client spawns its connection tasks on the runtime it is called from, so callers run
//! it on gatehouse's background I/O runtime, never on a request's runtime.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

/// Connect and whole-exchange timeout.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response body accepted.
pub const MAX_BODY: usize = 1024 * 1024;

/// What went wrong talking to an issuer. Messages never contain tokens or secrets.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("invalid URL {0}")]
    BadUrl(String),
    #[error("refusing non-HTTPS URL {0}")]
    NotHttps(String),
    #[error("CA PEM: {0}")]
    BadCa(String),
    #[error("timed out after {}s", TIMEOUT.as_secs())]
    Timeout,
    #[error("request failed: {0}")]
    Transport(String),
    #[error("HTTP status {0}")]
    Status(StatusCode),
    #[error("response body over 1 MiB or unreadable: {0}")]
    Body(String),
}

/// A response that passed the size cap.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// HTTPS client for one issuer (its own trust roots). Cheap to clone.
#[derive(Clone)]
pub struct HttpsClient {
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl std::fmt::Debug for HttpsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpsClient")
    }
}

/// System roots, read once per process: reading the OS store on every reload is slow and
/// the set does not change while we run. Finding none is tolerated (containers often have
/// none; the issuer's `ca` then has to do).
static SYSTEM_ROOTS: LazyLock<rustls::RootCertStore> = LazyLock::new(|| {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    if !found.errors.is_empty() {
        tracing::debug!(errors = found.errors.len(), "some system roots unreadable");
    }
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    tracing::debug!(added, ignored, "system trust roots loaded");
    roots
});

/// The system trust roots (read once per process).
pub fn system_roots() -> rustls::RootCertStore {
    SYSTEM_ROOTS.clone()
}

impl HttpsClient {
    /// Builds a client trusting the system roots plus `ca_pem` (PEM, one or more certs).
    pub fn new(ca_pem: Option<&[u8]>) -> Result<Self, HttpError> {
        let mut roots = SYSTEM_ROOTS.clone();
        if let Some(pem) = ca_pem {
            let mut n = 0;
            for cert in rustls_pemfile::certs(&mut &pem[..]) {
                let cert = cert.map_err(|e| HttpError::BadCa(e.to_string()))?;
                roots
                    .add(cert)
                    .map_err(|e| HttpError::BadCa(e.to_string()))?;
                n += 1;
            }
            if n == 0 {
                return Err(HttpError::BadCa("no certificate found".into()));
            }
        }
        // Our own provider, so a process-wide default chosen for the listener (for example
        // TLS 1.3 only) does not decide how we reach the IdP.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| HttpError::Transport(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(TIMEOUT));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Ok(HttpsClient { inner })
    }

    /// GET `url` (HTTPS only). Any status is returned; callers decide what is acceptable.
    pub async fn get(&self, url: &str) -> Result<HttpResponse, HttpError> {
        let uri = https_uri(url)?;
        let req = Request::builder()
            .method(Method::GET)
            .uri(uri)
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, "gatehouse")
            .body(Full::new(Bytes::new()))
            .map_err(|e| HttpError::BadUrl(e.to_string()))?;
        self.send(req).await
    }

    /// POST an `application/x-www-form-urlencoded` body with HTTP Basic client
    /// authentication (RFC 6749 section 2.3.1: id and secret form-encoded first).
    pub async fn post_form(
        &self,
        url: &str,
        basic: (&str, &str),
        form: &[(&str, &str)],
    ) -> Result<HttpResponse, HttpError> {
        let uri = https_uri(url)?;
        let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let creds = format!("{}:{}", enc(basic.0), enc(basic.1));
        let auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(creds)
        );
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let req = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, "gatehouse")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::AUTHORIZATION, auth)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| HttpError::BadUrl(e.to_string()))?;
        self.send(req).await
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> Result<HttpResponse, HttpError> {
        let exchange = async {
            let resp = self
                .inner
                .request(req)
                .await
                .map_err(|e| HttpError::Transport(error_chain(&e)))?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(|e| HttpError::Body(e.to_string()))?
                .to_bytes();
            Ok(HttpResponse {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| HttpError::Timeout)?
    }
}

/// Parses `url` and insists on `https`.
fn https_uri(url: &str) -> Result<http::Uri, HttpError> {
    let parsed = url::Url::parse(url).map_err(|_| HttpError::BadUrl(url.to_string()))?;
    if parsed.scheme() != "https" {
        return Err(HttpError::NotHttps(url.to_string()));
    }
    parsed
        .as_str()
        .parse()
        .map_err(|_| HttpError::BadUrl(url.to_string()))
}

/// hyper's top-level error says little ("client error (Connect)"); the cause chain names
/// the real problem (refused, certificate unknown, ...).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// `Cache-Control: max-age=N` of a response, if any (`no-cache`/`no-store` count as 0).
pub fn max_age(headers: &HeaderMap) -> Option<Duration> {
    let mut out = None;
    for v in headers.get_all(header::CACHE_CONTROL) {
        let Ok(v) = v.to_str() else { continue };
        for directive in v.split(',') {
            let d = directive.trim();
            let lower = d.to_ascii_lowercase();
            if lower == "no-cache" || lower == "no-store" {
                out = Some(Duration::ZERO);
            } else if let Some(n) = lower.strip_prefix("max-age=") {
                if let Ok(n) = n.trim_matches('"').parse::<u64>() {
                    out = Some(out.map_or(Duration::from_secs(n), |o: Duration| {
                        o.min(Duration::from_secs(n))
                    }));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_plain_http_and_garbage() {
        assert!(matches!(
            https_uri("http://idp.example/keys"),
            Err(HttpError::NotHttps(_))
        ));
        assert!(matches!(https_uri("not a url"), Err(HttpError::BadUrl(_))));
        assert!(https_uri("https://idp.example/keys").is_ok());
    }

    #[tokio::test]
    async fn plain_http_never_connects() {
        let c = HttpsClient::new(None).unwrap();
        let e = c.get("http://127.0.0.1:1/keys").await.unwrap_err();
        assert!(matches!(e, HttpError::NotHttps(_)), "{e}");
    }

    #[test]
    fn bad_ca_pem_is_an_error() {
        assert!(matches!(
            HttpsClient::new(Some(b"nothing here")),
            Err(HttpError::BadCa(_))
        ));
    }

    #[test]
    fn cache_control_max_age() {
        let mut h = HeaderMap::new();
        assert_eq!(max_age(&h), None);
        h.insert(
            header::CACHE_CONTROL,
            "public, max-age=120".parse().unwrap(),
        );
        assert_eq!(max_age(&h), Some(Duration::from_secs(120)));
        h.insert(header::CACHE_CONTROL, "no-store".parse().unwrap());
        assert_eq!(max_age(&h), Some(Duration::ZERO));
    }
}
