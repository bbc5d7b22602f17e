//! TLS material: reading PEM files, checking that a key belongs to its certificate,
//! the hot-swappable server certificate resolver, and the process crypto provider that
//! enforces `tls_min_version`.
//!
//! Everything here is validated with rustls at load, so `check` and a reload report a bad
//! certificate or key instead of failing a handshake later.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Lowest TLS version the HTTPS listener accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMin {
    V12,
    V13,
}

/// Reads every certificate of a PEM file. An empty file is an error.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = crate::config::files::read_bounded(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_certs(&pem).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parses every certificate of a PEM buffer. No certificate is an error.
pub fn parse_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block found (expected PEM)".into());
    }
    for c in &certs {
        x509_parser::parse_x509_certificate(c)
            .map_err(|e| format!("certificate does not parse: {e}"))?;
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, SEC1 or PKCS#1) of a PEM file.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = crate::config::files::read_bounded(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    rustls_pemfile::private_key(&mut &pem[..])
        .map_err(|e| format!("{}: not PEM: {e}", path.display()))?
        .ok_or_else(|| {
            format!(
                "{}: no PRIVATE KEY block found (expected PKCS#8, SEC1 or PKCS#1 PEM)",
                path.display()
            )
        })
}

/// A certificate chain with its key, checked to belong together.
pub fn certified_key(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedKey, String> {
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("unsupported private key: {e}"))?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match()
        .map_err(|_| "the private key does not match the certificate".to_string())?;
    Ok(ck)
}

/// `notAfter` of a DER certificate as a Unix timestamp.
pub fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    let (_, x) = x509_parser::parse_x509_certificate(cert).ok()?;
    Some(x.validity().not_after.timestamp())
}

/// Subject of a DER certificate, for messages.
pub fn subject(cert: &CertificateDer<'_>) -> String {
    x509_parser::parse_x509_certificate(cert)
        .map(|(_, x)| x.subject().to_string())
        .unwrap_or_default()
}

/// Serves one certificate, swappable at run time (SIGHUP reload, certificate rotation)
/// without rebuilding the listener's rustls config.
pub struct SwappableCert {
    current: ArcSwap<CertifiedKey>,
}

impl SwappableCert {
    pub fn new(ck: Arc<CertifiedKey>) -> Arc<Self> {
        Arc::new(SwappableCert {
            current: ArcSwap::new(ck),
        })
    }

    /// New handshakes get `ck`; established connections keep theirs.
    pub fn swap(&self, ck: Arc<CertifiedKey>) {
        self.current.store(ck);
    }
}

impl fmt::Debug for SwappableCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SwappableCert")
    }
}

impl ResolvesServerCert for SwappableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Installs the process-wide rustls provider before anything builds a TLS config. With
/// `tls_min_version = "1.3"` the provider holds only TLS 1.3 cipher suites, so it applies
/// to upstream connections too; the listener also names its protocol versions
/// explicitly. Returns false when a provider was already installed (only the first call
/// in a process counts).
pub fn install_provider(min: TlsMin) -> bool {
    let mut provider = rustls::crypto::ring::default_provider();
    if min == TlsMin::V13 {
        provider
            .cipher_suites
            .retain(|s| s.version() == &rustls::version::TLS13);
    }
    CryptoProvider::install_default(provider).is_ok()
}

/// The TLS 1.3-only state of the installed provider, if any.
pub fn installed_min() -> Option<TlsMin> {
    let p = CryptoProvider::get_default()?;
    if p.cipher_suites
        .iter()
        .all(|s| s.version() == &rustls::version::TLS13)
    {
        Some(TlsMin::V13)
    } else {
        Some(TlsMin::V12)
    }
}

/// The rustls client settings for one upstream: trust only `ca` (no system roots),
/// present `client` as the mTLS identity, TLS 1.2+ (1.3 only when the process provider
/// holds only TLS 1.3 suites), ALPN left to the HTTP connector.
pub fn upstream_client_config(
    ca: &[CertificateDer<'static>],
    client: CertifiedKey,
) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in ca {
        roots
            .add(c.clone())
            .map_err(|e| format!("CA certificate not usable as a trust root: {e}"))?;
    }
    let provider = CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(client)));
    Ok(cfg)
}
