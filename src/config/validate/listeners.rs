//! `[server]` (listeners, TLS files) and `[audit]`; certificate and CA loading shared with upstreams and issuers.

use super::*;

impl Validator<'_> {
    pub(super) fn server(&mut self, s: &S<RawServer>) -> Option<ServerSettings> {
        let r = s.get_ref();
        let listen = self.addr(&r.listen, "server.listen");
        let redirect_http = r
            .redirect_http
            .as_ref()
            .and_then(|a| self.addr(a, "server.redirect_http"));
        if let (Some(l), Some(rd), Some(raw_rd)) = (listen, redirect_http, r.redirect_http.as_ref())
        {
            if same_socket(l, rd) {
                self.err(
                    raw_rd.span(),
                    "server.redirect_http",
                    format!("{rd} is also server.listen; give each listener its own port"),
                );
            }
        }
        let tls_min = match r
            .tls_min_version
            .as_ref()
            .map(|v| (v.get_ref().as_str(), v.span()))
        {
            None | Some(("1.2", _)) => crate::tls::TlsMin::V12,
            Some(("1.3", _)) => crate::tls::TlsMin::V13,
            Some((other, span)) => {
                self.err(
                    span,
                    "server.tls_min_version",
                    format!("{other:?} is not supported; use \"1.2\" or \"1.3\""),
                );
                crate::tls::TlsMin::V12
            }
        };
        let threads = match r.threads.as_ref() {
            None => 0,
            Some(t) if *t.get_ref() > crate::config::MAX_THREADS => {
                self.err(
                    t.span(),
                    "server.threads",
                    format!(
                        "{} is more than the maximum of {}; use 0 (one per core) or a number up to {}",
                        t.get_ref(),
                        crate::config::MAX_THREADS,
                        crate::config::MAX_THREADS
                    ),
                );
                0
            }
            Some(t) if *t.get_ref() >= 0 => *t.get_ref() as usize,
            Some(t) => {
                self.err(
                    t.span(),
                    "server.threads",
                    "must be 0 (one per core) or a positive number",
                );
                0
            }
        };
        let threads = if threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            threads
        };
        let cert_path = self.path(r.cert.get_ref());
        let key_path = self.path(r.key.get_ref());
        let cert = self.cert_and_key(
            &r.cert,
            &r.key,
            "server.cert",
            "server.key",
            "server".into(),
        );
        let drain_timeout_s = match r.drain_timeout_s.as_ref() {
            None => 20,
            Some(d) if *d.get_ref() > crate::config::MAX_DRAIN_TIMEOUT_S => {
                self.err(
                    d.span(),
                    "server.drain_timeout_s",
                    format!(
                        "{} is more than the maximum of {} seconds; lower it",
                        d.get_ref(),
                        crate::config::MAX_DRAIN_TIMEOUT_S
                    ),
                );
                20
            }
            Some(d) => *d.get_ref(),
        };
        let mut trusted_proxies = Vec::new();
        if let Some(list) = &r.trusted_proxies {
            for (i, c) in list.get_ref().iter().enumerate() {
                let text = c.get_ref().trim();
                // A bare address is its own /32 or /128.
                let net = text
                    .parse::<ipnet::IpNet>()
                    .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
                match net {
                    Ok(n) => trusted_proxies.push(n.trunc()),
                    Err(_) => self.err(
                        c.span(),
                        format!("server.trusted_proxies[{i}]"),
                        format!(
                            "{:?} is not a CIDR; write an address block such as \"10.0.0.0/8\" or \"2001:db8::/32\"",
                            c.get_ref()
                        ),
                    ),
                }
            }
        }
        let d = crate::config::Limits::default();
        let limits = crate::config::Limits {
            max_connections: self.bounded(
                &r.max_connections,
                "server.max_connections",
                1,
                1_000_000,
                d.max_connections as u64,
            ) as usize,
            header_read_timeout: Duration::from_millis(self.bounded(
                &r.header_read_timeout_ms,
                "server.header_read_timeout_ms",
                100,
                600_000,
                d.header_read_timeout.as_millis() as u64,
            )),
            idle_timeout: Duration::from_secs(self.bounded(
                &r.idle_timeout_s,
                "server.idle_timeout_s",
                1,
                3600,
                d.idle_timeout.as_secs(),
            )),
            max_header_bytes: self.bounded(
                &r.max_header_bytes,
                "server.max_header_bytes",
                1024,
                1 << 20,
                d.max_header_bytes as u64,
            ) as usize,
        };
        Some(ServerSettings {
            listen: listen?,
            redirect_http,
            cert_path,
            key_path,
            cert: Arc::new(cert?.0),
            tls_min,
            hsts_max_age_s: r.hsts_max_age_s.unwrap_or(31_536_000),
            threads,
            drain_timeout_s,
            trusted_proxies,
            proxy_protocol: r.proxy_protocol.unwrap_or(false),
            limits,
            watch_files: r.watch_files.unwrap_or(true),
        })
    }

    /// An integer setting within `lo..=hi`, or `default` when absent; out of range is an
    /// error that names the range.
    fn bounded(&mut self, v: &Option<S<u64>>, key: &str, lo: u64, hi: u64, default: u64) -> u64 {
        match v {
            None => default,
            Some(x) if (lo..=hi).contains(x.get_ref()) => *x.get_ref(),
            Some(x) => {
                self.err(
                    x.span(),
                    key,
                    format!(
                        "{} is out of range; use a value from {lo} to {hi} (default {default})",
                        x.get_ref()
                    ),
                );
                default
            }
        }
    }

    /// Loads a certificate chain and its key and checks they match.
    pub(super) fn cert_and_key(
        &mut self,
        cert: &S<String>,
        key: &S<String>,
        cert_key: &str,
        key_key: &str,
        name: String,
    ) -> Option<(rustls::sign::CertifiedKey, Vec<Vec<u8>>, Vec<u8>)> {
        let cp = self.file(cert.get_ref());
        let kp = self.file(key.get_ref());
        let certs = match crate::tls::read_certs(&cp) {
            Ok(c) => c,
            Err(e) => {
                self.err(cert.span(), cert_key, format!("{e}; point it at a PEM certificate chain (gatehouse certs --out DIR makes a dev set)"));
                None?
            }
        };
        self.track_cert(cert.span(), cert_key, name, &cp, &certs[0]);
        let pk = match crate::tls::read_key(&kp) {
            Ok(k) => k,
            Err(e) => {
                self.err(
                    key.span(),
                    key_key,
                    format!("{e}; point it at the PEM private key of {}", cp.display()),
                );
                None?
            }
        };
        let key_der = pk.secret_der().to_vec();
        let chain: Vec<Vec<u8>> = certs.iter().map(|c| c.to_vec()).collect();
        match crate::tls::certified_key(certs, pk) {
            Ok(ck) => Some((ck, chain, key_der)),
            Err(e) => {
                self.err(
                    key.span(),
                    key_key,
                    format!(
                        "{} and {}: {e}; use the key that was issued with this certificate",
                        kp.display(),
                        cp.display()
                    ),
                );
                None
            }
        }
    }

    pub(super) fn ca(
        &mut self,
        ca: &S<String>,
        key: &str,
        name: String,
    ) -> Option<(Vec<u8>, Vec<rustls::pki_types::CertificateDer<'static>>)> {
        let p = self.file(ca.get_ref());
        let pem = match crate::files::read_bounded(&p) {
            Ok(b) => b,
            Err(e) => {
                self.err(
                    ca.span(),
                    key,
                    format!(
                        "cannot read {}: {e}; point it at a PEM CA certificate",
                        p.display()
                    ),
                );
                return None;
            }
        };
        match crate::tls::parse_certs(&pem) {
            Ok(certs) => {
                for c in &certs {
                    self.track_cert(ca.span(), key, name.clone(), &p, c);
                }
                Some((pem, certs))
            }
            Err(e) => {
                self.err(
                    ca.span(),
                    key,
                    format!("{}: {e}; point it at a PEM CA certificate", p.display()),
                );
                None
            }
        }
    }

    pub(super) fn audit(&mut self, a: Option<&S<RawAudit>>) -> AuditSettings {
        let Some(a) = a else {
            return AuditSettings {
                path: AuditPath::Stdout,
                retention_days: 90,
                pseudonym_key: None,
            };
        };
        let r = a.get_ref();
        let path = match r.path.as_ref() {
            None => AuditPath::Stdout,
            Some(p) if p.get_ref() == "-" => AuditPath::Stdout,
            Some(p) if p.get_ref().is_empty() => {
                self.err(
                    p.span(),
                    "audit.path",
                    "empty; use \"-\" for stdout or a directory",
                );
                AuditPath::Stdout
            }
            Some(p) => {
                let dir = self.path(p.get_ref());
                // gatehouse creates the directory at start; what is already there must
                // allow that (a regular file on the way would fail `serve`, not `check`).
                let blocker = dir
                    .ancestors()
                    .find(|a| a.exists())
                    .filter(|a| !a.is_dir())
                    .map(|a| a.to_path_buf());
                if let Some(b) = blocker {
                    self.err(
                        p.span(),
                        "audit.path",
                        format!(
                            "{} is not a directory, so {} cannot be created; point audit.path at a directory (or \"-\" for stdout)",
                            b.display(),
                            dir.display()
                        ),
                    );
                }
                AuditPath::Dir(dir)
            }
        };
        let retention_days = match r.retention_days.as_ref() {
            None => 90,
            Some(d) if *d.get_ref() == 0 => {
                self.err(d.span(), "audit.retention_days", "must be at least 1 day");
                90
            }
            Some(d) => *d.get_ref(),
        };
        let pseudonym_key = r
            .pseudonym_key
            .as_ref()
            .and_then(|k| self.secret(k, "audit.pseudonym_key"));
        if let (Some(key), Some(raw_key)) = (&pseudonym_key, r.pseudonym_key.as_ref()) {
            if key.len() < 32 {
                self.warn(
                    raw_key.span(),
                    "audit.pseudonym_key",
                    format!(
                        "is {} bytes; a short key can be guessed and the pseudonyms reversed: use 32 random bytes or more (e.g. `openssl rand -hex 32`)",
                        key.len()
                    ),
                );
            }
        }
        AuditSettings {
            path,
            retention_days,
            pseudonym_key,
        }
    }
}
