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

/// Parses the file into [`RawConfig`]. serde stops at the first error; its key path is
/// rebuilt from the table headers above the error (serde reports only a byte span).
pub fn parse(src: &str) -> Result<RawConfig, ParseError> {
    toml::from_str(src).map_err(|e| {
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
        // A key missing from the document itself comes with an empty span at 0.
        let at_root = span == (0..0);
        let key = match field {
            Some(f) if at_root && message.starts_with("missing field") => f.to_string(),
            _ => key_path(src, span.start, field),
        };
        ParseError { key, span, message }
    })
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
        .map(|a| (edit_distance(field, a), a))
        .filter(|(d, a)| {
            *d <= 2.max(a.len() / 4) || a.starts_with(field) || field.starts_with(a.as_str())
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a.as_str())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The key path at byte `offset`: the table from the `[table]` / `[[array]]` headers
/// above it (array tables numbered from 0), then the key written on that line (and the
/// key inside an inline table). `field` is the key serde named, when it named one.
pub fn key_path(src: &str, offset: usize, field: Option<&str>) -> String {
    let offset = offset.min(src.len());
    let line_start = src[..offset].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line_end = src[offset..]
        .find('\n')
        .map(|i| offset + i)
        .unwrap_or(src.len());
    let line = &src[line_start..line_end];
    let on_header = header(line).is_some();
    let mut table = String::new();
    let mut arrays: std::collections::HashMap<String, usize> = Default::default();
    let upto = if on_header { line_end } else { line_start };
    for l in src[..upto].lines() {
        if let Some((segs, is_array)) = header(l) {
            table.clear();
            for (n, s) in segs.iter().enumerate() {
                if !table.is_empty() {
                    table.push('.');
                }
                table.push_str(s);
                if is_array && n + 1 == segs.len() {
                    let i = arrays
                        .entry(table.clone())
                        .and_modify(|i| *i += 1)
                        .or_insert(0);
                    table = format!("{table}[{i}]");
                } else if let Some(i) = arrays.get(&table) {
                    table = format!("{table}[{i}]");
                }
            }
        }
    }
    let join = |a: &str, b: &str| {
        if a.is_empty() {
            b.to_string()
        } else if b.is_empty() {
            a.to_string()
        } else {
            format!("{a}.{b}")
        }
    };
    if on_header {
        // An unknown table names itself; a missing key is reported at its table.
        let last = table.rsplit('.').next().unwrap_or("");
        return match field {
            Some(f) if last == f || last.starts_with(&format!("{f}[")) => table,
            Some(f) => join(&table, f),
            None => table,
        };
    }
    // The key of this line, or of the line a multi-line value started on.
    let mut key_line = (line, offset - line_start);
    if !line.contains('=') {
        if let Some(l) = src[..line_start]
            .lines()
            .rev()
            .take_while(|l| header(l).is_none())
            .find(|l| l.contains('='))
        {
            key_line = (l, l.len());
        }
    }
    let (text, at) = key_line;
    let Some(eq) = text.find('=') else {
        return join(&table, field.unwrap_or(""));
    };
    let k = unquote_key(text[..eq].trim());
    if at <= eq {
        // At the key itself (an unknown or duplicate key).
        return join(&table, field.unwrap_or(&k));
    }
    let in_inline_table = text[eq + 1..at.min(text.len())].contains('{');
    match field {
        Some(f) if in_inline_table && f != k => join(&join(&table, &k), f),
        _ => join(&table, &k),
    }
}

/// `[a.b]` → (["a", "b"], false); `[[routes]]` → (["routes"], true).
fn header(line: &str) -> Option<(Vec<String>, bool)> {
    let t = line.trim();
    let t = match t.find('#') {
        Some(i) if !t[..i].contains('"') => t[..i].trim_end(),
        _ => t,
    };
    let (inner, is_array) = if let Some(x) = t.strip_prefix("[[") {
        (x.strip_suffix("]]")?, true)
    } else {
        (t.strip_prefix('[')?.strip_suffix(']')?, false)
    };
    let ok = |c: char| c.is_ascii_alphanumeric() || "_-. \"'".contains(c);
    if inner.trim().is_empty() || !inner.chars().all(ok) {
        return None;
    }
    Some((
        inner.split('.').map(|s| unquote_key(s.trim())).collect(),
        is_array,
    ))
}

fn unquote_key(k: &str) -> String {
    k.trim_matches(|c| c == '"' || c == '\'').to_string()
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
        assert_eq!(e.key, "upstreams.o.addrs");
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
