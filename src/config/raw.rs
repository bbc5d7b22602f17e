//! The TOML file exactly as written (docs/configuration.md), before any meaning is checked.
//!
//! Every table denies unknown keys. Values that a later check must point at are kept as
//! `toml::Spanned` so that `validate.rs` can name their line and column.

use indexmap::IndexMap;
use serde::Deserialize;
use toml::Spanned;

pub type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub server: S<RawServer>,
    #[serde(default)]
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub audit: Option<S<RawAudit>>,
    #[serde(default)]
    pub cache: Option<RawCache>,
    #[serde(default)]
    pub tracing: Option<RawTracing>,
    #[serde(default)]
    pub issuers: IndexMap<String, S<RawIssuer>>,
    #[serde(default)]
    pub roles: IndexMap<String, S<RawRole>>,
    #[serde(default)]
    pub upstreams: IndexMap<String, S<RawUpstream>>,
    #[serde(default)]
    pub routes: Vec<S<RawRoute>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: S<String>,
    #[serde(default)]
    pub redirect_http: Option<S<String>>,
    pub cert: S<String>,
    pub key: S<String>,
    #[serde(default)]
    pub tls_min_version: Option<S<String>>,
    #[serde(default)]
    pub hsts_max_age_s: Option<u64>,
    #[serde(default)]
    pub threads: Option<S<i64>>,
    #[serde(default)]
    pub drain_timeout_s: Option<S<u64>>,
    #[serde(default)]
    pub max_connections: Option<S<u64>>,
    #[serde(default)]
    pub header_read_timeout_ms: Option<S<u64>>,
    #[serde(default)]
    pub idle_timeout_s: Option<S<u64>>,
    #[serde(default)]
    pub max_header_bytes: Option<S<u64>>,
    #[serde(default)]
    pub trusted_proxies: Option<S<Vec<S<String>>>>,
    #[serde(default)]
    pub proxy_protocol: Option<bool>,
    pub watch_files: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    #[serde(default)]
    pub path: Option<S<String>>,
    #[serde(default)]
    pub retention_days: Option<S<u64>>,
    #[serde(default)]
    pub pseudonym_key: Option<S<RawSecret>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    #[serde(default)]
    pub max_entries: Option<u64>,
    #[serde(default)]
    pub ttl_s: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTracing {
    #[serde(default)]
    pub otlp_endpoint: Option<S<String>>,
    #[serde(default)]
    pub service_name: Option<S<String>>,
}

/// A secret: `{ env = "NAME" }` or `{ file = "path" }`. An inline string parses (so that
/// `check` can say exactly why it is refused) but never validates.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawSecret {
    Inline(String),
    Ref(RawSecretRef),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecretRef {
    #[serde(default)]
    pub env: Option<String>,
    #[serde(default)]
    pub file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIssuer {
    pub issuer: S<String>,
    #[serde(default)]
    pub discovery: Option<S<bool>>,
    #[serde(default)]
    pub jwks_uri: Option<S<String>>,
    #[serde(default)]
    pub jwks_file: Option<S<String>>,
    #[serde(default)]
    pub audiences: Option<S<Vec<String>>>,
    #[serde(default)]
    pub algorithms: Option<Vec<S<String>>>,
    #[serde(default)]
    pub leeway_s: Option<S<u64>>,
    #[serde(default)]
    pub ca: Option<S<String>>,
    #[serde(default)]
    pub jwks_refresh_s: Option<S<u64>>,
    #[serde(default)]
    pub roles_claim: Option<S<String>>,
    #[serde(default)]
    pub groups_claim: Option<S<String>>,
    #[serde(default)]
    pub scopes_claim: Option<S<String>>,
    #[serde(default)]
    pub client_id_claim: Option<S<String>>,
    #[serde(default)]
    pub introspection: Option<S<RawIntrospection>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIntrospection {
    pub url: S<String>,
    pub client_id: String,
    pub client_secret: S<RawSecret>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRole {
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub clients: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub addrs: S<Vec<S<String>>>,
    pub sni: S<String>,
    pub ca: S<String>,
    pub client_cert: S<String>,
    pub client_key: S<String>,
    #[serde(default)]
    pub connect_timeout_ms: Option<S<u64>>,
    #[serde(default)]
    pub read_timeout_ms: Option<S<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: S<String>,
    #[serde(default)]
    pub host: Option<S<String>>,
    pub path_prefix: S<String>,
    #[serde(default)]
    pub methods: Option<S<Vec<S<String>>>>,
    pub upstream: S<String>,
    #[serde(default)]
    pub issuers: Option<Vec<S<String>>>,
    #[serde(default)]
    pub allow_roles: Option<S<Vec<S<String>>>>,
    #[serde(default)]
    pub require_scopes: Option<S<Vec<String>>>,
    #[serde(default)]
    pub require_mfa: Option<S<bool>>,
    #[serde(default)]
    pub forward_token: Option<bool>,
    #[serde(default)]
    pub auth: Option<S<String>>,
    #[serde(default)]
    pub row_filters: Vec<S<RawRowFilter>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRowFilter {
    pub header: S<String>,
    pub value: S<String>,
    #[serde(default)]
    pub except_roles: Vec<S<String>>,
}

/// A parse or schema error (syntax, unknown key, missing key, wrong type), located and
/// named: `span` in the source, `key` the documented key path (`routes[2].upstream`).
#[derive(Debug)]
pub struct ParseError {
    pub span: std::ops::Range<usize>,
    pub key: String,
    pub message: String,
}

/// Parses the file into [`RawConfig`]. serde stops at the first error;
/// `serde_path_to_error` names the key path it was at, toml the byte span.
pub fn parse(src: &str) -> Result<RawConfig, ParseError> {
    serde_path_to_error::deserialize(toml::Deserializer::new(src)).map_err(|e| {
        let path = key_of(e.path());
        let e = e.into_inner();
        let span = e.span().unwrap_or(0..0);
        let msg = e.message().trim().to_string();
        let named = backticked(&msg);
        let field = named.first().map(|s| s.as_str());
        let (message, field) = if msg.starts_with("unknown field") {
            let hint = match field.and_then(|f| closest(f, &named[1..])) {
                Some(s) => format!("did you mean `{s}`? "),
                None => String::new(),
            };
            let m = format!("{msg}; {hint}unknown keys are errors: rename or remove it");
            (m, field)
        } else if msg.starts_with("missing field") {
            (format!("{msg}; add it to this table"), field)
        } else if msg.contains("untagged enum RawSecret") {
            (
                "a secret is { env = \"NAME\" } or { file = \"path\" }, nothing else".to_string(),
                None,
            )
        } else if msg.starts_with("invalid type") || msg.starts_with("invalid value") {
            (format!("{msg}; write a value of that type"), None)
        } else {
            (msg, None)
        };
        // An unknown or missing key is named after the table serde was in.
        let key = match field {
            Some(f) if path.rsplit('.').next() != Some(f) => {
                if path.is_empty() {
                    f.to_string()
                } else {
                    format!("{path}.{f}")
                }
            }
            _ => path,
        };
        ParseError { key, span, message }
    })
}

/// A serde path as the docs write keys (`routes[2].row_filters[0].header`), without the
/// fields toml's `Spanned` wraps values in.
fn key_of(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut key = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => key.push_str(&format!("[{index}]")),
            Segment::Map { key: k } | Segment::Enum { variant: k } => {
                if k.starts_with("$__serde_spanned_private") {
                    continue;
                }
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(k);
            }
            Segment::Unknown => {}
        }
    }
    key
}

/// The `a`, `b` of a serde message "unknown field `a`, expected one of `b`, `c`".
fn backticked(msg: &str) -> Vec<String> {
    msg.split('`')
        .skip(1)
        .step_by(2)
        .map(|s| s.to_string())
        .collect()
}

/// The allowed key closest to a misspelt one, if any is close.
pub(crate) fn closest<'a>(field: &str, allowed: &'a [String]) -> Option<&'a str> {
    allowed
        .iter()
        .map(|a| (strsim::levenshtein(field, a), a))
        .filter(|(d, a)| {
            *d <= 2.max(a.len() / 4) || a.starts_with(field) || field.starts_with(a.as_str())
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(src: &str) -> ParseError {
        parse(src).expect_err("must not parse")
    }

    #[test]
    fn key_paths_follow_table_headers_and_array_indices() {
        let src = "[server]\nlisten = \"a\"\ncert = \"c\"\nkey = \"k\"\n\n[[routes]]\nname = \"a\"\npath_prefix = \"/\"\nupstream = \"u\"\n[[routes.row_filters]]\nheader = \"h\"\nvalue = \"v\"\n\n[[routes]]\nname = \"b\"\npath_prefix = \"/\"\nupstream = \"u\"\n[[routes.row_filters]]\nheader = \"h\"\nvalue = \"v\"\n[[routes.row_filters]]\nheadr = \"h\"\n";
        let e = err(src);
        assert_eq!(e.key, "routes[1].row_filters[1].headr");
        assert!(
            e.message.contains("did you mean `header`?"),
            "{}",
            e.message
        );
        assert!(e.message.contains("rename or remove"), "{}", e.message);
        assert_eq!(&src[e.span.start..e.span.start + 5], "headr");
    }

    #[test]
    fn missing_keys_are_named_with_their_table() {
        let e = err("[admin]\nlisten = \"127.0.0.1:1\"\n");
        assert_eq!(e.key, "server");
        assert!(
            e.message.contains("missing field `server`"),
            "{}",
            e.message
        );
        let e = err("[server]\nlisten = \"a\"\ncert = \"c\"\n");
        assert_eq!(e.key, "server.key");
        let e = err("[server]\nlisten = \"a\"\ncert = \"c\"\nkey = \"k\"\n[[routes]]\nname = \"a\"\nupstream = \"u\"\n");
        assert_eq!(e.key, "routes[0].path_prefix");
    }

    #[test]
    fn inline_tables_multiline_arrays_and_types() {
        let base = "[server]\nlisten = \"a\"\ncert = \"c\"\nkey = \"k\"\n";
        let e = err(&format!("{base}[issuers.corp]\nissuer = \"https://x\"\nintrospection = {{ url = \"u\", client_id = \"g\", client_secret = {{ env = \"X\" }}, bogus = 1 }}\n"));
        assert_eq!(e.key, "issuers.corp.introspection.bogus");
        let e = err(&format!(
            "{base}[upstreams.o]\naddrs = [\n  \"127.0.0.1:1\",\n  5,\n]\n"
        ));
        assert_eq!(e.key, "upstreams.o.addrs[1]");
        assert!(e.message.contains("invalid type"), "{}", e.message);
        let e = err(&format!(
            "{base}[audit]\npseudonym_key = {{ env = \"X\", bogus = 1 }}\n"
        ));
        assert_eq!(e.key, "audit.pseudonym_key");
        assert!(e.message.contains("{ env = \"NAME\" }"), "{}", e.message);
        let e = err("[server]\nthreads = \"two\"\n");
        assert_eq!(e.key, "server.threads");
        let e = err("[caches]\nttl_s = 1\n");
        assert_eq!(e.key, "caches");
        let e = err("# comment\nbogus = 1\n[server]\n");
        assert_eq!(e.key, "bogus");
    }
}
