//! Header hygiene: what is removed from the client's request and what gatehouse sets.

use http::{HeaderMap, HeaderName};
use rand::RngCore;

use crate::names::{ALWAYS_STRIPPED, FORWARDED_HEADERS, HOP_BY_HOP};

/// Keeps a client's `X-Request-Id` when it is 1–128 characters of `A-Za-z0-9._-`,
/// otherwise makes a new one (32 hex digits).
pub fn request_id(incoming: Option<&[u8]>) -> String {
    match incoming {
        Some(v) if valid_request_id(v) => String::from_utf8_lossy(v).into_owned(),
        _ => new_request_id(),
    }
}

pub fn valid_request_id(v: &[u8]) -> bool {
    (1..=128).contains(&v.len())
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

pub fn new_request_id() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    crate::audit::hex_lower(&b)
}

/// Whether a client request header named `name` (lower case, as `HeaderName` keeps it)
/// is removed before the request goes on: one of the `owned` headers (identity and
/// row-filter headers of the config) or of [`ALWAYS_STRIPPED`], or another spelling of
/// one of those with `_` for `-` or the reverse (`X_Auth_Roles`; `X-Tenant` when a row
/// filter is named `X_Tenant`), or an underscore spelling of [`FORWARDED_HEADERS`]:
/// CGI-style servers (WSGI, PHP, Rack) map `X_Auth_Roles` and `X-Auth-Roles` to the same
/// variable.
pub fn is_stripped(name: &str, owned: &[HeaderName]) -> bool {
    is_stripped_with(name, owned, owned.iter().any(|o| o.as_str().contains('_')))
}

/// [`is_stripped`], told whether any `owned` name has a `_` (once per request, not per
/// header).
fn is_stripped_with(name: &str, owned: &[HeaderName], owned_underscore: bool) -> bool {
    let exact = |n: &str| owned.iter().any(|o| o.as_str() == n) || ALWAYS_STRIPPED.contains(&n);
    if exact(name) {
        return true;
    }
    // Only a name with `_`, or a config that names a header with `_`, can be another
    // spelling: skip the allocation for every ordinary header.
    if !owned_underscore && !name.contains('_') {
        return false;
    }
    let dashed = name.replace('_', "-");
    let owned_dashed = owned
        .iter()
        .any(|o| o.as_str().contains('_') && o.as_str().replace('_', "-") == dashed);
    if owned_dashed {
        return true;
    }
    name.contains('_') && (exact(&dashed) || FORWARDED_HEADERS.contains(&dashed.as_str()))
}

/// Removes from the request every header [`is_stripped`] names, every copy.
pub fn strip(headers: &mut HeaderMap, owned: &[HeaderName]) {
    let owned_underscore = owned.iter().any(|o| o.as_str().contains('_'));
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_stripped_with(n.as_str(), owned, owned_underscore))
        .cloned()
        .collect();
    for h in doomed {
        headers.remove(&h);
    }
}

/// Hop-by-hop headers (RFC 9110 section 7.6.1) and the ones a `Connection` header names:
/// they describe one connection and are never relayed to the next hop.
///
/// One pass over the names present (a handful), not a removal per listed name: each
/// `HeaderMap::remove` hashes its name, and this runs twice per request.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let mut doomed: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        if HOP_BY_HOP.contains(&name.as_str()) {
            doomed.push(name.clone());
        }
    }
    if doomed.is_empty() {
        return;
    }
    for v in headers.get_all(http::header::CONNECTION) {
        let Ok(v) = v.to_str() else { continue };
        doomed.extend(
            v.split(',')
                .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok()),
        );
    }
    for n in doomed {
        headers.remove(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_owned_managed_and_underscore_spellings() {
        let mut req = HeaderMap::new();
        for (k, v) in [
            ("X-Auth-Roles", "admin"),
            ("X_Auth_Roles", "admin"),
            ("x_row_filter", "1=1"),
            ("X_Forwarded_For", "10.0.0.1"),
            ("X-HTTP-Method-Override", "DELETE"),
            ("Forwarded", "for=10.0.0.1"),
            ("X-Real-IP", "10.0.0.1"),
            ("X-Original-URL", "/admin"),
            ("X-Rewrite-URL", "/admin"),
            ("X_Original_URL", "/admin"),
            ("X-Forwarded-Client-Cert", "Hash=1;Subject=\"CN=admin\""),
            ("X-Client-Cert", "x"),
            ("X-SSL-Client-Cert", "x"),
            ("X-SSL-Client-DN", "CN=admin"),
            ("X_SSL_Client_CN", "admin"),
            ("X-SSL-Client-CN", "admin"),
            ("X_Forwarded_Client_Cert", "x"),
            ("X_Custom_Thing", "kept"),
            ("Accept", "*/*"),
        ] {
            req.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let owned = [
            HeaderName::from_static("x-auth-roles"),
            HeaderName::from_static("x-row-filter"),
        ];
        strip(&mut req, &owned);
        let mut left: Vec<&str> = req.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, vec!["accept", "x_custom_thing"]);
    }

    #[test]
    fn stripped_names() {
        let owned = [
            HeaderName::from_static("x-tenant"),
            HeaderName::from_static("x_org_unit"),
        ];
        for n in [
            "x-tenant",
            "x_tenant",
            "x_org_unit",
            "x-org-unit",
            "x-org_unit",
            "x-original-url",
            "x_rewrite_url",
            "x-ssl-client-dn",
            "x_forwarded_for",
            "x_request_id",
        ] {
            assert!(is_stripped(n, &owned), "{n}");
        }
        for n in [
            "accept",
            "x-forwarded-for",
            "x-request-id",
            "x_custom",
            "authorization",
        ] {
            assert!(!is_stripped(n, &owned), "{n}");
        }
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "close, X-Hop"),
            ("connection", "x-other"),
            ("x-hop", "1"),
            ("x-other", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("accept", "*/*"),
            ("x-end-to-end", "1"),
        ] {
            h.append(HeaderName::from_static(k), v.parse().unwrap());
        }
        remove_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, vec!["accept", "x-end-to-end"]);
        // Without a Connection header only the listed names go.
        let mut h = HeaderMap::new();
        h.append("upgrade", "h2c".parse().unwrap());
        h.append("x-hop", "1".parse().unwrap());
        remove_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-hop"]);
    }

    #[test]
    fn request_id_kept_only_when_well_formed() {
        assert_eq!(request_id(Some(b"abc-1.2_3")), "abc-1.2_3");
        assert_ne!(request_id(Some(b"bad id")), "bad id");
        assert_ne!(request_id(Some(b"")), "");
        let long = vec![b'a'; 129];
        assert_eq!(request_id(Some(&long)).len(), 32);
        assert_eq!(request_id(Some(&[b'a'; 128])).len(), 128);
        assert_eq!(request_id(None).len(), 32);
    }
}
