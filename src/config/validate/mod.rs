//! Raw TOML → [`Runtime`]: every check of SPEC section 2, all errors collected in one
//! run, each naming `file:line:col`, the key path and what to do about it.

//!
//! Split by topic: `listeners.rs` (server, certificates, audit), `issuers.rs`,
//! `upstreams.rs`, `routes.rs`; this file holds the entry points and the shared helpers
//! (locations, secrets, paths).

mod issuers;
mod listeners;
mod routes;
mod upstreams;

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use indexmap::IndexMap;

use super::raw::*;
use super::*;
use crate::auth::{Introspection, IssuerSettings, KeySource};
use crate::names::{self, ALWAYS_STRIPPED, HOP_BY_HOP, IDENTITY_HEADERS};
use crate::policy::route::{normalize_prefix, AuthMode, Route, RowFilter};
use crate::policy::row_filter::Template;

/// Headers a row filter may not use besides the hop-by-hop ones: the identity headers
/// and the ones gatehouse sets or relies on.
const GATEWAY_HEADERS: &[&str] = &[
    "host",
    "authorization",
    "cookie",
    "content-length",
    names::X_FORWARDED_FOR,
    names::X_FORWARDED_PROTO,
    "x-forwarded-host",
    "forwarded",
    names::X_REQUEST_ID,
    "traceparent",
    names::X_AUTH_SUBJECT,
    names::X_AUTH_CLIENT_ID,
    names::X_AUTH_ROLES,
    names::X_AUTH_ISSUER,
];

/// Whether a row filter may not use header `name` (lower case): hop-by-hop, identity, or
/// one gatehouse sets or relies on.
fn reserved_header(name: &str) -> bool {
    HOP_BY_HOP.contains(&name) || GATEWAY_HEADERS.contains(&name)
}

const DEFAULT_ALGS: &[&str] = &["RS256", "PS256", "ES256", "EdDSA"];
const WARN_EXPIRY_DAYS: i64 = 30;

/// Loads and validates a config file. `Err` holds every error found.
pub fn load(path: &Path) -> Result<Runtime, ConfigErrors> {
    load_naming_files(path).0
}

/// [`load`], also returning the files the attempt read or tried to read (the config
/// itself first, then every certificate, key, CA bundle, JWKS and secret file it names),
/// each with its fingerprint taken just before it was read, whether or not it loaded:
/// what the file watch watches after a failed reload, so that creating a missing file
/// the config names retries it.
pub fn load_naming_files(path: &Path) -> (Result<Runtime, ConfigErrors>, Vec<WatchedFile>) {
    // Before reading: a change made after this differs from it, so it is never missed.
    let config_file = (path.to_path_buf(), crate::watch::fingerprint(path));
    let bytes = match crate::files::read_bounded(path) {
        Ok(b) => b,
        Err(e) => {
            let err = ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                line: 0,
                col: 0,
                key: String::new(),
                message: format!("cannot read the config file: {e}"),
            }]);
            return (Err(err), vec![config_file]);
        }
    };
    let src = match utf8_or_error(path, &bytes) {
        Ok(s) => s,
        Err(e) => return (Err(e), vec![config_file]),
    };
    let mut v = Validator::new(path, src);
    v.files.push(config_file);
    let rt = v.run();
    (rt, v.files)
}

fn utf8_or_error<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a str, ConfigErrors> {
    crate::files::utf8(bytes).map_err(|(line, col)| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line,
            col,
            key: String::new(),
            message: "this byte is not UTF-8; save the file as UTF-8 (checking stops here)"
                .to_string(),
        }])
    })
}

/// Validates config file contents as if read from `path` (relative paths resolve next to
/// it): bytes that are not UTF-8 are an error at the first bad one, then [`load_str`].
/// Public so the whole loader can be fuzzed without a file.
pub fn load_bytes(path: &Path, bytes: &[u8]) -> Result<Runtime, ConfigErrors> {
    load_str(path, utf8_or_error(path, bytes)?)
}

/// Validates config text as if read from `path` (relative paths resolve next to it).
pub fn load_str(path: &Path, src: &str) -> Result<Runtime, ConfigErrors> {
    Validator::new(path, src).run()
}

struct Validator<'a> {
    file: PathBuf,
    dir: PathBuf,
    src: &'a str,
    errors: Vec<ConfigError>,
    warnings: Vec<String>,
    certs: Vec<CertInfo>,
    /// Every file read (or tried) so far, resolved as read, with its fingerprint from
    /// just before: the watch set.
    files: Vec<WatchedFile>,
}

impl<'a> Validator<'a> {
    /// Parses and validates the whole text.
    fn run(&mut self) -> Result<Runtime, ConfigErrors> {
        let raw: RawConfig = match super::raw::parse(self.src) {
            Ok(r) => r,
            Err(e) => {
                // Syntax and schema errors stop the parse: say so, or an operator who
                // fixes this one would be surprised by the next.
                let message = format!(
                    "{} (checking stops at the first syntax or schema error: fix it and run check again)",
                    e.message.replace('\n', " ")
                );
                self.err(e.span, e.key, message);
                return Err(ConfigErrors(std::mem::take(&mut self.errors)));
            }
        };
        match self.build(raw) {
            Some(mut rt) if self.errors.is_empty() => {
                rt.files = self.files.clone();
                Ok(rt)
            }
            _ => Err(ConfigErrors(std::mem::take(&mut self.errors))),
        }
    }

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
            files: Vec::new(),
        }
    }

    /// 1-based line and column (in characters) of a byte offset in the file.
    fn line_col(&self, offset: usize) -> (usize, usize) {
        crate::files::line_col(self.src, offset)
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

    /// [`path`](Self::path) of a file about to be read, remembered for the file watch
    /// with its fingerprint now (before the read: a change after it is never missed).
    fn file(&mut self, p: &str) -> PathBuf {
        let p = self.path(p);
        if !self.files.iter().any(|(f, _)| *f == p) {
            self.files.push((p.clone(), crate::watch::fingerprint(&p)));
        }
        p
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
                    let p = self.file(file);
                    match crate::files::read_secret_bounded(&p) {
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
        if let (Some(a), Some(raw_admin)) = (admin_listen, raw.admin.as_ref()) {
            if !a.ip().is_loopback() {
                self.warn(
                    raw_admin.listen.span(),
                    "admin.listen",
                    format!("{a} is not a loopback address: /metrics and /readyz answer anyone who can reach it, without authentication"),
                );
            }
            let clash = |b: SocketAddr| same_socket(a, b);
            let taken = server.as_ref().and_then(|s| {
                if clash(s.listen) {
                    Some("server.listen")
                } else if s.redirect_http.is_some_and(clash) {
                    Some("server.redirect_http")
                } else {
                    None
                }
            });
            if let Some(other) = taken {
                self.err(
                    raw_admin.listen.span(),
                    "admin.listen",
                    format!("{a} is also {other}; give each listener its own port"),
                );
            }
        }
        let audit = self.audit(raw.audit.as_ref());
        let cache = CacheSettings {
            max_entries: raw
                .cache
                .as_ref()
                .and_then(|c| c.max_entries)
                .unwrap_or(100_000),
            ttl_s: raw.cache.as_ref().and_then(|c| c.ttl_s).unwrap_or(300),
        };
        let tracing = raw.tracing.as_ref().and_then(|t| self.tracing(t));
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
            tracing,
            issuers,
            roles,
            upstreams,
            routes: routes.into_iter().map(Arc::new).collect(),
            owned_headers: owned,
            certificates: std::mem::take(&mut self.certs),
            warnings: std::mem::take(&mut self.warnings),
            files: Vec::new(),
        })
    }
}

impl Validator<'_> {
    /// `[tracing]`: `otlp_endpoint` an http(s) base URL without credentials, query or
    /// fragment; `service_name` not blank. No `otlp_endpoint`: tracing stays off.
    fn tracing(&mut self, t: &RawTracing) -> Option<TracingSettings> {
        let service_name = match &t.service_name {
            Some(n) => {
                let v = n.get_ref();
                if v.trim().is_empty() || v.len() > 255 || v.chars().any(char::is_control) {
                    self.err(
                        n.span(),
                        "tracing.service_name",
                        format!("{v:?} is not a usable service name: give 1 to 255 printable characters, e.g. service_name = \"gatehouse\""),
                    );
                    None
                } else {
                    Some(v.clone())
                }
            }
            None => Some("gatehouse".to_string()),
        };
        let raw = t.otlp_endpoint.as_ref()?;
        let endpoint = self.otlp_endpoint(raw);
        Some(TracingSettings {
            traces_url: format!("{}/v1/traces", endpoint.as_deref()?.trim_end_matches('/')),
            otlp_endpoint: endpoint?,
            service_name: service_name?,
        })
    }

    fn otlp_endpoint(&mut self, raw: &S<String>) -> Option<String> {
        const KEY: &str = "tracing.otlp_endpoint";
        const FIX: &str = "give the collector's OTLP/HTTP base URL, e.g. otlp_endpoint = \"http://127.0.0.1:4318\" (spans go to {otlp_endpoint}/v1/traces)";
        let v = raw.get_ref();
        let why = match url::Url::parse(v) {
            Err(e) => format!("{v:?} is not a URL ({e})"),
            Ok(u) if !matches!(u.scheme(), "http" | "https") => {
                format!(
                    "{v:?}: the scheme must be http or https, not {}",
                    u.scheme()
                )
            }
            Ok(u) if u.host_str().is_none_or(str::is_empty) => format!("{v:?} names no host"),
            Ok(u) if !u.username().is_empty() || u.password().is_some() => {
                format!("{v:?} carries credentials; a secret is never written inline in the file")
            }
            Ok(u) if u.query().is_some() || u.fragment().is_some() => {
                format!("{v:?} has a query or fragment; the base URL takes neither")
            }
            Ok(_) => return Some(v.clone()),
        };
        self.err(raw.span(), KEY, format!("{why}; {FIX}"));
        None
    }
}

fn fmt_ts(ts: i64) -> String {
    chrono::DateTime::from_timestamp(ts, 0)
        .map(|d| d.to_rfc3339())
        .unwrap_or_else(|| ts.to_string())
}

/// Whether two listeners would take the same socket (same port, and the same address or
/// either one on all addresses).
fn same_socket(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}
