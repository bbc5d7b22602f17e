//! Routes: the compiled `[[routes]]` table and first-match routing.
//!
//! Matching is on host (exact after [`normalize_host`]: lower case, no trailing dot, no
//! port), a segment-aware path
//! prefix (`/orders` matches `/orders` and `/orders/7`, not `/ordersX`) and the method.
//! Paths that a backend could read differently from the gateway (dot segments, `//`,
//! encoded `/`, `.` or `\`) are refused before matching: see [`check_path`].

use std::sync::Arc;

use http::HeaderName;

use super::row_filter::Template;

/// Whether a route needs a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    Required,
    None,
}

#[derive(Clone, Debug)]
pub struct RowFilter {
    pub header: HeaderName,
    pub template: Template,
    pub except_roles: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Route {
    pub index: usize,
    /// Shared (not copied) with every audit record of the route.
    pub name: Arc<str>,
    /// Normalised by [`normalize_host`]: lower case, no trailing dot, no port.
    pub host: Option<String>,
    /// Normalised: starts with `/`, no trailing `/` except for the root.
    pub path_prefix: String,
    /// Upper-case method names; `None` = every method.
    pub methods: Option<Vec<String>>,
    pub upstream: Arc<str>,
    /// Issuer config names this route accepts; `None` = all.
    pub issuers: Option<Vec<String>>,
    pub allow_roles: Vec<String>,
    pub require_scopes: Vec<String>,
    pub require_mfa: bool,
    pub forward_token: bool,
    pub auth: AuthMode,
    pub row_filters: Vec<RowFilter>,
    /// Line of the route in the config file (for findings).
    pub line: usize,
}

impl Route {
    /// `host` must come from [`normalize_host`] (or [`request_host`]); it is compared
    /// exactly.
    pub fn matches(&self, host: Option<&str>, path: &str, method: &str) -> bool {
        if let Some(h) = &self.host {
            match host {
                Some(req) if h == req => {}
                _ => return false,
            }
        }
        if !prefix_matches(&self.path_prefix, path) {
            return false;
        }
        match &self.methods {
            Some(ms) => ms.iter().any(|m| m == method),
            None => true,
        }
    }

    /// True when this route serves `method`.
    pub fn serves(&self, method: &str) -> bool {
        self.methods
            .as_ref()
            .is_none_or(|ms| ms.iter().any(|m| m == method))
    }

    /// True when every request this route could match is matched by `earlier` first.
    pub fn shadowed_by(&self, earlier: &Route) -> bool {
        let host_covered = match (&earlier.host, &self.host) {
            (None, _) => true,
            (Some(a), Some(b)) => a == b,
            (Some(_), None) => false,
        };
        let methods_covered = match (&earlier.methods, &self.methods) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => b.iter().all(|m| a.contains(m)),
        };
        host_covered && methods_covered && prefix_matches(&earlier.path_prefix, &self.path_prefix)
    }
}

/// Longest host name gatehouse accepts (DNS: 253 characters, 63 per label).
const MAX_HOST_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// Normalises a `Host` header value or `:authority` (`host[:port]`, SPEC section 3 step
/// 2) for routing: the port is validated (1-5 digits, at most 65535) and removed, the host
/// is lower-cased and loses one trailing dot; an IPv6 literal keeps its brackets and is
/// written in its canonical form (`[0:0::1]` is `[::1]`). `Err` says why the value is not
/// a valid host (a `400`): empty, an empty or over-long label, a character outside
/// letters, digits, `-`, `_` and `.` (no userinfo, no percent-encoding, no spaces), a
/// bad port, or a malformed IPv6 literal (zone identifiers are refused).
///
/// Route hosts in the config are normalised with this same function, so the comparison
/// is plain equality and `API.example.com.:443` matches `host = "api.example.com"`.
pub fn normalize_host(raw: &str) -> Result<String, &'static str> {
    let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
        let end = rest
            .find(']')
            .ok_or("an IPv6 host must be written as [address]")?;
        let addr: std::net::Ipv6Addr = rest[..end]
            .parse()
            .map_err(|_| "the IPv6 address in brackets is not valid")?;
        let after = &rest[end + 1..];
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or("only ':port' may follow an IPv6 address")?,
            ),
        };
        (format!("[{addr}]"), port)
    } else {
        let (name, port) = match raw.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (raw, None),
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.is_empty() {
            return Err("the host name is empty");
        }
        if name.len() > MAX_HOST_LEN {
            return Err("the host name is longer than 253 characters");
        }
        for label in name.split('.') {
            if label.is_empty() {
                return Err("the host name has an empty label ('..' or a leading '.')");
            }
            if label.len() > MAX_LABEL_LEN {
                return Err("a label of the host name is longer than 63 characters");
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err("the host name may hold only letters, digits, '-', '_' and '.'");
            }
        }
        (name.to_ascii_lowercase(), port)
    };
    if let Some(p) = port {
        let valid = (1..=5).contains(&p.len())
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u32>().is_ok_and(|n| n <= 65535);
        if !valid {
            return Err("the port must be a number from 0 to 65535");
        }
    }
    Ok(host)
}

/// The host to route a request on, from its `Host` header lines and the authority of its
/// request target (HTTP/2 `:authority`, or an HTTP/1.1 absolute-form target), normalised
/// with [`normalize_host`]. `Err` (a `400`) when a value is not a valid host, when there is
/// more than one `Host` line, when `Host` and the authority name different hosts, or when
/// an HTTP/1.1 request has neither (`host_required`, RFC 9112 section 3.2). `Ok(None)`: no
/// host given where none is required (HTTP/1.0, an HTTP/2 request without `:authority`);
/// such a request matches only routes without `host`.
pub fn request_host(
    host_headers: &[&[u8]],
    authority: Option<&str>,
    host_required: bool,
) -> Result<Option<String>, &'static str> {
    let header = match host_headers {
        [] => None,
        [one] => {
            let s = std::str::from_utf8(one).map_err(|_| "the Host header is not valid")?;
            Some(normalize_host(s)?)
        }
        _ => return Err("more than one Host header"),
    };
    let authority = authority.map(normalize_host).transpose()?;
    match (header, authority) {
        (Some(h), Some(a)) if h != a => {
            Err("the Host header and the request target name different hosts")
        }
        (Some(h), _) => Ok(Some(h)),
        (None, Some(a)) => Ok(Some(a)),
        (None, None) if host_required => Err("an HTTP/1.1 request must carry a Host header"),
        (None, None) => Ok(None),
    }
}

/// `host:port` → `host`; `[::1]:8443` → `[::1]` (no validation: see [`normalize_host`]).
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(i) => &host[..=i],
            None => host,
        };
    }
    match host.rfind(':') {
        Some(i) if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..i],
        _ => host,
    }
}

/// Segment-aware prefix match.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return path.starts_with('/');
    }
    match path.strip_prefix(prefix) {
        Some("") => true,
        Some(rest) => rest.starts_with('/'),
        None => false,
    }
}

/// Normalises a configured prefix: trailing slashes dropped (`/orders/` → `/orders`).
pub fn normalize_prefix(p: &str) -> String {
    let t = p.trim_end_matches('/');
    if t.is_empty() {
        "/".to_string()
    } else {
        t.to_string()
    }
}

/// Normalises a request path the way RFC 3986 section 6.2.2.2 allows (percent-encoded
/// unreserved characters `A-Za-z0-9-._~` are decoded: `/%61dmin` is `/admin`), then
/// refuses what the gateway and a backend might resolve differently, which would let a
/// request match one route here and reach another path there: dot segments (`/a/../b`,
/// also `%2e%2e`), empty segments (`//`), `;` path parameters (servlet containers drop
/// `;jsessionid=..` and read `..;` as `..`), backslashes, encoded `/` `\` or NUL, and
/// malformed escapes. Returns the path to route on and to forward, or why not (a 400).
pub fn normalize_path(path: &str) -> Result<std::borrow::Cow<'_, str>, &'static str> {
    use std::borrow::Cow;
    if !path.starts_with('/') {
        return Err("the path must start with '/'");
    }
    let bytes = path.as_bytes();
    let mut out: Option<Vec<u8>> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
            let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err("malformed percent-encoding in the path");
            };
            let c = h * 16 + l;
            if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                out.get_or_insert_with(|| bytes[..i].to_vec()).push(c);
                i += 3;
                continue;
            }
        }
        if let Some(o) = out.as_mut() {
            o.push(b);
        }
        i += 1;
    }
    let norm: Cow<'_, str> = match out {
        // Only ASCII bytes were decoded into an already valid string.
        Some(v) => Cow::Owned(String::from_utf8(v).map_err(|_| "the path is not UTF-8")?),
        None => Cow::Borrowed(path),
    };
    if norm.contains("//") {
        return Err("empty path segments ('//') are not accepted");
    }
    if norm.contains('\\') {
        return Err("backslashes are not accepted in paths");
    }
    if norm.contains(';') {
        return Err("';' path parameters are not accepted in paths");
    }
    for seg in norm.split('/') {
        if seg == "." || seg == ".." {
            return Err("dot segments ('.', '..') are not accepted in paths");
        }
    }
    // (Only a path with a '%' left can hold one: no lower-cased copy of every path.)
    if norm.contains('%') {
        let lower = norm.to_ascii_lowercase();
        for enc in ["%2f", "%5c", "%00"] {
            if lower.contains(enc) {
                return Err("encoded '/', '\\' or NUL are not accepted in paths");
            }
        }
    }
    Ok(norm)
}

/// [`normalize_path`] when only the verdict matters (config prefixes).
pub fn check_path(path: &str) -> Result<(), &'static str> {
    normalize_path(path).map(|_| ())
}

/// The first route that matches, in file order. `host` as from [`normalize_host`].
pub fn find<'a>(
    routes: &'a [Arc<Route>],
    host: Option<&str>,
    path: &str,
    method: &str,
) -> Option<&'a Arc<Route>> {
    routes.iter().find(|r| r.matches(host, path, method))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, host: Option<&str>, prefix: &str, methods: Option<&[&str]>) -> Arc<Route> {
        Arc::new(Route {
            index: 0,
            name: name.into(),
            host: host.map(str::to_string),
            path_prefix: normalize_prefix(prefix),
            methods: methods.map(|m| m.iter().map(|s| s.to_string()).collect()),
            upstream: "u".into(),
            issuers: None,
            allow_roles: vec![],
            require_scopes: vec![],
            require_mfa: false,
            forward_token: false,
            auth: AuthMode::Required,
            row_filters: vec![],
            line: 1,
        })
    }

    #[test]
    fn prefix_is_segment_aware() {
        assert!(prefix_matches("/orders", "/orders"));
        assert!(prefix_matches("/orders", "/orders/7"));
        assert!(prefix_matches("/orders", "/orders/"));
        assert!(!prefix_matches("/orders", "/ordersX"));
        assert!(!prefix_matches("/orders", "/order"));
        assert!(prefix_matches("/", "/anything"));
        assert_eq!(normalize_prefix("/orders/"), "/orders");
        assert_eq!(normalize_prefix("/"), "/");
    }

    #[test]
    fn first_match_wins_with_host_and_method() {
        let routes = vec![
            route("a", Some("api.example.com"), "/orders", Some(&["GET"])),
            route("b", None, "/orders", None),
        ];
        let hit = |h: Option<&str>, p, m| {
            let h = h.map(|h| normalize_host(h).unwrap());
            find(&routes, h.as_deref(), p, m).map(|r| r.name.clone())
        };
        assert_eq!(
            hit(Some("API.example.com:8443"), "/orders/1", "GET").as_deref(),
            Some("a")
        );
        for spelling in [
            "api.example.com.",
            "API.EXAMPLE.COM.:443",
            "api.example.com:0",
        ] {
            assert_eq!(
                hit(Some(spelling), "/orders/1", "GET").as_deref(),
                Some("a"),
                "{spelling}"
            );
        }
        assert_eq!(
            hit(Some("api.example.com"), "/orders/1", "POST").as_deref(),
            Some("b")
        );
        assert_eq!(hit(Some("other"), "/orders", "GET").as_deref(), Some("b"));
        assert_eq!(hit(None, "/ordersX", "GET"), None);
    }

    #[test]
    fn strip_port_handles_ipv6() {
        assert_eq!(strip_port("[::1]:8443"), "[::1]");
        assert_eq!(strip_port("example.com:443"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
    }

    #[test]
    fn hosts_normalise() {
        for (raw, want) in [
            ("api.example.com", "api.example.com"),
            ("API.Example.COM", "api.example.com"),
            ("api.example.com.", "api.example.com"),
            ("api.example.com.:8443", "api.example.com"),
            ("api.example.com:65535", "api.example.com"),
            ("localhost", "localhost"),
            ("127.0.0.1:8443", "127.0.0.1"),
            ("my_host.internal", "my_host.internal"),
            ("[::1]", "[::1]"),
            ("[::1]:8443", "[::1]"),
            ("[0:0:0:0:0:0:0:1]", "[::1]"),
            ("[2001:DB8::A]:443", "[2001:db8::a]"),
        ] {
            assert_eq!(normalize_host(raw).as_deref(), Ok(want), "{raw}");
        }
        for bad in [
            "",
            ".",
            ":443",
            "api.example.com:abc",
            "api.example.com:",
            "api.example.com:65536",
            "api.example.com:123456",
            "api.example.com:+80",
            "api.example.com:-1",
            "api.example.com..",
            ".api.example.com",
            "api..example.com",
            "api example.com",
            "user@api.example.com",
            "api.example.com:80:80",
            "a%2eb",
            "caf\u{e9}.example",
            "[::1",
            "[::1]x",
            "[::1]:",
            "[::1]:99999",
            "[fe80::1%25eth0]",
            "[not-ipv6]",
            "::1",
        ] {
            assert!(normalize_host(bad).is_err(), "{bad:?} should be refused");
        }
        let long_label = format!("{}.example", "a".repeat(64));
        assert!(normalize_host(&long_label).is_err());
        let long_name = vec!["abcdefghi"; 30].join(".");
        assert!(normalize_host(&long_name).is_err());
    }

    #[test]
    fn request_host_rules() {
        let h = |v: &'static str| v.as_bytes();
        assert_eq!(
            request_host(&[h("API.example.com.:443")], None, true),
            Ok(Some("api.example.com".into()))
        );
        assert_eq!(
            request_host(&[], Some("api.example.com:8443"), false),
            Ok(Some("api.example.com".into()))
        );
        assert_eq!(
            request_host(&[h("api.example.com")], Some("API.example.com:443"), true),
            Ok(Some("api.example.com".into()))
        );
        assert_eq!(request_host(&[], None, false), Ok(None));
        assert!(request_host(&[], None, true).is_err());
        assert!(request_host(&[h("a"), h("a")], None, true).is_err());
        assert!(request_host(&[h("a")], Some("b"), true).is_err());
        assert!(request_host(&[h("a:x")], None, true).is_err());
        assert!(request_host(&[b"\xff"], None, true).is_err());
        assert!(request_host(&[], Some("a:x"), false).is_err());
    }

    #[test]
    fn shadowing() {
        let all = route("all", None, "/", None);
        let get_orders = route("g", None, "/orders", Some(&["GET"]));
        let orders = route("o", Some("h"), "/orders/x", Some(&["GET", "HEAD"]));
        assert!(get_orders.shadowed_by(&all));
        assert!(!orders.shadowed_by(&get_orders));
        assert!(!all.shadowed_by(&get_orders));
        let get_orders_x = route("gx", None, "/orders/x", Some(&["GET"]));
        assert!(get_orders_x.shadowed_by(&get_orders));
    }

    #[test]
    fn ambiguous_paths_refused() {
        for bad in [
            "/a/../b",
            "/a/./b",
            "//a",
            "/a%2fb",
            "/%2E%2E/b",
            "/a\\b",
            "a",
            "/x%00",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
        for good in ["/", "/orders/7", "/a%20b", "/a.b/c..d"] {
            assert!(check_path(good).is_ok(), "{good}");
        }
    }
}
