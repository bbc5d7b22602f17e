//! Configuration: the TOML file (`raw`), its validation (`validate`) and the immutable
//! [`Runtime`] that the request path reads through an `ArcSwap`.
//!
//! `raw` mirrors the file; `validate` turns it into parsed types (compiled routes, parsed
//! templates, loaded certificates and keys) and collects every error at once, each naming
//! file, line, column, the key path and the fix.

pub mod raw;
pub mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use indexmap::IndexMap;
use rustls::sign::CertifiedKey;

use crate::auth::IssuerSettings;
use crate::policy::route::Route;
use crate::tls::TlsMin;

pub use validate::{load, load_naming_files};

/// Upper bound of `server.drain_timeout_s` (an hour): longer is a mistake, not a policy.
pub const MAX_DRAIN_TIMEOUT_S: u64 = 3600;

/// Upper bound of an issuer's `leeway_s` (five minutes): clock skew beyond that is a
/// broken clock, and a wider window keeps expired tokens working.
pub const MAX_LEEWAY_S: u64 = 300;

/// Upper bound of `server.threads`.
pub const MAX_THREADS: i64 = 1024;

/// The validated configuration. Immutable: a reload builds a new one.
pub struct Runtime {
    pub file: PathBuf,
    pub server: ServerSettings,
    pub admin_listen: Option<SocketAddr>,
    pub audit: AuditSettings,
    pub cache: CacheSettings,
    /// `[tracing]` with an `otlp_endpoint`: spans are exported; `None`: tracing is off.
    pub tracing: Option<TracingSettings>,
    pub issuers: Vec<IssuerSettings>,
    pub roles: IndexMap<String, RoleSettings>,
    pub upstreams: IndexMap<String, Arc<Upstream>>,
    pub routes: Vec<Arc<Route>>,
    /// Identity headers plus every row-filter header named anywhere: stripped from every
    /// client request.
    pub owned_headers: Vec<HeaderName>,
    pub certificates: Vec<CertInfo>,
    pub warnings: Vec<String>,
    /// The config file (as given) and every file it names that was read: certificates,
    /// keys, CA bundles, JWKS files, `{ file = ... }` secrets. What the file watch watches.
    pub files: Vec<WatchedFile>,
}

/// A file a config load read, with its fingerprint from just before the read.
pub type WatchedFile = (PathBuf, crate::watch::Fingerprint);

pub struct ServerSettings {
    pub listen: SocketAddr,
    pub redirect_http: Option<SocketAddr>,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub cert: Arc<CertifiedKey>,
    pub tls_min: TlsMin,
    pub hsts_max_age_s: u64,
    /// Worker threads, already resolved (0 in the file = one per core).
    pub threads: usize,
    pub drain_timeout_s: u64,
    /// Peers whose `X-Forwarded-For` chain is extended instead of replaced.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Every connection on the HTTPS listener starts with a PROXY protocol v2 header whose
    /// source address is the client's (fixed at start).
    pub proxy_protocol: bool,
    /// Protocol limits (SPEC section 7).
    pub limits: Limits,
    /// Reload when the config file or a file it names changes (as SIGHUP does).
    pub watch_files: bool,
}

/// Downstream protocol limits (SPEC section 7): read live by each new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections on the HTTPS listener served at once; more wait in the kernel backlog.
    pub max_connections: usize,
    /// The TLS handshake, and each request head from its first byte, must arrive in this.
    pub header_read_timeout: Duration,
    /// A connection with nothing in flight is closed after this.
    pub idle_timeout: Duration,
    /// Largest request head (HTTP/1.1) or header list (h2) accepted; larger: 431.
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            header_read_timeout: Duration::from_millis(10_000),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 32_768,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuditPath {
    Stdout,
    Dir(PathBuf),
}

pub struct AuditSettings {
    pub path: AuditPath,
    pub retention_days: u64,
    /// `None`: no key configured; a random per-process key is used (warned by `check`).
    pub pseudonym_key: Option<Vec<u8>>,
}

#[derive(Clone, Copy, Debug)]
pub struct CacheSettings {
    pub max_entries: u64,
    pub ttl_s: u64,
}

/// `[tracing]`: where spans go (OTLP/HTTP) and the `service.name` they carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TracingSettings {
    /// The base URL as configured, e.g. `http://127.0.0.1:4318`.
    pub otlp_endpoint: String,
    /// Where spans are POSTed: `{otlp_endpoint}/v1/traces`.
    pub traces_url: String,
    pub service_name: String,
}

pub use crate::policy::rbac::RoleSettings;

/// An upstream: addresses, TLS identity and trust, timeouts.
pub struct Upstream {
    pub name: String,
    pub addrs: Vec<SocketAddr>,
    pub sni: String,
    /// mTLS client settings: trust only `ca`, present `client_cert`. Built once at load.
    pub tls: Arc<rustls::ClientConfig>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// Round-robin position.
    pub next: AtomicUsize,
    /// Per address: Unix milliseconds until which it is skipped after a failed connect.
    pub down_until: Vec<std::sync::atomic::AtomicU64>,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("addrs", &self.addrs)
            .field("sni", &self.sni)
            .finish()
    }
}

/// A certificate that was loaded, for the expiry gauge and `check` warnings.
#[derive(Clone, Debug)]
pub struct CertInfo {
    pub name: String,
    pub path: PathBuf,
    pub subject: String,
    pub not_after: i64,
}

/// One configuration error, located in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    /// Key path, e.g. `routes[2].upstream`; empty for syntax errors.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            // Not located in the file (it could not be read at all).
            write!(f, "{}: ", self.file.display())?;
        } else {
            write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.col)?;
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// Every error found in one load.
#[derive(Clone, Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Runtime {
    pub fn route(&self, name: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| &*r.name == name)
    }

    /// A one-screen summary for `gatehouse check`.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "config {} is valid", self.file.display());
        let _ = writeln!(
            s,
            "  listen      https://{} (TLS >= {}){}",
            self.server.listen,
            if self.server.tls_min == TlsMin::V13 {
                "1.3"
            } else {
                "1.2"
            },
            self.server
                .redirect_http
                .map(|a| format!(", redirect http://{a}"))
                .unwrap_or_default()
        );
        if let Some(a) = self.admin_listen {
            let _ = writeln!(s, "  admin       http://{a} (/metrics /healthz /readyz)");
        }
        let _ = writeln!(
            s,
            "  audit       {}",
            match &self.audit.path {
                AuditPath::Stdout => "stdout".to_string(),
                AuditPath::Dir(d) => format!(
                    "{} (retention {} days)",
                    d.display(),
                    self.audit.retention_days
                ),
            }
        );
        let _ = writeln!(s, "  issuers     {}", self.issuers.len());
        for i in &self.issuers {
            let _ = writeln!(s, "    {:<12} {}", i.name, i.issuer);
        }
        let _ = writeln!(s, "  upstreams   {}", self.upstreams.len());
        for u in self.upstreams.values() {
            let addrs: Vec<String> = u.addrs.iter().map(|a| a.to_string()).collect();
            let _ = writeln!(s, "    {:<12} {} (sni {})", u.name, addrs.join(", "), u.sni);
        }
        let _ = writeln!(
            s,
            "  roles       {}",
            self.roles.keys().cloned().collect::<Vec<_>>().join(", ")
        );
        let _ = writeln!(s, "  routes      {}", self.routes.len());
        for r in &self.routes {
            let methods = r
                .methods
                .as_ref()
                .map(|m| m.join(","))
                .unwrap_or_else(|| "*".into());
            let who = match r.auth {
                crate::policy::route::AuthMode::None => crate::names::Decision::Public.to_string(),
                _ if r.allow_roles.is_empty() => "any authenticated caller".to_string(),
                _ => format!("roles {}", r.allow_roles.join("|")),
            };
            let _ = writeln!(
                s,
                "    {:<16} {}{} [{}] -> {} ({})",
                r.name,
                r.host.as_deref().unwrap_or(""),
                r.path_prefix,
                methods,
                r.upstream,
                who
            );
        }
        s
    }
}
