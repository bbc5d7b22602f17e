//! bare-pingora: the gateway's hop and nothing else, on one pingora worker thread, for
//! benches/peers/run.sh.
//!
//! pingora 0.9 with rustls: TLS in (ALPN h2 and http/1.1), a ProxyHttp whose only work
//! is `upstream_peer` (HttpPeer::new_mtls, pooled by pingora) plus one request header.
//! No token work: it shows what gatehouse's engine costs before gatehouse adds anything.
//!
//! bare-pingora --listen ADDR --cert PEM --key PEM --upstream ADDR --sni NAME
//!              --ca PEM --client-cert PEM --client-key PEM [--pid-file PATH]

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::prelude::*;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::upstreams::peer::ALPN;
use pingora::utils::tls::{parse_x509, CertKey, WrappedX509};
use rustls::pki_types::CertificateDer;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str = "usage: bare-pingora --listen ADDR --cert PEM --key PEM --upstream ADDR \
                     --sni NAME --ca PEM --client-cert PEM --client-key PEM [--pid-file PATH]";

fn opt_arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1).cloned()
}

fn arg(name: &str) -> String {
    opt_arg(name).unwrap_or_else(|| {
        eprintln!("bare-pingora: {name} is missing\n{USAGE}");
        std::process::exit(2)
    })
}

fn certs_der(path: &str) -> Result<Vec<Vec<u8>>, BoxError> {
    let pem = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let certs = rustls_pemfile::certs(&mut &pem[..]).collect::<Result<Vec<CertificateDer>, _>>()?;
    Ok(certs.into_iter().map(|c| c.to_vec()).collect())
}

fn key_der(path: &str) -> Result<Vec<u8>, BoxError> {
    let pem = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let key = rustls_pemfile::private_key(&mut &pem[..])?.ok_or(format!("{path}: no key"))?;
    Ok(key.secret_der().to_vec())
}

struct Hop {
    addr: SocketAddr,
    sni: String,
    client: Arc<CertKey>,
    ca: Arc<[WrappedX509]>,
}

#[async_trait]
impl ProxyHttp for Hop {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new_mtls(self.addr, self.sni.clone(), self.client.clone());
        peer.options.ca = Some(self.ca.clone());
        peer.options.alpn = ALPN::H1;
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        _ctx: &mut (),
    ) -> Result<()> {
        req.insert_header("x-row-filter", "region=eu-west")
    }
}

fn main() -> Result<(), BoxError> {
    let hop = Hop {
        addr: arg("--upstream").parse()?,
        sni: arg("--sni"),
        client: Arc::new(CertKey::new(
            certs_der(&arg("--client-cert"))?,
            key_der(&arg("--client-key"))?,
        )),
        ca: certs_der(&arg("--ca"))?
            .into_iter()
            .map(|c| WrappedX509::new(c, parse_x509))
            .collect(),
    };
    let pid_file = opt_arg("--pid-file").unwrap_or_else(|| {
        std::env::temp_dir()
            .join("bare-pingora.pid")
            .display()
            .to_string()
    });
    let conf = ServerConf {
        threads: 1,
        pid_file,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let mut service = http_proxy_service(&server.configuration, hop);
    let mut tls = TlsSettings::intermediate(&arg("--cert"), &arg("--key"))?;
    tls.enable_h2();
    service.add_tls_with_settings(&arg("--listen"), None, tls);
    server.add_service(service);
    eprintln!("bare-pingora listening on {}", arg("--listen"));
    server.run_forever()
}
