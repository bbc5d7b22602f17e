//! Header hygiene: what is removed from the client's request and what gatehouse sets.

use http::{HeaderMap, HeaderName};
use rand::RngCore;

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
    hex::encode(b)
}

/// Headers the gateway sets on every forwarded request (client copies are replaced).
pub const FORWARDED_HEADERS: [&str; 3] = ["x-forwarded-for", "x-forwarded-proto", "x-request-id"];

/// Headers removed from every client request besides the config's owned ones: a backend
/// may trust them for the method (method-override middleware would run an authorized
/// GET as a DELETE) or for the client's address and host, and only gatehouse may say
/// those things.
pub const ALWAYS_STRIPPED: [&str; 7] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "forwarded",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
];

/// Removes from the request every copy of the `owned` headers and of
/// [`ALWAYS_STRIPPED`], and any underscore spelling of those or of
/// [`FORWARDED_HEADERS`] (`X_Auth_Roles`): CGI-style servers (WSGI, PHP, Rack) map
/// `X_Auth_Roles` and `X-Auth-Roles` to the same variable.
pub fn strip(headers: &mut HeaderMap, owned: &[HeaderName]) {
    for h in owned {
        headers.remove(h);
    }
    for h in ALWAYS_STRIPPED {
        headers.remove(h);
    }
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().contains('_'))
        .filter(|n| {
            let dashed = n.as_str().replace('_', "-");
            owned.iter().any(|o| o.as_str() == dashed)
                || ALWAYS_STRIPPED.contains(&dashed.as_str())
                || FORWARDED_HEADERS.contains(&dashed.as_str())
        })
        .cloned()
        .collect();
    for h in spoofed {
        headers.remove(&h);
    }
}

/// Hop-by-hop headers (RFC 9110 section 7.6.1) and the ones a `Connection` header names:
/// they describe one connection and are never relayed to the next hop.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in HOP_BY_HOP {
        headers.remove(n);
    }
}

const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "http2-settings",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

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
