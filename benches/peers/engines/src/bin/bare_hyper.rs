//! bare-hyper: the gateway's hop and nothing else, on one thread, for benches/peers/run.sh.
//!
//! TLS in (tokio-rustls, ALPN h2 and http/1.1, hyper_util's auto server), one header
//! added, then a pooled mutual-TLS client out (hyper_util's legacy Client over
//! hyper_rustls, HTTP/1.1). No token work: it shows what the plumbing alone costs.
//!
//! bare-hyper --listen ADDR --cert PEM --key PEM --upstream ADDR --sni NAME
//!            --ca PEM --client-cert PEM --client-key PEM

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

type Upstream = Client<HttpsConnector<HttpConnector>, Incoming>;
type Body = Either<Incoming, Empty<Bytes>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str = "usage: bare-hyper --listen ADDR --cert PEM --key PEM --upstream ADDR \
                     --sni NAME --ca PEM --client-cert PEM --client-key PEM";

fn arg(name: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        Some(i) if i + 1 < args.len() => args[i + 1].clone(),
        _ => {
            eprintln!("bare-hyper: {name} is missing\n{USAGE}");
            std::process::exit(2)
        }
    }
}

fn certs(path: &str) -> Result<Vec<CertificateDer<'static>>, BoxError> {
    let pem = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    Ok(rustls_pemfile::certs(&mut &pem[..]).collect::<Result<_, _>>()?)
}

fn key(path: &str) -> Result<PrivateKeyDer<'static>, BoxError> {
    let pem = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    Ok(rustls_pemfile::private_key(&mut &pem[..])?.ok_or(format!("{path}: no private key"))?)
}

fn main() -> Result<(), BoxError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());

    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs(&arg("--cert"))?, key(&arg("--key"))?)?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));

    let mut roots = rustls::RootCertStore::empty();
    for ca in certs(&arg("--ca"))? {
        roots.add(ca)?;
    }
    let client_tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs(&arg("--client-cert"))?, key(&arg("--client-key"))?)?;
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    let sni = ServerName::try_from(arg("--sni"))?;
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(client_tls)
        .https_only()
        .with_server_name_resolver(FixedServerNameResolver::new(sni))
        .enable_http1()
        .wrap_connector(tcp);
    let client: Upstream = Client::builder(TokioExecutor::new()).build(https);
    let upstream: Arc<str> = format!("https://{}", arg("--upstream")).into();
    let listen: SocketAddr = arg("--listen").parse()?;

    // One thread: the accept loop, every connection and the client pool share it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        eprintln!("bare-hyper listening on {listen}");
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, client, upstream) = (acceptor.clone(), client.clone(), upstream.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req| {
                    forward(req, client.clone(), upstream.clone())
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    })
}

/// The hop: same method, path and headers, plus one header; the backend's answer as is.
async fn forward(
    req: Request<Incoming>,
    client: Upstream,
    upstream: Arc<str>,
) -> Result<Response<Body>, BoxError> {
    let (mut parts, body) = req.into_parts();
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = format!("{upstream}{pq}").parse::<Uri>()?;
    parts.version = http::Version::HTTP_11;
    parts
        .headers
        .insert("x-row-filter", HeaderValue::from_static("region=eu-west"));
    match client.request(Request::from_parts(parts, body)).await {
        Ok(resp) => Ok(resp.map(Either::Left)),
        Err(e) => {
            eprintln!("bare-hyper: upstream: {e}");
            let mut resp = Response::new(Either::Right(Empty::new()));
            *resp.status_mut() = StatusCode::BAD_GATEWAY;
            Ok(resp)
        }
    }
}
