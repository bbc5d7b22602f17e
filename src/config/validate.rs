//! Raw TOML → [`Runtime`]: every check of SPEC section 2, all errors collected in one
//! run, each naming `file:line:col`, the key path and what to do about it.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use indexmap::IndexMap;
use pingora::utils::tls::{parse_x509, CertKey, WrappedX509};

use super::raw::*;
use super::*;
use crate::auth::{Introspection, IssuerSettings, KeySource};
use crate::policy::route::{normalize_prefix, AuthMode, Route, RowFilter};
use crate::policy::row_filter::Template;

/// Headers a row filter may not use: hop-by-hop, identity and the ones gatehouse sets.
const RESERVED_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "authorization",
    "cookie",
    "content-length",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "x-request-id",
    "traceparent",
    "x-auth-subject",
    "x-auth-client-id",
    "x-auth-roles",
    "x-auth-issuer",
];

/// The hop-by-hop part of [`RESERVED_HEADERS`] (RFC 9110 section 7.6.1 and friends).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

const DEFAULT_ALGS: &[&str] = &["RS256", "PS256", "ES256", "EdDSA"];
const WARN_EXPIRY_DAYS: i64 = 30;

/// Loads and validates a config file. `Err` holds every error found.
pub fn load(path: &Path) -> Result<Runtime, ConfigErrors> {
    let src = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: 0,
            col: 0,
            key: String::new(),
            message: format!("cannot read the config file: {e}"),
        }])
    })?;
    load_str(path, &src)
}

/// Validates config text as if read from `path` (relative paths resolve next to it).
pub fn load_str(path: &Path, src: &str) -> Result<Runtime, ConfigErrors> {
    let mut v = Validator::new(path, src);
    let raw: RawConfig = match super::raw::parse(src) {
        Ok(r) => r,
        Err(e) => {
            v.err(e.span, e.key, e.message);
            return Err(ConfigErrors(v.errors));
        }
    };
    let rt = v.build(raw);
    match rt {
        Some(rt) if v.errors.is_empty() => Ok(rt),
        _ => Err(ConfigErrors(v.errors)),
    }
}

struct Validator<'a> {
    file: PathBuf,
    dir: PathBuf,
    src: &'a str,
    errors: Vec<ConfigError>,
    warnings: Vec<String>,
    certs: Vec<CertInfo>,
}

impl<'a> Validator<'a> {
    fn new(path: &Path, src: &'a str) -> Self {
        let dir = path
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .unwrap_or(Path::new("."))
            .to_path_buf();
        Validator {
            file: path.to_path_buf(),
            dir,
            src,
            errors: Vec::new(),
            warnings: Vec::new(),
            certs: Vec::new(),
        }
    }

    fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.src.len());
        let before = &self.src[..offset];
        let line = before.matches('\n').count() + 1;
        let col = before.rfind('\n').map(|i| offset - i).unwrap_or(offset + 1);
        (line, col)
    }

    fn err(&mut self, span: Range<usize>, key: impl Into<String>, message: impl Into<String>) {
        let (line, col) = self.line_col(span.start);
        self.errors.push(ConfigError {
            file: self.file.clone(),
            line,
            col,
            key: key.into(),
            message: message.into(),
        });
    }

    fn warn(&mut self, span: Range<usize>, key: &str, message: String) {
        let (line, col) = self.line_col(span.start);
        self.warnings.push(format!(
            "{}:{line}:{col}: {key}: {message}",
            self.file.display()
        ));
    }

    fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }

    fn addr(&mut self, s: &S<String>, key: &str) -> Option<SocketAddr> {
        match s.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(
                    s.span(),
                    key,
                    format!(
                        "{:?} is not an IP:port address; write e.g. \"0.0.0.0:8443\" or \"[::]:8443\"",
                        s.get_ref()
                    ),
                );
                None
            }
        }
    }

    fn secret(&mut self, s: &S<RawSecret>, key: &str) -> Option<Vec<u8>> {
        match s.get_ref() {
            RawSecret::Inline(_) => {
                self.err(
                    s.span(),
                    key,
                    "inline secrets are not allowed; write { env = \"NAME\" } or { file = \"path\" }",
                );
                None
            }
            RawSecret::Ref(r) => match (&r.env, &r.file) {
                (Some(name), None) => match std::env::var(name) {
                    Ok(v) if !v.is_empty() => Some(v.into_bytes()),
                    _ => {
                        self.err(
                            s.span(),
                            key,
                            format!("environment variable {name} is not set or empty; export it before starting gatehouse"),
                        );
                        None
                    }
                },
                (None, Some(file)) => {
                    let p = self.path(file);
                    match std::fs::read(&p) {
                        Ok(mut v) => {
                            while v.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                                v.pop();
                            }
                            if v.is_empty() {
                                self.err(
                                    s.span(),
                                    key,
                                    format!("secret file {} is empty", p.display()),
                                );
                                None
                            } else {
                                Some(v)
                            }
                        }
                        Err(e) => {
                            self.err(
                                s.span(),
                                key,
                                format!("cannot read secret file {}: {e}", p.display()),
                            );
                            None
                        }
                    }
                }
                _ => {
                    self.err(
                        s.span(),
                        key,
                        "a secret is exactly one of { env = \"NAME\" } or { file = \"path\" }",
                    );
                    None
                }
            },
        }
    }

    /// Records a certificate for the expiry gauge; warns within 30 days, errors when
    /// already expired.
    fn track_cert(
        &mut self,
        span: Range<usize>,
        key: &str,
        name: String,
        path: &Path,
        cert: &rustls::pki_types::CertificateDer<'_>,
    ) {
        let Some(not_after) = crate::tls::not_after(cert) else {
            return;
        };
        let now = chrono::Utc::now().timestamp();
        let subject = crate::tls::subject(cert);
        if not_after < now {
            self.err(
                span,
                key,
                format!(
                    "certificate {} ({subject}) expired at {}; renew it",
                    path.display(),
                    fmt_ts(not_after)
                ),
            );
        } else if not_after - now < WARN_EXPIRY_DAYS * 86400 {
            self.warn(
                span,
                key,
                format!(
                    "certificate {} ({subject}) expires at {}, within {WARN_EXPIRY_DAYS} days",
                    path.display(),
                    fmt_ts(not_after)
                ),
            );
        }
        self.certs.push(CertInfo {
            name,
            path: path.to_path_buf(),
            subject,
            not_after,
        });
    }

    fn build(&mut self, raw: RawConfig) -> Option<Runtime> {
        let server = self.server(&raw.server);
        let admin_listen = raw
            .admin
            .as_ref()
            .and_then(|a| self.addr(&a.listen, "admin.listen"));
        let audit = self.audit(raw.audit.as_ref());
        let cache = CacheSettings {
            max_entries: raw
                .cache
                .as_ref()
                .and_then(|c| c.max_entries)
                .unwrap_or(100_000),
            ttl_s: raw.cache.as_ref().and_then(|c| c.ttl_s).unwrap_or(300),
        };
        let issuers: Vec<IssuerSettings> = raw
            .issuers
            .iter()
            .filter_map(|(name, i)| self.issuer(name, i))
            .collect();
        let roles: IndexMap<String, RoleSettings> = raw
            .roles
            .iter()
            .map(|(name, r)| {
                let (line, _) = self.line_col(r.span().start);
                (
                    name.clone(),
                    RoleSettings {
                        groups: r.get_ref().groups.clone(),
                        clients: r.get_ref().clients.clone(),
                        line,
                    },
                )
            })
            .collect();
        let upstreams: IndexMap<String, Arc<Upstream>> = raw
            .upstreams
            .iter()
            .filter_map(|(name, u)| self.upstream(name, u).map(|u| (name.clone(), Arc::new(u))))
            .collect();
        let routes = self.routes(&raw, &issuers);
        let mut owned: Vec<HeaderName> = IDENTITY_HEADERS
            .iter()
            .map(|h| HeaderName::from_static(h))
            .collect();
        for r in &routes {
            for f in &r.row_filters {
                if !owned.contains(&f.header) {
                    owned.push(f.header.clone());
                }
            }
        }
        if audit.pseudonym_key.is_none() {
            self.warnings.push(format!(
                "{}: audit.pseudonym_key is not set: a random per-process key is used, so subject pseudonyms change at every restart; set pseudonym_key = {{ env = \"GATEHOUSE_PSEUDONYM_KEY\" }}",
                self.file.display()
            ));
        }
        let server = server?;
        Some(Runtime {
            file: self.file.clone(),
            server,
            admin_listen,
            audit,
            cache,
            issuers,
            roles,
            upstreams,
            routes: routes.into_iter().map(Arc::new).collect(),
            owned_headers: owned,
            certificates: std::mem::take(&mut self.certs),
            warnings: std::mem::take(&mut self.warnings),
        })
    }

    fn server(&mut self, s: &S<RawServer>) -> Option<ServerSettings> {
        let r = s.get_ref();
        let listen = self.addr(&r.listen, "server.listen");
        let redirect_http = r
            .redirect_http
            .as_ref()
            .and_then(|a| self.addr(a, "server.redirect_http"));
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
        Some(ServerSettings {
            listen: listen?,
            redirect_http,
            cert_path,
            key_path,
            cert: Arc::new(cert?.0),
            tls_min,
            hsts_max_age_s: r.hsts_max_age_s.unwrap_or(31_536_000),
            threads,
            drain_timeout_s: r.drain_timeout_s.unwrap_or(20),
        })
    }

    /// Loads a certificate chain and its key and checks they match.
    fn cert_and_key(
        &mut self,
        cert: &S<String>,
        key: &S<String>,
        cert_key: &str,
        key_key: &str,
        name: String,
    ) -> Option<(rustls::sign::CertifiedKey, Vec<Vec<u8>>, Vec<u8>)> {
        let cp = self.path(cert.get_ref());
        let kp = self.path(key.get_ref());
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

    fn ca(
        &mut self,
        ca: &S<String>,
        key: &str,
        name: String,
    ) -> Option<(Vec<u8>, Vec<rustls::pki_types::CertificateDer<'static>>)> {
        let p = self.path(ca.get_ref());
        let pem = match std::fs::read(&p) {
            Ok(b) => b,
            Err(e) => {
                self.err(ca.span(), key, format!("cannot read {}: {e}", p.display()));
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

    fn audit(&mut self, a: Option<&S<RawAudit>>) -> AuditSettings {
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
            Some(p) => AuditPath::Dir(self.path(p.get_ref())),
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
        AuditSettings {
            path,
            retention_days,
            pseudonym_key,
        }
    }

    fn issuer(&mut self, name: &str, s: &S<RawIssuer>) -> Option<IssuerSettings> {
        let r = s.get_ref();
        let k = |f: &str| format!("issuers.{name}.{f}");
        let mut ok = true;
        let iss = r.issuer.get_ref().clone();
        if !iss.starts_with("https://") {
            self.err(
                r.issuer.span(),
                k("issuer"),
                format!("{iss:?} must be an https:// URL (the exact `iss` of the tokens)"),
            );
            ok = false;
        }
        let discovery = r.discovery.as_ref().map(|d| *d.get_ref()).unwrap_or(false);
        let sources = [discovery, r.jwks_uri.is_some(), r.jwks_file.is_some()];
        let keys = match sources {
            [true, false, false] => Some(KeySource::Discovery),
            [false, true, false] => {
                let u = r.jwks_uri.as_ref().unwrap();
                if u.get_ref().starts_with("https://") {
                    Some(KeySource::JwksUri(u.get_ref().clone()))
                } else {
                    self.err(u.span(), k("jwks_uri"), "must be an https:// URL");
                    None
                }
            }
            [false, false, true] => {
                let f = r.jwks_file.as_ref().unwrap();
                let p = self.path(f.get_ref());
                match std::fs::read(&p).map_err(|e| e.to_string()).and_then(|b| {
                    serde_json::from_slice::<serde_json::Value>(&b).map_err(|e| e.to_string())
                }) {
                    Ok(v)
                        if v.get("keys")
                            .and_then(|k| k.as_array())
                            .is_some_and(|a| !a.is_empty()) =>
                    {
                        Some(KeySource::JwksFile(p))
                    }
                    Ok(_) => {
                        self.err(
                            f.span(),
                            k("jwks_file"),
                            format!(
                                "{} holds no keys; it must be a JWKS: {{\"keys\": [...]}}",
                                p.display()
                            ),
                        );
                        None
                    }
                    Err(e) => {
                        self.err(
                            f.span(),
                            k("jwks_file"),
                            format!("cannot read {} as JSON: {e}", p.display()),
                        );
                        None
                    }
                }
            }
            _ => {
                // Point at the second source written, or at the table when none is.
                let mut given: Vec<(&str, Range<usize>)> = [
                    (
                        "discovery",
                        r.discovery
                            .as_ref()
                            .filter(|d| *d.get_ref())
                            .map(|d| d.span()),
                    ),
                    ("jwks_uri", r.jwks_uri.as_ref().map(|u| u.span())),
                    ("jwks_file", r.jwks_file.as_ref().map(|f| f.span())),
                ]
                .into_iter()
                .filter_map(|(k, span)| span.map(|s| (k, s)))
                .collect();
                given.sort_by_key(|(_, span)| span.start);
                let sources =
                    "discovery = true, jwks_uri = \"https://...\" or jwks_file = \"path\"";
                match given.as_slice() {
                    [first, second, ..] => self.err(
                        second.1.clone(),
                        k(second.0),
                        format!("conflicts with {}: set exactly one key source ({sources}); remove the other", first.0),
                    ),
                    _ => self.err(
                        s.span(),
                        format!("issuers.{name}"),
                        format!("has no key source: set exactly one of {sources}"),
                    ),
                }
                None
            }
        };
        let audiences = match r.audiences.as_ref() {
            Some(a) if !a.get_ref().is_empty() => a.get_ref().clone(),
            Some(a) => {
                self.err(
                    a.span(),
                    k("audiences"),
                    "must list at least one audience; tokens for any audience would pass otherwise",
                );
                ok = false;
                vec![]
            }
            None => {
                self.err(
                    s.span(),
                    k("audiences"),
                    "missing; add audiences = [\"api://your-api\"] (the `aud` your tokens carry)",
                );
                ok = false;
                vec![]
            }
        };
        let mut algorithms = Vec::new();
        match r.algorithms.as_ref() {
            None => {
                for a in DEFAULT_ALGS {
                    algorithms.push(
                        a.parse::<jsonwebtoken::Algorithm>()
                            .expect("default algorithms parse"),
                    );
                }
            }
            Some(list) => {
                if list.is_empty() {
                    self.err(s.span(), k("algorithms"), "is empty; remove it for the default (RS256, PS256, ES256, EdDSA) or list some");
                    ok = false;
                }
                for a in list {
                    match a.get_ref().as_str() {
                        n if n.starts_with("HS") || n.eq_ignore_ascii_case("none") => {
                            self.err(a.span(), k("algorithms"), format!("{n:?} is not allowed: only asymmetric JWS algorithms (RS256/384/512, PS256/384/512, ES256/384, EdDSA)"));
                            ok = false;
                        }
                        n => match n.parse::<jsonwebtoken::Algorithm>() {
                            Ok(alg) => algorithms.push(alg),
                            Err(_) => {
                                self.err(a.span(), k("algorithms"), format!("unknown algorithm {n:?}; use RS256/384/512, PS256/384/512, ES256/384 or EdDSA"));
                                ok = false;
                            }
                        },
                    }
                }
            }
        }
        let ca_pem = r.ca.as_ref().and_then(|c| {
            self.ca(c, &k("ca"), format!("issuer.{name}.ca"))
                .map(|(pem, _)| pem)
        });
        if r.ca.is_some() && ca_pem.is_none() {
            ok = false;
        }
        let jwks_refresh_s = match r.jwks_refresh_s.as_ref() {
            None => 600,
            Some(v) if *v.get_ref() < 30 => {
                self.err(v.span(), k("jwks_refresh_s"), "must be at least 30 seconds");
                ok = false;
                600
            }
            Some(v) => *v.get_ref(),
        };
        let claim = |c: &Option<S<String>>, d: &str| {
            c.as_ref()
                .map(|c| c.get_ref().clone())
                .unwrap_or_else(|| d.to_string())
        };
        let introspection = match r.introspection.as_ref() {
            None => None,
            Some(i) => {
                let ir = i.get_ref();
                if !ir.url.get_ref().starts_with("https://") {
                    self.err(
                        ir.url.span(),
                        k("introspection.url"),
                        "must be an https:// URL",
                    );
                    ok = false;
                }
                match self.secret(&ir.client_secret, &k("introspection.client_secret")) {
                    Some(sec) => Some(Introspection {
                        url: ir.url.get_ref().clone(),
                        client_id: ir.client_id.clone(),
                        client_secret: String::from_utf8_lossy(&sec).into_owned(),
                    }),
                    None => {
                        ok = false;
                        None
                    }
                }
            }
        };
        let settings = IssuerSettings {
            name: name.to_string(),
            issuer: iss,
            keys: keys?,
            audiences,
            algorithms,
            leeway_s: r.leeway_s.unwrap_or(30),
            ca_pem,
            jwks_refresh_s,
            roles_claim: claim(&r.roles_claim, "roles"),
            groups_claim: claim(&r.groups_claim, "groups"),
            scopes_claim: claim(&r.scopes_claim, "scope"),
            client_id_claim: claim(&r.client_id_claim, "client_id"),
            introspection,
        };
        ok.then_some(settings)
    }

    fn upstream(&mut self, name: &str, s: &S<RawUpstream>) -> Option<Upstream> {
        let r = s.get_ref();
        let k = |f: &str| format!("upstreams.{name}.{f}");
        let mut addrs = Vec::new();
        if r.addrs.get_ref().is_empty() {
            self.err(
                r.addrs.span(),
                k("addrs"),
                "lists no address; add at least one \"host:port\"",
            );
        }
        for (i, a) in r.addrs.get_ref().iter().enumerate() {
            match a.get_ref().parse::<SocketAddr>() {
                Ok(sa) => addrs.push(sa),
                Err(_) => match a.get_ref().to_socket_addrs() {
                    Ok(mut it) => match it.next() {
                        Some(sa) => addrs.push(sa),
                        None => self.err(
                            a.span(),
                            format!("upstreams.{name}.addrs[{i}]"),
                            format!("{:?} resolves to no address", a.get_ref()),
                        ),
                    },
                    Err(e) => self.err(
                        a.span(),
                        format!("upstreams.{name}.addrs[{i}]"),
                        format!(
                            "{:?} is not host:port or does not resolve: {e}",
                            a.get_ref()
                        ),
                    ),
                },
            }
        }
        if r.sni.get_ref().is_empty()
            || rustls::pki_types::ServerName::try_from(r.sni.get_ref().as_str()).is_err()
        {
            self.err(r.sni.span(), k("sni"), format!("{:?} is not a valid TLS server name; use the name in the backend's certificate", r.sni.get_ref()));
        }
        let ca = self.ca(&r.ca, &k("ca"), format!("upstream.{name}.ca"));
        let client = self.cert_and_key(
            &r.client_cert,
            &r.client_key,
            &k("client_cert"),
            &k("client_key"),
            format!("upstream.{name}.client"),
        );
        let ms = |v: &Option<S<u64>>, d: u64| v.as_ref().map(|v| *v.get_ref()).unwrap_or(d);
        for (f, v) in [
            ("connect_timeout_ms", &r.connect_timeout_ms),
            ("read_timeout_ms", &r.read_timeout_ms),
        ] {
            if let Some(v) = v {
                if *v.get_ref() == 0 {
                    self.err(v.span(), k(f), "must be greater than 0");
                }
            }
        }
        let (_, ca_certs) = ca?;
        let (_, chain, key) = client?;
        let ca: Vec<WrappedX509> = ca_certs
            .iter()
            .map(|c| WrappedX509::new(c.to_vec(), parse_x509))
            .collect();
        if addrs.is_empty() {
            return None;
        }
        let addrs_down = addrs
            .iter()
            .map(|_| std::sync::atomic::AtomicU64::new(0))
            .collect();
        Some(Upstream {
            name: name.to_string(),
            addrs,
            sni: r.sni.get_ref().clone(),
            ca: Arc::from(ca),
            client: Arc::new(CertKey::new(chain, key)),
            connect_timeout: Duration::from_millis(ms(&r.connect_timeout_ms, 2000)),
            read_timeout: Duration::from_millis(ms(&r.read_timeout_ms, 30000)),
            next: AtomicUsize::new(0),
            down_until: addrs_down,
        })
    }

    fn routes(&mut self, raw: &RawConfig, issuers: &[IssuerSettings]) -> Vec<Route> {
        let mut out: Vec<Route> = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        let role_names: Vec<&String> = raw.roles.keys().collect();
        let known = |keys: Vec<&String>| {
            if keys.is_empty() {
                "none configured".to_string()
            } else {
                keys.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        for (i, rs) in raw.routes.iter().enumerate() {
            let r = rs.get_ref();
            let k = |f: &str| format!("routes[{i}].{f}");
            let mut ok = true;
            let name = r.name.get_ref().clone();
            if name.is_empty() {
                self.err(r.name.span(), k("name"), "must not be empty");
                ok = false;
            } else if let Some(prev) = names.insert(name.clone(), i) {
                self.err(r.name.span(), k("name"), format!("duplicate route name {name:?} (also routes[{prev}]); route names must be unique"));
                ok = false;
            }
            let host = r.host.as_ref().map(|h| {
                let v = h.get_ref().to_ascii_lowercase();
                let v = crate::policy::route::strip_port(&v).to_string();
                if v.is_empty() {
                    self.err(
                        h.span(),
                        k("host"),
                        "must not be empty; remove it to match any host",
                    );
                    ok = false;
                }
                v
            });
            let prefix = r.path_prefix.get_ref();
            if !prefix.starts_with('/') {
                self.err(
                    r.path_prefix.span(),
                    k("path_prefix"),
                    format!("{prefix:?} must start with '/'"),
                );
                ok = false;
            } else if crate::policy::route::check_path(prefix).is_err() && prefix != "/" {
                self.err(r.path_prefix.span(), k("path_prefix"), format!("{prefix:?} holds '//', dot segments or encoded separators, which requests can never match"));
                ok = false;
            }
            let methods = r.methods.as_ref().map(|ms| {
                if ms.get_ref().is_empty() {
                    self.err(
                        ms.span(),
                        k("methods"),
                        "is empty, so the route matches nothing; remove it to allow every method",
                    );
                    ok = false;
                }
                let mut v = Vec::new();
                for m in ms.get_ref() {
                    let up = m.get_ref().to_ascii_uppercase();
                    if up.is_empty() || !up.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-') {
                        self.err(
                            m.span(),
                            k("methods"),
                            format!("{:?} is not an HTTP method", m.get_ref()),
                        );
                        ok = false;
                    } else if !v.contains(&up) {
                        v.push(up);
                    }
                }
                v
            });
            if !raw.upstreams.contains_key(r.upstream.get_ref()) {
                self.err(
                    r.upstream.span(),
                    k("upstream"),
                    format!(
                        "unknown upstream {:?} (known: {})",
                        r.upstream.get_ref(),
                        known(raw.upstreams.keys().collect())
                    ),
                );
                ok = false;
            }
            let route_issuers = r.issuers.as_ref().map(|list| {
                let mut v = Vec::new();
                for is in list {
                    if !raw.issuers.contains_key(is.get_ref()) {
                        self.err(
                            is.span(),
                            k("issuers"),
                            format!(
                                "unknown issuer {:?} (known: {})",
                                is.get_ref(),
                                known(raw.issuers.keys().collect())
                            ),
                        );
                        ok = false;
                    }
                    v.push(is.get_ref().clone());
                }
                v
            });
            let mut allow_roles = Vec::new();
            if let Some(ar) = &r.allow_roles {
                for role in ar.get_ref() {
                    if !raw.roles.contains_key(role.get_ref()) {
                        self.err(
                            role.span(),
                            k("allow_roles"),
                            format!(
                                "unknown role {:?} (known: {}); declare it as [roles.{}]",
                                role.get_ref(),
                                known(role_names.clone()),
                                role.get_ref()
                            ),
                        );
                        ok = false;
                    }
                    allow_roles.push(role.get_ref().clone());
                }
            }
            let auth = match r.auth.as_ref().map(|a| (a.get_ref().as_str(), a.span())) {
                None | Some(("required", _)) => AuthMode::Required,
                Some(("none", _)) => AuthMode::None,
                Some((other, span)) => {
                    self.err(
                        span,
                        k("auth"),
                        format!("{other:?} is not a mode; use \"required\" or \"none\""),
                    );
                    ok = false;
                    AuthMode::Required
                }
            };
            let require_scopes = r
                .require_scopes
                .as_ref()
                .map(|s| s.get_ref().clone())
                .unwrap_or_default();
            let require_mfa = r
                .require_mfa
                .as_ref()
                .map(|m| *m.get_ref())
                .unwrap_or(false);
            if auth == AuthMode::None {
                let conflicting = [
                    ("allow_roles", r.allow_roles.as_ref().map(|a| a.span())),
                    (
                        "require_scopes",
                        r.require_scopes.as_ref().map(|a| a.span()),
                    ),
                    (
                        "require_mfa",
                        r.require_mfa
                            .as_ref()
                            .filter(|m| *m.get_ref())
                            .map(|a| a.span()),
                    ),
                ];
                for (f, span) in conflicting {
                    if let Some(span) = span {
                        self.err(span, k(f), "a public route (auth = \"none\") checks no token; remove this key or set auth = \"required\"");
                        ok = false;
                    }
                }
                if let Some(f) = r.row_filters.first() {
                    self.err(f.span(), k("row_filters"), "a public route (auth = \"none\") has no caller to filter for; remove the filters or set auth = \"required\"");
                    ok = false;
                }
                if let Some(is) = r.issuers.as_ref().and_then(|l| l.first()) {
                    self.err(is.span(), k("issuers"), "a public route (auth = \"none\") checks no token; remove issuers or set auth = \"required\"");
                    ok = false;
                }
            } else if issuers.is_empty() && raw.issuers.is_empty() {
                self.err(rs.span(), format!("routes[{i}]"), "needs a token but no [issuers.NAME] is configured; add one or set auth = \"none\"");
                ok = false;
            }
            let mut row_filters = Vec::new();
            let mut seen_headers = HashSet::new();
            for (j, f) in r.row_filters.iter().enumerate() {
                let fr = f.get_ref();
                let fk = |x: &str| format!("routes[{i}].row_filters[{j}].{x}");
                let hname = fr.header.get_ref().to_ascii_lowercase();
                let header = match HeaderName::from_bytes(hname.as_bytes()) {
                    Ok(h) if RESERVED_HEADERS.contains(&hname.as_str()) => {
                        let kind = if HOP_BY_HOP.contains(&hname.as_str()) {
                            "a hop-by-hop header (never forwarded)"
                        } else if IDENTITY_HEADERS.contains(&hname.as_str()) {
                            "an identity header (gatehouse sets it from the token)"
                        } else {
                            "a header gatehouse sets or relies on"
                        };
                        self.err(
                            fr.header.span(),
                            fk("header"),
                            format!(
                                "{:?} is {kind}; pick another name (e.g. X-Row-Filter)",
                                fr.header.get_ref()
                            ),
                        );
                        ok = false;
                        Some(h)
                    }
                    Ok(h) => Some(h),
                    Err(_) => {
                        self.err(
                            fr.header.span(),
                            fk("header"),
                            format!("{:?} is not a valid header name", fr.header.get_ref()),
                        );
                        ok = false;
                        None
                    }
                };
                if !seen_headers.insert(hname.clone()) {
                    self.err(
                        fr.header.span(),
                        fk("header"),
                        format!(
                            "{:?} is set twice on this route; one header, one filter",
                            fr.header.get_ref()
                        ),
                    );
                    ok = false;
                }
                let template = match Template::parse(fr.value.get_ref()) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        self.err(fr.value.span(), fk("value"), e);
                        ok = false;
                        None
                    }
                };
                let mut except = Vec::new();
                for role in &fr.except_roles {
                    if !raw.roles.contains_key(role.get_ref()) {
                        self.err(
                            role.span(),
                            fk("except_roles"),
                            format!(
                                "unknown role {:?} (known: {}); declare it as [roles.{}]",
                                role.get_ref(),
                                known(role_names.clone()),
                                role.get_ref()
                            ),
                        );
                        ok = false;
                    }
                    except.push(role.get_ref().clone());
                }
                if let (Some(header), Some(template)) = (header, template) {
                    row_filters.push(RowFilter {
                        header,
                        template,
                        except_roles: except,
                    });
                }
            }
            let (line, _) = self.line_col(rs.span().start);
            let route = Route {
                index: i,
                name,
                host,
                path_prefix: normalize_prefix(prefix),
                methods,
                upstream: r.upstream.get_ref().clone(),
                issuers: route_issuers,
                allow_roles,
                require_scopes,
                require_mfa,
                forward_token: r.forward_token.unwrap_or(false),
                auth,
                row_filters,
                line,
            };
            if ok {
                if let Some(earlier) = out.iter().find(|e| route.shadowed_by(e)) {
                    self.err(
                        rs.span(),
                        format!("routes[{i}]"),
                        format!(
                            "route {:?} is never reached: routes[{}] ({:?}) matches every request it would; move it above routes[{}] or narrow it",
                            route.name, earlier.index, earlier.name, earlier.index
                        ),
                    );
                }
                out.push(route);
            }
        }
        out
    }
}

fn fmt_ts(ts: i64) -> String {
    chrono::DateTime::from_timestamp(ts, 0)
        .map(|d| d.to_rfc3339())
        .unwrap_or_else(|| ts.to_string())
}
