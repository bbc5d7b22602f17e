//! Development PKI: one throwaway CA plus the leaf certificates a local gatehouse setup needs.
//!
//! `DevPki::generate()` makes a fresh ECDSA P-256 CA and signs four leaves with it:
//! the gateway's server certificate, the gateway's client identity towards upstreams,
//! and the mTLS echo backend's server certificate. The CA key stays inside the struct so
//! tests can issue more leaves later (rotation, expiry warnings, wrong-CA checks use a
//! second `generate()`). Nothing here is meant for production: keys live in memory and
//! `write_to` drops them on disk only for `gatehouse certs` and the demo.

use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SerialNumber,
};

/// A certificate and its private key, both PEM. The key is PKCS#8.
#[derive(Clone, Debug)]
pub struct CertPair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Common name of the dev CA; tests match on it when checking chains.
pub const CA_COMMON_NAME: &str = "gatehouse dev CA";
/// Common name of the gateway's upstream (client) identity.
pub const CLIENT_COMMON_NAME: &str = "gatehouse-gateway";
/// Common name of the echo backend's server certificate.
pub const BACKEND_COMMON_NAME: &str = "backend";
/// Loopback names every local server certificate carries.
pub const LOCAL_SANS: &[&str] = &["localhost", "127.0.0.1", "::1"];

const DAY: Duration = Duration::from_secs(24 * 3600);

/// A dev CA with the standard leaves, able to sign more.
pub struct DevPki {
    pub ca: CertPair,
    pub server: CertPair,
    pub client: CertPair,
    pub backend: CertPair,
    ca_cert: Certificate,
    ca_key: KeyPair,
}

impl std::fmt::Debug for DevPki {
    // Private keys are deliberately not printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevPki").finish_non_exhaustive()
    }
}

impl DevPki {
    /// A new, unrelated CA each call (so two calls give a "wrong CA" for tests).
    pub fn generate() -> anyhow::Result<DevPki> {
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(CA_COMMON_NAME);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        // Backdated so a slightly skewed clock on a test box never sees "not yet valid".
        params.not_before = (now - 10 * DAY).into();
        params.not_after = (now + 365 * DAY).into();
        params.serial_number = Some(random_serial());
        let ca_cert = params.self_signed(&ca_key)?;
        let ca = CertPair {
            cert_pem: ca_cert.pem(),
            key_pem: ca_key.serialize_pem(),
        };

        let mut pki = DevPki {
            ca,
            server: placeholder(),
            client: placeholder(),
            backend: placeholder(),
            ca_cert,
            ca_key,
        };
        pki.server = pki.issue("localhost", LOCAL_SANS, false)?;
        pki.client = pki.issue(CLIENT_COMMON_NAME, &[], true)?;
        pki.backend = pki.issue(BACKEND_COMMON_NAME, LOCAL_SANS, false)?;
        Ok(pki)
    }

    /// A leaf signed by this CA, valid from 1 day ago to 90 days ahead.
    ///
    /// `client_auth` selects the clientAuth EKU instead of serverAuth. IP-literal SANs
    /// become IP SANs, everything else DNS names.
    pub fn issue(
        &self,
        common_name: &str,
        sans: &[&str],
        client_auth: bool,
    ) -> anyhow::Result<CertPair> {
        let now = SystemTime::now();
        self.issue_with_validity(common_name, sans, client_auth, now - DAY, now + 90 * DAY)
    }

    /// Like [`issue`](Self::issue) with an explicit validity window (expiry tests).
    pub fn issue_with_validity(
        &self,
        common_name: &str,
        sans: &[&str],
        client_auth: bool,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> anyhow::Result<CertPair> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name = dn(common_name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![if client_auth {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key)?;
        Ok(CertPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes `ca.crt ca.key server.crt server.key client.crt client.key backend.crt
    /// backend.key` into `dir` (created if missing). Keys are mode 0600 on unix.
    pub fn write_to(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for (name, pair) in [
            ("ca", &self.ca),
            ("server", &self.server),
            ("client", &self.client),
            ("backend", &self.backend),
        ] {
            std::fs::write(dir.join(format!("{name}.crt")), &pair.cert_pem)?;
            write_private(&dir.join(format!("{name}.key")), &pair.key_pem)?;
        }
        Ok(())
    }
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "gatehouse dev");
    dn
}

fn placeholder() -> CertPair {
    CertPair {
        cert_pem: String::new(),
        key_pem: String::new(),
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive and without a leading zero byte, as DER INTEGER serials should be.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

/// Writes a private key so that it is never world-readable, not even briefly.
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut file = opts.open(path)?;
    file.write_all(contents.as_bytes())?;
    // `mode` only applies on creation; tighten a pre-existing file too.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use std::sync::Arc;

    fn roots(ca: &CertPair) -> Arc<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(parse(&ca.cert_pem)))
            .unwrap();
        Arc::new(roots)
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn verify_server(ca: &CertPair, leaf: &CertPair, name: &str) -> Result<(), rustls::Error> {
        let v = rustls::client::WebPkiServerVerifier::builder_with_provider(roots(ca), provider())
            .build()
            .unwrap();
        let der = CertificateDer::from(parse(&leaf.cert_pem));
        let name = ServerName::try_from(name.to_string()).unwrap();
        v.verify_server_cert(&der, &[], &name, &[], UnixTime::now())
            .map(|_| ())
    }

    fn verify_client(ca: &CertPair, leaf: &CertPair) -> Result<(), rustls::Error> {
        let v = rustls::server::WebPkiClientVerifier::builder_with_provider(roots(ca), provider())
            .build()
            .unwrap();
        let der = CertificateDer::from(parse(&leaf.cert_pem));
        v.verify_client_cert(&der, &[], UnixTime::now()).map(|_| ())
    }

    fn parse(pem: &str) -> Vec<u8> {
        let (_, p) = parse_x509_pem(pem.as_bytes()).unwrap();
        p.contents
    }

    #[test]
    fn generates_chain_with_expected_names() {
        let pki = DevPki::generate().unwrap();
        let ca_der = parse(&pki.ca.cert_pem);
        let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
        assert!(ca.is_ca());
        assert!(ca.subject().to_string().contains(CA_COMMON_NAME));

        let client_der = parse(&pki.client.cert_pem);
        let (_, client) = X509Certificate::from_der(&client_der).unwrap();
        assert_eq!(client.issuer(), ca.subject());
        assert!(client.subject().to_string().contains(CLIENT_COMMON_NAME));
        let eku = client.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        verify_client(&pki.ca, &pki.client).unwrap();

        let server_der = parse(&pki.server.cert_pem);
        let (_, server) = X509Certificate::from_der(&server_der).unwrap();
        let san = server.subject_alternative_name().unwrap().unwrap().value;
        assert_eq!(san.general_names.len(), 3);
        assert!(san
            .general_names
            .iter()
            .any(|n| matches!(n, GeneralName::IPAddress(ip) if ip.len() == 16)));
        verify_server(&pki.ca, &pki.server, "localhost").unwrap();
        verify_server(&pki.ca, &pki.server, "127.0.0.1").unwrap();
        verify_server(&pki.ca, &pki.backend, "::1").unwrap();
        // EKUs are enforced: the client identity is no server certificate.
        assert!(verify_server(&pki.ca, &pki.client, "localhost").is_err());
        assert!(pki.server.key_pem.contains("BEGIN PRIVATE KEY"));
    }

    #[test]
    fn two_generations_are_unrelated() {
        let a = DevPki::generate().unwrap();
        let b = DevPki::generate().unwrap();
        assert!(verify_server(&a.ca, &b.server, "localhost").is_err());
        assert!(verify_client(&a.ca, &b.client).is_err());
        verify_client(&b.ca, &b.client).unwrap();
    }

    #[test]
    fn issue_with_validity_sets_window() {
        let pki = DevPki::generate().unwrap();
        let now = SystemTime::now();
        let pair = pki
            .issue_with_validity("soon", &["soon.local"], false, now - DAY, now + 5 * DAY)
            .unwrap();
        let der = parse(&pair.cert_pem);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let left = cert.validity().time_to_expiration().unwrap();
        assert!(left.whole_days() <= 5 && left.whole_days() >= 4);
    }

    #[test]
    fn write_to_creates_files() {
        let pki = DevPki::generate().unwrap();
        let dir = std::env::temp_dir().join(format!("gatehouse-pki-{}", rand::random::<u64>()));
        pki.write_to(&dir).unwrap();
        for name in ["ca", "server", "client", "backend"] {
            assert!(dir.join(format!("{name}.crt")).exists());
            let key = dir.join(format!("{name}.key"));
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(&key).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600);
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
