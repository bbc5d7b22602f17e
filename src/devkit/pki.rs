//! Development PKI: one throwaway CA plus the leaf certificates a local gatehouse setup needs.
//!
//! `DevPki::generate()` makes a fresh ECDSA P-256 CA and signs three leaves with it:
//! the gateway's server certificate, the gateway's client identity towards upstreams,
//! and the mTLS echo backend's server certificate. The CA key stays inside the struct so
//! tests can issue more leaves later (rotation, expiry warnings, wrong-CA checks use a
//! second `generate()`). Nothing here is meant for production: keys live in memory and
//! `write_to` drops them on disk only for `gatehouse certs` and the demo.

use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CrlDistributionPoint, CustomExtension,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    SerialNumber,
};
use sha2::{Digest, Sha256};

/// id-ce-basicConstraints (RFC 5280 4.2.1.9).
const OID_BASIC_CONSTRAINTS: &[u64] = &[2, 5, 29, 19];
/// id-ce-subjectKeyIdentifier (RFC 5280 4.2.1.2).
const OID_SUBJECT_KEY_IDENTIFIER: &[u64] = &[2, 5, 29, 14];

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
/// The CRL distribution point every leaf names. Nothing serves it: it is there so that
/// TLS scanners (`scripts/tls-audit.sh`) see a revocation source on the demo's
/// certificate, as on a real one, instead of reporting its absence.
pub const CRL_URL: &str = "http://127.0.0.1/gatehouse-dev-ca.crl";

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
        // Not a CA. rcgen's `IsCa::ExplicitNoCa` writes `cA BOOLEAN FALSE` explicitly, which
        // DER forbids (a DEFAULT value is omitted) and strict parsers refuse. So the leaf
        // says "not a CA" with an empty, critical BasicConstraints sequence (`30 00`, cA
        // takes its default FALSE), plus the subject key identifier ExplicitNoCa also wrote.
        params.is_ca = IsCa::NoCa;
        params.custom_extensions = leaf_extensions(&key);
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
        params.crl_distribution_points = vec![CrlDistributionPoint {
            uris: vec![CRL_URL.to_string()],
        }];
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

/// BasicConstraints with cA left at its DEFAULT (FALSE), critical; and a subject key
/// identifier (the first 20 bytes of the SHA-256 of the SubjectPublicKeyInfo, as rcgen
/// derives it for CAs, RFC 7093 method 1 style).
fn leaf_extensions(key: &KeyPair) -> Vec<CustomExtension> {
    let mut basic = CustomExtension::from_oid_content(OID_BASIC_CONSTRAINTS, vec![0x30, 0x00]);
    basic.set_criticality(true);
    let digest = Sha256::digest(key.public_key_der());
    let mut ski = vec![0x04, 20];
    ski.extend_from_slice(&digest[..20]);
    vec![
        CustomExtension::from_oid_content(OID_SUBJECT_KEY_IDENTIFIER, ski),
        basic,
    ]
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
        // Every leaf names the CRL distribution point (TLS scanners look for one).
        for leaf in [&server, &client] {
            let ext = leaf
                .get_extension_unique(
                    &x509_parser::oid_registry::OID_X509_EXT_CRL_DISTRIBUTION_POINTS,
                )
                .unwrap()
                .expect("CRL distribution points");
            let ParsedExtension::CRLDistributionPoints(points) = ext.parsed_extension() else {
                panic!("unparsed CRL distribution points: {ext:?}");
            };
            let uris: Vec<String> = points
                .iter()
                .flat_map(|p| match &p.distribution_point {
                    Some(DistributionPointName::FullName(names)) => names.clone(),
                    _ => Vec::new(),
                })
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
                .collect();
            assert_eq!(uris, vec![CRL_URL.to_string()]);
        }
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

    /// Why `der` is not a strict DER certificate (empty when it is). Walks every TLV of the
    /// certificate and of every extension value (an extnValue holds the DER of an ASN.1
    /// value by definition): lengths definite and minimal, BOOLEAN TRUE as `ff`, and no
    /// BOOLEAN FALSE at all, since every BOOLEAN these certificates can carry
    /// (Extension.critical, BasicConstraints.cA) is `DEFAULT FALSE` and DER omits a
    /// default. BasicConstraints is also re-encoded from its parsed value and compared.
    fn der_problems(der: &[u8]) -> Vec<String> {
        let mut problems = Vec::new();
        let cert = match X509Certificate::from_der(der) {
            Ok((rest, cert)) => {
                if !rest.is_empty() {
                    problems.push(format!("{} bytes after the certificate", rest.len()));
                }
                cert
            }
            Err(e) => return vec![format!("x509-parser refuses it: {e}")],
        };
        walk_der(der, "certificate", &mut problems);
        for ext in cert.extensions() {
            let at = format!("extension {}", ext.oid);
            walk_der(ext.value, &at, &mut problems);
            if let ParsedExtension::BasicConstraints(bc) = ext.parsed_extension() {
                let canonical = basic_constraints_der(bc.ca, bc.path_len_constraint);
                if ext.value != canonical.as_slice() {
                    problems.push(format!(
                        "{at}: BasicConstraints is {:02x?}, DER is {canonical:02x?}",
                        ext.value
                    ));
                }
            }
        }
        problems
    }

    fn basic_constraints_der(ca: bool, path_len: Option<u32>) -> Vec<u8> {
        let mut body = Vec::new();
        if ca {
            body.extend([0x01, 0x01, 0xff]);
        }
        if let Some(n) = path_len {
            assert!(n < 0x80, "test encoder handles one-byte path lengths only");
            body.extend([0x02, 0x01, n as u8]);
        }
        let mut out = vec![0x30, body.len() as u8];
        out.extend(body);
        out
    }

    fn walk_der(mut input: &[u8], at: &str, problems: &mut Vec<String>) {
        while !input.is_empty() {
            let Some((tag, body, rest)) = read_tlv(input, at, problems) else {
                return;
            };
            if tag & 0x20 != 0 {
                walk_der(body, at, problems);
            } else if tag == 0x01 {
                match body {
                    [0xff] => {}
                    [0x00] => problems.push(format!(
                        "{at}: BOOLEAN FALSE encoded (a DEFAULT FALSE value must be omitted)"
                    )),
                    other => problems.push(format!("{at}: BOOLEAN encoded as {other:02x?}")),
                }
            }
            input = rest;
        }
    }

    /// One TLV: (tag byte, contents, the rest). Multi-byte tags do not occur in X.509.
    fn read_tlv<'a>(
        input: &'a [u8],
        at: &str,
        problems: &mut Vec<String>,
    ) -> Option<(u8, &'a [u8], &'a [u8])> {
        let mut fail = |why: &str| {
            problems.push(format!("{at}: {why}"));
            None
        };
        let (&tag, after_tag) = input.split_first()?;
        if tag & 0x1f == 0x1f {
            return fail("multi-byte tag");
        }
        let Some((&first, after_len)) = after_tag.split_first() else {
            return fail("truncated length");
        };
        let (len, after_len) = if first < 0x80 {
            (first as usize, after_len)
        } else if first == 0x80 {
            return fail("indefinite length");
        } else {
            let n = (first & 0x7f) as usize;
            if n > 4 || after_len.len() < n {
                return fail("bad long-form length");
            }
            let bytes = &after_len[..n];
            let len = bytes.iter().fold(0usize, |acc, b| (acc << 8) | *b as usize);
            if bytes[0] == 0 || len < 0x80 {
                return fail("length not in its shortest form");
            }
            (len, &after_len[n..])
        };
        if after_len.len() < len {
            return fail("contents shorter than their length");
        }
        Some((tag, &after_len[..len], &after_len[len..]))
    }

    #[test]
    fn der_check_catches_an_encoded_default() {
        // The leaf extension rcgen writes for `IsCa::ExplicitNoCa`: critical BasicConstraints
        // holding `cA BOOLEAN FALSE`.
        let mut problems = Vec::new();
        walk_der(&[0x30, 0x03, 0x01, 0x01, 0x00], "bc", &mut problems);
        assert_eq!(problems.len(), 1, "{problems:?}");
        walk_der(&[0x30, 0x00], "bc", &mut problems);
        walk_der(&[0x30, 0x03, 0x01, 0x01, 0xff], "bc", &mut problems);
        assert_eq!(problems.len(), 1, "{problems:?}");
        walk_der(&[0x04, 0x81, 0x01, 0x00], "len", &mut problems);
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    /// Every certificate the devkit makes (CA, the three leaves `gatehouse certs` and the
    /// demo write, and extra leaves tests issue) is strict DER, on disk as in memory; a
    /// leaf still says it is no CA, the CA still says it is one.
    #[test]
    fn every_certificate_is_strict_der() {
        let pki = DevPki::generate().unwrap();
        let now = SystemTime::now();
        let extra = pki.issue("extra", &["extra.local"], true).unwrap();
        let windowed = pki
            .issue_with_validity("soon", LOCAL_SANS, false, now - DAY, now + DAY)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        pki.write_to(dir.path()).unwrap();
        let mut pems = vec![
            ("ca".to_string(), pki.ca.cert_pem.clone(), true),
            ("server".to_string(), pki.server.cert_pem.clone(), false),
            ("client".to_string(), pki.client.cert_pem.clone(), false),
            ("backend".to_string(), pki.backend.cert_pem.clone(), false),
            ("issue".to_string(), extra.cert_pem, false),
            ("issue_with_validity".to_string(), windowed.cert_pem, false),
        ];
        for name in ["ca", "server", "client", "backend"] {
            let pem = std::fs::read_to_string(dir.path().join(format!("{name}.crt"))).unwrap();
            pems.push((format!("{name}.crt on disk"), pem, name == "ca"));
        }
        for (name, pem, is_ca) in pems {
            let der = parse(&pem);
            let problems = der_problems(&der);
            assert!(problems.is_empty(), "{name}: {problems:?}");
            let (_, cert) = X509Certificate::from_der(&der).unwrap();
            let bc = cert.basic_constraints().unwrap().expect("BasicConstraints");
            assert!(bc.critical, "{name}: BasicConstraints not critical");
            assert_eq!(bc.value.ca, is_ca, "{name}");
            if !is_ca {
                assert!(
                    cert.get_extension_unique(
                        &x509_parser::oid_registry::OID_X509_EXT_SUBJECT_KEY_IDENTIFIER
                    )
                    .unwrap()
                    .is_some(),
                    "{name}: no subject key identifier"
                );
            }
        }
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
