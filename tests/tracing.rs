//! `[tracing]`: spans exported over OTLP/HTTP to an in-process collector (a hyper server
//! on loopback decoding the protobuf bodies with `opentelemetry-proto`), continuing the
//! client's `traceparent`, propagating the gateway's own to the backend, and carrying no
//! token, cookie or query string. Without `[tracing]` nothing is exported and the
//! client's `traceparent` reaches the backend untouched.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::*;
use gatehouse::devkit::KeyAlg;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;

/// What the collector received: (path, content type, body) per POST.
type Received = Arc<Mutex<Vec<(String, String, Bytes)>>>;

/// An OTLP/HTTP collector on 127.0.0.1: accepts `POST /v1/traces` (protobuf) and keeps
/// every body; anything else is a 404.
struct Collector {
    addr: SocketAddr,
    received: Received,
    rt: Option<tokio::runtime::Runtime>,
}

impl Collector {
    fn start() -> Collector {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let received: Received = Arc::default();
        let rec = received.clone();
        rt.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let rec = rec.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let rec = rec.clone();
                            async move {
                                let path = req.uri().path().to_string();
                                let ctype = req
                                    .headers()
                                    .get("content-type")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("")
                                    .to_string();
                                let post = req.method() == http::Method::POST;
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                let status = if post && path == "/v1/traces" {
                                    rec.lock().unwrap().push((path, ctype, body));
                                    200
                                } else {
                                    404
                                };
                                // An empty ExportTraceServiceResponse is an empty protobuf body.
                                Ok::<_, Infallible>(
                                    http::Response::builder()
                                        .status(status)
                                        .header("content-type", "application/x-protobuf")
                                        .body(Full::new(Bytes::new()))
                                        .unwrap(),
                                )
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Collector {
            addr,
            received,
            rt: Some(rt),
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far, with its resource's attributes.
    fn spans(&self) -> Vec<(Vec<KeyValue>, Span)> {
        let mut out = Vec::new();
        for (_, _, body) in self.received.lock().unwrap().iter() {
            let req = ExportTraceServiceRequest::decode(body.clone()).expect("OTLP protobuf");
            for rs in req.resource_spans {
                let res = rs.resource.map(|r| r.attributes).unwrap_or_default();
                for ss in rs.scope_spans {
                    for s in ss.spans {
                        out.push((res.clone(), s));
                    }
                }
            }
        }
        out
    }

    /// Polls until `done` holds for the spans received (30 s at most).
    fn wait_for(&self, what: &str, done: impl Fn(&[(Vec<KeyValue>, Span)]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if done(&self.spans()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the collector never received {what}; got {:#?}",
                self.spans()
                    .iter()
                    .map(|(_, s)| (&s.name, hex(&s.trace_id)))
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn text(v: &AnyValue) -> String {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .map(text)
}

/// `(trace id, parent id, flags)` of a `traceparent` value.
fn parse_traceparent(v: &str) -> (String, String, String) {
    let p: Vec<&str> = v.split('-').collect();
    assert_eq!(p.len(), 4, "{v}");
    assert_eq!(p[0], "00", "{v}");
    (p[1].to_string(), p[2].to_string(), p[3].to_string())
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn traced_env(collector: &Collector) -> Env {
    Env::with(EnvOptions {
        routes: format!(
            "[tracing]\notlp_endpoint = \"{}\"\nservice_name = \"gatehouse-test\"\n{DEFAULT_ROUTES}",
            collector.endpoint()
        ),
        ..EnvOptions::default()
    })
}

const ALLOWED_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const ALLOWED_PARENT: &str = "00f067aa0ba902b7";
const DENIED_TRACE: &str = "5bf92f3577b34da6a3ce929d0e0e4737";
const JWKS_TRACE: &str = "6bf92f3577b34da6a3ce929d0e0e4738";

#[test]
fn request_spans_continue_the_client_trace_and_carry_no_secrets() {
    let collector = Collector::start();
    let env = traced_env(&collector);

    // Allowed, with the client's traceparent.
    let token = env.token(json!({}));
    let tp = format!("00-{ALLOWED_TRACE}-{ALLOWED_PARENT}-01");
    let ok = env.send(
        reqwest::Method::GET,
        "/orders/7",
        Some(&token),
        &[("traceparent", tp.as_str()), ("tracestate", "vendor=abc")],
        None,
        false,
    );
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(
        ok.echoed("tracestate"),
        vec!["vendor=abc"],
        "a continued trace keeps the client's tracestate"
    );
    let sent = ok.echoed("traceparent");
    assert_eq!(sent.len(), 1, "one traceparent to the backend: {sent:?}");
    let (b_trace, b_parent, b_flags) = parse_traceparent(&sent[0]);
    assert_eq!(
        b_trace, ALLOWED_TRACE,
        "the backend continues the client's trace"
    );
    assert_ne!(
        b_parent, ALLOWED_PARENT,
        "the backend's parent is the gateway's upstream span, not the client's"
    );
    assert_eq!(b_flags, "01");

    // Denied: an expired token.
    let expired = env.token(json!({"iat": now_s() - 7200, "exp": now_s() - 3600}));
    let tp_denied = format!("00-{DENIED_TRACE}-{ALLOWED_PARENT}-01");
    let denied = env.send(
        reqwest::Method::GET,
        "/orders/7",
        Some(&expired),
        &[("traceparent", tp_denied.as_str())],
        None,
        false,
    );
    assert_eq!(denied.status, 401, "{denied:?}");

    // A token, a cookie and a query string, no client traceparent: a new trace, which
    // the backend is told about all the same.
    let secret_token = env.token(json!({"sub": "bob"}));
    let cookie = "session=c00kie-v4lue-123";
    let q = env.send(
        reqwest::Method::GET,
        "/orders/8?secret=x",
        Some(&secret_token),
        &[("cookie", cookie), ("tracestate", "stale=1")],
        None,
        false,
    );
    assert_eq!(q.status, 200, "{q:?}");
    assert!(
        q.echoed("tracestate").is_empty(),
        "a tracestate without a traceparent describes no trace of ours"
    );
    let q_id = q.header("x-request-id").expect("request id");
    let q_sent = q.echoed("traceparent");
    assert_eq!(q_sent.len(), 1, "{q_sent:?}");
    let (q_trace, q_parent, _) = parse_traceparent(&q_sent[0]);

    // The issuer rotates its key: the request waits for a JWKS refetch.
    env.issuer().rotate(KeyAlg::ES256);
    let rotated = env.issuer().mint(
        KeyAlg::ES256,
        json!({"groups": ["sg-data-stewards"], "scope": "orders.read", "region": "eu-west"}),
    );
    let tp_jwks = format!("00-{JWKS_TRACE}-{ALLOWED_PARENT}-01");
    let r = env.send(
        reqwest::Method::GET,
        "/orders/9",
        Some(&rotated),
        &[("traceparent", tp_jwks.as_str())],
        None,
        false,
    );
    assert_eq!(r.status, 200, "{r:?}");

    let server_span = |spans: &[(Vec<KeyValue>, Span)], trace: &str| {
        spans
            .iter()
            .find(|(_, s)| hex(&s.trace_id) == trace && s.kind == SpanKind::Server as i32)
            .map(|(r, s)| (r.clone(), s.clone()))
    };
    collector.wait_for("the four request spans and their children", |spans| {
        let q_done = spans
            .iter()
            .any(|(_, s)| attr(&s.attributes, "request_id").as_deref() == Some(q_id.as_str()));
        let children = |trace: &str, n: usize| {
            spans
                .iter()
                .filter(|(_, s)| hex(&s.trace_id) == trace && s.kind != SpanKind::Server as i32)
                .count()
                >= n
        };
        server_span(spans, ALLOWED_TRACE).is_some()
            && server_span(spans, DENIED_TRACE).is_some()
            && server_span(spans, JWKS_TRACE).is_some()
            && q_done
            && children(ALLOWED_TRACE, 2)
            && children(JWKS_TRACE, 3)
    });
    let spans = collector.spans();
    let in_trace = |trace: &str| -> Vec<Span> {
        spans
            .iter()
            .filter(|(_, s)| hex(&s.trace_id) == trace)
            .map(|(_, s)| s.clone())
            .collect()
    };

    // The allowed request: a server span under the client's parent, with its outcome.
    let (resource, server) = server_span(&spans, ALLOWED_TRACE).unwrap();
    assert_eq!(
        attr(&resource, "service.name").as_deref(),
        Some("gatehouse-test")
    );
    assert_eq!(hex(&server.parent_span_id), ALLOWED_PARENT);
    let a = &server.attributes;
    assert_eq!(attr(a, "route").as_deref(), Some("orders-read"));
    assert_eq!(attr(a, "decision").as_deref(), Some("allow"));
    assert_eq!(attr(a, "upstream").as_deref(), Some("echo"));
    assert_eq!(attr(a, "http.response.status_code").as_deref(), Some("200"));
    assert_eq!(attr(a, "http.request.method").as_deref(), Some("GET"));
    assert_eq!(attr(a, "url.path").as_deref(), Some("/orders/7"));
    assert_eq!(attr(a, "reason"), None);
    let trace = in_trace(ALLOWED_TRACE);
    let verify = trace
        .iter()
        .find(|s| s.name == "token verification")
        .expect("a token verification span");
    assert_eq!(verify.parent_span_id, server.span_id);
    let upstream = trace
        .iter()
        .find(|s| s.name == "upstream")
        .expect("an upstream span");
    assert_eq!(upstream.parent_span_id, server.span_id);
    assert_eq!(upstream.kind, SpanKind::Client as i32);
    assert_eq!(
        hex(&upstream.span_id),
        b_parent,
        "the backend's traceparent names the upstream span"
    );
    assert_eq!(
        attr(&upstream.attributes, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        attr(&upstream.attributes, "upstream").as_deref(),
        Some("echo")
    );

    // The denied request: decision and reason, no upstream.
    let (_, denied_span) = server_span(&spans, DENIED_TRACE).unwrap();
    let d = &denied_span.attributes;
    assert_eq!(attr(d, "decision").as_deref(), Some("deny"));
    assert_eq!(attr(d, "reason").as_deref(), Some("expired"));
    assert_eq!(attr(d, "route").as_deref(), Some("orders-read"));
    assert_eq!(attr(d, "http.response.status_code").as_deref(), Some("401"));
    assert_eq!(attr(d, "upstream"), None);
    let denied_trace = in_trace(DENIED_TRACE);
    assert!(
        denied_trace.iter().all(|s| s.name != "upstream"),
        "a denied request has no upstream span"
    );
    let failed_verify = denied_trace
        .iter()
        .find(|s| s.name == "token verification")
        .expect("the failed verification has a span");
    assert_eq!(
        attr(&failed_verify.attributes, "reason").as_deref(),
        Some("expired")
    );

    // The request without a traceparent: its own trace, told to the backend.
    let (_, q_span) = spans
        .iter()
        .find(|(_, s)| attr(&s.attributes, "request_id").as_deref() == Some(q_id.as_str()))
        .unwrap();
    assert_eq!(hex(&q_span.trace_id), q_trace);
    assert!(q_span.parent_span_id.is_empty(), "a root span");
    let q_upstream = in_trace(&q_trace)
        .into_iter()
        .find(|s| s.name == "upstream")
        .expect("its upstream span");
    assert_eq!(hex(&q_upstream.span_id), q_parent);
    assert_eq!(
        attr(&q_span.attributes, "url.path").as_deref(),
        Some("/orders/8")
    );

    // The rotated key: the JWKS wait is a child of the verification.
    let jwks_trace = in_trace(JWKS_TRACE);
    let jv = jwks_trace
        .iter()
        .find(|s| s.name == "token verification")
        .expect("verification span");
    let fetch = jwks_trace
        .iter()
        .find(|s| s.name == "jwks fetch")
        .expect("a jwks fetch span");
    assert_eq!(fetch.parent_span_id, jv.span_id);
    assert_eq!(attr(&fetch.attributes, "issuer").as_deref(), Some("corp"));

    // Nothing secret anywhere: every attribute, span name and the raw bodies.
    let secrets = [
        token.as_str(),
        expired.as_str(),
        secret_token.as_str(),
        rotated.as_str(),
        "secret=x",
        "c00kie-v4lue-123",
    ];
    for (res, s) in &spans {
        let mut values: Vec<String> = res
            .iter()
            .chain(s.attributes.iter())
            .chain(s.events.iter().flat_map(|e| e.attributes.iter()))
            .filter_map(|kv| kv.value.as_ref().map(text))
            .collect();
        values.push(s.name.clone());
        values.extend(s.events.iter().map(|e| e.name.clone()));
        for v in &values {
            for secret in secrets {
                assert!(
                    !v.contains(secret),
                    "{secret:?} in a span ({}): {v:?}",
                    s.name
                );
            }
        }
    }
    for (path, ctype, body) in collector.received.lock().unwrap().iter() {
        assert_eq!(path, "/v1/traces");
        assert_eq!(ctype, "application/x-protobuf");
        for secret in secrets {
            assert!(
                !body.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret:?} in an export body"
            );
        }
    }
}

/// No `[tracing]`: no exporter, no span, and the client's `traceparent` and `tracestate`
/// reach the backend exactly as sent (passed through).
#[test]
fn without_a_tracing_table_nothing_is_exported_and_traceparent_passes_through() {
    let env = Env::start();
    assert!(env.gw().shared.live.load().rt.tracing.is_none());
    assert!(env.gw().shared.tracing.is_none(), "no exporter");
    let tp = format!("00-{ALLOWED_TRACE}-{ALLOWED_PARENT}-01");
    let token = env.token(json!({}));
    let r = env.send(
        reqwest::Method::GET,
        "/orders/7",
        Some(&token),
        &[("traceparent", tp.as_str()), ("tracestate", "vendor=abc")],
        None,
        false,
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.echoed("traceparent"), vec![tp]);
    assert_eq!(r.echoed("tracestate"), vec!["vendor=abc"]);
}

/// A collector that is down neither fails nor holds up requests; the gateway still
/// propagates its trace to the backend.
#[test]
fn a_dead_collector_does_not_fail_requests() {
    let port = free_port();
    let env = Env::with(EnvOptions {
        routes: format!("[tracing]\notlp_endpoint = \"http://127.0.0.1:{port}\"\n{DEFAULT_ROUTES}"),
        ..EnvOptions::default()
    });
    assert_eq!(
        env.gw()
            .shared
            .live
            .load()
            .rt
            .tracing
            .as_ref()
            .map(|t| t.service_name.as_str()),
        Some("gatehouse"),
        "service_name defaults to gatehouse"
    );
    let token = env.token(json!({}));
    for i in 0..20 {
        let r = env.get(&format!("/orders/{i}"), Some(&token), i % 2 == 0);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.echoed("traceparent").len(), 1);
    }
}
