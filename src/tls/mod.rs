//! TLS material: reading PEM files, checking that a key belongs to its certificate,
//! the hot-swappable server certificate resolver, and the process crypto provider that
//! enforces `tls_min_version`.
//!
//! Everything here is validated with rustls at load, so `check` and a reload report a bad
//! certificate or key instead of failing a handshake later.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Why TLS material cannot be used. The messages name the file where there is one and
/// say what is wrong; config validation adds the key and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: crate::files::ReadError,
    },
    /// A PEM problem of the file at `path`.
    #[error("{}: {source}", path.display())]
    InFile {
        path: PathBuf,
        source: Box<TlsError>,
    },
    #[error("not PEM: {0}")]
    NotPem(std::io::Error),
    #[error("no CERTIFICATE block found (expected PEM)")]
    NoCertificate,
    #[error("certificate does not parse: {0}")]
    BadCertificate(String),
    #[error("no PRIVATE KEY block found (expected PKCS#8, SEC1 or PKCS#1 PEM)")]
    NoKey,
    #[error("unsupported private key: {0}")]
    UnsupportedKey(rustls::Error),
    #[error("the private key does not match the certificate")]
    KeyMismatch,
    #[error("CA certificate not usable as a trust root: {0}")]
    BadTrustRoot(rustls::Error),
    #[error("TLS settings: {0}")]
    Settings(rustls::Error),
}

impl TlsError {
    fn in_file(path: &Path) -> impl FnOnce(TlsError) -> TlsError + '_ {
        move |e| TlsError::InFile {
            path: path.to_path_buf(),
            source: Box::new(e),
        }
    }

    fn read(path: &Path) -> impl FnOnce(crate::files::ReadError) -> TlsError + '_ {
        move |source| TlsError::Read {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Lowest TLS version the HTTPS listener accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMin {
    V12,
    V13,
}

/// Reads every certificate of a PEM file. An empty file is an error.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = crate::files::read_bounded(path).map_err(TlsError::read(path))?;
    parse_certs(&pem).map_err(TlsError::in_file(path))
}

/// Parses every certificate of a PEM buffer. No certificate is an error.
pub fn parse_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(TlsError::NotPem)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    for c in &certs {
        x509_parser::parse_x509_certificate(c)
            .map_err(|e| TlsError::BadCertificate(e.to_string()))?;
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, SEC1 or PKCS#1) of a PEM file.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = crate::files::read_bounded(path).map_err(TlsError::read(path))?;
    rustls_pemfile::private_key(&mut &pem[..])
        .map_err(TlsError::NotPem)
        .and_then(|k| k.ok_or(TlsError::NoKey))
        .map_err(TlsError::in_file(path))
}

/// A certificate chain with its key, checked to belong together.
pub fn certified_key(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedKey, TlsError> {
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(TlsError::UnsupportedKey)?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match().map_err(|_| TlsError::KeyMismatch)?;
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
) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in ca {
        roots.add(c.clone()).map_err(TlsError::BadTrustRoot)?;
    }
    let provider = CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Settings)?
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(client)));
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The messages config validation shows: the file first, then what is wrong.
    #[test]
    fn errors_name_the_file_and_the_defect() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.crt");
        let e = read_certs(&missing).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("cannot read {}: ", missing.display())),
            "{e}"
        );
        let text = dir.path().join("text.pem");
        std::fs::write(&text, "hello\n").unwrap();
        assert_eq!(
            read_certs(&text).unwrap_err().to_string(),
            format!(
                "{}: no CERTIFICATE block found (expected PEM)",
                text.display()
            )
        );
        assert_eq!(
            read_key(&text).unwrap_err().to_string(),
            format!(
                "{}: no PRIVATE KEY block found (expected PKCS#8, SEC1 or PKCS#1 PEM)",
                text.display()
            )
        );
        let pki = crate::devkit::DevPki::generate().unwrap();
        let certs = parse_certs(pki.server.cert_pem.as_bytes()).unwrap();
        let other = rustls_pemfile::private_key(&mut pki.client.key_pem.as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(
            certified_key(certs, other).unwrap_err().to_string(),
            "the private key does not match the certificate"
        );
    }
}
