//! Traces: OpenTelemetry spans exported over OTLP/HTTP (protobuf) when `[tracing]
//! otlp_endpoint` is set (docs/operations.md, "Traces").
//!
//! One server span per request, continuing the client's W3C `traceparent`, with child
//! spans for token verification, a JWKS fetch the request waited for, and each upstream
//! attempt; the upstream request carries a `traceparent` naming the gateway's upstream
//! span (same trace id). Attributes are names and outcomes only: never a token, a cookie,
//! a header value or the query string.
//!
//! Made with the OpenTelemetry API directly, not through the `tracing` subscriber: the
//! log subscriber filters per-request spans out by default so that they cost nothing,
//! and the exporter is per gateway (restart-only), not per process.
//!
//! Cost when off: [`Tracing`] is `None` in [`crate::proxy::Shared`], so a request makes
//! no span, allocates nothing more and reads no header; the child-span hooks in the
//! authenticator check one process-wide flag ([`child`]) and return.
//!
//! When on, finished spans go into the SDK's `BatchSpanProcessor`: a bounded queue
//! (2048 spans, `OTEL_BSP_MAX_QUEUE_SIZE`) drained by its own thread every 5 s
//! (`OTEL_BSP_SCHEDULE_DELAY`). A full queue drops spans (the SDK logs a warning and the
//! total at shutdown); a request never waits on the collector. The export's HTTP exchange
//! runs on the background runtime (never a proxy worker) and is bounded by
//! [`EXPORT_TIMEOUT`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use opentelemetry::context::FutureExt as _;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    SpanKind, Status, TraceContextExt, TraceFlags, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;

use crate::config::TracingSettings;

/// One export (connect, send, response) must finish within this.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

/// Largest collector response read.
const MAX_RESPONSE: usize = 64 * 1024;

/// Set once any gateway in this process exports spans: until then the child-span hooks
/// cost one relaxed load.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// The tracer of the request whose context is current (a context value, so that code
/// below the data plane can start child spans without being handed anything).
#[derive(Clone)]
struct ReqTracer(SdkTracer);

/// The span exporter of one running gateway.
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tracing")
    }
}

impl Tracing {
    /// Starts the exporter: the batch processor's thread, the HTTP exchanges on `io`.
    pub fn start(settings: &TracingSettings, io: tokio::runtime::Handle) -> anyhow::Result<Self> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(ExportClient::new(io)?)
            .with_endpoint(settings.traces_url.clone())
            .with_protocol(Protocol::HttpBinary)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the OTLP span exporter: {e}"))?;
        let resource = Resource::builder()
            .with_service_name(settings.service_name.clone())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_resource(resource)
            .with_batch_exporter(exporter)
            .build();
        let tracer = provider.tracer("gatehouse");
        EXPORTING.store(true, Ordering::Relaxed);
        Ok(Tracing {
            provider,
            tracer,
            propagator: TraceContextPropagator::new(),
        })
    }

    /// The server span of one request, a child of the client's `traceparent` when it
    /// sent a valid one (else a new trace). Reads only `traceparent` and `tracestate`.
    pub fn request(&self, headers: &HeaderMap, method: &http::Method) -> RequestTrace {
        let parent = self.propagator.extract(&HeaderExtractor(headers));
        let span = self
            .tracer
            .span_builder(method.as_str().to_string())
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", method.as_str().to_string()),
                KeyValue::new("url.scheme", "https"),
            ])
            .start_with_context(&self.tracer, &parent);
        RequestTrace {
            continued: parent.has_active_span(),
            cx: parent
                .with_span(span)
                .with_value(ReqTracer(self.tracer.clone())),
        }
    }

    /// Exports what is queued and stops the exporter (bounded by `timeout`). Blocks.
    pub fn shutdown(&self, timeout: Duration) {
        if let Err(e) = self.provider.shutdown_with_timeout(timeout) {
            tracing::debug!(error = %e, "span exporter shutdown");
        }
    }
}

/// The context of one request's server span.
pub struct RequestTrace {
    cx: Context,
    /// The client sent a valid `traceparent` (its trace is continued).
    continued: bool,
}

/// What the request span records when the request ends.
pub struct RequestEnd<'a> {
    pub request_id: &'a str,
    pub path: &'a str,
    pub method: &'a str,
    pub route: Option<&'a str>,
    pub decision: &'static str,
    pub reason: &'static str,
    pub upstream: Option<&'a str>,
    pub status: u16,
}

impl RequestTrace {
    /// Runs `fut` (the request's decision) with this request's span current, so that
    /// token verification and JWKS waits become its children.
    pub async fn scope<F: std::future::Future>(&self, fut: F) -> F::Output {
        fut.with_context(self.cx.clone()).await
    }

    /// Starts the span of one upstream attempt and writes its `traceparent` (and the
    /// client's `tracestate`) into the upstream request's headers.
    pub fn upstream(
        &self,
        upstream: &str,
        addr: std::net::SocketAddr,
        method: &http::Method,
        headers: &mut HeaderMap,
    ) -> UpstreamSpan {
        let ReqTracer(tracer) = self.cx.get::<ReqTracer>().expect("set in request()");
        let span = tracer
            .span_builder("upstream")
            .with_kind(SpanKind::Client)
            .with_attributes([
                KeyValue::new("upstream", upstream.to_string()),
                KeyValue::new("server.address", addr.ip().to_string()),
                KeyValue::new("server.port", i64::from(addr.port())),
                KeyValue::new("http.request.method", method.as_str().to_string()),
            ])
            .start_with_context(tracer, &self.cx);
        let cx = self.cx.with_span(span);
        // W3C Trace Context: the same trace, this span as the parent. The client's
        // `tracestate` goes on unchanged when its trace is continued, and is dropped when
        // this is a new trace (it described another one).
        let sc = cx.span().span_context().clone();
        let tp = format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags() & TraceFlags::SAMPLED
        );
        if let Ok(v) = HeaderValue::from_str(&tp) {
            headers.insert(TRACEPARENT, v);
        }
        if !self.continued {
            headers.remove(TRACESTATE);
        }
        UpstreamSpan { cx }
    }

    /// Records the outcome and ends the request span.
    pub fn end(&self, e: RequestEnd<'_>) {
        let span = self.cx.span();
        if let Some(r) = e.route {
            span.update_name(format!("{} {r}", e.method));
            span.set_attribute(KeyValue::new("route", r.to_string()));
        }
        if !e.request_id.is_empty() {
            span.set_attribute(KeyValue::new("request_id", e.request_id.to_string()));
        }
        if !e.path.is_empty() {
            // The routed path only: the query string never reaches a span.
            span.set_attribute(KeyValue::new("url.path", e.path.to_string()));
        }
        if !e.decision.is_empty() {
            span.set_attribute(KeyValue::new("decision", e.decision));
        }
        if !e.reason.is_empty() {
            span.set_attribute(KeyValue::new("reason", e.reason));
        }
        if let Some(u) = e.upstream {
            span.set_attribute(KeyValue::new("upstream", u.to_string()));
        }
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(e.status),
        ));
        if e.status >= 500 {
            span.set_status(Status::error(format!("HTTP {}", e.status)));
        }
        span.end();
    }
}

/// The span of one upstream attempt; ended by [`UpstreamSpan::end`] (or when dropped).
pub struct UpstreamSpan {
    cx: Context,
}

impl UpstreamSpan {
    /// The upstream's response status, or why there was none.
    pub fn end(self, status: Result<u16, &str>) {
        let span = self.cx.span();
        match status {
            Ok(s) => {
                span.set_attribute(KeyValue::new("http.response.status_code", i64::from(s)));
                if s >= 500 {
                    span.set_status(Status::error(format!("HTTP {s}")));
                }
            }
            Err(why) => span.set_status(Status::error(why.to_string())),
        }
        span.end();
    }
}

/// A child span of the current request's span, as a context to run the child's work in;
/// `None` when no request span is current (tracing off, `explain`, background work).
pub fn child(name: &'static str, attrs: Vec<KeyValue>) -> Option<Context> {
    if !EXPORTING.load(Ordering::Relaxed) {
        return None;
    }
    let cx = Context::current();
    let ReqTracer(tracer) = cx.get::<ReqTracer>()?;
    let span = tracer
        .span_builder(name)
        .with_kind(SpanKind::Internal)
        .with_attributes(attrs)
        .start_with_context(tracer, &cx);
    Some(cx.with_span(span))
}

/// Runs `fut` inside a child span `name` of the current request's span (see [`child`]);
/// `fail` names the outcome that marks the span as an error. Without a request span it is
/// just `fut`.
pub async fn in_child<T, E, F>(
    name: &'static str,
    attrs: impl FnOnce() -> Vec<KeyValue>,
    fail: impl FnOnce(&E) -> Option<&'static str>,
    fut: F,
) -> Result<T, E>
where
    F: std::future::Future<Output = Result<T, E>>,
{
    let Some(cx) = child(name, attrs()) else {
        return fut.await;
    };
    let r = fut.with_context(cx.clone()).await;
    let span = cx.span();
    if let Err(e) = &r {
        if let Some(why) = fail(e) {
            span.set_attribute(KeyValue::new("reason", why));
            span.set_status(Status::error(why));
        }
    }
    span.end();
    r
}

/// The exporter's HTTP client: gatehouse's hyper + rustls stack (system roots), every
/// exchange spawned on the background runtime so that the SDK's export thread never
/// needs a runtime of its own.
#[derive(Clone)]
struct ExportClient {
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    io: tokio::runtime::Handle,
}

impl std::fmt::Debug for ExportClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExportClient")
    }
}

impl ExportClient {
    fn new(io: tokio::runtime::Handle) -> anyhow::Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(crate::auth::http::system_roots())
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(EXPORT_TIMEOUT));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(ExportClient { inner, io })
    }
}

#[async_trait]
impl HttpClient for ExportClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.inner.clone();
        let exchange = async move {
            let (parts, body) = request.into_parts();
            let resp = client
                .request(Request::from_parts(parts, Full::new(body)))
                .await?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| format!("collector response: {e}"))?
                .to_bytes();
            Ok::<_, HttpError>(Response::from_parts(parts, body))
        };
        // The timer is made inside the task: this thread has no runtime.
        match self
            .io
            .spawn(async move { tokio::time::timeout(EXPORT_TIMEOUT, exchange).await })
            .await
        {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(format!(
                "the collector did not answer within {}s",
                EXPORT_TIMEOUT.as_secs()
            )
            .into()),
            Err(e) => Err(format!("export task: {e}").into()),
        }
    }
}
